//! `lucid server`: recovers the store, serves the HTTP API until SIGTERM or
//! SIGINT, then syncs the log and writes the hint file.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::CommandResult;
use crate::config::Config;
use crate::http::{Context, HttpServer};
use crate::{logging, store};

/// Loads the config, opens the data directory, serves until asked to stop,
/// and closes the store cleanly.
pub fn run(config_path: Option<&Path>) -> CommandResult {
    let (config, source) = Config::load(config_path)?;
    logging::init(config.logging.level)?;
    let storage = &config.storage;
    let (store, report) = store::open(&storage.directory, storage.sync_mode())?;
    store::spawn_compactor(&store, config.compaction.policy());
    let server = HttpServer::bind(&config.general)?;
    let addr = server
        .local_addr()
        .ok_or("the server is not bound to an IP address")?;
    log::info!(
        "lucid {} listening on http://{addr} (config: {source}; data: {}; {} keys, {} from the hint file, {} log records read, recovered in {:.1} ms; sync: {}; {} threads)",
        env!("CARGO_PKG_VERSION"),
        storage.directory.display(),
        report.keys,
        report.hint_keys.unwrap_or(0),
        report.records,
        report.elapsed.as_secs_f64() * 1000.0,
        storage.sync,
        server.threads(),
    );
    server.run(Context {
        store: Arc::clone(&store),
        max_key_bytes: storage.max_key_bytes,
        max_value_bytes: storage.max_value_bytes,
    })?;
    let closing = Instant::now();
    store.close()?;
    log::info!(
        "stopped cleanly: log synced, hint file written ({:.1} ms)",
        closing.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}
