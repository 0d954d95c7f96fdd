//! Snapshots through the real binary: `GET /api/admin/snapshot`, `lucid
//! snapshot save|verify|restore`, and scheduled backups: a snapshot taken
//! under a write load restores elsewhere to exactly what was acknowledged
//! before it; every kind of bad input is refused and writes nothing; an
//! interrupted save or restore leaves nothing half-done.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Keys written before a snapshot, in batches.
const BULK: usize = 3000;

fn url(node: &Node) -> String {
    format!("http://127.0.0.1:{}", node.port())
}

/// Every key of a node with all it carries (value, content type, version,
/// expiry, lock), by key, through `lucid export`.
fn keys(node: &Node) -> BTreeMap<String, Value> {
    let out = node.run(&["export", "--url", &url(node)]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            (value["key"].as_str().unwrap().to_string(), value)
        })
        .collect()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `lucid snapshot save FILE` from `node`.
fn save(node: &Node, file: &Path) -> Output {
    node.run(&[
        "snapshot",
        "save",
        file.to_str().unwrap(),
        "--url",
        &url(node),
    ])
}

/// `lucid snapshot verify FILE` (no config: the defaults).
fn verify(file: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["snapshot", "verify", file.to_str().unwrap()];
    args.extend(extra);
    run_lucid(&args, file.parent().unwrap())
}

/// `lucid snapshot restore FILE` into `node`'s data directory.
fn restore(node: &Node, file: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["snapshot", "restore", file.to_str().unwrap()];
    args.extend(extra);
    node.run(&args)
}

/// A node that is not started, with the same config as `Config::new()`.
fn stopped_node(config: Config) -> Node {
    config.prepare()
}

/// The version in the snapshot's description ("up to version N").
fn snapshot_version(out: &Output) -> u64 {
    let said = text(out);
    let at = said.find("up to version ").expect("a version") + "up to version ".len();
    said[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_snapshot_under_writes_restores_elsewhere_to_exactly_what_was_acknowledged() {
    let source = Node::start();
    let port = source.port();
    write_bulk(port, BULK);
    write_varied(port);
    assert_eq!(delete(port, "/api/kv/bulk/00007").status, 200);
    // Pairs written atomically, one after the other, during the save.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<(usize, Instant)>::new()));
    let writer = {
        let (stop, acknowledged) = (Arc::clone(&stop), Arc::clone(&acknowledged));
        thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let body = json!({"operations": [
                    {"op": "put", "key": format!("pair/{i:06}/a"), "value": "a"},
                    {"op": "put", "key": format!("pair/{i:06}/b"), "value": "b"},
                ]})
                .to_string();
                let resp = request(port, "POST", "/api/batch", &[], body.as_bytes());
                assert_eq!(resp.status, 200, "{}", resp.text());
                acknowledged.lock().unwrap().push((i, Instant::now()));
                i += 1;
            }
        })
    };
    while acknowledged.lock().unwrap().len() < 20 {
        thread::sleep(Duration::from_millis(5));
    }
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("pi.snapshot");
    let began = Instant::now();
    let saved = save(&source, &file);
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(saved.status.success(), "{}", text(&saved));
    let said = text(&saved);
    assert!(said.contains("keys") && said.contains("bytes"), "{said}");
    let version = snapshot_version(&saved);
    let checked = verify(&file, &[]);
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(text(&checked).contains(": ok"), "{}", text(&checked));

    let mut target = stopped_node(Config::new());
    let restored = restore(&target, &file, &[]);
    assert!(restored.status.success(), "{}", text(&restored));
    target.restart();
    let copy = keys(&target);
    // Every pair acknowledged before the save began is in it, and every
    // pair is whole or absent.
    let before = acknowledged
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, at)| *at < began)
        .count();
    let pairs = copy.keys().filter(|key| key.starts_with("pair/")).count();
    assert_eq!(pairs % 2, 0, "half a batch");
    assert!(
        pairs / 2 >= before,
        "{} pairs, {before} acknowledged before",
        pairs / 2
    );
    for i in 0..pairs / 2 {
        for side in ["a", "b"] {
            assert!(
                copy.contains_key(&format!("pair/{i:06}/{side}")),
                "{i}{side}"
            );
        }
    }
    // Keys not written during the save are exactly as on the source:
    // value, content type, version, expiry, lock.
    let original = keys(&source);
    let settled = |all: &BTreeMap<String, Value>| -> BTreeMap<String, Value> {
        all.iter()
            .filter(|(key, _)| !key.starts_with("pair/"))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    };
    assert_eq!(settled(&copy), settled(&original));
    assert_eq!(settled(&copy).len(), BULK - 1 + 4);
    assert!(copy
        .values()
        .all(|v| v["version"].as_u64().unwrap() <= version));
    // The node writes on after the snapshot's versions.
    let resp = put(target.port(), "/api/kv/after", b"x");
    assert_eq!(resp.status, 201);
    let after = keys(&target)["after"]["version"].as_u64().unwrap();
    assert!(after > version, "{after} <= {version}");
    // A locked key is still locked.
    assert_eq!(put(target.port(), "/api/kv/text/locked", b"no").status, 409);
}

/// A node holding `BULK` keys, a scratch directory, and the bytes of a
/// good snapshot of the node.
fn bulk_snapshot() -> (Node, tempfile::TempDir, Vec<u8>) {
    let source = Node::start();
    write_bulk(source.port(), BULK);
    let scratch = tempfile::tempdir().unwrap();
    let good = scratch.path().join("good.snapshot");
    assert!(save(&source, &good).status.success());
    let bytes = fs::read(&good).unwrap();
    (source, scratch, bytes)
}

#[test]
fn every_bad_snapshot_is_refused_with_a_reason_and_restores_nothing() {
    let (_source, scratch, bytes) = bulk_snapshot();
    let bad = |name: &str, content: &[u8]| -> PathBuf {
        let path = scratch.path().join(name);
        fs::write(&path, content).unwrap();
        path
    };
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x10;
    let mut newer = bytes.clone();
    newer[8] = 9;
    let cases = [
        (bad("truncated", &bytes[..bytes.len() - 100]), "truncated"),
        (bad("flipped", &flipped), "damaged"),
        (bad("newer", &newer), "newer"),
        (
            bad("text", b"just some text, not a snapshot\n"),
            "not a Lucid snapshot",
        ),
        (bad("empty", b""), "not a Lucid snapshot"),
    ];
    let target = stopped_node(Config::new());
    for (path, reason) in &cases {
        let checked = verify(path, &[]);
        assert!(!checked.status.success(), "{path:?}");
        assert!(
            text(&checked).contains(reason),
            "{path:?}: {}",
            text(&checked)
        );
        let restored = restore(&target, path, &[]);
        assert!(!restored.status.success(), "{path:?}");
        assert!(
            text(&restored).contains(reason),
            "{path:?}: {}",
            text(&restored)
        );
        assert!(!target.data_log().exists(), "{path:?} wrote a log");
        if target.data_dir().exists() {
            let left: Vec<_> = fs::read_dir(target.data_dir())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|name| name != "LOCK")
                .collect();
            assert!(left.is_empty(), "{path:?} left {left:?}");
        }
    }
    // A missing file is named.
    let missing = verify(&scratch.path().join("nope"), &[]);
    assert!(text(&missing).contains("nope"), "{}", text(&missing));
}

#[test]
fn a_directory_holding_data_is_restored_into_only_with_force_which_keeps_the_old_log() {
    let mut node = Node::start();
    put(node.port(), "/api/kv/old", b"before");
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("s.snapshot");
    assert!(save(&node, &file).status.success());
    put(node.port(), "/api/kv/new", b"after the snapshot");
    // Not beside a running node.
    let running = restore(&node, &file, &["--force"]);
    assert!(!running.status.success());
    assert!(text(&running).contains("in use"), "{}", text(&running));
    assert_eq!(node.stop().code(), Some(0));
    let refused = restore(&node, &file, &[]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("--force"), "{}", text(&refused));
    let forced = restore(&node, &file, &["--force"]);
    assert!(forced.status.success(), "{}", text(&forced));
    assert!(
        text(&forced).contains("before-restore"),
        "{}",
        text(&forced)
    );
    let aside: Vec<_> = fs::read_dir(node.data_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("data.log.before-restore-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    node.restart();
    assert_eq!(get(node.port(), "/api/kv/old").body, b"before");
    assert_eq!(get(node.port(), "/api/kv/new").status, 404);
}

#[test]
fn an_encrypted_snapshot_stays_sealed_and_needs_its_key() {
    let keys_dir = tempfile::tempdir().unwrap();
    const MARKER: &str = "wallet-seed-words-1234";
    let mut source = encrypted(Config::new(), keys_dir.path(), 1).start();
    assert_eq!(
        put(source.port(), "/api/kv/wallet", MARKER.as_bytes()).status,
        201
    );
    write_bulk(source.port(), BULK);
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("sealed.snapshot");
    let saved = save(&source, &file);
    assert!(saved.status.success(), "{}", text(&saved));
    assert!(text(&saved).contains("encrypted"), "{}", text(&saved));
    assert!(!any_file_contains(scratch.path(), MARKER.as_bytes()));
    assert!(!any_file_contains(scratch.path(), b"bulk/0"));
    // Checked without the key: said so.
    let unkeyed = verify(&file, &[]);
    assert!(unkeyed.status.success(), "{}", text(&unkeyed));
    assert!(text(&unkeyed).contains("--key-file"), "{}", text(&unkeyed));
    let key = keys_dir.path().join("key-1");
    let keyed = verify(&file, &["--key-file", key.to_str().unwrap()]);
    assert!(keyed.status.success(), "{}", text(&keyed));
    // Restoring needs the key, and the right one.
    let plain = stopped_node(Config::new());
    let refused = restore(&plain, &file, &[]);
    assert!(text(&refused).contains("key file"), "{}", text(&refused));
    let wrong = stopped_node(encrypted(Config::new(), keys_dir.path(), 2));
    let refused = restore(&wrong, &file, &[]);
    assert!(text(&refused).contains("another key"), "{}", text(&refused));
    assert!(!wrong.data_log().exists());
    let mut right = stopped_node(encrypted(Config::new(), keys_dir.path(), 1));
    let restored = restore(&right, &file, &[]);
    assert!(restored.status.success(), "{}", text(&restored));
    assert!(text(&restored).contains("key file"), "{}", text(&restored));
    assert!(!any_file_contains(&right.data_dir(), MARKER.as_bytes()));
    right.restart();
    assert_eq!(get(right.port(), "/api/kv/wallet").body, MARKER.as_bytes());
    assert_eq!(get(right.port(), "/api/kv/bulk/00042").status, 200);
    source.stop();
}

/// Writes about `mb` MiB of 100 KiB values, so a snapshot takes a while.
fn write_large(port: u16, mb: usize) {
    let value = vec![b'v'; 100 * 1024];
    for i in 0..mb * 10 {
        assert_eq!(
            put(port, &format!("/api/kv/large/{i:05}"), &value).status,
            201
        );
    }
}

/// Sends `signal` (STOP, CONT) to the process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits up to 10 s for `path` to exist.
fn wait_for(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
    true
}

#[test]
fn a_node_killed_during_a_save_leaves_no_snapshot() {
    let mut node = Node::start();
    write_large(node.port(), 40);
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("cut.snapshot");
    let partial = scratch.path().join("cut.snapshot.partial");
    let mut saving = Command::new(BIN)
        .args([
            "snapshot",
            "save",
            file.to_str().unwrap(),
            "--url",
            &url(&node),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for(&partial), "the save never began");
    // The client pauses with the snapshot half sent; the node dies.
    signal(saving.id(), "STOP");
    node.kill9();
    signal(saving.id(), "CONT");
    let status = saving.wait().unwrap();
    let mut said = String::new();
    saving
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    assert!(!status.success(), "{said}");
    assert!(said.contains("nothing was saved"), "{said}");
    assert!(!file.exists() && !partial.exists());
}

#[test]
fn a_cut_stream_never_passes_for_a_snapshot() {
    // A server that sends the first half of a real snapshot, then hangs up.
    let (_source, scratch, bytes) = bulk_snapshot();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut head = [0u8; 1024];
        let _ = conn.read(&mut head).unwrap();
        let half = &bytes[..bytes.len() / 2];
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:X}\r\n",
            half.len()
        );
        let _ = conn.write_all(half);
        let _ = conn.write_all(b"\r\n");
    });
    let file = scratch.path().join("cut.snapshot");
    let out = run_lucid(
        &[
            "snapshot",
            "save",
            file.to_str().unwrap(),
            "--url",
            &format!("http://127.0.0.1:{port}"),
        ],
        scratch.path(),
    );
    server.join().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!file.exists(), "{}", text(&out));
    assert!(!scratch.path().join("cut.snapshot.partial").exists());
}

#[test]
fn a_restore_killed_midway_leaves_the_old_state_or_the_new_one() {
    let source = Node::start();
    write_large(source.port(), 40);
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("big.snapshot");
    let saved = save(&source, &file);
    assert!(saved.status.success(), "{}", text(&saved));
    let mut target = Node::start();
    put(target.port(), "/api/kv/old", b"still here");
    target.stop();
    let restoring = target.data_dir().join("data.log.restore");
    let mut child = Command::new(BIN)
        .args(["--config"])
        .arg(target.data_dir().parent().unwrap().join("lucid.yml"))
        .args(["snapshot", "restore", file.to_str().unwrap(), "--force"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&restoring);
    let _ = child.kill();
    child.wait().unwrap();
    target.restart();
    let old = get(target.port(), "/api/kv/old");
    let restored = get(target.port(), "/api/kv/large/00000");
    match (old.status, restored.status) {
        // Killed before the switch: the old state, the leftover removed.
        (200, 404) => assert!(!restoring.exists()),
        // Killed after it: the snapshot's state, whole.
        (404, 200) => assert_eq!(get(target.port(), "/api/kv/large/00399").status, 200),
        other => panic!("half-restored: {other:?}"),
    }
    // A restore run to its end gives the snapshot's state.
    target.stop();
    let again = restore(&target, &file, &["--force"]);
    assert!(again.status.success(), "{}", text(&again));
    target.restart();
    assert_eq!(get(target.port(), "/api/kv/large/00399").status, 200);
    assert_eq!(get(target.port(), "/api/kv/old").status, 404);
}

/// Runs `lucid ARGS` with writes limited to `bytes` per file (SIGXFSZ
/// ignored, so a write past it fails like one to a full disk).
fn run_with_file_limit(args: &[&str], bytes: u64, cwd: &Path) -> Output {
    let mut script = format!("trap '' XFSZ; exec prlimit --fsize={bytes} '{BIN}'");
    for arg in args {
        script.push_str(&format!(" '{arg}'"));
    }
    Command::new("sh")
        .args(["-c", &script])
        .current_dir(cwd)
        .output()
        .unwrap()
}

#[test]
fn a_full_disk_during_save_or_restore_writes_nothing() {
    let source = Node::start();
    write_bulk(source.port(), BULK);
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("full.snapshot");
    let url = url(&source);
    let cut = run_with_file_limit(
        &["snapshot", "save", file.to_str().unwrap(), "--url", &url],
        64 * 1024,
        scratch.path(),
    );
    assert!(!cut.status.success(), "{}", text(&cut));
    assert!(text(&cut).contains("cannot write"), "{}", text(&cut));
    assert!(fs::read_dir(scratch.path()).unwrap().next().is_none());
    assert!(save(&source, &file).status.success());
    let target = stopped_node(Config::new());
    let config = target.data_dir().parent().unwrap().join("lucid.yml");
    let cut = run_with_file_limit(
        &[
            "--config",
            config.to_str().unwrap(),
            "snapshot",
            "restore",
            file.to_str().unwrap(),
        ],
        64 * 1024,
        scratch.path(),
    );
    assert!(!cut.status.success(), "{}", text(&cut));
    assert!(text(&cut).contains("nothing was changed"), "{}", text(&cut));
    assert!(!target.data_log().exists());
    assert!(!target.data_dir().join("data.log.restore").exists());
}

/// The value of the metric `name` on the node's `/metrics` page.
fn metric(port: u16, name: &str) -> f64 {
    let page = get(port, "/metrics").text();
    page.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        .parse()
        .unwrap()
}

#[test]
fn scheduled_backups_rotate_and_report_failures() {
    let backups = tempfile::tempdir().unwrap();
    let dir = backups.path().join("usb");
    fs::create_dir(&dir).unwrap();
    let node = Config::new()
        .raw("authentication", "metrics_public: true")
        .raw("backup", &format!("directory: '{}'", dir.display()))
        .raw("backup", "interval: 1s")
        .raw("backup", "keep: 2")
        .start();
    write_bulk(node.port(), BULK);
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(node.port(), "lucid_backup_last_success_bytes") == 0.0
        || fs::read_dir(&dir).unwrap().count() < 2
    {
        assert!(Instant::now() < deadline, "no backups: {}", node.logs());
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(2500));
    let files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snapshot"))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for file in &files {
        let checked = verify(file, &[]);
        assert!(checked.status.success(), "{}", text(&checked));
    }
    assert!(metric(node.port(), "lucid_backup_last_success_timestamp_seconds") > 0.0);
    assert_eq!(metric(node.port(), "lucid_backup_failures_total"), 0.0);
    // The stick is pulled: failures are counted and named, the node serves on.
    fs::remove_dir_all(&dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(node.port(), "lucid_backup_failures_total") == 0.0 {
        assert!(Instant::now() < deadline, "no failure: {}", node.logs());
        thread::sleep(Duration::from_millis(100));
    }
    let health = get(node.port(), "/health");
    assert_eq!(health.status, 200);
    let health: Value = serde_json::from_slice(&health.body).unwrap();
    assert_eq!(health["status"], "ok");
    assert!(
        health["backup"]["last_failure"]
            .as_str()
            .unwrap()
            .contains("mounted"),
        "{health}"
    );
    node.assert_serving();
}
