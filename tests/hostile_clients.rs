//! Clients that try to knock the node over: slowloris (heads and bodies
//! trickled a byte at a time, idle keep-alive connections), more open
//! connections than `general.max_connections` (and as many tricklers,
//! whose heads must arrive within 10 s and who make room for newcomers),
//! and HTTP versions the node does not speak.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Generous bound for a normal request while hostile clients are around.
const PROMPT: Duration = Duration::from_secs(2);

fn connect(port: u16) -> TcpStream {
    let stream =
        TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), IO_TIMEOUT)
            .expect("connect");
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// A PUT with the framing header `framing` and a body of `len` bytes (a
/// chunked one of 64 KiB when `len` is 0).
fn body_request(framing: &str, len: usize) -> Vec<u8> {
    let mut request =
        format!("PUT /api/kv/slow HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n").into_bytes();
    if len == 0 {
        request.extend(chunked(&[&[b'c'; 64 * 1024]]));
    } else {
        request.extend(std::iter::repeat_n(b'b', len));
    }
    request
}

#[test]
fn two_hundred_slow_clients_do_not_stop_a_normal_one() {
    let node = Config::new().start();
    let port = node.port();
    // Each slow client sends its bytes one at a time: a request head, or
    // the body of a PUT (small, large, or chunked); or it sends one request
    // and then nothing.
    let head = b"GET /api/kv/slow HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n".to_vec();
    let small_body = body_request("Content-Length: 600", 600);
    let large_body = body_request("Content-Length: 100000", 100_000);
    let chunked_body = body_request("Transfer-Encoding: chunked", 0);
    let mut slow: Vec<(TcpStream, Vec<u8>, usize)> = Vec::new();
    for n in 0..200 {
        let mut stream = connect(port);
        let script = match n % 5 {
            0 => head.clone(),
            1..=3 => {
                // The whole head at once, then the body a byte at a time.
                let request = [&small_body, &large_body, &chunked_body][n % 5 - 1];
                let end_of_head = request.windows(4).position(|w| w == b"\r\n\r\n");
                let split = end_of_head.unwrap() + 4;
                stream.write_all(&request[..split]).unwrap();
                request[split..].to_vec()
            }
            _ => {
                // Idle keep-alive: one whole request, then nothing more
                // (its response is never read).
                stream
                    .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                Vec::new()
            }
        };
        slow.push((stream, script, 0));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let trickler = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (stream, script, sent) in slow.iter_mut() {
                    if *sent < script.len() {
                        let _ = stream.write_all(&script[*sent..*sent + 1]);
                        *sent += 1;
                    }
                }
                thread::sleep(Duration::from_millis(100));
            }
            slow.len()
        })
    };
    thread::sleep(Duration::from_millis(500));
    let mut slowest = Duration::ZERO;
    for n in 0..30 {
        let started = Instant::now();
        let path = format!("/api/kv/normal-{n}");
        let put = Conn::open(port).send("PUT", &path, &[], b"value");
        assert_eq!(put.status, 201);
        assert_eq!(get(port, &path).body, b"value");
        let took = started.elapsed();
        slowest = slowest.max(took);
        assert!(took < PROMPT, "a normal PUT and GET took {took:?}");
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    assert_eq!(trickler.join().unwrap(), 200);
    println!("slowest normal PUT+GET beside 200 slow clients: {slowest:?}");
    node.assert_serving();
}

#[test]
fn connections_beyond_max_connections_get_503_and_the_node_recovers() {
    let node = Config::new().raw("general", "max_connections: 8").start();
    let port = node.port();
    let mut open: Vec<Conn> = (0..8).map(|_| Conn::open(port)).collect();
    // The ninth is refused at once, whatever it would have asked.
    let mut ninth = Conn::open(port);
    let refused = ninth.read_response(false).expect("a 503 response");
    assert_error(&refused, 503, None);
    assert_eq!(refused.header("connection"), Some("close"));
    // The open ones are served.
    let resp = open[0].send("PUT", "/api/kv/k", &[], b"v");
    assert_eq!(resp.status, 201);
    // Once some close, new connections are served again.
    open.truncate(4);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Conn::try_open(port).and_then(|mut c| c.try_send("GET", "/api/kv/k", &[], b"")) {
            Ok(resp) if resp.status == 200 => break,
            other => assert!(
                Instant::now() < deadline,
                "still refused after closing connections: {other:?}"
            ),
        }
        thread::sleep(Duration::from_millis(50));
    }
    node.assert_serving();
}

/// How many entries `/proc/<pid>/<what>` has: open descriptors (`fd`) or
/// threads (`task`) of the node.
fn proc_entries(node: &Node, what: &str) -> usize {
    std::fs::read_dir(format!("/proc/{}/{what}", node.pid()))
        .unwrap()
        .count()
}

#[test]
fn other_http_versions_get_505_and_leave_no_thread_or_descriptor_behind() {
    let node = Config::new().start();
    let port = node.port();
    node.assert_serving();
    let (fds_before, threads_before) = (proc_entries(&node, "fd"), proc_entries(&node, "task"));
    let heads: [&[u8]; 4] = [
        b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /api/kv/k HTTP/3.0\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/0.9\r\n\r\n",
        // The HTTP/2 connection preface (`curl --http2-prior-knowledge`).
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ];
    // 600 connections, more than the 512 the node admits at once, in
    // batches of 100 open together.
    for batch in 0..6 {
        let mut conns: Vec<Conn> = (0..100).map(|_| Conn::open(port)).collect();
        for (n, conn) in conns.iter_mut().enumerate() {
            conn.write_raw(heads[(batch + n) % heads.len()]).unwrap();
        }
        for conn in &mut conns {
            let resp = conn.read_response(false).expect("an answer to the request");
            assert_error(&resp, 505, None);
            // And the node closed the connection.
            assert!(conn.read_response(false).is_err());
        }
    }
    node.assert_serving();
    // Connection threads idle for 5 s end; wait for them, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (fds, threads) = (proc_entries(&node, "fd"), proc_entries(&node, "task"));
        if fds <= fds_before && threads <= threads_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {fds} descriptors (from {fds_before}), {threads} threads (from {threads_before})"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// An endless request head: a header line that never ends.
const ENDLESS_HEAD: &[u8] = b"GET /api/kv/slow HTTP/1.1\r\nHost: x\r\nX-Padding: ";

#[test]
fn a_head_trickled_for_longer_than_10_s_gets_408() {
    let node = Config::new().start();
    let mut conn = Conn::open(node.port());
    conn.set_read_timeout(Duration::from_secs(30));
    // A byte every 300 ms, well within the read timeout, for up to 40 s.
    let mut writer = conn.writer();
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        scope.spawn(|| {
            let bytes = ENDLESS_HEAD.iter().chain(std::iter::repeat(&b'a'));
            for byte in bytes.take(40_000 / 300) {
                if stop.load(Ordering::SeqCst) || writer.write_all(&[*byte]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(300));
            }
        });
        let resp = conn.read_response(false).expect("an answer before 30 s");
        assert_error(&resp, 408, None);
    });
    node.assert_serving();
}

#[test]
fn six_hundred_tricklers_do_not_keep_a_normal_client_out() {
    let node = Config::new().start();
    let port = node.port();
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        // 600 connections each sending a byte of an endless head every
        // second; one that is closed (evicted, refused, or cut off at its
        // head's deadline) is opened again at once.
        scope.spawn(|| {
            let mut tricklers: Vec<(TcpStream, usize)> =
                (0..600).map(|_| (connect(port), 0)).collect();
            while !stop.load(Ordering::SeqCst) {
                for (stream, sent) in tricklers.iter_mut() {
                    let byte = ENDLESS_HEAD.get(*sent).copied().unwrap_or(b'a');
                    if stream.write_all(&[byte]).is_ok() {
                        *sent += 1;
                    } else if let Ok(again) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                        (*stream, *sent) = (again, 0);
                    }
                }
                thread::sleep(Duration::from_secs(1));
            }
        });
        // Long enough for all 600 to be connected (the node accepts them
        // at its own pace) and for most slots to be held by tricklers at
        // least 1 s old (younger ones are never evicted).
        thread::sleep(Duration::from_secs(6));
        let mut slowest = Duration::ZERO;
        for n in 0..20 {
            let started = Instant::now();
            let path = format!("/api/kv/normal-{n}");
            let served = Conn::try_open(port).and_then(|mut conn| {
                let put = conn.try_send("PUT", &path, &[], b"value")?;
                let get = conn.try_send("GET", &path, &[], b"")?;
                Ok((put.status, get.status, get.body))
            });
            let took = started.elapsed();
            assert_eq!(
                served.unwrap_or_else(|e| panic!("request {n}: {e}")),
                (201, 200, b"value".to_vec()),
                "request {n}"
            );
            assert!(took < PROMPT, "a normal PUT and GET took {took:?}");
            slowest = slowest.max(took);
            thread::sleep(Duration::from_millis(250));
        }
        println!("slowest normal PUT+GET beside 600 tricklers: {slowest:?}");
    });
    node.assert_serving();
}

/// The secret of [`secured_small_budget`]'s node.
const SECRET: &str = "hostile-secret-0123456789-abcdefghijkl";

/// A node with authentication on and the smallest memory budget its 16 MiB
/// values allow, so that a few large bodies fill the share read ahead; and
/// a token that may read and write every key.
fn secured_small_budget() -> (Node, String) {
    let node = Config::new()
        .raw("storage", "memory_budget: 253000000")
        .raw("authentication", "enabled: true")
        .raw("authentication", &format!("secret_key: \"{SECRET}\""))
        .start();
    let issued = node.run(&[
        "tokens",
        "issue",
        "--scope",
        "read",
        "--scope",
        "write",
        "--expires",
        "1h",
    ]);
    assert!(issued.status.success(), "{issued:?}");
    let token = String::from_utf8(issued.stdout).unwrap().trim().to_string();
    (node, token)
}

/// How many trickling clients of each kind [`Tricklers`] keeps connected.
const TRICKLERS_PER_KIND: usize = 16;

/// Length a large trickled PUT declares: more than the read-ahead's share
/// of [`secured_small_budget`]'s memory budget holds for all of them.
const LARGE_BODY: usize = 16 << 20;

/// Authenticated clients that trickle, each kind [`TRICKLERS_PER_KIND`]
/// times: a PUT with `Expect: 100-continue` and `Content-Length: 1000`
/// sending a body byte a second; a chunked PUT sending a byte a second; a
/// head sent a byte a second; and a PUT declaring [`LARGE_BODY`] bytes that
/// sends all but 1 KiB at once, then a byte every 7 s. A client cut off
/// (408, 503, closed) connects again and starts over. They stop when
/// `stop` is set.
fn tricklers<'s>(scope: &'s thread::Scope<'s, '_>, port: u16, token: &str, stop: &'s AtomicBool) {
    let auth = format!("Authorization: Bearer {token}\r\n");
    let put = |key: &str, framing: &str| {
        format!("PUT /api/kv/{key} HTTP/1.1\r\nHost: x\r\n{auth}{framing}\r\n\r\n").into_bytes()
    };
    // (what is sent at once, what is then trickled a byte a second)
    let mut scripts: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for n in 0..TRICKLERS_PER_KIND {
        let continuing = "Content-Length: 1000\r\nExpect: 100-continue";
        scripts.push((put(&format!("expect-{n}"), continuing), vec![b'e'; 1000]));
        let chunked_body = chunked(&[&[b'c'; 64 * 1024]]);
        let chunked_head = put(&format!("chunked-{n}"), "Transfer-Encoding: chunked");
        scripts.push((chunked_head, chunked_body));
        let mut head = ENDLESS_HEAD.to_vec();
        head.extend(std::iter::repeat_n(b'a', 64 * 1024));
        scripts.push((Vec::new(), head));
    }
    scope.spawn(move || {
        let open = |(at_once, _): &(Vec<u8>, Vec<u8>)| {
            let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
            stream.set_write_timeout(Some(IO_TIMEOUT)).ok()?;
            stream.write_all(at_once).ok()?;
            Some(stream)
        };
        let mut streams: Vec<(Option<TcpStream>, usize)> =
            scripts.iter().map(|script| (open(script), 0)).collect();
        while !stop.load(Ordering::SeqCst) {
            for ((stream, sent), script) in streams.iter_mut().zip(&scripts) {
                let byte = script.1.get(*sent).copied().unwrap_or(b'a');
                match stream.as_mut().map(|s| s.write_all(&[byte])) {
                    Some(Ok(())) => *sent += 1,
                    _ => (*stream, *sent) = (open(script), 0),
                }
            }
            thread::sleep(Duration::from_secs(1));
        }
    });
    for n in 0..TRICKLERS_PER_KIND {
        let mut head = put(
            &format!("large-{n}"),
            &format!("Content-Length: {LARGE_BODY}"),
        );
        head.extend(std::iter::repeat_n(b'l', LARGE_BODY - 1024));
        scope.spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
                    thread::sleep(Duration::from_millis(100));
                    continue;
                };
                stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                if stream.write_all(&head).is_err() {
                    continue;
                }
                'trickle: while !stop.load(Ordering::SeqCst) {
                    for _ in 0..70 {
                        if stop.load(Ordering::SeqCst) {
                            break 'trickle;
                        }
                        thread::sleep(Duration::from_millis(100));
                    }
                    if stream.write_all(b"l").is_err() {
                        break;
                    }
                }
            }
        });
    }
}

/// An authenticated PUT of a small value then a GET of it, each on a new
/// connection: how long each took, or why it failed.
fn normal_put_and_get(port: u16, token: &str, n: usize) -> (Duration, Duration) {
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];
    let path = format!("/api/kv/normal-{n}");
    let started = Instant::now();
    let put =
        Conn::try_open(port).and_then(|mut conn| conn.try_send("PUT", &path, &auth, b"value"));
    let put_took = started.elapsed();
    assert_eq!(
        put.map(|r| r.status)
            .unwrap_or_else(|e| panic!("PUT {n}: {e}")),
        201
    );
    let started = Instant::now();
    let got = Conn::try_open(port).and_then(|mut conn| conn.try_send("GET", &path, &auth, b""));
    let get_took = started.elapsed();
    let got = got.unwrap_or_else(|e| panic!("GET {n}: {e}"));
    assert_eq!((got.status, got.body), (200, b"value".to_vec()), "GET {n}");
    (put_took, get_took)
}

#[test]
fn authenticated_tricklers_of_every_kind_hold_no_worker() {
    let (node, token) = secured_small_budget();
    let port = node.port();
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        tricklers(scope, port, &token, &stop);
        // Every trickler connected and its head sent; the large bodies
        // sent up to where they trickle, or waiting for room.
        thread::sleep(Duration::from_secs(3));
        // 16 s: past the 10 s after which slow bodies and heads are cut
        // off, and their clients connect again.
        let mut slowest = Duration::ZERO;
        for n in 0..16 {
            let (put, get) = normal_put_and_get(port, &token, n);
            assert!(put < PROMPT, "a normal PUT took {put:?}");
            assert!(get < PROMPT, "a normal GET took {get:?}");
            slowest = slowest.max(put).max(get);
            thread::sleep(Duration::from_secs(1));
        }
        println!(
            "slowest normal PUT or GET beside {} authenticated tricklers: {slowest:?}",
            4 * TRICKLERS_PER_KIND
        );
    });
    normal_put_and_get(port, &token, 16);
}

#[test]
fn a_body_without_room_in_the_read_ahead_budget_gets_503_and_reaches_no_worker() {
    let (node, token) = secured_small_budget();
    let port = node.port();
    // The budget's read-ahead share holds three such bodies, not four.
    let head = format!(
        "PUT /api/kv/large HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {LARGE_BODY}\r\n\r\n"
    );
    let mut conns: Vec<Conn> = (0..4).map(|_| Conn::open(port)).collect();
    thread::scope(|scope| {
        for conn in &conns {
            let mut writer = conn.writer();
            let head = head.as_bytes();
            scope.spawn(move || {
                writer.write_all(head).unwrap();
                writer.write_all(&vec![b'l'; LARGE_BODY - 1024]).unwrap();
            });
        }
    });
    // All but their last KiB sent: one was refused once no room came
    // within 2 s; the others wait for the rest of their bodies (for less
    // than the node's 10 s read timeout).
    let answers: Vec<Option<Response>> = thread::scope(|scope| {
        let reading: Vec<_> = (conns.iter_mut())
            .map(|conn| {
                scope.spawn(|| {
                    conn.set_read_timeout(Duration::from_secs(4));
                    conn.read_response(false).ok()
                })
            })
            .collect();
        reading.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let refused: Vec<usize> = (0..4).filter(|&n| answers[n].is_some()).collect();
    assert_eq!(refused.len(), 1, "answered early: {answers:?}");
    let resp = answers[refused[0]].as_ref().unwrap();
    assert_error(resp, 503, None);
    assert_eq!(resp.header("retry-after"), Some("1"));
    normal_put_and_get(port, &token, 0);
    // The others' bodies, once whole, are stored.
    for (n, conn) in conns.iter_mut().enumerate() {
        if n != refused[0] {
            conn.set_read_timeout(IO_TIMEOUT);
            conn.write_raw(&[b'l'; 1024]).unwrap();
            let resp = conn.read_response(false).unwrap();
            assert!(matches!(resp.status, 200 | 201), "{resp:?}");
        }
    }
    let bearer = format!("Bearer {token}");
    let stored = request(
        port,
        "GET",
        "/api/kv/large",
        &[("Authorization", &bearer)],
        b"",
    );
    assert!(
        stored.body == vec![b'l'; LARGE_BODY],
        "the stored value differs"
    );
}

/// A benchmark, not a test (`bench/tricklers.sh`): a normal client's PUT
/// and GET latency on an idle node, then beside [`tricklers`], each over
/// 20 s (two rounds of the tricklers being cut off and coming back).
#[test]
#[ignore = "a benchmark: run by bench/tricklers.sh"]
fn latency_beside_authenticated_tricklers() {
    let (node, token) = secured_small_budget();
    let port = node.port();
    let measure = |first: usize| {
        let (mut puts, mut gets) = (Vec::new(), Vec::new());
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            let (put, get) = normal_put_and_get(port, &token, first + puts.len());
            puts.push(put);
            gets.push(get);
            thread::sleep(Duration::from_millis(20));
        }
        (puts, gets)
    };
    let idle = measure(0);
    let stop = AtomicBool::new(false);
    let beside = thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        tricklers(scope, port, &token, &stop);
        thread::sleep(Duration::from_secs(3));
        measure(1_000_000)
    });
    println!(
        "normal client, ms: median / p99 / max over n requests (tricklers: {} of each of 4 kinds)",
        TRICKLERS_PER_KIND
    );
    for (what, mut took) in [
        ("PUT idle", idle.0),
        ("PUT beside tricklers", beside.0),
        ("GET idle", idle.1),
        ("GET beside tricklers", beside.1),
    ] {
        took.sort();
        let ms = |at: usize| took[at.min(took.len() - 1)].as_secs_f64() * 1000.0;
        let n = took.len();
        println!(
            "{what:>22}: {:7.2} / {:7.2} / {:7.2}  (n = {n})",
            ms(n / 2),
            ms(n * 99 / 100),
            ms(n - 1)
        );
    }
}
