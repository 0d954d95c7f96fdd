//! The bridge's thread: connects to the broker (again and again, backing
//! off, while it is away), ships every change after the cursor in order
//! with a bounded window of QoS 1 messages in flight, moves the cursor as
//! PUBACKs come back, and stores the messages of its subscriptions,
//! acknowledging each only once stored durably.
//!
//! # Store and forward
//!
//! The log is the outbox: a hold on the log's changes after the cursor
//! (see [`crate::store::engine::retention`]) keeps every change not yet
//! acknowledged through compactions, overwritten values and deletes
//! included. When the broker comes back the bridge drains from the cursor
//! at once, then goes on live. While it is away the backlog (the bytes of
//! log after the cursor) is bounded by `mqtt.max_backlog_bytes`: past it
//! the oldest changes are dropped, counted, and a gap message
//! (`{"op":"gap","from","to"}`) is published when the link returns, before
//! anything newer. Nothing is ever dropped silently.
//!
//! Messages are delivered at least once: after a reconnect or a restart,
//! the changes in flight when the link went are sent again (consumers
//! deduplicate by node and `seq`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cursor::{Cursor, Position};
use super::ingest::{self, Message, Router};
use super::message::MessageBuilder;
use super::session::{Incoming, Session, SessionError};
use super::Bridge;
use crate::store::engine::retention::ChangeHold;
use crate::store::tail::{LogTail, TailError};

/// QoS 1 messages in flight at most.
pub const WINDOW: usize = 256;

/// Most bytes of log read at once to make messages from.
const READ_AHEAD: usize = 64 * 1024;

/// The first and the longest pause between two connection attempts.
/// The longest stays short: draining must start within seconds of the
/// broker's return.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(4));

/// How long the bridge waits on the link when it has nothing to send.
const IDLE_WAIT: Duration = Duration::from_millis(20);

/// How often the backlog is measured while the broker is connected.
const BACKLOG_CHECK: Duration = Duration::from_secs(1);

/// Incoming messages stored in one batch at most...
const INGEST_GROUP: usize = 256;

/// ...and bytes of them (a larger message goes alone): the batch is one
/// record, which a follower takes whole.
const INGEST_BYTES: usize = 1024 * 1024;

/// A message to publish: its change's sequence number, topic and payload.
struct Outgoing {
    sequence: u64,
    topic: String,
    payload: Vec<u8>,
}

/// What the thread keeps across connections.
pub struct Shipper {
    bridge: Arc<Bridge>,
    /// While the broker is away: a reader at the cursor, to measure (and
    /// bound) the backlog without finding its place again each time.
    away: Option<LogTail>,
    cursor: Cursor,
    /// The hold on the changes not shipped (none when nothing is
    /// published).
    hold: Option<ChangeHold>,
    builder: MessageBuilder,
    router: Router,
}

impl Shipper {
    /// The bridge's state at start: its cursor (a new one starts after the
    /// log's last change) and the hold on the changes after it.
    pub fn new(bridge: Arc<Bridge>) -> Result<Self, String> {
        let store = &bridge.store;
        let dir = store.data_dir().ok_or("the store has no data directory")?;
        let mut cursor = Cursor::open(dir, store.last_sequence())
            .map_err(|err| format!("cannot open the MQTT cursor in {}: {err}", dir.display()))?;
        let last = store.last_sequence();
        if cursor.position().shipped > last {
            // The log lost its end since (a power cut with `sync:
            // interval`): what follows is shipped from where it ends now.
            log::warn!(
                "MQTT bridge: its cursor ({}) is past the log's end ({last}), which a power cut \
                 took back; shipping from there",
                cursor.position().shipped
            );
            let position = Position {
                shipped: last,
                ..cursor.position()
            };
            cursor
                .set(position)
                .map_err(|err| format!("cannot write the MQTT cursor: {err}"))?;
        }
        let publish = &bridge.settings.publish;
        let hold = publish
            .enabled
            .then(|| store.hold_changes_after(cursor.position().shipped));
        let builder = MessageBuilder::new(
            &bridge.node,
            &publish.topic,
            publish.payload,
            publish.retain,
        );
        let router = Router::new(&bridge.settings.subscribe)?;
        bridge.note_position(cursor.position());
        Ok(Self {
            bridge,
            away: None,
            cursor,
            hold,
            builder,
            router,
        })
    }

    /// Runs until the node stops.
    pub fn run(mut self) {
        let mut backoff = BACKOFF.0;
        let mut last_error = String::new();
        while !self.bridge.stopping.load(Ordering::SeqCst) {
            let filters: Vec<&str> = self.router.filters().collect();
            let connected = Session::connect(&self.bridge.session, &filters);
            let failure = match connected {
                Ok(session) => {
                    self.away = None;
                    self.bridge.note_connected(true);
                    backoff = BACKOFF.0;
                    let served = self.serve(session);
                    self.bridge.note_connected(false);
                    served.err()
                }
                Err(err) => Some(err),
            };
            if let Some(err) = failure {
                let text = err.to_string();
                if text != last_error {
                    log::warn!(
                        "MQTT bridge to {}: {text}; retrying (backoff up to {} s)",
                        self.bridge.settings.url,
                        BACKOFF.1.as_secs()
                    );
                    last_error = text;
                }
                self.bridge.note_error(&err);
            }
            self.wait_away(backoff);
            backoff = (backoff * 2).min(BACKOFF.1);
        }
        let _ = self.cursor.sync();
    }

    /// Waits `period` while the broker is away, bounding the backlog.
    fn wait_away(&mut self, period: Duration) {
        let until = Instant::now() + period;
        while Instant::now() < until && !self.bridge.stopping.load(Ordering::SeqCst) {
            if !self.bridge.settings.publish.enabled {
                std::thread::sleep(period);
                return;
            }
            if let Err(err) = self.bound_backlog() {
                log::warn!("MQTT bridge: cannot measure its backlog: {err}");
            }
            std::thread::sleep(Duration::from_millis(100).min(period));
        }
    }

    /// Drops the oldest changes not shipped while their bytes are over
    /// `mqtt.max_backlog_bytes`, keeping the gap to announce.
    fn bound_backlog(&mut self) -> Result<(), TailError> {
        let max = self.bridge.settings.max_backlog_bytes;
        let mut tail = match self.away.take() {
            Some(tail) => tail,
            None => self.tail()?,
        };
        let behind = tail.behind_bytes();
        self.bridge.note_backlog(behind);
        if behind <= max {
            self.away = Some(tail);
            return Ok(());
        }
        // Down to nine tenths, so the next writes do not drop again at once.
        let keep = max / 10 * 9;
        let mut buf = Vec::new();
        let mut position = self.cursor.position();
        let first = position.shipped + 1;
        while tail.behind_bytes() > keep {
            match tail.next(&mut buf, READ_AHEAD, Duration::ZERO)? {
                Some(chunk) => position.shipped = chunk.last_sequence,
                None => break,
            }
        }
        let dropped = position.shipped + 1 - first;
        position.gap = Some(match position.gap {
            Some((from, _)) => (from, position.shipped),
            None => (first, position.shipped),
        });
        log::warn!(
            "MQTT bridge: the broker is away and the backlog passed mqtt.max_backlog_bytes \
             ({max}): dropped the {dropped} oldest changes not shipped ({first} to {}); a gap \
             message will say so when the link returns",
            position.shipped
        );
        self.bridge.note_dropped(dropped);
        self.move_cursor(position);
        self.away = Some(tail);
        Ok(())
    }

    /// A reader of the log after the cursor; if the log no longer holds
    /// those changes (compacted before the hold was set), the lost ones
    /// become a gap.
    fn tail(&mut self) -> Result<LogTail, TailError> {
        let store = Arc::clone(&self.bridge.store);
        let position = self.cursor.position();
        match store.published_tail_after(position.shipped) {
            Err(TailError::TooOld { base }) => {
                let gap = match position.gap {
                    Some((from, _)) => (from, base),
                    None => (position.shipped + 1, base),
                };
                log::warn!(
                    "MQTT bridge: changes {} to {} were compacted away before they were shipped",
                    gap.0,
                    gap.1
                );
                self.bridge.note_dropped(base - position.shipped);
                self.move_cursor(Position {
                    shipped: base,
                    gap: Some(gap),
                });
                store.published_tail_after(base)
            }
            other => other,
        }
    }

    /// Ships and takes in on one connection until it fails or the node
    /// stops.
    fn serve(&mut self, mut session: Session) -> Result<(), SessionError> {
        let mut tail = self
            .tail()
            .map_err(|err| SessionError::Local(err.to_string()))?;
        let mut in_flight: VecDeque<(u16, u64, bool)> = VecDeque::new();
        let mut ready: VecDeque<Outgoing> = VecDeque::new();
        // Messages taken in, to store; the packet ids to acknowledge, in
        // the order they came (as MQTT asks), once those are stored.
        let mut incoming: Vec<Message> = Vec::new();
        let mut acks: Vec<u16> = Vec::new();
        let mut incoming_bytes = 0;
        let mut gap_id = None;
        let (mut buf, mut scratch) = (Vec::new(), Vec::new());
        if let Some((from, to)) = self.cursor.position().gap {
            self.builder.gap(from, to);
            let id = session.publish(&self.builder.topic_buf, &self.builder.payload, false)?;
            gap_id = Some(id);
        }
        let publishing = self.bridge.settings.publish.enabled;
        let mut checked = Instant::now();
        while !self.bridge.stopping.load(Ordering::SeqCst) {
            // Fill the window once the gap is announced.
            while publishing && gap_id.is_none() && in_flight.len() < WINDOW {
                if ready.is_empty()
                    && !self.read_changes(&mut tail, &mut buf, &mut scratch, &mut ready)?
                {
                    break;
                }
                let Some(message) = ready.pop_front() else {
                    break;
                };
                if message.topic.is_empty() {
                    // Changes of keys not published: passed over at once.
                    in_flight.push_back((0, message.sequence, true));
                    self.advance(&mut in_flight);
                    continue;
                }
                let retain = self.bridge.settings.publish.retain;
                let id = session.publish(&message.topic, &message.payload, retain)?;
                in_flight.push_back((id, message.sequence, false));
            }
            session.flush()?;
            // The window is full or nothing is left to send: wait on the
            // link (a PUBACK or a message wakes it at once), unless
            // messages taken in are waiting to be stored.
            let wait = if acks.is_empty() && incoming.is_empty() {
                IDLE_WAIT
            } else {
                Duration::ZERO
            };
            match session.poll(wait)? {
                Some(Incoming::PubAck(id)) if gap_id == Some(id) => {
                    gap_id = None;
                    let position = Position {
                        gap: None,
                        ..self.cursor.position()
                    };
                    self.move_cursor(position);
                }
                Some(Incoming::PubAck(id)) => {
                    if let Some(entry) = in_flight.iter_mut().find(|(pid, _, _)| *pid == id) {
                        entry.2 = true;
                    }
                    self.advance(&mut in_flight);
                }
                Some(Incoming::Oversized { id, topic, len }) => {
                    self.bridge.note_received();
                    log::warn!(
                        "MQTT bridge: a message of {len} bytes on {topic:?} was not stored: it is \
                         larger than storage.max_value_bytes; it is acknowledged so the broker \
                         does not send it again"
                    );
                    self.bridge.note_stored(0, 1);
                    acks.extend(id);
                }
                Some(Incoming::Publish { id, topic, payload }) => {
                    self.bridge.note_received();
                    if let Some(message) = self.router.message(&topic, &payload) {
                        incoming_bytes += message.key.len() + message.value.len();
                        incoming.push(message);
                    }
                    acks.extend(id);
                    let full = acks.len().max(incoming.len()) >= INGEST_GROUP
                        || incoming_bytes >= INGEST_BYTES;
                    if !full {
                        continue;
                    }
                }
                None => {}
            }
            if !acks.is_empty() || !incoming.is_empty() {
                self.store_incoming(&mut session, &mut incoming, &mut acks, &mut buf)?;
                incoming_bytes = 0;
            }
            if in_flight.is_empty() && ready.is_empty() {
                let _ = self.cursor.sync();
            }
            if publishing && checked.elapsed() >= BACKLOG_CHECK {
                checked = Instant::now();
                let behind = tail.behind_bytes();
                self.bridge.note_backlog(behind);
                if behind > self.bridge.settings.max_backlog_bytes {
                    // The broker takes messages slower than they are
                    // written: the link is dropped, and the backlog bounded
                    // as while it is away.
                    return Err(SessionError::Local(format!(
                        "the broker acknowledges changes slower than they are written: {behind} \
                         bytes behind, over mqtt.max_backlog_bytes"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Reads the next changes after the tail into `ready` (those under the
    /// published prefixes); `false` if there are none yet.
    fn read_changes(
        &mut self,
        tail: &mut LogTail,
        buf: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
        ready: &mut VecDeque<Outgoing>,
    ) -> Result<bool, SessionError> {
        let local = |err: TailError| SessionError::Local(err.to_string());
        let Some(chunk) = tail.next(buf, READ_AHEAD, Duration::ZERO).map_err(local)? else {
            return Ok(false);
        };
        let prefixes = &self.bridge.settings.publish.prefixes;
        let builder = &mut self.builder;
        let mut last = chunk.after;
        tail.changes(&chunk, scratch, |change| {
            last = change.sequence;
            let wanted = prefixes.is_empty()
                || prefixes
                    .iter()
                    .any(|prefix| change.key.starts_with(prefix.as_bytes()));
            if wanted {
                builder.change(&change);
                ready.push_back(Outgoing {
                    sequence: change.sequence,
                    topic: builder.topic_buf.clone(),
                    payload: builder.payload.clone(),
                });
            }
        })
        .map_err(local)?;
        // Changes left out (other prefixes) are shipped as far as the
        // cursor goes: a marker the window passes over at once.
        if ready
            .back()
            .is_none_or(|message| message.sequence < chunk.last_sequence)
        {
            ready.push_back(Outgoing {
                sequence: chunk.last_sequence.max(last),
                topic: String::new(),
                payload: Vec::new(),
            });
        }
        Ok(true)
    }

    /// Moves the cursor over the acknowledged start of `in_flight`.
    fn advance(&mut self, in_flight: &mut VecDeque<(u16, u64, bool)>) {
        let (mut shipped, mut published) = (None, 0);
        while let Some(&(id, sequence, true)) = in_flight.front() {
            shipped = Some(sequence);
            published += u64::from(id != 0);
            in_flight.pop_front();
        }
        if let Some(shipped) = shipped {
            let position = Position {
                shipped,
                ..self.cursor.position()
            };
            self.bridge.note_published(published);
            self.move_cursor(position);
        }
    }

    /// Stores the messages taken in, then acknowledges every message
    /// received, in order (those that could not be stored too, once logged
    /// and counted, and those no subscription routes).
    fn store_incoming(
        &mut self,
        session: &mut Session,
        incoming: &mut Vec<Message>,
        acks: &mut Vec<u16>,
        buf: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        let bridge = &self.bridge;
        let messages = std::mem::take(incoming);
        let (ticket, refused) = ingest::store_all(
            &bridge.store,
            &messages,
            bridge.max_key_bytes,
            bridge.max_value_bytes,
            buf,
        );
        if let Err(err) = bridge.store.wait_for(ticket) {
            // Not durable: not acknowledged; the broker sends them again.
            return Err(SessionError::Local(format!(
                "messages taken in could not be made durable: {err}"
            )));
        }
        for refusal in &refused {
            log::warn!(
                "MQTT bridge: a message for key {:?} was not stored ({}); it is acknowledged \
                 so the broker does not send it again",
                messages[refusal.index].key,
                refusal.reason
            );
        }
        bridge.note_stored(messages.len() - refused.len(), refused.len());
        for id in acks.drain(..) {
            session.puback(id)?;
        }
        session.flush()
    }

    fn move_cursor(&mut self, position: Position) {
        if let Err(err) = self.cursor.set(position) {
            log::error!("MQTT bridge: cannot write its cursor: {err}");
        }
        if let Some(hold) = &self.hold {
            hold.move_to(position.shipped);
        }
        self.bridge.note_position(position);
    }
}
