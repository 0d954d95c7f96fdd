//! Live watch through the real binary: `GET /api/watch` as Server-Sent
//! Events and as a WebSocket, resuming with `since` and `Last-Event-ID`,
//! the history bound (410), the watcher cap (503), slow watchers dropped
//! without slowing writers, the worker pool left free, and a clean stop.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::{Message, WebSocket};

/// Generous bound for anything that should happen at once.
const PROMPTLY: Duration = Duration::from_secs(10);

/// The version a write answered with (its `ETag`).
fn version_of(resp: &Response) -> u64 {
    let etag = resp.header("etag").expect("writes answer with an ETag");
    etag.trim_matches('"').parse().expect("a numeric ETag")
}

fn put_text(port: u16, key: &str, value: &str) -> u64 {
    let resp = request(
        port,
        "PUT",
        &kv_path(key),
        &[("Content-Type", "text/plain")],
        value.as_bytes(),
    );
    assert!(
        matches!(resp.status, 200 | 201),
        "PUT {key}: {}",
        resp.text()
    );
    version_of(&resp)
}

/// Opens an SSE watch that must be accepted.
fn watch(port: u16, path: &str, headers: &[(&str, &str)]) -> Conn {
    let (conn, head) = Conn::watch(port, path, headers);
    assert_eq!(head.status, 200, "GET {path}: {}", head.text());
    conn
}

fn next(conn: &mut Conn) -> SseEvent {
    conn.next_event()
        .expect("read an event")
        .expect("the stream goes on")
}

/// `(op, key, version)` of the next event, checking that its SSE id and
/// name agree with its JSON.
fn next_change(conn: &mut Conn) -> (String, String, u64) {
    let event = next(conn);
    let json = event.json();
    let version = json["version"].as_u64().expect("a version");
    assert_eq!(event.id, Some(version.to_string()), "{event:?}");
    assert_eq!(json["op"], event.event.as_str(), "{event:?}");
    (
        event.event,
        json["key"].as_str().expect("a key").to_string(),
        version,
    )
}

/// Asserts the next event is `op` on `key` at `version`.
#[track_caller]
fn expect_change(conn: &mut Conn, op: &str, key: &str, version: u64) {
    let (got_op, got_key, got_version) = next_change(conn);
    assert_eq!(
        (got_op.as_str(), got_key.as_str(), got_version),
        (op, key, version)
    );
}

fn ws_connect(port: u16, path: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (ws, response) = tungstenite::client(url.as_str(), stream).expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["server"], "lucid");
    ws
}

/// The next text message of a WebSocket, as JSON (pings are skipped).
fn ws_next(ws: &mut WebSocket<TcpStream>) -> serde_json::Value {
    loop {
        match ws.read().expect("read a message") {
            Message::Text(text) => return serde_json::from_str(text.as_str()).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[test]
fn sse_sends_every_change_under_the_prefix_in_version_order() {
    let node = Node::start();
    let port = node.port();
    let mut stream = watch(port, "/api/watch?prefix=sensors%2F", &[]);
    assert_eq!(watchers(port), 1);
    let created = put_text(port, "sensors/pi-1/temp", "21.5");
    put_text(port, "config/mode", "eco");
    let updated = put_text(port, "sensors/pi-1/temp", "22.0");
    assert_eq!(delete(port, &kv_path("sensors/pi-1/temp")).status, 200);
    let other = put_text(port, "sensors/pi-2/temp", "19");

    let first = next(&mut stream);
    assert_eq!(first.event, "put");
    let json = first.json();
    assert_eq!(json["key"], "sensors/pi-1/temp");
    assert_eq!(json["version"], created);
    assert_eq!(json["size"], 4);
    assert_eq!(json["content_type"], "text/plain");
    assert_eq!(json["value"], "21.5", "small UTF-8 values are inline");
    expect_change(&mut stream, "put", "sensors/pi-1/temp", updated);
    let (op, key, deleted) = next_change(&mut stream);
    assert_eq!((op.as_str(), key.as_str()), ("delete", "sensors/pi-1/temp"));
    assert!(updated < deleted && deleted < other, "versions in order");
    expect_change(&mut stream, "put", "sensors/pi-2/temp", other);
}

#[test]
fn sse_response_is_an_unframed_event_stream() {
    let node = Node::start();
    let (_stream, head) = Conn::watch(node.port(), "/api/watch", &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(head.header("server"), Some("lucid"));
    assert_eq!(head.header("cache-control"), Some("no-cache"));
    assert_eq!(head.header("connection"), Some("close"));
    assert_eq!(head.header("content-length"), None);
    assert_eq!(head.header("transfer-encoding"), None);
}

#[test]
fn since_replays_missed_changes_then_goes_live() {
    let node = Node::start();
    let port = node.port();
    let seen = put_text(port, "a/1", "x");
    let missed = put_text(port, "a/2", "y");
    put_text(port, "b/1", "other prefix");
    let mut stream = watch(port, &format!("/api/watch?prefix=a/&since={seen}"), &[]);
    let live = put_text(port, "a/3", "z");
    expect_change(&mut stream, "put", "a/2", missed);
    expect_change(&mut stream, "put", "a/3", live);
}

#[test]
fn last_event_id_resumes_and_wins_over_since() {
    let node = Node::start();
    let port = node.port();
    let first = put_text(port, "k/1", "x");
    let second = put_text(port, "k/2", "y");
    let third = put_text(port, "k/3", "z");
    // An EventSource reconnects to the same URL with the last id it saw.
    let mut stream = watch(
        port,
        &format!("/api/watch?prefix=k/&since={first}"),
        &[("Last-Event-ID", &second.to_string())],
    );
    expect_change(&mut stream, "put", "k/3", third);
}

#[test]
fn since_older_than_the_history_is_410_telling_to_relist() {
    let mut node = Config::new().raw("watch", "history: 2").start();
    let port = node.port();
    let versions: Vec<u64> = (0..5)
        .map(|i| put_text(port, &format!("s/{i}"), "v"))
        .collect();
    let (_, resp) = Conn::watch(
        port,
        &format!("/api/watch?prefix=s/&since={}", versions[0]),
        &[],
    );
    assert_eq!(resp.status, 410);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("GET /api/kv?prefix=s/"), "{message}");
    let oldest = versions[2];
    assert!(message.contains(&format!("since={oldest}")), "{message}");
    assert_eq!(
        body["oldest"], oldest,
        "the oldest version, for programs too"
    );
    // From the oldest version it names, resuming works.
    let mut stream = watch(port, &format!("/api/watch?prefix=s/&since={oldest}"), &[]);
    assert_eq!(next_change(&mut stream).2, versions[3]);

    // The history is in memory: after a restart, only what comes next.
    node.restart();
    let port = node.port();
    let (_, resp) = Conn::watch(port, &format!("/api/watch?since={}", versions[3]), &[]);
    assert_eq!(resp.status, 410);
    let last = *versions.last().unwrap();
    let mut stream = watch(port, &format!("/api/watch?since={last}"), &[]);
    let after_restart = put_text(port, "s/new", "v");
    assert!(after_restart > last);
    expect_change(&mut stream, "put", "s/new", after_restart);
}

#[test]
fn bad_watch_requests_are_json_errors() {
    let node = Node::start();
    let port = node.port();
    for (path, headers, status, needle) in [
        ("/api/watch?prefx=a", &[][..], 400, "prefx"),
        ("/api/watch?since=abc", &[], 400, "since"),
        ("/api/watch?since=-1", &[], 400, "since"),
        ("/api/watch?prefix=%zz", &[], 400, "prefix"),
        ("/api/watch?prefix=a&prefix=b", &[], 400, "prefix"),
        (
            "/api/watch",
            &[("Last-Event-ID", "x")],
            400,
            "Last-Event-ID",
        ),
    ] {
        let (_, resp) = Conn::watch(port, path, headers);
        assert_error(&resp, status, None);
        let message = json_message(&resp.body).unwrap();
        assert!(message.contains(needle), "{path}: {message}");
    }
    for method in ["POST", "PUT", "DELETE", "HEAD"] {
        let resp = request(port, method, "/api/watch", &[], b"");
        assert_eq!(resp.status, 405, "{method}");
        assert_eq!(resp.header("allow"), Some("GET"), "{method}");
        if method != "HEAD" {
            assert_error(&resp, 405, None);
        }
    }
    assert_eq!(watchers(port), 0);
    node.assert_serving();
}

#[test]
fn websocket_sends_one_text_message_per_change() {
    let node = Node::start();
    let port = node.port();
    let mut ws = ws_connect(port, "/api/watch?prefix=cfg/");
    let created = put_text(port, "cfg/a", "1");
    put_text(port, "other", "x");
    assert_eq!(delete(port, &kv_path("cfg/a")).status, 200);
    let put = ws_next(&mut ws);
    assert_eq!(
        (&put["op"], &put["key"], &put["version"], &put["value"]),
        (&"put".into(), &"cfg/a".into(), &created.into(), &"1".into())
    );
    let gone = ws_next(&mut ws);
    assert_eq!(
        (&gone["op"], &gone["key"]),
        (&"delete".into(), &"cfg/a".into())
    );
    assert!(gone["version"].as_u64().unwrap() > created);
    // The server answers pings, and notices the client closing.
    ws.send(Message::Ping(b"hi".to_vec().into())).unwrap();
    loop {
        match ws.read().expect("read") {
            Message::Pong(data) => break assert_eq!(&data[..], b"hi"),
            Message::Ping(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(watchers(port), 1);
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    assert!(eventually(PROMPTLY, || watchers(port) == 0));
}

#[test]
fn websocket_resumes_with_since() {
    let node = Node::start();
    let port = node.port();
    let seen = put_text(port, "w/1", "a");
    let missed = put_text(port, "w/2", "b");
    let mut ws = ws_connect(port, &format!("/api/watch?prefix=w/&since={seen}"));
    assert_eq!(ws_next(&mut ws)["version"], missed);
}

#[test]
fn bad_websocket_handshakes_are_400() {
    let node = Node::start();
    let port = node.port();
    let key = ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    let upgrade = ("Upgrade", "websocket");
    let connection = ("Connection", "Upgrade");
    let version = ("Sec-WebSocket-Version", "13");
    for (headers, needle) in [
        (vec![upgrade, connection, version], "Sec-WebSocket-Key"),
        (
            vec![upgrade, connection, version, ("Sec-WebSocket-Key", "short")],
            "Sec-WebSocket-Key",
        ),
        (
            vec![upgrade, connection, key, ("Sec-WebSocket-Version", "8")],
            "13",
        ),
        (vec![upgrade, connection, key], "13"),
        (vec![upgrade, version, key], "Connection"),
    ] {
        let (_, resp) = Conn::watch(port, "/api/watch", &headers);
        assert_error(&resp, 400, None);
        let message = json_message(&resp.body).unwrap();
        assert!(message.contains(needle), "{headers:?}: {message}");
    }
    assert_eq!(watchers(port), 0);
}

#[test]
fn watchers_beyond_max_watchers_get_503_until_one_leaves() {
    let node = Config::new().raw("watch", "max_watchers: 2").start();
    let port = node.port();
    let first = watch(port, "/api/watch?prefix=cap/", &[]);
    let _second = ws_connect(port, "/api/watch?prefix=cap/");
    assert_eq!(watchers(port), 2);
    let (_, resp) = Conn::watch(port, "/api/watch", &[]);
    assert_error(&resp, 503, None);
    assert!(json_message(&resp.body)
        .unwrap()
        .contains("watch.max_watchers"));
    // A client that leaves is noticed when its stream is next written to.
    drop(first);
    let admitted = eventually(PROMPTLY, || {
        put_text(port, "cap/x", "v");
        let (_, resp) = Conn::watch(port, "/api/watch", &[]);
        resp.status == 200
    });
    assert!(admitted, "the departed watcher's place was never freed");
}

#[test]
fn a_stalled_watcher_is_dropped_and_never_slows_writers() {
    let node = Config::new().sync("never").raw("watch", "queue: 8").start();
    let port = node.port();
    // Never reads while the writes go on.
    let mut stalled = watch(port, "/api/watch?prefix=big/", &[]);
    let value = "v".repeat(4000);
    let mut conn = Conn::open(port);
    let writes = 4000;
    let mut slowest = Duration::ZERO;
    for i in 0..writes {
        let started = Instant::now();
        let resp = conn.send(
            "PUT",
            &kv_path(&format!("big/{i}")),
            &[("Content-Type", "text/plain")],
            value.as_bytes(),
        );
        slowest = slowest.max(started.elapsed());
        assert!(matches!(resp.status, 200 | 201), "{}", resp.text());
    }
    assert!(slowest < Duration::from_secs(5), "a PUT took {slowest:?}");
    // Its stream: the changes it kept up with, in order, then an error.
    let mut received = 0;
    let error = loop {
        let event = next(&mut stalled);
        if event.event == "error" {
            break event;
        }
        let json = event.json();
        assert_eq!(json["key"], format!("big/{received}"));
        received += 1;
    };
    assert!(received < writes, "the watcher was never dropped");
    let json = error.json();
    assert_eq!(json["op"], "error");
    let message = json["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("since={}", received_version(port, received))),
        "{message}"
    );
    assert_eq!(stalled.next_event().unwrap(), None, "the stream ends");
    assert!(eventually(PROMPTLY, || watchers(port) == 0));
}

/// The version of `big/{n - 1}`, the last change a watcher received.
fn received_version(port: u16, n: usize) -> u64 {
    let resp = get(port, &kv_path(&format!("big/{}", n - 1)));
    version_of(&resp)
}

#[test]
fn watchers_do_not_occupy_the_worker_pool() {
    let node = Config::new().raw("general", "threads: 2").start();
    let port = node.port();
    let mut streams: Vec<Conn> = (0..8)
        .map(|i| watch(port, &format!("/api/watch?prefix=p{i}/"), &[]))
        .collect();
    let _sockets: Vec<_> = (0..2).map(|_| ws_connect(port, "/api/watch")).collect();
    assert_eq!(watchers(port), 10);
    node.assert_serving();
    let version = put_text(port, "p0/x", "v");
    expect_change(&mut streams[0], "put", "p0/x", version);
}

#[test]
fn sigterm_with_watchers_connected_stops_promptly() {
    let mut node = Node::start();
    let port = node.port();
    let mut sse = watch(port, "/api/watch", &[]);
    let mut ws = ws_connect(port, "/api/watch");
    let started = Instant::now();
    let status = node.stop();
    assert!(
        status.success(),
        "exit status {status}; logs:\n{}",
        node.logs()
    );
    assert!(
        started.elapsed() < PROMPTLY,
        "stopping took {:?}",
        started.elapsed()
    );
    assert_eq!(sse.next_event().unwrap(), None, "the SSE stream ends");
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => {
                let code = frame.map(|f| u16::from(f.code));
                break assert_eq!(code, Some(1001), "going away");
            }
            Ok(_) => {}
            Err(err) => panic!("no close frame: {err}"),
        }
    }
}

#[test]
fn locks_unlocks_and_expiries_are_sent_too() {
    let node = Node::start();
    let port = node.port();
    let mut stream = watch(port, "/api/watch?prefix=dev/", &[]);
    put_text(port, "dev/key", "secret");
    for operation in ["lock", "unlock"] {
        let body = format!(r#"{{"operation":"{operation}"}}"#);
        let resp = request(port, "PATCH", "/api/kv/dev/key", &[], body.as_bytes());
        assert_eq!(resp.status, 200, "{operation}: {}", resp.text());
    }
    let resp = request(port, "PUT", "/api/kv/dev/reading?ttl=1", &[], b"21.5");
    assert_eq!(resp.status, 201, "{}", resp.text());
    let ops: Vec<(String, String)> = (0..5)
        .map(|_| {
            let (op, key, _) = next_change(&mut stream);
            (op, key)
        })
        .collect();
    let expected = [
        ("put", "dev/key"),
        ("lock", "dev/key"),
        ("unlock", "dev/key"),
        ("put", "dev/reading"),
        ("expire", "dev/reading"),
    ];
    assert_eq!(
        ops,
        expected.map(|(op, key)| (op.to_string(), key.to_string()))
    );
}
