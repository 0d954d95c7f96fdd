//! Snapshots: a point-in-time image of the store in one file, written while
//! the node keeps serving, checked whole, and restored offline (see
//! [`super::restore`]).
//!
//! # File layout
//!
//! ```text
//! header
//! offset size field
//!      0    8 magic           b"LUCIDSNP"
//!      8    4 format version  u32 LE, currently 1
//!     12    4 flags           u32 LE: bit 0 encrypted; other bits 0
//!     16    8 sequence        u64 LE: the snapshot holds every write up to
//!                             this sequence number (version), none after
//!     24    8 created at      u64 LE, wall-clock milliseconds since the epoch
//!     32    2 node name length u16 LE, at most 255
//!     34    2 reserved        0
//!     36    n node name       UTF-8 (`general.node_name`)
//!
//! log image, exactly as a data.log holds it (see `record`): its file header
//! (a fresh file id, base sequence = the sequence above, the key check
//! value of an encrypted store), then one put record per live key (a
//! quarantined one for a key whose record was found damaged), in the order
//! of the log they were copied from, stamped for their place in the image
//!
//! trailer (32 bytes)
//!      0    8 magic           b"LUCIDEND"
//!      8    8 keys            u64 LE: records in the image
//!     16    8 image length    u64 LE
//!     24    4 reserved        0
//!     28    4 CRC-32          (crc32fast) of every byte of the file before it
//! ```
//!
//! The key count and the image length are in the trailer, not the header,
//! so a snapshot streams as it is made: nothing of the image need be known
//! (or held) before its first byte is sent. A truncated file has no trailer
//! (or one whose lengths do not add up); any other damage fails the CRC,
//! and every record also carries its own (and, encrypted, its
//! authentication), which [`verify`] checks one by one so it can say where.
//! CRC-32 is chosen over a cryptographic hash on purpose: it is there for
//! accidental damage (a bad card, a cut download), at memory speed; whoever
//! can rewrite the file could recompute any unkeyed hash too, and what
//! matters against tampering, the records of an encrypted store, is
//! authenticated by its key already.
//!
//! # Encrypted stores
//!
//! The image holds the store's envelopes, moved unopened the way
//! compaction moves them (see [`super::crypt`]): a snapshot never holds a
//! key or a value in the clear, and restoring it needs the store's key
//! file. Only the header (node name, times, sequence, flags) is plain.
//!
//! # Consistency
//!
//! [`Store::snapshot`] pins the live records under one brief hold of the
//! writers (a copy of the index's locations, no key, see
//! `Store::pin_live_records`), then copies them from the log file as it was
//! (held open, so a compaction replacing it meanwhile changes nothing) with
//! no lock held: writes, reads and compactions go on, however slowly the
//! snapshot is consumed. The snapshot holds every write published before
//! the hold, and none after it; a batch is in it whole or not at all.
//! Each record is copied through compaction's own move
//! (`compaction::move_live_record`): verified at its old place, stamped for its new
//! one. A record found damaged becomes a quarantined record, as compaction
//! does it, so its key answers an error after a restore too.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::compaction::{move_live_record, CompactionError, Scratch};
use super::crypt::{open_copy, Cipher};
use super::index::Location;
use super::layout::{private_file, sync_dir};
use super::record::{
    u32_at, u64_at, verify as verify_record, FileHeader, FileHeaderError, Position, RecordHeader,
    RecordKind, FILE_HEADER_LEN, RECORD_HEADER_LEN,
};
use super::Store;
use crate::clock::now_ms;

/// Magic bytes at the start of a snapshot.
pub const MAGIC: &[u8; 8] = b"LUCIDSNP";
/// Magic bytes at the start of a snapshot's trailer.
const TRAILER_MAGIC: &[u8; 8] = b"LUCIDEND";
/// Version of the snapshot format written by this build.
pub const FORMAT_VERSION: u32 = 1;
/// The header's bytes before the node name.
const FIXED_HEADER_LEN: usize = 36;
/// The trailer's size.
const TRAILER_LEN: usize = 32;
/// Header flag of a snapshot of an encrypted store.
const FLAG_ENCRYPTED: u32 = 1;
/// Longest node name a header holds, in bytes.
pub const MAX_NODE_NAME: usize = 255;
/// How much of the log a snapshot reads at once (a longer record alone).
const COPY_WINDOW: u64 = 1024 * 1024;

/// What a snapshot's header and trailer say, and what checking it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Whether the store was encrypted.
    pub encrypted: bool,
    /// It holds every write up to this sequence number, none after.
    pub sequence: u64,
    /// When it was made, in milliseconds since the epoch.
    pub created_at_ms: u64,
    /// The node it was made on.
    pub node: String,
    /// Keys (records) in it.
    pub keys: u64,
    /// The whole file's size.
    pub bytes: u64,
    /// The log image's key check value (0: plain).
    key_check: u32,
}

/// What making a snapshot did.
#[derive(Debug, Clone)]
pub struct SnapshotReport {
    /// What the snapshot holds.
    pub info: SnapshotInfo,
    /// How long writers waited while the live records were pinned.
    pub writers_paused: Duration,
    /// Keys whose record was found damaged: they are in the snapshot as
    /// quarantined records (answering an error), or, if rewritten since the
    /// snapshot began, left out.
    pub damaged_keys: u64,
}

/// Why a snapshot could not be made, read or restored.
#[derive(Debug)]
pub enum SnapshotError {
    /// The file does not start like a snapshot.
    NotASnapshot,
    /// A snapshot of a format this build cannot read.
    NewerFormat(u32),
    /// The file ends early: a cut download or an interrupted write.
    Truncated,
    /// The file is damaged: what and where.
    Damaged(String),
    /// The snapshot is encrypted and no key was given.
    NeedsKey,
    /// The snapshot is not encrypted, but a key was given to restore it.
    NotEncrypted,
    /// The key given is not the snapshot's.
    WrongKey,
    /// The data directory holds data and `--force` was not given.
    DataPresent(PathBuf),
    /// Reading or writing failed.
    Io(io::Error),
    /// The data directory could not be opened (locked, unreadable).
    Open(super::OpenError),
}

impl std::error::Error for SnapshotError {}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotASnapshot => f.write_str("not a Lucid snapshot (it does not start with LUCIDSNP)"),
            Self::NewerFormat(version) => write!(
                f,
                "the snapshot has format version {version}, made by a newer Lucid; this build \
                 reads version {FORMAT_VERSION}: use a Lucid at least as new as the one that made it"
            ),
            Self::Truncated => f.write_str(
                "the snapshot is truncated (it ends before its trailer): an interrupted download \
                 or copy; make or copy it again",
            ),
            Self::Damaged(what) => write!(f, "the snapshot is damaged: {what}"),
            Self::NeedsKey => f.write_str(
                "the snapshot is of an encrypted store: restoring it needs the store's key file \
                 (encryption.enabled: true and encryption.key_file in the config)",
            ),
            Self::NotEncrypted => f.write_str(
                "the snapshot is of a plain store but encryption is enabled in the config; \
                 restore it with encryption off, then encrypt with `lucid compact --new-key-file`",
            ),
            Self::WrongKey => f.write_str(
                "the snapshot was encrypted with another key: encryption.key_file (or \
                 --key-file) names the wrong key file",
            ),
            Self::DataPresent(dir) => write!(
                f,
                "{} already holds data; restore into an empty directory, or give --force to set \
                 the current log aside (it is renamed, never deleted)",
                dir.display()
            ),
            Self::Io(err) => write!(f, "{err}"),
            Self::Open(err) => write!(f, "{err}"),
        }
    }
}

impl From<io::Error> for SnapshotError {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

impl From<CompactionError> for SnapshotError {
    fn from(err: CompactionError) -> Self {
        match err {
            CompactionError::Io(err) => Self::Io(err),
            other => Self::Io(io::Error::other(other.to_string())),
        }
    }
}

impl Store {
    /// Writes a snapshot of the store as it is now, made on node `node`, to
    /// `out` (see the module documentation). Writers wait only while the
    /// live records are pinned; `out` may be as slow as it likes.
    pub fn snapshot(&self, node: &str, out: impl Write) -> Result<SnapshotReport, SnapshotError> {
        let pinning = Instant::now();
        let pinned = self.pin_live_records();
        let writers_paused = pinning.elapsed();
        let mut locations = pinned.locations;
        locations.sort_unstable_by_key(|location| location.offset);
        let cipher = pinned.cipher.as_deref();
        let mut out = Checksummed::new(out);
        let header = Header {
            encrypted: cipher.is_some(),
            sequence: pinned.sequence,
            created_at_ms: now_ms(),
            node: truncated_name(node).to_owned(),
        };
        out.write_all(&header.encode())?;
        let image_start = out.written;
        let image = FileHeader::new(pinned.sequence, cipher.map_or(0, Cipher::check_value));
        out.write_all(&image.encode())?;
        let mut copy = Copy {
            store: self,
            from_id: pinned.file_id,
            to: Position {
                file_id: image.file_id,
                offset: FILE_HEADER_LEN as u64,
            },
            cipher,
            scratch: Scratch::default(),
            last_sequence: 0,
            keys: 0,
            damaged_keys: 0,
        };
        let mut window = Vec::new();
        let mut rest = &locations[..];
        while !rest.is_empty() {
            let (start, taken) = next_window(rest);
            let last = rest[taken - 1];
            let end = last.offset + u64::from(last.len);
            window.resize((end - start) as usize, 0);
            pinned.file.read_at(&mut window, start)?;
            for &location in &rest[..taken] {
                let at = (location.offset - start) as usize;
                let bytes = &window[at..at + location.len as usize];
                copy.record(bytes, location, &mut out)?;
            }
            rest = &rest[taken..];
            if window.capacity() > 2 * COPY_WINDOW as usize {
                window = Vec::new(); // back to the window's size after a long record
            }
        }
        let image_len = out.written - image_start;
        let trailer = trailer_fields(copy.keys, image_len);
        out.write_all(&trailer)?;
        let crc = out.crc.clone().finalize();
        out.inner.write_all(&crc.to_le_bytes())?;
        out.inner.flush()?;
        Ok(SnapshotReport {
            info: SnapshotInfo {
                encrypted: header.encrypted,
                sequence: header.sequence,
                created_at_ms: header.created_at_ms,
                node: header.node,
                keys: copy.keys,
                bytes: out.written + 4,
                key_check: image.key_check,
            },
            writers_paused,
            damaged_keys: copy.damaged_keys,
        })
    }
}

/// The first records of `sorted` read in one go: at most [`COPY_WINDOW`]
/// bytes of the log (the first record alone if it is longer). Returns
/// where the read starts and how many records it holds.
fn next_window(sorted: &[Location]) -> (u64, usize) {
    let start = sorted[0].offset;
    let taken = sorted
        .iter()
        .take_while(|location| location.offset + u64::from(location.len) - start <= COPY_WINDOW)
        .count();
    (start, taken.max(1))
}

/// The copy of pinned records into a snapshot's image.
struct Copy<'a> {
    store: &'a Store,
    /// The file id of the log the records are in.
    from_id: u32,
    /// Where the next record goes in the image.
    to: Position,
    cipher: Option<&'a Cipher>,
    scratch: Scratch,
    /// The sequence number of the record last copied.
    last_sequence: u64,
    /// Records written.
    keys: u64,
    /// Records found damaged.
    damaged_keys: u64,
}

impl Copy<'_> {
    /// Copies the record `bytes`, at `location` of the log, into `out`: as
    /// compaction moves it, or quarantined if it is damaged.
    fn record(
        &mut self,
        bytes: &[u8],
        location: Location,
        out: &mut impl Write,
    ) -> Result<(), SnapshotError> {
        let from = Position {
            file_id: self.from_id,
            offset: location.offset,
        };
        let moved = move_live_record(bytes, from, self.to, self.cipher, out, &mut self.scratch)?;
        let written = match moved {
            Some(written) => {
                let fixed = bytes[..RECORD_HEADER_LEN].try_into().expect("verified");
                self.last_sequence = RecordHeader::decode(fixed).map_or(0, |h| h.sequence);
                written
            }
            None => {
                self.damaged_keys += 1;
                let offset = from.offset;
                let Some((key, attrs)) = self.store.key_at(self.from_id, location) else {
                    log::error!(
                        "snapshot: the record at offset {offset} of the log is damaged and its key \
                         was written since the snapshot began; it is left out"
                    );
                    return Ok(());
                };
                log::error!(
                    "snapshot: key {:?} lost its value to damage at offset {offset}; the snapshot \
                     holds it quarantined (it answers an error until written or deleted)",
                    String::from_utf8_lossy(&key),
                );
                // Between its neighbours' numbers, as the damaged record's was.
                self.last_sequence += 1;
                let stored = self.scratch.quarantine(
                    &key,
                    attrs.expires_at_ms,
                    bytes,
                    self.last_sequence,
                    self.to,
                    self.cipher,
                );
                out.write_all(stored)?;
                stored.len() as u64
            }
        };
        self.to.offset += written;
        self.keys += 1;
        Ok(())
    }
}

/// A writer that counts and CRCs what passes through it.
struct Checksummed<W> {
    inner: W,
    crc: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> Checksummed<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            crc: crc32fast::Hasher::new(),
            written: 0,
        }
    }
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.crc.update(&data[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that counts and CRCs what passes through it.
struct ChecksummedReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
    read: u64,
}

impl<R: Read> Read for ChecksummedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// `node` cut to [`MAX_NODE_NAME`] bytes, at a character boundary.
fn truncated_name(node: &str) -> &str {
    let mut end = node.len().min(MAX_NODE_NAME);
    while !node.is_char_boundary(end) {
        end -= 1;
    }
    &node[..end]
}

/// A snapshot's header.
struct Header {
    encrypted: bool,
    sequence: u64,
    created_at_ms: u64,
    node: String,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(FIXED_HEADER_LEN + self.node.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let flags = if self.encrypted { FLAG_ENCRYPTED } else { 0 };
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&self.sequence.to_le_bytes());
        bytes.extend_from_slice(&self.created_at_ms.to_le_bytes());
        bytes.extend_from_slice(&(self.node.len() as u16).to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(self.node.as_bytes());
        bytes
    }

    /// Reads a header from `input`: the magic and the format version
    /// first, so a file of another kind or of a newer format is told as
    /// such, whatever follows.
    fn read(input: &mut impl Read) -> Result<Self, SnapshotError> {
        let mut fixed = [0u8; FIXED_HEADER_LEN];
        let got = read_up_to(input, &mut fixed)?;
        if got < MAGIC.len() || &fixed[..8] != MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        if got < FIXED_HEADER_LEN {
            return Err(SnapshotError::Truncated);
        }
        let version = u32_at(&fixed, 8);
        if version > FORMAT_VERSION {
            return Err(SnapshotError::NewerFormat(version));
        }
        let flags = u32_at(&fixed, 12);
        if version == 0 || flags & !FLAG_ENCRYPTED != 0 || fixed[34..36] != [0, 0] {
            return Err(SnapshotError::Damaged("its header is malformed".into()));
        }
        let mut node = vec![0u8; usize::from(u16::from_le_bytes([fixed[32], fixed[33]]))];
        if node.len() > MAX_NODE_NAME {
            return Err(SnapshotError::Damaged("its header is malformed".into()));
        }
        if read_up_to(input, &mut node)? < node.len() {
            return Err(SnapshotError::Truncated);
        }
        Ok(Self {
            encrypted: flags & FLAG_ENCRYPTED != 0,
            sequence: u64_at(&fixed, 16),
            created_at_ms: u64_at(&fixed, 24),
            node: String::from_utf8(node)
                .map_err(|_| SnapshotError::Damaged("its node name is not UTF-8".into()))?,
        })
    }

    fn len(&self) -> u64 {
        (FIXED_HEADER_LEN + self.node.len()) as u64
    }
}

/// The trailer's bytes before its CRC.
fn trailer_fields(keys: u64, image_len: u64) -> [u8; TRAILER_LEN - 4] {
    let mut bytes = [0u8; TRAILER_LEN - 4];
    bytes[..8].copy_from_slice(TRAILER_MAGIC);
    bytes[8..16].copy_from_slice(&keys.to_le_bytes());
    bytes[16..24].copy_from_slice(&image_len.to_le_bytes());
    bytes
}

/// Fills `buf` from `input` as far as it goes; returns how much was read.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(got)
}

/// Reads the header and the log image's file header of the snapshot at
/// `path`, without checking the rest: what a restore must know before it
/// writes anything.
pub fn peek(path: &Path) -> Result<SnapshotInfo, SnapshotError> {
    let mut input = BufReader::new(open(path)?);
    let header = Header::read(&mut input)?;
    let image = read_image_header(&mut input, &header)?;
    Ok(SnapshotInfo {
        encrypted: header.encrypted,
        sequence: header.sequence,
        created_at_ms: header.created_at_ms,
        node: header.node,
        keys: 0,
        bytes: fs::metadata(path)?.len(),
        key_check: image.key_check,
    })
}

/// Opens the snapshot at `path` for reading.
fn open(path: &Path) -> Result<File, SnapshotError> {
    File::open(path).map_err(|err| {
        SnapshotError::Io(io::Error::new(
            err.kind(),
            format!("cannot open {}: {err}", path.display()),
        ))
    })
}

/// Reads and checks the image's file header against the snapshot's header.
fn read_image_header(input: &mut impl Read, header: &Header) -> Result<FileHeader, SnapshotError> {
    let mut bytes = [0u8; FILE_HEADER_LEN];
    if read_up_to(input, &mut bytes)? < FILE_HEADER_LEN {
        return Err(SnapshotError::Truncated);
    }
    let image = FileHeader::decode(&bytes).map_err(|err| match err {
        FileHeaderError::UnsupportedVersion(_) => {
            SnapshotError::Damaged(format!("its log image: {err}; use a newer Lucid"))
        }
        _ => SnapshotError::Damaged(format!("its log image's header: {err}")),
    })?;
    if (image.key_check != 0) != header.encrypted || image.base_sequence != header.sequence {
        return Err(SnapshotError::Damaged(
            "its log image does not match its header".into(),
        ));
    }
    Ok(image)
}

/// Whether `cipher` (the key given, if any) fits a snapshot with `info`.
pub fn check_key(info: &SnapshotInfo, cipher: Option<&Cipher>) -> Result<(), SnapshotError> {
    match (info.key_check, cipher) {
        (0, None) => Ok(()),
        (0, Some(_)) => Err(SnapshotError::NotEncrypted),
        (_, None) => Err(SnapshotError::NeedsKey),
        (check, Some(cipher)) if check == cipher.check_value() => Ok(()),
        _ => Err(SnapshotError::WrongKey),
    }
}

/// Checks the snapshot at `path` whole: its header and format version, its
/// trailer, the CRC over everything, and every record's own CRC (with the
/// store's key `cipher`, every record's authentication too; without it,
/// that of an encrypted snapshot is left unchecked, which the caller
/// should say). Returns what it holds.
pub fn verify(path: &Path, cipher: Option<&Cipher>) -> Result<SnapshotInfo, SnapshotError> {
    read_image(path, cipher, &mut io::sink())
}

/// [`verify`], writing the log image to `image` as it is checked (a
/// restore). Whatever went to `image` is to be thrown away on an error.
pub(super) fn read_image(
    path: &Path,
    cipher: Option<&Cipher>,
    image: &mut impl Write,
) -> Result<SnapshotInfo, SnapshotError> {
    let file = open(path)?;
    let bytes = file.metadata()?.len();
    let mut input = ChecksummedReader {
        inner: BufReader::with_capacity(COPY_WINDOW as usize, &file),
        crc: crc32fast::Hasher::new(),
        read: 0,
    };
    let header = Header::read(&mut input)?;
    let trailer = read_trailer(&file, bytes)?;
    let (keys, image_len) = (u64_at(&trailer, 8), u64_at(&trailer, 16));
    if header.len().checked_add(image_len) != Some(bytes - TRAILER_LEN as u64) {
        return Err(SnapshotError::Truncated);
    }
    let image_header = read_image_header(&mut input, &header)?;
    let records_len = image_len
        .checked_sub(FILE_HEADER_LEN as u64)
        .ok_or(SnapshotError::Truncated)?;
    if let Some(cipher) = cipher {
        if image_header.key_check != 0 && image_header.key_check != cipher.check_value() {
            return Err(SnapshotError::WrongKey);
        }
    }
    image.write_all(&image_header.encode())?;
    let records = walk_records(
        &mut input.by_ref().take(records_len),
        image_header,
        cipher.filter(|_| header.encrypted),
        image,
    )?;
    let mut rest = [0u8; TRAILER_LEN - 4];
    input.read_exact(&mut rest)?;
    let crc = input.crc.clone().finalize();
    if rest != trailer[..TRAILER_LEN - 4] || crc != u32_at(&trailer, TRAILER_LEN - 4) {
        return Err(SnapshotError::Damaged(
            "its checksum does not match (a changed byte in its header or trailer)".into(),
        ));
    }
    if records != keys {
        return Err(SnapshotError::Damaged(format!(
            "its trailer counts {keys} keys but it holds {records}"
        )));
    }
    Ok(SnapshotInfo {
        encrypted: header.encrypted,
        sequence: header.sequence,
        created_at_ms: header.created_at_ms,
        node: header.node,
        keys,
        bytes,
        key_check: image_header.key_check,
    })
}

/// Reads the trailer of `file` (`len` bytes long), checking its magic. A
/// positional read: the file's offset, shared with the reader of the rest,
/// stays where it is.
fn read_trailer(file: &File, len: u64) -> Result<[u8; TRAILER_LEN], SnapshotError> {
    let mut trailer = [0u8; TRAILER_LEN];
    if len < (FIXED_HEADER_LEN + FILE_HEADER_LEN + TRAILER_LEN) as u64 {
        return Err(SnapshotError::Truncated);
    }
    file.read_exact_at(&mut trailer, len - TRAILER_LEN as u64)?;
    if &trailer[..8] != TRAILER_MAGIC {
        return Err(SnapshotError::Truncated);
    }
    if trailer[24..28] != [0; 4] {
        return Err(SnapshotError::Damaged("its trailer is malformed".into()));
    }
    Ok(trailer)
}

/// Walks every record of a log image (after its file header `image`) in
/// `input`, checking each at its place (and opening it with `cipher`, if
/// given), and copies it to `out`. Returns how many there were.
fn walk_records(
    input: &mut impl Read,
    image: FileHeader,
    cipher: Option<&Cipher>,
    out: &mut impl Write,
) -> Result<u64, SnapshotError> {
    let mut record = Vec::new();
    let mut opened = Vec::new();
    let (mut at, mut records, mut last_sequence) = (FILE_HEADER_LEN as u64, 0, 0);
    let damaged = |at: u64, what: &str| {
        SnapshotError::Damaged(format!("the record at offset {at} of its log image {what}"))
    };
    loop {
        record.resize(RECORD_HEADER_LEN, 0);
        match read_up_to(input, &mut record)? {
            0 => return Ok(records),
            RECORD_HEADER_LEN => {}
            _ => return Err(SnapshotError::Truncated),
        }
        let fixed = record[..].try_into().expect("a header");
        let header = RecordHeader::decode(fixed).map_err(|_| damaged(at, "is malformed"))?;
        record.resize(header.record_len() as usize, 0);
        if read_up_to(input, &mut record[RECORD_HEADER_LEN..])? < record.len() - RECORD_HEADER_LEN {
            return Err(SnapshotError::Truncated);
        }
        let place = Position {
            file_id: image.file_id,
            offset: at,
        };
        let view = verify_record(&record, place).map_err(|_| damaged(at, "fails its checksum"))?;
        if view.header.kind != RecordKind::Put
            || view.header.is_member()
            || view.header.is_encrypted() != (image.key_check != 0)
            || view.header.sequence <= last_sequence
            || view.header.sequence > image.base_sequence
        {
            return Err(damaged(at, "is not a live record"));
        }
        if cipher.is_some() {
            open_copy(cipher, view, place, &mut opened)
                .map_err(|_| damaged(at, "does not open with the key"))?;
        }
        last_sequence = view.header.sequence;
        out.write_all(&record)?;
        at += record.len() as u64;
        records += 1;
        if record.capacity() > COPY_WINDOW as usize {
            record = Vec::new();
        }
    }
}

/// Writes a snapshot file at `path` the crash-safe way: `fill` writes it to
/// a temporary file beside it (`path` + `.partial`), which is then synced,
/// verified (without the key: [`verify`]), renamed to `path` and its
/// directory synced. On any error the temporary file is removed and
/// `path` left as it was: a half-written snapshot never takes its name.
pub fn save<T>(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<T, SnapshotError>,
) -> Result<(T, SnapshotInfo), SnapshotError> {
    let partial = partial_path(path);
    let result = write_partial(&partial, path, fill);
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

/// The temporary name of the snapshot being written to `path`.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

fn write_partial<T>(
    partial: &Path,
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<T, SnapshotError>,
) -> Result<(T, SnapshotInfo), SnapshotError> {
    let file = private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(partial)
        .map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot create {}: {err}", partial.display()),
            )
        })?;
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    let filled = fill(&mut out)?;
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    drop(file);
    let info = verify(partial, None)?;
    fs::rename(partial, path)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    sync_dir(dir)?;
    Ok((filled, info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{put, Model};
    use crate::store::{open_with, SyncMode};
    use std::sync::Arc;

    fn saved(dir: &Path, cipher: Option<Arc<Cipher>>) -> (PathBuf, Model) {
        let (store, _) = open_with(&dir.join("data"), SyncMode::Never, cipher).unwrap();
        let mut model = Model::new();
        for n in 0..50 {
            put(
                &store,
                &mut model,
                &format!("k{}", n % 20),
                format!("clear-text-{n}").as_bytes(),
            );
        }
        let path = dir.join("snap");
        let (report, info) = save(&path, |out| store.snapshot("pi", out)).unwrap();
        assert_eq!(report.info, info);
        assert_eq!(info.keys, 20);
        assert_eq!(info.node, "pi");
        (path, model)
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = saved(dir.path(), None);
        let good = fs::read(&path).unwrap();
        verify(&path, None).unwrap();
        let bad = dir.path().join("bad");
        for at in (0..good.len()).step_by(7) {
            let mut bytes = good.clone();
            bytes[at] ^= 1 << (at % 8);
            fs::write(&bad, &bytes).unwrap();
            assert!(verify(&bad, None).is_err(), "bit flipped at {at}");
            fs::write(&bad, &good[..at]).unwrap();
            assert!(verify(&bad, None).is_err(), "cut at {at}");
        }
    }

    #[test]
    fn records_longer_than_a_window_and_files_longer_than_a_buffer_are_copied_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_with(&dir.path().join("data"), SyncMode::Never, None).unwrap();
        let mut model = Model::new();
        put(&store, &mut model, "small", b"1");
        put(
            &store,
            &mut model,
            "large",
            &vec![7; 3 * COPY_WINDOW as usize],
        );
        put(&store, &mut model, "after", b"2");
        let path = dir.path().join("snap");
        let (_, info) = save(&path, |out| store.snapshot("pi", out)).unwrap();
        assert_eq!(info.keys, 3);
        assert!(info.bytes > 3 * COPY_WINDOW);
    }

    #[test]
    fn a_damaged_record_is_snapshotted_quarantined_and_stays_an_error_after_a_restore() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_with(&dir.path().join("data"), SyncMode::Never, None).unwrap();
        let mut model = Model::new();
        put(&store, &mut model, "a", b"fine");
        put(&store, &mut model, "b", b"about-to-rot");
        put(&store, &mut model, "c", b"fine too");
        let log = dir.path().join("data").join(super::super::layout::LOG_FILE);
        let bytes = fs::read(&log).unwrap();
        let at = bytes
            .windows(12)
            .position(|w| w == b"about-to-rot")
            .unwrap();
        let file = fs::OpenOptions::new().write(true).open(&log).unwrap();
        file.write_all_at(b"X", at as u64).unwrap();
        let path = dir.path().join("snap");
        let (report, info) = save(&path, |out| store.snapshot("pi", out)).unwrap();
        assert_eq!((report.damaged_keys, info.keys), (1, 3));
        let target = dir.path().join("restored");
        super::super::restore::restore(&target, &path, None, false).unwrap();
        let (copy, _) = open_with(&target, SyncMode::Never, None).unwrap();
        let mut buf = Vec::new();
        assert!(
            copy.get(b"b", &mut buf).is_err(),
            "never served, never missing"
        );
        let a = copy.get(b"a", &mut buf).unwrap().unwrap().value.to_vec();
        assert_eq!(a, b"fine");
        assert_eq!(copy.stats().damaged_keys, 1);
    }

    #[test]
    fn a_newer_format_and_a_foreign_file_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = saved(dir.path(), None);
        let mut bytes = fs::read(&path).unwrap();
        bytes[8] = 2;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            verify(&path, None),
            Err(SnapshotError::NewerFormat(2))
        ));
        fs::write(&path, b"{\"key\":\"a\"}\n").unwrap();
        assert!(matches!(
            verify(&path, None),
            Err(SnapshotError::NotASnapshot)
        ));
    }

    #[test]
    fn an_encrypted_snapshot_opens_only_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(Cipher::from_key(&[7; 32]));
        let (path, _) = saved(dir.path(), Some(Arc::clone(&key)));
        let bytes = fs::read(&path).unwrap();
        assert!(
            !bytes.windows(10).any(|w| w == b"clear-text"),
            "no value in the clear"
        );
        assert!(verify(&path, Some(&key)).unwrap().encrypted);
        let other = Cipher::from_key(&[8; 32]);
        assert!(matches!(
            verify(&path, Some(&other)),
            Err(SnapshotError::WrongKey)
        ));
    }
}
