//! The records appended but not yet covered by an fsync (`sync: always`):
//! kept in sequence order until the group commit publishes them, and found
//! by key without a scan, so a write that looks up its key while thousands
//! of records wait (a few import batches in flight) costs the same as with
//! none.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

use super::Pending;

/// The records waiting for an fsync, oldest first.
#[derive(Default)]
pub(super) struct PendingRecords {
    records: Vec<Pending>,
    /// For each hash of a waiting record's key, the sequence number of the
    /// newest waiting record whose key has that hash.
    newest: HashMap<u64, u64>,
    hasher: RandomState,
}

impl PendingRecords {
    /// Adds `record`, the newest.
    pub(super) fn push(&mut self, record: Pending) {
        self.newest
            .insert(self.hasher.hash_one(&*record.key), record.sequence);
        self.records.push(record);
    }

    /// The newest waiting record of `key`, if any.
    pub(super) fn newest_of(&self, key: &[u8]) -> Option<&Pending> {
        let sequence = *self.newest.get(&self.hasher.hash_one(key))?;
        let at = self.records.partition_point(|p| p.sequence < sequence);
        match self.records.get(at) {
            Some(record) if &*record.key == key => Some(record),
            // Another key with the same hash is newer: look at them all.
            _ => self.records.iter().rev().find(|p| &*p.key == key),
        }
    }

    /// Removes the records up to sequence number `durable` and returns
    /// them, oldest first.
    pub(super) fn take_through(&mut self, durable: u64) -> std::vec::Drain<'_, Pending> {
        let covered = self.records.partition_point(|p| p.sequence <= durable);
        for record in &self.records[..covered] {
            let hash = self.hasher.hash_one(&*record.key);
            if self.newest.get(&hash) == Some(&record.sequence) {
                self.newest.remove(&hash);
            }
        }
        self.records.drain(..covered)
    }

    /// The oldest waiting record.
    pub(super) fn first(&self) -> Option<&Pending> {
        self.records.first()
    }

    /// How many records wait.
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    /// The waiting records, to move their offsets (compaction's switch).
    pub(super) fn iter_mut(&mut self) -> std::slice::IterMut<'_, Pending> {
        self.records.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::{Event, EventOp};

    fn record(key: &[u8], sequence: u64) -> Pending {
        Pending {
            key: key.into(),
            offset: sequence * 100,
            location: None,
            sequence,
            event: Event::new(EventOp::Delete, key, sequence, b"", b""),
        }
    }

    #[test]
    fn the_newest_record_of_a_key_is_found_until_it_is_taken() {
        let mut pending = PendingRecords::default();
        pending.push(record(b"a", 1));
        pending.push(record(b"b", 2));
        pending.push(record(b"a", 3));
        assert_eq!(pending.newest_of(b"a").map(|p| p.sequence), Some(3));
        assert_eq!(pending.newest_of(b"b").map(|p| p.sequence), Some(2));
        assert!(pending.newest_of(b"c").is_none());
        let taken: Vec<u64> = pending.take_through(2).map(|p| p.sequence).collect();
        assert_eq!(taken, [1, 2]);
        assert_eq!(pending.newest_of(b"a").map(|p| p.sequence), Some(3));
        assert!(pending.newest_of(b"b").is_none());
        assert_eq!(
            (pending.len(), pending.first().map(|p| p.offset)),
            (1, Some(300))
        );
        pending.take_through(3).for_each(drop);
        assert!(pending.newest_of(b"a").is_none());
        assert!(pending.newest.is_empty());
    }
}
