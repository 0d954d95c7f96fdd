//! `lucid compact`: offline compaction of the data directory.

use super::CommandResult;
use crate::config::Config;
use std::path::Path;
use std::sync::Arc;

use crate::store::crypt::Cipher;
use crate::store::{self, OpenError, SyncMode};

/// Opens the data directory (recovering it), compacts it and prints what
/// changed. With `new_key_file`, the new log is encrypted with that key
/// instead (key rotation, or encrypting a plain store). If a server holds
/// the directory, nothing is touched and the message says how to ask the
/// server instead.
pub fn run(config_path: Option<&Path>, new_key_file: Option<&Path>) -> CommandResult {
    let (config, _) = Config::load(config_path)?;
    let storage = &config.storage;
    let cipher = config.encryption.cipher()?;
    let new_cipher = new_key_file.map(Cipher::load).transpose()?.map(Arc::new);
    // Offline nothing is written but by compaction, which fsyncs what it
    // writes: no periodic sync (its sync marker would be a write arriving
    // during a re-encryption).
    let opened = store::open_with(&storage.directory, SyncMode::Never, cipher.clone());
    let (store, _) = match opened {
        Ok(opened) => opened,
        Err(OpenError::Locked(dir)) => {
            let general = &config.general;
            return Err(format!(
                "a Lucid server is running on {} and holds it, so the files were not touched. \
                 Ask it to compact instead: curl -X POST http://{}:{}/api/admin/compact",
                dir.display(),
                general.bind_address,
                general.port
            )
            .into());
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
    say!("  bytes before:    {}", report.bytes_before)?;
    say!("  bytes after:     {}", report.bytes_after)?;
    say!("  live keys:       {}", report.live_keys)?;
    say!(
        "  time:            {:.1} ms",
        report.duration.as_secs_f64() * 1000.0
    )?;
    Ok(())
}
