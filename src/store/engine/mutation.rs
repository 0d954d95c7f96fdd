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
use super::{Current, Expect, Store, StoreError, SyncMode};
use crate::clock::now_ms;
use crate::locks::{lock, read};
use crate::store::record::{
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
    /// [`MAX_CONTENT_TYPE_LEN`](crate::store::record::MAX_CONTENT_TYPE_LEN).
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
    /// as one batch frame (see [`crate::store::record`]), built in `buf`.
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

impl Store {
    /// The expiry sweep's write (see [`crate::store::expiry`]): writes tombstones for up to `max` keys whose expiry is at or before
    /// `due_by_ms`, as one batch frame, and returns how many once they are
    /// durable. Keys whose expiry changed meanwhile are left alone; locks do
    /// not stop expiry.
    pub fn expire_due(&self, due_by_ms: u64, max: usize) -> Result<usize, StoreError> {
        let due = read(&self.keydir).index.expired(due_by_ms, max);
        if due.is_empty() || self.is_read_only() {
            return Ok(0);
        }
        let mut writer = lock(&self.writer);
        let mut frame = Vec::new();
        FrameBuilder::begin(&mut frame);
        let mut count = 0;
        for (key, expires_at_ms) in &due {
            // Still the same expiry, and still past it now (the clock may
            // have stepped back since the index was read).
            let still_due = self.current_state(&writer, key, 0).is_some_and(|state| {
                state.attrs.expires_at_ms == *expires_at_ms && state.attrs.expired(now_ms())
            });
            if still_due {
                FrameBuilder::add(&mut frame, &RecordMeta::tombstone(key), b"");
                count += 1;
            }
        }
        if count > 0 {
            let last = self.append_frame(&mut writer, &mut frame, |_| EventOp::Expire)?;
            drop(writer);
            // The store's own write: nobody acknowledges it, the sweep waits.
            self.wait_for(self.ticket(last))?;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{fresh_store, put_if, try_put, MemFile};

    /// A store with `sync: always`, so every rule is checked against
    /// records not yet published too.
    fn store() -> std::sync::Arc<Store> {
        fresh_store(MemFile::with_bytes, SyncMode::Always).1
    }

    /// Applies `change` to `key` and waits for it, as a server does.
    fn change(store: &Store, key: &str, change: Change) -> Result<Effect, StoreError> {
        let mutation = Mutation::Change {
            key: key.as_bytes(),
            change,
            expect: Expect::Any,
        };
        let applied = store
            .apply(mutation, &mut Vec::new())
            .map_err(|err| err.error)?;
        store.wait_for(applied.ticket)?;
        Ok(applied.effect)
    }

    fn read(store: &Store, key: &str) -> Option<(Vec<u8>, u64, u64, bool)> {
        let mut buf = Vec::new();
        let value = store.get(key.as_bytes(), &mut buf).unwrap()?;
        Some((
            value.value.to_vec(),
            value.sequence,
            value.expires_at_ms,
            value.locked,
        ))
    }

    #[test]
    fn numbers_keep_their_kind() {
        let n = |text: &str| Number::parse(text).unwrap().unwrap();
        assert_eq!(n("41").add(Number::Int(1), false), Some(Number::Int(42)));
        assert_eq!(
            n("-1").add(Number::Int(i64::MIN), true),
            Some(Number::Int(i64::MAX))
        );
        assert_eq!(n(" -3\n"), Number::Int(-3));
        assert_eq!(
            n("1.5").add(Number::Int(1), false).unwrap().to_text(),
            "2.5"
        );
        assert_eq!(
            n("1.5").add(Number::Decimal(1.5), false).unwrap().to_text(),
            "3.0"
        );
        assert_eq!(
            n("2").add(Number::Decimal(0.5), true).unwrap().to_text(),
            "1.5"
        );
        assert_eq!(n("9223372036854775807").add(Number::Int(1), false), None);
        assert_eq!(n("-9223372036854775808").add(Number::Int(1), true), None);
        assert_eq!(Number::parse("9223372036854775808"), Some(Err(())));
        for bad in ["", "abc", "NaN", "inf", "-", "1.2.3x", "0x10"] {
            assert!(
                Number::parse(bad).is_none_or(|n| n.is_err()),
                "{bad} parsed"
            );
        }
    }

    #[test]
    fn a_locked_key_refuses_every_change_but_unlock_and_serves_reads() {
        let store = store();
        try_put(&store, "cfg", b"7").unwrap();
        assert!(matches!(
            change(&store, "cfg", Change::Lock),
            Ok(Effect::Changed { number: None, .. })
        ));
        let locked = read(&store, "cfg").unwrap();
        assert!(locked.3);
        assert!(matches!(
            try_put(&store, "cfg", b"8"),
            Err(StoreError::Locked)
        ));
        let mut buf = Vec::new();
        assert!(matches!(
            store.delete(b"cfg", &mut buf, Expect::Any),
            Err(StoreError::Locked)
        ));
        for refused in [
            Change::Increment(Number::Int(1)),
            Change::Decrement(Number::Int(1)),
            Change::Ttl(60_000),
            Change::Persist,
        ] {
            assert!(
                matches!(change(&store, "cfg", refused), Err(StoreError::Locked)),
                "{refused:?}"
            );
        }
        assert_eq!(read(&store, "cfg"), Some(locked), "nothing was written");
        change(&store, "cfg", Change::Unlock).unwrap();
        assert!(!read(&store, "cfg").unwrap().3);
        assert_eq!(try_put(&store, "cfg", b"8").unwrap(), WriteOutcome::Updated);
    }

    #[test]
    fn locking_twice_or_unlocking_an_unlocked_key_is_refused_and_writes_nothing() {
        let store = store();
        try_put(&store, "k", b"v").unwrap();
        assert!(matches!(
            change(&store, "k", Change::Unlock),
            Err(StoreError::NotLocked)
        ));
        change(&store, "k", Change::Lock).unwrap();
        let locked = read(&store, "k");
        assert!(matches!(
            change(&store, "k", Change::Lock),
            Err(StoreError::AlreadyLocked)
        ));
        assert_eq!(read(&store, "k"), locked);
        change(&store, "k", Change::Unlock).unwrap();
        assert!(matches!(
            change(&store, "k", Change::Unlock),
            Err(StoreError::NotLocked)
        ));
        assert_eq!(read(&store, "k").unwrap().0, b"v");
    }

    #[test]
    fn increments_and_decrements_keep_the_number_kind_and_the_key_attributes() {
        let store = store();
        let mut buf = Vec::new();
        let expires = now_ms() + 300_000;
        let mut record = PutBuffer::new(&mut buf, b"n", b"text/plain", expires, 1);
        record.push_value(b"1");
        let put = Mutation::Put {
            record,
            expect: Expect::Any,
        };
        let ticket = store.apply(put, &mut Vec::new()).unwrap().ticket;
        store.wait_for(ticket).unwrap();
        let effect = change(&store, "n", Change::Increment(Number::Int(1))).unwrap();
        let version = read(&store, "n").unwrap().1;
        assert_eq!(
            effect,
            Effect::Changed {
                version,
                number: Some(Number::Int(2))
            }
        );
        let effect = change(&store, "n", Change::Decrement(Number::Decimal(0.5))).unwrap();
        assert!(matches!(
            effect,
            Effect::Changed {
                number: Some(Number::Decimal(d)),
                ..
            } if d == 1.5
        ));
        let mut buf = Vec::new();
        let value = store.get(b"n", &mut buf).unwrap().unwrap();
        assert_eq!(value.value, b"1.5");
        assert_eq!(value.content_type, b"text/plain");
        assert_eq!(value.expires_at_ms, expires);
        // -1 - i64::MIN is i64::MAX, exactly; one more overflows.
        try_put(&store, "m", b"-1").unwrap();
        change(&store, "m", Change::Decrement(Number::Int(i64::MIN))).unwrap();
        assert_eq!(
            read(&store, "m").unwrap().0,
            i64::MAX.to_string().as_bytes()
        );
        let before = read(&store, "m");
        assert!(matches!(
            change(&store, "m", Change::Increment(Number::Int(1))),
            Err(StoreError::Overflow)
        ));
        assert_eq!(read(&store, "m"), before, "nothing was written");
    }

    #[test]
    fn non_numeric_values_cannot_be_incremented() {
        let store = store();
        // Text that only looks numeric, and bytes that are no text at all.
        let values: [&[u8]; 7] = [
            b"1e",
            b"--1",
            b" ",
            b"+",
            b"1_000",
            b"\xc3\x28",
            b"Infinity",
        ];
        for (i, stored) in values.iter().enumerate() {
            let key = format!("v{i}");
            try_put(&store, &key, stored).unwrap();
            let before = read(&store, &key);
            for step in [
                Change::Increment(Number::Int(1)),
                Change::Decrement(Number::Int(1)),
            ] {
                assert!(
                    matches!(change(&store, &key, step), Err(StoreError::NotANumber)),
                    "{key}"
                );
            }
            assert_eq!(read(&store, &key), before, "{key} was rewritten");
        }
    }

    #[test]
    fn ttl_sets_an_expiry_and_persist_removes_it_writing_nothing_when_there_is_none() {
        let store = store();
        try_put(&store, "k", b"v").unwrap();
        let before_ttl = now_ms();
        change(&store, "k", Change::Ttl(60_000)).unwrap();
        let (_, version, expires, _) = read(&store, "k").unwrap();
        assert!((before_ttl + 60_000..=now_ms() + 60_000).contains(&expires));
        let effect = change(&store, "k", Change::Persist).unwrap();
        let (_, persisted, expires, _) = read(&store, "k").unwrap();
        assert!(persisted > version);
        assert_eq!(expires, 0);
        assert_eq!(effect.version(), persisted);
        // Persist on a key without expiry changes nothing.
        let effect = change(&store, "k", Change::Persist).unwrap();
        assert_eq!(effect.version(), persisted);
        assert_eq!(read(&store, "k").unwrap().1, persisted);
    }

    #[test]
    fn a_change_of_a_missing_or_deleted_key_is_not_found() {
        let store = store();
        let every = [
            Change::Lock,
            Change::Unlock,
            Change::Increment(Number::Int(1)),
            Change::Decrement(Number::Int(1)),
            Change::Ttl(5_000),
            Change::Persist,
        ];
        try_put(&store, "gone", b"1").unwrap();
        assert!(store.delete(b"gone", &mut Vec::new(), Expect::Any).unwrap());
        for key in ["absent", "gone"] {
            for op in every {
                assert!(
                    matches!(change(&store, key, op), Err(StoreError::NotFound)),
                    "{op:?} of {key}"
                );
            }
        }
        assert_eq!(read(&store, "absent"), None);
    }

    #[test]
    fn a_change_checks_its_condition_first() {
        let store = store();
        let version = put_if(&store, "k", b"1", Expect::Any).unwrap().version;
        let mutation = |expect| Mutation::Change {
            key: b"k",
            change: Change::Increment(Number::Int(1)),
            expect,
        };
        let refused = store.apply(mutation(Expect::Version(version + 1)), &mut Vec::new());
        assert!(matches!(
            refused,
            Err(MutationError {
                error: StoreError::PreconditionFailed,
                ..
            })
        ));
        let applied = store
            .apply(mutation(Expect::Version(version)), &mut Vec::new())
            .unwrap();
        store.wait_for(applied.ticket).unwrap();
        assert_eq!(read(&store, "k").unwrap().0, b"2");
    }

    #[test]
    fn a_write_is_visible_only_once_its_ticket_is_durable_with_sync_always() {
        let (file, store) = fresh_store(MemFile::with_bytes, SyncMode::Always);
        file.hold_syncs();
        let applied = crate::store::testing::put_unsynced(&store, "k", b"v", Expect::Any).unwrap();
        assert!(!applied.ticket.is_settled());
        assert_eq!(read(&store, "k"), None, "visible before its fsync");
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| store.wait_for(applied.ticket));
            file.release_syncs();
            waiter.join().unwrap().unwrap();
        });
        assert_eq!(read(&store, "k").unwrap().0, b"v");
        // Without `sync: always` a write is visible at once, its ticket
        // settled.
        let (_, store) = fresh_store(MemFile::with_bytes, SyncMode::Never);
        let applied = crate::store::testing::put_unsynced(&store, "k", b"v", Expect::Any).unwrap();
        assert!(applied.ticket.is_settled());
        assert_eq!(read(&store, "k").unwrap().0, b"v");
    }
}
