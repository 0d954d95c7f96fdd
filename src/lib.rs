//! Lucid: a small, fast, trustworthy key-value node with an HTTP API.
//!
//! * [`store`] is the storage engine (log, index, recovery, compaction).
//! * [`http`] serves the HTTP API over the store; [`auth`] decides who may
//!   use it.
//! * [`watch`] is the change feed that watchers subscribe to.
//! * [`replication`] keeps followers in step with a primary.
//! * [`config`] reads `lucid.yml`; [`notify`] speaks systemd's notify protocol.
//! * [`cli`] parses the command line; [`commands`] does what each command says.
//! * [`tls_trust`] is whom the node's TLS clients (a follower, the MQTT
//!   bridge) trust.
//! * [`clock`] and [`locks`] are small helpers every part shares.

pub mod auth;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod duration;
pub mod http;
pub mod locks;
pub mod logging;
pub mod memory;
pub mod mqtt;
pub mod notify;
pub mod replication;
pub mod store;
pub mod tls_trust;
pub mod watch;
