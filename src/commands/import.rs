//! `lucid import FILE`: sends a JSON Lines file (as `lucid export` writes
//! it) to a running node's `POST /api/admin/import`, in requests of at most
//! [`MAX_IMPORT_LINES`] lines and about 1 MiB each (a longer
//! line goes alone), so neither side holds the whole file. Each request is
//! applied all or nothing.
//!
//! Up to `IN_FLIGHT` (3) requests are out at once, each on a connection of
//! its own, so the node decodes one while another waits for its fsync.
//! Their answers are taken in file order. Once a request is refused no
//! more are sent; those already sent are waited for, and the message names
//! the file's line, how many keys the requests before it imported (every
//! one of them was applied), and how many the later requests already sent
//! imported too (at most `IN_FLIGHT - 1` requests, each whole). Importing
//! the file again from the refused line is safe: an import only puts.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::thread;

use super::remote::{self, Answer};
use super::CommandResult;
use crate::cli::ImportArgs;
use crate::http::MAX_IMPORT_LINES;
use crate::locks::lock;

/// Bytes of lines gathered into one request (a node accepts twice
/// `storage.max_value_bytes` and more).
const REQUEST_BYTES: usize = 1024 * 1024;

/// Requests sent at once at most.
const IN_FLIGHT: usize = 3;

/// A request of lines, and where they are in the file.
struct Request {
    /// Its place among the file's requests, from 0.
    index: usize,
    /// The file's line number of its first line.
    first_line: usize,
    lines: Vec<u8>,
}

/// A request sent, and the node's answer (or why there is none).
struct Sent {
    request: Request,
    answer: Result<Answer, String>,
}

/// Why the import stopped at a request.
enum Refusal {
    /// The node refused a line of it.
    Line {
        in_file: u64,
        status: u16,
        why: String,
    },
    /// The node refused the request as a whole.
    Request { first_line: usize, message: String },
    /// The node could not be asked, or its answer not read.
    Unanswered { first_line: usize, why: String },
}

/// The node's answers, taken in file order.
#[derive(Default)]
struct Tally {
    /// Keys imported by the requests before the refused one (all of them,
    /// if none was refused).
    imported: u64,
    skipped_expired: u64,
    /// The first request refused, in file order.
    refused: Option<Refusal>,
    /// Keys imported by requests after the refused one, sent before its
    /// answer came.
    imported_after: u64,
    /// A request was refused (its answer may still wait for earlier ones):
    /// send no more.
    stopping: bool,
    /// The index of the next answer to take.
    next: usize,
    /// Answers that came before an earlier request's.
    early: BTreeMap<usize, Sent>,
}

/// Imports `args.file` into the node at `--url` (default: the configured
/// address) and prints how many keys it imported.
pub fn run(config_path: Option<&Path>, args: ImportArgs) -> CommandResult {
    let base = remote::base_url(config_path, args.url.as_deref())?;
    let url = format!("{base}/api/admin/import");
    let token = remote::token(args.token);
    let path = &args.file;
    let file = File::open(path).map_err(|err| format!("cannot open {}: {err}", path.display()))?;
    let (requests, queue) = mpsc::channel();
    let queue = Mutex::new(queue);
    let (answered, answers) = mpsc::channel();
    let (read, tally) = thread::scope(|scope| {
        for _ in 0..IN_FLIGHT {
            let (url, token, queue, answered) = (&url, token.as_deref(), &queue, answered.clone());
            scope.spawn(move || send_all(url, token, queue, &answered));
        }
        drop(answered);
        let mut pipeline = Pipeline {
            requests,
            answers: &answers,
            in_flight: 0,
            sent: 0,
            spare: Vec::new(),
            tally: Tally::default(),
        };
        let read = split(BufReader::new(file), |first_line, lines| {
            pipeline.send(first_line, lines)
        });
        (read, pipeline.finish())
    });
    if let Some(refusal) = &tally.refused {
        return Err(tally.describe(refusal, &url, path).into());
    }
    read.map_err(|err| {
        format!(
            "cannot read {}: {err} ({} keys from the lines before were imported)",
            path.display(),
            tally.imported
        )
    })?;
    say!(
        "imported {} keys from {} into {base} ({} skipped: already expired)",
        tally.imported,
        path.display(),
        tally.skipped_expired
    )?;
    Ok(())
}

/// Reads `file` a line at a time and hands `send` requests of lines, with
/// the file's line number of their first line, until the file ends or
/// `send` says to stop (a request was refused).
fn split(
    mut file: impl BufRead,
    mut send: impl FnMut(usize, &mut Vec<u8>) -> bool,
) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(REQUEST_BYTES);
    // The file's line number of the request's first line, and its lines.
    let (mut first_line, mut lines) = (1, 0);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = file.read_until(b'\n', &mut line)?;
        let full =
            lines == MAX_IMPORT_LINES || (lines > 0 && request.len() + line.len() > REQUEST_BYTES);
        if read == 0 || full {
            if !send(first_line, &mut request) {
                return Ok(());
            }
            first_line += lines;
            request.clear();
            lines = 0;
        }
        if read == 0 {
            return Ok(());
        }
        request.extend_from_slice(&line);
        if !line.ends_with(b"\n") {
            request.push(b'\n');
        }
        lines += 1;
    }
}

/// Sends the requests `queue` hands out to `url` on a connection of its
/// own, and each answer to `answered`, until the queue closes.
fn send_all(
    url: &str,
    token: Option<&str>,
    queue: &Mutex<Receiver<Request>>,
    answered: &Sender<Sent>,
) {
    let agent = remote::agent();
    loop {
        let next = lock(queue).recv();
        let Ok(request) = next else { return };
        let answer = remote::post_with(&agent, url, token, &request.lines);
        if answered.send(Sent { request, answer }).is_err() {
            return;
        }
    }
}

/// The requests out, at most [`IN_FLIGHT`], and the answers so far.
struct Pipeline<'a> {
    requests: Sender<Request>,
    answers: &'a Receiver<Sent>,
    in_flight: usize,
    /// Requests sent so far.
    sent: usize,
    /// Buffers of answered requests, for the next ones.
    spare: Vec<Vec<u8>>,
    tally: Tally,
}

impl Pipeline<'_> {
    /// Sends `lines` (taking them, leaving an empty buffer), first waiting
    /// for an answer if [`IN_FLIGHT`] requests are out; false once a
    /// request was refused: send no more.
    fn send(&mut self, first_line: usize, lines: &mut Vec<u8>) -> bool {
        if lines.iter().all(u8::is_ascii_whitespace) {
            return !self.tally.stopping;
        }
        if self.in_flight == IN_FLIGHT {
            self.take_answer();
        }
        if self.tally.stopping {
            return false;
        }
        let spare = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(REQUEST_BYTES));
        let request = Request {
            index: self.sent,
            first_line,
            lines: std::mem::replace(lines, spare),
        };
        if self.requests.send(request).is_err() {
            // No sender is left (one panicked): the scope reports it.
            self.tally.stopping = true;
            return false;
        }
        self.sent += 1;
        self.in_flight += 1;
        true
    }

    /// Waits for one answer and takes it; false if none can come (a
    /// sender panicked: the scope reports it).
    fn take_answer(&mut self) -> bool {
        let Ok(mut sent) = self.answers.recv() else {
            self.tally.stopping = true;
            return false;
        };
        self.in_flight -= 1;
        self.spare.push(std::mem::take(&mut sent.request.lines));
        self.tally.take(sent);
        true
    }

    /// Sends no more, waits for the requests still out and returns the
    /// answers.
    fn finish(mut self) -> Tally {
        while self.in_flight > 0 && self.take_answer() {}
        self.tally
    }
}

impl Tally {
    /// Takes the answer to a request, and any that waited for it, in file
    /// order.
    fn take(&mut self, sent: Sent) {
        if !matches!(&sent.answer, Ok(answer) if answer.status == 200) {
            self.stopping = true;
        }
        self.early.insert(sent.request.index, sent);
        while let Some(sent) = self.early.remove(&self.next) {
            self.next += 1;
            self.count(sent);
        }
    }

    /// Counts one answer, the next in file order.
    fn count(&mut self, sent: Sent) {
        let first_line = sent.request.first_line;
        let answer = match sent.answer {
            Ok(answer) => answer,
            Err(why) => {
                if self.refused.is_none() {
                    self.refused = Some(Refusal::Unanswered { first_line, why });
                }
                return;
            }
        };
        let number = |field: &str| answer.body[field].as_u64().unwrap_or(0);
        if answer.status == 200 {
            if self.refused.is_none() {
                self.imported += number("imported");
                self.skipped_expired += number("skipped_expired");
            } else {
                self.imported_after += number("imported");
            }
            return;
        }
        if self.refused.is_some() {
            return;
        }
        self.refused = Some(match answer.body["line"].as_u64() {
            Some(line) => {
                let message = answer.body["message"].as_str().unwrap_or_default();
                let why = message
                    .strip_prefix(&format!("Line {line}: "))
                    .unwrap_or(message);
                Refusal::Line {
                    in_file: first_line as u64 + line - 1,
                    status: answer.status,
                    why: why.to_string(),
                }
            }
            None => Refusal::Request {
                first_line,
                message: answer.message(),
            },
        });
    }

    /// The error that ends an import stopped by `refusal`, for the file
    /// at `path` sent to `url`.
    fn describe(&self, refusal: &Refusal, url: &str, path: &Path) -> String {
        let mut before = format!(
            "{} keys from the lines before it were imported",
            self.imported
        );
        if self.imported_after > 0 {
            before += &format!(
                ", and {} from later lines sent before it was refused",
                self.imported_after
            );
        }
        let path = path.display();
        match refusal {
            Refusal::Line {
                in_file,
                status,
                why,
            } => format!(
                "line {in_file} of {path}: {why} ({status} {before}; the import stopped there)"
            ),
            Refusal::Request {
                first_line,
                message,
            } => format!(
                "{url} answered {message} to the request starting at line {first_line} of \
                 {path}; {before}, nothing from that request"
            ),
            Refusal::Unanswered { first_line, why } => {
                format!("{why} (the request starting at line {first_line} of {path}); {before}")
            }
        }
    }
}
