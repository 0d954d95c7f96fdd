//! A change as an MQTT message: its topic (from `mqtt.publish.topic`) and
//! its payload (`json` or `raw`), and the gap message that tells consumers
//! which changes were dropped.
//!
//! A key may hold characters a topic name must not (`+`, `#`, NUL), so in
//! the topic they are written `%2B`, `%23`, `%00` (and `%` itself `%25`).

use base64::Engine as _;
use serde::Serialize;

use super::settings::PayloadFormat;
use crate::store::tail::LogChange;

/// Builds messages into reused buffers.
pub struct MessageBuilder {
    /// `mqtt.publish.topic` with `{node}` filled in.
    topic: String,
    format: PayloadFormat,
    /// Whether messages are retained: a delete is then an empty message,
    /// which clears the key's retained one.
    retain: bool,
    node: String,
    /// The topic and payload of the message being built.
    pub topic_buf: String,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// The JSON payload of a change.
#[derive(Serialize)]
struct ChangeDocument<'a> {
    node: &'a str,
    seq: u64,
    op: &'static str,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    content_type: &'a str,
    updated_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
}

/// The JSON payload of a gap.
#[derive(Serialize)]
struct GapDocument<'a> {
    node: &'a str,
    op: &'static str,
    from: u64,
    to: u64,
}

impl MessageBuilder {
    /// A builder for `node`'s messages on topics like `template`, in
    /// `format`, retained or not.
    pub fn new(node: &str, template: &str, format: PayloadFormat, retain: bool) -> Self {
        Self {
            topic: template.replace("{node}", &escape(node)),
            format,
            retain,
            node: node.to_owned(),
            topic_buf: String::new(),
            payload: Vec::new(),
        }
    }

    /// Builds the message of `change` into `topic_buf` and `payload`.
    pub fn change(&mut self, change: &LogChange<'_>) {
        let key = String::from_utf8_lossy(change.key);
        self.set_topic(&key);
        self.payload.clear();
        if change.deleted && self.retain {
            return;
        }
        match self.format {
            PayloadFormat::Raw => self.payload.extend_from_slice(change.value),
            PayloadFormat::Json => {
                let text = std::str::from_utf8(change.value).ok();
                let document = ChangeDocument {
                    node: &self.node,
                    seq: change.sequence,
                    op: if change.deleted { "delete" } else { "put" },
                    key: &key,
                    value: if change.deleted { None } else { text },
                    value_base64: match (change.deleted, text) {
                        (false, None) => {
                            Some(base64::engine::general_purpose::STANDARD.encode(change.value))
                        }
                        _ => None,
                    },
                    content_type: std::str::from_utf8(change.content_type).unwrap_or(""),
                    updated_at: change.timestamp_ms,
                    expires_at: (change.expires_at_ms != 0).then_some(change.expires_at_ms),
                };
                serde_json::to_writer(&mut self.payload, &document).expect("a JSON document");
            }
        }
    }

    /// Builds the gap message saying the changes `from..=to` were dropped:
    /// on the topic of the key `$gap`, always JSON.
    pub fn gap(&mut self, from: u64, to: u64) {
        self.set_topic("$gap");
        self.payload.clear();
        let document = GapDocument {
            node: &self.node,
            op: "gap",
            from,
            to,
        };
        serde_json::to_writer(&mut self.payload, &document).expect("a JSON document");
    }

    fn set_topic(&mut self, key: &str) {
        self.topic_buf.clear();
        let mut parts = self.topic.split("{key}");
        if let Some(first) = parts.next() {
            self.topic_buf.push_str(first);
        }
        for part in parts {
            self.topic_buf.push_str(&escape(key));
            self.topic_buf.push_str(part);
        }
    }
}

/// `text` with the characters a topic name must not hold escaped.
fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['+', '#', '\0', '%']) {
        return text.into();
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '+' => escaped.push_str("%2B"),
            '#' => escaped.push_str("%23"),
            '\0' => escaped.push_str("%00"),
            '%' => escaped.push_str("%25"),
            c => escaped.push(c),
        }
    }
    escaped.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change<'a>(key: &'a [u8], value: &'a [u8], deleted: bool) -> LogChange<'a> {
        LogChange {
            sequence: 42,
            deleted,
            key,
            value,
            content_type: b"text/plain",
            timestamp_ms: 1_700_000_000_000,
            expires_at_ms: 0,
        }
    }

    #[test]
    fn json_messages_carry_the_change_and_escape_the_topic() {
        let mut builder =
            MessageBuilder::new("pi-1", "lucid/{node}/{key}", PayloadFormat::Json, false);
        builder.change(&change(b"sensors/t+1#", b"20.5", false));
        assert_eq!(builder.topic_buf, "lucid/pi-1/sensors/t%2B1%23");
        let document: serde_json::Value = serde_json::from_slice(&builder.payload).unwrap();
        assert_eq!(
            document,
            serde_json::json!({"node": "pi-1", "seq": 42, "op": "put", "key": "sensors/t+1#",
                "value": "20.5", "content_type": "text/plain", "updated_at": 1_700_000_000_000u64})
        );
        builder.change(&change(b"blob", &[0xff, 0], false));
        let document: serde_json::Value = serde_json::from_slice(&builder.payload).unwrap();
        assert_eq!(document["value_base64"], "/wA=");
        assert!(document.get("value").is_none());
        builder.change(&change(b"gone", b"", true));
        let document: serde_json::Value = serde_json::from_slice(&builder.payload).unwrap();
        assert_eq!(
            (document["op"].as_str(), document.get("value")),
            (Some("delete"), None)
        );
        builder.gap(5, 9);
        assert_eq!(builder.topic_buf, "lucid/pi-1/$gap");
        let document: serde_json::Value = serde_json::from_slice(&builder.payload).unwrap();
        assert_eq!(
            document,
            serde_json::json!({"node": "pi-1", "op": "gap", "from": 5, "to": 9})
        );
    }

    #[test]
    fn raw_messages_are_the_value_and_a_delete_is_empty() {
        let mut builder = MessageBuilder::new("n", "{key}", PayloadFormat::Raw, false);
        builder.change(&change(b"k", b"bytes", false));
        assert_eq!(
            (builder.topic_buf.as_str(), &builder.payload[..]),
            ("k", &b"bytes"[..])
        );
        builder.change(&change(b"k", b"", true));
        assert!(builder.payload.is_empty());
        // Retained, a JSON delete is empty too: it clears the key's message.
        let mut builder = MessageBuilder::new("n", "{key}", PayloadFormat::Json, true);
        builder.change(&change(b"k", b"", true));
        assert!(builder.payload.is_empty());
        builder.change(&change(b"k", b"v", false));
        assert!(!builder.payload.is_empty());
    }
}
