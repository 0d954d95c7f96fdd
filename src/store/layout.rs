//! The data directory's layout: the names of its files, how they are
//! created, and making changes to the directory durable.
//!
//! ```text
//! <dir>/LOCK               held (flock) by the one process using the directory
//! <dir>/data.log           the append-only log (see `record` for its layout)
//! <dir>/data.log.torn-N    a torn tail cut from the log at offset N, kept aside
//! <dir>/data.log.compact   the new log while compaction writes it
//! <dir>/data.hint          index snapshot for a fast start (see `hint`)
//! <dir>/data.hint.tmp      the new hint file while it is written
//! <dir>/data.log.repair    the new log while `lucid check --repair` writes it
//! <dir>/data.log.broken-T  a damaged log set aside by a repair at time T
//! <dir>/data.log.restore   the restored log while `lucid snapshot restore` writes it
//! <dir>/data.log.before-restore-T  the log a forced restore set aside at time T (ms)
//! <dir>/replica.snapshot   a follower's download of its primary's snapshot
//! <dir>/data.log.diverged-E  a follower's log set aside because it held writes
//!                          its primary's epoch E never had (never deleted)
//! <dir>/replication.json   the node's epoch and epoch history (see `replication::state`)
//! <dir>/replication.json.tmp  the new replication.json while it is written
//! ```
//!
//! Every file is created readable and writable by its owner only
//! ([`private_file`]), as records may hold secrets.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Name of the log file inside the data directory.
pub const LOG_FILE: &str = "data.log";
/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the new log while compaction writes it.
pub const COMPACT_FILE: &str = "data.log.compact";
/// Name of the new log while a repair writes it.
pub const REPAIR_FILE: &str = "data.log.repair";
/// Name of the restored log while a restore writes it.
pub const RESTORE_FILE: &str = "data.log.restore";
/// Name of a follower's download of its primary's snapshot.
pub const REPLICA_SNAPSHOT: &str = "replica.snapshot";
/// Name of the hint file in the data directory.
pub const HINT_FILE: &str = "data.hint";
/// Name of a hint file being written.
pub const HINT_TMP: &str = "data.hint.tmp";
/// Name of the node's replication state (its epochs) in the data directory.
pub const REPLICATION_FILE: &str = "replication.json";
/// Name of the replication state while it is written.
pub const REPLICATION_TMP: &str = "replication.json.tmp";

/// What follows the log's name in the name of a torn tail kept aside.
const TORN_TAIL: &str = ".torn-";
/// What follows the log's name in the name of a damaged log set aside.
const BROKEN_LOG: &str = ".broken-";
/// What follows the log's name in the name of a log a restore set aside.
const BEFORE_RESTORE: &str = ".before-restore-";
/// What follows the log's name in the name of a diverged log set aside.
const DIVERGED: &str = ".diverged-";

/// The name (before any `.N` making it unique) of the torn tail cut from
/// the log at `log` at `offset`.
pub fn torn_tail(log: &Path, offset: u64) -> String {
    format!("{}{TORN_TAIL}{offset}", log.display())
}

/// The name (before any `.N` making it unique) of the damaged log at `log`
/// set aside by a repair at `seconds` since the epoch.
pub fn broken_log(log: &Path, seconds: u64) -> String {
    format!("{}{BROKEN_LOG}{seconds}", log.display())
}

/// The name (before any `.N` making it unique) of the log at `log` set
/// aside by a forced restore at `ms` milliseconds since the epoch.
pub fn before_restore(log: &Path, ms: u64) -> String {
    format!("{}{BEFORE_RESTORE}{ms}", log.display())
}

/// The name (before any `.N` making it unique) of the log at `log` set
/// aside by a follower because it diverged from its primary's epoch
/// `epoch`.
pub fn diverged(log: &Path, epoch: &str) -> String {
    format!("{}{DIVERGED}{epoch}", log.display())
}

/// Whether the file `name` of the data directory is a copy of log data set
/// aside (a torn tail, a damaged log, a log replaced by a restore, a
/// diverged log): it
/// keeps the encryption the log had.
pub fn is_set_aside(name: &str) -> bool {
    name.strip_prefix(LOG_FILE).is_some_and(|rest| {
        [TORN_TAIL, BROKEN_LOG, BEFORE_RESTORE, DIVERGED]
            .iter()
            .any(|kind| rest.starts_with(kind))
    })
}

/// Options to create a file of the data directory: readable and writable
/// by its owner only (mode 0600), as its records may hold secrets.
pub fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// fsyncs a directory, making renames and new files in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
