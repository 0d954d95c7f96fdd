//! The running store: reads through the index, appends through one writer,
//! and makes writes durable according to the sync mode.
//!
//! # Write path
//!
//! 1. Under the writer lock: decide created/updated (or "missing" for a
//!    delete), stamp the next sequence number and the time, append the
//!    record at the end of the log. If the append fails, the log is cut back
//!    to where it was, so no partial record is left behind.
//! 2. `sync: always`: the record waits in `pending` until an fdatasync covers
//!    it. Writers that arrive while a sync is running are covered by the next
//!    one, so 64 concurrent writers share a handful of syncs (group commit).
//!    Only after the sync is the record published to the index: readers never
//!    see a value that a power cut could still take back.
//! 3. `interval` and `never`: the record is published right after the append;
//!    a background thread syncs every `sync_interval_ms` (`interval`) or the
//!    OS writes back when it likes (`never`).
//!
//! In every mode the caller is answered only after the record is in the file,
//! so killing the process never loses an acknowledged write.
//!
//! # Failed fsync
//!
//! A failed fsync is never retried and reported as success (Linux may have
//! dropped the dirty pages). The store switches to read-only: every later
//! write fails with [`StoreError::ReadOnly`] while reads keep working, and an
//! ERROR log tells the operator to restart the node once the disk is healthy.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, Weak};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::file::LogFile;
use super::hint::{self, Coverage};
use super::index::{Index, Location};
use super::record::{verify, FileHeader, Position, RecordBuilder, RecordKind};
use crate::watch::EventBus;

/// When writes are made durable with fdatasync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Before the write is answered (group commit shares one sync between
    /// concurrent writers).
    Always,
    /// By a background thread at this period.
    Interval(Duration),
    /// When the OS decides.
    Never,
}

/// What a successful put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The key did not exist before.
    Created,
    /// The key existed and now has the new value.
    Updated,
}

/// Why a store operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// A previous fsync failed: the store accepts no more writes.
    ReadOnly,
    /// The disk refused the operation (full disk, I/O error, ...).
    Io(io::Error),
    /// The record at this offset failed its CRC check and was not served.
    Corrupt {
        /// Offset of the damaged record in the log.
        offset: u64,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ReadOnly => f.write_str("the store is read-only after a failed fsync"),
            Self::Io(err) => write!(f, "I/O error: {err}"),
            Self::Corrupt { offset } => {
                write!(
                    f,
                    "the record at offset {offset} failed its integrity check"
                )
            }
        }
    }
}

/// A value read from the store, borrowed from the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredValue<'a> {
    /// The content type given when the value was written.
    pub content_type: &'a [u8],
    /// The value bytes.
    pub value: &'a [u8],
    /// Wall-clock time of the write, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Sequence number of the write.
    pub sequence: u64,
}

/// The group-commit role held by compaction (see [`Store::exclusive_sync`]).
pub(super) struct ExclusiveSync<'a> {
    store: &'a Store,
    durable: Option<u64>,
}

impl ExclusiveSync<'_> {
    /// Gives the role back, with every record up to sequence number
    /// `durable` now durable.
    pub(super) fn release(mut self, durable: u64) {
        self.durable = Some(durable);
    }
}

impl Drop for ExclusiveSync<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.store.commit);
        state.syncing = false;
        if let Some(sequence) = self.durable {
            state.durable_sequence = sequence;
        }
        self.store.commit_done.notify_all();
    }
}

/// A test's callback for compaction steps.
#[cfg(test)]
pub(super) type StepHook = Box<dyn FnMut(super::compaction::Step) + Send>;

/// State recovered from the log at open.
pub struct Recovered {
    /// The live keys.
    pub index: Index,
    /// The log's file header.
    pub header: FileHeader,
    /// End of the last good record: where the next append goes.
    pub end: u64,
    /// Sequence number for the next write.
    pub next_sequence: u64,
    /// The data directory, and its lock, held as long as the store lives.
    pub dir: Option<(PathBuf, File)>,
}

/// A record appended but not yet covered by an fsync (sync mode `always`).
pub(super) struct Pending {
    pub(super) key: Box<[u8]>,
    /// Log offset of the record.
    pub(super) offset: u64,
    /// `None` for a tombstone.
    pub(super) location: Option<Location>,
    /// Sequence number of the record.
    pub(super) sequence: u64,
}

/// The append side of the store, behind one lock.
pub(super) struct Writer {
    /// The log file appends go to.
    pub(super) file: Arc<dyn LogFile>,
    /// That file's header.
    pub(super) header: FileHeader,
    /// Offset where the next record goes.
    pub(super) end: u64,
    /// Sequence number of the next record.
    pub(super) next_sequence: u64,
    /// Appended records not yet covered by an fsync (`sync: always`).
    pub(super) pending: Vec<Pending>,
}

impl Writer {
    /// Whether `key` exists according to the not-yet-published writes, if
    /// any of them touches it.
    fn pending_exists(&self, key: &[u8]) -> Option<bool> {
        self.pending
            .iter()
            .rev()
            .find(|p| &*p.key == key)
            .map(|p| p.location.is_some())
    }
}

pub(super) struct CommitState {
    /// Every record up to this sequence number is fsynced and published.
    /// (Sequence numbers, unlike offsets, survive compaction unchanged.)
    pub(super) durable_sequence: u64,
    /// A writer (or compaction) is running fdatasync on behalf of the group.
    pub(super) syncing: bool,
}

/// What readers look at: the index and the log file its offsets point into.
/// Compaction swaps both at once, so a reader always gets a matching pair.
pub(super) struct Keydir {
    pub(super) index: Index,
    pub(super) file: Arc<dyn LogFile>,
    /// That file's id, which every record's CRC covers.
    pub(super) file_id: u32,
}

/// The key-value store over one log file.
pub struct Store {
    pub(super) keydir: RwLock<Keydir>,
    pub(super) writer: Mutex<Writer>,
    pub(super) commit: Mutex<CommitState>,
    pub(super) commit_done: Condvar,
    sync: SyncMode,
    read_only: AtomicBool,
    /// The data directory (absent for stores over an in-memory test file).
    pub(super) dir: Option<PathBuf>,
    /// Held while a compaction runs.
    pub(super) compaction: Mutex<()>,
    /// fdatasync calls on the log, and the time they took.
    pub(super) fsyncs: std::sync::atomic::AtomicU64,
    pub(super) fsync_micros: std::sync::atomic::AtomicU64,
    /// Compactions since start.
    pub(super) compactions: std::sync::atomic::AtomicU64,
    /// The most recent compaction.
    pub(super) last_compaction: Mutex<Option<super::compaction::LastCompaction>>,
    /// Test builds: called at each compaction step, to crash there or to
    /// write while compaction runs.
    #[cfg(test)]
    pub(super) step_hook: Mutex<Option<StepHook>>,
    /// Change feed for watchers.
    events: EventBus,
    _dir_lock: Option<File>,
}

impl Store {
    /// Starts a store over `file`, whose contents `recovered` describes.
    /// With [`SyncMode::Interval`] a background thread syncs the file until
    /// the store is dropped.
    pub fn new(file: Arc<dyn LogFile>, recovered: Recovered, sync: SyncMode) -> Arc<Self> {
        let (dir, dir_lock) = recovered.dir.unzip();
        let store = Arc::new(Self {
            keydir: RwLock::new(Keydir {
                index: recovered.index,
                file: Arc::clone(&file),
                file_id: recovered.header.file_id,
            }),
            writer: Mutex::new(Writer {
                file,
                header: recovered.header,
                end: recovered.end,
                next_sequence: recovered.next_sequence,
                pending: Vec::new(),
            }),
            commit: Mutex::new(CommitState {
                durable_sequence: recovered.next_sequence - 1,
                syncing: false,
            }),
            commit_done: Condvar::new(),
            sync,
            read_only: AtomicBool::new(false),
            dir,
            compaction: Mutex::new(()),
            fsyncs: std::sync::atomic::AtomicU64::new(0),
            fsync_micros: std::sync::atomic::AtomicU64::new(0),
            compactions: std::sync::atomic::AtomicU64::new(0),
            last_compaction: Mutex::new(None),
            #[cfg(test)]
            step_hook: Mutex::new(None),
            events: EventBus::new(recovered.next_sequence - 1),
            _dir_lock: dir_lock,
        });
        if let SyncMode::Interval(period) = sync {
            let weak = Arc::downgrade(&store);
            thread::Builder::new()
                .name("lucid-sync".into())
                .spawn(move || sync_periodically(&weak, period))
                .expect("spawn the sync thread");
        }
        store
    }

    /// The change feed: one event per change made visible, in version order.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// Whether the store refuses writes after a failed fsync.
    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::SeqCst)
    }

    /// Reads `key`'s record into `buf` and returns its value, or `None` if
    /// the key does not exist. The record's CRC is verified first: a damaged
    /// record is reported as [`StoreError::Corrupt`], never served.
    pub fn get<'b>(
        &self,
        key: &[u8],
        buf: &'b mut Vec<u8>,
    ) -> Result<Option<StoredValue<'b>>, StoreError> {
        let (location, file, file_id) = {
            let keydir = read(&self.keydir);
            let Some(location) = keydir.index.get(key) else {
                return Ok(None);
            };
            (location, Arc::clone(&keydir.file), keydir.file_id)
        };
        buf.resize(location.len as usize, 0);
        file.read_at(buf, location.offset).map_err(StoreError::Io)?;
        let offset = location.offset;
        let corrupt = || {
            log::error!(
                "record at offset {offset} failed its integrity check and was not served; run `lucid check`"
            );
            StoreError::Corrupt { offset }
        };
        let at = Position {
            file_id,
            offset: location.offset,
        };
        let record = verify(buf, at).map_err(|_| corrupt())?;
        if record.key != key || record.header.kind != RecordKind::Put {
            return Err(corrupt());
        }
        Ok(Some(StoredValue {
            content_type: record.content_type,
            value: record.value,
            timestamp_ms: record.header.timestamp_ms,
            sequence: record.header.sequence,
        }))
    }

    /// Appends a put record started with [`RecordBuilder::begin`] (kind
    /// `Put`) and followed by its value bytes. Returns once the write is as
    /// durable as the sync mode promises.
    pub fn put(&self, record: &mut [u8]) -> Result<WriteOutcome, StoreError> {
        debug_assert_eq!(RecordBuilder::kind(record), RecordKind::Put);
        match self.write(record)? {
            Some(true) => Ok(WriteOutcome::Updated),
            _ => Ok(WriteOutcome::Created),
        }
    }

    /// Deletes `key` by appending a tombstone, built in `buf`. Returns
    /// `false` (and writes nothing) if the key does not exist.
    pub fn delete(&self, key: &[u8], buf: &mut Vec<u8>) -> Result<bool, StoreError> {
        let meta = super::record::RecordMeta {
            kind: RecordKind::Delete,
            key,
            content_type: b"",
            expires_at_ms: 0,
        };
        RecordBuilder::begin(buf, &meta);
        Ok(self.write(buf)?.is_some())
    }

    /// Appends a record; returns whether its key existed before, or `None`
    /// for a delete of a missing key (nothing written).
    fn write(&self, record: &mut [u8]) -> Result<Option<bool>, StoreError> {
        let kind = RecordBuilder::kind(record);
        let (existed, sequence) = {
            let mut writer = lock(&self.writer);
            if self.is_read_only() {
                return Err(StoreError::ReadOnly);
            }
            let key = RecordBuilder::key(record);
            let existed = writer
                .pending_exists(key)
                .unwrap_or_else(|| read(&self.keydir).index.contains(key));
            if kind == RecordKind::Delete && !existed {
                return Ok(None);
            }
            let sequence = writer.next_sequence;
            let offset = writer.end;
            let at = Position {
                file_id: writer.header.file_id,
                offset,
            };
            RecordBuilder::seal(record, sequence, now_ms(), at);
            if let Err(err) = writer.file.append(offset, record) {
                self.undo_append(&*writer.file, offset, &err);
                return Err(StoreError::Io(err));
            }
            writer.next_sequence += 1;
            writer.end += record.len() as u64;
            let location = (kind == RecordKind::Put).then_some(Location {
                offset,
                len: record.len() as u32,
            });
            let key = RecordBuilder::key(record);
            if self.sync == SyncMode::Always {
                writer.pending.push(Pending {
                    key: key.into(),
                    offset,
                    location,
                    sequence,
                });
            } else {
                apply(&mut write(&self.keydir).index, key, location);
            }
            (existed, sequence)
        };
        if self.sync == SyncMode::Always {
            self.wait_durable(sequence)?;
        }
        Ok(Some(existed))
    }

    /// Cuts the log back to `offset` after a failed append so no partial
    /// record stays behind. If even that fails, the tail is unknown: the
    /// store goes read-only (recovery at the next start will cut it).
    fn undo_append(&self, file: &dyn LogFile, offset: u64, err: &io::Error) {
        log::warn!("append at offset {offset} failed ({err}); cutting the log back");
        if let Err(truncate_err) = file.truncate(offset) {
            self.enter_read_only(&format!(
                "could not cut the log back to {offset} after a failed append: {truncate_err}"
            ));
        }
    }

    /// Blocks until the record with this sequence number is durable,
    /// running the group's fdatasync if nobody else is.
    fn wait_durable(&self, sequence: u64) -> Result<(), StoreError> {
        let mut state = lock(&self.commit);
        loop {
            if state.durable_sequence >= sequence {
                return Ok(());
            }
            if self.is_read_only() {
                return Err(StoreError::ReadOnly);
            }
            if state.syncing {
                state = self
                    .commit_done
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
                continue;
            }
            state.syncing = true;
            drop(state);
            let synced = self.sync_and_publish();
            state = lock(&self.commit);
            state.syncing = false;
            if let Some(synced) = synced {
                state.durable_sequence = state.durable_sequence.max(synced);
            }
            self.commit_done.notify_all();
        }
    }

    /// Syncs everything appended so far and publishes the pending records it
    /// covers. Returns the last durable sequence number, or `None` if the
    /// sync failed.
    fn sync_and_publish(&self) -> Option<u64> {
        let (file, target) = {
            let writer = lock(&self.writer);
            (Arc::clone(&writer.file), writer.next_sequence - 1)
        };
        if let Err(err) = self.sync_log(&*file) {
            self.enter_read_only(&format!("fdatasync of the log failed: {err}"));
            return None;
        }
        let mut writer = lock(&self.writer);
        self.publish(&mut writer, target);
        Some(target)
    }

    /// fdatasyncs the log, counting the call and its time for metrics.
    fn sync_log(&self, file: &dyn LogFile) -> io::Result<()> {
        let started = std::time::Instant::now();
        let result = file.sync();
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        result
    }

    /// Moves the pending records up to sequence number `durable` into the
    /// index.
    pub(super) fn publish(&self, writer: &mut Writer, durable: u64) {
        let covered = writer.pending.partition_point(|p| p.sequence <= durable);
        let mut keydir = write(&self.keydir);
        for pending in writer.pending.drain(..covered) {
            apply(&mut keydir.index, &pending.key, pending.location);
        }
    }

    /// Clean shutdown: waits for a running compaction, makes every write
    /// durable (whatever the sync mode) and writes the hint file, so the next
    /// start is fast. A read-only store (after a failed fsync) does neither:
    /// the next start reads and verifies the whole log.
    pub fn close(&self) -> io::Result<()> {
        // A compaction still running finishes first: both write the hint.
        let _no_compaction = lock(&self.compaction);
        if !self.is_read_only() {
            let durable = self.sync_and_publish().ok_or_else(|| {
                io::Error::other("the final fsync failed; the node is now read-only")
            })?;
            let mut state = lock(&self.commit);
            state.durable_sequence = state.durable_sequence.max(durable);
        }
        self.write_hint()
    }

    /// Writes the hint file for the current log (see [`hint`]). The log is
    /// fsynced first, so the hint never covers a record a power cut could
    /// take back. Writes wait meanwhile (the index must not change); reads
    /// go on.
    pub fn write_hint(&self) -> io::Result<()> {
        let Some(dir) = self.dir.as_deref() else {
            return Ok(());
        };
        if self.is_read_only() {
            // After a failed fsync nothing more is claimed durable: no new
            // hint (its fsync would be a retry that may falsely succeed).
            return Ok(());
        }
        let writer = lock(&self.writer);
        // The pending records are the newest ones, one sequence number each,
        // and the only ones not in the index.
        let coverage = Coverage {
            log: writer.header,
            end: writer.pending.first().map_or(writer.end, |p| p.offset),
            max_sequence: writer.next_sequence - 1 - writer.pending.len() as u64,
        };
        self.sync_log(&*writer.file)?;
        hint::write(dir, coverage, &read(&self.keydir).index)
    }

    /// Waits until no group sync runs and keeps others from starting, so
    /// compaction can switch files under the group's feet. The role is given
    /// back when the guard is dropped, also by a panic.
    pub(super) fn exclusive_sync(&self) -> ExclusiveSync<'_> {
        let mut state = lock(&self.commit);
        while state.syncing {
            state = self
                .commit_done
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        state.syncing = true;
        ExclusiveSync {
            store: self,
            durable: None,
        }
    }

    /// Marks a compaction step. Test builds call the test's hook, which may
    /// panic there (unwinding like a process dying, skipping every clean-up)
    /// or write to the store; otherwise a no-op.
    pub(super) fn reached(&self, step: super::compaction::Step) {
        #[cfg(test)]
        if let Some(hook) = lock(&self.step_hook).as_mut() {
            hook(step);
        }
        #[cfg(not(test))]
        let _ = step;
    }

    pub(super) fn enter_read_only(&self, reason: &str) {
        self.read_only.store(true, Ordering::SeqCst);
        log::error!(
            "{reason}. The node is now READ-ONLY: writes are refused with 503, reads still work. \
             Check the disk (dmesg, free space), then restart the node; writes acknowledged \
             before this point are safe."
        );
    }
}

fn sync_periodically(store: &Weak<Store>, period: Duration) {
    loop {
        thread::sleep(period);
        let Some(store) = store.upgrade() else { return };
        if store.is_read_only() {
            return;
        }
        let file = Arc::clone(&lock(&store.writer).file);
        if let Err(err) = store.sync_log(&*file) {
            store.enter_read_only(&format!("periodic fdatasync of the log failed: {err}"));
            return;
        }
    }
}

fn apply(index: &mut Index, key: &[u8], location: Option<Location>) {
    match location {
        Some(location) => index.insert(key, location),
        None => index.remove(key),
    }
}

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is
/// before 1970, as on a board without RTC that has not synced yet).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (no
/// critical section here leaves the data half-updated when it panics).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{FileHeader, FILE_HEADER_LEN};
    use crate::store::testing::{try_put as put, MemFile};

    fn empty_store(sync: SyncMode) -> (Arc<MemFile>, Arc<Store>) {
        let header = FileHeader::new(0);
        let file = Arc::new(MemFile::with_bytes(&header.encode()));
        let recovered = Recovered {
            index: Index::default(),
            end: FILE_HEADER_LEN as u64,
            next_sequence: 1,
            header,
            dir: None,
        };
        let store = Store::new(file.clone(), recovered, sync);
        (file, store)
    }

    fn get(store: &Store, key: &str) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        store
            .get(key.as_bytes(), &mut buf)
            .unwrap()
            .map(|v| v.value.to_vec())
    }

    #[test]
    fn put_get_delete_round_trip() {
        let (_, store) = empty_store(SyncMode::Always);
        assert_eq!(put(&store, "a", b"1").unwrap(), WriteOutcome::Created);
        assert_eq!(put(&store, "a", b"22").unwrap(), WriteOutcome::Updated);
        assert_eq!(get(&store, "a").as_deref(), Some(&b"22"[..]));
        let mut buf = Vec::new();
        assert!(store.delete(b"a", &mut buf).unwrap());
        assert!(!store.delete(b"a", &mut buf).unwrap());
        assert_eq!(get(&store, "a"), None);
        assert_eq!(store.stats().keys, 0);
    }

    #[test]
    fn failed_append_leaves_no_partial_record_and_store_recovers() {
        let (file, store) = empty_store(SyncMode::Always);
        put(&store, "kept", b"safe").unwrap();
        let before = file.contents();
        file.fail_appends(1);
        let err = put(&store, "lost", b"this write hits a full disk").unwrap_err();
        assert!(matches!(err, StoreError::Io(ref e) if e.kind() == io::ErrorKind::StorageFull));
        assert_eq!(file.contents(), before, "the partial record was cut away");
        assert_eq!(get(&store, "lost"), None);
        assert_eq!(get(&store, "kept").as_deref(), Some(&b"safe"[..]));
        assert_eq!(
            put(&store, "lost", b"again").unwrap(),
            WriteOutcome::Created
        );
        assert_eq!(get(&store, "lost").as_deref(), Some(&b"again"[..]));
    }

    #[test]
    fn failed_sync_makes_the_store_read_only_and_never_publishes() {
        let (file, store) = empty_store(SyncMode::Always);
        put(&store, "kept", b"safe").unwrap();
        file.fail_syncs(1);
        assert!(matches!(
            put(&store, "unsynced", b"x"),
            Err(StoreError::ReadOnly)
        ));
        assert!(store.is_read_only());
        assert_eq!(get(&store, "unsynced"), None, "never served unsynced data");
        assert!(matches!(
            put(&store, "later", b"y"),
            Err(StoreError::ReadOnly)
        ));
        let mut buf = Vec::new();
        assert!(matches!(
            store.delete(b"kept", &mut buf),
            Err(StoreError::ReadOnly)
        ));
        assert_eq!(get(&store, "kept").as_deref(), Some(&b"safe"[..]));
    }

    #[test]
    fn damaged_record_is_never_served() {
        let (file, store) = empty_store(SyncMode::Never);
        put(&store, "k", b"precious").unwrap();
        let mut bytes = file.contents();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let damaged = Arc::new(MemFile::with_bytes(&bytes));
        let mut index = Index::default();
        index.insert(
            b"k",
            Location {
                offset: FILE_HEADER_LEN as u64,
                len: (bytes.len() - FILE_HEADER_LEN) as u32,
            },
        );
        let recovered = Recovered {
            index,
            end: bytes.len() as u64,
            next_sequence: 2,
            header: FileHeader::new(0),
            dir: None,
        };
        let store = Store::new(damaged, recovered, SyncMode::Never);
        let mut buf = Vec::new();
        assert!(matches!(
            store.get(b"k", &mut buf),
            Err(StoreError::Corrupt { offset }) if offset == FILE_HEADER_LEN as u64
        ));
    }

    #[test]
    fn writers_waiting_behind_a_sync_share_the_next_one() {
        let (file, store) = empty_store(SyncMode::Always);
        let writers = 16;
        file.hold_syncs();
        thread::scope(|scope| {
            for w in 0..writers {
                let store = &store;
                scope.spawn(move || put(store, &format!("w{w}"), b"v").unwrap());
            }
            // Wait until every writer has appended: one is stuck in the held
            // sync, the others queue behind it.
            // Each record is 40 + key (2-3) + content type (10) + value (1) bytes.
            while file.contents().len() - FILE_HEADER_LEN < writers * 53 {
                thread::sleep(Duration::from_millis(1));
            }
            file.release_syncs();
        });
        // The held sync covers the writers that appended before it started;
        // every writer queued behind it is covered by a single next sync.
        let syncs = file.syncs.load(Ordering::SeqCst);
        assert!(
            (1..=2).contains(&syncs),
            "{syncs} syncs for {writers} writers"
        );
        for w in 0..writers {
            assert_eq!(get(&store, &format!("w{w}")).as_deref(), Some(&b"v"[..]));
        }
    }

    #[test]
    fn sequence_numbers_increase_with_every_write() {
        let (_, store) = empty_store(SyncMode::Never);
        put(&store, "a", b"1").unwrap();
        put(&store, "b", b"2").unwrap();
        put(&store, "a", b"3").unwrap();
        let mut buf = Vec::new();
        let a = store.get(b"a", &mut buf).unwrap().unwrap().sequence;
        let mut buf2 = Vec::new();
        let b = store.get(b"b", &mut buf2).unwrap().unwrap().sequence;
        assert_eq!((b, a), (2, 3));
    }
}
