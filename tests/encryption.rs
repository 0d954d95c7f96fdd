//! Encryption at rest through the real binary: `init --encrypt`, nothing in
//! the clear on disk, wrong or exposed keys refused with a clear message,
//! key rotation with `compact --new-key-file`.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;

const MARKER: &str = "wallet-private-key-3f9c1a";

#[test]
fn init_encrypt_creates_a_private_key_and_an_encrypted_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lucid.yml");
    let out = run_lucid(
        &["--config", config.to_str().unwrap(), "init", "--encrypt"],
        dir.path(),
    );
    assert!(out.status.success(), "{out:?}");
    let key = dir.path().join("lucid.key");
    let meta = fs::metadata(&key).unwrap();
    assert_eq!(meta.len(), 32);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = fs::read_to_string(&config).unwrap();
    assert!(text.contains("enabled: true"), "{text}");
    // Relative to the config's directory, where the key is.
    assert!(text.contains("key_file: ./lucid.key"), "{text}");
    // The key is not in the config, and init never overwrites a key file.
    let key_bytes = fs::read(&key).unwrap();
    assert!(!text.as_bytes().windows(32).any(|w| w == key_bytes));
    fs::remove_file(&config).unwrap();
    let again = run_lucid(
        &["--config", config.to_str().unwrap(), "init", "--encrypt"],
        dir.path(),
    );
    assert!(!again.status.success());
    assert_eq!(fs::read(&key).unwrap(), key_bytes);
}

#[test]
fn values_and_keys_never_reach_the_disk_in_the_clear() {
    let keys = tempfile::tempdir().unwrap();
    let mut node = encrypted(Config::new(), keys.path(), 1).start();
    let port = node.port();
    let value = format!("{MARKER} and trailing NULs\0\0\0");
    assert_eq!(put(port, &kv_path(MARKER), value.as_bytes()).status, 201);
    let batch = format!(r#"{{"operations":[{{"op":"put","key":"b","value":"{MARKER}"}}]}}"#);
    assert_eq!(
        request(port, "POST", "/api/batch", &[], batch.as_bytes()).status,
        200
    );
    assert_eq!(get(port, &kv_path(MARKER)).body, value.as_bytes());
    let listed = get(port, "/api/kv?prefix=wallet");
    assert!(listed.text().contains(MARKER), "listing: {}", listed.text());
    assert_eq!(node.stop().code(), Some(0));
    // Log and hint file written; neither shows the key or the value.
    assert!(node.data_dir().join("data.hint").exists());
    assert!(!any_file_contains(&node.data_dir(), MARKER.as_bytes()));
    node.restart();
    assert_eq!(get(node.port(), &kv_path(MARKER)).body, value.as_bytes());
    assert_eq!(get(node.port(), "/api/kv/b").body, MARKER.as_bytes());
    let compacted = request(node.port(), "POST", "/api/admin/compact", &[], b"");
    assert_eq!(compacted.status, 200);
    node.kill9();
    assert!(!any_file_contains(&node.data_dir(), MARKER.as_bytes()));
    node.restart();
    assert_eq!(get(node.port(), &kv_path(MARKER)).body, value.as_bytes());
}

/// Replaces the key file's bytes (mode 0600 kept).
fn overwrite_key(path: &std::path::Path, byte: u8) {
    fs::write(path, [byte; 32]).unwrap();
}

#[test]
fn a_wrong_missing_or_exposed_key_is_refused_with_a_clear_message() {
    let keys = tempfile::tempdir().unwrap();
    let mut node = encrypted(Config::new(), keys.path(), 1).start();
    put(node.port(), "/api/kv/k", b"v");
    node.stop();
    let key = keys.path().join("key-1");
    overwrite_key(&key, 2);
    let (_, logs) = node.try_start_expect_failure();
    assert!(logs.contains("encrypted with another key"), "{logs}");
    fs::remove_file(&key).unwrap();
    let (_, logs) = node.try_start_expect_failure();
    assert!(
        logs.contains("cannot read the encryption key file"),
        "{logs}"
    );
    overwrite_key(&key, 1);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let (status, logs) = node.try_start_expect_failure();
    assert!(!status.success());
    assert!(logs.contains("chmod 600"), "{logs}");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    node.restart();
    assert_eq!(get(node.port(), "/api/kv/k").body, b"v");
}

#[test]
fn compact_with_a_new_key_file_rotates_the_key() {
    let keys = tempfile::tempdir().unwrap();
    let mut node = encrypted(Config::new(), keys.path(), 1).start();
    let port = node.port();
    for i in 0..50 {
        put(
            port,
            &format!("/api/kv/k{i}"),
            format!("{MARKER}-{i}").as_bytes(),
        );
    }
    node.stop();
    let new_key = keys.path().join("new.key");
    overwrite_key(&new_key, 9);
    fs::set_permissions(&new_key, fs::Permissions::from_mode(0o600)).unwrap();
    let out = node.run(&["compact", "--new-key-file", new_key.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("encryption.key_file"));
    // The old key no longer opens the directory; the new one does (the
    // config's key file now holds the new key's bytes).
    let (_, logs) = node.try_start_expect_failure();
    assert!(logs.contains("another key"), "{logs}");
    overwrite_key(&keys.path().join("key-1"), 9);
    node.restart();
    for i in 0..50 {
        let got = get(node.port(), &format!("/api/kv/k{i}"));
        assert_eq!(got.body, format!("{MARKER}-{i}").as_bytes());
    }
    node.stop();
    assert!(!any_file_contains(&node.data_dir(), MARKER.as_bytes()));
}

/// What the format 1 fixture holds: keys and values, as they were written
/// (`None`: deleted).
const FORMAT_1_FIXTURE: &[(&str, Option<&[u8]>)] = &[
    ("plain", Some(b"second version")),
    ("typed", Some(b"{\"a\":1}")),
    ("nul", Some(b"nul\0\0\0")),
    ("gone", None),
    ("far", Some(b"expires in ten years")),
    ("batch/a", Some(b"A")),
    ("batch/b", Some(b"B2")),
    ("batch/c", None),
    ("wallet/key", Some(b"locked secret")),
];

/// Flags of the records at the top level of a log (frames' members not
/// visited), from their headers.
fn record_flags(log: &std::path::Path) -> Vec<u8> {
    let bytes = fs::read(log).unwrap();
    let (mut at, mut flags) = (32, Vec::new());
    while at < bytes.len() {
        let field = |from: usize, len: usize| {
            let mut le = [0u8; 8];
            le[..len].copy_from_slice(&bytes[at + from..at + from + len]);
            u64::from_le_bytes(le) as usize
        };
        flags.push(bytes[at + 5]);
        at += 40 + field(6, 2) + field(8, 4) + field(12, 1);
    }
    flags
}

/// Bit 3 of a record's flags: a movable envelope (with a place tag).
const MOVABLE: u8 = 8;

#[test]
fn an_encrypted_log_from_before_place_tags_opens_and_compaction_converts_it() {
    // tests/fixtures/encrypted-v1: a log of format 1 envelopes (plain and
    // typed puts, an overwrite, a delete, a TTL, two batches, a locked key;
    // `sync: always`, so sync markers too; ended by kill -9) and its key.
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encrypted-v1");
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("lucid.key");
    fs::copy(fixture.join("lucid.key"), &key).unwrap();
    let mut node = encrypted_by(Config::new(), &key).prepare();
    fs::create_dir_all(node.data_dir()).unwrap();
    fs::copy(fixture.join("data.log"), node.data_log()).unwrap();
    let holds_the_fixture = |node: &Node| {
        let port = node.port();
        for &(key, value) in FORMAT_1_FIXTURE {
            let got = get(port, &kv_path(key));
            match value {
                Some(value) => assert_eq!(got.body, value, "{key}"),
                None => assert_eq!(got.status, 404, "{key}"),
            }
        }
        let typed = get(port, "/api/kv/typed");
        assert_eq!(typed.header("content-type"), Some("application/json"));
        let listed = get(port, "/api/kv?prefix=far").text();
        let expiry = listed.split("\"expires_at\":").nth(1).unwrap_or_default();
        assert!(expiry.starts_with(|c: char| c.is_ascii_digit()), "{listed}");
        assert_eq!(put(port, &kv_path("wallet/key"), b"x").status, 409);
    };
    node.restart();
    holds_the_fixture(&node);
    let before = record_flags(&node.data_log());
    assert!(
        before.iter().all(|flags| flags & MOVABLE == 0),
        "{before:?}"
    );
    // New records after old ones, the log read whole after kill -9.
    assert_eq!(put(node.port(), "/api/kv/mixed", b"new format").status, 201);
    node.kill9();
    node.restart();
    holds_the_fixture(&node);
    assert_eq!(get(node.port(), "/api/kv/mixed").body, b"new format");
    let mixed = record_flags(&node.data_log());
    assert_eq!(mixed[..before.len()], before[..]);
    assert!(mixed[before.len()..]
        .iter()
        .any(|flags| flags & MOVABLE != 0));
    let compacted = request(node.port(), "POST", "/api/admin/compact", &[], b"");
    assert_eq!(compacted.status, 200);
    let after = record_flags(&node.data_log());
    assert_eq!(after.len(), 8, "one record per live key: {after:?}");
    assert!(after.iter().all(|flags| flags & MOVABLE != 0), "{after:?}");
    holds_the_fixture(&node);
    // Written since, then recovered from the log alone.
    assert_eq!(put(node.port(), "/api/kv/new", b"after").status, 201);
    node.kill9();
    node.restart();
    holds_the_fixture(&node);
    assert_eq!(get(node.port(), "/api/kv/new").body, b"after");
}
