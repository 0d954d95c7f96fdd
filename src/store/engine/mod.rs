//! The running store: reads through the index, and appends through one
//! writer. Its state (the index, the writer, the group commit) is private to
//! this module; each concern is a submodule that reaches it from here:
//!
//! * `read`: values, listings, key metadata and pages of every key held,
//!   verified before served;
//! * [`mutation`]: what each write does (the one write API, [`Store::apply`]);
//! * `append`: the append path every write goes through;
//! * [`commit`]: when a write is durable (tickets, group commit, markers);
//! * `damage`: damaged records met after a start;
//! * `pending`: appended records waiting for their fsync, found by key;
//! * `compaction_access`: the narrow access compaction gets, and the one
//!   method that switches the store to a compacted log;
//! * `snapshot_access` and `replica_access`: the narrow doors of snapshots
//!   and of replication;
//! * [`retention`]: holds on recent changes that compaction must keep.
//!
//! # Write path
//!
//! Under the writer lock, a write (see [`mutation`]) decides
//! created/updated (or "missing" for a delete), then `Store::append`
//! stamps the next sequence number and the time and appends the record at
//! the end of the log. If the append fails, the log is cut back to where it
//! was, so no partial record is left behind. The record is then registered:
//!
//! * `sync: always`: it waits in `pending` until an fdatasync covers it, and
//!   only then is it published to the index and the change feed: readers
//!   never see a value that a power cut could still take back.
//! * `interval` and `never`: it is published at once.
//!
//! The write returns once appended, with a [`Ticket`](commit::Ticket)
//! for its caller to wait on before acknowledging it; group commit and
//! durability are [`commit`]'s.
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
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use super::crypt::Cipher;
use super::file::LogFile;
use super::hint::{self, Coverage};
use super::index::{Attrs, Index, Location};
use super::record::{FileHeader, FILE_HEADER_LEN};
use super::stats::{LastCompaction, StoreStats};
use crate::locks::{lock, read};
use crate::watch::{Event, EventBus};
use pending::PendingRecords;

mod append;
pub mod commit;
mod compaction_access;
mod damage;
pub mod mutation;
mod pending;
mod read;
mod replica_access;
pub mod retention;
mod snapshot_access;

pub(super) use compaction_access::{CompactedLog, CompactionAccess, Installed, LogCut, Paused};
pub(super) use read::whole_read_buffer;
pub use read::{Sendable, ValueInLog, SENT_FROM_LOG_OVER};
pub(super) use replica_access::LogEnd;

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
    /// The key to change does not exist.
    NotFound,
    /// The key to lock is locked already.
    AlreadyLocked,
    /// The key to unlock is not locked.
    NotLocked,
    /// The value to increment or decrement is not a number.
    NotANumber,
    /// An increment's or decrement's result does not fit (see
    /// [`Number`](mutation::Number)).
    Overflow,
    /// The write is durable here, but fewer followers than
    /// `replication.min_acks` confirmed it in time: it may or may not
    /// survive a failover.
    NotReplicated {
        /// Followers that had to confirm it.
        required: usize,
        /// How long they were waited for.
        timeout_ms: u64,
    },
    /// A replicated record's sequence number is not above the log's last
    /// one: it arrived out of order.
    OutOfOrder {
        /// The record's (first) sequence number.
        sequence: u64,
        /// The log's last sequence number.
        last: u64,
    },
    /// A value to be read whole did not get the memory it needs (see
    /// [`Store::get_sendable`]); nothing was read.
    NoRoom {
        /// The bytes it needed.
        needed: usize,
    },
}

impl StoreError {
    /// The same failure, for another write it befell (a group's writes
    /// share their fsync's or their followers' fate). An I/O error keeps
    /// its kind and message.
    pub fn again(&self) -> Self {
        match self {
            Self::ReadOnly => Self::ReadOnly,
            Self::Io(err) => Self::Io(io::Error::new(err.kind(), err.to_string())),
            Self::Corrupt { offset } => Self::Corrupt { offset: *offset },
            Self::Locked => Self::Locked,
            Self::PreconditionFailed => Self::PreconditionFailed,
            Self::NotFound => Self::NotFound,
            Self::AlreadyLocked => Self::AlreadyLocked,
            Self::NotLocked => Self::NotLocked,
            Self::NotANumber => Self::NotANumber,
            Self::Overflow => Self::Overflow,
            Self::NotReplicated {
                required,
                timeout_ms,
            } => Self::NotReplicated {
                required: *required,
                timeout_ms: *timeout_ms,
            },
            Self::OutOfOrder { sequence, last } => Self::OutOfOrder {
                sequence: *sequence,
                last: *last,
            },
            Self::NoRoom { needed } => Self::NoRoom { needed: *needed },
        }
    }
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
            Self::AlreadyLocked => f.write_str("the key is locked already"),
            Self::NotLocked => f.write_str("the key is not locked"),
            Self::NotANumber => f.write_str("the value is not a number"),
            Self::Overflow => f.write_str("the result does not fit"),
            Self::NotReplicated {
                required,
                timeout_ms,
            } => write!(
                f,
                "{required} followers did not confirm the write within {timeout_ms} ms"
            ),
            Self::OutOfOrder { sequence, last } => write!(
                f,
                "a replicated record with sequence number {sequence} arrived after {last}"
            ),
            Self::NoRoom { needed } => {
                write!(f, "no room in memory for a value of {needed} bytes")
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
    pending: PendingRecords,
    /// The log's encryption, if any.
    cipher: Option<Arc<Cipher>>,
    /// Reused buffer for sealing envelopes (encrypted logs).
    envelope: Vec<u8>,
}

impl Writer {
    /// The latest not-yet-published write of `key`, if any: `Some(None)`
    /// for a tombstone.
    fn pending_state(&self, key: &[u8]) -> Option<Option<KeyState>> {
        self.pending.newest_of(key).map(|p| {
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
    /// Signalled (with `writer`) whenever the log grows or is replaced, for
    /// replication streams waiting at its end.
    appended: Condvar,
    /// On a primary with `replication.min_acks`: the followers whose
    /// confirmation every acknowledgement also waits for.
    follower_acks: std::sync::OnceLock<Arc<dyn commit::FollowerAcks>>,
    /// Holds on the changes after a sequence number (id, sequence), see
    /// [`retention`].
    holds: Mutex<Vec<(u64, u64)>>,
    commit: Mutex<CommitState>,
    commit_done: Condvar,
    sync: SyncMode,
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
                pending: PendingRecords::default(),
                cipher: recovered.cipher,
                envelope: Vec::new(),
            }),
            appended: Condvar::new(),
            follower_acks: std::sync::OnceLock::new(),
            holds: Mutex::new(Vec::new()),
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
            damaged_records: std::sync::atomic::AtomicU64::new(0),
            last_compaction: Mutex::new(None),
            #[cfg(test)]
            step_hook: Mutex::new(None),
            events: EventBus::new(recovered.next_sequence - 1),
            _dir_lock: dir_lock,
        });
        if let SyncMode::Interval(period) = sync {
            store.sync_periodically(period);
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
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;
    use crate::clock::now_ms;
    use crate::store::engine::mutation::{BatchOp, BatchResult, WriteOutcome, Written};
    use crate::store::record::{FileHeader, RecordBuilder, RecordMeta, FILE_HEADER_LEN};
    use crate::store::testing::{
        batch_put, fresh_store, put_if, set_attrs, try_put as put, MemFile,
    };
    use crate::watch::EventOp;

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
                        let (_, covered) = store
                            .update(b"n", Expect::Any, &mut buf, |current, buf| {
                                let n: u64 =
                                    std::str::from_utf8(current.value).unwrap().parse().unwrap();
                                let meta = RecordMeta::put(current.key, current.content_type, 0);
                                RecordBuilder::begin(buf, &meta);
                                buf.extend_from_slice((n + 1).to_string().as_bytes());
                                Ok::<_, StoreError>(Some(EventOp::Put))
                            })
                            .unwrap();
                        store.wait_for(store.ticket(covered)).unwrap();
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
