//! Reading the log front to back, and the recovery rule.
//!
//! # Recovery rule
//!
//! At open, every record after the file header is read in order and its CRC
//! verified. The scan stops at the first record that is incomplete or fails
//! its check, at offset `X`, and looks through everything after `X` for
//! valid records (newer than the last good one) and sync markers (see
//! `record.rs`). Let `S` be the highest offset known durable: the largest
//! offset named by any valid sync marker in the log, before or after `X`,
//! and at least the end of the file header and the end a valid hint file
//! covers (the log was fsynced before the hint was written; compaction
//! writes one, and so does a clean shutdown). Then:
//!
//! * `X >= S`: nothing confirms the damaged bytes were ever durable. They,
//!   and everything after them, are an **unsynced tail**: a write that a
//!   crash interrupted, or (with valid records after the damage) a power cut
//!   whose out-of-order writeback kept later unsynced pages and lost an
//!   earlier one. The tail is copied aside to `data.log.torn-X` and the log
//!   is truncated to `X` with a WARN log, so the log recovers a prefix of its
//!   history: no holes. No write that `sync: always` acknowledged is in it
//!   after a power cut: that write was fsynced, and a power cut damages only
//!   bytes written after the last fsync.
//! * `X < S`: an fsync made the damaged bytes durable, so the disk corrupted
//!   data after the fact. Truncating would throw away good, acknowledged
//!   data, so the node refuses to start and names the file and offset
//!   (`lucid check --repair` rebuilds the log from its good records).
//!
//! A marker names the log's end when an fsync began and is written after
//! that fsync returned, so it never claims bytes a power cut could still
//! take back; a marker lost to the power cut only makes `S` smaller, which
//! cuts more of the unsynced tail, never durable data a surviving marker
//! covers. (The limit of the rule: a marker is durable only once the next
//! fsync covers it, so if a power cut takes the last one and the disk also
//! corrupts the bytes it named, that damage looks like an unsynced tail and
//! is cut as one, a copy kept.) `lucid check` reports, and `lucid check
//! --repair` cuts or skips, by the same rule.
//!
//! A batch frame is one record for this rule: its members are visited only
//! if the whole frame is good, so a torn batch is cut as a whole. In an
//! encrypted log, a record that fails authentication counts as one that
//! fails its CRC, and a marker counts only if it authenticates.
//!
//! A log whose durable part is damaged can still be served from a valid
//! hint file covering the damage: the hint is trusted for where each key's
//! latest record is and for the log before its covered end being durable,
//! not for those records being intact. The node then starts without
//! reading them, verifies them in the background
//! (`Store::verify_in_background`), and reports the damaged keys, which
//! answer an error; compaction drops the damage (see `compaction.rs`).
//! `lucid check` says the same.
//!
//! A record whose CRC does not match is never indexed, so it is never served.
//! Markers are never visited: they hold no key. The scan reads through a
//! bounded window: the log is never loaded whole.

use std::io;

use super::crypt::{open_copy, Cipher};
use super::file::LogFile;
use super::index::Location;
use super::record::{
    members, verify, Marker, Position, RecordChecksum, RecordHeader, RecordKind, RecordView,
    FILE_HEADER_LEN, RECORD_HEADER_LEN,
};

/// How much of the log a scan reads at once.
const WINDOW: usize = 256 * 1024;

/// What a scan found past the last good record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Incomplete or damaged bytes that no sync marker (nor hint) confirms
    /// were durable: an unsynced tail, safe to cut with everything after it.
    TornTail {
        /// Offset of the first bad byte.
        offset: u64,
        /// Number of bytes from there to the end of the file.
        len: u64,
        /// Offset of the first valid record after the damage, if any: a
        /// later unsynced write that survived an earlier one (out-of-order
        /// writeback at a power cut). It is cut too.
        next_valid: Option<u64>,
    },
    /// A damaged record in the part of the log an fsync made durable.
    Corrupt {
        /// Offset of the damaged record.
        offset: u64,
        /// Offset of the next valid record after it, if any.
        next_valid: Option<u64>,
        /// The offset known durable that the damage lies before.
        durable: u64,
    },
}

/// The result of scanning a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanSummary {
    /// Offset just past the last good record.
    pub good_end: u64,
    /// Number of good records read (sync markers not counted).
    pub records: u64,
    /// Number of valid sync markers found (after the damage too).
    pub markers: u64,
    /// Highest sequence number seen (0 if none).
    pub max_sequence: u64,
    /// The highest offset known durable (`S` of the recovery rule).
    pub durable: u64,
    /// Everything before this offset, but a sync marker ending there, is
    /// claimed durable by a marker or by the scan's start: the end of the
    /// last valid marker before `good_end`, or the start's durable offset.
    pub marked_end: u64,
    /// Damage found after `good_end`, if any.
    pub damage: Option<Damage>,
}

/// Where a scan starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanStart {
    /// Offset of the first record to read.
    pub offset: u64,
    /// Highest sequence number of the records before `offset`.
    pub max_sequence: u64,
    /// Every byte before this offset is known durable (the file header, or
    /// what a valid hint file covers).
    pub durable: u64,
}

impl ScanStart {
    /// The first record of the log.
    pub const BEGINNING: Self = Self {
        offset: FILE_HEADER_LEN as u64,
        max_sequence: 0,
        durable: FILE_HEADER_LEN as u64,
    };
}

/// Reads every good record in `file` from `start` on, calling `visit` with
/// each record (opened) and where it is stored (a batch frame's members one
/// by one, never the frame itself, never a sync marker), and applies the
/// recovery rule to whatever follows the last good one. The file is not
/// modified.
pub fn scan(
    file: &dyn LogFile,
    file_id: u32,
    cipher: Option<&Cipher>,
    start: ScanStart,
    visit: impl FnMut(&RecordView<'_>, Location),
) -> io::Result<ScanSummary> {
    scan_within(file, file_id, cipher, start, file.size()?, visit)
}

/// [`scan`] of the log as if it ended at `len` (a running store's log,
/// read up to where a hint file's coverage ends).
fn scan_within(
    file: &dyn LogFile,
    file_id: u32,
    cipher: Option<&Cipher>,
    start: ScanStart,
    len: u64,
    mut visit: impl FnMut(&RecordView<'_>, Location),
) -> io::Result<ScanSummary> {
    let mut reader = WindowReader::new(file, file_id, cipher, len);
    let mut scratch = Vec::new();
    let mut summary = ScanSummary {
        good_end: start.offset,
        records: 0,
        markers: 0,
        max_sequence: start.max_sequence,
        durable: start.durable.max(FILE_HEADER_LEN as u64),
        marked_end: start.durable,
        damage: None,
    };
    while summary.good_end < reader.file_len {
        let offset = summary.good_end;
        let at = Position { file_id, offset };
        let good = match reader.record_at(offset)? {
            Some(record) if record.header.kind == RecordKind::Batch => {
                let visited = visit_frame(cipher, &record, at, &mut scratch, &mut visit);
                summary.records += visited.unwrap_or(0);
                visited.map(|_| record.header)
            }
            Some(record) if record.header.kind == RecordKind::Marker => {
                let header = record.header;
                marker_claim(cipher, record, at, &mut scratch).map(|durable_end| {
                    summary.durable = summary.durable.max(durable_end);
                    summary.marked_end = summary.marked_end.max(offset + header.record_len());
                    summary.markers += 1;
                    header
                })
            }
            Some(record) => {
                let header = record.header;
                let stored = Location {
                    offset,
                    len: record.bytes.len() as u32,
                };
                match open_copy(cipher, record, at, &mut scratch) {
                    Ok(plain) => {
                        visit(&plain, stored);
                        summary.records += 1;
                        Some(header)
                    }
                    Err(_) => None,
                }
            }
            None => None,
        };
        match good {
            Some(header) => {
                summary.max_sequence = summary.max_sequence.max(header.sequence);
                summary.good_end += header.record_len();
            }
            None => {
                let after = reader.after_damage(offset, summary.max_sequence)?;
                summary.damage = Some(judge_damage(&mut summary, offset, after, reader.file_len));
                break;
            }
        }
    }
    Ok(summary)
}

/// Visits every member of the batch frame `frame`, read at `at`, opened,
/// if all of them open: a frame counts whole or not at all. Returns how
/// many were visited, or `None` if the frame does not count.
fn visit_frame(
    cipher: Option<&Cipher>,
    frame: &RecordView<'_>,
    at: Position,
    scratch: &mut Vec<u8>,
    visit: &mut impl FnMut(&RecordView<'_>, Location),
) -> Option<u64> {
    let mut open = |member: Result<(u64, RecordView<'_>), _>,
                    visit: &mut dyn FnMut(&RecordView<'_>, Location)| {
        let Ok((member_offset, member)) = member else {
            return false;
        };
        let place = Position {
            offset: member_offset,
            ..at
        };
        let stored = Location {
            offset: member_offset,
            len: member.bytes.len() as u32,
        };
        match open_copy(cipher, member, place, scratch) {
            Ok(plain) => {
                visit(&plain, stored);
                true
            }
            Err(_) => false,
        }
    };
    // Members are checked before any is visited.
    if !members(frame, at).all(|member| open(member, &mut |_, _| {})) {
        return None;
    }
    let mut visited = 0;
    for member in members(frame, at) {
        open(member, visit);
        visited += 1;
    }
    Some(visited)
}

/// The recovery rule for damage at `offset` of a log `file_len` bytes
/// long, followed by `after`: notes in `summary` what the markers after it
/// claim, then judges it an unsynced tail or damage to durable data.
fn judge_damage(
    summary: &mut ScanSummary,
    offset: u64,
    after: AfterDamage,
    file_len: u64,
) -> Damage {
    summary.durable = summary.durable.max(after.durable);
    summary.markers += after.markers;
    if offset < summary.durable {
        Damage::Corrupt {
            offset,
            next_valid: after.next_valid,
            durable: summary.durable,
        }
    } else {
        Damage::TornTail {
            offset,
            len: file_len - offset,
            next_valid: after.next_valid,
        }
    }
}

/// Every damaged stretch of the log before offset `end`, all of it durable,
/// as `(start, end)` offsets: from a record that fails its check to the
/// next valid one (or `end`). Reads the whole log up to `end`; records
/// are verified (and, in an encrypted log, opened), not indexed.
pub fn damaged_ranges(
    file: &dyn LogFile,
    file_id: u32,
    cipher: Option<&Cipher>,
    end: u64,
) -> io::Result<Vec<(u64, u64)>> {
    let mut ranges = Vec::new();
    let mut start = ScanStart {
        durable: end,
        ..ScanStart::BEGINNING
    };
    loop {
        let summary = scan_within(file, file_id, cipher, start, end, |_, _| {})?;
        let (offset, next_valid) = match summary.damage {
            None => return Ok(ranges),
            Some(Damage::Corrupt {
                offset, next_valid, ..
            })
            | Some(Damage::TornTail {
                offset, next_valid, ..
            }) => (offset, next_valid),
        };
        ranges.push((offset, next_valid.unwrap_or(end)));
        let Some(resume) = next_valid else {
            return Ok(ranges);
        };
        start = ScanStart {
            offset: resume,
            max_sequence: summary.max_sequence,
            durable: end,
        };
    }
}

/// The first valid record after damage at `offset`, before `end`, newer
/// than sequence number `newer_than`, found as the recovery rule finds
/// records after damage (byte by byte, each candidate verified at its place).
pub fn next_valid(
    file: &dyn LogFile,
    file_id: u32,
    cipher: Option<&Cipher>,
    offset: u64,
    newer_than: u64,
    end: u64,
) -> io::Result<Option<u64>> {
    WindowReader::new(file, file_id, cipher, end)
        .after_damage(offset, newer_than)
        .map(|after| after.next_valid)
}

/// The durable offset the sync marker `record`, read at `at`, names if it
/// is one that counts: it opens (an encrypted log's markers must
/// authenticate) and claims only bytes before itself.
fn marker_claim(
    cipher: Option<&Cipher>,
    record: RecordView<'_>,
    at: Position,
    scratch: &mut Vec<u8>,
) -> Option<u64> {
    open_copy(cipher, record, at, scratch)
        .ok()
        .and_then(|plain| Marker::claim(&plain, at.offset))
}

/// Whether the record with `header` at `at` in `file` has the CRC its
/// header claims, read through `chunk` a piece at a time: a record of any
/// length is checked in `chunk.len()` bytes of memory.
pub fn checksum_matches(
    file: &dyn LogFile,
    header: &RecordHeader,
    at: Position,
    chunk: &mut [u8],
) -> io::Result<bool> {
    let mut crc = RecordChecksum::new(at);
    let (mut from, end) = (at.offset + 4, at.offset + header.record_len());
    while from < end {
        let n = (end - from).min(chunk.len() as u64) as usize;
        file.read_at(&mut chunk[..n], from)?;
        crc.update(&chunk[..n]);
        from += n as u64;
    }
    Ok(crc.finish() == header.crc)
}

/// What follows damage in a log.
struct AfterDamage {
    /// The first valid record after the damage, if any.
    next_valid: Option<u64>,
    /// The highest offset a valid sync marker after the damage names (0 if
    /// none).
    durable: u64,
    /// How many valid sync markers follow the damage.
    markers: u64,
}

/// Sequential reads of a log through a reusable window buffer.
struct WindowReader<'a> {
    file: &'a dyn LogFile,
    file_id: u32,
    cipher: Option<&'a Cipher>,
    file_len: u64,
    window: Vec<u8>,
    window_start: u64,
}

impl<'a> WindowReader<'a> {
    /// A reader of the first `len` bytes of `file`.
    fn new(file: &'a dyn LogFile, file_id: u32, cipher: Option<&'a Cipher>, len: u64) -> Self {
        Self {
            file,
            file_id,
            cipher,
            file_len: len,
            window: Vec::new(),
            window_start: 0,
        }
    }

    /// The `len` bytes at `offset`, or `None` if the file ends before them.
    fn bytes(&mut self, offset: u64, len: usize) -> io::Result<Option<&[u8]>> {
        let end = offset + len as u64;
        if end > self.file_len {
            return Ok(None);
        }
        let window_end = self.window_start + self.window.len() as u64;
        if offset < self.window_start || end > window_end {
            let fill = (self.file_len - offset).min(len.max(WINDOW) as u64) as usize;
            self.window.resize(fill, 0);
            self.file.read_at(&mut self.window, offset)?;
            self.window_start = offset;
        }
        let from = (offset - self.window_start) as usize;
        Ok(Some(&self.window[from..from + len]))
    }

    /// The header at `offset`, if the bytes there decode as one whose record
    /// fits in the file.
    fn header_at(&mut self, offset: u64) -> io::Result<Option<RecordHeader>> {
        let Some(bytes) = self.bytes(offset, RECORD_HEADER_LEN)? else {
            return Ok(None);
        };
        let fixed: &[u8; RECORD_HEADER_LEN] = bytes.try_into().expect("header length");
        Ok(RecordHeader::decode(fixed)
            .ok()
            .filter(|header| offset + header.record_len() <= self.file_len))
    }

    /// The verified record at `offset`, or `None` if the bytes there are not
    /// one (incomplete, malformed or failing the CRC). A record longer than
    /// the window is checked through a fixed buffer before it is read whole,
    /// so a damaged header claiming a huge length costs time, not memory.
    fn record_at(&mut self, offset: u64) -> io::Result<Option<RecordView<'_>>> {
        let Some(header) = self.header_at(offset)? else {
            return Ok(None);
        };
        let at = Position {
            file_id: self.file_id,
            offset,
        };
        let len = header.record_len();
        if len > WINDOW as u64 && !self.checksum_matches(&header, at)? {
            return Ok(None);
        }
        Ok(self
            .bytes(offset, len as usize)?
            .and_then(|bytes| verify(bytes, at).ok())
            .filter(|record| !record.header.is_member()))
    }

    /// Whether the record with `header` at `at` has the CRC its header
    /// claims, reading it in window-sized pieces.
    fn checksum_matches(&mut self, header: &RecordHeader, at: Position) -> io::Result<bool> {
        checksum_matches(self.file, header, at, &mut vec![0u8; WINDOW])
    }

    /// Looks past damage at `offset` for valid records: records newer than
    /// `newer_than` (a valid record's bytes can hardly appear by chance, and
    /// an older one is not part of this log's history after the damage) and
    /// sync markers, which must also authenticate in an encrypted log. From
    /// each valid record the search jumps to the next; through damaged
    /// stretches it moves byte by byte.
    fn after_damage(&mut self, offset: u64, newer_than: u64) -> io::Result<AfterDamage> {
        let mut after = AfterDamage {
            next_valid: None,
            durable: 0,
            markers: 0,
        };
        let mut scratch = Vec::new();
        let mut candidate = offset + 1;
        while candidate + RECORD_HEADER_LEN as u64 <= self.file_len {
            let Some(header) = self.header_at(candidate)? else {
                candidate += 1;
                continue;
            };
            if header.kind != RecordKind::Marker && header.sequence <= newer_than {
                candidate += 1;
                continue;
            }
            let at = Position {
                file_id: self.file_id,
                offset: candidate,
            };
            let cipher = self.cipher;
            let valid = match self.record_at(candidate)? {
                Some(record) if header.kind == RecordKind::Marker => {
                    match marker_claim(cipher, record, at, &mut scratch) {
                        Some(claim) => {
                            after.durable = after.durable.max(claim);
                            after.markers += 1;
                            true
                        }
                        None => false,
                    }
                }
                Some(_) => true,
                None => false,
            };
            if valid {
                after.next_valid.get_or_insert(candidate);
                candidate += header.record_len();
            } else {
                candidate += 1;
            }
        }
        Ok(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{FileHeader, FrameBuilder, Position, RecordBuilder, RecordMeta};
    use crate::store::testing::MemFile;

    fn file_id(log: &[u8]) -> u32 {
        FileHeader::decode(log[..FILE_HEADER_LEN].try_into().unwrap())
            .unwrap()
            .file_id
    }

    /// Appends a put record, stamped for where it lands; returns its offset.
    fn append(log: &mut Vec<u8>, key: &[u8], value: &[u8], sequence: u64) -> u64 {
        let meta = RecordMeta::put(key, b"text/plain", 0);
        let at = Position {
            file_id: file_id(log),
            offset: log.len() as u64,
        };
        let mut buf = Vec::new();
        RecordBuilder::encode(&mut buf, &meta, value, sequence, 0, at);
        log.extend_from_slice(&buf);
        at.offset
    }

    /// A log with `count` records "key-i" = "value-i"; returns it with the
    /// offset of every record.
    fn log_with(count: u64) -> (Vec<u8>, Vec<u64>) {
        let mut log = FileHeader::new(0, 0).encode().to_vec();
        let offsets = (1..=count)
            .map(|i| {
                append(
                    &mut log,
                    format!("key-{i}").as_bytes(),
                    format!("value-{i}").as_bytes(),
                    i,
                )
            })
            .collect();
        (log, offsets)
    }

    fn keys_of(log: &[u8]) -> (Vec<String>, ScanSummary) {
        let file = MemFile::with_bytes(log);
        let mut keys = Vec::new();
        let summary = scan(
            &file,
            file_id(log),
            None,
            ScanStart::BEGINNING,
            |record, _| keys.push(String::from_utf8(record.key.to_vec()).unwrap()),
        )
        .unwrap();
        (keys, summary)
    }

    #[test]
    fn clean_log_yields_every_record() {
        let (log, _) = log_with(3);
        let (keys, summary) = keys_of(&log);
        assert_eq!(keys, ["key-1", "key-2", "key-3"]);
        assert_eq!(summary.damage, None);
        assert_eq!(summary.good_end, log.len() as u64);
        assert_eq!(summary.max_sequence, 3);
    }

    #[test]
    fn truncation_at_every_byte_of_the_last_record_is_a_torn_tail() {
        let (log, offsets) = log_with(3);
        let last = offsets[2];
        for cut in last + 1..log.len() as u64 {
            let (keys, summary) = keys_of(&log[..cut as usize]);
            assert_eq!(keys, ["key-1", "key-2"], "cut at {cut}");
            assert_eq!(
                summary.damage,
                Some(Damage::TornTail {
                    offset: last,
                    len: cut - last,
                    next_valid: None,
                }),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_flip_of_any_byte_in_the_last_record_is_a_torn_tail() {
        let (log, offsets) = log_with(3);
        for at in offsets[2] as usize..log.len() {
            let mut damaged = log.clone();
            damaged[at] ^= 0x40;
            let (keys, summary) = keys_of(&damaged);
            assert_eq!(keys, ["key-1", "key-2"], "flip at {at}");
            assert!(
                matches!(summary.damage, Some(Damage::TornTail { offset, .. }) if offset == offsets[2]),
                "flip at {at}: {:?}",
                summary.damage
            );
        }
    }

    /// Appends a sync marker naming `durable_end`, stamped for where it
    /// lands; returns its offset.
    fn append_marker(log: &mut Vec<u8>, durable_end: u64) -> u64 {
        let at = Position {
            file_id: file_id(log),
            offset: log.len() as u64,
        };
        log.extend_from_slice(&Marker::encode(durable_end, 0, at));
        at.offset
    }

    /// Flips each byte of the second record of `log` (whose records start
    /// at `offsets`) in turn: the scan must keep only the first record and
    /// report `expected`.
    fn assert_each_flip_of_second_record(log: &[u8], offsets: &[u64], expected: Damage) {
        for at in offsets[1] as usize..offsets[2] as usize {
            let mut damaged = log.to_vec();
            damaged[at] ^= 0x01;
            let (keys, summary) = keys_of(&damaged);
            assert_eq!(keys, ["key-1"], "flip at {at}");
            assert_eq!(summary.damage, Some(expected), "flip at {at}");
        }
    }

    #[test]
    fn damage_before_a_markers_durable_offset_is_corruption() {
        let (mut log, offsets) = log_with(3);
        let durable = log.len() as u64;
        append_marker(&mut log, durable);
        let expected = Damage::Corrupt {
            offset: offsets[1],
            next_valid: Some(offsets[2]),
            durable,
        };
        assert_each_flip_of_second_record(&log, &offsets, expected);
    }

    #[test]
    fn unsynced_damage_followed_by_valid_records_is_a_torn_tail() {
        // No marker names the damaged record durable: out-of-order
        // writeback at a power cut lost it and kept the next one.
        let (log, offsets) = log_with(3);
        let expected = Damage::TornTail {
            offset: offsets[1],
            len: log.len() as u64 - offsets[1],
            next_valid: Some(offsets[2]),
        };
        assert_each_flip_of_second_record(&log, &offsets, expected);
    }

    #[test]
    fn damage_is_corruption_exactly_when_a_marker_names_a_later_offset() {
        let (mut log, offsets) = log_with(3);
        let marker = append_marker(&mut log, offsets[1]);
        let claim_at = marker as usize + RECORD_HEADER_LEN;
        let mut damaged = log.clone();
        damaged[offsets[1] as usize + 20] = 0xee;
        // Naming the damaged record's offset says nothing of its bytes.
        let (_, summary) = keys_of(&damaged);
        assert!(
            matches!(summary.damage, Some(Damage::TornTail { offset, .. }) if offset == offsets[1]),
            "{:?}",
            summary.damage
        );
        assert_eq!(summary.durable, offsets[1]);
        // One byte more and the damaged record was durable.
        let claim = offsets[1] + 1;
        damaged[claim_at..claim_at + 8].copy_from_slice(&claim.to_le_bytes());
        let at = Position {
            file_id: file_id(&log),
            offset: marker,
        };
        RecordBuilder::restamp(&mut damaged[marker as usize..], at);
        let (_, summary) = keys_of(&damaged);
        assert!(
            matches!(summary.damage, Some(Damage::Corrupt { offset, durable, .. }) if offset == offsets[1] && durable == claim),
            "{:?}",
            summary.damage
        );
    }

    #[test]
    fn markers_are_read_but_never_visited() {
        let (mut log, _) = log_with(2);
        let first_claim = log.len() as u64;
        append_marker(&mut log, first_claim);
        append(&mut log, b"key-3", b"value-3", 3);
        let last_claim = log.len() as u64;
        append_marker(&mut log, last_claim);
        let (keys, summary) = keys_of(&log);
        assert_eq!(keys, ["key-1", "key-2", "key-3"]);
        assert_eq!(summary.damage, None);
        assert_eq!(summary.records, 3);
        assert_eq!(summary.markers, 2);
        assert_eq!(summary.max_sequence, 3);
        assert_eq!(summary.durable, last_claim);
        assert_eq!(summary.marked_end, log.len() as u64);
        assert_eq!(summary.good_end, log.len() as u64);
    }

    #[test]
    fn a_marker_claiming_bytes_after_itself_is_damage() {
        let (mut log, _) = log_with(2);
        let end = log.len() as u64;
        let at = Position {
            file_id: file_id(&log),
            offset: end,
        };
        let mut marker = Marker::encode(end, 0, at);
        marker[RECORD_HEADER_LEN..].copy_from_slice(&(end + 1).to_le_bytes());
        RecordBuilder::restamp(&mut marker, at);
        log.extend_from_slice(&marker);
        let (keys, summary) = keys_of(&log);
        assert_eq!(keys, ["key-1", "key-2"]);
        assert_eq!(
            summary.damage,
            Some(Damage::TornTail {
                offset: end,
                len: marker.len() as u64,
                next_valid: None,
            })
        );
    }

    #[test]
    fn in_an_encrypted_log_only_sealed_markers_count() {
        let cipher = Cipher::from_key(&[7; 32]);
        let mut log = FileHeader::new(0, cipher.check_value()).encode().to_vec();
        let id = file_id(&log);
        let mut offsets = Vec::new();
        let (mut plain, mut sealed) = (Vec::new(), Vec::new());
        for i in 1..=3u64 {
            let at = Position {
                file_id: id,
                offset: log.len() as u64,
            };
            let meta = RecordMeta::put(b"k", b"text/plain", 0);
            RecordBuilder::encode(&mut plain, &meta, format!("v{i}").as_bytes(), i, 0, at);
            sealed.clear();
            cipher.seal(&plain, at, &mut sealed);
            offsets.push(at.offset);
            log.extend_from_slice(&sealed);
        }
        let durable = log.len() as u64;
        let at = Position {
            file_id: id,
            offset: durable,
        };
        let plain = Marker::encode(durable, 0, at);
        let mut forged = log.clone();
        forged.extend_from_slice(&plain); // a plaintext marker
        sealed.clear();
        cipher.seal(&plain, at, &mut sealed);
        log.extend_from_slice(&sealed);
        let scan_of = |bytes: &[u8]| {
            let mut damaged = bytes.to_vec();
            damaged[offsets[1] as usize + 70] ^= 0x01;
            let file = MemFile::with_bytes(&damaged);
            scan(&file, id, Some(&cipher), ScanStart::BEGINNING, |_, _| {}).unwrap()
        };
        assert_eq!(
            scan_of(&log).damage,
            Some(Damage::Corrupt {
                offset: offsets[1],
                next_valid: Some(offsets[2]),
                durable,
            })
        );
        assert!(
            matches!(scan_of(&forged).damage, Some(Damage::TornTail { offset, .. }) if offset == offsets[1]),
            "a plaintext marker was believed"
        );
    }

    #[test]
    fn garbage_after_the_last_record_is_a_torn_tail() {
        let (mut log, _) = log_with(2);
        let good_end = log.len() as u64;
        log.extend((0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        let (keys, summary) = keys_of(&log);
        assert_eq!(keys, ["key-1", "key-2"]);
        assert_eq!(
            summary.damage,
            Some(Damage::TornTail {
                offset: good_end,
                len: 5000,
                next_valid: None,
            })
        );
    }

    #[test]
    fn records_larger_than_the_window_are_read_whole() {
        let mut log = FileHeader::new(0, 0).encode().to_vec();
        let big = vec![7u8; WINDOW * 3 + 11];
        append(&mut log, b"big-1", &big, 1);
        append(&mut log, b"big-2", &big, 2);
        let (keys, summary) = keys_of(&log);
        assert_eq!(keys, ["big-1", "big-2"]);
        assert_eq!(summary.damage, None);
    }

    #[test]
    fn a_header_damaged_to_claim_a_huge_length_is_never_read_whole() {
        let mut log = FileHeader::new(0, 0).encode().to_vec();
        append(&mut log, b"first", b"1", 1);
        let damaged = append(&mut log, b"second", b"2", 2) as usize;
        let big = append(&mut log, b"third", &vec![3u8; WINDOW * 2], 3);
        let durable = log.len() as u64;
        append_marker(&mut log, durable);
        // The second record's value length now claims the rest of the file.
        let claimed = (log.len() - damaged - RECORD_HEADER_LEN - b"second".len() - 10) as u32;
        log[damaged + 8..damaged + 12].copy_from_slice(&claimed.to_le_bytes());
        let file = MemFile::with_bytes(&log);
        let mut keys = Vec::new();
        let summary = scan(
            &file,
            file_id(&log),
            None,
            ScanStart::BEGINNING,
            |record, _| keys.push(record.key.to_vec()),
        )
        .unwrap();
        assert_eq!(keys, [b"first".to_vec()]);
        assert_eq!(
            summary.damage,
            Some(Damage::Corrupt {
                offset: damaged as u64,
                next_valid: Some(big),
                durable,
            })
        );
        let legit = durable as usize - big as usize;
        let largest = file.largest_read.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            largest <= legit,
            "read {largest} bytes at once for a {legit}-byte record"
        );
    }

    #[test]
    fn a_record_inside_a_torn_value_is_never_taken_for_a_real_one() {
        // A value holding a whole record (a log backup stored as a blob),
        // written to look as new as can be; then the write is torn.
        let (mut log, offsets) = log_with(2);
        let mut other = FileHeader::new(0, 0).encode().to_vec();
        append(&mut other, b"victim", b"FORGED", u64::MAX - 1);
        let embedded = &other[FILE_HEADER_LEN..];
        let blob = [&[b'b'; 100][..], embedded, &[b'b'; 100]].concat();
        let blob_at = append(&mut log, b"blob", &blob, 3);
        log.truncate(log.len() - 50);
        let (keys, summary) = keys_of(&log);
        assert_eq!(keys, ["key-1", "key-2"]);
        assert!(
            matches!(summary.damage, Some(Damage::TornTail { offset, .. }) if offset == blob_at),
            "{:?} (records at {offsets:?})",
            summary.damage
        );
    }

    /// Appends a batch frame of puts "key" = "value", stamped for where it
    /// lands; returns its offset.
    fn append_frame(log: &mut Vec<u8>, members: &[(&str, &str)], first: u64) -> u64 {
        let at = Position {
            file_id: file_id(log),
            offset: log.len() as u64,
        };
        let mut frame = Vec::new();
        FrameBuilder::begin(&mut frame);
        for (key, value) in members {
            let meta = RecordMeta::put(key.as_bytes(), b"text/plain", 0);
            FrameBuilder::add(&mut frame, &meta, value.as_bytes());
        }
        FrameBuilder::seal(&mut frame, first, 0, at);
        log.extend_from_slice(&frame);
        at.offset
    }

    #[test]
    fn a_batch_frame_yields_its_members() {
        let (mut log, _) = log_with(1);
        append_frame(&mut log, &[("b1", "x"), ("b2", "y"), ("b3", "z")], 2);
        append(&mut log, b"after", b"w", 5);
        let (keys, summary) = keys_of(&log);
        assert_eq!(keys, ["key-1", "b1", "b2", "b3", "after"]);
        assert_eq!(summary.records, 5);
        assert_eq!(summary.max_sequence, 5);
        assert_eq!(summary.damage, None);
    }

    #[test]
    fn a_torn_batch_frame_is_cut_whole_at_every_byte() {
        let (mut log, _) = log_with(1);
        let frame = append_frame(&mut log, &[("b1", "x"), ("b2", "y"), ("b3", "z")], 2);
        for cut in frame + 1..log.len() as u64 {
            let (keys, summary) = keys_of(&log[..cut as usize]);
            assert_eq!(keys, ["key-1"], "cut at {cut}");
            assert!(
                matches!(summary.damage, Some(Damage::TornTail { offset, .. }) if offset == frame),
                "cut at {cut}: {:?}",
                summary.damage
            );
        }
        for at in frame as usize..log.len() {
            let mut damaged = log.clone();
            damaged[at] ^= 0x10;
            let (keys, _) = keys_of(&damaged);
            assert_eq!(keys, ["key-1"], "flip at {at}");
        }
    }

    #[test]
    fn a_member_outside_its_frame_is_not_a_record() {
        let (mut log, _) = log_with(1);
        let frame = append_frame(&mut log, &[("b1", "x"), ("b2", "y")], 2);
        // Drop the frame header: the members now sit at the top level, each
        // with a CRC that would match where it now is.
        let mut members = log.split_off(frame as usize)[RECORD_HEADER_LEN..].to_vec();
        let member_len = members.len() / 2;
        let id = file_id(&log);
        for (n, chunk) in members.chunks_mut(member_len).enumerate() {
            let at = Position {
                file_id: id,
                offset: frame + (n * member_len) as u64,
            };
            RecordBuilder::restamp(chunk, at);
        }
        log.extend_from_slice(&members);
        let (keys, summary) = keys_of(&log);
        assert_eq!(keys, ["key-1"]);
        assert!(summary.damage.is_some());
    }
}
