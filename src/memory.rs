//! The node's memory budget (`storage.memory_budget`): its resident memory
//! stays under it however clients mix large writes, batches and
//! compactions.
//!
//! The budget is split in two. A fixed share covers what the node holds
//! whatever clients do: code, threads, the index of a modest store
//! ([`NODE_SHARE`]), and what compaction and the writer hold for the
//! largest record ([`fixed_share`]). The rest is for request bodies in
//! memory: the copies lucid-http reads ahead (at most half of it, so
//! requests already read can always get their own) and the buffers the
//! handlers build from them. A request that would take more than is left
//! waits a little ([`WAIT`]) for others to finish, then is refused with a
//! 503 the client may retry.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::locks::lock;

/// Memory the node holds whatever clients do: code, thread stacks, the
/// index of a store of up to some hundred thousand keys, small buffers.
pub const NODE_SHARE: usize = 24 * 1024 * 1024;

/// How long a request waits for room in the budget before it is refused:
/// as long as lucid-http lets a body read ahead wait for its room.
pub const WAIT: Duration = lucid_http::READ_AHEAD_PATIENCE;

/// The longest record a store with values of up to `max_value_bytes`
/// holds: a batch frame of the largest batch body (see `http::batch`),
/// whose values are at most three quarters of it once decoded.
pub fn largest_record(max_value_bytes: usize) -> usize {
    3 * max_value_bytes / 2 + 64 * 1024
}

/// The part of the budget not for request bodies: [`NODE_SHARE`], and
/// for the largest record its copies during a compaction (the read window
/// or mapped pages, opened, restamped and sealed: four) and the writer's
/// envelope buffer (one).
pub fn fixed_share(max_value_bytes: usize) -> usize {
    NODE_SHARE + 5 * largest_record(max_value_bytes)
}

/// The memory a batch body of `len` bytes needs while it is handled,
/// beside the body itself: each string being decoded, the decoded values
/// and the log frame built from them.
pub fn batch_need(len: usize) -> usize {
    2 * len
}

/// The smallest budget that serves the largest request: a batch of the
/// largest body, read ahead and then decoded.
pub fn minimum_budget(max_value_bytes: usize) -> usize {
    let largest_batch = 2 * max_value_bytes + 64 * 1024;
    fixed_share(max_value_bytes) + largest_batch + batch_need(largest_batch)
}

/// Request bodies' part of the budget, shared by lucid-http's read-ahead
/// and the handlers.
pub struct MemoryBudget {
    usage: Mutex<Usage>,
    /// Signalled whenever bytes are given back.
    freed: Condvar,
    /// Most bytes in use at once.
    cap: usize,
}

#[derive(Default)]
struct Usage {
    /// Bytes reserved, read-ahead included.
    in_use: usize,
    /// Bytes lucid-http holds, read ahead.
    read_ahead: usize,
}

impl MemoryBudget {
    /// The bodies' part of a `budget` for a node whose values are at most
    /// `max_value_bytes`.
    pub fn new(budget: usize, max_value_bytes: usize) -> Self {
        Self::with_cap(budget.saturating_sub(fixed_share(max_value_bytes)))
    }

    /// A budget of `cap` bytes for request bodies.
    pub fn with_cap(cap: usize) -> Self {
        Self {
            usage: Mutex::new(Usage::default()),
            freed: Condvar::new(),
            cap,
        }
    }

    /// Takes `bytes`, waiting up to [`WAIT`] for room; `None` if there is
    /// none by then. The bytes are given back when the reservation drops.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let deadline = Instant::now() + WAIT;
        let mut usage = lock(&self.usage);
        while usage.in_use + bytes > self.cap {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || bytes > self.cap {
                return None;
            }
            usage = self.wait_for_room(usage, left);
        }
        usage.in_use += bytes;
        Some(Reservation {
            budget: Arc::clone(self),
            bytes,
        })
    }

    /// Holds `bytes` in `held`, giving back what it held first, waiting for
    /// room as [`reserve`](Self::reserve) does; whether it got them.
    pub fn hold(self: &Arc<Self>, held: &mut Option<Reservation>, bytes: usize) -> bool {
        *held = None;
        *held = self.reserve(bytes);
        held.is_some()
    }

    /// The most bytes that can be reserved at once.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        lock(&self.usage).in_use
    }

    fn give_back(&self, bytes: usize, read_ahead: bool) {
        let mut usage = lock(&self.usage);
        usage.in_use -= bytes;
        if read_ahead {
            usage.read_ahead -= bytes;
        }
        drop(usage);
        self.freed.notify_all();
    }

    /// Waits until bytes are given back, or `left` has passed.
    fn wait_for_room<'u>(
        &self,
        usage: MutexGuard<'u, Usage>,
        left: Duration,
    ) -> MutexGuard<'u, Usage> {
        self.freed
            .wait_timeout(usage, left)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }
}

/// Read-ahead bodies take at most half of the budget.
impl lucid_http::BodyBudget for MemoryBudget {
    fn reserve_by(&self, bytes: usize, deadline: Instant) -> bool {
        let mut usage = lock(&self.usage);
        loop {
            if usage.in_use + bytes <= self.cap && usage.read_ahead + bytes <= self.cap / 2 {
                usage.in_use += bytes;
                usage.read_ahead += bytes;
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            usage = self.wait_for_room(usage, left);
        }
    }

    fn release(&self, bytes: usize) {
        self.give_back(bytes, true);
    }
}

/// Bytes taken from a [`MemoryBudget`], given back on drop.
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes, false);
    }
}

/// Makes the allocator give large buffers back to the system when they are
/// freed, so the node's memory falls back after a peak. glibc otherwise
/// raises its threshold for mapping a buffer on its own after the first
/// large one is freed, and keeps buffers of up to 32 MiB in its arenas
/// afterwards; with several arenas (one per core and thread group) the
/// process kept hundreds of MiB after concurrent batches. musl (the static
/// ARM builds) always maps large buffers and unmaps them on free.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called at start-up.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lucid_http::BodyBudget;

    #[test]
    fn reservations_wait_for_room_and_read_ahead_takes_half() {
        let budget = Arc::new(MemoryBudget::with_cap(100));
        let first = budget.reserve(60).unwrap();
        assert!(budget.try_reserve(40));
        assert!(!budget.try_reserve(1), "the budget is full");
        budget.release(40);
        assert!(!budget.try_reserve(41), "read-ahead takes at most half");
        std::thread::scope(|scope| {
            assert!(budget.try_reserve(20));
            let (budget, patient) = (&budget, Instant::now() + Duration::from_secs(60));
            let waiting = scope.spawn(move || budget.reserve_by(30, patient));
            std::thread::sleep(Duration::from_millis(50));
            budget.release(20);
            assert!(waiting.join().unwrap(), "read-ahead waits for room");
            budget.release(30);
        });
        assert!(budget.reserve(101).is_none(), "more than the whole budget");
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| budget.reserve(80).map(|r| r.bytes));
            std::thread::sleep(Duration::from_millis(50));
            drop(first);
            assert_eq!(waiting.join().unwrap(), Some(80));
        });
        assert_eq!(budget.in_use(), 0);
    }
}
