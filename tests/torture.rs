//! The crash loop: the real node under 8 concurrent clients (PUTs of 0 B to
//! 64 KiB, DELETEs, PATCH increments, batches), killed with SIGKILL at
//! random moments — while serving, while compacting, and during the
//! recovery of the next start — sometimes with a random garbage tail
//! appended to `data.log` (a torn write), then restarted and checked: every
//! acknowledged write reads back exactly, every acknowledged delete stays
//! deleted, an operation cut off applied whole or not at all, and no value
//! is one that was never written. Each cycle runs under `sync: always`,
//! `interval` or `never` in turn: a kill (unlike a power cut) loses no
//! acknowledged write in any mode. The loop runs on a plain node and on one
//! with encryption at rest.
//!
//! `LUCID_TORTURE_CYCLES` sets the number of cycles (default 50; the long
//! run is 1000), `LUCID_TORTURE_SEED` replays a run.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::workload::{Client, Tally, CRASH_MIX};
use common::*;
use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};

/// Concurrent clients.
const CLIENTS: usize = 8;

/// How a cycle ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// While the clients write.
    Serving,
    /// Just after a compaction was asked for.
    Compacting,
}

fn config(sync: &str) -> Config {
    Config::new()
        .sync(sync)
        .sync_interval_ms(5)
        .raw("compaction", "dead_ratio: 0.2")
        .raw("compaction", "min_dead_bytes: 65536")
        .raw("compaction", "interval: 1")
}

/// How long an asked-for compaction may take to answer.
const COMPACTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Counts of what the loop did.
#[derive(Debug, Default)]
struct Counts {
    kills: [u64; 2],
    compactions_cut_off: u64,
    compactions_finished: u64,
    garbage_tails: u64,
    start_kills_in_recovery: u64,
    start_kills_after_start: u64,
}

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_write() {
    crash_loop("plain", config);
}

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_write_encrypted() {
    let keys = tempfile::tempdir().unwrap();
    crash_loop("encrypted", |sync| encrypted(config(sync), keys.path(), 3));
}

/// Runs the crash loop on nodes configured by `config` for a sync mode.
fn crash_loop(name: &str, config: impl Fn(&str) -> Config) {
    let cycles = env_number("LUCID_TORTURE_CYCLES", 50);
    let seed = seed_from_env("LUCID_TORTURE_SEED");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut node = config("always").start();
    let mut clients: Vec<Client> = (0..CLIENTS).map(|id| Client::new(id, seed)).collect();
    let mut counts = Counts::default();
    let started = Instant::now();
    for cycle in 0..cycles {
        let kill = if rng.random_bool(0.3) {
            Kill::Compacting
        } else {
            Kill::Serving
        };
        let (run, after_compact) = (
            Duration::from_millis(rng.random_range(20..300)),
            Duration::from_millis(rng.random_range(0..30)),
        );
        // A quarter of the compactions asked for are let finish before the
        // kill: nodes never live the second the background compactor waits,
        // and a log never compacted grows without end over a long run.
        let finish_compaction = kill == Kill::Compacting && rng.random_bool(0.25);
        let port = node.port();
        let stop = AtomicBool::new(false);
        thread::scope(|scope| {
            let _stop_clients = StopOnDrop(&stop);
            for client in clients.iter_mut() {
                let stop = &stop;
                scope.spawn(move || {
                    let Ok(mut conn) = Conn::try_open(port) else {
                        return;
                    };
                    while !stop.load(Ordering::SeqCst) && client.step(&mut conn, CRASH_MIX).is_ok()
                    {
                    }
                });
            }
            thread::sleep(run);
            let compaction = (kill == Kill::Compacting).then(|| {
                scope.spawn(move || {
                    Conn::try_open(port)
                        .and_then(|mut c| {
                            // A debug build compacting an encrypted log
                            // under eight clients can take longer than the
                            // usual I/O timeout.
                            c.set_read_timeout(COMPACTION_TIMEOUT);
                            c.try_send("POST", "/api/admin/compact", &[], b"")
                        })
                        .is_err()
                })
            });
            let compaction = match compaction {
                Some(compaction) if finish_compaction => {
                    assert!(
                        !compaction.join().unwrap(),
                        "the compaction was not answered"
                    );
                    counts.compactions_finished += 1;
                    None
                }
                compaction => {
                    if compaction.is_some() {
                        thread::sleep(after_compact);
                    }
                    compaction
                }
            };
            node.assert_running();
            node.kill9();
            stop.store(true, Ordering::SeqCst);
            if let Some(cut_off) = compaction.map(|c| c.join().unwrap()) {
                counts.compactions_cut_off += u64::from(cut_off);
            }
        });
        counts.kills[kill as usize] += 1;
        if rng.random_bool(0.3) {
            let garbage: Vec<u8> = (0..rng.random_range(1..2048))
                .map(|_| rng.random())
                .collect();
            let mut log = OpenOptions::new()
                .append(true)
                .open(node.data_log())
                .unwrap();
            log.write_all(&garbage).unwrap();
            counts.garbage_tails += 1;
        }
        let sync = ["always", "interval", "never"][cycle as usize % 3];
        node.reconfigure(&config(sync));
        if rng.random_bool(0.3) {
            let after = Duration::from_millis(rng.random_range(0..40));
            if node.kill_during_start(after) {
                counts.start_kills_after_start += 1;
            } else {
                counts.start_kills_in_recovery += 1;
            }
        }
        node.restart();
        for client in &mut clients {
            if let Err(err) = client.resolve(node.port()) {
                panic!("cycle {cycle}: the restarted node does not serve ({err}); seed {seed}; stderr:\n{}", node.logs());
            }
        }
        let failures: Vec<&String> = clients.iter().flat_map(|c| &c.failures).collect();
        assert!(
            failures.is_empty(),
            "cycle {cycle} ({kill:?}, seed {seed}, replay with LUCID_TORTURE_SEED={seed}): {} failures, first ones:\n{:#?}\nstderr:\n{}",
            failures.len(),
            &failures[..failures.len().min(10)],
            node.logs()
        );
    }
    let mut tally = Tally::default();
    for client in &clients {
        tally.add(&client.tally);
    }
    eprintln!(
        "crash loop ({name}): {cycles} cycles in {:?}: {counts:?}; {tally:?}; lost or wrong writes: 0",
        started.elapsed()
    );
    assert!(
        tally.acknowledged > cycles,
        "the clients barely wrote: {tally:?}"
    );
}
