//! Request bodies: read ahead by the connection's thread, screened before
//! they are read, decoded strictly, and refused when they cannot be read
//! whole (patches 2, 4, 9, 18, 19, 20 and 25 of PATCHES.md; the read-ahead
//! budget is in `tests/read_ahead_budget.rs`).
#![warn(clippy::all)]

mod common;

use std::io::{ErrorKind, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{config, ok, start, Client, Running, FAILSAFE};
use lucid_http::{Request, Screen};

/// Bodies up to this size are read ahead in these tests.
const READ_AHEAD: usize = 64 * 1024;

/// A server that reads bodies of up to `READ_AHEAD` bytes ahead.
fn reading_ahead() -> Running {
    let mut config = config();
    config.read_ahead = Some(READ_AHEAD);
    start(config)
}

/// Answers `request` with its own body.
fn echo(mut request: Request) {
    let mut body = String::new();
    request.as_reader().read_to_string(&mut body).unwrap();
    ok(request, &body);
}

/// A pause that gives a regression (a request handed out before its body
/// arrived) the time to show; no assertion depends on its length.
fn pause() {
    thread::sleep(Duration::from_millis(100));
}

/// Sends `rest` after a pause, raising `sent` just before.
fn send_later(client: &Client, rest: Vec<u8>, sent: &Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let mut stream = client.stream().try_clone().unwrap();
    let sent = Arc::clone(sent);
    thread::spawn(move || {
        use std::io::Write;
        pause();
        sent.store(true, Ordering::SeqCst);
        stream.write_all(&rest).unwrap();
    })
}

#[test]
fn a_trickled_body_is_read_whole_before_its_request_is_handed_out() {
    let server = reading_ahead();
    for (head, first, rest) in [
        (
            "PUT / HTTP/1.1\r\nContent-Length: 4000\r\n\r\n",
            "a".repeat(2000),
            "b".repeat(2000),
        ),
        (
            "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            format!("7d0\r\n{}\r\n", "a".repeat(2000)),
            format!("7d0\r\n{}\r\n0\r\n\r\n", "b".repeat(2000)),
        ),
    ] {
        let mut client = server.client();
        client.send(format!("{}{}", head, first).as_bytes());
        let rest_sent = Arc::new(AtomicBool::new(false));
        let sender = send_later(&client, rest.into_bytes(), &rest_sent);
        let request = server.recv();
        assert!(
            rest_sent.load(Ordering::SeqCst),
            "the request came out before its body"
        );
        echo(request);
        let reply = client.response();
        assert_eq!(reply.body.len(), 4000);
        assert!(reply.text().ends_with('b'));
        sender.join().unwrap();
    }
}

#[test]
fn a_body_that_cannot_be_read_whole_is_answered_by_the_connection() {
    for (body, status, words) in [
        // The client gives up half-way.
        (
            &b"Content-Length: 4000\r\n\r\nabc"[..],
            400,
            "connection ended",
        ),
        (
            b"Transfer-Encoding: chunked\r\n\r\n10\r\nabc",
            400,
            "connection ended",
        ),
        // Bad chunked encoding, small bodies read with their head included.
        (
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            400,
            "could not be read",
        ),
        (b"Content-Length: 500\r\n\r\nabc", 400, "connection ended"),
    ] {
        let server = reading_ahead();
        let mut client = server.client();
        client.send(b"PUT / HTTP/1.1\r\n");
        client.send(body);
        client.finish();
        let reply = client.response();
        assert_eq!(reply.status, status, "{:?}", reply);
        assert!(reply.message().contains(words), "{:?}", reply);
        assert!(client.closed());
        let handed_out = server.server.try_recv().unwrap();
        assert!(handed_out.is_none(), "a half-read body reached the caller");
    }
}

#[test]
fn a_body_that_stops_arriving_is_a_408() {
    for (body, read_ahead) in [
        // Read ahead; small enough to be read with the head; left to the
        // caller.
        ("Content-Length: 4000\r\n\r\nabc", Some(READ_AHEAD)),
        ("Content-Length: 500\r\n\r\nabc", Some(READ_AHEAD)),
        ("Content-Length: 500\r\n\r\nabc", None),
    ] {
        let mut config = config();
        config.read_ahead = read_ahead;
        config.read_timeout = Some(Duration::from_millis(200));
        let server = start(config);
        let mut client = server.client();
        client.send(format!("PUT / HTTP/1.1\r\n{}", body).as_bytes());
        let reply = client.response();
        assert_eq!(reply.status, 408, "{}: {:?}", body, reply);
        assert!(reply.message().contains("did not arrive in time"));
    }
}

#[test]
fn a_body_cut_short_is_an_error_for_the_caller_not_an_end() {
    for body in [
        &b"Content-Length: 5000\r\n\r\nabc"[..],
        b"Transfer-Encoding: chunked\r\n\r\n10\r\nabc",
    ] {
        // No read-ahead: the caller reads the body itself.
        let server = start(config());
        let mut client = server.client();
        client.send(b"PUT / HTTP/1.1\r\n");
        client.send(body);
        let mut request = server.recv();
        client.finish();
        let mut read = Vec::new();
        let err = request.as_reader().read_to_end(&mut read).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
        assert_eq!(read, b"abc");
    }
}

#[test]
fn an_unread_huge_body_is_drained_without_a_buffer_its_size() {
    let server = reading_ahead();
    let mut client = server.client();
    client.send(b"PUT / HTTP/1.1\r\nContent-Length: 100000000000\r\n\r\n");
    client.send(&[b'x'; 4096]);
    let request = server.recv();
    assert_eq!(request.body_length(), Some(100_000_000_000));
    let (answered, done) = mpsc::channel();
    thread::spawn(move || {
        // Answers without reading the body, which is then drained when the
        // request is dropped (upstream allocated its declared length).
        ok(request, "unread");
        answered.send(()).unwrap();
    });
    assert_eq!(client.response().text(), "unread");
    client.send(&vec![b'x'; 1 << 20]);
    client.finish();
    done.recv_timeout(FAILSAFE)
        .expect("the drain ends with the connection");
}

#[test]
fn chunked_bodies_are_decoded_strictly() {
    let long_size_line = format!("1;ext={}\r\na\r\n0\r\n\r\n", "e".repeat(5000));
    // Lines within the 4 KiB limit, 20 KiB together.
    let trailer = format!("X-T: {}\r\n", "t".repeat(4000));
    let huge_trailers = format!("1\r\na\r\n0\r\n{}\r\n", trailer.repeat(5));
    for (chunks, words) in [
        // No read timeout is set: a decoder that waited for a CR would
        // never answer.
        ("3\nabc\r\n0\r\n\r\n", "does not end with CRLF"),
        ("3\r\nabc\n0\r\n\r\n", "longer than its size"),
        ("3\r\nabc\r\n0\r\nX-T: 1\n\r\n", "does not end with CRLF"),
        (&long_size_line, "too long"),
        (&huge_trailers, "trailer fields are too large"),
    ] {
        let server = reading_ahead();
        let mut client = server.client();
        client.send(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        client.send_lenient(chunks.as_bytes());
        let reply = client.response();
        assert_eq!(reply.status, 400, "{:.40}: {:?}", chunks, reply);
        assert!(reply.message().contains(words), "{:?}", reply);
    }
}

#[test]
fn chunked_bodies_with_trailers_are_served() {
    let server = reading_ahead();
    server.serve(echo);
    let mut client = server.client();
    client.send(
        b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
          3;name=value\r\nabc\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n",
    );
    assert_eq!(client.response().text(), "abc");
}

#[test]
fn continue_is_a_bare_status_line_then_the_body_is_read() {
    for read_ahead in [Some(READ_AHEAD), None] {
        let mut config = config();
        config.read_ahead = read_ahead;
        let server = start(config);
        server.serve(echo);
        let mut client = server.client();
        client.send(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
        let interim = client.response();
        assert_eq!(interim.head, "HTTP/1.1 100 Continue\r\n\r\n");
        client.send(b"hello");
        assert_eq!(client.response().text(), "hello");
    }
}

/// What the screens below refuse with.
const REFUSAL: &[u8] =
    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\nConnection: close\r\n\r\nrefused";

/// A server reading bodies ahead whose screen runs `decide`, counting its
/// calls.
fn screened(
    decide: impl Fn(&Request) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> (Running, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let mut config = config();
    config.read_ahead = Some(READ_AHEAD);
    config.screen = Some(Screen(Arc::new(move |request: &Request| {
        counted.fetch_add(1, Ordering::SeqCst);
        decide(request)
    })));
    (start(config), calls)
}

#[test]
fn a_refused_request_waiting_for_continue_never_sends_its_body() {
    let (server, calls) = screened(|_| Some(REFUSAL.to_vec()));
    let mut client = server.client();
    client.send(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n");
    let reply = client.response();
    assert_eq!(reply.status, 403, "the refusal, not 100 Continue");
    assert_eq!(reply.text(), "refused");
    assert!(client.closed());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(server.server.try_recv().unwrap().is_none());
}

#[test]
fn a_refused_request_sending_its_body_is_answered_after_the_body() {
    let (server, _) = screened(|_| Some(REFUSAL.to_vec()));
    let mut client = server.client();
    let body = "x".repeat(100_000);
    client.send(format!("PUT / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n{}", body).as_bytes());
    let reply = client.response();
    assert_eq!(reply.text(), "refused");
    assert!(client.closed());
    assert!(server.server.try_recv().unwrap().is_none());
}

#[test]
fn the_screen_decides_before_any_of_the_body_is_read() {
    let (screened_tx, screened_rx) = mpsc::channel();
    let screened_tx = Mutex::new(screened_tx);
    let (server, _) = screened(move |request| {
        screened_tx
            .lock()
            .unwrap()
            .send(request.url().to_owned())
            .unwrap();
        None
    });
    server.serve(echo);
    let mut client = server.client();
    client.send(b"PUT /key HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    // The body leaves only once the screen has seen the head.
    assert_eq!(screened_rx.recv_timeout(FAILSAFE).unwrap(), "/key");
    client.send(b"5\r\nhello\r\n0\r\n\r\n");
    assert_eq!(client.response().text(), "hello");
}

#[test]
fn bodies_that_came_with_their_head_are_not_screened() {
    let (server, calls) = screened(|_| Some(REFUSAL.to_vec()));
    server.serve(echo);
    let mut client = server.client();
    client.send(b"GET / HTTP/1.1\r\n\r\nPUT / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(client.response().status, 200);
    assert_eq!(client.response().text(), "abc");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}
