//! The HTTP API on /api/kv/{key}: statuses, messages, headers, bodies,
//! key decoding, limits, keep-alive and concurrency.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn put_creates_then_updates_and_get_returns_latest() {
    let node = Node::start();
    let port = node.port();
    assert_message(&put(port, "/api/kv/greeting", b"hello"), 201, CREATED);
    assert_eq!(get(port, "/api/kv/greeting").body, b"hello");
    assert_message(&put(port, "/api/kv/greeting", b"hello again"), 200, UPDATED);
    let resp = get(port, "/api/kv/greeting");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"hello again");
}

#[test]
fn get_returns_value_with_metadata_headers() {
    let node = Node::start();
    let port = node.port();
    let resp = request(
        port,
        "PUT",
        "/api/kv/doc",
        &[("Content-Type", "text/plain")],
        b"abc\n",
    );
    assert_eq!(resp.status, 201);

    let resp = get(port, "/api/kv/doc");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"abc\n");
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert_eq!(resp.header("content-length"), Some("4"));
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    let last_modified = resp.header("last-modified").expect("Last-Modified header");
    let when = parse_http_date(last_modified)
        .unwrap_or_else(|| panic!("Last-Modified {last_modified:?} is not an HTTP date"));
    let now = unix_now();
    assert!(
        when.abs_diff(now) < 3600,
        "Last-Modified {last_modified:?} is far from the current time"
    );
}

#[test]
fn missing_key_is_404_for_get_head_and_delete() {
    let node = Node::start();
    let port = node.port();
    assert_error(&get(port, "/api/kv/absent"), 404, Some(NOT_FOUND));
    assert_error(&delete(port, "/api/kv/absent"), 404, Some(NOT_FOUND));
    let head = request(port, "HEAD", "/api/kv/absent", &[], b"");
    assert_eq!(head.status, 404);
    assert_eq!(
        head.header("content-type"),
        get(port, "/api/kv/absent").header("content-type")
    );
}

#[test]
fn delete_removes_the_key() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put(port, "/api/kv/doomed", b"x").status, 201);
    assert_message(&delete(port, "/api/kv/doomed"), 200, DELETED);
    assert_error(&get(port, "/api/kv/doomed"), 404, Some(NOT_FOUND));
    assert_error(&delete(port, "/api/kv/doomed"), 404, Some(NOT_FOUND));
    // A deleted key can be created again.
    assert_message(&put(port, "/api/kv/doomed", b"back"), 201, CREATED);
    assert_eq!(get(port, "/api/kv/doomed").body, b"back");
}

#[test]
fn head_has_get_headers_but_no_body() {
    let node = Node::start();
    let port = node.port();
    let value = b"0123456789abcdef0123";
    let resp = request(
        port,
        "PUT",
        "/api/kv/h",
        &[("Content-Type", "application/json")],
        value,
    );
    assert_eq!(resp.status, 201);

    let mut conn = Conn::open(port);
    let head = conn.send("HEAD", "/api/kv/h", &[], b"");
    // The next response on the same connection parses cleanly only if HEAD
    // really sent no body.
    let get = conn.send("GET", "/api/kv/h", &[], b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(get.status, 200);
    assert_eq!(get.body, value);
    for name in [
        "content-type",
        "content-length",
        "last-modified",
        "x-content-type-options",
    ] {
        assert!(get.header(name).is_some(), "GET lacks {name}");
        assert_eq!(
            head.header(name),
            get.header(name),
            "HEAD and GET differ in {name}"
        );
    }
    assert_eq!(head.header("content-length"), Some("20"));
}

#[test]
fn content_type_defaults_to_octet_stream() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put(port, "/api/kv/blob", b"\x01\x02").status, 201);
    let resp = get(port, "/api/kv/blob");
    assert_eq!(
        resp.header("content-type"),
        Some("application/octet-stream")
    );
}

#[test]
fn content_type_is_stored_and_replaced_on_update() {
    let node = Node::start();
    let port = node.port();
    let ct = "application/json; charset=utf-8";
    let resp = request(
        port,
        "PUT",
        "/api/kv/cfg",
        &[("Content-Type", ct)],
        b"{\"a\":1}",
    );
    assert_eq!(resp.status, 201);
    assert_eq!(get(port, "/api/kv/cfg").header("content-type"), Some(ct));

    let resp = request(
        port,
        "PUT",
        "/api/kv/cfg",
        &[("Content-Type", "text/csv")],
        b"a,1",
    );
    assert_eq!(resp.status, 200);
    let resp = get(port, "/api/kv/cfg");
    assert_eq!(resp.header("content-type"), Some("text/csv"));
    assert_eq!(resp.body, b"a,1");
}

#[test]
fn empty_value_is_stored() {
    let node = Node::start();
    let port = node.port();
    assert_message(&put(port, "/api/kv/empty", b""), 201, CREATED);
    let resp = get(port, "/api/kv/empty");
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_empty());
    assert_eq!(resp.header("content-length"), Some("0"));
    // Emptying an existing value is an update.
    assert_eq!(put(port, "/api/kv/was-full", b"full").status, 201);
    assert_message(&put(port, "/api/kv/was-full", b""), 200, UPDATED);
    assert!(get(port, "/api/kv/was-full").body.is_empty());
}

#[test]
fn binary_values_round_trip() {
    let node = Node::start();
    let port = node.port();
    let all_bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let tricky = b"\0\0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n\0\xff\xfe".to_vec();
    for (key, value) in [
        ("all-bytes", all_bytes),
        ("tricky", tricky),
        ("nul", vec![0; 64]),
    ] {
        let path = format!("/api/kv/{key}");
        assert_eq!(put(port, &path, &value).status, 201, "{key}");
        let resp = get(port, &path);
        assert_eq!(resp.status, 200, "{key}");
        assert_eq!(resp.body, value, "{key} did not round-trip");
        assert_eq!(
            resp.header("content-length"),
            Some(value.len().to_string().as_str())
        );
    }
}

#[test]
fn one_mib_value_round_trips() {
    let node = Node::start();
    let port = node.port();
    let value: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_eq!(put(port, "/api/kv/big", &value).status, 201);
    let resp = get(port, "/api/kv/big");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), value.len());
    assert!(resp.body == value, "1 MiB value came back different");
}

#[test]
fn chunked_put_is_accepted() {
    let node = Node::start();
    let port = node.port();
    let parts: [&[u8]; 4] = [b"hello ", b"chunked\0", &[0xff; 300], b" world"];
    let te = [
        ("Transfer-Encoding", "chunked"),
        ("Content-Type", "text/x-test"),
    ];
    let resp = request(port, "PUT", "/api/kv/chunky", &te, &chunked(&parts));
    assert_message(&resp, 201, CREATED);
    let resp = get(port, "/api/kv/chunky");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, parts.concat());
    assert_eq!(resp.header("content-type"), Some("text/x-test"));

    // Updating via chunked, and an empty chunked body.
    let resp = request(port, "PUT", "/api/kv/chunky", &te, &chunked(&[b"v2"]));
    assert_message(&resp, 200, UPDATED);
    assert_eq!(get(port, "/api/kv/chunky").body, b"v2");
    let resp = request(port, "PUT", "/api/kv/chunky", &te, &chunked(&[]));
    assert_eq!(resp.status, 200);
    assert!(get(port, "/api/kv/chunky").body.is_empty());
}

#[test]
fn keys_are_percent_decoded_once_and_may_contain_slashes() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put(port, "/api/kv/sensors/pi-1/temp", b"21.5").status, 201);
    assert_eq!(get(port, "/api/kv/sensors/pi-1/temp").body, b"21.5");
    // %2F decodes to '/', so this is the same key.
    let resp = get(port, "/api/kv/sensors%2Fpi-1%2Ftemp");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"21.5");
    assert_message(
        &put(port, "/api/kv/sensors%2fpi-1/temp", b"22"),
        200,
        UPDATED,
    );
    // Prefixes and parents are distinct keys.
    assert_eq!(get(port, "/api/kv/sensors/pi-1").status, 404);
    assert_eq!(get(port, "/api/kv/sensors").status, 404);

    // UTF-8 keys; hex digits in either case.
    assert_eq!(put(port, "/api/kv/caf%C3%A9", b"coffee").status, 201);
    assert_eq!(get(port, "/api/kv/caf%c3%a9").body, b"coffee");
    assert_eq!(get(port, &kv_path("café")).body, b"coffee");

    // '+' is not special in a path: it is a literal plus.
    assert_eq!(put(port, "/api/kv/a+b", b"plus").status, 201);
    assert_eq!(get(port, "/api/kv/a%2Bb").body, b"plus");
    assert_error(&get(port, "/api/kv/a%20b"), 404, Some(NOT_FOUND));

    // Decoded exactly once: %2541 is the three-byte key "%41", not "A".
    assert_eq!(put(port, "/api/kv/%2541", b"percent").status, 201);
    assert_error(&get(port, "/api/kv/A"), 404, Some(NOT_FOUND));
    assert_error(&get(port, "/api/kv/%41"), 404, Some(NOT_FOUND));
    assert_eq!(get(port, "/api/kv/%2541").body, b"percent");
    assert_message(&delete(port, "/api/kv/%2541"), 200, DELETED);
}

#[test]
fn empty_key_is_400() {
    let node = Node::start();
    let port = node.port();
    assert_error(&get(port, "/api/kv/"), 400, None);
    assert_error(&put(port, "/api/kv/", b"v"), 400, None);
    assert_error(&delete(port, "/api/kv/"), 400, None);
}

#[test]
fn invalid_percent_encoding_and_non_utf8_keys_are_400() {
    let node = Node::start();
    let port = node.port();
    for path in [
        "/api/kv/%zz",
        "/api/kv/a%4",
        "/api/kv/%4",
        "/api/kv/%ff",
        "/api/kv/ok%C3",
    ] {
        assert_error(&get(port, path), 400, None);
        assert_error(&put(port, path, b"v"), 400, None);
        assert_error(&delete(port, path), 400, None);
    }
    assert_eq!(
        put(port, "/api/kv/fine", b"v").status,
        201,
        "node still works"
    );
}

#[test]
fn key_longer_than_max_key_bytes_is_414() {
    let node = Node::start(); // default max_key_bytes: 1024
    let port = node.port();
    let at_limit = "k".repeat(1024);
    assert_message(
        &put(port, &format!("/api/kv/{at_limit}"), b"v"),
        201,
        CREATED,
    );
    assert_eq!(get(port, &format!("/api/kv/{at_limit}")).body, b"v");
    let over = "k".repeat(1025);
    assert_error(&put(port, &format!("/api/kv/{over}"), b"v"), 414, None);
    assert_error(&get(port, &format!("/api/kv/{over}")), 414, None);

    // The limit applies to the decoded key: 512 × "é" = 1024 bytes is fine
    // (3072 characters in the URL), one more byte is not.
    let utf8_at_limit = "é".repeat(512);
    assert_eq!(put(port, &kv_path(&utf8_at_limit), b"v").status, 201);
    assert_error(
        &put(port, &kv_path(&format!("{utf8_at_limit}x")), b"v"),
        414,
        None,
    );
}

#[test]
fn configured_max_key_bytes_is_enforced() {
    let node = Config::new().max_key_bytes(8).start();
    let port = node.port();
    assert_eq!(put(port, "/api/kv/12345678", b"v").status, 201);
    assert_error(&put(port, "/api/kv/123456789", b"v"), 414, None);
    // 8 decoded bytes from 24 URL characters.
    assert_eq!(
        put(port, "/api/kv/%41%42%43%44%45%46%47%48", b"v").status,
        201
    );
}

/// Sends only the head of a PUT declaring `content_length` body bytes on
/// `conn` and returns the response, which must come without the body.
fn put_head_only(conn: &mut Conn, port: u16, key: &str, content_length: &str) -> Response {
    let head = format!(
        "PUT /api/kv/{key} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {content_length}\r\n\r\n"
    );
    conn.write_raw(head.as_bytes()).unwrap();
    conn.read_response(false).unwrap_or_else(|e| {
        panic!("Content-Length {content_length}: no response without the body being sent: {e}")
    })
}

#[test]
fn value_at_limit_is_accepted_and_one_byte_over_is_413() {
    let node = Config::new().max_value_bytes(1000).start();
    let port = node.port();
    assert_message(&put(port, "/api/kv/exact", &[7; 1000]), 201, CREATED);
    assert_eq!(get(port, "/api/kv/exact").body, vec![7; 1000]);
    assert_error(&put(port, "/api/kv/over", &[7; 1001]), 413, None);
    assert_error(&put(port, "/api/kv/exact", &[8; 1001]), 413, None);
    assert_error(&get(port, "/api/kv/over"), 404, Some(NOT_FOUND));
    assert_eq!(
        get(port, "/api/kv/exact").body,
        vec![7; 1000],
        "a 413 changed the value"
    );
    node.assert_serving();
}

#[test]
fn oversized_content_length_gets_413_before_the_body_is_sent() {
    // lucid-http reads bodies of up to 1 KiB together with the request head,
    // before any handler runs; above that, the 413 comes before the body.
    for (limit, declared) in [(1000, "5000"), (2000, "2001")] {
        let node = Config::new().max_value_bytes(limit).start();
        let port = node.port();
        let mut conn = Conn::open(port);
        assert_error(
            &put_head_only(&mut conn, port, "too-big", declared),
            413,
            None,
        );
        drop(conn);
        assert_error(&get(port, "/api/kv/too-big"), 404, Some(NOT_FOUND));
        node.assert_serving();
    }
}

#[test]
fn huge_content_length_gets_413_and_the_node_survives() {
    let mut node = Config::new().max_value_bytes(1000).start();
    let port = node.port();
    let mut conn = Conn::open(port);
    assert_error(
        &put_head_only(&mut conn, port, "huge", "100000000000"),
        413,
        None,
    );
    drop(conn);
    // A failure here would be a crash shortly after the 413 went out, so
    // keep checking for a while rather than once.
    for _ in 0..20 {
        node.assert_serving();
        thread::sleep(Duration::from_millis(100));
    }
    node.assert_running();
}

#[test]
fn clients_holding_unsent_bodies_never_stop_the_node() {
    let node = Config::new().max_value_bytes(1000).start();
    let port = node.port();
    // Each head promises a body that never comes; for each kind, as many
    // connections as the node has workers stay open after their answer.
    let heads = [
        ("PUT /api/kv/big", "Content-Length: 5000", 413),
        ("GET /api/kv/big", "Content-Length: 5000", 413),
        ("DELETE /api/kv/big", "Content-Length: 5000", 413),
        ("POST /api/admin/compact", "Content-Length: 5000", 413),
        (
            "PUT /api/kv/%zz",
            "Content-Length: 10\r\nExpect: 100-continue",
            400,
        ),
    ];
    let mut held = Vec::new();
    for (request_line, headers, status) in heads {
        for _ in 0..WORKER_THREADS {
            let mut conn = Conn::open(port);
            let head = format!("{request_line} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n\r\n");
            conn.write_raw(head.as_bytes()).unwrap();
            let resp = conn
                .read_response(false)
                .unwrap_or_else(|e| panic!("{request_line}: no answer before the body: {e}"));
            assert_error(&resp, status, None);
            held.push(conn);
        }
        node.assert_serving();
    }
    drop(held);
}

#[test]
fn value_over_limit_is_413_for_chunked_body() {
    let node = Config::new().max_value_bytes(1000).start();
    let port = node.port();
    let te = [("Transfer-Encoding", "chunked")];
    let resp = request(
        port,
        "PUT",
        "/api/kv/c",
        &te,
        &chunked(&[&[1; 500], &[2; 500]]),
    );
    assert_message(&resp, 201, CREATED);

    let resp = request(
        port,
        "PUT",
        "/api/kv/over",
        &te,
        &chunked(&[&[1; 600], &[2; 600]]),
    );
    assert_error(&resp, 413, None);
    // An update that overflows leaves the old value in place.
    let resp = request(
        port,
        "PUT",
        "/api/kv/c",
        &te,
        &chunked(&[&[3; 700], &[4; 301]]),
    );
    assert_error(&resp, 413, None);

    assert_error(&get(port, "/api/kv/over"), 404, Some(NOT_FOUND));
    let old = get(port, "/api/kv/c");
    assert_eq!(old.status, 200);
    assert_eq!(old.body, [vec![1; 500], vec![2; 500]].concat());
    assert_message(&put(port, "/api/kv/after", b"ok"), 201, CREATED);
}

#[test]
fn unknown_routes_are_404_json() {
    let node = Node::start();
    let port = node.port();
    for path in ["/nope", "/api/other", "/api/other/x", "/", "/api/kvx/a"] {
        assert_error(&get(port, path), 404, None);
    }
    assert_error(&put(port, "/nope", b"v"), 404, None);
}

#[test]
fn wrong_method_is_405_with_allow_header() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put(port, "/api/kv/k", b"v").status, 201);
    for method in ["POST", "TRACE"] {
        let resp = request(port, method, "/api/kv/k", &[], b"v");
        assert_error(&resp, 405, None);
        let allow = resp
            .header("allow")
            .unwrap_or_else(|| panic!("{method}: no Allow header"));
        let allowed: Vec<String> = allow
            .split(',')
            .map(|m| m.trim().to_ascii_uppercase())
            .collect();
        for m in ["GET", "HEAD", "PUT", "DELETE", "PATCH"] {
            assert!(
                allowed.iter().any(|a| a == m),
                "{method}: Allow {allow:?} lacks {m}"
            );
        }
    }
    assert_eq!(
        get(port, "/api/kv/k").body,
        b"v",
        "a 405 must not change the value"
    );
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let node = Node::start();
    let mut conn = Conn::open(node.port());
    for i in 0..20 {
        let path = format!("/api/kv/ka/{i}");
        let value = format!("value {i}");
        assert_message(
            &conn.send("PUT", &path, &[], value.as_bytes()),
            201,
            CREATED,
        );
        assert_eq!(conn.send("GET", &path, &[], b"").body, value.as_bytes());
        assert_eq!(conn.send("HEAD", &path, &[], b"").status, 200);
        // Error responses keep the connection usable too.
        assert_error(
            &conn.send("GET", "/api/kv/ka/missing", &[], b""),
            404,
            Some(NOT_FOUND),
        );
    }
    let resp = conn.send(
        "PUT",
        "/api/kv/ka/c",
        &[("Transfer-Encoding", "chunked")],
        &chunked(&[b"ab", b"cd"]),
    );
    assert_eq!(resp.status, 201);
    assert_message(&conn.send("DELETE", "/api/kv/ka/0", &[], b""), 200, DELETED);
    assert_eq!(conn.send("GET", "/api/kv/ka/c", &[], b"").body, b"abcd");
}

#[test]
fn replies_of_every_size_are_framed_and_dated_on_one_connection() {
    let node = Node::start();
    let mut conn = Conn::open(node.port());
    // Around the size up to which a body joins its head in one write.
    for len in [0, 1, 4095, 4096, 4097, 10_000, 70_000] {
        let value: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let path = format!("/api/kv/sized/{len}");
        assert_eq!(conn.send("PUT", &path, &[], &value).status, 201);
        let head = conn.send("HEAD", &path, &[], b"");
        let got = conn.send("GET", &path, &[], b"");
        assert_eq!(got.body, value, "{len} bytes");
        assert_eq!(head.header("content-length"), Some(&*len.to_string()));
        assert!(head.body.is_empty());
        for resp in [&head, &got] {
            assert_eq!(resp.header("server"), Some("lucid"));
            let date = resp.header("date").expect("a Date header");
            let when = parse_http_date(date).unwrap_or_else(|| panic!("Date {date:?}"));
            assert!(when.abs_diff(unix_now()) < 3600, "Date {date:?}");
        }
    }
}

#[test]
fn sixteen_concurrent_keep_alive_clients_get_correct_answers() {
    const CLIENTS: usize = 16;
    let node = Node::start();
    let port = node.port();
    let answered = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (answered, start) = (Arc::clone(&answered), Arc::clone(&start));
            thread::spawn(move || {
                start.wait(); // connect all at once
                let mut conn = Conn::open(port);
                // Every client gets a first answer while all 16 connections
                // are open at once (none is closed before all are answered).
                let first = format!("/api/kv/client-{c}/first");
                let resp = conn.try_send("PUT", &first, &[], b"hi").unwrap_or_else(|e| {
                    panic!("client {c}: first request unanswered while other clients stay connected: {e}")
                });
                assert_message(&resp, 201, CREATED);
                answered.fetch_add(1, Ordering::SeqCst);
                let deadline = Instant::now() + IO_TIMEOUT;
                loop {
                    let n = answered.load(Ordering::SeqCst);
                    if n == CLIENTS {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "client {c}: only {n} of {CLIENTS} clients got an answer to their first request within {IO_TIMEOUT:?} while all stayed connected"
                    );
                    thread::sleep(Duration::from_millis(5));
                }
                for i in 0..25 {
                    let path = format!("/api/kv/client-{c}/key-{i}");
                    let value = format!("client {c} value {i} ").repeat(1 + i % 7);
                    assert_message(&conn.send("PUT", &path, &[], value.as_bytes()), 201, CREATED);
                    let resp = conn.send("GET", &path, &[], b"");
                    assert_eq!(resp.status, 200);
                    assert_eq!(resp.text(), value);
                    let update = format!("{value}!");
                    assert_message(&conn.send("PUT", &path, &[], update.as_bytes()), 200, UPDATED);
                    assert_eq!(conn.send("GET", &path, &[], b"").text(), update);
                }
            })
        })
        .collect();
    let failed = clients.into_iter().filter_map(|c| c.join().err()).count();
    assert_eq!(
        failed, 0,
        "{failed} of {CLIENTS} clients failed (see their panics above)"
    );
    // Every client's final values are visible from a fresh connection.
    for c in 0..CLIENTS {
        let resp = get(port, &format!("/api/kv/client-{c}/key-24"));
        let want = format!("client {c} value 24 ").repeat(4) + "!";
        assert_eq!(resp.text(), want);
    }
}

#[test]
fn random_keys_and_values_round_trip() {
    let node = Node::start();
    let port = node.port();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        "[a-zA-Z0-9 /._~%+?#é€-]{1,40}",
        proptest::collection::vec(any::<u8>(), 0..2048),
        "[a-z]{1,12}/[a-z0-9.+-]{1,20}",
    );
    runner
        .run(&strategy, |(key, value, content_type)| {
            let path = kv_path(&key);
            let resp = request(
                port,
                "PUT",
                &path,
                &[("Content-Type", &content_type)],
                &value,
            );
            prop_assert!(
                resp.status == 201 || resp.status == 200,
                "PUT {path}: {}",
                resp.status
            );
            let resp = get(port, &path);
            prop_assert_eq!(resp.status, 200);
            prop_assert_eq!(&resp.body, &value);
            prop_assert_eq!(resp.header("content-type"), Some(content_type.as_str()));
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_body_cut_short_by_the_client_is_refused_and_the_old_value_kept() {
    let node = Node::start();
    let port = node.port();
    let whole = vec![b'w'; 5000];
    assert_message(&put(port, "/api/kv/whole", &whole), 201, CREATED);
    let framings: [(&str, Vec<u8>); 2] = [
        ("Content-Length: 5000", vec![b'x'; 3000]),
        (
            "Transfer-Encoding: chunked",
            [&b"400\r\n"[..], &[b'x'; 1024], b"\r\n400\r\n", &[b'x'; 100]].concat(),
        ),
    ];
    for (framing, partial) in framings {
        let mut conn = Conn::open(port);
        let head = format!("PUT /api/kv/whole HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}\r\n\r\n");
        conn.write_raw(head.as_bytes()).unwrap();
        conn.write_raw(&partial).unwrap();
        conn.shutdown_write().unwrap();
        let resp = conn
            .read_response(false)
            .expect("an answer to the cut-short PUT");
        assert_error(&resp, 400, None);
        assert_eq!(
            get(port, "/api/kv/whole").body,
            whole,
            "{framing}: a truncated body was stored"
        );
    }
    node.assert_serving();
}

#[test]
fn clients_that_go_quiet_mid_body_are_cut_off_by_the_read_timeout() {
    let node = Config::new().raw("general", "read_timeout_ms: 300").start();
    let port = node.port();
    // One stalled body per worker: every worker is reading one.
    let mut stalled: Vec<Conn> = (0..WORKER_THREADS)
        .map(|i| {
            let mut conn = Conn::open(port);
            let head = format!(
                "PUT /api/kv/slow-{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n\r\n"
            );
            conn.write_raw(head.as_bytes()).unwrap();
            conn.write_raw(&[b's'; 10]).unwrap();
            conn
        })
        .collect();
    for conn in &mut stalled {
        let resp = conn
            .read_response(false)
            .expect("an answer once the read timeout passes");
        assert_error(&resp, 408, None);
    }
    node.assert_serving();
    for i in 0..WORKER_THREADS {
        assert_eq!(get(port, &format!("/api/kv/slow-{i}")).status, 404);
    }
}

#[test]
fn a_query_parameter_where_none_is_taken_is_named() {
    let node = Node::start();
    let resp = get(node.port(), "/api/kv/k?ttl=5");
    assert_message(
        &resp,
        400,
        "Unknown query parameter 'ttl'; this request takes no query parameters.",
    );
    let resp = put(node.port(), "/api/kv/k?tll=5", b"v");
    let message = json_message(&resp.body).unwrap();
    assert!(message.contains("accepts: ttl"), "{message}");
}
