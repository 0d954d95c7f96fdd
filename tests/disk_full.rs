//! A real full disk: the node's data directory on a 1 MiB tmpfs.
//!
//! Mounting needs root (CI runs as root). Where mounting is impossible the
//! test says so on stderr and passes without checking anything.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A tmpfs mounted for the test's lifetime.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|status| status.success());
        mounted.then(|| Self(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_gets_507_leaves_nothing_partial_and_recovers_when_space_is_freed() {
    let mut node = Config::new().sync("always").prepare();
    let Some(_mount) = Mount::tmpfs(&node.data_dir(), "1m") else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the full-disk test did not run"
        );
        return;
    };
    // Room to free later: the log fills what the filler leaves.
    let filler = node.data_dir().join("filler");
    std::fs::write(&filler, vec![0u8; 256 * 1024]).unwrap();
    node.restart();
    let port = node.port();

    let value = vec![b'v'; 32 * 1024];
    let mut stored = Vec::new();
    let full = loop {
        assert!(stored.len() < 64, "the 1 MiB disk never filled up");
        let path = format!("/api/kv/blob/{}", stored.len());
        let resp = put(port, &path, &value);
        match resp.status {
            201 => stored.push(path),
            507 => break resp,
            other => panic!("PUT answered {other}: {}", resp.text()),
        }
    };
    assert_error(&full, 507, None);
    assert!(full.text().contains("disk is full"), "{}", full.text());

    // Nothing partial: the log ends exactly where the store says it does.
    let log_bytes = std::fs::metadata(node.data_log()).unwrap().len();
    let stats = get(port, "/api/admin/stats");
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    assert_eq!(stats["log_bytes"].as_u64(), Some(log_bytes));
    assert_eq!(stats["read_only"], false);

    // Reads keep working.
    for path in &stored {
        assert_eq!(get(port, path).body, value, "GET {path}");
    }
    assert_eq!(
        get(port, &format!("/api/kv/blob/{}", stored.len())).status,
        404
    );

    // Free space: writes work again.
    std::fs::remove_file(&filler).unwrap();
    let path = format!("/api/kv/blob/{}", stored.len());
    assert_message(&put(port, &path, &value), 201, CREATED);
    stored.push(path);

    // And everything acknowledged survives a crash.
    node.kill9();
    node.restart();
    for path in &stored {
        assert_eq!(
            get(node.port(), path).body,
            value,
            "GET {path} after restart"
        );
    }
    node.kill9();
}
