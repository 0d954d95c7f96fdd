//! The on-disk byte layout of the log: the file header and the record codec.
//!
//! # File header (32 bytes, at offset 0)
//!
//! ```text
//! offset size field
//!      0    8 magic           b"LUCIDLOG"
//!      8    4 format version  u32 LE, currently 1
//!     12    4 file id         u32 LE, random, new for every log file written
//!                             (a hint file names the log it describes by it)
//!     16    8 base sequence   u64 LE: the last sequence number issued when
//!                             the file was created; new records get larger
//!                             ones (lets compaction drop the newest
//!                             tombstones without numbers being reused)
//!     24    4 header CRC-32   over bytes 0..24
//!     28    4 key check       u32 LE: 0 for a plain log; for an encrypted
//!                             one a value derived from the key, so a wrong
//!                             key is told at once (see crypt.rs)
//! ```
//!
//! # Record (40-byte header, then key, content type and value)
//!
//! ```text
//! offset size field
//!      0    4 CRC-32 (crc32fast) of: the log's file id (u32 LE), the record's
//!             offset in the log (u64 LE), then every byte of the record after
//!             this field. A record is thus valid only where it was written:
//!             a record's bytes found anywhere else (inside a value, say, or
//!             copied from another log) never pass as a record.
//!      4    1 kind            1 = put, 2 = delete (tombstone), 3 = batch frame,
//!                             4 = sync marker
//!      5    1 flags           bit 0: locked (puts only), bit 1: member of a
//!                             batch frame, bit 2: encrypted envelope, bit 3:
//!                             movable envelope, one with a place tag (both
//!                             see crypt.rs), bit 4: quarantined (puts only,
//!                             see below); other bits 0
//!      6    2 key length      u16 LE, 1..=65535
//!      8    4 value length    u32 LE (0 for a tombstone)
//!     12    1 content type length u8 (0 for a tombstone)
//!     13    3 reserved        0
//!     16    8 sequence        u64 LE, strictly increasing in log order
//!     24    8 timestamp       u64 LE, wall-clock milliseconds since the epoch
//!     32    8 expires at      u64 LE, wall-clock milliseconds, 0 = never
//!     40    - key bytes, content type bytes, value bytes
//! ```
//!
//! All integers are little-endian. A record is valid only if its CRC matches
//! at its position and every reserved field is zero; anything else is
//! treated as damage. Compaction and repair, which move records, verify each
//! at its old position and stamp it for its new one.
//!
//! # Batch frame (an atomic group of puts and deletes)
//!
//! A frame is a record of kind 3 with no key and no content type whose value
//! is its member records, back to back. Each member is a complete put or
//! delete record with the "member" flag set, sequence numbers consecutive,
//! and its own CRC for the position where it sits, so the index can point at
//! a member and a read verifies it like any record. The frame's sequence
//! number is its last member's. The frame's CRC covers every member: a torn
//! or damaged frame fails as a whole, so a crash never leaves half a batch.
//! A member found outside a frame is not a record (the scan treats it as
//! damage); compaction and repair copy live members out as plain records
//! ([`RecordBuilder::detach`]).
//!
//! # Quarantined record (a key whose record was found damaged)
//!
//! A put with the "quarantined" flag, no content type, not locked, whose
//! value is the bytes of the key's damaged record as compaction found them
//! (kept for forensics, never interpreted). Compaction writes one in place
//! of a damaged record the index still points at (see `compaction.rs`), so
//! the key keeps existing and keeps answering an error, never a value and
//! never "missing", across restarts with or without the hint file, until a
//! write or delete replaces it. Its expiry is the key's, so a key that was
//! due to expire still does. It is never served: a read of it fails like a
//! read of a record failing its CRC.
//!
//! # Sync marker (what an fdatasync made durable)
//!
//! A marker is a record of kind 4 with no key, no content type, sequence
//! number 0, expiry 0, and an 8-byte value: `D`, u64 LE. It says "every byte
//! of this log before offset `D` was made durable by an fdatasync". The
//! store appends one after each fdatasync of the log that covered bytes no
//! marker covered yet (see `engine.rs`), naming the log's end when that sync
//! began; so `D` is never past the marker's own offset, and a marker
//! claiming more is not valid. The marker itself is durable only once the
//! next sync covers it. Markers take no sequence number and are never
//! visible as keys, versions or events; compaction drops them and the
//! recovery rule uses them to tell bytes a power cut may take back from
//! durable ones (see `scan.rs`). In an encrypted log a marker is sealed in
//! an envelope like any record.

use std::fmt;

/// Magic bytes at the start of every log file.
pub const FILE_MAGIC: &[u8; 8] = b"LUCIDLOG";
/// Version of the log format written by this build.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the file header in bytes.
pub const FILE_HEADER_LEN: usize = 32;
/// Size of the fixed record header in bytes.
pub const RECORD_HEADER_LEN: usize = 40;
/// Longest key a record can hold.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;
/// Longest content type a record can hold.
pub const MAX_CONTENT_TYPE_LEN: usize = u8::MAX as usize;
/// Largest value a record can hold (the value length field is a u32; the
/// node's configured limit is far lower).
pub const MAX_VALUE_LEN: usize = (u32::MAX as usize) - RECORD_HEADER_LEN - 2 * MAX_KEY_LEN;

/// Flag of a put whose key is locked against changes.
pub const FLAG_LOCKED: u8 = 1;
/// Flag of a quarantined put: it stands for a damaged record and is never
/// served (see the module documentation).
pub const FLAG_DAMAGED: u8 = 16;
/// Flag of a record that is a member of a batch frame.
pub const FLAG_MEMBER: u8 = 2;
/// Flag of an envelope: an encrypted record (see [`super::crypt`]).
pub const FLAG_ENCRYPTED: u8 = 4;
/// Flag of an envelope whose place is authenticated by a place tag instead
/// of its encryption, so it can move unopened (see [`super::crypt`]).
pub const FLAG_MOVABLE: u8 = 8;

/// Length of an envelope's nonce (XChaCha20-Poly1305; the envelope's
/// layout is in [`super::crypt`]).
pub const NONCE_LEN: usize = 24;
/// Length of an envelope's authentication tag.
pub const TAG_LEN: usize = 16;
/// Length of a movable envelope's place tag.
pub const PLACE_TAG_LEN: usize = 16;
/// Bytes an envelope adds to the plain record it wraps.
pub const ENVELOPE_OVERHEAD: usize = RECORD_HEADER_LEN + NONCE_LEN + TAG_LEN + PLACE_TAG_LEN;

/// Bytes an envelope with these header flags adds to its plain record: a
/// format 1 envelope (not movable) has no place tag.
pub fn envelope_overhead(flags: u8) -> usize {
    if flags & FLAG_MOVABLE != 0 {
        ENVELOPE_OVERHEAD
    } else {
        ENVELOPE_OVERHEAD - PLACE_TAG_LEN
    }
}

/// What a record does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Sets the key to the record's value.
    Put = 1,
    /// Removes the key (a tombstone).
    Delete = 2,
    /// An atomic group of puts and deletes (see the module documentation).
    Batch = 3,
    /// A sync marker: what an fdatasync made durable (see the module
    /// documentation).
    Marker = 4,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Put),
            2 => Some(Self::Delete),
            3 => Some(Self::Batch),
            4 => Some(Self::Marker),
            _ => None,
        }
    }
}

/// The decoded fixed-size header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Stored CRC-32 of the record body (everything after the CRC field).
    pub crc: u32,
    /// Put, delete or batch frame.
    pub kind: RecordKind,
    /// [`FLAG_LOCKED`] and [`FLAG_MEMBER`] bits.
    pub flags: u8,
    /// Key length in bytes.
    pub key_len: u16,
    /// Value length in bytes.
    pub value_len: u32,
    /// Content type length in bytes.
    pub content_type_len: u8,
    /// Sequence number of this write.
    pub sequence: u64,
    /// Wall-clock time of the write, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Absolute expiry in milliseconds since the Unix epoch; 0 = never.
    pub expires_at_ms: u64,
}

impl RecordHeader {
    /// Total record length on disk: header, key, content type and value.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64
            + u64::from(self.key_len)
            + u64::from(self.content_type_len)
            + u64::from(self.value_len)
    }

    /// Parses and sanity-checks a record header. It does not check the CRC,
    /// which needs the whole record (see [`verify`]).
    pub fn decode(bytes: &[u8; RECORD_HEADER_LEN]) -> Result<Self, RecordError> {
        let kind = RecordKind::from_byte(bytes[4]).ok_or(RecordError::BadHeader)?;
        let flags = bytes[5];
        let reserved = &bytes[13..16];
        let allowed = match kind {
            RecordKind::Put => {
                FLAG_LOCKED | FLAG_MEMBER | FLAG_ENCRYPTED | FLAG_MOVABLE | FLAG_DAMAGED
            }
            RecordKind::Delete => FLAG_MEMBER | FLAG_ENCRYPTED | FLAG_MOVABLE,
            RecordKind::Batch => 0,
            RecordKind::Marker => FLAG_ENCRYPTED | FLAG_MOVABLE,
        };
        if flags & !allowed != 0 || reserved.iter().any(|&b| b != 0) {
            return Err(RecordError::BadHeader);
        }
        let header = Self {
            crc: u32_at(bytes, 0),
            kind,
            flags,
            key_len: u16::from_le_bytes([bytes[6], bytes[7]]),
            value_len: u32_at(bytes, 8),
            content_type_len: bytes[12],
            sequence: u64_at(bytes, 16),
            timestamp_ms: u64_at(bytes, 24),
            expires_at_ms: u64_at(bytes, 32),
        };
        let no_value = header.value_len == 0 && header.content_type_len == 0;
        let envelope_shaped = header.key_len == 0
            && header.content_type_len == 0
            && header.timestamp_ms == 0
            && header.expires_at_ms == 0
            && flags & (FLAG_LOCKED | FLAG_DAMAGED) == 0
            && header.value_len as usize > envelope_overhead(flags);
        let marker_shaped = kind != RecordKind::Marker || header.sequence == 0;
        let well_formed = match kind {
            _ if !marker_shaped => false,
            _ if flags & FLAG_ENCRYPTED != 0 => envelope_shaped,
            _ if flags & FLAG_MOVABLE != 0 => false,
            RecordKind::Put => header.key_len > 0,
            RecordKind::Delete => header.key_len > 0 && no_value,
            // A frame holds at least one member: an empty one, a bare
            // header with a CRC anyone can compute, could stand in for
            // records cut out of an encrypted log.
            RecordKind::Batch => {
                header.key_len == 0
                    && header.content_type_len == 0
                    && header.expires_at_ms == 0
                    && header.value_len > 0
            }
            RecordKind::Marker => {
                header.key_len == 0
                    && header.content_type_len == 0
                    && header.value_len == MARKER_VALUE_LEN
                    && header.expires_at_ms == 0
            }
        };
        if !well_formed {
            return Err(RecordError::BadHeader);
        }
        Ok(header)
    }

    /// Whether this put locks its key.
    pub fn is_locked(&self) -> bool {
        self.flags & FLAG_LOCKED != 0
    }

    /// Whether this put is a quarantined record, standing for a damaged one.
    pub fn is_damaged(&self) -> bool {
        self.flags & FLAG_DAMAGED != 0
    }

    /// Whether this record is a member of a batch frame.
    pub fn is_member(&self) -> bool {
        self.flags & FLAG_MEMBER != 0
    }

    /// Whether this record is an envelope around an encrypted record.
    pub fn is_encrypted(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }

    /// Whether this record is an envelope that can move unopened.
    pub fn is_movable(&self) -> bool {
        self.flags & FLAG_MOVABLE != 0
    }
}

/// Why bytes could not be accepted as a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// The fixed header has an unknown kind, non-zero reserved bytes or
    /// impossible lengths.
    BadHeader,
    /// The stored CRC does not match the bytes.
    ChecksumMismatch,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadHeader => f.write_str("malformed record header"),
            Self::ChecksumMismatch => f.write_str("record checksum mismatch"),
        }
    }
}

/// Where a record sits: the log file it belongs to and its offset there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The log's random file id (see [`FileHeader`]).
    pub file_id: u32,
    /// The record's offset in that log.
    pub offset: u64,
}

/// A record's CRC computed piece by piece, for records too large to hold
/// in memory at once: feed it every byte after the CRC field, in order.
pub struct RecordChecksum(crc32fast::Hasher);

impl RecordChecksum {
    /// Starts the CRC of a record at `at`.
    pub fn new(at: Position) -> Self {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&at.file_id.to_le_bytes());
        crc.update(&at.offset.to_le_bytes());
        Self(crc)
    }

    /// Adds the next bytes of the record.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The CRC of everything added.
    pub fn finish(self) -> u32 {
        self.0.finalize()
    }
}

/// The CRC of a record (`bytes` without its CRC field) at `at`.
fn checksum(bytes_after_crc: &[u8], at: Position) -> u32 {
    let mut crc = RecordChecksum::new(at);
    crc.update(bytes_after_crc);
    crc.finish()
}

/// The fields a caller supplies to start a record; lengths are derived, and
/// the sequence number and timestamp are stamped by [`RecordBuilder::seal`]
/// when the record is appended.
#[derive(Debug, Clone, Copy)]
pub struct RecordMeta<'a> {
    /// Put or delete.
    pub kind: RecordKind,
    /// The key, 1..=[`MAX_KEY_LEN`] bytes.
    pub key: &'a [u8],
    /// The content type, at most [`MAX_CONTENT_TYPE_LEN`] bytes (empty for a tombstone).
    pub content_type: &'a [u8],
    /// Absolute expiry, 0 = never.
    pub expires_at_ms: u64,
    /// Whether the key is locked (puts only).
    pub locked: bool,
}

impl<'a> RecordMeta<'a> {
    /// The metadata of an unlocked put of `key`.
    pub fn put(key: &'a [u8], content_type: &'a [u8], expires_at_ms: u64) -> Self {
        Self {
            kind: RecordKind::Put,
            key,
            content_type,
            expires_at_ms,
            locked: false,
        }
    }

    /// The metadata of a tombstone for `key`.
    pub fn tombstone(key: &'a [u8]) -> Self {
        Self {
            kind: RecordKind::Delete,
            key,
            content_type: b"",
            expires_at_ms: 0,
            locked: false,
        }
    }
}

/// Builds a record in a buffer: header, key and content type are written by
/// [`begin`](RecordBuilder::begin); the caller then appends the value bytes
/// (for example straight from a request body) and the writer calls
/// [`seal`](RecordBuilder::seal) to stamp the sequence number and timestamp
/// and fill in the value length and CRC. Building in place lets a PUT body
/// be read once, into the very buffer that is written to the log.
pub struct RecordBuilder;

impl RecordBuilder {
    /// Clears `buf` and writes the header, key and content type.
    ///
    /// Panics if the key or content type exceed the format's limits; callers
    /// validate user input before reaching the codec.
    pub fn begin(buf: &mut Vec<u8>, meta: &RecordMeta<'_>) {
        buf.clear();
        Self::start(buf, meta);
    }

    /// Appends the header, key and content type of a record to `buf`.
    fn start(buf: &mut Vec<u8>, meta: &RecordMeta<'_>) {
        assert!(!meta.key.is_empty() && meta.key.len() <= MAX_KEY_LEN);
        assert!(meta.content_type.len() <= MAX_CONTENT_TYPE_LEN);
        assert!(matches!(meta.kind, RecordKind::Put | RecordKind::Delete));
        buf.extend_from_slice(&[0u8; 4]); // CRC, filled by seal()
        buf.push(meta.kind as u8);
        buf.push(if meta.locked { FLAG_LOCKED } else { 0 });
        buf.extend_from_slice(&(meta.key.len() as u16).to_le_bytes());
        buf.extend_from_slice(&[0u8; 4]); // value length, filled by seal()
        buf.push(meta.content_type.len() as u8);
        buf.extend_from_slice(&[0u8; 3]);
        buf.extend_from_slice(&[0u8; 16]); // sequence and timestamp, filled by seal()
        buf.extend_from_slice(&meta.expires_at_ms.to_le_bytes());
        buf.extend_from_slice(meta.key);
        buf.extend_from_slice(meta.content_type);
    }

    /// Key of a record started by [`begin`](RecordBuilder::begin).
    pub fn key(buf: &[u8]) -> &[u8] {
        let key_len = usize::from(u16::from_le_bytes([buf[6], buf[7]]));
        &buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + key_len]
    }

    /// Kind of a record started by [`begin`](RecordBuilder::begin).
    pub fn kind(buf: &[u8]) -> RecordKind {
        RecordKind::from_byte(buf[4]).expect("started by RecordBuilder::begin")
    }

    /// Stamps the sequence number and timestamp, and fills in the value
    /// length (everything appended after [`begin`](RecordBuilder::begin))
    /// and the CRC for position `at`. The record is then ready to append
    /// there.
    pub fn seal(buf: &mut [u8], sequence: u64, timestamp_ms: u64, at: Position) {
        stamp(buf, sequence, timestamp_ms);
        let key_len = usize::from(u16::from_le_bytes([buf[6], buf[7]]));
        let content_type_len = usize::from(buf[12]);
        let value_len = buf.len() - RECORD_HEADER_LEN - key_len - content_type_len;
        let value_len = u32::try_from(value_len).expect("value length checked by the caller");
        buf[8..12].copy_from_slice(&value_len.to_le_bytes());
        Self::restamp(buf, at);
    }

    /// Rewrites the CRC of a whole record for a new position. Callers verify
    /// the record at its old position first, so damage is never laundered.
    /// A batch frame's members are restamped too.
    pub fn restamp(record: &mut [u8], at: Position) {
        if RecordKind::from_byte(record[4]) == Some(RecordKind::Batch) {
            let mut from = RECORD_HEADER_LEN;
            while from < record.len() {
                let len = Self::len_of(&record[from..]);
                let member_at = Position {
                    offset: at.offset + from as u64,
                    ..at
                };
                Self::restamp(&mut record[from..from + len], member_at);
                from += len;
            }
        }
        let crc = checksum(&record[4..], at);
        record[0..4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Turns a verified batch member into a plain record at `at` (compaction
    /// and repair copy live members out of their frames this way).
    pub fn detach(record: &mut [u8], at: Position) {
        record[5] &= !FLAG_MEMBER;
        Self::restamp(record, at);
    }

    /// Encodes into `buf` the quarantined record of `key` (see the module
    /// documentation) holding `damaged`, the bytes of its damaged record,
    /// sealed for `at`.
    pub fn quarantine(
        buf: &mut Vec<u8>,
        key: &[u8],
        expires_at_ms: u64,
        damaged: &[u8],
        sequence: u64,
        at: Position,
    ) {
        Self::begin(buf, &RecordMeta::put(key, b"", expires_at_ms));
        buf[5] |= FLAG_DAMAGED;
        buf.extend_from_slice(damaged);
        Self::seal(buf, sequence, 0, at);
    }

    /// Length of the record that starts `bytes`, from its header's length
    /// fields (the record was built or verified before).
    fn len_of(bytes: &[u8]) -> usize {
        let key_len = usize::from(u16::from_le_bytes([bytes[6], bytes[7]]));
        let value_len = u32_at(bytes, 8) as usize;
        RECORD_HEADER_LEN + key_len + usize::from(bytes[12]) + value_len
    }

    /// Encodes a whole, sealed record with the given value into `buf`.
    #[cfg(test)]
    pub fn encode(
        buf: &mut Vec<u8>,
        meta: &RecordMeta<'_>,
        value: &[u8],
        sequence: u64,
        timestamp_ms: u64,
        at: Position,
    ) {
        Self::begin(buf, meta);
        buf.extend_from_slice(value);
        Self::seal(buf, sequence, timestamp_ms, at);
    }
}

/// Builds a batch frame in a buffer: [`begin`](FrameBuilder::begin), one
/// [`add`](FrameBuilder::add) per member, then [`seal`](FrameBuilder::seal)
/// when the frame's place in the log is known.
pub struct FrameBuilder;

impl FrameBuilder {
    /// Clears `buf` and writes the frame's header.
    pub fn begin(buf: &mut Vec<u8>) {
        buf.clear();
        buf.extend_from_slice(&[0u8; 4]);
        buf.push(RecordKind::Batch as u8);
        buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN - 5]);
    }

    /// Appends a member with `value`; returns its offset in the frame.
    pub fn add(buf: &mut Vec<u8>, meta: &RecordMeta<'_>, value: &[u8]) -> usize {
        let at = buf.len();
        RecordBuilder::start(buf, meta);
        buf[at + 5] |= FLAG_MEMBER;
        let value_len = u32::try_from(value.len()).expect("value length checked by the caller");
        buf[at + 8..at + 12].copy_from_slice(&value_len.to_le_bytes());
        buf.extend_from_slice(value);
        at
    }

    /// Stamps the members with consecutive sequence numbers from `first`,
    /// the timestamp and their CRCs, then the frame itself for position
    /// `at`. Returns the last member's sequence number (the frame's).
    pub fn seal(buf: &mut [u8], first: u64, timestamp_ms: u64, at: Position) -> u64 {
        let mut sequence = first;
        let mut from = RECORD_HEADER_LEN;
        while from < buf.len() {
            let len = RecordBuilder::len_of(&buf[from..]);
            stamp(&mut buf[from..from + len], sequence, timestamp_ms);
            sequence += 1;
            from += len;
        }
        let last = sequence - 1;
        Self::stamp_frame(buf, last, timestamp_ms);
        RecordBuilder::restamp(buf, at);
        last
    }

    /// Fills in a frame's header: the length of its members, its sequence
    /// number (its last member's) and time.
    fn stamp_frame(frame: &mut [u8], last: u64, timestamp_ms: u64) {
        let members_len =
            u32::try_from(frame.len() - RECORD_HEADER_LEN).expect("frame size checked");
        frame[8..12].copy_from_slice(&members_len.to_le_bytes());
        stamp(frame, last, timestamp_ms);
    }
}

/// Length of a sync marker's value: the durable offset it names.
const MARKER_VALUE_LEN: u32 = 8;
/// Length of a plain sync marker.
pub const MARKER_LEN: usize = RECORD_HEADER_LEN + MARKER_VALUE_LEN as usize;

/// Builds and reads sync markers (see the module documentation).
pub struct Marker;

impl Marker {
    /// A plain marker sealed for position `at`, saying every byte before
    /// `durable_end` is durable.
    pub fn encode(durable_end: u64, timestamp_ms: u64, at: Position) -> [u8; MARKER_LEN] {
        debug_assert!(
            durable_end <= at.offset,
            "a marker claims only bytes before it"
        );
        let mut marker = [0u8; MARKER_LEN];
        marker[4] = RecordKind::Marker as u8;
        marker[8..12].copy_from_slice(&MARKER_VALUE_LEN.to_le_bytes());
        stamp(&mut marker, 0, timestamp_ms);
        marker[RECORD_HEADER_LEN..].copy_from_slice(&durable_end.to_le_bytes());
        RecordBuilder::restamp(&mut marker, at);
        marker
    }

    /// The durable offset a verified plain marker found at `offset` names,
    /// or `None` if it is not a marker or claims what it cannot (bytes at or
    /// after its own offset, or inside the file header).
    pub fn claim(record: &RecordView<'_>, offset: u64) -> Option<u64> {
        if record.header.kind != RecordKind::Marker {
            return None;
        }
        let durable_end = u64::from_le_bytes(record.value.try_into().ok()?);
        (FILE_HEADER_LEN as u64..=offset)
            .contains(&durable_end)
            .then_some(durable_end)
    }
}

/// Writes a record header's sequence number and timestamp.
fn stamp(record: &mut [u8], sequence: u64, timestamp_ms: u64) {
    record[16..24].copy_from_slice(&sequence.to_le_bytes());
    record[24..32].copy_from_slice(&timestamp_ms.to_le_bytes());
}

impl FrameBuilder {
    /// Seals a frame like [`seal`](Self::seal), but writes it to `out` with
    /// every member in its stored form: `wrap` turns a member sealed for a
    /// position into what the log holds there (an envelope), `overhead`
    /// bytes longer. Returns the last member's sequence number.
    pub fn seal_wrapped(
        buf: &mut [u8],
        first: u64,
        timestamp_ms: u64,
        at: Position,
        overhead: usize,
        out: &mut Vec<u8>,
        mut wrap: impl FnMut(&[u8], Position, &mut Vec<u8>),
    ) -> u64 {
        out.clear();
        out.extend_from_slice(&buf[..RECORD_HEADER_LEN]);
        let mut sequence = first;
        let mut from = RECORD_HEADER_LEN;
        while from < buf.len() {
            let len = RecordBuilder::len_of(&buf[from..]);
            let member = &mut buf[from..from + len];
            stamp(member, sequence, timestamp_ms);
            let place = Position {
                offset: at.offset + out.len() as u64,
                ..at
            };
            RecordBuilder::restamp(member, place);
            let before = out.len();
            wrap(member, place, out);
            debug_assert_eq!(out.len() - before, len + overhead);
            sequence += 1;
            from += len;
        }
        let last = sequence - 1;
        // Wrapped members hide their time; the frame must not show it.
        let frame_time = if overhead > 0 { 0 } else { timestamp_ms };
        Self::stamp_frame(out, last, frame_time);
        let crc = checksum(&out[4..], at);
        out[0..4].copy_from_slice(&crc.to_le_bytes());
        last
    }
}

/// The members of a verified batch frame at `at`, each verified at its own
/// position: `(offset in the log, record)`.
pub fn members<'a>(frame: &RecordView<'a>, at: Position) -> Members<'a> {
    Members {
        bytes: frame.bytes,
        at,
        from: RECORD_HEADER_LEN,
    }
}

/// Iterator returned by [`members`].
pub struct Members<'a> {
    bytes: &'a [u8],
    at: Position,
    from: usize,
}

impl<'a> Iterator for Members<'a> {
    type Item = Result<(u64, RecordView<'a>), RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.from >= self.bytes.len() {
            return None;
        }
        let rest = &self.bytes[self.from..];
        let offset = self.at.offset + self.from as u64;
        let member = rest
            .get(..RECORD_HEADER_LEN)
            .and_then(|fixed| RecordHeader::decode(fixed.try_into().ok()?).ok())
            .filter(|header| {
                header.is_member() && matches!(header.kind, RecordKind::Put | RecordKind::Delete)
            })
            .and_then(|header| rest.get(..header.record_len() as usize))
            .ok_or(RecordError::BadHeader)
            .and_then(|bytes| verify(bytes, Position { offset, ..self.at }));
        match member {
            Ok(view) => {
                self.from += view.bytes.len();
                Some(Ok((offset, view)))
            }
            Err(err) => {
                self.from = self.bytes.len();
                Some(Err(err))
            }
        }
    }
}

/// A verified record borrowed from a buffer holding exactly one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The whole record as stored.
    pub bytes: &'a [u8],
    /// The decoded header.
    pub header: RecordHeader,
    /// The key bytes.
    pub key: &'a [u8],
    /// The content type bytes.
    pub content_type: &'a [u8],
    /// The value bytes.
    pub value: &'a [u8],
}

/// Decodes and CRC-checks a buffer that must hold exactly one whole record,
/// read from position `at`.
pub fn verify(bytes: &[u8], at: Position) -> Result<RecordView<'_>, RecordError> {
    let fixed: &[u8; RECORD_HEADER_LEN] = bytes
        .get(..RECORD_HEADER_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(RecordError::BadHeader)?;
    let header = RecordHeader::decode(fixed)?;
    if header.record_len() != bytes.len() as u64 {
        return Err(RecordError::BadHeader);
    }
    if checksum(&bytes[4..], at) != header.crc {
        return Err(RecordError::ChecksumMismatch);
    }
    let key_end = RECORD_HEADER_LEN + usize::from(header.key_len);
    let content_type_end = key_end + usize::from(header.content_type_len);
    Ok(RecordView {
        bytes,
        header,
        key: &bytes[RECORD_HEADER_LEN..key_end],
        content_type: &bytes[key_end..content_type_end],
        value: &bytes[content_type_end..],
    })
}

/// The header at the start of every log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// Random identity of this log file.
    pub file_id: u32,
    /// The last sequence number issued when the file was created; records
    /// appended later get larger ones.
    pub base_sequence: u64,
    /// The encryption key's check value, 0 for a plain log.
    pub key_check: u32,
}

impl FileHeader {
    /// The header of a new log file, with a fresh random id.
    pub fn new(base_sequence: u64, key_check: u32) -> Self {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS's random source.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            file_id: random as u32,
            base_sequence,
            key_check,
        }
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; FILE_HEADER_LEN] {
        let mut header = [0u8; FILE_HEADER_LEN];
        header[0..8].copy_from_slice(FILE_MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&self.file_id.to_le_bytes());
        header[16..24].copy_from_slice(&self.base_sequence.to_le_bytes());
        let crc = crc32fast::hash(&header[0..24]);
        header[24..28].copy_from_slice(&crc.to_le_bytes());
        header[28..32].copy_from_slice(&self.key_check.to_le_bytes());
        header
    }

    /// Parses and checks a header.
    pub fn decode(bytes: &[u8; FILE_HEADER_LEN]) -> Result<Self, FileHeaderError> {
        if &bytes[0..8] != FILE_MAGIC {
            return Err(FileHeaderError::NotALog);
        }
        if crc32fast::hash(&bytes[0..24]) != u32_at(bytes, 24) {
            return Err(FileHeaderError::Corrupt);
        }
        let version = u32_at(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(FileHeaderError::UnsupportedVersion(version));
        }
        Ok(Self {
            file_id: u32_at(bytes, 12),
            base_sequence: u64_at(bytes, 16),
            key_check: u32_at(bytes, 28),
        })
    }
}

/// Why a file header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileHeaderError {
    /// The file does not start with [`FILE_MAGIC`]: not a Lucid log.
    NotALog,
    /// A Lucid log of a format version this build cannot read.
    UnsupportedVersion(u32),
    /// The header's own CRC does not match.
    Corrupt,
}

impl fmt::Display for FileHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotALog => f.write_str("not a Lucid log file (bad magic bytes)"),
            Self::UnsupportedVersion(v) => write!(
                f,
                "log format version {v} is not supported by this build (it reads version {FORMAT_VERSION})"
            ),
            Self::Corrupt => f.write_str("log file header checksum mismatch"),
        }
    }
}

/// The little-endian u32 at `at` in `bytes` (the log's byte order).
pub(super) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The little-endian u64 at `at` in `bytes` (the log's byte order).
pub(super) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta<'a>(key: &'a [u8], content_type: &'a [u8]) -> RecordMeta<'a> {
        RecordMeta::put(key, content_type, 0)
    }

    const T0: u64 = 1_700_000_000_000;
    const AT: Position = Position {
        file_id: 0xfeed,
        offset: 32,
    };

    proptest! {
        #[test]
        fn put_records_round_trip(
            key in proptest::collection::vec(any::<u8>(), 1..300),
            content_type in proptest::collection::vec(any::<u8>(), 0..=255),
            value in proptest::collection::vec(any::<u8>(), 0..2000),
            sequence in any::<u64>(),
            timestamp_ms in any::<u64>(),
            expires_at_ms in any::<u64>(),
        ) {
            let meta = RecordMeta { expires_at_ms, ..meta(&key, &content_type) };
            let mut buf = Vec::new();
            RecordBuilder::encode(&mut buf, &meta, &value, sequence, timestamp_ms, AT);
            let view = verify(&buf, AT).unwrap();
            prop_assert_eq!(view.key, &key[..]);
            prop_assert_eq!(view.content_type, &content_type[..]);
            prop_assert_eq!(view.value, &value[..]);
            prop_assert_eq!(view.header.sequence, sequence);
            prop_assert_eq!(view.header.timestamp_ms, timestamp_ms);
            prop_assert_eq!(view.header.expires_at_ms, expires_at_ms);
            prop_assert_eq!(view.header.kind, RecordKind::Put);
            prop_assert_eq!(view.header.record_len(), buf.len() as u64);
        }

        #[test]
        fn any_truncation_is_rejected(cut in 0usize..80) {
            let mut buf = Vec::new();
            RecordBuilder::encode(&mut buf, &meta(b"sensors/t", b"text/plain"), b"21.5 degrees", 1, T0, AT);
            let cut = cut.min(buf.len() - 1);
            prop_assert!(verify(&buf[..cut], AT).is_err());
        }
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let mut buf = Vec::new();
        RecordBuilder::encode(
            &mut buf,
            &meta(b"device/secret", b"application/json"),
            b"{\"k\":1}",
            7,
            T0,
            AT,
        );
        for at in 0..buf.len() {
            for bit in 0..8 {
                let mut damaged = buf.clone();
                damaged[at] ^= 1 << bit;
                assert!(
                    verify(&damaged, AT).is_err(),
                    "flip of bit {bit} at byte {at} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn tombstones_must_carry_no_value() {
        let mut buf = Vec::new();
        let tombstone = RecordMeta {
            kind: RecordKind::Delete,
            ..meta(b"k", b"")
        };
        RecordBuilder::encode(&mut buf, &tombstone, b"", 2, T0, AT);
        assert_eq!(verify(&buf, AT).unwrap().header.kind, RecordKind::Delete);
        RecordBuilder::encode(&mut buf, &tombstone, b"x", 3, T0, AT);
        assert_eq!(verify(&buf, AT), Err(RecordError::BadHeader));
    }

    #[test]
    fn a_record_is_valid_only_where_it_was_written() {
        let mut buf = Vec::new();
        RecordBuilder::encode(&mut buf, &meta(b"k", b""), b"v", 1, T0, AT);
        assert!(verify(&buf, AT).is_ok());
        let elsewhere = Position { offset: 4096, ..AT };
        assert_eq!(verify(&buf, elsewhere), Err(RecordError::ChecksumMismatch));
        let other_log = Position { file_id: 7, ..AT };
        assert_eq!(verify(&buf, other_log), Err(RecordError::ChecksumMismatch));
        RecordBuilder::restamp(&mut buf, elsewhere);
        assert!(verify(&buf, elsewhere).is_ok());
        assert!(verify(&buf, AT).is_err());
    }

    #[test]
    fn sync_markers_round_trip_and_claim_only_bytes_before_them() {
        let buf = Marker::encode(32, T0, AT);
        let view = verify(&buf, AT).unwrap();
        assert_eq!(view.header.kind, RecordKind::Marker);
        assert_eq!(view.header.sequence, 0);
        assert!(view.key.is_empty());
        assert_eq!(Marker::claim(&view, AT.offset), Some(32));
        // Bytes at or after itself, or inside the file header: no claim.
        let elsewhere = Position { offset: 4096, ..AT };
        let mut buf = Marker::encode(4096, T0, elsewhere);
        let view = verify(&buf, elsewhere).unwrap();
        assert_eq!(Marker::claim(&view, 4095), None);
        assert_eq!(Marker::claim(&view, 4096), Some(4096));
        buf[RECORD_HEADER_LEN..].copy_from_slice(&31u64.to_le_bytes());
        RecordBuilder::restamp(&mut buf, elsewhere);
        assert_eq!(Marker::claim(&verify(&buf, elsewhere).unwrap(), 4096), None);
        // A marker takes no sequence number, and is never a batch member.
        for (at, byte) in [(16, 1u8), (5, FLAG_MEMBER), (5, FLAG_LOCKED), (6, 1)] {
            let mut other = buf;
            other[at] |= byte;
            RecordBuilder::restamp(&mut other, elsewhere);
            assert_eq!(verify(&other, elsewhere), Err(RecordError::BadHeader));
        }
        for at in 0..buf.len() {
            let mut damaged = buf;
            damaged[at] ^= 0x08;
            assert!(verify(&damaged, elsewhere).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn file_header_round_trips_and_rejects_damage() {
        let fresh = FileHeader::new(42, 0);
        let header = fresh.encode();
        assert_eq!(FileHeader::decode(&header), Ok(fresh));
        assert_ne!(
            FileHeader::new(42, 0).file_id,
            FileHeader::new(42, 0).file_id
        );
        let mut other = header;
        other[0] = b'X';
        assert_eq!(FileHeader::decode(&other), Err(FileHeaderError::NotALog));
        let mut other = header;
        other[17] ^= 1;
        assert_eq!(FileHeader::decode(&other), Err(FileHeaderError::Corrupt));
        let mut other = header;
        other[8] = 9;
        let crc = crc32fast::hash(&other[0..24]);
        other[24..28].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            FileHeader::decode(&other),
            Err(FileHeaderError::UnsupportedVersion(9))
        );
    }
}
