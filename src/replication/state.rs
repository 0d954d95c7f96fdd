//! A node's replication state: the epoch its log is in, the epochs it
//! closed before, whom it was promoted from, and the rule by which a primary
//! judges a follower's cursor.
//!
//! An [`Epoch`] is a stretch of history written by one primary, named by a
//! number (for order and display) and a random id (which makes it unique:
//! two nodes promoted apart never share one). The state lives in
//! `<data dir>/replication.json` ([`ReplicationState::load`],
//! [`ReplicationState::save`]); every closed epoch ([`ClosedEpoch`]) keeps
//! the last sequence number it wrote to this node's log. A follower's
//! cursor is its epoch and the last sequence it applied; the primary
//! answers it with a [`Verdict`] ([`ReplicationState::judge`]).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::store::layout::{private_file, sync_dir, REPLICATION_FILE, REPLICATION_TMP};

/// Closed epochs kept in the history; the oldest beyond are dropped.
const MAX_HISTORY: usize = 100;

/// Epoch ids stay below 2^53, so any JSON reader (JavaScript, jq) keeps
/// them exact.
const ID_MASK: u64 = (1 << 53) - 1;

/// An epoch: a stretch of history written by one primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    /// Its place in the order of epochs: one more than any this node knew
    /// of when the epoch began.
    pub number: u64,
    /// Random: with `number`, what names the epoch.
    pub id: u64,
}

impl Epoch {
    /// A new epoch numbered `number`, with a fresh random id.
    fn new(number: u64) -> Self {
        // The OS's generator does not fail where Lucid runs; should it, the
        // clock and the process id still tell this epoch from another of
        // the same number.
        let random = getrandom::u64()
            .unwrap_or_else(|_| crate::clock::now_ms() ^ (u64::from(std::process::id()) << 32));
        Self {
            number,
            id: random & ID_MASK,
        }
    }
}

/// `NUMBER.ID`, as in a stream's `epoch=` parameter.
impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.number, self.id)
    }
}

/// A text that is not an epoch as [`Epoch`]'s `Display` writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidEpoch;

impl fmt::Display for InvalidEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an epoch is written NUMBER.ID, two decimal numbers, e.g. 3.8812")
    }
}

impl std::error::Error for InvalidEpoch {}

impl FromStr for Epoch {
    type Err = InvalidEpoch;

    fn from_str(text: &str) -> Result<Self, InvalidEpoch> {
        let decimal = |digits: &str| {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidEpoch);
            }
            digits.parse().map_err(|_| InvalidEpoch)
        };
        let (number, id) = text.split_once('.').ok_or(InvalidEpoch)?;
        Ok(Self {
            number: decimal(number)?,
            id: decimal(id)?,
        })
    }
}

/// An epoch this node has left, and the last sequence number it wrote in
/// this node's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedEpoch {
    /// The epoch (its fields sit beside `end` in JSON).
    #[serde(flatten)]
    pub epoch: Epoch,
    /// The last sequence number of the epoch in this node's log.
    pub end: u64,
}

/// A node's replication state, as kept in `<data dir>/replication.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicationState {
    /// The epoch of the node's log; `None` for a node that never started
    /// as a primary nor followed one.
    pub epoch: Option<Epoch>,
    /// The epochs closed before, oldest first (at most 100).
    pub history: Vec<ClosedEpoch>,
    /// The URL of the primary this node followed until it was promoted.
    pub promoted_from: Option<String>,
}

/// What a primary does with a follower's cursor ([`ReplicationState::judge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Stream the log from the cursor on.
    Serve,
    /// The follower lacks what the log still holds (or is new): it must
    /// start again from a snapshot.
    Snapshot,
    /// The follower's log holds records this node's lineage does not (it
    /// went on after a failover, or wrote on its own): it must start again
    /// from a snapshot, and what it alone holds is lost.
    Diverged,
}

impl ReplicationState {
    /// Reads `<dir>/replication.json`; a missing file is a node that never
    /// replicated (the default state).
    pub fn load(dir: &Path) -> io::Result<Self> {
        let path = dir.join(REPLICATION_FILE);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(err) => {
                return Err(io::Error::new(
                    err.kind(),
                    format!(
                        "cannot read {}: {err}; it must be a file the node's user may read",
                        path.display()
                    ),
                ))
            }
        };
        let mut state: Self = serde_json::from_slice(&text).map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not a valid replication state ({err}): restore it from a backup, or \
                     delete it to start a new epoch history (a follower then copies its \
                     primary's store again, and the followers of a primary copy its store again)",
                    path.display()
                ),
            )
        })?;
        state.cap_history();
        Ok(state)
    }

    /// Writes `<dir>/replication.json` durably: a private file written
    /// aside, synced, renamed into place, the directory synced.
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        let path = dir.join(REPLICATION_FILE);
        let tmp = dir.join(REPLICATION_TMP);
        let write = || -> io::Result<()> {
            let mut file = private_file()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            file.write_all(&serde_json::to_vec_pretty(self)?)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(dir)
        };
        write().map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot write {}: {err}", path.display()),
            )
        })
    }

    /// A node starting as a primary with `last_sequence` the last in its
    /// log: closes the current epoch there and opens the next, so records
    /// written from now on never share an epoch and a sequence number with
    /// any it wrote (or lost in a power cut) before.
    pub fn start_as_primary(&mut self, last_sequence: u64) {
        self.open_next_epoch(last_sequence);
    }

    /// A follower that applied up to `last_applied` from `primary` becomes
    /// a primary: its epoch closes there and the next one, numbered above
    /// any it knows of, opens.
    pub fn promote(&mut self, last_applied: u64, primary: &str) {
        self.open_next_epoch(last_applied);
        self.promoted_from = Some(primary.to_owned());
    }

    /// A follower takes its primary's `epoch` and `history` (as the stream's
    /// hello sends them); it is no longer a promoted node.
    pub fn adopt(&mut self, epoch: Epoch, history: Vec<ClosedEpoch>) {
        self.epoch = Some(epoch);
        self.history = history;
        self.promoted_from = None;
        self.cap_history();
    }

    /// The primary's rule for a follower's cursor: its epoch (`None` for a
    /// new follower) and `after`, the last sequence it applied; given this
    /// node's `last_sequence` and its log's `base_sequence` (the log holds
    /// every record after it).
    ///
    /// A cursor in this node's current epoch, or in one of its closed
    /// epochs, is served if it is no further than that epoch reached here
    /// (else it diverged) and the log still holds what follows it (else it
    /// needs a snapshot). A new follower, or an empty one from an unknown
    /// epoch, needs a snapshot; a non-empty one from an unknown epoch
    /// diverged.
    pub fn judge(
        &self,
        cursor: Option<Epoch>,
        after: u64,
        last_sequence: u64,
        base_sequence: u64,
    ) -> Verdict {
        let Some(epoch) = cursor else {
            return Verdict::Snapshot;
        };
        let end = if self.epoch == Some(epoch) {
            last_sequence
        } else if let Some(closed) = self.history.iter().rev().find(|c| c.epoch == epoch) {
            closed.end
        } else if after == 0 {
            return Verdict::Snapshot;
        } else {
            return Verdict::Diverged;
        };
        if after > end {
            Verdict::Diverged
        } else if after < base_sequence {
            Verdict::Snapshot
        } else {
            Verdict::Serve
        }
    }

    /// Closes the current epoch, if any, at `end`, and opens one numbered
    /// above every epoch known.
    fn open_next_epoch(&mut self, end: u64) {
        let highest = self
            .history
            .iter()
            .map(|closed| closed.epoch)
            .chain(self.epoch)
            .map(|epoch| epoch.number)
            .max()
            .unwrap_or(0);
        if let Some(epoch) = self.epoch {
            self.history.push(ClosedEpoch { epoch, end });
            self.cap_history();
        }
        // This log holds nothing past `end` of any earlier epoch: a
        // primary's epoch adopted while this node lagged behind its end
        // ends here too, or a cursor beyond would be served what this
        // node writes next.
        for closed in &mut self.history {
            closed.end = closed.end.min(end);
        }
        self.epoch = Some(Epoch::new(highest.saturating_add(1)));
    }

    /// Drops the oldest closed epochs beyond [`MAX_HISTORY`].
    fn cap_history(&mut self) {
        let excess = self.history.len().saturating_sub(MAX_HISTORY);
        self.history.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::{Diverged, Serve, Snapshot};

    fn epoch(number: u64, id: u64) -> Epoch {
        Epoch { number, id }
    }

    fn closed(number: u64, id: u64, end: u64) -> ClosedEpoch {
        ClosedEpoch {
            epoch: epoch(number, id),
            end,
        }
    }

    /// A primary in epoch 3.30 whose log reached 2000, after epochs 1.10
    /// (ended at 1000) and 2.20 (ended at 1500).
    fn primary() -> ReplicationState {
        ReplicationState {
            epoch: Some(epoch(3, 30)),
            history: vec![closed(1, 10, 1000), closed(2, 20, 1500)],
            promoted_from: None,
        }
    }

    #[test]
    fn epochs_are_written_and_read_as_number_dot_id() {
        assert_eq!(epoch(3, 8812).to_string(), "3.8812");
        assert_eq!("3.8812".parse(), Ok(epoch(3, 8812)));
        let max = format!("{}.{}", u64::MAX, u64::MAX);
        assert_eq!(max.parse(), Ok(epoch(u64::MAX, u64::MAX)));
        for bad in [
            "",
            "3",
            "3.",
            ".3",
            "3.4.5",
            "+3.4",
            "3.-4",
            "3 .4",
            "a.b",
            "3.4x",
            "18446744073709551616.1",
        ] {
            assert_eq!(bad.parse::<Epoch>(), Err(InvalidEpoch), "{bad:?}");
        }
        assert!(InvalidEpoch.to_string().contains("NUMBER.ID"));
    }

    #[test]
    fn the_state_is_json_as_the_design_shows_it() {
        let mut state = primary();
        state.promoted_from = Some("http://old:7021".into());
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "epoch": {"number": 3, "id": 30},
                "history": [{"number": 1, "id": 10, "end": 1000}, {"number": 2, "id": 20, "end": 1500}],
                "promoted_from": "http://old:7021",
            })
        );
        assert_eq!(
            serde_json::from_value::<ReplicationState>(json).unwrap(),
            state
        );
    }

    /// The verdicts on `cursor` with each of `afters`, for a log that
    /// reached `last` and holds every record after `base`.
    fn judged(
        state: &ReplicationState,
        cursor: Option<Epoch>,
        afters: &[u64],
        (last, base): (u64, u64),
    ) -> Vec<Verdict> {
        let judge = |&after| state.judge(cursor, after, last, base);
        afters.iter().map(judge).collect()
    }

    #[test]
    fn a_node_promoted_behind_its_primary_never_serves_what_it_does_not_hold() {
        // The follower adopted a history in which epoch 1 ended at 1000,
        // but holds only up to 950 when promoted.
        let mut state = ReplicationState::default();
        state.adopt(
            epoch(2, 20),
            vec![ClosedEpoch {
                epoch: epoch(1, 10),
                end: 1000,
            }],
        );
        state.promote(950, "http://old:7021");
        assert!(state.history.iter().all(|closed| closed.end <= 950));
        // A follower at 980 of epoch 1 diverged: 951.. are this node's own.
        assert_eq!(
            judged(&state, Some(epoch(1, 10)), &[980, 950], (960, 0)),
            [Diverged, Serve]
        );
    }

    #[test]
    fn a_new_follower_gets_a_snapshot() {
        assert_eq!(
            judged(&primary(), None, &[0, 500], (2000, 0)),
            [Snapshot; 2]
        );
    }

    #[test]
    fn a_cursor_in_the_current_epoch_is_served_from_the_log() {
        let current = Some(epoch(3, 30));
        let afters = [1500, 1800, 2000, 2001, 1499];
        let verdicts = [Serve, Serve, Serve, Diverged, Snapshot];
        assert_eq!(judged(&primary(), current, &afters, (2000, 1500)), verdicts);
        // Ahead of the log and behind its base at once: ahead wins.
        assert_eq!(
            judged(&primary(), current, &[2001], (2000, 2100)),
            [Diverged]
        );
    }

    #[test]
    fn a_cursor_in_a_closed_epoch_is_judged_by_where_that_epoch_ended() {
        let state = primary();
        let second = Some(epoch(2, 20));
        let verdicts = [Serve, Serve, Diverged];
        assert_eq!(
            judged(&state, second, &[1500, 1200, 1501], (2000, 0)),
            verdicts
        );
        assert_eq!(judged(&state, second, &[1200], (2000, 1300)), [Snapshot]);
        let first = Some(epoch(1, 10));
        let verdicts = [Serve, Diverged];
        assert_eq!(judged(&state, first, &[1000, 1001], (2000, 0)), verdicts);
    }

    #[test]
    fn an_unknown_epoch_is_a_snapshot_when_empty_and_diverged_otherwise() {
        // Same number, another id: a node promoted apart.
        let stranger = Some(epoch(3, 31));
        let verdicts = [Snapshot, Diverged, Diverged];
        assert_eq!(
            judged(&primary(), stranger, &[0, 1, 1500], (2000, 0)),
            verdicts
        );
        let fresh = ReplicationState::default();
        assert_eq!(
            judged(&fresh, stranger, &[0, 5], (0, 0)),
            [Snapshot, Diverged]
        );
    }

    #[test]
    fn each_start_as_primary_opens_a_new_epoch() {
        let mut state = ReplicationState::default();
        state.start_as_primary(0);
        let first = state.epoch.unwrap();
        assert_eq!(first.number, 1);
        assert!(state.history.is_empty());
        state.start_as_primary(700);
        let second = state.epoch.unwrap();
        assert_eq!(second.number, 2);
        assert_ne!(second.id, first.id);
        assert!(second.id <= ID_MASK);
        state.start_as_primary(900);
        let third = state.epoch.unwrap();
        assert_eq!(third.number, 3);
        assert_ne!(third.id, second.id);
        let history = [
            ClosedEpoch {
                epoch: first,
                end: 700,
            },
            ClosedEpoch {
                epoch: second,
                end: 900,
            },
        ];
        assert_eq!(state.history, history);
        assert_eq!(state.promoted_from, None);
        // A cursor of the lost second epoch past where it ended here: diverged.
        assert_eq!(state.judge(Some(second), 901, 900, 0), Verdict::Diverged);
    }

    #[test]
    fn promotion_numbers_above_every_epoch_known() {
        let mut state = ReplicationState::default();
        state.adopt(epoch(4, 40), vec![closed(2, 20, 100), closed(9, 90, 300)]);
        state.promote(350, "http://pi-1.local:7021");
        let promoted = state.epoch.unwrap();
        assert_eq!(promoted.number, 10);
        assert_ne!(promoted.id, 40);
        assert_eq!(state.history.last(), Some(&closed(4, 40, 350)));
        assert_eq!(state.history.len(), 3);
        assert_eq!(
            state.promoted_from.as_deref(),
            Some("http://pi-1.local:7021")
        );
        // Its old primary's followers, at or behind 350, are served by it.
        assert_eq!(state.judge(Some(epoch(4, 40)), 350, 400, 0), Verdict::Serve);
    }

    #[test]
    fn a_follower_adopts_its_primarys_epoch_and_history() {
        let mut state = primary();
        state.promoted_from = Some("http://old:7021".into());
        let history = vec![closed(5, 50, 10)];
        state.adopt(epoch(6, 60), history.clone());
        assert_eq!(state.epoch, Some(epoch(6, 60)));
        assert_eq!(state.history, history);
        assert_eq!(state.promoted_from, None);
    }

    #[test]
    fn the_history_keeps_the_newest_hundred() {
        let mut state = ReplicationState::default();
        // Epoch n is closed at sequence n: 105 closed, the oldest 5 dropped.
        for end in 0..=MAX_HISTORY as u64 + 5 {
            state.start_as_primary(end);
        }
        assert_eq!(state.history.len(), MAX_HISTORY);
        assert_eq!(state.history[0].epoch.number, 6);
        assert_eq!(state.history[0].end, 6);
        assert_eq!(state.history[MAX_HISTORY - 1].end, MAX_HISTORY as u64 + 5);
        assert_eq!(state.epoch.unwrap().number, MAX_HISTORY as u64 + 6);
        let long: Vec<ClosedEpoch> = (1..=150).map(|n| closed(n, n, n)).collect();
        state.adopt(epoch(151, 1), long.clone());
        assert_eq!(state.history, long[50..]);
    }

    #[test]
    fn the_state_survives_a_save_and_a_load() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ReplicationState::load(dir.path()).unwrap(),
            ReplicationState::default()
        );
        let mut state = primary();
        state.save(dir.path()).unwrap();
        assert_eq!(ReplicationState::load(dir.path()).unwrap(), state);
        state.promote(2000, "http://old:7021");
        state.save(dir.path()).unwrap();
        assert_eq!(ReplicationState::load(dir.path()).unwrap(), state);
        assert!(!dir.path().join(REPLICATION_TMP).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = fs::metadata(dir.path().join(REPLICATION_FILE)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn a_damaged_or_unreadable_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(REPLICATION_FILE);
        for damaged in [
            "{\"epoch\":{\"number\":3",
            "not json",
            "{\"epoch\":\"3.30\"}",
        ] {
            fs::write(&path, damaged).unwrap();
            let err = ReplicationState::load(dir.path()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{damaged}");
            let message = err.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("delete it"), "{message}");
        }
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        let message = ReplicationState::load(dir.path()).unwrap_err().to_string();
        assert!(message.contains("cannot read"), "{message}");
        assert!(message.contains(REPLICATION_FILE), "{message}");
    }

    #[test]
    fn a_failed_save_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let message = primary().save(&missing).unwrap_err().to_string();
        assert!(message.contains("cannot write"), "{message}");
        assert!(message.contains(REPLICATION_FILE), "{message}");
    }
}
