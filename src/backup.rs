//! Scheduled backups (`backup:` in the config): a background thread that
//! writes a snapshot of the store (see [`crate::store::snapshot`]) into
//! `backup.directory` every `backup.interval`, and deletes the oldest
//! beyond `backup.keep`.
//!
//! Each backup is `lucid-<milliseconds since the epoch>.snapshot`, written
//! the crash-safe way ([`snapshot::save`]: written aside as
//! `….snapshot.partial`, synced, verified, renamed, the directory synced),
//! so a file with the final name is always whole; only such files count
//! towards `keep`. A failure (the stick unplugged, the share full) is
//! logged and counted in [`BackupStatus`], shown by `/metrics` and
//! `/health`; the node goes on, and the next backup is tried on schedule.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crate::clock::now_ms;
use crate::config;
use crate::locks::lock;
use crate::store::snapshot::{self, SnapshotReport};
use crate::store::Store;

/// What the names of backups start with.
const PREFIX: &str = "lucid-";
/// What the names of (whole) backups end with.
const SUFFIX: &str = ".snapshot";

/// How scheduled backups went, for `/metrics` and `/health`.
#[derive(Debug, Default)]
pub struct BackupStatus {
    state: Mutex<Outcomes>,
}

/// The figures behind [`BackupStatus`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcomes {
    /// When the last good backup was made, in milliseconds since the epoch.
    pub last_success_ms: Option<u64>,
    /// Its size in bytes.
    pub last_success_bytes: u64,
    /// Backups that failed since the node started.
    pub failures: u64,
    /// Why the last failed one failed, unless one succeeded since.
    pub last_failure: Option<String>,
}

impl BackupStatus {
    /// The figures now.
    pub fn outcomes(&self) -> Outcomes {
        lock(&self.state).clone()
    }

    fn succeeded(&self, bytes: u64) {
        let mut state = lock(&self.state);
        state.last_success_ms = Some(now_ms());
        state.last_success_bytes = bytes;
        state.last_failure = None;
    }

    fn failed(&self, why: String) {
        let mut state = lock(&self.state);
        state.failures += 1;
        state.last_failure = Some(why);
    }
}

/// Writes a backup of `store`, made on node `node`, into `dir` every
/// `backup.interval`, keeping `backup.keep`, until the store is dropped;
/// returns the status the backups report to. `None` if backups are off.
pub fn spawn_backups(
    store: &Arc<Store>,
    backup: &config::Backup,
    node: String,
) -> Option<Arc<BackupStatus>> {
    let interval = backup.interval?;
    log::info!(
        "backups: a snapshot into {} every {} s, keeping {}",
        backup.directory.display(),
        interval.as_secs(),
        backup.keep
    );
    let status = Arc::new(BackupStatus::default());
    let schedule = Schedule {
        store: Arc::downgrade(store),
        dir: backup.directory.clone(),
        keep: backup.keep,
        interval,
        node,
        status: Arc::clone(&status),
    };
    let spawned = thread::Builder::new()
        .name("lucid-backup".into())
        .spawn(move || schedule.run());
    if let Err(err) = spawned {
        log::error!("cannot start the backup thread: {err}");
    }
    Some(status)
}

/// The backup thread's work.
struct Schedule {
    store: Weak<Store>,
    dir: PathBuf,
    keep: usize,
    interval: Duration,
    node: String,
    status: Arc<BackupStatus>,
}

impl Schedule {
    fn run(self) {
        remove_partials(&self.dir);
        loop {
            thread::sleep(self.interval);
            let Some(store) = self.store.upgrade() else {
                return;
            };
            let started = Instant::now();
            match back_up(&store, &self.dir, &self.node, self.keep) {
                Ok((path, report)) => {
                    log::info!(
                        "backup: wrote {} ({} keys, {} bytes, up to version {}) in {:.1} ms",
                        path.display(),
                        report.info.keys,
                        report.info.bytes,
                        report.info.sequence,
                        started.elapsed().as_secs_f64() * 1000.0
                    );
                    self.status.succeeded(report.info.bytes);
                }
                Err(why) => {
                    log::error!("backup into {} failed: {why}", self.dir.display());
                    self.status.failed(why);
                }
            }
        }
    }
}

/// Writes one backup of `store` into `dir`, then deletes the oldest
/// backups there beyond `keep`. Returns the new file and what it holds.
pub fn back_up(
    store: &Store,
    dir: &Path,
    node: &str,
    keep: usize,
) -> Result<(PathBuf, SnapshotReport), String> {
    if !dir.is_dir() {
        return Err(format!(
            "{} is not a directory (is the disk mounted?)",
            dir.display()
        ));
    }
    let path = dir.join(format!("{PREFIX}{:016}{SUFFIX}", now_ms()));
    let (report, _) =
        snapshot::save(&path, |out| store.snapshot(node, out)).map_err(|err| err.to_string())?;
    if let Err(err) = rotate(dir, keep) {
        log::warn!(
            "backup: could not delete old backups in {}: {err}",
            dir.display()
        );
    }
    Ok((path, report))
}

/// Deletes the oldest backups in `dir` beyond `keep`.
fn rotate(dir: &Path, keep: usize) -> io::Result<()> {
    let mut backups: Vec<String> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(PREFIX) && name.ends_with(SUFFIX))
        .collect();
    backups.sort();
    let excess = backups.len().saturating_sub(keep);
    for name in &backups[..excess] {
        fs::remove_file(dir.join(name))?;
        log::info!("backup: deleted {name}, beyond backup.keep ({keep})");
    }
    Ok(())
}

/// Deletes the partial backups an interrupted run left in `dir`.
fn remove_partials(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for name in entries.filter_map(|entry| entry.ok()?.file_name().into_string().ok()) {
        if name.starts_with(PREFIX) && name.ends_with(&format!("{SUFFIX}.partial")) {
            match fs::remove_file(dir.join(&name)) {
                Ok(()) => log::warn!("backup: removed {name}, left by an interrupted backup"),
                Err(err) => log::warn!("backup: cannot remove {name}: {err}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{open, SyncMode};

    #[test]
    fn backups_rotate_and_a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(&dir.path().join("data"), SyncMode::Never).unwrap();
        let backups = dir.path().join("backups");
        fs::create_dir(&backups).unwrap();
        fs::write(backups.join("lucid-0.snapshot.partial"), b"half").unwrap();
        remove_partials(&backups);
        for _ in 0..4 {
            back_up(&store, &backups, "pi", 2).unwrap();
            thread::sleep(Duration::from_millis(2));
        }
        let left = fs::read_dir(&backups).unwrap().count();
        assert_eq!(left, 2);
        let missing = back_up(&store, &dir.path().join("unplugged"), "pi", 2);
        assert!(missing.unwrap_err().contains("mounted"));
    }
}
