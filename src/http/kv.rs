//! Handlers of `/api/kv/{key}`: GET, HEAD, PUT, DELETE and PATCH.

use lucid_http::Request;

use super::ack::Answer;
use super::body;
use super::conditions::{not_modified, write_condition};
use super::endpoint::{BodyKind, KeyOp};
use super::errors::{read_error, store_error};
use super::query::{ttl_millis, Params};
use super::reply::{self, Reply};
use super::route::KeyError;
use super::{patch, Buffers, Context};
use crate::clock::now_ms;
use crate::memory::Reservation;
use crate::store::record::MAX_CONTENT_TYPE_LEN;
use crate::store::{Effect, Expect, Mutation, PutBuffer, Sendable, WriteOutcome, Written};

/// Answers `op` on the key of `/api/kv/{key}` (admitted by `http::admit`,
/// which decoded the key into `bufs.key`; `decoded` says whether it could).
pub fn handle<'b>(
    ctx: &Context,
    op: KeyOp,
    decoded: Result<(), KeyError>,
    bufs: &'b mut Buffers,
    request: &mut Request,
    url: &str,
) -> Answer<'b> {
    let Buffers {
        key,
        record,
        chunk,
        room,
    } = bufs;
    if let Err(err) = decoded {
        return key_error(err, ctx.max_key_bytes).into();
    }
    let accepted: &[&str] = if op == KeyOp::Put { &["ttl"] } else { &[] };
    let params = match Params::parse(url, accepted, 64) {
        Ok(params) => params,
        Err(reply) => return reply.into(),
    };
    if op == KeyOp::Get {
        return get(ctx, request, key, record, chunk, room).into();
    }
    let expect = match write_condition(request) {
        Ok(expect) => expect,
        Err(reply) => return reply.into(),
    };
    match op {
        KeyOp::Put => put(ctx, request, &params, key, record, expect),
        KeyOp::Patch => patch::handle(ctx, request, key, record, expect),
        KeyOp::Delete => delete(ctx, key, record, expect),
        KeyOp::Get => unreachable!("a read is answered above"),
    }
}

/// `GET` or `HEAD`: the key's value, or 304 if the client's copy is current.
/// A large value is sent from the log through `chunk` (see
/// [`crate::store::Store::get_sendable`]), never read whole, except an
/// encrypted store's: that one is read into `record` with `room` taken for
/// it from the memory budget, kept until the reply is sent (503 if there is
/// none).
fn get<'b>(
    ctx: &Context,
    request: &Request,
    key: &[u8],
    record: &'b mut Vec<u8>,
    chunk: &'b mut Vec<u8>,
    room: &mut Option<Reservation>,
) -> Reply<'b> {
    let mut take_room = |len| ctx.memory.hold(room, len);
    match ctx.store.get_sendable(key, record, chunk, &mut take_room) {
        Ok(Some(value)) if not_modified(request, value.sequence()) => {
            Reply::NotModified(value.sequence())
        }
        Ok(Some(Sendable::Read(value))) => Reply::Value(value),
        Ok(Some(Sendable::InLog(value))) => Reply::ValueInLog { value, chunk },
        Ok(None) => Reply::json(404, reply::KEY_NOT_FOUND),
        Err(err) => read_error(ctx, err),
    }
}

/// `DELETE`.
fn delete<'b>(ctx: &Context, key: &[u8], record: &mut Vec<u8>, expect: Expect) -> Answer<'b> {
    match ctx.store.apply(Mutation::Delete { key, expect }, record) {
        Ok(applied) => Answer::after(Reply::json(200, reply::DELETED), applied.ticket),
        Err(err) => store_error(err.error).into(),
    }
}

/// `PUT`: the body is read straight into the record the store writes.
fn put<'b>(
    ctx: &Context,
    request: &mut Request,
    params: &Params,
    key: &[u8],
    record: &mut Vec<u8>,
    expect: Expect,
) -> Answer<'b> {
    let limit = BodyKind::Value.limit(ctx.max_value_bytes);
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
    let Some(_reserved) = ctx.memory.reserve(request.body_length().unwrap_or(limit)) else {
        return Reply::over_memory_budget().into();
    };
    let value_len = request.body_length().unwrap_or(0);
    let mut value = PutBuffer::new(record, key, content_type, expires_at_ms, value_len);
    if let Err(reply) = body::read(request, BodyKind::Value, limit, |body| {
        value.read_value(body)
    }) {
        return reply.into();
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
