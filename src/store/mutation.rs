//! Mutations: every change a client makes to the store, as one type
//! ([`Mutation`]) applied by [`Store::apply`] under the writer lock.
//!
//! * Put and delete, with an optional condition on the key's version
//!   ([`Expect`]). A put's record is built where its value is read
//!   ([`PutBuffer`]), so a value is never copied before it is written.
//! * Changes in place ([`Change`]), each one atomic read-modify-write of the
//!   key's record:
//!   * `Lock` / `Unlock`: a locked key refuses puts, deletes and every other
//!     change ([`StoreError::Locked`]) until it is unlocked; locking a
//!     locked key or unlocking an unlocked one is refused too.
//!   * `Increment` / `Decrement` by a step: integers stay integers (i64,
//!     overflow is refused), decimals stay decimals ([`Number`]). The key
//!     keeps its content type and expiry.
//!   * `Ttl` sets an expiry; `Persist` removes it (writing nothing if there
//!     is none).
//! * Batches of puts and deletes ([`BatchOp`]), applied all or none as one
//!   log frame.
//!
//! Applying a mutation returns what it did ([`Effect`]) and the
//! [`Ticket`] to wait on before acknowledging it (see [`super::commit`]).

use std::io::{self, Read};

use super::commit::Ticket;
use super::engine::{lock, now_ms, Current, Expect, Store, StoreError, SyncMode};
use super::record::{
    FrameBuilder, RecordBuilder, RecordKind, RecordMeta, RecordView, RECORD_HEADER_LEN,
};
use crate::watch::EventOp;

/// A change to the store, as [`Store::apply`] takes it.
#[derive(Debug)]
pub enum Mutation<'a> {
    /// Set a key to a value: the record built in a [`PutBuffer`].
    Put {
        /// The record, holding the key, content type, expiry and value.
        record: PutBuffer<'a>,
        /// Condition on the key's current state.
        expect: Expect,
    },
    /// Delete a key; [`StoreError::NotFound`] if it does not exist.
    Delete {
        /// The key.
        key: &'a [u8],
        /// Condition on the key's current state.
        expect: Expect,
    },
    /// Change an existing key in place; [`StoreError::NotFound`] if it
    /// does not exist.
    Change {
        /// The key.
        key: &'a [u8],
        /// The change.
        change: Change,
        /// Condition on the key's current state.
        expect: Expect,
    },
    /// Apply every operation or none. Each key may appear only once.
    Batch(&'a [BatchOp<'a>]),
}

/// A change in place of an existing key (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// Refuse changes until unlocked.
    Lock,
    /// Accept changes again.
    Unlock,
    /// Add the step to a numeric value.
    Increment(Number),
    /// Subtract the step from a numeric value.
    Decrement(Number),
    /// Expire this many milliseconds from now.
    Ttl(u64),
    /// Never expire.
    Persist,
}

/// What an applied mutation did, and what to wait on before acknowledging
/// it.
#[derive(Debug)]
pub struct Applied {
    /// What it did.
    pub effect: Effect,
    /// What it must see durable before it is acknowledged.
    pub ticket: Ticket,
}

/// What a mutation did.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A put: created or updated, and the key's new version.
    Put(Written),
    /// A delete: the tombstone's sequence number.
    Deleted(u64),
    /// A change in place: the key's version afterwards (unchanged if
    /// nothing was written), and the new number of an increment or
    /// decrement.
    Changed {
        /// The key's version.
        version: u64,
        /// The value after an increment or decrement.
        number: Option<Number>,
    },
    /// A batch: what each operation did, in order.
    Batch(Vec<BatchResult>),
}

impl Effect {
    /// The changed key's version afterwards (a batch: its last record's
    /// sequence number, 0 if it wrote none).
    pub fn version(&self) -> u64 {
        match self {
            Self::Put(written) => written.version,
            Self::Deleted(version) | Self::Changed { version, .. } => *version,
            Self::Batch(results) => results
                .iter()
                .filter_map(|result| match result {
                    BatchResult::Put(written) => Some(written.version),
                    BatchResult::Deleted(version) => Some(*version),
                    BatchResult::NotFound => None,
                })
                .max()
                .unwrap_or(0),
        }
    }

    /// What each operation of a batch did (none for another mutation).
    pub fn into_batch_results(self) -> Vec<BatchResult> {
        match self {
            Self::Batch(results) => results,
            _ => Vec::new(),
        }
    }
}

/// The record of a put, built where its value is read: [`new`](Self::new)
/// writes the header, key and content type, the caller appends the value
/// (straight from a request body, say), and [`Mutation::Put`] writes the
/// record from this very buffer.
#[derive(Debug)]
pub struct PutBuffer<'b> {
    record: &'b mut Vec<u8>,
    /// Where the value starts.
    value_start: usize,
}

impl<'b> PutBuffer<'b> {
    /// Starts the record of an unlocked put of `key` in `buf` (cleared
    /// first), with room for `value_len` bytes of value. The key must be
    /// 1 to 65535 bytes and the content type at most
    /// [`MAX_CONTENT_TYPE_LEN`](super::record::MAX_CONTENT_TYPE_LEN).
    pub fn new(
        buf: &'b mut Vec<u8>,
        key: &[u8],
        content_type: &[u8],
        expires_at_ms: u64,
        value_len: usize,
    ) -> Self {
        RecordBuilder::begin(buf, &RecordMeta::put(key, content_type, expires_at_ms));
        let value_start = buf.len();
        buf.reserve(value_len);
        Self {
            record: buf,
            value_start,
        }
    }

    /// Appends everything `reader` yields to the value.
    pub fn read_value(&mut self, mut reader: impl Read) -> io::Result<usize> {
        reader.read_to_end(self.record)
    }

    /// Appends `bytes` to the value.
    pub fn push_value(&mut self, bytes: &[u8]) {
        self.record.extend_from_slice(bytes);
    }

    /// The value's length so far.
    pub fn value_len(&self) -> usize {
        self.record.len() - self.value_start
    }
}

/// What a successful put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The key did not exist before.
    Created,
    /// The key existed and now has the new value.
    Updated,
}

/// A successful put: what it did and the key's new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Created or updated.
    pub outcome: WriteOutcome,
    /// The key's version now (the sequence number of the write).
    pub version: u64,
}

/// One operation of an atomic batch.
#[derive(Debug, Clone, Copy)]
pub enum BatchOp<'a> {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: &'a [u8],
        /// The value's content type.
        content_type: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// Absolute expiry, 0 = never.
        expires_at_ms: u64,
        /// Whether the key is locked once written.
        locked: bool,
        /// Condition on the key's current state.
        expect: Expect,
    },
    /// Delete `key` (nothing is written if it does not exist).
    Delete {
        /// The key.
        key: &'a [u8],
        /// Condition on the key's current state.
        expect: Expect,
    },
}

impl BatchOp<'_> {
    /// The key the operation changes.
    pub fn key(&self) -> &[u8] {
        match self {
            Self::Put { key, .. } | Self::Delete { key, .. } => key,
        }
    }
}

/// What one batch operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchResult {
    /// A put: created or updated, and the key's new version.
    Put(Written),
    /// A delete of an existing key, with the tombstone's sequence number.
    Deleted(u64),
    /// A delete of a key that did not exist: nothing written.
    NotFound,
}

/// A mutation refused (nothing was written), or whose append failed.
#[derive(Debug)]
pub struct MutationError {
    /// For a batch, the position of the operation that refused it (0 when
    /// the whole batch failed to append); 0 for any other mutation.
    pub index: usize,
    /// Why it failed.
    pub error: StoreError,
}

impl From<StoreError> for MutationError {
    fn from(error: StoreError) -> Self {
        Self { index: 0, error }
    }
}
impl Store {
    /// Applies `mutation` under the writer lock: refused (nothing written)
    /// if the store is read-only, a key it changes is locked or a condition
    /// does not hold; else its records are appended. Returns once they are
    /// in the log, visible at once with `sync: interval` and `never` and
    /// once durable with `sync: always`; the caller acknowledges the
    /// mutation only after [`Store::wait_for`] its ticket. `scratch` holds
    /// the records of every mutation but a put (which brings its own).
    pub fn apply(
        &self,
        mutation: Mutation<'_>,
        scratch: &mut Vec<u8>,
    ) -> Result<Applied, MutationError> {
        match mutation {
            Mutation::Put { record, expect } => Ok(self.apply_put(record.record, expect)?),
            Mutation::Delete { key, expect } => Ok(self.apply_delete(key, scratch, expect)?),
            Mutation::Change {
                key,
                change,
                expect,
            } => Ok(self.apply_change(key, change, expect, scratch)?),
            Mutation::Batch(ops) => self.apply_batch(ops, scratch),
        }
    }

    /// Appends a put record started by [`PutBuffer::new`] and followed by
    /// its value bytes, if the key is not locked and meets `expect`.
    fn apply_put(&self, record: &mut [u8], expect: Expect) -> Result<Applied, StoreError> {
        debug_assert_eq!(RecordBuilder::kind(record), RecordKind::Put);
        let mut writer = lock(&self.writer);
        let key = RecordBuilder::key(record);
        let (live, version) = if expect == Expect::Any && self.sync != SyncMode::Always {
            // Nothing to check but the lock, and the index is updated at
            // once: whether the key was live is learnt from that update, so
            // a put walks the index once, not twice (the hottest write).
            let now = now_ms();
            self.check_unlocked(key, now)?;
            let (version, replaced) = self.append(&mut writer, record, EventOp::Put)?;
            (replaced.is_some_and(|attrs| !attrs.expired(now)), version)
        } else {
            let state = self.state_for_write(&writer, key, expect)?;
            let (version, _) = self.append(&mut writer, record, EventOp::Put)?;
            (state.is_some(), version)
        };
        let outcome = if live {
            WriteOutcome::Updated
        } else {
            WriteOutcome::Created
        };
        Ok(Applied {
            effect: Effect::Put(Written { outcome, version }),
            ticket: self.ticket(version),
        })
    }

    /// Deletes `key` by appending a tombstone, built in `buf`, if the key
    /// exists, is not locked and meets `expect`.
    fn apply_delete(
        &self,
        key: &[u8],
        buf: &mut Vec<u8>,
        expect: Expect,
    ) -> Result<Applied, StoreError> {
        let mut writer = lock(&self.writer);
        if self.state_for_write(&writer, key, expect)?.is_none() {
            return Err(StoreError::NotFound);
        }
        RecordBuilder::begin(buf, &RecordMeta::tombstone(key));
        let (version, _) = self.append(&mut writer, buf, EventOp::Delete)?;
        Ok(Applied {
            effect: Effect::Deleted(version),
            ticket: self.ticket(version),
        })
    }

    /// Changes `key` in place (see [`Change`]), building its new record in
    /// `buf`.
    fn apply_change(
        &self,
        key: &[u8],
        change: Change,
        expect: Expect,
        buf: &mut Vec<u8>,
    ) -> Result<Applied, StoreError> {
        let mut number = None;
        let (version, covered) = self.update(key, expect, buf, |current, buf| {
            rewrite(change, current, buf, &mut number)
        })?;
        Ok(Applied {
            effect: Effect::Changed { version, number },
            ticket: self.ticket(covered),
        })
    }

    /// Applies every operation of `ops` or none: their records are written
    /// as one batch frame (see [`super::record`]), built in `buf`.
    fn apply_batch(
        &self,
        ops: &[BatchOp<'_>],
        buf: &mut Vec<u8>,
    ) -> Result<Applied, MutationError> {
        let mut writer = lock(&self.writer);
        let mut results = Vec::with_capacity(ops.len());
        FrameBuilder::begin(buf);
        for (index, op) in ops.iter().enumerate() {
            let state = self
                .state_for_write(&writer, op.key(), expect_of(op))
                .map_err(|error| MutationError { index, error })?;
            match *op {
                BatchOp::Put {
                    key,
                    content_type,
                    value,
                    expires_at_ms,
                    locked,
                    ..
                } => {
                    let meta = RecordMeta {
                        locked,
                        ..RecordMeta::put(key, content_type, expires_at_ms)
                    };
                    FrameBuilder::add(buf, &meta, value);
                    let outcome = if state.is_some() {
                        WriteOutcome::Updated
                    } else {
                        WriteOutcome::Created
                    };
                    results.push(BatchResult::Put(Written {
                        outcome,
                        version: 0,
                    }));
                }
                BatchOp::Delete { key, .. } if state.is_some() => {
                    FrameBuilder::add(buf, &RecordMeta::tombstone(key), b"");
                    results.push(BatchResult::Deleted(0));
                }
                BatchOp::Delete { .. } => results.push(BatchResult::NotFound),
            }
        }
        let first = writer.next_sequence;
        // A batch that writes nothing still answers from what it saw.
        let mut covered = first - 1;
        if buf.len() > RECORD_HEADER_LEN {
            let op_of = |member: &RecordView<'_>| match member.header.kind {
                RecordKind::Delete => EventOp::Delete,
                _ => EventOp::Put,
            };
            covered = self.append_frame(&mut writer, buf, op_of)?;
        }
        drop(writer);
        let mut version = first;
        for result in &mut results {
            match result {
                BatchResult::Put(written) => written.version = version,
                BatchResult::Deleted(sequence) => *sequence = version,
                BatchResult::NotFound => continue,
            }
            version += 1;
        }
        Ok(Applied {
            effect: Effect::Batch(results),
            ticket: self.ticket(covered),
        })
    }
}

fn expect_of(op: &BatchOp<'_>) -> Expect {
    match op {
        BatchOp::Put { expect, .. } | BatchOp::Delete { expect, .. } => *expect,
    }
}

/// Builds the key's new record for `change` in `buf` and returns the event
/// it makes, or `None` to write nothing, or refuses. An increment's or
/// decrement's result goes to `number`.
fn rewrite(
    change: Change,
    current: &Current<'_>,
    buf: &mut Vec<u8>,
    number: &mut Option<Number>,
) -> Result<Option<EventOp>, StoreError> {
    let locked = current.attrs.locked;
    let mut rewrite = |value: &[u8], expires_at_ms: u64, locked: bool| {
        let meta = RecordMeta {
            kind: RecordKind::Put,
            key: current.key,
            content_type: current.content_type,
            expires_at_ms,
            locked,
        };
        RecordBuilder::begin(buf, &meta);
        buf.extend_from_slice(value);
    };
    let expires = current.attrs.expires_at_ms;
    match change {
        Change::Lock if locked => Err(StoreError::AlreadyLocked),
        Change::Unlock if !locked => Err(StoreError::NotLocked),
        Change::Lock | Change::Unlock => {
            let lock = change == Change::Lock;
            rewrite(current.value, expires, lock);
            Ok(Some(if lock { EventOp::Lock } else { EventOp::Unlock }))
        }
        _ if locked => Err(StoreError::Locked),
        Change::Increment(step) | Change::Decrement(step) => {
            let text = std::str::from_utf8(current.value).ok();
            let parsed = text.and_then(Number::parse).ok_or(StoreError::NotANumber)?;
            let decrement = matches!(change, Change::Decrement(_));
            let result = parsed
                .ok()
                .and_then(|n| n.add(step, decrement))
                .ok_or(StoreError::Overflow)?;
            rewrite(result.to_text().as_bytes(), expires, false);
            *number = Some(result);
            Ok(Some(EventOp::Put))
        }
        Change::Ttl(ttl_ms) => {
            rewrite(current.value, now_ms().saturating_add(ttl_ms), false);
            Ok(Some(EventOp::Put))
        }
        Change::Persist if expires == 0 => Ok(None),
        Change::Persist => {
            rewrite(current.value, 0, false);
            Ok(Some(EventOp::Put))
        }
    }
}

/// A number as stored or given: integers and decimals are kept apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// A 64-bit signed integer.
    Int(i64),
    /// A finite decimal.
    Decimal(f64),
}

impl Number {
    /// Parses a number written as text; `None` if it is not one, or an
    /// integer too large for 64 bits (`Some(Err(()))`).
    pub fn parse(text: &str) -> Option<Result<Self, ()>> {
        let text = text.trim();
        let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Some(text.parse().map(Self::Int).map_err(|_| ()));
        }
        let looks_decimal = !digits.is_empty()
            && digits
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
        let value: f64 = text.parse().ok().filter(|_| looks_decimal)?;
        value.is_finite().then_some(Ok(Self::Decimal(value)))
    }

    /// `self + step` (`self - step` if `subtract`), or `None` when an
    /// integer result overflows or a decimal one is not finite.
    fn add(self, step: Number, subtract: bool) -> Option<Number> {
        match (self, step) {
            (Self::Int(a), Self::Int(b)) if subtract => a.checked_sub(b).map(Self::Int),
            (Self::Int(a), Self::Int(b)) => a.checked_add(b).map(Self::Int),
            (a, b) => {
                let b = if subtract { -b.as_f64() } else { b.as_f64() };
                Some(a.as_f64() + b)
                    .filter(|sum| sum.is_finite())
                    .map(Self::Decimal)
            }
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Self::Int(n) => n as f64,
            Self::Decimal(d) => d,
        }
    }

    /// The number as stored: decimals always show a decimal point.
    fn to_text(self) -> String {
        match self {
            Self::Int(n) => n.to_string(),
            Self::Decimal(d) => {
                let text = d.to_string();
                if text.contains('.') {
                    text
                } else {
                    format!("{text}.0")
                }
            }
        }
    }
}
