//! Storage engine benchmark: memory per key, restart time with and without
//! the hint file, compaction throughput, GET latency while compacting,
//! snapshots (time, writer pause, GET latency meanwhile, restore to first
//! GET), prefix listing latency, and the engine-level cost of encryption at
//! rest.
//!
//! `cargo bench --bench storage [-- KEYS]` (default 1,000,000 keys of 16
//! bytes with 100-byte values). Prints one line per figure. Numbers drift on
//! a shared machine; compare figures from the same run.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lucid::store::crypt::{Cipher, KEY_LEN};
use lucid::store::layout::HINT_FILE;
use lucid::store::restore::restore;
use lucid::store::snapshot;
use lucid::store::{open, open_with, Expect, Mutation, PutBuffer, Store, SyncMode};

fn main() {
    let keys: u64 = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    println!("storage benchmark: {keys} keys, 16-byte keys, 100-byte values");

    let (store, _) = open(dir.path(), SyncMode::Never).expect("open");
    let rss_before = rss_bytes();
    let started = Instant::now();
    fill(&store, keys, b'a');
    let load = started.elapsed();
    let rss_after = rss_bytes();
    report(
        "load (sync never)",
        format!("{:.0} puts/s", keys as f64 / load.as_secs_f64()),
    );
    report(
        "index memory",
        format!(
            "{:.1} MB RSS growth, {:.1} B/key",
            (rss_after - rss_before) as f64 / 1e6,
            (rss_after - rss_before) as f64 / keys as f64
        ),
    );

    fill(&store, keys / 2, b'b'); // half the log is now dead
    let idle = get_latencies(&store, keys, None);
    report("GET latency, idle", idle.summary());
    report(
        "list page of 100, keys only",
        list_latencies(&store, keys, false).summary_of("pages"),
    );
    report(
        "list page of 100, metadata",
        list_latencies(&store, keys, true).summary_of("pages"),
    );

    let compacting = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&compacting);
    let compactor = {
        let store = Arc::clone(&store);
        thread::spawn(move || {
            let report = store.compact().expect("compact");
            flag.store(false, Ordering::SeqCst);
            report
        })
    };
    let busy = get_latencies(&store, keys, Some(&compacting));
    let compaction = compactor.join().expect("compactor");
    report(
        "compaction",
        format!(
            "{:.1} MB -> {:.1} MB in {:.2} s = {:.0} MB/s read, writers paused {:.1} ms",
            compaction.bytes_before as f64 / 1e6,
            compaction.bytes_after as f64 / 1e6,
            compaction.duration.as_secs_f64(),
            compaction.bytes_before as f64 / 1e6 / compaction.duration.as_secs_f64(),
            compaction.writers_paused.as_secs_f64() * 1000.0
        ),
    );
    report("GET latency, compacting", busy.summary());
    report(
        "GET p99 compacting / idle",
        format!("{:.2}x", busy.percentile(99.0) / idle.percentile(99.0)),
    );
    snapshot_figures(&store, keys, &idle);

    store.close().expect("close");
    drop(store);
    report("restart with hint file", restart(dir.path(), keys));
    fs::remove_file(dir.path().join(HINT_FILE)).expect("remove hint");
    report("restart without hint file", restart(dir.path(), keys));

    encryption_cost(keys.min(200_000));
    fsync_floor(dir.path());
}

/// A snapshot of the store to a file while a writer and a reader go on:
/// its time, how long writers were held (the hold itself, and the slowest
/// put meanwhile), GET latency meanwhile against `idle`; then a restore
/// into a new directory and the time to the first GET there.
fn snapshot_figures(store: &Arc<Store>, keys: u64, idle: &Latencies) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.snapshot");
    let running = Arc::new(AtomicBool::new(true));
    let snapshotter = {
        let (store, running, path) = (Arc::clone(store), Arc::clone(&running), path.clone());
        thread::spawn(move || {
            let started = Instant::now();
            let (report, _) = snapshot::save(&path, |out| {
                let report = store.snapshot("bench", out);
                running.store(false, Ordering::SeqCst);
                report.map(|report| (report, started.elapsed()))
            })
            .expect("snapshot");
            (report, started.elapsed())
        })
    };
    let writer = {
        let (store, running) = (Arc::clone(store), Arc::clone(&running));
        thread::spawn(move || {
            let (mut slowest, mut i) = (Duration::ZERO, 0);
            let mut buf = Vec::new();
            while running.load(Ordering::SeqCst) {
                let key = key(i % keys);
                let started = Instant::now();
                put(&store, &mut buf, &key, &[b'c'; 100]);
                slowest = slowest.max(started.elapsed());
                i += 1;
            }
            (slowest, i)
        })
    };
    let busy = get_latencies(store, keys, Some(&running));
    let ((made, streamed), saved) = snapshotter.join().expect("snapshot thread");
    let (slowest_put, puts) = writer.join().expect("writer");
    report(
        "snapshot",
        format!(
            "{} keys, {:.1} MB in {:.2} s ({:.2} s with fsync and verify)",
            made.info.keys,
            made.info.bytes as f64 / 1e6,
            streamed.as_secs_f64(),
            saved.as_secs_f64()
        ),
    );
    report(
        "snapshot writer pause",
        format!(
            "held {:.1} ms; slowest of {puts} puts meanwhile {:.1} ms",
            made.writers_paused.as_secs_f64() * 1000.0,
            slowest_put.as_secs_f64() * 1000.0
        ),
    );
    report("GET latency, snapshotting", busy.summary());
    report(
        "GET p99 snapshotting / idle",
        format!("{:.2}x", busy.percentile(99.0) / idle.percentile(99.0)),
    );
    let target = dir.path().join("restored");
    let started = Instant::now();
    restore(&target, &path, None, false).expect("restore");
    let restored = started.elapsed();
    let (copy, _) = open(&target, SyncMode::Never).expect("open the restored store");
    let hit = copy
        .get(&key(keys / 2), &mut Vec::new())
        .expect("get")
        .is_some();
    assert!(hit);
    report(
        "restore to first GET",
        format!(
            "{:.2} s (restore {:.2} s, then start from its hint file)",
            started.elapsed().as_secs_f64(),
            restored.as_secs_f64()
        ),
    );
}

/// The disk's floor for one durable write: a 180-byte append then
/// fdatasync, as `sync: always` does for a lone writer, and the same over
/// bytes already written (no size change to journal). No server can
/// acknowledge durable writes on one connection faster than this. Also the
/// append alone, without the fdatasync.
fn fsync_floor(dir: &std::path::Path) {
    use std::os::unix::fs::FileExt;
    const WRITES: u64 = 1000;
    let record = [b'r'; 180];
    let mut per_write = Vec::new();
    for overwrite in [false, true] {
        let path = dir.join("fsync-floor");
        let file = fs::File::create(&path).expect("create");
        if overwrite {
            file.write_all_at(&vec![0; 180 * WRITES as usize], 0)
                .and_then(|()| file.sync_all())
                .expect("preallocate");
        }
        let started = Instant::now();
        for i in 0..WRITES {
            file.write_all_at(&record, i * 180).expect("write");
            file.sync_data().expect("fdatasync");
        }
        per_write.push(started.elapsed().as_secs_f64() * 1e6 / WRITES as f64);
        fs::remove_file(&path).expect("remove");
    }
    // The same append without the fdatasync: the system call every write
    // pays even with `sync: interval` (page cache, file size).
    let path = dir.join("append-floor");
    let file = fs::File::create(&path).expect("create");
    let appends = WRITES * 100;
    let started = Instant::now();
    for i in 0..appends {
        file.write_all_at(&record, i * 180).expect("write");
    }
    let append = started.elapsed().as_secs_f64() * 1e6 / appends as f64;
    fs::remove_file(&path).expect("remove");
    report(
        "append alone (no fsync)",
        format!("{append:.1} us per 180-byte pwrite"),
    );
    report(
        "append + fdatasync",
        format!(
            "{:.0} us (at most {:.0} durable writes/s on one connection)",
            per_write[0],
            1e6 / per_write[0]
        ),
    );
    report(
        "overwrite + fdatasync",
        format!(
            "{:.0} us (at most {:.0} durable writes/s, a preallocated log)",
            per_write[1],
            1e6 / per_write[1]
        ),
    );
}

/// Put and get cost per operation in the engine alone (no HTTP), and the
/// time to compact a log of which half is dead, plain against encrypted,
/// over fresh stores of `keys` keys.
fn encryption_cost(keys: u64) {
    let mut per_op = Vec::new();
    for cipher in [None, Some(Arc::new(Cipher::from_key(&[7; KEY_LEN])))] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _) = open_with(dir.path(), SyncMode::Never, cipher).expect("open");
        let started = Instant::now();
        fill(&store, keys, b'p');
        let put = started.elapsed().as_secs_f64() * 1e6 / keys as f64;
        let mut buf = Vec::new();
        let started = Instant::now();
        for i in 0..keys {
            let found = store.get(&key(i), &mut buf).expect("get").is_some();
            assert!(found, "key {i} is missing");
        }
        let get = started.elapsed().as_secs_f64() * 1e6 / keys as f64;
        // Every key written again: half the log is dead.
        fill(&store, keys, b'q');
        let compaction = store.compact().expect("compact").duration.as_secs_f64() * 1e3;
        per_op.push((put, get, compaction));
    }
    let [(plain_put, plain_get, plain_compaction), (sealed_put, sealed_get, sealed_compaction)] =
        per_op[..]
    else {
        unreachable!("two runs")
    };
    report(
        "engine PUT, plain / encrypted",
        format!(
            "{plain_put:.2} / {sealed_put:.2} us per put = {:.2}x the plain throughput",
            plain_put / sealed_put
        ),
    );
    report(
        "engine GET, plain / encrypted",
        format!(
            "{plain_get:.2} / {sealed_get:.2} us per get = {:.2}x the plain throughput",
            plain_get / sealed_get
        ),
    );
    report(
        "compaction, plain / encrypted",
        format!(
            "{plain_compaction:.0} / {sealed_compaction:.0} ms for {} records, half dead = {:.2}x the plain speed",
            2 * keys,
            plain_compaction / sealed_compaction
        ),
    );
}

/// Opens the directory and answers one GET; reports the time to both.
fn restart(dir: &std::path::Path, keys: u64) -> String {
    let started = Instant::now();
    let (store, opened) = open(dir, SyncMode::Never).expect("reopen");
    let mut buf = Vec::new();
    let found = store.get(&key(keys / 3), &mut buf).expect("get").is_some();
    assert!(found, "a key is missing after restart");
    format!(
        "first GET answered {:.0} ms after start ({} keys, {} log records read)",
        started.elapsed().as_secs_f64() * 1000.0,
        opened.keys,
        opened.records
    )
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:012}").into_bytes()
}

fn fill(store: &Store, keys: u64, byte: u8) {
    let value = [byte; 100];
    let mut buf = Vec::new();
    for i in 0..keys {
        put(store, &mut buf, &key(i), &value);
    }
}

/// Puts `value` at `key` through the store's write API, once durable.
fn put(store: &Store, buf: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let mut record = PutBuffer::new(buf, key, b"application/octet-stream", 0, value.len());
    record.push_value(value);
    let put = Mutation::Put {
        record,
        expect: Expect::Any,
    };
    let applied = store.apply(put, &mut Vec::new()).expect("put");
    store.wait_for(applied.ticket).expect("put durable");
}

struct Latencies(Vec<Duration>);

impl Latencies {
    fn percentile(&self, p: f64) -> f64 {
        let at = ((self.0.len() - 1) as f64 * p / 100.0).round() as usize;
        self.0[at].as_secs_f64() * 1e6
    }

    fn summary(&self) -> String {
        self.summary_of("GETs")
    }

    fn summary_of(&self, what: &str) -> String {
        format!(
            "{} {what}: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
            self.0.len(),
            self.percentile(50.0),
            self.percentile(99.0),
            self.percentile(99.9),
            self.percentile(100.0)
        )
    }
}

/// Times GETs of pseudo-random keys: 200,000 of them, or as long as
/// `while_set` stays true.
fn get_latencies(store: &Store, keys: u64, while_set: Option<&AtomicBool>) -> Latencies {
    let mut samples = Vec::with_capacity(1 << 20);
    let mut buf = Vec::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    loop {
        let done = match while_set {
            Some(flag) => !flag.load(Ordering::SeqCst),
            None => samples.len() >= 200_000,
        };
        if done {
            break;
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let key = key(state % keys);
        let started = Instant::now();
        let hit = store.get(&key, &mut buf).expect("get").is_some();
        samples.push(started.elapsed());
        assert!(hit);
    }
    samples.sort_unstable();
    Latencies(samples)
}

/// Times 2,000 listing pages of 100 keys from pseudo-random places in the
/// key space, with or without each key's metadata.
fn list_latencies(store: &Store, keys: u64, metadata: bool) -> Latencies {
    let mut samples = Vec::with_capacity(2000);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..2000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let after = key(state % keys);
        let started = Instant::now();
        let page = store.list(b"key-", Some(&after), 100);
        let listed = if metadata {
            store
                .key_info(page.entries, &mut |_| true)
                .expect("key info")
                .len()
        } else {
            page.entries.len()
        };
        samples.push(started.elapsed());
        assert!(listed > 0 || state % keys + 100 >= keys);
    }
    samples.sort_unstable();
    Latencies(samples)
}

fn report(what: &str, figure: String) {
    println!("  {what:<28} {figure}");
}

/// Resident set size of this process.
fn rss_bytes() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
