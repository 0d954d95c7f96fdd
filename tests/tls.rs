//! HTTPS (`general.tls`, cargo feature `tls`): a node with a self-signed
//! certificate made here answers curl over TLS, tokens included, and a
//! plain-HTTP client on the TLS port gets nothing and stops nothing. A
//! follower of an `https://` primary trusts the certificate its
//! `replication.ca_file` names, and no other; so does the MQTT bridge to an
//! `mqtts://` broker (Debian's `mosquitto`) with `mqtt.ca_file`.
#![cfg(feature = "tls")]

mod common;

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const HTTPS_LISTENING: &str = "listening on https://127.0.0.1:";
const SECRET: &str = "tls-test-secret-0123456789-abcdefghijkl";

/// Writes a self-signed certificate for localhost and 127.0.0.1 and its key
/// into `dir`; returns their paths.
fn self_signed(dir: &Path) -> (String, String) {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(names).expect("generate a certificate");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
    let text = |p: &Path| p.to_str().unwrap().to_string();
    (text(&cert_path), text(&key_path))
}

/// Starts an HTTPS node in `dir`; returns it and its port.
fn start_https(dir: &Path, config: Config) -> (Server, u16) {
    let (cert, key) = self_signed(dir);
    let config = config.raw(
        "general",
        &format!("tls: {{certificate: '{cert}', private_key: '{key}'}}"),
    );
    let config_path = dir.join("lucid.yml");
    std::fs::write(&config_path, config.yaml(&dir.join("data"))).unwrap();
    let server = Server::spawn(
        &["--config", config_path.to_str().unwrap(), "server"],
        Some(dir),
    );
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let logs = server.logs();
        if let Some(at) = logs.find(HTTPS_LISTENING) {
            let rest = &logs[at + HTTPS_LISTENING.len()..];
            let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
            return (server, port.parse().unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "no HTTPS listening line:\n{logs}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A token of the node configured in `dir`, with `scopes`, for an hour.
fn issue_token(dir: &Path, scopes: &[&str]) -> String {
    let config_path = dir.join("lucid.yml");
    let mut args = vec!["--config", config_path.to_str().unwrap(), "tokens", "issue"];
    args.extend(scopes.iter().flat_map(|scope| ["--scope", scope]));
    args.extend(["--expires", "1h"]);
    let issued = run_lucid(&args, dir);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    String::from_utf8_lossy(&issued.stdout).trim().to_string()
}

/// `curl` over HTTPS trusting only `cert.pem` in `dir`: (status, body).
fn curl(dir: &Path, port: u16, args: &[&str], path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(dir.join("cert.pem"))
        .args(args)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

#[test]
fn curl_talks_to_the_node_over_tls_with_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new()
        .raw("authentication", "enabled: true")
        .raw("authentication", &format!("secret_key: \"{SECRET}\""));
    let (server, port) = start_https(dir.path(), config);
    assert_eq!(
        curl(dir.path(), port, &[], "/health"),
        (200, r#"{"status":"ok"}"#.into())
    );
    let (status, body) = curl(
        dir.path(),
        port,
        &["-X", "PUT", "--data-binary", "v"],
        "/api/kv/k",
    );
    assert_eq!(status, 401, "{body}");

    let bearer = format!(
        "Authorization: Bearer {}",
        issue_token(dir.path(), &["read", "write"])
    );
    let put = curl(
        dir.path(),
        port,
        &["-H", &bearer, "-X", "PUT", "--data-binary", "secret value"],
        "/api/kv/wallet",
    );
    assert_eq!(put.0, 201, "{}", put.1);
    let got = curl(dir.path(), port, &["-H", &bearer], "/api/kv/wallet");
    assert_eq!(got, (200, "secret value".into()));
    drop(server);
}

#[test]
fn plain_http_on_the_tls_port_gets_no_answer_and_stops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = start_https(dir.path(), Config::new());
    let mut plain = Conn::open(port);
    plain
        .write_raw(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answer = plain.read_response(false);
    assert!(answer.is_err(), "plain HTTP was answered: {answer:?}");
    // Without --cacert the self-signed certificate is refused by curl.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("https://localhost:{port}/health"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "curl trusted a self-signed certificate"
    );
    assert_eq!(curl(dir.path(), port, &[], "/health").0, 200);
    drop(server);
}

/// For `rounds` GETs of `path` made by one curl on one kept-alive
/// connection: the median time from the request to the response's first
/// byte, and from its first byte to its last, in milliseconds.
fn median_get_ms(dir: &Path, port: u16, path: &str, rounds: usize) -> (f64, f64) {
    let url = format!("https://localhost:{port}{path}");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(dir.join("cert.pem"))
        .args([
            "-w",
            "%{http_code} %{time_pretransfer} %{time_starttransfer} %{time_total}\\n",
        ])
        .args((0..rounds).flat_map(|_| ["-o", "/dev/null", url.as_str()]))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut first_byte, mut rest): (Vec<f64>, Vec<f64>) = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1) // the first pays for the TLS handshake
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields[0], "200", "{line}");
            let [pretransfer, starttransfer, total] =
                [1, 2, 3].map(|i| fields[i].parse::<f64>().unwrap() * 1000.0);
            (starttransfer - pretransfer, total - starttransfer)
        })
        .unzip();
    let median = |times: &mut Vec<f64>| {
        times.sort_by(|a, b| a.total_cmp(b));
        times[times.len() / 2]
    };
    (median(&mut first_byte), median(&mut rest))
}

#[test]
fn responses_leave_whole_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = start_https(dir.path(), Config::new());
    for len in [1024, 20 * 1024] {
        let value = "v".repeat(len);
        let put = curl(
            dir.path(),
            port,
            &["-X", "PUT", "--data-binary", &value],
            &format!("/api/kv/v{len}"),
        );
        assert_eq!(put.0, 201, "{}", put.1);
        // A response in two writes (TLS records) waits between them for
        // the client's delayed ACK: its last byte comes long after its
        // first. Whole, the rest of it follows at once.
        let (first_byte, rest) = median_get_ms(dir.path(), port, &format!("/api/kv/v{len}"), 16);
        assert!(
            rest <= first_byte * 4.0,
            "GET of {len} bytes over TLS: {rest:.3} ms from the first byte to the last, \
             {first_byte:.3} ms to the first"
        );
    }
    drop(server);
}

/// Waits (bounded) until `done` holds; panics naming `what` and showing
/// `logs()` if it does not.
fn wait_for(what: &str, logs: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + STARTUP_TIMEOUT * 2;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not so; logs:\n{}",
            logs()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The JSON document `GET path` answers on a plain-HTTP node.
fn document(port: u16, path: &str) -> serde_json::Value {
    let response = get(port, path);
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    serde_json::from_slice(&response.body).unwrap()
}

/// A follower (plain HTTP itself) of the HTTPS primary on `port`, sending
/// `token`, with these extra `replication:` lines.
fn follower(port: u16, token: &str, lines: &[&str]) -> Node {
    let mut config = Config::new()
        .raw("replication", &format!("primary: https://127.0.0.1:{port}"))
        .raw("replication", &format!("token: '{token}'"));
    for line in lines {
        config = config.raw("replication", line);
    }
    config.start()
}

#[test]
fn a_follower_follows_an_https_primary_whose_certificate_its_ca_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, port) = start_https(dir.path(), Config::new().secured(SECRET));
    let client = format!(
        "Authorization: Bearer {}",
        issue_token(dir.path(), &["write", "admin"])
    );
    let write = |key: &str, value: &str| {
        let put = curl(
            dir.path(),
            port,
            &["-H", &client, "-X", "PUT", "--data-binary", value],
            &format!("/api/kv/{key}"),
        );
        assert_eq!(put.0, 201, "{}", put.1);
    };
    for i in 0..20 {
        write(&format!("before-{i}"), &format!("value {i}"));
    }
    let ca_file = dir.path().join("cert.pem");
    let follower = follower(
        port,
        &issue_token(dir.path(), &["replicate"]),
        &[&format!("ca_file: '{}'", ca_file.display())],
    );
    let logs = || format!("{}\n--- primary:\n{}", follower.logs(), primary.logs());
    // Bootstrapped from the primary's snapshot, over TLS.
    wait_for("the snapshot reached the follower", logs, || {
        get(follower.port(), "/api/kv/before-19").status == 200
    });
    assert_eq!(get(follower.port(), "/api/kv/before-0").text(), "value 0");
    // Then the stream: a write on the primary appears on the follower.
    write("after", "streamed over TLS");
    wait_for("the write reached the follower", logs, || {
        get(follower.port(), "/api/kv/after").status == 200
    });
    assert_eq!(
        get(follower.port(), "/api/kv/after").text(),
        "streamed over TLS"
    );
    let (status, body) = curl(dir.path(), port, &["-H", &client], "/api/admin/digest");
    assert_eq!(status, 200, "{body}");
    let on_primary: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(on_primary["keys"], 21);
    assert_eq!(document(follower.port(), "/api/admin/digest"), on_primary);
    let status = document(follower.port(), "/api/admin/replication");
    assert_eq!(status["follower"]["state"], "following", "{status}");
    // And its acks: the primary hears that all of it is durable there.
    wait_for("the follower's ack reached the primary", logs, || {
        let (code, body) = curl(dir.path(), port, &["-H", &client], "/api/admin/replication");
        assert_eq!(code, 200, "{body}");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        status["followers"][0]["durable"] == status["sequence"]
    });
    assert!(!follower.logs().contains("certificate"), "{}", logs());
}

/// A TCP relay from a new loopback port to `port`; returns the relay's
/// port and the count of connections it took.
fn counting_relay(port: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { break };
            counted.fetch_add(1, Ordering::SeqCst);
            let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            let ways = [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ];
            for (mut from, mut to) in ways {
                thread::spawn(move || {
                    let _ = io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
        }
    });
    (relay_port, connections)
}

#[test]
fn a_follower_refuses_a_certificate_it_was_not_told_to_trust_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, port) = start_https(dir.path(), Config::new().secured(SECRET));
    let token = issue_token(dir.path(), &["replicate"]);
    let (relayed, connections) = counting_relay(port);
    let stranger = tempfile::tempdir().unwrap();
    let other_ca = self_signed(stranger.path()).0;
    for (lines, names) in [
        // No ca_file: the web PKI's roots, which did not sign it.
        (vec![], "without replication.ca_file".to_string()),
        // Another certificate than the primary's.
        (vec![format!("ca_file: '{other_ca}'")], other_ca.clone()),
    ] {
        connections.store(0, Ordering::SeqCst);
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let follower = follower(relayed, &token, &lines);
        let logs = || format!("{}\n--- primary:\n{}", follower.logs(), primary.logs());
        let line = refused_and_retried(|| follower.logs(), logs, &connections);
        assert!(line.contains(&names), "{line}");
        // Again refused: nothing is copied.
        let status = document(follower.port(), "/api/admin/replication");
        assert_eq!(status["follower"]["state"], "connecting", "{status}");
        let error = status["follower"]["last_error"].as_str().unwrap();
        assert!(error.contains("TLS certificate was refused"), "{status}");
        assert_eq!(status["sequence"], 0, "{status}");
    }
}

/// Waits until a TLS client (whose log `client_logs` gives; `logs` gives
/// all for a failure) has logged that a certificate was refused, and has
/// tried again through the relay counting `connections`; returns that
/// line, checked: a warning, rustls's words and ours, logged once, not at
/// every attempt.
fn refused_and_retried(
    client_logs: impl Fn() -> String,
    logs: impl Fn() -> String,
    connections: &AtomicUsize,
) -> String {
    wait_for("the certificate's refusal is logged", &logs, || {
        client_logs().contains("TLS certificate was refused")
    });
    let line = client_logs()
        .lines()
        .find(|line| line.contains("TLS certificate was refused"))
        .unwrap()
        .to_string();
    assert!(line.contains("WARN"), "{line}");
    // rustls's own words (UnknownIssuer, or BadSignature when the other
    // certificate bears the same name), then ours.
    assert!(line.contains("invalid peer certificate"), "{line}");
    assert!(line.contains("retrying"), "{line}");
    wait_for("the client tried again", &logs, || {
        connections.load(Ordering::SeqCst) >= 3
    });
    assert_eq!(
        client_logs().matches("was refused").count(),
        1,
        "{}",
        logs()
    );
    line
}

#[test]
fn a_follower_whose_ca_file_holds_no_certificate_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = self_signed(dir.path());
    for (ca_file, why) in [
        (dir.path().join("missing.pem"), "missing.pem: No such file"),
        (key.into(), "a private key and no certificate"),
    ] {
        let (status, logs) = Config::new()
            .raw("replication", "primary: https://127.0.0.1:1")
            .raw("replication", &format!("ca_file: '{}'", ca_file.display()))
            .start_expect_failure();
        assert!(!status.success());
        assert!(logs.contains("replication.ca_file"), "{logs}");
        assert!(logs.contains(why), "{logs}");
    }
}

/// `mosquitto` with one TLS listener on a free loopback port, presenting
/// the certificate `self_signed` wrote in `dir`; returns it and its port.
fn start_mqtts_broker(dir: &Path) -> (Server, u16) {
    let port = free_port();
    let config = dir.join("mosquitto.conf");
    let lines = [
        format!("listener {port} 127.0.0.1"),
        format!("certfile {}", dir.join("cert.pem").display()),
        format!("keyfile {}", dir.join("key.pem").display()),
        "allow_anonymous true".into(),
        "persistence false".into(),
        "log_dest stderr".into(),
        // Heeded only when run as root (as in a container): mosquitto
        // would become the user `mosquitto`, who cannot read these files.
        "user root".into(),
    ];
    std::fs::write(&config, lines.join("\n") + "\n").unwrap();
    let mut command = Command::new("mosquitto");
    command.arg("-c").arg(&config);
    let broker = Server::spawn_command(command);
    wait_for(
        "mosquitto runs",
        || broker.logs(),
        || broker.logs().contains(" running"),
    );
    (broker, port)
}

/// `mosquitto_sub -v` on `topic` at the TLS broker on `port`, trusting
/// `ca_file`, once subscribed; what it receives is in its `logs()`.
fn subscribe(port: u16, ca_file: &Path, topic: &str) -> Server {
    let mut command = Command::new("sh");
    // Its output to stderr, where `Server` collects it, a line at a time
    // (into a pipe, stdio would hold it back).
    let script = "exec stdbuf -oL mosquitto_sub \"$@\" >&2";
    command.args(["-c", script, "mosquitto_sub"]);
    command.args([
        "-d",
        "-v",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        topic,
    ]);
    command.arg("--cafile").arg(ca_file);
    let subscriber = Server::spawn_command(command);
    wait_for(
        "mosquitto_sub subscribed",
        || subscriber.logs(),
        || subscriber.logs().contains("received SUBACK"),
    );
    subscriber
}

/// A node bridged to the `mqtts://` broker on `port`, trusting `ca_file`,
/// storing the messages on `sensors/#`.
fn bridged_node(port: u16, ca_file: &str) -> Node {
    Config::new()
        .raw("mqtt", &format!("url: mqtts://127.0.0.1:{port}"))
        .raw("mqtt", &format!("ca_file: '{ca_file}'"))
        .raw("mqtt", "subscribe: [{filter: 'sensors/#'}]")
        .start()
}

#[test]
fn the_mqtt_bridge_publishes_over_tls_to_a_broker_its_ca_file_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, _) = self_signed(dir.path());
    let (broker, port) = start_mqtts_broker(dir.path());
    let subscriber = subscribe(port, Path::new(&ca_file), "lucid/#");
    let node = bridged_node(port, &ca_file);
    let logs = || {
        format!(
            "{}\n--- mosquitto:\n{}\n--- mosquitto_sub:\n{}",
            node.logs(),
            broker.logs(),
            subscriber.logs()
        )
    };
    assert_eq!(
        put(node.port(), "/api/kv/greeting", b"hello over TLS").status,
        201
    );
    wait_for("the change reached the subscriber", logs, || {
        subscriber
            .logs()
            .lines()
            .any(|line| line.starts_with("lucid/") && line.contains(r#""key":"greeting""#))
    });
    let line = subscriber
        .logs()
        .lines()
        .find(|line| line.starts_with("lucid/"))
        .unwrap()
        .to_string();
    let (topic, payload) = line.split_once(' ').unwrap();
    assert!(topic.ends_with("/greeting"), "{line}");
    let message: serde_json::Value = serde_json::from_str(payload).unwrap();
    assert_eq!(message["op"], "put", "{line}");
    assert_eq!(message["value"], "hello over TLS", "{line}");
    let status = document(node.port(), "/api/admin/mqtt");
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(status["last_error"], serde_json::Value::Null, "{status}");
    // And the other way: a message from the broker is stored (the bridge
    // subscribes before it publishes, so its subscription is in place).
    let published = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", "sensors/t1", "-m", "21.5", "--cafile", &ca_file])
        .output()
        .expect("run mosquitto_pub");
    assert!(published.status.success(), "{published:?}");
    wait_for("the message was stored", logs, || {
        get(node.port(), &kv_path("sensors/t1")).status == 200
    });
    assert_eq!(get(node.port(), &kv_path("sensors/t1")).text(), "21.5");
    assert!(!node.logs().contains("certificate"), "{}", logs());
}

#[test]
fn the_mqtt_bridge_refuses_a_broker_certificate_it_was_not_told_to_trust_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    self_signed(dir.path());
    let (broker, port) = start_mqtts_broker(dir.path());
    let (relayed, connections) = counting_relay(port);
    let stranger = tempfile::tempdir().unwrap();
    let other_ca = self_signed(stranger.path()).0;
    let node = bridged_node(relayed, &other_ca);
    let logs = || format!("{}\n--- mosquitto:\n{}", node.logs(), broker.logs());
    let line = refused_and_retried(|| node.logs(), logs, &connections);
    assert!(line.contains("MQTT bridge to mqtts://127.0.0.1:"), "{line}");
    assert!(
        line.contains("the broker's TLS certificate was refused (invalid peer certificate"),
        "{line}"
    );
    assert!(line.contains(&format!("mqtt.ca_file {other_ca}")), "{line}");
    let status = document(node.port(), "/api/admin/mqtt");
    assert_eq!(status["connected"], false, "{status}");
    assert_eq!(status["connections"], 0, "{status}");
    let error = status["last_error"].as_str().unwrap();
    assert!(error.contains("TLS certificate was refused"), "{status}");
}

#[test]
fn a_bridge_whose_ca_file_cannot_serve_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    for (url, ca_file, why) in [
        (
            "mqtts://127.0.0.1:1",
            dir.path().join("missing.pem"),
            "missing.pem: No such file",
        ),
        (
            "mqtts://127.0.0.1:1",
            key.into(),
            "a private key and no certificate",
        ),
        ("mqtt://127.0.0.1:1", cert.into(), "is not mqtts://"),
    ] {
        let (status, logs) = Config::new()
            .raw("mqtt", &format!("url: {url}"))
            .raw("mqtt", &format!("ca_file: '{}'", ca_file.display()))
            .start_expect_failure();
        assert!(!status.success());
        assert!(logs.contains("mqtt.ca_file"), "{logs}");
        assert!(logs.contains(why), "{logs}");
    }
}
