//! Damaged records met after a start: reads that fail their check, and the
//! background verification of a log started from its hint file.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;

use super::Store;
use crate::locks::{read, write};
use crate::store::index::{Attrs, Location};
use crate::store::scan::damaged_ranges;

impl Store {
    /// Marks `key` damaged in the index (see [`Attrs::damaged`]) after its
    /// record at `location` of log `file_id` failed its check, unless the
    /// key moved on since.
    pub(super) fn note_damaged(&self, key: &[u8], location: Location, file_id: u32) {
        let mut keydir = write(&self.keydir);
        let attrs = keydir.index.attrs(key);
        if keydir.file_id == file_id && keydir.index.get(key) == Some(location) && !attrs.damaged {
            keydir.index.set_attrs(key, attrs.damaged());
        }
    }

    /// After a start from the hint file, which is trusted for where each
    /// key's latest record is but not for the records' integrity, verifies
    /// every record it covers (before `covered_end`) on a background thread,
    /// so the start stays fast. Damage found is logged, counted in
    /// [`StoreStats`](crate::store::StoreStats), and the keys whose
    /// latest record is in it are marked damaged, unless a compaction
    /// switched logs meanwhile (it verified and quarantined them itself).
    pub fn verify_in_background(self: &Arc<Self>, covered_end: u64) {
        let (file, file_id, cipher) = {
            let keydir = read(&self.keydir);
            (
                Arc::clone(&keydir.file),
                keydir.file_id,
                keydir.cipher.clone(),
            )
        };
        let store = Arc::downgrade(self);
        let verify = move || {
            let ranges = match damaged_ranges(&*file, file_id, cipher.as_deref(), covered_end) {
                Ok(ranges) => ranges,
                Err(err) => {
                    log::warn!("could not verify the log after starting from the hint: {err}");
                    return;
                }
            };
            if let Some(store) = store.upgrade() {
                store.note_damaged_ranges(file_id, &ranges);
            }
        };
        if let Err(err) = thread::Builder::new()
            .name("lucid-verify".into())
            .spawn(verify)
        {
            log::warn!("cannot start verifying the log: {err}");
        }
    }

    /// Marks every key whose record lies in one of `ranges` (sorted damaged
    /// stretches of log `file_id`) damaged, counts the stretches and says
    /// so in the log.
    pub(super) fn note_damaged_ranges(&self, file_id: u32, ranges: &[(u64, u64)]) {
        if ranges.is_empty() {
            return;
        }
        let mut keydir = write(&self.keydir);
        if keydir.file_id != file_id {
            return; // compacted meanwhile: the damage is gone
        }
        let in_damage = |offset: u64| {
            let after = ranges.partition_point(|&(start, _)| start <= offset);
            after > 0 && offset < ranges[after - 1].1
        };
        let hit: Vec<(Vec<u8>, Attrs)> = keydir
            .index
            .entries()
            .filter(|(_, location)| in_damage(location.offset))
            .map(|(key, _)| (key.to_vec(), keydir.index.attrs(key)))
            .collect();
        for (key, attrs) in &hit {
            keydir.index.set_attrs(key, attrs.damaged());
        }
        drop(keydir);
        self.damaged_records
            .store(ranges.len() as u64, Ordering::Relaxed);
        let stretches: Vec<String> = ranges.iter().map(|(s, e)| format!("{s}..{e}")).collect();
        let names: Vec<_> = hit
            .iter()
            .take(10)
            .map(|(key, _)| String::from_utf8_lossy(key))
            .collect();
        log::error!(
            "the log is damaged (bytes {}); {} keys whose latest record is there answer an error \
             until written or deleted{}{}. The next compaction drops the damage; until then \
             the node starts only with its hint file (see `lucid check`)",
            stretches.join(", "),
            hit.len(),
            if names.is_empty() { "" } else { ": " },
            names.join(", ")
        );
    }
}
