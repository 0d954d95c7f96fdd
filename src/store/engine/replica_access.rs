//! What replication may see and do in the store ([`crate::store::tail`] on
//! a primary, [`crate::store::replica`] on a follower): where the log ends
//! and waiting for it to grow; appending a record that arrives with its
//! sequence number and time already given; making what was appended
//! durable; and replacing the whole log with a snapshot's.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::{Recovered, Store, StoreError, Writer};
use crate::locks::{lock, write};
use crate::store::crypt::Cipher;
use crate::store::file::LogFile;
use crate::store::record::{members, verify, Position, RecordKind};

/// The log as a primary's stream sees it at one moment: only whole records
/// lie before `end`.
#[derive(Clone)]
pub(in crate::store) struct LogEnd {
    /// The log.
    pub(in crate::store) file: Arc<dyn LogFile>,
    /// Its file id.
    pub(in crate::store) file_id: u32,
    /// Where the next record goes: everything before is whole.
    pub(in crate::store) end: u64,
    /// Everything before this offset is published: visible to readers
    /// (with `sync: always`, durable; the rest waits for its fsync).
    pub(in crate::store) published_end: u64,
    /// The log holds every record with a larger sequence number than this
    /// (its header's base sequence: see [`crate::store::record`]).
    pub(in crate::store) base_sequence: u64,
    /// The last sequence number appended.
    pub(in crate::store) last_sequence: u64,
}

impl LogEnd {
    fn of(writer: &Writer) -> Self {
        Self {
            file: Arc::clone(&writer.file),
            file_id: writer.header.file_id,
            end: writer.end,
            published_end: writer.pending.first().map_or(writer.end, |p| p.offset),
            base_sequence: writer.header.base_sequence,
            last_sequence: writer.next_sequence - 1,
        }
    }
}

impl Store {
    /// The log and its end now.
    pub(in crate::store) fn log_end(&self) -> LogEnd {
        LogEnd::of(&lock(&self.writer))
    }

    /// Waits until the log `file_id` grows past `end` (or another log takes
    /// its place), at most `timeout`, and returns the log's end then.
    pub(in crate::store) fn wait_appended(
        &self,
        file_id: u32,
        end: u64,
        timeout: Duration,
    ) -> LogEnd {
        let writer = lock(&self.writer);
        let (writer, _) = self
            .appended
            .wait_timeout_while(writer, timeout, |writer| {
                writer.header.file_id == file_id && writer.end <= end
            })
            .unwrap_or_else(|e| e.into_inner());
        LogEnd::of(&writer)
    }

    /// Appends one record (a put, a tombstone or a whole batch frame) that
    /// arrived with its sequence numbers and time: `build` writes it to its
    /// buffer as this log must store it at the place it is given (it is
    /// called under the writer lock). The record's first sequence number
    /// must be above every one in the log. It is then registered like any
    /// write (published, or pending its fsync with `sync: always`). Returns
    /// its last sequence number.
    pub(in crate::store) fn append_replicated<E: From<StoreError>>(
        &self,
        build: impl FnOnce(Position, Option<&Cipher>, &mut Vec<u8>) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut writer = lock(&self.writer);
        if self.is_read_only() {
            return Err(StoreError::ReadOnly.into());
        }
        let at = Position {
            file_id: writer.header.file_id,
            offset: writer.end,
        };
        let mut stored = std::mem::take(&mut writer.envelope);
        stored.clear();
        let cipher = writer.cipher.clone();
        let built = build(at, cipher.as_deref(), &mut stored);
        let appended = built.and_then(|()| {
            let first = first_sequence(&stored, at)?;
            if first < writer.next_sequence {
                return Err(StoreError::OutOfOrder {
                    sequence: first,
                    last: writer.next_sequence - 1,
                }
                .into());
            }
            self.append_bytes(&mut writer, &stored)?;
            self.register_appended(&mut writer, &stored, at)?;
            Ok(writer.next_sequence - 1)
        });
        writer.envelope = stored;
        appended
    }

    /// Makes every record up to sequence number `sequence` durable now,
    /// whatever the sync mode (a follower acknowledges only what it
    /// synced).
    pub(in crate::store) fn make_durable(&self, sequence: u64) -> Result<(), StoreError> {
        self.wait_durable(sequence)
    }

    /// Replaces the whole log with `file`, whose contents `recovered`
    /// describes (a snapshot's log image, complete and synced): with
    /// writers, the group commit and compaction held, `rename` puts the file
    /// in the log's place on disk (nothing changes if it fails), then the
    /// index, the writer and the change feed start over from it. Watchers
    /// are disconnected (their versions may no longer follow). Readers pause
    /// only for the in-memory switch.
    pub(in crate::store) fn replace_log(
        &self,
        file: Arc<dyn LogFile>,
        recovered: Recovered,
        rename: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        let _no_compaction = lock(&self.compaction);
        let group_commit = self.exclusive_sync();
        let mut writer = lock(&self.writer);
        rename()?;
        let last = recovered.next_sequence - 1;
        {
            let mut keydir = write(&self.keydir);
            keydir.index = recovered.index;
            keydir.file = Arc::clone(&file);
            keydir.file_id = recovered.header.file_id;
            keydir.cipher = recovered.cipher.clone();
        }
        self.damaged_records
            .store(0, std::sync::atomic::Ordering::Relaxed);
        writer.file = file;
        writer.header = recovered.header;
        writer.end = recovered.end;
        writer.next_sequence = recovered.next_sequence;
        writer.marked_end = recovered.marked_end;
        writer.pending = Default::default();
        writer.cipher = recovered.cipher;
        self.events.start_over(last);
        self.appended.notify_all();
        drop(writer);
        group_commit.release(last);
        Ok(())
    }
}

/// The first sequence number of `stored` (a record, or a frame's first
/// member), verified at `at`.
fn first_sequence(stored: &[u8], at: Position) -> Result<u64, StoreError> {
    let view = verify(stored, at).map_err(|_| StoreError::Corrupt { offset: at.offset })?;
    if view.header.kind != RecordKind::Batch {
        return Ok(view.header.sequence);
    }
    match members(&view, at).next() {
        Some(Ok((_, member))) => Ok(member.header.sequence),
        _ => Err(StoreError::Corrupt { offset: at.offset }),
    }
}
