//! The in-memory index (the "keydir"): for every live key, where its latest
//! record sits in the log. Values and metadata stay on disk; an entry is just
//! an offset and a length, so memory per key is the key itself plus a few
//! bytes. The map is ordered so that prefix listing costs O(page).

use std::collections::BTreeMap;

/// Where a key's latest record lives in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Byte offset of the record in the log file.
    pub offset: u64,
    /// Length of the whole record in bytes.
    pub len: u32,
}

/// Live keys and the location of their latest record.
#[derive(Debug, Default)]
pub struct Index {
    entries: BTreeMap<Box<[u8]>, Location>,
    live_bytes: u64,
}

impl Index {
    /// Builds an index from entries in strictly increasing key order, in one
    /// pass (nodes are filled completely, unlike one insert at a time).
    /// Returns `None` if the keys are not strictly increasing.
    pub fn from_sorted(entries: Vec<(Box<[u8]>, Location)>) -> Option<Self> {
        if entries.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
            return None;
        }
        let live_bytes = entries.iter().map(|(_, l)| u64::from(l.len)).sum();
        Some(Self {
            entries: entries.into_iter().collect(),
            live_bytes,
        })
    }

    /// Where `key`'s record is, if the key is live.
    pub fn get(&self, key: &[u8]) -> Option<Location> {
        self.entries.get(key).copied()
    }

    /// Whether `key` is live.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.entries.contains_key(key)
    }

    /// Points `key` at a newer record.
    pub fn insert(&mut self, key: &[u8], location: Location) {
        self.live_bytes += u64::from(location.len);
        match self.entries.get_mut(key) {
            Some(slot) => {
                self.live_bytes -= u64::from(slot.len);
                *slot = location;
            }
            None => {
                self.entries.insert(key.into(), location);
            }
        }
    }

    /// Forgets `key` (it was deleted).
    pub fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.entries.remove(key) {
            self.live_bytes -= u64::from(old.len);
        }
    }

    /// All live keys and their locations, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], Location)> + '_ {
        self.entries
            .iter()
            .map(|(key, location)| (&**key, *location))
    }

    /// Locations of all live keys, in key order.
    pub fn locations(&self) -> impl Iterator<Item = Location> + '_ {
        self.entries.values().copied()
    }

    /// Moves every entry to a new offset; `offsets` is in key order, one per
    /// entry, as [`locations`](Self::locations) listed them.
    pub fn set_locations(&mut self, offsets: &[u64]) {
        assert_eq!(offsets.len(), self.entries.len());
        for (location, &offset) in self.entries.values_mut().zip(offsets) {
            location.offset = offset;
        }
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is live.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total bytes of the live records; the rest of the log is dead weight
    /// that compaction can reclaim.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_entries_build_an_index_and_unsorted_ones_do_not() {
        let at = |offset| Location { offset, len: 10 };
        let sorted = vec![
            (b"a".to_vec().into(), at(32)),
            (b"b".to_vec().into(), at(42)),
        ];
        let index = Index::from_sorted(sorted).unwrap();
        assert_eq!(index.get(b"b"), Some(at(42)));
        assert_eq!(index.live_bytes(), 20);
        let unsorted = vec![
            (b"b".to_vec().into(), at(32)),
            (b"a".to_vec().into(), at(42)),
        ];
        assert!(Index::from_sorted(unsorted).is_none());
        let repeated = vec![
            (b"a".to_vec().into(), at(32)),
            (b"a".to_vec().into(), at(42)),
        ];
        assert!(Index::from_sorted(repeated).is_none());
    }

    #[test]
    fn live_bytes_follow_overwrites_and_deletes() {
        let mut index = Index::default();
        index.insert(
            b"a",
            Location {
                offset: 32,
                len: 50,
            },
        );
        index.insert(
            b"b",
            Location {
                offset: 82,
                len: 60,
            },
        );
        assert_eq!(index.live_bytes(), 110);
        index.insert(
            b"a",
            Location {
                offset: 142,
                len: 70,
            },
        );
        assert_eq!(index.live_bytes(), 130);
        assert_eq!(
            index.get(b"a"),
            Some(Location {
                offset: 142,
                len: 70
            })
        );
        index.remove(b"b");
        index.remove(b"missing");
        assert_eq!(index.live_bytes(), 70);
        assert_eq!(index.len(), 1);
        assert!(!index.contains(b"b"));
    }
}
