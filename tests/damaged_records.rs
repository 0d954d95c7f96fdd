//! A damaged record in a log the node starts from its hint file: the key
//! answers an error, never a value and never "missing"; `/health` and
//! `/metrics` say so; compaction carries on without the damage; a write or
//! delete clears it; `lucid check` and the server agree.

mod common;

use common::*;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

/// File header, then the first record.
const FIRST_RECORD: usize = 32;

/// Offset of the put or delete after the record at `at`, from the headers'
/// lengths (an envelope's too), past sync markers (kind 4).
fn next_record(log: &[u8], mut at: usize) -> usize {
    loop {
        let key_len = u16::from_le_bytes([log[at + 6], log[at + 7]]) as usize;
        let value_len = u32::from_le_bytes(log[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 40 + key_len + usize::from(log[at + 12]) + value_len;
        if log[at + 4] != 4 {
            return at;
        }
    }
}

fn get(port: u16, key: &str) -> Response {
    request(port, "GET", &format!("/api/kv/{key}"), &[], b"")
}

/// `/health`, once it says `want` (the check after a start from the hint
/// runs in the background); panics after 30 s.
fn health_once(node: &Node, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = request(node.port(), "GET", "/health", &[], b"");
        assert_eq!(health.status, 200, "{}", health.text());
        if health.text().contains(want) {
            return health.text();
        }
        assert!(
            Instant::now() < deadline,
            "/health never said {want}: {}\n{}",
            health.text(),
            node.logs()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn metric(node: &Node, name: &str) -> String {
    let page = request(node.port(), "GET", "/metrics", &[], b"").text();
    page.lines()
        .find(|line| line.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{page}"))
        .to_owned()
}

/// Both damaged keys answer 500 with a JSON message; every other key its
/// value.
fn assert_damaged_keys_are_errors(node: &Node, others: &[(String, Vec<u8>)]) {
    for key in ["victim-put", "victim-delete"] {
        let reply = get(node.port(), key);
        assert_eq!(reply.status, 500, "{key}: {}", reply.text());
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("damaged"), "{message}");
        assert!(message.contains("written or deleted"), "{message}");
    }
    for (key, value) in others {
        let reply = get(node.port(), key);
        assert_eq!((reply.status, &reply.body), (200, value), "{key}");
    }
}

fn check(node: &Node) -> (bool, String) {
    let out = node.run(&["check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn damaged_records_never_block_the_node(config: Config) {
    let mut node = config.start();
    let port = node.port();
    // The first two records of the log: the ones damaged below.
    for key in ["victim-put", "victim-delete"] {
        let reply = request(port, "PUT", &format!("/api/kv/{key}"), &[], b"precious");
        assert_eq!(reply.status, 201);
    }
    let mut others = Vec::new();
    for round in 0..3 {
        others.clear();
        for i in 0..20 {
            let (key, value) = (format!("other-{i}"), format!("round {round} of {i}"));
            let reply = request(
                port,
                "PUT",
                &format!("/api/kv/{key}"),
                &[],
                value.as_bytes(),
            );
            assert!(matches!(reply.status, 200 | 201));
            others.push((key, value.into_bytes()));
        }
    }
    // A clean stop writes the hint file, which covers both records.
    assert!(node.stop().success());
    let log_path = node.data_log();
    let mut log = fs::read(&log_path).unwrap();
    let second = next_record(&log, FIRST_RECORD);
    log[FIRST_RECORD + 45] ^= 0x01;
    log[second + 45] ^= 0x01;
    fs::write(&log_path, &log).unwrap();

    let (ok, text) = check(&node);
    assert!(!ok, "{text}");
    assert!(text.contains("DAMAGED"), "{text}");
    assert!(
        text.contains("damaged keys: 2 (victim-delete, victim-put)"),
        "{text}"
    );
    assert!(text.contains("the server starts from the hint"), "{text}");

    node.restart();
    assert_damaged_keys_are_errors(&node, &others);
    let health = health_once(&node, "/api/admin/compact");
    assert!(health.contains(r#""status":"degraded""#), "{health}");
    assert!(health.contains("2 keys lost their value"), "{health}");
    assert_eq!(metric(&node, "lucid_damaged_keys"), "lucid_damaged_keys 2");
    assert_eq!(
        metric(&node, "lucid_damaged_records"),
        "lucid_damaged_records 2"
    );
    assert!(node.logs().contains("victim-put"), "{}", node.logs());

    let before = fs::metadata(&log_path).unwrap().len();
    let compacted = request(node.port(), "POST", "/api/admin/compact", &[], b"");
    assert_eq!(compacted.status, 200, "{}", compacted.text());
    let after = fs::metadata(&log_path).unwrap().len();
    assert!(after < before, "{before} -> {after} bytes");
    assert_damaged_keys_are_errors(&node, &others);
    assert_eq!(metric(&node, "lucid_damaged_keys"), "lucid_damaged_keys 2");
    assert_eq!(
        metric(&node, "lucid_damaged_records"),
        "lucid_damaged_records 0"
    );
    let health = health_once(&node, r#""status":"degraded""#);
    assert!(!health.contains("/api/admin/compact"), "{health}");

    // Across restarts, with the hint file and without.
    node.restart();
    assert_damaged_keys_are_errors(&node, &others);
    health_once(&node, "2 keys lost their value");
    assert!(node.stop().success());
    fs::remove_file(node.data_dir().join("data.hint")).unwrap();
    node.restart();
    assert_damaged_keys_are_errors(&node, &others);
    health_once(&node, "2 keys lost their value");
    assert!(node.stop().success());
    let (ok, text) = check(&node);
    assert!(!ok, "{text}");
    assert!(
        text.contains("damaged keys: 2 (victim-delete, victim-put)"),
        "{text}"
    );
    assert!(text.contains("status:      degraded"), "{text}");

    // A write and a delete clear the damage.
    node.restart();
    let port = node.port();
    let put = request(port, "PUT", "/api/kv/victim-put", &[], b"fresh");
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(get(port, "victim-put").body, b"fresh");
    let deleted = request(port, "DELETE", "/api/kv/victim-delete", &[], b"");
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(get(port, "victim-delete").status, 404);
    health_once(&node, r#""status":"ok""#);
    assert_eq!(metric(&node, "lucid_damaged_keys"), "lucid_damaged_keys 0");
    assert!(node.stop().success());
    let (ok, text) = check(&node);
    assert!(ok, "{text}");
    node.restart();
    assert_eq!(get(node.port(), "victim-put").body, b"fresh");
    assert_eq!(get(node.port(), "victim-delete").status, 404);
}

#[test]
fn damaged_records_never_block_the_node_plain() {
    damaged_records_never_block_the_node(Config::new());
}

#[test]
fn damaged_records_never_block_the_node_encrypted() {
    let keys = tempfile::tempdir().unwrap();
    damaged_records_never_block_the_node(encrypted(Config::new(), keys.path(), 7));
}
