//! I/O fault injection: random operation sequences under `sync: always`
//! with a fault aimed at any call of the file (ENOSPC or a short write on
//! append, EIO on read, fsync or truncate). After every operation:
//!
//! * a failed append leaves no byte behind (the log is cut back), unless
//!   the cut itself failed, which turns the store read-only;
//! * a failed fsync turns the store read-only for good: every later write
//!   is refused and no fsync is ever tried again;
//! * a failed read fails that request only;
//! * every acknowledged value still reads back, and nothing else does.
//!
//! At the end the power is cut and the log recovered, which must give a
//! consistent state (see [`cut_and_recover`]).

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{cut_and_recover, key_name, op, run_cases, History, Op, Tally, KEYS};
use crate::store::engine::{Store, StoreError, SyncMode};
use crate::store::testing::{fresh_store, try_put, Call, CrashFile, Fault, Model, PowerCut};

/// A fault aimed at the next call of its kind.
fn fault() -> impl Strategy<Value = (Call, Fault)> {
    let landed = 0..200usize;
    prop_oneof![
        landed
            .clone()
            .prop_map(|landed| (Call::Append, Fault::NoSpace { landed })),
        landed.prop_map(|landed| (Call::Append, Fault::ShortWrite { landed })),
        Just((Call::Append, Fault::Eio)),
        Just((Call::Read, Fault::Eio)),
        Just((Call::Sync, Fault::Eio)),
        Just((Call::Truncate, Fault::Eio)),
    ]
}

/// Operations, each with a fault one time in four.
fn steps() -> impl Strategy<Value = Vec<(Op, Option<(Call, Fault)>)>> {
    let step = (op(false), prop::option::weighted(0.25, fault()));
    prop::collection::vec(step, 1..30)
}

/// Whether the store serves exactly the model.
fn check_reads(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    for key in (0..KEYS).map(key_name) {
        let mut buf = Vec::new();
        let got = store.get(key.as_bytes(), &mut buf);
        let got = got.map_err(|e| TestCaseError::fail(format!("GET {key}: {e}")))?;
        prop_assert_eq!(
            got.map(|v| v.value),
            model.get(&key).map(|v| &v[..]),
            "{}",
            key
        );
    }
    Ok(())
}

/// A short name of a fault, for the tally.
fn fault_name(call: Call, fault: Fault) -> String {
    let fault = match fault {
        Fault::NoSpace { .. } => "ENOSPC",
        Fault::ShortWrite { .. } => "short write",
        Fault::Eio => "EIO",
    };
    format!("{fault} on {call:?}")
}

fn check(
    steps: Vec<(Op, Option<(Call, Fault)>)>,
    cut: PowerCut,
    seed: u64,
    tally: &Tally,
) -> Result<(), TestCaseError> {
    let (file, store) = fresh_store(CrashFile::with_bytes, SyncMode::Always);
    let mut history = History::new(file.written_len());
    for (step, (op, fault)) in steps.iter().enumerate() {
        if let Some((Call::Read, _)) = fault {
            // Aimed at a GET of a live key: that request fails, alone.
            let Some(key) = history.model.keys().next().cloned() else {
                continue;
            };
            file.inject(Call::Read, Fault::Eio);
            let mut buf = Vec::new();
            let got = store.get(key.as_bytes(), &mut buf);
            prop_assert!(matches!(got, Err(StoreError::Io(_))), "GET under EIO");
            tally.count("faults fired: EIO on Read");
        } else if let Some((call, fault)) = fault {
            file.inject(*call, *fault);
        }
        let read_only_before = store.is_read_only();
        let before = file.contents();
        let result = history.step(&store, &file, step, op);
        if let Some((call, fault)) = fault.filter(|(call, _)| *call != Call::Read) {
            if !file.fault_pending() {
                tally.count(format!("faults fired: {}", fault_name(call, fault)));
            }
        }
        file.clear_faults();
        match result {
            Ok(()) => prop_assert!(!read_only_before, "a read-only store took a write"),
            Err(StoreError::ReadOnly) => prop_assert!(store.is_read_only()),
            Err(StoreError::Io(_)) if !store.is_read_only() => {
                prop_assert_eq!(file.contents(), before, "a failed append left bytes");
            }
            Err(StoreError::Io(_)) => {}
            Err(err) => prop_assert!(false, "operation {step} ({op:?}): {err}"),
        }
        prop_assert_eq!(file.syncs_after_failure(), 0, "a failed fsync was retried");
        check_reads(&store, &history.model)?;
    }
    tally.count(if store.is_read_only() {
        "cases ending read-only"
    } else {
        "cases ending writable"
    });
    drop(store);
    prop_assert!(
        file.durable_len() >= history.acknowledged_len,
        "an acknowledged write was not fsynced"
    );
    let outcome = cut_and_recover(&file, &history, cut, seed)?;
    tally.count(format!("{cut:?}: {outcome}"));
    Ok(())
}

#[test]
fn injected_io_faults_fail_one_request_and_leave_a_consistent_log() {
    let tally = Tally::default();
    let strategy = (
        steps(),
        prop::sample::select(&PowerCut::ALL[..]),
        any::<u64>(),
    );
    run_cases(
        "I/O faults",
        1500,
        strategy,
        &tally,
        |(steps, cut, seed)| check(steps, cut, seed, &tally),
    );
    for kind in ["ENOSPC on Append", "short write on Append", "EIO on Sync"] {
        assert!(
            tally.get(&format!("faults fired: {kind}")) > 0,
            "no {kind} fired"
        );
    }
}

/// The periodic fdatasync of `sync: interval` failing turns the store
/// read-only, and it never syncs again.
#[test]
fn a_failed_periodic_fsync_turns_the_store_read_only_for_good() {
    let (file, store) = fresh_store(
        CrashFile::with_bytes,
        SyncMode::Interval(Duration::from_millis(1)),
    );
    try_put(&store, "kept", b"before the failure").unwrap();
    file.inject(Call::Sync, Fault::Eio);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.is_read_only() {
        assert!(Instant::now() < deadline, "the failed fsync went unnoticed");
        thread::sleep(Duration::from_millis(1));
    }
    assert!(matches!(
        try_put(&store, "later", b"refused"),
        Err(StoreError::ReadOnly)
    ));
    let mut buf = Vec::new();
    let kept = store
        .get(b"kept", &mut buf)
        .unwrap()
        .map(|v| v.value.to_vec());
    assert_eq!(kept.as_deref(), Some(&b"before the failure"[..]));
    thread::sleep(Duration::from_millis(20));
    assert_eq!(
        file.syncs_after_failure(),
        0,
        "the failed fsync was retried"
    );
    assert_eq!(
        Arc::strong_count(&store),
        1,
        "the sync thread holds no store"
    );
}
