//! Command-line arguments (argh). Parsing only: the work is in `commands`.

use std::path::PathBuf;

use argh::FromArgs;

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
}

/// Write a commented configuration file (to --config, $LUCID_CONFIG or
/// ./lucid.yml).
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
    /// as data.log.broken-<time>
    #[argh(switch)]
    pub repair: bool,
}

/// Compact the data directory offline: rewrite the log with only live
/// records. If a server is running on the directory, it is left alone.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "compact")]
pub struct CompactArgs {
    /// write the compacted log encrypted with this key file instead (key
    /// rotation, or encrypting a plain store); then point
    /// encryption.key_file at it
    #[argh(option)]
    pub new_key_file: Option<PathBuf>,
}
