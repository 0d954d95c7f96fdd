//! The HTTP answers to disk failures, with faults injected under a real
//! store ([`CrashFile`]): the failing request gets a JSON error (507 for a
//! full disk, 500 for an I/O error, 503 once a failed fsync made the node
//! read-only), nothing of it is stored, and other keys keep reading.

use lucid_http::{Method, Request, TestRequest};

use super::endpoint::Endpoint;
use super::reply::Reply;
use super::{admit, dispatch, route, Buffers, Context};
use crate::store::testing::{fresh_store, try_put, Call, CrashFile, Fault};
use crate::store::SyncMode;

/// A request to the API, answered by its handler.
struct ApiCall {
    method: Method,
    path: &'static str,
    body: &'static str,
}

const fn call(method: Method, path: &'static str, body: &'static str) -> ApiCall {
    ApiCall { method, path, body }
}

const PUT: ApiCall = call(Method::Put, "/api/kv/counter", "41");
const DELETE: ApiCall = call(Method::Delete, "/api/kv/counter", "");
const GET: ApiCall = call(Method::Get, "/api/kv/counter", "");
const INCREMENT: ApiCall = call(
    Method::Patch,
    "/api/kv/counter",
    r#"{"operation": "increment"}"#,
);
const BATCH: ApiCall = call(
    Method::Post,
    "/api/batch",
    r#"{"operations": [{"op": "put", "key": "counter", "value": "7"},
                       {"op": "put", "key": "new", "value": "x"}]}"#,
);

/// Answers `call` as a request slot would; returns the status and, for a JSON
/// reply, its `message`.
fn answer(ctx: &Context, call: &ApiCall) -> (u16, Option<String>) {
    let mut request: Request = TestRequest::new()
        .with_method(call.method.clone())
        .with_path(call.path)
        .with_body(call.body)
        .into();
    let mut bufs = Buffers::default();
    let route = route::route(call.path);
    let endpoint = Endpoint::resolve(route, &call.method);
    let answer = match admit(ctx, &request, call.path, route, endpoint, &mut bufs) {
        Ok(admitted) => dispatch(ctx, endpoint, admitted, &mut bufs, &mut request, call.path),
        Err(refused) => refused.into(),
    };
    let reply = answer.wait(&ctx.store);
    let message = match &reply {
        Reply::Json { body, .. } => serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|doc| doc["message"].as_str().map(str::to_owned)),
        _ => None,
    };
    (reply.status(), message)
}

/// The value of `key`, read through the store.
fn value(ctx: &Context, key: &str) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let got = ctx.store.get(key.as_bytes(), &mut buf).unwrap();
    got.map(|v| v.value.to_vec())
}

#[test]
fn a_disk_fault_fails_only_its_request_with_a_json_error() {
    let cases = [
        (Call::Append, Fault::NoSpace { landed: 10 }, PUT, 507),
        (Call::Append, Fault::ShortWrite { landed: 10 }, PUT, 500),
        (Call::Append, Fault::NoSpace { landed: 0 }, DELETE, 507),
        (Call::Append, Fault::Eio, INCREMENT, 500),
        (Call::Read, Fault::Eio, INCREMENT, 500),
        (Call::Read, Fault::Eio, GET, 500),
        (Call::Append, Fault::NoSpace { landed: 60 }, BATCH, 507),
        (Call::Append, Fault::ShortWrite { landed: 60 }, BATCH, 500),
    ];
    for (call, fault, request, status) in cases {
        let what = format!("{fault:?} on {call:?} under {:?}", request.method);
        let (file, store) = fresh_store(CrashFile::with_bytes, SyncMode::Always);
        try_put(&store, "counter", b"1").unwrap();
        try_put(&store, "other", b"still here").unwrap();
        let ctx = Context::new(store, 256, 1 << 20);
        let before = file.contents();
        file.inject(call, fault);
        let (got, message) = answer(&ctx, &request);
        assert_eq!(got, status, "{what}");
        assert!(message.is_some_and(|m| !m.is_empty()), "{what}: no message");
        assert!(!file.fault_pending(), "{what}: the fault never fired");
        assert_eq!(file.contents(), before, "{what}: bytes left behind");
        assert_eq!(value(&ctx, "counter").as_deref(), Some(&b"1"[..]), "{what}");
        assert_eq!(value(&ctx, "new"), None, "{what}");
        assert_eq!(answer(&ctx, &GET).0, 200, "{what}: the next GET");
        assert!(!ctx.store.is_read_only(), "{what}");
        assert_eq!(answer(&ctx, &INCREMENT).0, 200, "{what}: the next write");
        assert_eq!(value(&ctx, "counter").as_deref(), Some(&b"2"[..]), "{what}");
    }
}

#[test]
fn a_failed_fsync_answers_503_to_every_later_write_and_reads_go_on() {
    let (file, store) = fresh_store(CrashFile::with_bytes, SyncMode::Always);
    try_put(&store, "counter", b"1").unwrap();
    let ctx = Context::new(store, 256, 1 << 20);
    file.inject(Call::Sync, Fault::Eio);
    for request in [PUT, INCREMENT, DELETE, BATCH] {
        let (status, message) = answer(&ctx, &request);
        assert_eq!(status, 503, "{:?} after a failed fsync", request.method);
        assert!(message.is_some_and(|m| m.contains("read-only")));
    }
    assert_eq!(answer(&ctx, &GET).0, 200);
    assert_eq!(value(&ctx, "counter").as_deref(), Some(&b"1"[..]));
    assert_eq!(
        file.syncs_after_failure(),
        0,
        "the failed fsync was retried"
    );
}
