//! A primary's side of replication: the followers connected to it, each
//! with the position it confirmed durable (what `replication.min_acks`
//! waits for), and the stream that sends each its log.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::protocol::{self, Hello, MAX_RECORDS};
use crate::clock::now_ms;
use crate::store::engine::commit::FollowerAcks;
use crate::store::tail::LogTail;
use crate::store::StoreError;

/// How long a stream waits at the log's end before it sends a heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// A follower as the primary sees it (`GET /api/admin/replication`).
#[derive(Debug, Clone, Serialize)]
pub struct FollowerInfo {
    /// The follower's node name.
    pub node: String,
    /// Its address.
    pub address: String,
    /// The stream's id.
    pub stream: u64,
    /// When its stream began, ms since the epoch.
    pub connected_since_ms: u64,
    /// The last sequence number sent to it.
    pub sent: u64,
    /// The last sequence number it confirmed durable.
    pub durable: u64,
    /// Whether its stream has reached the end of the log.
    pub caught_up: bool,
}

/// The followers connected to this primary.
pub struct Followers {
    connected: Mutex<Vec<FollowerInfo>>,
    /// Signalled when a follower confirms a position or goes.
    changed: Condvar,
    next_stream: AtomicU64,
    /// `replication.min_acks`.
    min_acks: usize,
    /// `replication.ack_timeout_ms`.
    ack_timeout: Duration,
    /// Writes whose followers' confirmations did not come in time.
    timeouts: AtomicU64,
}

impl Followers {
    /// No follower yet; writes will wait for `min_acks` of them, at most
    /// `ack_timeout`.
    pub fn new(min_acks: usize, ack_timeout: Duration) -> Self {
        Self {
            connected: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            next_stream: AtomicU64::new(1),
            min_acks,
            ack_timeout,
            timeouts: AtomicU64::new(0),
        }
    }

    /// `replication.min_acks`.
    pub fn min_acks(&self) -> usize {
        self.min_acks
    }

    /// Registers the follower `node` at `address`, resuming after
    /// `after`; it is gone when the returned guard is dropped.
    pub fn register(self: &Arc<Self>, node: &str, address: &str, after: u64) -> Registered {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        self.lock().push(FollowerInfo {
            node: node.to_owned(),
            address: address.to_owned(),
            stream,
            connected_since_ms: now_ms(),
            sent: after,
            durable: 0,
            caught_up: false,
        });
        Registered {
            followers: Arc::clone(self),
            stream,
        }
    }

    /// Notes that the follower of `stream` made everything up to `durable`
    /// durable; `false` if no such stream is connected.
    pub fn acknowledge(&self, stream: u64, durable: u64) -> bool {
        // A follower cannot hold more than it was sent.
        let found = self.update(stream, |follower| {
            follower.durable = follower.durable.max(durable.min(follower.sent));
        });
        self.changed.notify_all();
        found
    }

    /// The connected followers.
    pub fn list(&self) -> Vec<FollowerInfo> {
        self.lock().clone()
    }

    /// Writes whose followers' confirmations did not come in time.
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// Why a write must be refused now, if it must: fewer than `min_acks`
    /// followers connected and caught up (it could not be confirmed).
    pub fn refusal(&self) -> Option<String> {
        if self.min_acks == 0 {
            return None;
        }
        let caught_up = self.lock().iter().filter(|f| f.caught_up).count();
        (caught_up < self.min_acks).then(|| {
            format!(
                "Writes need {} followers (replication.min_acks) connected and caught up, and {} \
                 are: nothing was written. Retry once the followers are back.",
                self.min_acks, caught_up
            )
        })
    }

    fn update(&self, stream: u64, change: impl FnOnce(&mut FollowerInfo)) -> bool {
        let mut connected = self.lock();
        match connected.iter_mut().find(|f| f.stream == stream) {
            Some(follower) => {
                change(follower);
                true
            }
            None => false,
        }
    }

    /// The highest sequence number `min_acks` followers made durable.
    fn acknowledged_in(connected: &[FollowerInfo], min_acks: usize) -> u64 {
        if min_acks == 0 {
            return u64::MAX;
        }
        // The highest position at least `min_acks` followers reached: no
        // allocation per write (a few followers at most).
        connected
            .iter()
            .map(|f| f.durable)
            .filter(|&d| connected.iter().filter(|f| f.durable >= d).count() >= min_acks)
            .max()
            .unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<FollowerInfo>> {
        crate::locks::lock(&self.connected)
    }
}

impl FollowerAcks for Followers {
    fn wait(&self, sequence: u64) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.ack_timeout;
        let mut connected = self.lock();
        while Self::acknowledged_in(&connected, self.min_acks) < sequence {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::NotReplicated {
                    required: self.min_acks,
                    timeout_ms: self.ack_timeout.as_millis() as u64,
                });
            }
            connected = self
                .changed
                .wait_timeout(connected, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    fn acknowledged(&self) -> u64 {
        Self::acknowledged_in(&self.lock(), self.min_acks)
    }
}

/// A follower's place among the connected ones, held by its stream.
pub struct Registered {
    followers: Arc<Followers>,
    stream: u64,
}

impl Registered {
    /// The stream's id.
    pub fn stream(&self) -> u64 {
        self.stream
    }

    fn sent(&self, sequence: u64, caught_up: bool) {
        self.followers.update(self.stream, |follower| {
            follower.sent = sequence;
            follower.caught_up |= caught_up;
        });
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.followers.lock().retain(|f| f.stream != self.stream);
        self.followers.changed.notify_all();
    }
}

/// Sends `hello`, then every record of `tail` to `out` as it is appended,
/// with a heartbeat after each second with none, until writing fails (the
/// follower went), `stopping` is set, or the log cannot be read from where
/// the follower is any more (it will ask again and be told why).
pub fn stream_log(
    mut tail: LogTail,
    hello: &Hello,
    follower: &Registered,
    stopping: &AtomicBool,
    out: &mut impl Write,
) -> io::Result<()> {
    protocol::write_hello(out, hello)?;
    out.flush()?;
    let mut buf = Vec::new();
    while !stopping.load(Ordering::SeqCst) {
        let next = tail
            .next(&mut buf, MAX_RECORDS, HEARTBEAT)
            .map_err(|err| io::Error::other(err.to_string()))?;
        match next {
            Some(chunk) => {
                protocol::write_records(out, &chunk, tail.log_sequence())?;
                follower.sent(chunk.last_sequence, tail.caught_up());
            }
            None => {
                protocol::write_heartbeat(out, tail.log_sequence(), now_ms())?;
                follower.sent(tail.log_sequence(), true);
            }
        }
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_waits_for_min_acks_followers_and_times_out_without_them() {
        let followers = Arc::new(Followers::new(2, Duration::from_millis(50)));
        assert!(followers.refusal().is_some(), "no follower yet");
        let a = followers.register("a", "127.0.0.1:1", 0);
        let b = followers.register("b", "127.0.0.1:2", 0);
        a.sent(10, true);
        b.sent(10, true);
        assert_eq!(followers.refusal(), None);
        assert!(followers.acknowledge(a.stream(), 10));
        assert!(matches!(
            followers.wait(10),
            Err(StoreError::NotReplicated { required: 2, .. })
        ));
        assert_eq!(followers.timeouts(), 1);
        assert!(followers.acknowledge(b.stream(), 7));
        assert_eq!(followers.acknowledged(), 7);
        assert!(followers.wait(7).is_ok());
        std::thread::scope(|scope| {
            scope.spawn(|| followers.acknowledge(b.stream(), 12));
            followers.wait(10).unwrap();
        });
        drop(b);
        assert_eq!(followers.acknowledged(), 0, "one follower left");
        assert!(followers.refusal().is_some());
        assert!(!followers.acknowledge(99, 1), "no such stream");
    }
}
