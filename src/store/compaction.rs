//! Compaction: rewriting the log with only its live records.
//!
//! # Steps
//!
//! 1. **Cut.** Note the end of the log, or the first record still waiting
//!    for its group's fsync (it is not in the index yet). Records before the
//!    cut are copied selectively; records after it (the *tail*) are copied
//!    verbatim later.
//! 2. **Copy.** Map the old log (memmap2), a window at a time (each
//!    dropped from memory once copied), and write every record before the
//!    cut that the index still points at to `data.log.compact`, in log
//!    order (so a newer version is never overwritten by an older one). Each
//!    record is verified at its old position (CRC) and stamped for its new
//!    one. Damage is never copied, and never stops the compaction: the
//!    damaged stretch, up to the next valid record, is left out, and every
//!    key the index still points into it gets a quarantined record in its
//!    place (see [`super::record`]), holding the damaged bytes, so the key
//!    keeps answering an error (never a value, never "missing") until a
//!    write or delete replaces it, and is marked damaged in the index at the
//!    switch. The index is the authority on which records are live: it was
//!    built before the disk damaged them (from the hint file, or while the
//!    records were written). Records
//!    dead when the copy began are skipped by offset, unopened. The others
//!    are checked by key against the index; an encrypted record keeping
//!    its encryption key then moves unopened (only its key is decrypted
//!    for that check), with a new place tag (see [`super::crypt`]), while
//!    batch members and records changing encryption key are opened and
//!    sealed afresh. The copy also notes where
//!    each index entry below the cut went (the plan), so the pause need not
//!    sort the index. Reads and writes go on meanwhile.
//! 3. **Catch up.** Copy the tail as far as it was written by now, again
//!    and again while more than `CAUGHT_UP_BYTES` arrived meanwhile, and
//!    **sync** the new file. Writes go on meanwhile. The tail is read
//!    `COPY_WINDOW` bytes at a time (a longer record alone), so its size
//!    does not matter. Damage in the tail, written by this very process
//!    since the cut, stops the compaction (`CompactionError::Corrupt`),
//!    changing nothing. If writers outpace `MAX_CATCH_UP_ROUNDS` rounds,
//!    the compaction stops, changing nothing, rather than pause them long.
//! 4. **Switch**, with writers paused: if more than `MAX_PAUSE_COPY`
//!    arrived since step 3, writers go on and step 3 resumes; else copy
//!    the rest of the tail (what was written during step 3), fsync, compute every index entry's new
//!    offset (one walk of the index along the plan), rename the new file
//!    over `data.log`, fsync the directory, then point the index and the
//!    writer at the new file (readers pause only for that last, in-memory
//!    step, which the engine owns: `Paused::install_compacted`). Once the
//!    rename is done the in-memory switch always follows; if the directory
//!    fsync failed, the store then turns read-only.
//!
//! Compaction sees the store only through `CompactionAccess` (see
//! [`super::engine`]): the cut, the log's end, the index to read, the
//! pause, and that one install.
//!
//! Tombstones before the cut are dropped: the new log holds no older record
//! of any key for them to hide. Tombstones in the tail are kept. The new
//! file's header carries the last sequence number issued, so sequence
//! numbers never go back even when the newest records were dropped.
//!
//! Sync markers (see [`super::record`]) are not live data: those before the
//! cut are dropped. Those in the tail are kept, restamped for their new
//! place and naming the same bytes there (anything before the part of the
//! tail being copied names that part's start), so the tail keeps its
//! layout; the new log is fsynced whole before it is used, so every such
//! claim is true. The new log's own
//! durability is recorded by the hint file written after the switch.
//!
//! # Crash safety
//!
//! Until the rename, `data.log` is the untouched old log and
//! `data.log.compact` a leftover that [`open`](super::directory::open)
//! deletes. The new file is complete and fsynced before the rename, and the
//! rename is atomic, so after a crash at any point `data.log` is either the
//! old log or the new one, and both hold every acknowledged write and no
//! deleted key.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memmap2::{Mmap, UncheckedAdvice};

use super::crypt::{open_copy, stored_form, Cipher};
use super::engine::{CompactedLog, CompactionAccess, Installed, LogCut, Paused, Store};
use super::file::{DiskFile, LogFile};
use super::index::{Index, Location};
use super::layout::{is_set_aside, private_file, sync_dir, COMPACT_FILE, HINT_FILE, LOG_FILE};
use super::record::{
    members, verify, FileHeader, FrameBuilder, Marker, Position, RecordBuilder, RecordHeader,
    RecordKind, RecordView, ENVELOPE_OVERHEAD, FILE_HEADER_LEN, RECORD_HEADER_LEN,
};
use super::scan::next_valid;
use super::stats::LastCompaction;
use super::stats::StoreStats;
use super::tail::{first_record_after, TailError};
use crate::clock::now_ms;

/// At most this many rounds of copying the tail before writers are paused;
/// writers that outpace them stop the compaction (see [`OUTPACED`]).
const MAX_CATCH_UP_ROUNDS: usize = 64;

/// A tail this short is left for the pause to copy.
const CAUGHT_UP_BYTES: u64 = 1024 * 1024;

/// The most the pause copies: if more arrived while it began, writers run
/// again and the catch-up goes on.
const MAX_PAUSE_COPY: u64 = 4 * CAUGHT_UP_BYTES;

/// Why a compaction stops when writers outpace its catch-up.
const OUTPACED: &str = "writes arrived faster than compaction could copy them, so it stopped \
    rather than pause writers for long; nothing was changed and it will be tried again";

/// How much of the old log the copy reads (or maps) at once: its memory
/// use, beside the longest record.
const COPY_WINDOW: usize = 1024 * 1024;

/// When the background compactor runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactionPolicy {
    /// Compact when dead bytes are more than this share of the log...
    pub dead_ratio: f64,
    /// ...and at least this many.
    pub min_dead_bytes: u64,
    /// Also compact this long after the last compaction (or the start).
    pub interval: Option<Duration>,
}

impl CompactionPolicy {
    /// Whether a log with these stats is due for compaction, `since_last`
    /// after the previous one.
    pub fn is_due(&self, stats: &StoreStats, since_last: Duration) -> bool {
        let garbage = stats.dead_bytes >= self.min_dead_bytes
            && stats.dead_bytes as f64 > self.dead_ratio * stats.log_bytes as f64;
        let scheduled = self.interval.is_some_and(|every| since_last >= every);
        !stats.read_only && (garbage || scheduled)
    }
}

/// Runs compactions in the background according to `policy`, checking once
/// a second, until the store is dropped. Dead bytes a compaction had to
/// keep (changes held for the MQTT bridge, see [`super::engine::retention`])
/// do not count towards the next one, so a hold never makes the log be
/// rewritten again and again for nothing.
pub fn spawn_compactor(store: &Arc<Store>, policy: CompactionPolicy) {
    let store = Arc::downgrade(store);
    let spawned = std::thread::Builder::new()
        .name("lucid-compactor".into())
        .spawn(move || {
            let mut last = Instant::now();
            let mut kept_dead = 0;
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let Some(store) = store.upgrade() else { return };
                let mut stats = store.stats();
                stats.dead_bytes = stats.dead_bytes.saturating_sub(kept_dead);
                if !policy.is_due(&stats, last.elapsed()) {
                    continue;
                }
                last = Instant::now();
                match store.compact() {
                    Ok(report) => {
                        kept_dead = store.stats().dead_bytes;
                        log::info!("background compaction: {report}");
                    }
                    Err(CompactionError::Busy) => {}
                    Err(err) => log::error!("background compaction failed: {err}"),
                }
            }
        });
    if let Err(err) = spawned {
        log::error!("cannot start the background compactor: {err}");
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionReport {
    /// Log size before.
    pub bytes_before: u64,
    /// Log size after.
    pub bytes_after: u64,
    /// Live keys in the new log.
    pub live_keys: usize,
    /// Total time taken.
    pub duration: Duration,
    /// How long writers were paused for the switch.
    pub writers_paused: Duration,
}

impl std::fmt::Display for CompactionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} bytes, {} live keys, {:.1} ms (writers paused {:.1} ms)",
            self.bytes_before,
            self.bytes_after,
            self.live_keys,
            self.duration.as_secs_f64() * 1000.0,
            self.writers_paused.as_secs_f64() * 1000.0
        )
    }
}

/// Why a compaction did not happen.
#[derive(Debug)]
pub enum CompactionError {
    /// Another compaction is running.
    Busy,
    /// The store has no data directory (an in-memory test store), or is read-only.
    Unavailable(&'static str),
    /// The part of the old log written during the compaction has a damaged
    /// record at this offset; nothing was changed. (Damage before the cut
    /// is left out and quarantined instead.)
    Corrupt(u64),
    /// The filesystem failed; the old log is still in place.
    Io(io::Error),
    /// The new log is in place, but the directory fsync after the rename
    /// failed, so the switch may not survive a power cut: the store turned
    /// read-only.
    DirSync(io::Error),
    /// Encrypting the store would leave these plaintext copies of data
    /// beside it (torn tails, logs set aside by repair).
    PlaintextLeftovers(Vec<String>),
}

impl std::error::Error for CompactionError {}

impl std::fmt::Display for CompactionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Busy => f.write_str("a compaction is already running"),
            Self::Unavailable(why) => f.write_str(why),
            Self::Corrupt(offset) => write!(
                f,
                "the log has a damaged record at offset {offset}; compaction stopped without \
                 changing anything. Run `lucid check`"
            ),
            Self::Io(err) => write!(f, "compaction failed, the old log is unchanged: {err}"),
            Self::DirSync(err) => write!(
                f,
                "compaction switched to the new log, but syncing the data directory failed \
                 ({err}); the node is now read-only. Check the disk (dmesg, free space), \
                 then restart the node"
            ),
            Self::PlaintextLeftovers(files) => write!(
                f,
                "the data directory holds unencrypted copies of data ({}); move them off the \
                 card or delete them, then encrypt again. Nothing was changed",
                files.join(", ")
            ),
        }
    }
}

impl From<io::Error> for CompactionError {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

/// Points of a compaction where tests simulate a crash (see `reached`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The new file exists, nothing copied yet.
    Started,
    /// Live records copied, the new file not yet synced.
    Copied,
    /// Group commit held, writers not yet paused.
    Switching,
    /// The new file complete with its tail and synced, not yet renamed.
    Synced,
    /// Renamed over `data.log`, the directory not yet synced.
    Renamed,
    /// Directory synced, the in-memory switch not yet done.
    DirSynced,
}

/// A test's callback for compaction steps (see [`reached`]).
#[cfg(test)]
pub(super) type StepHook = Box<dyn FnMut(Step) + Send>;

impl Store {
    /// Compacts the log (see the module documentation).
    pub fn compact(&self) -> Result<CompactionReport, CompactionError> {
        self.compact_with(self.cipher())
    }

    /// Compacts the log into a new one encrypted with `cipher` (plain with
    /// `None`): key rotation, or encrypting or decrypting a store. Changing
    /// the encryption needs a node with no writes in flight (run it with
    /// the server stopped: `lucid compact --new-key-file`).
    pub fn compact_with(
        &self,
        cipher: Option<Arc<Cipher>>,
    ) -> Result<CompactionReport, CompactionError> {
        let Some(dir) = self.data_dir() else {
            return Err(CompactionError::Unavailable(
                "this store has no data directory",
            ));
        };
        let Some(access) = self.compaction_access() else {
            return Err(CompactionError::Busy);
        };
        if self.is_read_only() {
            return Err(CompactionError::Unavailable(
                "the node is read-only after a disk failure",
            ));
        }
        if cipher.is_some() && self.cipher().is_none() {
            refuse_plaintext_leftovers(dir)?;
        }
        let tmp_path = dir.join(COMPACT_FILE);
        let job = Job {
            access: &access,
            dir,
            tmp_path: &tmp_path,
            cut: retained_cut(&access)?,
            new_cipher: cipher,
        };
        let result = job.run();
        match &result {
            Ok(report) => access.note_compaction(LastCompaction {
                finished_at_ms: now_ms(),
                duration_ms: report.duration.as_millis() as u64,
                writers_paused_ms: report.writers_paused.as_millis() as u64,
                bytes_before: report.bytes_before,
                bytes_after: report.bytes_after,
            }),
            // Never leave a half-written new log behind (open would remove
            // it anyway); the old log was not touched.
            Err(_) => {
                let _ = fs::remove_file(&tmp_path);
            }
        }
        result
    }
}

/// Where to cut the log: its end (see [`CompactionAccess::cut`]), or
/// earlier, at the first change after a hold on the log's changes (see
/// [`super::engine::retention`]), so that every change held is copied as
/// it is. The new log's base sequence is then the hold's: it holds every
/// change after it.
fn retained_cut(access: &CompactionAccess<'_>) -> Result<LogCut, CompactionError> {
    let mut cut = access.cut();
    let Some(held) = access.changes_held_after() else {
        return Ok(cut);
    };
    // What the log no longer holds cannot be held: the new log's base is
    // never below the old one's.
    let held = held.max(cut.base_sequence);
    if held >= cut.last_sequence {
        return Ok(cut);
    }
    let first = first_record_after(&*cut.file, cut.offset, held).map_err(|err| match err {
        TailError::Corrupt { offset } => CompactionError::Corrupt(offset),
        other => CompactionError::Io(io::Error::other(other.to_string())),
    })?;
    if first < cut.offset {
        cut.offset = first;
        cut.last_sequence = held;
    }
    Ok(cut)
}

/// Marks a compaction step. Test builds call the test's hook, which may
/// panic there (unwinding like a process dying, skipping every clean-up)
/// or write to the store; otherwise a no-op.
fn reached(access: &CompactionAccess<'_>, step: Step) {
    #[cfg(test)]
    if let Some(hook) = access.step_hook().as_mut() {
        hook(step);
    }
    #[cfg(not(test))]
    let _ = (access, step);
}

/// One compaction: the store, where its log was cut, and the new log's
/// encryption.
struct Job<'a, 's> {
    access: &'a CompactionAccess<'s>,
    dir: &'a Path,
    /// Where the new log is written.
    tmp_path: &'a Path,
    cut: LogCut,
    new_cipher: Option<Arc<Cipher>>,
}

impl<'s> Job<'_, 's> {
    /// The encryption of the old log and of the new one.
    fn ciphers(&self) -> Ciphers<'_> {
        Ciphers {
            from: self.cut.cipher.as_deref(),
            to: self.new_cipher.as_deref(),
        }
    }

    /// Whether the encryption changes: then no write may arrive meanwhile.
    fn rekeying(&self) -> bool {
        !self.ciphers().same()
    }

    /// Every step of the module documentation: copy, catch up, switch.
    fn run(&self) -> Result<CompactionReport, CompactionError> {
        let started = Instant::now();
        let log_path = self.dir.join(LOG_FILE);
        let old = File::open(&log_path)?;
        // SAFETY: the log is append-only and this process holds the
        // directory lock; the mapped range below the cut is never modified
        // or truncated while the mapping lives.
        let map = unsafe { Mmap::map(&old)? };
        if map.len() < self.cut.offset as usize {
            return Err(io::Error::other("the log is shorter than the store's end offset").into());
        }
        let mut new_file = private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.tmp_path)?;
        reached(self.access, Step::Started);
        let header = FileHeader::new(
            self.cut.last_sequence,
            self.new_cipher.as_ref().map_or(0, |c| c.check_value()),
        );
        let ciphers = self.ciphers();
        let plan = copy_live_records(self.access, &map, &self.cut, ciphers, &mut new_file, header)?;
        reached(self.access, Step::Copied);
        let mut tail = TailCopy {
            start: new_file.metadata()?.len(),
            file: new_file,
            file_id: header.file_id,
            copied_to: self.cut.offset,
        };
        let (paused, paused_at) = self.catch_up(&mut tail)?;
        let installed = self.switch(paused, tail, header, plan, &log_path)?;
        let writers_paused = paused_at.elapsed();
        drop(installed.old_log);
        // Without a hint for the new log the next start reads the whole
        // log: correct, just slower.
        if let Err(err) = self.access.write_hint() {
            log::warn!("could not write the hint file after compaction: {err}");
        }
        Ok(CompactionReport {
            bytes_before: map.len() as u64,
            bytes_after: installed.end,
            live_keys: self.access.read_index(Index::len),
            duration: started.elapsed(),
            writers_paused,
        })
    }

    /// Step 3 and the start of step 4: copies the tail as it grows, a few
    /// rounds while much arrives, so that the switch, with writers paused,
    /// copies little; syncs; then takes the group-commit role, so no other
    /// sync runs, and pauses writers, unless more arrived meanwhile than the
    /// pause may copy: then it catches up again. Returns the pause and when
    /// it began.
    fn catch_up(&self, tail: &mut TailCopy) -> Result<(Paused<'s>, Instant), CompactionError> {
        let rekeying = self.rekeying();
        let mut rounds = 0;
        loop {
            loop {
                let end = self.access.end();
                if rekeying || end - tail.copied_to <= CAUGHT_UP_BYTES {
                    break;
                }
                if rounds == MAX_CATCH_UP_ROUNDS {
                    return Err(CompactionError::Unavailable(OUTPACED));
                }
                tail.copy_up_to(end, self)?;
                rounds += 1;
            }
            tail.file.sync_data()?;
            let group_commit = self.access.hold_group_commit();
            reached(self.access, Step::Switching);
            let paused_at = Instant::now();
            let paused = group_commit.pause_writers();
            if rekeying || paused.end() - tail.copied_to <= MAX_PAUSE_COPY {
                return Ok((paused, paused_at));
            }
        }
    }

    /// Step 4 with writers paused: copies the rest of the tail, syncs,
    /// relocates every index entry, renames the new log over `log_path`,
    /// syncs the directory and installs the new log. Once the rename is
    /// done the install always follows; if the directory sync failed, the
    /// store turns read-only first and the error is returned after.
    fn switch(
        &self,
        paused: Paused<'s>,
        mut tail: TailCopy,
        header: FileHeader,
        plan: RelocationPlan,
        log_path: &Path,
    ) -> Result<Installed, CompactionError> {
        if self.access.is_read_only() {
            // A sync failed while the copy ran; its writers were refused.
            return Err(CompactionError::Unavailable(
                "the node turned read-only during compaction",
            ));
        }
        if self.rekeying() && paused.end() != self.cut.offset {
            return Err(CompactionError::Unavailable(
                "writes arrived while the encryption was being changed; change it with the node stopped",
            ));
        }
        tail.copy_up_to(paused.end(), self)?;
        tail.file.sync_data()?;
        let locations =
            paused.read_index(|index| relocate(index, &plan, self.cut.offset, tail.start))?;
        reached(self.access, Step::Synced);
        if self.rekeying() {
            // The hint belongs to the old encryption (plaintext keys, maybe):
            // gone before the new log takes its place.
            match fs::remove_file(self.dir.join(HINT_FILE)) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err.into()),
                _ => {}
            }
        }
        fs::rename(self.tmp_path, log_path)?;
        reached(self.access, Step::Renamed);
        // data.log is the new file now: the switch below must happen even if
        // the directory sync fails (the store then turns read-only).
        let dir_synced = sync_dir(self.dir);
        reached(self.access, Step::DirSynced);
        if let Err(err) = &dir_synced {
            // Until the rename is durable a power cut may bring the old log
            // back, where the pending records were never synced: they must
            // not be acknowledged. Read-only first, so their writers get 503.
            self.access.enter_read_only(&format!(
                "fsync of {} after compaction's rename failed: {err}",
                self.dir.display()
            ));
        }
        let compacted = CompactedLog {
            file: Arc::new(DiskFile::new(tail.file)),
            header,
            cipher: self.new_cipher.clone(),
            tail_from: self.cut.offset,
            tail_to: tail.start,
            locations,
            quarantined: plan.quarantined,
        };
        let installed = paused.install_compacted(compacted, dir_synced.is_ok());
        match dir_synced {
            Ok(()) => Ok(installed),
            Err(err) => {
                drop(installed.old_log);
                Err(CompactionError::DirSync(err))
            }
        }
    }
}

/// The new log while the old log's tail, the records written since the
/// cut, is copied into it.
struct TailCopy {
    /// The new log.
    file: File,
    /// Its file id.
    file_id: u32,
    /// Where the tail starts in it.
    start: u64,
    /// The old log's offset up to which the tail is copied.
    copied_to: u64,
}

impl TailCopy {
    /// Copies the tail of `job`'s old log on to `end`.
    fn copy_up_to(&mut self, end: u64, job: &Job<'_, '_>) -> Result<(), CompactionError> {
        let cut = &job.cut;
        let to = Position {
            file_id: self.file_id,
            offset: self.copied_to - cut.offset + self.start,
        };
        let ciphers = job.ciphers();
        copy_tail(
            &*cut.file,
            cut.file_id,
            self.copied_to,
            end,
            ciphers,
            &mut self.file,
            to,
        )?;
        self.copied_to = end;
        Ok(())
    }
}

/// Refuses to encrypt a directory that keeps plaintext copies of data.
fn refuse_plaintext_leftovers(dir: &Path) -> Result<(), CompactionError> {
    let mut found: Vec<String> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| is_set_aside(name))
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    found.sort();
    Err(CompactionError::PlaintextLeftovers(found))
}

/// The encryption of the log records come from and of the one they go to.
#[derive(Clone, Copy)]
struct Ciphers<'a> {
    from: Option<&'a Cipher>,
    to: Option<&'a Cipher>,
}

impl<'a> Ciphers<'a> {
    /// Whether both logs are plain, or encrypted with the same key (the
    /// store's own cipher): not a rotation.
    fn same(&self) -> bool {
        match (self.from, self.to) {
            (None, None) => true,
            (Some(from), Some(to)) => std::ptr::eq(from, to),
            _ => false,
        }
    }

    /// The cipher of both logs, if both are encrypted with the same key:
    /// envelopes can then move unopened.
    fn unchanged(&self) -> Option<&'a Cipher> {
        self.from.filter(|_| self.same())
    }
}

/// Writes the file header and every record of `live` (the old log below
/// the cut, mapped) that the index still points at to `out`. Returns where
/// each index entry below the cut when the copy began went (see
/// [`RelocationPlan`]). The map is read a window at a time, each dropped
/// from the process's memory once copied (the pages stay in the page
/// cache), so the copy holds little of the old log however large it is.
fn copy_live_records(
    access: &CompactionAccess<'_>,
    map: &Mmap,
    cut: &LogCut,
    ciphers: Ciphers<'_>,
    out: &mut File,
    header: FileHeader,
) -> Result<RelocationPlan, CompactionError> {
    let mut writer = BufWriter::with_capacity(256 * 1024, out);
    writer.write_all(&header.encode())?;
    let first = FILE_HEADER_LEN as u64;
    let (old_id, old_file) = (cut.file_id, &*cut.file);
    let cut = cut.offset;
    let mut live = LiveRecords::new(access, cut);
    let (mut at, mut written) = (first, first);
    while at < cut {
        let rest = &map[at as usize..cut as usize];
        let window_len = next_window(rest, COPY_WINDOW).filter(|&len| len > 0);
        // A damaged record: `move_records` says where.
        let window = &rest[..window_len.unwrap_or(rest.len())];
        let from = Position {
            file_id: old_id,
            offset: at,
        };
        let to = Position {
            file_id: header.file_id,
            offset: written,
        };
        let (moved, damaged) =
            move_records(window, from, to, ciphers, &mut writer, Some(&mut live))?;
        written += moved;
        let next = match damaged {
            None => at + window.len() as u64,
            Some(bad) => {
                // Skip the damaged stretch, up to the next valid record,
                // quarantining the live records in it.
                let resume = next_valid(old_file, old_id, ciphers.from, bad, live.sequence, cut)?
                    .unwrap_or(cut);
                let to = Position {
                    file_id: header.file_id,
                    offset: written,
                };
                written += live.quarantine(map, (bad, resume), to, ciphers.to, &mut writer)?;
                resume
            }
        };
        // SAFETY: the window is below the cut, which is never modified
        // while the map lives (see `Job::run`): dropping its pages
        // only makes a later access read them from the file again, and
        // nothing borrows them past this point.
        unsafe {
            let len = (next.min(at + window.len() as u64) - at) as usize;
            map.unchecked_advise_range(UncheckedAdvice::DontNeed, at as usize, len)
        }?;
        at = next;
    }
    writer.flush()?;
    Ok(live.plan)
}

/// Appends every record of the old log from `from` to `end` to `out`, which
/// ends at `to`, reading [`COPY_WINDOW`] bytes at a time (a record longer
/// than that is read alone).
fn copy_tail(
    log: &dyn LogFile,
    old_id: u32,
    from: u64,
    end: u64,
    ciphers: Ciphers<'_>,
    out: &mut File,
    to: Position,
) -> Result<(), CompactionError> {
    let mut chunk = Vec::new();
    let (mut at, mut to) = (from, to);
    while at < end {
        chunk.resize((end - at).min(COPY_WINDOW as u64) as usize, 0);
        log.read_at(&mut chunk, at)?;
        let whole = match next_window(&chunk, chunk.len()) {
            Some(0) => {
                // One record longer than the window: read it alone.
                let record_len = record_len_at(&chunk)
                    .filter(|&len| at + len as u64 <= end)
                    .ok_or(CompactionError::Corrupt(at))?;
                chunk.resize(record_len, 0);
                log.read_at(&mut chunk, at)?;
                record_len
            }
            Some(whole) => whole,
            None => chunk.len(), // damaged: `move_records` says where
        };
        let from = Position {
            file_id: old_id,
            offset: at,
        };
        let (moved, damaged) = move_records(&chunk[..whole], from, to, ciphers, out, None)?;
        if let Some(bad) = damaged {
            // Written since the copy began, by this very process.
            return Err(CompactionError::Corrupt(bad));
        }
        to.offset += moved;
        at += whole as u64;
        if chunk.capacity() > COPY_WINDOW {
            chunk = Vec::new(); // back to the window's size after a long record
        }
    }
    Ok(())
}

/// The length of the whole records at the start of `bytes` that fit in
/// `size` bytes; if the first record is longer, its length if `bytes` holds
/// it whole, else 0. `None` if the first record's header is damaged.
fn next_window(bytes: &[u8], size: usize) -> Option<usize> {
    let first = record_len_at(bytes)?;
    if first > size {
        return Some(if first <= bytes.len() { first } else { 0 });
    }
    let limit = size.min(bytes.len());
    let mut at = 0;
    while let Some(len) = bytes.get(at..).and_then(record_len_at) {
        if at + len > limit {
            break;
        }
        at += len;
    }
    Some(at)
}

/// The length of the record whose header starts `bytes`, if it decodes.
fn record_len_at(bytes: &[u8]) -> Option<usize> {
    let fixed = bytes.get(..RECORD_HEADER_LEN)?.try_into().ok()?;
    RecordHeader::decode(fixed)
        .ok()
        .map(|header| header.record_len() as usize)
}

/// The records of the old log that compaction copies: those the index
/// points at. Each is decided twice: by its offset before it is opened,
/// against the offsets the index held when the copy began, so dead
/// records, typically half the log, are never read further; then by its
/// key (an envelope moving unopened has just its key decrypted, see
/// [`Cipher::peek_key`]), against the index as it is now, so a record
/// overwritten meanwhile is left out and an index entry pointing at some
/// other record stops the compaction (it relocates no entry it did not
/// copy) instead of being moved onto it. Where each accepted record lands
/// is written into the [`RelocationPlan`].
struct LiveRecords<'a> {
    access: &'a CompactionAccess<'a>,
    /// Offsets below the cut, ascending, each with its entry's place in the
    /// plan; records are asked in log order, so this is walked once.
    by_offset: std::iter::Peekable<std::vec::IntoIter<(u64, u32)>>,
    /// The plan entry of the record last found live by offset.
    current: Option<u32>,
    /// The highest sequence number met so far in the old log.
    sequence: u64,
    plan: RelocationPlan,
}

impl<'a> LiveRecords<'a> {
    /// The live records of `store` before offset `cut`, with a plan that
    /// lists them, none copied yet. Sorting their offsets (plain integers)
    /// pairs them with the copy, which runs in log order, without a
    /// cache-missing search per index entry.
    fn new(access: &'a CompactionAccess<'a>, cut: u64) -> Self {
        let old_offsets: Vec<u64> = access.read_index(|index| {
            index
                .locations()
                .map(|location| location.offset)
                .filter(|&offset| offset < cut)
                .collect()
        });
        let mut by_offset: Vec<(u64, u32)> = old_offsets
            .iter()
            .enumerate()
            .map(|(position, &offset)| (offset, position as u32))
            .collect();
        by_offset.sort_unstable();
        Self {
            access,
            by_offset: by_offset.into_iter().peekable(),
            current: None,
            sequence: 0,
            plan: RelocationPlan {
                copied_to: vec![None; old_offsets.len()],
                old_offsets,
                quarantined: Vec::new(),
            },
        }
    }

    /// Whether the record at `offset` was live when the copy began; asked
    /// in increasing offset order.
    fn were_live(&mut self, offset: u64) -> bool {
        while self.by_offset.next_if(|&(live, _)| live < offset).is_some() {}
        self.current = self
            .by_offset
            .next_if(|&(live, _)| live == offset)
            .map(|(_, position)| position);
        self.current.is_some()
    }

    /// Notes that the record last found live by offset was copied to
    /// `location` of the new log.
    fn copied_to(&mut self, location: Location) {
        if let Some(position) = self.current.take() {
            self.plan.copied_to[position as usize] = Some(location);
        }
    }

    /// Whether the index still points the record of `key` at `location`.
    fn is_live(&self, key: &[u8], location: Location) -> bool {
        self.access
            .read_index(|index| index.get(key) == Some(location))
    }

    /// Writes to `out` (which ends at `to`) a quarantined record (see
    /// [`super::record`]) for every key the index still points into the
    /// damaged stretch `range` of the old log (`map`), holding its record's
    /// bytes as they are; sealed with `cipher`. Their sequence numbers
    /// follow the last one met: the stretch held at least as many records,
    /// numbered between its neighbours. Returns the bytes written.
    fn quarantine(
        &mut self,
        map: &Mmap,
        range: (u64, u64),
        to: Position,
        cipher: Option<&Cipher>,
        out: &mut impl Write,
    ) -> Result<u64, CompactionError> {
        let (start, end) = range;
        let mut in_range = Vec::new();
        while let Some((offset, position)) = self.by_offset.next_if(|&(live, _)| live < end) {
            if offset >= start {
                in_range.push((offset, position));
            }
        }
        log::error!(
            "compaction: bytes {start}..{end} of the log are damaged; dropping them, with the \
             records of {} keys",
            in_range.len()
        );
        if in_range.is_empty() {
            return Ok(0);
        }
        let damaged: Vec<_> = self.access.read_index(|index| {
            index
                .entries()
                .filter(|(_, location)| in_range.iter().any(|&(at, _)| at == location.offset))
                .map(|(key, location)| (key.to_vec(), location, index.attrs(key)))
                .collect()
        });
        let mut scratch = Scratch::default();
        let mut written = to.offset;
        for (key, location, attrs) in damaged {
            let offset = location.offset;
            let position = in_range
                .iter()
                .find(|&&(at, _)| at == offset)
                .map(|&(_, position)| position)
                .expect("selected by offset");
            let bytes = map
                .get(offset as usize..(offset + u64::from(location.len)) as usize)
                .ok_or(CompactionError::Corrupt(offset))?;
            let at = Position {
                file_id: to.file_id,
                offset: written,
            };
            self.sequence += 1;
            let stored =
                scratch.quarantine(&key, attrs.expires_at_ms, bytes, self.sequence, at, cipher);
            out.write_all(stored)?;
            log::error!(
                "compaction: key {:?} lost its value to damage at offset {offset}; it answers an \
                 error until it is written or deleted",
                String::from_utf8_lossy(&key)
            );
            self.plan.copied_to[position as usize] = Some(Location {
                offset: written,
                len: stored.len() as u32,
            });
            self.plan.quarantined.push((key, location));
            written += stored.len() as u64;
        }
        Ok(written - to.offset)
    }
}

/// Which records are copied; `None` copies every record as is.
type Keep<'k, 'a> = Option<&'k mut LiveRecords<'a>>;

/// Walks the whole records in `bytes`, which start at `from` in the old log,
/// verifying each there (CRC; an envelope's place tag, and unless it moves
/// unopened its encryption too), and writes them to `out`, stamped (an
/// envelope tagged, or sealed afresh) for where they land in the new log
/// (from `to` on). With `keep`, only the records it accepts are written, and live
/// members of batch frames are written as plain records (compaction only
/// filters durable records, so no batch can be half-copied by a crash);
/// without, frames are copied whole. Sync markers are dropped with `keep`,
/// restamped (and their claim moved with them) without. Returns the
/// number of bytes written, and the offset in the old log of a record that
/// failed its check, if one did: the walk stops there.
fn move_records(
    bytes: &[u8],
    from: Position,
    to: Position,
    ciphers: Ciphers<'_>,
    out: &mut impl Write,
    mut keep: Keep<'_, '_>,
) -> Result<(u64, Option<u64>), CompactionError> {
    let mut scratch = Scratch::default();
    let (mut at, mut written) = (0usize, to.offset);
    while at < bytes.len() {
        let old = Position {
            file_id: from.file_id,
            offset: from.offset + at as u64,
        };
        let view = bytes
            .get(at..at + RECORD_HEADER_LEN)
            .and_then(|fixed| RecordHeader::decode(fixed.try_into().ok()?).ok())
            .and_then(|header| bytes.get(at..at + header.record_len() as usize))
            .and_then(|record| verify(record, old).ok());
        let Some(view) = view else {
            return Ok((written - to.offset, Some(old.offset)));
        };
        at += view.bytes.len();
        if let Some(keep) = keep.as_mut() {
            keep.sequence = keep.sequence.max(view.header.sequence);
        }
        let new = Position {
            file_id: to.file_id,
            offset: written,
        };
        written += match view.header.kind {
            RecordKind::Marker if keep.is_some() => 0, // not live data
            RecordKind::Marker => {
                // Its claim moves with the bytes it names; anything before
                // this part of the tail names the part's start.
                let shift = |claim: u64| claim.max(from.offset) - from.offset + to.offset;
                move_marker(view, old, new, shift, ciphers, out, &mut scratch)?
            }
            // The whole frame moves, members still members.
            RecordKind::Batch if keep.is_none() => {
                move_frame(view, old, new, ciphers, out, &mut scratch)?
            }
            _ => move_live(
                view,
                old,
                new,
                ciphers,
                out,
                keep.as_deref_mut(),
                &mut scratch,
            )?,
        };
    }
    Ok((written - to.offset, None))
}

/// Buffers [`move_records`] reuses from record to record.
#[derive(Default)]
pub(super) struct Scratch {
    /// A record opened from its envelope.
    opened: Vec<u8>,
    /// A plain record being restamped.
    plain: Vec<u8>,
    /// A record as the new log stores it.
    sealed: Vec<u8>,
}

impl Scratch {
    /// The quarantined record (see [`super::record`]) of `key`, expiring at
    /// `expires_at_ms`, holding `damaged` (its damaged record's bytes) with
    /// sequence number `sequence`, as a log encrypted with `cipher` (if any)
    /// stores it at `at`.
    pub(super) fn quarantine(
        &mut self,
        key: &[u8],
        expires_at_ms: u64,
        damaged: &[u8],
        sequence: u64,
        at: Position,
        cipher: Option<&Cipher>,
    ) -> &[u8] {
        RecordBuilder::quarantine(&mut self.plain, key, expires_at_ms, damaged, sequence, at);
        stored_form(cipher, &self.plain, at, &mut self.sealed)
    }
}

/// Writes the live record `bytes`, stored at `from` in a log encrypted with
/// `cipher` (if any), to `out` as it must read at `to` in another log with
/// that encryption, the way compaction moves a live record: verified at
/// `from` (CRC; an envelope's place tag), a movable envelope moved unopened,
/// a batch member made a plain record. Returns the bytes written, or `None`
/// (nothing written) if the record fails its check at `from`.
pub(super) fn move_live_record(
    bytes: &[u8],
    from: Position,
    to: Position,
    cipher: Option<&Cipher>,
    out: &mut impl Write,
    scratch: &mut Scratch,
) -> Result<Option<u64>, CompactionError> {
    let Ok(view) = verify(bytes, from) else {
        return Ok(None);
    };
    let ciphers = Ciphers {
        from: cipher,
        to: cipher,
    };
    match move_live(view, from, to, ciphers, out, None, scratch) {
        Err(CompactionError::Corrupt(_)) => Ok(None),
        moved => moved.map(Some),
    }
}

/// Writes the record or batch frame `bytes`, stored at `from` in a log
/// encrypted with `cipher` (if any), to `out` as it must read at `to` in
/// another log with that encryption, whole (a frame stays one frame), with
/// its sequence numbers and times: what a follower does with a record its
/// primary sent. Fails with [`CompactionError::Corrupt`] if it fails its
/// check at `from` (CRC; an envelope's place tag and authentication).
pub(super) fn move_whole_record(
    bytes: &[u8],
    from: Position,
    to: Position,
    cipher: Option<&Cipher>,
    out: &mut impl Write,
    scratch: &mut Scratch,
) -> Result<(), CompactionError> {
    let view = verify(bytes, from).map_err(|_| CompactionError::Corrupt(from.offset))?;
    let ciphers = Ciphers {
        from: cipher,
        to: cipher,
    };
    if view.header.kind == RecordKind::Batch {
        move_frame(view, from, to, ciphers, out, scratch)?;
    } else {
        move_live(view, from, to, ciphers, out, None, scratch)?;
    }
    Ok(())
}

/// Writes the sync marker `view`, verified at `old`, to `out` at `new`,
/// naming where the bytes it claimed durable went (`shift`). Returns the
/// bytes written.
fn move_marker(
    view: RecordView<'_>,
    old: Position,
    new: Position,
    shift: impl Fn(u64) -> u64,
    ciphers: Ciphers<'_>,
    out: &mut impl Write,
    scratch: &mut Scratch,
) -> Result<u64, CompactionError> {
    let corrupt = || CompactionError::Corrupt(old.offset);
    let marker = open_copy(ciphers.from, view, old, &mut scratch.opened).map_err(|_| corrupt())?;
    let claim = Marker::claim(&marker, old.offset).ok_or_else(corrupt)?;
    let plain = Marker::encode(shift(claim), marker.header.timestamp_ms, new);
    let stored = stored_form(ciphers.to, &plain, new, &mut scratch.sealed);
    out.write_all(stored)?;
    Ok(stored.len() as u64)
}

/// Writes the batch frame `view`, verified at `old`, whole to `out` at
/// `new`, every member opened and sealed afresh for its new place. Returns
/// the bytes written.
fn move_frame(
    view: RecordView<'_>,
    old: Position,
    new: Position,
    ciphers: Ciphers<'_>,
    out: &mut impl Write,
    scratch: &mut Scratch,
) -> Result<u64, CompactionError> {
    let corrupt = || CompactionError::Corrupt(old.offset);
    let Scratch {
        opened,
        plain,
        sealed,
    } = scratch;
    plain.clear();
    plain.extend_from_slice(&view.bytes[..RECORD_HEADER_LEN]);
    let (mut first, mut timestamp_ms) = (None, 0);
    for member in members(&view, old) {
        let (offset, member) = member.map_err(|_| corrupt())?;
        first.get_or_insert(member.header.sequence);
        let place = Position { offset, ..old };
        let member = open_copy(ciphers.from, member, place, opened).map_err(|_| corrupt())?;
        timestamp_ms = member.header.timestamp_ms;
        plain.extend_from_slice(member.bytes);
    }
    let overhead = if ciphers.to.is_some() {
        ENVELOPE_OVERHEAD
    } else {
        0
    };
    FrameBuilder::seal_wrapped(
        plain,
        first.unwrap_or(0),
        timestamp_ms,
        new,
        overhead,
        sealed,
        |member, place, out| match ciphers.to {
            Some(cipher) => cipher.seal(member, place, out),
            None => out.extend_from_slice(member),
        },
    );
    out.write_all(sealed)?;
    Ok(sealed.len() as u64)
}

/// Writes the put or tombstone `view`, verified at `old` (or each member
/// of the batch frame `view`), to `out` from `new` on as a plain record,
/// if `keep` accepts it: an envelope keeping its key moves unopened, any
/// other record is opened and sealed afresh. Returns the bytes written.
fn move_live(
    view: RecordView<'_>,
    old: Position,
    new: Position,
    ciphers: Ciphers<'_>,
    out: &mut impl Write,
    mut keep: Keep<'_, '_>,
    scratch: &mut Scratch,
) -> Result<u64, CompactionError> {
    let corrupt = || CompactionError::Corrupt(old.offset);
    let mut records = Vec::new();
    if view.header.kind == RecordKind::Batch {
        for member in members(&view, old) {
            records.push(member.map_err(|_| corrupt())?);
        }
    } else {
        records.push((old.offset, view));
    }
    let Scratch {
        opened,
        plain,
        sealed,
    } = scratch;
    let mut written = new.offset;
    for (offset, record) in records {
        if keep.as_mut().is_some_and(|keep| !keep.were_live(offset)) {
            continue;
        }
        let place = Position { offset, ..old };
        let new = Position {
            offset: written,
            ..new
        };
        let location = Location {
            offset,
            len: record.bytes.len() as u32,
        };
        let stored = match ciphers.unchanged() {
            Some(cipher) if record.header.is_movable() && !record.header.is_member() => {
                if let Some(keep) = keep.as_ref() {
                    let key = cipher.peek_key(record.bytes, opened).ok_or_else(corrupt)?;
                    if !keep.is_live(key, location) {
                        continue;
                    }
                }
                cipher
                    .move_envelope(record.bytes, place, new, sealed)
                    .map_err(|_| corrupt())?;
                &sealed[..]
            }
            _ => {
                let record =
                    open_copy(ciphers.from, record, place, opened).map_err(|_| corrupt())?;
                if keep
                    .as_ref()
                    .is_some_and(|keep| !keep.is_live(record.key, location))
                {
                    continue;
                }
                plain.clear();
                plain.extend_from_slice(record.bytes);
                RecordBuilder::detach(plain, new);
                stored_form(ciphers.to, plain, new, sealed)
            }
        };
        out.write_all(stored)?;
        if let Some(keep) = keep.as_mut() {
            keep.copied_to(Location {
                offset: written,
                len: stored.len() as u32,
            });
        }
        written += stored.len() as u64;
    }
    Ok(written - new.offset)
}

/// Where the index entries below the cut went, filled in by the copy, so
/// that the pause only walks the index once.
///
/// It lists, in key order, the offset of every entry below the cut when
/// the copy began and the place its record was copied to (`None` if it was
/// not: the key was overwritten or deleted before the copy reached it, or
/// the entry pointed at a record not its key's). An entry below the cut
/// when writers are paused is one of these, unchanged: every write since
/// the cut went after it, and an entry only ever moves to a newer record.
/// So the entries still below the cut are, in key order, a subsequence of
/// the plan, each found by its offset (an offset names one record); an
/// entry not found, or not copied, means an inconsistent index, and the
/// compaction stops.
struct RelocationPlan {
    /// Old offsets, in the key order of the index when the copy began.
    old_offsets: Vec<u64>,
    /// Where each of those records was copied to, if it was.
    copied_to: Vec<Option<Location>>,
    /// The keys whose damaged record was replaced by a quarantined one,
    /// and where that damaged record was.
    quarantined: Vec<(Vec<u8>, Location)>,
}

/// The new location of every index entry, in index order: entries before
/// the cut moved to where `plan` says they were copied, entries in the tail
/// moved with it. One walk of the index, while writers are paused.
fn relocate(
    index: &Index,
    plan: &RelocationPlan,
    cut: u64,
    tail_start: u64,
) -> Result<Vec<Location>, CompactionError> {
    let mut planned = plan.old_offsets.iter().zip(&plan.copied_to);
    index
        .locations()
        .map(|location| {
            // A copy: `Location` is packed, its fields cannot be borrowed.
            let offset = location.offset;
            if offset >= cut {
                return Ok(Location {
                    offset: offset - cut + tail_start,
                    ..location
                });
            }
            planned
                .find(|(&old, _)| old == offset)
                .and_then(|(_, &copied_to)| copied_to)
                .ok_or_else(|| {
                    CompactionError::Io(io::Error::other(format!(
                        "internal error: live record at offset {offset} was not copied"
                    )))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::SyncMode;
    use crate::store::index::Attrs;
    use crate::store::open;
    use crate::store::testing::{assert_matches, churn, delete, put, Model};
    use std::collections::BTreeMap;
    use std::panic::{self, AssertUnwindSafe};

    /// A store in a fresh directory after `churn`, and its model.
    fn churned(sync: SyncMode) -> (tempfile::TempDir, Arc<Store>, Model) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), sync).unwrap();
        let mut model = Model::new();
        churn(&store, &mut model);
        (dir, store, model)
    }

    fn log_len(dir: &Path) -> u64 {
        fs::metadata(dir.join(LOG_FILE)).unwrap().len()
    }

    #[test]
    fn compaction_keeps_every_live_value_and_shrinks_the_log() {
        let (dir, store, mut model) = churned(SyncMode::Always);
        let before = log_len(dir.path());
        let report = store.compact().unwrap();
        assert_eq!(report.bytes_before, before);
        assert_eq!(report.bytes_after, log_len(dir.path()));
        assert!(report.bytes_after < before / 4, "{report:?}");
        assert_eq!(report.live_keys, 40);
        assert_matches(&store, &model);
        // Writes go on in the new log, and sequence numbers keep growing.
        let mut buf = Vec::new();
        let last = store.get(b"key-49", &mut buf).unwrap().unwrap().sequence;
        put(&store, &mut model, "key-49", b"after compaction");
        let mut buf = Vec::new();
        assert!(store.get(b"key-49", &mut buf).unwrap().unwrap().sequence > last);
        drop(store);
        let (store, _) = open(dir.path(), SyncMode::Always).unwrap();
        assert_matches(&store, &model);
        assert!(!dir.path().join(COMPACT_FILE).exists());
    }

    #[test]
    fn writes_during_compaction_land_in_the_tail_and_survive() {
        let key = Arc::new(Cipher::from_key(&[3; 32]));
        let cases = [
            (SyncMode::Always, None),
            (SyncMode::Never, None),
            (SyncMode::Never, Some(key)),
        ];
        for (sync, cipher) in cases {
            let dir = tempfile::tempdir().unwrap();
            let open = || {
                crate::store::open_with(dir.path(), sync, cipher.clone())
                    .unwrap()
                    .0
            };
            let store = open();
            let mut model = Model::new();
            churn(&store, &mut model);
            let during = Arc::new(std::sync::Mutex::new(Model::new()));
            let (hook_store, hook_model) = (Arc::clone(&store), Arc::clone(&during));
            *store.step_hook() = Some(Box::new(move |step| {
                if step == Step::Copied {
                    let mut model = hook_model.lock().unwrap();
                    // More than the pause is left to copy: the catch-up
                    // copies these before writers are paused.
                    for i in 0..(2 * CAUGHT_UP_BYTES / 1024) {
                        put(&hook_store, &mut model, &format!("bulk-{i}"), &[b'b'; 1024]);
                    }
                    put(&hook_store, &mut model, "key-1", b"overwritten in the tail");
                    put(
                        &hook_store,
                        &mut model,
                        "new-in-tail",
                        b"created in the tail",
                    );
                    assert!(hook_store
                        .delete(b"key-2", &mut Vec::new(), crate::store::engine::Expect::Any)
                        .unwrap());
                    model.insert("deleted".into(), b"key-2".to_vec());
                }
            }));
            store.compact().unwrap();
            *store.step_hook() = None;
            model.extend(during.lock().unwrap().clone());
            model.remove("deleted");
            model.remove("key-2");
            assert_matches(&store, &model);
            assert!(store.get(b"key-2", &mut Vec::new()).unwrap().is_none());
            // No reference cycle may keep the store alive: drop the hook's clone.
            drop(store);
            let store = open();
            assert_matches(&store, &model);
            assert!(store.get(b"key-2", &mut Vec::new()).unwrap().is_none());
        }
    }

    #[test]
    fn batches_locks_and_expiries_survive_compaction_and_restarts() {
        use crate::store::index::Attrs;
        use crate::store::testing::{batch_put, set_attrs};
        let far = crate::clock::now_ms() + 3_600_000;
        let check = |store: &Store, model: &Model| {
            assert_matches(store, model);
            let mut buf = Vec::new();
            let locked = store.get(b"key-1", &mut buf).unwrap().unwrap();
            assert!(locked.locked && locked.expires_at_ms == 0);
            let expiring = store.get(b"key-6", &mut buf).unwrap().unwrap();
            assert!(!expiring.locked && expiring.expires_at_ms == far);
        };
        for sync in [SyncMode::Always, SyncMode::Never] {
            let (dir, store, mut model) = churned(sync);
            let mut buf = Vec::new();
            store
                .batch(
                    &[
                        batch_put("key-2", b"batch 1"),
                        batch_put("b-new", b"batch 1"),
                    ],
                    &mut buf,
                )
                .unwrap();
            model.insert("key-2".into(), b"batch 1".to_vec());
            model.insert("b-new".into(), b"batch 1".to_vec());
            set_attrs(
                &store,
                "key-1",
                Attrs {
                    locked: true,
                    expires_at_ms: 0,
                    damaged: false,
                },
            );
            set_attrs(
                &store,
                "key-6",
                Attrs {
                    locked: false,
                    expires_at_ms: far,
                    damaged: false,
                },
            );
            // A batch written during the copy lands in the tail, whole.
            let hook_store = Arc::clone(&store);
            *store.step_hook() = Some(Box::new(move |step| {
                if step == Step::Copied {
                    let ops = [
                        batch_put("key-7", b"in the tail"),
                        batch_put("t-new", b"in the tail"),
                    ];
                    hook_store.batch(&ops, &mut Vec::new()).unwrap();
                }
            }));
            store.compact().unwrap();
            *store.step_hook() = None;
            model.insert("key-7".into(), b"in the tail".to_vec());
            model.insert("t-new".into(), b"in the tail".to_vec());
            check(&store, &model);
            // Restart without a clean close: the log after the hint is read.
            store
                .batch(
                    &[batch_put("key-8", b"after"), batch_put("a-new", b"after")],
                    &mut buf,
                )
                .unwrap();
            model.insert("key-8".into(), b"after".to_vec());
            model.insert("a-new".into(), b"after".to_vec());
            drop(store);
            let (store, _) = open(dir.path(), sync).unwrap();
            check(&store, &model);
            // Clean close: everything comes from the hint file.
            store.close().unwrap();
            drop(store);
            let (store, report) = open(dir.path(), sync).unwrap();
            assert_eq!(report.records, 0);
            check(&store, &model);
            store.compact().unwrap();
            check(&store, &model);
        }
    }

    /// Compacts over and over for 1.5 s while six writer threads each apply
    /// `op(store, model, writer, i)` for i = 0, 1, ... to keys of their own;
    /// then every value, and nothing else, is there, also after a restart.
    fn compact_repeatedly_beside_writers(
        sync: SyncMode,
        cipher: Option<Arc<Cipher>>,
        op: fn(&Store, &mut Model, usize, u32),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            crate::store::open_with(dir.path(), sync, cipher.clone())
                .unwrap()
                .0
        };
        let store = open();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..6)
            .map(|w| {
                let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut model = Model::new();
                    let mut i = 0u32;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        op(&store, &mut model, w, i);
                        i += 1;
                    }
                    model
                })
            })
            .collect();
        let started = Instant::now();
        let mut compactions = 0;
        // At least two, however slow a compaction is (a debug build).
        while started.elapsed() < Duration::from_millis(1500) || compactions < 2 {
            store.compact().expect("compaction beside busy writers");
            compactions += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut model = Model::new();
        for writer in writers {
            model.extend(writer.join().unwrap());
        }
        assert!(compactions > 1);
        assert_matches(&store, &model);
        drop(store);
        assert_matches(&open(), &model);
    }

    #[test]
    fn concurrent_always_writers_and_repeated_compactions_lose_nothing() {
        compact_repeatedly_beside_writers(SyncMode::Always, None, |store, model, w, i| {
            put(store, model, &format!("w{w}-{}", i % 20), &i.to_le_bytes());
        });
    }

    proptest::proptest! {
        /// The pause's walk takes every entry to its own record, whatever
        /// happened to the keys since the copy began. Each key below the
        /// cut (log order unrelated to key order) is kept, overwritten or
        /// deleted, before or after the copy reached it (before: the copy
        /// skipped it); new keys land after the cut, between the others.
        #[test]
        fn relocation_takes_each_entry_to_its_own_record(
            fates in proptest::collection::vec(0u8..5, 0..200),
            created in proptest::collection::btree_set(0usize..200, 0..50),
            shuffle in proptest::prelude::any::<u64>(),
        ) {
            const LEN: u32 = 100;
            let first = FILE_HEADER_LEN as u64;
            let cut = first + fates.len() as u64 * u64::from(LEN);
            let tail_start = first + 7;
            let key = |i: usize| format!("key-{i:03}");
            let mut log_order: Vec<usize> = (0..fates.len()).collect();
            log_order.sort_by_key(|&i| (i as u64 ^ shuffle).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut old_offsets = vec![0; fates.len()];
            for (slot, &i) in log_order.iter().enumerate() {
                old_offsets[i] = first + slot as u64 * u64::from(LEN);
            }
            let (mut index, mut expected) = (Index::default(), BTreeMap::new());
            let mut copied_to = vec![None; fates.len()];
            let mut written = first;
            for &i in &log_order {
                let copied = Location { offset: written, len: LEN };
                let after_cut = Location { offset: cut + i as u64 * 10, len: LEN };
                let shifted = Location { offset: after_cut.offset - cut + tail_start, len: LEN };
                let old = Location { offset: old_offsets[i], len: LEN };
                let (copy, now) = match fates[i] {
                    0 => (true, Some((old, copied))),
                    1 => (true, Some((after_cut, shifted))),
                    2 => (false, Some((after_cut, shifted))),
                    3 => (true, None),
                    _ => (false, None),
                };
                if copy {
                    copied_to[i] = Some(copied);
                    written += u64::from(LEN);
                }
                if let Some((at, goes_to)) = now {
                    index.insert(key(i).as_bytes(), at, Attrs::default());
                    expected.insert(key(i), goes_to);
                }
            }
            for &j in &created {
                let at = Location { offset: cut + 5_000 + j as u64, len: LEN };
                index.insert(format!("{}-new", key(j)).as_bytes(), at, Attrs::default());
                let goes_to = Location { offset: at.offset - cut + tail_start, len: LEN };
                expected.insert(format!("{}-new", key(j)), goes_to);
            }
            let plan = RelocationPlan { old_offsets, copied_to, quarantined: Vec::new() };
            let relocated = relocate(&index, &plan, cut, tail_start).unwrap();
            proptest::prop_assert_eq!(relocated, expected.into_values().collect::<Vec<_>>());
        }
    }

    /// Keys created, overwritten and deleted while the copy runs move the
    /// other entries' places in key order; every entry must still be
    /// relocated to its own record.
    #[test]
    fn keys_created_and_deleted_during_the_copy_are_relocated_right() {
        let key = Arc::new(Cipher::from_key(&[5; 32]));
        let cases = [
            (SyncMode::Never, None),
            (SyncMode::Never, Some(key)),
            (SyncMode::Always, None),
        ];
        for (sync, cipher) in cases {
            compact_repeatedly_beside_writers(sync, cipher, |store, model, w, i| {
                // 400 keys per writer, deleted and created again, so other
                // keys' places in key order move while the copy runs, and
                // the log stays small enough for a debug build.
                let key = format!("w{w}-{}", (i * 7) % 400);
                match i % 3 {
                    0 if model.contains_key(&key) => delete(store, model, &key),
                    _ => put(store, model, &key, &i.to_le_bytes()),
                }
            });
        }
    }

    /// Starts a put of `key` on another thread and returns once it has been
    /// appended (it then waits for its fsync); its result arrives on the
    /// returned channel.
    fn put_pending(
        store: &Arc<Store>,
        key: &'static str,
    ) -> std::sync::mpsc::Receiver<Result<crate::store::WriteOutcome, crate::store::StoreError>>
    {
        let (answered, answer) = std::sync::mpsc::channel();
        let appended = store.stats().log_bytes;
        let writer = Arc::clone(store);
        std::thread::spawn(move || {
            let _ = answered.send(crate::store::testing::try_put(&writer, key, b"p"));
        });
        while store.stats().log_bytes == appended {
            std::thread::yield_now();
        }
        answer
    }

    #[test]
    fn a_failed_directory_sync_after_the_rename_switches_and_turns_read_only() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let moved = root.path().join("moved");
        let (store, _) = open(&dir, SyncMode::Always).unwrap();
        let mut model = Model::new();
        churn(&store, &mut model);
        let (from, to) = (dir.clone(), moved.clone());
        let (pending_tx, pending_rx) = std::sync::mpsc::channel();
        let writer_store = Arc::clone(&store);
        *store.step_hook() = Some(Box::new(move |step| match step {
            // A writer that appends now waits for the switch's sync.
            Step::Switching => pending_tx
                .send(put_pending(&writer_store, "pending"))
                .unwrap(),
            // With the directory gone, syncing it fails.
            Step::Renamed => fs::rename(&from, &to).unwrap(),
            Step::DirSynced => fs::rename(&to, &from).unwrap(),
            _ => {}
        }));
        let err = store.compact().unwrap_err();
        assert!(matches!(err, CompactionError::DirSync(_)), "{err:?}");
        assert!(err.to_string().contains("read-only"), "{err}");
        *store.step_hook() = None;
        assert!(
            store.is_read_only(),
            "a failed directory fsync must stop writes"
        );
        let answer = pending_rx.recv().unwrap();
        let pending = answer.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            matches!(pending, Err(crate::store::StoreError::ReadOnly)),
            "a write whose only synced copy is in the not-yet-durable new log was acknowledged: {pending:?}"
        );
        assert!(store.get(b"pending", &mut Vec::new()).unwrap().is_none());
        assert_matches(&store, &model);
        assert!(matches!(
            store.delete(b"key-1", &mut Vec::new(), crate::store::engine::Expect::Any),
            Err(crate::store::StoreError::ReadOnly)
        ));
        drop(store);
        let (store, _) = open(&dir, SyncMode::Always).unwrap();
        // The refused write's outcome was unknown (503): it may have landed.
        let mut buf = Vec::new();
        if let Some(landed) = store.get(b"pending", &mut buf).unwrap() {
            assert_eq!(landed.value, b"p");
            model.insert("pending".into(), b"p".to_vec());
        }
        assert_matches(&store, &model);
    }

    #[test]
    fn a_store_turning_read_only_during_the_copy_is_not_switched() {
        let (dir, store, model) = churned(SyncMode::Always);
        let log = fs::read(dir.path().join(LOG_FILE)).unwrap();
        let failing = Arc::clone(&store);
        *store.step_hook() = Some(Box::new(move |step| {
            if step == Step::Copied {
                failing.enter_read_only("a group fsync failed (simulated)");
            }
        }));
        assert!(matches!(
            store.compact(),
            Err(CompactionError::Unavailable(_))
        ));
        *store.step_hook() = None;
        assert_eq!(
            fs::read(dir.path().join(LOG_FILE)).unwrap(),
            log,
            "data.log was replaced"
        );
        assert!(!dir.path().join(COMPACT_FILE).exists());
        assert_matches(&store, &model);
    }

    #[test]
    fn a_writer_waiting_for_its_sync_across_the_switch_is_answered() {
        let (dir, store, mut model) = churned(SyncMode::Always);
        let (pending_tx, pending_rx) = std::sync::mpsc::channel();
        let writer_store = Arc::clone(&store);
        *store.step_hook() = Some(Box::new(move |step| {
            // This writer appends to the old log, then waits for a sync that
            // only the switch to the new log provides.
            if step == Step::Switching {
                pending_tx
                    .send(put_pending(&writer_store, "waiting"))
                    .unwrap();
            }
        }));
        store.compact().unwrap();
        *store.step_hook() = None;
        let answer = pending_rx.recv().unwrap();
        let outcome = answer
            .recv_timeout(Duration::from_secs(10))
            .expect("the waiting writer was never answered");
        assert!(outcome.is_ok(), "{outcome:?}");
        model.insert("waiting".into(), b"p".to_vec());
        assert_matches(&store, &model);
        drop(store);
        let (store, _) = open(dir.path(), SyncMode::Always).unwrap();
        assert_matches(&store, &model);
    }

    #[test]
    fn a_crash_at_any_step_leaves_a_directory_that_opens_intact() {
        for step in [
            Step::Started,
            Step::Copied,
            Step::Switching,
            Step::Synced,
            Step::Renamed,
            Step::DirSynced,
        ] {
            let (dir, store, mut model) = churned(SyncMode::Always);
            *store.step_hook() = Some(Box::new(move |at| {
                if at == step {
                    panic!("simulated crash at {at:?}");
                }
            }));
            let crashed = panic::catch_unwind(AssertUnwindSafe(|| store.compact()));
            assert!(crashed.is_err(), "no crash at {step:?}");
            drop(store);
            let (store, _) = open(dir.path(), SyncMode::Always).unwrap();
            assert_matches(&store, &model);
            assert!(
                !dir.path().join(COMPACT_FILE).exists(),
                "leftover after {step:?}"
            );
            // The recovered store compacts and writes normally.
            store.compact().unwrap();
            put(&store, &mut model, "after", b"crash");
            assert_matches(&store, &model);
        }
    }

    #[test]
    fn an_index_entry_at_another_keys_record_stops_compaction() {
        // An inconsistent index (a bug, a stale hint) must not be "fixed" by
        // moving the entry onto whatever record sits at its offset.
        for cipher in [None, Some(Arc::new(Cipher::from_key(&[5; 32])))] {
            let dir = tempfile::tempdir().unwrap();
            let (store, _) = crate::store::open_with(dir.path(), SyncMode::Always, cipher).unwrap();
            let mut model = Model::new();
            churn(&store, &mut model);
            let log_path = dir.path().join(LOG_FILE);
            let before = fs::read(&log_path).unwrap();
            // The log's first record: key-0's first version, long dead.
            let first = FILE_HEADER_LEN;
            let header = &before[first..first + RECORD_HEADER_LEN];
            let dead = Location {
                offset: first as u64,
                len: RecordHeader::decode(header.try_into().unwrap())
                    .unwrap()
                    .record_len() as u32,
            };
            store.with_index(|index| index.insert(b"key-1", dead, Attrs::default()));
            let err = store.compact().unwrap_err();
            assert!(err.to_string().contains("was not copied"), "{err}");
            assert_eq!(fs::read(&log_path).unwrap(), before);
        }
    }

    #[test]
    fn damage_in_a_dead_record_is_dropped_by_compaction() {
        let (dir, store, model) = churned(SyncMode::Always);
        let log_path = dir.path().join(LOG_FILE);
        let mut bytes = fs::read(&log_path).unwrap();
        bytes[FILE_HEADER_LEN + RECORD_HEADER_LEN + 2] ^= 0xff; // key-0's first version
        fs::write(&log_path, &bytes).unwrap();
        store.compact().unwrap();
        assert_matches(&store, &model);
        assert_eq!(store.stats().damaged_keys, 0);
        drop(store);
        fs::remove_file(dir.path().join(HINT_FILE)).unwrap();
        let (store, _) = open(dir.path(), SyncMode::Always).unwrap();
        assert_matches(&store, &model);
    }

    #[test]
    fn a_damaged_live_record_is_quarantined_and_its_key_stays_an_error() {
        for cipher in [None, Some(Arc::new(Cipher::from_key(&[5; 32])))] {
            let dir = tempfile::tempdir().unwrap();
            let (store, _) =
                crate::store::open_with(dir.path(), SyncMode::Always, cipher.clone()).unwrap();
            let mut model = Model::new();
            churn(&store, &mut model);
            let damaged = store.with_index(|index| index.get(b"key-1")).unwrap();
            let log_path = dir.path().join(LOG_FILE);
            let mut bytes = fs::read(&log_path).unwrap();
            bytes[damaged.offset as usize + damaged.len as usize - 1] ^= 0xff;
            fs::write(&log_path, &bytes).unwrap();
            model.remove("key-1");
            let is_damaged = |store: &Store| {
                matches!(
                    store.get(b"key-1", &mut Vec::new()),
                    Err(crate::store::StoreError::Corrupt { .. })
                )
            };
            store.compact().unwrap();
            assert!(is_damaged(&store));
            assert_eq!(store.stats().damaged_keys, 1);
            assert_eq!(store.stats().keys, model.len() + 1);
            for (key, value) in &model {
                let mut buf = Vec::new();
                let got = store.get(key.as_bytes(), &mut buf).unwrap();
                assert_eq!(got.map(|v| v.value), Some(&value[..]), "key {key}");
            }
            // A second compaction copies the quarantined record as it is.
            store.compact().unwrap();
            assert!(is_damaged(&store));
            store.close().unwrap();
            drop(store);
            for with_hint in [true, false] {
                if !with_hint {
                    fs::remove_file(dir.path().join(HINT_FILE)).unwrap();
                }
                let (store, _) =
                    crate::store::open_with(dir.path(), SyncMode::Always, cipher.clone()).unwrap();
                assert!(is_damaged(&store), "with hint: {with_hint}");
                assert_eq!(store.stats().damaged_keys, 1, "with hint: {with_hint}");
                store.close().unwrap();
            }
            let report = crate::store::check(dir.path(), cipher.as_deref()).unwrap();
            assert_eq!(report.damaged_keys, ["key-1"]);
            let (store, _) =
                crate::store::open_with(dir.path(), SyncMode::Always, cipher.clone()).unwrap();
            put(&store, &mut model, "key-1", b"written again");
            assert_eq!(store.stats().damaged_keys, 0);
            assert_matches(&store, &model);
        }
    }

    #[test]
    fn sync_markers_are_never_data_and_compaction_drops_them() {
        use crate::store::record::MARKER_LEN;
        use crate::watch::EventOp;
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), SyncMode::Never).unwrap();
        let subscription = store.events().subscribe(b"", None).unwrap();
        let mut model = Model::new();
        put(&store, &mut model, "a", b"1");
        store.sync_appended().unwrap();
        put(&store, &mut model, "b", b"2");
        store.sync_appended().unwrap();
        let marked = store.stats();
        // Idle: nothing new to mark, the log does not grow.
        store.sync_appended().unwrap();
        store.sync_appended().unwrap();
        assert_eq!(store.stats().log_bytes, marked.log_bytes);
        assert_eq!(marked.keys, 2);
        assert_eq!(
            marked.dead_bytes,
            2 * MARKER_LEN as u64,
            "markers are garbage"
        );
        let mut buf = Vec::new();
        assert_eq!(store.get(b"b", &mut buf).unwrap().unwrap().sequence, 2);
        assert_eq!(store.list(b"", None, 10).entries.len(), 2);
        // A marker written while compaction copies lands in the tail.
        let (hook_store, hook_model) = (
            Arc::clone(&store),
            Arc::new(std::sync::Mutex::new(Model::new())),
        );
        let during = Arc::clone(&hook_model);
        *store.step_hook() = Some(Box::new(move |step| {
            if step == Step::Copied {
                put(&hook_store, &mut during.lock().unwrap(), "c", b"3");
                hook_store.sync_appended().unwrap();
            }
        }));
        store.compact().unwrap();
        *store.step_hook() = None;
        model.insert("c".into(), b"3".to_vec());
        assert_matches(&store, &model);
        let compacted = store.stats();
        assert_eq!(
            compacted.dead_bytes, MARKER_LEN as u64,
            "only the tail's marker"
        );
        put(&store, &mut model, "d", b"4");
        assert_eq!(store.get(b"d", &mut buf).unwrap().unwrap().sequence, 4);
        let events: Vec<_> = subscription.events.try_iter().collect();
        let seen: Vec<_> = events.iter().map(|e| (e.op, e.key(), e.version)).collect();
        assert_eq!(
            seen,
            [
                (EventOp::Put, "a", 1),
                (EventOp::Put, "b", 2),
                (EventOp::Put, "c", 3),
                (EventOp::Put, "d", 4)
            ]
        );
        store.close().unwrap();
        drop(store);
        // The tail's marker was restamped for its new place: it names the
        // bytes before it there, and the log checks clean.
        let report = crate::store::check(dir.path(), None).unwrap();
        assert_eq!(report.scan.damage, None);
        assert_eq!(report.scan.markers, 2, "the tail's, and close's");
        assert_eq!(report.records, 4);
        assert_eq!(report.live_keys, 4);
        let (store, _) = open(dir.path(), SyncMode::Never).unwrap();
        assert_matches(&store, &model);
        // Closing an idle store writes no marker.
        let before = log_len(dir.path());
        store.close().unwrap();
        assert_eq!(log_len(dir.path()), before);
    }

    #[test]
    fn only_one_compaction_runs_at_a_time() {
        let (_dir, store, _) = churned(SyncMode::Never);
        let inner = Arc::clone(&store);
        let nested = Arc::new(std::sync::Mutex::new(None));
        let seen = Arc::clone(&nested);
        *store.step_hook() = Some(Box::new(move |step| {
            if step == Step::Started {
                *seen.lock().unwrap() = Some(matches!(inner.compact(), Err(CompactionError::Busy)));
            }
        }));
        store.compact().unwrap();
        *store.step_hook() = None;
        assert_eq!(*nested.lock().unwrap(), Some(true));
    }
}
