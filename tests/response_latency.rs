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

/// Round trips timed per kind of request; the median of them is compared.
const ROUNDS: usize = 21;

/// A median at most this many times the 1 KiB one: a debug build's CRC and
/// copies of 60 KiB cost a few times more than of 1 KiB; the cliff costs
/// about a hundred times more.
const SMALL_FACTOR: f64 = 8.0;

/// Sizes compared with 1 KiB: around and above the old 4 KiB inline limit.
const SIZES: [usize; 4] = [1024, 5 * 1024, 20 * 1024, 60 * 1024];

/// The median duration in milliseconds of `ROUNDS` calls of `round(kind)`
/// for each of `kinds` kinds of request, timed in turn (one of each kind per
/// pass, after a pass to warm up), so that a burst of load on this shared
/// machine falls on every kind alike rather than on one.
fn medians_in_turn(kinds: usize, mut round: impl FnMut(usize)) -> Vec<f64> {
    let mut times = vec![Vec::with_capacity(ROUNDS); kinds];
    for pass in 0..=ROUNDS {
        for (kind, times) in times.iter_mut().enumerate() {
            let start = Instant::now();
            round(kind);
            // The first pass pays for page faults.
            if pass > 0 {
                times.push(start.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    times
        .into_iter()
        .map(|mut times| {
            times.sort_by(|a, b| a.total_cmp(b));
            times[ROUNDS / 2]
        })
        .collect()
}

fn value(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

#[test]
fn values_of_any_size_answer_as_promptly_as_small_ones_on_a_kept_connection() {
    let node = Node::start();
    let mut conn = Conn::open(node.port());
    let bodies = SIZES.map(value);
    let key = |len: usize| format!("/api/kv/size-{len}");
    for body in &bodies {
        assert_eq!(conn.send("PUT", &key(body.len()), &[], body).status, 201);
    }
    // Kind 2 × i: a GET of the i-th size; 2 × i + 1: a PUT of it.
    let medians = medians_in_turn(2 * SIZES.len(), |kind| {
        let body = &bodies[kind / 2];
        if kind % 2 == 0 {
            let response = conn.send("GET", &key(body.len()), &[], b"");
            assert_eq!(response.status, 200);
            assert_eq!(response.body.len(), body.len());
        } else {
            assert_eq!(conn.send("PUT", &key(body.len()), &[], body).status, 200);
        }
    });
    let (small_get, small_put) = (medians[0], medians[1]);
    for (i, len) in SIZES.into_iter().enumerate().skip(1) {
        let (get, put) = (medians[2 * i], medians[2 * i + 1]);
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
    // Kind 0: one change, then its event (a stream whose event waits for
    // the client's ACK of the one before shows that wait here); kind 1: a
    // change nobody watches.
    let medians = medians_in_turn(2, |kind| {
        if kind == 1 {
            let status = writer.send("PUT", "/api/kv/other", &[], b"1").status;
            assert_eq!(status / 100, 2);
            return;
        }
        round += 1;
        let key = format!("/api/kv/feed/{round}");
        assert!(matches!(
            writer.send("PUT", &key, &[], b"1").status,
            200 | 201
        ));
        let event = stream.next_event().unwrap().expect("the stream goes on");
        assert_eq!(event.json()["key"], key.trim_start_matches("/api/kv/"));
    });
    let (write_then_event, write_alone) = (medians[0], medians[1]);
    assert!(
        write_then_event <= write_alone * SMALL_FACTOR,
        "a write and its event: median {write_then_event:.3} ms against {write_alone:.3} ms for a write"
    );
}
