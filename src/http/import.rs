//! `POST /api/admin/import`: keys from JSON Lines, as `GET
//! /api/admin/export` writes them (see `export.rs`), applied as one atomic
//! batch: all of a request's keys or none.
//!
//! A request holds at most [`MAX_LINES`] lines and is bounded in bytes as a
//! batch's body is (it is read into memory); `lucid import` splits a file
//! into such requests. Each line is an object with `key`, `value` (text) or
//! `value_base64`, and optionally `content_type`, `expires_at`
//! (milliseconds since the epoch, or null), `locked` and `version`. The
//! version is ignored: a version is the sequence number of the node that
//! wrote the key, so the imported keys get new ones here. A key whose
//! `expires_at` has passed is skipped and counted. Blank lines are
//! ignored. A malformed line is a 400 naming its line number, and nothing
//! of the request is written.

use std::borrow::Cow;
use std::collections::HashSet;

use lucid_http::Request;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::json;

use super::ack::Answer;
use super::batch::{self, check_content_type, check_key, decode_value, read_body};
use super::endpoint::BodyKind;
use super::errors::store_error;
use super::reply::Reply;
use super::Context;
use crate::clock::now_ms;
use crate::store::{BatchOp, Expect, Mutation, MutationError, StoreError};

/// Most lines (keys) in one request.
pub const MAX_LINES: usize = batch::MAX_OPERATIONS;

/// One line as sent. Strings borrow from the body where they can (those
/// without escapes: keys, content types and values as exported are
/// copied only once, into the log).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow)]
    value: Option<Cow<'a, str>>,
    #[serde(borrow)]
    value_base64: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content_type: Option<Cow<'a, str>>,
    /// The exporting node's version: accepted, not kept.
    #[serde(rename = "version")]
    _version: Option<IgnoredAny>,
    expires_at: Option<u64>,
    #[serde(default)]
    locked: bool,
}

/// A line checked and decoded, ready to be written.
struct Checked<'a> {
    /// Its line number in the body, from 1.
    number: usize,
    key: Cow<'a, str>,
    value: Cow<'a, [u8]>,
    content_type: Cow<'a, [u8]>,
    expires_at_ms: u64,
    locked: bool,
}

/// What was wrong with a line: the status and why.
struct Refusal {
    number: usize,
    status: u16,
    why: String,
}

impl Refusal {
    fn bad(number: usize, why: impl Into<String>) -> Self {
        Self {
            number,
            status: 400,
            why: why.into(),
        }
    }

    fn reply(self) -> Reply<'static> {
        let message = format!(
            "Line {}: {}; nothing from this request was written.",
            self.number, self.why
        );
        Reply::document(
            self.status,
            &json!({ "message": message, "line": self.number, "imported": 0 }),
        )
    }
}

/// Answers `POST /api/admin/import` (one whose declared length is within
/// the batch limit: see `http::admit`).
pub fn handle<'b>(ctx: &Context, request: &mut Request) -> Answer<'b> {
    let (body, _reserved) = match read_body(ctx, request, BodyKind::Import) {
        Ok(read) => read,
        Err(reply) => return reply.into(),
    };
    let (lines, expired) = match parse(ctx, &body, now_ms()) {
        Ok(parsed) => parsed,
        Err(refusal) => return refusal.reply().into(),
    };
    let ops: Vec<BatchOp<'_>> = lines
        .iter()
        .map(|line| BatchOp::Put {
            key: line.key.as_bytes(),
            content_type: &line.content_type,
            value: &line.value,
            expires_at_ms: line.expires_at_ms,
            locked: line.locked,
            expect: Expect::Any,
        })
        .collect();
    let imported = match ctx.store.apply(Mutation::Batch(&ops), &mut Vec::new()) {
        Ok(applied) => applied,
        Err(MutationError {
            index,
            error: StoreError::Locked,
        }) => {
            return Refusal {
                number: lines[index].number,
                status: 409,
                why: format!(
                    "the key '{}' is locked on this node",
                    lines[index].key.escape_default()
                ),
            }
            .reply()
            .into()
        }
        Err(MutationError { error, .. }) => return store_error(error).into(),
    };
    let reply = Reply::document(
        200,
        &json!({ "imported": lines.len(), "skipped_expired": expired }),
    );
    Answer::after(reply, imported.ticket)
}

/// Parses and checks every line of `body`: the keys to write, and how many
/// lines were skipped because they had expired by `now`. The refusal is
/// for the first faulty line.
fn parse<'a>(
    ctx: &Context,
    body: &'a [u8],
    now: u64,
) -> Result<(Vec<Checked<'a>>, usize), Refusal> {
    let mut lines = Vec::new();
    let faulty = check_lines(ctx, body, &mut lines).err();
    // Lines before the faulty one may repeat a key: that is the first fault.
    let mut seen = HashSet::with_capacity(lines.len());
    if let Some(line) = lines.iter().find(|line| !seen.insert(&*line.key)) {
        return Err(Refusal::bad(
            line.number,
            format!(
                "the key '{}' appears on an earlier line too",
                line.key.escape_default()
            ),
        ));
    }
    if let Some(refusal) = faulty {
        return Err(refusal);
    }
    let all = lines.len();
    lines.retain(|line| line.expires_at_ms == 0 || line.expires_at_ms > now);
    let expired = all - lines.len();
    Ok((lines, expired))
}

/// Checks the lines of `body` one by one into `lines` (expired ones too),
/// up to the first faulty one.
fn check_lines<'a>(
    ctx: &Context,
    body: &'a [u8],
    lines: &mut Vec<Checked<'a>>,
) -> Result<(), Refusal> {
    for (index, text) in body.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if lines.len() == MAX_LINES {
            return Err(Refusal {
                number,
                status: 413,
                why: format!("a request holds at most {MAX_LINES} lines; send the rest in another (lucid import does)"),
            });
        }
        let line: Line = serde_json::from_slice(text).map_err(|err| {
            Refusal::bad(
                number,
                format!("not a JSON object like {{\"key\": \"k\", \"value\": \"v\"}} ({err})"),
            )
        })?;
        let checked = check(ctx, line, number).map_err(|why| Refusal::bad(number, why))?;
        let too_large = checked.value.len() > ctx.max_value_bytes;
        // Kept even if too large: a repeated key is said first.
        lines.push(checked);
        if too_large {
            return Err(Refusal {
                number,
                status: 413,
                why: format!(
                    "the value is larger than the limit of {} bytes (storage.max_value_bytes)",
                    ctx.max_value_bytes
                ),
            });
        }
    }
    Ok(())
}

fn check<'a>(ctx: &Context, line: Line<'a>, number: usize) -> Result<Checked<'a>, String> {
    check_key(ctx, &line.key)?;
    Ok(Checked {
        number,
        value: decode_value(line.value, line.value_base64)?,
        content_type: check_content_type(line.content_type)?,
        key: line.key,
        expires_at_ms: line.expires_at.unwrap_or(0),
        locked: line.locked,
    })
}
