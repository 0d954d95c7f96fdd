//! No latency cliff at any value size on a keep-alive connection.
//!
//! A response that leaves in two writes meets Nagle's algorithm on the
//! server and the client's delayed ACK: the second write waits up to 40 ms
//! for an acknowledgement the client holds back. Clients that keep their
//! connection open (every HTTP library's session or pool) then see GETs of a
//! few KiB take hundreds of times longer than GETs of 1 KiB. These tests
//! compare medians within one run on one connection, never absolute times.

mod common;

use std::time::Instant;

use common::*;

/// Round trips timed per size; the median of them is compared.
const ROUNDS: usize = 15;

/// A median at most this many times the 1 KiB one: a debug build's CRC and
/// copies of 60 KiB cost a few times more than of 1 KiB; the cliff costs
/// about a hundred times more.
const SMALL_FACTOR: f64 = 8.0;

/// Sizes compared with 1 KiB: around and above the old 4 KiB inline limit.
const SIZES: [usize; 3] = [5 * 1024, 20 * 1024, 60 * 1024];

/// Median duration in milliseconds of `ROUNDS` calls of `round`.
fn median_ms(mut round: impl FnMut()) -> f64 {
    round(); // warm-up: the first request of a size pays for page faults
    let mut times: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            round();
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[ROUNDS / 2]
}

fn value(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Median GET and PUT of a `len`-byte value on `conn`.
fn medians(conn: &mut Conn, len: usize) -> (f64, f64) {
    let key = format!("/api/kv/size-{len}");
    let body = value(len);
    assert_eq!(conn.send("PUT", &key, &[], &body).status, 201);
    let get = median_ms(|| {
        let response = conn.send("GET", &key, &[], b"");
        assert_eq!(response.status, 200);
        assert_eq!(response.body.len(), len);
    });
    let put = median_ms(|| {
        assert_eq!(conn.send("PUT", &key, &[], &body).status, 200);
    });
    (get, put)
}

#[test]
fn values_of_any_size_answer_as_promptly_as_small_ones_on_a_kept_connection() {
    let node = Node::start();
    let mut conn = Conn::open(node.port());
    let (small_get, small_put) = medians(&mut conn, 1024);
    for len in SIZES {
        let (get, put) = medians(&mut conn, len);
        assert!(
            get <= small_get * SMALL_FACTOR,
            "GET of {len} bytes: median {get:.3} ms against {small_get:.3} ms for 1 KiB"
        );
        assert!(
            put <= small_put * SMALL_FACTOR,
            "PUT of {len} bytes: median {put:.3} ms against {small_put:.3} ms for 1 KiB"
        );
    }
}

#[test]
fn each_watch_event_leaves_at_once() {
    let node = Node::start();
    let port = node.port();
    let (mut stream, head) = Conn::watch(port, "/api/watch?prefix=feed/", &[]);
    assert_eq!(head.status, 200);
    let mut writer = Conn::open(port);
    let mut round = 0;
    // One change, then its event: a stream whose event waits for the
    // client's ACK of the one before shows that wait here.
    let write_then_event = median_ms(|| {
        round += 1;
        let key = format!("/api/kv/feed/{round}");
        assert!(matches!(
            writer.send("PUT", &key, &[], b"1").status,
            200 | 201
        ));
        let event = stream.next_event().unwrap().expect("the stream goes on");
        assert_eq!(event.json()["key"], key.trim_start_matches("/api/kv/"));
    });
    let write_alone = median_ms(|| {
        assert_eq!(
            writer.send("PUT", "/api/kv/other", &[], b"1").status / 100,
            2
        );
    });
    assert!(
        write_then_event <= write_alone * SMALL_FACTOR,
        "a write and its event: median {write_then_event:.3} ms against {write_alone:.3} ms for a write"
    );
}
