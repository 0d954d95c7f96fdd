//! The command line: `init`, config validation, `check`, embedded defaults.

mod common;

use common::*;
use std::fs;
use std::path::Path;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Replaces the value of every uncommented `key:` line; `None` if there is none.
fn set_yaml_value(yaml: &str, key: &str, value: &str) -> Option<String> {
    let mut found = false;
    let lines: Vec<String> = yaml
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with(&format!("{key}:")) {
                found = true;
                let indent = &line[..line.len() - trimmed.len()];
                format!("{indent}{key}: {value}")
            } else {
                line.to_string()
            }
        })
        .collect();
    found.then(|| lines.join("\n") + "\n")
}

/// True if `text` contains `n` as a whole number (not part of a longer one).
fn contains_number(text: &str, n: u64) -> bool {
    text.split(|c: char| !c.is_ascii_digit())
        .any(|word| word == n.to_string())
}

/// A server started on port 7021 (embedded default) must either listen there
/// and keep its data in `cwd/lucid-data`, or fail because the port is taken.
fn assert_listens_on_7021_or_port_busy(server: &mut Server, cwd: &Path) {
    match server.wait_listening() {
        Some(port) => {
            assert_eq!(port, 7021, "stderr:\n{}", server.logs());
            assert!(server.logs().contains("listening on http://127.0.0.1:7021"));
            assert!(
                cwd.join("lucid-data").join("data.log").is_file(),
                "no ./lucid-data/data.log in the working directory"
            );
            assert_eq!(put(port, "/api/kv/defaults", b"ok").status, 201);
            assert_eq!(get(port, "/api/kv/defaults").body, b"ok");
        }
        None => {
            let status = server.wait_exit();
            let logs = server.logs();
            assert!(!status.success(), "server exited with {status}:\n{logs}");
            assert!(
                logs.to_lowercase().contains("in use"),
                "server neither listened on 7021 nor reported the address in use:\n{logs}"
            );
        }
    }
}

#[test]
fn init_writes_commented_config_that_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sample.yml");
    let out = run_lucid(&["--config", config.to_str().unwrap(), "init"], dir.path());
    assert!(out.status.success(), "init failed: {}", stderr_of(&out));
    let sample = fs::read_to_string(&config).expect("init wrote no file");
    assert!(
        sample.lines().any(|l| l.trim_start().starts_with('#')),
        "the sample config has no comments:\n{sample}"
    );

    // Point the sample at a free port and a private data directory when it
    // sets them; otherwise it runs on the defaults (cwd is the tempdir).
    let data = dir.path().join("data");
    let with_port = set_yaml_value(&sample, "port", "0");
    let mut edited = with_port.clone().unwrap_or_else(|| sample.clone());
    if let Some(text) = set_yaml_value(&edited, "directory", &format!("'{}'", data.display())) {
        edited = text;
    }
    fs::write(&config, &edited).unwrap();
    let args = ["--config", config.to_str().unwrap(), "server"];
    let mut server = Server::spawn(&args, Some(dir.path()));
    if with_port.is_none() {
        assert_listens_on_7021_or_port_busy(&mut server, dir.path());
        return;
    }
    let port = server.wait_listening().unwrap_or_else(|| {
        panic!(
            "server rejected the init config:\n{}\n{edited}",
            server.logs()
        )
    });
    // init turned authentication on and printed a root token, last.
    assert_eq!(put(port, "/api/kv/k", b"v").status, 401);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let bearer = format!("Bearer {}", stdout.lines().last().unwrap());
    let auth = [("Authorization", bearer.as_str())];
    assert_eq!(request(port, "PUT", "/api/kv/k", &auth, b"v").status, 201);
    assert_eq!(request(port, "GET", "/api/kv/k", &auth, b"").body, b"v");
    assert_eq!(
        request(port, "GET", "/api/admin/stats", &auth, b"").status,
        200
    );
}

#[test]
fn init_without_config_flag_writes_lucid_yml_in_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_lucid(&["init"], dir.path());
    assert!(out.status.success(), "init failed: {}", stderr_of(&out));
    let written = fs::read_to_string(dir.path().join("lucid.yml")).expect("no ./lucid.yml");
    assert!(!written.trim().is_empty());
}

#[test]
fn init_refuses_to_overwrite_without_force_and_force_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lucid.yml");
    let path = config.to_str().unwrap();
    fs::write(&config, "# mine, do not touch\n").unwrap();

    let out = run_lucid(&["--config", path, "init"], dir.path());
    assert!(!out.status.success(), "init overwrote an existing file");
    assert!(
        stderr_of(&out).contains("--force"),
        "stderr does not mention --force: {}",
        stderr_of(&out)
    );
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        "# mine, do not touch\n"
    );

    let out = run_lucid(&["--config", path, "init", "--force"], dir.path());
    assert!(
        out.status.success(),
        "init --force failed: {}",
        stderr_of(&out)
    );
    let written = fs::read_to_string(&config).unwrap();
    assert_ne!(
        written, "# mine, do not touch\n",
        "--force did not overwrite"
    );
    assert!(
        written.contains("port"),
        "overwritten file is not the sample:\n{written}"
    );
}

#[test]
fn unknown_config_key_is_rejected_naming_the_key() {
    for (section, line, name) in [
        ("general", "prot: 1", "prot"),
        ("storage", "directroy: elsewhere", "directroy"),
        ("logging", "lvl: debug", "lvl"),
        ("extras", "anything: 1", "extras"),
    ] {
        let (status, stderr) = Config::new().raw(section, line).start_expect_failure();
        assert!(!status.success(), "{section}.{line}: exit status {status}");
        assert!(
            stderr.contains(name),
            "{section}.{line}: stderr does not name {name:?}:\n{stderr}"
        );
    }
}

#[test]
fn invalid_config_values_are_rejected() {
    for (config, words) in [
        (Config::new().sync("sometimes"), ["sometimes", "sync"]),
        (Config::new().level("loud"), ["loud", "level"]),
        (
            Config::new().raw("storage", "max_value_bytes: lots"),
            ["lots", "max_value_bytes"],
        ),
    ] {
        let (status, stderr) = config.start_expect_failure();
        assert!(!status.success(), "{words:?}: exit status {status}");
        assert!(
            words.iter().any(|w| stderr.contains(w)),
            "{words:?}: stderr does not explain the bad value:\n{stderr}"
        );
    }
}

#[test]
fn check_on_healthy_directory_exits_0_and_reports_live_keys() {
    let mut node = Node::start();
    let port = node.port();
    for i in 0..15 {
        assert_eq!(put(port, &format!("/api/kv/live/{i}"), b"v").status, 201);
    }
    assert_eq!(put(port, "/api/kv/live/3", b"v2").status, 200);
    assert_eq!(delete(port, "/api/kv/live/4").status, 200);
    assert_eq!(delete(port, "/api/kv/live/9").status, 200);
    node.kill9();
    let before = fs::read(node.data_log()).unwrap();

    let out = node.run(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check failed on a healthy dir: {stdout}{}",
        stderr_of(&out)
    );
    assert!(
        contains_number(&stdout, 13),
        "check summary lacks the 13 live keys:\n{stdout}"
    );
    assert!(
        fs::read(node.data_log()).unwrap() == before,
        "check modified data.log"
    );
}

#[test]
fn check_on_damaged_directory_exits_nonzero() {
    let mut node = Node::start();
    let port = node.port();
    assert_eq!(
        put(port, "/api/kv/first", b"CHECK-DAMAGE-MARKER-91c2").status,
        201
    );
    for i in 0..5 {
        assert_eq!(
            put(port, &format!("/api/kv/later/{i}"), b"fine").status,
            201
        );
    }
    node.kill9();
    let mut bytes = fs::read(node.data_log()).unwrap();
    let at = find_unique(&bytes, b"CHECK-DAMAGE-MARKER-91c2");
    bytes[at + 3] ^= 0x01;
    fs::write(node.data_log(), &bytes).unwrap();

    let out = node.run(&["check"]);
    assert!(!out.status.success(), "check passed a damaged log");
    assert!(
        !out.stdout.is_empty() || !out.stderr.is_empty(),
        "check failed without saying why"
    );
}

#[test]
fn server_without_config_file_uses_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::spawn(&["server"], Some(dir.path()));
    assert_listens_on_7021_or_port_busy(&mut server, dir.path());
}

/// Runs `lucid ARGS` with stdout a pipe whose reader is already gone, as in
/// `lucid init | head -1` once `head` has exited.
fn run_with_closed_stdout(args: &[&str], cwd: &Path) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    run_lucid_with(args, cwd, |command| {
        command.stdout(writer);
    })
}

#[test]
fn a_closed_stdout_ends_commands_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lucid.yml");
    let path = config.to_str().unwrap();
    // init writes the config first; the token it could not print is lost,
    // so it says how to make one.
    let out = run_with_closed_stdout(&["--config", path, "init"], dir.path());
    let stderr = stderr_of(&out);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.status.success(), "the lost token went unmentioned");
    assert!(stderr.contains("tokens issue"), "{stderr}");
    let written = fs::read_to_string(&config).unwrap();
    assert!(written.contains("secret_key: \""), "{written}");

    // Elsewhere a closed stdout ends the command quietly, as SIGPIPE would.
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let edited = set_yaml_value(&written, "directory", &format!("'{}'", data.display())).unwrap();
    fs::write(&config, edited).unwrap();
    for args in [
        vec![
            "--config",
            path,
            "tokens",
            "issue",
            "--scope",
            "read",
            "--expires",
            "1d",
        ],
        vec!["--config", path, "compact"],
        vec!["--config", path, "check"],
        vec!["--help"],
    ] {
        let out = run_with_closed_stdout(&args, dir.path());
        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

#[test]
fn a_port_in_use_leaves_no_data_directory_behind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("lucid.yml");
    let yaml = format!(
        "general:\n  bind_address: 127.0.0.1\n  port: {port}\nstorage:\n  directory: '{}'\n",
        data.display()
    );
    fs::write(&config, yaml).unwrap();
    let out = run_lucid(
        &["--config", config.to_str().unwrap(), "server"],
        dir.path(),
    );
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(
        !data.exists(),
        "the failed start left {} behind",
        data.display()
    );
}

/// Writes `DIR/lucid.yml` with `general.bind_address: BIND_ADDRESS` (YAML
/// text), port 0 and the data in `DIR/data`.
fn config_binding(dir: &Path, bind_address: &str) -> std::path::PathBuf {
    let config = dir.join("lucid.yml");
    let yaml = format!(
        "general:\n  bind_address: {bind_address}\n  port: 0\n  threads: 2\nstorage:\n  directory: '{}'\n",
        dir.join("data").display()
    );
    fs::write(&config, yaml).unwrap();
    config
}

/// Starts `lucid server` with `general.bind_address: BIND_ADDRESS` (YAML
/// text) on a free port, and returns the address it says it listens on
/// once `/health` answers there, with its log.
fn listening_address(bind_address: &str) -> (std::net::SocketAddr, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_binding(dir.path(), bind_address);
    let args = ["--config", config.to_str().unwrap(), "server"];
    let server = Server::spawn(&args, Some(dir.path()));
    let mut bound = None;
    let listening = eventually(STARTUP_TIMEOUT, || {
        bound = server
            .logs()
            .split("listening on http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
        bound.is_some()
    });
    assert!(listening, "{bind_address}: {}", server.logs());
    let addr: std::net::SocketAddr = bound.unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    use std::io::{Read, Write};
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    (addr, server.logs())
}

#[test]
fn bind_address_may_be_a_host_name_or_an_ipv6_address() {
    let (addr, logs) = listening_address("localhost");
    assert!(addr.ip().is_loopback(), "{addr}");
    assert!(
        logs.contains(&format!("bind_address localhost resolves to {}", addr.ip())),
        "{logs}"
    );
    for ipv6 in ["'[::1]'", "::1"] {
        let (addr, _) = listening_address(ipv6);
        assert_eq!(addr.ip().to_string(), "::1", "{ipv6}");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config_binding(dir.path(), "no-such-host.invalid");
    let out = run_lucid(
        &["--config", config.to_str().unwrap(), "server"],
        dir.path(),
    );
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot resolve general.bind_address"),
        "{stderr}"
    );
}

#[test]
fn relative_paths_in_a_config_are_relative_to_its_directory() {
    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let etc = home.path().join("etc");
    fs::create_dir(&etc).unwrap();
    // init writes relative paths; run from elsewhere, they still mean etc/.
    let out = run_lucid(
        &["--config", "etc/lucid.yml", "init", "--encrypt"],
        home.path(),
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let config = etc.join("lucid.yml");
    let text = fs::read_to_string(&config).unwrap();
    assert!(text.contains("directory: ./lucid-data"), "{text}");
    assert!(text.contains("key_file: ./lucid.key"), "{text}");
    assert!(
        text.contains("relative to the directory of this file"),
        "{text}"
    );
    fs::write(&config, set_yaml_value(&text, "port", "0").unwrap()).unwrap();
    let args = ["--config", config.to_str().unwrap(), "server"];
    let mut server = Server::spawn(&args, Some(elsewhere.path()));
    let port = server.wait_listening();
    assert!(port.is_some(), "{}", server.logs());
    let data = etc.join("lucid-data");
    assert!(
        server.logs().contains(&format!("data: {}", data.display())),
        "{}",
        server.logs()
    );
    assert!(server.terminate().success());
    assert!(data.join("data.log").is_file());
    let strays: Vec<_> = fs::read_dir(elsewhere.path()).unwrap().collect();
    assert!(
        strays.is_empty(),
        "created in the working directory: {strays:?}"
    );
    // The offline commands find the same directory, from a relative --config.
    let out = run_lucid(&["--config", "etc/lucid.yml", "check"], home.path());
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&data.display().to_string()));
}

#[test]
fn health_exits_0_for_a_serving_node_and_1_when_there_is_none() {
    let mut node = Node::start();
    let url = format!("http://127.0.0.1:{}", node.port());
    let out = node.run(&["health", "--url", &url]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"status":"ok"}"#
    );
    node.stop();
    let out = node.run(&["health", "--url", &url]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("cannot reach"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn health_asks_the_configured_address() {
    let dir = tempfile::tempdir().unwrap();
    let init = run_lucid(&["init"], dir.path());
    assert!(init.status.success(), "{}", stderr_of(&init));
    let config = fs::read_to_string(dir.path().join("lucid.yml")).unwrap();
    // (0.0.0.0 would be asked on 127.0.0.1: a unit test checks that, as
    // tests listen on loopback only.)
    let port = free_port();
    let on_port = set_yaml_value(&config, "port", &port.to_string()).unwrap();
    fs::write(dir.path().join("lucid.yml"), on_port).unwrap();
    let mut server = Server::spawn(&["server"], Some(dir.path()));
    assert_eq!(server.wait_listening(), Some(port), "{}", server.logs());
    let out = run_lucid(&["health"], dir.path());
    assert!(out.status.success(), "{}", stderr_of(&out));
    server.kill();
    // The port comes from the config: with 0 there is nothing to ask.
    let any_port = set_yaml_value(&config, "port", "0").unwrap();
    fs::write(dir.path().join("lucid.yml"), any_port).unwrap();
    let out = run_lucid(&["health"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("give --url"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn init_stdout_prints_the_config_and_the_token_apart() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_lucid(
        &[
            "init",
            "--stdout",
            "--bind-address",
            "0.0.0.0",
            "--data-dir",
            "/var/lib/lucid",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file written"
    );
    let config = String::from_utf8(out.stdout.clone()).unwrap();
    let parsed = lucid::config::Config::parse(&config).expect("stdout is a config");
    assert!(parsed.authentication.enabled);
    assert_eq!(parsed.general.bind_address.to_string(), "0.0.0.0");
    assert_eq!(parsed.storage.directory, Path::new("/var/lib/lucid"));
    // The token (on stderr) is signed with the secret printed on stdout.
    let token = stderr_of(&out).lines().last().unwrap().to_string();
    let mut yaml = config.replace("directory: \"/var/lib/lucid\"", "directory: ./data");
    yaml = set_yaml_value(&yaml, "port", "0").unwrap();
    yaml = set_yaml_value(&yaml, "bind_address", "127.0.0.1").unwrap();
    fs::write(dir.path().join("lucid.yml"), yaml).unwrap();
    let server = Server::spawn(&["server"], Some(dir.path()));
    let port = server.wait_listening().expect("the node starts");
    let mut conn = Conn::open(port);
    let auth = format!("Bearer {token}");
    let resp = conn.send("GET", "/api/kv/missing", &[("Authorization", &auth)], b"");
    assert_eq!(resp.status, 404, "the root token is accepted");

    let refused = run_lucid(&["init", "--stdout", "--encrypt"], dir.path());
    assert!(!refused.status.success());
    assert!(stderr_of(&refused).contains("--encrypt"));
}

#[test]
fn a_missing_config_file_is_reported_with_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_lucid(&["--config", "absent.yml", "server"], dir.path());
    assert!(!out.status.success());
    let message = stderr_of(&out);
    assert!(
        message.contains("lucid init") && message.contains("init --stdout"),
        "{message}"
    );
}

#[test]
fn bad_replication_settings_stop_the_node_at_start() {
    let cases: [(&[&str], [&str; 2]); 5] = [
        (
            &["primary: http://pi-1.local:7021/api"],
            ["replication.primary", "path"],
        ),
        (
            &["primary: pi-1.local:7021"],
            ["replication.primary", "http://"],
        ),
        (&["min_acks: 17"], ["replication.min_acks", "at most 16"]),
        (
            &["ack_timeout_ms: 5"],
            ["replication.ack_timeout_ms", "600000"],
        ),
        (
            &["token: t", "token_file: t"],
            ["replication.token_file", "both set"],
        ),
    ];
    for (lines, words) in cases {
        let config = lines.iter().fold(Config::new(), |config, line| {
            config.raw("replication", line)
        });
        let (status, stderr) = config.start_expect_failure();
        assert!(!status.success(), "{lines:?}: exit status {status}");
        for word in words {
            assert!(
                stderr.contains(word),
                "{lines:?}: no {word:?} in:\n{stderr}"
            );
        }
    }
}

#[test]
fn promote_passes_on_a_refusal_and_says_when_no_node_answers() {
    let mut node = Config::new()
        .raw("authentication", "enabled: true")
        .raw(
            "authentication",
            &format!("secret_key: \"{}\"", "s".repeat(32)),
        )
        .start();
    let url = format!("http://127.0.0.1:{}", node.port());
    let dir = tempfile::tempdir().unwrap();
    let promote = || {
        run_lucid_with(&["promote", "--url", &url], dir.path(), |command| {
            command.env_remove("LUCID_TOKEN");
        })
    };
    // Without a token the node refuses, and the command says so.
    let out = promote();
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains(&format!("{url}/api/admin/promote answered 401")),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    node.stop();
    let out = promote();
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(stderr.contains("cannot ask the node at"), "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
}
