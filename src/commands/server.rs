//! `lucid server`: recovers the store and serves the HTTP API.

use std::path::Path;

use super::CommandResult;
use crate::config::Config;
use crate::http::{Context, HttpServer};
use crate::{logging, store};

/// Loads the config, opens the data directory and serves until killed.
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
        store,
        max_key_bytes: storage.max_key_bytes,
        max_value_bytes: storage.max_value_bytes,
    });
    Ok(())
}
