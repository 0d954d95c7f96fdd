//! Malformed requests: each gets the right 4xx with a JSON
//! `{"message": ...}` body, nothing is stored, and the node keeps serving.
//! Values are never content-sniffed.

mod common;

use common::*;

/// Sends raw bytes on a new connection and reads one response.
fn raw(port: u16, bytes: &[u8]) -> Response {
    let mut conn = Conn::open(port);
    conn.write_raw(bytes).unwrap();
    conn.read_response(false).unwrap_or_else(|e| {
        panic!(
            "no response to {:?}: {e}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
        )
    })
}

#[test]
fn malformed_heads_and_framing_get_json_4xx_and_store_nothing() {
    let node = Config::new().start();
    let port = node.port();
    let big_header = format!(
        "GET /api/kv/a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let many_headers = format!(
        "GET /api/kv/a HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..5000)
            .map(|n| format!("X-H{n}: v\r\n"))
            .collect::<String>()
    );
    let long_line = format!(
        "GET /api/kv/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let put = |framing: &str| {
        format!("PUT /api/kv/framed HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\nxyz").into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("oversize header", big_header.into_bytes(), 431),
        ("too many headers", many_headers.into_bytes(), 431),
        ("request line too long", long_line.into_bytes(), 414),
        ("raw non-ASCII in the URL", b"GET /api/kv/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("raw NUL in the URL", b"GET /api/kv/a\0b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("%00 in the key", b"PUT /api/kv/a%00b HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv".to_vec(), 400),
        ("malformed request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        ("malformed header line", b"GET /api/kv/a HTTP/1.1\r\nNo colon here\r\n\r\n".to_vec(), 400),
        ("Content-Length not a number", put("Content-Length: abc"), 400),
        ("negative Content-Length", put("Content-Length: -3"), 400),
        ("two Content-Lengths that differ", put("Content-Length: 3\r\nContent-Length: 5"), 400),
        ("Content-Length and Transfer-Encoding", put("Content-Length: 3\r\nTransfer-Encoding: chunked"), 400),
        ("Transfer-Encoding other than chunked", put("Transfer-Encoding: gzip"), 400),
        ("chunked, then another Transfer-Encoding", put("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip"), 400),
        ("chunked, then an empty Transfer-Encoding", put("Transfer-Encoding: chunked\r\nTransfer-Encoding:"), 400),
        ("two chunked Transfer-Encodings", put("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"), 400),
        ("NUL in a header value", put("Content-Length: 3\r\nX-A: a\0b"), 400),
        ("NUL in a header name", put("Content-Length: 3\r\nX\0A: b"), 400),
        ("bare CR in a header", put("Content-Length: 3\r\nX-A: a\rb"), 400),
        ("bare-LF line endings", b"PUT /api/kv/framed HTTP/1.1\nHost: x\nContent-Length: 3\n\nxyz".to_vec(), 400),
        ("Content-Length past 64 bits", put("Content-Length: 99999999999999999999999999"), 413),
        ("bad chunk size", b"PUT /api/kv/framed HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(), 400),
        ("chunk longer than its size", b"PUT /api/kv/framed HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n".to_vec(), 400),
        ("invalid percent-encoding", b"GET /api/kv/a%g1 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("invalid UTF-8 in the key", b"GET /api/kv/%c3%28 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("huge key", format!("GET /api/kv/{} HTTP/1.1\r\nHost: x\r\n\r\n", "k".repeat(2000)).into_bytes(), 414),
    ];
    for (what, bytes, status) in cases {
        let resp = raw(port, &bytes);
        assert_eq!(resp.status, status, "{what}: {}", resp.text());
        assert_error(&resp, status, None);
        node.assert_serving();
    }
    // None of the refused writes stored anything.
    assert_eq!(get(port, "/api/kv/framed").status, 404);
}

/// `PUT /api/kv/cut` with `framing` and the first part of its body.
fn cut_body(framing: &str, sent: &[u8]) -> Vec<u8> {
    let mut bytes =
        format!("PUT /api/kv/cut HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n").into_bytes();
    bytes.extend_from_slice(sent);
    bytes
}

#[test]
fn bodies_cut_short_or_malformed_get_a_clear_answer() {
    let node = Config::new()
        .raw("general", "read_timeout_ms: 1000")
        .start();
    let port = node.port();
    let framings = [
        ("small Content-Length", "Content-Length: 600", &b"abc"[..]),
        ("large Content-Length", "Content-Length: 100000", b"abc"),
        ("chunked", "Transfer-Encoding: chunked", b"a\r\n0123"),
    ];
    for (what, framing, sent) in framings {
        // The client stops sending: 408 once the read timeout ends it.
        let mut stalled = Conn::open(port);
        stalled.write_raw(&cut_body(framing, sent)).unwrap();
        let resp = stalled
            .read_response(false)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_error(&resp, 408, None);
        assert!(
            resp.text().contains("did not arrive in time"),
            "{what}: {}",
            resp.text()
        );
        // The client closes its side: 400 at once, whatever the framing.
        let mut closed = Conn::open(port);
        closed.write_raw(&cut_body(framing, sent)).unwrap();
        closed.shutdown_write().unwrap();
        let resp = closed
            .read_response(false)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_message(
            &resp,
            400,
            "The connection ended before the request body did.",
        );
    }
    // Chunk lines ending in a bare LF are refused as malformed.
    let resp = raw(
        port,
        &cut_body("Transfer-Encoding: chunked", b"3\nabc\n0\n\n"),
    );
    assert_error(&resp, 400, None);
    assert!(resp.text().contains("chunked encoding"), "{}", resp.text());
    assert_eq!(get(port, "/api/kv/cut").status, 404);
    node.assert_serving();
}

#[test]
fn a_chunked_body_where_none_is_read_is_refused_before_it_is_read() {
    let node = Node::start();
    let port = node.port();
    assert_eq!(put(port, "/api/kv/k", b"v").status, 201);
    // Refused on the connection's thread from the head alone: the body is
    // not read into memory for a request that would ignore it.
    for method in ["GET", "DELETE"] {
        let request = format!(
            "{method} /api/kv/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n"
        );
        let resp = raw(port, request.as_bytes());
        assert_eq!(resp.status, 413, "{method}: {resp:?}");
        assert!(json_message(&resp.body).is_some(), "{method}: {resp:?}");
    }
    assert_eq!(get(port, "/api/kv/k").text(), "v", "nothing was deleted");
}

#[test]
fn continue_has_no_content_length_and_absolute_targets_are_served() {
    let node = Node::start();
    let port = node.port();
    let mut conn = Conn::open(port);
    conn.write_raw(
        b"PUT /api/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let interim = conn.read_head().unwrap();
    assert_eq!(interim.status, 100);
    assert_eq!(interim.header("content-length"), None, "{interim:?}");
    conn.write_raw(b"v1").unwrap();
    assert_eq!(conn.read_response(false).unwrap().status, 201);
    // The absolute form, which proxies send (RFC 9112 section 3.2.2).
    let absolute = format!("GET http://127.0.0.1:{port}/api/kv/k HTTP/1.1\r\nHost: x\r\n\r\n");
    let resp = raw(port, absolute.as_bytes());
    assert_eq!((resp.status, resp.text().as_str()), (200, "v1"));
    let listing = b"GET HTTPS://lucid/api/kv?prefix=k HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(raw(port, listing).status, 200);
}

#[test]
fn values_are_never_sniffed() {
    let node = Config::new().start();
    let port = node.port();
    let html = b"<html><script>alert(1)</script></html>";
    assert_eq!(put(port, "/api/kv/page", html).status, 201);
    let resp = get(port, "/api/kv/page");
    assert_eq!(
        resp.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    let typed = request(
        port,
        "PUT",
        "/api/kv/doc",
        &[("Content-Type", "text/plain")],
        html,
    );
    assert_eq!(typed.status, 201);
    let resp = get(port, "/api/kv/doc");
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    // A value its writer calls HTML is still no page of the node's origin
    // (where the web console keeps its token): sandboxed, no script.
    let page = request(
        port,
        "PUT",
        "/api/kv/html",
        &[("Content-Type", "text/html")],
        html,
    );
    assert_eq!(page.status, 201);
    let resp = get(port, "/api/kv/html");
    assert_eq!(resp.header("content-type"), Some("text/html"));
    assert_eq!(
        resp.header("content-security-policy"),
        Some("sandbox; default-src 'none'")
    );
}
