//! Reads: a key's value, listings and key metadata, and pages of every key
//! the index holds (for [`crate::store::digest`]), each record verified
//! (CRC, and authentication when encrypted) before it is served.

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
        let (location, source) = {
            let keydir = read(&self.keydir);
            let Some(location) = keydir.index.get(key) else {
                return Ok(None);
            };
            (location, LogSource::of(&keydir))
        };
        let record = self.read_verified(&source, location, key, buf)?;
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
        read_record((&**file, *file_id, cipher.as_deref()), location, key, buf).inspect_err(|err| {
            if matches!(err, StoreError::Corrupt { .. }) {
                self.note_damaged(key, location, *file_id);
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
pub(super) fn corrupt(offset: u64) -> StoreError {
    log::error!(
        "record at offset {offset} failed its integrity check and was not served; run `lucid check`"
    );
    StoreError::Corrupt { offset }
}
