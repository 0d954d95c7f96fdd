//! The append path every write goes through, under the writer lock:
//! the key's state for a write (locks, conditions), appending records and
//! batch frames (sealed when encrypted), cutting a failed append back, and
//! registering what was appended (pending or published, see [`super::commit`]).

use std::io;
use std::sync::MutexGuard;

use super::read::{corrupt, read_record};
use super::{Current, Expect, KeyState, Pending, Placed, Store, StoreError, SyncMode, Writer};
use crate::clock::now_ms;
use crate::locks::{lock, read, write};
use crate::store::crypt::{open_copy, stored_form};
use crate::store::file::LogFile;
use crate::store::index::{Attrs, Index, Location};
use crate::store::record::{
    members, verify, FrameBuilder, Position, RecordBuilder, RecordHeader, RecordKind, RecordView,
    ENVELOPE_OVERHEAD, RECORD_HEADER_LEN,
};
use crate::watch::{Event, EventOp};

impl Store {
    /// Read-modify-write of an existing key, atomic with respect to every
    /// other write: `change` sees the key's current record and either builds
    /// the new record in `buf` (with [`RecordBuilder::begin`], kind `Put`)
    /// and returns the event it makes, or returns `None` to write nothing.
    /// Returns the key's version afterwards, and the sequence number the
    /// caller must see durable before it acknowledges the change: the new
    /// record's, or when nothing was written, that of the latest record
    /// appended (the current record may not be durable yet). Locks are for
    /// `change` to honour (it is how a key gets unlocked); `expect` is
    /// checked first.
    pub(in crate::store) fn update<E: From<StoreError>>(
        &self,
        key: &[u8],
        expect: Expect,
        buf: &mut Vec<u8>,
        change: impl FnOnce(&Current<'_>, &mut Vec<u8>) -> Result<Option<EventOp>, E>,
    ) -> Result<(u64, u64), E> {
        let mut writer = lock(&self.writer);
        if self.is_read_only() {
            return Err(StoreError::ReadOnly.into());
        }
        let state = self
            .current_state(&writer, key, now_ms())
            .ok_or(StoreError::NotFound)?;
        let mut old = Vec::new();
        let at = Position {
            file_id: writer.header.file_id,
            offset: state.location.offset,
        };
        let source = (&*writer.file, at.file_id, writer.cipher.as_deref());
        let record = read_record(source, state.location, key, &mut old)?;
        let current = Current {
            key: record.key,
            value: record.value,
            content_type: record.content_type,
            attrs: state.attrs,
            version: record.header.sequence,
        };
        if !expect.holds(Some(current.version)) {
            return Err(StoreError::PreconditionFailed.into());
        }
        match change(&current, buf)? {
            Some(op) => {
                let (version, _) = self.append(&mut writer, buf, op)?;
                Ok((version, version))
            }
            None => Ok((current.version, writer.next_sequence - 1)),
        }
    }

    /// The state of `key` for a write (its latest record, published or
    /// not), after refusing the write if the store is read-only, the key is
    /// locked or `expect` does not hold. `None`: the key does not exist (or
    /// has expired).
    pub(super) fn state_for_write(
        &self,
        writer: &Writer,
        key: &[u8],
        expect: Expect,
    ) -> Result<Option<KeyState>, StoreError> {
        if self.is_read_only() {
            return Err(StoreError::ReadOnly);
        }
        let state = self.current_state(writer, key, now_ms());
        if expect != Expect::Any {
            let version = match state {
                Some(state) if expect.needs_version() => Some(self.version_of(writer, key, state)?),
                // Only existence matters: any version will do.
                Some(_) => Some(0),
                None => None,
            };
            if !expect.holds(version) {
                return Err(StoreError::PreconditionFailed);
            }
        }
        if state.is_some_and(|state| state.attrs.locked) {
            return Err(StoreError::Locked);
        }
        Ok(state)
    }

    /// Refuses a write to `key` if the store is read-only or the key is
    /// locked (and not expired at `now_ms`). Only for a store whose index
    /// is updated at once: it does not look at pending records.
    pub(super) fn check_unlocked(&self, key: &[u8], now_ms: u64) -> Result<(), StoreError> {
        if self.is_read_only() {
            return Err(StoreError::ReadOnly);
        }
        let attrs = read(&self.keydir).index.attrs(key);
        if attrs.locked && !attrs.expired(now_ms) {
            return Err(StoreError::Locked);
        }
        Ok(())
    }

    /// The latest record of `key`, published or not; `None` if the key does
    /// not exist or expired by `now_ms` (0: ignore expiry).
    pub(super) fn current_state(
        &self,
        writer: &Writer,
        key: &[u8],
        now_ms: u64,
    ) -> Option<KeyState> {
        let state = writer.pending_state(key).unwrap_or_else(|| {
            let keydir = read(&self.keydir);
            keydir.index.get(key).map(|location| KeyState {
                location,
                attrs: keydir.index.attrs(key),
                sequence: None,
            })
        })?;
        (now_ms == 0 || !state.attrs.expired(now_ms)).then_some(state)
    }

    /// The version of a key whose state is `state`: known for a pending
    /// record, else read from its record's header.
    pub(super) fn version_of(
        &self,
        writer: &Writer,
        key: &[u8],
        state: KeyState,
    ) -> Result<u64, StoreError> {
        if let Some(sequence) = state.sequence {
            return Ok(sequence);
        }
        let offset = state.location.offset;
        if state.attrs.damaged {
            return Err(corrupt(offset));
        }
        let mut header = [0u8; RECORD_HEADER_LEN];
        writer
            .file
            .read_at(&mut header, offset)
            .map_err(StoreError::Io)?;
        let header = RecordHeader::decode(&header).map_err(|_| corrupt(offset))?;
        // An envelope's header shows no key (it is encrypted); its sequence
        // number is the record's, and authenticated.
        if !header.is_encrypted() && usize::from(header.key_len) != key.len() {
            return Err(corrupt(offset));
        }
        Ok(header.sequence)
    }

    /// Seals `record` (a put or tombstone) and appends it, then registers
    /// it: visible at once, or once durable, as the sync mode says. Returns
    /// its sequence number, and what it replaced in the index (see
    /// [`Store::register`]).
    pub(super) fn append(
        &self,
        writer: &mut Writer,
        record: &mut [u8],
        op: EventOp,
    ) -> Result<(u64, Replaced), StoreError> {
        let sequence = writer.next_sequence;
        let offset = writer.end;
        let at = Position {
            file_id: writer.header.file_id,
            offset,
        };
        RecordBuilder::seal(record, sequence, now_ms(), at);
        let stored_len = self.append_sealed(writer, record, at)?;
        let view = verify(record, at).map_err(|_| corrupt(offset))?;
        let place = Placed {
            offset,
            stored_len,
            frame_offset: offset,
        };
        let replaced = self.register(writer, &view, place, op, None);
        Ok((sequence, replaced))
    }

    /// Seals the batch frame in `frame` and appends it; every member is then
    /// registered with the event `op_of` gives it. Returns the last sequence
    /// number.
    pub(super) fn append_frame(
        &self,
        writer: &mut MutexGuard<'_, Writer>,
        frame: &mut [u8],
        op_of: impl Fn(&RecordView<'_>) -> EventOp,
    ) -> Result<u64, StoreError> {
        let offset = writer.end;
        let at = Position {
            file_id: writer.header.file_id,
            offset,
        };
        let (first, now) = (writer.next_sequence, now_ms());
        let cipher = writer.cipher.clone();
        let mut wrapped = Vec::new();
        let (last, stored): (u64, &[u8]) = match cipher.as_deref() {
            None => (FrameBuilder::seal(frame, first, now, at), frame),
            Some(cipher) => {
                let seal =
                    |member: &[u8], place, out: &mut Vec<u8>| cipher.seal(member, place, out);
                let last = FrameBuilder::seal_wrapped(
                    frame,
                    first,
                    now,
                    at,
                    ENVELOPE_OVERHEAD,
                    &mut wrapped,
                    seal,
                );
                (last, &wrapped)
            }
        };
        self.append_bytes(writer, stored)?;
        self.register_members(writer, stored, at, op_of)?;
        Ok(last)
    }

    /// Registers the batch frame `stored`, just appended at `at`: every
    /// member with the event `op_of` gives it, all of them visible at once
    /// (or pending their fsync together).
    fn register_members(
        &self,
        writer: &mut Writer,
        stored: &[u8],
        at: Position,
        op_of: impl Fn(&RecordView<'_>) -> EventOp,
    ) -> Result<(), StoreError> {
        let offset = at.offset;
        let cipher = writer.cipher.clone();
        let view = verify(stored, at).map_err(|_| corrupt(offset))?;
        let mut scratch = Vec::new();
        // Readers must see the whole batch or none of it: without a pending
        // sync, the members are published together below.
        let mut visible = Vec::new();
        for member in members(&view, at) {
            let (member_offset, member) = member.map_err(|_| corrupt(offset))?;
            let place = Position {
                offset: member_offset,
                ..at
            };
            let stored_len = member.bytes.len();
            let plain = open_copy(cipher.as_deref(), member, place, &mut scratch)
                .map_err(|_| corrupt(offset))?;
            let op = op_of(&plain);
            let place = Placed {
                offset: member_offset,
                stored_len,
                frame_offset: offset,
            };
            self.register(writer, &plain, place, op, Some(&mut visible));
        }
        if !visible.is_empty() {
            let mut keydir = write(&self.keydir);
            for member in &visible {
                index_record(&mut keydir.index, &member.key, member.location);
            }
            drop(keydir);
            for member in visible {
                self.events.publish(member.event);
            }
        }
        Ok(())
    }

    /// Registers `stored`, a record or batch frame just appended at `at`
    /// that arrived from a primary: puts as puts, tombstones as deletes.
    pub(super) fn register_appended(
        &self,
        writer: &mut Writer,
        stored: &[u8],
        at: Position,
    ) -> Result<(), StoreError> {
        let op_of = |record: &RecordView<'_>| match record.header.kind {
            RecordKind::Delete => EventOp::Delete,
            _ => EventOp::Put,
        };
        let view = verify(stored, at).map_err(|_| corrupt(at.offset))?;
        if view.header.kind == RecordKind::Batch {
            return self.register_members(writer, stored, at, op_of);
        }
        let mut scratch = Vec::new();
        let plain = open_copy(writer.cipher.clone().as_deref(), view, at, &mut scratch)
            .map_err(|_| corrupt(at.offset))?;
        let place = Placed {
            offset: at.offset,
            stored_len: stored.len(),
            frame_offset: at.offset,
        };
        self.register(writer, &plain, place, op_of(&plain), None);
        Ok(())
    }

    /// Appends `plain`, a record sealed for `at` (the log's end), as the
    /// log stores it there: as is, or in an envelope built in the writer's
    /// reused buffer. Returns the stored length.
    pub(super) fn append_sealed(
        &self,
        writer: &mut Writer,
        plain: &[u8],
        at: Position,
    ) -> Result<usize, StoreError> {
        let cipher = writer.cipher.clone();
        let mut envelope = std::mem::take(&mut writer.envelope);
        let stored = stored_form(cipher.as_deref(), plain, at, &mut envelope);
        let stored_len = stored.len();
        let appended = self.append_bytes(writer, stored);
        writer.envelope = envelope;
        appended.map(|()| stored_len)
    }

    /// Appends sealed bytes at the end of the log, advancing the end and
    /// the sequence counter past them. On failure nothing stays behind.
    pub(super) fn append_bytes(&self, writer: &mut Writer, bytes: &[u8]) -> Result<(), StoreError> {
        let offset = writer.end;
        if let Err(err) = writer.file.append(offset, bytes) {
            self.undo_append(&*writer.file, offset, &err);
            return Err(StoreError::Io(err));
        }
        writer.end += bytes.len() as u64;
        self.appended.notify_all();
        let header = RecordHeader::decode(bytes[..RECORD_HEADER_LEN].try_into().expect("header"));
        if header.is_ok_and(|header| header.kind == RecordKind::Marker) {
            return Ok(()); // a sync marker takes no sequence number
        }
        let last = header.map_or(writer.next_sequence, |header| header.sequence);
        writer.next_sequence = last + 1;
        Ok(())
    }

    /// Records an appended record (its plain form, stored at `place`):
    /// published at once (or, with `batch`, handed back to be published
    /// with the rest of its batch), or pending until its fsync with `sync:
    /// always`. Returns what it replaced in the index when published at
    /// once (`None` when it waits).
    pub(super) fn register(
        &self,
        writer: &mut Writer,
        record: &RecordView<'_>,
        place: Placed,
        op: EventOp,
        batch: Option<&mut Vec<Pending>>,
    ) -> Replaced {
        let header = record.header;
        let location = (header.kind == RecordKind::Put).then(|| {
            let location = Location {
                offset: place.offset,
                len: place.stored_len as u32,
            };
            (location, Attrs::of(&header))
        });
        let event = Event::new(
            op,
            record.key,
            header.sequence,
            record.content_type,
            record.value,
        );
        let always = self.sync == SyncMode::Always;
        if !always && batch.is_none() {
            let replaced = index_record(&mut write(&self.keydir).index, record.key, location);
            self.events.publish(event);
            return replaced;
        }
        let pending = Pending {
            key: record.key.into(),
            offset: place.frame_offset,
            location,
            sequence: header.sequence,
            event,
        };
        match batch {
            Some(batch) if !always => batch.push(pending),
            _ => writer.pending.push(pending),
        }
        None
    }

    /// Cuts the log back to `offset` after a failed append so no partial
    /// record stays behind. If even that fails, the tail is unknown: the
    /// store goes read-only (recovery at the next start will cut it).
    pub(super) fn undo_append(&self, file: &dyn LogFile, offset: u64, err: &io::Error) {
        log::warn!("append at offset {offset} failed ({err}); cutting the log back");
        if let Err(truncate_err) = file.truncate(offset) {
            self.enter_read_only(&format!(
                "could not cut the log back to {offset} after a failed append: {truncate_err}"
            ));
        }
    }
}

/// What publishing a record replaced in the index: the attributes of the
/// key's previous record, if the key was in the index (`None` for a
/// tombstone, which reports nothing).
pub(super) type Replaced = Option<Attrs>;

/// Puts a published record into the index: its location and attributes,
/// or for a tombstone (`None`) the key's removal.
pub(super) fn index_record(
    index: &mut Index,
    key: &[u8],
    location: Option<(Location, Attrs)>,
) -> Replaced {
    match location {
        Some((location, attrs)) => index.insert(key, location, attrs),
        None => {
            index.remove(key);
            None
        }
    }
}
