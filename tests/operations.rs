//! Running the node as a service: health, metrics, systemd's notify
//! protocol, where the config is looked up, and the systemd unit itself.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn health_says_ok_and_nothing_else() {
    let node = Node::start();
    let resp = get(node.port(), "/health");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("Content-Type"), Some("application/json"));
    assert_eq!(resp.text(), r#"{"status":"ok"}"#);
    let resp = request(node.port(), "HEAD", "/health", &[], b"");
    assert_eq!(resp.status, 200);
    assert_error(
        &request(node.port(), "POST", "/health", &[], b""),
        405,
        None,
    );
}

#[test]
fn metrics_count_requests_and_show_the_store() {
    let node = Node::start();
    let port = node.port();
    for i in 0..3 {
        assert_eq!(put(port, &format!("/api/kv/m/{i}"), b"v").status, 201);
    }
    assert_eq!(get(port, "/api/kv/m/missing").status, 404);
    // A worker counts a request just after sending its answer: wait until
    // the last one is counted.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let resp = loop {
        let resp = get(port, "/metrics");
        let page = resp.text();
        let counted = page.contains("lucid_requests_total{method=\"GET\",status=\"404\"} 1\n")
            && page.contains("lucid_requests_total{method=\"PUT\",status=\"201\"} 3\n");
        if counted || std::time::Instant::now() > deadline {
            break resp;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("Content-Type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let page = resp.text();
    for expected in [
        "lucid_requests_total{method=\"PUT\",status=\"201\"} 3\n",
        "lucid_requests_total{method=\"GET\",status=\"404\"} 1\n",
        "# TYPE lucid_request_duration_seconds histogram\n",
        "lucid_keys 3\n",
        "# TYPE lucid_fsyncs_total counter\n",
        "lucid_compactions_total 0\n",
        "lucid_read_only 0\n",
    ] {
        assert!(page.contains(expected), "missing {expected:?} in:\n{page}");
    }
    let durations: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("lucid_request_duration_seconds_count "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(durations >= 4, "{durations} request durations recorded");
    let fsyncs: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix("lucid_fsyncs_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(fsyncs >= 1.0, "sync: always wrote without fsync:\n{page}");
}

/// Starts `clients` threads, each creating `each` new keys one by one.
fn start_writers(port: u16, clients: usize, each: usize) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|client| {
            std::thread::spawn(move || {
                for i in 0..each {
                    let resp = put(port, &format!("/api/kv/w/{client}/{i}"), b"value");
                    assert_eq!(resp.status, 201, "{}", resp.text());
                }
            })
        })
        .collect()
}

#[test]
fn with_sync_always_concurrent_writes_share_fsyncs_and_reads_go_on() {
    let mut node = Config::new()
        .sync("always")
        .raw("general", "threads: 2")
        .start();
    let port = node.port();
    // 32 clients writing at once on 2 workers: no worker waits for an
    // fsync, so readers are answered meanwhile.
    let writers = start_writers(port, 32, 20);
    let mut reads = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        assert_eq!(get(port, "/api/kv/w/missing").status, 404);
        reads += 1;
    }
    for writer in writers {
        writer.join().unwrap();
    }
    assert!(reads > 0);
    assert_eq!(metric(port, "lucid_keys"), 640.0);
    let fsyncs = metric(port, "lucid_fsyncs_total");
    assert!(
        (1.0..640.0).contains(&fsyncs),
        "{fsyncs} fsyncs for 640 concurrent writes: no group commit"
    );
    for client in 0..32 {
        for i in 0..20 {
            let got = get(port, &format!("/api/kv/w/{client}/{i}"));
            assert_eq!(got.body, b"value", "w/{client}/{i}");
        }
    }
    assert!(node.stop().success(), "{}", node.logs());
}

#[test]
fn with_sync_always_pipelined_writes_are_answered_in_order() {
    let mut node = Config::new()
        .sync("always")
        .raw("general", "threads: 4")
        .start();
    let port = node.port();
    // Clients each sending 16 writes in one go before reading any answer:
    // small and larger bodies, so some are read ahead and some not. Many
    // at once, so that replies are held while fsyncs run.
    const CLIENTS: usize = 16;
    const WRITES: usize = 16;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            std::thread::spawn(move || {
                let mut conn = Conn::open(port);
                let mut batch = Vec::new();
                for i in 0..WRITES {
                    let body = vec![b'a' + i as u8; if i % 2 == 0 { 1 } else { 901 }];
                    batch.extend_from_slice(
                        format!(
                            "PUT /api/kv/p/{client}/{i} HTTP/1.1\r\nHost: x\r\n\
                             Content-Length: {}\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    batch.extend_from_slice(&body);
                }
                conn.write_raw(&batch).unwrap();
                for i in 0..WRITES {
                    let resp = conn.read_response(false).expect("an answer in time");
                    assert_eq!(resp.status, 201, "client {client}, write {i}");
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    for client in 0..CLIENTS {
        for i in 0..WRITES {
            let got = get(port, &format!("/api/kv/p/{client}/{i}")).body;
            assert_eq!(got[0], b'a' + i as u8, "p/{client}/{i}");
        }
    }
    // Later writes are still answered, and the node stops when asked.
    assert_eq!(put(port, "/api/kv/after", b"x").status, 201);
    assert!(node.stop().success(), "{}", node.logs());
}

/// Receives one datagram (bounded wait) as text.
fn receive(socket: &UnixDatagram) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification from the node");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn systemd_hears_ready_once_the_port_answers_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let config = dir.path().join("lucid.yml");
    std::fs::write(&config, Config::new().yaml(&dir.path().join("data"))).unwrap();
    let mut server = Server::spawn_with_env(
        &[Path::new("--config"), &config, Path::new("server")],
        Some(dir.path()),
        &[("NOTIFY_SOCKET".into(), socket_path.display().to_string())],
    );
    let ready = receive(&socket);
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving on 127.0.0.1:"),
        "{ready}"
    );
    // The address in the status answers at once.
    let port: u16 = ready
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|p| p.parse().ok())
        .expect("a port in the READY status");
    assert_eq!(get(port, "/health").status, 200);

    let status = server.terminate();
    assert!(status.success(), "{status}: {}", server.logs());
    assert_eq!(receive(&socket), "STOPPING=1\nSTATUS=stopping");
}

/// Runs `lucid ARGS server` in `cwd` with `env` until it is listening, and
/// returns its log; or returns the log of its failure.
fn start_in(cwd: &Path, args: &[&str], env: &[(String, String)]) -> String {
    let mut all: Vec<&str> = args.to_vec();
    all.push("server");
    let mut server = Server::spawn_with_env(&all, Some(cwd), env);
    match server.wait_listening() {
        Some(_) => {
            let logs = server.logs();
            assert!(server.terminate().success());
            logs
        }
        None => {
            server.wait_exit();
            server.logs()
        }
    }
}

#[test]
fn config_is_looked_up_from_flag_then_environment_then_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, data: &str| {
        let yaml = Config::new().yaml(&dir.path().join(data));
        std::fs::write(dir.path().join(name), yaml).unwrap();
    };
    write("lucid.yml", "from-cwd");
    write("env.yml", "from-env");
    write("flag.yml", "from-flag");
    let env = [("LUCID_CONFIG".to_string(), "env.yml".to_string())];

    let logs = start_in(dir.path(), &[], &[]);
    assert!(
        logs.contains("config: lucid.yml") && logs.contains("from-cwd"),
        "{logs}"
    );
    let logs = start_in(dir.path(), &[], &env);
    assert!(
        logs.contains("config: env.yml") && logs.contains("from-env"),
        "{logs}"
    );
    let logs = start_in(dir.path(), &["--config", "flag.yml"], &env);
    assert!(
        logs.contains("config: flag.yml") && logs.contains("from-flag"),
        "{logs}"
    );

    let missing = [("LUCID_CONFIG".to_string(), "nowhere.yml".to_string())];
    let logs = start_in(dir.path(), &[], &missing);
    assert!(
        logs.contains("cannot read config file nowhere.yml"),
        "{logs}"
    );
}

/// The repository's unit, with ExecStart pointing at the binary under test
/// (systemd-analyze checks that the executable exists).
fn unit_under_test(dir: &Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/lucid.service"
    ))
    .expect("systemd/lucid.service");
    let unit = unit.replace("/usr/local/bin/lucid", BIN);
    let path = dir.join("lucid.service");
    std::fs::write(&path, unit).unwrap();
    path
}

fn systemd_analyze(args: &[&str], unit: &Path) -> Option<std::process::Output> {
    match Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
    {
        Ok(output) => Some(output),
        Err(err) => {
            eprintln!("SKIPPED: systemd-analyze is not available ({err}); .ci/run installs it");
            None
        }
    }
}

#[test]
fn the_systemd_unit_verifies_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let Some(output) = systemd_analyze(&["verify", "--man=no"], &unit) else {
        return;
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

#[test]
fn the_systemd_unit_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let Some(output) = systemd_analyze(&["security", "--offline=true", "--threshold=20"], &unit)
    else {
        return;
    };
    let said = String::from_utf8_lossy(&output.stdout);
    let score: f64 = said
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for lucid.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{said}"));
    eprintln!("systemd exposure score: {score}");
    assert!(score <= 2.0, "exposure {score} is above 2.0:\n{said}");
}

/// The permission bits of `path`.
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_data_directory_and_its_files_are_private() {
    let mut node = Node::start();
    let port = node.port();
    for i in 0..3 {
        assert_eq!(put(port, &format!("/api/kv/secret/{i}"), b"v").status, 201);
    }
    assert_eq!(delete(port, "/api/kv/secret/0").status, 200);
    let compacted = request(port, "POST", "/api/admin/compact", &[], b"");
    assert_eq!(compacted.status, 200, "{}", compacted.text());
    // A clean stop writes the hint file.
    assert!(node.stop().success());
    let dir = node.data_dir();
    assert_eq!(mode_of(&dir), 0o700, "data directory");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap()).collect();
    for name in ["LOCK", "data.log", "data.hint"] {
        assert!(names.iter().any(|n| *n == name), "no {name} in {names:?}");
    }
    for file in &files {
        assert_eq!(mode_of(file), 0o600, "{}", file.display());
    }
}

/// The uid and gid the service test runs the node as: in the range systemd
/// gives `DynamicUser=` services.
const SERVICE_ID: u32 = 61_234;

/// `lucid ARGS` as the service's throwaway user, as systemd runs it.
fn as_service_user(args: &[&std::ffi::OsStr]) -> Command {
    let id = SERVICE_ID.to_string();
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid",
            &id,
            "--regid",
            &id,
            "--clear-groups",
            "--no-new-privs",
            "--",
        ])
        .arg(BIN)
        .args(args);
    command
}

/// Hands `files` to the service as systemd's `LoadCredential=` does: copies
/// in a directory of its own, mode 0400 / 0500, owned by its user.
fn load_credentials(dir: &Path, files: &[&Path]) {
    use std::os::unix::fs::{chown, PermissionsExt};
    std::fs::create_dir(dir).unwrap();
    for file in files {
        let copy = dir.join(file.file_name().unwrap());
        std::fs::copy(file, &copy).unwrap();
        chown(&copy, Some(SERVICE_ID), Some(SERVICE_ID)).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    chown(dir, Some(SERVICE_ID), Some(SERVICE_ID)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).unwrap();
}

/// The README's Raspberry Pi steps, with the unit's user: root runs `lucid
/// init --encrypt` (config and key root's, 0600); the node, as another
/// uid, cannot read them where they are, and says why; handed over as
/// credentials (the unit's LoadCredential=), it starts and serves.
#[test]
fn the_service_user_reads_the_config_root_made_through_credentials() {
    use std::ffi::OsStr;
    use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
    let root_here = std::fs::metadata("/proc/self").map(|m| m.uid() == 0);
    let setpriv = Command::new("setpriv").arg("--version").output();
    if root_here.ok() != Some(true) || setpriv.is_err() {
        eprintln!("SKIPPED: needs root and setpriv to run the node as another user");
        return;
    }
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // sudo install -d /etc/lucid && sudo lucid --config /etc/lucid/lucid.yml init
    let etc = top.path().join("etc-lucid");
    std::fs::create_dir(&etc).unwrap();
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = etc.join("lucid.yml");
    let init = run_lucid(
        &[
            OsStr::new("--config"),
            config.as_os_str(),
            OsStr::new("init"),
            OsStr::new("--encrypt"),
        ],
        top.path(),
    );
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let token = String::from_utf8(init.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    // The sed of the README, and a free port for the test; the
    // StateDirectory= systemd makes (0700, the service user's).
    let state = top.path().join("var-lib-lucid");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .replace(
            "directory: ./lucid-data",
            &format!("directory: {}", state.display()),
        )
        .replace("port: 7021", "port: 0");
    std::fs::write(&config, text).unwrap();
    std::fs::create_dir(&state).unwrap();
    chown(&state, Some(SERVICE_ID), Some(SERVICE_ID)).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();

    // Read in place, the root-owned config is out of reach, and the node
    // says so (not "create one with lucid init").
    let direct = [
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("server"),
    ];
    let mut server = Server::spawn_command(as_service_user(&direct));
    assert_eq!(server.wait_listening(), None, "{}", server.logs());
    assert!(!server.wait_exit().success());
    let logs = server.logs();
    assert!(
        logs.contains("Permission denied") && logs.contains("LoadCredential"),
        "{logs}"
    );
    assert!(!logs.contains("lucid init"), "{logs}");

    // Through the credentials directory, it starts and serves.
    let credentials = top.path().join("credentials");
    load_credentials(&credentials, &[&config, &etc.join("lucid.key")]);
    let given = credentials.join("lucid.yml");
    let args = [
        OsStr::new("--config"),
        given.as_os_str(),
        OsStr::new("server"),
    ];
    let mut command = as_service_user(&args);
    command.current_dir(&state);
    let mut server = Server::spawn_command(command);
    let port = server
        .wait_listening()
        .unwrap_or_else(|| panic!("{}", server.logs()));
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];
    assert_eq!(request(port, "PUT", "/api/kv/pi", &auth, b"up").status, 201);
    assert_eq!(request(port, "GET", "/api/kv/pi", &auth, b"").body, b"up");
    assert!(server.terminate().success());
    let log = std::fs::metadata(state.join("data.log")).unwrap();
    assert_eq!((log.uid(), log.mode() & 0o777), (SERVICE_ID, 0o600));
}
