//! The data features of issue #5 through the real binary: PATCH operations
//! (lock, unlock, increment, decrement, ttl, persist), enforced TTL,
//! versions and conditional requests, prefix listing and atomic batches,
//! each with restarts (clean and kill -9) where persistence matters.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const CANNOT_UPDATE: &str = "The specified key cannot be updated.";
const LOCKED: &str = "The specified key was successfully locked.";
const UNLOCKED: &str = "The specified key was successfully unlocked.";
const ALREADY_LOCKED: &str = "The specified key is already locked.";
const NOT_LOCKED: &str = "The specified key is not locked.";
const NOT_NUMERIC: &str = "The specified key is not a valid numeric value.";
const INCREMENTED: &str = "The specified key was successfully incremented.";
const DECREMENTED: &str = "The specified key was successfully decremented.";

/// Generous bound for an expired key to disappear or the sweep to run
/// (expiry is checked on every read; the sweep runs every second).
const EXPIRY_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The body parsed as JSON (panics with the body otherwise).
fn body_json(resp: &Response) -> Value {
    serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
        panic!(
            "status {}: body is not JSON ({e}): {:?}",
            resp.status,
            resp.text()
        )
    })
}

/// `PATCH /api/kv/{key}` with a raw body.
fn patch(port: u16, key: &str, body: &str) -> Response {
    patch_if(port, key, &[], body)
}

/// `PATCH /api/kv/{key}` with extra headers.
fn patch_if(port: u16, key: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    request(port, "PATCH", &kv_path(key), &all, body.as_bytes())
}

/// `PATCH` with `{"operation": op}`.
fn patch_op(port: u16, key: &str, op: &str) -> Response {
    patch(port, key, &json!({ "operation": op }).to_string())
}

/// `PATCH` with `{"operation": op, "value": value}`.
fn patch_value(port: u16, key: &str, op: &str, value: Value) -> Response {
    patch(
        port,
        key,
        &json!({ "operation": op, "value": value }).to_string(),
    )
}

/// The version in a response's `ETag: "<version>"` header.
#[track_caller]
fn etag(resp: &Response) -> u64 {
    let tag = resp
        .header("etag")
        .unwrap_or_else(|| panic!("status {}: no ETag header", resp.status));
    tag.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("ETag {tag:?} is not a quoted version"))
}

/// The current version of `key` (its GET's ETag).
#[track_caller]
fn version(port: u16, key: &str) -> u64 {
    let resp = get(port, &kv_path(key));
    assert_eq!(resp.status, 200, "GET {key}: {}", resp.text());
    etag(&resp)
}

fn put_key(port: u16, key: &str, value: &[u8]) -> Response {
    put(port, &kv_path(key), value)
}

/// The value of `key`, `None` if it does not exist (any other status panics).
#[track_caller]
fn value(port: u16, key: &str) -> Option<Vec<u8>> {
    let resp = get(port, &kv_path(key));
    match resp.status {
        200 => Some(resp.body),
        404 => None,
        other => panic!("GET {key}: {other} {}", resp.text()),
    }
}

/// `POST /api/batch` with `{"operations": ops}`.
fn batch(port: u16, ops: Value) -> Response {
    batch_raw(port, &json!({ "operations": ops }).to_string())
}

fn batch_raw(port: u16, body: &str) -> Response {
    request(
        port,
        "POST",
        "/api/batch",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

/// `GET /api/kv?{query}`, which must answer 200 with JSON.
#[track_caller]
fn list(port: u16, query: &str) -> Value {
    let resp = get(port, &format!("/api/kv?{query}"));
    assert_eq!(resp.status, 200, "GET /api/kv?{query}: {}", resp.text());
    body_json(&resp)
}

/// The key names of a listing page (full entries or `keys_only`).
fn names(page: &Value) -> Vec<String> {
    page["keys"]
        .as_array()
        .expect("keys is an array")
        .iter()
        .map(|entry| {
            entry
                .as_str()
                .or_else(|| entry["key"].as_str())
                .expect("a key name")
                .to_string()
        })
        .collect()
}

/// Polls `done` every 50 ms until it holds; panics after `timeout`.
#[track_caller]
fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn sleep_until(when: Instant) {
    thread::sleep(when.saturating_duration_since(Instant::now()));
}

/// Unix time in milliseconds.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A restart in the middle of a test: clean (SIGTERM) or a crash.
#[derive(Debug, Clone, Copy)]
enum Restart {
    Clean,
    Kill9,
}

const RESTARTS: [Restart; 2] = [Restart::Clean, Restart::Kill9];

impl Restart {
    fn apply(self, node: &mut Node) {
        if let Restart::Clean = self {
            let status = node.stop();
            assert!(
                status.success(),
                "clean stop failed: {status}\n{}",
                node.logs()
            );
        }
        node.restart();
    }
}

fn compact(port: u16) {
    let resp = request(port, "POST", "/api/admin/compact", &[], b"");
    assert_eq!(resp.status, 200, "compact: {}", resp.text());
}

// ---------------------------------------------------------------------------
// PATCH lock / unlock
// ---------------------------------------------------------------------------

#[test]
fn locked_key_refuses_every_change_but_serves_reads() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put_key(port, "cfg", b"7").status, 201);
    assert_message(&patch_op(port, "cfg", "lock"), 200, LOCKED);

    assert_error(&put_key(port, "cfg", b"8"), 409, Some(CANNOT_UPDATE));
    assert_error(
        &put(port, "/api/kv/cfg?ttl=60", b"8"),
        409,
        Some(CANNOT_UPDATE),
    );
    assert_error(&delete(port, "/api/kv/cfg"), 409, Some(CANNOT_UPDATE));
    for op in ["increment", "decrement", "persist"] {
        assert_error(&patch_op(port, "cfg", op), 409, Some(CANNOT_UPDATE));
    }
    assert_error(
        &patch_value(port, "cfg", "ttl", json!(60)),
        409,
        Some(CANNOT_UPDATE),
    );

    let resp = get(port, "/api/kv/cfg");
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"7"[..]));
    let head = request(port, "HEAD", "/api/kv/cfg", &[], b"");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("etag"), resp.header("etag"));

    assert_message(&patch_op(port, "cfg", "unlock"), 200, UNLOCKED);
    assert_message(&put_key(port, "cfg", b"8"), 200, UPDATED);
    assert_message(&delete(port, "/api/kv/cfg"), 200, DELETED);
}

#[test]
fn locking_twice_or_unlocking_an_unlocked_key_is_a_conflict() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put_key(port, "k", b"v").status, 201);
    assert_error(&patch_op(port, "k", "unlock"), 409, Some(NOT_LOCKED));
    assert_message(&patch_op(port, "k", "lock"), 200, LOCKED);
    let locked_version = version(port, "k");
    assert_error(&patch_op(port, "k", "lock"), 409, Some(ALREADY_LOCKED));
    // The refused lock wrote nothing.
    assert_eq!(version(port, "k"), locked_version);
    assert_message(&patch_op(port, "k", "unlock"), 200, UNLOCKED);
    assert_error(&patch_op(port, "k", "unlock"), 409, Some(NOT_LOCKED));
    assert_eq!(value(port, "k").as_deref(), Some(&b"v"[..]));
}

#[test]
fn lock_survives_clean_restart_and_kill9() {
    let mut node = Node::start();
    assert_eq!(put_key(node.port(), "locked", b"v1").status, 201);
    assert_eq!(put_key(node.port(), "free", b"v1").status, 201);
    assert_message(&patch_op(node.port(), "locked", "lock"), 200, LOCKED);
    for restart in RESTARTS {
        restart.apply(&mut node);
        let port = node.port();
        assert_error(&put_key(port, "locked", b"v2"), 409, Some(CANNOT_UPDATE));
        assert_error(&delete(port, "/api/kv/locked"), 409, Some(CANNOT_UPDATE));
        assert_eq!(
            value(port, "locked").as_deref(),
            Some(&b"v1"[..]),
            "{restart:?}"
        );
        assert_eq!(put_key(port, "free", b"v2").status, 200, "{restart:?}");
        assert_error(&patch_op(port, "locked", "lock"), 409, Some(ALREADY_LOCKED));
    }
    // An unlock survives restarts too (a crash first: the index hint file of
    // the clean stop above still says "locked").
    assert_message(&patch_op(node.port(), "locked", "unlock"), 200, UNLOCKED);
    for restart in [Restart::Kill9, Restart::Clean] {
        restart.apply(&mut node);
        assert_error(
            &patch_op(node.port(), "locked", "unlock"),
            409,
            Some(NOT_LOCKED),
        );
    }
    assert_eq!(put_key(node.port(), "locked", b"v2").status, 200);
}

#[test]
fn attribute_changes_after_a_clean_restart_survive_kill9() {
    let mut node = Node::start();
    let port = node.port();
    for key in ["a", "b", "c", "d"] {
        assert_eq!(put_key(port, key, b"1").status, 201);
    }
    assert_eq!(patch_op(port, "a", "lock").status, 200);
    assert_eq!(patch_value(port, "b", "ttl", json!(3600)).status, 200);
    Restart::Clean.apply(&mut node);
    // Changed after the clean stop wrote its index hint, then a crash.
    let port = node.port();
    assert_eq!(patch_op(port, "a", "unlock").status, 200);
    assert_eq!(patch_op(port, "b", "persist").status, 200);
    assert_eq!(patch_op(port, "c", "lock").status, 200);
    assert_eq!(patch_value(port, "d", "ttl", json!(3600)).status, 200);
    let before = list(port, "");
    Restart::Kill9.apply(&mut node);
    let port = node.port();
    assert_eq!(list(port, ""), before);
    assert_eq!(put_key(port, "a", b"2").status, 200);
    assert_error(&put_key(port, "c", b"2"), 409, Some(CANNOT_UPDATE));
    let keys = list(port, "")["keys"].clone();
    assert_eq!(keys[1]["expires_at"], Value::Null);
    assert!(keys[3]["expires_at"].is_u64());
}

#[test]
fn lock_and_version_survive_compaction() {
    let mut node = Node::start();
    let port = node.port();
    // Dead records for the compaction to drop.
    for i in 0..20 {
        assert!(put_key(port, "locked", format!("old {i}").as_bytes()).status < 300);
        assert!(put_key(port, "other", format!("old {i}").as_bytes()).status < 300);
    }
    assert_eq!(put_key(port, "locked", b"final").status, 200);
    assert_message(&patch_op(port, "locked", "lock"), 200, LOCKED);
    assert_eq!(put(port, "/api/kv/expiring?ttl=3600", b"v").status, 201);
    let locked_version = version(port, "locked");
    let other_version = version(port, "other");
    let listed = list(port, "");

    compact(port);
    assert_eq!(list(port, ""), listed);
    assert_error(&put_key(port, "locked", b"x"), 409, Some(CANNOT_UPDATE));
    assert_eq!(version(port, "locked"), locked_version);
    assert_eq!(version(port, "other"), other_version);

    node.kill9();
    node.restart();
    let port = node.port();
    assert_error(&put_key(port, "locked", b"x"), 409, Some(CANNOT_UPDATE));
    assert_eq!(value(port, "locked").as_deref(), Some(&b"final"[..]));
    assert_eq!(version(port, "locked"), locked_version);
    assert_eq!(version(port, "other"), other_version);
    assert_eq!(list(port, ""), listed);
    // Sequence numbers keep growing after a compaction and a restart.
    assert!(etag(&put_key(port, "other", b"new")) > locked_version.max(other_version));
}

// ---------------------------------------------------------------------------
// PATCH increment / decrement
// ---------------------------------------------------------------------------

#[test]
fn increment_and_decrement_integers_with_default_and_given_steps() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put_key(port, "n", b"41").status, 201);

    let resp = patch_op(port, "n", "increment");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        body_json(&resp),
        json!({ "message": INCREMENTED, "value": 42 })
    );
    assert_eq!(value(port, "n").as_deref(), Some(&b"42"[..]));

    let resp = patch_value(port, "n", "decrement", json!(50));
    assert_eq!(
        body_json(&resp),
        json!({ "message": DECREMENTED, "value": -8 })
    );
    // A step given as a numeric string.
    let resp = patch_value(port, "n", "increment", json!("10"));
    assert_eq!(body_json(&resp)["value"], json!(2));
    let resp = patch_op(port, "n", "decrement");
    assert_eq!(body_json(&resp)["value"], json!(1));
    // A negative step.
    let resp = patch_value(port, "n", "increment", json!(-3));
    assert_eq!(body_json(&resp)["value"], json!(-2));
    assert_eq!(value(port, "n").as_deref(), Some(&b"-2"[..]));
}

#[test]
fn decimals_stay_decimals() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put_key(port, "d", b"1.5").status, 201);
    let resp = patch_value(port, "d", "increment", json!(1.5));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let doc = body_json(&resp);
    assert!(
        doc["value"].is_f64(),
        "value {} is not a decimal",
        doc["value"]
    );
    assert_eq!(doc["value"].as_f64(), Some(3.0));
    assert!(resp.text().contains("3.0"), "{}", resp.text());
    assert_eq!(value(port, "d").as_deref(), Some(&b"3.0"[..]));

    // An integer incremented by a decimal step becomes a decimal.
    assert_eq!(put_key(port, "i", b"2").status, 201);
    let resp = patch_value(port, "i", "increment", json!("0.5"));
    assert_eq!(body_json(&resp)["value"].as_f64(), Some(2.5));
    assert_eq!(value(port, "i").as_deref(), Some(&b"2.5"[..]));
    let resp = patch_value(port, "i", "decrement", json!(0.5));
    assert_eq!(body_json(&resp)["value"].as_f64(), Some(2.0));
    assert_eq!(value(port, "i").as_deref(), Some(&b"2.0"[..]));
    // A decimal incremented by an integer step stays a decimal.
    let resp = patch_op(port, "i", "increment");
    assert_eq!(body_json(&resp)["value"].as_f64(), Some(3.0));
    assert_eq!(value(port, "i").as_deref(), Some(&b"3.0"[..]));
}

#[test]
fn integer_overflow_is_refused_and_changes_nothing() {
    let node = Node::start();
    let port = node.port();
    let max = i64::MAX.to_string();
    let min = i64::MIN.to_string();
    assert_eq!(put_key(port, "max", max.as_bytes()).status, 201);
    assert_eq!(put_key(port, "min", min.as_bytes()).status, 201);
    let before = (version(port, "max"), version(port, "min"));

    assert_error(&patch_op(port, "max", "increment"), 400, None);
    assert_error(&patch_value(port, "min", "decrement", json!(1)), 400, None);
    assert_error(&patch_value(port, "min", "increment", json!(-1)), 400, None);
    assert_error(
        &patch_value(port, "max", "increment", json!(i64::MAX)),
        400,
        None,
    );

    assert_eq!(value(port, "max"), Some(max.clone().into_bytes()));
    assert_eq!(value(port, "min"), Some(min.clone().into_bytes()));
    assert_eq!((version(port, "max"), version(port, "min")), before);
    // The extremes themselves are reachable.
    assert_eq!(
        put_key(port, "max", (i64::MAX - 1).to_string().as_bytes()).status,
        200
    );
    let resp = patch_op(port, "max", "increment");
    assert_eq!(body_json(&resp)["value"], json!(i64::MAX));
    assert_eq!(value(port, "max"), Some(max.into_bytes()));
}

#[test]
fn integer_step_beyond_64_bits_is_refused() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put_key(port, "n", b"1").status, 201);
    // As a numeric string the step is refused...
    assert_error(
        &patch_value(port, "n", "increment", json!("9223372036854775808")),
        400,
        None,
    );
    // ...and as a JSON number it must be too: integers stay integers.
    let resp = patch(
        port,
        "n",
        r#"{"operation": "increment", "value": 9223372036854775808}"#,
    );
    assert_error(&resp, 400, None);
    assert_eq!(value(port, "n").as_deref(), Some(&b"1"[..]));
}

#[test]
fn decrement_by_the_smallest_integer_is_exact() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put_key(port, "n", b"-1").status, 201);
    // -1 - (-9223372036854775808) = 9223372036854775807 = i64::MAX.
    let resp = patch_value(port, "n", "decrement", json!(i64::MIN));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(body_json(&resp)["value"], json!(i64::MAX));
    assert_eq!(value(port, "n"), Some(i64::MAX.to_string().into_bytes()));
}

#[test]
fn non_numeric_values_cannot_be_incremented() {
    let node = Node::start();
    let port = node.port();
    let values: [&[u8]; 8] = [
        b"abc",
        b"\xff\xfe\x00\x01",
        b"",
        b"NaN",
        b"inf",
        b"1.2.3",
        b"12abc",
        b"0x10",
    ];
    for (i, stored) in values.iter().enumerate() {
        let key = format!("v{i}");
        assert_eq!(put_key(port, &key, stored).status, 201);
        let before = version(port, &key);
        for op in ["increment", "decrement"] {
            let resp = patch_op(port, &key, op);
            assert_error(&resp, 400, Some(NOT_NUMERIC));
        }
        assert_eq!(value(port, &key).as_deref(), Some(*stored), "{key}");
        assert_eq!(version(port, &key), before, "{key} was rewritten");
    }
    node.assert_serving();
}

#[test]
fn bad_steps_are_refused() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put_key(port, "n", b"5").status, 201);
    for step in [json!("x"), json!([1]), json!({}), json!(true), json!("")] {
        let resp = patch_value(port, "n", "increment", step);
        assert_error(&resp, 400, None);
    }
    assert_eq!(value(port, "n").as_deref(), Some(&b"5"[..]));
}

#[test]
fn increment_keeps_content_type_and_expiry() {
    let node = Node::start();
    let port = node.port();
    let resp = request(
        port,
        "PUT",
        "/api/kv/n?ttl=300",
        &[("Content-Type", "text/plain")],
        b"1",
    );
    assert_eq!(resp.status, 201);
    let expires = list(port, "prefix=n")["keys"][0]["expires_at"].clone();
    assert!(expires.is_u64(), "expires_at {expires}");
    assert_eq!(patch_op(port, "n", "increment").status, 200);
    let resp = get(port, "/api/kv/n");
    assert_eq!(resp.body, b"2");
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert_eq!(list(port, "prefix=n")["keys"][0]["expires_at"], expires);
}

#[test]
fn concurrent_increments_from_16_clients_lose_no_step() {
    const CLIENTS: usize = 16;
    const STEPS: usize = 40;
    let node = Node::start();
    let port = node.port();
    assert_eq!(put_key(port, "hits", b"0").status, 201);
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let mut conn = Conn::open(port);
                barrier.wait();
                for _ in 0..STEPS {
                    let resp = conn.send(
                        "PATCH",
                        "/api/kv/hits",
                        &[],
                        br#"{"operation":"increment"}"#,
                    );
                    assert_eq!(resp.status, 200, "{}", resp.text());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total = (CLIENTS * STEPS).to_string();
    assert_eq!(value(port, "hits"), Some(total.into_bytes()));
}

// ---------------------------------------------------------------------------
// PATCH ttl / persist, and bad PATCH requests
// ---------------------------------------------------------------------------

#[test]
fn patch_ttl_expires_the_key_and_persist_cancels_it() {
    let node = Node::start();
    let port = node.port();
    for key in ["short", "kept"] {
        assert_eq!(put_key(port, key, b"v").status, 201);
    }
    let resp = patch_value(port, "short", "ttl", json!(0.5));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(json_message(&resp.body).is_some(), "{}", resp.text());
    // A numeric string is accepted too. (2 s: time enough for the persist
    // to arrive before it, even on a loaded machine.)
    let kept_ttl_set = Instant::now();
    assert_eq!(patch_value(port, "kept", "ttl", json!("2")).status, 200);
    let resp = patch_op(port, "kept", "persist");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(json_message(&resp.body).is_some(), "{}", resp.text());

    wait_until("the key with ttl 0.5 s expires", EXPIRY_WAIT, || {
        value(port, "short").is_none()
    });
    // Well past the cancelled expiry, the persisted key is still there.
    sleep_until(kept_ttl_set + Duration::from_millis(3000));
    assert_eq!(value(port, "kept").as_deref(), Some(&b"v"[..]));
    assert_eq!(
        list(port, "prefix=kept")["keys"][0]["expires_at"],
        Value::Null
    );
    // Persist on a key without expiry is fine and changes nothing.
    let before = version(port, "kept");
    assert_eq!(patch_op(port, "kept", "persist").status, 200);
    assert_eq!(version(port, "kept"), before);
}

#[test]
fn patch_ttl_needs_positive_seconds() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put_key(port, "k", b"v").status, 201);
    for bad in [
        json!(0),
        json!(-1),
        json!("0"),
        json!("soon"),
        json!(null),
        json!([5]),
    ] {
        let resp = patch_value(port, "k", "ttl", bad.clone());
        assert_error(&resp, 400, None);
    }
    assert_error(&patch_op(port, "k", "ttl"), 400, None);
    assert_eq!(list(port, "prefix=k")["keys"][0]["expires_at"], Value::Null);
}

#[test]
fn malformed_patch_bodies_are_400_with_a_message() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put_key(port, "k", b"1").status, 201);
    let before = version(port, "k");
    let cases: [(&str, &str); 7] = [
        (r#"{"operation": "explode"}"#, "explode"),
        (r#"{"value": 1}"#, "operation"),
        (
            r#"{"operation": "increment", "value": 1, "extra": 2}"#,
            "extra",
        ),
        ("not json", "JSON"),
        ("", "JSON"),
        (r#"{"operation": 5}"#, "JSON"),
        (r#"["increment"]"#, "JSON"),
    ];
    for (body, named) in cases {
        let resp = patch(port, "k", body);
        assert_error(&resp, 400, None);
        let message = json_message(&resp.body).unwrap();
        assert!(
            message.contains(named),
            "PATCH {body:?}: message {message:?} does not name {named:?}"
        );
    }
    assert_eq!(version(port, "k"), before);
    assert_eq!(value(port, "k").as_deref(), Some(&b"1"[..]));
}

#[test]
fn patch_on_a_missing_key_is_404() {
    let node = Node::start();
    let port = node.port();
    for op in ["lock", "unlock", "increment", "decrement", "persist"] {
        assert_error(&patch_op(port, "absent", op), 404, Some(NOT_FOUND));
    }
    assert_error(
        &patch_value(port, "absent", "ttl", json!(5)),
        404,
        Some(NOT_FOUND),
    );
    // Deleted keys are missing too.
    assert_eq!(put_key(port, "gone", b"1").status, 201);
    assert_eq!(delete(port, "/api/kv/gone").status, 200);
    assert_error(&patch_op(port, "gone", "increment"), 404, Some(NOT_FOUND));
    assert_eq!(value(port, "absent"), None);
}

// ---------------------------------------------------------------------------
// TTL at write time, expiry and the sweep
// ---------------------------------------------------------------------------

#[test]
fn put_with_ttl_expires_the_key_everywhere() {
    let node = Node::start();
    let port = node.port();
    let written = now_ms();
    assert_message(&put(port, "/api/kv/temp?ttl=1", b"reading"), 201, CREATED);
    let listed = list(port, "prefix=temp");
    let expires = listed["keys"][0]["expires_at"]
        .as_u64()
        .expect("expires_at");
    assert!(
        expires >= written + 1000 && expires <= now_ms() + 1000,
        "expires_at {expires} is not about 1 s after the write at {written}"
    );
    wait_until("the key with ttl 1 s expires", EXPIRY_WAIT, || {
        value(port, "temp").is_none()
    });
    assert_error(&get(port, "/api/kv/temp"), 404, Some(NOT_FOUND));
    assert_eq!(request(port, "HEAD", "/api/kv/temp", &[], b"").status, 404);
    assert_eq!(names(&list(port, "")), Vec::<String>::new());
    assert_error(&patch_op(port, "temp", "increment"), 404, Some(NOT_FOUND));
    assert_error(&delete(port, "/api/kv/temp"), 404, Some(NOT_FOUND));
    // An expired key is created anew.
    assert_message(&put(port, "/api/kv/temp", b"again"), 201, CREATED);
    assert_eq!(value(port, "temp").as_deref(), Some(&b"again"[..]));
}

#[test]
fn decimal_ttl_is_accepted() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put(port, "/api/kv/k?ttl=0.3", b"v").status, 201);
    wait_until("the key with ttl 0.3 s expires", EXPIRY_WAIT, || {
        value(port, "k").is_none()
    });
}

#[test]
fn bad_ttl_or_unknown_query_parameter_is_400_and_writes_nothing() {
    let node = Node::start();
    let port = node.port();
    for query in [
        "ttl=0",
        "ttl=-1",
        "ttl=abc",
        "ttl=",
        "ttl=NaN",
        "ttl=1&ttl=2",
        "tll=5",
        "x=1",
    ] {
        let resp = put(port, &format!("/api/kv/k?{query}"), b"v");
        assert_error(&resp, 400, None);
        assert_eq!(value(port, "k"), None, "?{query} wrote the key");
    }
    assert_error(&get(port, "/api/kv/k?ttl=5"), 400, None);
    // Out of bounds: each says which bound.
    for (query, message) in [
        ("ttl=0.0001", "The ttl query parameter must be at least 0.001 seconds (expiry times count milliseconds), like ?ttl=60."),
        ("ttl=3155760001", "The ttl query parameter must be at most 3155760000 seconds (100 years), like ?ttl=60."),
    ] {
        let resp = put(port, &format!("/api/kv/k?{query}"), b"v");
        assert_message(&resp, 400, message);
        assert_eq!(value(port, "k"), None, "?{query} wrote the key");
    }
}

#[test]
fn put_without_ttl_clears_a_previous_ttl() {
    let node = Node::start();
    let port = node.port();
    // 2 s: time enough for the next PUT to arrive first on a loaded machine.
    let first = Instant::now();
    assert_eq!(put(port, "/api/kv/k?ttl=2", b"v1").status, 201);
    assert_eq!(put(port, "/api/kv/k", b"v2").status, 200);
    assert_eq!(list(port, "prefix=k")["keys"][0]["expires_at"], Value::Null);
    // And a PUT with a ttl replaces the previous one.
    assert_eq!(put(port, "/api/kv/j?ttl=2", b"v3").status, 201);
    assert_eq!(put(port, "/api/kv/j?ttl=3600", b"v4").status, 200);
    sleep_until(first + Duration::from_millis(3000));
    assert_eq!(value(port, "k").as_deref(), Some(&b"v2"[..]));
    assert_eq!(value(port, "j").as_deref(), Some(&b"v4"[..]));
}

#[test]
fn sweep_writes_a_tombstone_and_expired_keys_stay_gone_after_restart() {
    let mut node = Node::start();
    let port = node.port();
    assert_eq!(put(port, "/api/kv/gone?ttl=0.3", b"v").status, 201);
    assert_eq!(put(port, "/api/kv/stays", b"v").status, 201);
    let log_len = || fs::metadata(node.data_log()).unwrap().len();
    let before = log_len();
    // Nobody writes now: the log can only grow by the sweep's tombstone.
    wait_until("the sweep appends a tombstone", EXPIRY_WAIT, || {
        log_len() > before
    });
    assert_eq!(value(port, "gone"), None);
    for restart in RESTARTS {
        restart.apply(&mut node);
        let port = node.port();
        assert_eq!(value(port, "gone"), None, "{restart:?}");
        assert_eq!(names(&list(port, "")), ["stays"], "{restart:?}");
    }
    assert_eq!(put(node.port(), "/api/kv/gone", b"new").status, 201);
}

#[test]
fn sweep_purges_keys_that_expire_after_a_restart() {
    for restart in RESTARTS {
        let mut node = Node::start();
        assert_eq!(put(node.port(), "/api/kv/k?ttl=4", b"v").status, 201);
        restart.apply(&mut node);
        assert!(
            value(node.port(), "k").is_some(),
            "the key expired before the restart was over"
        );
        let log_len = || fs::metadata(node.data_log()).unwrap().len();
        let before = log_len();
        wait_until(
            &format!("the sweep appends a tombstone after a {restart:?} restart"),
            EXPIRY_WAIT,
            || log_len() > before,
        );
        assert_eq!(value(node.port(), "k"), None);
    }
}

#[test]
fn sweep_clears_a_backlog_larger_than_one_round() {
    let node = Node::start();
    let port = node.port();
    // The sweep expires at most 1000 keys per round.
    for chunk in 0..3 {
        let ops: Vec<Value> = (0..900)
            .map(|i| json!({ "op": "put", "key": format!("t{chunk}-{i:03}"), "value": "v", "ttl": 2 }))
            .collect();
        assert_eq!(batch(port, json!(ops)).status, 200);
    }
    assert_eq!(put_key(port, "kept", b"v").status, 201);
    let indexed = || {
        let resp = get(port, "/api/admin/stats");
        assert_eq!(resp.status, 200);
        body_json(&resp)["keys"].as_u64().expect("keys in stats")
    };
    assert_eq!(indexed(), 2701);
    // Expired keys stay indexed until the sweep writes their tombstones.
    wait_until("the sweep purges 2700 expired keys", EXPIRY_WAIT, || {
        indexed() == 1
    });
    assert_eq!(names(&list(port, "")), ["kept"]);
}

#[test]
fn expiry_and_persist_survive_restarts() {
    let mut node = Node::start();
    let port = node.port();
    assert_eq!(put(port, "/api/kv/later?ttl=3600", b"v").status, 201);
    assert_eq!(put_key(port, "kept", b"v").status, 201);
    assert_eq!(patch_value(port, "kept", "ttl", json!(60)).status, 200);
    assert_eq!(patch_op(port, "kept", "persist").status, 200);
    assert_eq!(put(port, "/api/kv/soon?ttl=2", b"v").status, 201);
    let expires = list(port, "prefix=later")["keys"][0]["expires_at"].clone();
    assert!(expires.is_u64());
    for restart in RESTARTS {
        restart.apply(&mut node);
        let port = node.port();
        assert_eq!(
            list(port, "prefix=later")["keys"][0]["expires_at"],
            expires,
            "{restart:?}"
        );
        assert_eq!(
            list(port, "prefix=kept")["keys"][0]["expires_at"],
            Value::Null,
            "{restart:?}"
        );
    }
    let port = node.port();
    wait_until(
        "the key with ttl 2 s expires after restarts",
        EXPIRY_WAIT,
        || value(port, "soon").is_none(),
    );
    assert_eq!(value(port, "kept").as_deref(), Some(&b"v"[..]));
    assert_eq!(value(port, "later").as_deref(), Some(&b"v"[..]));
}

// ---------------------------------------------------------------------------
// Versions, ETag and conditional requests
// ---------------------------------------------------------------------------

#[test]
fn every_write_returns_the_etag_that_reads_return() {
    let node = Node::start();
    let port = node.port();
    let mut last = 0;
    let mut check = |resp: Response, key: &str| {
        assert!(resp.status < 300, "{}", resp.text());
        let written = etag(&resp);
        assert!(written > last, "version {written} after {last}");
        last = written;
        assert_eq!(version(port, key), written, "GET {key} after the write");
        let head = request(port, "HEAD", &kv_path(key), &[], b"");
        assert_eq!(etag(&head), written, "HEAD {key}");
    };
    check(put_key(port, "a", b"1"), "a");
    check(put_key(port, "b", b"1"), "b");
    check(put_key(port, "a", b"2"), "a");
    check(patch_op(port, "a", "increment"), "a");
    check(patch_value(port, "a", "ttl", json!(600)), "a");
    check(patch_op(port, "a", "persist"), "a");
    check(patch_op(port, "a", "lock"), "a");
    check(patch_op(port, "a", "unlock"), "a");
    check(put(port, "/api/kv/b?ttl=600", b"2"), "b");
}

#[test]
fn if_match_guards_put_delete_and_patch() {
    let node = Node::start();
    let port = node.port();
    let v1 = etag(&put_key(port, "k", b"1"));
    let stale = format!("\"{v1}\"");
    let v2 = etag(&put_key(port, "k", b"2"));
    let current = format!("\"{v2}\"");
    let if_stale = [("If-Match", stale.as_str())];

    assert_error(
        &request(port, "PUT", "/api/kv/k", &if_stale, b"x"),
        412,
        None,
    );
    assert_error(
        &request(port, "DELETE", "/api/kv/k", &if_stale, b""),
        412,
        None,
    );
    assert_error(
        &patch_if(port, "k", &if_stale, r#"{"operation":"increment"}"#),
        412,
        None,
    );
    assert_error(
        &patch_if(port, "k", &if_stale, r#"{"operation":"lock"}"#),
        412,
        None,
    );
    assert_eq!(value(port, "k").as_deref(), Some(&b"2"[..]));
    assert_eq!(version(port, "k"), v2);

    let resp = patch_if(
        port,
        "k",
        &[("If-Match", current.as_str())],
        r#"{"operation":"increment"}"#,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v3 = etag(&resp);
    let resp = request(
        port,
        "PUT",
        "/api/kv/k",
        &[("If-Match", &format!("\"{v3}\""))],
        b"10",
    );
    assert_message(&resp, 200, UPDATED);
    let v4 = etag(&resp);
    assert_error(
        &request(
            port,
            "DELETE",
            "/api/kv/k",
            &[("If-Match", &format!("\"{v3}\""))],
            b"",
        ),
        412,
        None,
    );
    let resp = request(
        port,
        "DELETE",
        "/api/kv/k",
        &[("If-Match", &format!("\"{v4}\""))],
        b"",
    );
    assert_message(&resp, 200, DELETED);
    assert_eq!(value(port, "k"), None);
}

#[test]
fn if_match_on_a_missing_key_fails_and_creates_nothing() {
    let node = Node::start();
    let port = node.port();
    for tag in ["*", "\"1\""] {
        let resp = request(port, "PUT", "/api/kv/k", &[("If-Match", tag)], b"v");
        assert_error(&resp, 412, None);
        assert_eq!(value(port, "k"), None, "If-Match: {tag}");
    }
    assert_eq!(put_key(port, "k", b"v").status, 201);
    let resp = request(port, "PUT", "/api/kv/k", &[("If-Match", "*")], b"w");
    assert_message(&resp, 200, UPDATED);
    let resp = request(port, "DELETE", "/api/kv/k", &[("If-Match", "*")], b"");
    assert_message(&resp, 200, DELETED);
}

#[test]
fn if_none_match_star_makes_put_create_only() {
    let node = Node::start();
    let port = node.port();
    let create = |value: &[u8]| request(port, "PUT", "/api/kv/k", &[("If-None-Match", "*")], value);
    assert_message(&create(b"first"), 201, CREATED);
    let v = version(port, "k");
    assert_error(&create(b"second"), 412, None);
    assert_eq!(value(port, "k").as_deref(), Some(&b"first"[..]));
    assert_eq!(version(port, "k"), v);
    // Once deleted, it can be created again.
    assert_eq!(delete(port, "/api/kv/k").status, 200);
    assert_message(&create(b"third"), 201, CREATED);
}

#[test]
fn if_none_match_on_get_answers_304_while_unchanged() {
    let node = Node::start();
    let port = node.port();
    let v1 = etag(&put_key(port, "k", b"value"));
    let tag = format!("\"{v1}\"");
    let mut conn = Conn::open(port);
    let resp = conn.send("GET", "/api/kv/k", &[("If-None-Match", &tag)], b"");
    assert_eq!(resp.status, 304);
    assert_eq!(etag(&resp), v1);
    assert!(resp.body.is_empty());
    let head = conn.send("HEAD", "/api/kv/k", &[("If-None-Match", &tag)], b"");
    assert_eq!(head.status, 304);
    // The 304 carried no body: the next response on the connection parses.
    let plain = conn.send("GET", "/api/kv/k", &[], b"");
    assert_eq!((plain.status, plain.body.as_slice()), (200, &b"value"[..]));
    // Another tag, or a list without ours, gets the value.
    let other = format!("\"{}\", \"{}\"", v1 + 100, v1 + 101);
    let resp = conn.send("GET", "/api/kv/k", &[("If-None-Match", &other)], b"");
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"value"[..]));

    let v2 = etag(&put_key(port, "k", b"changed"));
    let resp = conn.send("GET", "/api/kv/k", &[("If-None-Match", &tag)], b"");
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"changed"[..]));
    assert_eq!(etag(&resp), v2);
}

#[test]
fn conflicting_or_malformed_conditions_are_400() {
    let node = Node::start();
    let port = node.port();
    let v = etag(&put_key(port, "k", b"1"));
    let tag = format!("\"{v}\"");
    let both = [("If-Match", tag.as_str()), ("If-None-Match", "*")];
    let unquoted = v.to_string();
    let bare = [("If-Match", unquoted.as_str())];
    for headers in [&both[..], &bare[..]] {
        assert_error(&request(port, "PUT", "/api/kv/k", headers, b"2"), 400, None);
        assert_error(
            &request(port, "DELETE", "/api/kv/k", headers, b""),
            400,
            None,
        );
        assert_error(
            &patch_if(port, "k", headers, r#"{"operation":"increment"}"#),
            400,
            None,
        );
    }
    assert_eq!(value(port, "k").as_deref(), Some(&b"1"[..]));
    assert_eq!(version(port, "k"), v);
}

#[test]
fn cas_increments_from_16_clients_are_linearizable() {
    const CLIENTS: usize = 16;
    const WINS_EACH: usize = 15;
    let node = Node::start();
    let port = node.port();
    assert_eq!(put_key(port, "counter", b"0").status, 201);
    let successes = Arc::new(AtomicUsize::new(0));
    let conflicts = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let deadline = Instant::now() + Duration::from_secs(120);
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (successes, conflicts) = (Arc::clone(&successes), Arc::clone(&conflicts));
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let mut conn = Conn::open(port);
                barrier.wait();
                let mut wins = 0;
                while wins < WINS_EACH {
                    assert!(Instant::now() < deadline, "CAS loop did not finish in time");
                    let read = conn.send("GET", "/api/kv/counter", &[], b"");
                    assert_eq!(read.status, 200);
                    let n: u64 = read.text().parse().expect("a number");
                    let tag = format!("\"{}\"", etag(&read));
                    let next = (n + 1).to_string();
                    let resp = conn.send(
                        "PUT",
                        "/api/kv/counter",
                        &[("If-Match", &tag)],
                        next.as_bytes(),
                    );
                    match resp.status {
                        200..=299 => {
                            wins += 1;
                            successes.fetch_add(1, Ordering::SeqCst);
                        }
                        412 => {
                            conflicts.fetch_add(1, Ordering::SeqCst);
                        }
                        other => panic!("CAS PUT answered {other}: {}", resp.text()),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let successes = successes.load(Ordering::SeqCst);
    assert_eq!(successes, CLIENTS * WINS_EACH);
    assert_eq!(
        value(port, "counter"),
        Some(successes.to_string().into_bytes())
    );
    eprintln!(
        "{successes} CAS increments, {} conflicts",
        conflicts.load(Ordering::SeqCst)
    );
}

#[test]
fn versions_survive_restarts() {
    let mut node = Node::start();
    let port = node.port();
    for key in ["a", "b", "c"] {
        assert_eq!(put_key(port, key, key.as_bytes()).status, 201);
    }
    assert_eq!(patch_op(port, "b", "lock").status, 200);
    assert_eq!(delete(port, "/api/kv/c").status, 200);
    let mut highest = etag(&put_key(port, "c", b"c"));
    for restart in RESTARTS {
        let before = (version(node.port(), "a"), version(node.port(), "b"));
        restart.apply(&mut node);
        let port = node.port();
        assert_eq!(
            (version(port, "a"), version(port, "b")),
            before,
            "{restart:?}"
        );
        // The version read before the restart still works for a CAS...
        let tag = format!("\"{}\"", before.0);
        let resp = request(port, "PUT", "/api/kv/a", &[("If-Match", &tag)], b"a");
        assert_message(&resp, 200, UPDATED);
        // ...and new versions are higher than any before the restart.
        let written = etag(&resp);
        assert!(
            written > highest,
            "{restart:?}: new version {written} <= {highest}"
        );
        highest = etag(&put_key(port, "c", b"c"));
    }
}

// ---------------------------------------------------------------------------
// Prefix listing
// ---------------------------------------------------------------------------

/// `count` keys `{prefix}{i:04}` with value `v{i}`, written by batches.
fn fill(port: u16, prefix: &str, count: usize) -> Vec<String> {
    let keys: Vec<String> = (0..count).map(|i| format!("{prefix}{i:04}")).collect();
    for chunk in keys.chunks(500) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|key| json!({ "op": "put", "key": key, "value": format!("v-{key}") }))
            .collect();
        let resp = batch(port, json!(ops));
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    keys
}

#[test]
fn listing_shows_sorted_keys_with_their_metadata() {
    let node = Node::start();
    let port = node.port();
    let started = now_ms();
    let typed = |path: &str, ct: &str, value: &[u8]| {
        let resp = request(port, "PUT", path, &[("Content-Type", ct)], value);
        assert_eq!(resp.status, 201, "{}", resp.text());
        etag(&resp)
    };
    let v_b = typed(
        "/api/kv/svc/b?ttl=3600",
        "application/json",
        b"{\"port\":1}",
    );
    typed("/api/kv/svc/a", "text/plain", b"hello");
    let v_a = etag(&patch_op(port, "svc/a", "lock"));
    let v_c = etag(&put_key(port, "svc/c", b""));
    for outside in ["sv", "svd", "a", "svc"] {
        assert_eq!(put_key(port, outside, b"x").status, 201);
    }

    let page = list(port, "prefix=svc/");
    assert_eq!(page["next"], Value::Null);
    let keys = page["keys"].as_array().unwrap();
    assert_eq!(names(&page), ["svc/a", "svc/b", "svc/c"]);
    let (a, b, c) = (&keys[0], &keys[1], &keys[2]);
    assert_eq!(a["size"], 5);
    assert_eq!(a["version"], v_a);
    assert_eq!(a["content_type"], "text/plain");
    assert_eq!(a["expires_at"], Value::Null);
    assert_eq!(a["locked"], true);
    assert_eq!(b["size"], 10);
    assert_eq!(b["version"], v_b);
    assert_eq!(b["content_type"], "application/json");
    assert_eq!(b["locked"], false);
    let expires = b["expires_at"]
        .as_u64()
        .expect("expires_at of a key with ttl");
    assert!(
        expires >= started + 3_600_000 && expires <= now_ms() + 3_600_000,
        "expires_at {expires}"
    );
    assert_eq!(c["size"], 0);
    assert_eq!(c["version"], v_c);
    assert_eq!(c["content_type"], "application/octet-stream");
    for entry in keys {
        let updated = entry["updated_at"].as_u64().expect("updated_at");
        assert!(
            updated + 1000 >= started && updated <= now_ms() + 1000,
            "updated_at {updated} is not the time of the write"
        );
        let mut fields: Vec<&str> = entry
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "content_type",
                "expires_at",
                "key",
                "locked",
                "size",
                "updated_at",
                "version"
            ]
        );
    }
    // No prefix: every key, sorted.
    assert_eq!(
        names(&list(port, "")),
        ["a", "sv", "svc", "svc/a", "svc/b", "svc/c", "svd"]
    );
}

#[test]
fn paging_through_250_keys_lists_each_exactly_once() {
    let node = Node::start();
    let port = node.port();
    let keys = fill(port, "page/", 250);
    fill(port, "other/", 20);
    fill(port, "pagf", 5);

    let first = list(port, "prefix=page/");
    assert_eq!(names(&first).len(), 100, "default limit");
    assert_eq!(first["next"], keys[99].as_str());

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = "prefix=page%2F&limit=70".to_string();
        if let Some(after) = &after {
            query.push_str(&format!("&after={}", after.replace('/', "%2F")));
        }
        let page = list(port, &query);
        pages += 1;
        assert!(pages <= 10, "paging does not end");
        let page_keys = names(&page);
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(page_keys.len(), 70);
                assert_eq!(Some(next), page_keys.last().map(String::as_str));
                after = Some(next.to_string());
                seen.extend(page_keys);
            }
            None => {
                assert_eq!(page["next"], Value::Null);
                seen.extend(page_keys);
                break;
            }
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, keys);

    // A page that ends exactly at the last key says there is no more.
    let all = list(port, "prefix=page/&limit=250");
    assert_eq!(names(&all), keys);
    assert_eq!(all["next"], Value::Null);
    let max = list(port, "limit=1000");
    assert_eq!(names(&max).len(), 275);
}

#[test]
fn listing_limit_must_be_1_to_1000() {
    let node = Node::start();
    let port = node.port();
    fill(port, "k", 3);
    for limit in ["0", "1001", "abc", "-1", "", "1.5"] {
        let resp = get(port, &format!("/api/kv?limit={limit}"));
        assert_error(&resp, 400, None);
    }
    assert_eq!(names(&list(port, "limit=1")).len(), 1);
    assert_eq!(names(&list(port, "limit=1000")).len(), 3);
}

#[test]
fn keys_only_lists_names() {
    let node = Node::start();
    let port = node.port();
    let keys = fill(port, "n/", 5);
    let page = list(port, "prefix=n/&keys_only=true&limit=3");
    assert_eq!(page, json!({ "keys": &keys[..3], "next": keys[2] }));
    let rest = list(port, &format!("prefix=n/&keys_only=true&after={}", keys[2]));
    assert_eq!(rest, json!({ "keys": &keys[3..], "next": null }));
    // keys_only=false is the full listing.
    let full = list(port, "prefix=n/&keys_only=false");
    assert!(full["keys"][0].is_object());
    assert_error(&get(port, "/api/kv?keys_only=yes"), 400, None);
}

#[test]
fn listing_prefix_and_after_are_percent_decoded() {
    let node = Node::start();
    let port = node.port();
    for key in ["a/b/1", "a/b/2", "a/b c", "a/bz", "a/c", "é/1"] {
        assert_eq!(put_key(port, key, b"v").status, 201);
    }
    assert_eq!(names(&list(port, "prefix=a%2Fb%2F")), ["a/b/1", "a/b/2"]);
    assert_eq!(names(&list(port, "prefix=a%2Fb%20")), ["a/b c"]);
    assert_eq!(
        names(&list(port, "prefix=a%2Fb&after=a%2Fb%2F1")),
        ["a/b/2", "a/bz"]
    );
    assert_eq!(names(&list(port, "prefix=%C3%A9")), ["é/1"]);
    assert_eq!(names(&list(port, "prefix=zzz")), Vec::<String>::new());
    assert_error(&get(port, "/api/kv?prefix=%zz"), 400, None);
}

#[test]
fn listing_leaves_out_deleted_and_expired_keys() {
    let node = Node::start();
    let port = node.port();
    fill(port, "k", 4);
    assert_eq!(delete(port, "/api/kv/k0001").status, 200);
    assert_eq!(put(port, "/api/kv/k0002?ttl=0.3", b"short").status, 200);
    assert_eq!(patch_value(port, "k0003", "ttl", json!(0.3)).status, 200);
    wait_until("keys with ttl 0.3 s expire", EXPIRY_WAIT, || {
        value(port, "k0002").is_none() && value(port, "k0003").is_none()
    });
    // Listed as gone at once, whether or not the sweep ran yet.
    assert_eq!(names(&list(port, "")), ["k0000"]);
    assert_eq!(names(&list(port, "keys_only=true")), ["k0000"]);
}

#[test]
fn listing_refuses_unknown_parameters_and_other_methods() {
    let node = Node::start();
    let port = node.port();
    for query in ["prefx=a", "prefix=a&prefix=b", "offset=3"] {
        assert_error(&get(port, &format!("/api/kv?{query}")), 400, None);
    }
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let resp = request(port, method, "/api/kv", &[], b"");
        assert_error(&resp, 405, None);
        assert!(resp.header("allow").is_some(), "{method}: no Allow header");
    }
}

// ---------------------------------------------------------------------------
// Atomic batches
// ---------------------------------------------------------------------------

#[test]
fn batch_applies_puts_and_deletes_and_reports_each() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put_key(port, "old", b"1").status, 201);
    assert_eq!(put_key(port, "doomed", b"1").status, 201);
    let resp = batch(
        port,
        json!([
            { "op": "put", "key": "new", "value": "fresh", "content_type": "text/plain" },
            { "op": "put", "key": "old", "value": "2" },
            { "op": "delete", "key": "never" },
            { "op": "delete", "key": "doomed" },
        ]),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let results = body_json(&resp)["results"].clone();
    let v_new = results[0]["version"].as_u64().expect("version of a put");
    let v_old = results[1]["version"].as_u64().expect("version of a put");
    assert_eq!(
        results,
        json!([
            { "op": "put", "key": "new", "status": 201, "version": v_new },
            { "op": "put", "key": "old", "status": 200, "version": v_old },
            { "op": "delete", "key": "never", "status": 404, "version": null },
            { "op": "delete", "key": "doomed", "status": 200, "version": null },
        ])
    );
    assert!(v_old > v_new);
    assert_eq!(version(port, "new"), v_new);
    assert_eq!(version(port, "old"), v_old);
    let resp = get(port, "/api/kv/new");
    assert_eq!(resp.body, b"fresh");
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert_eq!(value(port, "old").as_deref(), Some(&b"2"[..]));
    assert_eq!(value(port, "doomed"), None);
    // Versions go on after the batch.
    assert!(etag(&put_key(port, "after", b"x")) > v_old);
}

#[test]
fn batch_value_base64_round_trips_binary_bytes() {
    let node = Node::start();
    let port = node.port();
    let bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let resp = batch(
        port,
        json!([
            { "op": "put", "key": "blob", "value_base64": encoded, "content_type": "image/png" },
            { "op": "put", "key": "empty", "value_base64": "" },
            { "op": "put", "key": "text", "value": "héllo\n\u{0}" },
        ]),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = get(port, "/api/kv/blob");
    assert_eq!(resp.body, bytes);
    assert_eq!(resp.header("content-type"), Some("image/png"));
    let resp = get(port, "/api/kv/empty");
    assert_eq!((resp.status, resp.body.len()), (200, 0));
    assert_eq!(
        resp.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        value(port, "text"),
        Some("héllo\n\u{0}".as_bytes().to_vec())
    );
}

#[test]
fn batch_refuses_content_types_that_cannot_be_a_header() {
    let node = Node::start();
    let port = node.port();
    for content_type in [
        "text/plain\r\nSet-Cookie: evil=1",
        "text/plain\nX-Evil: 1",
        "a\u{0}b",
    ] {
        let resp = batch(
            port,
            json!([{ "op": "put", "key": "k", "value": "v", "content_type": content_type }]),
        );
        if resp.status == 200 {
            // Accepted: then it must never reach the wire as extra headers.
            let got = get(port, "/api/kv/k");
            assert!(
                got.header("set-cookie").is_none() && got.header("x-evil").is_none(),
                "content_type {content_type:?} injected headers: {:?}",
                got.headers
            );
        }
        assert_error(&resp, 400, None);
        assert_eq!(
            value(port, "k"),
            None,
            "content_type {content_type:?} was stored"
        );
    }
}

#[test]
fn malformed_batches_are_400_and_apply_nothing() {
    let node = Node::start();
    let port = node.port();
    let ok = json!({ "op": "put", "key": "applied?", "value": "yes" });
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({ "op": "put", "key": format!("m{i}"), "value": "v" }))
        .collect();
    let cases: Vec<(&str, String)> = vec![
        ("empty", json!({ "operations": [] }).to_string()),
        ("1001 operations", json!({ "operations": many }).to_string()),
        (
            "duplicate key",
            json!({ "operations": [ok, { "op": "delete", "key": "applied?" }] }).to_string(),
        ),
        (
            "both values",
            json!({ "operations": [ok, { "op": "put", "key": "b", "value": "x", "value_base64": "eA==" }] })
                .to_string(),
        ),
        (
            "no value",
            json!({ "operations": [ok, { "op": "put", "key": "b" }] }).to_string(),
        ),
        (
            "bad base64",
            json!({ "operations": [ok, { "op": "put", "key": "b", "value_base64": "not base64!" }] })
                .to_string(),
        ),
        (
            "delete with a value",
            json!({ "operations": [ok, { "op": "delete", "key": "b", "value": "x" }] }).to_string(),
        ),
        (
            "unknown op",
            json!({ "operations": [ok, { "op": "rename", "key": "b" }] }).to_string(),
        ),
        (
            "empty key",
            json!({ "operations": [ok, { "op": "put", "key": "", "value": "x" }] }).to_string(),
        ),
        (
            "NUL in a key",
            json!({ "operations": [ok, { "op": "put", "key": "a\0b", "value": "x" }] }).to_string(),
        ),
        (
            "bad ttl",
            json!({ "operations": [ok, { "op": "put", "key": "b", "value": "x", "ttl": 0 }] })
                .to_string(),
        ),
        (
            "unknown field",
            json!({ "operations": [ok, { "op": "put", "key": "b", "value": "x", "vesion": 1 }] })
                .to_string(),
        ),
        ("no operations", "{}".to_string()),
        ("not JSON", "put a=1".to_string()),
    ];
    for (what, body) in cases {
        let resp = batch_raw(port, &body);
        assert_eq!(resp.status, 400, "{what}: {}", resp.text());
        assert!(
            json_message(&resp.body).is_some(),
            "{what}: {}",
            resp.text()
        );
        assert_eq!(value(port, "applied?"), None, "{what}: a batch was applied");
    }
    assert_eq!(names(&list(port, "")), Vec::<String>::new());
}

#[test]
fn batch_of_1000_operations_is_accepted() {
    let node = Node::start();
    let port = node.port();
    let keys = fill(port, "x", 1000); // two batches of 500
    let ops: Vec<Value> = keys
        .iter()
        .map(|key| json!({ "op": "delete", "key": key }))
        .collect();
    let resp = batch(port, json!(ops));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let results = body_json(&resp)["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 1000);
    assert!(results.iter().all(|r| r["status"] == 200));
    assert_eq!(names(&list(port, "")), Vec::<String>::new());
}

#[test]
fn batch_with_a_stale_version_applies_nothing() {
    let node = Node::start();
    let port = node.port();
    let va = etag(&put_key(port, "a", b"a1"));
    let vb = etag(&put_key(port, "b", b"b1"));
    let resp = batch(
        port,
        json!([
            { "op": "put", "key": "a", "value": "a2", "version": va },
            { "op": "put", "key": "new", "value": "n" },
            { "op": "delete", "key": "b", "version": vb + 1000 },
        ]),
    );
    assert_eq!(resp.status, 412, "{}", resp.text());
    let doc = body_json(&resp);
    assert_eq!(doc["operation"], 2);
    assert!(doc["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(value(port, "a").as_deref(), Some(&b"a1"[..]));
    assert_eq!(version(port, "a"), va);
    assert_eq!(value(port, "b").as_deref(), Some(&b"b1"[..]));
    assert_eq!(value(port, "new"), None);

    // version 0: the key must not exist.
    let resp = batch(
        port,
        json!([
            { "op": "put", "key": "new", "value": "n", "version": 0 },
            { "op": "put", "key": "a", "value": "a2", "version": 0 },
        ]),
    );
    assert_eq!(resp.status, 412, "{}", resp.text());
    assert_eq!(body_json(&resp)["operation"], 1);
    assert_eq!(value(port, "new"), None);

    // With matching versions everything is applied.
    let resp = batch(
        port,
        json!([
            { "op": "put", "key": "new", "value": "n", "version": 0 },
            { "op": "put", "key": "a", "value": "a2", "version": va },
            { "op": "delete", "key": "b", "version": vb },
        ]),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(value(port, "new").as_deref(), Some(&b"n"[..]));
    assert_eq!(value(port, "a").as_deref(), Some(&b"a2"[..]));
    assert_eq!(value(port, "b"), None);
}

#[test]
fn batch_touching_a_locked_key_applies_nothing() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put_key(port, "free", b"1").status, 201);
    assert_eq!(put_key(port, "cfg", b"1").status, 201);
    assert_eq!(patch_op(port, "cfg", "lock").status, 200);
    for locked_op in [
        json!({ "op": "put", "key": "cfg", "value": "2" }),
        json!({ "op": "delete", "key": "cfg" }),
    ] {
        let resp = batch(
            port,
            json!([
                { "op": "put", "key": "free", "value": "2" },
                { "op": "put", "key": "created", "value": "2" },
                locked_op,
            ]),
        );
        assert_eq!(resp.status, 409, "{}", resp.text());
        let doc = body_json(&resp);
        assert_eq!(doc["operation"], 2);
        assert!(doc["message"]
            .as_str()
            .is_some_and(|m| m.contains("locked")));
        assert_eq!(value(port, "free").as_deref(), Some(&b"1"[..]));
        assert_eq!(value(port, "created"), None);
        assert_eq!(value(port, "cfg").as_deref(), Some(&b"1"[..]));
    }
}

#[test]
fn batch_put_with_ttl_expires() {
    let node = Node::start();
    let port = node.port();
    let resp = batch(
        port,
        json!([
            { "op": "put", "key": "short", "value": "v", "ttl": 0.3 },
            { "op": "put", "key": "long", "value": "v", "ttl": "3600" },
            { "op": "put", "key": "forever", "value": "v" },
        ]),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(list(port, "prefix=long")["keys"][0]["expires_at"].is_u64());
    wait_until("the batch key with ttl 0.3 s expires", EXPIRY_WAIT, || {
        value(port, "short").is_none()
    });
    assert_eq!(names(&list(port, "")), ["forever", "long"]);
}

#[test]
fn batch_survives_clean_restart_and_kill9() {
    let mut node = Node::start();
    for (round, restart) in RESTARTS.into_iter().enumerate() {
        let port = node.port();
        let value_of_round = format!("round {round}");
        let previous = round
            .checked_sub(1)
            .map_or("only-none".to_string(), |r| format!("only-{r}"));
        let resp = batch(
            port,
            json!([
                { "op": "put", "key": "a", "value": value_of_round },
                { "op": "put", "key": format!("only-{round}"), "value_base64": "AAEC" },
                { "op": "delete", "key": previous },
            ]),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        let va = version(port, "a");
        restart.apply(&mut node);
        let port = node.port();
        assert_eq!(
            value(port, "a"),
            Some(value_of_round.into_bytes()),
            "{restart:?}"
        );
        assert_eq!(version(port, "a"), va, "{restart:?}");
        assert_eq!(
            names(&list(port, "keys_only=true")),
            ["a".to_string(), format!("only-{round}")],
            "{restart:?}"
        );
        assert_eq!(value(port, &format!("only-{round}")), Some(vec![0, 1, 2]));
    }
}

/// Keys of writer `w` in the crash test: ten per writer, written together.
fn crash_keys(w: usize) -> Vec<String> {
    (0..10).map(|i| format!("w{w}/k{i}")).collect()
}

/// Asserts every writer's ten keys are all absent or all hold one
/// generation; returns those generations (0: absent).
#[track_caller]
fn assert_whole_batches(port: u16, writers: usize) -> Vec<u64> {
    (0..writers)
        .map(|w| {
            let values: Vec<Option<Vec<u8>>> =
                crash_keys(w).iter().map(|key| value(port, key)).collect();
            assert!(
                values.iter().all(|v| v == &values[0]),
                "writer {w}: a batch was applied in part: {:?}",
                values
                    .iter()
                    .map(|v| v.as_deref().map(String::from_utf8_lossy))
                    .collect::<Vec<_>>()
            );
            values[0].as_deref().map_or(0, |v| {
                String::from_utf8_lossy(v).parse().expect("a generation")
            })
        })
        .collect()
}

#[test]
fn batches_are_all_or_nothing_across_kill9() {
    const WRITERS: usize = 4;
    const ROUNDS: u64 = 4;
    let mut node = Node::start();
    let mut floor = vec![0u64; WRITERS];
    for round in 0..ROUNDS {
        let port = node.port();
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Vec<Arc<AtomicU64>> =
            floor.iter().map(|&g| Arc::new(AtomicU64::new(g))).collect();
        let threads: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked[w]));
                let start = floor[w];
                thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    for generation in start + 1.. {
                        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                            return;
                        }
                        let ops: Vec<Value> = crash_keys(w)
                            .iter()
                            .map(|key| json!({ "op": "put", "key": key, "value": generation.to_string() }))
                            .collect();
                        let body = json!({ "operations": ops }).to_string();
                        let Ok(mut conn) = Conn::try_open(port) else { return };
                        let Ok(resp) = conn.try_send(
                            "POST",
                            "/api/batch",
                            &[("Content-Type", "application/json")],
                            body.as_bytes(),
                        ) else {
                            return;
                        };
                        assert_eq!(resp.status, 200, "{}", resp.text());
                        acked.store(generation, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        // Kill at a different moment each round.
        thread::sleep(Duration::from_millis(300 + 170 * round));
        node.kill9();
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        node.restart();
        let found = assert_whole_batches(node.port(), WRITERS);
        for w in 0..WRITERS {
            let acked = acked[w].load(Ordering::SeqCst);
            assert!(
                found[w] >= acked && found[w] <= acked + 1,
                "round {round}, writer {w}: found generation {}, last acknowledged {acked}",
                found[w]
            );
        }
        floor = found;
    }
    assert!(
        floor.iter().all(|&g| g > 0),
        "no batch was ever written: {floor:?}"
    );
}

#[test]
fn torn_batch_frame_is_dropped_whole() {
    let mut node = Node::start();
    let port = node.port();
    let keys = crash_keys(0);
    let put_all = |generation: &str| {
        let ops: Vec<Value> = keys
            .iter()
            .map(|key| json!({ "op": "put", "key": key, "value": generation }))
            .collect();
        assert_eq!(batch(port, json!(ops)).status, 200);
    };
    put_all("1");
    let whole_first = fs::metadata(node.data_log()).unwrap().len();
    put_all("2");
    node.kill9();
    let log = fs::read(node.data_log()).unwrap();
    // The batch's fsync was followed by a 48-byte sync marker (kind 4).
    let end = log.len() - 48;
    assert_eq!(log[end + 4], 4, "the log ends with a sync marker");
    let frame = end - whole_first as usize;
    assert!(frame > 10 * 8, "the second batch is {frame} bytes");
    for cut in [end - 1, end - frame / 2, whole_first as usize + 1] {
        fs::write(node.data_log(), &log[..cut]).unwrap();
        node.restart();
        assert_eq!(
            assert_whole_batches(node.port(), 1),
            [1],
            "log cut at {cut} of {end}"
        );
        node.kill9();
    }
    fs::write(node.data_log(), &log).unwrap();
    node.restart();
    assert_eq!(assert_whole_batches(node.port(), 1), [2]);
}
