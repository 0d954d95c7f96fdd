//! What compaction may see and do of the store ([`crate::store::compaction`]):
//! a narrow access held by one compaction at a time, and the pause in which
//! the compacted log is installed (`Paused::install_compacted`), the one
//! method that switches the store to another log.

use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use super::commit::ExclusiveSync;
use super::{Store, Writer};
use crate::locks::{lock, read, write};
use crate::store::crypt::Cipher;
use crate::store::file::LogFile;
use crate::store::index::{Index, Location};
use crate::store::record::FileHeader;
use crate::store::stats::LastCompaction;

impl Store {
    /// The data directory (`None` for a store over an in-memory test file).
    pub fn data_dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The log's encryption, if any.
    pub(in crate::store) fn cipher(&self) -> Option<Arc<Cipher>> {
        lock(&self.writer).cipher.clone()
    }

    /// The store as one compaction sees it, or `None` while another
    /// compaction runs.
    pub(in crate::store) fn compaction_access(&self) -> Option<CompactionAccess<'_>> {
        let running = self.compaction.try_lock().ok()?;
        Some(CompactionAccess {
            store: self,
            _running: running,
        })
    }

    /// Test builds: runs `look` on the index itself, so a test can see or
    /// fake its state.
    #[cfg(test)]
    pub(in crate::store) fn with_index<R>(&self, look: impl FnOnce(&mut Index) -> R) -> R {
        look(&mut write(&self.keydir).index)
    }

    /// The test's callback for compaction steps (see
    /// [`crate::store::compaction::Step`]).
    #[cfg(test)]
    pub(in crate::store) fn step_hook(
        &self,
    ) -> MutexGuard<'_, Option<crate::store::compaction::StepHook>> {
        lock(&self.step_hook)
    }
}

/// The store as compaction sees it (see [`crate::store::compaction`]), held by one
/// compaction at a time: where to cut the log, how far it has grown since,
/// the index to read, and the pause in which the compacted log is
/// installed (`Paused::install_compacted`). Compaction changes the store
/// only through that one method.
pub(in crate::store) struct CompactionAccess<'s> {
    store: &'s Store,
    _running: MutexGuard<'s, ()>,
}

/// Where compaction cuts the log, and the log it reads.
pub(in crate::store) struct LogCut {
    /// The log's end, or the first record still waiting for its group's
    /// fsync (not in the index yet, so it must move with the tail).
    pub(in crate::store) offset: u64,
    /// The last sequence number issued.
    pub(in crate::store) last_sequence: u64,
    /// The log's base sequence: it holds every record after it.
    pub(in crate::store) base_sequence: u64,
    /// The log.
    pub(in crate::store) file: Arc<dyn LogFile>,
    /// Its file id.
    pub(in crate::store) file_id: u32,
    /// Its encryption, if any.
    pub(in crate::store) cipher: Option<Arc<Cipher>>,
}

impl<'s> CompactionAccess<'s> {
    /// Where to cut the log now.
    pub(in crate::store) fn cut(&self) -> LogCut {
        let writer = lock(&self.store.writer);
        LogCut {
            offset: writer.pending.first().map_or(writer.end, |p| p.offset),
            last_sequence: writer.next_sequence - 1,
            base_sequence: writer.header.base_sequence,
            file: Arc::clone(&writer.file),
            file_id: writer.header.file_id,
            cipher: writer.cipher.clone(),
        }
    }

    /// The lowest sequence number after which every change is held (see
    /// [`super::retention`]), if any.
    pub(in crate::store) fn changes_held_after(&self) -> Option<u64> {
        self.store.changes_held_after()
    }

    /// The log's end now: writes go on.
    pub(in crate::store) fn end(&self) -> u64 {
        lock(&self.store.writer).end
    }

    /// What `look` finds in the index as it is now.
    pub(in crate::store) fn read_index<R>(&self, look: impl FnOnce(&Index) -> R) -> R {
        look(&read(&self.store.keydir).index)
    }

    /// Waits until no group sync runs and keeps others from starting (see
    /// [`Store::exclusive_sync`]), so the log can be switched under the
    /// group's feet.
    pub(in crate::store) fn hold_group_commit(&self) -> ExclusiveSync<'s> {
        self.store.exclusive_sync()
    }

    /// Whether the store refuses writes after a failed fsync.
    pub(in crate::store) fn is_read_only(&self) -> bool {
        self.store.is_read_only()
    }

    /// Turns the store read-only, saying `reason`.
    pub(in crate::store) fn enter_read_only(&self, reason: &str) {
        self.store.enter_read_only(reason);
    }

    /// Writes the hint file for the current log (see [`Store::write_hint`]).
    pub(in crate::store) fn write_hint(&self) -> io::Result<()> {
        self.store.write_hint()
    }

    /// Counts a finished compaction, and keeps `last` for stats.
    pub(in crate::store) fn note_compaction(&self, last: LastCompaction) {
        self.store.compactions.fetch_add(1, Ordering::Relaxed);
        *lock(&self.store.last_compaction) = Some(last);
    }

    /// Calls the test's hook for compaction step `step`; see
    /// [`Store::step_hook`].
    #[cfg(test)]
    pub(in crate::store) fn step_hook(
        &self,
    ) -> MutexGuard<'s, Option<crate::store::compaction::StepHook>> {
        lock(&self.store.step_hook)
    }
}

/// Writers paused and the group commit held, for compaction's switch:
/// nothing is appended or synced until this is dropped.
pub(in crate::store) struct Paused<'s> {
    // Dropped first: writers run again before the group commit resumes.
    writer: MutexGuard<'s, Writer>,
    group_commit: ExclusiveSync<'s>,
}

/// A compacted log, complete and synced, renamed over the old one: what
/// `Paused::install_compacted` makes the store's log.
pub(in crate::store) struct CompactedLog {
    /// The new log.
    pub(in crate::store) file: Arc<dyn LogFile>,
    /// Its header.
    pub(in crate::store) header: FileHeader,
    /// Its encryption, if any.
    pub(in crate::store) cipher: Option<Arc<Cipher>>,
    /// The old log's tail, from this offset (the cut) on...
    pub(in crate::store) tail_from: u64,
    /// ...is in the new log from this offset on, as it was.
    pub(in crate::store) tail_to: u64,
    /// The new location of every index entry, in index order.
    pub(in crate::store) locations: Vec<Location>,
    /// The keys whose damaged record was replaced by a quarantined one, and
    /// where that damaged record was.
    pub(in crate::store) quarantined: Vec<(Vec<u8>, Location)>,
}

/// What installing a compacted log leaves to compaction.
pub(in crate::store) struct Installed {
    /// The new log's end.
    pub(in crate::store) end: u64,
    /// The old log, still open: closing it can take long, so it is dropped
    /// once writers run again.
    pub(in crate::store) old_log: Arc<dyn LogFile>,
}

impl<'a> ExclusiveSync<'a> {
    /// Pauses writers too, until the returned guard is dropped (or the
    /// compacted log installed through it).
    pub(in crate::store) fn pause_writers(self) -> Paused<'a> {
        Paused {
            writer: lock(&self.store.writer),
            group_commit: self,
        }
    }
}

impl Paused<'_> {
    /// The log's end: nothing is appended while writers are paused.
    pub(in crate::store) fn end(&self) -> u64 {
        self.writer.end
    }

    /// What `look` finds in the index: it does not change while writers are
    /// paused.
    pub(in crate::store) fn read_index<R>(&self, look: impl FnOnce(&Index) -> R) -> R {
        look(&read(&self.group_commit.store.keydir).index)
    }

    /// The switch: points the index and the writer at `log`, the pending
    /// records at their place in it, and marks the quarantined keys damaged
    /// (unless written since). Readers pause only for this. The new log is
    /// synced to its end, so no byte of it needs a sync marker; once
    /// `rename_durable` (its rename survives a power cut), every pending
    /// record is durable too: it is published, and writers and the group
    /// commit resume. Otherwise the store must already be read-only (see
    /// [`CompactionAccess::enter_read_only`]) and pending records stay
    /// unacknowledged.
    pub(in crate::store) fn install_compacted(
        self,
        log: CompactedLog,
        rename_durable: bool,
    ) -> Installed {
        let Self {
            mut writer,
            group_commit,
        } = self;
        let store = group_commit.store;
        let shift = |offset: u64| offset - log.tail_from + log.tail_to;
        let end = shift(writer.end);
        for pending in writer.pending.iter_mut() {
            pending.offset = shift(pending.offset);
            if let Some((location, _)) = &mut pending.location {
                location.offset = shift(location.offset);
            }
        }
        {
            let mut keydir = write(&store.keydir);
            for (key, damaged) in &log.quarantined {
                // Unless written or deleted since: then the entry moved on.
                if keydir.index.get(key) == Some(*damaged) {
                    let attrs = keydir.index.attrs(key);
                    keydir.index.set_attrs(key, attrs.damaged());
                }
            }
            keydir.index.set_locations(&log.locations);
            // The new log holds no damaged bytes.
            store.damaged_records.store(0, Ordering::Relaxed);
            keydir.file = Arc::clone(&log.file);
            keydir.file_id = log.header.file_id;
            keydir.cipher = log.cipher.clone();
        }
        writer.cipher = log.cipher;
        let old_log = std::mem::replace(&mut writer.file, log.file);
        writer.header = log.header;
        writer.end = end;
        // The new log is fsynced to its end: nothing in it needs a marker.
        writer.marked_end = end;
        store.appended.notify_all();
        if rename_durable {
            // Everything pending is in the synced new log: durable.
            let durable = writer.next_sequence - 1;
            store.publish(&mut writer, durable);
            drop(writer);
            group_commit.release(durable);
        } else {
            drop(writer);
            drop(group_commit);
        }
        Installed { end, old_log }
    }
}
