//! Responses on the wire: streams, raw responses, the order of pipelined
//! requests, responses that leave in one write and bodies written in
//! pieces (patches 6, 14, 15, 24 and 31 of PATCHES.md).
#![warn(clippy::all)]

mod common;

use std::io::{self, ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::{config, ok, start, Running, FAILSAFE};
use lucid_http::{Request, Response};

/// A server whose requests for `/watch` are streams.
fn streaming() -> Running {
    let mut config = config();
    config.streams = Some(|request: &Request| request.url() == "/watch");
    start(config)
}

#[test]
fn a_stream_ends_with_its_writer_and_nothing_pipelined_behind_it_is_read() {
    let server = streaming();
    let mut client = server.client();
    client.send(b"GET /watch HTTP/1.1\r\n\r\nGET /after HTTP/1.1\r\n\r\n");
    let request = server.recv();
    assert_eq!(request.url(), "/watch");
    let mut stream = request.into_stream(Response::empty(200)).unwrap();
    stream.write_all(b"data: 1\n\n").unwrap();
    stream.flush().unwrap();
    drop(stream);
    let reply = client.response();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("Connection"), Some("close"));
    assert_eq!(reply.header("Content-Length"), None);
    assert_eq!(reply.header("Transfer-Encoding"), None);
    assert_eq!(reply.text(), "data: 1\n\n", "the stream, then the end");
    assert!(server.server.try_recv().unwrap().is_none());
}

#[test]
fn a_chunked_stream_carries_the_callers_chunks() {
    let server = streaming();
    let mut client = server.client();
    client.send(b"GET /watch HTTP/1.1\r\n\r\n");
    let request = server.recv();
    let mut stream = request.into_chunked_stream(Response::empty(200)).unwrap();
    stream.write_all(b"5\r\nhello\r\n0\r\n\r\n").unwrap();
    drop(stream);
    let reply = client.response();
    assert_eq!(reply.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(reply.header("Connection"), Some("close"));
    assert_eq!(reply.text(), "5\r\nhello\r\n0\r\n\r\n");
}

#[test]
fn a_streams_socket_takes_a_write_timeout() {
    let server = streaming();
    let client = server.client();
    let mut sender = client.stream().try_clone().unwrap();
    sender.write_all(b"GET /watch HTTP/1.1\r\n\r\n").unwrap();
    let request = server.recv();
    let socket = request.socket().expect("a socket");
    let mut stream = request.into_stream(Response::empty(200)).unwrap();
    socket
        .set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (ended, end) = mpsc::channel();
    thread::spawn(move || {
        // The client reads nothing: the buffers fill, then a write times
        // out instead of waiting for ever.
        let event = vec![b'e'; 64 * 1024];
        let failed = (0..100_000).find_map(|_| stream.write_all(&event).err());
        ended.send(failed).unwrap();
    });
    let failed = end.recv_timeout(FAILSAFE).expect("the writer gave up");
    let kind = failed.expect("a write error").kind();
    assert!(
        matches!(
            kind,
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{:?}",
        kind
    );
    drop(client);
}

#[test]
fn a_raw_response_goes_out_byte_for_byte() {
    let server = start(config());
    let mut client = server.client();
    client.send(b"GET / HTTP/1.1\r\n\r\n");
    let head = b"HTTP/1.1 201 Created\r\nX-Custom: yes\r\nContent-Length: 4\r\n\r\n";
    server.recv().respond_raw(head, b"body").unwrap();
    let reply = client.response();
    assert_eq!(reply.head.as_bytes(), head);
    assert_eq!(reply.body, b"body");
}

#[test]
fn a_pipelined_request_is_handed_out_once_the_one_before_is_answered() {
    let server = start(config());
    let mut client = server.client();
    client.send(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
    let first = server.recv();
    assert_eq!(first.url(), "/1");
    let first_answered = Arc::new(AtomicBool::new(false));
    let second = {
        let server = Arc::clone(&server.server);
        let first_answered = Arc::clone(&first_answered);
        thread::spawn(move || {
            let second = server.recv().unwrap();
            let answered = first_answered.load(Ordering::SeqCst);
            ok(second, "two");
            answered
        })
    };
    // Gives a regression (the second request handed out at once) the time
    // to show; no assertion depends on its length.
    thread::sleep(Duration::from_millis(100));
    first_answered.store(true, Ordering::SeqCst);
    ok(first, "one");
    assert!(second.join().unwrap(), "/2 came out before /1 was answered");
    assert_eq!(client.response().text(), "one");
    assert_eq!(client.response().text(), "two");
}

/// The median round trip, over one keep-alive connection, of a request
/// answered by `respond_raw` with a `body_len`-byte body.
fn median_round_trip(server: &Running, body_len: usize) -> Duration {
    let body = vec![b'b'; body_len];
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body_len);
    let handler = {
        let server = Arc::clone(&server.server);
        thread::spawn(move || {
            for _ in 0..ROUNDS {
                let request = server.recv().unwrap();
                request.respond_raw(head.as_bytes(), &body).unwrap();
            }
        })
    };
    let mut client = server.client();
    let mut times: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            client.send(b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(client.response().body.len(), body_len);
            start.elapsed()
        })
        .collect();
    handler.join().unwrap();
    times.sort();
    times[ROUNDS / 2]
}

const ROUNDS: usize = 41;

#[test]
fn a_head_and_a_large_body_leave_together() {
    // Sent in two writes without TCP_NODELAY, the body would wait for the
    // client's delayed ACK of the head (40 ms on Linux): hundreds of times
    // an empty answer's round trip.
    let server = start(config());
    let empty = median_round_trip(&server, 0);
    let large = median_round_trip(&server, 16 * 1024);
    assert!(
        large < empty * 20,
        "a 16 KiB answer took {:?}, an empty one {:?}",
        large,
        empty
    );
}

/// Answers `/pieces` with a body of three 70,000-byte pieces written by
/// `respond_raw_with`, whose writer stops after `written` bytes of them
/// with `ending` (what `respond_raw_with` returned is sent on `results`),
/// and anything else with `ok`.
fn serve_pieces(
    server: &Running,
    written: usize,
    ending: fn() -> io::Result<()>,
    results: mpsc::Sender<io::Result<()>>,
) {
    let results = std::sync::Mutex::new(results);
    server.serve(move |request| {
        if request.url() != "/pieces" {
            return ok(request, "next");
        }
        let body_len = 3 * 70_000;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body_len);
        let result = request.respond_raw_with(head.as_bytes(), body_len, |body| {
            let mut left = written;
            for piece in [b'a', b'b', b'c'] {
                let len = left.min(70_000);
                body.write_all(&vec![piece; len])?;
                left -= len;
            }
            ending()
        });
        results.lock().unwrap().send(result).unwrap();
    });
}

#[test]
fn a_body_written_in_pieces_is_framed_by_its_head_and_the_connection_goes_on() {
    let server = start(config());
    let (results, result) = mpsc::channel();
    serve_pieces(&server, 3 * 70_000, || Ok(()), results);
    let mut client = server.client();
    client.send(b"GET /pieces HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n");
    let reply = client.response();
    assert_eq!(reply.status, 200);
    let expected: Vec<u8> = [b'a', b'b', b'c']
        .iter()
        .flat_map(|&piece| vec![piece; 70_000])
        .collect();
    assert!(reply.body == expected, "the pieces, in order");
    assert_eq!(client.response().text(), "next");
    assert!(result.recv_timeout(FAILSAFE).unwrap().is_ok());
}

#[test]
fn a_body_writer_failing_midway_closes_the_connection() {
    let server = start(config());
    let (results, result) = mpsc::channel();
    let disk_error = || Err(io::Error::other("a read error of the caller's"));
    serve_pieces(&server, 100_000, disk_error, results);
    let mut client = server.client();
    client.send(b"GET /pieces HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n");
    let sent = client.rest();
    let head_end = sent.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(sent.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(
        sent.len() - head_end,
        100_000,
        "part of the body, then the end"
    );
    let err = result.recv_timeout(FAILSAFE).unwrap().unwrap_err();
    assert_eq!(err.to_string(), "a read error of the caller's");
}

#[test]
fn a_body_writer_ending_short_closes_the_connection() {
    let server = start(config());
    let (results, result) = mpsc::channel();
    serve_pieces(&server, 150_000, || Ok(()), results);
    let mut client = server.client();
    client.send(b"GET /pieces HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n");
    let sent = client.rest();
    let head_end = sent.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        sent.len() - head_end,
        150_000,
        "what was written, then the end"
    );
    let err = result.recv_timeout(FAILSAFE).unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
}
