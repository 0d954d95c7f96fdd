//! Holds on the log's recent changes: while some part of the node still
//! has to ship every change after sequence number `S` (the MQTT bridge: its
//! changes not yet acknowledged by the broker, overwritten values and
//! deletes included), it holds the log after `S`, and compaction copies
//! every record after the lowest hold as it is instead of only the live
//! ones (see [`crate::store::compaction`]). The holder bounds what it holds
//! by moving its hold on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use super::Store;
use crate::locks::lock;

/// A hold on every change after a sequence number; released when dropped.
pub struct ChangeHold {
    store: Weak<Store>,
    id: u64,
}

/// Ids of holds, across stores.
static NEXT_HOLD: AtomicU64 = AtomicU64::new(1);

impl Store {
    /// Holds every change after sequence number `sequence`: compaction
    /// keeps them all until the hold moves on or is dropped.
    pub fn hold_changes_after(self: &Arc<Self>, sequence: u64) -> ChangeHold {
        let id = NEXT_HOLD.fetch_add(1, Ordering::Relaxed);
        lock(&self.holds).push((id, sequence));
        ChangeHold {
            store: Arc::downgrade(self),
            id,
        }
    }

    /// The lowest sequence number after which changes are held, if any.
    pub(in crate::store) fn changes_held_after(&self) -> Option<u64> {
        lock(&self.holds)
            .iter()
            .map(|&(_, sequence)| sequence)
            .min()
    }
}

impl ChangeHold {
    /// Holds the changes after `sequence` instead (those before it may go).
    pub fn move_to(&self, sequence: u64) {
        if let Some(store) = self.store.upgrade() {
            if let Some(hold) = lock(&store.holds).iter_mut().find(|(id, _)| *id == self.id) {
                hold.1 = sequence;
            }
        }
    }
}

impl Drop for ChangeHold {
    fn drop(&mut self) {
        if let Some(store) = self.store.upgrade() {
            lock(&store.holds).retain(|(id, _)| *id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::directory::open_with;
    use crate::store::testing::{put, Model};
    use crate::store::SyncMode;

    /// The values the log still holds for key `k` after sequence `after`.
    fn changes_after(store: &std::sync::Arc<super::Store>, after: u64) -> Option<usize> {
        let mut tail = store.tail_after(after).ok()?;
        let (mut buf, mut records) = (Vec::new(), 0);
        while let Some(chunk) = tail.next(&mut buf, 1 << 20, Duration::ZERO).unwrap() {
            records += chunk.last_sequence - chunk.after;
        }
        Some(records as usize)
    }

    #[test]
    fn compaction_keeps_every_held_change_and_reclaims_them_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_with(dir.path(), SyncMode::Never, None).unwrap();
        let mut model = Model::new();
        for n in 0..100 {
            put(&store, &mut model, "old", format!("{n}").as_bytes());
        }
        let held_after = store.last_sequence();
        let hold = store.hold_changes_after(held_after);
        for n in 0..100 {
            put(
                &store,
                &mut model,
                "sensor",
                format!("reading {n}").as_bytes(),
            );
        }
        let before = store.stats().log_bytes;
        store.compact().unwrap();
        // The 99 dead values of "old" went; every reading of "sensor" stayed.
        assert!(store.stats().log_bytes < before);
        assert_eq!(changes_after(&store, held_after), Some(100));
        assert_eq!(changes_after(&store, held_after - 1), None, "dropped");
        // Moved on: only what follows is held.
        hold.move_to(held_after + 90);
        store.compact().unwrap();
        assert_eq!(changes_after(&store, held_after + 90), Some(10));
        assert_eq!(changes_after(&store, held_after + 89), None);
        drop(hold);
        store.compact().unwrap();
        assert_eq!(changes_after(&store, held_after + 90), None);
        let mut buf = Vec::new();
        let latest = store.get(b"sensor", &mut buf).unwrap().unwrap();
        assert_eq!(latest.value, b"reading 99");
    }

    #[test]
    fn a_hold_older_than_the_log_never_lowers_its_base() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_with(dir.path(), SyncMode::Never, None).unwrap();
        let mut model = Model::new();
        for n in 0..50 {
            put(&store, &mut model, "k", format!("{n}").as_bytes());
        }
        store.compact().unwrap();
        let base = store.last_sequence();
        // A hold from before the compaction (a bridge's old cursor).
        let _hold = store.hold_changes_after(5);
        for n in 0..10 {
            put(&store, &mut model, "k", format!("after {n}").as_bytes());
        }
        store.compact().unwrap();
        assert_eq!(
            changes_after(&store, 5),
            None,
            "the log never claims what it lost"
        );
        assert_eq!(changes_after(&store, base), Some(10));
    }
}
