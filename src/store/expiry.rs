//! Expiry: keys with a time to live, and the sweep that removes them.
//!
//! A key's expiry is an absolute wall-clock time (milliseconds since the
//! epoch) stored in its record, set by `PUT ?ttl=` or `PATCH ttl`. From that
//! instant the key reads as missing (GET/HEAD 404, not listed, a PUT creates
//! it anew). A background sweep then writes a tombstone for it (one batch
//! frame per round, so expiring many keys costs one fsync), and compaction
//! reclaims its bytes.
//!
//! # Clock jumps
//!
//! Expiry follows the wall clock, as Redis and etcd leases do across
//! restarts. A board without a real-time clock may boot in the past until
//! NTP syncs: keys then live longer than asked (expiries lie further ahead),
//! never shorter. A clock jumping forward expires keys early. Once the sweep
//! has written a key's tombstone, setting the clock back does not revive it.

use std::sync::{Arc, Weak};
use std::thread;
use std::time::Duration;

use super::engine::{lock, now_ms, read, Store, StoreError};
use super::record::{FrameBuilder, RecordMeta};
use crate::watch::EventOp;

/// How often the sweep runs.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// Most keys expired per round (one batch frame).
pub const SWEEP_BATCH: usize = 1000;

/// Starts the background sweep for `store`; it ends when the store is
/// dropped or turns read-only.
pub fn spawn_expiry_sweeper(store: &Arc<Store>) {
    let weak = Arc::downgrade(store);
    thread::Builder::new()
        .name("lucid-expiry".into())
        .spawn(move || sweep_periodically(&weak))
        .expect("spawn the expiry thread");
}

fn sweep_periodically(store: &Weak<Store>) {
    loop {
        thread::sleep(SWEEP_PERIOD);
        let Some(store) = store.upgrade() else { return };
        if store.is_read_only() {
            return;
        }
        // Rounds repeat while full: a backlog is cleared without waiting.
        loop {
            match store.expire_due(now_ms(), SWEEP_BATCH) {
                Ok(count) if count == SWEEP_BATCH => continue,
                Ok(_) => break,
                Err(err) => {
                    log::warn!("the expiry sweep could not write tombstones: {err}");
                    break;
                }
            }
        }
    }
}

impl Store {
    /// Writes tombstones for up to `max` keys whose expiry is at or before
    /// `due_by_ms`, as one batch frame, and returns how many once they are
    /// durable. Keys whose expiry changed meanwhile are left alone; locks do
    /// not stop expiry.
    pub fn expire_due(&self, due_by_ms: u64, max: usize) -> Result<usize, StoreError> {
        let due = read(&self.keydir).index.expired(due_by_ms, max);
        if due.is_empty() || self.is_read_only() {
            return Ok(0);
        }
        let mut writer = lock(&self.writer);
        let mut frame = Vec::new();
        FrameBuilder::begin(&mut frame);
        let mut count = 0;
        for (key, expires_at_ms) in &due {
            // Still the same expiry, and still past it now (the clock may
            // have stepped back since the index was read).
            let still_due = self.current_state(&writer, key, 0).is_some_and(|state| {
                state.attrs.expires_at_ms == *expires_at_ms && state.attrs.expired(now_ms())
            });
            if still_due {
                FrameBuilder::add(&mut frame, &RecordMeta::tombstone(key), b"");
                count += 1;
            }
        }
        if count > 0 {
            let last = self.append_frame(&mut writer, &mut frame, |_| EventOp::Expire)?;
            drop(writer);
            // The store's own write: nobody acknowledges it, the sweep waits.
            self.wait_for(self.ticket(last))?;
        }
        Ok(count)
    }
}
