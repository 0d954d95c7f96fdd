//! Reads: a key's value, listings and key metadata, and pages of every key
//! the index holds (for [`crate::store::digest`]), each record verified
//! (CRC, and authentication when encrypted) before it is served.
//!
//! A large value of a plain log is not read into memory to be served: its
//! record is verified through a small reused buffer, a piece at a time, and
//! the value is then sent from the log through the same buffer
//! ([`Store::get_sendable`], [`ValueInLog`]).

use std::io::{self, Write};
use std::ops::Range;
use std::sync::Arc;

use super::{KeyInfo, Keydir, Page, Store, StoreError, StoredValue};
use crate::clock::now_ms;
use crate::locks::read;
use crate::store::crypt::{open_record, Cipher};
use crate::store::file::LogFile;
use crate::store::index::{Attrs, Index, Location};
use crate::store::record::{
    Position, RecordHeader, RecordKind, RecordView, MAX_CONTENT_TYPE_LEN, RECORD_HEADER_LEN,
};
use crate::store::scan::checksum_matches;

impl Store {
    /// Reads `key`'s record into `buf` and returns its value, or `None` if
    /// the key does not exist or has expired. The record's CRC is verified
    /// first: a damaged record is reported as [`StoreError::Corrupt`], never
    /// served.
    pub fn get<'b>(
        &self,
        key: &[u8],
        buf: &'b mut Vec<u8>,
    ) -> Result<Option<StoredValue<'b>>, StoreError> {
        let Some((location, source)) = self.locate(key) else {
            return Ok(None);
        };
        self.read_value(&source, location, key, buf)
    }

    /// Reads `key`'s value as [`get`](Self::get) does, except a value of a
    /// plain log longer than [`SENT_FROM_LOG_OVER`]: that one is left in
    /// the log, to be sent from there by [`ValueInLog::copy_to`], so that
    /// serving it takes no buffer its size. Its record is checked all the
    /// same before anything is served: its header and key, then its CRC,
    /// read through `chunk` (resized once to 64 KiB, then reused) a
    /// piece at a time; a damaged record is [`StoreError::Corrupt`] and
    /// its key is marked damaged, as with `get`. An encrypted log's values
    /// are read whole into `buf` (a record is authenticated whole): a
    /// record longer than [`SENT_FROM_LOG_OVER`] is read only once
    /// `room(its length)` has granted the memory for it (the caller holds
    /// that until the value is sent), else [`StoreError::NoRoom`].
    pub fn get_sendable<'b>(
        &self,
        key: &[u8],
        buf: &'b mut Vec<u8>,
        chunk: &mut Vec<u8>,
        room: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Option<Sendable<'b>>, StoreError> {
        let Some((location, source)) = self.locate(key) else {
            return Ok(None);
        };
        let len = location.len as usize;
        if len > SENT_FROM_LOG_OVER {
            if source.cipher.is_none() {
                let chunk = chunk_of(chunk, head_len(location, key));
                let found = value_in_log(&source, location, key, chunk, buf);
                if let Some((value, header)) =
                    self.noting_damage(found, key, location, source.file_id)?
                {
                    if Attrs::of(&header).expired(now_ms()) {
                        return Ok(None);
                    }
                    return Ok(Some(Sendable::InLog(ValueInLog {
                        file: source.file,
                        value,
                        header,
                        content_type: buf,
                    })));
                }
            }
            if source.cipher.is_some() && !room(len) {
                return Err(StoreError::NoRoom { needed: len });
            }
        }
        let value = self.read_value(&source, location, key, buf)?;
        Ok(value.map(Sendable::Read))
    }

    /// Where the index says `key`'s record is, and the log it is in.
    fn locate(&self, key: &[u8]) -> Option<(Location, LogSource)> {
        let keydir = read(&self.keydir);
        let location = keydir.index.get(key)?;
        Some((location, LogSource::of(&keydir)))
    }

    /// Reads the record of `key` at `location` of `source` into `buf`,
    /// verifies it (see [`read_verified`](Self::read_verified)) and returns
    /// its value, or `None` if it has expired.
    fn read_value<'b>(
        &self,
        source: &LogSource,
        location: Location,
        key: &[u8],
        buf: &'b mut Vec<u8>,
    ) -> Result<Option<StoredValue<'b>>, StoreError> {
        let record = self.read_verified(source, location, key, buf)?;
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
        page_of(&keydir.index, prefix, after, limit, |attrs| {
            !attrs.expired(now)
        })
    }

    /// The metadata of listed keys (from [`list`](Self::list)), read from
    /// their records' headers (values are not read). A key changed or
    /// deleted since it was listed is shown as it is now, or left out. An
    /// encrypted record is read whole (its metadata is sealed with its
    /// value): one longer than [`SENT_FROM_LOG_OVER`] once `room(its
    /// length)` has granted the memory for it, into a buffer of its own
    /// freed before the next one (else [`StoreError::NoRoom`]).
    pub fn key_info(
        &self,
        listed: Vec<(Vec<u8>, Location)>,
        room: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<KeyInfo>, StoreError> {
        let (mut buf, mut large) = (Vec::new(), Vec::new());
        let mut infos = Vec::with_capacity(listed.len());
        let now = now_ms();
        for (key, _) in listed {
            let Some((location, source)) = self.locate(&key) else {
                continue;
            };
            if source.cipher.is_some() {
                let into = whole_read_buffer(location.len as usize, &mut buf, &mut large, room)?;
                if let Some(value) = self.read_value(&source, location, &key, into)? {
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
            buf.resize(head_len(location, &key), 0);
            let PutHead {
                header,
                content_type,
            } = read_put_head(&*source.file, location, &key, &mut buf)?;
            if Attrs::of(&header).expired(now) {
                continue;
            }
            infos.push(KeyInfo {
                size: u64::from(header.value_len),
                version: header.sequence,
                content_type: buf[content_type].to_vec(),
                updated_at_ms: header.timestamp_ms,
                expires_at_ms: header.expires_at_ms,
                locked: header.is_locked(),
                key,
            });
        }
        Ok(infos)
    }
}

/// The buffer a walk over many records reads a record of `len` bytes into
/// whole: `small`, reused, or for a record longer than
/// [`SENT_FROM_LOG_OVER`], `large`, emptied of the walk's last large record
/// first, once `room(len)` has granted the memory for it (else
/// [`StoreError::NoRoom`]). The walk thus holds one large record at a
/// time, in the room last granted.
pub(in crate::store) fn whole_read_buffer<'b>(
    len: usize,
    small: &'b mut Vec<u8>,
    large: &'b mut Vec<u8>,
    room: &mut dyn FnMut(usize) -> bool,
) -> Result<&'b mut Vec<u8>, StoreError> {
    if len <= SENT_FROM_LOG_OVER {
        return Ok(small);
    }
    *large = Vec::new();
    if !room(len) {
        return Err(StoreError::NoRoom { needed: len });
    }
    Ok(large)
}

/// The keys the index holds, a page of them (see [`Store::held_keys`]):
/// where their records were at one moment, and the log those are in.
pub(in crate::store) struct HeldKeys {
    /// The keys and the locations of their records, in key order.
    pub(in crate::store) page: Page<(Vec<u8>, Location)>,
    /// The log the locations point into, kept open.
    source: LogSource,
}

impl Store {
    /// Up to `limit` keys the index holds under `prefix`, sorting after
    /// `after`, in key order, taken under one brief read lock: unlike
    /// [`list`](Self::list), keys whose expiry has passed but which the
    /// expiry sweeper has not deleted yet are included. Their records can
    /// be read as they were at that moment with
    /// [`read_held`](Self::read_held), even once written again or
    /// compacted away (the page keeps the log it was taken from open).
    pub(in crate::store) fn held_keys(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> HeldKeys {
        let keydir = read(&self.keydir);
        HeldKeys {
            page: page_of(&keydir.index, prefix, after, limit, |_| true),
            source: LogSource::of(&keydir),
        }
    }

    /// Reads the record of `key` at `location`, an entry of `held`, into
    /// `buf` and verifies it as [`get`](Self::get) does: a damaged record
    /// is [`StoreError::Corrupt`], and its key is marked damaged.
    pub(in crate::store) fn read_held<'b>(
        &self,
        held: &HeldKeys,
        key: &[u8],
        location: Location,
        buf: &'b mut Vec<u8>,
    ) -> Result<RecordView<'b>, StoreError> {
        self.read_verified(&held.source, location, key, buf)
    }

    /// Reads the record of `key` at `location` of `source` into `buf` and
    /// verifies it; a record failing its check marks its key damaged.
    fn read_verified<'b>(
        &self,
        source: &LogSource,
        location: Location,
        key: &[u8],
        buf: &'b mut Vec<u8>,
    ) -> Result<RecordView<'b>, StoreError> {
        let LogSource {
            file,
            file_id,
            cipher,
        } = source;
        let record = read_record((&**file, *file_id, cipher.as_deref()), location, key, buf);
        self.noting_damage(record, key, location, *file_id)
    }

    /// `read`, the outcome of reading the record of `key` at `location` of
    /// log `file_id`, after marking the key damaged if the record failed
    /// its check.
    fn noting_damage<T>(
        &self,
        read: Result<T, StoreError>,
        key: &[u8],
        location: Location,
        file_id: u32,
    ) -> Result<T, StoreError> {
        read.inspect_err(|err| {
            if matches!(err, StoreError::Corrupt { .. }) {
                self.note_damaged(key, location, file_id);
            }
        })
    }
}

/// The log the index's locations point into, as a reader takes it with
/// them: the file, its id and its encryption.
struct LogSource {
    file: Arc<dyn LogFile>,
    file_id: u32,
    cipher: Option<Arc<Cipher>>,
}

impl LogSource {
    /// The log of `keydir`.
    fn of(keydir: &Keydir) -> Self {
        Self {
            file: Arc::clone(&keydir.file),
            file_id: keydir.file_id,
            cipher: keydir.cipher.clone(),
        }
    }
}

/// Up to `limit` keys of `index` under `prefix`, sorting after `after`,
/// whose attributes `keep` accepts, in key order, with their record's
/// location. Costs O(limit) when `keep` accepts most keys.
fn page_of(
    index: &Index,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
    keep: impl Fn(&Attrs) -> bool,
) -> Page<(Vec<u8>, Location)> {
    let mut kept = index
        .range(prefix, after)
        .filter(|(_, _, attrs)| keep(attrs))
        .map(|(key, location, _)| (key.to_vec(), location));
    let entries: Vec<_> = kept.by_ref().take(limit).collect();
    Page {
        entries,
        more: kept.next().is_some(),
    }
}

/// Reads the record of `key` at `location` into `buf` and verifies it.
pub(super) fn read_record<'b>(
    source: (&dyn LogFile, u32, Option<&Cipher>),
    location: Location,
    key: &[u8],
    buf: &'b mut Vec<u8>,
) -> Result<RecordView<'b>, StoreError> {
    let (file, file_id, cipher) = source;
    let offset = location.offset;
    let len = location.len as usize;
    // Exactly its size: room taken for a large record counts no more.
    buf.reserve_exact(len.saturating_sub(buf.len()));
    buf.resize(len, 0);
    file.read_at(buf, offset).map_err(StoreError::Io)?;
    let record =
        open_record(cipher, buf, Position { file_id, offset }).map_err(|_| corrupt(offset))?;
    if !is_put_of(&record.header, record.key, key) {
        return Err(corrupt(offset));
    }
    Ok(record)
}

/// Whether a record with `header` and `record_key` is a put of `key` that
/// may be served (not a quarantined one).
fn is_put_of(header: &RecordHeader, record_key: &[u8], key: &[u8]) -> bool {
    record_key == key && header.kind == RecordKind::Put && !header.is_damaged()
}

/// The length of the head (header, key and content type) of a put of `key`
/// at `location`, at most: its content type's length is not known yet.
fn head_len(location: Location, key: &[u8]) -> usize {
    (RECORD_HEADER_LEN + key.len() + MAX_CONTENT_TYPE_LEN).min(location.len as usize)
}

/// What the head of a put says: its header, and where its content type
/// lies in the bytes read.
struct PutHead {
    header: RecordHeader,
    content_type: Range<usize>,
}

/// Reads the head of the record of `key` at `location` of `file` into
/// `buf` (of [`head_len`] bytes) and checks that it is a put of `key`
/// whose content type is within the record. The CRC is not checked.
fn read_put_head(
    file: &dyn LogFile,
    location: Location,
    key: &[u8],
    buf: &mut [u8],
) -> Result<PutHead, StoreError> {
    let offset = location.offset;
    file.read_at(buf, offset).map_err(StoreError::Io)?;
    let header = RecordHeader::decode(buf[..RECORD_HEADER_LEN].try_into().expect("header"))
        .map_err(|_| corrupt(offset))?;
    let key_end = RECORD_HEADER_LEN + usize::from(header.key_len);
    let content_type_end = key_end + usize::from(header.content_type_len);
    let record_key = buf.get(RECORD_HEADER_LEN..key_end).unwrap_or_default();
    if !is_put_of(&header, record_key, key) || content_type_end > buf.len() {
        return Err(corrupt(offset));
    }
    Ok(PutHead {
        header,
        content_type: key_end..content_type_end,
    })
}

/// Values longer than this are sent from the log by
/// [`Store::get_sendable`] instead of being read whole into memory. Up to
/// it, a value is read once into the slot's reused buffer and sent with
/// its head in one write; from the log, it is read twice (verified, then
/// sent) in pieces, which costs less only once the value is large (GETs
/// of one value with `wrk` on one keep-alive connection, the node on one
/// core: at 64 KiB, 55 us of the node's CPU a request read whole against
/// 59 us from the log, and more requests a second; at 128 KiB, 86 us
/// against 70 us; at 1 MiB, where the buffer is also freed after each
/// request, 750 us against 365 us).
pub const SENT_FROM_LOG_OVER: usize = 64 * 1024;

/// The size of the buffer a value sent from the log is verified and sent
/// through (see [`Store::get_sendable`]).
pub const CHUNK_LEN: usize = 64 * 1024;

/// `chunk` as a buffer of [`CHUNK_LEN`] bytes, or of `at_least` if more (a
/// record's head with a key near the 64 KiB limit): grown once, then
/// reused.
fn chunk_of(chunk: &mut Vec<u8>, at_least: usize) -> &mut [u8] {
    let len = CHUNK_LEN.max(at_least);
    if chunk.len() < len {
        chunk.resize(len, 0);
    }
    chunk
}

/// A key's value as [`Store::get_sendable`] found it.
#[derive(Debug, PartialEq, Eq)]
pub enum Sendable<'b> {
    /// Read whole into the caller's buffer and verified.
    Read(StoredValue<'b>),
    /// Verified where it lies in the log, to be sent from there; its
    /// content type is in the caller's buffer.
    InLog(ValueInLog<'b>),
}

impl Sendable<'_> {
    /// The sequence number of the value's write: the key's version.
    pub fn sequence(&self) -> u64 {
        match self {
            Self::Read(value) => value.sequence,
            Self::InLog(value) => value.header.sequence,
        }
    }
}

/// A value verified where it lies in a plain log (see
/// [`Store::get_sendable`]), with its record's metadata, to be sent from
/// there by [`copy_to`](Self::copy_to).
///
/// It holds the log file open: if a compaction or the install of a
/// snapshot replaces the log meanwhile, the value is still read from the
/// file it was verified in. That file is append-only and a record in it
/// never changes in place (a failed append is cut back only past the
/// records the index points at), so the bytes sent are the bytes
/// verified.
pub struct ValueInLog<'b> {
    file: Arc<dyn LogFile>,
    /// The value's bytes in `file`.
    value: Range<u64>,
    /// The record's header: version, time, expiry, lock.
    header: RecordHeader,
    /// The content type, copied to the caller's buffer.
    content_type: &'b [u8],
}

impl ValueInLog<'_> {
    /// The content type given when the value was written.
    pub fn content_type(&self) -> &[u8] {
        self.content_type
    }

    /// The value's length in bytes.
    pub fn len(&self) -> usize {
        self.header.value_len as usize
    }

    /// Whether the value is empty (never: shorter values are read whole).
    pub fn is_empty(&self) -> bool {
        self.header.value_len == 0
    }

    /// Wall-clock time of the write, milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.header.timestamp_ms
    }

    /// Sequence number of the write: the key's version.
    pub fn sequence(&self) -> u64 {
        self.header.sequence
    }

    /// Writes the value to `out`, read from the log through `chunk` a
    /// piece at a time. An error reading the log is logged, and returned
    /// like one writing to `out`: either way `out` has had part of the
    /// value only.
    pub fn copy_to(&self, out: &mut dyn Write, chunk: &mut Vec<u8>) -> io::Result<()> {
        let chunk = chunk_of(chunk, CHUNK_LEN);
        let Range { mut start, end } = self.value;
        while start < end {
            let piece = &mut chunk[..(end - start).min(CHUNK_LEN as u64) as usize];
            self.file.read_at(piece, start).inspect_err(|err| {
                log::error!("disk error while sending the value at offset {start}: {err}");
            })?;
            out.write_all(piece)?;
            start += piece.len() as u64;
        }
        Ok(())
    }
}

impl std::fmt::Debug for ValueInLog<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueInLog")
            .field("value", &self.value)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ValueInLog<'_> {
    /// The same value of the same log file.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.file, &other.file) && self.value == other.value
    }
}

impl Eq for ValueInLog<'_> {}

/// Where the value of the record of `key` at `location` of `source`, a
/// plain log, lies there, and the record's header, once the record is
/// checked (see [`Store::get_sendable`]) through `chunk`; its content type
/// is copied to `buf`. `None` if the value is not longer than
/// [`SENT_FROM_LOG_OVER`]: that one is to be read whole. `chunk` holds at
/// least the record's head (see [`chunk_of`]).
fn value_in_log(
    source: &LogSource,
    location: Location,
    key: &[u8],
    chunk: &mut [u8],
    buf: &mut Vec<u8>,
) -> Result<Option<(Range<u64>, RecordHeader)>, StoreError> {
    let head = head_len(location, key);
    let PutHead {
        header,
        content_type: content_type_at,
    } = read_put_head(&*source.file, location, key, &mut chunk[..head])?;
    let offset = location.offset;
    if header.record_len() != u64::from(location.len) {
        return Err(corrupt(offset));
    }
    if header.value_len as usize <= SENT_FROM_LOG_OVER {
        return Ok(None);
    }
    buf.clear();
    buf.extend_from_slice(&chunk[content_type_at.clone()]);
    let at = Position {
        file_id: source.file_id,
        offset,
    };
    if !checksum_matches(&*source.file, &header, at, chunk).map_err(StoreError::Io)? {
        return Err(corrupt(offset));
    }
    let value_start = offset + content_type_at.end as u64;
    Ok(Some((value_start..offset + header.record_len(), header)))
}

/// The error for a record that failed its check, logged loudly.
pub(super) fn corrupt(offset: u64) -> StoreError {
    log::error!(
        "record at offset {offset} failed its integrity check and was not served; run `lucid check`"
    );
    StoreError::Corrupt { offset }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::store::crypt::Cipher;
    use crate::store::testing::{fresh_store, try_put as put, MemFile};
    use crate::store::{open, open_with, Change, Expect, Mutation, SyncMode};

    /// A value of `len` bytes that differ from one piece to the next.
    fn value(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    /// A room callback answering `answer`, noting each length asked in
    /// `asked`.
    fn asking(asked: &mut Vec<usize>, answer: bool) -> impl FnMut(usize) -> bool + '_ {
        move |len| {
            asked.push(len);
            answer
        }
    }

    /// What `get_sendable` finds for `key`: the value if it was read whole,
    /// else the value in the log.
    fn sendable<'b>(store: &Store, key: &str, buf: &'b mut Vec<u8>) -> Sendable<'b> {
        store
            .get_sendable(key.as_bytes(), buf, &mut Vec::new(), &mut |_| true)
            .unwrap()
            .expect("the key")
    }

    /// The bytes `value` sends.
    fn sent(value: &ValueInLog<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        value.copy_to(&mut out, &mut Vec::new()).unwrap();
        out
    }

    #[test]
    fn only_values_over_the_threshold_are_left_in_the_log() {
        let (file, store) = fresh_store(MemFile::with_bytes, SyncMode::Never);
        for len in [10, SENT_FROM_LOG_OVER] {
            put(&store, "small", &value(len, 1)).unwrap();
            let mut buf = Vec::new();
            let Sendable::Read(read) = sendable(&store, "small", &mut buf) else {
                panic!("{len} bytes are read whole");
            };
            assert_eq!(read.value, value(len, 1));
        }
        for len in [SENT_FROM_LOG_OVER + 1, 5 * CHUNK_LEN / 2, 4 << 20] {
            put(&store, "large", &value(len, 2)).unwrap();
            file.largest_read.store(0, Ordering::SeqCst);
            let mut buf = Vec::new();
            let Sendable::InLog(in_log) = sendable(&store, "large", &mut buf) else {
                panic!("{len} bytes are left in the log");
            };
            assert_eq!(in_log.len(), len);
            assert_eq!(in_log.content_type(), b"text/plain");
            assert_eq!(sent(&in_log), value(len, 2));
            let largest = file.largest_read.load(Ordering::SeqCst);
            assert!(largest <= CHUNK_LEN, "a read of {largest} bytes");
        }
    }

    #[test]
    fn an_encrypted_logs_large_values_are_read_whole_once_granted_the_room() {
        let dir = tempfile::tempdir().unwrap();
        let cipher = Some(Arc::new(Cipher::from_key(&[5; 32])));
        let (store, _) = open_with(dir.path(), SyncMode::Never, cipher).unwrap();
        put(&store, "large", &value(1 << 20, 3)).unwrap();
        put(&store, "small", &value(SENT_FROM_LOG_OVER / 2, 4)).unwrap();
        let (mut buf, mut asked) = (Vec::new(), Vec::new());
        let got = store.get_sendable(
            b"large",
            &mut buf,
            &mut Vec::new(),
            &mut asking(&mut asked, false),
        );
        let got = got.map(|found| found.map(|_| ()));
        let Err(StoreError::NoRoom { needed }) = got else {
            panic!("read without room: {got:?}");
        };
        assert!(needed > 1 << 20 && needed < (1 << 20) + 256, "{needed}");
        assert_eq!(asked, [needed]);
        assert!(buf.capacity() < needed, "nothing read without room");
        let got = store.get_sendable(
            b"large",
            &mut buf,
            &mut Vec::new(),
            &mut asking(&mut asked, true),
        );
        let Ok(Some(Sendable::Read(read))) = got else {
            panic!("an envelope is opened whole");
        };
        assert_eq!(read.value, value(1 << 20, 3));
        assert_eq!(asked, [needed, needed], "the record's length asked for");
        let got = store.get_sendable(
            b"small",
            &mut buf,
            &mut Vec::new(),
            &mut asking(&mut asked, false),
        );
        let Ok(Some(Sendable::Read(read))) = got else {
            panic!("{got:?}");
        };
        assert_eq!(read.value, value(SENT_FROM_LOG_OVER / 2, 4));
        assert_eq!(asked.len(), 2, "a small value needs no room asked for");
    }

    #[test]
    fn a_plain_large_value_is_sent_from_the_log_whatever_its_keys_length() {
        let (_, store) = fresh_store(MemFile::with_bytes, SyncMode::Never);
        let key = "k".repeat(CHUNK_LEN - 100);
        let stored = value(2 * CHUNK_LEN, 9);
        put(&store, &key, &stored).unwrap();
        let mut buf = Vec::new();
        let got = store.get_sendable(key.as_bytes(), &mut buf, &mut Vec::new(), &mut |_| false);
        let Ok(Some(Sendable::InLog(in_log))) = got else {
            panic!("read whole, without room: {got:?}");
        };
        assert_eq!(sent(&in_log), stored);
    }

    #[test]
    fn an_encrypted_listing_reads_large_records_once_granted_the_room() {
        let dir = tempfile::tempdir().unwrap();
        let cipher = Some(Arc::new(Cipher::from_key(&[6; 32])));
        let (store, _) = open_with(dir.path(), SyncMode::Never, cipher).unwrap();
        put(&store, "a", &value(2 * CHUNK_LEN, 1)).unwrap();
        put(&store, "b", b"small").unwrap();
        let listed = || store.list(b"", None, 10).entries;
        let mut asked = Vec::new();
        let infos = store
            .key_info(listed(), &mut asking(&mut asked, true))
            .unwrap();
        let sizes: Vec<_> = infos.iter().map(|info| info.size).collect();
        assert_eq!(sizes, [2 * CHUNK_LEN as u64, 5]);
        assert_eq!(asked.len(), 1, "room for the large record alone");
        assert!(asked[0] > 2 * CHUNK_LEN, "{asked:?}");
        let refused = store.key_info(listed(), &mut |_| false);
        assert!(
            matches!(refused, Err(StoreError::NoRoom { needed }) if needed == asked[0]),
            "{refused:?}"
        );
        // A plain log's listing reads headers only, whatever the size.
        let (_, plain) = fresh_store(MemFile::with_bytes, SyncMode::Never);
        put(&plain, "a", &value(2 * CHUNK_LEN, 1)).unwrap();
        let entries = plain.list(b"", None, 10).entries;
        let infos = plain.key_info(entries, &mut |_| false).unwrap();
        assert_eq!(infos[0].size, 2 * CHUNK_LEN as u64);
    }

    #[test]
    fn a_value_in_the_log_is_sent_as_verified_after_a_compaction_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), SyncMode::Never).unwrap();
        let len = 3 * CHUNK_LEN + 5;
        put(&store, "large", &value(len, 4)).unwrap();
        let mut buf = Vec::new();
        let Sendable::InLog(before) = sendable(&store, "large", &mut buf) else {
            panic!("left in the log");
        };
        put(&store, "large", &value(len, 5)).unwrap();
        store.compact().unwrap();
        put(&store, "filler", &value(len, 6)).unwrap();
        assert_eq!(sent(&before), value(len, 4), "the bytes verified");
        let mut buf = Vec::new();
        let Sendable::InLog(after) = sendable(&store, "large", &mut buf) else {
            panic!("left in the log");
        };
        assert_eq!(sent(&after), value(len, 5));
    }

    #[test]
    fn a_damaged_large_record_is_never_sent_and_its_key_is_marked() {
        let (file, store) = fresh_store(MemFile::with_bytes, SyncMode::Never);
        let len = 2 * CHUNK_LEN;
        put(&store, "large", &value(len, 7)).unwrap();
        // A byte of the value's last piece, past the first chunk read.
        let mut tail = file.contents();
        let at = tail.len() - 10;
        tail[at] ^= 0x01;
        file.truncate(at as u64).unwrap();
        file.append(at as u64, &tail[at..]).unwrap();
        let mut buf = Vec::new();
        for _ in 0..2 {
            let got = store.get_sendable(b"large", &mut buf, &mut Vec::new(), &mut |_| true);
            assert!(matches!(got, Err(StoreError::Corrupt { .. })), "{got:?}");
        }
        assert_eq!(store.stats().damaged_keys, 1);
    }

    #[test]
    fn expired_large_values_are_missing() {
        let (_, store) = fresh_store(MemFile::with_bytes, SyncMode::Never);
        put(&store, "large", &value(2 * CHUNK_LEN, 8)).unwrap();
        let mut buf = Vec::new();
        let expire = Mutation::Change {
            key: b"large",
            change: Change::Ttl(1),
            expect: Expect::Any,
        };
        store.apply(expire, &mut buf).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let got = store.get_sendable(b"large", &mut buf, &mut Vec::new(), &mut |_| true);
        assert_eq!(got.unwrap(), None);
    }
}
