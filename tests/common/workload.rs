//! A mixed client workload with a model of what it wrote, for the crash
//! loop (`tests/torture.rs`) and the soak (`tests/soak.rs`).
//!
//! Each [`Client`] owns its keys (`c<id>-...`): one writer per key, so the
//! value every key must hold is known exactly. A request cut off by a
//! killed node leaves its operation *in flight*: after a restart the key
//! may hold either the value before it or the one it wrote (all of a batch
//! or none of it), never anything else. [`Client::resolve`] checks that and
//! adopts what the node holds.

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, Instant};

use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};
use serde_json::json;

use super::{kv_path, Conn, Response};

/// Ordinary keys per client.
const KEYS: usize = 12;
/// Keys per client written with a time to live (soak only).
const TTL_KEYS: usize = 3;

/// What a key holds: `None` when it does not exist.
type Held = Option<Vec<u8>>;

/// Which operations a client draws, in percent (the rest are GETs).
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// PUT of a 0 B to 64 KiB value.
    pub put: u32,
    /// DELETE.
    pub delete: u32,
    /// PATCH increment of the client's counter.
    pub increment: u32,
    /// POST /api/batch of 2 to 4 puts and deletes.
    pub batch: u32,
    /// Listing of the client's prefix, checked against its keys.
    pub list: u32,
    /// PUT with `?ttl=1`, or a GET of such a key checking its expiry.
    pub ttl: u32,
}

/// The crash loop's mix: writes of every kind.
pub const CRASH_MIX: Mix = Mix {
    put: 40,
    delete: 15,
    increment: 15,
    batch: 15,
    list: 0,
    ttl: 0,
};

/// The soak's mix: every kind of request, TTLs included.
pub const SOAK_MIX: Mix = Mix {
    put: 25,
    delete: 10,
    increment: 10,
    batch: 10,
    list: 5,
    ttl: 10,
};

/// Counts of what a client saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Requests answered.
    pub requests: u64,
    /// Answers with a 5xx status.
    pub server_errors: u64,
    /// Writes acknowledged (PUT, DELETE, PATCH, batch).
    pub acknowledged: u64,
    /// Values read back and checked.
    pub checked: u64,
}

impl Tally {
    /// Adds `other` to this tally.
    pub fn add(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.server_errors += other.server_errors;
        self.acknowledged += other.acknowledged;
        self.checked += other.checked;
    }
}

/// One client: its keys' expected values and what it saw.
pub struct Client {
    id: usize,
    rng: TestRng,
    /// Every ordinary key and the counter: what it must hold.
    held: BTreeMap<String, Held>,
    /// The changes of the operation cut off by a kill, if any.
    in_flight: Vec<(String, Held)>,
    /// TTL keys: the value, when its PUT was sent and answered (soak).
    ttl: BTreeMap<String, (Vec<u8>, Instant, Instant)>,
    /// Numbers the values written.
    seq: u64,
    /// What the client saw.
    pub tally: Tally,
    /// Everything found wrong, with the request.
    pub failures: Vec<String>,
}

/// The random source of client `id` in a run drawn from `seed`.
pub fn client_rng(seed: u64, id: usize) -> TestRng {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&(id as u64).to_le_bytes());
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

impl Client {
    /// Client `id`, drawing its operations from `seed`.
    pub fn new(id: usize, seed: u64) -> Self {
        let mut held: BTreeMap<String, Held> =
            (0..KEYS).map(|k| (format!("c{id}-{k:02}"), None)).collect();
        held.insert(Self::counter(id), None);
        Self {
            id,
            rng: client_rng(seed, id),
            held,
            in_flight: Vec::new(),
            ttl: BTreeMap::new(),
            seq: 0,
            tally: Tally::default(),
            failures: Vec::new(),
        }
    }

    fn counter(id: usize) -> String {
        format!("c{id}-n")
    }

    /// A fresh value of 0 B to 64 KiB that names its writer and number.
    fn next_value(&mut self) -> Vec<u8> {
        self.seq += 1;
        let len = match self.rng.random_range(0..10) {
            0..=4 => self.rng.random_range(0..100),
            5..=8 => self.rng.random_range(0..4096),
            _ => self.rng.random_range(0..=64 * 1024),
        };
        let tag = format!("[c{}/{}]", self.id, self.seq);
        tag.bytes().cycle().take(len).collect()
    }

    fn some_key(&mut self) -> String {
        format!("c{}-{:02}", self.id, self.rng.random_range(0..KEYS))
    }

    /// Runs one random operation on `conn`. `Err`: the connection failed
    /// (the node is gone); the operation is then in flight.
    pub fn step(&mut self, conn: &mut Conn, mix: Mix) -> io::Result<()> {
        let mut roll = self.rng.random_range(0..100);
        for (share, op) in [
            (
                mix.put,
                Self::put as fn(&mut Self, &mut Conn) -> io::Result<()>,
            ),
            (mix.delete, Self::delete),
            (mix.increment, Self::increment),
            (mix.batch, Self::batch),
            (mix.list, Self::list),
            (mix.ttl, Self::ttl),
        ] {
            if roll < share {
                return op(self, conn);
            }
            roll -= share;
        }
        self.get(conn)
    }

    /// Sends a request, counting it; a 5xx is a failure.
    fn send(
        &mut self,
        conn: &mut Conn,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> io::Result<Response> {
        let resp = conn.try_send(method, path, &[], body)?;
        self.tally.requests += 1;
        if resp.status >= 500 {
            self.tally.server_errors += 1;
        }
        Ok(resp)
    }

    /// Sends a write whose effect on the keys is `changes`: applied to the
    /// model if the status is one of `ok`, in flight if the node is gone.
    fn write(
        &mut self,
        conn: &mut Conn,
        (method, path, body): (&str, &str, &[u8]),
        ok: &[u16],
        changes: Vec<(String, Held)>,
    ) -> io::Result<()> {
        self.in_flight = changes;
        let resp = self.send(conn, method, path, body)?;
        let changes = std::mem::take(&mut self.in_flight);
        if ok.contains(&resp.status) {
            self.tally.acknowledged += 1;
            self.held.extend(changes);
        } else {
            self.failures.push(format!(
                "{method} {path} answered {}: {}",
                resp.status,
                resp.text()
            ));
        }
        Ok(())
    }

    fn put(&mut self, conn: &mut Conn) -> io::Result<()> {
        let (key, value) = (self.some_key(), self.next_value());
        let request = ("PUT", &kv_path(&key)[..], &value[..]);
        self.write(
            conn,
            request,
            &[200, 201],
            vec![(key.clone(), Some(value.clone()))],
        )
    }

    fn delete(&mut self, conn: &mut Conn) -> io::Result<()> {
        let key = self.some_key();
        let ok: &[u16] = if self.held[&key].is_some() {
            &[200]
        } else {
            &[404]
        };
        self.write(conn, ("DELETE", &kv_path(&key), b""), ok, vec![(key, None)])
    }

    fn increment(&mut self, conn: &mut Conn) -> io::Result<()> {
        let key = Self::counter(self.id);
        let path = kv_path(&key);
        let current = self.held[&key]
            .as_deref()
            .map(|v| String::from_utf8_lossy(v).parse::<u64>());
        match current {
            Some(Ok(n)) => {
                let body = br#"{"operation": "increment"}"#;
                let next = Some((n + 1).to_string().into_bytes());
                self.write(conn, ("PATCH", &path, body), &[200], vec![(key, next)])
            }
            _ => self.write(
                conn,
                ("PUT", &path, b"0"),
                &[200, 201],
                vec![(key, Some(b"0".to_vec()))],
            ),
        }
    }

    fn batch(&mut self, conn: &mut Conn) -> io::Result<()> {
        let mut changes = BTreeMap::new();
        for _ in 0..self.rng.random_range(2..=4) {
            let key = self.some_key();
            let value = self.rng.random_bool(0.7).then(|| self.next_value());
            changes.insert(key, value);
        }
        let operations: Vec<_> = changes
            .iter()
            .map(|(key, value)| match value {
                Some(v) => json!({"op": "put", "key": key, "value": String::from_utf8_lossy(v)}),
                None => json!({"op": "delete", "key": key}),
            })
            .collect();
        let body = json!({ "operations": operations }).to_string();
        self.write(
            conn,
            ("POST", "/api/batch", body.as_bytes()),
            &[200],
            changes.into_iter().collect(),
        )
    }

    /// GETs a key and checks it against the model.
    fn get(&mut self, conn: &mut Conn) -> io::Result<()> {
        let key = self.some_key();
        let resp = self.send(conn, "GET", &kv_path(&key), b"")?;
        let got = match resp.status {
            200 => Some(resp.body),
            404 => None,
            other => return self.fail(format!("GET {key} answered {other}")),
        };
        self.tally.checked += 1;
        if got != self.held[&key] {
            let text = got.as_deref().map(String::from_utf8_lossy);
            return self.fail(format!("GET {key}: wrong value {text:?}"));
        }
        Ok(())
    }

    /// Lists the client's prefix (keys only) and checks the live keys.
    fn list(&mut self, conn: &mut Conn) -> io::Result<()> {
        let path = format!("/api/kv?prefix=c{}-&keys_only=true&limit=100", self.id);
        let resp = self.send(conn, "GET", &path, b"")?;
        if resp.status != 200 {
            return self.fail(format!("GET {path} answered {}", resp.status));
        }
        let doc: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
        let listed: Vec<String> = doc["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().or_else(|| k["key"].as_str()).map(str::to_owned))
            .filter(|k| !k.contains("-t"))
            .collect();
        let live: Vec<String> = self
            .held
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        self.tally.checked += 1;
        if listed != live {
            return self.fail(format!("GET {path}: listed {listed:?}, live {live:?}"));
        }
        Ok(())
    }

    /// Puts a TTL key with `?ttl=1`, or reads one back: its value before
    /// it can have expired, 404 after it must have (the PUT and the GET
    /// are each placed between their send and their answer).
    fn ttl(&mut self, conn: &mut Conn) -> io::Result<()> {
        let key = format!("c{}-t{}", self.id, self.rng.random_range(0..TTL_KEYS));
        let path = kv_path(&key);
        let reread = self.rng.random_bool(0.6);
        let Some((value, sent, answered)) = self.ttl.get(&key).cloned().filter(|_| reread) else {
            let value = self.next_value();
            let sent = Instant::now();
            let resp = self.send(conn, "PUT", &format!("{path}?ttl=1"), &value)?;
            if !matches!(resp.status, 200 | 201) {
                return self.fail(format!("PUT {path}?ttl=1 answered {}", resp.status));
            }
            self.ttl.insert(key, (value, sent, Instant::now()));
            return Ok(());
        };
        let get_sent = Instant::now();
        let resp = self.send(conn, "GET", &path, b"")?;
        let (get_answered, ttl) = (Instant::now(), Duration::from_secs(1));
        // Expiry lies between sent + ttl and answered + ttl (give or take
        // the clock's resolution).
        let slack = Duration::from_millis(20);
        let may_live = get_sent < answered + ttl + slack;
        let may_be_gone = get_answered + slack > sent + ttl;
        self.tally.checked += 1;
        match resp.status {
            200 if resp.body == value && may_live => Ok(()),
            404 if may_be_gone => Ok(()),
            status => self.fail(format!(
                "GET {path} {:?} after a put with ttl=1: {status}",
                get_sent - sent
            )),
        }
    }

    fn fail(&mut self, failure: String) -> io::Result<()> {
        self.failures.push(failure);
        Ok(())
    }

    /// After a restart: reads every key of the client and checks it holds
    /// its acknowledged value, or what the operation in flight wrote (all
    /// of a batch or none), then adopts what the node holds.
    pub fn resolve(&mut self, port: u16) -> io::Result<()> {
        let mut conn = Conn::try_open(port)?;
        let keys: Vec<String> = self.held.keys().cloned().collect();
        let mut observed = BTreeMap::new();
        for key in keys {
            let resp = self.send(&mut conn, "GET", &kv_path(&key), b"")?;
            let got = match resp.status {
                200 => Some(resp.body),
                404 => None,
                other => {
                    self.failures
                        .push(format!("GET {key} after restart answered {other}"));
                    continue;
                }
            };
            self.tally.checked += 1;
            observed.insert(key, got);
        }
        let in_flight = std::mem::take(&mut self.in_flight);
        let applied = |key: &String, new: &Held| observed.get(key) == Some(new);
        let kept = |key: &String| observed.get(key) == self.held.get(key);
        // Keys the in-flight operation would not change tell nothing.
        let telling: Vec<_> = in_flight
            .iter()
            .filter(|(k, new)| self.held.get(k) != Some(new))
            .collect();
        let all_applied = telling.iter().all(|(k, new)| applied(k, new));
        let none_applied = telling.iter().all(|(k, _)| kept(k));
        if !all_applied && !none_applied {
            self.failures.push(format!(
                "an operation in flight applied in part: {in_flight:?}"
            ));
        }
        for (key, got) in &observed {
            let expected = if all_applied && !none_applied {
                in_flight
                    .iter()
                    .find(|(k, _)| k == key)
                    .map_or(&self.held[key], |(_, new)| new)
            } else {
                &self.held[key]
            };
            if got != expected {
                let text = got.as_deref().map(String::from_utf8_lossy);
                let want = expected.as_deref().map(String::from_utf8_lossy);
                self.failures
                    .push(format!("{key} after restart: {text:?}, expected {want:?}"));
            }
        }
        self.held.extend(observed);
        self.ttl.clear();
        Ok(())
    }
}
