//! A follower's side of replication: the thread that follows the primary
//! (bootstrapping from its snapshot, then applying its log as it streams
//! in), and the thread that makes what was applied durable and confirms it
//! to the primary, which also notices a silent primary.
//!
//! Every failure (the primary unreachable, a token refused, a primary that
//! is itself a follower, a stream cut mid-record, a record failing its
//! check, garbage) is logged once per change of reason and retried with a
//! growing backoff (0.1 s to 10 s); nothing is applied that was not
//! checked. When the primary says it can no longer serve this node's
//! position (compacted away, or a new epoch this node's log diverged from),
//! the follower takes a new snapshot, serving its old data (flagged
//! `stale`) until the new copy is complete and switched to in one step. A
//! log that diverged is set aside first (`data.log.diverged-<epoch>`,
//! never deleted). A primary asking for a new snapshot right after one is
//! backed off like a failure, so a follower never loops on full copies.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::PrimaryClient;
use super::protocol::{Frame, FrameReader, Hello, MAX_RECORDS};
use super::state::{Epoch, ReplicationState};
use super::Shared;
use crate::clock::now_ms;
use crate::locks::lock;
use crate::store::replica::{ReplicaBuffers, SentRecords};
use crate::store::snapshot;

/// How long the stream may stay silent (the primary sends a heartbeat
/// every second) before the follower drops it and connects again.
const SILENCE: Duration = Duration::from_secs(5);

/// How long an ack may take.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The first and the longest pause between two attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

/// Why a follower's work ended: it was promoted.
const STOPPED: &str = "this node stopped following (promoted)";

/// At most this many (sequence number, time heard) pairs kept to tell the
/// lag in milliseconds.
const LAG_MARKS: usize = 256;

/// A new snapshot asked for within this long of the last one counts as a
/// failure (backed off), not as progress.
const RESYNC_QUIET: Duration = Duration::from_secs(30);

/// Where the follower stands (`GET /api/admin/replication`, `/health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FollowState {
    /// Connecting to the primary (or waiting to try again).
    Connecting,
    /// Downloading and installing the primary's snapshot; the old data is
    /// served meanwhile.
    Snapshotting,
    /// Streaming the primary's log.
    Following,
    /// Stopped: the node was promoted.
    Stopped,
}

/// The follower's figures.
#[derive(Debug, Clone, Serialize)]
pub struct FollowerStatus {
    /// The primary's URL.
    pub primary: String,
    /// Where the follower stands.
    pub state: FollowState,
    /// The last sequence number applied here.
    pub applied: u64,
    /// The last sequence number confirmed durable to the primary.
    pub acknowledged: u64,
    /// The primary's last sequence number, as last heard.
    pub primary_sequence: u64,
    /// Records the primary has that this node has not applied.
    pub lag_records: u64,
    /// How long ago the primary had the oldest record not applied here, in
    /// ms, as this node heard of it (0: caught up).
    pub lag_ms: u64,
    /// When the last frame came from the primary (ms since the epoch; 0:
    /// never).
    pub last_contact_ms: u64,
    /// The last error, if any since the stream last worked.
    pub last_error: Option<String>,
    /// Snapshots taken from the primary since the start.
    pub resyncs: u64,
    /// Records applied since the start.
    pub applied_records: u64,
}

/// What the following thread and the acknowledging thread share.
pub struct Follower {
    primary: String,
    client: PrimaryClient,
    node: String,
    max_payload: usize,
    status: Mutex<Progress>,
    /// Signalled when something was applied or the follower stops.
    applied: Condvar,
    stop: AtomicBool,
    /// Held while records are applied or a snapshot installed: promotion
    /// takes it to know none is under way.
    applying: Mutex<()>,
    /// The stream's client, to cut a silent or stopped stream.
    stream: Mutex<Option<ureq::Agent>>,
}

/// The status, and what the acknowledging thread works from.
struct Progress {
    status: FollowerStatus,
    /// The primary's id for the current stream.
    stream: Option<u64>,
    /// Sequence numbers the primary had that this node has not applied,
    /// and when it heard of them, oldest first (a few, see `heard`).
    behind: VecDeque<(u64, Instant)>,
    last_contact: Option<Instant>,
}

impl Follower {
    /// A follower of `primary`, asking it through `client`, named `node`,
    /// accepting records up to `max_value_bytes` long.
    pub fn new(primary: &str, client: PrimaryClient, node: &str, max_value_bytes: usize) -> Self {
        Self {
            primary: primary.to_owned(),
            client,
            node: node.to_owned(),
            max_payload: MAX_RECORDS + 2 * max_value_bytes + 64 * 1024,
            status: Mutex::new(Progress {
                status: FollowerStatus {
                    primary: primary.to_owned(),
                    state: FollowState::Connecting,
                    applied: 0,
                    acknowledged: 0,
                    primary_sequence: 0,
                    lag_records: 0,
                    lag_ms: 0,
                    last_contact_ms: 0,
                    last_error: None,
                    resyncs: 0,
                    applied_records: 0,
                },
                stream: None,
                behind: VecDeque::new(),
                last_contact: None,
            }),
            applied: Condvar::new(),
            stop: AtomicBool::new(false),
            applying: Mutex::new(()),
            stream: Mutex::new(None),
        }
    }

    /// The primary's URL.
    pub fn primary(&self) -> &str {
        &self.primary
    }

    /// The figures now.
    pub fn status(&self) -> FollowerStatus {
        let progress = self.progress();
        let mut status = progress.status.clone();
        status.lag_records = status.primary_sequence.saturating_sub(status.applied);
        status.lag_ms = progress
            .behind
            .front()
            .map_or(0, |(_, since)| since.elapsed().as_millis() as u64);
        status
    }

    /// Whether the copy here is current: following, and heard from the
    /// primary lately.
    pub fn is_current(&self) -> bool {
        let progress = self.progress();
        progress.status.state == FollowState::Following
            && progress
                .last_contact
                .is_some_and(|at| at.elapsed() < SILENCE)
    }

    /// Starts the following and the acknowledging threads.
    pub fn spawn(self: &Arc<Self>, shared: &Arc<Shared>) -> io::Result<()> {
        let (follower, shared_) = (Arc::clone(self), Arc::clone(shared));
        thread::Builder::new()
            .name("lucid-follower".into())
            .spawn(move || follower.follow(&shared_))?;
        let (follower, shared) = (Arc::clone(self), Arc::clone(shared));
        thread::Builder::new()
            .name("lucid-follower-ack".into())
            .spawn(move || follower.acknowledge(&shared))?;
        Ok(())
    }

    /// Stops following for good: cuts the stream, waits for any apply or
    /// install under way, and returns with none running and none to come.
    pub fn stop(&self) -> MutexGuard<'_, ()> {
        self.stop.store(true, Ordering::SeqCst);
        self.cut_stream();
        self.applied.notify_all();
        let applying = lock(&self.applying);
        self.progress().status.state = FollowState::Stopped;
        applying
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The following thread: connects, follows, and on failure backs off.
    fn follow(&self, shared: &Shared) {
        let mut backoff = BACKOFF.0;
        let mut last_resync: Option<Instant> = None;
        let mut last_reason = String::new();
        while !self.stopped() {
            let started = Instant::now();
            let outcome = self.follow_once(shared);
            if self.stopped() {
                break;
            }
            let failure = match outcome {
                Ok(Ended::Cut) => None,
                Ok(Ended::Resync(_))
                    if last_resync.is_some_and(|at| at.elapsed() < RESYNC_QUIET) =>
                {
                    Some(format!(
                        "the primary asked for a new snapshot again less than {} s after the \
                         last one: backing off (is the primary compacting faster than a snapshot \
                         installs, or was it restored?)",
                        RESYNC_QUIET.as_secs()
                    ))
                }
                Ok(Ended::Resync(diverged)) => match self.bootstrap(shared, diverged) {
                    Ok(()) => {
                        last_resync = Some(Instant::now());
                        backoff = BACKOFF.0;
                        None
                    }
                    Err(err) => Some(err),
                },
                Err(err) => Some(err),
            };
            let began = {
                let mut progress = self.progress();
                let began = progress.stream.take().is_some();
                if progress.status.state != FollowState::Stopped {
                    progress.status.state = FollowState::Connecting;
                }
                progress.status.last_error.clone_from(&failure);
                began
            };
            // A stream that worked starts the backoff over, and a failure
            // after it is news again.
            if began {
                backoff = BACKOFF.0;
                last_reason.clear();
            }
            match failure {
                Some(reason) if reason != last_reason => {
                    log::warn!(
                        "replication from {}: {reason}; retrying (backoff up to {} s)",
                        self.primary,
                        BACKOFF.1.as_secs()
                    );
                    last_reason = reason;
                }
                Some(_) => {}
                // A stream that lasted connects again at once; one cut
                // right away waits like a failure, so as not to hammer.
                None if started.elapsed() >= Duration::from_secs(1) => continue,
                None => {}
            }
            self.pause(backoff);
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    /// Sleeps `period`, or less if the follower stops.
    fn pause(&self, period: Duration) {
        let progress = self.progress();
        let _ = self
            .applied
            .wait_timeout_while(progress, period, |_| !self.stopped());
    }

    /// One connection to the primary: streams its log until it ends.
    fn follow_once(&self, shared: &Shared) -> Result<Ended, String> {
        let epoch = shared.state().epoch;
        if epoch.is_none() && shared.store.last_sequence() > 0 {
            // Data of unknown lineage (a node that never followed nor led
            // with this version, or a snapshot install cut short).
            return Ok(Ended::Resync(true));
        }
        let after = shared.store.last_sequence();
        let url = format!("{}/api/replication/stream", self.primary);
        let (after, epoch) = (after.to_string(), epoch.map(|e| e.to_string()));
        let mut query = vec![("after", after.as_str()), ("node", self.node.as_str())];
        query.extend(epoch.as_deref().map(|epoch| ("epoch", epoch)));
        let agent = self.stream_agent()?;
        let response = self.client.get(&agent, &url, &query)?;
        let status = response.status().as_u16();
        let body = response.into_body();
        if status != 200 {
            let answer = answer_of(body);
            if let Some(key_check) = answer["key_check"].as_u64() {
                // Told before a snapshot is downloaded for nothing.
                same_key(key_check as u32, shared.store.key_check())?;
            }
            return refusal(status, &answer, &self.primary);
        }
        let mut reader = FrameReader::new(body.into_reader(), self.max_payload);
        let hello = match reader.read_frame() {
            Ok(Some(Frame::Hello(hello))) => hello,
            Ok(_) => return Err("the primary's stream did not begin with a hello".into()),
            Err(err) => return Err(format!("the stream broke: {err}")),
        };
        self.begin(shared, &hello)?;
        let mut buffers = ReplicaBuffers::default();
        loop {
            let frame = match reader.read_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(Ended::Cut),
                Err(_) if self.stopped() => return Ok(Ended::Cut),
                Err(err) => return Err(format!("the stream broke: {err}")),
            };
            self.contact();
            match frame {
                Frame::Records {
                    file_id,
                    offset,
                    after,
                    primary_last,
                    bytes,
                } => {
                    let sent = SentRecords {
                        file_id,
                        offset,
                        bytes,
                    };
                    self.apply(shared, after, sent, primary_last, &mut buffers)?;
                }
                Frame::Heartbeat { last_sequence, .. } => self.heard(last_sequence),
                Frame::Hello(_) => return Err("the primary sent a second hello".into()),
            }
        }
    }

    /// Takes in the stream's hello: checks the key, adopts the primary's
    /// epoch (kept durably before any of its records is applied), and
    /// confirms what this node holds.
    fn begin(&self, shared: &Shared, hello: &Hello) -> Result<(), String> {
        same_key(hello.key_check, shared.store.key_check())?;
        self.while_following(|| shared.adopt(hello.epoch, &hello.history))?;
        let applied = shared.store.last_sequence();
        let mut progress = self.progress();
        progress.stream = Some(hello.stream);
        progress.status.state = FollowState::Following;
        progress.status.applied = applied;
        progress.status.last_error = None;
        drop(progress);
        self.heard(hello.last_sequence);
        self.applied.notify_all();
        log::info!(
            "following {} ({}), epoch {}, from sequence number {applied}",
            self.primary,
            hello.node,
            hello.epoch
        );
        Ok(())
    }

    /// Applies records sent after sequence number `after`.
    fn apply(
        &self,
        shared: &Shared,
        after: u64,
        sent: SentRecords<'_>,
        primary_last: u64,
        buffers: &mut ReplicaBuffers,
    ) -> Result<(), String> {
        let _applying = lock(&self.applying);
        if self.stopped() {
            return Err(STOPPED.into());
        }
        let last = shared.store.last_sequence();
        if after != last {
            return Err(format!(
                "the primary sent records following sequence number {after}, but this node's \
                 last is {last}: a gap, so the stream was dropped"
            ));
        }
        let applied = shared.store.apply_replicated(sent, buffers);
        let now_last = shared.store.last_sequence();
        {
            let mut progress = self.progress();
            let status = &mut progress.status;
            status.applied_records += now_last - last;
            status.applied = now_last;
        }
        self.heard(primary_last);
        self.applied.notify_all();
        applied
            .map(drop)
            .map_err(|err| format!("a record could not be applied: {err}"))
    }

    /// Downloads the primary's snapshot and switches to it (see the module
    /// documentation); a `diverged` log is set aside first.
    fn bootstrap(&self, shared: &Shared, diverged: bool) -> Result<(), String> {
        let store = &shared.store;
        let state = shared.state();
        if diverged && store.last_sequence() > 0 {
            let label = state
                .epoch
                .map_or_else(|| "unknown".into(), |e| e.to_string());
            let aside = store
                .set_log_aside(&label)
                .map_err(|err| format!("cannot set the diverged log aside: {err}"))?;
            log::warn!(
                "this node's log holds writes the primary {} never had (it diverged, e.g. after \
                 a failover): it was set aside as {aside} (never deleted) and the primary's \
                 snapshot is taken instead",
                self.primary
            );
        }
        // Until the new log is in place and its epoch recorded, this node's
        // lineage is unknown: a crash meanwhile starts over from a snapshot.
        self.while_following(|| {
            shared.record(ReplicationState {
                epoch: None,
                history: Vec::new(),
                promoted_from: None,
            })
        })?;
        self.progress().status.state = FollowState::Snapshotting;
        let path = store
            .replica_snapshot_path()
            .ok_or("the store has no data directory")?;
        let started = Instant::now();
        let epoch = self.download(&path)?;
        let installed = self.while_following(|| {
            let info = store
                .install_snapshot(&path)
                .map_err(|err| format!("the primary's snapshot: {err}"))?;
            shared.adopt(epoch, &[])?;
            Ok(info)
        });
        let _ = std::fs::remove_file(&path);
        let info = installed?;
        let mut progress = self.progress();
        progress.status.resyncs += 1;
        progress.status.applied = info.sequence;
        drop(progress);
        log::info!(
            "took the primary's snapshot: {} keys, {} bytes, up to sequence number {} ({:.1} s)",
            info.keys,
            info.bytes,
            info.sequence,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Saves the primary's snapshot to `path` (checked whole) and returns
    /// the epoch it was taken in.
    fn download(&self, path: &std::path::Path) -> Result<Epoch, String> {
        let url = format!("{}/api/admin/snapshot", self.primary);
        let agent = self.stream_agent()?;
        let response = self.client.get(&agent, &url, &[])?;
        let status = response.status().as_u16();
        let epoch = response
            .headers()
            .get(super::EPOCH_HEADER)
            .and_then(|value| value.to_str().ok()?.parse::<Epoch>().ok());
        let body = response.into_body();
        if status != 200 {
            return refusal(status, &answer_of(body), &self.primary).and(Err(format!(
                "{} answered {status} to the snapshot's download",
                self.primary
            )));
        }
        let epoch = epoch.ok_or("the primary's snapshot came without its epoch")?;
        // Every read is contact: a download that goes silent is cut like a
        // stream (a primary that lost power halfway), and taken again.
        self.contact();
        let mut reader = Heard {
            follower: self,
            inner: body.into_reader(),
        };
        snapshot::save(path, |out| {
            io::copy(&mut reader, out)?;
            Ok(())
        })
        .map_err(|err| format!("the primary's snapshot could not be saved: {err}"))?;
        Ok(epoch)
    }

    /// The acknowledging thread: makes what was applied durable and
    /// confirms it to the primary; cuts a stream silent for too long.
    fn acknowledge(&self, shared: &Shared) {
        let agent = self.client.agent(Some(ACK_TIMEOUT));
        // What was made durable here, and what the current stream was told.
        let mut synced = 0;
        let mut confirmed: Option<(u64, u64)> = None;
        while !self.stopped() {
            let (stream, applied) = {
                let progress = self.progress();
                let (progress, _) = self
                    .applied
                    .wait_timeout_while(progress, Duration::from_secs(1), |p| {
                        let told = p
                            .stream
                            .is_none_or(|stream| confirmed == Some((stream, synced)));
                        !self.stopped() && p.status.applied <= synced && told
                    })
                    .unwrap_or_else(|e| e.into_inner());
                let live =
                    progress.stream.is_some() || progress.status.state == FollowState::Snapshotting;
                if live
                    && progress
                        .last_contact
                        .is_some_and(|at| at.elapsed() > SILENCE)
                {
                    drop(progress);
                    self.cut_stream();
                    continue;
                }
                (progress.stream, progress.status.applied)
            };
            // A log replaced by a snapshot may end before what was synced:
            // nothing above its end is ever confirmed.
            synced = synced.min(shared.store.last_sequence());
            // Records applied are made durable (and visible, with `sync:
            // always`) whether or not their stream still runs.
            if applied > synced {
                if let Err(err) = shared.store.sync_replicated(applied) {
                    log::error!("replication: cannot make applied records durable: {err}");
                    self.pause(BACKOFF.1);
                    continue;
                }
                synced = applied;
            }
            let Some(stream) = stream else { continue };
            if confirmed == Some((stream, synced)) {
                continue;
            }
            let url = format!(
                "{}/api/replication/ack?stream={stream}&durable={synced}",
                self.primary
            );
            match self.client.post(&agent, &url) {
                Ok(response) if response.status() == 200 => {
                    confirmed = Some((stream, synced));
                    let mut progress = self.progress();
                    progress.status.acknowledged = progress.status.acknowledged.max(synced);
                }
                Ok(response) => {
                    log::debug!(
                        "replication: the primary answered {} to an ack",
                        response.status()
                    );
                    self.pause(BACKOFF.0);
                }
                Err(err) => {
                    log::debug!("replication: cannot confirm to the primary: {err}");
                    self.pause(BACKOFF.0);
                }
            }
        }
    }

    /// A client for one stream (or download), kept so it can be cut;
    /// none once the follower stopped.
    fn stream_agent(&self) -> Result<ureq::Agent, String> {
        let mut current = lock(&self.stream);
        if self.stopped() {
            return Err(STOPPED.into());
        }
        let agent = self.client.agent(None);
        *current = Some(agent.clone());
        Ok(agent)
    }

    /// Runs `change` (of the log or the epochs) unless the follower
    /// stopped: never while a promotion takes over, never after it.
    fn while_following<T>(&self, change: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        let _applying = lock(&self.applying);
        if self.stopped() {
            return Err(STOPPED.into());
        }
        change()
    }

    /// Cuts the current stream or download, if any.
    fn cut_stream(&self) {
        if let Some(agent) = lock(&self.stream).take() {
            agent.shutdown();
        }
    }

    fn contact(&self) {
        let mut progress = self.progress();
        progress.last_contact = Some(Instant::now());
        progress.status.last_contact_ms = now_ms();
    }

    /// Notes the primary's last sequence number, and what this node
    /// applied since: the lag is the age of the oldest sequence number
    /// heard of and not applied. A bounded list: past `LAG_MARKS` entries
    /// the newest one stands for the ones heard after it (the lag then
    /// reads a little high, never low).
    fn heard(&self, primary_sequence: u64) {
        let mut progress = self.progress();
        let Progress { status, behind, .. } = &mut *progress;
        status.primary_sequence = status.primary_sequence.max(primary_sequence);
        while behind
            .front()
            .is_some_and(|&(seq, _)| seq <= status.applied)
        {
            behind.pop_front();
        }
        let newer = behind.back().map_or(status.applied, |&(seq, _)| seq);
        if status.primary_sequence > newer {
            let full = behind.len() >= LAG_MARKS;
            match behind.back_mut() {
                Some(last) if full => last.0 = status.primary_sequence,
                _ => behind.push_back((status.primary_sequence, Instant::now())),
            }
        }
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        lock(&self.status)
    }
}

/// A download's reader that notes each read as contact with the primary.
struct Heard<'f, R> {
    follower: &'f Follower,
    inner: R,
}

impl<R: io::Read> io::Read for Heard<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.follower.contact();
        Ok(read)
    }
}

/// How a stream that worked ended.
enum Ended {
    /// The connection ended.
    Cut,
    /// The primary wants this node to start over from a snapshot; `true`
    /// if its log diverged.
    Resync(bool),
}

/// What a refusal of the stream (`status`, JSON `answer`) means.
fn refusal(status: u16, answer: &serde_json::Value, primary: &str) -> Result<Ended, String> {
    let message = answer["message"].as_str().unwrap_or("no message");
    match status {
        410 => Ok(Ended::Resync(answer["resync"] == "diverged")),
        409 => Err(format!(
            "{primary} is not a primary ({message}); chains of followers are not supported: \
             point replication.primary at the primary"
        )),
        401 => Err(format!(
            "{primary} refused the token as invalid or expired (401): make a new one there \
             (lucid tokens issue --scope replicate) and put it in replication.token"
        )),
        403 => Err(format!(
            "{primary} refused the token (403: {message}): replication.token needs the \
             `replicate` scope (lucid tokens issue --scope replicate)"
        )),
        _ => Err(format!("{primary} answered {status}: {message}")),
    }
}

/// The JSON of a refusal's body (`Null` if it is not JSON).
fn answer_of(mut body: ureq::Body) -> serde_json::Value {
    let text = body
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_default()
}

/// Whether this node's log (key check `own`) can hold its primary's
/// records (`primary`'s): the same key, or neither encrypted.
fn same_key(primary: u32, own: u32) -> Result<(), String> {
    let encrypted = |check: u32| {
        if check == 0 {
            "not encrypted"
        } else {
            "encrypted"
        }
    };
    match (primary, own) {
        _ if primary == own => Ok(()),
        (0, _) | (_, 0) => Err(format!(
            "the primary's data is {} and this node's is {}: a follower needs the primary's key \
             file (encryption.key_file), or neither encrypted",
            encrypted(primary),
            encrypted(own)
        )),
        _ => Err(
            "the primary's data is encrypted with another key than this node's: a follower \
             needs the primary's key file (encryption.key_file)"
                .into(),
        ),
    }
}
