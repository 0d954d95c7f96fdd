//! Connections: threads for bursts of them, timeouts, the cap on how many
//! are open and who makes room, and the pace clients must keep (patches 1,
//! 5, 7 and 22 of PATCHES.md; accept errors are in
//! `tests/accept_errors.rs`).
#![warn(clippy::all)]

mod common;

use std::io::Write;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{config, ok, start, Client, FAILSAFE};
use lucid_http::{ConnectionLimit, Pace};

#[test]
fn a_burst_of_keep_alive_connections_is_served_together() {
    let server = start(config());
    server.serve(|request| ok(request, "hi"));
    // All connected before any request: the accept thread hands them to
    // the pool in one burst, and each stays open, idle, once answered.
    let mut clients: Vec<Client> = (0..16).map(|_| server.client()).collect();
    for client in &mut clients {
        client.send(b"GET / HTTP/1.1\r\n\r\n");
    }
    for client in &mut clients {
        assert_eq!(client.response().text(), "hi");
    }
    for client in &mut clients {
        client.send(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(client.response().text(), "hi");
    }
}

#[test]
fn a_client_that_goes_quiet_is_answered_408_after_the_read_timeout() {
    let mut config = config();
    config.read_timeout = Some(Duration::from_millis(200));
    let server = start(config);
    server.serve(|request| ok(request, "hi"));
    let mut mid_head = server.client();
    mid_head.send(b"GET / HT");
    let mut idle = server.client();
    idle.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(idle.response().status, 200);
    for client in [&mut mid_head, &mut idle] {
        let reply = client.response();
        assert_eq!(reply.status, 408);
        assert!(reply.message().contains("did not arrive in time"));
        assert!(client.closed());
    }
}

#[test]
fn a_client_that_reads_nothing_cannot_hold_the_writer() {
    let mut config = config();
    config.read_timeout = Some(Duration::from_millis(200));
    let server = start(config);
    let mut client = server.client();
    client.send(b"GET / HTTP/1.1\r\n\r\n");
    let request = server.recv();
    let (sent, result) = mpsc::channel();
    thread::spawn(move || {
        // Far more than the socket buffers hold, to a client that reads
        // none of it.
        let body = vec![b'b'; 256 << 20];
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        sent.send(request.respond_raw(head.as_bytes(), &body))
            .unwrap();
    });
    let outcome = result.recv_timeout(FAILSAFE).expect("the write gave up");
    assert!(outcome.is_err(), "256 MiB cannot have been sent");
    drop(client);
}

/// What a connection over the cap is sent.
const TOO_MANY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo many";

fn capped(max: usize) -> lucid_http::ServerConfig {
    let mut config = config();
    config.connection_limit = Some(ConnectionLimit {
        max,
        refusal: TOO_MANY.to_vec(),
    });
    config.pace = Some(Pace::default());
    config
}

#[test]
fn a_connection_over_the_cap_gets_the_refusal_when_none_can_make_room() {
    let server = start(capped(2));
    // Two connections busy with a request each: neither may be evicted.
    let mut busy: Vec<Client> = (0..2).map(|_| server.client()).collect();
    let requests: Vec<_> = busy
        .iter_mut()
        .map(|client| {
            client.send(b"GET / HTTP/1.1\r\n\r\n");
            server.recv()
        })
        .collect();
    let mut newcomer = server.client();
    let reply = newcomer.response();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), "too many");
    for (request, client) in requests.into_iter().zip(&mut busy) {
        ok(request, "served");
        assert_eq!(client.response().text(), "served");
    }
}

#[test]
fn the_connection_idle_longest_makes_room_for_a_newcomer() {
    let server = start(capped(2));
    server.serve(|request| ok(request, "served"));
    let mut idle = server.client();
    let mut busy = server.client();
    busy.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(busy.response().text(), "served");
    busy.send(b"GET / HT");
    // Only connections at least a second old are evicted (a burst of new
    // ones is refused instead of evicting each other): a precondition,
    // not an assertion.
    thread::sleep(Duration::from_millis(1100));
    // Both wait for a request; the idle one has sent nothing at all.
    let mut newcomer = server.client();
    newcomer.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(newcomer.response().text(), "served");
    assert!(idle.closed(), "the idle connection was closed to make room");
    busy.send(b"TP/1.1\r\n\r\n");
    assert_eq!(busy.response().text(), "served");
}

/// Sends `bytes` one at a time, `every` apart, on a copy of `client`'s
/// connection, until they are all sent or the server closes it; returns how
/// many were sent.
fn trickle(client: &Client, bytes: Vec<u8>, every: Duration) -> thread::JoinHandle<usize> {
    let mut stream = client.stream().try_clone().unwrap();
    thread::spawn(move || {
        for (sent, byte) in bytes.iter().enumerate() {
            if stream.write_all(&[*byte]).is_err() {
                return sent;
            }
            thread::sleep(every);
        }
        bytes.len()
    })
}

#[test]
fn a_head_that_trickles_in_past_its_deadline_is_a_408() {
    let mut config = config();
    config.pace = Some(Pace {
        head: Duration::from_millis(300),
        ..Pace::default()
    });
    let server = start(config);
    let mut client = server.client();
    // Never ends: a header line of a thousand bytes, one every 10 ms.
    let head = format!("GET / HTTP/1.1\r\nX-Slow: {}", "s".repeat(1000));
    let trickler = trickle(
        &client,
        head.clone().into_bytes(),
        Duration::from_millis(10),
    );
    let reply = client.response();
    assert_eq!(reply.status, 408);
    assert!(reply.message().contains("did not arrive in time"));
    let sent = trickler.join().unwrap();
    assert!(sent < head.len(), "the head was cut off while it trickled");
}

#[test]
fn a_body_slower_than_the_minimum_rate_is_a_408() {
    let mut config = config();
    config.read_ahead = Some(1 << 20);
    config.pace = Some(Pace {
        head: Duration::from_secs(10),
        min_body_rate: 10_000,
        body_grace: Duration::from_millis(300),
    });
    let server = start(config);
    let mut client = server.client();
    client.send(b"PUT / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n");
    // A tenth of the minimum rate: 10 bytes every 10 ms.
    let mut stream = client.stream().try_clone().unwrap();
    let trickler = thread::spawn(move || {
        for _ in 0..10_000 {
            if stream.write_all(&[b'x'; 10]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    });
    let reply = client.response();
    assert_eq!(reply.status, 408);
    assert!(reply.message().contains("body did not arrive in time"));
    drop(client);
    trickler.join().unwrap();
}
