//! Replication: followers that keep a live copy of a primary by tailing its
//! log, writes acknowledged once stored on enough followers, and promotion
//! of a follower by hand. No consensus: failover is an operator's decision.
//!
//! * [`state`]: a node's epochs, kept in its data directory, and the rule
//!   by which a primary judges a follower's cursor (an epoch and a
//!   sequence number);
//! * [`protocol`]: the stream's frames;
//! * [`primary`]: the followers connected to a primary, what
//!   `replication.min_acks` waits for, and the stream that sends each its
//!   log;
//! * [`follower`]: the threads of a follower;
//! * [`client`]: how a follower asks its primary (over https too).
//!
//! [`Replication`] is the node's role and what the HTTP API asks of it.
//! `docs/REPLICATION.md` tells the whole design.

pub mod client;
pub mod follower;
pub mod primary;
pub mod protocol;
pub mod state;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{json, Value};

use crate::config;
use crate::locks::{lock, read, write};
use crate::store::tail::LogTail;
use crate::store::{spawn_expiry_sweeper, Store};
use client::PrimaryClient;
use follower::Follower;
use primary::{Followers, Registered};
use protocol::Hello;
use state::{ClosedEpoch, Epoch, ReplicationState, Verdict};

/// Response header naming the epoch a snapshot was taken in (`NUMBER.ID`).
pub const EPOCH_HEADER: &str = "Lucid-Epoch";

/// What the node's replication parts share: the store, and its epochs.
pub struct Shared {
    /// The store.
    pub store: Arc<Store>,
    dir: PathBuf,
    state: Mutex<ReplicationState>,
}

impl Shared {
    /// The epochs now.
    pub fn state(&self) -> ReplicationState {
        lock(&self.state).clone()
    }

    /// Keeps `state` durably, then as the node's.
    fn record(&self, state: ReplicationState) -> Result<(), String> {
        let mut current = lock(&self.state);
        self.save(&state)?;
        *current = state;
        Ok(())
    }

    /// Takes the primary's `epoch` and `history` (kept durably first), if
    /// they are new.
    fn adopt(&self, epoch: Epoch, history: &[ClosedEpoch]) -> Result<(), String> {
        let mut current = lock(&self.state);
        if current.epoch == Some(epoch) && current.history == history {
            return Ok(());
        }
        let mut next = current.clone();
        next.adopt(epoch, history.to_vec());
        self.save(&next)?;
        *current = next;
        Ok(())
    }

    fn save(&self, state: &ReplicationState) -> Result<(), String> {
        state.save(&self.dir).map_err(|err| {
            format!("cannot keep the replication state (its epochs) in the data directory: {err}")
        })
    }
}

/// The node's role.
enum Role {
    /// Accepts writes; followers may connect.
    Primary,
    /// A read-only copy of another node.
    Follower(Arc<Follower>),
}

/// Why a write is refused before anything is written.
pub enum WriteRefusal {
    /// This node is a follower of this primary (a 307 to it).
    Follower(String),
    /// Too few followers to confirm it (a 503 saying so).
    TooFewFollowers(String),
}

/// A cursor's fate on this primary (`GET /api/replication/stream`).
pub enum StreamStart {
    /// Stream from there.
    Serve(Box<ServedStream>),
    /// This node is a follower itself: chains are refused.
    NotPrimary(String),
    /// The follower must start over from a snapshot (`true`: it diverged).
    Resync(bool, String),
}

/// A stream accepted: the log to read, the hello to send, the follower's
/// place among those connected.
pub struct ServedStream {
    /// The log from the cursor on.
    pub tail: LogTail,
    /// The first frame.
    pub hello: Hello,
    /// The follower's place, held while the stream lasts.
    pub registered: Registered,
}

/// What `/metrics` shows of replication.
pub struct ReplicationFigures {
    /// The epoch's number.
    pub epoch: u64,
    /// The last sequence number in the log.
    pub sequence: u64,
    /// On a follower, its figures.
    pub follower: Option<follower::FollowerStatus>,
    /// On a primary, its followers.
    pub followers: Vec<primary::FollowerInfo>,
    /// On a primary, writes answered 504.
    pub ack_timeouts: u64,
}

/// The node's replication: its role, epochs and followers.
pub struct Replication {
    shared: Arc<Shared>,
    role: RwLock<Role>,
    followers: Arc<Followers>,
    node: String,
    /// Set when the node stops: streams end.
    stopping: AtomicBool,
}

impl Replication {
    /// Starts replication as `config` says, over `store` in data directory
    /// `dir`: a follower of `config.primary` (its threads started), or a
    /// primary that opens a new epoch (and starts the expiry sweep). A
    /// promoted node whose config still names the primary it left stays a
    /// primary (and says so).
    pub fn start(
        store: &Arc<Store>,
        dir: PathBuf,
        config: &config::Replication,
        node: &str,
        max_value_bytes: usize,
    ) -> Result<Arc<Self>, String> {
        let state = ReplicationState::load(&dir).map_err(|err| err.to_string())?;
        let shared = Arc::new(Shared {
            store: Arc::clone(store),
            dir,
            state: Mutex::new(state.clone()),
        });
        let followers = Arc::new(Followers::new(
            config.min_acks,
            Duration::from_millis(config.ack_timeout_ms),
        ));
        let primary = match (&config.primary, &state.promoted_from) {
            (Some(primary), Some(left)) if primary == left => {
                log::warn!(
                    "this node was promoted and no longer follows {primary}: remove \
                     replication.primary from its config (it stays a primary until then, and \
                     follows again only a primary named otherwise)"
                );
                None
            }
            (primary, _) => primary.clone(),
        };
        let client = PrimaryClient::new(config)?;
        let role = match primary {
            Some(primary) => {
                let follower = Arc::new(Follower::new(&primary, client, node, max_value_bytes));
                follower
                    .spawn(&shared)
                    .map_err(|err| format!("cannot start the follower's threads: {err}"))?;
                Role::Follower(follower)
            }
            None => {
                let mut next = state;
                next.start_as_primary(store.last_sequence());
                shared.record(next)?;
                Self::lead(store, &followers);
                Role::Primary
            }
        };
        Ok(Arc::new(Self {
            shared,
            role: RwLock::new(role),
            followers,
            node: node.to_owned(),
            stopping: AtomicBool::new(false),
        }))
    }

    /// What a node does as a primary: sweeps expired keys, and with
    /// `min_acks` makes writes wait for followers.
    fn lead(store: &Arc<Store>, followers: &Arc<Followers>) {
        spawn_expiry_sweeper(store);
        if followers.min_acks() > 0 {
            store.require_follower_acks(Arc::clone(followers) as _);
        }
    }

    /// The follower's primary, if this node is a follower.
    pub fn primary(&self) -> Option<String> {
        match &*read(&self.role) {
            Role::Follower(follower) => Some(follower.primary().to_owned()),
            Role::Primary => None,
        }
    }

    /// Why a write must be refused now, if it must.
    pub fn write_refusal(&self) -> Option<WriteRefusal> {
        if let Some(primary) = self.primary() {
            return Some(WriteRefusal::Follower(primary));
        }
        self.followers.refusal().map(WriteRefusal::TooFewFollowers)
    }

    /// Judges a follower's cursor (`epoch` and `after`) and, if it can be
    /// served, registers the follower `node` at `address`.
    pub fn start_stream(
        &self,
        epoch: Option<Epoch>,
        after: u64,
        node: &str,
        address: &str,
    ) -> StreamStart {
        if let Some(primary) = self.primary() {
            return StreamStart::NotPrimary(format!(
                "This node is a follower of {primary}; followers do not serve followers: point \
                 replication.primary at the primary."
            ));
        }
        let store = &self.shared.store;
        let state = self.shared.state();
        let (last, base) = store.log_position();
        let verdict = state.judge(epoch, after, last, base);
        let resync = |diverged, why: &str| StreamStart::Resync(diverged, why.to_owned());
        match verdict {
            Verdict::Diverged => {
                return resync(
                    true,
                    "Your log holds writes this primary's history does not: set it aside and \
                     start over from a snapshot.",
                )
            }
            Verdict::Snapshot => {
                return resync(
                    false,
                    "This primary's log no longer holds every change after your position (or \
                     you are new): start from a snapshot.",
                )
            }
            Verdict::Serve => {}
        }
        let tail = match store.tail_after(after) {
            Ok(tail) => tail,
            Err(err) => return resync(false, &format!("{err}: start from a snapshot.")),
        };
        let registered = self.followers.register(node, address, after);
        let hello = Hello {
            stream: registered.stream(),
            node: self.node.clone(),
            epoch: state.epoch.expect("a primary has an epoch"),
            history: state.history,
            key_check: store.key_check(),
            last_sequence: tail.log_sequence(),
        };
        StreamStart::Serve(Box::new(ServedStream {
            tail,
            hello,
            registered,
        }))
    }

    /// Notes a follower's confirmation; `false` if no such stream.
    pub fn acknowledge(&self, stream: u64, durable: u64) -> bool {
        self.followers.acknowledge(stream, durable)
    }

    /// The current epoch.
    pub fn epoch(&self) -> Option<Epoch> {
        self.shared.state().epoch
    }

    /// Set when the node stops; streams watch it.
    pub fn stopping(&self) -> &AtomicBool {
        &self.stopping
    }

    /// Ends every stream (the node is stopping).
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Promotes this follower: it stops following (nothing more is applied
    /// once this returns), makes what it applied durable, opens a new epoch
    /// and accepts writes. Returns the new epoch, or why not.
    pub fn promote(&self) -> Result<Epoch, String> {
        let following = match &*read(&self.role) {
            Role::Follower(follower) => Arc::clone(follower),
            Role::Primary => {
                return Err(
                    "This node is a primary already: only a follower can be promoted.".into(),
                )
            }
        };
        // Stopped before the role is locked: an install under way ends
        // first, while reads and /health go on.
        let _stopped = following.stop();
        let mut role = write(&self.role);
        let follower = match &*role {
            Role::Follower(follower) => Arc::clone(follower),
            Role::Primary => return Err("This node was promoted meanwhile.".into()),
        };
        let store = &self.shared.store;
        let last = store.last_sequence();
        store
            .sync_replicated(last)
            .map_err(|err| format!("cannot make the applied records durable: {err}"))?;
        let mut next = self.shared.state();
        next.promote(last, follower.primary());
        self.shared.record(next)?;
        let primary = follower.primary().to_owned();
        *role = Role::Primary;
        Self::lead(store, &self.followers);
        let epoch = self.epoch().expect("a promoted node has an epoch");
        log::warn!(
            "PROMOTED: this node no longer follows {primary} and accepts writes in epoch {epoch} \
             (from sequence number {last} on). Remove replication.primary from its config; \
             point other followers here"
        );
        Ok(epoch)
    }

    /// `GET /api/admin/replication`.
    pub fn status(&self) -> Value {
        let store = &self.shared.store;
        let mut status = json!({
            "node": self.node,
            "epoch": self.epoch().map(|e| e.to_string()),
            "sequence": store.last_sequence(),
        });
        match &*read(&self.role) {
            Role::Primary => {
                let last = store.last_sequence();
                let followers: Vec<Value> = self
                    .followers
                    .list()
                    .into_iter()
                    .map(|f| {
                        let lag = last.saturating_sub(f.durable);
                        let mut entry = serde_json::to_value(f).unwrap_or_default();
                        entry["lag_records"] = lag.into();
                        entry
                    })
                    .collect();
                status["role"] = "primary".into();
                status["min_acks"] = self.followers.min_acks().into();
                status["ack_timeouts"] = self.followers.timeouts().into();
                status["followers"] = followers.into();
            }
            Role::Follower(follower) => {
                status["role"] = "follower".into();
                status["follower"] = serde_json::to_value(follower.status()).unwrap_or_default();
            }
        }
        status
    }

    /// The `replication` object of `/health` on a follower: `following`
    /// (current) or `stale`, with the lag.
    pub fn health(&self) -> Option<Value> {
        let Role::Follower(follower) = &*read(&self.role) else {
            return None;
        };
        let status = follower.status();
        Some(json!({
            "state": if follower.is_current() { "following" } else { "stale" },
            "primary": status.primary,
            "lag_records": status.lag_records,
            "lag_ms": status.lag_ms,
            "last_error": status.last_error,
        }))
    }

    /// The figures `/metrics` shows (`lucid_replication_*`).
    pub fn figures(&self) -> ReplicationFigures {
        let role = read(&self.role);
        let (follower, followers) = match &*role {
            Role::Follower(follower) => (Some(follower.status()), Vec::new()),
            Role::Primary => (None, self.followers.list()),
        };
        ReplicationFigures {
            epoch: self.epoch().map_or(0, |e| e.number),
            sequence: self.shared.store.last_sequence(),
            follower,
            followers,
            ack_timeouts: self.followers.timeouts(),
        }
    }
}
