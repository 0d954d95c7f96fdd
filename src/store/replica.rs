//! A follower's side of replication in the store: applying the records its
//! primary sent, each checked where it lay in the primary's log (CRC, and
//! for an encrypted log its place tag and authentication) and appended with
//! its own sequence number and time, so versions are the same on every
//! node; making them durable before they are confirmed; and starting over
//! from the primary's snapshot, the old data served until the new log takes
//! its place in one step.
//!
//! # Re-bootstrap steps
//!
//! 1. The snapshot is downloaded to `replica.snapshot` (by the caller).
//! 2. Its log image is copied to `data.log.restore`, checked whole (see
//!    [`super::restore`]), and synced; its index is recovered by a scan.
//! 3. With writers, the group commit and compaction held, the old hint file
//!    goes, `data.log.restore` is renamed over `data.log` and the directory
//!    synced; then the index, the writer and the change feed start over
//!    from the new log (`Store::replace_log`), and a hint file is written.
//!
//! A crash before the rename leaves the old log (and leftovers the next
//! start deletes); after it, the new one. Never a mix of the two.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::compaction::{move_whole_record, CompactionError, Scratch};
use super::directory::recover_image;
use super::engine::{Store, StoreError};
use super::layout::{diverged, sync_dir, HINT_FILE, LOG_FILE, REPLICA_SNAPSHOT, RESTORE_FILE};
use super::record::{verify, Position, RecordHeader, RecordKind, RECORD_HEADER_LEN};
use super::restore::{copy_image, link_aside};
use super::snapshot::{check_key, peek, SnapshotError, SnapshotInfo};

/// Records as a primary sent them: whole, as they lay in its log.
#[derive(Debug, Clone, Copy)]
pub struct SentRecords<'b> {
    /// The id of the primary's log (their CRCs cover it).
    pub file_id: u32,
    /// The offset of the first of them there.
    pub offset: u64,
    /// Their bytes.
    pub bytes: &'b [u8],
}

/// Why records from a primary were not all applied.
#[derive(Debug)]
pub enum ApplyError {
    /// The record at this offset of the primary's log failed its check (or
    /// is cut short): it and those after it were not applied.
    Corrupt {
        /// Its offset in the primary's log.
        offset: u64,
    },
    /// The store refused it (read-only, a full disk, out of order).
    Store(StoreError),
}

impl From<StoreError> for ApplyError {
    fn from(err: StoreError) -> Self {
        Self::Store(err)
    }
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Corrupt { offset } => write!(
                f,
                "the record at offset {offset} of the primary's log failed its check on arrival"
            ),
            Self::Store(err) => write!(f, "{err}"),
        }
    }
}

/// Buffers a follower reuses from one batch of records to the next.
#[derive(Default)]
pub struct ReplicaBuffers {
    scratch: Scratch,
}

impl Store {
    /// Applies `sent`, in order: sync markers are checked and skipped (this
    /// log has its own), every other record is checked where it lay in the
    /// primary's log, then appended with its sequence numbers and time.
    /// Records before one that fails stay applied. Returns the last
    /// sequence number applied.
    pub fn apply_replicated(
        &self,
        sent: SentRecords<'_>,
        buffers: &mut ReplicaBuffers,
    ) -> Result<u64, ApplyError> {
        let mut last = self.last_sequence();
        let mut used = 0;
        while used < sent.bytes.len() {
            let from = Position {
                file_id: sent.file_id,
                offset: sent.offset + used as u64,
            };
            let corrupt = || ApplyError::Corrupt {
                offset: from.offset,
            };
            let header = sent
                .bytes
                .get(used..used + RECORD_HEADER_LEN)
                .and_then(|fixed| RecordHeader::decode(fixed.try_into().ok()?).ok())
                .ok_or_else(corrupt)?;
            let len = usize::try_from(header.record_len()).map_err(|_| corrupt())?;
            let record = sent.bytes.get(used..used + len).ok_or_else(corrupt)?;
            if header.kind == RecordKind::Marker {
                verify(record, from).map_err(|_| corrupt())?;
            } else {
                last = self.append_replicated(|to, cipher, out| {
                    move_whole_record(record, from, to, cipher, out, &mut buffers.scratch).map_err(
                        |err| match err {
                            CompactionError::Io(err) => ApplyError::Store(StoreError::Io(err)),
                            _ => corrupt(),
                        },
                    )
                })?;
            }
            used += len;
        }
        Ok(last)
    }

    /// The last sequence number in the log.
    pub fn last_sequence(&self) -> u64 {
        self.log_end().last_sequence
    }

    /// The last sequence number in the log, and the log's base: it holds
    /// every record with a larger sequence number (see [`super::tail`]).
    pub fn log_position(&self) -> (u64, u64) {
        let end = self.log_end();
        (end.last_sequence, end.base_sequence)
    }

    /// The log's key check value (0: not encrypted): a follower's must be
    /// its primary's.
    pub fn key_check(&self) -> u32 {
        self.cipher().map_or(0, |cipher| cipher.check_value())
    }

    /// Makes every record applied up to `sequence` durable now, whatever
    /// the sync mode: a follower confirms only what it synced.
    pub fn sync_replicated(&self, sequence: u64) -> Result<(), StoreError> {
        self.make_durable(sequence)
    }

    /// Where a follower downloads its primary's snapshot, if the store has a
    /// data directory.
    pub fn replica_snapshot_path(&self) -> Option<PathBuf> {
        self.data_dir().map(|dir| dir.join(REPLICA_SNAPSHOT))
    }

    /// Gives the log a second name, `data.log.diverged-<epoch>`, never
    /// deleted (it holds writes the primary never had), before the log is
    /// replaced. Returns that name.
    pub fn set_log_aside(&self, epoch: &str) -> io::Result<String> {
        let dir = self.data_dir().ok_or_else(no_directory)?;
        let log = dir.join(LOG_FILE);
        let aside = link_aside(&log, &diverged(&log, epoch))?;
        sync_dir(dir)?;
        Ok(aside)
    }

    /// Replaces the whole log with the snapshot at `snapshot` (see the
    /// module documentation). On any failure the store is as it was.
    pub fn install_snapshot(&self, snapshot: &Path) -> Result<SnapshotInfo, SnapshotError> {
        let dir = self.data_dir().ok_or_else(no_directory)?;
        let cipher = self.cipher();
        check_key(&peek(snapshot)?, cipher.as_deref())?;
        let restored = dir.join(RESTORE_FILE);
        let installed = copy_image(snapshot, &restored, cipher.as_deref()).and_then(|info| {
            let (file, recovered) =
                recover_image(&restored, cipher.clone()).map_err(SnapshotError::Open)?;
            self.replace_log(file, recovered, || {
                match fs::remove_file(dir.join(HINT_FILE)) {
                    Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                    _ => {}
                }
                fs::rename(&restored, dir.join(LOG_FILE))?;
                sync_dir(dir)
            })?;
            Ok(info)
        });
        if installed.is_err() {
            let _ = fs::remove_file(&restored);
            return installed;
        }
        self.write_hint()?;
        installed
    }
}

fn no_directory() -> io::Error {
    io::Error::other("the store has no data directory")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::store::crypt::Cipher;
    use crate::store::directory::open_with;
    use crate::store::snapshot::save;
    use crate::store::tail::{LogTail, TailError};
    use crate::store::testing::{assert_matches, batch_put, churn, delete, put, Model};
    use crate::store::SyncMode;

    /// Sends everything `tail` has to `follower`; returns the chunks sent.
    fn ship(tail: &mut LogTail, follower: &Store, max: usize) -> usize {
        let (mut buf, mut buffers, mut chunks) = (Vec::new(), ReplicaBuffers::default(), 0);
        while let Some(chunk) = tail.next(&mut buf, max, Duration::ZERO).unwrap() {
            assert_eq!(chunk.after, follower.last_sequence(), "no gap");
            let sent = SentRecords {
                file_id: chunk.file_id,
                offset: chunk.offset,
                bytes: chunk.bytes,
            };
            let last = follower.apply_replicated(sent, &mut buffers).unwrap();
            assert_eq!(last, chunk.last_sequence);
            chunks += 1;
        }
        chunks
    }

    fn versions(store: &Store, keys: &[&str]) -> Vec<Option<u64>> {
        keys.iter()
            .map(|key| {
                let mut buf = Vec::new();
                store
                    .get(key.as_bytes(), &mut buf)
                    .unwrap()
                    .map(|v| v.sequence)
            })
            .collect()
    }

    #[test]
    fn a_follower_fed_the_tail_holds_the_same_keys_with_the_same_versions() {
        for cipher in [None, Some(Arc::new(Cipher::from_key(&[7; 32])))] {
            for sync in [SyncMode::Always, SyncMode::Never] {
                let dir = tempfile::tempdir().unwrap();
                let (primary, _) = open_with(&dir.path().join("p"), sync, cipher.clone()).unwrap();
                let (follower, _) = open_with(&dir.path().join("f"), sync, cipher.clone()).unwrap();
                let mut model = Model::new();
                let mut tail = primary.tail_after(0).unwrap();
                churn(&primary, &mut model);
                primary
                    .batch(
                        &[batch_put("b1", b"one"), batch_put("b2", b"two")],
                        &mut Vec::new(),
                    )
                    .unwrap();
                model.insert("b1".into(), b"one".to_vec());
                model.insert("b2".into(), b"two".to_vec());
                // Small windows: records split across many chunks.
                assert!(ship(&mut tail, &follower, 200) > 10);
                assert!(tail.caught_up());
                // Visible once synced (at once unless `sync: always`).
                follower.sync_replicated(follower.last_sequence()).unwrap();
                assert_matches(&follower, &model);
                let keys = ["key-1", "key-2", "b1", "b2"];
                assert_eq!(versions(&follower, &keys), versions(&primary, &keys));
                assert_eq!(follower.last_sequence(), primary.last_sequence());
                follower.sync_replicated(follower.last_sequence()).unwrap();
                // A restart of the follower keeps it all, and resuming after
                // its last sequence number sends nothing twice.
                drop(follower);
                let (follower, _) = open_with(&dir.path().join("f"), sync, cipher.clone()).unwrap();
                assert_matches(&follower, &model);
                let mut resumed = primary.tail_after(follower.last_sequence()).unwrap();
                assert_eq!(ship(&mut resumed, &follower, 1 << 20), 0);
                put(&primary, &mut model, "later", b"x");
                assert_eq!(ship(&mut resumed, &follower, 1 << 20), 1);
                follower.sync_replicated(follower.last_sequence()).unwrap();
                assert_matches(&follower, &model);
            }
        }
    }

    #[test]
    fn the_tail_follows_a_compaction_and_refuses_what_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (primary, _) = open_with(&dir.path().join("p"), SyncMode::Never, None).unwrap();
        let (follower, _) = open_with(&dir.path().join("f"), SyncMode::Never, None).unwrap();
        let mut model = Model::new();
        let mut tail = primary.tail_after(0).unwrap();
        churn(&primary, &mut model);
        // Half of it shipped, then the log is compacted under the reader.
        let mut buf = Vec::new();
        let first = tail.next(&mut buf, 4096, Duration::ZERO).unwrap().unwrap();
        let sent = SentRecords {
            file_id: first.file_id,
            offset: first.offset,
            bytes: first.bytes,
        };
        follower
            .apply_replicated(sent, &mut ReplicaBuffers::default())
            .unwrap();
        let before = primary.last_sequence();
        primary.compact().unwrap();
        put(&primary, &mut model, "after-compaction", b"y");
        ship(&mut tail, &follower, 4096);
        assert_matches(&follower, &model);
        // A new reader from before the compaction's cut is refused.
        assert!(matches!(
            primary.tail_after(1),
            Err(TailError::TooOld { base }) if base >= before
        ));
        assert!(primary.tail_after(before).is_ok());
    }

    #[test]
    fn a_damaged_or_out_of_order_record_is_refused_and_nothing_after_it_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (primary, _) = open_with(&dir.path().join("p"), SyncMode::Never, None).unwrap();
        let (follower, _) = open_with(&dir.path().join("f"), SyncMode::Never, None).unwrap();
        let mut model = Model::new();
        put(&primary, &mut model, "a", b"1");
        put(&primary, &mut model, "b", b"2");
        let mut tail = primary.tail_after(0).unwrap();
        let mut buf = Vec::new();
        let chunk = tail
            .next(&mut buf, 1 << 20, Duration::ZERO)
            .unwrap()
            .unwrap();
        let mut bytes = chunk.bytes.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let mut buffers = ReplicaBuffers::default();
        let sent = SentRecords {
            file_id: chunk.file_id,
            offset: chunk.offset,
            bytes: &bytes,
        };
        let err = follower.apply_replicated(sent, &mut buffers).unwrap_err();
        assert!(matches!(err, ApplyError::Corrupt { .. }), "{err}");
        assert_eq!(follower.stats().keys, 1, "the record before it applied");
        // The same records again: out of order now.
        let sent = SentRecords {
            bytes: chunk.bytes,
            ..sent
        };
        let err = follower.apply_replicated(sent, &mut buffers).unwrap_err();
        assert!(matches!(
            err,
            ApplyError::Store(StoreError::OutOfOrder { .. })
        ));
        // From another log (a different file id): every CRC fails.
        let sent = SentRecords {
            file_id: chunk.file_id ^ 1,
            ..sent
        };
        assert!(matches!(
            follower.apply_replicated(sent, &mut buffers),
            Err(ApplyError::Corrupt { .. })
        ));
    }

    #[test]
    fn installing_a_snapshot_replaces_the_log_in_one_step_and_writing_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (primary, _) = open_with(&dir.path().join("p"), SyncMode::Never, None).unwrap();
        let (follower, _) = open_with(&dir.path().join("f"), SyncMode::Always, None).unwrap();
        put(&follower, &mut Model::new(), "stale", b"old data");
        let subscription = follower.events().subscribe(b"", None).unwrap();
        let mut model = Model::new();
        churn(&primary, &mut model);
        let path = follower.replica_snapshot_path().unwrap();
        save(&path, |out| primary.snapshot("p", out)).unwrap();
        let aside = follower.set_log_aside("1.2").unwrap();
        let info = follower.install_snapshot(&path).unwrap();
        assert_eq!(info.sequence, primary.last_sequence());
        assert_matches(&follower, &model);
        assert_eq!(follower.last_sequence(), primary.last_sequence());
        assert!(subscription.events.recv().is_err() && subscription.overflowed());
        // The old log is kept aside, whole.
        assert!(fs::read(&aside)
            .unwrap()
            .windows(8)
            .any(|w| w == b"old data"));
        // Replication continues after it, and it survives a restart.
        let mut tail = primary.tail_after(follower.last_sequence()).unwrap();
        put(&primary, &mut model, "next", b"z");
        ship(&mut tail, &follower, 1 << 20);
        follower.sync_replicated(follower.last_sequence()).unwrap();
        drop(follower);
        let (follower, open) = open_with(&dir.path().join("f"), SyncMode::Always, None).unwrap();
        assert!(open.hint_keys.is_some(), "a hint file was written");
        assert_matches(&follower, &model);
        // A damaged snapshot changes nothing (the download was removed at
        // the start: a leftover).
        assert!(!path.exists());
        save(&path, |out| primary.snapshot("p", out)).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(follower.install_snapshot(&path).is_err());
        assert_matches(&follower, &model);
        delete(&follower, &mut model, "next");
    }
}
