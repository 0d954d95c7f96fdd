//! `lucid check [--repair]`: verifies the data directory and, if asked,
//! repairs a damaged log.

use std::path::Path;

use super::CommandResult;
use crate::config::Config;
use crate::store::{self, hint::Unused, record::FILE_HEADER_LEN, scan::Damage};

/// Checks the configured data directory, then repairs it if `repair` is set
/// and it is damaged. Fails if damage remains.
pub fn run(config_path: Option<&Path>, repair: bool) -> CommandResult {
    let (config, _) = Config::load(config_path)?;
    let dir = &config.storage.directory;
    let cipher = config.encryption.cipher()?;
    let report = store::check(dir, cipher.as_deref())?;
    let scanned = report.scan.good_end - FILE_HEADER_LEN as u64;
    println!("checked {}", report.path.display());
    println!("  log bytes:   {}", report.log_bytes);
    println!("  records:     {}", report.records);
    println!("  live keys:   {}", report.live_keys);
    println!("  live bytes:  {}", report.live_bytes);
    println!(
        "  dead bytes:  {} (overwritten and deleted records)",
        scanned - report.live_bytes
    );
    match &report.hint {
        Ok(keys) => println!("  hint file:   ok ({keys} keys)"),
        Err(Unused::Missing) => println!("  hint file:   none (written by compaction)"),
        Err(Unused::Rejected(why)) => println!("  hint file:   not usable: {why}"),
    }
    let problem = match report.scan.damage {
        None => {
            println!("  status:      ok");
            return Ok(());
        }
        Some(Damage::TornTail { offset, len }) => {
            println!("  status:      torn tail: {len} bytes at offset {offset}");
            format!(
                "the log ends with {len} bytes of an interrupted write at offset {offset}; \
                 the server cuts them away (keeping a copy) when it starts"
            )
        }
        Some(Damage::Corrupt { offset, next_valid }) => {
            println!(
                "  status:      DAMAGED at offset {offset} (valid records resume at {next_valid})"
            );
            format!(
                "the log is damaged at offset {offset} and valid records follow; \
                 run `lucid check --repair` to rebuild it from its good records \
                 (the damaged file is kept)"
            )
        }
    };
    if !repair {
        return Err(problem.into());
    }
    let repaired = store::repair(dir, cipher.as_deref())?;
    println!("repaired {}", report.path.display());
    println!("  records kept: {}", repaired.records_kept);
    println!("  bytes kept:   {}", repaired.bytes_kept);
    for (start, end) in &repaired.dropped {
        println!(
            "  dropped:      bytes {start}..{end} ({} bytes)",
            end - start
        );
    }
    if let Some(broken) = &repaired.broken_copy {
        println!("  damaged log kept as {}", broken.display());
    }
    Ok(())
}
