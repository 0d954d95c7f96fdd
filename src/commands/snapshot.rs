//! `lucid snapshot save|verify|restore`: a running node's snapshot
//! (`GET /api/admin/snapshot`, see [`crate::store::snapshot`]) downloaded
//! to a file, a file checked whole, and a file restored into the configured
//! data directory with the node stopped.

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::{remote, CommandResult};
use crate::cli::{SnapshotRestoreArgs, SnapshotSaveArgs, SnapshotVerifyArgs};
use crate::config::Config;
use crate::store::crypt::Cipher;
use crate::store::restore::restore as restore_into;
use crate::store::snapshot::{self, SnapshotError, SnapshotInfo};

/// Downloads a snapshot from the node at `--url` (default: the configured
/// address) to the file, written aside, synced, verified and renamed; says
/// what it holds.
pub fn save(config_path: Option<&Path>, args: SnapshotSaveArgs) -> CommandResult {
    let started = Instant::now();
    let base = remote::base_url(config_path, args.url.as_deref())?;
    let url = format!("{base}/api/admin/snapshot");
    let mut response = remote::get_ok(&url, remote::token(args.token))?;
    let mut body = response.body_mut().as_reader();
    let file = &args.file;
    let ((), info) = snapshot::save(file, |out| {
        // A failed read and a failed write are told apart: the node's
        // fault, or this disk's.
        let mut buf = vec![0; 256 * 1024];
        loop {
            let read = body.read(&mut buf).map_err(|err| {
                SnapshotError::Io(io::Error::other(format!(
                    "the snapshot from {url} was cut short: {err}"
                )))
            })?;
            if read == 0 {
                return Ok(());
            }
            out.write_all(&buf[..read]).map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("cannot write {}: {err}", file.display()),
                )
            })?;
        }
    })
    .map_err(|err| format!("{}: {err}; nothing was saved", file.display()))?;
    say!(
        "saved {}: {}, in {:.1} s",
        file.display(),
        describe(&info),
        started.elapsed().as_secs_f64()
    )?;
    if info.encrypted {
        say!("  encrypted: its records stay sealed under the store's key; restoring it needs that key file")?;
    }
    Ok(())
}

/// Checks a snapshot file whole; an error names what is wrong.
pub fn verify(config_path: Option<&Path>, args: SnapshotVerifyArgs) -> CommandResult {
    let file = &args.file;
    let cipher = match &args.key_file {
        Some(key_file) => Some(std::sync::Arc::new(Cipher::load(key_file)?)),
        None => Config::load(config_path)?.0.encryption.cipher()?,
    };
    let info = snapshot::verify(file, cipher.as_deref())
        .map_err(|err| format!("{}: {err}", file.display()))?;
    say!("{}: ok, {}", file.display(), describe(&info))?;
    if info.encrypted {
        if cipher.is_some() {
            say!("  encrypted: every record opened with the key")?;
        } else {
            say!(
                "  encrypted: checksums checked, but not the records' encryption: give the \
                 store's key file (--key-file) to check that too"
            )?;
        }
    }
    Ok(())
}

/// Restores a snapshot file into the configured data directory.
pub fn restore(config_path: Option<&Path>, args: SnapshotRestoreArgs) -> CommandResult {
    let started = Instant::now();
    let (config, _) = Config::load(config_path)?;
    let dir = &config.storage.directory;
    let cipher = config.encryption.cipher()?;
    let report = restore_into(dir, &args.file, cipher, args.force).map_err(|err| {
        format!(
            "cannot restore {} into {}: {err}; nothing was changed",
            args.file.display(),
            dir.display()
        )
    })?;
    say!(
        "restored {} into {}: {}, in {:.1} s",
        args.file.display(),
        dir.display(),
        describe(&report.info),
        started.elapsed().as_secs_f64()
    )?;
    if let Some(aside) = &report.set_aside {
        say!("  the log that was there is kept as {aside}")?;
    }
    if report.info.encrypted {
        say!("  encrypted: the node needs the same key file (encryption.key_file) to start")?;
    }
    say!(
        "  start the node to serve it; its next writes get versions above {}",
        report.info.sequence
    )?;
    Ok(())
}

/// What a snapshot holds, for a person.
fn describe(info: &SnapshotInfo) -> String {
    let made = UNIX_EPOCH + Duration::from_millis(info.created_at_ms);
    format!(
        "{} keys, {} bytes, up to version {}, made on {} at {}",
        info.keys,
        info.bytes,
        info.sequence,
        info.node,
        httpdate::fmt_http_date(made)
    )
}
