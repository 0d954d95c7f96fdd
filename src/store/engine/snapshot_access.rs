//! What a snapshot may see of the store ([`crate::store::snapshot`]): the
//! live records at one moment, pinned, and the key of a damaged one.

use std::sync::Arc;

use super::Store;
use crate::locks::{lock, read};
use crate::store::crypt::Cipher;
use crate::store::file::LogFile;
use crate::store::index::{Attrs, Location};

/// The live records of the store at one moment, pinned for a snapshot (see
/// [`crate::store::snapshot`]): the log they are in stays readable through
/// `file` even if a compaction replaces it meanwhile.
pub(in crate::store) struct PinnedRecords {
    /// Where every live record is, in no particular order.
    pub(in crate::store) locations: Vec<Location>,
    /// Every write up to this sequence number is among them, none after.
    pub(in crate::store) sequence: u64,
    /// The log they are in.
    pub(in crate::store) file: Arc<dyn LogFile>,
    /// Its file id.
    pub(in crate::store) file_id: u32,
    /// Its encryption, if any.
    pub(in crate::store) cipher: Option<Arc<Cipher>>,
}

impl Store {
    /// Pins the live records as they are now: writers wait while the index
    /// is read (a copy of its locations, no key), readers go on. Every
    /// published write is among them, no half of a batch and no write still
    /// waiting for its fsync.
    pub(in crate::store) fn pin_live_records(&self) -> PinnedRecords {
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
    pub(in crate::store) fn key_at(
        &self,
        file_id: u32,
        location: Location,
    ) -> Option<(Vec<u8>, Attrs)> {
        let keydir = read(&self.keydir);
        if keydir.file_id != file_id {
            return None;
        }
        let index = &keydir.index;
        let (key, _) = index.entries().find(|&(_, at)| at == location)?;
        Some((key.to_vec(), index.attrs(key)))
    }
}
