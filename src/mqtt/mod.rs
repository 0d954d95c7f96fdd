//! The MQTT bridge: every change of the store published to a broker (store
//! and forward: the log is the outbox), and messages from a broker stored
//! as keys.
//!
//! * [`settings`]: the `mqtt:` section of the configuration;
//! * [`session`]: one connection to the broker (MQTT 3.1.1, QoS 1);
//! * [`link`]: the bytes' way to the broker (TCP, or TLS for `mqtts://`);
//! * [`message`]: a change as a message (topic, payload, gap);
//! * [`cursor`]: the last change the broker acknowledged, kept durably;
//! * [`ingest`]: which subscription a topic matches, and storing messages;
//! * [`bridge`]: the thread that does it all.
//!
//! [`Bridge`] is what the node and its HTTP API see: the bridge's status
//! (`GET /api/admin/mqtt`, `/metrics`).

pub mod bridge;
pub mod cursor;
pub mod ingest;
pub mod link;
pub mod message;
pub mod session;
pub mod settings;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::clock::now_ms;
use crate::locks::lock;
use crate::store::Store;
use cursor::Position;
use session::{SessionError, SessionOptions};
use settings::MqttSettings;

/// The bridge's figures (`GET /api/admin/mqtt`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BridgeStatus {
    /// The broker.
    pub broker: String,
    /// Whether the link is up.
    pub connected: bool,
    /// Since when it is up or down, ms since the epoch.
    pub since_ms: u64,
    /// Every change up to this sequence number was shipped (or dropped).
    pub cursor: u64,
    /// Changes written and not shipped yet.
    pub backlog_changes: u64,
    /// The bytes of log they take (as last measured).
    pub backlog_bytes: u64,
    /// A gap still to announce, `[from, to]`.
    pub gap: Option<(u64, u64)>,
    /// Messages the broker acknowledged.
    pub published: u64,
    /// Connections made (the first, and each time the link came back).
    pub connections: u64,
    /// Attempts to connect that failed, and links that broke: each is
    /// retried after the backoff.
    pub retries: u64,
    /// Changes dropped past `mqtt.max_backlog_bytes`.
    pub dropped: u64,
    /// Messages received on the subscriptions.
    pub received: u64,
    /// Messages stored as keys.
    pub stored: u64,
    /// Messages that could not be stored (logged, acknowledged anyway).
    pub refused: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// The bridge, as the node sees it.
pub struct Bridge {
    store: Arc<Store>,
    settings: MqttSettings,
    session: Arc<SessionOptions>,
    node: String,
    max_key_bytes: usize,
    max_value_bytes: usize,
    status: Mutex<BridgeStatus>,
    stopping: AtomicBool,
}

impl Bridge {
    /// Starts the bridge `settings` describes over `store` (on its own
    /// thread), or returns `None` when it is off.
    pub fn start(
        store: &Arc<Store>,
        settings: &MqttSettings,
        node: &str,
        max_key_bytes: usize,
        max_value_bytes: usize,
    ) -> Result<Option<Arc<Self>>, String> {
        if !settings.enabled() {
            return Ok(None);
        }
        let session = Arc::new(SessionOptions::new(settings, node, max_value_bytes)?);
        let bridge = Arc::new(Self {
            store: Arc::clone(store),
            settings: settings.clone(),
            session,
            node: node.to_owned(),
            max_key_bytes,
            max_value_bytes,
            status: Mutex::new(BridgeStatus {
                broker: settings.url.clone(),
                since_ms: now_ms(),
                ..BridgeStatus::default()
            }),
            stopping: AtomicBool::new(false),
        });
        let shipper = bridge::Shipper::new(Arc::clone(&bridge))?;
        std::thread::Builder::new()
            .name("lucid-mqtt".into())
            .spawn(move || shipper.run())
            .map_err(|err| format!("cannot start the MQTT bridge's thread: {err}"))?;
        log::info!(
            "MQTT bridge to {} started ({}{} subscriptions)",
            settings.url,
            if settings.publish.enabled {
                "publishing changes, "
            } else {
                ""
            },
            settings.subscribe.len()
        );
        Ok(Some(bridge))
    }

    /// Stops the bridge's thread (the node is stopping).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// The figures now.
    pub fn status(&self) -> BridgeStatus {
        let mut status = lock(&self.status).clone();
        status.backlog_changes = self.store.last_sequence().saturating_sub(status.cursor);
        status
    }

    fn update(&self, change: impl FnOnce(&mut BridgeStatus)) {
        change(&mut lock(&self.status));
    }

    fn note_connected(&self, connected: bool) {
        self.update(|status| {
            status.connections += u64::from(connected);
            status.connected = connected;
            status.since_ms = now_ms();
            if connected {
                status.last_error = None;
            }
        });
        if connected {
            log::info!("MQTT bridge connected to {}", self.settings.url);
        }
    }

    fn note_error(&self, err: &SessionError) {
        self.update(|status| {
            status.retries += 1;
            status.last_error = Some(err.to_string());
        });
    }

    fn note_position(&self, position: Position) {
        self.update(|status| {
            status.cursor = position.shipped;
            status.gap = position.gap;
        });
    }

    fn note_backlog(&self, bytes: u64) {
        self.update(|status| status.backlog_bytes = bytes);
    }

    fn note_dropped(&self, changes: u64) {
        self.update(|status| status.dropped += changes);
    }

    fn note_published(&self, messages: u64) {
        self.update(|status| status.published += messages);
    }

    fn note_received(&self) {
        self.update(|status| status.received += 1);
    }

    fn note_stored(&self, stored: usize, refused: usize) {
        self.update(|status| {
            status.stored += stored as u64;
            status.refused += refused as u64;
        });
    }
}
