//! `lucid import FILE`: sends a JSON Lines file (as `lucid export` writes
//! it) to a running node's `POST /api/admin/import`, in requests of at most
//! [`MAX_IMPORT_LINES`] lines and about 1 MiB each (a longer
//! line goes alone), so neither side holds the whole file. Each request is
//! applied all or nothing; a refused one stops the import, and the message
//! names the file's line and how many keys earlier requests imported.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use super::{remote, CommandResult};
use crate::cli::ImportArgs;
use crate::http::MAX_IMPORT_LINES;

/// Bytes of lines gathered into one request (a node accepts twice
/// `storage.max_value_bytes` and more).
const REQUEST_BYTES: usize = 1024 * 1024;

/// What the node answered to the requests so far.
#[derive(Default)]
struct Tally {
    imported: u64,
    skipped_expired: u64,
}

/// Imports `args.file` into the node at `--url` (default: the configured
/// address) and prints how many keys it imported.
pub fn run(config_path: Option<&Path>, args: ImportArgs) -> CommandResult {
    let base = remote::base_url(config_path, args.url.as_deref())?;
    let url = format!("{base}/api/admin/import");
    let token = remote::token(args.token);
    let path = &args.file;
    let file = File::open(path).map_err(|err| format!("cannot open {}: {err}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut tally = Tally::default();
    let mut request = Vec::with_capacity(REQUEST_BYTES);
    // The file's line number of the request's first line, and its lines.
    let (mut first_line, mut lines) = (1, 0);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        let full =
            lines == MAX_IMPORT_LINES || (lines > 0 && request.len() + line.len() > REQUEST_BYTES);
        if read == 0 || full {
            send(
                &url,
                token.as_deref(),
                &request,
                first_line,
                &mut tally,
                path,
            )?;
            first_line += lines;
            request.clear();
            lines = 0;
        }
        if read == 0 {
            break;
        }
        request.extend_from_slice(&line);
        if !line.ends_with(b"\n") {
            request.push(b'\n');
        }
        lines += 1;
    }
    say!(
        "imported {} keys from {} into {base} ({} skipped: already expired)",
        tally.imported,
        path.display(),
        tally.skipped_expired
    )?;
    Ok(())
}

/// Sends one request of lines, the first of which is line `first_line` of
/// the file at `path`, and adds what the node imported to `tally`.
fn send(
    url: &str,
    token: Option<&str>,
    lines: &[u8],
    first_line: usize,
    tally: &mut Tally,
    path: &Path,
) -> Result<(), String> {
    if lines.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let answer = remote::post(url, token, lines)?;
    if answer.status == 200 {
        let number = |field: &str| answer.body[field].as_u64().unwrap_or(0);
        tally.imported += number("imported");
        tally.skipped_expired += number("skipped_expired");
        return Ok(());
    }
    let before = format!(
        "{} keys from the lines before it were imported",
        tally.imported
    );
    match answer.body["line"].as_u64() {
        Some(line) => {
            let in_file = first_line as u64 + line - 1;
            let message = answer.body["message"].as_str().unwrap_or_default();
            let why = message
                .strip_prefix(&format!("Line {line}: "))
                .unwrap_or(message);
            Err(format!(
                "line {in_file} of {}: {why} ({} {before}; the import stopped there)",
                path.display(),
                answer.status
            ))
        }
        None => Err(format!(
            "{url} answered {} to the request starting at line {first_line} of {}; {before}, \
             nothing from that request",
            answer.message(),
            path.display()
        )),
    }
}
