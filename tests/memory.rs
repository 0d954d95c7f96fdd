//! The memory budget (`storage.memory_budget`), through the real binary: a
//! node under a data limit (util-linux `prlimit`) takes concurrent 16 MiB
//! PUTs overwriting keys, 32 MiB base64 batches, and compactions (automatic
//! and asked for) without aborting; every acknowledged write reads back,
//! and its peak resident memory (`VmHWM`) stays under the budget. An
//! encrypted store's large values, decrypted whole to be served, take
//! their room in the budget too.
//!
//! `LUCID_MEMORY_ROUNDS` sets each client's number of requests (default 4).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{encrypted, get, put, Config, Conn, StopOnDrop};
use lucid::memory::{self, MemoryBudget};

const MIB: usize = 1024 * 1024;
/// The default budget, which the node must keep to.
const BUDGET: usize = 256 * MIB;
/// The data limit the node runs under: room for thread stacks and the
/// allocator's reserved address space, well below what the old node took.
const DATA_LIMIT: usize = 2 * BUDGET;
const PUT_CLIENTS: usize = 3;
/// What the node logs after an automatic compaction.
const AUTOMATIC: &str = "background compaction:";
/// Pause between compactions asked for, so automatic ones run too.
const COMPACT_EVERY: Duration = Duration::from_secs(2);
/// How long an automatic compaction may take to end after the load.
const AUTOMATIC_WAIT: Duration = Duration::from_secs(120);
const BATCH_CLIENTS: usize = 2;
/// Keys each PUT client overwrites in turn.
const KEYS_PER_CLIENT: usize = 2;

fn rounds() -> usize {
    std::env::var("LUCID_MEMORY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

/// A value of `len` bytes (a multiple of 3), `seed` all along: cheap to
/// make and to encode in a debug build.
fn value(seed: u8, len: usize) -> Vec<u8> {
    vec![seed; len]
}

/// A batch body of about 32 MiB: two values of 12 MiB in base64.
fn batch_body(client: usize, seed: u8) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD
        .encode([seed; 3])
        .repeat(12 * MIB / 3);
    let ops: Vec<_> = (0..2)
        .map(|n| serde_json::json!({"op": "put", "key": format!("batch-{client}-{n}"), "value_base64": encoded}))
        .collect();
    serde_json::to_vec(&serde_json::json!({ "operations": ops })).unwrap()
}

/// Asks for a compaction and returns the reply's status code. A compaction
/// of this much data takes longer in a debug build than the harness's
/// socket timeout, hence a connection of its own.
fn compact(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    stream
        .write_all(b"POST /api/admin/compact HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .expect("read the compaction's reply");
    reply.split(' ').nth(1).unwrap_or_default().to_string()
}

/// A memory figure of the node, from `/proc/<pid>/status` (`VmHWM`: the
/// peak resident memory; `VmRSS`: now).
fn memory_figure(pid: u32, name: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status
        .lines()
        .find(|line| line.starts_with(name))
        .expect("memory figure");
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM in kB");
    kib * 1024
}

/// A reply that is not an acknowledgement must be a refusal for memory:
/// 503 with `Retry-After` and a JSON message.
fn assert_refused_for_memory(response: &common::Response, what: &str) {
    assert_eq!(response.status, 503, "{what}: {}", response.text());
    assert_eq!(response.header("retry-after"), Some("1"), "{what}");
    let message: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert!(
        message["message"]
            .as_str()
            .is_some_and(|m| m.contains("memory_budget")),
        "{what}: {message}"
    );
}

#[test]
fn large_puts_batches_and_compactions_stay_within_the_memory_budget() {
    let mut node = Config::new()
        .sync("interval")
        .raw("storage", &format!("memory_budget: {BUDGET}"))
        .start();
    let limited = Command::new("prlimit")
        .args([
            "--pid",
            &node.pid().to_string(),
            &format!("--data={DATA_LIMIT}"),
        ])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(limited.success(), "prlimit failed");
    let port = node.port();
    let rounds = rounds();
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let refused = AtomicUsize::new(0);
    // Set once the node logged an automatic compaction.
    let automatic = AtomicBool::new(false);
    // Per PUT client and key, then per batch client: the seed of the last
    // acknowledged value.
    let (puts, batches) = thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        let compactor = scope.spawn(|| {
            let mut compactions = 0;
            while !stop.load(Ordering::SeqCst) {
                // Asked for only once an automatic one ran, so both do.
                if !automatic.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
                match compact(port).as_str() {
                    "200" => compactions += 1,
                    "409" | "503" => {}
                    other => panic!("compaction answered {other}"),
                }
                thread::sleep(COMPACT_EVERY);
            }
            compactions
        });
        let put_clients: Vec<_> = (0..PUT_CLIENTS)
            .map(|client| {
                let refused = &refused;
                scope.spawn(move || {
                    let values = [
                        value(client as u8 * 2 + 1, 16 * MIB),
                        value(client as u8 * 2 + 2, 16 * MIB),
                    ];
                    let mut acknowledged = [None; KEYS_PER_CLIENT];
                    let mut conn = Conn::open(port);
                    for round in 0..rounds {
                        let (key, which) = (round % KEYS_PER_CLIENT, (round / KEYS_PER_CLIENT) % 2);
                        let path = format!("/api/kv/put-{client}-{key}");
                        let response = conn.send("PUT", &path, &[], &values[which]);
                        match response.status {
                            200 | 201 => acknowledged[key] = Some(which),
                            _ => {
                                assert_refused_for_memory(&response, &path);
                                refused.fetch_add(1, Ordering::SeqCst);
                                conn = Conn::open(port);
                            }
                        }
                    }
                    (values, acknowledged)
                })
            })
            .collect();
        let batch_clients: Vec<_> = (0..BATCH_CLIENTS)
            .map(|client| {
                let refused = &refused;
                scope.spawn(move || {
                    let seeds = [100 + client as u8 * 2, 101 + client as u8 * 2];
                    let bodies = seeds.map(|seed| batch_body(client, seed));
                    let mut acknowledged = None;
                    let mut conn = Conn::open(port);
                    for round in 0..rounds {
                        let which = round % 2;
                        let response = conn.send("POST", "/api/batch", &[], &bodies[which]);
                        match response.status {
                            200 => acknowledged = Some(seeds[which]),
                            _ => {
                                assert_refused_for_memory(&response, "batch");
                                refused.fetch_add(1, Ordering::SeqCst);
                                conn = Conn::open(port);
                            }
                        }
                    }
                    acknowledged
                })
            })
            .collect();
        let clients_done = || {
            put_clients.iter().all(|c| c.is_finished())
                && batch_clients.iter().all(|c| c.is_finished())
        };
        while !clients_done() {
            if node.logs().contains(AUTOMATIC) {
                automatic.store(true, Ordering::SeqCst);
            }
            thread::sleep(Duration::from_millis(100));
        }
        let puts: Vec<_> = put_clients.into_iter().map(|c| c.join().unwrap()).collect();
        let batches: Vec<_> = batch_clients
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect();
        stop.store(true, Ordering::SeqCst);
        let compactions = compactor.join().unwrap();
        eprintln!(
            "{compactions} compactions asked for and done; load ran {:.1} s",
            started.elapsed().as_secs_f64()
        );
        (puts, batches)
    });
    // A fast machine can end the load before the compaction it made due
    // has finished: that one is waited for, and counts in the peak.
    let deadline = Instant::now() + AUTOMATIC_WAIT;
    while !node.logs().contains(AUTOMATIC) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    node.assert_running();
    let peak = memory_figure(node.pid(), "VmHWM:");
    eprintln!(
        "peak RSS {} MiB of a {} MiB budget, {} MiB after the load; {} requests refused for memory",
        peak / MIB,
        BUDGET / MIB,
        memory_figure(node.pid(), "VmRSS:") / MIB,
        refused.load(Ordering::SeqCst)
    );
    let logs = node.logs();
    assert!(
        logs.contains(AUTOMATIC),
        "no automatic compaction ran:\n{logs}"
    );
    for line in logs.lines().filter(|line| line.contains(AUTOMATIC)) {
        eprintln!("{line}");
    }
    // Every acknowledged write reads back.
    let mut conn = Conn::open(port);
    for (client, (values, acknowledged)) in puts.iter().enumerate() {
        for (key, which) in acknowledged.iter().enumerate() {
            let Some(which) = which else { continue };
            let response = conn.send("GET", &format!("/api/kv/put-{client}-{key}"), &[], b"");
            assert_eq!(response.status, 200, "put-{client}-{key}");
            assert!(
                response.body == values[*which],
                "put-{client}-{key}: wrong value"
            );
        }
    }
    for (client, seed) in batches.iter().enumerate() {
        let Some(seed) = seed else { continue };
        let expected = value(*seed, 12 * MIB);
        for n in 0..2 {
            let response = conn.send("GET", &format!("/api/kv/batch-{client}-{n}"), &[], b"");
            assert_eq!(response.status, 200, "batch-{client}-{n}");
            assert!(response.body == expected, "batch-{client}-{n}: wrong value");
        }
    }
    assert!(
        peak < BUDGET,
        "peak RSS {} MiB is over the {} MiB budget",
        peak / MIB,
        BUDGET / MIB
    );
}

#[test]
fn a_budget_too_small_for_the_largest_value_is_refused_at_start() {
    let (status, stderr) = Config::new()
        .raw("storage", "memory_budget: 134217728")
        .start_expect_failure();
    assert!(!status.success());
    assert!(
        stderr.contains("storage.memory_budget must be at least")
            && stderr.contains("max_value_bytes"),
        "{stderr}"
    );
    // With smaller values the same budget is enough.
    let node = Config::new()
        .max_value_bytes(4 * MIB as u64)
        .raw("storage", "memory_budget: 134217728")
        .start();
    node.assert_serving();
}

/// An encrypted store decrypts a value whole to serve it: a GET of a large
/// one holds room for it in the budget until the value is sent, so GETs
/// whose answers nobody reads take no more than the budget. Past that, a
/// GET waits for room (2 s), then gets the budget's 503; the room comes
/// back once they end.
#[test]
fn an_encrypted_stores_large_gets_take_their_room_from_the_budget() {
    const STALLED: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    // 160 MiB, of which about 76 MiB for requests with 8 MiB values: room
    // for 9 of these GETs at once, of the default 64 request slots.
    let (budget, max_value) = (160 * MIB, 8 * MIB);
    let config = Config::new()
        .max_value_bytes(max_value as u64)
        .raw("storage", &format!("memory_budget: {budget}"))
        .raw("general", "threads: 0")
        .raw("general", "read_timeout_ms: 60000");
    let node = encrypted(config, dir.path(), 1).start();
    let port = node.port();
    let stored = value(9, max_value - 64);
    assert_eq!(put(port, "/api/kv/large", &stored).status, 201);
    // Answers far larger than what a connection's buffers hold unread: each
    // GET that got room holds it, its answer begun.
    let stalled: Vec<TcpStream> = (0..STALLED)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream
                .write_all(b"GET /api/kv/large HTTP/1.1\r\nHost: lucid\r\n\r\n")
                .unwrap();
            stream
        })
        .collect();
    let statuses: Vec<String> = stalled.iter().map(status_line).collect();
    let served = statuses
        .iter()
        .filter(|line| line.contains(" 200 "))
        .count();
    let refused = statuses
        .iter()
        .filter(|line| line.contains(" 503 "))
        .count();
    let room = MemoryBudget::new(budget, max_value).capacity() / max_value;
    assert_eq!((served, refused), (room, STALLED - room), "{statuses:?}");
    let refused = get(port, "/api/kv/large");
    assert_refused_for_memory(&refused, "a GET with the budget taken");
    drop(stalled);
    // Their room comes back as the node finds them gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    let served = loop {
        let reply = get(port, "/api/kv/large");
        if reply.status != 503 || Instant::now() > deadline {
            break reply;
        }
    };
    assert_eq!(served.status, 200, "{}", served.text());
    assert!(served.body == stored, "the value, whole");
    // A small value needs no room of its own.
    assert_eq!(put(port, "/api/kv/small", b"reading").status, 201);
    assert_eq!(get(port, "/api/kv/small").body, b"reading");
}

/// The status line of the answer `stream` is getting, read without taking
/// it (waits for it to begin).
fn status_line(stream: &TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = [0; 32];
    let len = stream.peek(&mut head).expect("an answer begins");
    String::from_utf8_lossy(&head[..len]).into_owned()
}

/// A value longer than the budget ever leaves a request (written before
/// `storage.max_value_bytes` was lowered) cannot be read whole by an
/// encrypted store: a GET, a listing with metadata and a digest get a 500
/// naming the setting to raise, not a 503 to retry forever; other keys are
/// served, and a budget large enough reads it again.
#[test]
fn a_value_longer_than_the_budget_allows_is_refused_with_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = encrypted(Config::new(), dir.path(), 2).start();
    let stored = value(5, 12 * MIB);
    assert_eq!(put(node.port(), "/api/kv/large", &stored).status, 201);
    assert_eq!(put(node.port(), "/api/kv/small", b"small").status, 201);
    let lowered = Config::new().max_value_bytes(MIB as u64).raw(
        "storage",
        &format!("memory_budget: {}", memory::minimum_budget(MIB)),
    );
    let config_file = node.data_dir().with_file_name("lucid.yml");
    let yaml = encrypted(lowered, dir.path(), 2).yaml(&node.data_dir());
    std::fs::write(&config_file, yaml).unwrap();
    node.restart();
    let port = node.port();
    for path in ["/api/kv/large", "/api/kv?prefix=", "/api/admin/digest"] {
        let reply = get(port, path);
        assert_eq!(reply.status, 500, "{path}: {}", reply.text());
        assert_eq!(reply.header("retry-after"), None, "{path}");
        assert!(
            reply.text().contains("raise storage.memory_budget"),
            "{path}: {}",
            reply.text()
        );
    }
    assert_eq!(get(port, "/api/kv/small").body, b"small");
    let keys = get(port, "/api/kv?prefix=&keys_only=true");
    assert!(keys.text().contains("large"), "{}", keys.text());
    let yaml = encrypted(Config::new(), dir.path(), 2).yaml(&node.data_dir());
    std::fs::write(&config_file, yaml).unwrap();
    node.restart();
    assert!(get(node.port(), "/api/kv/large").body == stored);
}
