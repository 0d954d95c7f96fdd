//! `lucid export`: streams a running node's keys (`GET /api/admin/export`)
//! to stdout as JSON Lines, without holding them in memory.

use std::io::{self, Read, Write};
use std::path::Path;

use super::{remote, CommandResult};
use crate::cli::ExportArgs;
use crate::http::route::percent_encode;

/// Downloads the export of the keys under `--prefix` from the node at
/// `--url` (default: the configured address) to stdout. A stdout closed
/// early ends it quietly (a broken pipe); an export the node cut short is
/// an error, after what arrived was written.
pub fn run(config_path: Option<&Path>, args: ExportArgs) -> CommandResult {
    let base = remote::base_url(config_path, args.url.as_deref())?;
    let url = format!(
        "{base}/api/admin/export?prefix={}",
        percent_encode(args.prefix.as_deref().unwrap_or(""))
    );
    let mut response = remote::get_ok(&url, remote::token(args.token))?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut body = response.body_mut().as_reader();
    // A failed read and a failed write are told apart: only the latter is
    // stdout's (a broken pipe, ended on quietly).
    let mut buf = vec![0; 64 * 1024];
    loop {
        let read = body
            .read(&mut buf)
            .map_err(|err| format!("the export from {url} was cut short: {err}"))?;
        if read == 0 {
            break;
        }
        out.write_all(&buf[..read])?;
    }
    out.flush()?;
    Ok(())
}
