//! `lucid check [--repair]`: verifies the data directory and, if asked,
//! repairs a damaged log.

use std::error::Error;
use std::io;
use std::path::Path;

use super::CommandResult;
use crate::config::Config;
use crate::store::directory::CheckReport;
use crate::store::repair::RepairReport;
use crate::store::{self, hint::Unused, record::FILE_HEADER_LEN, scan::Damage};

/// What a check concludes: `Ok(None)` if the directory is healthy,
/// `Ok(Some(problem))` if a repair is the way out of `problem`, `Err` if the
/// command ends there with that error (a repair is not what it needs).
type Diagnosis = Result<Option<String>, Box<dyn Error>>;

/// Checks the configured data directory, then repairs it if `repair` is set
/// and it is damaged. Fails if damage remains.
pub fn run(config_path: Option<&Path>, repair: bool) -> CommandResult {
    let (config, _) = Config::load(config_path)?;
    let dir = &config.storage.directory;
    let cipher = config.encryption.cipher()?;
    let report = store::check(dir, cipher.as_deref())?;
    print_summary(&report)?;
    print_damaged_keys(&report.damaged_keys)?;
    let Some(problem) = diagnose(&report, repair)? else {
        return Ok(());
    };
    if !repair {
        return Err(problem.into());
    }
    let repaired = store::repair(dir, cipher.as_deref())?;
    print_repair(&report.path, &repaired)?;
    Ok(())
}

/// Prints what the check read: the log's size, records and live data, and
/// the state of the hint file.
fn print_summary(report: &CheckReport) -> io::Result<()> {
    let scanned = report.scan.good_end - FILE_HEADER_LEN as u64;
    say!("checked {}", report.path.display())?;
    say!("  log bytes:   {}", report.log_bytes)?;
    say!("  records:     {}", report.records)?;
    say!(
        "  durable to:  offset {} ({} sync markers)",
        report.scan.durable,
        report.scan.markers
    )?;
    say!("  live keys:   {}", report.live_keys)?;
    say!("  live bytes:  {}", report.live_bytes)?;
    say!(
        "  dead bytes:  {} (overwritten and deleted records, sync markers)",
        scanned - report.live_bytes
    )?;
    match &report.hint {
        Ok(keys) => say!("  hint file:   ok ({keys} keys)"),
        Err(Unused::Missing) => say!("  hint file:   none (written by compaction)"),
        Err(Unused::Rejected(why)) => say!("  hint file:   not usable: {why}"),
    }
}

/// Prints how many keys answer an error and the first ten of them, if any do.
fn print_damaged_keys(damaged_keys: &[String]) -> io::Result<()> {
    if damaged_keys.is_empty() {
        return Ok(());
    }
    let names = damaged_keys.iter().take(10).cloned().collect::<Vec<_>>();
    let more = if damaged_keys.len() > names.len() {
        ", ..."
    } else {
        ""
    };
    say!(
        "  damaged keys: {} ({}{more})",
        damaged_keys.len(),
        names.join(", ")
    )
}

/// Prints the status line and says what is wrong (see [`Diagnosis`]).
fn diagnose(report: &CheckReport, repair: bool) -> Diagnosis {
    let damaged_keys = report.damaged_keys.len();
    match report.scan.damage {
        None if damaged_keys == 0 => {
            say!("  status:      ok")?;
            Ok(None)
        }
        None => {
            say!("  status:      degraded: {damaged_keys} keys lost their value to damage")?;
            Err(format!(
                "{damaged_keys} keys lost their value to damage, found and quarantined by \
                 compaction; the server answers 500 for them until they are written or deleted"
            )
            .into())
        }
        Some(Damage::TornTail {
            offset,
            len,
            next_valid,
        }) => Ok(Some(diagnose_torn_tail(offset, len, next_valid)?)),
        Some(Damage::Corrupt {
            offset,
            next_valid,
            durable,
        }) => {
            let resume = next_valid.map_or("no valid record follows".to_owned(), |at| {
                format!("valid records resume at {at}")
            });
            say!("  status:      DAMAGED at offset {offset} ({resume})")?;
            if report.hint_covers_damage && !repair {
                return Err(served_from_hint(offset, damaged_keys).into());
            }
            Ok(Some(format!(
                "the log is damaged at offset {offset}, in data an fsync made durable (up to \
                 offset {durable}); run `lucid check --repair` to rebuild it from its good \
                 records (the damaged file is kept)"
            )))
        }
    }
}

/// Prints the status line of a log whose unsynced tail is damaged, and
/// returns the problem: the server cuts the tail away when it starts.
fn diagnose_torn_tail(offset: u64, len: u64, next_valid: Option<u64>) -> io::Result<String> {
    let Some(next_valid) = next_valid else {
        say!("  status:      torn tail: {len} bytes at offset {offset}")?;
        return Ok(format!(
            "the log ends with {len} bytes of an interrupted write at offset {offset}; \
             the server cuts them away (keeping a copy) when it starts"
        ));
    };
    say!(
        "  status:      unsynced tail: {len} bytes at offset {offset}, damaged before \
         any fsync (unsynced records from offset {next_valid} on)"
    )?;
    Ok(format!(
        "a power cut lost unsynced writes: the log is damaged at offset {offset}, which \
         no fsync had made durable; the server cuts the {len} bytes from there \
         (keeping a copy) when it starts, so the log keeps a prefix of its history"
    ))
}

/// The failure of a check finding durable damage that the hint file covers:
/// the server starts anyway, and compaction is the usual way out.
fn served_from_hint(offset: u64, damaged_keys: usize) -> String {
    format!(
        "the log is damaged at offset {offset}, in data an fsync made durable; the \
         hint file covers it, so the server starts from the hint, serves every other \
         key and answers 500 for the {damaged_keys} damaged keys until they are \
         written or deleted. Compact (`lucid compact`, or POST /api/admin/compact) \
         to drop the damage and keep those keys answering errors; `lucid check \
         --repair` would instead bring back older values of them, if the log has any"
    )
}

/// Prints what a repair of the log at `path` kept, dropped and set aside.
fn print_repair(path: &Path, repaired: &RepairReport) -> io::Result<()> {
    say!("repaired {}", path.display())?;
    say!("  records kept: {}", repaired.records_kept)?;
    say!("  bytes kept:   {}", repaired.bytes_kept)?;
    for (start, end) in &repaired.dropped {
        say!(
            "  dropped:      bytes {start}..{end} ({} bytes)",
            end - start
        )?;
    }
    if let Some(broken) = &repaired.broken_copy {
        say!("  damaged log kept as {}", broken.display())?;
    }
    Ok(())
}
