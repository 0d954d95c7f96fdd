//! Reading the log after a sequence number, for a follower (the records as
//! they lie on disk) or the MQTT bridge (opened as [`LogChange`]s), a window
//! at a time, waiting at the end for more and following the store to a new
//! log when a compaction (or a snapshot install) replaces it.
//!
//! A log holds every record whose sequence number is above its header's
//! base sequence (see [`super::record`]): a compaction copies the records
//! after its cut verbatim and keeps only live ones before it. So a reader
//! can start after sequence number `S` only if `S` is at least the base;
//! otherwise some changes after `S` are gone and the follower needs a
//! snapshot ([`TailError::TooOld`]). When the log is replaced under a
//! reader, it first reads the old log to its end (nothing is appended to
//! it any more), then finds its place in the new one by sequence number.
//! A hold on the log's changes (see [`super::engine::retention`]) keeps
//! every change after it through compactions.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::crypt::{open_copy, Cipher};
use super::engine::{LogEnd, Store};
use super::file::LogFile;
use super::record::{
    members, verify, Position, RecordHeader, RecordKind, RecordView, FILE_HEADER_LEN,
    RECORD_HEADER_LEN,
};

/// How much of the log a scan for a reader's place reads at once.
const SCAN_WINDOW: usize = 256 * 1024;

/// Why a log cannot be read from where a follower asked.
#[derive(Debug)]
pub enum TailError {
    /// The log no longer holds every record after the sequence number
    /// asked for: they were compacted away (a snapshot is needed).
    TooOld {
        /// The oldest sequence number a reader may start after.
        base: u64,
    },
    /// The log could not be read.
    Io(io::Error),
    /// The log holds no valid record header at this offset.
    Corrupt {
        /// The offset.
        offset: u64,
    },
}

impl std::fmt::Display for TailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooOld { base } => write!(
                f,
                "the log no longer holds every change after that point (it starts after {base})"
            ),
            Self::Io(err) => write!(f, "the log could not be read: {err}"),
            Self::Corrupt { offset } => write!(f, "the log is damaged at offset {offset}"),
        }
    }
}

impl From<io::Error> for TailError {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

/// Whole records read from the log, as they lie in it.
#[derive(Debug)]
pub struct Chunk<'b> {
    /// The id of the log they are in (their CRCs cover it).
    pub file_id: u32,
    /// The offset of the first one in that log.
    pub offset: u64,
    /// The sequence number of the last record before them.
    pub after: u64,
    /// Their bytes (sync markers included).
    pub bytes: &'b [u8],
    /// The sequence number of the last of them.
    pub last_sequence: u64,
}

/// A change read from the log: a put or a delete, checked and opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogChange<'a> {
    /// Its sequence number: the key's version.
    pub sequence: u64,
    /// Whether it deletes the key (a tombstone: no value).
    pub deleted: bool,
    /// The key.
    pub key: &'a [u8],
    /// The value (empty for a delete).
    pub value: &'a [u8],
    /// Its content type.
    pub content_type: &'a [u8],
    /// When it was written, ms since the epoch.
    pub timestamp_ms: u64,
    /// When the key expires, ms since the epoch (0: never).
    pub expires_at_ms: u64,
}

/// A reader of a store's log after some sequence number.
pub struct LogTail {
    store: Arc<Store>,
    /// Whether only published records are read (never one that readers
    /// of the store cannot see yet).
    published_only: bool,
    /// The log's encryption, to open changes.
    cipher: Option<Arc<Cipher>>,
    /// The log being read, and its end when last looked at.
    log: LogEnd,
    /// The next byte to read in it.
    offset: u64,
    /// The sequence number of the last record handed out.
    last_read: u64,
}

impl Store {
    /// A reader of every record after sequence number `after`, as soon as
    /// it is appended, or [`TailError::TooOld`] if the log no longer holds
    /// them all.
    pub fn tail_after(self: &Arc<Self>, after: u64) -> Result<LogTail, TailError> {
        self.tail(after, false)
    }

    /// [`tail_after`](Self::tail_after), but a record is read only once it
    /// is published (with `sync: always`, once it is durable): what the
    /// MQTT bridge ships is never taken back by a power cut.
    pub fn published_tail_after(self: &Arc<Self>, after: u64) -> Result<LogTail, TailError> {
        self.tail(after, true)
    }

    fn tail(self: &Arc<Self>, after: u64, published_only: bool) -> Result<LogTail, TailError> {
        let log = self.log_end();
        let offset = place_after(&log, after)?;
        Ok(LogTail {
            store: Arc::clone(self),
            published_only,
            cipher: self.cipher(),
            log,
            offset,
            last_read: after,
        })
    }
}

impl LogTail {
    /// The next whole records, at most `max` bytes of them (a longer record
    /// alone), read into `buf`; waits up to `wait` for some to be appended,
    /// and returns `None` if none were. Sync markers come along, but a
    /// stretch holding nothing else is skipped.
    pub fn next<'b>(
        &mut self,
        buf: &'b mut Vec<u8>,
        max: usize,
        wait: Duration,
    ) -> Result<Option<Chunk<'b>>, TailError> {
        let mut waited = false;
        loop {
            if self.offset >= self.limit() {
                let now = if waited {
                    self.store.log_end()
                } else {
                    waited = true;
                    self.store
                        .wait_appended(self.log.file_id, self.offset, wait)
                };
                self.look_at(now)?;
                if self.offset >= self.limit() {
                    return Ok(None);
                }
            }
            let after = self.last_read;
            let start = self.offset;
            let (len, last) = self.read_records(buf, max)?;
            self.offset += len as u64;
            if last > after {
                self.last_read = last;
                return Ok(Some(Chunk {
                    file_id: self.log.file_id,
                    offset: start,
                    after,
                    bytes: &buf[..len],
                    last_sequence: last,
                }));
            }
        }
    }

    /// Calls `each` with every change among `chunk`'s records (from
    /// [`next`](Self::next)), checked where they lie and opened, in order;
    /// sync markers and quarantined records (damage, never served) are
    /// skipped. Fails at the first record that does not check.
    pub fn changes(
        &self,
        chunk: &Chunk<'_>,
        scratch: &mut Vec<u8>,
        mut each: impl FnMut(LogChange<'_>),
    ) -> Result<(), TailError> {
        let mut at = 0;
        while at < chunk.bytes.len() {
            let offset = chunk.offset + at as u64;
            let corrupt = || TailError::Corrupt { offset };
            let fixed = chunk
                .bytes
                .get(at..at + RECORD_HEADER_LEN)
                .ok_or_else(corrupt)?;
            let len =
                usize::try_from(decode(fixed, offset)?.record_len()).map_err(|_| corrupt())?;
            let bytes = chunk.bytes.get(at..at + len).ok_or_else(corrupt)?;
            let place = Position {
                file_id: chunk.file_id,
                offset,
            };
            let view = verify(bytes, place).map_err(|_| corrupt())?;
            match view.header.kind {
                RecordKind::Marker => {}
                RecordKind::Batch => {
                    for member in members(&view, place) {
                        let (member_offset, member) = member.map_err(|_| corrupt())?;
                        let place = Position {
                            offset: member_offset,
                            ..place
                        };
                        self.open(member, place, scratch, &mut each)?;
                    }
                }
                RecordKind::Put | RecordKind::Delete => {
                    self.open(view, place, scratch, &mut each)?;
                }
            }
            at += len;
        }
        Ok(())
    }

    /// Opens the record `view` at `place` and hands it to `each` as a change.
    fn open(
        &self,
        view: RecordView<'_>,
        place: Position,
        scratch: &mut Vec<u8>,
        each: &mut impl FnMut(LogChange<'_>),
    ) -> Result<(), TailError> {
        let record = open_copy(self.cipher.as_deref(), view, place, scratch).map_err(|_| {
            TailError::Corrupt {
                offset: place.offset,
            }
        })?;
        let header = record.header;
        if header.is_damaged() {
            return Ok(());
        }
        each(LogChange {
            sequence: header.sequence,
            deleted: header.kind == RecordKind::Delete,
            key: record.key,
            value: record.value,
            content_type: record.content_type,
            timestamp_ms: header.timestamp_ms,
            expires_at_ms: header.expires_at_ms,
        });
        Ok(())
    }

    /// The last sequence number in the log when it was last looked at.
    pub fn log_sequence(&self) -> u64 {
        self.log.last_sequence
    }

    /// The bytes of log not read yet: how far behind the reader is.
    pub fn behind_bytes(&mut self) -> u64 {
        // A log replaced meanwhile counts from where the reader is in it.
        let _ = self.look_at(self.store.log_end());
        self.log.end.saturating_sub(self.offset)
    }

    /// Where reading stops in the current log.
    fn limit(&self) -> u64 {
        if self.published_only {
            self.log.published_end
        } else {
            self.log.end
        }
    }

    /// Whether every record appended when the log was last looked at has
    /// been read.
    pub fn caught_up(&self) -> bool {
        self.offset >= self.log.end
    }

    /// Takes in the log's end `now`: the same log grown, or another log
    /// that replaced it, read from after the last record handed out once
    /// the old one is read to its end.
    fn look_at(&mut self, now: LogEnd) -> Result<(), TailError> {
        if now.file_id == self.log.file_id {
            self.log = now;
            return Ok(());
        }
        let old_end = self.log.file.size()?;
        if self.offset < old_end {
            // A replaced log is read to its end: all of it was published.
            self.log.end = old_end;
            self.log.published_end = old_end;
            return Ok(());
        }
        self.offset = place_after(&now, self.last_read)?;
        self.log = now;
        self.cipher = self.store.cipher();
        Ok(())
    }

    /// Reads whole records from the reader's offset into `buf`: as many as
    /// fit in `max` bytes, or the first alone if it is longer. Returns the
    /// bytes read and the last sequence number among them (or the last
    /// read before, if they are all sync markers).
    fn read_records(&self, buf: &mut Vec<u8>, max: usize) -> Result<(usize, u64), TailError> {
        let available = usize::try_from(self.limit() - self.offset).unwrap_or(usize::MAX);
        buf.resize(available.min(max.max(RECORD_HEADER_LEN)), 0);
        self.log.file.read_at(buf, self.offset)?;
        let (mut used, mut last) = (0, self.last_read);
        while let Some(header) = buf.get(used..used + RECORD_HEADER_LEN) {
            let header = decode(header, self.offset + used as u64)?;
            let len = usize::try_from(header.record_len()).unwrap_or(usize::MAX);
            if len as u64 > self.limit() - self.offset - used as u64 {
                return Err(TailError::Corrupt {
                    offset: self.offset + used as u64,
                });
            }
            if used + len > buf.len() {
                if used == 0 {
                    // A record longer than `max` travels alone.
                    buf.resize(len, 0);
                    self.log.file.read_at(buf, self.offset)?;
                    return Ok((len, sequence_of(&header).unwrap_or(last)));
                }
                break;
            }
            last = sequence_of(&header).unwrap_or(last);
            used += len;
        }
        if used == 0 {
            return Err(TailError::Corrupt {
                offset: self.offset,
            });
        }
        Ok((used, last))
    }
}

/// Where in `log` the first record after sequence number `after` is (its
/// end if there is none yet), or [`TailError::TooOld`].
fn place_after(log: &LogEnd, after: u64) -> Result<u64, TailError> {
    if after < log.base_sequence {
        return Err(TailError::TooOld {
            base: log.base_sequence,
        });
    }
    first_record_after(&*log.file, log.end, after)
}

/// Where in `file`, whose whole records end at `end`, the first record
/// after sequence number `after` is (`end` if there is none): a scan of
/// the record headers, a window at a time.
pub(super) fn first_record_after(
    file: &dyn LogFile,
    end: u64,
    after: u64,
) -> Result<u64, TailError> {
    let mut window = vec![0; SCAN_WINDOW];
    let mut at = FILE_HEADER_LEN as u64;
    while at < end {
        let len = usize::try_from(end - at).map_or(SCAN_WINDOW, |left| left.min(SCAN_WINDOW));
        file.read_at(&mut window[..len], at)?;
        let mut used = 0;
        while let Some(header) = window[..len].get(used..used + RECORD_HEADER_LEN) {
            let header = decode(header, at + used as u64)?;
            if sequence_of(&header).is_some_and(|sequence| sequence > after) {
                return Ok(at + used as u64);
            }
            used += usize::try_from(header.record_len()).unwrap_or(usize::MAX);
            if used > len {
                break;
            }
        }
        if used == 0 {
            return Err(TailError::Corrupt { offset: at });
        }
        at += used as u64;
    }
    Ok(end)
}

/// The header of the record at `offset`, whose first bytes are `bytes`.
fn decode(bytes: &[u8], offset: u64) -> Result<RecordHeader, TailError> {
    let fixed = bytes.try_into().expect("a whole header");
    RecordHeader::decode(fixed).map_err(|_| TailError::Corrupt { offset })
}

/// The sequence number a record takes (a frame: its last member's), or
/// `None` for a sync marker.
fn sequence_of(header: &RecordHeader) -> Option<u64> {
    (header.kind != RecordKind::Marker).then_some(header.sequence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::directory::open_with;
    use crate::store::engine::mutation::BatchOp;
    use crate::store::testing::{batch_put, put, Model};
    use crate::store::{Expect, SyncMode};

    #[test]
    fn changes_come_opened_in_order_batches_member_by_member() {
        for cipher in [None, Some(Arc::new(Cipher::from_key(&[3; 32])))] {
            let dir = tempfile::tempdir().unwrap();
            let (store, _) = open_with(dir.path(), SyncMode::Always, cipher).unwrap();
            let mut tail = store.tail_after(0).unwrap();
            put(&store, &mut Model::new(), "a", b"1");
            let delete_a = BatchOp::Delete {
                key: b"a",
                expect: Expect::Any,
            };
            store
                .batch(&[batch_put("b", b"2"), delete_a], &mut Vec::new())
                .unwrap();
            store.delete(b"b", &mut Vec::new(), Expect::Any).unwrap();
            let (mut buf, mut scratch, mut seen) = (Vec::new(), Vec::new(), Vec::new());
            while let Some(chunk) = tail.next(&mut buf, 1 << 20, Duration::ZERO).unwrap() {
                tail.changes(&chunk, &mut scratch, |change| {
                    seen.push((
                        change.sequence,
                        change.deleted,
                        String::from_utf8_lossy(change.key).into_owned(),
                        change.value.to_vec(),
                    ));
                })
                .unwrap();
            }
            let expected = [
                (1, false, "a".to_owned(), b"1".to_vec()),
                (2, false, "b".to_owned(), b"2".to_vec()),
                (3, true, "a".to_owned(), Vec::new()),
                (4, true, "b".to_owned(), Vec::new()),
            ];
            assert_eq!(seen, expected);
        }
    }
}
