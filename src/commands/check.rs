//! `lucid check`: verifies the data directory's log and prints a summary.

use std::path::Path;

use super::CommandResult;
use crate::config::Config;
use crate::store::{self, record::FILE_HEADER_LEN, scan::Damage};

/// Checks the configured data directory; fails if anything is damaged.
pub fn run(config_path: Option<&Path>) -> CommandResult {
    let (config, _) = Config::load(config_path)?;
    let report = store::check(&config.storage.directory)?;
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
    match report.scan.damage {
        None => {
            println!("  status:      ok");
            Ok(())
        }
        Some(Damage::TornTail { offset, len }) => {
            println!("  status:      torn tail: {len} bytes at offset {offset}");
            Err(format!(
                "the log ends with {len} bytes of an interrupted write at offset {offset}; \
                 the server cuts them away (keeping a copy) when it starts"
            )
            .into())
        }
        Some(Damage::Corrupt { offset, next_valid }) => {
            println!(
                "  status:      DAMAGED at offset {offset} (valid records resume at {next_valid})"
            );
            Err(format!(
                "the log is damaged at offset {offset} and valid records follow; \
                 copy the data directory somewhere safe before any repair"
            )
            .into())
        }
    }
}
