//! Durability and recovery: restarts, kill -9 during writes, torn tails,
//! mid-file corruption and the data directory lock.

mod common;

use common::*;
use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Writes `count` keys `prefix/i` with distinct values and returns them.
fn write_keys(port: u16, prefix: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let path = format!("/api/kv/{prefix}/{i}");
            let value = format!("{prefix} value {i} ")
                .repeat(1 + i % 5)
                .into_bytes();
            assert_eq!(put(port, &path, &value).status, 201, "PUT {path}");
            (path, value)
        })
        .collect()
}

#[test]
fn restart_keeps_data_and_deletes_stay_deleted() {
    let mut node = Node::start();
    let port = node.port();
    let mut keys = write_keys(port, "keep", 10);
    let resp = request(
        port,
        "PUT",
        "/api/kv/typed",
        &[("Content-Type", "text/plain")],
        b"hi",
    );
    assert_eq!(resp.status, 201);
    assert_eq!(put(port, "/api/kv/keep/3", b"updated").status, 200);
    keys[3].1 = b"updated".to_vec();
    assert_eq!(delete(port, "/api/kv/keep/5").status, 200);
    keys.remove(5);
    assert_eq!(put(port, "/api/kv/empty", b"").status, 201);
    let binary: Vec<u8> = (0..=255).collect();
    assert_eq!(put(port, "/api/kv/binary", &binary).status, 201);
    let last_modified = get(port, "/api/kv/typed")
        .header("last-modified")
        .map(String::from);
    assert!(
        node.data_log().is_file(),
        "no data.log in the data directory"
    );
    assert!(
        node.data_dir().join("LOCK").exists(),
        "no LOCK in the data directory"
    );

    node.restart();
    let port = node.port();
    assert_values(port, &keys);
    assert_error(&get(port, "/api/kv/keep/5"), 404, Some(NOT_FOUND));
    let typed = get(port, "/api/kv/typed");
    assert_eq!(typed.body, b"hi");
    assert_eq!(typed.header("content-type"), Some("text/plain"));
    assert_eq!(
        typed.header("last-modified").map(String::from),
        last_modified,
        "Last-Modified changed across a restart"
    );
    let empty = get(port, "/api/kv/empty");
    assert_eq!((empty.status, empty.body.len()), (200, 0));
    assert_eq!(get(port, "/api/kv/binary").body, binary);
    // The recovered index knows what exists: update vs create.
    assert_message(&put(port, "/api/kv/keep/0", b"again"), 200, UPDATED);
    assert_message(&put(port, "/api/kv/keep/5", b"reborn"), 201, CREATED);
    assert_eq!(delete(port, "/api/kv/keep/1").status, 200);

    // Writes after a recovery are appended correctly and survive too.
    node.restart();
    let port = node.port();
    assert_eq!(get(port, "/api/kv/keep/0").body, b"again");
    assert_eq!(get(port, "/api/kv/keep/5").body, b"reborn");
    assert_error(&get(port, "/api/kv/keep/1"), 404, Some(NOT_FOUND));
    assert_values(port, &keys[2..]);
}

/// What a key may hold after a crash: its last acknowledged state, or the
/// state of a write that was sent but not acknowledged. `None` = absent.
#[derive(Default)]
struct KeyState {
    acked: Option<String>,
    in_flight: Option<Option<String>>,
}

/// 8 writers, each owning 16 keys, write (and sometimes delete) in sequence
/// until the node is killed with SIGKILL after ~1 s. After a restart every key
/// must hold its last acknowledged state or its in-flight one.
fn kill9_during_concurrent_writes(config: Config) {
    const WRITERS: usize = 8;
    const KEYS: usize = 16;
    let mut node = config.start();
    let port = node.port();
    let states: Arc<Mutex<HashMap<String, KeyState>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));

    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (states, killed, acks) = (states.clone(), killed.clone(), acks.clone());
            thread::spawn(move || {
                let mut conn = Conn::open(port);
                for i in 0.. {
                    let k = i % KEYS;
                    let key = format!("w{t}/k{k}");
                    let path = format!("/api/kv/{key}");
                    let op = (i % 7 != 3).then(|| format!("t{t}-k{k}-i{i}-{}", "x".repeat(i % 37)));
                    let existed = {
                        let mut states = states.lock().unwrap();
                        let state = states.entry(key.clone()).or_default();
                        state.in_flight = Some(op.clone());
                        state.acked.is_some()
                    };
                    let result = match &op {
                        Some(value) => conn.try_send("PUT", &path, &[], value.as_bytes()),
                        None => conn.try_send("DELETE", &path, &[], b""),
                    };
                    let resp = match result {
                        Ok(resp) => resp,
                        Err(e) if killed.load(Ordering::SeqCst) => {
                            let _ = e;
                            return;
                        }
                        Err(e) => panic!("{path} failed before the kill: {e}"),
                    };
                    let want = match (&op, existed) {
                        (Some(_), false) => 201,
                        (Some(_), true) | (None, true) => 200,
                        (None, false) => 404,
                    };
                    assert_eq!(resp.status, want, "{path}: {}", resp.text());
                    let mut states = states.lock().unwrap();
                    let state = states.get_mut(&key).unwrap();
                    state.acked = op;
                    state.in_flight = None;
                    acks.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    thread::sleep(Duration::from_secs(1));
    killed.store(true, Ordering::SeqCst);
    node.kill9();
    for writer in writers {
        writer.join().expect("writer thread failed");
    }
    let acked = acks.load(Ordering::SeqCst);
    assert!(
        acked >= WRITERS,
        "only {acked} writes were acknowledged in 1 s"
    );

    node.restart();
    let port = node.port();
    let states = states.lock().unwrap();
    for (key, state) in states.iter() {
        let resp = get(port, &format!("/api/kv/{key}"));
        let actual = match resp.status {
            200 => Some(resp.text()),
            404 => None,
            other => panic!("GET {key}: status {other}"),
        };
        let ok = actual == state.acked || state.in_flight.as_ref() == Some(&actual);
        assert!(
            ok,
            "{key}: after kill -9 and restart holds {actual:?}; last acknowledged {:?}, in flight {:?}",
            state.acked, state.in_flight
        );
    }
}

#[test]
fn kill9_during_concurrent_writes_loses_nothing_acknowledged_sync_always() {
    kill9_during_concurrent_writes(Config::new().sync("always"));
}

#[test]
fn kill9_during_concurrent_writes_loses_nothing_acknowledged_encrypted() {
    let keys = tempfile::tempdir().unwrap();
    kill9_during_concurrent_writes(encrypted(Config::new().sync("always"), keys.path(), 7));
}

#[test]
fn kill9_during_concurrent_writes_loses_nothing_acknowledged_sync_never() {
    kill9_during_concurrent_writes(Config::new().sync("never"));
}

#[test]
fn kill9_during_concurrent_writes_loses_nothing_acknowledged_sync_interval() {
    kill9_during_concurrent_writes(Config::new().sync("interval").sync_interval_ms(50));
}

/// Writes some data, kills the node, appends `tail(log bytes)` to data.log,
/// and checks the restart truncates it with a warning and serves everything;
/// a second restart must then be clean.
fn torn_tail_is_truncated(tail: impl FnOnce(&[u8]) -> Vec<u8>) {
    let mut node = Node::start();
    let port = node.port();
    let mut keys = write_keys(port, "tail", 12);
    assert_eq!(delete(port, &keys[0].0).status, 200);
    let deleted = keys.remove(0).0;
    node.kill9();

    let log = node.data_log();
    let original = fs::read(&log).unwrap();
    let garbage = tail(&original);
    assert!(!garbage.is_empty());
    OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(&garbage)
        .unwrap();

    node.restart();
    let logs = node.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("[WARN]") && l.to_lowercase().contains("truncat")),
        "no [WARN] line about truncation; stderr:\n{logs}"
    );
    let port = node.port();
    assert_values(port, &keys);
    assert_error(&get(port, &deleted), 404, Some(NOT_FOUND));
    assert_eq!(
        fs::metadata(&log).unwrap().len(),
        original.len() as u64,
        "data.log was not truncated back to its last valid record"
    );

    assert_eq!(put(port, "/api/kv/after-recovery", b"new").status, 201);
    keys.push(("/api/kv/after-recovery".into(), b"new".to_vec()));
    node.kill9();
    let repaired_len = fs::metadata(&log).unwrap().len();
    node.restart();
    // The repair was made on disk: the next start finds nothing to truncate.
    // (Other warnings are allowed: a restart after kill -9 may warn that
    // there is no index hint file.)
    let logs = node.logs();
    assert!(
        !logs.lines().any(|l| l.contains("[ERROR]")
            || (l.contains("[WARN]") && l.to_lowercase().contains("truncat"))),
        "second restart after recovery found damage again:\n{logs}"
    );
    assert_eq!(fs::metadata(&log).unwrap().len(), repaired_len);
    assert_values(node.port(), &keys);
    assert_error(&get(node.port(), &deleted), 404, Some(NOT_FOUND));
}

#[test]
fn torn_tail_of_random_garbage_is_truncated_with_warning() {
    torn_tail_is_truncated(|_| b"\xde\xad\xbe\xef".repeat(25));
}

#[test]
fn torn_tail_of_zero_bytes_is_truncated_with_warning() {
    torn_tail_is_truncated(|_| vec![0; 4096]);
}

#[test]
fn torn_tail_of_partial_record_is_truncated_with_warning() {
    // A copy of the first record's header plus part of its key: a record
    // whose write was cut short.
    torn_tail_is_truncated(|log| log[32..32 + 40 + 3].to_vec());
}

const MARKER: &[u8] = b"MIDFILE-CORRUPTION-MARKER-5e1f";

/// Writes a victim record (value = MARKER) followed by more records, kills
/// the node, damages the victim with `damage(bytes, record_offset)` and checks
/// the node refuses to start, explains why, and leaves the file alone.
fn mid_file_corruption_refuses_to_start(damage: impl FnOnce(&mut [u8], usize)) {
    let mut node = Node::start();
    let port = node.port();
    let resp = request(
        port,
        "PUT",
        "/api/kv/victim",
        &[("Content-Type", "text/plain")],
        MARKER,
    );
    assert_eq!(resp.status, 201);
    write_keys(port, "later", 10);
    node.kill9();

    let log = node.data_log();
    let mut bytes = fs::read(&log).unwrap();
    let value_at = find_unique(&bytes, MARKER);
    let record_at = value_at - 40 - "victim".len() - "text/plain".len();
    assert_eq!(
        &bytes[record_at + 6..record_at + 8],
        &6u16.to_le_bytes(),
        "record layout"
    );
    damage(&mut bytes, record_at);
    fs::write(&log, &bytes).unwrap();

    let (status, stderr) = node.try_start_expect_failure();
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(
        stderr.contains("data.log"),
        "stderr does not name data.log:\n{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("offset"),
        "stderr has no offset:\n{stderr}"
    );
    assert!(
        stderr.contains("lucid check"),
        "stderr does not suggest `lucid check`:\n{stderr}"
    );
    assert!(
        fs::read(&log).unwrap() == bytes,
        "a failed start modified data.log"
    );
}

#[test]
fn mid_file_value_corruption_refuses_to_start() {
    mid_file_corruption_refuses_to_start(|bytes, record_at| {
        let value_at = record_at + 40 + "victim".len() + "text/plain".len();
        bytes[value_at + 5] ^= 0x20;
    });
}

#[test]
fn mid_file_length_corruption_refuses_to_start() {
    // Top byte of the value length: the record now claims to run ~16 MiB
    // past the end of the file, yet valid records follow it.
    mid_file_corruption_refuses_to_start(|bytes, record_at| bytes[record_at + 11] ^= 0x01);
}

#[test]
fn second_server_on_locked_directory_fails_clearly() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put(port, "/api/kv/held", b"mine").status, 201);

    let (status, stderr) = node.try_start_expect_failure();
    assert!(!status.success(), "exit status {status}");
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("in use") || lower.contains("lock"),
        "stderr does not say the directory is in use/locked:\n{stderr}"
    );

    // The first node is unaffected and still owns the directory.
    assert!(node.data_dir().join("LOCK").exists());
    assert_eq!(get(port, "/api/kv/held").body, b"mine");
    assert_eq!(put(port, "/api/kv/more", b"x").status, 201);
    let (status, _) = node.try_start_expect_failure();
    assert!(!status.success());
}
