//! Durability and group commit: when a write may be acknowledged.
//!
//! Every write returns a [`Ticket`]: the sequence number it must see
//! durable before it is acknowledged (with `sync: interval` and `never` a
//! write is acknowledged once appended, and its ticket is settled at once).
//! [`Store::wait_for`] waits on a ticket: it is the one place an
//! acknowledgement waits for, durable here and, on a primary with
//! `replication.min_acks`, stored by enough followers ([`FollowerAcks`]).
//!
//! # Group commit (`sync: always`)
//!
//! An appended record waits in the writer's `pending` list until an
//! fdatasync covers it. Whoever waits on a ticket runs the group's
//! fdatasync if nobody else is; writers that arrive while a sync is running
//! are covered by the next one, so 64 concurrent writers share a handful of
//! syncs. Only after the sync are the records published to the index and
//! the change feed (`Store::publish`): readers never see a value that a
//! power cut could still take back.
//!
//! Rather than have every writer wait on its own thread, a server hands its
//! held replies to an [`Acknowledger`]: one thread waits for the group's
//! fsync and then answers every write it covered, in one pass. A lone
//! write syncs on its own thread, without the hand-over.
//!
//! In every mode the caller is answered only after the record is in the
//! file, so killing the process never loses an acknowledged write.
//!
//! # Sync markers
//!
//! After each fdatasync of the log that covered new bytes (group commit,
//! the `interval` thread, close), a sync marker naming the durable end is
//! appended (`Store::mark_durable`); recovery uses markers to tell an
//! unsynced tail from damaged durable data (see `scan.rs`).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::Duration;

use super::append::index_record;
use super::{Store, StoreError, SyncMode, Writer};
use crate::clock::now_ms;
use crate::locks::{lock, write};
use crate::store::file::LogFile;
use crate::store::record::{Marker, Position};

/// What a write must see durable before it is acknowledged: the sequence
/// number of its last record (or, for a write that changed nothing, of the
/// latest record it could have seen). Wait on it with [`Store::wait_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[must_use = "a write may be acknowledged only once its ticket is durable (Store::wait_for)"]
pub struct Ticket {
    /// 0: nothing to wait for.
    sequence: u64,
}

impl Ticket {
    /// A ticket with nothing to wait for.
    pub const SETTLED: Self = Self { sequence: 0 };

    /// Whether there is nothing to wait for, known without asking the store.
    pub fn is_settled(self) -> bool {
        self.sequence == 0
    }
}

/// The followers' side of an acknowledgement, on a primary whose writes
/// must be stored by some followers before they are acknowledged
/// (`replication.min_acks`): installed once with [`Store::require_follower_acks`].
pub trait FollowerAcks: Send + Sync {
    /// Blocks until enough followers have made every record up to
    /// `sequence` durable; fails with [`StoreError::NotReplicated`] when
    /// they have not within the configured time.
    fn wait(&self, sequence: u64) -> Result<(), StoreError>;
    /// The highest sequence number enough followers have made durable.
    fn acknowledged(&self) -> u64;
}

/// The group-commit role held by compaction (see [`Store::exclusive_sync`]).
pub(in crate::store) struct ExclusiveSync<'a> {
    /// The store whose group commit is held (read by [`super::Paused`]).
    pub(super) store: &'a Store,
    durable: Option<u64>,
}

impl ExclusiveSync<'_> {
    /// Gives the role back, with every record up to sequence number
    /// `durable` now durable.
    pub(super) fn release(mut self, durable: u64) {
        self.durable = Some(durable);
    }
}

impl Drop for ExclusiveSync<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.store.commit);
        state.syncing = false;
        if let Some(sequence) = self.durable {
            state.durable_sequence = sequence;
        }
        self.store.commit_done.notify_all();
    }
}

impl Store {
    /// The ticket of a write whose last record has sequence number
    /// `sequence`: settled unless the sync mode makes acknowledgements wait
    /// for an fdatasync.
    pub(in crate::store) fn ticket(&self, sequence: u64) -> Ticket {
        if self.sync == SyncMode::Always || self.follower_acks.get().is_some() {
            Ticket { sequence }
        } else {
            Ticket::SETTLED
        }
    }

    /// From now on, a write is acknowledged only once `followers` say they
    /// stored it too (a primary with `replication.min_acks`). Installed
    /// once; a second call is ignored.
    pub fn require_follower_acks(&self, followers: Arc<dyn FollowerAcks>) {
        let _ = self.follower_acks.set(followers);
    }

    /// Whether an acknowledgement waits for an fdatasync here: with `sync:
    /// always`, and on a primary whose writes followers must confirm (a
    /// write is then durable here and on them, whatever the sync mode).
    fn waits_for_durability(&self) -> bool {
        self.sync == SyncMode::Always || self.waits_for_followers()
    }

    /// Whether writes wait for followers' confirmations.
    fn waits_for_followers(&self) -> bool {
        self.follower_acks.get().is_some()
    }

    /// Whether the write holding `ticket` may be acknowledged already.
    fn is_acknowledged(&self, ticket: Ticket) -> bool {
        let durable = !self.waits_for_durability() || ticket.sequence <= self.durable_sequence();
        let replicated = self
            .follower_acks
            .get()
            .is_none_or(|followers| ticket.sequence <= followers.acknowledged());
        ticket.is_settled() || (durable && replicated)
    }

    /// The highest sequence number that may be acknowledged: durable, and
    /// stored by enough followers where they are required.
    fn acknowledged_through(&self) -> u64 {
        let durable = self.durable_sequence();
        match self.follower_acks.get() {
            Some(followers) => durable.min(followers.acknowledged()),
            None => durable,
        }
    }

    /// Blocks until the write holding `ticket` may be acknowledged: until
    /// it is durable, running the group's fdatasync if nobody else is.
    /// Fails with [`StoreError::ReadOnly`] if an fsync failed first: the
    /// write's fate is then unknown. Every acknowledgement waits here (or
    /// in an [`Acknowledger`], which waits here), and on a primary with
    /// [`FollowerAcks`] also for enough followers to have stored the write
    /// ([`StoreError::NotReplicated`] if they do not in time).
    pub fn wait_for(&self, ticket: Ticket) -> Result<(), StoreError> {
        if ticket.is_settled() {
            return Ok(());
        }
        if self.waits_for_durability() {
            self.wait_durable(ticket.sequence)?;
        }
        match self.follower_acks.get() {
            Some(followers) => followers.wait(ticket.sequence),
            None => Ok(()),
        }
    }

    /// Starts the thread of `sync: interval`, syncing the log every
    /// `period` until the store is dropped or turns read-only.
    pub(super) fn sync_periodically(self: &Arc<Self>, period: Duration) {
        let weak = Arc::downgrade(self);
        thread::Builder::new()
            .name("lucid-sync".into())
            .spawn(move || sync_every(&weak, period))
            .expect("spawn the sync thread");
    }

    /// Every write up to this sequence number is durable (and visible).
    fn durable_sequence(&self) -> u64 {
        lock(&self.commit).durable_sequence
    }

    /// Whether a group commit's fdatasync is running.
    fn is_syncing(&self) -> bool {
        lock(&self.commit).syncing
    }

    /// Blocks until the record with this sequence number is durable,
    /// running the group's fdatasync if nobody else is. Fails with
    /// [`StoreError::ReadOnly`] if an fsync failed first.
    pub(super) fn wait_durable(&self, sequence: u64) -> Result<(), StoreError> {
        let mut state = lock(&self.commit);
        loop {
            if state.durable_sequence >= sequence {
                return Ok(());
            }
            if self.is_read_only() {
                return Err(StoreError::ReadOnly);
            }
            if state.syncing {
                state = self
                    .commit_done
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
                continue;
            }
            state.syncing = true;
            drop(state);
            let synced = self.sync_and_publish();
            state = lock(&self.commit);
            state.syncing = false;
            if let Some(synced) = synced {
                state.durable_sequence = state.durable_sequence.max(synced);
            }
            self.commit_done.notify_all();
        }
    }

    /// Syncs everything appended so far and publishes the pending records it
    /// covers. Returns the last durable sequence number, or `None` if the
    /// sync failed.
    fn sync_and_publish(&self) -> Option<u64> {
        let (file, target, end) = {
            let writer = lock(&self.writer);
            (
                Arc::clone(&writer.file),
                writer.next_sequence - 1,
                writer.end,
            )
        };
        if let Err(err) = self.sync_log(&*file) {
            self.enter_read_only(&format!("fdatasync of the log failed: {err}"));
            return None;
        }
        let mut writer = lock(&self.writer);
        self.publish(&mut writer, target);
        self.mark_durable(&mut writer, end);
        Some(target)
    }

    /// The periodic fdatasync of `sync: interval`: syncs what was appended
    /// and marks it durable.
    pub(in crate::store) fn sync_appended(&self) -> io::Result<()> {
        let (file, end) = {
            let writer = lock(&self.writer);
            (Arc::clone(&writer.file), writer.end)
        };
        self.sync_log(&*file)?;
        let mut writer = lock(&self.writer);
        // Compaction may have switched files meanwhile; its new log needs
        // no marker for what it holds (see `Writer::marked_end`).
        if Arc::ptr_eq(&writer.file, &file) {
            self.mark_durable(&mut writer, end);
        }
        Ok(())
    }

    /// After an fdatasync of the log that began when the log ended at
    /// `durable_end`, appends a sync marker saying every byte before it is
    /// durable (see [`crate::store::record`]), unless no byte after the last
    /// marker was synced: an idle store does not grow its log. A failed
    /// append is cut back like any; the sync it describes still stands.
    fn mark_durable(&self, writer: &mut Writer, durable_end: u64) {
        if durable_end <= writer.marked_end || self.is_read_only() {
            return;
        }
        let at = Position {
            file_id: writer.header.file_id,
            offset: writer.end,
        };
        let marker = Marker::encode(durable_end, now_ms(), at);
        if self.append_sealed(writer, &marker, at).is_ok() {
            writer.marked_end = writer.end;
        }
    }

    /// fdatasyncs the log, counting the call and its time for metrics.
    pub(super) fn sync_log(&self, file: &dyn LogFile) -> io::Result<()> {
        let started = std::time::Instant::now();
        let result = file.sync();
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        result
    }

    /// Moves the pending records up to sequence number `durable` into the
    /// index.
    pub(super) fn publish(&self, writer: &mut Writer, durable: u64) {
        let mut keydir = write(&self.keydir);
        for pending in writer.pending.take_through(durable) {
            index_record(&mut keydir.index, &pending.key, pending.location);
            self.events.publish(pending.event);
        }
    }

    /// Clean shutdown: waits for a running compaction, makes every write
    /// durable (whatever the sync mode) and writes the hint file, so the next
    /// start is fast. A read-only store (after a failed fsync) does neither:
    /// the next start reads and verifies the whole log.
    pub fn close(&self) -> io::Result<()> {
        // A compaction still running finishes first: both write the hint.
        let _no_compaction = lock(&self.compaction);
        if !self.is_read_only() {
            let durable = self.sync_and_publish().ok_or_else(|| {
                io::Error::other("the final fsync failed; the node is now read-only")
            })?;
            let mut state = lock(&self.commit);
            state.durable_sequence = state.durable_sequence.max(durable);
        }
        self.write_hint()
    }

    /// Waits until no group sync runs and keeps others from starting, so
    /// compaction can switch files under the group's feet. The role is given
    /// back when the guard is dropped, also by a panic.
    pub(super) fn exclusive_sync(&self) -> ExclusiveSync<'_> {
        let mut state = lock(&self.commit);
        while state.syncing {
            state = self
                .commit_done
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        state.syncing = true;
        ExclusiveSync {
            store: self,
            durable: None,
        }
    }
}

/// The thread of `sync: interval`: syncs the log every `period` until the
/// store is dropped or turns read-only.
fn sync_every(store: &Weak<Store>, period: Duration) {
    loop {
        thread::sleep(period);
        let Some(store) = store.upgrade() else { return };
        if store.is_read_only() {
            return;
        }
        if let Err(err) = store.sync_appended() {
            store.enter_read_only(&format!("periodic fdatasync of the log failed: {err}"));
            return;
        }
    }
}

/// Held items (replies to writes, for a server) answered once their
/// tickets are durable: one thread ([`run`](Self::run)) waits for a whole
/// group's fsync and answers it in one pass.
pub struct Acknowledger<T> {
    queue: Mutex<Queue<T>>,
    /// Signalled when an item is held or the acknowledger is closed.
    changed: Condvar,
}

struct Queue<T> {
    held: Vec<(Ticket, T)>,
    closed: bool,
}

impl<T> Default for Acknowledger<T> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Queue {
                held: Vec::new(),
                closed: false,
            }),
            changed: Condvar::new(),
        }
    }
}

impl<T> Acknowledger<T> {
    /// Hands `item`, the answer to a write with `ticket`, over to the
    /// acknowledging thread, unless the caller had better answer it now:
    /// then returns it with the write's fate. That is when the ticket is
    /// durable already, when the write is the only one waiting (it syncs
    /// on the caller's thread: no hand-over to wait for), and once the
    /// acknowledger is closed (the caller waits itself).
    pub fn submit(
        &self,
        store: &Store,
        ticket: Ticket,
        item: T,
    ) -> Option<(T, Result<(), StoreError>)> {
        if store.is_acknowledged(ticket) {
            return Some((item, Ok(())));
        }
        // Followers' confirmations are waited for on the acknowledging
        // thread only: a follower slow to confirm never holds a request slot.
        let alone = self.is_idle() && !store.is_syncing() && !store.waits_for_followers();
        let item = if alone {
            item
        } else {
            self.hold(ticket, item)?.1
        };
        Some((item, store.wait_for(ticket)))
    }

    /// Holds `item` until `ticket` is durable, or hands both back once the
    /// acknowledger is closed.
    pub fn hold(&self, ticket: Ticket, item: T) -> Option<(Ticket, T)> {
        let mut queue = self.lock();
        if queue.closed {
            return Some((ticket, item));
        }
        queue.held.push((ticket, item));
        drop(queue);
        self.changed.notify_one();
        None
    }

    /// Whether nothing is held.
    pub fn is_idle(&self) -> bool {
        self.lock().held.is_empty()
    }

    /// Answers held items as their tickets become durable, each group after
    /// one wait, until [`close`](Self::close) is called and nothing is held
    /// any more. `answer` gets each item with its write's fate: if the
    /// fsync failed, every write it was to cover fails with the store's
    /// error ([`StoreError::ReadOnly`]), never succeeds.
    pub fn run(&self, store: &Store, mut answer: impl FnMut(T, Result<(), StoreError>)) {
        let mut group = Vec::new();
        loop {
            {
                let mut queue = self.lock();
                while queue.held.is_empty() {
                    if queue.closed {
                        return;
                    }
                    queue = self.changed.wait(queue).unwrap_or_else(|e| e.into_inner());
                }
                // The emptied group's buffer goes back for the next one.
                std::mem::swap(&mut group, &mut queue.held);
            }
            let last = group
                .iter()
                .map(|(ticket, _)| *ticket)
                .max()
                .unwrap_or(Ticket::SETTLED);
            // It fails when an fsync failed and the store turned read-only,
            // or when followers did not confirm in time; writes covered
            // before that still succeeded.
            let (acknowledged, failure) = match store.wait_for(last) {
                Ok(()) => (last.sequence, None),
                Err(err) => (store.acknowledged_through(), Some(err)),
            };
            for (ticket, item) in group.drain(..) {
                let fate = match &failure {
                    Some(err) if ticket.sequence > acknowledged => Err(err.again()),
                    _ => Ok(()),
                };
                answer(item, fate);
            }
        }
    }

    /// Makes [`run`](Self::run) return once every held item is answered.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{fresh_store, put_unsynced, MemFile};
    use crate::store::Expect;
    use crate::store::{Change, Mutation};

    #[test]
    fn a_write_that_changes_nothing_waits_for_what_it_saw() {
        let (file, store) = fresh_store(MemFile::with_bytes, SyncMode::Always);
        file.hold_syncs();
        let put = put_unsynced(&store, "k", b"v", Expect::Any).unwrap();
        // Persist of a key without expiry writes nothing, but answers from a
        // record not yet durable: it waits for that record too.
        let persist = Mutation::Change {
            key: b"k",
            change: Change::Persist,
            expect: Expect::Any,
        };
        let unchanged = store.apply(persist, &mut Vec::new()).unwrap();
        assert_eq!(unchanged.ticket, put.ticket);
        file.release_syncs();
        store.wait_for(unchanged.ticket).unwrap();
    }

    #[test]
    fn the_acknowledger_answers_a_group_after_one_fsync_and_fails_it_if_the_fsync_fails() {
        let (file, store) = fresh_store(MemFile::with_bytes, SyncMode::Always);
        let mut answered = Vec::new();
        for round in 0..2 {
            let acknowledger = Acknowledger::default();
            let syncs = file.syncs.load(std::sync::atomic::Ordering::SeqCst);
            if round == 1 {
                file.fail_syncs(1);
            }
            for key in ["a", "b", "c"] {
                let ticket = put_unsynced(&store, key, b"v", Expect::Any).unwrap().ticket;
                assert!(acknowledger.hold(ticket, (round, key)).is_none());
            }
            acknowledger.close();
            acknowledger.run(&store, |item, fate| answered.push((item, fate.is_ok())));
            let expected =
                [(round, "a"), (round, "b"), (round, "c")].map(|item| (item, round == 0));
            assert_eq!(std::mem::take(&mut answered), expected);
            if round == 0 {
                let synced = file.syncs.load(std::sync::atomic::Ordering::SeqCst) - syncs;
                assert_eq!(synced, 1, "one fsync for the group");
            }
        }
        assert!(store.is_read_only());
        // A settled ticket is answered at once, by its caller.
        let answer = Acknowledger::default().submit(&store, Ticket::SETTLED, "now");
        assert!(matches!(answer, Some(("now", Ok(())))));
    }
}
