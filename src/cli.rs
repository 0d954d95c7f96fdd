//! Command-line arguments (argh). Parsing only: the work is in `commands`.

use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use crate::auth::{PrefixRule, Scope};
pub use crate::duration::parse_duration;

/// Lucid: a small, fast, trustworthy key-value node with an HTTP API.
#[derive(FromArgs, Debug)]
pub struct Args {
    /// configuration file (default: $LUCID_CONFIG, else ./lucid.yml or
    /// /etc/lucid/lucid.yml if one exists, else the built-in defaults)
    #[argh(option)]
    pub config: Option<PathBuf>,

    #[argh(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    /// `lucid init`
    Init(InitArgs),
    /// `lucid server`
    Server(ServerArgs),
    /// `lucid check`
    Check(CheckArgs),
    /// `lucid compact`
    Compact(CompactArgs),
    /// `lucid tokens`
    Tokens(TokensArgs),
    /// `lucid health`
    Health(HealthArgs),
    /// `lucid export`
    Export(ExportArgs),
    /// `lucid import`
    Import(ImportArgs),
    /// `lucid snapshot`
    Snapshot(SnapshotArgs),
    /// `lucid promote`
    Promote(PromoteArgs),
}

/// Write a commented configuration file (to --config, $LUCID_CONFIG or
/// ./lucid.yml) with authentication on and a new random secret, and print a
/// root token (read, write and admin, valid for a year) once.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "init")]
pub struct InitArgs {
    /// overwrite the file if it already exists
    #[argh(switch)]
    pub force: bool,

    /// turn on encryption at rest: create a random key file (lucid.key
    /// beside the config file, mode 0600) and enable it in the config
    #[argh(switch)]
    pub encrypt: bool,

    /// print the config to stdout instead of writing a file (the root token
    /// goes to stderr), e.g. `docker run --rm IMAGE init --stdout > lucid.yml`
    #[argh(switch)]
    pub stdout: bool,

    /// the address to listen on, instead of 127.0.0.1 (e.g. 0.0.0.0 in a
    /// container)
    #[argh(option)]
    pub bind_address: Option<String>,

    /// the data directory, instead of ./lucid-data (e.g. /var/lib/lucid)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,
}

/// Run the node: serve the HTTP API on the configured address.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "server")]
pub struct ServerArgs {}

/// Verify every record of the data directory's log and its hint file and
/// print a summary; exits non-zero if anything is damaged. Refuses to run
/// beside a server.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "check")]
pub struct CheckArgs {
    /// rebuild a damaged log from its good records; the damaged file is kept
    /// as data.log.broken-TIME
    #[argh(switch)]
    pub repair: bool,
}

/// Compact the data directory offline: rewrite the log with only live
/// records. If a server is running on the directory, its files are left
/// alone: given an admin token, the server is asked to compact instead.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "compact")]
pub struct CompactArgs {
    /// a token with the admin scope, to ask a running server to compact
    /// (default: $LUCID_TOKEN, which other users cannot see in ps)
    #[argh(option)]
    pub token: Option<String>,

    /// write the compacted log encrypted with this key file instead (key
    /// rotation, or encrypting a plain store); then point
    /// encryption.key_file at it
    #[argh(option)]
    pub new_key_file: Option<PathBuf>,
}

/// Ask a running node whether it is healthy (GET /health): prints its
/// answer and exits 0 if it is, 1 otherwise. Needs no shell, so it serves as
/// a container's health check.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "health")]
pub struct HealthArgs {
    /// the node's address, e.g. http://127.0.0.1:7021 (default: the
    /// configured bind_address and port; 0.0.0.0 is asked on 127.0.0.1)
    #[argh(option)]
    pub url: Option<String>,
}

/// Write a running node's keys to stdout as JSON Lines (GET
/// /api/admin/export), e.g. `lucid export > dump.jsonl`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "export")]
pub struct ExportArgs {
    /// export only the keys starting with this prefix
    #[argh(option)]
    pub prefix: Option<String>,

    /// the node's address, e.g. http://127.0.0.1:7021 (default: the
    /// configured bind_address and port)
    #[argh(option)]
    pub url: Option<String>,

    /// a token with the admin scope (default: $LUCID_TOKEN, which other
    /// users cannot see in ps)
    #[argh(option)]
    pub token: Option<String>,
}

/// Write the keys of a JSON Lines file (as `lucid export` writes it) into a
/// running node (POST /api/admin/import), in atomic requests of up to 1000
/// lines; prints how many keys were imported.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "import")]
pub struct ImportArgs {
    /// the JSON Lines file
    #[argh(positional)]
    pub file: PathBuf,

    /// the node's address, e.g. http://127.0.0.1:7021 (default: the
    /// configured bind_address and port)
    #[argh(option)]
    pub url: Option<String>,

    /// a token with the admin scope (default: $LUCID_TOKEN, which other
    /// users cannot see in ps)
    #[argh(option)]
    pub token: Option<String>,
}

/// Make the follower running on this machine a primary (POST
/// /api/admin/promote), e.g. when its primary is lost: it stops following,
/// begins a new epoch and takes writes at once. Then remove
/// replication.primary from its config.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "promote")]
pub struct PromoteArgs {
    /// the node's address, e.g. http://127.0.0.1:7021 (default: the
    /// configured bind_address and port)
    #[argh(option)]
    pub url: Option<String>,

    /// a token with the admin scope (default: $LUCID_TOKEN, which other
    /// users cannot see in ps)
    #[argh(option)]
    pub token: Option<String>,
}

/// Save, verify and restore snapshots: point-in-time images of the store.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "snapshot")]
pub struct SnapshotArgs {
    #[argh(subcommand)]
    pub command: SnapshotCommand,
}

/// The `snapshot` subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum SnapshotCommand {
    /// `lucid snapshot save`
    Save(SnapshotSaveArgs),
    /// `lucid snapshot verify`
    Verify(SnapshotVerifyArgs),
    /// `lucid snapshot restore`
    Restore(SnapshotRestoreArgs),
}

/// Download a snapshot of a running node (GET /api/admin/snapshot) to FILE:
/// written aside, synced, verified, then renamed, so FILE is whole or
/// absent. The node keeps serving meanwhile.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "save")]
pub struct SnapshotSaveArgs {
    /// the file to write
    #[argh(positional)]
    pub file: PathBuf,

    /// the node's address, e.g. http://127.0.0.1:7021 (default: the
    /// configured bind_address and port)
    #[argh(option)]
    pub url: Option<String>,

    /// a token with the admin scope (default: $LUCID_TOKEN, which other
    /// users cannot see in ps)
    #[argh(option)]
    pub token: Option<String>,
}

/// Check a snapshot file whole; exits 0 if it is good, else says what is
/// wrong. An encrypted one is checked fully only with its key.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "verify")]
pub struct SnapshotVerifyArgs {
    /// the snapshot file
    #[argh(positional)]
    pub file: PathBuf,

    /// the store's key file, to check an encrypted snapshot's records too
    /// (default: the configured one, when encryption is enabled)
    #[argh(option)]
    pub key_file: Option<PathBuf>,
}

/// Restore a snapshot into the configured data directory, with the node
/// stopped. A directory holding data is refused unless --force.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "restore")]
pub struct SnapshotRestoreArgs {
    /// the snapshot file
    #[argh(positional)]
    pub file: PathBuf,

    /// restore even if the directory holds data: its log is set aside as
    /// data.log.before-restore-TIME (never deleted)
    #[argh(switch)]
    pub force: bool,
}

/// Manage API tokens (signed with the config's authentication.secret_key).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "tokens")]
pub struct TokensArgs {
    #[argh(subcommand)]
    pub command: TokensCommand,
}

/// The `tokens` subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum TokensCommand {
    /// `lucid tokens issue`
    Issue(IssueArgs),
}

/// Print a new token, e.g. `lucid tokens issue --scope read --prefix
/// sensors/ --expires 30d --subject dashboard`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "issue")]
pub struct IssueArgs {
    /// a scope to grant: read, write, admin, or replicate (for a
    /// follower; it grants nothing else); repeat for more
    #[argh(option, from_str_fn(parse_scope))]
    pub scope: Vec<Scope>,
    /// limit the token to keys starting with this prefix (repeat for
    /// more); without one it reaches every key
    #[argh(option)]
    pub prefix: Vec<String>,
    /// PREFIX=SCOPES: under PREFIX, grant exactly SCOPES (comma-separated,
    /// or "none") instead of the --scope list; the longest matching prefix
    /// wins, e.g. --prefix sensors/ --rule sensors/private/=none
    #[argh(option, from_str_fn(parse_rule))]
    pub rule: Vec<PrefixRule>,
    /// how long the token is valid: a number with s, m, h, d or y, e.g. 30d
    #[argh(option, from_str_fn(parse_duration))]
    pub expires: Duration,
    /// who the token is for (its "sub" claim)
    #[argh(option)]
    pub subject: Option<String>,
}

fn parse_scope(name: &str) -> Result<Scope, String> {
    Scope::parse(name).ok_or_else(|| {
        format!("unknown scope {name:?}: use read, write or admin (or replicate, for a follower)")
    })
}

fn parse_rule(rule: &str) -> Result<PrefixRule, String> {
    let (prefix, scopes) = rule
        .rsplit_once('=')
        .ok_or_else(|| format!("{rule:?} is not PREFIX=SCOPES, e.g. secrets/=none"))?;
    let scopes = match scopes {
        "none" => Vec::new(),
        list => list.split(',').map(parse_scope).collect::<Result<_, _>>()?,
    };
    Ok(PrefixRule::Scoped {
        prefix: prefix.to_string(),
        scopes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1y"), Ok(Duration::from_secs(31_536_000)));
        for bad in ["", "d", "30", "0d", "-1d", "1w", "99999999999999999y", "3é"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules() {
        assert_eq!(
            parse_rule("a=b/=read,write"),
            Ok(PrefixRule::Scoped {
                prefix: "a=b/".into(),
                scopes: vec![Scope::Read, Scope::Write]
            })
        );
        assert_eq!(
            parse_rule("x/=none"),
            Ok(PrefixRule::Scoped {
                prefix: "x/".into(),
                scopes: vec![]
            })
        );
        assert!(parse_rule("x/").is_err());
        assert!(parse_rule("x/=root").is_err());
    }

    #[test]
    fn tokens_issue_takes_the_replicate_scope() {
        let args = ["--scope", "replicate", "--scope", "read", "--expires", "1y"];
        let issue = IssueArgs::from_args(&["lucid tokens issue"], &args).unwrap();
        assert_eq!(issue.scope, [Scope::Replicate, Scope::Read]);
        let err = parse_scope("replica").unwrap_err();
        assert!(err.contains("replicate"), "{err}");
    }

    #[test]
    fn promote_takes_a_url_and_a_token() {
        let parse = |words: &[&str]| match Args::from_args(&["lucid"], words) {
            Ok(Args {
                command: Command::Promote(promote),
                ..
            }) => Ok((promote.url, promote.token)),
            Ok(other) => panic!("{other:?}"),
            Err(early) => Err(early.output),
        };
        assert_eq!(parse(&["promote"]), Ok((None, None)));
        let words = ["promote", "--url", "http://127.0.0.1:7022", "--token", "t"];
        let expected = (Some("http://127.0.0.1:7022".into()), Some("t".into()));
        assert_eq!(parse(&words), Ok(expected));
        let err = parse(&["promote", "now"]).unwrap_err();
        assert!(err.contains("now"), "{err}");
        let err = parse(&["promote", "--url"]).unwrap_err();
        assert!(err.contains("--url"), "{err}");
    }
}
