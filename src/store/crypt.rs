//! Encryption at rest: the key file, the record envelope, and encrypted hint
//! files.
//!
//! # Envelope
//!
//! With encryption on, every put and delete record (batch members included)
//! and every sync marker is first built as a plain record (see
//! [`super::record`]), then wrapped whole in an envelope, which is what the
//! log holds:
//!
//! ```text
//! offset size field
//!      0   40 record header: CRC (as for any record), kind (put/delete/
//!             sync marker), flags (encrypted and movable, plus batch
//!             member), key and content type length 0, value length = the
//!             rest, sequence number; timestamp and expiry 0
//!     40   24 nonce (XChaCha20-Poly1305): 16 bytes drawn from the OS when
//!             the key is loaded, then a 64-bit counter
//!     64    n the plain record (header, key, content type, value), its CRC
//!             stamped for no place (file id 0, offset 0), encrypted
//!   64+n   16 authentication tag; associated data: the envelope header
//!             after its CRC (kind, flags, lengths, sequence number)
//!   80+n   16 place tag: keyed BLAKE2s-128 (a subkey derived from the key)
//!             of the log's file id, the envelope's offset, its nonce and
//!             its authentication tag
//! ```
//!
//! The encryption authenticates the envelope's content; the place tag
//! binds that content to where it is, so an envelope is authentic only
//! where it was written: records cannot be moved, swapped or replayed
//! between files without the key, and cutting records out of the middle of
//! a log leaves every envelope after them failing (batch frames, whose
//! headers are not encrypted, must hold at least one member, so a gap
//! cannot be filled with empty ones). As with any log, cutting off its end
//! cannot be told from a crash before those writes.
//! Keys, values, content types, times, expiries and locks are all inside;
//! the disk shows only record sizes, kinds and sequence numbers.
//!
//! Compaction moves an envelope without opening it: it checks the CRC and
//! the place tag at the old place, then writes the same bytes with a place
//! tag and CRC for the new one (one BLAKE2s block instead of decrypting and
//! encrypting the record again). The nonce goes along with the ciphertext
//! it was used for, so no nonce ever encrypts two texts. A move does not
//! check the whole encryption: accidental damage fails the CRC and a
//! changed key fails compaction's key check (see [`Cipher::peek_key`]),
//! both stopping the compaction, but a value byte changed on purpose, its
//! CRC fixed, moves along and stays refused by every read and by `lucid
//! check`, as it was before the move. Batch members,
//! which become plain records when moved, and sync markers, whose claim
//! changes, are opened and sealed afresh, as is everything when the key
//! changes (rotation) or a log is repaired.
//!
//! Logs written before place tags (format 1 envelopes: no movable flag, no
//! place tag, the file id and offset in the associated data, the plain
//! record stamped for the envelope's place) still open; compaction opens
//! and seals those afresh, so the first compaction converts a log.
//!
//! A record that fails authentication is treated exactly like one that fails
//! its CRC: never served, cut with an unsynced tail, a reason to refuse to
//! start in data an fsync made durable (see `scan.rs`). A sync marker counts
//! only if it authenticates, so none can be forged.
//!
//! # Key check
//!
//! The log's file header carries a 32-bit check value derived from the key
//! (0 for a plain log), so starting with the wrong key, or without one,
//! fails at once with a clear message instead of reporting damage.
//!
//! # Hint files
//!
//! An encrypted store's hint file is encrypted after its 12-byte magic and
//! version with the STREAM construction (64 KiB segments, each
//! authenticated, the last one marked), so it reveals nothing either.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use blake2::digest::core_api::{Block, Buffer, UpdateCore, VariableOutputCore};
use blake2::digest::{Mac, Output};
use blake2::{Blake2sMac256, Blake2sVarCore};
use chacha20::cipher::consts::U10;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::{hchacha, ChaCha20, XChaCha20};
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{AeadCore, AeadInPlace, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag, XChaCha20Poly1305, XNonce};
use subtle::ConstantTimeEq;

use super::record::{
    envelope_overhead, verify, Position, RecordBuilder, RecordError, RecordHeader, RecordView,
    ENVELOPE_OVERHEAD, FLAG_ENCRYPTED, FLAG_MEMBER, FLAG_MOVABLE, NONCE_LEN, PLACE_TAG_LEN,
    RECORD_HEADER_LEN, TAG_LEN,
};

/// Length of a key file: a 256-bit key.
pub const KEY_LEN: usize = 32;
/// Where the plain record inside a movable envelope is stamped for.
const NOWHERE: Position = Position {
    file_id: 0,
    offset: 0,
};

/// Bytes a place tag covers: file id, offset, nonce, authentication tag.
const PLACE_MESSAGE_LEN: usize = 4 + 8 + NONCE_LEN + TAG_LEN;

/// Keyed BLAKE2s-128, the place tags' hash, with its key block compressed
/// once: a tag then costs one compression, not two (the `Mac` interface
/// compresses the key block again for every message).
#[derive(Clone)]
struct PlaceKey {
    keyed: Blake2sVarCore,
}

impl PlaceKey {
    /// Derives the place-tag subkey from the store's key.
    fn derive(key: &[u8; KEY_LEN]) -> Self {
        let mut derive = <Blake2sMac256 as Mac>::new_from_slice(key).expect("32-byte key");
        derive.update(b"lucid place tag key");
        let subkey = derive.finalize().into_bytes();
        let mut keyed = Blake2sVarCore::new_with_params(&[], &[], subkey.len(), PLACE_TAG_LEN);
        let mut key_block = Block::<Blake2sVarCore>::default();
        key_block[..subkey.len()].copy_from_slice(&subkey);
        keyed.update_blocks(&[key_block]);
        Self { keyed }
    }

    /// The place tag of `sealed`, a movable envelope up to its place tag,
    /// at `at`.
    fn tag(&self, at: Position, sealed: &[u8]) -> [u8; PLACE_TAG_LEN] {
        let mut message = [0u8; PLACE_MESSAGE_LEN];
        message[..4].copy_from_slice(&at.file_id.to_le_bytes());
        message[4..12].copy_from_slice(&at.offset.to_le_bytes());
        message[12..12 + NONCE_LEN]
            .copy_from_slice(&sealed[RECORD_HEADER_LEN..RECORD_HEADER_LEN + NONCE_LEN]);
        message[12 + NONCE_LEN..].copy_from_slice(&sealed[sealed.len() - TAG_LEN..]);
        let mut core = self.keyed.clone();
        let mut out = Output::<Blake2sVarCore>::default();
        core.finalize_variable_core(&mut Buffer::<Blake2sVarCore>::new(&message), &mut out);
        out[..PLACE_TAG_LEN].try_into().expect("16 bytes")
    }

    /// Whether `place` is the place tag of `sealed` at `at` (compared in
    /// constant time).
    fn check(&self, at: Position, sealed: &[u8], place: &[u8]) -> Result<(), RecordError> {
        match bool::from(self.tag(at, sealed).ct_eq(place)) {
            true => Ok(()),
            false => Err(RecordError::ChecksumMismatch),
        }
    }
}

/// Plaintext bytes per segment of an encrypted hint file.
const SEGMENT: usize = 64 * 1024;
/// STREAM nonce: the XChaCha nonce less the 5 bytes of counter and flag.
const STREAM_NONCE_LEN: usize = 19;

/// The store's encryption key, ready to seal and open envelopes.
pub struct Cipher {
    /// The key and the session's subkey, for [`Cipher::peek_key`]'s bare
    /// keystream.
    key: Key,
    session_key: Key,
    aead: XChaCha20Poly1305,
    check: u32,
    /// Nonces: a random prefix drawn once per cipher, then a counter.
    nonces: NonceSource,
    /// The XChaCha20 subkey for that prefix, derived once.
    session: ChaCha20Poly1305,
    /// Makes and checks place tags.
    places: PlaceKey,
}

/// Envelope nonces without a system call per record: 16 random bytes drawn
/// from the OS when the cipher is made, then a 64-bit counter. A prefix is
/// never drawn twice in practice (2^-128 per pair of starts), and the
/// counter never repeats within one, so no nonce is ever used twice under
/// the key, also not when compaction or rotation reseals records.
///
/// XChaCha20-Poly1305 is ChaCha20-Poly1305 under a subkey, HChaCha20 of the
/// key and the nonce's first 16 bytes, with the nonce's last 8 bytes (after
/// 4 zero bytes) as the ChaCha20 nonce. Every nonce of one source shares
/// its prefix, so the cipher derives that subkey once ([`Cipher::session`])
/// instead of once per record; the bytes on disk are the same.
struct NonceSource {
    prefix: [u8; PREFIX_LEN],
    counter: AtomicU64,
}

/// Bytes of an envelope nonce that pick the XChaCha20 subkey.
const PREFIX_LEN: usize = 16;

impl NonceSource {
    fn new() -> Self {
        let mut prefix = [0u8; PREFIX_LEN];
        OsRng.fill_bytes(&mut prefix);
        Self {
            prefix,
            counter: AtomicU64::new(0),
        }
    }

    /// A nonce never handed out before.
    fn next(&self) -> XNonce {
        let count = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut nonce = XNonce::default();
        nonce[..PREFIX_LEN].copy_from_slice(&self.prefix);
        nonce[PREFIX_LEN..].copy_from_slice(&count.to_le_bytes());
        nonce
    }

    /// The ChaCha20-Poly1305 nonce under the subkey of `nonce`'s prefix.
    fn within_session(nonce: &XNonce) -> Nonce {
        let mut inner = Nonce::default();
        inner[4..].copy_from_slice(&nonce[PREFIX_LEN..]);
        inner
    }
}

/// Shows the check value only: the key never reaches a log or a message.
impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cipher(check {:08x})", self.check)
    }
}

impl Cipher {
    /// A cipher over a raw 32-byte key.
    pub fn from_key(key: &[u8; KEY_LEN]) -> Self {
        let aead = XChaCha20Poly1305::new(Key::from_slice(key));
        // The check value: a tag over nothing under a fixed nonce, which
        // says whether two keys are the same and nothing about the key.
        let mut empty = [];
        let tag = aead
            .encrypt_in_place_detached(
                XNonce::from_slice(&[0u8; NONCE_LEN]),
                b"lucid key check",
                &mut empty,
            )
            .expect("encrypting nothing cannot fail");
        let check = u32::from_le_bytes(tag[..4].try_into().expect("4 bytes")).max(1);
        let nonces = NonceSource::new();
        let subkey = hchacha::<U10>(Key::from_slice(key), (&nonces.prefix).into());
        Self {
            key: *Key::from_slice(key),
            session_key: subkey,
            aead,
            check,
            nonces,
            session: ChaCha20Poly1305::new(&subkey),
            places: PlaceKey::derive(key),
        }
    }

    /// Reads the key file at `path`, which must hold exactly 32 bytes and be
    /// readable by its owner only.
    pub fn load(path: &Path) -> Result<Self, String> {
        let metadata = fs::metadata(path).map_err(|err| {
            format!(
                "cannot read the encryption key file {}: {err}. Create one with `lucid init --encrypt`",
                path.display()
            )
        })?;
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "the encryption key file {} is readable by others (mode {:o}); run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            ));
        }
        let bytes = fs::read(path).map_err(|err| {
            format!(
                "cannot read the encryption key file {}: {err}",
                path.display()
            )
        })?;
        let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "the encryption key file {} must hold exactly {KEY_LEN} bytes, not {}",
                path.display(),
                bytes.len()
            )
        })?;
        Ok(Self::from_key(&key))
    }

    /// Creates a new key file at `path` (mode 0600) from the OS's random
    /// source; never overwrites an existing file.
    pub fn create_key_file(path: &Path) -> Result<(), String> {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|err| match err.kind() {
                io::ErrorKind::AlreadyExists => format!(
                    "{} already exists; it may be the key of existing data, so it is never overwritten",
                    path.display()
                ),
                _ => format!("cannot create the key file {}: {err}", path.display()),
            })?;
        file.write_all(&key)
            .and_then(|()| file.sync_all())
            .map_err(|err| format!("cannot write the key file {}: {err}", path.display()))
    }

    /// The check value stored in the log's file header (never 0).
    pub fn check_value(&self) -> u32 {
        self.check
    }

    /// Wraps `plain`, a whole plain record (its CRC stamped for any place),
    /// in a movable envelope for position `at`, appended to `out`.
    pub fn seal(&self, plain: &[u8], at: Position, out: &mut Vec<u8>) {
        let plain_header =
            RecordHeader::decode(plain[..RECORD_HEADER_LEN].try_into().expect("header"))
                .expect("a record built by RecordBuilder");
        let start = out.len();
        let body_len = NONCE_LEN + plain.len() + TAG_LEN + PLACE_TAG_LEN;
        out.extend_from_slice(&[0u8; 4]);
        out.push(plain[4]);
        out.push(FLAG_ENCRYPTED | FLAG_MOVABLE | (plain_header.flags & FLAG_MEMBER));
        out.extend_from_slice(&[0u8; 2]);
        out.extend_from_slice(&u32::try_from(body_len).expect("size checked").to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
        out.extend_from_slice(&plain_header.sequence.to_le_bytes());
        out.extend_from_slice(&[0u8; 16]);
        let nonce = self.nonces.next();
        out.extend_from_slice(&nonce);
        let aad = associated_data(at, &out[start + 4..start + RECORD_HEADER_LEN]);
        let text_start = out.len();
        out.extend_from_slice(plain);
        RecordBuilder::restamp(&mut out[text_start..], NOWHERE);
        let tag = self
            .session
            .encrypt_in_place_detached(
                &NonceSource::within_session(&nonce),
                &aad[POSITION_LEN..],
                &mut out[text_start..],
            )
            .expect("a record is far below the cipher's size limit");
        out.extend_from_slice(&tag);
        let place = self.places.tag(at, &out[start..]);
        out.extend_from_slice(&place);
        RecordBuilder::restamp(&mut out[start..], at);
    }

    /// Writes `stored`, a movable envelope whose CRC is verified at `from`,
    /// to `out` as it must read at `to`, without opening it: its place tag
    /// is checked at `from`, then replaced, and its CRC stamped for `to`.
    pub fn move_envelope(
        &self,
        stored: &[u8],
        from: Position,
        to: Position,
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        if stored.len() < ENVELOPE_OVERHEAD + RECORD_HEADER_LEN || stored[5] & FLAG_MOVABLE == 0 {
            return Err(RecordError::BadHeader);
        }
        let (sealed, place) = stored.split_at(stored.len() - PLACE_TAG_LEN);
        self.places.check(from, sealed, place)?;
        out.clear();
        out.extend_from_slice(sealed);
        let place = self.places.tag(to, out);
        out.extend_from_slice(&place);
        RecordBuilder::restamp(out, to);
        Ok(())
    }

    /// The key of the record in `stored`, a movable envelope, decrypted
    /// without being authenticated (the ChaCha20 keystream from where the
    /// encrypted record starts; about one block for a short key), for
    /// compaction's check that the index still points at the record it
    /// moves unopened. Never for serving: a changed byte gives a wrong key,
    /// and the check then fails. `None` if the lengths do not fit.
    pub fn peek_key<'s>(&self, stored: &[u8], scratch: &'s mut Vec<u8>) -> Option<&'s [u8]> {
        let text =
            stored.get(RECORD_HEADER_LEN + NONCE_LEN..stored.len() - TAG_LEN - PLACE_TAG_LEN)?;
        let nonce = XNonce::from_slice(&stored[RECORD_HEADER_LEN..RECORD_HEADER_LEN + NONCE_LEN]);
        if nonce[..PREFIX_LEN] == self.nonces.prefix {
            let inner = NonceSource::within_session(nonce);
            decrypt_key(ChaCha20::new(&self.session_key, &inner), text, scratch)
        } else {
            decrypt_key(XChaCha20::new(&self.key, nonce), text, scratch)
        }
    }

    /// Opens the envelope `stored` (CRC already verified at `at`) in place
    /// and returns its plain record, verified too.
    fn open_in_place<'a>(
        &self,
        stored: &'a mut [u8],
        at: Position,
    ) -> Result<RecordView<'a>, RecordError> {
        let flags = stored.get(5).copied().unwrap_or_default();
        let movable = flags & FLAG_MOVABLE != 0;
        if stored.len() < envelope_overhead(flags) + RECORD_HEADER_LEN {
            return Err(RecordError::BadHeader);
        }
        let full_aad = associated_data(at, &stored[4..RECORD_HEADER_LEN]);
        let place_len = if movable { PLACE_TAG_LEN } else { 0 };
        let (sealed, place) = stored.split_at_mut(stored.len() - place_len);
        let (aad, plain_at) = if movable {
            self.places.check(at, sealed, place)?;
            (&full_aad[POSITION_LEN..], NOWHERE)
        } else {
            (&full_aad[..], at)
        };
        let (head, text) = sealed.split_at_mut(RECORD_HEADER_LEN + NONCE_LEN);
        let (text, tag) = text.split_at_mut(text.len() - TAG_LEN);
        let nonce = XNonce::from_slice(&head[RECORD_HEADER_LEN..]);
        let tag = Tag::from_slice(tag);
        let opened = if nonce[..PREFIX_LEN] == self.nonces.prefix {
            let nonce = NonceSource::within_session(nonce);
            self.session
                .decrypt_in_place_detached(&nonce, aad, text, tag)
        } else {
            // Sealed by an earlier run, under another prefix.
            self.aead.decrypt_in_place_detached(nonce, aad, text, tag)
        };
        opened.map_err(|_| RecordError::ChecksumMismatch)?;
        let outer_flags = head[5];
        let plain = verify(text, plain_at)?;
        let same_membership = (plain.header.flags & FLAG_MEMBER) == (outer_flags & FLAG_MEMBER);
        if plain.header.is_encrypted() || !same_membership {
            return Err(RecordError::BadHeader);
        }
        Ok(plain)
    }

    /// A writer that encrypts everything written through it (hint files).
    pub fn stream_writer<W: Write>(&self, mut inner: W) -> io::Result<SealedWriter<W>> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let nonce = &nonce[..STREAM_NONCE_LEN];
        inner.write_all(nonce)?;
        Ok(SealedWriter {
            inner,
            encryptor: Some(EncryptorBE32::from_aead(self.aead.clone(), nonce.into())),
            pending: Vec::with_capacity(SEGMENT),
        })
    }

    /// A reader that decrypts what [`stream_writer`](Self::stream_writer)
    /// wrote; a damaged, truncated or foreign stream is an error.
    pub fn stream_reader<R: Read>(&self, mut inner: R) -> io::Result<OpenedReader<R>> {
        let mut nonce = [0u8; STREAM_NONCE_LEN];
        inner.read_exact(&mut nonce)?;
        Ok(OpenedReader {
            inner,
            decryptor: Some(DecryptorBE32::from_aead(
                self.aead.clone(),
                (&nonce[..]).into(),
            )),
            plain: Vec::new(),
            at: 0,
        })
    }
}

/// Bytes of a position (file id, offset) in a format 1 envelope's
/// associated data.
const POSITION_LEN: usize = 4 + 8;
/// Length of a format 1 envelope's associated data.
const AAD_LEN: usize = POSITION_LEN + RECORD_HEADER_LEN - 4;

/// File id and offset, then the envelope header after its CRC: a format 1
/// envelope's associated data; a movable envelope's is the header part.
fn associated_data(at: Position, header_after_crc: &[u8]) -> [u8; AAD_LEN] {
    let mut aad = [0u8; AAD_LEN];
    aad[..4].copy_from_slice(&at.file_id.to_le_bytes());
    aad[4..12].copy_from_slice(&at.offset.to_le_bytes());
    aad[12..].copy_from_slice(header_after_crc);
    aad
}

/// The key of the plain record encrypted as `text` under `keystream`
/// (fresh; block 0 made the Poly1305 key, so the text starts at block 1),
/// decrypted into `scratch` after its header.
fn decrypt_key<'s>(
    mut keystream: impl StreamCipher + StreamCipherSeek,
    text: &[u8],
    scratch: &'s mut Vec<u8>,
) -> Option<&'s [u8]> {
    keystream.seek(64u64);
    scratch.clear();
    scratch.extend_from_slice(text.get(..RECORD_HEADER_LEN)?);
    keystream.apply_keystream(scratch);
    let key_len = usize::from(u16::from_le_bytes([scratch[6], scratch[7]]));
    scratch.extend_from_slice(text.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + key_len)?);
    keystream.apply_keystream(&mut scratch[RECORD_HEADER_LEN..]);
    Some(&scratch[RECORD_HEADER_LEN..])
}

/// Turns a stored record whose CRC is verified (and which `stored` holds
/// exactly, in a buffer the caller may overwrite) into its plain record:
/// itself in a plain log, its decrypted envelope in an encrypted one. A
/// plain record in an encrypted log, or an envelope in a plain one, is
/// refused as damage.
pub fn open_record<'a>(
    cipher: Option<&Cipher>,
    stored: &'a mut [u8],
    at: Position,
) -> Result<RecordView<'a>, RecordError> {
    let encrypted = stored
        .get(5)
        .is_some_and(|&flags| flags & FLAG_ENCRYPTED != 0);
    match (cipher, encrypted) {
        (None, false) => verify(stored, at),
        (Some(cipher), true) => {
            verify(stored, at)?;
            cipher.open_in_place(stored, at)
        }
        _ => Err(RecordError::BadHeader),
    }
}

/// [`open_record`] for a record that must stay untouched (a mapped file, a
/// scan window): an envelope is copied to `scratch` first.
pub fn open_copy<'a>(
    cipher: Option<&Cipher>,
    stored: RecordView<'a>,
    at: Position,
    scratch: &'a mut Vec<u8>,
) -> Result<RecordView<'a>, RecordError> {
    match (cipher, stored.header.is_encrypted()) {
        (None, false) => Ok(stored),
        (Some(cipher), true) => {
            scratch.clear();
            scratch.extend_from_slice(stored.bytes);
            cipher.open_in_place(scratch, at)
        }
        _ => Err(RecordError::BadHeader),
    }
}

/// Writes `plain`, a plain record sealed for `at`, as the log must hold it
/// there: as is, or in an envelope. Returns the stored bytes.
pub fn stored_form<'a>(
    cipher: Option<&Cipher>,
    plain: &'a [u8],
    at: Position,
    scratch: &'a mut Vec<u8>,
) -> &'a [u8] {
    match cipher {
        None => plain,
        Some(cipher) => {
            scratch.clear();
            cipher.seal(plain, at, scratch);
            scratch
        }
    }
}

/// Encrypts in segments; [`finish`](Self::finish) must be called to write
/// the last one.
pub struct SealedWriter<W: Write> {
    inner: W,
    encryptor: Option<EncryptorBE32<XChaCha20Poly1305>>,
    pending: Vec<u8>,
}

impl<W: Write> SealedWriter<W> {
    /// Writes the last segment and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let encryptor = self.encryptor.take().expect("finished once");
        let sealed = encryptor
            .encrypt_last(self.pending.as_slice())
            .map_err(|_| io::Error::other("hint encryption failed"))?;
        self.inner.write_all(&sealed)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = SEGMENT - self.pending.len();
        let n = room.min(buf.len());
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == SEGMENT {
            let encryptor = self.encryptor.as_mut().expect("not finished");
            let sealed = encryptor
                .encrypt_next(self.pending.as_slice())
                .map_err(|_| io::Error::other("hint encryption failed"))?;
            self.inner.write_all(&sealed)?;
            self.pending.clear();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decrypts what a [`SealedWriter`] wrote.
pub struct OpenedReader<R: Read> {
    inner: R,
    decryptor: Option<DecryptorBE32<XChaCha20Poly1305>>,
    plain: Vec<u8>,
    at: usize,
}

impl<R: Read> OpenedReader<R> {
    /// Decrypts the next segment into `plain`; false after the last one.
    /// Every segment but the last is full, and the last never is (it may be
    /// empty), so a full read means more follows.
    fn fill(&mut self) -> io::Result<bool> {
        let Some(decryptor) = self.decryptor.as_mut() else {
            return Ok(false);
        };
        let mut sealed = Vec::with_capacity(SEGMENT + TAG_LEN);
        (&mut self.inner)
            .take((SEGMENT + TAG_LEN) as u64)
            .read_to_end(&mut sealed)?;
        let damaged = |_| io::Error::new(io::ErrorKind::InvalidData, "it fails authentication");
        self.plain = if sealed.len() == SEGMENT + TAG_LEN {
            decryptor.decrypt_next(sealed.as_slice()).map_err(damaged)?
        } else {
            let decryptor = self.decryptor.take().expect("checked above");
            decryptor.decrypt_last(sealed.as_slice()).map_err(damaged)?
        };
        self.at = 0;
        Ok(true)
    }
}

impl<R: Read> Read for OpenedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.plain.len() {
            if !self.fill()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.plain.len() - self.at);
        buf[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::Attrs;
    use crate::store::layout::LOG_FILE;
    use crate::store::record::RecordKind;
    use crate::store::testing::{assert_matches, batch_put, churn, put, set_attrs, Model};
    use crate::store::{check, open_with, OpenError, SyncMode};
    use std::sync::Arc;

    /// A value that must never appear in the clear on disk.
    const MARKER: &[u8] = b"SECRET-MARKER-7f3a";

    fn cipher(byte: u8) -> Option<Arc<Cipher>> {
        Some(Arc::new(Cipher::from_key(&[byte; KEY_LEN])))
    }

    fn files_contain(dir: &Path, needle: &[u8]) -> bool {
        fs::read_dir(dir).unwrap().any(|entry| {
            let bytes = fs::read(entry.unwrap().path()).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    }

    /// An encrypted directory holding plain writes, a batch, a lock and an
    /// expiry, values with trailing NUL bytes, and the marker as a key and a
    /// value; returns it with its model.
    fn encrypted_store(sync: SyncMode) -> (tempfile::TempDir, Model) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_with(dir.path(), sync, cipher(1)).unwrap();
        let mut model = Model::new();
        churn(&store, &mut model);
        put(&store, &mut model, "SECRET-MARKER-7f3a", b"key is secret");
        put(&store, &mut model, "nul", b"ends with NULs\0\0\0");
        store
            .batch(
                &[batch_put("b1", MARKER), batch_put("b2", MARKER)],
                &mut Vec::new(),
            )
            .unwrap();
        model.insert("b1".into(), MARKER.to_vec());
        model.insert("b2".into(), MARKER.to_vec());
        set_attrs(
            &store,
            "key-1",
            Attrs {
                locked: true,
                expires_at_ms: 0,
                damaged: false,
            },
        );
        drop(store);
        (dir, model)
    }

    #[test]
    fn an_encrypted_store_round_trips_and_shows_no_plaintext() {
        for sync in [SyncMode::Always, SyncMode::Never] {
            let (dir, model) = encrypted_store(sync);
            assert!(
                !files_contain(dir.path(), MARKER),
                "marker found in the clear"
            );
            assert!(!files_contain(dir.path(), b"round 4 of key"));
            // Full scan (no clean close), then from the encrypted hint.
            let (store, report) = open_with(dir.path(), sync, cipher(1)).unwrap();
            assert!(report.records > 0);
            assert_matches(&store, &model);
            assert!(
                store
                    .get(b"key-1", &mut Vec::new())
                    .unwrap()
                    .unwrap()
                    .locked
            );
            store.close().unwrap();
            drop(store);
            assert!(!files_contain(dir.path(), MARKER), "hint holds the marker");
            let (store, report) = open_with(dir.path(), sync, cipher(1)).unwrap();
            assert_eq!(report.records, 0, "everything came from the hint");
            assert_matches(&store, &model);
            store.compact().unwrap();
            assert_matches(&store, &model);
            drop(store);
            let (store, _) = open_with(dir.path(), sync, cipher(1)).unwrap();
            assert_matches(&store, &model);
            drop(store);
            assert!(!files_contain(dir.path(), MARKER));
            assert!(check(dir.path(), cipher(1).as_deref())
                .unwrap()
                .scan
                .damage
                .is_none());
        }
    }

    #[test]
    fn a_wrong_or_missing_key_is_refused_at_once() {
        let (dir, _) = encrypted_store(SyncMode::Always);
        for (key, why) in [(cipher(2), "another key"), (None, "is encrypted")] {
            match open_with(dir.path(), SyncMode::Always, key) {
                Err(err @ OpenError::Key(..)) => {
                    assert!(err.to_string().contains(why), "{err}")
                }
                other => panic!("expected a key error, got {:?}", other.map(|_| ())),
            }
        }
        let plain = tempfile::tempdir().unwrap();
        drop(open_with(plain.path(), SyncMode::Always, None).unwrap());
        assert!(matches!(
            open_with(plain.path(), SyncMode::Always, cipher(1)),
            Err(OpenError::Key(..))
        ));
    }

    #[test]
    fn rotation_rewrites_every_value_under_the_new_key() {
        let (dir, model) = encrypted_store(SyncMode::Always);
        let (store, _) = open_with(dir.path(), SyncMode::Always, cipher(1)).unwrap();
        store.compact_with(cipher(3)).unwrap();
        assert_matches(&store, &model);
        let mut more = model.clone();
        put(&store, &mut more, "after-rotation", b"new key");
        drop(store);
        assert!(matches!(
            open_with(dir.path(), SyncMode::Always, cipher(1)),
            Err(OpenError::Key(..))
        ));
        let (store, _) = open_with(dir.path(), SyncMode::Always, cipher(3)).unwrap();
        assert_matches(&store, &more);
        assert!(
            store
                .get(b"key-1", &mut Vec::new())
                .unwrap()
                .unwrap()
                .locked
        );
        // And back to a plain log.
        store.compact_with(None).unwrap();
        drop(store);
        let (store, _) = open_with(dir.path(), SyncMode::Always, None).unwrap();
        assert_matches(&store, &more);
    }

    #[test]
    fn a_plain_store_can_be_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_with(dir.path(), SyncMode::Always, None).unwrap();
        let mut model = Model::new();
        churn(&store, &mut model);
        put(&store, &mut model, "m", MARKER);
        assert!(files_contain(dir.path(), MARKER));
        store.compact_with(cipher(4)).unwrap();
        store.close().unwrap();
        drop(store);
        assert!(!files_contain(dir.path(), MARKER));
        let (store, _) = open_with(dir.path(), SyncMode::Always, cipher(4)).unwrap();
        assert_matches(&store, &model);
    }

    #[test]
    fn associated_data_is_laid_out_as_before() {
        // The Vec built before the stack array: old logs must still open.
        let at = Position {
            file_id: 0xdead_beef,
            offset: 0x0102_0304_0506_0708,
        };
        let header: Vec<u8> = (1..RECORD_HEADER_LEN as u8 - 3).collect();
        let mut old = Vec::with_capacity(12 + header.len());
        old.extend_from_slice(&at.file_id.to_le_bytes());
        old.extend_from_slice(&at.offset.to_le_bytes());
        old.extend_from_slice(&header);
        assert_eq!(associated_data(at, &header)[..], old[..]);
    }

    /// Where [`plain_record`] is sealed.
    const AT: Position = Position {
        file_id: 1,
        offset: 64,
    };

    /// A plain put record of `k` = `value`, stamped for no place, as an
    /// envelope holds it.
    fn plain_record() -> Vec<u8> {
        use crate::store::record::{RecordBuilder, RecordMeta};
        let mut plain = Vec::new();
        RecordBuilder::begin(&mut plain, &RecordMeta::put(b"k", b"", 0));
        plain.extend_from_slice(b"value");
        RecordBuilder::seal(&mut plain, 1, 0, NOWHERE);
        plain
    }

    #[test]
    fn envelopes_are_xchacha20_poly1305_whichever_run_sealed_them() {
        let (at, plain, key) = (AT, plain_record(), [9; KEY_LEN]);
        let (this_run, other_run) = (Cipher::from_key(&key), Cipher::from_key(&key));
        // Several, so the nonces' counters are not all zero.
        for _ in 0..3 {
            let mut envelope = Vec::new();
            this_run.seal(&plain, at, &mut envelope);
            // The reference construction, with no subkey cached, opens it.
            let (head, rest) = envelope.split_at(RECORD_HEADER_LEN + NONCE_LEN);
            let (text, tags) = rest.split_at(rest.len() - TAG_LEN - PLACE_TAG_LEN);
            let (tag, place) = tags.split_at(TAG_LEN);
            let nonce = &head[RECORD_HEADER_LEN..];
            let mut text = text.to_vec();
            XChaCha20Poly1305::new(Key::from_slice(&key))
                .decrypt_in_place_detached(
                    XNonce::from_slice(nonce),
                    &head[4..RECORD_HEADER_LEN],
                    &mut text,
                    Tag::from_slice(tag),
                )
                .unwrap();
            assert_eq!(text, plain);
            // The place tag, as documented: BLAKE2s-128 under a subkey.
            let mut derive = <Blake2sMac256 as Mac>::new_from_slice(&key).unwrap();
            derive.update(b"lucid place tag key");
            let subkey = derive.finalize().into_bytes();
            let mut expected =
                <blake2::Blake2sMac<blake2::digest::consts::U16> as Mac>::new_from_slice(&subkey)
                    .unwrap();
            for part in [
                &at.file_id.to_le_bytes()[..],
                &at.offset.to_le_bytes(),
                nonce,
                tag,
            ] {
                expected.update(part);
            }
            assert_eq!(expected.finalize().into_bytes()[..], *place);
            // Its sealer opens it through the subkey, a later run through
            // the whole construction; a changed byte fails both ways, also
            // with its CRC made right.
            for run in [&this_run, &other_run] {
                assert_eq!(run.peek_key(&envelope, &mut Vec::new()), Some(&b"k"[..]));
                let mut copy = envelope.clone();
                assert_eq!(open_record(Some(run), &mut copy, at).unwrap().bytes, plain);
                let mut tampered = envelope.clone();
                tampered[RECORD_HEADER_LEN + NONCE_LEN + 3] ^= 1;
                crate::store::record::RecordBuilder::restamp(&mut tampered, at);
                assert!(open_record(Some(run), &mut tampered, at).is_err());
            }
        }
    }

    #[test]
    fn nonces_never_repeat_within_a_run_or_across_restarts() {
        let (at, plain) = (AT, plain_record());
        let mut seen = std::collections::HashSet::new();
        // Two ciphers over one key: the same key loaded by two starts.
        for start in [
            Cipher::from_key(&[9; KEY_LEN]),
            Cipher::from_key(&[9; KEY_LEN]),
        ] {
            for _ in 0..1000 {
                let mut envelope = Vec::new();
                start.seal(&plain, at, &mut envelope);
                let nonce = envelope[RECORD_HEADER_LEN..RECORD_HEADER_LEN + NONCE_LEN].to_vec();
                assert!(seen.insert(nonce), "a nonce was used twice");
                let opened = open_record(Some(&start), &mut envelope, at).unwrap();
                assert_eq!(opened.value, b"value");
            }
        }
    }

    /// Where the records of a log's bytes start, and how long each is.
    fn records_of(log: &[u8]) -> Vec<(usize, usize)> {
        let mut at = crate::store::record::FILE_HEADER_LEN;
        let mut records = Vec::new();
        while at < log.len() {
            let header = &log[at..at + RECORD_HEADER_LEN];
            let len = RecordHeader::decode(header.try_into().unwrap())
                .unwrap()
                .record_len() as usize;
            records.push((at, len));
            at += len;
        }
        records
    }

    fn file_id_of(log: &[u8]) -> u32 {
        crate::store::record::FileHeader::decode(log[..32].try_into().unwrap())
            .unwrap()
            .file_id
    }

    /// Stamps every record's CRC for where it now sits, as a forger can.
    fn restamp_all(log: &mut [u8]) {
        let file_id = file_id_of(log);
        for (at, len) in records_of(log) {
            let place = Position {
                file_id,
                offset: at as u64,
            };
            crate::store::record::RecordBuilder::restamp(&mut log[at..at + len], place);
        }
    }

    #[test]
    fn an_envelope_moves_unopened_and_only_from_its_own_place() {
        let cipher = Cipher::from_key(&[9; KEY_LEN]);
        let mut envelope = Vec::new();
        cipher.seal(&plain_record(), AT, &mut envelope);
        let there = Position {
            file_id: 2,
            offset: 4096,
        };
        let mut moved = Vec::new();
        cipher
            .move_envelope(&envelope, AT, there, &mut moved)
            .unwrap();
        // Same nonce, ciphertext and tag: nothing was sealed again.
        let sealed = RECORD_HEADER_LEN..envelope.len() - PLACE_TAG_LEN;
        assert_eq!(moved[sealed.clone()], envelope[sealed.clone()]);
        assert_eq!(
            open_record(Some(&cipher), &mut moved.clone(), there)
                .unwrap()
                .value,
            b"value"
        );
        assert!(open_record(Some(&cipher), &mut moved.clone(), AT).is_err());
        // Bytes copied elsewhere, CRC made right: refused there, and not
        // laundered by a move from there either.
        let mut copied = envelope.clone();
        crate::store::record::RecordBuilder::restamp(&mut copied, there);
        assert_eq!(
            open_record(Some(&cipher), &mut copied.clone(), there),
            Err(RecordError::ChecksumMismatch)
        );
        assert!(cipher
            .move_envelope(&copied, there, AT, &mut Vec::new())
            .is_err());
        // Another key cannot move it (nor forge its place tag).
        let other = Cipher::from_key(&[8; KEY_LEN]);
        assert!(other
            .move_envelope(&envelope, AT, there, &mut Vec::new())
            .is_err());
        // A changed ciphertext byte moves (the move reads no more than the
        // place tag) but never opens.
        let mut tampered = envelope.clone();
        tampered[RECORD_HEADER_LEN + NONCE_LEN + 3] ^= 1;
        let mut moved = Vec::new();
        cipher
            .move_envelope(&tampered, AT, there, &mut moved)
            .unwrap();
        assert!(open_record(Some(&cipher), &mut moved, there).is_err());
    }

    #[test]
    fn envelopes_swapped_or_cut_out_never_count() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_with(dir.path(), SyncMode::Always, cipher(1)).unwrap();
        let mut model = Model::new();
        for key in ["a", "b", "c", "d"] {
            put(&store, &mut model, key, format!("value {key}").as_bytes());
        }
        drop(store);
        let log = dir.path().join(LOG_FILE);
        let original = fs::read(&log).unwrap();
        let puts: Vec<_> = records_of(&original)
            .into_iter()
            .filter(|&(at, _)| original[at + 4] == RecordKind::Put as u8)
            .collect();
        let ((b, len), (c, _)) = (puts[1], puts[2]);
        // Two envelopes of one size swapped, CRCs made right: the sync
        // markers after them still authenticate, so this is damage in
        // durable data and the node refuses to start.
        let mut swapped = original.clone();
        swapped[b..b + len].copy_from_slice(&original[c..c + len]);
        swapped[c..c + len].copy_from_slice(&original[b..b + len]);
        restamp_all(&mut swapped);
        fs::write(&log, &swapped).unwrap();
        assert!(matches!(
            open_with(dir.path(), SyncMode::Always, cipher(1)),
            Err(OpenError::Corrupt { .. })
        ));
        // One cut out of the middle: nothing after it authenticates where
        // it now sits, so the log reads as if cut short there (as any
        // truncation does); b's place never serves c or d.
        let mut cut_out = original.clone();
        cut_out.drain(b..b + len);
        restamp_all(&mut cut_out);
        fs::write(&log, &cut_out).unwrap();
        let (store, _) = open_with(dir.path(), SyncMode::Always, cipher(1)).unwrap();
        assert_matches(&store, &Model::from([("a".into(), b"value a".to_vec())]));
    }

    #[test]
    fn a_record_cut_out_cannot_be_filled_with_empty_batch_frames() {
        // A delete of a 24-byte key is a 160-byte envelope: four 40-byte
        // frame headers would fill its place exactly and bring the key back.
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_with(dir.path(), SyncMode::Always, cipher(1)).unwrap();
        let mut model = Model::new();
        let key = "a-key-of-24-bytes-length";
        put(&store, &mut model, key, b"deleted secret");
        crate::store::testing::delete(&store, &mut model, key);
        put(&store, &mut model, "later", b"write");
        drop(store);
        let log = dir.path().join(LOG_FILE);
        let mut bytes = fs::read(&log).unwrap();
        let (at, len) = records_of(&bytes)
            .into_iter()
            .find(|&(at, _)| bytes[at + 4] == RecordKind::Delete as u8)
            .unwrap();
        assert_eq!(len, 4 * RECORD_HEADER_LEN);
        let file_id = file_id_of(&bytes);
        for frame in (at..at + len).step_by(RECORD_HEADER_LEN) {
            let header = &mut bytes[frame..frame + RECORD_HEADER_LEN];
            header.fill(0);
            header[4] = RecordKind::Batch as u8;
            header[16] = 9; // a sequence number
            let place = Position {
                file_id,
                offset: frame as u64,
            };
            crate::store::record::RecordBuilder::restamp(header, place);
        }
        fs::write(&log, &bytes).unwrap();
        // The sync markers after them still authenticate: damage in
        // durable data, so the node refuses to start.
        assert!(matches!(
            open_with(dir.path(), SyncMode::Always, cipher(1)),
            Err(OpenError::Corrupt { .. })
        ));
    }

    #[test]
    fn compaction_moves_envelopes_unopened_and_rotation_reseals_them() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_with(dir.path(), SyncMode::Never, cipher(1)).unwrap();
        let mut model = Model::new();
        put(&store, &mut model, "k", b"old");
        put(&store, &mut model, "k", MARKER);
        let log = dir.path().join(LOG_FILE);
        let sealed_part = |log: &[u8]| {
            let (at, len) = *records_of(log).last().unwrap();
            log[at + RECORD_HEADER_LEN..at + len - PLACE_TAG_LEN].to_vec()
        };
        let before = sealed_part(&fs::read(&log).unwrap());
        store.compact().unwrap();
        let after = fs::read(&log).unwrap();
        assert_eq!(records_of(&after).len(), 1);
        assert_eq!(sealed_part(&after), before, "moved as it was");
        store.compact_with(cipher(2)).unwrap();
        assert_ne!(sealed_part(&fs::read(&log).unwrap()), before);
        assert_matches(&store, &model);
    }

    #[test]
    fn a_tampered_byte_is_never_served() {
        let (dir, model) = encrypted_store(SyncMode::Always);
        let log = dir.path().join(LOG_FILE);
        let original = fs::read(&log).unwrap();
        // Any byte of the first record's ciphertext, CRC recomputed so only
        // the authentication can tell: a forger knows how to fix a CRC.
        let first = crate::store::record::FILE_HEADER_LEN;
        let header = RecordHeader::decode(
            original[first..first + RECORD_HEADER_LEN]
                .try_into()
                .unwrap(),
        )
        .unwrap();
        let end = first + header.record_len() as usize;
        let file_id = crate::store::record::FileHeader::decode(original[..32].try_into().unwrap())
            .unwrap()
            .file_id;
        for at in [first + RECORD_HEADER_LEN + 3, first + 70, end - 1] {
            let mut bytes = original.clone();
            bytes[at] ^= 0x20;
            crate::store::record::RecordBuilder::restamp(
                &mut bytes[first..end],
                Position {
                    file_id,
                    offset: first as u64,
                },
            );
            fs::write(&log, &bytes).unwrap();
            assert!(
                matches!(
                    open_with(dir.path(), SyncMode::Always, cipher(1)),
                    Err(OpenError::Corrupt { .. })
                ),
                "tampering at byte {at} went unnoticed"
            );
        }
        fs::write(&log, &original).unwrap();
        let (store, _) = open_with(dir.path(), SyncMode::Always, cipher(1)).unwrap();
        assert_matches(&store, &model);
    }

    #[test]
    fn the_key_file_must_be_private_and_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lucid.key");
        Cipher::create_key_file(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(Cipher::load(&path).is_ok());
        assert!(Cipher::create_key_file(&path).is_err(), "never overwritten");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Cipher::load(&path).unwrap_err().contains("chmod 600"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, [1u8; 31]).unwrap();
        assert!(Cipher::load(&path)
            .unwrap_err()
            .contains("exactly 32 bytes"));
    }

    #[test]
    fn sealed_streams_round_trip_and_refuse_damage() {
        let cipher = Cipher::from_key(&[9; KEY_LEN]);
        for len in [0, 10, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut writer = cipher.stream_writer(Vec::new()).unwrap();
            writer.write_all(&data).unwrap();
            let sealed = writer.finish().unwrap();
            let mut back = Vec::new();
            cipher
                .stream_reader(&sealed[..])
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "length {len}");
            let mut cut = Vec::new();
            let truncated = &sealed[..sealed.len() - 1];
            assert!(cipher
                .stream_reader(truncated)
                .unwrap()
                .read_to_end(&mut cut)
                .is_err());
        }
    }

    #[test]
    fn conditional_writes_work_on_an_encrypted_store() {
        use crate::store::engine::Expect;
        use crate::store::testing::put_if;
        for sync in [SyncMode::Always, SyncMode::Never] {
            let dir = tempfile::tempdir().unwrap();
            let (store, _) = open_with(dir.path(), sync, cipher(1)).unwrap();
            let put_if = |expect| put_if(&store, "k", b"v", expect);
            let first = put_if(Expect::Any).unwrap().version;
            let second = put_if(Expect::Version(first)).unwrap().version;
            assert!(put_if(Expect::Version(first)).is_err());
            assert!(put_if(Expect::NotVersion(first)).is_ok());
            let current = store.get(b"k", &mut Vec::new()).unwrap().unwrap().sequence;
            assert!(current > second);
            let mut tombstone = Vec::new();
            assert!(store
                .delete(b"k", &mut tombstone, Expect::Version(current))
                .unwrap());
        }
    }

    #[test]
    fn encrypting_refuses_to_leave_plaintext_copies_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_with(dir.path(), SyncMode::Always, None).unwrap();
        let mut model = Model::new();
        put(&store, &mut model, "m", MARKER);
        drop(store);
        let torn = dir.path().join(format!("{LOG_FILE}.torn-99"));
        fs::write(&torn, MARKER).unwrap();
        let (store, _) = open_with(dir.path(), SyncMode::Always, None).unwrap();
        let refused = store.compact_with(cipher(5)).unwrap_err();
        assert!(refused.to_string().contains("torn-99"), "{refused}");
        fs::remove_file(&torn).unwrap();
        store.compact_with(cipher(5)).unwrap();
        drop(store);
        assert!(!files_contain(dir.path(), MARKER));
        let (store, _) = open_with(dir.path(), SyncMode::Always, cipher(5)).unwrap();
        assert_matches(&store, &model);
    }
}
