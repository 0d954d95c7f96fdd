//! Change events for watchers: what changed, a bounded history of recent
//! events (so a watcher can resume from a version), and the subscribers'
//! bounded queues.
//!
//! The store publishes one [`Event`] per record it makes visible, in version
//! order, while holding its writer lock; publishing never blocks. A
//! subscriber whose queue is full is dropped on the spot and flagged as
//! overflowed, so a slow watcher can never hold up writers: its serving
//! thread drains what was queued, sees the flag and closes the stream with
//! a final error event.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use crate::locks::lock;

/// Values up to this size that are UTF-8 are sent inline in events.
pub const INLINE_VALUE_MAX: usize = 4096;

/// Default number of recent events kept for `since` (config `watch.history`).
pub const DEFAULT_HISTORY: usize = 10_000;

/// Default number of events queued per watcher before it is dropped.
pub const DEFAULT_QUEUE: usize = 1_000;

/// What a change did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOp {
    /// The key was created or given a new value (or new expiry).
    Put,
    /// The key was deleted by a client.
    Delete,
    /// The key's time to live ran out.
    Expire,
    /// The key was locked.
    Lock,
    /// The key was unlocked.
    Unlock,
}

impl EventOp {
    /// The name used on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Delete => "delete",
            Self::Expire => "expire",
            Self::Lock => "lock",
            Self::Unlock => "unlock",
        }
    }
}

/// One change to one key.
///
/// Its texts share one allocation: the history holds thousands of events,
/// and one allocation per event instead of three keeps writes cheap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub op: EventOp,
    /// Version of the key after the change (the record's sequence number).
    pub version: u64,
    /// Size of the value in bytes (0 after a delete or expiry).
    pub size: u64,
    /// The key, then the content type, then the inline value.
    text: Box<str>,
    /// End of the key in `text`.
    key_end: u32,
    /// End of the content type in `text`, if there is one.
    content_type_end: Option<u32>,
    /// Whether the inline value follows.
    has_value: bool,
}

impl Event {
    /// The event for a change; `content_type` and `value` are those of the
    /// new record (empty for a removal).
    pub fn new(op: EventOp, key: &[u8], version: u64, content_type: &[u8], value: &[u8]) -> Self {
        let removed = matches!(op, EventOp::Delete | EventOp::Expire);
        let inline = (!removed && value.len() <= INLINE_VALUE_MAX)
            .then(|| std::str::from_utf8(value).ok())
            .flatten();
        let content_type = (!removed).then(|| String::from_utf8_lossy(content_type));
        let key = String::from_utf8_lossy(key);
        let len = |text: Option<&str>| text.map_or(0, str::len);
        let mut text =
            String::with_capacity(key.len() + len(content_type.as_deref()) + len(inline));
        text.push_str(&key);
        let key_end = text.len() as u32;
        let content_type_end = content_type.map(|content_type| {
            text.push_str(&content_type);
            text.len() as u32
        });
        text.push_str(inline.unwrap_or(""));
        Self {
            op,
            version,
            size: value.len() as u64,
            text: text.into_boxed_str(),
            key_end,
            content_type_end,
            has_value: inline.is_some(),
        }
    }

    /// The key (keys are always UTF-8).
    pub fn key(&self) -> &str {
        &self.text[..self.key_end as usize]
    }

    /// Content type of the value (`None` after a delete or expiry).
    pub fn content_type(&self) -> Option<&str> {
        let end = self.content_type_end?;
        Some(&self.text[self.key_end as usize..end as usize])
    }

    /// The value itself, when it is UTF-8 and at most [`INLINE_VALUE_MAX`]
    /// bytes.
    pub fn value(&self) -> Option<&str> {
        let start = self.content_type_end.unwrap_or(self.key_end) as usize;
        self.has_value.then(|| &self.text[start..])
    }

    /// The event as one line of JSON:
    /// `{"content_type","key","op","size","value"?,"version"}`.
    pub fn to_json(&self) -> String {
        let mut json = Vec::with_capacity(96 + self.text.len());
        self.write_json(&mut json)
            .expect("writing to memory cannot fail");
        String::from_utf8(json).expect("serde_json writes UTF-8")
    }

    /// Writes [`to_json`](Self::to_json)'s text to `out`, without building
    /// it in memory first: each watcher writes every event, so this runs
    /// once per change and watcher.
    pub fn write_json(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer(out, &EventJson::of(self)).map_err(std::io::Error::from)
    }
}

/// An [`Event`]'s JSON fields, borrowed, in the order they are written.
#[derive(serde::Serialize)]
struct EventJson<'a> {
    content_type: Option<&'a str>,
    key: &'a str,
    op: &'static str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    version: u64,
}

impl<'a> EventJson<'a> {
    fn of(event: &'a Event) -> Self {
        Self {
            content_type: event.content_type(),
            key: event.key(),
            op: event.op.name(),
            size: event.size,
            value: event.value(),
            version: event.version,
        }
    }
}

/// Asked to resume from a version the history no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinceTooOld {
    /// The oldest version a watcher may resume from.
    pub oldest: u64,
}

/// A watcher's end of the stream: events with a version above `since`
/// whose key starts with the prefix, in order.
pub struct Subscription {
    /// Events from the history, to send first.
    pub backlog: Vec<Arc<Event>>,
    /// Live events, after the backlog.
    pub events: Receiver<Arc<Event>>,
    overflowed: Arc<AtomicBool>,
    capacity: usize,
}

impl Subscription {
    /// How many live events may wait in `events` before the subscription
    /// is dropped (config `watch.queue`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether the subscription was dropped because its queue filled up
    /// (meaningful once `events` reports disconnection).
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::SeqCst)
    }
}

struct Subscriber {
    prefix: Box<[u8]>,
    queue: SyncSender<Arc<Event>>,
    overflowed: Arc<AtomicBool>,
}

struct BusState {
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    queue_limit: usize,
    /// Highest version no longer (or never) in the history: resuming is
    /// possible from this version on.
    forgotten: u64,
    subscribers: Vec<Subscriber>,
    closed: bool,
}

/// The store's change feed: history ring and subscribers.
pub struct EventBus {
    state: Mutex<BusState>,
}

impl EventBus {
    /// A bus whose history starts after version `last_version` (changes made
    /// before the node started are not in it).
    pub fn new(last_version: u64) -> Self {
        Self {
            state: Mutex::new(BusState {
                history: VecDeque::new(),
                history_limit: DEFAULT_HISTORY,
                queue_limit: DEFAULT_QUEUE,
                forgotten: last_version,
                subscribers: Vec::new(),
                closed: false,
            }),
        }
    }

    /// Sets how many events the history keeps and how many may be queued
    /// for one watcher (config `watch.history` and `watch.queue`).
    pub fn set_limits(&self, history: usize, queue: usize) {
        let mut state = lock(&self.state);
        state.history_limit = history;
        state.queue_limit = queue.max(1);
        trim_history(&mut state);
    }

    /// Records `event` and hands it to every matching subscriber. Never
    /// blocks: a subscriber with a full queue is dropped (see the module
    /// documentation). Events must be published in version order.
    pub fn publish(&self, event: Event) {
        let mut state = lock(&self.state);
        let event = Arc::new(event);
        state.subscribers.retain(|sub| {
            if !event.key().as_bytes().starts_with(&sub.prefix) {
                return true;
            }
            match sub.queue.try_send(Arc::clone(&event)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    sub.overflowed.store(true, Ordering::SeqCst);
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
        if state.history_limit > 0 {
            state.history.push_back(event);
            trim_history(&mut state);
        } else {
            state.forgotten = event.version;
        }
    }

    /// Subscribes to changes of keys starting with `prefix`. With `since`,
    /// the events after that version still in the history come first; a
    /// version older than the history is refused.
    pub fn subscribe(
        &self,
        prefix: &[u8],
        since: Option<u64>,
    ) -> Result<Subscription, SinceTooOld> {
        let mut state = lock(&self.state);
        let backlog = match since {
            Some(since) if since < state.forgotten => {
                return Err(SinceTooOld {
                    oldest: state.forgotten,
                })
            }
            Some(since) => state
                .history
                .iter()
                .filter(|e| e.version > since && e.key().as_bytes().starts_with(prefix))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        let (queue, events) = mpsc::sync_channel(state.queue_limit);
        let overflowed = Arc::new(AtomicBool::new(false));
        if !state.closed {
            state.subscribers.push(Subscriber {
                prefix: prefix.into(),
                queue,
                overflowed: Arc::clone(&overflowed),
            });
        }
        Ok(Subscription {
            backlog,
            events,
            overflowed,
            capacity: state.queue_limit,
        })
    }

    /// Starts the feed over after version `last_version` (the store's log
    /// was replaced by another's): the history is forgotten and every
    /// subscriber is dropped as if its queue had filled, so a watcher
    /// resumes with `since` and is told what it can no longer see.
    pub fn start_over(&self, last_version: u64) {
        let mut state = lock(&self.state);
        state.history.clear();
        state.forgotten = last_version;
        for subscriber in state.subscribers.drain(..) {
            subscriber.overflowed.store(true, Ordering::SeqCst);
        }
    }

    /// Number of connected subscribers.
    pub fn subscribers(&self) -> usize {
        lock(&self.state).subscribers.len()
    }

    /// Ends every subscription (the node is stopping); later ones end at once.
    pub fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.subscribers.clear();
    }
}

fn trim_history(state: &mut BusState) {
    while state.history.len() > state.history_limit {
        if let Some(old) = state.history.pop_front() {
            state.forgotten = old.version;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, version: u64) -> Event {
        Event::new(EventOp::Put, key.as_bytes(), version, b"text/plain", b"v")
    }

    #[test]
    fn subscribers_get_matching_events_in_order() {
        let bus = EventBus::new(0);
        let sensors = bus.subscribe(b"sensors/", None).unwrap();
        let all = bus.subscribe(b"", None).unwrap();
        bus.publish(put("sensors/a", 1));
        bus.publish(put("config/b", 2));
        bus.publish(put("sensors/c", 3));
        let got: Vec<u64> = sensors.events.try_iter().map(|e| e.version).collect();
        assert_eq!(got, [1, 3]);
        let got: Vec<u64> = all.events.try_iter().map(|e| e.version).collect();
        assert_eq!(got, [1, 2, 3]);
    }

    #[test]
    fn since_replays_the_history_and_refuses_what_it_forgot() {
        let bus = EventBus::new(10);
        bus.set_limits(3, 10);
        for version in 11..=15 {
            bus.publish(put("k", version));
        }
        // History holds 13, 14, 15: resuming after 12 or later works.
        let sub = bus.subscribe(b"", Some(12)).unwrap();
        let got: Vec<u64> = sub.backlog.iter().map(|e| e.version).collect();
        assert_eq!(got, [13, 14, 15]);
        assert!(bus.subscribe(b"", Some(15)).unwrap().backlog.is_empty());
        assert_eq!(
            bus.subscribe(b"", Some(11)).err(),
            Some(SinceTooOld { oldest: 12 })
        );
        // Before the node started: forgotten too.
        let fresh = EventBus::new(10);
        assert!(fresh.subscribe(b"", Some(9)).is_err());
        assert!(fresh.subscribe(b"", Some(10)).is_ok());
    }

    #[test]
    fn a_subscription_knows_its_queue_size() {
        let bus = EventBus::new(0);
        assert_eq!(bus.subscribe(b"", None).unwrap().capacity(), DEFAULT_QUEUE);
        bus.set_limits(10, 8);
        assert_eq!(bus.subscribe(b"", None).unwrap().capacity(), 8);
        bus.set_limits(10, 0);
        assert_eq!(bus.subscribe(b"", None).unwrap().capacity(), 1);
    }

    #[test]
    fn a_full_queue_drops_the_subscriber_without_blocking() {
        let bus = EventBus::new(0);
        bus.set_limits(100, 2);
        let slow = bus.subscribe(b"", None).unwrap();
        for version in 1..=5 {
            bus.publish(put("k", version));
        }
        assert_eq!(bus.subscribers(), 0);
        let got: Vec<u64> = slow.events.iter().map(|e| e.version).collect();
        assert_eq!(got, [1, 2], "queued events are still delivered");
        assert!(slow.overflowed());
    }

    #[test]
    fn dropped_and_closed_subscriptions_go_away() {
        let bus = EventBus::new(0);
        drop(bus.subscribe(b"", None).unwrap());
        bus.publish(put("k", 1));
        assert_eq!(bus.subscribers(), 0);
        let sub = bus.subscribe(b"", None).unwrap();
        bus.close();
        assert!(sub.events.recv().is_err());
        assert!(!sub.overflowed());
    }

    #[test]
    fn texts_keep_their_bounds_in_every_combination() {
        // Lossy decoding makes a byte three: the offsets follow the text.
        let odd = Event::new(EventOp::Put, b"k\xff", 1, b"t\xfe/x", b"v");
        assert_eq!(odd.key(), "k\u{fffd}");
        assert_eq!(odd.content_type(), Some("t\u{fffd}/x"));
        assert_eq!(odd.value(), Some("v"));
        let empty = Event::new(EventOp::Put, b"k", 2, b"", b"");
        assert_eq!(
            (empty.key(), empty.content_type(), empty.value()),
            ("k", Some(""), Some(""))
        );
        let no_inline = Event::new(EventOp::Put, b"key", 3, b"ct", &[0xff]);
        assert_eq!(
            (no_inline.key(), no_inline.content_type(), no_inline.value()),
            ("key", Some("ct"), None)
        );
        let deleted = Event::new(EventOp::Delete, b"k\xffk", 4, b"", b"");
        assert_eq!(
            (deleted.key(), deleted.content_type(), deleted.value()),
            ("k\u{fffd}k", None, None)
        );
    }

    #[test]
    fn json_is_written_as_a_json_object_would_be() {
        let events = [
            Event::new(
                EventOp::Put,
                b"a\"b\\c\n\x01",
                7,
                b"text/x; \"q\"",
                b"line\n\ttab",
            ),
            Event::new(EventOp::Put, b"k", 8, b"", &[0xff]),
            Event::new(EventOp::Delete, b"k\xff", 9, b"", b""),
            Event::new(EventOp::Unlock, b"\xc3\xa9", u64::MAX, b"a/b", b""),
        ];
        for event in events {
            let mut object = serde_json::json!({
                "op": event.op.name(),
                "key": event.key(),
                "version": event.version,
                "size": event.size,
                "content_type": event.content_type(),
            });
            if let Some(value) = event.value() {
                object["value"] = value.into();
            }
            assert_eq!(event.to_json(), object.to_string());
        }
    }

    #[test]
    fn values_are_inline_only_when_small_utf8() {
        let event = Event::new(EventOp::Put, b"k", 1, b"text/plain", b"21.5");
        assert_eq!(event.value(), Some("21.5"));
        assert_eq!(event.key(), "k");
        assert_eq!(event.content_type(), Some("text/plain"));
        let json: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(json["value"], "21.5");
        assert_eq!(json["op"], "put");
        let binary = Event::new(EventOp::Put, b"k", 2, b"x", &[0xff, 0xfe]);
        assert_eq!(binary.value(), None);
        let big = Event::new(EventOp::Put, b"k", 3, b"x", &[b'a'; INLINE_VALUE_MAX + 1]);
        assert_eq!(big.value(), None);
        assert_eq!(big.size, INLINE_VALUE_MAX as u64 + 1);
        let gone = Event::new(EventOp::Expire, b"k", 4, b"", b"");
        assert_eq!(
            (gone.key(), gone.content_type(), gone.value()),
            ("k", None, None)
        );
        let json: serde_json::Value = serde_json::from_str(&gone.to_json()).unwrap();
        assert_eq!(json["content_type"], serde_json::Value::Null);
        assert!(json.get("value").is_none());
    }
}
