//! The integrity digest through the real binary (`GET /api/admin/digest`):
//! two nodes given the same writes agree, one different write tells them
//! apart, a prefix selects, it needs the admin scope, a bad query is a 400
//! and a damaged record a 500 naming its key.

mod common;

use std::fs;

use common::*;
use serde_json::Value;

const SECRET: &str = "digest-secret-0123456789-abcdefghijkl";

/// An expiry far ahead (the year 2100), the same on every node.
const FAR_AHEAD_MS: u64 = 4_102_444_800_000;

/// `GET /api/admin/digest` with `query` (`""` or `?...`).
fn digest(port: u16, query: &str, headers: &[(&str, &str)]) -> Response {
    request(
        port,
        "GET",
        &format!("/api/admin/digest{query}"),
        headers,
        b"",
    )
}

/// The 200 JSON answer of `GET /api/admin/digest` with `query`.
fn digest_of(port: u16, query: &str) -> Value {
    let resp = digest(port, query, &[]);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let content_type = resp.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let answer: Value = serde_json::from_slice(&resp.body).unwrap();
    let hex = answer["digest"].as_str().unwrap();
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{answer}"
    );
    answer
}

/// The same writes on any node, every one deterministic (no relative
/// expiry: each node would count it from its own clock): keys of every
/// kind through an import, then keys in bulk, enough for several pages of
/// the digest's walk, and a delete.
fn same_writes(port: u16) {
    let lines = format!(
        "{{\"key\":\"text/greeting\",\"value\":\"héllo\",\"content_type\":\"text/plain; charset=utf-8\"}}\n\
         {{\"key\":\"bin/blob\",\"value_base64\":\"AAEC//4AYQ==\",\"content_type\":\"application/octet-stream\"}}\n\
         {{\"key\":\"text/expiring\",\"value\":\"later\",\"expires_at\":{FAR_AHEAD_MS}}}\n\
         {{\"key\":\"text/locked\",\"value\":\"{{}}\",\"content_type\":\"application/json\",\"locked\":true}}\n"
    );
    let resp = request(port, "POST", "/api/admin/import", &[], lines.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    write_bulk(port, 2500);
    assert_eq!(delete(port, "/api/kv/bulk/00003").status, 200);
}

#[test]
fn nodes_given_the_same_writes_agree_and_one_different_write_tells_them_apart() {
    let (first, second) = (Node::start(), Node::start());
    for node in [&first, &second] {
        same_writes(node.port());
    }
    let all = digest_of(first.port(), "");
    assert_eq!(all, digest_of(second.port(), ""));
    assert_eq!(all["prefix"], "");
    assert_eq!(all["keys"], 4 + 2500 - 1);
    // The delete's sequence number is no key's version.
    assert_eq!(all["highest_version"], 4 + 2500);
    let text = digest_of(first.port(), "?prefix=text%2F");
    assert_eq!(text["prefix"], "text/");
    assert_eq!(text["keys"], 3);
    assert_eq!(text["highest_version"], 4);
    assert_eq!(text, digest_of(second.port(), "?prefix=text/"));
    assert_ne!(text["digest"], all["digest"]);

    // One write each, to the same key, that differs by its value.
    assert_eq!(put(first.port(), "/api/kv/bulk/00007", b"one").status, 200);
    assert_eq!(put(second.port(), "/api/kv/bulk/00007", b"two").status, 200);
    let (after_first, after_second) = (digest_of(first.port(), ""), digest_of(second.port(), ""));
    assert_ne!(after_first["digest"], after_second["digest"]);
    assert_ne!(after_first["digest"], all["digest"]);
    assert_eq!(after_first["keys"], after_second["keys"]);
    assert_eq!(
        after_first["highest_version"],
        after_second["highest_version"]
    );
    // Under other prefixes they still agree.
    for query in ["?prefix=text/", "?prefix=bin/", "?prefix=bulk/00008"] {
        assert_eq!(
            digest_of(first.port(), query),
            digest_of(second.port(), query),
            "{query}"
        );
    }
    assert_eq!(digest_of(first.port(), "?prefix=none/")["keys"], 0);
}

#[test]
fn the_digest_needs_the_admin_scope() {
    let node = Config::new().secured(SECRET).start();
    let port = node.port();
    let reader = node.issue_token(&["--scope", "read"]);
    let admin = node.issue_token(&["--scope", "admin"]);
    assert_error(&digest(port, "", &[]), 401, None);
    let as_reader = format!("Bearer {reader}");
    assert_error(
        &digest(port, "", &[("Authorization", &as_reader)]),
        403,
        None,
    );
    let as_admin = format!("Bearer {admin}");
    let resp = digest(port, "?prefix=a", &[("Authorization", &as_admin)]);
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[test]
fn a_bad_query_or_method_is_refused_with_a_json_message() {
    let node = Node::start();
    let port = node.port();
    assert_error(
        &digest(port, "?prefix=%zz", &[]),
        400,
        Some("The query parameter 'prefix' has a malformed percent-escape."),
    );
    assert_error(
        &digest(port, "?prefix=%ff", &[]),
        400,
        Some("The query parameter 'prefix' is not valid UTF-8 once percent-decoded."),
    );
    assert_error(
        &digest(port, "?prefx=a", &[]),
        400,
        Some("Unknown query parameter 'prefx'; this request accepts: prefix."),
    );
    let post = request(port, "POST", "/api/admin/digest", &[], b"");
    assert_error(&post, 405, None);
    assert_eq!(post.header("allow"), Some("GET"));
}

#[test]
fn a_damaged_record_is_a_500_naming_its_key() {
    let mut node = Node::start();
    for key in ["victim", "other"] {
        assert_eq!(
            put(node.port(), &format!("/api/kv/{key}"), b"v").status,
            201
        );
    }
    // A clean stop writes the hint file, so the node starts despite the
    // damage done below to the first record (after the 32-byte file
    // header, in its key).
    assert!(node.stop().success());
    let mut log = fs::read(node.data_log()).unwrap();
    log[32 + 45] ^= 0x01;
    fs::write(node.data_log(), &log).unwrap();
    node.restart();
    let resp = digest(node.port(), "", &[]);
    assert_error(&resp, 500, None);
    let message = json_message(&resp.body).unwrap();
    assert!(
        message.contains("the record of key 'victim' is damaged"),
        "{message}"
    );
    assert_eq!(digest_of(node.port(), "?prefix=other")["keys"], 1);
}
