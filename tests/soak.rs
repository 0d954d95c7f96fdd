//! The soak: mixed load against one node for a while (8 clients doing GET,
//! PUT of 0 B to 64 KiB, DELETE, PATCH increment, batches, listings, and
//! PUTs with a 1 s TTL read back before and after expiry, with background
//! compaction running), checking zero 5xx answers, zero wrong values, and
//! that the process does not grow: resident memory, open file descriptors
//! and the log size are sampled from `/proc` and reported at start and end
//! (resident memory halfway too, to tell a leak from a working set that
//! levels off).
//!
//! Ignored by default. Run it against the release binary:
//!
//! ```text
//! cargo build --release
//! LUCID_BIN=target/release/lucid LUCID_SOAK_SECS=600 cargo test --test soak -- --ignored --nocapture
//! ```
//!
//! `LUCID_SOAK_SECS` defaults to 60 (the CI run); `LUCID_SOAK_SEED`
//! replays a run's choices.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::workload::{Client, Tally, SOAK_MIX};
use common::*;

/// Concurrent clients.
const CLIENTS: usize = 8;
/// Time before the first sample, for the node to reach its working size.
const WARM_UP: Duration = Duration::from_secs(5);
/// Growth of resident memory from the first sample to the last that counts
/// as a leak.
const RSS_SLACK_KIB: u64 = 32 * 1024;
/// Largest log size that shows compaction keeping up.
const MAX_LOG_BYTES: u64 = 64 << 20;

/// One reading of the node's process and data directory.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: usize,
    log_bytes: u64,
}

fn sample(node: &Node) -> Sample {
    let pid = node.pid();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    Sample {
        rss_kib,
        fds: fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count(),
        log_bytes: fs::metadata(node.data_log()).unwrap().len(),
    }
}

#[test]
#[ignore = "long: run with LUCID_BIN=target/release/lucid LUCID_SOAK_SECS=<n> (see the module docs)"]
fn soak_mixed_load_keeps_the_node_correct_and_flat() {
    let duration = Duration::from_secs(env_number("LUCID_SOAK_SECS", 60));
    let seed = seed_from_env("LUCID_SOAK_SEED");
    eprintln!("soak: {duration:?} against {}", lucid_bin().display());
    let node = Config::new()
        .sync("interval")
        .raw("compaction", "dead_ratio: 0.3")
        .raw("compaction", "min_dead_bytes: 1048576")
        .raw("compaction", "interval: 10")
        .start();
    let port = node.port();
    let mut clients: Vec<Client> = (0..CLIENTS).map(|id| Client::new(id, seed)).collect();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let mut samples = Vec::new();
    let connection_errors: usize = thread::scope(|scope| {
        let _stop_clients = StopOnDrop(&stop);
        let workers: Vec<_> = clients
            .iter_mut()
            .map(|client| {
                let stop = &stop;
                scope.spawn(move || {
                    let mut errors = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let Ok(mut conn) = Conn::try_open(port) else {
                            errors += 1;
                            break;
                        };
                        while !stop.load(Ordering::SeqCst) {
                            if client.step(&mut conn, SOAK_MIX).is_err() {
                                errors += 1;
                                break;
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        thread::sleep(WARM_UP.min(duration));
        while started.elapsed() < duration {
            samples.push(sample(&node));
            thread::sleep(Duration::from_secs(1).min(duration));
        }
        samples.push(sample(&node));
        stop.store(true, Ordering::SeqCst);
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let mut tally = Tally::default();
    for client in &clients {
        tally.add(&client.tally);
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    // Halfway: a leak keeps growing after it, a working set levels off.
    let halfway = samples[samples.len() / 2];
    let max_log = samples.iter().map(|s| s.log_bytes).max().unwrap_or(0);
    let compactions = metric(port, "lucid_compactions_total");
    eprintln!(
        "soak: {:?}, {} requests ({:.0}/s), {} 5xx, {} acknowledged writes, {} values checked, \
         {connection_errors} connection errors, {compactions} compactions; \
         RSS {} KiB -> {} KiB halfway -> {} KiB, fds {} -> {}, log {} -> {} bytes (max {max_log})",
        started.elapsed(),
        tally.requests,
        tally.requests as f64 / started.elapsed().as_secs_f64(),
        tally.server_errors,
        tally.acknowledged,
        tally.checked,
        first.rss_kib,
        halfway.rss_kib,
        last.rss_kib,
        first.fds,
        last.fds,
        first.log_bytes,
        last.log_bytes,
    );
    let failures: Vec<&String> = clients.iter().flat_map(|c| &c.failures).collect();
    assert!(
        failures.is_empty(),
        "seed {seed}: {} wrong answers, first ones:\n{:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(tally.server_errors, 0, "5xx answers");
    assert_eq!(connection_errors, 0, "connections failed");
    assert!(
        last.rss_kib <= first.rss_kib + RSS_SLACK_KIB,
        "resident memory grew from {} KiB to {} KiB",
        first.rss_kib,
        last.rss_kib
    );
    assert!(
        last.fds <= first.fds + 2,
        "file descriptors grew: {samples:?}"
    );
    assert!(max_log <= MAX_LOG_BYTES, "the log grew to {max_log} bytes");
    assert!(compactions >= 1.0, "no compaction ran");
}
