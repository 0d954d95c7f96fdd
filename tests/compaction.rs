//! Compaction, hint files, clean shutdown and repair, through the real
//! binary.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// 20 keys, each overwritten 10 times; every fourth deleted. Returns the
/// expected (path, value) of the live ones.
fn churn(port: u16) -> Vec<(String, Vec<u8>)> {
    for round in 0..10 {
        for k in 0..20 {
            let value = format!("round {round} of key {k} ").repeat(20);
            let status = put(port, &format!("/api/kv/churn/{k}"), value.as_bytes()).status;
            assert!(status == 200 || status == 201);
        }
    }
    for k in (0..20).step_by(4) {
        assert_eq!(delete(port, &format!("/api/kv/churn/{k}")).status, 200);
    }
    (0..20)
        .filter(|k| k % 4 != 0)
        .map(|k| {
            let value = format!("round 9 of key {k} ").repeat(20).into_bytes();
            (format!("/api/kv/churn/{k}"), value)
        })
        .collect()
}

#[track_caller]
fn assert_churned(port: u16, live: &[(String, Vec<u8>)]) {
    assert_values(port, live);
    for k in (0..20).step_by(4) {
        assert_eq!(
            get(port, &format!("/api/kv/churn/{k}")).status,
            404,
            "deleted key {k} came back"
        );
    }
}

fn stats(port: u16) -> serde_json::Value {
    let resp = get(port, "/api/admin/stats");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("Content-Type"), Some("application/json"));
    serde_json::from_slice(&resp.body).expect("stats are JSON")
}

#[test]
fn sigterm_stops_cleanly_and_the_restart_reads_the_hint() {
    let mut node = Config::new().sync("never").start();
    let live = churn(node.port());
    let status = node.stop();
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        node.logs()
    );
    assert!(node.logs().contains("stopped cleanly"), "{}", node.logs());
    node.restart();
    let logs = node.logs();
    assert!(
        logs.contains("15 keys, 15 from the hint file, 0 log records read"),
        "{logs}"
    );
    assert!(!logs.contains("[WARN]"), "{logs}");
    assert_churned(node.port(), &live);
}

#[test]
fn compaction_on_demand_keeps_every_value_and_survives_kill9() {
    let mut node = Node::start();
    let live = churn(node.port());
    let before = stats(node.port());
    assert_eq!(before["compactions"], 0);

    let resp = request(node.port(), "POST", "/api/admin/compact", &[], b"");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let report: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(report["live_keys"], 15);
    assert!(report["bytes_after"].as_u64() < report["bytes_before"].as_u64());
    // Milliseconds to a tenth, not 10.212888999999999.
    for field in ["duration_ms", "writers_paused_ms"] {
        let text = resp.text();
        let number = text
            .split(&format!("\"{field}\":"))
            .nth(1)
            .and_then(|rest| rest.split([',', '}']).next())
            .unwrap_or_else(|| panic!("no {field} in {text}"));
        let decimals = number.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 1, "{field}: {number}");
    }

    let after = stats(node.port());
    assert_eq!(after["compactions"], 1);
    assert_eq!(after["dead_bytes"], 0);
    assert_eq!(after["log_bytes"], report["bytes_after"]);
    assert_eq!(
        std::fs::metadata(node.data_log()).unwrap().len(),
        report["bytes_after"].as_u64().unwrap()
    );
    assert_churned(node.port(), &live);

    // Writes after compaction, then a crash.
    assert_eq!(put(node.port(), "/api/kv/after", b"compaction").status, 201);
    node.kill9();
    node.restart();
    assert_churned(node.port(), &live);
    assert_eq!(get(node.port(), "/api/kv/after").body, b"compaction");
    assert!(
        node.logs().contains("from the hint file"),
        "{}",
        node.logs()
    );
}

#[test]
fn compact_endpoint_accepts_only_post() {
    let node = Node::start();
    let resp = get(node.port(), "/api/admin/compact");
    assert_error(&resp, 405, None);
    assert_eq!(resp.header("Allow"), Some("POST"));
    let resp = request(node.port(), "DELETE", "/api/admin/stats", &[], b"");
    assert_error(&resp, 405, None);
}

#[test]
fn background_compaction_runs_when_the_log_is_mostly_dead() {
    let node = Config::new()
        .raw("compaction", "dead_ratio: 0.5")
        .raw("compaction", "min_dead_bytes: 4096")
        .start();
    let live = churn(node.port());
    let deadline = Instant::now() + Duration::from_secs(15);
    // The counter moves just before the compactor logs its report.
    while stats(node.port())["compactions"] == 0 || !node.logs().contains("background compaction") {
        assert!(
            Instant::now() < deadline,
            "no background compaction reported; stderr:\n{}",
            node.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_churned(node.port(), &live);
}

#[test]
fn offline_compact_leaves_a_running_server_alone_and_works_without_one() {
    let mut node = Node::start();
    let live = churn(node.port());
    let size = std::fs::metadata(node.data_log()).unwrap().len();

    let busy = node.run(&["compact"]);
    assert!(!busy.status.success());
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(stderr.contains("curl -X POST"), "{stderr}");
    assert_eq!(std::fs::metadata(node.data_log()).unwrap().len(), size);

    assert!(node.stop().success());
    let done = node.run(&["compact"]);
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(stdout.contains("live keys:       15"), "{stdout}");
    assert!(std::fs::metadata(node.data_log()).unwrap().len() < size);
    node.restart();
    assert_churned(node.port(), &live);
}

#[test]
fn check_repair_rebuilds_a_damaged_log_and_keeps_the_damaged_one() {
    let mut node = Node::start();
    let port = node.port();
    assert_eq!(put(port, "/api/kv/before", b"kept").status, 201);
    assert_eq!(
        put(port, "/api/kv/damaged", b"UNIQUE-MARKER-VALUE").status,
        201
    );
    assert_eq!(put(port, "/api/kv/after", b"kept too").status, 201);
    node.kill9();
    let log = node.data_log();
    let mut bytes = std::fs::read(&log).unwrap();
    let at = find_unique(&bytes, b"UNIQUE-MARKER-VALUE");
    bytes[at] ^= 0x01;
    std::fs::write(&log, &bytes).unwrap();

    let (status, stderr) = node.try_start_expect_failure();
    assert!(!status.success());
    assert!(stderr.contains("lucid check --repair"), "{stderr}");
    assert!(!node.run(&["check"]).status.success());

    let repaired = node.run(&["check", "--repair"]);
    let stdout = String::from_utf8_lossy(&repaired.stdout);
    assert!(
        repaired.status.success(),
        "{}",
        String::from_utf8_lossy(&repaired.stderr)
    );
    assert!(stdout.contains("damaged log kept as"), "{stdout}");
    let broken: Vec<_> = std::fs::read_dir(node.data_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("data.log.broken-")
        })
        .collect();
    assert_eq!(broken.len(), 1);
    assert_eq!(std::fs::read(broken[0].path()).unwrap(), bytes);
    assert!(node.run(&["check"]).status.success());

    node.restart();
    let port = node.port();
    assert_eq!(get(port, "/api/kv/before").body, b"kept");
    assert_eq!(get(port, "/api/kv/after").body, b"kept too");
    assert_eq!(get(port, "/api/kv/damaged").status, 404);
}

/// Writes `DIR/lucid.yml` for a node with authentication on, listening on a
/// fixed free port (`lucid compact` reads the port from the config).
fn secured_config_on_a_fixed_port(dir: &std::path::Path) -> (std::path::PathBuf, u16) {
    let port = free_port();
    let config = dir.join("lucid.yml");
    let yaml = format!(
        "general:\n  bind_address: 127.0.0.1\n  port: {port}\n  threads: 2\n\
         storage:\n  directory: ./data\n\
         authentication:\n  enabled: true\n  secret_key: \"{}\"\n",
        "s".repeat(32)
    );
    std::fs::write(&config, yaml).unwrap();
    (config, port)
}

#[test]
fn compact_beside_a_running_server_asks_it_when_given_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = secured_config_on_a_fixed_port(dir.path());
    let config = config.to_str().unwrap();
    let mut server = Server::spawn(&["--config", config, "server"], Some(dir.path()));
    assert_eq!(server.wait_listening(), Some(port), "{}", server.logs());
    let issue = |scopes: &[&str]| {
        let mut args = vec!["--config", config, "tokens", "issue", "--expires", "1h"];
        args.extend(scopes.iter().flat_map(|scope| ["--scope", scope]));
        let out = run_lucid(&args, dir.path());
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (admin, writer) = (issue(&["admin", "write"]), issue(&["read", "write"]));
    let bearer = format!("Bearer {admin}");
    let auth = [("Authorization", bearer.as_str())];
    for _ in 0..3 {
        assert_eq!(request(port, "PUT", "/api/kv/k", &auth, b"v").status, 201);
        assert_eq!(request(port, "DELETE", "/api/kv/k", &auth, b"").status, 200);
    }
    assert_eq!(
        request(port, "PUT", "/api/kv/kept", &auth, b"v").status,
        201
    );
    let compact = |token: Option<&str>, env: Option<&str>| {
        let mut args = vec!["--config", config, "compact"];
        args.extend(token.map(|token| ["--token", token]).into_iter().flatten());
        run_lucid_with(&args, dir.path(), |command| {
            command.env_remove("LUCID_TOKEN");
            if let Some(env) = env {
                command.env("LUCID_TOKEN", env);
            }
        })
    };

    // Without a token: the hint carries the header the node asks for.
    let out = compact(None, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let hint = format!(
        "curl -X POST -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:{port}/api/admin/compact"
    );
    assert!(stderr.contains(&hint), "{stderr}");

    // A token without the admin scope: the node's refusal is passed on.
    let out = compact(Some(&writer), None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("403"), "{stderr}");

    // With --token, then with $LUCID_TOKEN, the running node compacts.
    for (token, env) in [(Some(admin.as_str()), None), (None, Some(admin.as_str()))] {
        let out = compact(token, env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("compacted by the running server"),
            "{stdout}"
        );
        assert!(stdout.contains("live keys:       1"), "{stdout}");
    }
    let stats = request(port, "GET", "/api/admin/stats", &auth, b"");
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    assert_eq!(stats["compactions"], 2, "{stats}");
    assert!(server.is_running());
}
