//! `lucid server`: recovers the store, serves the HTTP API until SIGTERM or
//! SIGINT, then syncs the log and writes the hint file. Warns loudly when
//! the API is open to the network without authentication.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::CommandResult;
use crate::auth::Auth;
use crate::backup::{self, BackupStatus};
use crate::config::{Config, Source};
use crate::http::{Context, HttpServer};
use crate::memory::{self, MemoryBudget};
use crate::mqtt::Bridge;
use crate::notify::Notifier;
use crate::replication::Replication;
use crate::store::{directory::OpenReport, Store};
use crate::{http, logging, store};

/// Loads the config, opens the data directory, serves until asked to stop,
/// and closes the store cleanly.
pub fn run(config_path: Option<&Path>) -> CommandResult {
    let signals = http::stop_signals()?;
    let (config, source) = Config::load(config_path)?;
    logging::init(config.logging.level)?;
    memory::configure_allocator();
    let storage = &config.storage;
    let memory = Arc::new(MemoryBudget::new(
        storage.memory_budget,
        storage.max_value_bytes,
    ));
    lucid_http::set_body_budget(Arc::clone(&memory) as Arc<dyn lucid_http::BodyBudget>);
    // Bound before the data directory is opened, so that a port in use
    // leaves no new directory behind. Connections made during recovery wait
    // for it, as they would in the listen backlog.
    let server = HttpServer::bind(&config.general, storage)?;
    let cipher = config.encryption.cipher()?;
    let (store, report) = store::open_with(&storage.directory, storage.sync_mode(), cipher)?;
    let watch = &config.watch;
    store.events().set_limits(watch.history, watch.queue);
    store::spawn_compactor(&store, config.compaction.policy());
    let node_name = config.general.node_name();
    // A primary sweeps expired keys; a follower applies its primary's sweep.
    let replication = Replication::start(
        &store,
        storage.directory.clone(),
        &config.replication,
        &node_name,
        storage.max_value_bytes,
    )?;
    // The bridge ships a primary's changes; a follower's are its primary's.
    // Started before the node says it serves: a bridge that cannot start
    // (an unreadable mqtt.ca_file) stops the node instead.
    let bridge = match replication.primary() {
        None => Bridge::start(
            &store,
            &config.mqtt,
            &node_name,
            storage.max_key_bytes,
            storage.max_value_bytes,
        )?,
        Some(primary) => {
            if config.mqtt.enabled() {
                log::info!(
                    "the MQTT bridge runs on the primary ({primary}); this follower does not \
                     start it (it does once promoted and restarted)"
                );
            }
            None
        }
    };
    let backups = backup::spawn_backups(&store, &config.backup, node_name.clone());
    let addr = server
        .local_addr()
        .ok_or("the server is not bound to an IP address")?;
    log_listening(&server, addr, &config, &source, &report);
    let notifier = Arc::new(Notifier::from_env());
    notifier.ready(&format!("serving on {addr}, {} keys", report.keys));
    spawn_watchdog(&notifier)?;
    if exposed_without_auth(config.authentication.enabled, addr.ip()) {
        warn_exposed(addr);
    }
    let ctx = context(&config, &store, memory, &node_name, backups)
        .with_replication(Arc::clone(&replication))
        .with_bridge(bridge.clone());
    let events = Arc::clone(&store);
    server.run(ctx, signals, move || {
        notifier.stopping();
        replication.stop();
        if let Some(bridge) = &bridge {
            bridge.stop();
        }
        // Ends every watcher's stream, so their clients see the stop.
        events.events().close();
    })?;
    close(&store)
}

/// Logs that the node is serving: where, from which config and data, and
/// how recovery went.
fn log_listening(
    server: &HttpServer,
    addr: SocketAddr,
    config: &Config,
    source: &Source,
    report: &OpenReport,
) {
    let storage = &config.storage;
    log::info!(
        "lucid {} listening on {}://{addr} (config: {source}; data: {}{}; {} keys, {} from the hint file, {} log records read, recovered in {:.1} ms; sync: {}; {} requests at once)",
        env!("CARGO_PKG_VERSION"),
        server.scheme(),
        storage.directory.display(),
        if config.encryption.enabled { ", encrypted" } else { "" },
        report.keys,
        report.hint_keys.unwrap_or(0),
        report.records,
        report.elapsed.as_secs_f64() * 1000.0,
        storage.sync,
        server.threads(),
    );
}

/// What the API's workers share, as the config says.
fn context(
    config: &Config,
    store: &Arc<Store>,
    memory: Arc<MemoryBudget>,
    node_name: &str,
    backups: Option<Arc<BackupStatus>>,
) -> Context {
    let storage = &config.storage;
    Context::new(
        Arc::clone(store),
        storage.max_key_bytes,
        storage.max_value_bytes,
    )
    .with_max_watchers(config.watch.max_watchers)
    .with_memory_budget(memory)
    .with_auth(
        Auth::from_config(&config.authentication),
        config.authentication.metrics_public,
    )
    .with_ui(config.ui.enabled)
    .with_backups(node_name, backups)
}

/// Starts the thread that pings the service manager's watchdog, if it
/// asks for pings.
fn spawn_watchdog(notifier: &Arc<Notifier>) -> io::Result<()> {
    if let Some(period) = notifier.watchdog_period() {
        let pinger = Arc::clone(notifier);
        std::thread::Builder::new()
            .name("lucid-watchdog".into())
            .spawn(move || loop {
                pinger.watchdog();
                std::thread::sleep(period);
            })?;
    }
    Ok(())
}

/// Warns that the API on `addr` is open to the network without
/// authentication.
fn warn_exposed(addr: SocketAddr) {
    log::warn!(
        "AUTHENTICATION IS OFF and the API listens on {addr}, beyond this machine: anyone who \
         can reach the port can read, change and delete every key. Set \
         authentication.enabled (see `lucid init`) or bind_address: 127.0.0.1"
    );
}

/// Closes the store (syncs the log, writes the hint file) and logs how long
/// it took.
fn close(store: &Store) -> CommandResult {
    let closing = Instant::now();
    store.close()?;
    log::info!(
        "stopped cleanly: log synced, hint file written ({:.1} ms)",
        closing.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Whether the API is open to other machines with no authentication.
fn exposed_without_auth(auth_enabled: bool, ip: IpAddr) -> bool {
    !auth_enabled && !ip.is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_non_loopback_address_without_authentication_is_exposed() {
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let lan: IpAddr = "192.168.1.20".parse().unwrap();
        assert!(exposed_without_auth(false, any));
        assert!(exposed_without_auth(false, lan));
        assert!(!exposed_without_auth(true, any));
        assert!(!exposed_without_auth(false, "127.0.0.1".parse().unwrap()));
        assert!(!exposed_without_auth(false, "::1".parse().unwrap()));
    }
}
