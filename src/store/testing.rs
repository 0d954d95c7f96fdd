//! Test doubles for the disk: an in-memory [`LogFile`] that can be told to
//! fail its next appends or syncs, so every error path of the engine can be
//! exercised on purpose; [`CrashFile`], which also knows what an fsync made
//! durable, so a test can cut the power, kill the process at any write, or
//! fail any call; model-based helpers that drive a store and check it
//! against a `BTreeMap`; and shorthands that apply a mutation and wait for
//! its ticket, as a server does before it answers.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use std::collections::BTreeMap;

use proptest::prelude::RngExt;
use proptest::test_runner::TestRng;

use super::engine::mutation::{
    Applied, BatchOp, BatchResult, Effect, Mutation, MutationError, PutBuffer, WriteOutcome,
    Written,
};
use super::engine::{Expect, Recovered, Store, StoreError, SyncMode};
use super::file::LogFile;
use super::index::{Attrs, Index};
use super::record::{FileHeader, RecordBuilder, RecordKind, RecordMeta, FILE_HEADER_LEN};
use crate::watch::EventOp;

/// An in-memory log file with injectable failures.
#[derive(Default)]
pub struct MemFile {
    bytes: Mutex<Vec<u8>>,
    /// The next this-many appends fail with ENOSPC after writing half their bytes.
    failing_appends: AtomicU32,
    /// The next this-many syncs fail with EIO.
    failing_syncs: AtomicU32,
    /// While true, syncs wait (to line up concurrent writers behind one).
    syncs_held: Mutex<bool>,
    syncs_released: Condvar,
    /// Number of successful syncs so far.
    pub syncs: AtomicUsize,
    /// The largest single read so far, in bytes.
    pub largest_read: AtomicUsize,
}

impl MemFile {
    /// A file holding `bytes`.
    pub fn with_bytes(bytes: &[u8]) -> Self {
        Self {
            bytes: Mutex::new(bytes.to_vec()),
            ..Self::default()
        }
    }

    /// Copy of the current contents.
    pub fn contents(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }

    /// Makes the next `count` appends fail as a full disk does: part of the
    /// data lands, then ENOSPC.
    pub fn fail_appends(&self, count: u32) {
        self.failing_appends.store(count, Ordering::SeqCst);
    }

    /// Makes the next `count` syncs fail with EIO.
    pub fn fail_syncs(&self, count: u32) {
        self.failing_syncs.store(count, Ordering::SeqCst);
    }

    /// Makes syncs block until [`release_syncs`](Self::release_syncs).
    pub fn hold_syncs(&self) {
        *self.syncs_held.lock().unwrap() = true;
    }

    /// Lets held syncs proceed.
    pub fn release_syncs(&self) {
        *self.syncs_held.lock().unwrap() = false;
        self.syncs_released.notify_all();
    }

    fn take_failure(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl LogFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.largest_read.fetch_max(buf.len(), Ordering::SeqCst);
        read_from(&self.bytes.lock().unwrap(), buf, offset)
    }

    fn append(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut bytes = self.bytes.lock().unwrap();
        assert_eq!(offset, bytes.len() as u64, "appends go at the end");
        if Self::take_failure(&self.failing_appends) {
            bytes.extend_from_slice(&data[..data.len() / 2]);
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        bytes.extend_from_slice(data);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut held = self.syncs_held.lock().unwrap();
        while *held {
            held = self.syncs_released.wait(held).unwrap();
        }
        drop(held);
        if Self::take_failure(&self.failing_syncs) {
            return Err(io::Error::other("injected fsync failure (EIO)"));
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.bytes.lock().unwrap().len() as u64)
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.bytes.lock().unwrap().truncate(len as usize);
        Ok(())
    }
}

/// Fills `buf` from `bytes` at `offset`, as `read_at` does.
fn read_from(bytes: &[u8], buf: &mut [u8], offset: u64) -> io::Result<()> {
    let start = offset as usize;
    let source = bytes
        .get(start..start + buf.len())
        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    buf.copy_from_slice(source);
    Ok(())
}

/// What the store should hold.
pub type Model = BTreeMap<String, Vec<u8>>;

/// Puts `value` (as text/plain) under `key`.
pub fn try_put(store: &Store, key: &str, value: &[u8]) -> Result<WriteOutcome, StoreError> {
    put_if(store, key, value, Expect::Any).map(|written| written.outcome)
}

/// Puts `value` (as text/plain) under `key` if the key meets `expect`.
pub fn put_if(
    store: &Store,
    key: &str,
    value: &[u8],
    expect: Expect,
) -> Result<Written, StoreError> {
    let applied = put_unsynced(store, key, value, expect).map_err(|err| err.error)?;
    store.wait_for(applied.ticket)?;
    match applied.effect {
        Effect::Put(written) => Ok(written),
        other => panic!("a put did {other:?}"),
    }
}

/// Puts `value` (as text/plain) under `key` if the key meets `expect`,
/// without waiting for its ticket.
pub fn put_unsynced(
    store: &Store,
    key: &str,
    value: &[u8],
    expect: Expect,
) -> Result<Applied, MutationError> {
    let mut buf = Vec::new();
    let mut record = PutBuffer::new(&mut buf, key.as_bytes(), b"text/plain", 0, value.len());
    record.push_value(value);
    store.apply(Mutation::Put { record, expect }, &mut Vec::new())
}

/// Shorthands for tests: a mutation applied, and its ticket waited on.
impl Store {
    /// Deletes `key` if it meets `expect`; `false` if it does not exist.
    pub fn delete(
        &self,
        key: &[u8],
        buf: &mut Vec<u8>,
        expect: Expect,
    ) -> Result<bool, StoreError> {
        match self.apply(Mutation::Delete { key, expect }, buf) {
            Ok(applied) => self.wait_for(applied.ticket).map(|()| true),
            Err(MutationError {
                error: StoreError::NotFound,
                ..
            }) => Ok(false),
            Err(err) => Err(err.error),
        }
    }

    /// Applies every operation of `ops` or none.
    pub fn batch(
        &self,
        ops: &[BatchOp<'_>],
        buf: &mut Vec<u8>,
    ) -> Result<Vec<BatchResult>, MutationError> {
        let applied = self.apply(Mutation::Batch(ops), buf)?;
        self.wait_for(applied.ticket)?;
        Ok(applied.effect.into_batch_results())
    }
}

/// Puts through the store and into the model.
pub fn put(store: &Store, model: &mut Model, key: &str, value: &[u8]) {
    try_put(store, key, value).unwrap();
    model.insert(key.to_owned(), value.to_vec());
}

/// Deletes through the store and from the model.
pub fn delete(store: &Store, model: &mut Model, key: &str) {
    assert!(store
        .delete(key.as_bytes(), &mut Vec::new(), Expect::Any)
        .unwrap());
    model.remove(key);
}

/// 50 keys overwritten 5 times, every fifth deleted.
pub fn churn(store: &Store, model: &mut Model) {
    for round in 0..5 {
        for k in 0..50 {
            put(
                store,
                model,
                &format!("key-{k}"),
                format!("round {round} of key {k}").as_bytes(),
            );
        }
    }
    for k in (0..50).step_by(5) {
        delete(store, model, &format!("key-{k}"));
    }
}

/// Checks that the store holds exactly the model.
pub fn assert_matches(store: &Store, model: &Model) {
    assert_eq!(store.stats().keys, model.len());
    for (key, value) in model {
        let mut buf = Vec::new();
        let got = store.get(key.as_bytes(), &mut buf).unwrap();
        assert_eq!(got.map(|v| v.value), Some(&value[..]), "key {key}");
    }
    for k in (0..50).step_by(5) {
        let key = format!("key-{k}");
        if !model.contains_key(&key) {
            assert!(store
                .get(key.as_bytes(), &mut Vec::new())
                .unwrap()
                .is_none());
        }
    }
}

/// A batch put of `value` (as text/plain) under `key`, without condition.
pub fn batch_put<'a>(key: &'a str, value: &'a [u8]) -> BatchOp<'a> {
    BatchOp::Put {
        key: key.as_bytes(),
        content_type: b"text/plain",
        value,
        expires_at_ms: 0,
        locked: false,
        expect: Expect::Any,
    }
}

/// Rewrites `key` with its value unchanged and the given lock and expiry,
/// whatever they were (no rule of [`Mutation::Change`] applies).
pub fn set_attrs(store: &Store, key: &str, attrs: Attrs) {
    let mut buf = Vec::new();
    let (_, covered) = store
        .update(key.as_bytes(), Expect::Any, &mut buf, |current, buf| {
            let meta = RecordMeta {
                kind: RecordKind::Put,
                key: current.key,
                content_type: current.content_type,
                expires_at_ms: attrs.expires_at_ms,
                locked: attrs.locked,
            };
            RecordBuilder::begin(buf, &meta);
            buf.extend_from_slice(current.value);
            Ok::<_, StoreError>(Some(EventOp::Put))
        })
        .unwrap();
    store.wait_for(store.ticket(covered)).unwrap();
}

/// One kind of [`LogFile`] call, to aim an injected fault at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    /// [`LogFile::read_at`].
    Read,
    /// [`LogFile::append`].
    Append,
    /// [`LogFile::sync`].
    Sync,
    /// [`LogFile::truncate`].
    Truncate,
}

/// An I/O failure a [`CrashFile`] injects into its next call of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// An append that fills the disk: the first `landed` bytes are written
    /// (clamped to the data's length), then ENOSPC.
    NoSpace {
        /// Bytes written before the error.
        landed: usize,
    },
    /// A short write: the first `landed` bytes are written, then EIO.
    ShortWrite {
        /// Bytes written before the error.
        landed: usize,
    },
    /// EIO with no effect (any call).
    Eio,
}

/// What a power cut keeps of the bytes written since the last fsync (the
/// durable bytes always survive), in the spirit of SQLite's crash VFS and
/// LazyFS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerCut {
    /// Nothing: only fsynced bytes survive.
    LoseAll,
    /// Everything: the OS had written it all back.
    KeepAll,
    /// A random prefix of the unsynced bytes, cut at any byte.
    Prefix,
    /// Every unsynced write but the last, which is torn at a random byte.
    TearLast,
    /// Out-of-order writeback: the file keeps a random length, and each 4 KiB
    /// page past the durable bytes independently holds what was written or
    /// zeros (a later write can survive an earlier one).
    Pages,
}

impl PowerCut {
    /// Every kind of power cut.
    pub const ALL: [PowerCut; 5] = [
        Self::LoseAll,
        Self::KeepAll,
        Self::Prefix,
        Self::TearLast,
        Self::Pages,
    ];
}

/// The page size of [`PowerCut::Pages`].
const PAGE: usize = 4096;

/// A [`LogFile`] in memory that knows which bytes an fsync made durable, so
/// a test can cut the power ([`after_power_cut`](Self::after_power_cut)),
/// kill the process at its n-th write or sync ([`die_after`](Self::die_after)),
/// or make any call fail ([`inject`](Self::inject)).
///
/// Appends extend the file; `truncate` is durable at once, as
/// [`DiskFile::truncate`](super::file::DiskFile) syncs the whole file.
#[derive(Default)]
pub struct CrashFile {
    disk: Mutex<Disk>,
}

#[derive(Default)]
struct Disk {
    /// Every byte written, as the process sees them (the page cache).
    bytes: Vec<u8>,
    /// Length of the prefix of `bytes` made durable by an fsync.
    durable: usize,
    /// End offsets of the appends since then, in order.
    unsynced_ends: Vec<usize>,
    /// Appends and syncs left before the process dies; `None`: never.
    dies_in: Option<u64>,
    /// Whether the process died: every later call fails and changes nothing.
    dead: bool,
    /// Faults waiting for their next call.
    faults: Vec<(Call, Fault)>,
    /// Syncs that reported success.
    syncs: u64,
    /// Syncs called after one had failed.
    syncs_after_failure: u64,
    /// Whether a sync has failed.
    sync_failed: bool,
}

impl CrashFile {
    /// A file holding `bytes`, all of them durable.
    pub fn with_bytes(bytes: &[u8]) -> Self {
        let disk = Disk {
            bytes: bytes.to_vec(),
            durable: bytes.len(),
            ..Disk::default()
        };
        Self {
            disk: Mutex::new(disk),
        }
    }

    /// Makes the process die at the `calls`-th append or sync from now
    /// (0: the next one): that call and every later one fail with EIO and
    /// change nothing.
    pub fn die_after(&self, calls: u64) {
        self.disk.lock().unwrap().dies_in = Some(calls);
    }

    /// Whether the process has died.
    pub fn is_dead(&self) -> bool {
        self.disk.lock().unwrap().dead
    }

    /// Makes the next `call` fail with `fault`.
    pub fn inject(&self, call: Call, fault: Fault) {
        self.disk.lock().unwrap().faults.push((call, fault));
    }

    /// Forgets the faults still waiting for their call.
    pub fn clear_faults(&self) {
        self.disk.lock().unwrap().faults.clear();
    }

    /// Whether an injected fault is still waiting for its call.
    pub fn fault_pending(&self) -> bool {
        !self.disk.lock().unwrap().faults.is_empty()
    }

    /// Every byte written, as the process sees the file.
    pub fn contents(&self) -> Vec<u8> {
        self.disk.lock().unwrap().bytes.clone()
    }

    /// Length of the file as the process sees it.
    pub fn written_len(&self) -> usize {
        self.disk.lock().unwrap().bytes.len()
    }

    /// Length of the durable prefix.
    pub fn durable_len(&self) -> usize {
        self.disk.lock().unwrap().durable
    }

    /// Syncs that reported success.
    pub fn syncs(&self) -> u64 {
        self.disk.lock().unwrap().syncs
    }

    /// Syncs called after one had failed (a retry that could falsely
    /// succeed).
    pub fn syncs_after_failure(&self) -> u64 {
        self.disk.lock().unwrap().syncs_after_failure
    }

    /// The file as a disk would hold it after a power cut of kind `cut`
    /// now, random choices drawn from `rng`.
    pub fn after_power_cut(&self, cut: PowerCut, rng: &mut TestRng) -> Vec<u8> {
        let disk = self.disk.lock().unwrap();
        let (durable, written) = (disk.durable, disk.bytes.len());
        let keep = match cut {
            PowerCut::LoseAll => durable,
            PowerCut::KeepAll => written,
            PowerCut::Prefix | PowerCut::Pages => rng.random_range(durable..=written),
            PowerCut::TearLast => match disk.unsynced_ends.len() {
                0 => durable,
                n => {
                    let start = n.checked_sub(2).map_or(durable, |i| disk.unsynced_ends[i]);
                    rng.random_range(start..disk.unsynced_ends[n - 1])
                }
            },
        };
        let mut image = disk.bytes[..keep].to_vec();
        if cut == PowerCut::Pages {
            let first_page = durable / PAGE;
            for page in first_page..keep.div_ceil(PAGE) {
                if rng.random_bool(0.5) {
                    let from = (page * PAGE).max(durable);
                    let to = ((page + 1) * PAGE).min(keep);
                    image[from..to].fill(0);
                }
            }
        }
        image
    }

    /// Takes the fault aimed at `call`, if any.
    fn take_fault(disk: &mut Disk, call: Call) -> Option<Fault> {
        let at = disk.faults.iter().position(|(c, _)| *c == call)?;
        Some(disk.faults.remove(at).1)
    }

    /// Counts an append or sync towards the death of the process; true if
    /// it is dead now.
    fn dies(disk: &mut Disk) -> bool {
        match disk.dies_in {
            Some(0) => disk.dead = true,
            Some(n) => disk.dies_in = Some(n - 1),
            None => {}
        }
        disk.dead
    }
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} failure (EIO)"))
}

impl LogFile for CrashFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        if disk.dead || Self::take_fault(&mut disk, Call::Read).is_some() {
            return Err(eio("read"));
        }
        read_from(&disk.bytes, buf, offset)
    }

    fn append(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        if Self::dies(&mut disk) {
            return Err(eio("append"));
        }
        assert_eq!(offset, disk.bytes.len() as u64, "appends go at the end");
        let (landed, error) = match Self::take_fault(&mut disk, Call::Append) {
            None => (data.len(), None),
            Some(Fault::NoSpace { landed }) => (landed, Some(io::ErrorKind::StorageFull.into())),
            Some(Fault::ShortWrite { landed }) => (landed, Some(eio("short write"))),
            Some(Fault::Eio) => (0, Some(eio("append"))),
        };
        let landed = landed.min(data.len());
        disk.bytes.extend_from_slice(&data[..landed]);
        if landed > 0 {
            let end = disk.bytes.len();
            disk.unsynced_ends.push(end);
        }
        error.map_or(Ok(()), Err)
    }

    fn sync(&self) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        if disk.sync_failed {
            disk.syncs_after_failure += 1;
        }
        if Self::dies(&mut disk) || Self::take_fault(&mut disk, Call::Sync).is_some() {
            disk.sync_failed = true;
            return Err(eio("fsync"));
        }
        disk.durable = disk.bytes.len();
        disk.unsynced_ends.clear();
        disk.syncs += 1;
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.disk.lock().unwrap().bytes.len() as u64)
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        if disk.dead || Self::take_fault(&mut disk, Call::Truncate).is_some() {
            return Err(eio("truncate"));
        }
        disk.bytes.truncate(len as usize);
        disk.durable = disk.bytes.len();
        disk.unsynced_ends.clear();
        Ok(())
    }
}

/// A store with an empty log over `file`, as a fresh data directory gives.
pub fn fresh_store<F: LogFile + 'static>(
    with_bytes: impl FnOnce(&[u8]) -> F,
    sync: SyncMode,
) -> (Arc<F>, Arc<Store>) {
    let header = FileHeader::new(0, 0);
    let file = Arc::new(with_bytes(&header.encode()));
    let recovered = Recovered {
        index: Index::default(),
        end: FILE_HEADER_LEN as u64,
        next_sequence: 1,
        marked_end: FILE_HEADER_LEN as u64,
        header,
        dir: None,
        cipher: None,
    };
    let store = Store::new(file.clone(), recovered, sync);
    (file, store)
}

/// Adds one to the decimal counter under `key` (a value that is not a
/// counter counts as 0), as PATCH `increment` does.
pub fn increment(store: &Store, key: &str) -> Result<u64, StoreError> {
    let mut buf = Vec::new();
    let (version, covered) =
        store.update(key.as_bytes(), Expect::Any, &mut buf, |current, buf| {
            let meta = RecordMeta {
                kind: RecordKind::Put,
                key: current.key,
                content_type: current.content_type,
                expires_at_ms: current.attrs.expires_at_ms,
                locked: current.attrs.locked,
            };
            RecordBuilder::begin(buf, &meta);
            buf.extend_from_slice(incremented(current.value).as_bytes());
            Ok::<_, StoreError>(Some(EventOp::Put))
        })?;
    store.wait_for(store.ticket(covered))?;
    Ok(version)
}

/// The decimal counter `value` plus one (a value that is not a counter
/// counts as 0).
pub fn incremented(value: &[u8]) -> String {
    let n: u64 = std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (n + 1).to_string()
}
