//! Messages from the broker stored as keys (`mqtt.subscribe`): which
//! subscription a topic matches and the key it makes of it, and storing a
//! group of messages at once, one batch frame (one fsync) for the group.
//!
//! A message that cannot be stored (a key too long, a value too large, a
//! locked key, a full disk) is logged and counted, and acknowledged all
//! the same, so the broker does not send it again and again.

use crate::clock::now_ms;
use crate::store::{BatchOp, Expect, Mutation, Store, Ticket};

use super::settings::Subscription;

/// One level of a topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Exact(String),
    /// `+`: any one level.
    Plus,
    /// `#`: the rest (also none).
    Hash,
}

/// A subscription, ready to match topics.
#[derive(Debug, Clone)]
struct Route {
    filter: String,
    levels: Vec<Level>,
    key: String,
    ttl_ms: u64,
    content_type: String,
}

/// The subscriptions, in the order of the configuration (the first that
/// matches a topic decides).
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

/// A message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The key it is stored under.
    pub key: String,
    /// Its payload, the value.
    pub value: Vec<u8>,
    /// The subscription's content type.
    pub content_type: String,
    /// When the key expires (0: never).
    pub expires_at_ms: u64,
}

impl Router {
    /// The router of `subscriptions` (checked by the configuration).
    pub fn new(subscriptions: &[Subscription]) -> Result<Self, String> {
        let routes = subscriptions
            .iter()
            .map(|subscription| {
                let ttl = subscription.ttl()?;
                Ok(Route {
                    filter: subscription.filter.clone(),
                    levels: subscription
                        .filter
                        .split('/')
                        .map(|level| match level {
                            "+" => Level::Plus,
                            "#" => Level::Hash,
                            exact => Level::Exact(exact.to_owned()),
                        })
                        .collect(),
                    key: subscription.key.clone(),
                    ttl_ms: ttl.map_or(0, |ttl| ttl.as_millis() as u64),
                    content_type: subscription.content_type.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { routes })
    }

    /// The topic filters to subscribe to.
    pub fn filters(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|route| route.filter.as_str())
    }

    /// The message a PUBLISH on `topic` with `payload` makes, if a
    /// subscription matches it.
    pub fn message(&self, topic: &str, payload: &[u8]) -> Option<Message> {
        self.routes.iter().find_map(|route| {
            let plus = route.matches(topic)?;
            let mut key = route.key.replace("{topic}", topic);
            for (n, level) in plus.iter().enumerate().take(9) {
                key = key.replace(&format!("{{{}}}", n + 1), level);
            }
            Some(Message {
                key,
                value: payload.to_vec(),
                content_type: route.content_type.clone(),
                expires_at_ms: match route.ttl_ms {
                    0 => 0,
                    ttl => now_ms() + ttl,
                },
            })
        })
    }
}

impl Route {
    /// The levels of `topic` the filter's `+`s matched, if it matches. A
    /// wildcard at the first level does not match a topic starting with
    /// `$` (as MQTT says).
    fn matches<'t>(&self, topic: &'t str) -> Option<Vec<&'t str>> {
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Exact(_))) {
            return None;
        }
        let mut plus = Vec::new();
        let mut levels = topic.split('/');
        for filter in &self.levels {
            match filter {
                Level::Hash => return Some(plus),
                Level::Plus => plus.push(levels.next()?),
                Level::Exact(exact) => {
                    if levels.next()? != exact {
                        return None;
                    }
                }
            }
        }
        levels.next().is_none().then_some(plus)
    }
}

/// Why a message was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The message's index in the group.
    pub index: usize,
    /// Why.
    pub reason: String,
}

/// Stores `messages` in one batch (those that cannot be stored left out,
/// each with why), and returns the ticket to wait on before they may be
/// acknowledged to the broker.
pub fn store_all(
    store: &Store,
    messages: &[Message],
    max_key_bytes: usize,
    max_value_bytes: usize,
    buf: &mut Vec<u8>,
) -> (Ticket, Vec<Refused>) {
    let mut refused: Vec<Refused> = messages
        .iter()
        .enumerate()
        .filter_map(|(index, message)| {
            let reason = if message.key.is_empty() || message.key.contains('\0') {
                "its key is empty or holds a NUL".to_owned()
            } else if message.key.len() > max_key_bytes {
                format!("its key is longer than storage.max_key_bytes ({max_key_bytes})")
            } else if message.value.len() > max_value_bytes {
                format!("it is larger than storage.max_value_bytes ({max_value_bytes})")
            } else {
                return None;
            };
            Some(Refused { index, reason })
        })
        .collect();
    loop {
        let ops: Vec<(usize, BatchOp<'_>)> = messages
            .iter()
            .enumerate()
            .filter(|(index, _)| !refused.iter().any(|r| r.index == *index))
            .map(|(index, message)| {
                let op = BatchOp::Put {
                    key: message.key.as_bytes(),
                    content_type: message.content_type.as_bytes(),
                    value: &message.value,
                    expires_at_ms: message.expires_at_ms,
                    locked: false,
                    expect: Expect::Any,
                };
                (index, op)
            })
            .collect();
        if ops.is_empty() {
            return (Ticket::SETTLED, refused);
        }
        let batch: Vec<BatchOp<'_>> = ops.iter().map(|(_, op)| *op).collect();
        match store.apply(Mutation::Batch(&batch), buf) {
            Ok(applied) => return (applied.ticket, refused),
            Err(err) => {
                // One operation refused the batch (a locked key): leave it
                // out and store the others; any other failure (a full
                // disk) leaves them all out.
                let reason = err.error.to_string();
                match ops.get(err.index) {
                    Some((index, _)) if batch.len() > 1 => refused.push(Refused {
                        index: *index,
                        reason,
                    }),
                    _ => {
                        refused.extend(ops.iter().map(|(index, _)| Refused {
                            index: *index,
                            reason: reason.clone(),
                        }));
                        return (Ticket::SETTLED, refused);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::Attrs;
    use crate::store::testing::{fresh_store, set_attrs, try_put, MemFile};
    use crate::store::SyncMode;

    fn subscription(filter: &str, key: &str, ttl: &str) -> Subscription {
        Subscription {
            filter: filter.into(),
            key: key.into(),
            ttl: ttl.into(),
            content_type: "text/plain".into(),
        }
    }

    #[test]
    fn topics_match_filters_as_mqtt_says_and_make_keys() {
        let router = Router::new(&[
            subscription("devices/+/state", "state/{1}", "1h"),
            subscription("plant/#", "{topic}", ""),
            subscription("+/alarm", "alarms/{1}", ""),
        ])
        .unwrap();
        let message = router.message("devices/pump-1/state", b"on").unwrap();
        assert_eq!(
            (message.key.as_str(), &message.value[..]),
            ("state/pump-1", &b"on"[..])
        );
        assert!(message.expires_at_ms > now_ms());
        assert_eq!(router.message("plant", b"").unwrap().key, "plant");
        assert_eq!(router.message("plant/a/b", b"").unwrap().key, "plant/a/b");
        assert_eq!(
            router.message("roof/alarm", b"").unwrap().key,
            "alarms/roof"
        );
        for unmatched in [
            "devices/pump-1",
            "devices/pump-1/state/x",
            "devices//x",
            "$SYS/alarm",
            "other",
        ] {
            assert_eq!(router.message(unmatched, b""), None, "{unmatched}");
        }
        let filters: Vec<_> = router.filters().collect();
        assert_eq!(filters, ["devices/+/state", "plant/#", "+/alarm"]);
    }

    #[test]
    fn a_message_that_cannot_be_stored_is_left_out_and_the_others_are_stored() {
        let (_, store) = fresh_store(MemFile::with_bytes, SyncMode::Always);
        try_put(&store, "locked", b"v").unwrap();
        set_attrs(
            &store,
            "locked",
            Attrs {
                locked: true,
                ..Attrs::default()
            },
        );
        let message = |key: &str, value: &[u8]| Message {
            key: key.into(),
            value: value.to_vec(),
            content_type: "text/plain".into(),
            expires_at_ms: 0,
        };
        let messages = [
            message("a", b"1"),
            message(&"k".repeat(20), b"long key"),
            message("locked", b"2"),
            message("big", &[0; 11]),
            message("b", b"3"),
        ];
        let (ticket, refused) = store_all(&store, &messages, 16, 10, &mut Vec::new());
        store.wait_for(ticket).unwrap();
        let indexes: Vec<_> = refused.iter().map(|r| r.index).collect();
        assert_eq!(indexes, [1, 3, 2]);
        assert!(
            refused[2].reason.contains("locked"),
            "{}",
            refused[2].reason
        );
        let mut buf = Vec::new();
        for (key, value) in [("a", &b"1"[..]), ("b", b"3"), ("locked", b"v")] {
            assert_eq!(
                store.get(key.as_bytes(), &mut buf).unwrap().unwrap().value,
                value
            );
        }
    }
}
