//! `GET /api/watch?prefix=P[&since=VERSION]`: live changes to the keys
//! under a prefix, as Server-Sent Events ([`sse`]) or, with
//! `Upgrade: websocket`, as WebSocket messages ([`websocket`]).
//!
//! A request slot checks the request ([`prepare`]: query, handshake,
//! the watcher cap, `since` against the history), subscribes to the store's
//! change feed, and hands the connection to a thread of the watcher's own
//! ([`Watcher::start`]), so watchers never occupy a request slot. That
//! thread sends the backlog, then live events, and a keepalive after
//! [`KEEPALIVE`] of silence, so a client that went away is noticed by a
//! failed write. A watcher that falls behind is dropped by the feed (writers
//! never wait for it): it gets a final error event and is disconnected.
//!
//! Authorization belongs before [`prepare`]: nothing is sent or subscribed
//! until it has accepted the request.

use std::io;
use std::time::{Duration, Instant};

use lucid_http::Request;

use super::query::Params;
use super::reply::Reply;
use super::route;
use super::stream_threads::{self, Place};
use super::Context;
use crate::watch::{Event, SinceTooOld, Subscription};

mod sse;
pub(super) mod websocket;

/// Silence after which a keepalive is sent (an SSE comment, a WebSocket
/// ping).
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// A client that accepts no data for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Stack of a watcher's thread: it only formats events and writes them.
const STACK_SIZE: usize = 128 * 1024;

/// Events written between two flushes at most, so a steady stream of
/// changes still lets a watcher look at what its client sent.
const BURST: usize = 256;

/// After sending, a watcher lets changes gather about this long before it
/// takes the next ones. Under a stream of writes, each wake-up then carries
/// the changes of the last millisecond in one write, instead of each change
/// waking every watcher (a system call for the writer, a context switch
/// and a send for the watcher). A change after a quiet spell still goes
/// out at once. A watcher does not wait when its last batch did not empty
/// its queue (it is behind already), when a WebSocket poll is due (that
/// poll may wait for the client a few milliseconds itself), or when its
/// queue holds fewer than [`GATHER_MIN_QUEUE`] changes.
const GATHER: Duration = Duration::from_millis(1);

/// The smallest `watch.queue` with which a watcher gathers changes: 256 in
/// 1 ms would take 256,000 writes a second.
const GATHER_MIN_QUEUE: usize = 256;

/// How the events reach the client.
enum Protocol {
    /// Server-Sent Events.
    Sse,
    /// WebSocket, with the handshake's answer.
    WebSocket(websocket::Handshake),
}

/// An accepted watch request, subscribed, waiting for its thread.
pub struct Watcher {
    protocol: Protocol,
    subscription: Subscription,
    /// The version the client resumes after, if it said.
    since: Option<u64>,
    _place: Place,
}

/// Checks a watch request (a `GET`) and subscribes it, or says why not (400,
/// 503 beyond the cap, 410 for a `since` the history no longer holds).
pub fn prepare(ctx: &Context, request: &Request) -> Result<Watcher, Reply<'static>> {
    let query = Query::parse(request.url(), ctx.max_key_bytes)?;
    let since = match last_event_id(request)? {
        Some(version) => Some(version),
        None => query.since,
    };
    let protocol = match websocket::accept(request) {
        Ok(None) => Protocol::Sse,
        Ok(Some(handshake)) => Protocol::WebSocket(handshake),
        Err(problem) => return Err(Reply::message(400, problem)),
    };
    let place = ctx.watchers.admit().ok_or_else(|| {
        Reply::message(
            503,
            format!(
                "The node already serves {} watchers, its limit (watch.max_watchers). Retry later.",
                ctx.watchers.max()
            ),
        )
    })?;
    let subscription = ctx
        .store
        .events()
        .subscribe(query.prefix.as_bytes(), since)
        .map_err(|too_old| gone(too_old, &query))?;
    Ok(Watcher {
        protocol,
        subscription,
        since,
        _place: place,
    })
}

/// The `410` for a `since` older than the history; `oldest` says the
/// oldest version to resume after, for clients (the web console's charts
/// ask for `since=0` and then resume from there).
fn gone(too_old: SinceTooOld, query: &Query) -> Reply<'static> {
    let message = format!(
            "The changes after that version are no longer kept: the oldest version this node can resume after is {}. \
             Re-list the keys with GET /api/kv?prefix={}, then watch again without since (or with since={} or later).",
            too_old.oldest,
            route::percent_encode(&query.prefix),
            too_old.oldest
        );
    Reply::document(
        410,
        &serde_json::json!({ "message": message, "oldest": too_old.oldest }),
    )
}

/// The query of a watch request.
struct Query {
    /// The prefix, decoded (empty: every key).
    prefix: String,
    since: Option<u64>,
}

impl Query {
    fn parse(url: &str, max_key_bytes: usize) -> Result<Self, Reply<'static>> {
        let params = Params::parse(url, &["prefix", "since"], max_key_bytes)?;
        let since = match params.get("since") {
            None => None,
            Some(text) => Some(version(text).ok_or_else(|| {
                Reply::message(
                    400,
                    "since must be a version: a whole number, as in the id of an event.",
                )
            })?),
        };
        Ok(Self {
            prefix: params.get("prefix").unwrap_or_default().to_string(),
            since,
        })
    }
}

/// A version number as written in `since` or `Last-Event-ID`.
fn version(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The `Last-Event-ID` header an EventSource sends when it reconnects: the
/// id of the last event it received, which wins over the URL's `since`.
fn last_event_id(request: &Request) -> Result<Option<u64>, Reply<'static>> {
    let Some(header) = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Last-Event-ID"))
    else {
        return Ok(None);
    };
    let text = header.value.as_str();
    if text.trim().is_empty() {
        return Ok(None);
    }
    version(text).map(Some).ok_or_else(|| {
        Reply::message(
            400,
            "Last-Event-ID must be a version: a whole number, as in the id of an event.",
        )
    })
}

impl Watcher {
    /// Hands the connection to a new thread that serves this watcher, and
    /// returns the status it answers with (101 or 200; 503 if no thread can
    /// be started).
    pub fn start(self, request: Request) -> u16 {
        let status = match self.protocol {
            Protocol::Sse => 200,
            Protocol::WebSocket(_) => 101,
        };
        stream_threads::hand_over(request, "lucid-watch", STACK_SIZE, status, move |request| {
            self.serve(request)
        })
    }

    fn serve(self, request: Request) {
        let socket = request.socket();
        if let Some(socket) = &socket {
            if let Err(err) = socket.set_write_timeout(Some(WRITE_TIMEOUT)) {
                log::debug!("cannot set a watcher's write timeout: {err}");
            }
        }
        let Self {
            protocol,
            subscription,
            since,
            _place,
        } = self;
        let ended = match protocol {
            Protocol::Sse => sse::Feed::start(request)
                .and_then(|mut feed| pump(&subscription, since, &mut feed, KEEPALIVE)),
            Protocol::WebSocket(handshake) => {
                let mut feed = websocket::Feed::start(request, &handshake, socket.as_ref());
                pump(&subscription, since, &mut feed, KEEPALIVE)
            }
        };
        match ended {
            Ok(end) => log::debug!("watcher closed: {end:?}"),
            Err(err) => log::debug!("watcher disconnected: {err}"),
        }
    }
}

/// How a watcher's events reach its client: one implementation per protocol.
pub trait Feed {
    /// Writes one event (buffered until [`flush`](Self::flush)).
    fn event(&mut self, event: &Event) -> io::Result<()>;
    /// Writes a keepalive, after [`KEEPALIVE`] of silence.
    fn keepalive(&mut self) -> io::Result<()>;
    /// Sends what was written.
    fn flush(&mut self) -> io::Result<()>;
    /// How often [`poll`](Self::poll) must run; `None`: never.
    fn poll_interval(&self) -> Option<Duration>;
    /// Handles what the client sent since the last call, without waiting
    /// long; `Ok(false)` once the client has closed the stream.
    fn poll(&mut self) -> io::Result<bool>;
    /// Ends the stream, after `end`.
    fn finish(&mut self, end: &End);
}

/// Why a watcher's stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// It fell too far behind and the feed dropped it.
    Overflow {
        /// The last version it was sent (or resumed after), if any.
        last_version: Option<u64>,
    },
    /// The node is stopping.
    Stopping,
    /// The client closed it.
    ClientClosed,
}

impl End {
    /// The final error event for an overflow, as one line of JSON.
    pub fn error_json(&self) -> Option<String> {
        let Self::Overflow { last_version } = self else {
            return None;
        };
        let resume = match last_version {
            Some(version) => format!("Reconnect with since={version} to resume where it stopped."),
            None => "Re-list the keys, then watch again.".to_string(),
        };
        let message = format!(
            "This watcher fell too far behind (more than watch.queue changes waiting) and was disconnected. {resume}"
        );
        Some(serde_json::json!({ "op": "error", "message": message }).to_string())
    }
}

/// Sends the backlog, then live events until the stream ends; returns why
/// it ended, or the write error that ended it.
pub fn pump(
    subscription: &Subscription,
    since: Option<u64>,
    feed: &mut impl Feed,
    keepalive: Duration,
) -> io::Result<End> {
    let mut last_version = since;
    for event in &subscription.backlog {
        feed.event(event)?;
        last_version = Some(event.version);
    }
    feed.flush()?;
    let poll_every = feed.poll_interval();
    let tick = poll_every.map_or(keepalive, |poll| poll.min(keepalive));
    let (mut last_sent, mut last_poll) = (Instant::now(), Instant::now());
    loop {
        match subscription.events.recv_timeout(tick) {
            Ok(event) => {
                let mut sent = 0;
                for event in
                    std::iter::once(event).chain(subscription.events.try_iter().take(BURST))
                {
                    feed.event(&event)?;
                    last_version = Some(event.version);
                    sent += 1;
                }
                feed.flush()?;
                last_sent = Instant::now();
                let emptied_queue = sent <= BURST;
                let poll_due =
                    poll_every.is_some_and(|every| last_poll.elapsed() + GATHER >= every);
                if emptied_queue && !poll_due && subscription.capacity() >= GATHER_MIN_QUEUE {
                    std::thread::sleep(GATHER);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let end = if subscription.overflowed() {
                    End::Overflow { last_version }
                } else {
                    End::Stopping
                };
                feed.finish(&end);
                return Ok(end);
            }
        }
        if last_sent.elapsed() >= keepalive {
            feed.keepalive()?;
            feed.flush()?;
            last_sent = Instant::now();
        }
        if poll_every.is_some_and(|every| last_poll.elapsed() >= every) {
            if !feed.poll()? {
                feed.finish(&End::ClientClosed);
                return Ok(End::ClientClosed);
            }
            last_poll = Instant::now();
        }
    }
}
