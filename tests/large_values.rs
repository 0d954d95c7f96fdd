//! Values larger than `SENT_FROM_LOG_OVER` are sent from the log in pieces
//! instead of being read whole into memory: the same bytes and headers as
//! smaller values, a keep-alive connection that goes on after them, and a
//! damaged record answered like a small one, with no part of its value.

mod common;

use common::*;
use lucid::store::SENT_FROM_LOG_OVER;
use std::fs;

/// A value of `len` bytes that differ from one piece to the next.
fn value(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// The headers of a value's answer that do not depend on the value's time
/// or version, and the others' names.
fn value_headers(reply: &Response) -> Vec<(String, String)> {
    let mut headers: Vec<_> = reply
        .headers
        .iter()
        .map(|(name, value)| {
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                "date" | "last-modified" | "etag" | "content-length" => (name, String::new()),
                _ => (name, value.clone()),
            }
        })
        .collect();
    headers.sort();
    headers
}

/// A reply's headers but `Date`.
fn without_date(reply: &Response) -> Vec<(String, String)> {
    let mut headers = reply.headers.clone();
    headers.retain(|(name, _)| !name.eq_ignore_ascii_case("date"));
    headers
}

#[test]
fn large_values_are_served_whole_on_a_kept_alive_connection() {
    let node = Node::start();
    let mut conn = Conn::open(node.port());
    let sizes = [
        100,
        SENT_FROM_LOG_OVER - 1,
        SENT_FROM_LOG_OVER,
        SENT_FROM_LOG_OVER + 1,
        3 * 1024 * 1024 + 17,
    ];
    let content_type = [("Content-Type", "image/png")];
    for (i, &len) in sizes.iter().enumerate() {
        let path = format!("/api/kv/v{len}");
        let stored = value(len, i as u8);
        let put = conn.send("PUT", &path, &content_type, &stored);
        assert_eq!(put.status, 201, "{}", put.text());
    }
    let small = conn.send("GET", "/api/kv/v100", &[], b"");
    for _round in 0..2 {
        for (i, &len) in sizes.iter().enumerate() {
            let path = format!("/api/kv/v{len}");
            let got = conn.send("GET", &path, &[], b"");
            assert_eq!(got.status, 200, "{len}: {}", got.text());
            assert_eq!(got.header("Content-Length"), Some(&*len.to_string()));
            assert!(got.body == value(len, i as u8), "{len}: the bytes differ");
            assert_eq!(value_headers(&got), value_headers(&small), "{len}");
            let etag = got.header("ETag").unwrap().to_owned();
            assert!(got.header("Last-Modified").is_some());

            let head = conn.send("HEAD", &path, &[], b"");
            assert_eq!(head.status, 200);
            assert!(head.body.is_empty());
            assert_eq!(without_date(&head), without_date(&got));

            let unchanged = conn.send("GET", &path, &[("If-None-Match", &etag)], b"");
            assert_eq!(unchanged.status, 304);
            assert!(unchanged.body.is_empty());
            assert_eq!(unchanged.header("ETag"), Some(&*etag));
        }
    }
    // The connection answers what comes next.
    let missing = conn.send("GET", "/api/kv/missing", &[], b"");
    assert_eq!(missing.status, 404);
}

#[test]
fn a_damaged_large_record_is_answered_like_a_small_one() {
    let mut node = Node::start();
    let port = node.port();
    let large = value(4 * SENT_FROM_LOG_OVER, 7);
    let mut conn = Conn::open(port);
    for (key, stored) in [("small", &b"precious"[..]), ("large", &large)] {
        let put = conn.send("PUT", &format!("/api/kv/{key}"), &[], stored);
        assert_eq!(put.status, 201, "{}", put.text());
    }
    assert!(node.stop().success());
    // A byte of each value, deep inside the large one.
    let log_path = node.data_log();
    let mut log = fs::read(&log_path).unwrap();
    let small_at = find(&log, b"precious");
    log[small_at] ^= 0x01;
    let large_at = find(&log, &large[..64]) + 3 * SENT_FROM_LOG_OVER;
    log[large_at] ^= 0x01;
    fs::write(&log_path, &log).unwrap();

    node.restart();
    let mut conn = Conn::open(node.port());
    let small = conn.send("GET", "/api/kv/small", &[], b"");
    assert_eq!(small.status, 500, "{}", small.text());
    for method in ["GET", "HEAD", "GET"] {
        let reply = conn.send(method, "/api/kv/large", &[], b"");
        assert_eq!(reply.status, 500, "{method}: {}", reply.text());
        assert_eq!(reply.header("Content-Type"), Some("application/json"));
        if method == "GET" {
            assert_eq!(
                reply.body, small.body,
                "the same message, none of the value"
            );
        }
    }
    assert_eq!(conn.send("GET", "/api/kv/small", &[], b"").body, small.body);
}

/// Where `needle` starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
        .expect("the bytes are in the log")
}
