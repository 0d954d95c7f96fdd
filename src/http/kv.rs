//! Handlers of `/api/kv/{key}`: GET, HEAD, PUT, DELETE and PATCH.

use std::io::Read;

use lucid_http::{Method, Request};

use super::ack::Answer;
use super::conditions::{not_modified, write_condition};
use super::errors::{body_unreadable, store_error};
use super::query::{ttl_millis, Params};
use super::reply::{self, Reply};
use super::route::{decode_key, KeyError};
use super::{patch, Buffers, Context};
use crate::clock::now_ms;
use crate::store::record::MAX_CONTENT_TYPE_LEN;
use crate::store::{Effect, Expect, Mutation, PutBuffer, WriteOutcome, Written};

/// Methods `/api/kv/{key}` accepts, as listed in a 405's `Allow` header.
pub const ALLOWED: &str = "GET, HEAD, PUT, DELETE, PATCH";

/// Answers one request to `/api/kv/{raw_key}` (admitted by `http::admit`).
pub fn handle<'b>(
    ctx: &Context,
    bufs: &'b mut Buffers,
    request: &mut Request,
    url: &str,
    raw_key: &str,
) -> Answer<'b> {
    let Buffers { key, record } = bufs;
    if !matches!(
        request.method(),
        Method::Get | Method::Head | Method::Put | Method::Delete | Method::Patch
    ) {
        return Reply::method_not_allowed(ALLOWED).into();
    }
    if let Err(err) = decode_key(raw_key, key, ctx.max_key_bytes) {
        return key_error(err, ctx.max_key_bytes).into();
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
        Err(reply) => return reply.into(),
    };
    if matches!(request.method(), Method::Get | Method::Head) {
        return match ctx.store.get(key, record) {
            Ok(Some(value)) if not_modified(request, value.sequence) => {
                Reply::NotModified(value.sequence)
            }
            Ok(Some(value)) => Reply::Value(value),
            Ok(None) => Reply::json(404, reply::KEY_NOT_FOUND),
            Err(err) => store_error(err),
        }
        .into();
    }
    let expect = match write_condition(request) {
        Ok(expect) => expect,
        Err(reply) => return reply.into(),
    };
    match request.method() {
        Method::Put => put(ctx, request, &params, key, record, expect),
        Method::Patch => patch::handle(ctx, request, key, record, expect),
        _ => match ctx.store.apply(Mutation::Delete { key, expect }, record) {
            Ok(applied) => Answer::after(Reply::json(200, reply::DELETED), applied.ticket),
            Err(err) => store_error(err.error).into(),
        },
    }
}

fn put<'b>(
    ctx: &Context,
    request: &mut Request,
    params: &Params,
    key: &[u8],
    record: &mut Vec<u8>,
    expect: Expect,
) -> Answer<'b> {
    let max = ctx.max_value_bytes;
    let expires_at_ms = match params.get("ttl").map(ttl_millis) {
        None => 0,
        Some(Ok(ttl_ms)) => now_ms().saturating_add(ttl_ms),
        Some(Err(why)) => {
            return Reply::message(400, format!("The ttl query parameter {why}, like ?ttl=60."))
                .into()
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
        )
        .into();
    }
    // The record holds the whole value: room for it first.
    let Some(_reserved) = ctx.memory.reserve(request.body_length().unwrap_or(max)) else {
        return Reply::over_memory_budget().into();
    };
    // The body is read straight into the record the store writes.
    let value_len = request.body_length().unwrap_or(0);
    let mut value = PutBuffer::new(record, key, content_type, expires_at_ms, value_len);
    // Read at most one byte more than allowed: enough to tell a chunked body
    // that is too large without reading all of it.
    let limit = max as u64 + 1;
    if let Err(err) = value.read_value(request.as_reader().take(limit)) {
        return body_unreadable(&err).into();
    }
    if value.value_len() > max {
        return too_large(max).into();
    }
    let put = Mutation::Put {
        record: value,
        expect,
    };
    let stored = ctx.store.apply(put, &mut Vec::new());
    // Freed before the room it took is given back.
    Buffers::shrink(record);
    match stored {
        Ok(applied) => {
            let reply = match applied.effect {
                Effect::Put(Written {
                    outcome: WriteOutcome::Created,
                    ..
                }) => Reply::json(201, reply::CREATED),
                _ => Reply::json(200, reply::UPDATED),
            };
            Answer::after(reply.with_etag(applied.effect.version()), applied.ticket)
        }
        Err(err) => store_error(err.error).into(),
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
