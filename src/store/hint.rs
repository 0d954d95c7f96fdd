//! Hint files: a snapshot of the index, so a restart reads the index instead
//! of the whole log (Bitcask's hint file).
//!
//! # Layout of `data.hint` (integers little-endian)
//!
//! ```text
//! header, 48 bytes:
//!      0    8 magic            b"LUCIDHNT"
//!      8    4 version          u32, 2
//!     12    4 log file id      u32: the log this hint describes (see record.rs)
//!     16    8 log base seq     u64: ditto
//!     24    8 covered end      u64: the index below is the state after every
//!                              log record before this offset, and none after
//!     32    8 max sequence     u64: highest sequence number before that offset
//!     40    8 entry count      u64
//! entries, one per live key:
//!           2 key length       u16
//!           4 record length    u32
//!           8 record offset    u64
//!           - key bytes
//! attributes: 8 count          u64, then one per locked, expiring or
//!                              damaged key
//!           2 key length       u16
//!           1 state            u8: bit 0 locked, bit 1 damaged (its record
//!                              failed its check, or is quarantined: see
//!                              record.rs); other bits 0
//!           8 expires at       u64, milliseconds since the epoch, 0 = never
//!           - key bytes        (a key listed above)
//! trailer:  4 CRC-32 of every byte after the version
//! ```
//!
//! An encrypted store's hint starts with b"LUCIDHNE" instead, and everything
//! after the version is encrypted (see [`super::crypt`]).
//!
//! ```text
//! ```
//!
//! # Trust
//!
//! At open the hint is used only if its magic, version and CRC are right,
//! it names the current log (file id and base sequence) and its covered end
//! lies within the log; then only the log after the covered end is scanned.
//! Anything else — missing, stale, truncated, damaged — means a full scan,
//! with a WARN saying why. The hint is written to `data.hint.tmp`, fsynced
//! and renamed, so a crash leaves the old hint or the new one, never half.
//!
//! A hint is trusted for where each key's latest record is, not for the
//! records being intact: the log it covers is verified in the background
//! after the start (see `scan.rs`), and `lucid check` reads it all.
//!
//! The log is fsynced before a hint is written, so the covered end of a
//! valid hint counts as durable for the recovery rule (see `scan.rs`). The
//! hint lists what the index holds, so sync markers, which are never
//! indexed, are never in it.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::crypt::Cipher;
use super::index::{Attrs, Index, Key, Location};
use super::layout::{private_file, sync_dir, HINT_FILE, HINT_TMP};
use super::record::{u32_at, u64_at, FileHeader};

const MAGIC: &[u8; 8] = b"LUCIDHNT";
/// Magic of an encrypted hint file.
const SEALED_MAGIC: &[u8; 8] = b"LUCIDHNE";
const VERSION: u32 = 2;
const HEADER_LEN: usize = 48;

/// The position in the log that an index snapshot reflects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// The log the snapshot belongs to.
    pub log: FileHeader,
    /// The snapshot is the state after every record before this offset.
    pub end: u64,
    /// Highest sequence number among those records.
    pub max_sequence: u64,
}

/// Writes `index`, which reflects the log up to `coverage`, as the hint file
/// (encrypted with `cipher` if the store is).
pub fn write(
    dir: &Path,
    coverage: Coverage,
    index: &Index,
    cipher: Option<&Cipher>,
) -> io::Result<()> {
    let tmp = dir.join(HINT_TMP);
    let created = private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    let mut file = BufWriter::with_capacity(256 * 1024, created);
    file.write_all(if cipher.is_some() {
        SEALED_MAGIC
    } else {
        MAGIC
    })?;
    file.write_all(&VERSION.to_le_bytes())?;
    let file = match cipher {
        None => write_body(file, coverage, index)?,
        Some(cipher) => write_body(cipher.stream_writer(file)?, coverage, index)?.finish()?,
    };
    let file = file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(HINT_FILE))?;
    sync_dir(dir)
}

/// Writes everything after the magic and version, CRC trailer included.
fn write_body<W: Write>(inner: W, coverage: Coverage, index: &Index) -> io::Result<W> {
    let mut out = CrcWriter {
        inner,
        crc: crc32fast::Hasher::new(),
    };
    out.write_all(&coverage.log.file_id.to_le_bytes())?;
    out.write_all(&coverage.log.base_sequence.to_le_bytes())?;
    out.write_all(&coverage.end.to_le_bytes())?;
    out.write_all(&coverage.max_sequence.to_le_bytes())?;
    out.write_all(&(index.len() as u64).to_le_bytes())?;
    for (key, location) in index.entries() {
        out.write_all(&(key.len() as u16).to_le_bytes())?;
        out.write_all(&location.len.to_le_bytes())?;
        out.write_all(&location.offset.to_le_bytes())?;
        out.write_all(key)?;
    }
    let attrs: Vec<_> = index.all_attrs().collect();
    out.write_all(&(attrs.len() as u64).to_le_bytes())?;
    for (key, attrs) in attrs {
        out.write_all(&(key.len() as u16).to_le_bytes())?;
        out.write_all(&[u8::from(attrs.locked) | (u8::from(attrs.damaged) << 1)])?;
        out.write_all(&attrs.expires_at_ms.to_le_bytes())?;
        out.write_all(key)?;
    }
    let crc = out.crc.clone().finalize();
    let mut inner = out.inner;
    inner.write_all(&crc.to_le_bytes())?;
    Ok(inner)
}

/// A hint that was accepted: the index and where log scanning resumes.
pub struct Loaded {
    /// The index as of `coverage.end`.
    pub index: Index,
    /// Where the snapshot stands.
    pub coverage: Coverage,
}

/// Why a hint was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unused {
    /// There is no hint file.
    Missing,
    /// The hint exists but cannot be trusted; the text says why.
    Rejected(String),
}

/// Loads the hint for the log with header `log` and length `log_len`,
/// decrypting it with `cipher` if the store is encrypted.
pub fn load(
    dir: &Path,
    log: FileHeader,
    log_len: u64,
    cipher: Option<&Cipher>,
) -> Result<Loaded, Unused> {
    let file = match File::open(dir.join(HINT_FILE)) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(Unused::Missing),
        Err(err) => return Err(Unused::Rejected(format!("cannot open it: {err}"))),
    };
    read(file, log, log_len, cipher).map_err(Unused::Rejected)
}

fn read(
    file: File,
    log: FileHeader,
    log_len: u64,
    cipher: Option<&Cipher>,
) -> Result<Loaded, String> {
    let mut file = BufReader::with_capacity(256 * 1024, file);
    let mut header = [0u8; HEADER_LEN];
    file.read_exact(&mut header[..12]).map_err(truncated)?;
    let expected = if cipher.is_some() {
        SEALED_MAGIC
    } else {
        MAGIC
    };
    if &header[0..8] != expected {
        return Err(match cipher {
            Some(_) => "it is not an encrypted Lucid hint file".into(),
            None => "it is not a plain Lucid hint file".into(),
        });
    }
    let body: Box<dyn Read> = match cipher {
        Some(cipher) => Box::new(cipher.stream_reader(file).map_err(truncated)?),
        None => Box::new(file),
    };
    let mut input = CrcReader {
        inner: body,
        crc: crc32fast::Hasher::new(),
    };
    input.read_exact(&mut header[12..]).map_err(truncated)?;
    let version = u32_at(&header, 8);
    if version != VERSION {
        return Err(format!(
            "it has version {version}, this build reads {VERSION}"
        ));
    }
    let coverage = Coverage {
        log: FileHeader {
            file_id: u32_at(&header, 12),
            base_sequence: u64_at(&header, 16),
            key_check: log.key_check,
        },
        end: u64_at(&header, 24),
        max_sequence: u64_at(&header, 32),
    };
    if coverage.log != log {
        return Err("it describes another log file (stale)".into());
    }
    if coverage.end > log_len {
        return Err(format!(
            "it covers {} bytes but the log has only {log_len}",
            coverage.end
        ));
    }
    let count = u64_at(&header, 40);
    // Every entry takes at least 15 bytes: a count the log could not hold is
    // damage, not a reason to reserve memory.
    if count > log_len / 15 {
        return Err("its entry count is impossible".into());
    }
    let mut index = read_entries(&mut input, count, coverage.end)?;
    read_attrs(&mut input, &mut index)?;
    let expected = input.crc.clone().finalize();
    let mut trailer = [0u8; 4];
    input.inner.read_exact(&mut trailer).map_err(truncated)?;
    if u32::from_le_bytes(trailer) != expected {
        return Err("its checksum does not match".into());
    }
    if input.inner.read(&mut [0u8; 1]).map_err(truncated)? != 0 {
        return Err("it has bytes after its checksum".into());
    }
    Ok(Loaded { index, coverage })
}

/// Why reading a hint failed.
fn truncated(err: io::Error) -> String {
    format!("it is truncated or unreadable ({err})")
}

/// Reads the `count` entries of a hint covering the log up to
/// `covered_end`, as an index.
fn read_entries(input: &mut impl Read, count: u64, covered_end: u64) -> Result<Index, String> {
    let mut entries = Vec::with_capacity(count as usize);
    let mut key = Vec::new();
    for _ in 0..count {
        let mut fixed = [0u8; 14];
        input.read_exact(&mut fixed).map_err(truncated)?;
        let key_len = u16::from_le_bytes([fixed[0], fixed[1]]);
        let location = Location {
            len: u32::from_le_bytes(fixed[2..6].try_into().expect("4 bytes")),
            offset: u64::from_le_bytes(fixed[6..14].try_into().expect("8 bytes")),
        };
        let end = location.offset.checked_add(u64::from(location.len));
        if end.is_none_or(|end| end > covered_end) {
            return Err("an entry points past the covered part of the log".into());
        }
        key.resize(usize::from(key_len), 0);
        input.read_exact(&mut key).map_err(truncated)?;
        entries.push((Key::new(&key), location));
    }
    Ok(Index::from_sorted(entries).ok_or("its keys are out of order")?)
}

/// Reads a hint's attributes into `index`, which holds its entries.
fn read_attrs(input: &mut impl Read, index: &mut Index) -> Result<(), String> {
    let mut key = Vec::new();
    let mut count = [0u8; 8];
    input.read_exact(&mut count).map_err(truncated)?;
    let count = u64::from_le_bytes(count);
    if count > index.len() as u64 {
        return Err("its attribute count is impossible".into());
    }
    for _ in 0..count {
        let mut fixed = [0u8; 11];
        input.read_exact(&mut fixed).map_err(truncated)?;
        key.resize(usize::from(u16::from_le_bytes([fixed[0], fixed[1]])), 0);
        input.read_exact(&mut key).map_err(truncated)?;
        let attrs = Attrs {
            locked: fixed[2] & 1 != 0,
            expires_at_ms: u64::from_le_bytes(fixed[3..11].try_into().expect("8 bytes")),
            damaged: fixed[2] & 2 != 0,
        };
        if fixed[2] > 3 || !index.contains(&key) {
            return Err("it has attributes for a key it does not list".into());
        }
        index.set_attrs(&key, attrs);
    }
    Ok(())
}

/// A writer that keeps a running CRC of what passes through.
struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that keeps a running CRC of what passes through.
struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::layout::LOG_FILE;
    use crate::store::testing::{assert_matches, churn, delete, put, Model};
    use crate::store::{open, SyncMode};

    /// A compacted directory (so it has a hint) with writes after the hint.
    fn directory_with_hint() -> (tempfile::TempDir, Model) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), SyncMode::Always).unwrap();
        let mut model = Model::new();
        churn(&store, &mut model);
        store.compact().unwrap();
        put(&store, &mut model, "key-1", b"written after the hint");
        put(&store, &mut model, "after-hint", b"new");
        delete(&store, &mut model, "key-3");
        (dir, model)
    }

    #[test]
    fn a_restart_loads_the_hint_and_reads_only_the_log_after_it() {
        let (dir, model) = directory_with_hint();
        let (store, report) = open(dir.path(), SyncMode::Always).unwrap();
        assert_eq!(report.hint_keys, Some(40));
        assert_eq!(
            report.records, 3,
            "only the records after the hint are read"
        );
        assert_matches(&store, &model);
        assert!(store.get(b"key-3", &mut Vec::new()).unwrap().is_none());
        // Sequence numbers continue above everything in the log.
        let mut buf = Vec::new();
        let before = store
            .get(b"after-hint", &mut buf)
            .unwrap()
            .unwrap()
            .sequence;
        let mut model = model;
        put(&store, &mut model, "later", b"x");
        let mut buf = Vec::new();
        assert!(store.get(b"later", &mut buf).unwrap().unwrap().sequence > before);
    }

    #[test]
    fn a_read_only_store_writes_no_hint() {
        let dir = tempfile::tempdir().unwrap();
        let interval = SyncMode::Interval(std::time::Duration::from_secs(60));
        let (store, _) = open(dir.path(), interval).unwrap();
        put(&store, &mut Model::new(), "k", b"v");
        store.enter_read_only("the periodic fsync failed (simulated)");
        store.close().unwrap();
        assert!(
            !dir.path().join(HINT_FILE).exists(),
            "a hint claimed unsynced records"
        );
    }

    fn assert_hint_ignored(dir: &Path, model: &Model) {
        let (store, report) = open(dir, SyncMode::Always).unwrap();
        assert_eq!(report.hint_keys, None, "a bad hint was trusted");
        assert!(!dir.join(HINT_FILE).exists(), "a rejected hint was kept");
        assert_matches(&store, model);
    }

    #[test]
    fn a_damaged_hint_is_ignored_at_every_byte() {
        let (dir, model) = directory_with_hint();
        let path = dir.path().join(HINT_FILE);
        let good = fs::read(&path).unwrap();
        for at in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            fs::write(&path, &bad).unwrap();
            assert_hint_ignored(dir.path(), &model);
        }
    }

    #[test]
    fn truncated_or_extended_hints_are_ignored() {
        let (dir, model) = directory_with_hint();
        let path = dir.path().join(HINT_FILE);
        let good = fs::read(&path).unwrap();
        for cut in [0, 10, HEADER_LEN, good.len() / 2, good.len() - 1] {
            fs::write(&path, &good[..cut]).unwrap();
            assert_hint_ignored(dir.path(), &model);
        }
        let mut longer = good.clone();
        longer.push(0);
        fs::write(&path, &longer).unwrap();
        assert_hint_ignored(dir.path(), &model);
    }

    #[test]
    fn a_hint_for_an_earlier_log_is_ignored() {
        let (dir, mut model) = directory_with_hint();
        let path = dir.path().join(HINT_FILE);
        let old_hint = fs::read(&path).unwrap();
        {
            let (store, _) = open(dir.path(), SyncMode::Always).unwrap();
            churn(&store, &mut model);
            store.compact().unwrap();
        }
        fs::write(&path, &old_hint).unwrap();
        assert_hint_ignored(dir.path(), &model);
    }

    #[test]
    fn a_hint_longer_than_the_log_is_ignored() {
        let (dir, _) = directory_with_hint();
        // A log cut back (as after a torn write) below the hint's coverage.
        let log = dir.path().join(LOG_FILE);
        let (store, _) = open(dir.path(), SyncMode::Always).unwrap();
        let stats = store.stats();
        drop(store);
        let file = fs::OpenOptions::new().write(true).open(&log).unwrap();
        file.set_len(crate::store::record::FILE_HEADER_LEN as u64)
            .unwrap();
        let (store, report) = open(dir.path(), SyncMode::Always).unwrap();
        assert_eq!(report.hint_keys, None);
        assert_eq!(
            store.stats().keys,
            0,
            "an empty log means no keys, whatever the hint says"
        );
        assert!(stats.keys > 0);
    }
}
