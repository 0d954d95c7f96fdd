//! Opening the data directory: taking its lock, and turning it into a
//! running [`Store`] (recovery) or a report ([`check`]). Its files are
//! listed in [`super::layout`].

use std::fmt;
use std::fs::{self, File, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::crypt::Cipher;
use super::engine::{Recovered, Store, SyncMode};
use super::file::{DiskFile, LogFile};
use super::hint;
use super::index::{Attrs, Index};
use super::layout::{
    private_file, sync_dir, torn_tail, COMPACT_FILE, HINT_FILE, HINT_TMP, LOCK_FILE, LOG_FILE,
    REPAIR_FILE, REPLICATION_TMP, REPLICA_SNAPSHOT, RESTORE_FILE,
};
use super::record::{FileHeader, FileHeaderError, RecordKind, FILE_HEADER_LEN};
use super::scan::{damaged_ranges, scan, Damage, ScanStart, ScanSummary};

/// Why a data directory could not be opened or checked.
#[derive(Debug)]
pub enum OpenError {
    /// Another process holds the directory's lock.
    Locked(PathBuf),
    /// The log does not start with a valid Lucid file header.
    BadHeader(PathBuf, FileHeaderError),
    /// The log is missing but files that only exist beside one are there.
    MissingLog {
        /// The data directory.
        dir: PathBuf,
        /// Those files.
        found: Vec<String>,
    },
    /// The log's encryption does not match the configured key.
    Key(PathBuf, &'static str),
    /// A damaged record in the part of the log an fsync made durable.
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// Offset of the damaged record.
        offset: u64,
        /// The offset before which the log is known durable.
        durable: u64,
    },
    /// The filesystem refused an operation.
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Locked(dir) => write!(
                f,
                "data directory {} is in use by another Lucid process (it holds {}); \
                 stop that process, or set storage.directory to another directory",
                dir.display(),
                dir.join(LOCK_FILE).display()
            ),
            Self::BadHeader(path, err) => write!(
                f,
                "{}: {err}; is storage.directory pointing at the right directory?",
                path.display()
            ),
            Self::Key(path, why) => write!(f, "{}: {why}", path.display()),
            Self::MissingLog { dir, found } => write!(
                f,
                "{} has no {LOG_FILE} but holds {}, so its data was lost or moved; the node will \
                 not start empty there. Restore {LOG_FILE}, or remove those files to start afresh",
                dir.display(),
                found.join(", ")
            ),
            Self::Corrupt {
                path,
                offset,
                durable,
            } => write!(
                f,
                "{} is damaged at offset {offset}, in data an fsync made durable (up to offset \
                 {durable}), so the node will not start (cutting the log there would lose \
                 data). Run `lucid check` for a report, then `lucid check --repair` to rebuild \
                 the log from its good records (the damaged file is kept)",
                path.display()
            ),
            Self::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for OpenError {}

/// What opening a directory found and did.
#[derive(Debug)]
pub struct OpenReport {
    /// Live keys after recovery.
    pub keys: usize,
    /// Records read from the log.
    pub records: u64,
    /// Keys loaded from the hint file, if it was used.
    pub hint_keys: Option<usize>,
    /// Time spent opening and recovering.
    pub elapsed: Duration,
}

/// Opens (creating if needed) the data directory `dir`, takes its lock and
/// recovers the store from its log, applying the recovery rule of
/// [`scan`](super::scan).
pub fn open(dir: &Path, sync: SyncMode) -> Result<(Arc<Store>, OpenReport), OpenError> {
    open_with(dir, sync, None)
}

/// [`open`] for a store encrypted with `cipher` (or plain, with `None`).
/// The log's key check value must match: a wrong key, a missing one, or a
/// key for a plain log is refused with a message saying which.
pub fn open_with(
    dir: &Path,
    sync: SyncMode,
    cipher: Option<Arc<Cipher>>,
) -> Result<(Arc<Store>, OpenReport), OpenError> {
    let started = Instant::now();
    create_private_dir(dir).map_err(io_error("create data directory", dir))?;
    let lock = lock_dir(dir)?;
    remove_leftovers(dir)?;
    let path = dir.join(LOG_FILE);
    if !path.exists() {
        refuse_to_start_empty_beside_data(dir)?;
    }
    let (file, created) = open_log(&path)?;
    let key_check = cipher.as_ref().map_or(0, |c| c.check_value());
    if created {
        initialise_log(&file, dir, &path, key_check)?;
    }
    let header = read_header(&file, &path)?;
    check_key(&header, key_check, &path)?;
    let log_len = file.size().map_err(io_error("read", &path))?;
    let source = (&file as &dyn LogFile, header.file_id, cipher.as_deref());
    let Replayed {
        index,
        summary,
        hint_keys,
        unverified_end,
    } = replay_log(dir, &path, source, header, log_len)?;
    match summary.damage {
        None => {}
        Some(Damage::TornTail {
            offset,
            len,
            next_valid,
        }) => cut_torn_tail(&file, &path, offset, len, next_valid)?,
        Some(Damage::Corrupt {
            offset, durable, ..
        }) => {
            return Err(OpenError::Corrupt {
                path,
                offset,
                durable,
            })
        }
    }
    let report = OpenReport {
        keys: index.len(),
        records: summary.records,
        hint_keys,
        elapsed: started.elapsed(),
    };
    let recovered = Recovered {
        index,
        header,
        end: summary.good_end,
        next_sequence: header
            .base_sequence
            .max(summary.max_sequence)
            .checked_add(1)
            .ok_or_else(|| OpenError::Io {
                action: "continue the sequence numbers of",
                path: path.clone(),
                source: io::Error::other("the log's sequence numbers are exhausted"),
            })?,
        marked_end: summary.marked_end,
        dir: Some((dir.to_path_buf(), lock)),
        cipher,
    };
    report_damaged_keys(&recovered.index, &path);
    let store = Store::new(Arc::new(file), recovered, sync);
    if let Some(covered_end) = unverified_end {
        store.verify_in_background(covered_end);
    }
    Ok((store, report))
}

/// Opens the log image at `path`, complete and synced (a snapshot's,
/// beside the data directory's log), and recovers its index by a full
/// scan. Any damage is refused: the image was checked when written.
pub(super) fn recover_image(
    path: &Path,
    cipher: Option<Arc<Cipher>>,
) -> Result<(Arc<dyn LogFile>, Recovered), OpenError> {
    let (file, _) = open_log(path)?;
    let header = read_header(&file, path)?;
    check_key(
        &header,
        cipher.as_ref().map_or(0, |c| c.check_value()),
        path,
    )?;
    let len = file.size().map_err(io_error("read", path))?;
    let mut index = Index::default();
    let source = (&file as &dyn LogFile, header.file_id, cipher.as_deref());
    let start = ScanStart {
        durable: len,
        ..ScanStart::BEGINNING
    };
    let summary = replay(source, path, &mut index, start)?;
    if summary.damage.is_some() {
        return Err(OpenError::Corrupt {
            path: path.to_path_buf(),
            offset: summary.good_end,
            durable: len,
        });
    }
    let recovered = Recovered {
        index,
        header,
        end: summary.good_end,
        next_sequence: header.base_sequence.max(summary.max_sequence) + 1,
        marked_end: summary.good_end,
        dir: None,
        cipher,
    };
    Ok((Arc::new(file), recovered))
}

/// The index recovered from a log, and how.
struct Replayed {
    /// The live keys.
    index: Index,
    /// What the scan found.
    summary: ScanSummary,
    /// Keys loaded from the hint file, if it was used.
    hint_keys: Option<usize>,
    /// The end of what the hint used covers: records there were not read.
    unverified_end: Option<u64>,
}

/// Recovers the index of the log at `path` (`source`, `log_len` bytes long
/// with file header `header`): from the hint file and the log after it if
/// the hint is valid and no damage follows it, else by a full scan. A hint
/// that cannot be trusted is removed.
fn replay_log(
    dir: &Path,
    path: &Path,
    source: LogSource<'_>,
    header: FileHeader,
    log_len: u64,
) -> Result<Replayed, OpenError> {
    let cipher = source.2;
    let (mut index, mut summary, mut hint_keys) = (Index::default(), None, None);
    let mut unverified_end = None;
    let mut full_scan = ScanStart::BEGINNING;
    // A hint followed by damage goes, but only once the full scan has not
    // refused to start: it is the evidence that what it covers is durable,
    // and the next start (or `lucid check`) must judge the damage the same.
    let mut drop_hint = false;
    match hint::load(dir, header, log_len, cipher) {
        Ok(hint) => {
            let start = ScanStart {
                offset: hint.coverage.end,
                max_sequence: hint.coverage.max_sequence,
                durable: hint.coverage.end,
            };
            // What the hint covers was fsynced before it was written: damage
            // there is damage to durable data, even if the hint goes.
            full_scan.durable = hint.coverage.end;
            hint_keys = Some(hint.index.len());
            index = hint.index;
            let after_hint = replay(source, path, &mut index, start)?;
            if after_hint.damage.is_some() {
                // The full scan below is the authority on damage.
                log::warn!(
                    "the log after the hint file's coverage is damaged; reading the whole log"
                );
                (index, hint_keys) = (Index::default(), None);
                drop_hint = true;
            } else {
                summary = Some(after_hint);
                unverified_end = Some(start.offset);
            }
        }
        Err(hint::Unused::Missing) if log_len <= FILE_HEADER_LEN as u64 => {}
        Err(hint::Unused::Missing) => {
            log::warn!("no hint file in {}: reading the whole log", dir.display());
        }
        Err(hint::Unused::Rejected(why)) => {
            log::warn!(
                "ignoring {}: {why}; reading the whole log",
                dir.join(HINT_FILE).display()
            );
            // Derived data: a hint not trusted now must not be trusted later
            // either (a log that grows back past its coverage, say).
            remove_hint(dir)?;
        }
    }
    let summary = match summary {
        Some(summary) => summary,
        None => replay(source, path, &mut index, full_scan)?,
    };
    if drop_hint && !matches!(summary.damage, Some(Damage::Corrupt { .. })) {
        remove_hint(dir)?;
    }
    Ok(Replayed {
        index,
        summary,
        hint_keys,
        unverified_end,
    })
}

/// Says in an ERROR log which keys of `index` (recovered from the log at
/// `path`) answer an error because their record was damaged.
fn report_damaged_keys(index: &Index, path: &Path) {
    let damaged = index.damaged_keys();
    if damaged > 0 {
        let names: Vec<_> = index
            .damaged()
            .take(10)
            .map(String::from_utf8_lossy)
            .collect();
        log::error!(
            "{damaged} keys lost their value to damage in {} and answer an error until written \
             or deleted: {}{}",
            path.display(),
            names.join(", "),
            if damaged > names.len() { ", ..." } else { "" }
        );
    }
}

/// What [`check`] found in a data directory.
#[derive(Debug)]
pub struct CheckReport {
    /// The log file checked.
    pub path: PathBuf,
    /// Size of the log in bytes.
    pub log_bytes: u64,
    /// Good records read.
    pub records: u64,
    /// Live keys.
    pub live_keys: usize,
    /// Bytes of live records.
    pub live_bytes: u64,
    /// What the scan found after the last good record.
    pub scan: ScanSummary,
    /// The hint file: `Ok(keys)` if it is valid and agrees with the log.
    pub hint: Result<usize, hint::Unused>,
    /// Keys that answer an error when the server runs: quarantined by
    /// compaction, or (when the hint file covers damage, so the server
    /// starts from it) pointed by the hint at a damaged record.
    pub damaged_keys: Vec<String>,
    /// Whether the damage found lies within what a valid hint file covers:
    /// the server then starts (from the hint), verifies the log in the
    /// background and reports the damage; compaction drops it.
    pub hint_covers_damage: bool,
}

/// Verifies every record of the directory's log without changing anything.
/// Takes the directory lock, so it refuses to run beside a server.
pub fn check(dir: &Path, cipher: Option<&Cipher>) -> Result<CheckReport, OpenError> {
    let path = dir.join(LOG_FILE);
    if !path.exists() {
        return Err(OpenError::Io {
            action: "check",
            path,
            source: io::Error::new(io::ErrorKind::NotFound, "no Lucid log in this directory"),
        });
    }
    let _lock = lock_dir(dir)?;
    let file = DiskFile::new(File::open(&path).map_err(io_error("open", &path))?);
    let header = read_header(&file, &path)?;
    check_key(&header, cipher.map_or(0, Cipher::check_value), &path)?;
    let mut index = Index::default();
    let source = (&file as &dyn LogFile, header.file_id, cipher);
    let log_bytes = file.size().map_err(io_error("read", &path))?;
    let start = full_scan_start(dir, header, log_bytes, cipher);
    let summary = replay(source, &path, &mut index, start)?;
    let damage_before = match summary.damage {
        Some(Damage::Corrupt { offset, .. }) => Some(offset),
        _ => None,
    };
    let hinted = check_hint(dir, header, source, &path, &index, damage_before)?;
    let (hint, damaged) = match hinted {
        Ok((keys, Some(damaged))) => (Ok(keys), damaged),
        Ok((keys, None)) => (Ok(keys), index.damaged().map(<[u8]>::to_vec).collect()),
        Err(unused) => (Err(unused), index.damaged().map(<[u8]>::to_vec).collect()),
    };
    Ok(CheckReport {
        log_bytes,
        path,
        records: summary.records,
        live_keys: index.len(),
        live_bytes: index.live_bytes(),
        scan: summary,
        hint_covers_damage: damage_before.is_some() && hint.is_ok(),
        hint,
        damaged_keys: damaged
            .iter()
            .map(|key| String::from_utf8_lossy(key).into_owned())
            .collect(),
    })
}

/// A valid hint's key count, and the keys it points at damaged records if
/// the log is damaged where it covers (see [`check_hint`]).
type HintChecked = (usize, Option<Vec<Vec<u8>>>);

/// Checks the hint file against the log: valid, and the index it gives
/// (with the log after it replayed) equals the one a full scan gives.
///
/// The hint is trusted, by the server as here, for where each key's latest
/// record is, and for the log before its covered end having been durable;
/// not for those records being intact. So when the full scan stopped at
/// damage (at `damage_before`) that the hint covers, the two indexes cannot
/// be compared; the hint then says which keys the damage took, as the
/// server's check after starting from it would find: they are returned too.
fn check_hint(
    dir: &Path,
    header: FileHeader,
    source: LogSource<'_>,
    path: &Path,
    full: &Index,
    damage_before: Option<u64>,
) -> Result<Result<HintChecked, hint::Unused>, OpenError> {
    let log_len = source.0.size().map_err(io_error("read", path))?;
    let hinted = match hint::load(dir, header, log_len, source.2) {
        Ok(hinted) => hinted,
        Err(unused) => return Ok(Err(unused)),
    };
    let keys = hinted.index.len();
    let mut index = hinted.index;
    let start = ScanStart {
        offset: hinted.coverage.end,
        max_sequence: hinted.coverage.max_sequence,
        durable: hinted.coverage.end,
    };
    replay(source, path, &mut index, start)?;
    if damage_before.is_some_and(|offset| offset < hinted.coverage.end) {
        let (file, file_id, cipher) = source;
        let ranges = damaged_ranges(file, file_id, cipher, hinted.coverage.end)
            .map_err(io_error("read", path))?;
        let in_damage = |offset: u64| {
            ranges
                .iter()
                .any(|&(start, end)| (start..end).contains(&offset))
        };
        let damaged = index
            .entries()
            .filter(|&(key, location)| index.attrs(key).damaged || in_damage(location.offset))
            .map(|(key, _)| key.to_vec())
            .collect();
        return Ok(Ok((keys, Some(damaged))));
    }
    if !index.same_as(full) {
        return Ok(Err(hint::Unused::Rejected(
            "it disagrees with the log (the server ignores it only if it is stale; remove it)"
                .into(),
        )));
    }
    Ok(Ok((keys, None)))
}

/// Where a full scan of the log in `dir` starts, as open's would: at the
/// first record, with what a valid hint file covers known durable.
pub(super) fn full_scan_start(
    dir: &Path,
    header: FileHeader,
    log_len: u64,
    cipher: Option<&Cipher>,
) -> ScanStart {
    let durable = hint::load(dir, header, log_len, cipher)
        .map_or(FILE_HEADER_LEN as u64, |hint| hint.coverage.end);
    ScanStart {
        durable,
        ..ScanStart::BEGINNING
    }
}

/// A log to read: the file, its id, and its encryption.
pub(super) type LogSource<'a> = (&'a dyn LogFile, u32, Option<&'a Cipher>);

/// Applies every good record of the log from `start` on to `index`.
fn replay(
    source: LogSource<'_>,
    path: &Path,
    index: &mut Index,
    start: ScanStart,
) -> Result<ScanSummary, OpenError> {
    let (file, file_id, cipher) = source;
    scan(
        file,
        file_id,
        cipher,
        start,
        |record, stored| match record.header.kind {
            RecordKind::Put => {
                index.insert(record.key, stored, Attrs::of(&record.header));
            }
            RecordKind::Delete => index.remove(record.key),
            RecordKind::Batch | RecordKind::Marker => {
                unreachable!("scan visits a frame's members, never a frame or a sync marker")
            }
        },
    )
    .map_err(io_error("read", path))
}

/// Creates the data directory, and its missing parents, open to its owner
/// only (mode 0700); an existing directory keeps its mode.
pub(super) fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Takes the directory's lock, or reports who holds it.
pub(super) fn lock_dir(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join(LOCK_FILE);
    let lock = private_file()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error("create lock file", &path))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => Err(OpenError::Locked(dir.to_path_buf())),
        Err(TryLockError::Error(source)) => Err(OpenError::Io {
            action: "lock",
            path,
            source,
        }),
    }
}

/// A directory without a log but with files that only exist beside one (a
/// hint, damaged or torn logs) lost its log: starting empty there would
/// silently serve nothing, so the node refuses.
fn refuse_to_start_empty_beside_data(dir: &Path) -> Result<(), OpenError> {
    let entries = fs::read_dir(dir).map_err(io_error("list", dir))?;
    let mut found: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name == HINT_FILE || name.starts_with(&format!("{LOG_FILE}.")))
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    found.sort();
    Err(OpenError::MissingLog {
        dir: dir.to_path_buf(),
        found,
    })
}

/// Deletes the hint file, if any, durably (a distrusted hint must not come
/// back after a power cut).
fn remove_hint(dir: &Path) -> Result<(), OpenError> {
    let path = dir.join(HINT_FILE);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir).map_err(io_error("sync", dir)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(OpenError::Io {
            action: "remove",
            path,
            source,
        }),
    }
}

/// Deletes what a compaction, repair, restore or hint write interrupted by
/// a crash left behind: each was a new file not yet renamed into place, and the old
/// one, still in place, holds everything.
fn remove_leftovers(dir: &Path) -> Result<(), OpenError> {
    for name in [
        COMPACT_FILE,
        REPAIR_FILE,
        RESTORE_FILE,
        HINT_TMP,
        REPLICA_SNAPSHOT,
        REPLICATION_TMP,
    ] {
        let leftover = dir.join(name);
        match fs::remove_file(&leftover) {
            Ok(()) => log::warn!(
                "removed {}, left by an interrupted run (the data it was built from is intact)",
                leftover.display()
            ),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(OpenError::Io {
                    action: "remove",
                    path: leftover,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Opens the log, reporting whether it is new (empty).
fn open_log(path: &Path) -> Result<(DiskFile, bool), OpenError> {
    let file = private_file()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_error("open", path))?;
    let len = file.metadata().map_err(io_error("read", path))?.len();
    // A log shorter than its header can only come from a crash while it was
    // being created: no record can be in it.
    if len > 0 && len < FILE_HEADER_LEN as u64 {
        log::warn!(
            "{}: {len}-byte log left by an interrupted creation; starting it afresh",
            path.display()
        );
    }
    Ok((DiskFile::new(file), len < FILE_HEADER_LEN as u64))
}

fn initialise_log(
    file: &DiskFile,
    dir: &Path,
    path: &Path,
    key_check: u32,
) -> Result<(), OpenError> {
    if file.size().map_err(io_error("read", path))? > 0 {
        file.truncate(0).map_err(io_error("initialise", path))?;
    }
    file.append(0, &FileHeader::new(0, key_check).encode())
        .and_then(|()| file.sync())
        .map_err(io_error("initialise", path))?;
    sync_dir(dir).map_err(io_error("sync", dir))
}

/// Refuses a log whose key check value is not `expected` (0: plain).
pub(super) fn check_key(header: &FileHeader, expected: u32, path: &Path) -> Result<(), OpenError> {
    let why = match (header.key_check, expected) {
        (found, wanted) if found == wanted => return Ok(()),
        (0, _) => "the log is not encrypted but encryption is enabled; turn encryption.enabled off, or encrypt the data with `lucid compact --new-key-file FILE` while it is off, then turn it on with that key file",
        (_, 0) => "the log is encrypted; set encryption.enabled: true and encryption.key_file to its key file",
        _ => "the log was encrypted with another key; encryption.key_file names the wrong key file",
    };
    Err(OpenError::Key(path.to_path_buf(), why))
}

/// Reads and checks the log's file header.
pub(super) fn read_header(file: &dyn LogFile, path: &Path) -> Result<FileHeader, OpenError> {
    let mut header = [0u8; FILE_HEADER_LEN];
    file.read_at(&mut header, 0)
        .map_err(io_error("read", path))?;
    FileHeader::decode(&header).map_err(|err| OpenError::BadHeader(path.to_path_buf(), err))
}

/// Saves the torn tail beside the log, then cuts the log to `offset`.
/// `next_valid`: the first valid record after the damage, if any.
fn cut_torn_tail(
    file: &DiskFile,
    path: &Path,
    offset: u64,
    len: u64,
    next_valid: Option<u64>,
) -> Result<(), OpenError> {
    let (aside, mut copy) = create_unique(&torn_tail(path, offset))?;
    let mut chunk = vec![0u8; len.min(1 << 20) as usize];
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(chunk.len() as u64) as usize;
        file.read_at(&mut chunk[..n], at)
            .map_err(io_error("read", path))?;
        copy.write_all(&chunk[..n])
            .map_err(io_error("write", &aside))?;
        at += n as u64;
    }
    copy.sync_all().map_err(io_error("write", &aside))?;
    file.truncate(offset).map_err(io_error("truncate", path))?;
    match next_valid {
        None => log::warn!(
            "{}: truncated a torn tail of {len} bytes at offset {offset} (an interrupted write; \
             no acknowledged write is in it); the bytes are saved in {}",
            path.display(),
            aside.display()
        ),
        Some(next_valid) => log::warn!(
            "{}: a power cut lost unsynced writes: the log was damaged at offset {offset}, \
             which no fsync had made durable; truncated the {len} bytes from there (with the \
             unsynced records written after the damage, from offset {next_valid}, so the log \
             keeps a prefix of its history; with sync: always no acknowledged write is in \
             them); the bytes are saved in {}",
            path.display(),
            aside.display()
        ),
    }
    Ok(())
}

/// Creates `base`, or `base.1`, `base.2`, ... if it exists: never overwrites.
pub(super) fn create_unique(base: &str) -> Result<(PathBuf, File), OpenError> {
    for n in 0u32.. {
        let path = PathBuf::from(if n == 0 {
            base.to_owned()
        } else {
            format!("{base}.{n}")
        });
        match private_file().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(OpenError::Io {
                    action: "create",
                    path,
                    source,
                })
            }
        }
    }
    unreachable!("a free name exists")
}

/// Wraps an I/O error with what was being done to which path.
pub(super) fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OpenError {
    let path = path.to_path_buf();
    move |source| OpenError::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{assert_matches, put, Model};

    /// A store in `dir` (`sync: never`, encrypted with `cipher` if given)
    /// that wrote `a` and `b`, synced them (a sync marker), then wrote `c`
    /// and `d` and died; returns the model of everything written, the
    /// offset the marker names and the offsets of `c` and `d`.
    fn synced_then_died(dir: &Path, cipher: Option<&Arc<Cipher>>) -> (Model, u64, u64, u64) {
        let (store, _) = open_with(dir, SyncMode::Never, cipher.cloned()).unwrap();
        let mut model = Model::new();
        put(&store, &mut model, "a", b"synced");
        put(&store, &mut model, "b", b"synced too");
        let synced = store.stats().log_bytes;
        store.sync_appended().unwrap();
        let c = store.stats().log_bytes;
        put(&store, &mut model, "c", b"never synced");
        let d = store.stats().log_bytes;
        put(&store, &mut model, "d", b"never synced, survived");
        (model, synced, c, d)
    }

    fn reopen_with(dir: &Path, cipher: Option<&Arc<Cipher>>) -> Result<Arc<Store>, OpenError> {
        open_with(dir, SyncMode::Never, cipher.cloned()).map(|(store, _)| store)
    }

    #[test]
    fn an_unsynced_record_lost_before_a_surviving_one_is_cut_as_a_torn_tail() {
        let key = Arc::new(Cipher::from_key(&[9; 32]));
        for cipher in [None, Some(&key)] {
            let dir = tempfile::tempdir().unwrap();
            let (mut model, _, c, d) = synced_then_died(dir.path(), cipher);
            // Out-of-order writeback at a power cut: c's page lost (zeros),
            // d's kept.
            let log = dir.path().join(LOG_FILE);
            let mut bytes = fs::read(&log).unwrap();
            bytes[c as usize..d as usize].fill(0);
            fs::write(&log, &bytes).unwrap();
            let store = reopen_with(dir.path(), cipher).unwrap();
            model.remove("c");
            model.remove("d"); // intact, but after the hole: cut too
            assert_matches(&store, &model);
            assert!(store.get(b"d", &mut Vec::new()).unwrap().is_none());
            assert_eq!(fs::metadata(&log).unwrap().len(), c);
            let aside = format!("{}.torn-{c}", log.display());
            assert_eq!(fs::read(aside).unwrap(), &bytes[c as usize..]);
            drop(store);
            // The cut is durable: the next start finds nothing to cut.
            let store = reopen_with(dir.path(), cipher).unwrap();
            assert_matches(&store, &model);
        }
    }

    #[test]
    fn damage_before_what_a_marker_names_durable_refuses_to_start() {
        let key = Arc::new(Cipher::from_key(&[9; 32]));
        for cipher in [None, Some(&key)] {
            let dir = tempfile::tempdir().unwrap();
            let (_, synced, _, _) = synced_then_died(dir.path(), cipher);
            let log = dir.path().join(LOG_FILE);
            let mut bytes = fs::read(&log).unwrap();
            // Inside `b`, which the marker names durable.
            bytes[synced as usize - 5] ^= 0x04;
            fs::write(&log, &bytes).unwrap();
            let err = reopen_with(dir.path(), cipher).err().expect("opened");
            assert!(
                matches!(err, OpenError::Corrupt { durable, .. } if durable == synced),
                "{err}"
            );
            assert!(err.to_string().contains("lucid check"), "{err}");
            assert_eq!(fs::read(&log).unwrap(), bytes, "a refused start wrote");
        }
    }

    /// A store (`sync: never`) in `dir` holding keys `a`, `b` and `c`; the
    /// model of them and the offset of `b`'s record.
    fn store_of_three(dir: &Path) -> (Arc<Store>, Model, u64) {
        let mut model = Model::new();
        let (store, _) = open(dir, SyncMode::Never).unwrap();
        for key in ["a", "b", "c"] {
            put(&store, &mut model, key, b"value");
        }
        let second = store.list(b"b", None, 1).entries[0].1.offset;
        (store, model, second)
    }

    #[test]
    fn what_a_clean_shutdown_wrote_is_durable_even_without_the_hint() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, second) = store_of_three(dir.path());
        store.close().unwrap();
        drop(store);
        fs::remove_file(dir.path().join(HINT_FILE)).unwrap();
        let log = dir.path().join(LOG_FILE);
        let mut bytes = fs::read(&log).unwrap();
        bytes[second as usize + 45] ^= 0x01;
        fs::write(&log, &bytes).unwrap();
        assert!(matches!(
            open(dir.path(), SyncMode::Never),
            Err(OpenError::Corrupt { offset, .. }) if offset == second
        ));
    }

    #[test]
    fn a_start_refused_for_damage_under_the_hint_stays_refused() {
        // A compacted log holds no sync marker: the hint written after the
        // switch is the only evidence that its records are durable.
        let dir = tempfile::tempdir().unwrap();
        let (store, mut model, _) = store_of_three(dir.path());
        store.compact().unwrap();
        let covered = store.stats().log_bytes;
        let second = store.list(b"b", None, 1).entries[0].1.offset;
        // An unsynced write, then the process dies.
        put(&store, &mut model, "d", b"never synced");
        drop(store);
        let log = dir.path().join(LOG_FILE);
        let mut bytes = fs::read(&log).unwrap();
        // The disk damages `b`, which the hint covers, and the power cut
        // tears `d`.
        bytes[second as usize + 45] ^= 0x01;
        bytes.truncate(bytes.len() - 3);
        fs::write(&log, &bytes).unwrap();
        for start in 0..2 {
            let err = open(dir.path(), SyncMode::Never)
                .err()
                .unwrap_or_else(|| panic!("start {start} opened, cutting durable data"));
            assert!(
                matches!(err, OpenError::Corrupt { offset, durable, .. }
                    if offset == second && durable == covered),
                "start {start}: {err}"
            );
            assert_eq!(fs::read(&log).unwrap(), bytes, "a refused start wrote");
        }
        // `lucid check` judges it as the refused starts did.
        let report = check(dir.path(), None).unwrap();
        assert!(
            matches!(report.scan.damage, Some(Damage::Corrupt { offset, .. }) if offset == second),
            "{:?}",
            report.scan.damage
        );
    }

    #[test]
    fn torn_tails_at_the_same_offset_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Model::new();
        let log = dir.path().join(LOG_FILE);
        let (store, _) = open(dir.path(), SyncMode::Always).unwrap();
        put(&store, &mut model, "kept", b"value");
        drop(store);
        let good_len = fs::metadata(&log).unwrap().len();
        for garbage in [&b"first torn write"[..], b"second one"] {
            let mut bytes = fs::read(&log).unwrap();
            bytes.extend_from_slice(garbage);
            fs::write(&log, bytes).unwrap();
            let (store, _) = open(dir.path(), SyncMode::Always).unwrap();
            assert_matches(&store, &model);
        }
        let aside = format!("{}.torn-{good_len}", log.display());
        assert_eq!(fs::read(&aside).unwrap(), b"first torn write");
        assert_eq!(fs::read(format!("{aside}.1")).unwrap(), b"second one");
    }
}
