//! Export and import through the real binary: `GET /api/admin/export`,
//! `POST /api/admin/import`, `lucid export` and `lucid import`, between two
//! real nodes.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};

use common::*;
use jwt_simple::prelude::*;
use serde_json::{json, Map, Value};

const SECRET: &str = "export-secret-0123456789-abcdefghijkl";

/// Keys written in bulk, enough to span several pages of the export and
/// several requests of `lucid import`.
const BULK: usize = 2500;

/// A node with authentication on.
fn secured() -> Node {
    Config::new()
        .raw("authentication", "enabled: true")
        .raw("authentication", &format!("secret_key: \"{SECRET}\""))
        .start()
}

/// A token with these scopes, valid for an hour.
fn token(scopes: &[&str]) -> String {
    let now = unix_now() as i64;
    let payload = json!({ "iat": now, "nbf": now, "exp": now + 3600, "scopes": scopes });
    let claims: JWTClaims<Map<String, Value>> = serde_json::from_value(payload).unwrap();
    HS256Key::from_bytes(SECRET.as_bytes())
        .authenticate(claims)
        .unwrap()
}

fn send(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    request(port, method, path, headers, body)
}

/// The export's lines, by key.
fn lines(export: &[u8]) -> BTreeMap<String, Value> {
    let text = std::str::from_utf8(export).expect("an export is UTF-8");
    assert!(text.is_empty() || text.ends_with('\n'), "{text}");
    let mut by_key = BTreeMap::new();
    let mut last = String::new();
    for line in text.lines() {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let key = value["key"].as_str().unwrap().to_string();
        assert!(key > last, "keys out of order: {last} then {key}");
        last.clone_from(&key);
        by_key.insert(key, value);
    }
    by_key
}

/// `GET /api/admin/export[?prefix=...]` over HTTP: its body.
fn export(port: u16, query: &str, token: Option<&str>) -> Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("Authorization", b)])
        .unwrap_or_default();
    send(
        port,
        "GET",
        &format!("/api/admin/export{query}"),
        &headers,
        b"",
    )
}

fn url(node: &Node) -> String {
    format!("http://127.0.0.1:{}", node.port())
}

#[test]
fn export_then_import_into_another_node_gives_the_same_keys() {
    let source = Node::start();
    write_bulk(source.port(), BULK);
    write_varied(source.port());
    let exported = source.run(&["export", "--url", &url(&source)]);
    assert!(exported.status.success(), "{exported:?}");
    let original = lines(&exported.stdout);
    assert_eq!(original.len(), BULK + 4);
    let blob = &original["bin/blob"];
    assert_eq!(blob["value_base64"], "AAEC//4AYQ==");
    assert!(blob.get("value").is_none(), "{blob}");
    assert_eq!(original["text/greeting"]["value"], "héllo \"world\"\n");
    assert_eq!(original["text/locked"]["locked"], true);
    let expires = original["text/expiring"]["expires_at"].as_u64().unwrap();
    assert!(expires.abs_diff(unix_now() * 1000 + 3_600_000) < 60_000);

    let target = Node::start();
    let dump = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(dump.path(), &exported.stdout).unwrap();
    let dump_path = dump.path().to_str().unwrap();
    let imported = target.run(&["import", dump_path, "--url", &url(&target)]);
    assert!(imported.status.success(), "{imported:?}");
    let said = String::from_utf8_lossy(&imported.stdout);
    assert!(
        said.contains(&format!("imported {} keys", BULK + 4)),
        "{said}"
    );

    let copy = lines(&export(target.port(), "", None).body);
    assert_eq!(copy.len(), original.len());
    for (key, line) in &original {
        let other = &copy[key];
        for field in ["value", "value_base64", "content_type", "locked"] {
            assert_eq!(line.get(field), other.get(field), "{key}: {field}");
        }
        match (line["expires_at"].as_u64(), other["expires_at"].as_u64()) {
            (Some(a), Some(b)) => assert!(a.abs_diff(b) <= 1000, "{key}: {a} vs {b}"),
            (a, b) => assert_eq!(a, b, "{key}"),
        }
    }
    // The values themselves, and the lock, as clients see them.
    let blob = get(target.port(), "/api/kv/bin/blob");
    assert_eq!(blob.body, [0, 1, 2, 0xff, 0xfe, 0, b'a']);
    assert_eq!(
        blob.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(put(target.port(), "/api/kv/text/locked", b"x").status, 409);
}

#[test]
fn an_export_holds_only_the_keys_under_its_prefix() {
    let node = Node::start();
    write_bulk(node.port(), BULK);
    write_varied(node.port());
    let resp = export(node.port(), "?prefix=text%2F", None);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/jsonl"));
    let keys: Vec<String> = lines(&resp.body).into_keys().collect();
    assert_eq!(keys, ["text/expiring", "text/greeting", "text/locked"]);
    // The same through the command, with a prefix that needs escaping.
    assert_eq!(put(node.port(), "/api/kv/a%20b%26c/1", b"x").status, 201);
    let out = node.run(&["export", "--prefix", "a b&c/", "--url", &url(&node)]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        lines(&out.stdout).into_keys().collect::<Vec<_>>(),
        ["a b&c/1"]
    );
    let none = export(node.port(), "?prefix=nothing", None);
    assert_eq!((none.status, none.body.len()), (200, 0));
}

#[test]
fn a_malformed_line_is_a_400_naming_it_and_nothing_of_its_request_is_written() {
    let node = Node::start();
    let port = node.port();
    let body = b"{\"key\":\"m/1\",\"value\":\"a\"}\n\n{\"key\":\"m/2\",\"value\":\"b\"}\n{\"key\":\"m/3\",\"value\":}\n{\"key\":\"m/4\",\"value\":\"d\"}\n";
    let resp = send(port, "POST", "/api/admin/import", &[], body);
    assert_eq!(resp.status, 400, "{}", resp.text());
    let reply: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(reply["line"], 4);
    let message = reply["message"].as_str().unwrap();
    assert!(message.starts_with("Line 4: "), "{message}");
    assert_eq!(put(port, "/api/kv/later", b"x").status, 201);
    for key in ["m/1", "m/2", "m/3", "m/4"] {
        assert_eq!(get(port, &format!("/api/kv/{key}")).status, 404, "{key}");
    }
    // Lines that parse but cannot be kept are refused the same way.
    let refused: [(&[u8], u16); 5] = [
        (
            b"{\"key\":\"k\",\"value\":\"a\",\"value_base64\":\"YQ==\"}",
            400,
        ),
        (b"{\"key\":\"k\",\"value_base64\":\"not base64!\"}", 400),
        (b"{\"key\":\"k\",\"value\":\"a\",\"colour\":\"red\"}", 400),
        (b"{\"key\":\"\",\"value\":\"a\"}", 400),
        (
            b"{\"key\":\"k\",\"value\":\"a\",\"content_type\":\"a\\nb\"}",
            400,
        ),
    ];
    for (bad, status) in refused {
        let mut body = b"{\"key\":\"ok\",\"value\":\"fine\"}\n".to_vec();
        body.extend_from_slice(bad);
        let resp = send(port, "POST", "/api/admin/import", &[], &body);
        assert_eq!(resp.status, status, "{}", resp.text());
        assert!(resp.text().contains("Line 2: "), "{}", resp.text());
        assert_eq!(get(port, "/api/kv/ok").status, 404);
    }
}

#[test]
fn a_locked_key_refuses_the_whole_request_and_expired_lines_are_skipped() {
    let node = Node::start();
    let port = node.port();
    write_varied(port);
    // Line 3's key is locked here: the batch is refused as a whole, so the
    // lines before it are not written either.
    let body = b"{\"key\":\"new/1\",\"value\":\"a\"}\n{\"key\":\"new/2\",\"value\":\"b\"}\n{\"key\":\"text/locked\",\"value\":\"c\"}\n";
    let resp = send(port, "POST", "/api/admin/import", &[], body);
    assert_eq!(resp.status, 409, "{}", resp.text());
    assert!(resp.text().contains("Line 3: "), "{}", resp.text());
    // A write after it: with `sync: always` a record appended but never
    // acknowledged would show once a later write is made durable.
    assert_eq!(put(port, "/api/kv/later", b"x").status, 201);
    assert_eq!(get(port, "/api/kv/new/1").status, 404);
    assert_eq!(get(port, "/api/kv/new/2").status, 404);
    assert_eq!(get(port, "/api/kv/text/locked").body, b"{\"a\":1}");

    let future = unix_now() * 1000 + 600_000;
    let body = format!(
        "{{\"key\":\"old\",\"value\":\"x\",\"expires_at\":1000}}\n\
         {{\"key\":\"fresh\",\"value\":\"y\",\"expires_at\":{future},\"version\":77,\"locked\":true}}\n"
    );
    let resp = send(port, "POST", "/api/admin/import", &[], body.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    let reply: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(
        (
            reply["imported"].as_u64(),
            reply["skipped_expired"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(get(port, "/api/kv/old").status, 404);
    let fresh = lines(&export(port, "?prefix=fresh", None).body);
    assert_eq!(fresh["fresh"]["expires_at"], future);
    assert_eq!(fresh["fresh"]["locked"], true);
    assert_ne!(fresh["fresh"]["version"], 77, "a version is the node's own");
}

#[test]
fn export_import_and_snapshots_need_the_admin_scope() {
    let node = secured();
    let port = node.port();
    let admin = token(&["admin"]);
    let writer = token(&["read", "write"]);
    let line = b"{\"key\":\"k\",\"value\":\"v\"}\n";
    for bearer in [None, Some(writer.as_str())] {
        let status = if bearer.is_some() { 403 } else { 401 };
        assert_eq!(export(port, "", bearer).status, status);
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let resp = send(port, "POST", "/api/admin/import", &headers, line);
        assert_eq!(resp.status, status, "{}", resp.text());
        let resp = send(port, "GET", "/api/admin/snapshot", &headers, b"");
        assert_eq!(resp.status, status, "{}", resp.text());
    }
    let auth = format!("Bearer {admin}");
    let resp = send(
        port,
        "POST",
        "/api/admin/import",
        &[("Authorization", &auth)],
        line,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(lines(&export(port, "", Some(&admin)).body).len(), 1);
    let snapshot = send(
        port,
        "GET",
        "/api/admin/snapshot",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(snapshot.status, 200);
    assert!(!snapshot.body.is_empty());
    // The commands take the token from --token or $LUCID_TOKEN.
    let refused = node.run(&["export", "--url", &url(&node), "--token", &writer]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("403"),
        "{refused:?}"
    );
    let args = [
        "--config".to_string(),
        "missing.yml".into(),
        "export".into(),
        "--url".into(),
        url(&node),
    ];
    let out = run_lucid_with(&args, &std::env::temp_dir(), |cmd| {
        cmd.env("LUCID_TOKEN", &admin);
    });
    assert!(out.status.success(), "{out:?}");
    assert_eq!(lines(&out.stdout).len(), 1);
}

#[test]
fn lucid_import_names_the_files_line_and_what_earlier_requests_imported() {
    let node = Node::start();
    let mut file = String::new();
    for i in 0..1500 {
        file.push_str(&format!("{{\"key\":\"f/{i:05}\",\"value\":\"{i}\"}}\n"));
    }
    file.push_str("{\"key\":\"f/bad\",\"value\":\n");
    file.push_str("{\"key\":\"f/after\",\"value\":\"z\"}\n");
    let stderr = import_refused(&node, &file);
    assert!(stderr.contains("line 1501 of"), "{stderr}");
    assert!(
        stderr.contains("1000 keys from the lines before it were imported"),
        "{stderr}"
    );
    // The first request was applied, the one with the bad line was not.
    assert_eq!(get(node.port(), "/api/kv/f/00999").status, 200);
    assert_eq!(get(node.port(), "/api/kv/f/01000").status, 404);
    assert_eq!(get(node.port(), "/api/kv/f/after").status, 404);
}

#[test]
fn lucid_export_stops_quietly_when_its_stdout_is_closed() {
    let node = Node::start();
    write_bulk(node.port(), BULK);
    let mut child = Command::new(BIN)
        .args(["export", "--url", &url(&node)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0; 100];
    stdout.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"{\"key\":\"bulk/00000\""));
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(141), "{stderr}");
    assert_eq!(stderr, "");
    node.assert_serving();
}

#[test]
fn lucid_import_refused_among_requests_in_flight_reports_what_each_side_of_it_imported() {
    let node = Node::start();
    let mut file = String::new();
    for i in 0..6000 {
        if i == 2499 {
            file.push_str("{\"key\":\"f/bad\",\"value\":\n");
        } else {
            file.push_str(&format!("{{\"key\":\"f/{i:05}\",\"value\":\"{i}\"}}\n"));
        }
    }
    let stderr = import_refused(&node, &file);
    assert!(stderr.contains("line 2500 of"), "{stderr}");
    assert!(
        stderr.contains("2000 keys from the lines before it were imported"),
        "{stderr}"
    );
    // Requests after the refused one that were already sent were applied
    // whole, and the message counts them; the refused one wrote nothing.
    let after: usize = stderr
        .split(", and ")
        .nth(1)
        .map_or(0, |rest| rest.split(' ').next().unwrap().parse().unwrap());
    assert_eq!(after % 1000, 0, "{stderr}");
    let keys = lines(&export(node.port(), "?prefix=f/", None).body);
    assert_eq!(keys.len(), 2000 + after, "{stderr}");
    assert!(keys.contains_key("f/01999"));
    assert!(!keys
        .keys()
        .any(|key| ("f/02000".."f/03000").contains(&key.as_str())));
}

/// Runs `lucid import` of `file` (JSON Lines) into `node`, which must
/// refuse it; returns what the command printed on stderr.
fn import_refused(node: &Node, file: &str) -> String {
    let dump = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(dump.path(), file).unwrap();
    let out = node.run(&["import", dump.path().to_str().unwrap(), "--url", &url(node)]);
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}
