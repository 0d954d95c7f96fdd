//! HTTPS (`general.tls`, cargo feature `tls`): a node with a self-signed
//! certificate made here answers curl over TLS, tokens included, and a
//! plain-HTTP client on the TLS port gets nothing and stops nothing.
#![cfg(feature = "tls")]

mod common;

use std::path::Path;
use std::process::Command;
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

    let config_path = dir.path().join("lucid.yml");
    let issued = run_lucid(
        &[
            "--config",
            config_path.to_str().unwrap(),
            "tokens",
            "issue",
            "--scope",
            "read",
            "--scope",
            "write",
            "--expires",
            "1h",
        ],
        dir.path(),
    );
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let bearer = format!(
        "Authorization: Bearer {}",
        String::from_utf8_lossy(&issued.stdout).trim()
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
