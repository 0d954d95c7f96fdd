//! The node's configuration: the `lucid.yml` schema, its defaults, and where
//! it is read from. Unknown keys are errors that name the key, so a typo
//! never silently falls back to a default. Relative paths in a file are
//! relative to the file's own directory, wherever the node is started from;
//! without a file (the built-in defaults), to the working directory.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::store::crypt::Cipher;
use crate::store::record::{MAX_KEY_LEN, MAX_VALUE_LEN};
use crate::store::{CompactionPolicy, SyncMode};
use crate::tls_trust::CaFile;
use crate::watch::{DEFAULT_HISTORY, DEFAULT_QUEUE};

/// The documented sample configuration, written by `lucid init`. Every value
/// in it is the built-in default (a unit test holds them equal).
pub const SAMPLE: &str = include_str!("../lucid.yml");

/// Where `lucid init` writes when `--config` is not given.
pub const DEFAULT_PATH: &str = "lucid.yml";

/// Environment variable naming the config file when `--config` is not given.
pub const ENV_VAR: &str = "LUCID_CONFIG";

/// How to make a config file, for the message when the one named is missing
/// (the container image names /etc/lucid/lucid.yml and has no shell).
const MAKE_ONE: &str = "(create one with `lucid init`, or print one with `lucid init --stdout`; \
     with the container image: `docker run --rm IMAGE init --stdout --bind-address 0.0.0.0 \
     --data-dir /var/lib/lucid > lucid.yml`, then mount it there read-only)";

/// Files tried, in order, when neither `--config` nor `$LUCID_CONFIG` names one.
pub const SEARCH_PATH: [&str; 2] = ["lucid.yml", "/etc/lucid/lucid.yml"];

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Network settings.
    pub general: General,
    /// Storage engine settings.
    pub storage: Storage,
    /// Background compaction settings.
    pub compaction: Compaction,
    /// Encryption at rest.
    pub encryption: Encryption,
    /// Log output settings.
    pub logging: Logging,
    /// Live watch settings.
    pub watch: Watch,
    /// Who may use the API.
    pub authentication: Authentication,
    /// The web console.
    pub ui: Ui,
    /// Scheduled backups.
    pub backup: Backup,
    /// Following a primary, and the acknowledgements a primary waits for.
    pub replication: Replication,
    /// The bridge to an MQTT broker.
    pub mqtt: crate::mqtt::settings::MqttSettings,
}

/// `backup:` — snapshots written on a schedule (see [`crate::backup`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backup {
    /// Where the snapshots go (a relative path is relative to the config
    /// file's directory); empty = no scheduled backups.
    pub directory: PathBuf,
    /// How often, as `90s`, `15m`, `1h`, `1d`; `None` (empty, the
    /// default) = no scheduled backups.
    #[serde(deserialize_with = "optional_duration")]
    pub interval: Option<Duration>,
    /// Snapshots kept in `directory`: the oldest beyond this are deleted.
    pub keep: usize,
}

impl Default for Backup {
    fn default() -> Self {
        Self {
            directory: PathBuf::new(),
            interval: None,
            keep: 24,
        }
    }
}

impl Backup {
    /// Whether backups are scheduled.
    pub fn enabled(&self) -> bool {
        self.interval.is_some()
    }

    fn validate(&self) -> Result<(), String> {
        match (self.interval, self.directory.as_os_str().is_empty()) {
            (Some(_), true) => Err(
                "backup.directory must name where the snapshots go when backup.interval is set"
                    .into(),
            ),
            (Some(_), false) if self.keep == 0 => {
                Err("backup.keep must be at least 1 (snapshots kept)".into())
            }
            _ => Ok(()),
        }
    }
}

/// `replication:` — whether this node follows a primary, and how many
/// followers a primary's writes wait for (see [`crate::replication`]).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Replication {
    /// The primary's URL, `http://host[:port]` (`https://` with the `tls`
    /// feature), without a trailing `/`; set = this node is a read-only
    /// follower of it. `None` (the default): this node is a primary.
    #[serde(deserialize_with = "primary_url")]
    pub primary: Option<String>,
    /// The token (scope `replicate`) a follower sends to its primary.
    #[serde(deserialize_with = "optional_text")]
    pub token: Option<String>,
    /// A file holding that token instead (a relative path is relative to
    /// the config file's directory); see [`Replication::follower_token`].
    #[serde(deserialize_with = "optional_path")]
    pub token_file: Option<PathBuf>,
    /// With an `https://` primary: a PEM file of the certificates trusted
    /// to sign its certificate (a private CA's, or the primary's own if it
    /// is self-signed), instead of the web PKI's roots; a relative path is
    /// relative to the config file's directory. Read when the node starts
    /// ([`crate::replication::client::PrimaryClient`]).
    #[serde(deserialize_with = "optional_path")]
    pub ca_file: Option<PathBuf>,
    /// On a primary: a write is acknowledged once durable here and on this
    /// many followers (0: here only).
    pub min_acks: usize,
    /// On a primary: how long a write waits for those followers before it
    /// is answered 504.
    pub ack_timeout_ms: u64,
}

/// Most followers a write may wait for (`replication.min_acks`).
const MAX_MIN_ACKS: usize = 16;

/// Accepted `replication.ack_timeout_ms`, in milliseconds.
const ACK_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 10..=600_000;

impl Default for Replication {
    fn default() -> Self {
        Self {
            primary: None,
            token: None,
            token_file: None,
            ca_file: None,
            min_acks: 0,
            ack_timeout_ms: 5000,
        }
    }
}

/// Never prints the token.
impl fmt::Debug for Replication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replication")
            .field("primary", &self.primary)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .field("min_acks", &self.min_acks)
            .field("ack_timeout_ms", &self.ack_timeout_ms)
            .finish()
    }
}

impl Replication {
    /// The token a follower sends to its primary: `token_file`'s content
    /// (trimmed), else `token`; `None` if neither is set.
    pub fn follower_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.token_file else {
            return Ok(self.token.clone());
        };
        let what = "the token (`lucid tokens issue --scope replicate` on the primary)";
        read_secret_file("replication.token_file", path, what)
            .map(Some)
            .map_err(ConfigError)
    }

    /// `ca_file`, as the follower's link to an `https://` primary trusts
    /// it.
    pub fn primary_trust(&self) -> CaFile {
        CaFile {
            setting: "replication.ca_file",
            server: "primary",
            path: self.ca_file.clone(),
        }
    }

    /// The certificates in `ca_file` (PEM), which alone are trusted to
    /// sign an `https://` primary's certificate; `None` if it is not set
    /// (the web PKI's roots are). Fails if the file cannot be read or holds
    /// no certificate.
    #[cfg(feature = "tls")]
    pub fn primary_certificates(
        &self,
    ) -> Result<Option<Vec<ureq::tls::Certificate<'static>>>, ConfigError> {
        let certificates = self.primary_trust().certificates().map_err(ConfigError)?;
        Ok(certificates.map(|certificates| {
            certificates
                .iter()
                .map(|der| ureq::tls::Certificate::from_der(der).to_owned())
                .collect()
        }))
    }

    fn validate(&self) -> Result<(), String> {
        if self.token.is_some() && self.token_file.is_some() {
            return Err(
                "replication.token and replication.token_file are both set: keep one".into(),
            );
        }
        if self.ca_file.is_some() {
            if !cfg!(feature = "tls") {
                return Err(
                    "replication.ca_file is set, but this build has no TLS: build with \
                     `--features tls`, or remove it and follow the primary over http://"
                        .into(),
                );
            }
            if let Some(primary) = self.primary.as_deref().filter(|p| p.starts_with("http:")) {
                return Err(format!(
                    "replication.ca_file is set, but replication.primary {primary} is not \
                     https://: the follower would not use it (and would send its token \
                     unencrypted); follow the primary over https://, or remove ca_file"
                ));
            }
        }
        if self.min_acks > MAX_MIN_ACKS {
            return Err(format!(
                "replication.min_acks must be at most {MAX_MIN_ACKS}, not {}",
                self.min_acks
            ));
        }
        if !ACK_TIMEOUT_MS.contains(&self.ack_timeout_ms) {
            return Err(format!(
                "replication.ack_timeout_ms must be between {} and {}, not {}",
                ACK_TIMEOUT_MS.start(),
                ACK_TIMEOUT_MS.end(),
                self.ack_timeout_ms
            ));
        }
        Ok(())
    }
}

/// The secret (a token, a password) in the file `path` that the setting
/// `setting` names, trimmed; an unreadable or empty file is an error
/// saying to put `what` in it.
pub fn read_secret_file(setting: &str, path: &Path, what: &str) -> Result<String, String> {
    let cannot = |why: String| {
        format!(
            "{setting} {}: {why}; put {what} in it, readable by the node's user only",
            path.display()
        )
    };
    let text = std::fs::read_to_string(path).map_err(|err| cannot(err.to_string()))?;
    match text.trim() {
        "" => Err(cannot("it is empty".into())),
        secret => Ok(secret.to_owned()),
    }
}

/// Checks `replication.primary`: a scheme this build speaks, a host, an
/// optional port, an optional `/` and nothing else; returns it without the
/// `/`.
fn check_primary_url(url: &str) -> Result<String, String> {
    let bad = |why: &str| {
        Err(format!(
            "replication.primary {url:?} {why}; give the primary's address as \
             http://HOST:PORT, e.g. http://pi-1.local:7021"
        ))
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("is not an http:// or https:// URL");
    };
    match scheme {
        "http" => {}
        "https" if cfg!(feature = "tls") => {}
        "https" => {
            return Err(format!(
                "replication.primary {url:?} is an https:// URL, but this build has no TLS: \
                 build with `--features tls`, or follow the primary over http://"
            ))
        }
        _ => return bad("is not an http:// or https:// URL"),
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return bad("has a path, query or fragment (only \"/\" is allowed)");
    }
    if authority.contains('@') {
        return bad("has credentials (the token goes in replication.token)");
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, rest)) => match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return bad("has something after the IPv6 address that is not :PORT"),
            },
            None => return bad("has an IPv6 address without its closing ']'"),
        },
        None => match authority.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return bad("has an IPv6 address without brackets (write http://[::1]:7021)")
            }
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return bad("has no host");
    }
    if host.contains(char::is_whitespace) {
        return bad("has a space in its host");
    }
    match port.map(str::parse::<u16>) {
        Some(Ok(0) | Err(_)) => bad("has a port that is not a number from 1 to 65535"),
        _ => Ok(format!("{scheme}://{authority}")),
    }
}

/// Reads `replication.primary`: an optional URL (an empty string: none),
/// checked, with a trailing `/` dropped.
fn primary_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    optional_text(deserializer)?
        .map(|url| check_primary_url(&url).map_err(D::Error::custom))
        .transpose()
}

/// Reads an optional string (an empty one: none).
fn optional_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.filter(|text| !text.is_empty()))
}

/// Reads an optional path (an empty one: none).
fn optional_path<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(optional_text(deserializer)?.map(PathBuf::from))
}

/// Reads an optional duration such as `1h` (an empty string: none).
fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(deserializer)?.unwrap_or_default();
    if text.is_empty() {
        return Ok(None);
    }
    crate::duration::parse_duration(&text)
        .map(Some)
        .map_err(|err| D::Error::custom(format!("backup.interval: {err}")))
}

/// `ui:` — the web console at `/ui`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ui {
    /// Whether the node serves the console (off: `/ui` is a 404).
    pub enabled: bool,
}

impl Default for Ui {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `general:` — network settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct General {
    /// Address to listen on: an IP address (an IPv6 one with or without
    /// brackets) or a host name, resolved when the node starts.
    #[serde(deserialize_with = "bind_address")]
    pub bind_address: String,
    /// TCP port; 0 lets the OS pick a free one (it is logged at start).
    pub port: u16,
    /// Requests answered at once (each on its connection's thread); 0 =
    /// 64 (see [`General::request_slots`]).
    /// No request slot waits for an fsync: with `sync: always`, replies to writes
    /// are held and sent once durable (see `http::ack`).
    pub threads: usize,
    /// A client silent this long in the middle of a request, or between
    /// keep-alive requests, or that accepts no data of a response for this
    /// long, is disconnected; 0 = never.
    pub read_timeout_ms: u64,
    /// Open client connections at most; one more is answered with 503 and
    /// closed.
    pub max_connections: usize,
    /// HTTPS on the same port, if set.
    pub tls: Tls,
    /// The node's name, in its snapshots; empty = the machine's host name
    /// (see [`General::node_name`]).
    pub node_name: String,
}

impl Default for General {
    fn default() -> Self {
        Self {
            bind_address: "127.0.0.1".into(),
            port: 7021,
            threads: 0,
            read_timeout_ms: 10_000,
            max_connections: 512,
            tls: Tls::default(),
            node_name: String::new(),
        }
    }
}

/// Reads `general.bind_address`, a string; the error explains the one
/// surprise: YAML reads an unquoted `[::1]` as a list.
fn bind_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    String::deserialize(deserializer).map_err(|_| {
        D::Error::custom(
            "general.bind_address must be an IP address or a host name, e.g. 127.0.0.1, \
             0.0.0.0, ::1 or localhost (an IPv6 address in brackets needs quotes: '[::1]')",
        )
    })
}

impl General {
    /// `bind_address` without the brackets an IPv6 address may have.
    fn host(&self) -> &str {
        let address = self.bind_address.as_str();
        address
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(address)
    }

    /// The IP address `bind_address` names, if it is one (not a host name).
    pub fn ip_address(&self) -> Option<IpAddr> {
        self.host().parse().ok()
    }

    /// The socket addresses to listen on: `bind_address` if it is an IP
    /// address, else every address its host name resolves to, in the
    /// resolver's order (the first that can be bound is used).
    pub fn listen_addresses(&self) -> Result<Vec<SocketAddr>, String> {
        if let Some(ip) = self.ip_address() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let cannot = |why: String| {
            format!(
                "cannot resolve general.bind_address {:?}: {why}; give an IP address such as \
                 127.0.0.1 or 0.0.0.0, or a host name this machine knows",
                self.bind_address
            )
        };
        let resolved: Vec<SocketAddr> = (self.host(), self.port)
            .to_socket_addrs()
            .map_err(|err| cannot(err.to_string()))?
            .collect();
        if resolved.is_empty() {
            return Err(cannot("it has no address".into()));
        }
        Ok(resolved)
    }

    /// The read timeout for client sockets, if any.
    pub fn read_timeout(&self) -> Option<Duration> {
        (self.read_timeout_ms > 0).then(|| Duration::from_millis(self.read_timeout_ms))
    }

    /// The node's name: `node_name`, or the machine's host name (`lucid`
    /// if it cannot be read).
    pub fn node_name(&self) -> String {
        if !self.node_name.is_empty() {
            return self.node_name.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|name| name.trim().to_owned())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "lucid".into())
    }

    /// How many requests are answered at once: the configured count, or by
    /// default 64. An answer holds at most 64 KiB of a plain store's value
    /// (larger ones are sent from the log in pieces); an encrypted store's
    /// larger values are decrypted whole, in room taken from the memory
    /// budget. So many at once cost little memory, and with enough of them
    /// a busy node's connections seldom wait their turn (a wait costs a
    /// thread switch, and a turn too few in a storm of requests shows in
    /// their tail latency).
    pub fn request_slots(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            64
        }
    }
}

/// `general.tls:` — PEM files for HTTPS; both empty = plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// The certificate chain (PEM).
    pub certificate: PathBuf,
    /// The certificate's private key (PEM).
    pub private_key: PathBuf,
}

impl Tls {
    /// Whether HTTPS is configured.
    pub fn enabled(&self) -> bool {
        !self.certificate.as_os_str().is_empty() || !self.private_key.as_os_str().is_empty()
    }
}

/// `authentication:` — bearer tokens (JWT, HS256) for `/api/*`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Authentication {
    /// Whether `/api/*` requires a token.
    pub enabled: bool,
    /// The HMAC secret tokens are signed with (at least 32 bytes).
    pub secret_key: String,
    /// If not empty, tokens must carry this `iss`.
    pub issuer: String,
    /// If not empty, tokens must carry this `aud`.
    pub audience: String,
    /// Clock difference tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_s: u64,
    /// Whether a token without a `scopes` claim has full access.
    pub allow_unscoped: bool,
    /// Whether `/metrics` is served without a token (else it needs `admin`).
    pub metrics_public: bool,
}

/// Shortest accepted `authentication.secret_key`, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

impl Default for Authentication {
    fn default() -> Self {
        Self {
            enabled: false,
            secret_key: String::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_s: 30,
            allow_unscoped: false,
            metrics_public: false,
        }
    }
}

/// Never prints the secret.
impl fmt::Debug for Authentication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authentication")
            .field("enabled", &self.enabled)
            .field("secret_key", &"<redacted>")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_s", &self.leeway_s)
            .field("allow_unscoped", &self.allow_unscoped)
            .field("metrics_public", &self.metrics_public)
            .finish()
    }
}

impl Authentication {
    /// Checks the secret's length if one is needed or given.
    fn validate(&self) -> Result<(), String> {
        let len = self.secret_key.len();
        if (self.enabled || len > 0) && len < MIN_SECRET_BYTES {
            return Err(format!(
                "authentication.secret_key must be at least {MIN_SECRET_BYTES} bytes long \
                 (it has {len}); `lucid init` generates one"
            ));
        }
        Ok(())
    }
}

/// How `storage.sync` is spelled in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncSetting {
    /// fsync before answering each write (group-committed).
    Always,
    /// fsync every `sync_interval_ms`.
    Interval,
    /// Leave write-back to the OS.
    Never,
}

impl fmt::Display for SyncSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Always => "always",
            Self::Interval => "interval",
            Self::Never => "never",
        })
    }
}

/// `storage:` — storage engine settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// Data directory (a relative path is relative to the config file's
    /// directory, see [`Config::load`]).
    pub directory: PathBuf,
    /// When writes reach the disk.
    pub sync: SyncSetting,
    /// Period of the background fsync with `sync: interval`.
    pub sync_interval_ms: u64,
    /// Longest accepted key, in bytes after percent-decoding.
    pub max_key_bytes: usize,
    /// Largest accepted value, in bytes.
    pub max_value_bytes: usize,
    /// The most memory (resident) the node uses, in bytes; see
    /// [`crate::memory`].
    pub memory_budget: usize,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            directory: PathBuf::from("./lucid-data"),
            sync: SyncSetting::Always,
            sync_interval_ms: 1000,
            max_key_bytes: 1024,
            max_value_bytes: 16 * 1024 * 1024,
            memory_budget: 256 * 1024 * 1024,
        }
    }
}

impl Storage {
    /// The engine's sync mode for these settings.
    pub fn sync_mode(&self) -> SyncMode {
        match self.sync {
            SyncSetting::Always => SyncMode::Always,
            SyncSetting::Interval => {
                SyncMode::Interval(Duration::from_millis(self.sync_interval_ms))
            }
            SyncSetting::Never => SyncMode::Never,
        }
    }
}

/// `compaction:` — when the log is rewritten in the background.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Compaction {
    /// Compact when dead bytes exceed this share of the log (0 < r <= 1)...
    pub dead_ratio: f64,
    /// ...and are at least this many bytes.
    pub min_dead_bytes: u64,
    /// Also compact every this many seconds; 0 = only by the rule above.
    pub interval: u64,
}

impl Default for Compaction {
    fn default() -> Self {
        Self {
            dead_ratio: 0.5,
            min_dead_bytes: 16 * 1024 * 1024,
            interval: 0,
        }
    }
}

impl Compaction {
    /// The engine's policy for these settings.
    pub fn policy(&self) -> CompactionPolicy {
        CompactionPolicy {
            dead_ratio: self.dead_ratio,
            min_dead_bytes: self.min_dead_bytes,
            interval: (self.interval > 0).then(|| Duration::from_secs(self.interval)),
        }
    }
}

/// `encryption:` — encryption at rest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Encryption {
    /// Encrypt every record and hint file (XChaCha20-Poly1305).
    pub enabled: bool,
    /// The 32-byte key (a relative path is relative to the config file's
    /// directory); must be readable by its owner only.
    pub key_file: PathBuf,
}

impl Default for Encryption {
    fn default() -> Self {
        Self {
            enabled: false,
            key_file: PathBuf::from("./lucid.key"),
        }
    }
}

impl Encryption {
    /// The store's cipher: loaded from the key file when enabled.
    pub fn cipher(&self) -> Result<Option<Arc<Cipher>>, String> {
        if !self.enabled {
            return Ok(None);
        }
        Cipher::load(&self.key_file).map(|cipher| Some(Arc::new(cipher)))
    }
}

/// `logging:` — log output settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Logging {
    /// Least severe level written to stderr.
    pub level: LogLevel,
}

impl Default for Logging {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
        }
    }
}

/// `watch:` — live watchers of changes (`GET /api/watch`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Watch {
    /// Recent changes kept in memory, so a watcher can resume with `since`.
    pub history: usize,
    /// Changes queued for one watcher before it is dropped as too slow.
    pub queue: usize,
    /// Watchers connected at once; more are refused with 503.
    pub max_watchers: usize,
}

impl Default for Watch {
    fn default() -> Self {
        Self {
            history: DEFAULT_HISTORY,
            queue: DEFAULT_QUEUE,
            max_watchers: 64,
        }
    }
}

/// `logging.level` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Nothing at all.
    Off,
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default: start-up, recovery and warnings.
    Info,
    /// Diagnostics.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The `log` crate's filter for this level.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            Self::Off => log::LevelFilter::Off,
            Self::Error => log::LevelFilter::Error,
            Self::Warn => log::LevelFilter::Warn,
            Self::Info => log::LevelFilter::Info,
            Self::Debug => log::LevelFilter::Debug,
            Self::Trace => log::LevelFilter::Trace,
        }
    }
}

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file.
    File(PathBuf),
    /// No file: the built-in defaults.
    Defaults,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Defaults => f.write_str("built-in defaults"),
        }
    }
}

/// Why the config file at `path` cannot be read, and what to do.
fn unreadable(path: &Path, err: &std::io::Error) -> String {
    let what = format!("cannot read config file {}: {err}", path.display());
    match err.kind() {
        std::io::ErrorKind::NotFound => format!("{what} {MAKE_ONE}"),
        std::io::ErrorKind::PermissionDenied => {
            #[cfg(unix)]
            let owner = std::fs::metadata(path).map_or(String::new(), |meta| {
                use std::os::unix::fs::{MetadataExt, PermissionsExt};
                format!(
                    " (it belongs to uid {}, mode {:o})",
                    meta.uid(),
                    meta.permissions().mode() & 0o777
                )
            });
            #[cfg(not(unix))]
            let owner = String::new();
            format!(
                "{what}{owner}: the user the node runs as may not read it. Under systemd, \
                 hand it to the service with LoadCredential= (see systemd/lucid.service); \
                 else make it readable by that user only"
            )
        }
        _ => what,
    }
}

/// A configuration that could not be loaded, with a message for the user.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads the configuration, from the first of: `explicit` (`--config`),
    /// `$LUCID_CONFIG` (both must exist), `./lucid.yml`,
    /// `/etc/lucid/lucid.yml` (used if they exist), the built-in defaults.
    /// Relative paths in a file are made relative to its directory.
    pub fn load(explicit: Option<&Path>) -> Result<(Self, Source), ConfigError> {
        let from_env = std::env::var_os(ENV_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let path = match explicit.map(Path::to_path_buf).or(from_env) {
            Some(path) => path,
            None => match SEARCH_PATH.iter().map(Path::new).find(|p| p.exists()) {
                Some(found) => found.to_path_buf(),
                None => return Ok((Self::default(), Source::Defaults)),
            },
        };
        let text =
            std::fs::read_to_string(&path).map_err(|err| ConfigError(unreadable(&path, &err)))?;
        let mut config = Self::parse(&text)
            .map_err(|err| ConfigError(format!("config file {}: {err}", path.display())))?;
        // A bare file name (`lucid.yml`) has an empty parent: the working
        // directory.
        let base = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => std::path::absolute(parent),
            _ => std::env::current_dir(),
        };
        let base = base.map_err(|err| {
            ConfigError(format!(
                "cannot find the directory of config file {}: {err}",
                path.display()
            ))
        })?;
        config.resolve_paths(&base);
        Ok((config, Source::File(path)))
    }

    /// Makes every relative path of the configuration relative to `base`
    /// (empty paths, meaning "not set", stay empty).
    pub fn resolve_paths(&mut self, base: &Path) {
        let tls = &mut self.general.tls;
        for path in [
            &mut self.storage.directory,
            &mut self.encryption.key_file,
            &mut self.backup.directory,
            &mut tls.certificate,
            &mut tls.private_key,
            &mut self.mqtt.password_file,
            &mut self.mqtt.ca_file,
        ]
        .into_iter()
        .chain(self.replication.token_file.as_mut())
        .chain(self.replication.ca_file.as_mut())
        {
            if path.is_relative() && !path.as_os_str().is_empty() {
                *path = base.join(path.strip_prefix(".").unwrap_or(path));
            }
        }
    }

    /// Parses and validates YAML text. An empty document means all defaults.
    pub fn parse(text: &str) -> Result<Self, String> {
        let is_empty = text
            .lines()
            .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'));
        let config: Self = if is_empty {
            Self::default()
        } else {
            serde_norway::from_str(text).map_err(|err| err.to_string())?
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let storage = &self.storage;
        if !(1..=MAX_KEY_LEN).contains(&storage.max_key_bytes) {
            return Err(format!(
                "storage.max_key_bytes must be between 1 and {MAX_KEY_LEN}, not {}",
                storage.max_key_bytes
            ));
        }
        if storage.max_value_bytes > MAX_VALUE_LEN {
            return Err(format!(
                "storage.max_value_bytes must be at most {MAX_VALUE_LEN}, not {}",
                storage.max_value_bytes
            ));
        }
        let minimum = crate::memory::minimum_budget(storage.max_value_bytes);
        if storage.memory_budget < minimum {
            return Err(format!(
                "storage.memory_budget must be at least {minimum} bytes ({} MiB) to serve the \
                 largest batch with storage.max_value_bytes {}, not {}: raise it or lower \
                 max_value_bytes",
                minimum.div_ceil(1024 * 1024),
                storage.max_value_bytes,
                storage.memory_budget
            ));
        }
        if storage.sync_interval_ms == 0 {
            return Err("storage.sync_interval_ms must be at least 1".into());
        }
        let ratio = self.compaction.dead_ratio;
        if !(ratio > 0.0 && ratio <= 1.0) {
            return Err(format!(
                "compaction.dead_ratio must be above 0 and at most 1, not {ratio}"
            ));
        }
        if self.watch.queue == 0 {
            return Err("watch.queue must be at least 1".into());
        }
        if storage.directory.as_os_str().is_empty() {
            return Err("storage.directory must not be empty".into());
        }
        let general = &self.general;
        let host = general.host();
        if host.is_empty() || (host != general.bind_address && general.ip_address().is_none()) {
            return Err(format!(
                "general.bind_address {:?} is neither an IP address nor a host name",
                general.bind_address
            ));
        }
        if general.max_connections == 0 {
            return Err("general.max_connections must be at least 1".into());
        }
        let tls = &general.tls;
        if tls.enabled()
            && (tls.certificate.as_os_str().is_empty() || tls.private_key.as_os_str().is_empty())
        {
            return Err(
                "general.tls needs both certificate and private_key (PEM files), or neither".into(),
            );
        }
        if self.general.node_name.len() > crate::store::snapshot::MAX_NODE_NAME {
            return Err(format!(
                "general.node_name must be at most {} bytes long",
                crate::store::snapshot::MAX_NODE_NAME
            ));
        }
        self.backup.validate()?;
        self.replication.validate()?;
        self.mqtt.validate()?;
        self.authentication.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_file_holds_exactly_the_defaults() {
        assert_eq!(Config::parse(SAMPLE).unwrap(), Config::default());
    }

    #[test]
    fn an_empty_file_means_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        assert_eq!(Config::parse("# nothing\n\n").unwrap(), Config::default());
    }

    #[test]
    fn partial_sections_keep_the_other_defaults() {
        let config = Config::parse("general:\n  port: 9000\nstorage:\n  sync: never\n").unwrap();
        assert_eq!(config.general.port, 9000);
        assert_eq!(config.general.bind_address, General::default().bind_address);
        assert_eq!(config.storage.sync_mode(), SyncMode::Never);
        assert_eq!(config.storage.max_key_bytes, 1024);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("general:\n  prot: 9000\n").unwrap_err();
        assert!(err.contains("prot"), "{err}");
        let err = Config::parse("storge:\n  sync: never\n").unwrap_err();
        assert!(err.contains("storge"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let err = Config::parse("storage:\n  sync: sometimes\n").unwrap_err();
        assert!(err.contains("sometimes"), "{err}");
        let err = Config::parse("storage:\n  max_key_bytes: 0\n").unwrap_err();
        assert!(err.contains("storage.max_key_bytes"), "{err}");
        let err = Config::parse("storage:\n  sync_interval_ms: 0\n").unwrap_err();
        assert!(err.contains("storage.sync_interval_ms"), "{err}");
        for bad in ["''", "'[localhost]'", "[::1]", "{x: 1}"] {
            let err = Config::parse(&format!("general:\n  bind_address: {bad}\n")).unwrap_err();
            assert!(err.contains("bind_address"), "{bad}: {err}");
        }
        let err = Config::parse("watch:\n  queue: 0\n").unwrap_err();
        assert!(err.contains("watch.queue"), "{err}");
        let err = Config::parse("watch:\n  histroy: 5\n").unwrap_err();
        assert!(err.contains("histroy"), "{err}");
        let err = Config::parse("general:\n  max_connections: 0\n").unwrap_err();
        assert!(err.contains("general.max_connections"), "{err}");
        let err = Config::parse("general:\n  tls:\n    certificate: c.pem\n").unwrap_err();
        assert!(err.contains("private_key"), "{err}");
        let err = Config::parse("authentication:\n  enabled: true\n").unwrap_err();
        assert!(err.contains("authentication.secret_key"), "{err}");
        let err = Config::parse("authentication:\n  secret_key: short\n").unwrap_err();
        assert!(err.contains("at least 32"), "{err}");
        assert!(!err.contains("short"), "the secret is echoed: {err}");
    }

    #[test]
    fn bind_addresses_may_be_host_names_or_bracketed() {
        let general = |text: &str| {
            let yaml = format!("general:\n  bind_address: {text}\n  port: 80\n");
            Config::parse(&yaml).unwrap().general
        };
        let ipv6: SocketAddr = "[::1]:80".parse().unwrap();
        for text in ["'::1'", "::1", "'[::1]'", "\"[::1]\""] {
            assert_eq!(general(text).listen_addresses(), Ok(vec![ipv6]), "{text}");
        }
        let local = general("localhost").listen_addresses().unwrap();
        assert!(
            local.iter().all(|addr| addr.ip().is_loopback()),
            "{local:?}"
        );
        assert_eq!(general("localhost").ip_address(), None);
        let err = general("no-such-host.invalid")
            .listen_addresses()
            .unwrap_err();
        assert!(err.contains("no-such-host.invalid"), "{err}");
    }

    #[test]
    fn relative_paths_are_made_relative_to_the_base() {
        let yaml = "storage:\n  directory: ./data\nencryption:\n  key_file: /keys/k\n\
                    general:\n  tls:\n    certificate: c.pem\n    private_key: ../k.pem\n";
        let mut config = Config::parse(yaml).unwrap();
        config.resolve_paths(Path::new("/etc/lucid"));
        assert_eq!(config.storage.directory, Path::new("/etc/lucid/data"));
        assert_eq!(config.encryption.key_file, Path::new("/keys/k"));
        assert_eq!(
            config.general.tls.certificate,
            Path::new("/etc/lucid/c.pem")
        );
        assert_eq!(
            config.general.tls.private_key,
            Path::new("/etc/lucid/../k.pem")
        );
        let mut plain = Config::default();
        plain.resolve_paths(Path::new("/etc/lucid"));
        assert!(plain.general.tls.certificate.as_os_str().is_empty());
    }

    #[test]
    fn compaction_settings_become_a_policy() {
        let config = Config::parse("compaction:\n  dead_ratio: 0.25\n  interval: 60\n").unwrap();
        let policy = config.compaction.policy();
        assert_eq!(policy.dead_ratio, 0.25);
        assert_eq!(policy.interval, Some(Duration::from_secs(60)));
        assert_eq!(Config::default().compaction.policy().interval, None);
        let err = Config::parse("compaction:\n  dead_ratio: 1.5\n").unwrap_err();
        assert!(err.contains("compaction.dead_ratio"), "{err}");
    }

    #[test]
    fn interval_mode_uses_the_configured_period() {
        let config =
            Config::parse("storage:\n  sync: interval\n  sync_interval_ms: 250\n").unwrap();
        assert_eq!(
            config.storage.sync_mode(),
            SyncMode::Interval(Duration::from_millis(250))
        );
    }

    #[test]
    fn replication_is_off_by_default_and_sections_keep_their_defaults() {
        let defaults = Config::default().replication;
        assert_eq!(defaults.primary, None);
        assert_eq!((defaults.token, defaults.token_file), (None, None));
        assert_eq!((defaults.min_acks, defaults.ack_timeout_ms), (0, 5000));
        let config = Config::parse("replication:\n  min_acks: 2\n").unwrap();
        assert_eq!(config.replication.min_acks, 2);
        assert_eq!(config.replication.ack_timeout_ms, 5000);
        let empty = "replication:\n  primary: ''\n  token: ''\n  token_file: ''\n";
        assert_eq!(Config::parse(empty).unwrap(), Config::default());
        let err = Config::parse("replication:\n  primray: http://a:1\n").unwrap_err();
        assert!(err.contains("primray"), "{err}");
    }

    #[test]
    fn a_primary_url_is_checked_and_loses_its_trailing_slash() {
        let primary = |url: &str| {
            Config::parse(&format!("replication:\n  primary: '{url}'\n"))
                .map(|config| config.replication.primary.unwrap())
        };
        for (given, kept) in [
            ("http://pi-1.local:7021/", "http://pi-1.local:7021"),
            ("http://pi-1.local", "http://pi-1.local"),
            ("http://10.0.0.2:80", "http://10.0.0.2:80"),
            ("http://[::1]:7021/", "http://[::1]:7021"),
            ("http://[fe80::1]", "http://[fe80::1]"),
        ] {
            assert_eq!(primary(given).as_deref(), Ok(kept), "{given}");
        }
        for (bad, why) in [
            ("pi-1.local:7021", "not an http:// or https:// URL"),
            ("ftp://pi-1.local", "not an http:// or https:// URL"),
            ("http://", "no host"),
            ("http:///", "no host"),
            ("http://:7021", "no host"),
            ("http://[]:7021", "no host"),
            ("http://pi 1.local", "space"),
            ("http://pi-1.local:7021/api", "path"),
            ("http://pi-1.local//", "path"),
            ("http://pi-1.local?x=1", "path, query"),
            ("http://user:secret@pi-1.local", "credentials"),
            ("http://pi-1.local:port", "port"),
            ("http://pi-1.local:0", "port"),
            ("http://pi-1.local:70210", "port"),
            ("http://pi-1.local:", "port"),
            ("http://::1:7021", "without brackets"),
            ("http://[::1", "closing"),
            ("http://[::1]7021", "not :PORT"),
        ] {
            let err = primary(bad).unwrap_err();
            assert!(err.contains("replication.primary"), "{bad}: {err}");
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains("http://HOST:PORT"), "{bad}: {err}");
        }
        let https = primary("https://pi-1.local:7021/");
        if cfg!(feature = "tls") {
            assert_eq!(https.as_deref(), Ok("https://pi-1.local:7021"));
        } else {
            let err = https.unwrap_err();
            assert!(err.contains("--features tls"), "{err}");
        }
    }

    #[test]
    fn bad_replication_settings_are_explained() {
        let err = Config::parse("replication:\n  token: t\n  token_file: /t\n").unwrap_err();
        assert!(err.contains("both set"), "{err}");
        assert!(!err.contains(": t\n"), "the token is echoed: {err}");
        let err = Config::parse("replication:\n  min_acks: 17\n").unwrap_err();
        assert!(
            err.contains("replication.min_acks must be at most 16"),
            "{err}"
        );
        assert!(Config::parse("replication:\n  min_acks: 16\n").is_ok());
        for bad in [0, 9, 600_001] {
            let yaml = format!("replication:\n  ack_timeout_ms: {bad}\n");
            let err = Config::parse(&yaml).unwrap_err();
            assert!(err.contains("replication.ack_timeout_ms"), "{bad}: {err}");
            assert!(err.contains("between 10 and 600000"), "{bad}: {err}");
        }
        for good in [10, 600_000] {
            let yaml = format!("replication:\n  ack_timeout_ms: {good}\n");
            assert!(Config::parse(&yaml).is_ok(), "{good}");
        }
    }

    #[test]
    fn the_follower_token_comes_from_its_file_or_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("replicate.token");
        std::fs::write(&file, "  header.payload.signature\n").unwrap();
        let mut replication = Replication {
            token_file: Some(file.clone()),
            ..Replication::default()
        };
        let token = replication.follower_token().unwrap();
        assert_eq!(token.as_deref(), Some("header.payload.signature"));

        std::fs::write(&file, "\n").unwrap();
        let err = replication.follower_token().unwrap_err().to_string();
        assert!(
            err.contains("replicate.token") && err.contains("empty"),
            "{err}"
        );
        replication.token_file = Some(dir.path().join("missing"));
        let err = replication.follower_token().unwrap_err().to_string();
        assert!(err.contains("replication.token_file"), "{err}");
        assert!(err.contains("missing"), "{err}");
        assert!(err.contains("--scope replicate"), "{err}");

        let replication = Replication {
            token: Some("inline".into()),
            ..Replication::default()
        };
        assert_eq!(
            replication.follower_token().unwrap().as_deref(),
            Some("inline")
        );
        assert!(!format!("{replication:?}").contains("inline"));
        assert_eq!(Replication::default().follower_token().unwrap(), None);
    }

    #[test]
    fn a_relative_token_file_is_relative_to_the_base() {
        let mut config = Config::parse("replication:\n  token_file: ./t\n").unwrap();
        config.resolve_paths(Path::new("/etc/lucid"));
        assert_eq!(
            config.replication.token_file.as_deref(),
            Some(Path::new("/etc/lucid/t"))
        );
    }

    #[test]
    fn a_ca_file_needs_tls_and_an_https_primary_and_is_relative_to_the_base() {
        let parse = |lines: &str| Config::parse(&format!("replication:\n{lines}"));
        assert_eq!(parse("  ca_file: ''\n").unwrap(), Config::default());
        let with_ca = parse("  ca_file: ./ca.pem\n");
        if !cfg!(feature = "tls") {
            let err = with_ca.unwrap_err();
            assert!(err.contains("replication.ca_file"), "{err}");
            assert!(err.contains("--features tls"), "{err}");
            return;
        }
        // A primary (no replication.primary) keeps it for when it follows.
        let mut config = with_ca.unwrap();
        config.resolve_paths(Path::new("/etc/lucid"));
        assert_eq!(
            config.replication.ca_file.as_deref(),
            Some(Path::new("/etc/lucid/ca.pem"))
        );
        assert!(parse("  primary: https://pi-1.local:7021\n  ca_file: ca.pem\n").is_ok());
        let err = parse("  primary: http://pi-1.local:7021\n  ca_file: ca.pem\n").unwrap_err();
        assert!(err.contains("replication.ca_file"), "{err}");
        assert!(err.contains("is not https://"), "{err}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn the_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        let mut replication = Replication {
            ca_file: Some(file.clone()),
            ..Replication::default()
        };
        let refusal = |replication: &Replication| {
            let err = replication.primary_certificates().unwrap_err().to_string();
            assert!(err.contains("replication.ca_file"), "{err}");
            assert!(err.contains(file.to_str().unwrap()), "{err}");
            err
        };
        let err = refusal(&replication);
        assert!(err.contains("No such file"), "{err}");
        for (text, why) in [
            ("", "holds no certificate"),
            ("not a certificate\n", "holds no certificate"),
            (
                "-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n",
                "not valid PEM",
            ),
        ] {
            std::fs::write(&file, text).unwrap();
            let err = refusal(&replication);
            assert!(err.contains(why), "{text:?}: {err}");
        }
        let names = vec!["localhost".to_string()];
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(names.clone()).unwrap();
        std::fs::write(&file, key_pair.serialize_pem()).unwrap();
        let err = refusal(&replication);
        assert!(err.contains("a private key and no certificate"), "{err}");

        let other = rcgen::generate_simple_self_signed(names).unwrap().cert;
        let pem = format!("{}{}{}", cert.pem(), key_pair.serialize_pem(), other.pem());
        std::fs::write(&file, pem).unwrap();
        let certificates = replication.primary_certificates().unwrap().unwrap();
        let ders: Vec<&[u8]> = certificates.iter().map(|c| c.der()).collect();
        assert_eq!(ders, [cert.der().as_ref(), other.der().as_ref()]);

        replication.ca_file = None;
        assert!(replication.primary_certificates().unwrap().is_none());
    }
}
