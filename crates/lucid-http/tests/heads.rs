//! Request heads on the wire: what is refused before a request reaches the
//! caller, and how (patches 10, 11, 12, 16, 17, 21 and 26 of PATCHES.md).
#![warn(clippy::all)]

mod common;

use std::io::Read;

use common::{config, ok, start, Reply};

/// Sends `request` on a new connection to a server with `max_head` (if
/// any) that answers everything with a 200, and returns the answer; a
/// refusal must close the connection.
fn answer_to(request: &[u8], max_head: Option<usize>) -> Reply {
    let mut config = config();
    config.max_head_bytes = max_head;
    let server = start(config);
    server.serve(|request| ok(request, "served"));
    let mut client = server.client();
    client.send(request);
    let reply = client.response();
    if reply.status != 200 {
        assert!(client.closed(), "a refusal closes the connection");
    }
    reply
}

#[test]
fn a_request_line_over_the_head_limit_is_a_414() {
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(300));
    let reply = answer_to(long.as_bytes(), Some(256));
    assert_eq!(reply.status, 414);
    assert!(reply.message().contains("request line is too long"));
}

#[test]
fn headers_over_the_head_limit_are_a_431() {
    let long = format!("GET / HTTP/1.1\r\nX-Filler: {}\r\n\r\n", "a".repeat(300));
    let reply = answer_to(long.as_bytes(), Some(256));
    assert_eq!(reply.status, 431);
    assert!(reply.message().contains("headers are too large"));
}

#[test]
fn a_head_within_the_limit_is_served() {
    let head = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(200));
    assert_eq!(answer_to(head.as_bytes(), Some(256)).status, 200);
}

#[test]
fn unreadable_heads_get_a_json_message_and_the_connection_closes() {
    for (request, status, words) in [
        (
            &b"GET/HTTP/1.1\r\n\r\n"[..],
            400,
            "request line is malformed",
        ),
        (
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            400,
            "header line",
        ),
        (b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n", 400, "outside ASCII"),
        (
            b"GET / HTTP/1.1\r\nExpect: magic\r\n\r\n",
            417,
            "100-continue",
        ),
    ] {
        let reply = answer_to(request, None);
        assert_eq!(reply.status, status, "{:?}", reply);
        assert!(reply.message().contains(words), "{:?}", reply);
        assert_eq!(reply.header("Content-Type"), Some("application/json"));
    }
}

#[test]
fn bodies_that_could_be_framed_two_ways_are_refused() {
    for (headers, words) in [
        ("Content-Length: 12abc", "not a number"),
        ("Content-Length: ", "not a number"),
        ("Content-Length: 3\r\nContent-Length: 4", "differ"),
        (
            "Content-Length: 3\r\nTransfer-Encoding: chunked",
            "both Content-Length and Transfer-Encoding",
        ),
        ("Transfer-Encoding: gzip", "must be chunked"),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip",
            "several Transfer-Encoding",
        ),
    ] {
        let request = format!("PUT / HTTP/1.1\r\n{}\r\n\r\nabc", headers);
        let reply = answer_to(request.as_bytes(), None);
        assert_eq!(reply.status, 400, "{}: {:?}", headers, reply);
        assert!(reply.message().contains(words), "{}: {:?}", headers, reply);
    }
}

#[test]
fn repeated_equal_lengths_frame_one_body() {
    let server = start(config());
    let mut client = server.client();
    client.send(b"PUT / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc");
    let mut request = server.recv();
    let mut body = String::new();
    request.as_reader().read_to_string(&mut body).unwrap();
    assert_eq!(body, "abc");
    ok(request, "");
    assert_eq!(client.response().status, 200);
}

#[test]
fn a_length_past_usize_reaches_the_caller_as_usize_max() {
    let server = start(config());
    let mut client = server.client();
    client.send(b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n");
    let request = server.recv();
    assert_eq!(request.body_length(), Some(usize::MAX));
    // The unread body is drained when the request is dropped: up to the
    // end of the connection.
    client.finish();
    let refusal =
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    request.respond_raw(refusal, b"").unwrap();
    assert_eq!(client.response().status, 413);
}

#[test]
fn other_http_versions_get_a_505_and_free_the_connection() {
    for request in [
        &b"GET / HTTP/2.0\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/3.0\r\nHost: x\r\n\r\n",
        b"GET / HTTP/0.9\r\n\r\n",
    ] {
        let reply = answer_to(request, None);
        assert_eq!(reply.status, 505, "{:?}", reply);
        assert!(reply.message().contains("HTTP/1.0 and HTTP/1.1"));
    }
}

#[test]
fn bad_line_endings_and_nul_bytes_are_refused_at_once() {
    // No read timeout is set: a refusal that waited for more bytes would
    // never come.
    for request in [
        &b"GET / HTTP/1.1\nHost: x\n\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n",
    ] {
        let reply = answer_to(request, None);
        assert_eq!(reply.status, 400, "{:?}: {:?}", request, reply);
        assert!(
            reply.message().contains("must end with CRLF"),
            "{:?}",
            reply
        );
    }
}

#[test]
fn a_bad_byte_is_refused_before_its_line_ends() {
    let server = start(config());
    let mut client = server.client();
    // The line never ends and the connection stays open: the answer comes
    // from the NUL alone.
    client.send(b"GET / HTTP/1.1\r\nHost: a\0");
    let reply = client.response();
    assert_eq!(reply.status, 400);
    assert!(reply.message().contains("NUL"));
}

#[test]
fn absolute_targets_reach_the_caller_as_path_and_query() {
    let server = start(config());
    let mut client = server.client();
    client.send(b"GET http://example.com:8080/api/kv/k?prefix=a HTTP/1.1\r\n\r\n");
    let request = server.recv();
    assert_eq!(request.url(), "/api/kv/k?prefix=a");
    ok(request, "");
    client.send(b"GET HTTP://example.com HTTP/1.1\r\n\r\n");
    let request = server.recv();
    assert_eq!(request.url(), "/");
    ok(request, "");
}

#[test]
fn pipelined_requests_sent_in_one_write_each_get_their_own_body() {
    let mut config = config();
    config.read_ahead = Some(64 * 1024);
    let server = start(config);
    server.serve(|mut request| {
        let url = request.url().to_owned();
        let mut body = String::new();
        request.as_reader().read_to_string(&mut body).unwrap();
        ok(request, &format!("{} {}", url, body));
    });
    let large = "L".repeat(3000);
    let mut client = server.client();
    client.send(
        format!(
            "PUT /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
             GET /b HTTP/1.1\r\n\r\n\
             PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n1\r\nf\r\n0\r\n\r\n\
             PUT /d HTTP/1.1\r\nContent-Length: 3000\r\n\r\n{large}\
             GET /e HTTP/1.1\r\n\r\n"
        )
        .as_bytes(),
    );
    let bodies: Vec<String> = (0..5).map(|_| client.response().text()).collect();
    let large = format!("/d {}", large);
    assert_eq!(bodies, ["/a abc", "/b ", "/c def", &large, "/e "]);
}
