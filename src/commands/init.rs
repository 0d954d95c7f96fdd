//! `lucid init`: writes the documented sample configuration with
//! authentication on and a new random secret, and prints a root token once.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{note, CommandResult};
use crate::auth::{generate_secret, LucidClaims, Scope, Tokens};
use crate::cli::InitArgs;
use crate::config::{Config, DEFAULT_PATH, ENV_VAR, SAMPLE};
use crate::store::crypt::Cipher;

/// The sample's `encryption` settings, turned on by `--encrypt`: its
/// `key_file` is relative to the config's directory, where the key goes.
const ENCRYPTION_OFF: &str = "  enabled: false\n  key_file: ./lucid.key\n";
/// [`ENCRYPTION_OFF`] turned on.
const ENCRYPTION_ON: &str = "  enabled: true\n  key_file: ./lucid.key\n";
/// The sample's listening address, replaced by `--bind-address`.
const BIND_ADDRESS: (&str, &str) = ("bind_address", "127.0.0.1");
/// The sample's data directory, replaced by `--data-dir`.
const DIRECTORY: (&str, &str) = ("directory", "./lucid-data");
/// Printed before the root token.
const ROOT_TOKEN_NOTE: &str =
    "Root token (read, write and admin on every key; valid for 365 days). \
     It is shown only now and not stored; keep it safe, and make narrower ones with \
     `lucid tokens issue`:";

/// How long the root token printed by `init` is valid.
pub const ROOT_TOKEN_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// Writes the config to `path` (default `$LUCID_CONFIG`, else
/// `./lucid.yml`), readable by its owner only, or to stdout with
/// `args.stdout`; refuses to replace an existing file unless `args.force` is
/// set. Prints the root token (to stderr with `--stdout`). With
/// `args.encrypt`, also creates a key file beside the config and enables
/// encryption.
pub fn run(path: Option<&Path>, args: &InitArgs) -> CommandResult {
    if args.stdout && args.encrypt {
        return Err(
            "--encrypt writes a key file beside the config file, so it cannot go \
             with --stdout: give the config a path (--config FILE) instead"
                .into(),
        );
    }
    let mut text = customized(&with_secret(&generate_secret()?), args)?;
    let config = Config::parse(&text)?;
    let root = LucidClaims {
        scopes: Some(vec![Scope::Read, Scope::Write, Scope::Admin]),
        prefixes: None,
    };
    let token =
        Tokens::new(&config.authentication).issue(root, ROOT_TOKEN_VALIDITY, Some("root"))?;
    if args.stdout {
        std::io::stdout().write_all(text.as_bytes())?;
        note(format_args!(
            "Wrote the configuration, with authentication on and a new secret, to stdout: \
             keep it private."
        ));
        note(format_args!("{ROOT_TOKEN_NOTE}"));
        note(format_args!("{token}"));
        return Ok(());
    }
    let from_env = std::env::var_os(ENV_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let path = path
        .map(Path::to_path_buf)
        .or(from_env)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
    let path = path.as_path();
    let mut options = OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    if args.force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let cannot_write = |err| format!("cannot write {}: {err}", path.display());
    let mut file = options.open(path).map_err(|err| match err.kind() {
        ErrorKind::AlreadyExists => format!(
            "{} already exists; use `lucid init --force` to overwrite it",
            path.display()
        ),
        _ => cannot_write(err),
    })?;
    // An existing file keeps its mode when opened: make it private too.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(cannot_write)?;
    let key_file = path.with_file_name("lucid.key");
    if args.encrypt {
        Cipher::create_key_file(&key_file)?;
        text = text.replacen(ENCRYPTION_OFF, ENCRYPTION_ON, 1);
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(cannot_write)?;
    // Printed only once every file is written, so a closed stdout leaves
    // nothing half-done; but the token is then lost: say how to make one.
    print_summary(path, args.encrypt.then_some(key_file.as_path()), &token).map_err(|err| {
        format!(
            "wrote {path}, but the root token could not be printed ({err}); make one with: \
             lucid --config {path} tokens issue --scope read --scope write --scope admin \
             --expires 365d --subject root",
            path = path.display()
        )
    })?;
    Ok(())
}

/// Tells what `init` wrote, then prints the root token (last, so
/// `lucid init | tail -1` is the token).
fn print_summary(path: &Path, key_file: Option<&Path>, token: &str) -> std::io::Result<()> {
    if let Some(key_file) = key_file {
        say!(
            "Created the encryption key {} (mode 0600). Keep a copy somewhere safe: without it the data cannot be read.",
            key_file.display()
        )?;
    }
    say!(
        "Wrote {} with authentication on and a new secret: keep the file private. \
         Start the node with: lucid --config {} server",
        path.display(),
        path.display()
    )?;
    say!("{ROOT_TOKEN_NOTE}")?;
    say!("{token}")
}

/// `text` with the listening address and data directory given by
/// `--bind-address` and `--data-dir`, if any.
fn customized(text: &str, args: &InitArgs) -> Result<String, String> {
    let data_dir = args.data_dir.as_deref().map(Path::to_string_lossy);
    let settings = [
        (BIND_ADDRESS, args.bind_address.as_deref()),
        (DIRECTORY, data_dir.as_deref()),
    ];
    let mut text = text.to_string();
    for ((setting, default), value) in settings {
        let Some(value) = value else { continue };
        let line = format!("\n  {setting}: {default}\n");
        // A JSON string is a valid YAML scalar: any path or address is quoted safely.
        let quoted = serde_json::to_string(value).map_err(|err| err.to_string())?;
        let replaced = text.replacen(&line, &format!("\n  {setting}: {quoted}\n"), 1);
        assert_ne!(replaced, text, "the sample has the line {line:?}");
        text = replaced;
    }
    Ok(text)
}

/// The sample configuration with authentication on and `secret` as its key
/// (only the `authentication:` section is touched).
fn with_secret(secret: &str) -> String {
    let section = SAMPLE
        .find("\nauthentication:\n")
        .expect("the sample has an authentication section");
    let (before, auth) = SAMPLE.split_at(section);
    let auth = auth
        .replacen("\n  enabled: false\n", "\n  enabled: true\n", 1)
        .replacen(
            "\n  secret_key: \"\"\n",
            &format!("\n  secret_key: \"{secret}\"\n"),
            1,
        );
    format!("{before}{auth}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_config_turns_authentication_on_with_the_secret() {
        let secret = "ab".repeat(32);
        let config = Config::parse(&with_secret(&secret)).unwrap();
        assert!(config.authentication.enabled);
        assert_eq!(config.authentication.secret_key, secret);
        let expected = Config {
            authentication: config.authentication.clone(),
            ..Config::default()
        };
        assert_eq!(config, expected, "only authentication differs");
    }
}
