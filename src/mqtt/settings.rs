//! The `mqtt:` section of the configuration: the broker, what is published
//! to it and how, and what is taken in from it. Off unless `url` is set.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::tls_trust::CaFile;

/// `mqtt:` — the bridge to an MQTT broker (see [`crate::mqtt`]).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    /// `mqtt://host[:port]` (1883 by default) or, with the `tls` feature,
    /// `mqtts://host[:port]` (8883); empty (the default): no bridge.
    pub url: String,
    /// The MQTT client id; empty: `lucid-<node name>`. It must be stable:
    /// the broker keeps the session (the messages for the subscriptions
    /// while the node is away) under it.
    pub client_id: String,
    /// The user name, if the broker wants one.
    pub username: String,
    /// Its password (or `password_file`).
    pub password: String,
    /// A file holding the password instead (a relative path is relative to
    /// the config file's directory).
    pub password_file: PathBuf,
    /// For `mqtts://`: a PEM file of the certificates to trust (the
    /// broker's CA); empty: the bundled web PKI roots.
    pub ca_file: PathBuf,
    /// Seconds between keep-alive pings when the link is idle.
    pub keepalive_s: u16,
    /// The most bytes of log the bridge holds for changes the broker has
    /// not acknowledged; past it the oldest are dropped (and a gap
    /// message tells consumers).
    pub max_backlog_bytes: u64,
    /// What is published.
    pub publish: Publish,
    /// What is taken in.
    pub subscribe: Vec<Subscription>,
}

/// `mqtt.publish:` — every change of the keys under `prefixes`, as it is
/// written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Publish {
    /// Whether changes are published at all.
    pub enabled: bool,
    /// Keys whose changes are published; empty (the default): every key.
    pub prefixes: Vec<String>,
    /// The topic: `{node}` is the node's name, `{key}` the key.
    pub topic: String,
    /// `json` (a document per change) or `raw` (the value's bytes).
    pub payload: PayloadFormat,
    /// Whether messages are retained by the broker; a delete is then an
    /// empty message (in either format), which clears the key's retained
    /// one.
    pub retain: bool,
}

/// How a change is put in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// `{"node","seq","op","key","value"|"value_base64","content_type","updated_at"}`.
    Json,
    /// The value's bytes (empty for a delete).
    Raw,
}

/// One `mqtt.subscribe:` entry: messages on topics matching `filter` are
/// stored under the key `key` makes of their topic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// An MQTT topic filter (`+` one level, `#` the rest).
    pub filter: String,
    /// The key: `{topic}` is the whole topic, `{1}`, `{2}`... the levels
    /// the filter's `+`s matched.
    #[serde(default = "whole_topic")]
    pub key: String,
    /// The stored value's time to live, as `90s`, `1h`...; empty: none.
    #[serde(default)]
    pub ttl: String,
    /// The stored value's content type.
    #[serde(default = "octet_stream")]
    pub content_type: String,
}

fn whole_topic() -> String {
    "{topic}".into()
}

fn octet_stream() -> String {
    "application/octet-stream".into()
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            client_id: String::new(),
            username: String::new(),
            password: String::new(),
            password_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            keepalive_s: 30,
            max_backlog_bytes: 256 * 1024 * 1024,
            publish: Publish::default(),
            subscribe: Vec::new(),
        }
    }
}

impl Default for Publish {
    fn default() -> Self {
        Self {
            enabled: true,
            prefixes: Vec::new(),
            topic: "lucid/{node}/{key}".into(),
            payload: PayloadFormat::Json,
            retain: false,
        }
    }
}

/// Never prints the password.
impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &(!self.password.is_empty()).then_some("(set)"))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("keepalive_s", &self.keepalive_s)
            .field("max_backlog_bytes", &self.max_backlog_bytes)
            .field("publish", &self.publish)
            .field("subscribe", &self.subscribe)
            .finish()
    }
}

/// A broker's address, from `mqtt.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// The host name or address.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Whether the link is TLS (`mqtts://`).
    pub tls: bool,
}

impl MqttSettings {
    /// Whether the bridge runs.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// The broker's address, checked.
    pub fn broker(&self) -> Result<BrokerAddress, String> {
        let bad = |why: &str| {
            format!(
                "mqtt.url {:?} {why}; give the broker as mqtt://HOST:PORT (or mqtts://)",
                self.url
            )
        };
        let (scheme, rest) = self
            .url
            .split_once("://")
            .ok_or_else(|| bad("is not an mqtt:// URL"))?;
        let (tls, default_port) = match scheme {
            "mqtt" | "tcp" => (false, 1883),
            "mqtts" | "ssl" if cfg!(feature = "tls") => (true, 8883),
            "mqtts" | "ssl" => {
                return Err(format!(
                    "mqtt.url {:?} needs TLS, but this build has none: build with \
                     `--features tls`",
                    self.url
                ))
            }
            _ => return Err(bad("is not an mqtt:// or mqtts:// URL")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(bad("must be a host and a port only"));
        }
        let port_of = |text: &str| {
            text.parse::<u16>()
                .ok()
                .filter(|&port| port > 0)
                .ok_or_else(|| bad("has a port that is not a number from 1 to 65535"))
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("has an IPv6 address without its closing ']'"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, port_of(port)?),
                None if after.is_empty() => (host, default_port),
                None => return Err(bad("has something after its IPv6 address")),
            }
        } else if authority.matches(':').count() > 1 {
            return Err(bad("has an IPv6 address without brackets"));
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, port_of(port)?),
                None => (authority, default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        Ok(BrokerAddress {
            host: host.to_owned(),
            port,
            tls,
        })
    }

    /// The password: `password_file`'s content (trimmed), else `password`.
    pub fn password(&self) -> Result<Option<String>, String> {
        if self.password_file.as_os_str().is_empty() {
            return Ok((!self.password.is_empty()).then(|| self.password.clone()));
        }
        crate::config::read_secret_file("mqtt.password_file", &self.password_file, "the password")
            .map(Some)
    }

    /// `ca_file`, as the `mqtts://` link trusts it.
    pub fn broker_trust(&self) -> CaFile {
        CaFile {
            setting: "mqtt.ca_file",
            server: "broker",
            path: (!self.ca_file.as_os_str().is_empty()).then(|| self.ca_file.clone()),
        }
    }

    /// Checks the section (when the bridge is on).
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if !self.broker()?.tls && !self.ca_file.as_os_str().is_empty() {
            return Err(format!(
                "mqtt.ca_file is set, but mqtt.url {:?} is not mqtts://: the bridge would not \
                 use it (and would talk to the broker unencrypted); connect over mqtts://, or \
                 remove ca_file",
                self.url
            ));
        }
        if !self.password.is_empty() && !self.password_file.as_os_str().is_empty() {
            return Err("mqtt.password and mqtt.password_file are both set: keep one".into());
        }
        if self.keepalive_s == 0 {
            return Err("mqtt.keepalive_s must be at least 1".into());
        }
        if self.max_backlog_bytes < 1024 * 1024 {
            return Err("mqtt.max_backlog_bytes must be at least 1048576 (1 MiB)".into());
        }
        let topic = &self.publish.topic;
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return Err(format!(
                "mqtt.publish.topic {topic:?} must be a topic name without + or #, e.g. \
                 lucid/{{node}}/{{key}}"
            ));
        }
        for subscription in &self.subscribe {
            subscription.validate()?;
        }
        Ok(())
    }
}

impl Subscription {
    /// The stored value's time to live, if any.
    pub fn ttl(&self) -> Result<Option<Duration>, String> {
        if self.ttl.is_empty() {
            return Ok(None);
        }
        crate::duration::parse_duration(&self.ttl)
            .map(Some)
            .map_err(|err| format!("mqtt.subscribe {:?}: ttl {err}", self.filter))
    }

    fn validate(&self) -> Result<(), String> {
        let levels: Vec<&str> = self.filter.split('/').collect();
        let bad_level = levels.iter().enumerate().any(|(i, level)| {
            (level.contains('+') && *level != "+")
                || (level.contains('#') && (*level != "#" || i + 1 != levels.len()))
        });
        if self.filter.is_empty() || bad_level || self.filter.contains('\0') {
            return Err(format!(
                "mqtt.subscribe filter {:?} is not an MQTT topic filter (+ stands alone in a \
                 level, # only last)",
                self.filter
            ));
        }
        let plus = levels.iter().filter(|level| **level == "+").count();
        for n in 1..=9 {
            if self.key.contains(&format!("{{{n}}}")) && n > plus {
                return Err(format!(
                    "mqtt.subscribe key {:?} uses {{{n}}}, but filter {:?} has {plus} `+`",
                    self.key, self.filter
                ));
            }
        }
        if self.key.is_empty() {
            return Err(format!("mqtt.subscribe {:?}: key is empty", self.filter));
        }
        self.ttl().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url(url: &str) -> MqttSettings {
        MqttSettings {
            url: url.into(),
            ..MqttSettings::default()
        }
    }

    #[test]
    fn broker_urls_are_read_with_their_default_ports() {
        let broker = with_url("mqtt://broker.local").broker().unwrap();
        assert_eq!(
            (broker.host.as_str(), broker.port, broker.tls),
            ("broker.local", 1883, false)
        );
        let broker = with_url("mqtt://127.0.0.1:1884/").broker().unwrap();
        assert_eq!((broker.host.as_str(), broker.port), ("127.0.0.1", 1884));
        let broker = with_url("mqtt://[::1]:1884").broker().unwrap();
        assert_eq!(broker.host, "::1");
        for bad in [
            "broker:1883",
            "http://b",
            "mqtt://",
            "mqtt://b:0",
            "mqtt://b:x",
            "mqtt://b/t",
            "mqtt://u@b",
            "mqtt://::1",
        ] {
            assert!(with_url(bad).broker().is_err(), "{bad}");
        }
        assert_eq!(
            with_url("mqtts://b").broker().is_ok(),
            cfg!(feature = "tls")
        );
    }

    #[test]
    fn the_section_is_checked_only_when_on() {
        let mut settings = MqttSettings {
            keepalive_s: 0,
            ..MqttSettings::default()
        };
        assert!(settings.validate().is_ok(), "off");
        settings.url = "mqtt://b".into();
        assert!(settings.validate().unwrap_err().contains("keepalive_s"));
        settings.keepalive_s = 30;
        settings.publish.topic = "lucid/#".into();
        assert!(settings.validate().unwrap_err().contains("publish.topic"));
        settings.publish.topic = "lucid/{node}/{key}".into();
        assert!(settings.validate().is_ok());
        settings.password = "p".into();
        settings.password_file = "p.txt".into();
        assert!(settings.validate().unwrap_err().contains("both"));
    }

    #[test]
    fn a_ca_file_needs_an_mqtts_url() {
        let mut settings = with_url("mqtt://b");
        settings.ca_file = "ca.pem".into();
        let err = settings.validate().unwrap_err();
        assert!(
            err.starts_with("mqtt.ca_file is set, but mqtt.url \"mqtt://b\" is not mqtts://"),
            "{err}"
        );
        settings.url = "mqtts://b".into();
        assert_eq!(settings.validate().is_ok(), cfg!(feature = "tls"));
        assert_eq!(settings.broker_trust().path, Some("ca.pem".into()));
        settings.ca_file = PathBuf::new();
        assert_eq!(settings.broker_trust().path, None);
        assert_eq!(settings.broker_trust().setting, "mqtt.ca_file");
    }

    #[test]
    fn subscriptions_need_real_filters_and_keys_that_fit_them() {
        let subscription = |filter: &str, key: &str, ttl: &str| Subscription {
            filter: filter.into(),
            key: key.into(),
            ttl: ttl.into(),
            content_type: octet_stream(),
        };
        assert!(subscription("devices/+/state", "dev/{1}", "1h")
            .validate()
            .is_ok());
        assert!(subscription("devices/#", "{topic}", "").validate().is_ok());
        for (filter, key, ttl) in [
            ("devices/+x/state", "{topic}", ""),
            ("devices/#/state", "{topic}", ""),
            ("", "{topic}", ""),
            ("devices/+/state", "dev/{2}", ""),
            ("devices/+/state", "", ""),
            ("devices/+/state", "{topic}", "soon"),
        ] {
            assert!(
                subscription(filter, key, ttl).validate().is_err(),
                "{filter} {key} {ttl}"
            );
        }
    }
}
