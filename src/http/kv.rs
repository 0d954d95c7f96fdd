//! Handlers of `/api/kv/{key}`: GET, HEAD, PUT and DELETE.

use std::io::Read;

use tiny_http::{Method, Request};

use super::reply::{self, Reply};
use super::route::{decode_key, KeyError};
use super::{Buffers, Context};
use crate::store::record::{RecordBuilder, RecordKind, RecordMeta, MAX_CONTENT_TYPE_LEN};
use crate::store::{StoreError, WriteOutcome};

/// Methods `/api/kv/{key}` accepts, as listed in a 405's `Allow` header.
pub const ALLOWED: &str = "GET, HEAD, PUT, DELETE";

/// Answers one request to `/api/kv/{raw_key}`; sets `body_read` once the
/// request body has been read whole.
pub fn handle<'b>(
    ctx: &Context,
    bufs: &'b mut Buffers,
    request: &mut Request,
    raw_key: &str,
    body_read: &mut bool,
) -> Reply<'b> {
    let Buffers { key, record } = bufs;
    if !matches!(
        request.method(),
        Method::Get | Method::Head | Method::Put | Method::Delete
    ) {
        return Reply::method_not_allowed(ALLOWED);
    }
    if let Err(err) = decode_key(raw_key, key, ctx.max_key_bytes) {
        return key_error(err, ctx.max_key_bytes);
    }
    let result = match request.method() {
        Method::Get | Method::Head => match ctx.store.get(key, record) {
            Ok(Some(value)) => return Reply::Value(value),
            Ok(None) => Ok(Reply::json(404, reply::KEY_NOT_FOUND)),
            Err(err) => Err(err),
        },
        Method::Put => return put(ctx, request, key, record, body_read),
        _ => match ctx.store.delete(key, record) {
            Ok(true) => Ok(Reply::json(200, reply::DELETED)),
            Ok(false) => Ok(Reply::json(404, reply::KEY_NOT_FOUND)),
            Err(err) => Err(err),
        },
    };
    result.unwrap_or_else(store_error)
}

fn put<'b>(
    ctx: &Context,
    request: &mut Request,
    key: &[u8],
    record: &mut Vec<u8>,
    body_read: &mut bool,
) -> Reply<'b> {
    let max = ctx.max_value_bytes;
    if request.body_length().is_some_and(|len| len > max) {
        return too_large(max);
    }
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
    let meta = RecordMeta {
        kind: RecordKind::Put,
        key,
        content_type,
        expires_at_ms: 0,
    };
    RecordBuilder::begin(record, &meta);
    let header_len = record.len();
    record.reserve(request.body_length().unwrap_or(0));
    // Read at most one byte more than allowed: enough to tell a chunked body
    // that is too large without reading all of it.
    let limit = max as u64 + 1;
    if let Err(err) = request.as_reader().take(limit).read_to_end(record) {
        return Reply::message(400, format!("The request body could not be read: {err}."));
    }
    if record.len() - header_len > max {
        return too_large(max);
    }
    *body_read = true;
    match ctx.store.put(record) {
        Ok(WriteOutcome::Created) => Reply::json(201, reply::CREATED),
        Ok(WriteOutcome::Updated) => Reply::json(200, reply::UPDATED),
        Err(err) => store_error(err),
    }
}

fn too_large<'b>(max: usize) -> Reply<'b> {
    Reply::message(
        413,
        format!("The value is larger than the limit of {max} bytes (storage.max_value_bytes)."),
    )
}

fn key_error<'b>(err: KeyError, max: usize) -> Reply<'b> {
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
    }
}

fn store_error<'b>(err: StoreError) -> Reply<'b> {
    match err {
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
            "The stored value failed its integrity check and was not served. Run `lucid check` on the data directory.",
        ),
    }
}
