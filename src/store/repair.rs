//! `lucid check --repair`: rebuilding a damaged log from its good records.
//!
//! Damage is judged by the recovery rule (see [`super::scan`]), as the
//! server and `lucid check` judge it. Every record that passes its CRC at
//! its position is kept, in log order, including those after damage to
//! durable data (re-stamped for its place in the repaired log); damaged
//! stretches are left out, and so is an unsynced tail, with any records
//! after it, exactly as the server would cut it. Sync markers are not
//! copied (they name offsets of the old log); the repaired log ends with one
//! naming its end, which is durable once the repaired log is fsynced.
//! The repaired log is written to `data.log.repair` and fsynced; the damaged
//! log is kept as `data.log.broken-<unix seconds>` (a hard link, or a copy
//! where links are impossible), and the repaired log is renamed over
//! `data.log` in one atomic step. No byte of user data is deleted, and at no
//! moment is there no `data.log`.
//! The hint file, an index of the damaged log, is removed: it is derived data.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::crypt::{stored_form, Cipher};
use super::directory::{
    check_key, create_unique, full_scan_start, io_error as io_err, lock_dir, read_header,
    LogSource, OpenError,
};
use super::file::{DiskFile, LogFile};
use super::layout::{broken_log, private_file, sync_dir, HINT_FILE, LOG_FILE, REPAIR_FILE};
use super::record::{FileHeader, Marker, Position, RecordBuilder, FILE_HEADER_LEN};
use super::scan::{scan, Damage, ScanStart};
use crate::clock::now_ms;

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// Good records kept.
    pub records_kept: u64,
    /// Size of the repaired log.
    pub bytes_kept: u64,
    /// Damaged byte ranges left out, as (start, end) offsets in the old log.
    pub dropped: Vec<(u64, u64)>,
    /// Where the damaged log was moved, if anything was repaired.
    pub broken_copy: Option<PathBuf>,
}

/// Repairs the log in `dir` (see the module documentation). A log without
/// damage is left alone.
pub fn repair(dir: &Path, cipher: Option<&Cipher>) -> Result<RepairReport, OpenError> {
    let _lock = lock_dir(dir)?;
    let path = dir.join(LOG_FILE);
    let log = DiskFile::new(File::open(&path).map_err(io_err("open", &path))?);
    let header = read_header(&log, &path)?;
    check_key(&header, cipher.map_or(0, Cipher::check_value), &path)?;
    let tmp = dir.join(REPAIR_FILE);
    let created = private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp);
    let mut out = BufWriter::new(created.map_err(io_err("create", &tmp))?);
    let mut report = RepairReport {
        records_kept: 0,
        bytes_kept: FILE_HEADER_LEN as u64,
        dropped: Vec::new(),
        broken_copy: None,
    };
    let log_len = log.size().map_err(io_err("read", &path))?;
    let start = full_scan_start(dir, header, log_len, cipher);
    let new_header = FileHeader::new(header.base_sequence, header.key_check);
    let mut write_error = out.write_all(&new_header.encode()).err();
    let source = (&log as &dyn LogFile, header.file_id, cipher);
    copy_good_records(source, &path, start, new_header, &mut report, |stored| {
        if write_error.is_none() {
            write_error = out.write_all(stored).err();
        }
    })?;
    if !report.dropped.is_empty() && report.records_kept > 0 && write_error.is_none() {
        let at = Position {
            file_id: new_header.file_id,
            offset: report.bytes_kept,
        };
        let marker = Marker::encode(at.offset, now_ms(), at);
        let mut sealed = Vec::new();
        let stored = stored_form(cipher, &marker, at, &mut sealed);
        match out.write_all(stored) {
            Ok(()) => report.bytes_kept += stored.len() as u64,
            Err(err) => write_error = Some(err),
        }
    }
    if let Some(err) = write_error {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write", &tmp)(err));
    }
    if report.dropped.is_empty() {
        drop(out);
        let _ = fs::remove_file(&tmp);
        return Ok(report);
    }
    let file = out
        .into_inner()
        .map_err(|e| io_err("write", &tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err("sync", &tmp))?;
    report.broken_copy = Some(put_in_place(dir, &path, &tmp)?);
    Ok(report)
}

/// Scans the log at `path` (`source`) from `start` on, passing every good
/// record, stamped for where it lands in the repaired log (with header
/// `new_header`, ending at `report.bytes_kept`), to `write`, and skipping
/// damage by the recovery rule; counts what was kept and dropped in
/// `report`.
fn copy_good_records(
    source: LogSource<'_>,
    path: &Path,
    mut start: ScanStart,
    new_header: FileHeader,
    report: &mut RepairReport,
    mut write: impl FnMut(&[u8]),
) -> Result<(), OpenError> {
    let (log, file_id, cipher) = source;
    let log_len = log.size().map_err(io_err("read", path))?;
    let (mut scratch, mut sealed) = (Vec::new(), Vec::new());
    loop {
        let summary = scan(log, file_id, cipher, start, |record, _| {
            // Stamped for where it lands in the repaired log.
            let at = Position {
                file_id: new_header.file_id,
                offset: report.bytes_kept,
            };
            scratch.clear();
            scratch.extend_from_slice(record.bytes);
            // Batch members are only visited when their whole frame is
            // good; they are kept as plain records.
            RecordBuilder::detach(&mut scratch, at);
            let stored = stored_form(cipher, &scratch, at, &mut sealed);
            write(stored);
            report.records_kept += 1;
            report.bytes_kept += stored.len() as u64;
        })
        .map_err(io_err("read", path))?;
        match summary.damage {
            None => return Ok(()),
            Some(Damage::TornTail { offset, len, .. }) => {
                report.dropped.push((offset, offset + len));
                return Ok(());
            }
            Some(Damage::Corrupt {
                offset,
                next_valid: Some(next_valid),
                ..
            }) => {
                report.dropped.push((offset, next_valid));
                start = ScanStart {
                    offset: next_valid,
                    max_sequence: summary.max_sequence,
                    durable: summary.durable,
                };
            }
            Some(Damage::Corrupt { offset, .. }) => {
                report.dropped.push((offset, log_len));
                return Ok(());
            }
        }
    }
}

/// Puts the repaired log `tmp`, complete and synced, in place of the log
/// at `log` in `dir`, keeping the damaged one aside and removing the hint
/// file. Returns where the damaged log was kept.
fn put_in_place(dir: &Path, log: &Path, tmp: &Path) -> Result<PathBuf, OpenError> {
    let seconds = now_ms() / 1000;
    // Keep the damaged log under a second name first, then replace data.log
    // in one atomic rename: at no moment is there no data.log.
    let broken = keep_aside(log, &broken_log(log, seconds))?;
    fs::rename(tmp, log).map_err(io_err("move into place", tmp))?;
    match fs::remove_file(dir.join(HINT_FILE)) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            return Err(io_err("remove", &dir.join(HINT_FILE))(err))
        }
        _ => {}
    }
    sync_dir(dir).map_err(io_err("sync", dir))?;
    Ok(broken)
}

/// Gives the log at `log` a second name, `base` or `base.N` (never one in
/// use): a hard link, or a synced copy where links are impossible.
fn keep_aside(log: &Path, base: &str) -> Result<PathBuf, OpenError> {
    for n in 0u32.. {
        let name = PathBuf::from(if n == 0 {
            base.to_owned()
        } else {
            format!("{base}.{n}")
        });
        match fs::hard_link(log, &name) {
            Ok(()) => return Ok(name),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(_) => break,
        }
    }
    let (name, mut copy) = create_unique(base)?;
    File::open(log)
        .and_then(|mut source| io::copy(&mut source, &mut copy))
        .and_then(|_| copy.sync_all())
        .map_err(io_err("copy aside", log))?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{FILE_HEADER_LEN, RECORD_HEADER_LEN};
    use crate::store::testing::{assert_matches, put, Model};
    use crate::store::{open, SyncMode};

    /// Three keys; the middle one's record gets a flipped byte.
    fn damaged_directory() -> (tempfile::TempDir, Model, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Model::new();
        let record_len;
        {
            let (store, _) = open(dir.path(), SyncMode::Always).unwrap();
            put(&store, &mut model, "first", b"one");
            let after_first = store.stats().log_bytes;
            put(&store, &mut model, "second", b"two");
            record_len = store.stats().log_bytes - after_first;
            put(&store, &mut model, "third", b"three");
        }
        let log = dir.path().join(LOG_FILE);
        let mut bytes = fs::read(&log).unwrap();
        let second = bytes.len() - 2 * record_len as usize;
        bytes[second + RECORD_HEADER_LEN + 1] ^= 0x20;
        fs::write(&log, &bytes).unwrap();
        model.remove("second");
        (dir, model, bytes)
    }

    #[test]
    fn repair_keeps_every_good_record_and_the_damaged_file() {
        let (dir, model, damaged) = damaged_directory();
        assert!(matches!(
            open(dir.path(), SyncMode::Always),
            Err(OpenError::Corrupt { .. })
        ));
        let report = repair(dir.path(), None).unwrap();
        assert_eq!(report.records_kept, 2);
        assert_eq!(report.dropped.len(), 1);
        let broken = report.broken_copy.unwrap();
        assert_eq!(
            fs::read(broken).unwrap(),
            damaged,
            "the damaged log is kept as it was"
        );
        assert_eq!(
            fs::metadata(dir.path().join(LOG_FILE)).unwrap().len(),
            report.bytes_kept
        );
        assert!(!dir.path().join(REPAIR_FILE).exists());
        let (store, _) = open(dir.path(), SyncMode::Always).unwrap();
        assert_matches(&store, &model);
        assert!(store.get(b"second", &mut Vec::new()).unwrap().is_none());
    }

    #[test]
    fn repairs_in_the_same_second_keep_every_damaged_log() {
        let (dir, _, damaged) = damaged_directory();
        let first = repair(dir.path(), None).unwrap().broken_copy.unwrap();
        // Damage the repaired log again and repair at once.
        let log = dir.path().join(LOG_FILE);
        let mut bytes = fs::read(&log).unwrap();
        bytes[FILE_HEADER_LEN + RECORD_HEADER_LEN + 1] ^= 0x20;
        fs::write(&log, &bytes).unwrap();
        let second = repair(dir.path(), None).unwrap().broken_copy.unwrap();
        assert_ne!(first, second);
        assert_eq!(
            fs::read(first).unwrap(),
            damaged,
            "the first damaged log was overwritten"
        );
        assert_eq!(fs::read(second).unwrap(), bytes);
    }

    #[test]
    fn a_directory_whose_log_vanished_does_not_start_empty() {
        let (dir, _, _) = damaged_directory();
        repair(dir.path(), None).unwrap();
        fs::remove_file(dir.path().join(LOG_FILE)).unwrap();
        let err = open(dir.path(), SyncMode::Always)
            .err()
            .expect("started empty");
        assert!(matches!(err, OpenError::MissingLog { .. }), "{err}");
        assert!(err.to_string().contains("data.log.broken-"), "{err}");
        assert!(
            !dir.path().join(LOG_FILE).exists(),
            "an empty log was created"
        );
    }

    #[test]
    fn a_healthy_log_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Model::new();
        {
            let (store, _) = open(dir.path(), SyncMode::Always).unwrap();
            put(&store, &mut model, "k", b"v");
        }
        let before = fs::read(dir.path().join(LOG_FILE)).unwrap();
        let report = repair(dir.path(), None).unwrap();
        assert!(report.dropped.is_empty() && report.broken_copy.is_none());
        assert_eq!(fs::read(dir.path().join(LOG_FILE)).unwrap(), before);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "only data.log and LOCK"
        );
    }

    #[test]
    fn repair_refuses_to_run_beside_an_open_store() {
        let (dir, _, _) = damaged_directory();
        let (store, _) = {
            repair(dir.path(), None).unwrap();
            open(dir.path(), SyncMode::Always).unwrap()
        };
        assert!(matches!(
            repair(dir.path(), None),
            Err(OpenError::Locked(_))
        ));
        drop(store);
    }
}
