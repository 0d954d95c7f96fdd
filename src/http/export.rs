//! `GET /api/admin/export?prefix=P`: every live key under a prefix as JSON
//! Lines, in key order, one object per key:
//!
//! ```text
//! {"key":"a","value":"text","content_type":"text/plain","version":7,"expires_at":null,"locked":false}
//! {"key":"b","value_base64":"AAEC","content_type":"application/octet-stream","version":9,"expires_at":1767225600000,"locked":true}
//! ```
//!
//! `value` holds a UTF-8 value, `value_base64` any other; `expires_at` is
//! in milliseconds since the epoch. `POST /api/admin/import` (see
//! `import.rs`) reads the same lines back.
//!
//! The export streams: a request slot only checks the request and hands the
//! connection to a thread of its own (at most [`MAX_EXPORTS`] at once, see
//! `streams.rs`), which walks the index a page at a time, reads each key's
//! record (its value and metadata from that one record) into one reused
//! buffer and writes the page out, so neither a million keys nor a slow
//! client costs memory or a request slot. Each line is consistent; the export as
//! a whole is not a point-in-time snapshot (keys written meanwhile may or
//! may not be in it).
//!
//! The body is chunked (`Connection: close`, see
//! `Request::into_chunked_stream`):
//! an export that fails midway (a damaged record, a write timeout) ends
//! without the last chunk, so a client sees it is incomplete instead of
//! taking it for the whole.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use lucid_http::{HTTPVersion, Header, Request, Response};
use serde::Serialize;

use super::query::Params;
use super::reply::{server_header, Reply};
use super::stream_threads::{self, Place, Streams};
use super::{Buffers, Context};
use crate::store::Store;

/// Exports served at once at most: each reads the disk as fast as it can
/// and holds a buffer as large as the largest value.
pub const MAX_EXPORTS: usize = 2;

/// Keys read from the index at a time.
const PAGE: usize = 1000;

/// Bytes sent per chunk (a larger value goes in a chunk of its own).
const CHUNK: usize = 64 * 1024;

/// A client that accepts no data for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Stack of an export's thread: it reads records and formats JSON.
const STACK_SIZE: usize = 256 * 1024;

/// One line of an export.
#[derive(Serialize)]
struct Line<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<&'a str>,
    content_type: &'a str,
    version: u64,
    expires_at: Option<u64>,
    locked: bool,
}

/// An accepted export, waiting for its thread.
pub struct Export {
    store: Arc<Store>,
    prefix: String,
    _place: Place,
}

/// Checks an export request (a `GET`) and takes a place under the cap, or
/// says why not (400, 505 for HTTP/1.0, which has no chunked bodies, 503
/// beyond the cap).
pub fn prepare(ctx: &Context, request: &Request) -> Result<Export, Reply<'static>> {
    let params = Params::parse(request.url(), &["prefix"], ctx.max_key_bytes)?;
    let place = chunked_stream_place(ctx, request, "An export")?;
    Ok(Export {
        store: Arc::clone(&ctx.store),
        prefix: params.get("prefix").unwrap_or_default().to_string(),
        _place: place,
    })
}

/// A place under the cap of exports and snapshots for a stream `what`
/// (e.g. "An export") sent with chunked encoding, or the reply refusing it:
/// 505 for HTTP/1.0, which has no chunked bodies, 503 beyond the cap.
pub fn chunked_stream_place(
    ctx: &Context,
    request: &Request,
    what: &str,
) -> Result<Place, Reply<'static>> {
    chunked_place(request, &ctx.exports, what, "exports and snapshots")
}

/// Checks that `request` can take a chunked body (HTTP/1.1) and takes a
/// place under the cap of `streams` (`kind` names them in the 503).
pub fn chunked_place(
    request: &Request,
    streams: &Arc<Streams>,
    what: &str,
    kind: &str,
) -> Result<Place, Reply<'static>> {
    if request.http_version() < &HTTPVersion(1, 1) {
        return Err(Reply::message(
            505,
            format!("{what} is streamed with chunked encoding: ask for it with HTTP/1.1."),
        ));
    }
    streams.admit().ok_or_else(|| {
        Reply::message(
            503,
            format!(
                "The node already serves {} {kind}, its limit. Retry later.",
                streams.max()
            ),
        )
    })
}

impl Export {
    /// Hands the connection to a new thread that streams the export, and
    /// returns the status it answers with (200; 503 if no thread can be
    /// started).
    pub fn start(self, request: Request) -> u16 {
        stream_threads::hand_over(request, "lucid-export", STACK_SIZE, 200, move |request| {
            self.serve(request)
        })
    }

    fn serve(self, request: Request) {
        let written = send_chunked(request, "application/jsonl", &[], |out| {
            write_lines(&self.store, self.prefix.as_bytes(), out)
        });
        match written {
            Ok(count) => log::debug!("exported {count} keys"),
            // Dropped without its last chunk: the client sees it incomplete.
            Err(err) => log::warn!("export cut short: {err}"),
        }
    }
}

/// Answers `request` with 200 and a chunked body of `content_type` that
/// `write` fills, then the last chunk; a client that accepts no data for
/// [`WRITE_TIMEOUT`] is disconnected. A body cut short (an error of
/// `write`, or of the client) ends without its last chunk, so the client
/// sees it incomplete.
pub(super) fn send_chunked<T>(
    request: Request,
    content_type: &str,
    extra: &[(&str, &str)],
    write: impl FnOnce(&mut Chunked<Box<dyn Write + Send>>) -> io::Result<T>,
) -> io::Result<T> {
    if let Some(socket) = request.socket() {
        if let Err(err) = socket.set_write_timeout(Some(WRITE_TIMEOUT)) {
            log::debug!("cannot set a stream's write timeout: {err}");
        }
    }
    let fixed = [
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
    ];
    let headers = fixed.iter().chain(extra).map(|(name, value)| {
        Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
    });
    let headers = [server_header()].into_iter().chain(headers).collect();
    let response = Response::new(200.into(), headers, io::empty(), None, None);
    let mut out = Chunked::new(request.into_chunked_stream(response)?);
    let written = write(&mut out)?;
    out.finish()?;
    Ok(written)
}

/// Writes a line for every live key under `prefix` to `out`, a page at a
/// time; returns how many.
fn write_lines(store: &Store, prefix: &[u8], out: &mut impl Write) -> io::Result<u64> {
    let mut record = Vec::new();
    let mut encoded = String::new();
    let mut after: Option<Vec<u8>> = None;
    let mut count = 0;
    loop {
        let page = store.list(prefix, after.as_deref(), PAGE);
        for (key, _) in &page.entries {
            // Gone or expired since it was listed: left out.
            let Some(stored) = store
                .get(key, &mut record)
                .map_err(|err| io::Error::other(err.to_string()))?
            else {
                continue;
            };
            let text = std::str::from_utf8(stored.value).ok();
            if text.is_none() {
                encoded.clear();
                base64::engine::general_purpose::STANDARD.encode_string(stored.value, &mut encoded);
            }
            let line = Line {
                // Keys are UTF-8, checked when written.
                key: &String::from_utf8_lossy(key),
                value: text,
                value_base64: text.is_none().then_some(encoded.as_str()),
                content_type: &String::from_utf8_lossy(stored.content_type),
                version: stored.sequence,
                expires_at: (stored.expires_at_ms != 0).then_some(stored.expires_at_ms),
                locked: stored.locked,
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            count += 1;
            Buffers::shrink(&mut record);
        }
        out.flush()?;
        if !page.more {
            return Ok(count);
        }
        after = page.entries.last().map(|(key, _)| key.clone());
    }
}

/// A writer of a chunked body: what is written goes out in chunks of about
/// [`CHUNK`] bytes; [`finish`](Self::finish) writes the last chunk.
pub(super) struct Chunked<W: Write> {
    out: W,
    pending: Vec<u8>,
}

impl<W: Write> Chunked<W> {
    fn new(out: W) -> Self {
        Self {
            out,
            pending: Vec::with_capacity(CHUNK),
        }
    }

    /// Sends `data` as one chunk (none if it is empty: that one ends the body).
    fn chunk(out: &mut W, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        write!(out, "{:X}\r\n", data.len())?;
        out.write_all(data)?;
        out.write_all(b"\r\n")
    }

    /// Sends what is pending, then the last chunk.
    fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        self.out.write_all(b"0\r\n\r\n")?;
        self.out.flush()
    }
}

impl<W: Write> Write for Chunked<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.pending.len() + data.len() > CHUNK {
            Self::chunk(&mut self.out, &self.pending)?;
            self.pending.clear();
        }
        if data.len() > CHUNK {
            Self::chunk(&mut self.out, data)?;
        } else {
            self.pending.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Self::chunk(&mut self.out, &self.pending)?;
        self.pending.clear();
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_body_ends_only_when_finished() {
        let mut out = Vec::new();
        let mut chunked = Chunked::new(&mut out);
        chunked.write_all(b"hello ").unwrap();
        chunked.write_all(b"world").unwrap();
        chunked.flush().unwrap();
        chunked.flush().unwrap();
        drop(chunked);
        assert_eq!(out, b"B\r\nhello world\r\n");
        let mut chunked = Chunked::new(&mut out);
        chunked.write_all(&[b'x'; CHUNK + 1]).unwrap();
        chunked.finish().unwrap();
        assert!(out.starts_with(b"B\r\nhello world\r\n10001\r\nxx"));
        assert!(out.ends_with(b"x\r\n0\r\n\r\n"));
    }
}
