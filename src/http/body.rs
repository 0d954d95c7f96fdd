//! Request bodies: reading one whole within its limit ([`read`]), the 413s
//! for one too large or for one where the endpoint reads none, and telling
//! whether a body came after its request's head. Which endpoint reads
//! which [`BodyKind`], and its limit, is the endpoint's (see `endpoint.rs`).

use std::io::{self, Read};

use lucid_http::Request;

use super::endpoint::BodyKind;
use super::errors::body_unreadable;
use super::headers;
use super::reply::Reply;

/// Request bodies up to this size are read by lucid-http along with the
/// request's head; larger ones, and those whose client waits for `100
/// Continue`, are screened on the connection's thread first (see
/// `http::screen`).
const PREBUFFERED: usize = 1024;

/// Reads the request's `body` whole, of at most `limit` bytes, with
/// `read_into`, which appends what the reader yields to its buffer and
/// returns how many bytes that was. The error is the reply: 408 or 400 for
/// a body that could not be read (see [`body_unreadable`]), 413 for one
/// over `limit`.
pub fn read(
    request: &mut Request,
    body: BodyKind,
    limit: usize,
    read_into: impl FnOnce(&mut dyn Read) -> io::Result<usize>,
) -> Result<(), Reply<'static>> {
    // At most one byte more than allowed: enough to tell a chunked body
    // that is too large without reading all of it.
    let mut reader = request.as_reader().take(limit as u64 + 1);
    match read_into(&mut reader) {
        Err(err) => Err(body_unreadable(&err)),
        Ok(len) if len > limit => Err(too_large(body, limit)),
        Ok(_) => Ok(()),
    }
}

/// The 413 for a `body` over its `limit`.
pub fn too_large(body: BodyKind, limit: usize) -> Reply<'static> {
    let batch = |what: &str| {
        Reply::message(
            413,
            format!(
                "{what} is at most {limit} bytes (twice storage.max_value_bytes, plus 64 KiB)."
            ),
        )
    };
    match body {
        BodyKind::Value => Reply::message(
            413,
            format!(
                "The value is larger than the limit of {limit} bytes (storage.max_value_bytes)."
            ),
        ),
        BodyKind::Patch => Reply::message(413, format!("A PATCH body is at most {limit} bytes.")),
        BodyKind::Batch => batch("A batch body"),
        BodyKind::Import => batch("An import body"),
    }
}

/// The 413 for a request with a body where none is read.
pub fn not_read<'b>() -> Reply<'b> {
    Reply::message(
        413,
        "Only PUT and PATCH /api/kv/{key}, POST /api/batch and POST /api/admin/import read a request body; this request must not carry one over 1 KiB, nor a chunked one.",
    )
}

/// Whether the request came with a body that was not read along with its
/// head (a chunked one included), so that an endpoint reading none refuses
/// it rather than have it read ahead and ignored.
pub fn after_head(request: &Request) -> bool {
    let has = |name: &'static str| headers::first(request, name);
    let expects_continue = || has("Expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    match request.body_length() {
        Some(len) => len > PREBUFFERED || (len > 0 && expects_continue()),
        None => has("Transfer-Encoding").is_some(),
    }
}
