//! `POST /api/batch`: several puts and deletes applied all or none.
//!
//! Body: `{"operations": [{"op": "put", "key": "k", "value": "text"
//! (or "value_base64": "..."), "content_type": "...", "ttl": seconds,
//! "version": N}, {"op": "delete", "key": "k", "version": N}, ...]}`, at
//! most [`MAX_OPERATIONS`], each key at most once. `version` is a condition
//! like `If-Match` (0: the key must not exist). The operations are written
//! as one log frame with one CRC, so a crash never leaves half a batch.

use std::borrow::Cow;
use std::collections::HashSet;

use base64::Engine as _;
use lucid_http::Request;
use serde::Deserialize;
use serde_json::json;

use super::ack::Answer;
use super::body;
use super::endpoint::BodyKind;
use super::errors::store_error;
use super::query::ttl_millis;
use super::reply::{self, Reply};
use super::Context;
use crate::auth::{Access, Claims};
use crate::clock::now_ms;
use crate::memory::{self, Reservation};
use crate::store::record::MAX_CONTENT_TYPE_LEN;
use crate::store::{
    BatchOp, BatchResult, Expect, Mutation, MutationError, StoreError, WriteOutcome,
};

/// Most operations in one batch.
pub const MAX_OPERATIONS: usize = 1000;

/// The body as sent. Values borrow from it where they can (strings without
/// escapes, which base64 never has), so the body is not copied before its
/// values are decoded.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body<'a> {
    #[serde(borrow)]
    operations: Vec<OpBody<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpBody<'a> {
    op: String,
    key: String,
    #[serde(borrow)]
    value: Option<Cow<'a, str>>,
    #[serde(borrow)]
    value_base64: Option<Cow<'a, str>>,
    content_type: Option<String>,
    ttl: Option<serde_json::Value>,
    version: Option<u64>,
}

/// One operation, checked and decoded.
struct Checked {
    key: String,
    value: Vec<u8>,
    content_type: Vec<u8>,
    expires_at_ms: u64,
    expect: Expect,
    put: bool,
}

/// Answers `POST /api/batch` (one whose declared length is within its
/// limit: see `http::admit`). With authentication on, `claims` must grant
/// `write` on every key.
pub fn handle<'b>(ctx: &Context, request: &mut Request, claims: Option<&Claims>) -> Answer<'b> {
    let (body, _reserved) = match read_body(ctx, request, BodyKind::Batch) {
        Ok(read) => read,
        Err(reply) => return reply.into(),
    };
    let parsed = parse(ctx, &body);
    drop(body);
    let checked = match parsed {
        Ok(checked) => checked,
        Err(message) => return Reply::message(400, message).into(),
    };
    if let Some(claims) = claims {
        for (index, op) in checked.iter().enumerate() {
            if let Err(why) = claims.authorize(Access::Write, op.key.as_bytes()) {
                let message = format!("Operation {index}: {} Nothing was applied.", why.message());
                return Reply::document(403, &json!({ "message": message, "operation": index }))
                    .into();
            }
        }
    }
    if let Some(index) = checked
        .iter()
        .position(|op| op.value.len() > ctx.max_value_bytes)
    {
        return Reply::message(
            413,
            format!(
                "Operation {index}: the value is larger than the limit of {} bytes (storage.max_value_bytes); nothing was applied.",
                ctx.max_value_bytes
            ),
        )
        .into();
    }
    let ops: Vec<BatchOp<'_>> = checked
        .iter()
        .map(|op| {
            if op.put {
                BatchOp::Put {
                    key: op.key.as_bytes(),
                    content_type: &op.content_type,
                    value: &op.value,
                    expires_at_ms: op.expires_at_ms,
                    locked: false,
                    expect: op.expect,
                }
            } else {
                BatchOp::Delete {
                    key: op.key.as_bytes(),
                    expect: op.expect,
                }
            }
        })
        .collect();
    match ctx.store.apply(Mutation::Batch(&ops), &mut Vec::new()) {
        Ok(applied) => {
            let results: Vec<_> = checked
                .iter()
                .zip(applied.effect.into_batch_results())
                .map(|(op, result)| result_json(op, result))
                .collect();
            let reply = Reply::document(200, &json!({ "results": results }));
            Answer::after(reply, applied.ticket)
        }
        Err(MutationError { index, error }) => refused(index, &checked[index], error).into(),
    }
}

/// Parses and checks the body; the error is the message for a 400.
fn parse(ctx: &Context, body: &[u8]) -> Result<Vec<Checked>, String> {
    let body: Body = serde_json::from_slice(body).map_err(|err| {
        format!(
            "The request body must be JSON like {{\"operations\": [{{\"op\": \"put\", \"key\": \"k\", \"value\": \"v\"}}]}}: {err}."
        )
    })?;
    if body.operations.is_empty() || body.operations.len() > MAX_OPERATIONS {
        return Err(format!(
            "A batch holds from 1 to {MAX_OPERATIONS} operations; this one has {}.",
            body.operations.len()
        ));
    }
    let mut seen = HashSet::new();
    let now = now_ms();
    body.operations
        .into_iter()
        .enumerate()
        .map(|(index, op)| {
            check(ctx, op, now, &mut seen).map_err(|why| format!("Operation {index}: {why}."))
        })
        .collect()
}

fn check(
    ctx: &Context,
    op: OpBody<'_>,
    now: u64,
    seen: &mut HashSet<String>,
) -> Result<Checked, String> {
    check_key(ctx, &op.key)?;
    if !seen.insert(op.key.clone()) {
        return Err(format!(
            "the key '{}' appears more than once in the batch",
            op.key.escape_default()
        ));
    }
    let expect = match op.version {
        None => Expect::Any,
        Some(0) => Expect::Absent,
        Some(version) => Expect::Version(version),
    };
    let put = match op.op.as_str() {
        "put" => true,
        "delete" => false,
        other => {
            return Err(format!(
                "unknown op '{}'; use put or delete",
                other.escape_default()
            ))
        }
    };
    if !put {
        let extra = op.value.is_some()
            || op.value_base64.is_some()
            || op.content_type.is_some()
            || op.ttl.is_some();
        if extra {
            return Err("a delete takes only key and version".into());
        }
        return Ok(Checked {
            key: op.key,
            value: Vec::new(),
            content_type: Vec::new(),
            expires_at_ms: 0,
            expect,
            put,
        });
    }
    let value = decode_value(op.value, op.value_base64)?.into_owned();
    let content_type = check_content_type(op.content_type.map(Cow::Owned))?.into_owned();
    let expires_at_ms = match op.ttl {
        None => 0,
        Some(ttl) => {
            let seconds = match ttl {
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::String(s) => s,
                _ => String::new(),
            };
            let ttl_ms = ttl_millis(&seconds).map_err(|why| format!("ttl {why}"))?;
            now.saturating_add(ttl_ms)
        }
    };
    Ok(Checked {
        key: op.key,
        value,
        content_type,
        expires_at_ms,
        expect,
        put,
    })
}

/// Checks a key given in a body: 1 to `storage.max_key_bytes` bytes,
/// without NUL; the error says why not.
pub(super) fn check_key(ctx: &Context, key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > ctx.max_key_bytes {
        return Err(format!(
            "the key must be 1 to {} bytes (storage.max_key_bytes)",
            ctx.max_key_bytes
        ));
    }
    if key.contains('\0') {
        return Err("the key contains a NUL byte, which keys may not hold".into());
    }
    Ok(())
}

/// The value given in a body as exactly one of `value` (text, still
/// borrowed from the body if it was) and `value_base64`.
pub(super) fn decode_value<'a>(
    value: Option<Cow<'a, str>>,
    value_base64: Option<Cow<'a, str>>,
) -> Result<Cow<'a, [u8]>, String> {
    match (value, value_base64) {
        (Some(text), None) => Ok(bytes(text)),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map(Cow::Owned)
            .map_err(|err| format!("value_base64 is not valid base64 ({err})")),
        _ => Err("a put takes exactly one of value and value_base64".into()),
    }
}

/// Text's bytes, borrowed if the text was.
fn bytes(text: Cow<'_, str>) -> Cow<'_, [u8]> {
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
        Cow::Owned(text) => Cow::Owned(text.into_bytes()),
    }
}

/// The content type given in a body (default: the PUT default), checked:
/// it is sent back as a header, so only what a header value may hold.
pub(super) fn check_content_type(
    content_type: Option<Cow<'_, str>>,
) -> Result<Cow<'_, [u8]>, String> {
    let content_type = content_type.map_or(Cow::Borrowed(reply::DEFAULT_CONTENT_TYPE), bytes);
    if content_type.len() > MAX_CONTENT_TYPE_LEN {
        return Err(format!(
            "the content type is longer than {MAX_CONTENT_TYPE_LEN} bytes"
        ));
    }
    if !content_type
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(
            "the content type may hold only printable ASCII characters, spaces and tabs".into(),
        );
    }
    Ok(content_type)
}

fn result_json(op: &Checked, result: BatchResult) -> serde_json::Value {
    let (status, version) = match result {
        BatchResult::Put(written) => (
            match written.outcome {
                WriteOutcome::Created => 201,
                WriteOutcome::Updated => 200,
            },
            Some(written.version),
        ),
        BatchResult::Deleted(_) => (200, None),
        BatchResult::NotFound => (404, None),
    };
    json!({
        "op": if op.put { "put" } else { "delete" },
        "key": op.key,
        "status": status,
        "version": version,
    })
}

/// The reply for a batch refused because of operation `index`.
fn refused<'b>(index: usize, op: &Checked, error: StoreError) -> Reply<'b> {
    let (status, why) = match error {
        StoreError::Locked => (409, "the specified key cannot be updated (it is locked)"),
        StoreError::PreconditionFailed => (412, "the key's version does not match"),
        other => return store_error(other),
    };
    let message = format!(
        "Operation {index} ({} '{}'): {why}; nothing was applied.",
        if op.put { "put" } else { "delete" },
        op.key.escape_default()
    );
    Reply::document(status, &json!({ "message": message, "operation": index }))
}

/// Reads a body of `kind` (a batch's or an import's; its declared length was
/// checked by `http::admit`) into memory, with room reserved in the budget
/// for the values decoded from it and the log frame built from those (the
/// body is freed by then).
pub(super) fn read_body(
    ctx: &Context,
    request: &mut Request,
    kind: BodyKind,
) -> Result<(Vec<u8>, Reservation), Reply<'static>> {
    let limit = kind.limit(ctx.max_value_bytes);
    let length = request.body_length().unwrap_or(limit);
    let reserved = ctx
        .memory
        .reserve(memory::batch_need(length))
        .ok_or_else(Reply::over_memory_budget)?;
    let mut body = Vec::with_capacity(request.body_length().unwrap_or(0));
    body::read(request, kind, limit, |reader| reader.read_to_end(&mut body))?;
    Ok((body, reserved))
}
