//! Torture tests of the engine over [`CrashFile`]: random operation
//! sequences checked against a `BTreeMap` model, with power cuts
//! ([`power_loss`]) and injected I/O failures ([`faults`]), each followed
//! by a real recovery of the surviving bytes through
//! [`directory::open`](super::directory::open).
//!
//! Every run prints its seed; `LUCID_TORTURE_SEED=<seed>` replays it, and
//! `PROPTEST_CASES=<n>` sets the number of cases (the long run).

mod faults;
mod power_loss;

use std::collections::BTreeMap;
use std::fs;
use std::sync::Mutex;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestRng, TestRunner};

use super::directory;
use super::engine::mutation::BatchOp;
use super::engine::{Expect, Store, StoreError, SyncMode};
use super::layout::LOG_FILE;
use super::record::{FileHeader, RecordHeader, RecordKind, FILE_HEADER_LEN, RECORD_HEADER_LEN};
use super::scan::{scan, Damage, ScanStart};
use super::testing::{
    batch_put, increment, incremented, try_put, CrashFile, MemFile, Model, PowerCut,
};

/// Keys are `k0` to `k7`: few enough that operations overwrite and delete
/// each other's keys.
const KEYS: u8 = 8;

/// One operation of a random sequence.
#[derive(Debug, Clone)]
pub enum Op {
    /// PUT of a `len`-byte value unique to the operation.
    Put {
        /// Key number.
        key: u8,
        /// Value length.
        len: usize,
    },
    /// DELETE (of a missing key: nothing is written).
    Delete {
        /// Key number.
        key: u8,
    },
    /// An atomic batch: a put (true) or a delete of each key (the first
    /// occurrence of a key counts).
    Batch(Vec<(u8, bool)>),
    /// PATCH increment (of a missing key: nothing is written).
    Increment {
        /// Key number.
        key: u8,
    },
    /// The background fdatasync of `sync: interval` (with its sync marker).
    Sync,
}

/// A random operation; `Sync` only if `syncs` (`sync: interval`).
pub fn op(syncs: bool) -> BoxedStrategy<Op> {
    let key = 0..KEYS;
    let len = prop_oneof![4 => 0..64usize, 1 => 0..12_000usize];
    let ops = prop_oneof![
        6 => (key.clone(), len).prop_map(|(key, len)| Op::Put { key, len }),
        2 => key.clone().prop_map(|key| Op::Delete { key }),
        2 => prop::collection::vec((key.clone(), any::<bool>()), 1..5).prop_map(Op::Batch),
        2 => key.prop_map(|key| Op::Increment { key }),
    ];
    if syncs {
        prop_oneof![8 => ops, 1 => Just(Op::Sync)].boxed()
    } else {
        ops.boxed()
    }
}

fn key_name(key: u8) -> String {
    format!("k{key}")
}

/// The value operation number `step` puts under `key`: `len` bytes that
/// name the operation, so a value never written cannot pass for one.
pub fn value(step: usize, key: u8, len: usize) -> Vec<u8> {
    let tag = format!("<{step}:{key}>");
    tag.bytes().cycle().take(len).collect()
}

/// The batch operations of `ops` (each key once), with their values.
fn batch_ops(step: usize, ops: &[(u8, bool)]) -> Vec<(String, Option<Vec<u8>>)> {
    let mut seen = BTreeMap::new();
    for &(key, is_put) in ops {
        seen.entry(key)
            .or_insert_with(|| is_put.then(|| value(step, key, 16 + usize::from(key))));
    }
    seen.into_iter()
        .map(|(key, value)| (key_name(key), value))
        .collect()
}

/// Runs operation number `step` on the store. Missing keys are not errors.
pub fn run(store: &Store, step: usize, op: &Op) -> Result<(), StoreError> {
    let mut buf = Vec::new();
    match op {
        Op::Put { key, len } => try_put(store, &key_name(*key), &value(step, *key, *len)).map(drop),
        Op::Delete { key } => store
            .delete(key_name(*key).as_bytes(), &mut buf, Expect::Any)
            .map(drop),
        Op::Batch(ops) => {
            let ops = batch_ops(step, ops);
            let batch: Vec<BatchOp<'_>> = ops
                .iter()
                .map(|(key, value)| match value {
                    Some(value) => batch_put(key, value),
                    None => BatchOp::Delete {
                        key: key.as_bytes(),
                        expect: Expect::Any,
                    },
                })
                .collect();
            store.batch(&batch, &mut buf).map(drop).map_err(|e| e.error)
        }
        Op::Increment { key } => match increment(store, &key_name(*key)) {
            Err(StoreError::NotFound) => Ok(()),
            other => other.map(drop),
        },
        Op::Sync => store.sync_appended().map_err(StoreError::Io),
    }
}

/// Applies operation number `step` to the model.
pub fn apply(model: &mut Model, step: usize, op: &Op) {
    match op {
        Op::Put { key, len } => {
            model.insert(key_name(*key), value(step, *key, *len));
        }
        Op::Delete { key } => {
            model.remove(&key_name(*key));
        }
        Op::Batch(ops) => {
            for (key, value) in batch_ops(step, ops) {
                match value {
                    Some(value) => model.insert(key, value),
                    None => model.remove(&key),
                };
            }
        }
        Op::Increment { key } => {
            if let Some(value) = model.get_mut(&key_name(*key)) {
                *value = incremented(value).into_bytes();
            }
        }
        Op::Sync => {}
    }
}

/// The states the store went through: the model after each operation
/// whose record reached the log whole, with the end of the log's last
/// record then (a sync marker after it is part of no state: a power cut
/// may take it and leave the state).
pub struct History {
    states: Vec<(Model, usize)>,
    /// The model after the last acknowledged operation.
    pub model: Model,
    /// The log's length after the last acknowledged operation.
    pub acknowledged_len: usize,
}

impl History {
    /// The history of a store whose log is `len` bytes of no records.
    pub fn new(len: usize) -> Self {
        Self {
            states: vec![(Model::new(), len)],
            model: Model::new(),
            acknowledged_len: len,
        }
    }

    /// Runs operation number `step` on the store and the model. An
    /// operation refused for a failed fsync after its record was appended
    /// may survive a crash although unacknowledged: it enters the history,
    /// not the model. (A failed append leaves no whole record.)
    pub fn step(
        &mut self,
        store: &Store,
        file: &CrashFile,
        step: usize,
        op: &Op,
    ) -> Result<(), StoreError> {
        let before = file.written_len();
        let result = run(store, step, op);
        let mut next = self.model.clone();
        apply(&mut next, step, op);
        let landed = match &result {
            Ok(()) => true,
            Err(StoreError::ReadOnly) => file.written_len() > before,
            Err(_) => false,
        };
        let len = data_end(&file.contents());
        if result.is_ok() {
            self.model = next.clone();
            self.acknowledged_len = len;
        }
        if landed {
            self.states.push((next, len));
        }
        result
    }

    /// The state a log whose first `intact` bytes are the ones written
    /// must recover: the latest one whose records all lie in them; and
    /// whether it is the last state.
    pub fn state_within(&self, intact: usize) -> (&Model, bool) {
        let at = self.states.partition_point(|(_, len)| *len <= intact);
        (
            &self.states[at.saturating_sub(1)].0,
            at == self.states.len(),
        )
    }
}

/// End of the last whole record in `log` that is not a sync marker.
fn data_end(log: &[u8]) -> usize {
    let (mut at, mut end) = (FILE_HEADER_LEN, FILE_HEADER_LEN);
    while let Some(header) = log
        .get(at..at + RECORD_HEADER_LEN)
        .and_then(|fixed| RecordHeader::decode(fixed.try_into().ok()?).ok())
    {
        let next = at + header.record_len() as usize;
        if next > log.len() {
            break;
        }
        if header.kind != RecordKind::Marker {
            end = next;
        }
        at = next;
    }
    end
}

/// Cuts the power under `file` (random choices from `seed`), recovers the
/// surviving bytes and checks the store opens (never refuses) with the
/// history's state for the bytes that survived intact: no holes, no
/// resurrections, no corrupt values, nothing fsynced lost. Returns what
/// happened, for the tally.
pub fn cut_and_recover(
    file: &CrashFile,
    history: &History,
    cut: PowerCut,
    seed: u64,
) -> Result<&'static str, TestCaseError> {
    let written = file.contents();
    let image = file.after_power_cut(cut, &mut case_rng(seed));
    let intact = intact_prefix(&image, &written);
    prop_assert!(
        intact >= file.durable_len(),
        "a power cut lost synced bytes"
    );
    let state = reopen(&image)?;
    let (expected, whole) = history.state_within(intact);
    prop_assert_eq!(&state, expected);
    Ok(match (whole, records_after_damage(&image)) {
        (true, _) => "reopened with every operation",
        (false, false) => "reopened with a shorter prefix",
        // Before sync markers, recovery refused these.
        (false, true) => "reopened with a shorter prefix, valid records after the damage cut",
    })
}

/// Whether the log `image` has damage with valid records after it.
fn records_after_damage(image: &[u8]) -> bool {
    let Some(header) = image
        .get(..FILE_HEADER_LEN)
        .and_then(|h| FileHeader::decode(h.try_into().ok()?).ok())
    else {
        return false;
    };
    let file = MemFile::with_bytes(image);
    let summary = scan(&file, header.file_id, None, ScanStart::BEGINNING, |_, _| {});
    matches!(
        summary.map(|summary| summary.damage),
        Ok(Some(
            Damage::TornTail {
                next_valid: Some(_),
                ..
            } | Damage::Corrupt { .. }
        ))
    )
}

/// Recovers the log `image` the way a restart does (in a fresh data
/// directory), and reads back every key. Any failure, a refusal to open
/// included, is a test failure: a power cut only ever damages bytes no
/// fsync covered, which recovery cuts.
pub fn reopen(image: &[u8]) -> Result<Model, TestCaseError> {
    // tmpfs where there is one: recovery fsyncs, and thousands of cases run.
    let dir = match fs::metadata("/dev/shm") {
        Ok(meta) if meta.is_dir() => tempfile::tempdir_in("/dev/shm"),
        _ => tempfile::tempdir(),
    }
    .map_err(|e| TestCaseError::fail(format!("tempdir: {e}")))?;
    fs::write(dir.path().join(LOG_FILE), image)
        .map_err(|e| TestCaseError::fail(format!("write the log: {e}")))?;
    let store = match directory::open(dir.path(), SyncMode::Never) {
        Ok((store, _)) => store,
        Err(err) => return Err(TestCaseError::fail(format!("reopen failed: {err}"))),
    };
    let mut state = Model::new();
    for key in (0..KEYS).map(key_name) {
        let mut buf = Vec::new();
        let got = store
            .get(key.as_bytes(), &mut buf)
            .map_err(|e| TestCaseError::fail(format!("reading {key} after reopen: {e}")))?;
        if let Some(got) = got {
            state.insert(key, got.value.to_vec());
        }
    }
    prop_assert_eq!(store.stats().keys, state.len(), "keys beyond k0..k7");
    Ok(state)
}

/// Length of the longest common prefix of `image` and `written`.
pub fn intact_prefix(image: &[u8], written: &[u8]) -> usize {
    image
        .iter()
        .zip(written)
        .position(|(a, b)| a != b)
        .unwrap_or(image.len().min(written.len()))
}

/// Counters of what a torture run did, printed at its end.
#[derive(Default)]
pub struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    /// Adds one to `what`.
    pub fn count(&self, what: impl Into<String>) {
        *self.0.lock().unwrap().entry(what.into()).or_default() += 1;
    }

    /// Lists `what` in the tally even if it is never counted.
    pub fn declare(&self, what: impl Into<String>) {
        self.0.lock().unwrap().entry(what.into()).or_default();
    }

    /// How many times `what` was counted.
    pub fn get(&self, what: &str) -> u64 {
        self.0.lock().unwrap().get(what).copied().unwrap_or(0)
    }

    fn print(&self, name: &str) {
        for (what, n) in self.0.lock().unwrap().iter() {
            eprintln!("{name}: {what}: {n}");
        }
    }
}

/// Runs `test` on `default_cases` cases from `strategy` (or
/// `PROPTEST_CASES`), seeded by `LUCID_TORTURE_SEED` or at random; prints
/// the seed and the tally, and panics with the seed on failure.
pub fn run_cases<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    tally: &Tally,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let seed = std::env::var("LUCID_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(random_seed);
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cases);
    eprintln!("{name}: {cases} cases, seed {seed} (replay: LUCID_TORTURE_SEED={seed})");
    let config = Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    };
    let result = TestRunner::new(config).run(&strategy, test);
    tally.print(name);
    if let Err(err) = result {
        panic!("{name} failed with seed {seed} (replay: LUCID_TORTURE_SEED={seed}): {err}");
    }
}

/// A seed from the OS's random source (through `RandomState`).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// A seeded RNG for a case's own random choices.
pub fn case_rng(seed: u64) -> TestRng {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}
