//! The storage engine, Bitcask-style.
//!
//! * **Log** (`data.log`): an append-only file of CRC-checked records, one per
//!   put or delete, in write order. Byte layout and format version: [`record`].
//! * **Index** (the keydir, in memory): live key → offset and length of its
//!   latest record. Values stay on disk and are read with one positional read,
//!   then CRC-checked before they are served. See [`index`].
//! * **Recovery**: at open the log is scanned and verified; a torn tail is cut,
//!   damage in the middle stops the node unless a hint file covers it (the
//!   damaged keys then answer errors until compaction quarantines them).
//!   See [`scan`].
//! * **Writes**: every change is a [`Mutation`] applied under one writer
//!   lock. See [`mutation`](engine::mutation) (what each change does) and [`engine`] (the
//!   append, and what happens when the disk fails).
//! * **Durability**: each write returns a [`Ticket`] to wait on before it is
//!   acknowledged; group-committed fdatasync. See [`commit`](engine::commit).
//! * **Disk access**: only through the [`file::LogFile`] trait, so tests can
//!   put a failing disk underneath.
//! * **Hint file**: an index snapshot written after compaction and at clean
//!   shutdown, so a restart scans only the log written since. See [`hint`].
//! * **Encryption at rest** (optional): every record in an authenticated
//!   envelope bound to its place in the log. See [`crypt`].
//! * **Expiry**: keys with a time to live, swept by a background thread.
//!   See [`expiry`].
//! * **Compaction**: rewriting the log with only live records, crash-safe at
//!   every step. See [`compaction`].
//! * **Directory**: its files ([`layout`]); its lock and opening it
//!   ([`directory`]).
//! * **Digest**: one hash of the contents under a prefix, for comparing
//!   nodes ([`digest`]).
//! * **Snapshots**: a point-in-time image of the store in one file, made
//!   while it serves ([`snapshot`]), restored offline ([`restore`]).
//! * **Replication**: a primary's log read for its followers ([`tail`]); a
//!   follower applying what it sent, and starting over from its snapshot
//!   ([`replica`]).

pub mod compaction;
pub mod crypt;
pub mod digest;
pub mod directory;
pub mod engine;
pub mod expiry;
pub mod file;
pub mod hint;
pub mod index;
pub mod layout;
pub mod record;
pub mod repair;
pub mod replica;
pub mod restore;
pub mod scan;
pub mod snapshot;
pub mod stats;
pub mod tail;
#[cfg(test)]
pub mod testing;
#[cfg(test)]
mod torture;

pub use compaction::{spawn_compactor, CompactionError, CompactionPolicy};
pub use digest::{Digest, DigestError};
pub use directory::{check, open, open_with, OpenError};
pub use engine::commit::{Acknowledger, Ticket};
pub use engine::mutation::{
    Applied, BatchOp, BatchResult, Change, Effect, Mutation, MutationError, Number, PutBuffer,
    WriteOutcome, Written,
};
pub use engine::{
    Expect, Sendable, Store, StoreError, StoredValue, SyncMode, ValueInLog, SENT_FROM_LOG_OVER,
};
pub use expiry::spawn_expiry_sweeper;
pub use repair::repair;
pub use stats::StoreStats;
