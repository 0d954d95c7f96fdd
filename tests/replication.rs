//! Replication through the real binary on loopback: a primary and its
//! followers as separate `lucid` processes.
//!
//! * followers under a mixed write load converge (equal integrity digests)
//!   within a second of the writes stopping, and send writes to the
//!   primary (307);
//! * a follower killed with SIGKILL again and again resumes where it was,
//!   never taking a new snapshot;
//! * a follower left behind by compactions takes a new snapshot by itself;
//! * with `min_acks: 1`, no acknowledged write is lost when the primary is
//!   killed and the follower promoted; without a follower a write is
//!   refused (503), and without its confirmation answered 504;
//! * an old primary that comes back as a follower sets its diverged log
//!   aside and takes the new primary's data;
//! * bad inputs (a refused token, a chain of followers, a stream cut,
//!   damaged or replaced by garbage, a primary encrypted with another key)
//!   are logged, retried and never applied, while the follower serves its
//!   reads.
//!
//! `LUCID_REPLICATION_WRITES` sets how many writes a follower misses while
//! stopped in the compaction test (default 100000).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::fault_proxy::{Fault, FaultProxy};
use common::workload::client_rng;
use common::*;
use proptest::prelude::RngExt;
use serde_json::Value;

/// How long a follower may take to connect, catch up or converge.
const CONVERGE: Duration = Duration::from_secs(30);

/// The issue's figure: followers equal to the primary this soon after the
/// writes stop.
const CONVERGED_AFTER_WRITES: Duration = Duration::from_secs(1);

const SECRET: &str = "replication-secret-0123456789-abcdefghij";

/// The snapshot a follower takes logs this.
const SNAPSHOT_TAKEN: &str = "took the primary's snapshot";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `http://127.0.0.1:PORT`.
fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// A follower of the node on `port`.
fn follower_of(port: u16) -> Config {
    Config::new().raw("replication", &format!("primary: {}", url(port)))
}

/// The 200 JSON answer to `GET path`.
fn json_of(port: u16, path: &str, auth: &[(&str, &str)]) -> Value {
    let resp = request(port, "GET", path, auth, b"");
    assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
    serde_json::from_slice(&resp.body).unwrap()
}

/// `GET /api/admin/digest`.
fn digest(port: u16, auth: &[(&str, &str)]) -> Value {
    json_of(port, "/api/admin/digest", auth)
}

/// `GET /api/admin/replication`.
fn replication(port: u16) -> Value {
    json_of(port, "/api/admin/replication", &[])
}

/// The `follower` part of a follower's `GET /api/admin/replication`.
fn follower_status(port: u16) -> Value {
    let status = replication(port);
    assert_eq!(status["role"], "follower", "{status}");
    status["follower"].clone()
}

/// Every node's stderr, to show with a failure.
fn logs_of(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .enumerate()
        .map(|(i, node)| format!("--- node {i} ---\n{}", node.logs()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `condition` until it holds; panics after [`CONVERGE`] saying
/// `what`, with the logs of `nodes`.
#[track_caller]
fn wait_until(what: &str, nodes: &[&Node], condition: impl FnMut() -> bool) {
    if !eventually(CONVERGE, condition) {
        panic!("not within {CONVERGE:?}: {what}\n{}", logs_of(nodes));
    }
}

/// Waits until the follower streams from its primary.
#[track_caller]
fn wait_following(follower: &Node) {
    wait_until("the follower follows", &[follower], || {
        follower_status(follower.port())["state"] == "following"
    });
}

/// Waits until the primary counts `count` followers caught up.
#[track_caller]
fn wait_caught_up(primary: &Node, count: usize) {
    wait_until("the followers are caught up", &[primary], || {
        let status = replication(primary.port());
        let followers = status["followers"].as_array().unwrap();
        followers.iter().filter(|f| f["caught_up"] == true).count() == count
    });
}

/// Polls the nodes' digests every 20 ms until they are equal (keys,
/// highest version, hash); returns how long it took. `auth` goes with
/// every request.
#[track_caller]
fn converge_as(nodes: &[&Node], auth: &[(&str, &str)]) -> Duration {
    let started = Instant::now();
    let mut last = Vec::new();
    let equal = eventually(CONVERGE, || {
        last = nodes.iter().map(|node| digest(node.port(), auth)).collect();
        last.windows(2).all(|pair| pair[0] == pair[1])
    });
    assert!(
        equal,
        "digests still differ after {CONVERGE:?}: {last:?}\n{}",
        logs_of(nodes)
    );
    started.elapsed()
}

/// [`converge_as`] without a token.
#[track_caller]
fn converge(nodes: &[&Node]) -> Duration {
    converge_as(nodes, &[])
}

/// How many `method` requests the node on `port` answered with `status`
/// (`auth` to read its metrics).
fn answered(port: u16, auth: &[(&str, &str)], method: &str, status: u16) -> u64 {
    let page = request(port, "GET", "/metrics", auth, b"");
    assert_eq!(page.status, 200, "{}", page.text());
    let prefix = format!("lucid_requests_total{{method=\"{method}\",status=\"{status}\"}} ");
    page.text()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0)
}

/// PUTs `count` keys `prefix/N` holding `value N`; returns them.
fn put_keys(
    port: u16,
    prefix: &str,
    count: usize,
    auth: &[(&str, &str)],
) -> Vec<(String, Vec<u8>)> {
    let mut conn = Conn::open(port);
    (0..count)
        .map(|i| {
            let path = format!("/api/kv/{prefix}/{i}");
            let value = format!("{prefix} value {i}").into_bytes();
            let resp = conn.send("PUT", &path, auth, &value);
            assert!(
                matches!(resp.status, 200 | 201),
                "PUT {path}: {}",
                resp.text()
            );
            (path, value)
        })
        .collect()
}

/// Waits until the follower has taken one snapshot since its start (its
/// status counts it, its log says it).
#[track_caller]
fn wait_one_snapshot(follower: &Node) {
    wait_until("the follower took a snapshot", &[follower], || {
        let resyncs = follower_status(follower.port())["resyncs"].clone();
        resyncs == 1 && follower.logs().contains(SNAPSHOT_TAKEN)
    });
}

/// Whether the node logged a warning saying `text`.
fn warned(node: &Node, text: &str) -> bool {
    node.logs()
        .lines()
        .any(|line| line.contains("WARN") && line.contains(text))
}

/// Waits until the follower's status reports a failure to follow for
/// `reason`, and its log warns of it.
#[track_caller]
fn wait_refused(follower: &Node, reason: &str) {
    wait_until(
        &format!("the follower reports and logs {reason:?}"),
        &[follower],
        || {
            follower_status(follower.port())["last_error"]
                .as_str()
                .is_some_and(|error| error.contains(reason))
                && warned(follower, reason)
        },
    );
}

// ---------------------------------------------------------------------------
// Convergence under load, and writes sent to a follower
// ---------------------------------------------------------------------------

/// Writer `id`'s loop until `stop`: PUTs (some with a content type),
/// DELETEs, increments, lock and unlock, PATCH ttl, batches, and PUTs with
/// a TTL of 0.3 s (under `s/`, expired and swept during the run). Returns
/// how many short-lived keys it wrote.
fn mixed_writes(port: u16, id: usize, seed: u64, stop: &AtomicBool) -> usize {
    let mut rng = client_rng(seed, id);
    let mut conn = Conn::open(port);
    let counter = format!("/api/kv/w{id}/counter");
    let lockable = format!("/api/kv/w{id}/lockable");
    for path in [&counter, &lockable] {
        assert_eq!(conn.send("PUT", path, &[], b"0").status, 201);
    }
    let (mut locked, mut short_lived) = (false, 0);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let key = format!("w{id}/k{}", rng.random_range(0..20));
        let path = format!("/api/kv/{key}");
        let value = format!("w{id} write {n} {}", "x".repeat(rng.random_range(0..300)));
        let resp = match rng.random_range(0..9) {
            0 | 1 => conn.send("PUT", &path, &[], value.as_bytes()),
            2 => conn.send(
                "PUT",
                &path,
                &[("Content-Type", "text/plain; charset=utf-8")],
                value.as_bytes(),
            ),
            3 => conn.send("DELETE", &path, &[], b""),
            4 => conn.send(
                "PATCH",
                &counter,
                &[],
                br#"{"operation":"increment","value":3}"#,
            ),
            5 => {
                locked = !locked;
                let operation = if locked { "lock" } else { "unlock" };
                let body = format!("{{\"operation\":\"{operation}\"}}");
                conn.send("PATCH", &lockable, &[], body.as_bytes())
            }
            6 => conn.send("PATCH", &path, &[], br#"{"operation":"ttl","value":1}"#),
            7 => {
                let other = format!("w{id}/k{}", rng.random_range(0..20));
                let body = serde_json::json!({"operations": [
                    {"op": "put", "key": format!("w{id}/batch{n}"), "value": value},
                    {"op": "delete", "key": other},
                ]});
                conn.send("POST", "/api/batch", &[], body.to_string().as_bytes())
            }
            _ => {
                short_lived += 1;
                let path = format!("/api/kv/s/w{id}-{n}?ttl=0.3");
                conn.send("PUT", &path, &[], b"short-lived")
            }
        };
        assert!(
            matches!(resp.status, 200 | 201 | 404),
            "writer {id}: {} {}",
            resp.status,
            resp.text()
        );
    }
    short_lived
}

/// Asserts that `method path` sent to the follower is redirected to the
/// same path on the primary at `primary`, with a JSON body naming it.
#[track_caller]
fn assert_redirected(follower: u16, primary: u16, method: &str, path: &str, body: &[u8]) {
    let resp = request(follower, method, path, &[], body);
    assert_eq!(resp.status, 307, "{method} {path}: {}", resp.text());
    assert_eq!(
        resp.header("location"),
        Some(format!("{}{path}", url(primary)).as_str()),
        "{method} {path}"
    );
    let answer: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(answer["error"], "follower", "{answer}");
    assert_eq!(answer["primary"], url(primary), "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains(&url(primary)), "{message}");
}

#[test]
fn followers_under_a_mixed_write_load_converge_within_a_second_of_the_writes_stopping() {
    const WRITERS: usize = 8;
    const RUN: Duration = Duration::from_secs(3);
    let primary = Config::new().start();
    let p = primary.port();
    let followers = [follower_of(p).start(), follower_of(p).start()];
    for follower in &followers {
        wait_following(follower);
    }
    // Writes sent to a follower go to the primary, and nothing is written.
    let f = followers[0].port();
    assert_redirected(f, p, "PUT", "/api/kv/redirected?ttl=60", b"v");
    assert_redirected(f, p, "DELETE", "/api/kv/redirected", b"");
    assert_redirected(
        f,
        p,
        "PATCH",
        "/api/kv/redirected",
        br#"{"operation":"lock"}"#,
    );
    let batch = br#"{"operations":[{"op":"put","key":"redirected","value":"v"}]}"#;
    assert_redirected(f, p, "POST", "/api/batch", batch);
    let import = br#"{"key":"redirected","value":"v"}"#;
    assert_redirected(f, p, "POST", "/api/admin/import", import);
    assert_eq!(get(f, "/api/kv/redirected").status, 404);
    assert_eq!(get(p, "/api/kv/redirected").status, 404);
    assert_eq!(replication(f)["sequence"], 0, "nothing written");

    let seed = seed_from_env("LUCID_REPLICATION_SEED");
    let stop = AtomicBool::new(false);
    let short_lived: usize = thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        let writers: Vec<_> = (0..WRITERS)
            .map(|id| {
                let stop = &stop;
                scope.spawn(move || mixed_writes(p, id, seed, stop))
            })
            .collect();
        thread::sleep(RUN);
        stop.store(true, Ordering::SeqCst);
        writers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let took = converge(&[&primary, &followers[0], &followers[1]]);
    let sequence = replication(p)["sequence"].as_u64().unwrap();
    eprintln!(
        "{sequence} records written by {WRITERS} writers in {RUN:?}; the followers were equal \
         {} ms after the writes stopped",
        took.as_millis()
    );
    assert!(
        took <= CONVERGED_AFTER_WRITES,
        "the followers took {took:?} to converge"
    );
    // The primary's expiry sweep deleted short-lived keys, and the
    // followers deleted them too (the digests include keys not swept yet).
    let short = json_of(p, "/api/admin/digest?prefix=s/", &[]);
    assert!(
        short["keys"].as_u64().unwrap() < short_lived as u64,
        "{short_lived} short-lived keys written, {short}"
    );
    for follower in &followers {
        assert_eq!(
            json_of(follower.port(), "/api/admin/digest?prefix=s/", &[]),
            short
        );
    }
    // The primary sees both followers, and they have confirmed everything
    // (the acknowledging thread runs beside the stream).
    wait_until("both followers confirmed everything", &[&primary], || {
        let status = replication(p);
        let listed = status["followers"].as_array().unwrap().clone();
        listed.len() == 2
            && listed
                .iter()
                .all(|f| f["durable"].as_u64() >= Some(sequence))
    });
}

// ---------------------------------------------------------------------------
// A follower killed again and again
// ---------------------------------------------------------------------------

#[test]
fn a_follower_killed_in_a_loop_resumes_where_it_was_without_a_new_snapshot() {
    const CYCLES: usize = 20;
    const WRITERS: usize = 2;
    let primary = Config::new().sync("always").start();
    let p = primary.port();
    let mut follower = follower_of(p).start();
    wait_following(&follower);
    assert_eq!(
        follower_status(follower.port())["resyncs"],
        1,
        "the first bootstrap"
    );
    let stop = AtomicBool::new(false);
    let written = AtomicUsize::new(0);
    thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        for id in 0..WRITERS {
            let (stop, written) = (&stop, &written);
            scope.spawn(move || {
                let mut conn = Conn::open(p);
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let path = format!("/api/kv/c{id}/{}", i % 300);
                    let resp = conn.send("PUT", &path, &[], format!("{i}").as_bytes());
                    assert!(matches!(resp.status, 200 | 201), "{}", resp.text());
                    written.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            });
        }
        for cycle in 0..CYCLES {
            // Killed while it applies what streams in.
            let live = follower_status(follower.port())["applied"]
                .as_u64()
                .unwrap();
            wait_until("the follower applies more", &[&follower], || {
                follower_status(follower.port())["applied"]
                    .as_u64()
                    .unwrap()
                    > live + 10
            });
            follower.kill9();
            let at_restart = replication(p)["sequence"].as_u64().unwrap();
            follower.restart();
            wait_until(
                &format!("cycle {cycle}: the follower passes {at_restart}"),
                &[&follower, &primary],
                || {
                    follower_status(follower.port())["applied"]
                        .as_u64()
                        .unwrap()
                        >= at_restart
                },
            );
            let status = follower_status(follower.port());
            assert_eq!(status["resyncs"], 0, "cycle {cycle}: {status}");
            assert!(
                !follower.logs().contains(SNAPSHOT_TAKEN),
                "cycle {cycle}: a new snapshot\n{}",
                follower.logs()
            );
        }
        stop.store(true, Ordering::SeqCst);
    });
    converge(&[&primary, &follower]);
    eprintln!(
        "{CYCLES} kills; {} writes; sequence {}",
        written.load(Ordering::SeqCst),
        replication(p)["sequence"]
    );
    assert_eq!(follower_status(follower.port())["resyncs"], 0);
}

// ---------------------------------------------------------------------------
// A follower left behind by compactions
// ---------------------------------------------------------------------------

#[test]
fn a_follower_left_behind_by_compactions_takes_a_new_snapshot_by_itself() {
    let writes = env_number("LUCID_REPLICATION_WRITES", 100_000) as usize;
    let primary = Config::new().start();
    let p = primary.port();
    let mut follower = follower_of(p).start();
    wait_following(&follower);
    let before = put_keys(p, "before", 50, &[]);
    converge(&[&primary, &follower]);
    follower.stop();

    let started = Instant::now();
    let compact = || {
        let resp = request(p, "POST", "/api/admin/compact", &[], b"");
        assert_eq!(resp.status, 200, "{}", resp.text());
    };
    // Half new keys, a compaction, the same keys overwritten (their old
    // records dead), another compaction: the log no longer holds the
    // changes after the follower's position.
    write_bulk(p, writes / 2);
    compact();
    write_bulk(p, writes / 2);
    compact();
    eprintln!(
        "{writes} writes and 2 compactions in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    follower.restart();
    let took = converge(&[&primary, &follower]);
    eprintln!(
        "the follower converged {:.1} s after its start",
        took.as_secs_f64()
    );
    wait_one_snapshot(&follower);
    assert_eq!(
        metric(follower.port(), "lucid_replication_resyncs_total"),
        1.0
    );
    assert_values(follower.port(), &before);
}

// ---------------------------------------------------------------------------
// min_acks and failover
// ---------------------------------------------------------------------------

/// What a writer saw acknowledged before the primary died.
#[derive(Default)]
struct Acknowledged {
    /// Keys written once, with their value.
    created: Vec<(String, Vec<u8>)>,
    /// Per overwritten key: the last number acknowledged, and the highest
    /// sent (a write cut off by the kill may or may not have made it).
    overwritten: BTreeMap<String, (Option<u64>, u64)>,
}

/// Writer `id` until a request fails (the primary is gone) or `stop`: new
/// keys and an overwritten one, taking note of every 2xx in
/// `acknowledged`, and counting them.
fn write_until_cut_off(
    port: u16,
    id: usize,
    acknowledged: &Mutex<Acknowledged>,
    count: &AtomicUsize,
    stop: &AtomicBool,
) {
    let Ok(mut conn) = Conn::try_open(port) else {
        return;
    };
    let overwritten = format!("/api/kv/o{id}");
    for i in (0u64..).take_while(|_| !stop.load(Ordering::SeqCst)) {
        let (path, value) = if i % 3 == 0 {
            acknowledged
                .lock()
                .unwrap()
                .overwritten
                .entry(overwritten.clone())
                .or_default()
                .1 = i;
            (overwritten.clone(), i.to_string().into_bytes())
        } else {
            (
                format!("/api/kv/n{id}/{i}"),
                format!("new {id} {i}").into_bytes(),
            )
        };
        let Ok(resp) = conn.try_send("PUT", &path, &[], &value) else {
            return;
        };
        if !matches!(resp.status, 200 | 201) {
            continue;
        }
        count.fetch_add(1, Ordering::SeqCst);
        let mut acknowledged = acknowledged.lock().unwrap();
        if path == overwritten {
            acknowledged.overwritten.get_mut(&path).unwrap().0 = Some(i);
        } else {
            acknowledged.created.push((path, value));
        }
    }
}

#[test]
fn with_min_acks_no_acknowledged_write_is_lost_when_the_primary_dies() {
    const WRITERS: usize = 4;
    let mut primary = Config::new()
        .sync("always")
        .raw("replication", "min_acks: 1")
        .start();
    let p = primary.port();
    let follower = follower_of(p).start();
    wait_caught_up(&primary, 1);
    let acknowledged = Mutex::new(Acknowledged::default());
    let count = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        for id in 0..WRITERS {
            let (acknowledged, count, stop) = (&acknowledged, &count, &stop);
            scope.spawn(move || write_until_cut_off(p, id, acknowledged, count, stop));
        }
        wait_until("writes acknowledged", &[&primary, &follower], || {
            count.load(Ordering::SeqCst) >= 1000
        });
        primary.kill9();
    });
    let acknowledged = acknowledged.into_inner().unwrap();
    let f = follower.port();

    // `lucid promote --url`.
    let out = follower.run(&["promote", "--url", &url(f)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("now a primary"), "{stdout}");
    assert_eq!(replication(f)["role"], "primary");
    wait_until("the promotion logged", &[&follower], || {
        warned(&follower, "PROMOTED")
    });
    // Once only.
    let again = request(f, "POST", "/api/admin/promote", &[], b"");
    assert_error(&again, 409, None);
    let out = follower.run(&["promote", "--url", &url(f)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("409"));

    // Every acknowledged write is there.
    eprintln!(
        "{} writes acknowledged before the kill",
        count.load(Ordering::SeqCst)
    );
    assert_values(f, &acknowledged.created);
    for (path, (last_acknowledged, last_sent)) in &acknowledged.overwritten {
        let resp = get(f, path);
        let held: Option<u64> = (resp.status == 200).then(|| resp.text().parse().unwrap());
        assert!(
            held >= *last_acknowledged && held <= Some(*last_sent),
            "{path}: holds {held:?}, acknowledged {last_acknowledged:?}, sent up to {last_sent}"
        );
    }
    // Clients sent there go on writing.
    let resp = put(f, "/api/kv/after-failover", b"written");
    assert_message(&resp, 201, CREATED);
    assert_eq!(get(f, "/api/kv/after-failover").body, b"written");
}

#[test]
fn with_min_acks_a_write_is_refused_without_a_follower_and_times_out_without_its_confirmation() {
    let primary = Config::new()
        .sync("always")
        .raw("replication", "min_acks: 1")
        .raw("replication", "ack_timeout_ms: 300")
        .start();
    let p = primary.port();
    // No follower: refused at once, nothing written.
    let resp = put(p, "/api/kv/alone", b"v");
    assert_error(&resp, 503, None);
    assert!(resp.text().contains("min_acks"), "{}", resp.text());
    assert_eq!(get(p, "/api/kv/alone").status, 404);

    let mut follower = follower_of(p).start();
    wait_caught_up(&primary, 1);
    assert_message(&put(p, "/api/kv/confirmed", b"v"), 201, CREATED);
    assert_eq!(get(follower.port(), "/api/kv/confirmed").body, b"v");

    // Connected but unable to confirm.
    follower.signal("STOP");
    let resp = put(p, "/api/kv/unconfirmed", b"v");
    follower.signal("CONT");
    assert_error(&resp, 504, None);
    let message = json_message(&resp.body).unwrap();
    assert!(
        message.contains("durable on this node") && message.contains("300 ms"),
        "{message}"
    );
    assert_eq!(replication(p)["ack_timeouts"], 1);
    assert_eq!(metric(p, "lucid_replication_ack_timeouts_total"), 1.0);
    // Durable here, and replicated once the follower runs again.
    assert_eq!(get(p, "/api/kv/unconfirmed").body, b"v");
    converge(&[&primary, &follower]);

    // The follower stopped: refused at once again.
    follower.stop();
    wait_until("the primary sees its follower gone", &[&primary], || {
        replication(p)["followers"].as_array().unwrap().is_empty()
    });
    let resp = put(p, "/api/kv/after-stop", b"v");
    assert_error(&resp, 503, None);
    assert_eq!(get(p, "/api/kv/after-stop").status, 404);
}

// ---------------------------------------------------------------------------
// An old primary that diverged
// ---------------------------------------------------------------------------

#[test]
fn an_old_primary_sets_its_diverged_log_aside_and_follows_the_promoted_node() {
    let (p, f) = (free_port(), free_port());
    let mut primary = Config::new().port(p).start();
    let mut follower = follower_of(p).port(f).start();
    wait_following(&follower);
    let common = put_keys(p, "common", 100, &[]);
    converge(&[&primary, &follower]);

    // Writes the follower never sees, then the primary dies.
    follower.stop();
    let lost = put_keys(p, "lost", 20, &[]);
    let old_epoch = replication(p)["epoch"].as_str().unwrap().to_string();
    primary.kill9();

    // The follower comes back (its primary is down), serves its reads, is
    // promoted and takes writes.
    follower.restart();
    assert_values(f, &common);
    let resp = request(f, "POST", "/api/admin/promote", &[], b"");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let promoted: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_ne!(promoted["epoch"].as_str(), Some(old_epoch.as_str()));
    let after = put_keys(f, "after", 30, &[]);

    // The old primary comes back as a follower of the new one.
    primary.reconfigure(&follower_of(f).port(p));
    primary.restart();
    converge(&[&follower, &primary]);
    assert_values(p, &common);
    assert_values(p, &after);
    for (path, _) in &lost {
        assert_eq!(get(p, path).status, 404, "{path} is still visible");
    }
    wait_one_snapshot(&primary);
    assert!(warned(&primary, "diverged"), "{}", primary.logs());
    let aside = primary
        .data_dir()
        .join(format!("data.log.diverged-{old_epoch}"));
    let kept = fs::read(&aside).unwrap_or_else(|e| {
        let names: Vec<_> = fs::read_dir(primary.data_dir()).unwrap().collect();
        panic!(
            "{}: {e}; the data directory holds {names:?}",
            aside.display()
        )
    });
    for (_, value) in &lost {
        assert!(
            kept.windows(value.len()).any(|w| w == value.as_slice()),
            "{} lacks {:?}",
            aside.display(),
            String::from_utf8_lossy(value)
        );
    }

    // The promoted node restarted with its old config stays a primary,
    // says to fix the config, and its follower resumes without a snapshot.
    follower.restart();
    assert!(
        follower.logs().contains("remove replication.primary"),
        "{}",
        follower.logs()
    );
    assert_eq!(replication(f)["role"], "primary");
    let later = put_keys(f, "later", 10, &[]);
    converge(&[&follower, &primary]);
    assert_values(p, &later);
    assert_eq!(follower_status(p)["resyncs"], 1);
}

// ---------------------------------------------------------------------------
// Bad inputs
// ---------------------------------------------------------------------------

#[test]
fn a_follower_whose_token_is_refused_says_so_retries_and_serves_its_reads() {
    let mut primary = Config::new()
        .secured(SECRET)
        .raw("authentication", "leeway_s: 0")
        .start();
    let p = primary.port();
    let bearer = format!(
        "Bearer {}",
        primary.issue_token(&["--scope", "admin", "--scope", "write"])
    );
    let admin = [("Authorization", bearer.as_str())];
    let follower_with =
        |token: &str| follower_of(p).raw("replication", &format!("token: \"{token}\""));
    let good = primary.issue_token(&["--scope", "replicate"]);
    let mut follower = follower_with(&good).start();
    wait_following(&follower);
    let before = put_keys(p, "before", 10, &admin);
    converge_as(&[&primary, &follower], &admin);

    let expiring = primary.run(&["tokens", "issue", "--expires", "1s", "--scope", "replicate"]);
    assert!(expiring.status.success());
    let expired = String::from_utf8(expiring.stdout)
        .unwrap()
        .trim()
        .to_string();
    let expired_bearer = format!("Bearer {expired}");
    wait_until("the short token expires", &[&primary], || {
        // (An acknowledgement for no stream: 404 while the token is valid.)
        let ack = "/api/replication/ack?stream=0&durable=0";
        let resp = request(p, "POST", ack, &[("Authorization", &expired_bearer)], b"");
        resp.status == 401
    });
    // Stream requests the primary refused.
    let refused = || answered(p, &admin, "GET", 401) + answered(p, &admin, "GET", 403);
    let tokens = [
        ("read-scoped", primary.issue_token(&["--scope", "read"])),
        ("garbage", "not.a.token".to_string()),
        ("expired", expired),
    ];
    for (what, token) in tokens {
        let seen = refused();
        follower.reconfigure(&follower_with(&token));
        follower.restart();
        let fp = follower.port();
        wait_refused(&follower, "refused the token");
        // It tries again (the primary answers each attempt).
        wait_until(
            &format!("{what}: the follower tries again"),
            &[&follower],
            || refused() >= seen + 2,
        );
        let health = json_of(fp, "/health", &[]);
        assert_eq!(health["replication"]["state"], "stale", "{what}: {health}");
        assert_values(fp, &before);
        assert_eq!(follower_status(fp)["state"], "connecting", "{what}");
    }
    // With the right token again, it catches up with what it missed.
    let missed = put_keys(p, "missed", 10, &admin);
    follower.reconfigure(&follower_with(&good));
    follower.restart();
    converge_as(&[&primary, &follower], &admin);
    assert_values(follower.port(), &missed);
    primary.assert_running();
}

#[test]
fn a_follower_of_a_follower_is_refused_and_serves_its_reads() {
    let primary = Config::new().start();
    let p = primary.port();
    let first = follower_of(p).start();
    let mut second = follower_of(p).start();
    wait_following(&first);
    wait_following(&second);
    let held = put_keys(p, "held", 10, &[]);
    converge(&[&primary, &first, &second]);
    // Pointed at the first follower instead.
    second.reconfigure(&follower_of(first.port()));
    second.restart();
    wait_refused(&second, "chains of followers are not supported");
    assert_values(second.port(), &held);
    assert_eq!(follower_status(second.port())["state"], "connecting");
    // The first follower goes on following.
    let more = put_keys(p, "more", 5, &[]);
    converge(&[&primary, &first]);
    assert_values(first.port(), &more);
}

#[test]
fn a_stream_cut_damaged_or_replaced_by_garbage_is_never_applied() {
    let primary = Config::new().start();
    let p = primary.port();
    let proxy = FaultProxy::start(p);
    let mut follower = follower_of(proxy.port()).start();
    wait_following(&follower);
    let held = put_keys(p, "held", 10, &[]);
    converge(&[&primary, &follower]);

    let marker = b"MARKED-VALUE-0123456789".to_vec();
    let faults = [
        (Fault::CutAfter(4096), "the stream broke"),
        (Fault::Flip(marker.clone()), "failed its check"),
        (Fault::GarbageHttp, "the stream broke"),
        (Fault::NotHttp, "cannot reach the primary"),
    ];
    for (round, (fault, reason)) in faults.into_iter().enumerate() {
        // Records the follower misses while stopped, so that its first
        // stream carries them all in one frame: a few plain ones, then
        // marked ones, long enough that the cut falls inside the frame.
        follower.stop();
        let plain = put_keys(p, &format!("round{round}/plain"), 5, &[]);
        let before_marked = replication(p)["sequence"].as_u64().unwrap();
        let mut conn = Conn::open(p);
        for i in 0..40 {
            let mut value = marker.clone();
            value.extend_from_slice(format!(" {round} {i} {}", "y".repeat(200)).as_bytes());
            let path = format!("/api/kv/round{round}/marked/{i}");
            assert_eq!(conn.send("PUT", &path, &[], &value).status, 201);
        }
        let faulty = proxy.faulty_streams();
        proxy.set(fault.clone());
        follower.restart();
        let fp = follower.port();
        wait_refused(&follower, reason);
        wait_until(
            &format!("{fault:?}: the follower tries again"),
            &[&follower],
            || proxy.faulty_streams() >= faulty + 2,
        );
        // It serves what it had, and took nothing damaged.
        assert_values(fp, &held);
        let applied = follower_status(fp)["applied"].as_u64().unwrap();
        for i in 0..40 {
            let resp = get(fp, &format!("/api/kv/round{round}/marked/{i}"));
            assert_eq!(resp.status, 404, "{fault:?}: {}", resp.text());
        }
        if fault == Fault::Flip(marker.clone()) {
            // The records before the damaged one were applied.
            assert_eq!(applied, before_marked, "{fault:?}");
        } else {
            assert!(applied < before_marked, "{fault:?}: {applied}");
        }
        proxy.set(Fault::None);
        converge(&[&primary, &follower]);
        assert_values(fp, &plain);
    }
    eprintln!(
        "{} streams through the proxy, {} of them faulty",
        proxy.streams(),
        proxy.faulty_streams()
    );
}

/// How long a follower whose stream worked may take to connect again after
/// a break, generous against the first backoff (0.1 s), short against the
/// longest (10 s).
const RECONNECTED: Duration = Duration::from_secs(3);

#[test]
fn a_snapshot_download_that_goes_silent_is_cut_and_taken_again() {
    let primary = Config::new().start();
    let p = primary.port();
    let keys = put_keys(p, "big", 200, &[]);
    let proxy = FaultProxy::start(p);
    // The download stops after its first bytes, the connection left open.
    proxy.set(Fault::StallSnapshot(2048));
    let follower = follower_of(proxy.port()).start();
    wait_until(
        "the follower gives up on the silent download",
        &[&follower],
        || {
            follower_status(follower.port())["last_error"]
                .as_str()
                .is_some_and(|error| error.contains("snapshot"))
        },
    );
    proxy.set(Fault::None);
    converge(&[&primary, &follower]);
    assert_values(follower.port(), &keys);
}

#[test]
fn a_follower_whose_stream_worked_connects_again_at_once_after_a_break() {
    let primary = Config::new().start();
    let p = primary.port();
    let proxy = FaultProxy::start(p);
    let follower = follower_of(proxy.port()).start();
    wait_following(&follower);
    // An outage: the attempts fail, the backoff grows (0.1 s, 0.2 s, ...).
    proxy.set(Fault::NotHttp);
    wait_until("6 failed attempts", &[&follower], || {
        proxy.faulty_streams() >= 6
    });
    // Over: the follower follows again, and applies records.
    proxy.set(Fault::None);
    let first = put_keys(p, "first", 5, &[]);
    converge(&[&primary, &follower]);
    assert_values(follower.port(), &first);
    // One break of that stream.
    let streams = proxy.streams();
    proxy.set(Fault::None);
    let second = put_keys(p, "second", 5, &[]);
    let started = Instant::now();
    let caught_up = eventually(RECONNECTED, || {
        get(follower.port(), &second[4].0).status == 200
    });
    assert!(
        caught_up,
        "not connected again within {RECONNECTED:?} (it was after {:?}, {} attempts)\n{}",
        eventually(CONVERGE, || get(follower.port(), &second[4].0).status
            == 200)
        .then(|| started.elapsed()),
        proxy.streams() - streams,
        follower.logs()
    );
}

/// A primary encrypted with the key file `key-1` in `keys`, holding
/// values that all begin with [`PLAINTEXT`].
fn encrypted_primary(keys: &std::path::Path) -> (Node, Vec<(String, Vec<u8>)>) {
    let primary = encrypted(Config::new(), keys, 1).start();
    let values = (0..20)
        .map(|i| {
            let path = format!("/api/kv/secret/{i}");
            let mut value = PLAINTEXT.to_vec();
            value.extend_from_slice(format!(" {i}").as_bytes());
            assert_eq!(put(primary.port(), &path, &value).status, 201);
            (path, value)
        })
        .collect();
    (primary, values)
}

/// What an encrypted primary's values begin with.
const PLAINTEXT: &[u8] = b"plaintext that must never reach a disk";

/// The followers of an encrypted primary without its key: one not
/// encrypted, one with another key file.
fn followers_without_the_key(primary: &Node, keys: &std::path::Path) -> [Node; 2] {
    let p = primary.port();
    [
        follower_of(p).start(),
        encrypted(follower_of(p), keys, 2).start(),
    ]
}

#[test]
fn a_follower_without_the_primarys_key_is_refused_and_one_with_it_holds_no_plaintext() {
    let keys = tempfile::tempdir().unwrap();
    let (primary, values) = encrypted_primary(keys.path());
    for follower in &followers_without_the_key(&primary, keys.path()) {
        wait_until("a warning about the key file", &[follower], || {
            warned(follower, "key file")
        });
        let fp = follower.port();
        assert_eq!(get(fp, "/api/kv/secret/0").status, 404);
        assert_eq!(digest(fp, &[])["keys"], 0);
        assert!(!any_file_contains(&follower.data_dir(), PLAINTEXT));
    }
    let key = keys.path().join("key-1");
    let same_key = encrypted_by(follower_of(primary.port()), &key).start();
    converge(&[&primary, &same_key]);
    assert_values(same_key.port(), &values);
    let log = fs::read(same_key.data_log()).unwrap();
    assert!(
        log.len() > values.len() * PLAINTEXT.len(),
        "the log holds the records"
    );
    assert!(
        !any_file_contains(&same_key.data_dir(), PLAINTEXT),
        "plaintext in the follower's data directory"
    );
}

#[test]
fn a_follower_without_the_primarys_key_keeps_saying_so_as_it_retries() {
    let keys = tempfile::tempdir().unwrap();
    let (primary, _) = encrypted_primary(keys.path());
    // Stream requests answered "take a snapshot" (410): one per attempt.
    let attempts = || answered(primary.port(), &[], "GET", 410);
    let followers = followers_without_the_key(&primary, keys.path());
    wait_until("the followers try 4 times each", &[&primary], || {
        attempts() >= 8
    });
    for follower in &followers {
        let status = follower_status(follower.port());
        let error = status["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("key file"), "{status}");
        let logs = follower.logs();
        let warnings = logs.lines().filter(|line| line.contains("WARN")).count();
        assert_eq!(warnings, 1, "one warning for one reason:\n{logs}");
    }
}
