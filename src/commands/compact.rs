//! `lucid compact`: offline compaction of the data directory, or, beside a
//! running server, asking the server to compact.

use std::path::Path;
use std::sync::Arc;

use super::{remote, CommandResult};
use crate::cli::CompactArgs;
use crate::config::Config;
use crate::store::crypt::Cipher;
use crate::store::{self, OpenError, SyncMode};

/// Opens the data directory (recovering it), compacts it and prints what
/// changed. With `--new-key-file`, the new log is encrypted with that key
/// instead (key rotation, or encrypting a plain store). If a server holds
/// the directory, its files are not touched: with a token (`--token` or
/// `$LUCID_TOKEN`) the server is asked to compact, else the message says
/// how to ask it.
pub fn run(config_path: Option<&Path>, args: CompactArgs) -> CommandResult {
    let (config, _) = Config::load(config_path)?;
    let storage = &config.storage;
    let new_key_file = args.new_key_file.as_deref();
    let cipher = config.encryption.cipher()?;
    let new_cipher = new_key_file.map(Cipher::load).transpose()?.map(Arc::new);
    // Offline nothing is written but by compaction, which fsyncs what it
    // writes: no periodic sync (its sync marker would be a write arriving
    // during a re-encryption).
    let opened = store::open_with(&storage.directory, SyncMode::Never, cipher.clone());
    let (store, _) = match opened {
        Ok(opened) => opened,
        Err(OpenError::Locked(dir)) => {
            let held = format!(
                "a Lucid server is running on {} and holds it, so the files were not touched",
                dir.display()
            );
            if new_key_file.is_some() {
                return Err(format!("{held}. Stop it to re-encrypt the log").into());
            }
            return ask_the_server(&config, &held, remote::token(args.token));
        }
        Err(err) => return Err(err.into()),
    };
    let report = match (new_cipher, new_key_file) {
        (Some(new_cipher), Some(path)) => {
            let report = store.compact_with(Some(new_cipher))?;
            // Absolute: in the config, a relative path would be relative to
            // the config's directory.
            let path = std::path::absolute(path)?;
            say!(
                "re-encrypted {} with {}: set encryption.enabled: true and encryption.key_file: {} \
                 in the config before starting the node again",
                storage.directory.display(),
                path.display(),
                path.display()
            )?;
            report
        }
        _ => store.compact()?,
    };
    say!("compacted {}", storage.directory.display())?;
    print_report(
        report.bytes_before,
        report.bytes_after,
        report.live_keys as u64,
        report.duration.as_secs_f64() * 1000.0,
    )?;
    Ok(())
}

/// Asks the running server to compact with `token`, or, without one, fails
/// with `held` and how to ask it.
fn ask_the_server(config: &Config, held: &str, token: Option<String>) -> CommandResult {
    let path = "/api/admin/compact";
    let url = remote::url(&config.general, path);
    let Some(token) = token else {
        let header = if config.authentication.enabled {
            " -H \"Authorization: Bearer $TOKEN\""
        } else {
            ""
        };
        let target = url.unwrap_or_else(|why| format!("http://ADDRESS:PORT{path} ({why})"));
        return Err(format!(
            "{held}. Ask it to compact instead: give a token with the admin scope to \
             `lucid compact --token` (or in ${}), or run: curl -X POST{header} {target}",
            remote::TOKEN_VAR
        )
        .into());
    };
    let url = url.map_err(|why| format!("{held}, and it cannot be asked to compact: {why}"))?;
    let answer = remote::post(&url, Some(&token), b"")?;
    if answer.status != 200 {
        return Err(format!(
            "{held}; asked to compact, it answered: {}",
            answer.message()
        )
        .into());
    }
    let number = |field: &str| answer.body[field].as_u64().unwrap_or(0);
    say!("compacted by the running server ({url})")?;
    print_report(
        number("bytes_before"),
        number("bytes_after"),
        number("live_keys"),
        answer.body["duration_ms"].as_f64().unwrap_or(0.0),
    )?;
    Ok(())
}

/// Prints what a compaction did.
fn print_report(
    bytes_before: u64,
    bytes_after: u64,
    live_keys: u64,
    duration_ms: f64,
) -> std::io::Result<()> {
    say!("  bytes before:    {bytes_before}")?;
    say!("  bytes after:     {bytes_after}")?;
    say!("  live keys:       {live_keys}")?;
    say!("  time:            {duration_ms:.1} ms")
}
