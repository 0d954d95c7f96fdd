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
//!    see a value that a power cut could still take back. The writer waits
//!    for that sync, unless the store was told to leave the wait to its
//!    caller ([`Store::defer_durability`]): then the write returns once
//!    appended, and the caller holds its acknowledgement until
//!    [`Store::wait_durable`] covers [`Store::appended_sequence`].
//! 3. `interval` and `never`: the record is published right after the append;
//!    a background thread syncs every `sync_interval_ms` (`interval`) or the
//!    OS writes back when it likes (`never`).
//!
//! In every mode the caller is answered only after the record is in the file,
//! so killing the process never loses an acknowledged write.
//!
//! After each fdatasync of the log that covered new bytes (group commit, the
//! `interval` thread, close), a sync marker naming the durable end is
//! appended (`Store::mark_durable`); recovery uses markers to tell an
//! unsynced tail from damaged durable data (see `scan.rs`).
//!
//! # Failed fsync
//!
//! A failed fsync is never retried and reported as success (Linux may have
//! dropped the dirty pages). The store switches to read-only: every later
//! write fails with [`StoreError::ReadOnly`] while reads keep working, and an
//! ERROR log tells the operator to restart the node once the disk is healthy.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, Weak};
use std::thread;
use std::time::Duration;

use super::crypt::{open_copy, open_record, stored_form, Cipher};
use super::file::LogFile;
use super::hint::{self, Coverage};
use super::index::{Attrs, Index, Location};
use super::record::{
    members, verify, FileHeader, FrameBuilder, Marker, Position, RecordBuilder, RecordHeader,
    RecordKind, RecordMeta, RecordView, ENVELOPE_OVERHEAD, FILE_HEADER_LEN, MAX_CONTENT_TYPE_LEN,
    RECORD_HEADER_LEN,
};
use super::scan::damaged_ranges;
use super::stats::{LastCompaction, StoreStats};
pub use crate::clock::now_ms;
use crate::locks::{lock, read, write};
use crate::watch::{Event, EventBus, EventOp};

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

/// A successful put: what it did and the key's new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Created or updated.
    pub outcome: WriteOutcome,
    /// The key's version now (the sequence number of the write).
    pub version: u64,
}

/// A condition on a key's current state, checked atomically with a write
/// (HTTP's `If-Match` and `If-None-Match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expect {
    /// No condition.
    #[default]
    Any,
    /// The key exists, whatever its version.
    Exists,
    /// The key does not exist.
    Absent,
    /// The key exists with this version.
    Version(u64),
    /// The key does not exist with this version (it may not exist at all).
    NotVersion(u64),
}

impl Expect {
    /// Whether a key with `version` (`None`: missing) meets the condition.
    pub fn holds(self, version: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::Exists => version.is_some(),
            Self::Absent => version.is_none(),
            Self::Version(expected) => version == Some(expected),
            Self::NotVersion(refused) => version != Some(refused),
        }
    }

    fn needs_version(self) -> bool {
        matches!(self, Self::Version(_) | Self::NotVersion(_))
    }
}

/// The current record of a key, as an update sees it.
#[derive(Debug, Clone, Copy)]
pub struct Current<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
    /// Its content type.
    pub content_type: &'a [u8],
    /// Lock and expiry.
    pub attrs: Attrs,
    /// The key's version.
    pub version: u64,
}

/// One operation of an atomic batch.
#[derive(Debug, Clone, Copy)]
pub enum BatchOp<'a> {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: &'a [u8],
        /// The value's content type.
        content_type: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// Absolute expiry, 0 = never.
        expires_at_ms: u64,
        /// Whether the key is locked once written.
        locked: bool,
        /// Condition on the key's current state.
        expect: Expect,
    },
    /// Delete `key` (nothing is written if it does not exist).
    Delete {
        /// The key.
        key: &'a [u8],
        /// Condition on the key's current state.
        expect: Expect,
    },
}

impl BatchOp<'_> {
    /// The key the operation changes.
    pub fn key(&self) -> &[u8] {
        match self {
            Self::Put { key, .. } | Self::Delete { key, .. } => key,
        }
    }
}

/// What one batch operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchResult {
    /// A put: created or updated, and the key's new version.
    Put(Written),
    /// A delete of an existing key, with the tombstone's sequence number.
    Deleted(u64),
    /// A delete of a key that did not exist: nothing written.
    NotFound,
}

/// A batch refused because of one of its operations; nothing was written.
#[derive(Debug)]
pub struct BatchError {
    /// Position of the failing operation in the batch.
    pub index: usize,
    /// Why it failed.
    pub error: StoreError,
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
    /// The key is locked against this change.
    Locked,
    /// The key's state does not meet the write's [`Expect`] condition.
    PreconditionFailed,
    /// The key to update does not exist.
    NotFound,
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
            Self::Locked => f.write_str("the key is locked"),
            Self::PreconditionFailed => f.write_str("the key's version does not match"),
            Self::NotFound => f.write_str("the key does not exist"),
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
    /// Sequence number of the write: the key's version.
    pub sequence: u64,
    /// Absolute expiry, milliseconds since the epoch; 0 = never.
    pub expires_at_ms: u64,
    /// Whether the key is locked.
    pub locked: bool,
}

/// A key's metadata, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key.
    pub key: Vec<u8>,
    /// Value size in bytes.
    pub size: u64,
    /// Version (sequence number of the latest write).
    pub version: u64,
    /// Content type.
    pub content_type: Vec<u8>,
    /// Time of the latest write, milliseconds since the epoch.
    pub updated_at_ms: u64,
    /// Absolute expiry, 0 = never.
    pub expires_at_ms: u64,
    /// Whether the key is locked.
    pub locked: bool,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The entries, in key order.
    pub entries: Vec<T>,
    /// Whether more keys follow the last one.
    pub more: bool,
}

/// The group-commit role held by compaction (see [`Store::exclusive_sync`]).
pub(super) struct ExclusiveSync<'a> {
    store: &'a Store,
    durable: Option<u64>,
}

impl<'a> ExclusiveSync<'a> {
    /// Gives the role back, with every record up to sequence number
    /// `durable` now durable.
    fn release(mut self, durable: u64) {
        self.durable = Some(durable);
    }

    /// Pauses writers too, until the returned guard is dropped (or the
    /// compacted log installed through it).
    pub(super) fn pause_writers(self) -> Paused<'a> {
        Paused {
            writer: lock(&self.store.writer),
            group_commit: self,
        }
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
    /// Everything before this offset, but a sync marker ending there, is
    /// already claimed durable on disk (see `Writer::marked_end`).
    pub marked_end: u64,
    /// The data directory, and its lock, held as long as the store lives.
    pub dir: Option<(PathBuf, File)>,
    /// The log's encryption, if any.
    pub cipher: Option<Arc<Cipher>>,
}

/// A record appended but not yet covered by an fsync (sync mode `always`).
struct Pending {
    key: Box<[u8]>,
    /// Log offset of the record, or of the batch frame holding it.
    offset: u64,
    /// Where the record is and the key's attributes; `None` for a tombstone.
    location: Option<(Location, Attrs)>,
    /// Sequence number of the record.
    sequence: u64,
    /// The change, for watchers, once it is published.
    event: Event,
}

/// Where an appended record went.
#[derive(Debug, Clone, Copy)]
struct Placed {
    /// Its offset in the log.
    offset: u64,
    /// Its size there (an envelope is larger than the plain record).
    stored_len: usize,
    /// Where its batch frame starts (its own offset if it has none).
    frame_offset: u64,
}

/// A key's state as a write sees it: its latest record, published or not.
#[derive(Debug, Clone, Copy)]
struct KeyState {
    location: Location,
    attrs: Attrs,
    /// Known without a read for records not yet published.
    sequence: Option<u64>,
}

/// The append side of the store, behind one lock.
struct Writer {
    /// The log file appends go to.
    file: Arc<dyn LogFile>,
    /// That file's header.
    header: FileHeader,
    /// Offset where the next record goes.
    end: u64,
    /// Sequence number of the next record.
    next_sequence: u64,
    /// The end of the last sync marker (or of what was durable when the
    /// log was opened or compacted): a sync covering no byte past it has
    /// nothing new to mark.
    marked_end: u64,
    /// Appended records not yet covered by an fsync (`sync: always`).
    pending: Vec<Pending>,
    /// The log's encryption, if any.
    cipher: Option<Arc<Cipher>>,
    /// Reused buffer for sealing envelopes (encrypted logs).
    envelope: Vec<u8>,
}

impl Writer {
    /// The latest not-yet-published write of `key`, if any: `Some(None)`
    /// for a tombstone.
    fn pending_state(&self, key: &[u8]) -> Option<Option<KeyState>> {
        self.pending.iter().rev().find(|p| &*p.key == key).map(|p| {
            p.location.map(|(location, attrs)| KeyState {
                location,
                attrs,
                sequence: Some(p.sequence),
            })
        })
    }
}

struct CommitState {
    /// Every record up to this sequence number is fsynced and published.
    /// (Sequence numbers, unlike offsets, survive compaction unchanged.)
    durable_sequence: u64,
    /// A writer (or compaction) is running fdatasync on behalf of the group.
    syncing: bool,
}

/// What readers look at: the index and the log file its offsets point into.
/// Compaction swaps both at once, so a reader always gets a matching pair.
struct Keydir {
    index: Index,
    file: Arc<dyn LogFile>,
    /// That file's id, which every record's CRC covers.
    file_id: u32,
    /// That file's encryption, if any.
    cipher: Option<Arc<Cipher>>,
}

/// The key-value store over one log file.
pub struct Store {
    keydir: RwLock<Keydir>,
    writer: Mutex<Writer>,
    commit: Mutex<CommitState>,
    commit_done: Condvar,
    sync: SyncMode,
    /// With `sync: always`, writes return once appended; their callers wait
    /// for durability themselves (see [`Store::defer_durability`]).
    deferred: AtomicBool,
    read_only: AtomicBool,
    /// The data directory (absent for stores over an in-memory test file).
    dir: Option<PathBuf>,
    /// Held while a compaction runs.
    compaction: Mutex<()>,
    /// fdatasync calls on the log, and the time they took.
    fsyncs: std::sync::atomic::AtomicU64,
    fsync_micros: std::sync::atomic::AtomicU64,
    /// Compactions since start.
    compactions: std::sync::atomic::AtomicU64,
    /// Damaged stretches the check after a start from the hint file found
    /// in the current log (see [`Store::verify_in_background`]).
    damaged_records: std::sync::atomic::AtomicU64,
    /// The most recent compaction.
    last_compaction: Mutex<Option<LastCompaction>>,
    /// Test builds: called at each compaction step, to crash there or to
    /// write while compaction runs.
    #[cfg(test)]
    step_hook: Mutex<Option<super::compaction::StepHook>>,
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
                cipher: recovered.cipher.clone(),
            }),
            writer: Mutex::new(Writer {
                file,
                header: recovered.header,
                end: recovered.end,
                next_sequence: recovered.next_sequence,
                marked_end: recovered.marked_end,
                pending: Vec::new(),
                cipher: recovered.cipher,
                envelope: Vec::new(),
            }),
            commit: Mutex::new(CommitState {
                durable_sequence: recovered.next_sequence - 1,
                syncing: false,
            }),
            commit_done: Condvar::new(),
            sync,
            deferred: AtomicBool::new(false),
            read_only: AtomicBool::new(false),
            dir,
            compaction: Mutex::new(()),
            fsyncs: std::sync::atomic::AtomicU64::new(0),
            fsync_micros: std::sync::atomic::AtomicU64::new(0),
            compactions: std::sync::atomic::AtomicU64::new(0),
            damaged_records: std::sync::atomic::AtomicU64::new(0),
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

    /// Whether every write waits for an fdatasync before it returns
    /// (`sync: always`).
    pub fn syncs_every_write(&self) -> bool {
        self.sync == SyncMode::Always
    }

    /// From now on, with `sync: always`, writes return as soon as their
    /// record is appended (not yet visible, not yet durable) instead of
    /// waiting for the fdatasync that covers it. The caller must then hold
    /// each acknowledgement until [`wait_durable`](Self::wait_durable)
    /// covers the write ([`appended_sequence`](Self::appended_sequence)
    /// after it returned). The HTTP server does so, answering every write
    /// of a group commit from one thread instead of parking a worker per
    /// write.
    pub fn defer_durability(&self) {
        self.deferred.store(true, Ordering::SeqCst);
    }

    /// Sequence number of the latest record appended (0 if none): every
    /// write that returned before this call is at or below it.
    pub fn appended_sequence(&self) -> u64 {
        lock(&self.writer).next_sequence - 1
    }

    /// Every write up to this sequence number is durable (and visible).
    pub fn durable_sequence(&self) -> u64 {
        lock(&self.commit).durable_sequence
    }

    /// Whether a group commit's fdatasync is running.
    pub fn is_syncing(&self) -> bool {
        lock(&self.commit).syncing
    }

    /// Whether the store refuses writes after a failed fsync.
    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::SeqCst)
    }

    /// Reads `key`'s record into `buf` and returns its value, or `None` if
    /// the key does not exist or has expired. The record's CRC is verified
    /// first: a damaged record is reported as [`StoreError::Corrupt`], never
    /// served.
    pub fn get<'b>(
        &self,
        key: &[u8],
        buf: &'b mut Vec<u8>,
    ) -> Result<Option<StoredValue<'b>>, StoreError> {
        let (location, file, file_id, cipher) = {
            let keydir = read(&self.keydir);
            let Some(location) = keydir.index.get(key) else {
                return Ok(None);
            };
            (
                location,
                Arc::clone(&keydir.file),
                keydir.file_id,
                keydir.cipher.clone(),
            )
        };
        let record = read_record((&*file, file_id, cipher.as_deref()), location, key, buf)
            .inspect_err(|err| {
                if matches!(err, StoreError::Corrupt { .. }) {
                    self.note_damaged(key, location, file_id);
                }
            })?;
        if Attrs::of(&record.header).expired(now_ms()) {
            return Ok(None);
        }
        Ok(Some(StoredValue {
            content_type: record.content_type,
            value: record.value,
            timestamp_ms: record.header.timestamp_ms,
            sequence: record.header.sequence,
            expires_at_ms: record.header.expires_at_ms,
            locked: record.header.is_locked(),
        }))
    }

    /// Up to `limit` live keys starting with `prefix` and sorting after
    /// `after`, in key order; with `keys_only`, only the names are read
    /// (from memory), otherwise each key's metadata is read from its
    /// record's header. Costs O(limit), not O(keys).
    pub fn list(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Page<(Vec<u8>, Location)> {
        let now = now_ms();
        let keydir = read(&self.keydir);
        let mut live = keydir
            .index
            .range(prefix, after)
            .filter(|(_, _, attrs)| !attrs.expired(now))
            .map(|(key, location, _)| (key.to_vec(), location));
        let entries: Vec<_> = live.by_ref().take(limit).collect();
        Page {
            entries,
            more: live.next().is_some(),
        }
    }

    /// The metadata of listed keys (from [`list`](Self::list)), read from
    /// their records' headers (values are not read). A key changed or
    /// deleted since it was listed is shown as it is now, or left out.
    pub fn key_info(&self, listed: Vec<(Vec<u8>, Location)>) -> Result<Vec<KeyInfo>, StoreError> {
        let mut buf = Vec::new();
        let mut infos = Vec::with_capacity(listed.len());
        let now = now_ms();
        for (key, _) in listed {
            let (location, file, cipher) = {
                let keydir = read(&self.keydir);
                let Some(location) = keydir.index.get(&key) else {
                    continue;
                };
                (location, Arc::clone(&keydir.file), keydir.cipher.is_some())
            };
            if cipher {
                // Metadata is encrypted with the value: read it all.
                if let Some(value) = self.get(&key, &mut buf)? {
                    infos.push(KeyInfo {
                        size: value.value.len() as u64,
                        version: value.sequence,
                        content_type: value.content_type.to_vec(),
                        updated_at_ms: value.timestamp_ms,
                        expires_at_ms: value.expires_at_ms,
                        locked: value.locked,
                        key,
                    });
                }
                continue;
            }
            let head =
                (RECORD_HEADER_LEN + key.len() + MAX_CONTENT_TYPE_LEN).min(location.len as usize);
            buf.resize(head, 0);
            file.read_at(&mut buf, location.offset)
                .map_err(StoreError::Io)?;
            let offset = location.offset;
            let header = RecordHeader::decode(buf[..RECORD_HEADER_LEN].try_into().expect("header"))
                .map_err(|_| corrupt(offset))?;
            let key_end = RECORD_HEADER_LEN + usize::from(header.key_len);
            let content_type_end = key_end + usize::from(header.content_type_len);
            if header.kind != RecordKind::Put
                || header.is_damaged()
                || buf.get(RECORD_HEADER_LEN..key_end) != Some(&key[..])
                || content_type_end > buf.len()
            {
                return Err(corrupt(offset));
            }
            if Attrs::of(&header).expired(now) {
                continue;
            }
            infos.push(KeyInfo {
                size: u64::from(header.value_len),
                version: header.sequence,
                content_type: buf[key_end..content_type_end].to_vec(),
                updated_at_ms: header.timestamp_ms,
                expires_at_ms: header.expires_at_ms,
                locked: header.is_locked(),
                key,
            });
        }
        Ok(infos)
    }

    /// Appends a put record started with [`RecordBuilder::begin`] (kind
    /// `Put`) and followed by its value bytes, if the key is not locked and
    /// meets `expect`. Returns once the write is as durable as the sync mode
    /// promises.
    pub fn put(&self, record: &mut [u8], expect: Expect) -> Result<Written, StoreError> {
        debug_assert_eq!(RecordBuilder::kind(record), RecordKind::Put);
        let writer = lock(&self.writer);
        let key = RecordBuilder::key(record);
        let outcome_of = |live: bool| {
            if live {
                WriteOutcome::Updated
            } else {
                WriteOutcome::Created
            }
        };
        if expect == Expect::Any && self.sync != SyncMode::Always {
            // Nothing to check but the lock, and the index is updated at
            // once: whether the key was live is learnt from that update, so
            // a put walks the index once, not twice (the hottest write).
            let now = now_ms();
            self.check_unlocked(key, now)?;
            let (version, replaced) = self.append(writer, record, EventOp::Put)?;
            let live = replaced.is_some_and(|attrs| !attrs.expired(now));
            return Ok(Written {
                outcome: outcome_of(live),
                version,
            });
        }
        let state = self.state_for_write(&writer, key, expect)?;
        let (version, _) = self.append(writer, record, EventOp::Put)?;
        Ok(Written {
            outcome: outcome_of(state.is_some()),
            version,
        })
    }

    /// Deletes `key` by appending a tombstone, built in `buf`, if the key is
    /// not locked and meets `expect`. Returns `false` (and writes nothing)
    /// if the key does not exist.
    pub fn delete(
        &self,
        key: &[u8],
        buf: &mut Vec<u8>,
        expect: Expect,
    ) -> Result<bool, StoreError> {
        let writer = lock(&self.writer);
        if self.state_for_write(&writer, key, expect)?.is_none() {
            return Ok(false);
        }
        RecordBuilder::begin(buf, &RecordMeta::tombstone(key));
        self.append(writer, buf, EventOp::Delete)?;
        Ok(true)
    }

    /// Read-modify-write of an existing key, atomic with respect to every
    /// other write: `change` sees the key's current record and either builds
    /// the new record in `buf` (with [`RecordBuilder::begin`], kind `Put`)
    /// and returns the event it makes, or returns `None` to write nothing.
    /// Returns the key's version afterwards. Locks are for `change` to
    /// honour (it is how a key gets unlocked); `expect` is checked first.
    pub fn update<E: From<StoreError>>(
        &self,
        key: &[u8],
        expect: Expect,
        buf: &mut Vec<u8>,
        change: impl FnOnce(&Current<'_>, &mut Vec<u8>) -> Result<Option<EventOp>, E>,
    ) -> Result<u64, E> {
        let writer = lock(&self.writer);
        if self.is_read_only() {
            return Err(StoreError::ReadOnly.into());
        }
        let state = self
            .current_state(&writer, key, now_ms())
            .ok_or(StoreError::NotFound)?;
        let mut old = Vec::new();
        let at = Position {
            file_id: writer.header.file_id,
            offset: state.location.offset,
        };
        let source = (&*writer.file, at.file_id, writer.cipher.as_deref());
        let record = read_record(source, state.location, key, &mut old)?;
        let current = Current {
            key: record.key,
            value: record.value,
            content_type: record.content_type,
            attrs: state.attrs,
            version: record.header.sequence,
        };
        if !expect.holds(Some(current.version)) {
            return Err(StoreError::PreconditionFailed.into());
        }
        match change(&current, buf)? {
            Some(op) => Ok(self.append(writer, buf, op)?.0),
            None => Ok(current.version),
        }
    }

    /// Applies every operation of `ops` or none: their records are written
    /// as one batch frame (see [`super::record`]). Each key may appear only
    /// once. A locked key or an unmet condition refuses the whole batch.
    pub fn batch(
        &self,
        ops: &[BatchOp<'_>],
        buf: &mut Vec<u8>,
    ) -> Result<Vec<BatchResult>, BatchError> {
        let mut writer = lock(&self.writer);
        let mut results = Vec::with_capacity(ops.len());
        FrameBuilder::begin(buf);
        for (index, op) in ops.iter().enumerate() {
            let state = self
                .state_for_write(&writer, op.key(), expect_of(op))
                .map_err(|error| BatchError { index, error })?;
            match *op {
                BatchOp::Put {
                    key,
                    content_type,
                    value,
                    expires_at_ms,
                    locked,
                    ..
                } => {
                    let meta = RecordMeta {
                        locked,
                        ..RecordMeta::put(key, content_type, expires_at_ms)
                    };
                    FrameBuilder::add(buf, &meta, value);
                    let outcome = if state.is_some() {
                        WriteOutcome::Updated
                    } else {
                        WriteOutcome::Created
                    };
                    results.push(BatchResult::Put(Written {
                        outcome,
                        version: 0,
                    }));
                }
                BatchOp::Delete { key, .. } if state.is_some() => {
                    FrameBuilder::add(buf, &RecordMeta::tombstone(key), b"");
                    results.push(BatchResult::Deleted(0));
                }
                BatchOp::Delete { .. } => results.push(BatchResult::NotFound),
            }
        }
        let first = writer.next_sequence;
        if buf.len() > RECORD_HEADER_LEN {
            let op_of = |member: &RecordView<'_>| match member.header.kind {
                RecordKind::Delete => EventOp::Delete,
                _ => EventOp::Put,
            };
            self.append_frame(&mut writer, buf, op_of)
                .and_then(|last| self.finish(writer, last))
                .map_err(|error| BatchError { index: 0, error })?;
        }
        let mut version = first;
        for result in &mut results {
            match result {
                BatchResult::Put(written) => written.version = version,
                BatchResult::Deleted(sequence) => *sequence = version,
                BatchResult::NotFound => continue,
            }
            version += 1;
        }
        Ok(results)
    }

    /// Writes tombstones for up to `max` keys whose expiry is at or before
    /// `now_ms`, as one batch frame; returns how many. Keys whose expiry
    /// changed meanwhile are left alone; locks do not stop expiry.
    pub fn expire_due(&self, now_ms: u64, max: usize) -> Result<usize, StoreError> {
        let due = read(&self.keydir).index.expired(now_ms, max);
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
                state.attrs.expires_at_ms == *expires_at_ms
                    && state.attrs.expired(crate::clock::now_ms())
            });
            if still_due {
                FrameBuilder::add(&mut frame, &RecordMeta::tombstone(key), b"");
                count += 1;
            }
        }
        if count > 0 {
            let last = self.append_frame(&mut writer, &mut frame, |_| EventOp::Expire)?;
            self.finish_durable(writer, last)?;
        }
        Ok(count)
    }

    /// The state of `key` for a write (its latest record, published or
    /// not), after refusing the write if the store is read-only, the key is
    /// locked or `expect` does not hold. `None`: the key does not exist (or
    /// has expired).
    fn state_for_write(
        &self,
        writer: &Writer,
        key: &[u8],
        expect: Expect,
    ) -> Result<Option<KeyState>, StoreError> {
        if self.is_read_only() {
            return Err(StoreError::ReadOnly);
        }
        let state = self.current_state(writer, key, now_ms());
        if expect != Expect::Any {
            let version = match state {
                Some(state) if expect.needs_version() => Some(self.version_of(writer, key, state)?),
                // Only existence matters: any version will do.
                Some(_) => Some(0),
                None => None,
            };
            if !expect.holds(version) {
                return Err(StoreError::PreconditionFailed);
            }
        }
        if state.is_some_and(|state| state.attrs.locked) {
            return Err(StoreError::Locked);
        }
        Ok(state)
    }

    /// Refuses a write to `key` if the store is read-only or the key is
    /// locked (and not expired at `now_ms`). Only for a store whose index
    /// is updated at once: it does not look at pending records.
    fn check_unlocked(&self, key: &[u8], now_ms: u64) -> Result<(), StoreError> {
        if self.is_read_only() {
            return Err(StoreError::ReadOnly);
        }
        let attrs = read(&self.keydir).index.attrs(key);
        if attrs.locked && !attrs.expired(now_ms) {
            return Err(StoreError::Locked);
        }
        Ok(())
    }

    /// The latest record of `key`, published or not; `None` if the key does
    /// not exist or expired by `now_ms` (0: ignore expiry).
    fn current_state(&self, writer: &Writer, key: &[u8], now_ms: u64) -> Option<KeyState> {
        let state = writer.pending_state(key).unwrap_or_else(|| {
            let keydir = read(&self.keydir);
            keydir.index.get(key).map(|location| KeyState {
                location,
                attrs: keydir.index.attrs(key),
                sequence: None,
            })
        })?;
        (now_ms == 0 || !state.attrs.expired(now_ms)).then_some(state)
    }

    /// The version of a key whose state is `state`: known for a pending
    /// record, else read from its record's header.
    fn version_of(&self, writer: &Writer, key: &[u8], state: KeyState) -> Result<u64, StoreError> {
        if let Some(sequence) = state.sequence {
            return Ok(sequence);
        }
        let offset = state.location.offset;
        if state.attrs.damaged {
            return Err(corrupt(offset));
        }
        let mut header = [0u8; RECORD_HEADER_LEN];
        writer
            .file
            .read_at(&mut header, offset)
            .map_err(StoreError::Io)?;
        let header = RecordHeader::decode(&header).map_err(|_| corrupt(offset))?;
        // An envelope's header shows no key (it is encrypted); its sequence
        // number is the record's, and authenticated.
        if !header.is_encrypted() && usize::from(header.key_len) != key.len() {
            return Err(corrupt(offset));
        }
        Ok(header.sequence)
    }

    /// Seals `record` (a put or tombstone) and appends it, then makes it
    /// durable and visible as the sync mode says. Returns its sequence
    /// number, and what it replaced in the index (see [`Store::register`]).
    fn append(
        &self,
        mut writer: MutexGuard<'_, Writer>,
        record: &mut [u8],
        op: EventOp,
    ) -> Result<(u64, Replaced), StoreError> {
        let sequence = writer.next_sequence;
        let offset = writer.end;
        let at = Position {
            file_id: writer.header.file_id,
            offset,
        };
        RecordBuilder::seal(record, sequence, now_ms(), at);
        let stored_len = self.append_sealed(&mut writer, record, at)?;
        let view = verify(record, at).map_err(|_| corrupt(offset))?;
        let place = Placed {
            offset,
            stored_len,
            frame_offset: offset,
        };
        let replaced = self.register(&mut writer, &view, place, op, None);
        self.finish(writer, sequence)?;
        Ok((sequence, replaced))
    }

    /// Seals the batch frame in `frame` and appends it; every member is then
    /// registered with the event `op_of` gives it. Returns the last sequence
    /// number.
    fn append_frame(
        &self,
        writer: &mut MutexGuard<'_, Writer>,
        frame: &mut [u8],
        op_of: impl Fn(&RecordView<'_>) -> EventOp,
    ) -> Result<u64, StoreError> {
        let offset = writer.end;
        let at = Position {
            file_id: writer.header.file_id,
            offset,
        };
        let (first, now) = (writer.next_sequence, now_ms());
        let cipher = writer.cipher.clone();
        let mut wrapped = Vec::new();
        let (last, stored): (u64, &[u8]) = match cipher.as_deref() {
            None => (FrameBuilder::seal(frame, first, now, at), frame),
            Some(cipher) => {
                let seal =
                    |member: &[u8], place, out: &mut Vec<u8>| cipher.seal(member, place, out);
                let last = FrameBuilder::seal_wrapped(
                    frame,
                    first,
                    now,
                    at,
                    ENVELOPE_OVERHEAD,
                    &mut wrapped,
                    seal,
                );
                (last, &wrapped)
            }
        };
        self.append_bytes(writer, stored)?;
        let view = verify(stored, at).map_err(|_| corrupt(offset))?;
        let mut scratch = Vec::new();
        // Readers must see the whole batch or none of it: without a pending
        // sync, the members are published together below.
        let mut visible = Vec::new();
        for member in members(&view, at) {
            let (member_offset, member) = member.map_err(|_| corrupt(offset))?;
            let place = Position {
                offset: member_offset,
                ..at
            };
            let stored_len = member.bytes.len();
            let plain = open_copy(cipher.as_deref(), member, place, &mut scratch)
                .map_err(|_| corrupt(offset))?;
            let op = op_of(&plain);
            let place = Placed {
                offset: member_offset,
                stored_len,
                frame_offset: offset,
            };
            self.register(writer, &plain, place, op, Some(&mut visible));
        }
        if !visible.is_empty() {
            let mut keydir = write(&self.keydir);
            for member in &visible {
                apply(&mut keydir.index, &member.key, member.location);
            }
            drop(keydir);
            for member in visible {
                self.events.publish(member.event);
            }
        }
        Ok(last)
    }

    /// Appends `plain`, a record sealed for `at` (the log's end), as the
    /// log stores it there: as is, or in an envelope built in the writer's
    /// reused buffer. Returns the stored length.
    fn append_sealed(
        &self,
        writer: &mut Writer,
        plain: &[u8],
        at: Position,
    ) -> Result<usize, StoreError> {
        let cipher = writer.cipher.clone();
        let mut envelope = std::mem::take(&mut writer.envelope);
        let stored = stored_form(cipher.as_deref(), plain, at, &mut envelope);
        let stored_len = stored.len();
        let appended = self.append_bytes(writer, stored);
        writer.envelope = envelope;
        appended.map(|()| stored_len)
    }

    /// Appends sealed bytes at the end of the log, advancing the end and
    /// the sequence counter past them. On failure nothing stays behind.
    fn append_bytes(&self, writer: &mut Writer, bytes: &[u8]) -> Result<(), StoreError> {
        let offset = writer.end;
        if let Err(err) = writer.file.append(offset, bytes) {
            self.undo_append(&*writer.file, offset, &err);
            return Err(StoreError::Io(err));
        }
        writer.end += bytes.len() as u64;
        let header = RecordHeader::decode(bytes[..RECORD_HEADER_LEN].try_into().expect("header"));
        if header.is_ok_and(|header| header.kind == RecordKind::Marker) {
            return Ok(()); // a sync marker takes no sequence number
        }
        let last = header.map_or(writer.next_sequence, |header| header.sequence);
        writer.next_sequence = last + 1;
        Ok(())
    }

    /// Records an appended record (its plain form, stored at `place`):
    /// published at once (or, with `deferred`, handed back to be published
    /// with the rest of its batch), or pending until its fsync with `sync:
    /// always`. Returns what it replaced in the index when published at
    /// once (`None` when it waits).
    fn register(
        &self,
        writer: &mut Writer,
        record: &RecordView<'_>,
        place: Placed,
        op: EventOp,
        deferred: Option<&mut Vec<Pending>>,
    ) -> Replaced {
        let header = record.header;
        let location = (header.kind == RecordKind::Put).then(|| {
            let location = Location {
                offset: place.offset,
                len: place.stored_len as u32,
            };
            (location, Attrs::of(&header))
        });
        let event = Event::new(
            op,
            record.key,
            header.sequence,
            record.content_type,
            record.value,
        );
        let queue = match deferred {
            _ if self.sync == SyncMode::Always => &mut writer.pending,
            Some(deferred) => deferred,
            None => {
                let replaced = apply(&mut write(&self.keydir).index, record.key, location);
                self.events.publish(event);
                return replaced;
            }
        };
        queue.push(Pending {
            key: record.key.into(),
            offset: place.frame_offset,
            location,
            sequence: header.sequence,
            event,
        });
        None
    }

    /// Releases the writer lock and, with `sync: always`, waits until the
    /// record with sequence number `last` is durable, unless callers wait
    /// for that themselves ([`Store::defer_durability`]).
    fn finish(&self, writer: MutexGuard<'_, Writer>, last: u64) -> Result<(), StoreError> {
        if self.deferred.load(Ordering::Relaxed) {
            drop(writer);
            return Ok(());
        }
        self.finish_durable(writer, last)
    }

    /// Releases the writer lock and, with `sync: always`, waits until the
    /// record with sequence number `last` is durable: for the store's own
    /// writes, which no caller acknowledges.
    fn finish_durable(&self, writer: MutexGuard<'_, Writer>, last: u64) -> Result<(), StoreError> {
        drop(writer);
        if self.sync == SyncMode::Always {
            self.wait_durable(last)?;
        }
        Ok(())
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
    /// running the group's fdatasync if nobody else is. Fails with
    /// [`StoreError::ReadOnly`] if an fsync failed first.
    pub fn wait_durable(&self, sequence: u64) -> Result<(), StoreError> {
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
        let (file, target, end) = {
            let writer = lock(&self.writer);
            (
                Arc::clone(&writer.file),
                writer.next_sequence - 1,
                writer.end,
            )
        };
        if let Err(err) = self.sync_log(&*file) {
            self.enter_read_only(&format!("fdatasync of the log failed: {err}"));
            return None;
        }
        let mut writer = lock(&self.writer);
        self.publish(&mut writer, target);
        self.mark_durable(&mut writer, end);
        Some(target)
    }

    /// The periodic fdatasync of `sync: interval`: syncs what was appended
    /// and marks it durable.
    pub(super) fn sync_appended(&self) -> io::Result<()> {
        let (file, end) = {
            let writer = lock(&self.writer);
            (Arc::clone(&writer.file), writer.end)
        };
        self.sync_log(&*file)?;
        let mut writer = lock(&self.writer);
        // Compaction may have switched files meanwhile; its new log needs
        // no marker for what it holds (see `Writer::marked_end`).
        if Arc::ptr_eq(&writer.file, &file) {
            self.mark_durable(&mut writer, end);
        }
        Ok(())
    }

    /// After an fdatasync of the log that began when the log ended at
    /// `durable_end`, appends a sync marker saying every byte before it is
    /// durable (see [`super::record`]), unless no byte after the last
    /// marker was synced: an idle store does not grow its log. A failed
    /// append is cut back like any; the sync it describes still stands.
    fn mark_durable(&self, writer: &mut Writer, durable_end: u64) {
        if durable_end <= writer.marked_end || self.is_read_only() {
            return;
        }
        let at = Position {
            file_id: writer.header.file_id,
            offset: writer.end,
        };
        let marker = Marker::encode(durable_end, now_ms(), at);
        if self.append_sealed(writer, &marker, at).is_ok() {
            writer.marked_end = writer.end;
        }
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
    fn publish(&self, writer: &mut Writer, durable: u64) {
        let covered = writer.pending.partition_point(|p| p.sequence <= durable);
        let mut keydir = write(&self.keydir);
        for pending in writer.pending.drain(..covered) {
            apply(&mut keydir.index, &pending.key, pending.location);
            self.events.publish(pending.event);
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

    /// Marks `key` damaged in the index (see [`Attrs::damaged`]) after its
    /// record at `location` of log `file_id` failed its check, unless the
    /// key moved on since.
    fn note_damaged(&self, key: &[u8], location: Location, file_id: u32) {
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
    /// [`StoreStats`], and the keys whose
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
    fn note_damaged_ranges(&self, file_id: u32, ranges: &[(u64, u64)]) {
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
        hint::write(
            dir,
            coverage,
            &read(&self.keydir).index,
            writer.cipher.as_deref(),
        )
    }

    /// Waits until no group sync runs and keeps others from starting, so
    /// compaction can switch files under the group's feet. The role is given
    /// back when the guard is dropped, also by a panic.
    fn exclusive_sync(&self) -> ExclusiveSync<'_> {
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

    /// Turns the store read-only, saying `reason` in an ERROR log.
    pub(super) fn enter_read_only(&self, reason: &str) {
        self.read_only.store(true, Ordering::SeqCst);
        log::error!(
            "{reason}. The node is now READ-ONLY: writes are refused with 503, reads still work. \
             Check the disk (dmesg, free space), then restart the node; writes acknowledged \
             before this point are safe."
        );
    }
}

impl Store {
    /// Current size and compaction figures.
    pub fn stats(&self) -> StoreStats {
        let log_bytes = lock(&self.writer).end;
        let (keys, live_bytes, damaged_keys) = {
            let keydir = read(&self.keydir);
            let index = &keydir.index;
            (index.len(), index.live_bytes(), index.damaged_keys())
        };
        let last_compaction = *lock(&self.last_compaction);
        StoreStats {
            keys,
            log_bytes,
            live_bytes,
            dead_bytes: log_bytes.saturating_sub(FILE_HEADER_LEN as u64 + live_bytes),
            read_only: self.is_read_only(),
            damaged_keys,
            damaged_records: self.damaged_records.load(Ordering::Relaxed),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            fsync_micros: self.fsync_micros.load(Ordering::Relaxed),
            compactions: self.compactions.load(Ordering::Relaxed),
            last_compaction,
        }
    }

    /// The data directory (`None` for a store over an in-memory test file).
    pub(super) fn data_dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The log's encryption, if any.
    pub(super) fn cipher(&self) -> Option<Arc<Cipher>> {
        lock(&self.writer).cipher.clone()
    }

    /// The store as one compaction sees it, or `None` while another
    /// compaction runs.
    pub(super) fn compaction_access(&self) -> Option<CompactionAccess<'_>> {
        let running = self.compaction.try_lock().ok()?;
        Some(CompactionAccess {
            store: self,
            _running: running,
        })
    }

    /// Test builds: runs `look` on the index itself, so a test can see or
    /// fake its state.
    #[cfg(test)]
    pub(super) fn with_index<R>(&self, look: impl FnOnce(&mut Index) -> R) -> R {
        look(&mut write(&self.keydir).index)
    }

    /// The test's callback for compaction steps (see
    /// [`super::compaction::Step`]).
    #[cfg(test)]
    pub(super) fn step_hook(&self) -> MutexGuard<'_, Option<super::compaction::StepHook>> {
        lock(&self.step_hook)
    }
}

/// The live records of the store at one moment, pinned for a snapshot (see
/// [`super::snapshot`]): the log they are in stays readable through `file`
/// even if a compaction replaces it meanwhile.
pub(super) struct PinnedRecords {
    /// Where every live record is, in no particular order.
    pub(super) locations: Vec<Location>,
    /// Every write up to this sequence number is among them, none after.
    pub(super) sequence: u64,
    /// The log they are in.
    pub(super) file: Arc<dyn LogFile>,
    /// Its file id.
    pub(super) file_id: u32,
    /// Its encryption, if any.
    pub(super) cipher: Option<Arc<Cipher>>,
}

impl Store {
    /// Pins the live records as they are now: writers wait while the index
    /// is read (a copy of its locations, no key), readers go on. Every
    /// published write is among them, no half of a batch and no write still
    /// waiting for its fsync.
    pub(super) fn pin_live_records(&self) -> PinnedRecords {
        let writer = lock(&self.writer);
        let keydir = read(&self.keydir);
        PinnedRecords {
            locations: keydir.index.locations().collect(),
            // The pending records are the newest, one sequence number each,
            // and the only ones not in the index.
            sequence: writer.next_sequence - 1 - writer.pending.len() as u64,
            file: Arc::clone(&keydir.file),
            file_id: keydir.file_id,
            cipher: keydir.cipher.clone(),
        }
    }

    /// The key whose index entry is `location` of log `file_id` still, and
    /// its attributes, if any (a scan of the index: for damaged records only).
    pub(super) fn key_at(&self, file_id: u32, location: Location) -> Option<(Vec<u8>, Attrs)> {
        let keydir = read(&self.keydir);
        if keydir.file_id != file_id {
            return None;
        }
        let index = &keydir.index;
        let (key, _) = index.entries().find(|&(_, at)| at == location)?;
        Some((key.to_vec(), index.attrs(key)))
    }
}

/// The store as compaction sees it (see [`super::compaction`]), held by one
/// compaction at a time: where to cut the log, how far it has grown since,
/// the index to read, and the pause in which the compacted log is
/// installed ([`Paused::install_compacted`]). Compaction changes the store
/// only through that one method.
pub(super) struct CompactionAccess<'s> {
    store: &'s Store,
    _running: MutexGuard<'s, ()>,
}

/// Where compaction cuts the log, and the log it reads.
pub(super) struct LogCut {
    /// The log's end, or the first record still waiting for its group's
    /// fsync (not in the index yet, so it must move with the tail).
    pub(super) offset: u64,
    /// The last sequence number issued.
    pub(super) last_sequence: u64,
    /// The log.
    pub(super) file: Arc<dyn LogFile>,
    /// Its file id.
    pub(super) file_id: u32,
    /// Its encryption, if any.
    pub(super) cipher: Option<Arc<Cipher>>,
}

impl<'s> CompactionAccess<'s> {
    /// Where to cut the log now.
    pub(super) fn cut(&self) -> LogCut {
        let writer = lock(&self.store.writer);
        LogCut {
            offset: writer.pending.first().map_or(writer.end, |p| p.offset),
            last_sequence: writer.next_sequence - 1,
            file: Arc::clone(&writer.file),
            file_id: writer.header.file_id,
            cipher: writer.cipher.clone(),
        }
    }

    /// The log's end now: writes go on.
    pub(super) fn end(&self) -> u64 {
        lock(&self.store.writer).end
    }

    /// What `look` finds in the index as it is now.
    pub(super) fn read_index<R>(&self, look: impl FnOnce(&Index) -> R) -> R {
        look(&read(&self.store.keydir).index)
    }

    /// Waits until no group sync runs and keeps others from starting (see
    /// [`Store::exclusive_sync`]), so the log can be switched under the
    /// group's feet.
    pub(super) fn hold_group_commit(&self) -> ExclusiveSync<'s> {
        self.store.exclusive_sync()
    }

    /// Whether the store refuses writes after a failed fsync.
    pub(super) fn is_read_only(&self) -> bool {
        self.store.is_read_only()
    }

    /// Turns the store read-only, saying `reason`.
    pub(super) fn enter_read_only(&self, reason: &str) {
        self.store.enter_read_only(reason);
    }

    /// Writes the hint file for the current log (see [`Store::write_hint`]).
    pub(super) fn write_hint(&self) -> io::Result<()> {
        self.store.write_hint()
    }

    /// Counts a finished compaction, and keeps `last` for stats.
    pub(super) fn note_compaction(&self, last: LastCompaction) {
        self.store.compactions.fetch_add(1, Ordering::Relaxed);
        *lock(&self.store.last_compaction) = Some(last);
    }

    /// Calls the test's hook for compaction step `step`; see
    /// [`Store::step_hook`].
    #[cfg(test)]
    pub(super) fn step_hook(&self) -> MutexGuard<'s, Option<super::compaction::StepHook>> {
        lock(&self.store.step_hook)
    }
}

/// Writers paused and the group commit held, for compaction's switch:
/// nothing is appended or synced until this is dropped.
pub(super) struct Paused<'s> {
    // Dropped first: writers run again before the group commit resumes.
    writer: MutexGuard<'s, Writer>,
    group_commit: ExclusiveSync<'s>,
}

/// A compacted log, complete and synced, renamed over the old one: what
/// [`Paused::install_compacted`] makes the store's log.
pub(super) struct CompactedLog {
    /// The new log.
    pub(super) file: Arc<dyn LogFile>,
    /// Its header.
    pub(super) header: FileHeader,
    /// Its encryption, if any.
    pub(super) cipher: Option<Arc<Cipher>>,
    /// The old log's tail, from this offset (the cut) on...
    pub(super) tail_from: u64,
    /// ...is in the new log from this offset on, as it was.
    pub(super) tail_to: u64,
    /// The new location of every index entry, in index order.
    pub(super) locations: Vec<Location>,
    /// The keys whose damaged record was replaced by a quarantined one, and
    /// where that damaged record was.
    pub(super) quarantined: Vec<(Vec<u8>, Location)>,
}

/// What installing a compacted log leaves to compaction.
pub(super) struct Installed {
    /// The new log's end.
    pub(super) end: u64,
    /// The old log, still open: closing it can take long, so it is dropped
    /// once writers run again.
    pub(super) old_log: Arc<dyn LogFile>,
}

impl Paused<'_> {
    /// The log's end: nothing is appended while writers are paused.
    pub(super) fn end(&self) -> u64 {
        self.writer.end
    }

    /// What `look` finds in the index: it does not change while writers are
    /// paused.
    pub(super) fn read_index<R>(&self, look: impl FnOnce(&Index) -> R) -> R {
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
    pub(super) fn install_compacted(self, log: CompactedLog, rename_durable: bool) -> Installed {
        let Self {
            mut writer,
            group_commit,
        } = self;
        let store = group_commit.store;
        let shift = |offset: u64| offset - log.tail_from + log.tail_to;
        let end = shift(writer.end);
        for pending in &mut writer.pending {
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

fn sync_periodically(store: &Weak<Store>, period: Duration) {
    loop {
        thread::sleep(period);
        let Some(store) = store.upgrade() else { return };
        if store.is_read_only() {
            return;
        }
        if let Err(err) = store.sync_appended() {
            store.enter_read_only(&format!("periodic fdatasync of the log failed: {err}"));
            return;
        }
    }
}

/// What publishing a record replaced in the index: the attributes of the
/// key's previous record, if the key was in the index (`None` for a
/// tombstone, which reports nothing).
type Replaced = Option<Attrs>;

fn apply(index: &mut Index, key: &[u8], location: Option<(Location, Attrs)>) -> Replaced {
    match location {
        Some((location, attrs)) => index.insert(key, location, attrs),
        None => {
            index.remove(key);
            None
        }
    }
}

fn expect_of(op: &BatchOp<'_>) -> Expect {
    match op {
        BatchOp::Put { expect, .. } | BatchOp::Delete { expect, .. } => *expect,
    }
}

/// Reads the record of `key` at `location` into `buf` and verifies it.
fn read_record<'b>(
    source: (&dyn LogFile, u32, Option<&Cipher>),
    location: Location,
    key: &[u8],
    buf: &'b mut Vec<u8>,
) -> Result<RecordView<'b>, StoreError> {
    let (file, file_id, cipher) = source;
    let offset = location.offset;
    buf.resize(location.len as usize, 0);
    file.read_at(buf, offset).map_err(StoreError::Io)?;
    let record =
        open_record(cipher, buf, Position { file_id, offset }).map_err(|_| corrupt(offset))?;
    if record.key != key || record.header.kind != RecordKind::Put || record.header.is_damaged() {
        return Err(corrupt(offset));
    }
    Ok(record)
}

/// The error for a record that failed its check, logged loudly.
fn corrupt(offset: u64) -> StoreError {
    log::error!(
        "record at offset {offset} failed its integrity check and was not served; run `lucid check`"
    );
    StoreError::Corrupt { offset }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{FileHeader, FILE_HEADER_LEN};
    use crate::store::testing::{
        batch_put, fresh_store, put_if, set_attrs, try_put as put, MemFile,
    };

    fn empty_store(sync: SyncMode) -> (Arc<MemFile>, Arc<Store>) {
        fresh_store(MemFile::with_bytes, sync)
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
        assert!(store.delete(b"a", &mut buf, Expect::Any).unwrap());
        assert!(!store.delete(b"a", &mut buf, Expect::Any).unwrap());
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
            store.delete(b"kept", &mut buf, Expect::Any),
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
            Attrs::default(),
        );
        let recovered = Recovered {
            index,
            end: bytes.len() as u64,
            next_sequence: 2,
            marked_end: FILE_HEADER_LEN as u64,
            header: FileHeader::new(0, 0),
            dir: None,
            cipher: None,
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

    #[test]
    fn a_batch_applies_all_or_nothing() {
        let (_, store) = empty_store(SyncMode::Always);
        put(&store, "a", b"old-a").unwrap();
        let mut buf = Vec::new();
        let version_a = store.get(b"a", &mut buf).unwrap().unwrap().sequence;
        let ops = [
            batch_put("a", b"new-a"),
            batch_put("b", b"new-b"),
            BatchOp::Delete {
                key: b"missing",
                expect: Expect::Any,
            },
        ];
        let results = store.batch(&ops, &mut buf).unwrap();
        assert!(matches!(
            results[0],
            BatchResult::Put(Written { outcome: WriteOutcome::Updated, version }) if version > version_a
        ));
        assert!(matches!(
            results[1],
            BatchResult::Put(Written {
                outcome: WriteOutcome::Created,
                ..
            })
        ));
        assert_eq!(results[2], BatchResult::NotFound);
        assert_eq!(get(&store, "b").as_deref(), Some(&b"new-b"[..]));
        // A failing condition on the last op refuses the whole batch.
        let ops = [
            batch_put("a", b"newer-a"),
            BatchOp::Delete {
                key: b"b",
                expect: Expect::Version(1),
            },
        ];
        let err = store.batch(&ops, &mut buf).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(matches!(err.error, StoreError::PreconditionFailed));
        assert_eq!(get(&store, "a").as_deref(), Some(&b"new-a"[..]));
        assert_eq!(get(&store, "b").as_deref(), Some(&b"new-b"[..]));
    }

    #[test]
    fn locked_keys_refuse_writes_until_unlocked() {
        let (_, store) = empty_store(SyncMode::Never);
        put(&store, "k", b"v").unwrap();
        let locked = Attrs {
            locked: true,
            expires_at_ms: 0,
            damaged: false,
        };
        set_attrs(&store, "k", locked);
        assert!(matches!(put(&store, "k", b"w"), Err(StoreError::Locked)));
        let mut buf = Vec::new();
        assert!(matches!(
            store.delete(b"k", &mut buf, Expect::Any),
            Err(StoreError::Locked)
        ));
        let err = store.batch(&[batch_put("k", b"w")], &mut buf).unwrap_err();
        assert!(matches!(err.error, StoreError::Locked));
        assert_eq!(get(&store, "k").as_deref(), Some(&b"v"[..]));
        assert!(store.get(b"k", &mut buf).unwrap().unwrap().locked);
        set_attrs(&store, "k", Attrs::default());
        assert_eq!(put(&store, "k", b"w").unwrap(), WriteOutcome::Updated);
    }

    #[test]
    fn a_put_reports_created_or_updated_by_liveness_in_every_sync_mode() {
        for sync in [SyncMode::Always, SyncMode::Never] {
            let (_, store) = empty_store(sync);
            assert_eq!(put(&store, "k", b"1").unwrap(), WriteOutcome::Created);
            assert_eq!(put(&store, "k", b"2").unwrap(), WriteOutcome::Updated);
            let attrs = |locked, expires_at_ms| Attrs {
                locked,
                expires_at_ms,
                damaged: false,
            };
            // Expired: the key reads as missing, so a put creates it again.
            set_attrs(&store, "k", attrs(false, now_ms() - 1));
            assert_eq!(put(&store, "k", b"3").unwrap(), WriteOutcome::Created);
            set_attrs(&store, "k", attrs(false, now_ms() + 3_600_000));
            assert_eq!(put(&store, "k", b"4").unwrap(), WriteOutcome::Updated);
            // Locked and live: refused. Locked but expired: gone, so free.
            set_attrs(&store, "k", attrs(true, 0));
            assert!(matches!(put(&store, "k", b"5"), Err(StoreError::Locked)));
            set_attrs(&store, "k", attrs(true, now_ms() - 1));
            assert_eq!(put(&store, "k", b"6").unwrap(), WriteOutcome::Created);
            assert_eq!(get(&store, "k").as_deref(), Some(&b"6"[..]));
            let mut buf = Vec::new();
            assert!(store.delete(b"k", &mut buf, Expect::Any).unwrap());
            assert_eq!(put(&store, "k", b"7").unwrap(), WriteOutcome::Created);
        }
    }

    #[test]
    fn conditions_compare_versions_of_published_and_pending_records() {
        for sync in [SyncMode::Always, SyncMode::Never] {
            let (_, store) = empty_store(sync);
            let put_if = |expect| put_if(&store, "k", b"v", expect);
            assert!(matches!(
                put_if(Expect::Exists),
                Err(StoreError::PreconditionFailed)
            ));
            let first = put_if(Expect::Absent).unwrap().version;
            assert!(matches!(
                put_if(Expect::Absent),
                Err(StoreError::PreconditionFailed)
            ));
            assert!(matches!(
                put_if(Expect::Version(first + 7)),
                Err(StoreError::PreconditionFailed)
            ));
            let second = put_if(Expect::Version(first)).unwrap().version;
            assert!(second > first);
            assert!(matches!(
                put_if(Expect::NotVersion(second)),
                Err(StoreError::PreconditionFailed)
            ));
            assert!(put_if(Expect::NotVersion(first)).is_ok());
        }
    }

    #[test]
    fn expired_keys_read_as_missing_and_the_sweep_writes_tombstones() {
        let (_, store) = empty_store(SyncMode::Always);
        put(&store, "short", b"1").unwrap();
        put(&store, "long", b"2").unwrap();
        let now = now_ms();
        let expiring = |at| Attrs {
            locked: false,
            expires_at_ms: at,
            damaged: false,
        };
        set_attrs(&store, "short", expiring(now - 1));
        set_attrs(&store, "long", expiring(now + 3_600_000));
        assert_eq!(get(&store, "short"), None);
        assert_eq!(get(&store, "long").as_deref(), Some(&b"2"[..]));
        let page = store.list(b"", None, 10);
        let keys: Vec<_> = page.entries.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, [&b"long"[..]]);
        let mut buf = Vec::new();
        assert!(!store.delete(b"short", &mut buf, Expect::Any).unwrap());
        let subscription = store.events().subscribe(b"", None).unwrap();
        assert_eq!(store.expire_due(now_ms(), 100).unwrap(), 1);
        assert_eq!(store.expire_due(now_ms(), 100).unwrap(), 0);
        assert_eq!(store.stats().keys, 1);
        let event = subscription.events.try_recv().unwrap();
        assert_eq!((event.op, event.key()), (EventOp::Expire, "short"));
        // A key rewritten after its expiry was read is left alone.
        set_attrs(&store, "long", expiring(now_ms() + 3_600_000));
        assert_eq!(store.expire_due(now_ms(), 100).unwrap(), 0);
    }

    #[test]
    fn updates_are_atomic_read_modify_writes() {
        let (_, store) = empty_store(SyncMode::Always);
        put(&store, "n", b"0").unwrap();
        thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    let mut buf = Vec::new();
                    for _ in 0..25 {
                        store
                            .update(b"n", Expect::Any, &mut buf, |current, buf| {
                                let n: u64 =
                                    std::str::from_utf8(current.value).unwrap().parse().unwrap();
                                let meta = RecordMeta::put(current.key, current.content_type, 0);
                                RecordBuilder::begin(buf, &meta);
                                buf.extend_from_slice((n + 1).to_string().as_bytes());
                                Ok::<_, StoreError>(Some(EventOp::Put))
                            })
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(get(&store, "n").as_deref(), Some(&b"200"[..]));
        let mut buf = Vec::new();
        let missing = store.update(b"nope", Expect::Any, &mut buf, |_, _| {
            Ok::<_, StoreError>(None)
        });
        assert!(matches!(missing, Err(StoreError::NotFound)));
    }

    #[test]
    fn every_visible_change_is_published_once_in_version_order() {
        for sync in [SyncMode::Always, SyncMode::Never] {
            let (_, store) = empty_store(sync);
            let subscription = store.events().subscribe(b"", None).unwrap();
            put(&store, "a", b"1").unwrap();
            let mut buf = Vec::new();
            store
                .batch(&[batch_put("b", b"2"), batch_put("c", b"3")], &mut buf)
                .unwrap();
            store.delete(b"a", &mut buf, Expect::Any).unwrap();
            let delete_b = BatchOp::Delete {
                key: b"b",
                expect: Expect::Any,
            };
            store.batch(&[delete_b], &mut buf).unwrap();
            let events: Vec<_> = subscription.events.try_iter().collect();
            let seen: Vec<_> = events.iter().map(|e| (e.op, e.key())).collect();
            assert_eq!(
                seen,
                [
                    (EventOp::Put, "a"),
                    (EventOp::Put, "b"),
                    (EventOp::Put, "c"),
                    (EventOp::Delete, "a"),
                    (EventOp::Delete, "b")
                ]
            );
            assert!(events
                .windows(2)
                .all(|pair| pair[0].version < pair[1].version));
            assert_eq!(events[0].value(), Some("1"));
        }
    }

    #[test]
    fn readers_never_see_half_a_batch() {
        for sync in [SyncMode::Never, SyncMode::Always] {
            let (_, store) = empty_store(sync);
            put(&store, "a", b"0").unwrap();
            put(&store, "b", b"0").unwrap();
            let done = std::sync::atomic::AtomicBool::new(false);
            let read = |key: &str| -> u32 {
                let value = get(&store, key).unwrap();
                std::str::from_utf8(&value).unwrap().parse().unwrap()
            };
            thread::scope(|scope| {
                scope.spawn(|| {
                    let mut buf = Vec::new();
                    for i in 1..=2000u32 {
                        let value = i.to_string();
                        let ops = [
                            batch_put("a", value.as_bytes()),
                            batch_put("b", value.as_bytes()),
                        ];
                        store.batch(&ops, &mut buf).unwrap();
                    }
                    done.store(true, Ordering::SeqCst);
                });
                // "a" is applied before "b": reading "b" after "a" must find
                // at least "a"'s batch, never an older one.
                while !done.load(Ordering::SeqCst) {
                    let a = read("a");
                    let b = read("b");
                    assert!(b >= a, "{sync:?}: read a={a} then b={b}: half a batch");
                }
            });
        }
    }
}
