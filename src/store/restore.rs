//! Restoring a snapshot (see [`super::snapshot`]) into a data directory,
//! offline (it takes the directory's lock, so never beside a running node).
//!
//! # Steps
//!
//! 1. **Check the key** against the snapshot's log image (a wrong or
//!    missing key is refused before anything is written).
//! 2. **Copy** the log image to `data.log.restore`, checking the snapshot
//!    whole on the way (every record, its CRC, with the key its
//!    authentication, then the trailer); fsync it. Any failure (a damaged
//!    snapshot, a full disk) removes that file and changes nothing else.
//! 3. **Switch**: the current log, if any, gets a second name,
//!    `data.log.before-restore-T` (a hard link: it is never deleted, and
//!    `data.log` never goes missing), its hint file goes, and the restored
//!    log is renamed over `data.log`; then the directory is fsynced.
//! 4. **Hint**: the restored log is opened once, like a node start does,
//!    and closed, which writes its hint file, so the node starts fast.
//!
//! A crash before step 3's rename leaves the old log in place and a
//! leftover `data.log.restore`, which the next start (or restore) deletes;
//! after it, the restored log. Never a mix of the two.

use std::fs;
use std::io::{self, BufWriter};
use std::path::Path;
use std::sync::Arc;

use super::crypt::Cipher;
use super::directory::{create_private_dir, io_error, lock_dir, open_with};
use super::layout::{before_restore, private_file, sync_dir, HINT_FILE, LOG_FILE, RESTORE_FILE};
use super::record::FILE_HEADER_LEN;
use super::snapshot::{check_key, peek, read_image, SnapshotError, SnapshotInfo};
use super::SyncMode;
use crate::clock::now_ms;

/// What a restore did.
#[derive(Debug)]
pub struct RestoreReport {
    /// What the restored snapshot holds.
    pub info: SnapshotInfo,
    /// Where the log that was there before went, if there was one.
    pub set_aside: Option<String>,
}

/// Restores the snapshot at `snapshot` into the data directory `dir` (see
/// the module documentation), with the store's key `cipher` if the
/// snapshot is encrypted. A directory whose log holds records is refused
/// unless `force`, which sets that log aside.
pub fn restore(
    dir: &Path,
    snapshot: &Path,
    cipher: Option<Arc<Cipher>>,
    force: bool,
) -> Result<RestoreReport, SnapshotError> {
    check_key(&peek(snapshot)?, cipher.as_deref())?;
    create_private_dir(dir).map_err(|err| SnapshotError::Open(io_error("create", dir)(err)))?;
    let lock = lock_dir(dir).map_err(SnapshotError::Open)?;
    let log = dir.join(LOG_FILE);
    let holds_data = match fs::metadata(&log) {
        Ok(meta) => meta.len() > FILE_HEADER_LEN as u64,
        Err(err) if err.kind() == io::ErrorKind::NotFound => false,
        Err(err) => return Err(err.into()),
    };
    if holds_data && !force {
        return Err(SnapshotError::DataPresent(dir.to_path_buf()));
    }
    let restored = dir.join(RESTORE_FILE);
    let copied = copy_image(snapshot, &restored, cipher.as_deref());
    let info = match copied {
        Ok(info) => info,
        Err(err) => {
            let _ = fs::remove_file(&restored);
            return Err(err);
        }
    };
    let set_aside = if log.exists() {
        Some(link_aside(&log, &before_restore(&log, now_ms()))?)
    } else {
        None
    };
    match fs::remove_file(dir.join(HINT_FILE)) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err.into()),
        _ => {}
    }
    fs::rename(&restored, &log)?;
    sync_dir(dir)?;
    drop(lock);
    let (store, _) = open_with(dir, SyncMode::Never, cipher).map_err(SnapshotError::Open)?;
    store.close()?;
    Ok(RestoreReport { info, set_aside })
}

/// Gives the log at `log` a second name, `base` (or that with `.N`: never
/// an existing file), and returns it.
pub(super) fn link_aside(log: &Path, base: &str) -> io::Result<String> {
    for n in 0u32.. {
        let aside = if n == 0 {
            base.to_owned()
        } else {
            format!("{base}.{n}")
        };
        match fs::hard_link(log, &aside) {
            Ok(()) => return Ok(aside),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
    unreachable!("a free name exists")
}

/// Writes the log image of `snapshot`, checked whole, to `to`, synced.
pub(super) fn copy_image(
    snapshot: &Path,
    to: &Path,
    cipher: Option<&Cipher>,
) -> Result<SnapshotInfo, SnapshotError> {
    let file = private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(to)?;
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    let info = read_image(snapshot, cipher, &mut out)?;
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::snapshot::save;
    use crate::store::testing::{assert_matches, delete, put, Model};

    #[test]
    fn a_restored_store_holds_exactly_the_snapshot_and_writes_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_with(&dir.path().join("a"), SyncMode::Never, None).unwrap();
        let mut model = Model::new();
        for n in 0..200 {
            put(
                &store,
                &mut model,
                &format!("k{}", n % 50),
                format!("{n}").as_bytes(),
            );
        }
        delete(&store, &mut model, "k7");
        let path = dir.path().join("snap");
        let (report, _) = save(&path, |out| store.snapshot("a", out)).unwrap();
        put(&store, &mut Model::new(), "after", b"not in it");
        let target = dir.path().join("b");
        let restored = restore(&target, &path, None, false).unwrap();
        assert_eq!(restored.info.keys, 49);
        let (copy, open) = open_with(&target, SyncMode::Never, None).unwrap();
        assert_eq!(open.hint_keys, Some(49), "the restore wrote a hint file");
        assert_matches(&copy, &model);
        let mut next = Model::new();
        put(&copy, &mut next, "new", b"x");
        let version = copy.get(b"new", &mut Vec::new()).unwrap().unwrap().sequence;
        assert!(version > report.info.sequence);
    }

    #[test]
    fn a_directory_with_data_is_set_aside_only_when_forced() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_with(&dir.path().join("a"), SyncMode::Never, None).unwrap();
        put(&store, &mut Model::new(), "x", b"1");
        let path = dir.path().join("snap");
        save(&path, |out| store.snapshot("a", out)).unwrap();
        drop(store);
        let target = dir.path().join("a");
        let refused = restore(&target, &path, None, false);
        assert!(matches!(refused, Err(SnapshotError::DataPresent(_))));
        let forced = restore(&target, &path, None, true).unwrap();
        let aside = forced.set_aside.unwrap();
        assert!(fs::metadata(&aside).unwrap().len() > FILE_HEADER_LEN as u64);
        let key = Arc::new(Cipher::from_key(&[1; 32]));
        assert!(matches!(
            restore(&dir.path().join("c"), &path, Some(key), false),
            Err(SnapshotError::NotEncrypted)
        ));
        assert!(!dir.path().join("c").join(LOG_FILE).exists());
    }
}
