//! Handlers of `/api/kv/{key}`: GET, HEAD, PUT, DELETE and PATCH.

use std::io::Read;

use lucid_http::{Method, Request};

use super::conditions::{not_modified, write_condition};
use super::query::{ttl_millis, Params};
use super::reply::{self, Reply};
use super::route::{decode_key, KeyError};
use super::{patch, Buffers, Context};
use crate::store::engine::now_ms;
use crate::store::record::{RecordBuilder, RecordMeta, MAX_CONTENT_TYPE_LEN};
use crate::store::{StoreError, WriteOutcome};

/// Methods `/api/kv/{key}` accepts, as listed in a 405's `Allow` header.
pub const ALLOWED: &str = "GET, HEAD, PUT, DELETE, PATCH";

/// Answers one request to `/api/kv/{raw_key}` (admitted by `http::admit`).
pub fn handle<'b>(
    ctx: &Context,
    bufs: &'b mut Buffers,
    request: &mut Request,
    url: &str,
    raw_key: &str,
) -> Reply<'b> {
    let Buffers { key, record } = bufs;
    if !matches!(
        request.method(),
        Method::Get | Method::Head | Method::Put | Method::Delete | Method::Patch
    ) {
        return Reply::method_not_allowed(ALLOWED);
    }
    if let Err(err) = decode_key(raw_key, key, ctx.max_key_bytes) {
        return key_error(err, ctx.max_key_bytes);
    }
    let params = match Params::parse(
        url,
        if request.method() == &Method::Put {
            &["ttl"]
        } else {
            &[]
        },
        64,
    ) {
        Ok(params) => params,
        Err(reply) => return reply,
    };
    if matches!(request.method(), Method::Get | Method::Head) {
        return match ctx.store.get(key, record) {
            Ok(Some(value)) if not_modified(request, value.sequence) => {
                Reply::NotModified(value.sequence)
            }
            Ok(Some(value)) => Reply::Value(value),
            Ok(None) => Reply::json(404, reply::KEY_NOT_FOUND),
            Err(err) => store_error(err),
        };
    }
    let expect = match write_condition(request) {
        Ok(expect) => expect,
        Err(reply) => return reply,
    };
    match request.method() {
        Method::Put => put(ctx, request, &params, key, record, expect),
        Method::Patch => patch::handle(ctx, request, key, record, expect),
        _ => match ctx.store.delete(key, record, expect) {
            Ok(true) => Reply::json(200, reply::DELETED),
            Ok(false) => Reply::json(404, reply::KEY_NOT_FOUND),
            Err(err) => store_error(err),
        },
    }
}

fn put<'b>(
    ctx: &Context,
    request: &mut Request,
    params: &Params,
    key: &[u8],
    record: &mut Vec<u8>,
    expect: crate::store::engine::Expect,
) -> Reply<'b> {
    let max = ctx.max_value_bytes;
    let expires_at_ms = match params.get("ttl").map(ttl_millis) {
        None => 0,
        Some(Ok(ttl_ms)) => now_ms().saturating_add(ttl_ms),
        Some(Err(why)) => {
            return Reply::message(400, format!("The ttl query parameter {why}, like ?ttl=60."))
        }
    };
    let content_type = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map_or(reply::DEFAULT_CONTENT_TYPE, |h| h.value.as_bytes());
    if content_type.len() > MAX_CONTENT_TYPE_LEN {
        return Reply::message(
            400,
            format!("The Content-Type header is longer than {MAX_CONTENT_TYPE_LEN} bytes."),
        );
    }
    // The record holds the whole value: room for it first.
    let Some(_reserved) = ctx.memory.reserve(request.body_length().unwrap_or(max)) else {
        return Reply::over_memory_budget();
    };
    let meta = RecordMeta::put(key, content_type, expires_at_ms);
    RecordBuilder::begin(record, &meta);
    let header_len = record.len();
    record.reserve(request.body_length().unwrap_or(0));
    // Read at most one byte more than allowed: enough to tell a chunked body
    // that is too large without reading all of it.
    let limit = max as u64 + 1;
    if let Err(err) = request.as_reader().take(limit).read_to_end(record) {
        return body_unreadable(&err);
    }
    if record.len() - header_len > max {
        return too_large(max);
    }
    let stored = ctx.store.put(record, expect);
    // Freed before the room it took is given back.
    Buffers::shrink(record);
    match stored {
        Ok(written) => match written.outcome {
            WriteOutcome::Created => Reply::json(201, reply::CREATED),
            WriteOutcome::Updated => Reply::json(200, reply::UPDATED),
        }
        .with_etag(written.version),
        Err(err) => store_error(err),
    }
}

/// The reply to a request body that could not be read whole: 408 if the
/// client stopped sending it (the read timeout, or too slow a rate), 400 if
/// it closed the connection before its end or its chunked encoding is
/// malformed.
pub fn body_unreadable(err: &std::io::Error) -> Reply<'static> {
    use std::io::ErrorKind;
    match err.kind() {
        // A read timeout is `WouldBlock` on Linux.
        ErrorKind::TimedOut | ErrorKind::WouldBlock => {
            Reply::message(408, "The request body did not arrive in time.")
        }
        ErrorKind::UnexpectedEof => {
            Reply::message(400, "The connection ended before the request body did.")
        }
        _ => Reply::message(400, format!("The request body could not be read: {err}.")),
    }
}

/// `413` for a value over `storage.max_value_bytes`.
pub fn too_large<'b>(max: usize) -> Reply<'b> {
    Reply::message(
        413,
        format!("The value is larger than the limit of {max} bytes (storage.max_value_bytes)."),
    )
}

/// The reply for a refused key.
pub fn key_error<'b>(err: KeyError, max: usize) -> Reply<'b> {
    match err {
        KeyError::Empty => Reply::message(400, "The key must not be empty: use /api/kv/{key}."),
        KeyError::TooLong => Reply::message(
            414,
            format!("The key is longer than the limit of {max} bytes (storage.max_key_bytes)."),
        ),
        KeyError::BadEscape => Reply::message(
            400,
            "The key has a malformed percent-escape: '%' must be followed by two hex digits.",
        ),
        KeyError::NotUtf8 => {
            Reply::message(400, "The key is not valid UTF-8 once percent-decoded.")
        }
        KeyError::Nul => Reply::message(400, "The key must not contain a NUL byte (%00)."),
    }
}

/// The reply for a store error.
pub fn store_error<'b>(err: StoreError) -> Reply<'b> {
    match err {
        StoreError::Locked => Reply::json(409, reply::CANNOT_UPDATE),
        StoreError::PreconditionFailed => Reply::message(
            412,
            "The key's current version does not match the request's If-Match or If-None-Match condition; nothing was changed. Read the key again for its current version (ETag).",
        ),
        StoreError::NotFound => Reply::json(404, reply::KEY_NOT_FOUND),
        StoreError::ReadOnly => Reply::message(
            503,
            "The node is read-only after a disk failure: writes are refused until it is restarted. Reads still work.",
        ),
        StoreError::Io(err) if err.kind() == std::io::ErrorKind::StorageFull => Reply::message(
            507,
            "The disk is full: the write was not stored. Free some space and retry.",
        ),
        StoreError::Io(err) => {
            log::error!("disk error: {err}");
            Reply::message(
                500,
                "The disk reported an error: the request was not completed. The error is in the node's log.",
            )
        }
        StoreError::Corrupt { .. } => Reply::message(
            500,
            "The key's stored record is damaged and was not served; the key answers this error until it is written or deleted. See /health.",
        ),
    }
}
