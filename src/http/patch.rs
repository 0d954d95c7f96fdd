//! `PATCH /api/kv/{key}`: operations on a stored key, body
//! `{"operation": "...", "value": ...}`.
//!
//! * `lock` / `unlock`: a locked key refuses PUT, DELETE, increment,
//!   decrement, ttl and persist with 409 until it is unlocked (reads work).
//! * `increment` / `decrement` (`value`: the step, default 1): integers stay
//!   integers (i64, overflow is an error), decimals stay decimals. The key
//!   keeps its content type and expiry.
//! * `ttl` (`value`: seconds > 0, a number or numeric string) sets an
//!   expiry; `persist` removes it.
//!
//! The operations are the store's [`Change`]s: each one atomic
//! read-modify-write of the key's record, so concurrent increments never
//! lose a step. Here the body is parsed and the answer written.

use lucid_http::Request;
use serde::Deserialize;
use serde_json::json;

use super::ack::Answer;
use super::body;
use super::endpoint::{BodyKind, PATCH_BODY_LIMIT};
use super::errors::store_error;
use super::query::ttl_millis;
use super::reply::Reply;
use super::Context;
use crate::store::{Change, Effect, Expect, Mutation, Number};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    operation: Option<String>,
    value: Option<serde_json::Value>,
}

/// Parses a PATCH body. The error is the message for a 400.
pub fn parse(body: &[u8]) -> Result<Change, String> {
    let body: Body = serde_json::from_slice(body).map_err(|err| {
        format!(
            "The request body must be JSON like {{\"operation\": \"increment\", \"value\": 1}}: {err}."
        )
    })?;
    let operation = body.operation.ok_or(
        "The request body must name an operation: {\"operation\": \"lock\"} (lock, unlock, increment, decrement, ttl or persist).",
    )?;
    let value = body.value.filter(|v| !v.is_null());
    let step = || match &value {
        None => Ok(Number::Int(1)),
        Some(value) => number_in(value),
    };
    Ok(match operation.as_str() {
        "lock" => Change::Lock,
        "unlock" => Change::Unlock,
        "increment" => Change::Increment(step()?),
        "decrement" => Change::Decrement(step()?),
        "persist" => Change::Persist,
        "ttl" => {
            let seconds = match &value {
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                _ => None,
            };
            let ttl = ttl_millis(seconds.as_deref().unwrap_or("")).map_err(|why| {
                format!("The value of ttl {why}, like {{\"operation\": \"ttl\", \"value\": 60}}.")
            })?;
            Change::Ttl(ttl)
        }
        other => {
            return Err(format!(
            "Unknown operation '{}'; use one of lock, unlock, increment, decrement, ttl, persist.",
            other.escape_default()
        ))
        }
    })
}

/// A JSON number or numeric string as a [`Number`].
/// An integer beyond 64 bits is refused, never turned into a decimal.
fn number_in(value: &serde_json::Value) -> Result<Number, String> {
    let parsed = match value {
        serde_json::Value::Number(n) => Number::parse(&n.to_string()),
        serde_json::Value::String(s) => Number::parse(s),
        _ => None,
    };
    match parsed {
        Some(Ok(number)) => Ok(number),
        Some(Err(())) => Err(
            "The step of increment and decrement must fit a 64-bit signed integer (up to 9223372036854775807)."
                .into(),
        ),
        None => Err(
            "The value of increment and decrement must be a number (the step), like 1 or 0.5."
                .into(),
        ),
    }
}

/// Answers `PATCH /api/kv/{key}`.
pub fn handle<'b>(
    ctx: &Context,
    request: &mut Request,
    key: &[u8],
    record: &mut Vec<u8>,
    expect: Expect,
) -> Answer<'b> {
    let mut body = Vec::new();
    let read = body::read(request, BodyKind::Patch, PATCH_BODY_LIMIT, |reader| {
        reader.read_to_end(&mut body)
    });
    if let Err(reply) = read {
        return reply.into();
    }
    let change = match parse(&body) {
        Ok(change) => change,
        Err(message) => return Reply::message(400, message).into(),
    };
    let mutation = Mutation::Change {
        key,
        change,
        expect,
    };
    match ctx.store.apply(mutation, record) {
        Ok(applied) => {
            let number = match applied.effect {
                Effect::Changed { number, .. } => number,
                _ => None,
            };
            let reply = success(change, number).with_etag(applied.effect.version());
            Answer::after(reply, applied.ticket)
        }
        Err(err) => store_error(err.error).into(),
    }
}

/// A number as JSON: an integer or a decimal.
fn number_json(number: Number) -> serde_json::Value {
    match number {
        Number::Int(n) => json!(n),
        Number::Decimal(d) => json!(d),
    }
}

/// The 200 reply of a successful operation.
fn success(operation: Change, new_number: Option<Number>) -> Reply<'static> {
    let message = |text: &str| Reply::document(200, &json!({ "message": text }));
    match operation {
        Change::Lock => message("The specified key was successfully locked."),
        Change::Unlock => message("The specified key was successfully unlocked."),
        Change::Increment(_) | Change::Decrement(_) => {
            let verb = if matches!(operation, Change::Increment(_)) {
                "incremented"
            } else {
                "decremented"
            };
            Reply::document(
                200,
                &json!({
                    "message": format!("The specified key was successfully {verb}."),
                    "value": new_number.map(number_json),
                }),
            )
        }
        Change::Ttl(ttl_ms) => message(&format!(
            "The specified key will expire in {} seconds.",
            ttl_ms as f64 / 1000.0
        )),
        Change::Persist => message("The specified key no longer expires."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_into_operations() {
        assert_eq!(parse(br#"{"operation":"lock"}"#), Ok(Change::Lock));
        assert_eq!(
            parse(br#"{"operation":"increment"}"#),
            Ok(Change::Increment(Number::Int(1)))
        );
        assert_eq!(
            parse(br#"{"operation":"decrement","value":"2.5"}"#),
            Ok(Change::Decrement(Number::Decimal(2.5)))
        );
        assert_eq!(
            parse(br#"{"operation":"ttl","value":"60"}"#),
            Ok(Change::Ttl(60_000))
        );
        assert_eq!(
            parse(br#"{"operation":"ttl","value":1.5}"#),
            Ok(Change::Ttl(1500))
        );
        for bad in [
            &br#"{"operation":"ttl","value":0}"#[..],
            br#"{"operation":"ttl"}"#,
            br#"{"operation":"ttl","value":"soon"}"#,
            br#"{"operation":"increment","value":"x"}"#,
            br#"{"operation":"increment","value":[1]}"#,
            br#"{"operation":"explode"}"#,
            br#"{"value":1}"#,
            br#"{"operation":"lock","extra":1}"#,
            b"not json",
            b"",
            &[0xff, 0xfe],
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
