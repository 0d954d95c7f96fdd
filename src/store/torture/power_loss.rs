//! Simulated power loss: random operation sequences over a [`CrashFile`],
//! the process killed at a random write or fsync (or not at all), then a
//! power cut of every [`PowerCut`] kind and a real recovery.
//!
//! * `sync: always`: every acknowledged write survives, whatever the cut.
//! * `sync: interval` / `never`: the recovered state is the one after some
//!   prefix of the history (no holes, no resurrections, no corrupt values),
//!   and includes at least everything an fsync covered. `interval` is
//!   modelled as `never` plus the periodic thread's fdatasync (and its sync
//!   marker) as an operation at random points, so every case replays
//!   exactly.
//!
//! In every mode the store must open: out-of-order writeback
//! ([`PowerCut::Pages`]) can keep a later record while losing an earlier
//! one, but only in bytes no sync marker names as durable, which recovery
//! cuts as an unsynced tail. The tally counts refusals (always 0: a
//! refusal fails the case).

use std::sync::Arc;
use std::thread;

use proptest::prelude::*;

use super::{
    case_rng, cut_and_recover, key_name, op, reopen, run_cases, value, History, Op, Tally,
};
use crate::store::engine::{Expect, SyncMode};
use crate::store::testing::{fresh_store, try_put, CrashFile, PowerCut};

/// When the store under test fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Always,
    Interval,
    Never,
}

/// One power-loss case.
#[derive(Debug, Clone)]
struct Case {
    mode: Mode,
    ops: Vec<Op>,
    /// The process dies at this append or fsync, if any.
    dies_at: Option<u64>,
    cut: PowerCut,
    /// Seeds the power cut's random choices.
    seed: u64,
}

fn case(mode: Mode) -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(op(mode == Mode::Interval), 1..40),
        prop::option::of(0..80u64),
        prop::sample::select(&PowerCut::ALL[..]),
        any::<u64>(),
    )
        .prop_map(move |(ops, dies_at, cut, seed)| Case {
            mode,
            ops,
            dies_at,
            cut,
            seed,
        })
}

fn check(case: Case, tally: &Tally) -> Result<(), TestCaseError> {
    let sync = match case.mode {
        Mode::Always => SyncMode::Always,
        Mode::Interval | Mode::Never => SyncMode::Never,
    };
    let (file, store) = fresh_store(CrashFile::with_bytes, sync);
    if let Some(calls) = case.dies_at {
        file.die_after(calls);
    }
    let mut history = History::new(file.written_len());
    for (step, op) in case.ops.iter().enumerate() {
        match history.step(&store, &file, step, op) {
            Ok(()) => {}
            Err(_) if file.is_dead() => break,
            Err(err) => prop_assert!(false, "operation {step} ({op:?}) failed: {err}"),
        }
    }
    drop(store);
    if case.mode == Mode::Always {
        prop_assert!(
            file.durable_len() >= history.acknowledged_len,
            "an acknowledged write was not fsynced"
        );
    }
    tally.count(format!("{:?}: cases", case.mode));
    let outcome = cut_and_recover(&file, &history, case.cut, case.seed).inspect_err(|_| {
        tally.count(format!("{:?}: refused to open or wrong state", case.mode));
    })?;
    tally.count(format!("{:?} {:?}: {outcome}", case.mode, case.cut));
    tally.count(format!("{:?}: {outcome}", case.mode));
    Ok(())
}

/// Runs the power-loss cases of `mode`.
fn run_mode(name: &str, mode: Mode) {
    let tally = Tally::default();
    tally.declare(format!("{mode:?}: refused to open or wrong state"));
    run_cases(name, 1500, case(mode), &tally, |c| check(c, &tally));
}

#[test]
fn power_loss_with_sync_always_loses_no_acknowledged_write() {
    run_mode("power loss, always", Mode::Always);
}

#[test]
fn power_loss_with_sync_interval_recovers_a_prefix() {
    run_mode("power loss, interval", Mode::Interval);
}

#[test]
fn power_loss_with_sync_never_recovers_a_prefix() {
    run_mode("power loss, never", Mode::Never);
}

/// Writers per concurrent case.
const WRITERS: u8 = 4;

/// Concurrent writers under `sync: always` (group commit), the process
/// killed at a random write or fsync, then a power cut: each writer's keys
/// hold its last acknowledged value, or the value it was writing when the
/// process died.
#[test]
fn power_loss_under_group_commit_loses_no_acknowledged_write() {
    let tally = Tally::default();
    let strategy = (
        0..120u64,
        prop::sample::select(&PowerCut::ALL[..]),
        any::<u64>(),
    );
    run_cases(
        "power loss, always, 4 writers",
        300,
        strategy,
        &tally,
        |(dies_at, cut, seed)| {
            let (file, store) = fresh_store(CrashFile::with_bytes, SyncMode::Always);
            file.die_after(dies_at);
            // Per key: the last acknowledged value (None: deleted or never
            // written), and the one in flight when the process died.
            let outcomes: Vec<_> = thread::scope(|scope| {
                let writers: Vec<_> = (0..WRITERS)
                    .map(|writer| {
                        let store = Arc::clone(&store);
                        scope.spawn(move || write_until_death(&store, writer))
                    })
                    .collect();
                writers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            drop(store);
            let image = file.after_power_cut(cut, &mut case_rng(seed));
            let state = reopen(&image)?;
            for (key, acknowledged, in_flight) in outcomes.into_iter().flatten() {
                let got = state.get(&key_name(key)).cloned();
                prop_assert!(
                    got == acknowledged || in_flight.as_ref() == Some(&got),
                    "key k{key}: recovered {:?}, acknowledged {:?}",
                    got.as_deref().map(String::from_utf8_lossy),
                    acknowledged.as_deref().map(String::from_utf8_lossy)
                );
            }
            tally.count(format!("{cut:?}: cases"));
            Ok(())
        },
    );
}

/// What one writer left under one key: the key, its last acknowledged
/// value, and the value being written when the process died, if any.
type KeyOutcome = (u8, Option<Vec<u8>>, Option<Option<Vec<u8>>>);

/// Writer `writer` puts and deletes its two keys until the store fails.
fn write_until_death(store: &crate::store::Store, writer: u8) -> Vec<KeyOutcome> {
    let keys = [writer * 2, writer * 2 + 1];
    let mut acknowledged: [Option<Vec<u8>>; 2] = [None, None];
    let mut buf = Vec::new();
    for step in 0usize.. {
        let slot = step % 2;
        let key = keys[slot];
        let next = (step % 5 != 4).then(|| value(step, key, step % 300));
        let result = match &next {
            Some(v) => try_put(store, &key_name(key), v).map(drop),
            None => store
                .delete(key_name(key).as_bytes(), &mut buf, Expect::Any)
                .map(drop),
        };
        if result.is_err() {
            let mut outcomes: Vec<KeyOutcome> = keys
                .iter()
                .zip(acknowledged)
                .map(|(&k, acked)| (k, acked, None))
                .collect();
            outcomes[slot].2 = Some(next);
            return outcomes;
        }
        acknowledged[slot] = next;
    }
    unreachable!("the store fails once the process dies")
}
