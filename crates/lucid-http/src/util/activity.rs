//! Lucid patch: what each connection is doing and how fast its client
//! sends, so that
//!
//! - a request head must arrive whole within a deadline (`Pace::head`),
//!   however slowly its bytes trickle in;
//! - a request body must keep up a minimum average rate
//!   (`Pace::min_body_rate`, checked once `Pace::body_grace` has passed);
//! - when the connection table is full, the connection that has sent
//!   least for longest while waiting for a request or reading its head is
//!   closed to make room (`Connections::evict_one`), as nginx and HAProxy
//!   do, instead of refusing every newcomer while tricklers hold the slots.
//!
//! The checks run in [`Paced`], under the connection's `BufReader`, once
//! per read from the socket: a client too slow gets a `TimedOut` error.

use std::convert::TryFrom;
use std::io::{Error as IoError, ErrorKind, Read, Result as IoResult};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::Socket;

/// How fast clients must send (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Longest a request head may take, from its first byte to its end.
    pub head: Duration,
    /// Lowest average rate of a request body, in bytes per second...
    pub min_body_rate: u64,
    /// ...once the body has taken this long.
    pub body_grace: Duration,
}

impl Default for Pace {
    /// 10 s for a head; at least 1 KiB/s for a body, from 10 s on.
    fn default() -> Self {
        Pace {
            head: Duration::from_secs(10),
            min_body_rate: 1024,
            body_grace: Duration::from_secs(10),
        }
    }
}

/// What a connection is doing.
const WAITING: u8 = 0;
const HEAD: u8 = 1;
const BODY: u8 = 2;
/// Handed over (a stream or an upgrade), or closed by eviction: no checks,
/// never evicted.
const HANDED: u8 = 3;

/// Milliseconds since the first call, a clock shared by all connections.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One connection's state, shared by its thread and the accept thread.
pub struct Activity {
    phase: AtomicU8,
    /// When the current phase began (`now_ms`).
    since_ms: AtomicU64,
    /// Bytes received in the current phase.
    bytes: AtomicU64,
    /// To close the connection when it is evicted.
    socket: Option<Socket>,
}

impl Activity {
    /// A new connection, waiting for its first request.
    pub fn new(socket: Option<Socket>) -> Arc<Self> {
        Arc::new(Activity {
            phase: AtomicU8::new(WAITING),
            since_ms: AtomicU64::new(now_ms()),
            bytes: AtomicU64::new(0),
            socket,
        })
    }

    fn enter(&self, phase: u8) {
        self.since_ms.store(now_ms(), Relaxed);
        self.bytes.store(0, Relaxed);
        self.phase.store(phase, Relaxed);
    }

    /// The connection waits for its next request.
    pub fn wait_for_request(&self) {
        self.enter(WAITING);
    }

    /// The head is read: what follows is the body.
    pub fn start_body(&self) {
        self.enter(BODY);
    }

    /// The connection is handed over to a stream or an upgrade.
    pub fn hand_over(&self) {
        self.phase.store(HANDED, Relaxed);
    }

    /// Counts `read` bytes just received; an error if the client is too
    /// slow for `pace`.
    fn received(&self, read: usize, pace: &Pace) -> IoResult<()> {
        let now = now_ms();
        let mut phase = self.phase.load(Relaxed);
        if phase == WAITING && read > 0 {
            self.enter(HEAD);
            phase = HEAD;
        }
        let bytes = self.bytes.fetch_add(read as u64, Relaxed) + read as u64;
        let elapsed = now.saturating_sub(self.since_ms.load(Relaxed));
        let too_slow = match phase {
            HEAD => elapsed > millis(pace.head),
            BODY => {
                elapsed > millis(pace.body_grace)
                    && bytes.saturating_mul(1000) < pace.min_body_rate.saturating_mul(elapsed)
            }
            _ => false,
        };
        if too_slow {
            return Err(IoError::new(
                ErrorKind::TimedOut,
                "the client sends the request too slowly",
            ));
        }
        Ok(())
    }

    /// How much this connection deserves eviction: the time it has waited
    /// for a request or read its head, per byte received (plus one), if at
    /// least `min_age` ms; `None` if it is busy with a request.
    fn idleness(&self, now: u64, min_age: u64) -> Option<u64> {
        let phase = self.phase.load(Relaxed);
        let age = now.saturating_sub(self.since_ms.load(Relaxed));
        ((phase == WAITING || phase == HEAD) && age >= min_age)
            .then(|| age / (self.bytes.load(Relaxed) + 1))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A connection's read side, checked against its [`Pace`] on every read.
pub struct Paced<R> {
    inner: R,
    activity: Arc<Activity>,
    pace: Option<Pace>,
}

impl<R> Paced<R> {
    /// Reads from `inner` for the connection `activity` describes;
    /// `None`: no pace is enforced (the state is still kept for eviction).
    pub fn new(inner: R, activity: Arc<Activity>, pace: Option<Pace>) -> Self {
        Paced {
            inner,
            activity,
            pace,
        }
    }
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        let read = self.inner.read(buf)?;
        let pace = self.pace.as_ref().unwrap_or(&UNLIMITED);
        self.activity.received(read, pace)?;
        Ok(read)
    }
}

/// No limits: what `Paced` checks when no pace is set.
const UNLIMITED: Pace = Pace {
    head: Duration::MAX,
    min_body_rate: 0,
    body_grace: Duration::MAX,
};

/// Every open connection, for the accept thread to count and evict.
#[derive(Default)]
pub struct Connections {
    open: Mutex<Vec<Arc<Activity>>>,
}

/// A connection younger than this is never evicted: a burst of new
/// connections is refused rather than evicting each other.
const MIN_AGE_TO_EVICT_MS: u64 = 1000;

impl Connections {
    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.open.lock().unwrap().len()
    }

    /// Counts `activity`'s connection as open until the guard is dropped.
    pub fn register(self: &Arc<Self>, activity: Arc<Activity>) -> OpenConnection {
        self.open.lock().unwrap().push(Arc::clone(&activity));
        OpenConnection {
            connections: Arc::clone(self),
            activity,
        }
    }

    /// Closes the connection that has sent least for longest while waiting
    /// for a request or reading its head; false if none qualifies.
    pub fn evict_one(&self) -> bool {
        let now = now_ms();
        let open = self.open.lock().unwrap();
        let victim = open
            .iter()
            .filter_map(|activity| Some((activity.idleness(now, MIN_AGE_TO_EVICT_MS)?, activity)))
            .max_by_key(|(idleness, _)| *idleness)
            .map(|(_, activity)| activity);
        match victim {
            Some(activity) => {
                activity.hand_over();
                if let Some(socket) = &activity.socket {
                    let _ = socket.shutdown();
                }
                true
            }
            None => false,
        }
    }
}

/// Counts a connection as open until dropped.
pub struct OpenConnection {
    connections: Arc<Connections>,
    activity: Arc<Activity>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock().unwrap();
        if let Some(at) = open.iter().position(|a| Arc::ptr_eq(a, &self.activity)) {
            open.swap_remove(at);
        }
    }
}
