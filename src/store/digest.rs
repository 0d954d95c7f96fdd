//! The integrity digest of the store's contents under a key prefix: one
//! hash that two nodes holding the same keys, values and metadata agree on,
//! whatever order the writes came in and however their logs are laid out
//! (compacted or not, encrypted or not), so that a follower can be checked
//! against its primary by comparing 64 hex digits.
//!
//! # What is hashed
//!
//! BLAKE2s-256 over every key the index holds under the prefix, in key
//! (byte) order, each contributing, in this order:
//!
//! ```text
//! key length      u64 LE, then the key bytes
//! version         u64 LE (the sequence number of the key's latest write)
//! value length    u64 LE, then the value bytes
//! content type    length u64 LE, then its bytes
//! expires at      u64 LE, milliseconds since the epoch; 0 = never
//! locked          1 byte: 1 locked, 0 not
//! ```
//!
//! Every variable-length field is preceded by its length, so no two
//! different contents give the same input. The time of a write is not part
//! of it. An encrypted store's records are opened first: the digest is of
//! the plain contents.
//!
//! Keys whose expiry time has passed but which the expiry sweeper has not
//! deleted yet are included, as the index holds them: which keys are past
//! their expiry depends on the clock of the node computing the digest,
//! while which ones the sweeper has deleted is in the log, as any deletion
//! is. So the digest does not depend on that clock.
//!
//! # Cost and consistency
//!
//! The index is walked a page of `PAGE_KEYS` (1000) keys at a time, each page
//! taken under one brief read lock (see `Store::held_keys`); the page's
//! records are then read, with no lock held, through the store's verified
//! read path into one reused buffer. Memory stays bounded by a page and
//! the largest record, whatever the number of keys; time is a read of
//! every record under the prefix.
//!
//! Writes go on meanwhile. Each page is read as it was when taken, so the
//! digest of a store being written to is of a moment per page, not of the
//! whole store at one moment: compare digests of nodes that are not being
//! written to (or whose writes have stopped) to compare their contents.
//!
//! A record that fails its check makes the digest fail, naming the key
//! ([`DigestError::Damaged`]): a digest that silently skipped it would
//! vouch for contents the node does not have.

use std::fmt::{self, Write as _};

use blake2::{Blake2s256, Digest as _};

use super::engine::whole_read_buffer;
use super::record::RecordView;
use super::{Store, StoreError};

/// Keys read per page of the walk (see the module documentation).
const PAGE_KEYS: usize = 1000;

/// The digest of the keys under a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    /// How many keys it covers.
    pub keys: u64,
    /// The largest version among them; 0 when there are none.
    pub highest_version: u64,
    /// The BLAKE2s-256 hash (see the module documentation for its input).
    pub hash: [u8; 32],
}

impl Digest {
    /// The hash as 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        self.hash
            .iter()
            .fold(String::with_capacity(64), |mut out, byte| {
                let _ = write!(out, "{byte:02x}");
                out
            })
    }
}

/// Why no digest could be computed.
#[derive(Debug)]
pub enum DigestError {
    /// The latest record of this key failed its check (it answers an error
    /// until it is written or deleted).
    Damaged {
        /// The key.
        key: Vec<u8>,
    },
    /// A record could not be read (the disk refused it).
    Read(StoreError),
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Damaged { key } => write!(
                f,
                "the record of key '{}' is damaged (it failed its integrity check)",
                String::from_utf8_lossy(key)
            ),
            Self::Read(err) => write!(f, "a record could not be read: {err}"),
        }
    }
}

impl Store {
    /// The digest of every key the index holds under `prefix` (matched on
    /// the raw key bytes; empty: every key), expired keys the sweeper has
    /// not deleted yet included. See the module documentation for what is
    /// hashed and how writes made meanwhile show.
    /// Each record is read whole, one longer than
    /// [`SENT_FROM_LOG_OVER`](crate::store::SENT_FROM_LOG_OVER) once `room`
    /// has granted the memory for it ([`StoreError::NoRoom`] if not).
    pub fn digest(
        &self,
        prefix: &[u8],
        room: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Digest, DigestError> {
        let mut hasher = Blake2s256::new();
        let (mut keys, mut highest_version) = (0, 0);
        let (mut buf, mut large) = (Vec::new(), Vec::new());
        let mut after = None;
        loop {
            let mut held = self.held_keys(prefix, after.as_deref(), PAGE_KEYS);
            for (key, location) in &held.page.entries {
                let len = location.len as usize;
                let into = whole_read_buffer(len, &mut buf, &mut large, room)
                    .map_err(DigestError::Read)?;
                let record =
                    self.read_held(&held, key, *location, into)
                        .map_err(|err| match err {
                            StoreError::Corrupt { .. } => DigestError::Damaged { key: key.clone() },
                            other => DigestError::Read(other),
                        })?;
                add_record(&mut hasher, &record);
                keys += 1;
                highest_version = highest_version.max(record.header.sequence);
            }
            if !held.page.more {
                break;
            }
            after = held.page.entries.pop().map(|(key, _)| key);
        }
        Ok(Digest {
            keys,
            highest_version,
            hash: hasher.finalize().into(),
        })
    }
}

/// Feeds one key's record to the hash, as the module documentation lays
/// it out.
fn add_record(hasher: &mut Blake2s256, record: &RecordView<'_>) {
    let header = &record.header;
    add_bytes(hasher, record.key);
    hasher.update(header.sequence.to_le_bytes());
    add_bytes(hasher, record.value);
    add_bytes(hasher, record.content_type);
    hasher.update(header.expires_at_ms.to_le_bytes());
    hasher.update([u8::from(header.is_locked())]);
}

/// Feeds `bytes` to the hash, after their length.
fn add_bytes(hasher: &mut Blake2s256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;

    use super::*;
    use crate::store::crypt::Cipher;
    use crate::store::layout::LOG_FILE;
    use crate::store::testing::{fresh_store, Call, CrashFile, Fault, MemFile};
    use crate::store::{open_with, BatchOp, Expect, SyncMode, SENT_FROM_LOG_OVER};

    /// One key's contents, as a test writes them.
    #[derive(Debug, Clone, Copy)]
    struct Content<'a> {
        key: &'a str,
        value: &'a [u8],
        content_type: &'a [u8],
        expires_at_ms: u64,
        locked: bool,
    }

    /// A plain key: text, no expiry, not locked.
    const PLAIN: Content<'static> = Content {
        key: "k",
        value: b"v",
        content_type: b"text/plain",
        expires_at_ms: 0,
        locked: false,
    };

    /// An expiry far ahead (the year 2100).
    const FAR_AHEAD_MS: u64 = 4_102_444_800_000;

    /// Writes `content` (its version: the store's next sequence number).
    fn write(store: &Store, content: Content) {
        let put = BatchOp::Put {
            key: content.key.as_bytes(),
            content_type: content.content_type,
            value: content.value,
            expires_at_ms: content.expires_at_ms,
            locked: content.locked,
            expect: Expect::Any,
        };
        store.batch(&[put], &mut Vec::new()).unwrap();
    }

    /// The digest, under `prefix`, of a new store given `writes` in order.
    fn digest_after(writes: &[Content], prefix: &str) -> Digest {
        let (_, store) = fresh_store(MemFile::with_bytes, SyncMode::Never);
        for content in writes {
            write(&store, *content);
        }
        store.digest(prefix.as_bytes(), &mut |_| true).unwrap()
    }

    #[test]
    fn a_large_record_is_read_once_room_is_granted_for_it() {
        let large = vec![7; 2 * SENT_FROM_LOG_OVER];
        let at = |key, value| Content {
            key,
            value,
            ..PLAIN
        };
        let writes = [at("a", &large), at("b", b"small"), at("c", &large)];
        let (_, store) = fresh_store(MemFile::with_bytes, SyncMode::Never);
        for content in writes {
            write(&store, content);
        }
        let mut asked = Vec::new();
        let mut grant = |len| {
            asked.push(len);
            true
        };
        let digest = store.digest(b"", &mut grant).unwrap();
        let (_, other) = fresh_store(MemFile::with_bytes, SyncMode::Never);
        for content in writes {
            write(&other, content);
        }
        assert_eq!(digest, other.digest(b"", &mut |_| true).unwrap());
        assert_eq!(
            asked.len(),
            2,
            "room for the large records alone: {asked:?}"
        );
        assert!(asked.iter().all(|&len| len > large.len()), "{asked:?}");
        let refused = store.digest(b"", &mut |_| false).unwrap_err();
        assert!(
            matches!(refused, DigestError::Read(StoreError::NoRoom { needed }) if needed == asked[0]),
            "{refused:?}"
        );
    }

    #[test]
    fn the_same_contents_written_in_other_orders_give_the_same_digest() {
        let at = |key, value| Content {
            key,
            value,
            ..PLAIN
        };
        // Both end with a@2 = "1" and b@3 = "2".
        let first = digest_after(&[at("b", b"old"), at("a", b"1"), at("b", b"2")], "");
        let second = digest_after(&[at("a", b"old"), at("a", b"1"), at("b", b"2")], "");
        assert_eq!(first, second);
        assert_eq!((first.keys, first.highest_version), (2, 3));
        assert_eq!(first.hex().len(), 64);
    }

    #[test]
    fn the_digest_is_of_the_contents_not_of_the_log() {
        let writes = [
            Content { key: "a", ..PLAIN },
            Content { key: "b", ..PLAIN },
            Content {
                key: "a",
                value: b"again",
                ..PLAIN
            },
        ];
        let plain = tempfile::tempdir().unwrap();
        let encrypted = tempfile::tempdir().unwrap();
        let cipher = Some(Arc::new(Cipher::from_key(&[7; 32])));
        let mut digests = Vec::new();
        for (dir, cipher) in [(&plain, None), (&encrypted, cipher)] {
            let (store, _) = open_with(dir.path(), SyncMode::Never, cipher).unwrap();
            for content in writes {
                write(&store, content);
            }
            digests.push(store.digest(b"", &mut |_| true).unwrap());
            store.compact().unwrap();
            digests.push(store.digest(b"", &mut |_| true).unwrap());
        }
        assert!(digests.iter().all(|digest| *digest == digests[0]));
        assert_eq!(digests[0], digest_after(&writes, ""));
    }

    #[test]
    fn any_one_field_changed_changes_the_digest() {
        let base = digest_after(&[PLAIN], "");
        let changed = [
            ("key", vec![Content { key: "j", ..PLAIN }]),
            (
                "value",
                vec![Content {
                    value: b"w",
                    ..PLAIN
                }],
            ),
            (
                "content type",
                vec![Content {
                    content_type: b"application/json",
                    ..PLAIN
                }],
            ),
            (
                "expiry",
                vec![Content {
                    expires_at_ms: FAR_AHEAD_MS,
                    ..PLAIN
                }],
            ),
            (
                "lock",
                vec![Content {
                    locked: true,
                    ..PLAIN
                }],
            ),
            ("version", vec![PLAIN, PLAIN]),
        ];
        for (field, writes) in changed {
            let digest = digest_after(&writes, "");
            assert_ne!(digest.hash, base.hash, "{field}");
            assert_eq!(digest.keys, 1, "{field}");
        }
    }

    #[test]
    fn the_hash_input_is_as_documented() {
        let digest = digest_after(&[PLAIN], "");
        let mut input = Vec::new();
        input.extend_from_slice(&1u64.to_le_bytes());
        input.extend_from_slice(b"k");
        input.extend_from_slice(&1u64.to_le_bytes()); // version
        input.extend_from_slice(&1u64.to_le_bytes());
        input.extend_from_slice(b"v");
        input.extend_from_slice(&10u64.to_le_bytes());
        input.extend_from_slice(b"text/plain");
        input.extend_from_slice(&0u64.to_le_bytes()); // never expires
        input.push(0); // not locked
        assert_eq!(digest.hash, <[u8; 32]>::from(Blake2s256::digest(&input)));
    }

    #[test]
    fn a_prefix_selects_the_keys_it_starts() {
        let at = |key| Content { key, ..PLAIN };
        let all = [at("a/1"), at("a/2"), at("ab"), at("b/1")];
        let under_a = digest_after(&all, "a/");
        assert_eq!((under_a.keys, under_a.highest_version), (2, 2));
        assert_eq!(under_a, digest_after(&all[..2], ""));
        assert_ne!(under_a, digest_after(&all, "a"));
        assert_eq!(digest_after(&all, "a").keys, 3);
        assert_eq!(digest_after(&all, "c"), digest_after(&[], ""));
    }

    #[test]
    fn an_empty_store_hashes_nothing() {
        let empty = digest_after(&[], "");
        assert_eq!((empty.keys, empty.highest_version), (0, 0));
        // BLAKE2s-256 of no input.
        assert_eq!(
            empty.hex(),
            "69217a3079908094e11121d042354a7c1f55b6482ca1a51e1b250dfd1ed0eef9"
        );
    }

    #[test]
    fn expired_keys_count_until_the_sweeper_deletes_them() {
        let (_, store) = fresh_store(MemFile::with_bytes, SyncMode::Never);
        write(
            &store,
            Content {
                expires_at_ms: 1,
                ..PLAIN
            },
        );
        let mut buf = Vec::new();
        assert_eq!(store.get(b"k", &mut buf).unwrap(), None, "expired");
        let before = store.digest(b"", &mut |_| true).unwrap();
        assert_eq!((before.keys, before.highest_version), (1, 1));
        assert_eq!(store.expire_due(u64::MAX, 10).unwrap(), 1);
        assert_eq!(
            store.digest(b"", &mut |_| true).unwrap(),
            digest_after(&[], "")
        );
    }

    #[test]
    fn pages_follow_one_another_without_gaps() {
        let keys: Vec<String> = (0..PAGE_KEYS * 2 + 1).map(|i| format!("{i:05}")).collect();
        let writes: Vec<Content> = keys.iter().map(|key| Content { key, ..PLAIN }).collect();
        let digest = digest_after(&writes, "");
        assert_eq!(digest.keys, keys.len() as u64);
        assert_eq!(digest.highest_version, keys.len() as u64);
        assert_ne!(digest, digest_after(&writes[..PAGE_KEYS * 2], ""));
    }

    #[test]
    fn a_page_reads_as_it_was_when_taken_even_after_a_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_with(dir.path(), SyncMode::Never, None).unwrap();
        write(&store, PLAIN);
        let held = store.held_keys(b"", None, PAGE_KEYS);
        write(
            &store,
            Content {
                value: b"new",
                ..PLAIN
            },
        );
        store.compact().unwrap();
        let (key, location) = &held.page.entries[0];
        let mut buf = Vec::new();
        let record = store.read_held(&held, key, *location, &mut buf).unwrap();
        assert_eq!((record.value, record.header.sequence), (&b"v"[..], 1));
        assert_eq!(store.digest(b"", &mut |_| true).unwrap().highest_version, 2);
    }

    #[test]
    fn a_damaged_record_fails_the_digest_naming_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_with(dir.path(), SyncMode::Never, None).unwrap();
        for key in ["a", "b"] {
            write(&store, Content { key, ..PLAIN });
        }
        // The last byte of the log: "b"'s value.
        let log = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(LOG_FILE))
            .unwrap();
        let end = log.metadata().unwrap().len();
        log.write_at(b"x", end - 1).unwrap();
        let err = store.digest(b"", &mut |_| true).unwrap_err();
        assert!(
            matches!(&err, DigestError::Damaged { key } if key == b"b"),
            "{err:?}"
        );
        assert!(err.to_string().contains("key 'b' is damaged"), "{err}");
        assert_eq!(store.stats().damaged_keys, 1, "marked as a read marks it");
        assert_eq!(store.digest(b"a", &mut |_| true).unwrap().keys, 1);
    }

    #[test]
    fn a_failed_read_fails_the_digest_without_marking_damage() {
        let (file, store) = fresh_store(CrashFile::with_bytes, SyncMode::Never);
        write(&store, PLAIN);
        file.inject(Call::Read, Fault::Eio);
        let err = store.digest(b"", &mut |_| true).unwrap_err();
        assert!(
            matches!(err, DigestError::Read(StoreError::Io(_))),
            "{err:?}"
        );
        assert_eq!(store.stats().damaged_keys, 0);
        assert_eq!(
            store.digest(b"", &mut |_| true).unwrap(),
            digest_after(&[PLAIN], "")
        );
    }
}
