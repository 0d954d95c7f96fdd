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
//! Every operation is one atomic read-modify-write of the key's record (see
//! [`crate::store::Store::update`]), so concurrent increments never lose a
//! step.

use std::io::Read;

use lucid_http::Request;
use serde::Deserialize;
use serde_json::json;

use super::kv::{body_unreadable, store_error};
use super::query::ttl_millis;
use super::reply::Reply;
use super::Context;
use crate::store::engine::{now_ms, Current, Expect};
use crate::store::record::{RecordBuilder, RecordKind, RecordMeta};
use crate::store::StoreError;
use crate::watch::EventOp;

/// Largest PATCH body read.
pub const MAX_BODY: usize = 64 * 1024;

/// A parsed PATCH operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operation {
    /// Refuse changes until unlocked.
    Lock,
    /// Accept changes again.
    Unlock,
    /// Add the step to a numeric value.
    Increment(Number),
    /// Subtract the step from a numeric value.
    Decrement(Number),
    /// Expire this many milliseconds from now.
    Ttl(u64),
    /// Never expire.
    Persist,
}

/// A number as stored or given: integers and decimals are kept apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// A 64-bit signed integer.
    Int(i64),
    /// A finite decimal.
    Decimal(f64),
}

impl Number {
    /// Parses a number written as text; `None` if it is not one, or an
    /// integer too large for 64 bits (`Some(Err(()))`).
    fn parse(text: &str) -> Option<Result<Self, ()>> {
        let text = text.trim();
        let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Some(text.parse().map(Self::Int).map_err(|_| ()));
        }
        let looks_decimal = !digits.is_empty()
            && digits
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
        let value: f64 = text.parse().ok().filter(|_| looks_decimal)?;
        value.is_finite().then_some(Ok(Self::Decimal(value)))
    }

    /// `self + step` (`self - step` if `subtract`), or `None` when an
    /// integer result overflows or a decimal one is not finite.
    fn add(self, step: Number, subtract: bool) -> Option<Number> {
        match (self, step) {
            (Self::Int(a), Self::Int(b)) if subtract => a.checked_sub(b).map(Self::Int),
            (Self::Int(a), Self::Int(b)) => a.checked_add(b).map(Self::Int),
            (a, b) => {
                let b = if subtract { -b.as_f64() } else { b.as_f64() };
                Some(a.as_f64() + b)
                    .filter(|sum| sum.is_finite())
                    .map(Self::Decimal)
            }
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Self::Int(n) => n as f64,
            Self::Decimal(d) => d,
        }
    }

    /// The number as stored: decimals always show a decimal point.
    fn to_text(self) -> String {
        match self {
            Self::Int(n) => n.to_string(),
            Self::Decimal(d) => {
                let text = d.to_string();
                if text.contains('.') {
                    text
                } else {
                    format!("{text}.0")
                }
            }
        }
    }

    fn to_json(self) -> serde_json::Value {
        match self {
            Self::Int(n) => json!(n),
            Self::Decimal(d) => json!(d),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    operation: Option<String>,
    value: Option<serde_json::Value>,
}

/// Parses a PATCH body. The error is the message for a 400.
pub fn parse(body: &[u8]) -> Result<Operation, String> {
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
        "lock" => Operation::Lock,
        "unlock" => Operation::Unlock,
        "increment" => Operation::Increment(step()?),
        "decrement" => Operation::Decrement(step()?),
        "persist" => Operation::Persist,
        "ttl" => {
            let seconds = match &value {
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                _ => None,
            };
            let ttl = ttl_millis(seconds.as_deref().unwrap_or("")).map_err(|why| {
                format!("The value of ttl {why}, like {{\"operation\": \"ttl\", \"value\": 60}}.")
            })?;
            Operation::Ttl(ttl)
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

/// Why an operation was refused.
enum Refusal {
    Store(StoreError),
    Reply(Reply<'static>),
}

impl From<StoreError> for Refusal {
    fn from(err: StoreError) -> Self {
        Self::Store(err)
    }
}

/// Answers `PATCH /api/kv/{key}`.
pub fn handle<'b>(
    ctx: &Context,
    request: &mut Request,
    key: &[u8],
    record: &mut Vec<u8>,
    expect: Expect,
) -> Reply<'b> {
    let mut body = Vec::new();
    if let Err(err) = request
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
    {
        return body_unreadable(&err);
    }
    if body.len() > MAX_BODY {
        return too_large();
    }
    let operation = match parse(&body) {
        Ok(operation) => operation,
        Err(message) => return Reply::message(400, message),
    };
    let mut new_number = None;
    let result = ctx.store.update(key, expect, record, |current, buf| {
        apply(operation, current, buf, &mut new_number)
    });
    match result {
        Ok(version) => success(operation, new_number).with_etag(version),
        Err(Refusal::Store(err)) => store_error(err),
        Err(Refusal::Reply(reply)) => reply,
    }
}

/// The 413 for a body over [`MAX_BODY`].
pub fn too_large<'b>() -> Reply<'b> {
    Reply::message(413, format!("A PATCH body is at most {MAX_BODY} bytes."))
}

/// Builds the key's new record for `operation` in `buf`, or refuses.
fn apply(
    operation: Operation,
    current: &Current<'_>,
    buf: &mut Vec<u8>,
    new_number: &mut Option<Number>,
) -> Result<Option<EventOp>, Refusal> {
    let locked = current.attrs.locked;
    let conflict = |message: &str| Err(Refusal::Reply(Reply::message(409, message)));
    let mut rewrite = |value: &[u8], expires_at_ms: u64, locked: bool| {
        let meta = RecordMeta {
            kind: RecordKind::Put,
            key: current.key,
            content_type: current.content_type,
            expires_at_ms,
            locked,
        };
        RecordBuilder::begin(buf, &meta);
        buf.extend_from_slice(value);
    };
    let expires = current.attrs.expires_at_ms;
    match operation {
        Operation::Lock if locked => conflict("The specified key is already locked."),
        Operation::Unlock if !locked => conflict("The specified key is not locked."),
        Operation::Lock | Operation::Unlock => {
            let lock = operation == Operation::Lock;
            rewrite(current.value, expires, lock);
            Ok(Some(if lock { EventOp::Lock } else { EventOp::Unlock }))
        }
        _ if locked => Err(Refusal::Store(StoreError::Locked)),
        Operation::Increment(step) | Operation::Decrement(step) => {
            let text = std::str::from_utf8(current.value).ok();
            let Some(parsed) = text.and_then(Number::parse) else {
                return Err(Refusal::Reply(Reply::message(
                    400,
                    "The specified key is not a valid numeric value.",
                )));
            };
            let decrement = matches!(operation, Operation::Decrement(_));
            let result = parsed
                .ok()
                .and_then(|number| number.add(step, decrement))
                .ok_or_else(|| {
                    Refusal::Reply(Reply::message(
                        400,
                        "The result does not fit: integers are 64-bit signed (up to 9223372036854775807) and decimals must stay finite.",
                    ))
                })?;
            rewrite(result.to_text().as_bytes(), expires, false);
            *new_number = Some(result);
            Ok(Some(EventOp::Put))
        }
        Operation::Ttl(ttl_ms) => {
            rewrite(current.value, now_ms().saturating_add(ttl_ms), false);
            Ok(Some(EventOp::Put))
        }
        Operation::Persist if expires == 0 => Ok(None),
        Operation::Persist => {
            rewrite(current.value, 0, false);
            Ok(Some(EventOp::Put))
        }
    }
}

/// The 200 reply of a successful operation.
fn success(operation: Operation, new_number: Option<Number>) -> Reply<'static> {
    let message = |text: &str| Reply::document(200, &json!({ "message": text }));
    match operation {
        Operation::Lock => message("The specified key was successfully locked."),
        Operation::Unlock => message("The specified key was successfully unlocked."),
        Operation::Increment(_) | Operation::Decrement(_) => {
            let verb = if matches!(operation, Operation::Increment(_)) {
                "incremented"
            } else {
                "decremented"
            };
            Reply::document(
                200,
                &json!({
                    "message": format!("The specified key was successfully {verb}."),
                    "value": new_number.map(Number::to_json),
                }),
            )
        }
        Operation::Ttl(ttl_ms) => message(&format!(
            "The specified key will expire in {} seconds.",
            ttl_ms as f64 / 1000.0
        )),
        Operation::Persist => message("The specified key no longer expires."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_into_operations() {
        assert_eq!(parse(br#"{"operation":"lock"}"#), Ok(Operation::Lock));
        assert_eq!(
            parse(br#"{"operation":"increment"}"#),
            Ok(Operation::Increment(Number::Int(1)))
        );
        assert_eq!(
            parse(br#"{"operation":"decrement","value":"2.5"}"#),
            Ok(Operation::Decrement(Number::Decimal(2.5)))
        );
        assert_eq!(
            parse(br#"{"operation":"ttl","value":"60"}"#),
            Ok(Operation::Ttl(60_000))
        );
        assert_eq!(
            parse(br#"{"operation":"ttl","value":1.5}"#),
            Ok(Operation::Ttl(1500))
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

    #[test]
    fn numbers_keep_their_kind() {
        let n = |text: &str| Number::parse(text).unwrap().unwrap();
        assert_eq!(n("41").add(Number::Int(1), false), Some(Number::Int(42)));
        assert_eq!(
            n("-1").add(Number::Int(i64::MIN), true),
            Some(Number::Int(i64::MAX))
        );
        assert_eq!(n(" -3\n"), Number::Int(-3));
        assert_eq!(
            n("1.5").add(Number::Int(1), false).unwrap().to_text(),
            "2.5"
        );
        assert_eq!(
            n("1.5").add(Number::Decimal(1.5), false).unwrap().to_text(),
            "3.0"
        );
        assert_eq!(
            n("2").add(Number::Decimal(0.5), true).unwrap().to_text(),
            "1.5"
        );
        assert_eq!(n("9223372036854775807").add(Number::Int(1), false), None);
        assert_eq!(n("-9223372036854775808").add(Number::Int(1), true), None);
        assert_eq!(Number::parse("9223372036854775808"), Some(Err(())));
        for bad in ["", "abc", "NaN", "inf", "-", "1.2.3x", "0x10"] {
            assert!(
                Number::parse(bad).is_none_or(|n| n.is_err()),
                "{bad} parsed"
            );
        }
    }
}
