//! Test doubles for the disk: an in-memory [`LogFile`] that can be told to
//! fail its next appends or syncs, so every error path of the engine can be
//! exercised on purpose; and model-based helpers that drive a store and
//! check it against a `BTreeMap`.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use std::collections::BTreeMap;

use super::engine::{BatchOp, Expect, Store, StoreError, WriteOutcome};
use super::file::LogFile;
use super::index::Attrs;
use super::record::{RecordBuilder, RecordKind, RecordMeta};
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
        let bytes = self.bytes.lock().unwrap();
        let start = offset as usize;
        let source = bytes
            .get(start..start + buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(source);
        Ok(())
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

/// What the store should hold.
pub type Model = BTreeMap<String, Vec<u8>>;

/// Puts `value` (as text/plain) under `key`.
pub fn try_put(store: &Store, key: &str, value: &[u8]) -> Result<WriteOutcome, StoreError> {
    let mut buf = Vec::new();
    let meta = RecordMeta {
        kind: RecordKind::Put,
        key: key.as_bytes(),
        content_type: b"text/plain",
        expires_at_ms: 0,
        locked: false,
    };
    RecordBuilder::begin(&mut buf, &meta);
    buf.extend_from_slice(value);
    store
        .put(&mut buf, Expect::Any)
        .map(|written| written.outcome)
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
        expect: Expect::Any,
    }
}

/// Rewrites `key` with its value unchanged and the given lock and expiry.
pub fn set_attrs(store: &Store, key: &str, attrs: Attrs) {
    let mut buf = Vec::new();
    store
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
}
