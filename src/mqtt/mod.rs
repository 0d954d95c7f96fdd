//! The MQTT bridge: every change of the store published to a broker, and
//! messages from a broker stored as keys.
//!
//! * [`settings`]: the `mqtt:` section of the configuration.

pub mod cursor;
pub mod ingest;
pub mod message;
pub mod settings;
