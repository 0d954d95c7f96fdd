//! `lucid compact`: offline compaction of the data directory.

use std::path::Path;

use super::CommandResult;
use crate::config::Config;
use crate::store::{self, OpenError};

/// Opens the data directory (recovering it), compacts it and prints what
/// changed. If a server holds the directory, nothing is touched and the
/// message says how to ask the server instead.
pub fn run(config_path: Option<&Path>) -> CommandResult {
    let (config, _) = Config::load(config_path)?;
    let storage = &config.storage;
    let (store, _) = match store::open(&storage.directory, storage.sync_mode()) {
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
    let report = store.compact()?;
    println!("compacted {}", storage.directory.display());
    println!("  bytes before:    {}", report.bytes_before);
    println!("  bytes after:     {}", report.bytes_after);
    println!("  live keys:       {}", report.live_keys);
    println!(
        "  time:            {:.1} ms",
        report.duration.as_secs_f64() * 1000.0
    );
    Ok(())
}
