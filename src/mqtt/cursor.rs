//! The bridge's cursor, kept in the data directory (`mqtt.cursor`): the
//! last change the broker acknowledged (everything up to it was shipped),
//! and a gap still to announce (changes dropped past `max_backlog_bytes`).
//!
//! The file holds two 40-byte slots written in turn, each with a counter
//! and a CRC; the valid slot with the higher counter is the cursor. A
//! write torn by a power cut spoils only the slot it was writing, so the
//! previous cursor stands (changes since it are sent again: at least
//! once). The cursor moves only after the broker's PUBACK, never before.
//! It is written with every acknowledged window and fsynced at most once
//! a second: after a power cut the bridge may send again up to a second
//! of changes the broker had; after a crash of the process, only what was
//! in flight.
//!
//! ```text
//! slot: magic "LMQC" | counter u64 | shipped u64 | gap from u64 | gap to u64 | CRC-32 u32
//! ```

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::store::layout::private_file;

/// Name of the cursor file in the data directory.
pub const CURSOR_FILE: &str = "mqtt.cursor";

const MAGIC: &[u8; 4] = b"LMQC";
const SLOT: usize = 40;
/// How often the cursor is fsynced at most.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Where the bridge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Every change up to this sequence number was shipped (or dropped).
    pub shipped: u64,
    /// Changes dropped and not announced yet, `(from, to)`.
    pub gap: Option<(u64, u64)>,
}

/// The cursor file, open.
pub struct Cursor {
    file: File,
    counter: u64,
    position: Position,
    synced_at: Instant,
    dirty: bool,
}

impl Cursor {
    /// Opens (or creates) the cursor in `dir`. A new cursor starts after
    /// `start`: a bridge turned on ships what is written from then on.
    pub fn open(dir: &Path, start: u64) -> io::Result<Self> {
        let path = dir.join(CURSOR_FILE);
        let file = private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut slots = [0u8; 2 * SLOT];
        let len = file.metadata()?.len() as usize;
        file.read_exact_at(&mut slots[..len.min(2 * SLOT)], 0)?;
        let newest = slots
            .chunks(SLOT)
            .filter_map(decode)
            .max_by_key(|(counter, _)| *counter);
        let mut cursor = Self {
            file,
            counter: 0,
            position: Position {
                shipped: start,
                gap: None,
            },
            synced_at: Instant::now(),
            dirty: false,
        };
        match newest {
            Some((counter, position)) => {
                cursor.counter = counter;
                cursor.position = position;
            }
            None => {
                cursor.write()?;
                cursor.sync()?;
                crate::store::layout::sync_dir(dir)?;
            }
        }
        Ok(cursor)
    }

    /// Where the bridge stands.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Moves the cursor to `position`; written now, fsynced at most once a
    /// second (see the module documentation).
    pub fn set(&mut self, position: Position) -> io::Result<()> {
        if position == self.position {
            return Ok(());
        }
        self.position = position;
        self.write()?;
        if self.synced_at.elapsed() >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    /// fsyncs what was written, if anything (the bridge calls it when
    /// idle and when it stops).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        self.synced_at = Instant::now();
        Ok(())
    }

    fn write(&mut self) -> io::Result<()> {
        self.counter += 1;
        let slot = encode(self.counter, self.position);
        let at = (self.counter % 2) * SLOT as u64;
        self.file.write_all_at(&slot, at)?;
        self.dirty = true;
        Ok(())
    }
}

fn encode(counter: u64, position: Position) -> [u8; SLOT] {
    let (from, to) = position.gap.unwrap_or((0, 0));
    let mut slot = [0u8; SLOT];
    slot[..4].copy_from_slice(MAGIC);
    slot[4..12].copy_from_slice(&counter.to_le_bytes());
    slot[12..20].copy_from_slice(&position.shipped.to_le_bytes());
    slot[20..28].copy_from_slice(&from.to_le_bytes());
    slot[28..36].copy_from_slice(&to.to_le_bytes());
    let crc = crc32fast::hash(&slot[..36]);
    slot[36..].copy_from_slice(&crc.to_le_bytes());
    slot
}

fn decode(slot: &[u8]) -> Option<(u64, Position)> {
    let u64_at = |at: usize| u64::from_le_bytes(slot[at..at + 8].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(slot.get(36..40)?.try_into().ok()?);
    if &slot[..4] != MAGIC || crc32fast::hash(&slot[..36]) != crc {
        return None;
    }
    let (from, to) = (u64_at(20), u64_at(28));
    Some((
        u64_at(4),
        Position {
            shipped: u64_at(12),
            gap: (to != 0).then_some((from, to)),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_survives_a_reopen_and_a_torn_slot() {
        let dir = tempfile::tempdir().unwrap();
        let mut cursor = Cursor::open(dir.path(), 7).unwrap();
        assert_eq!(
            cursor.position(),
            Position {
                shipped: 7,
                gap: None
            }
        );
        let gap = Position {
            shipped: 20,
            gap: Some((8, 15)),
        };
        cursor.set(gap).unwrap();
        cursor.set(Position { shipped: 25, ..gap }).unwrap();
        drop(cursor);
        let mut cursor = Cursor::open(dir.path(), 0).unwrap();
        assert_eq!(cursor.position(), Position { shipped: 25, ..gap });
        cursor
            .set(Position {
                shipped: 30,
                gap: None,
            })
            .unwrap();
        // The newest slot torn: the one before it stands.
        let path = dir.path().join(CURSOR_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let newest = (cursor.counter % 2) as usize * SLOT;
        bytes[newest + 14] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let cursor = Cursor::open(dir.path(), 0).unwrap();
        assert_eq!(cursor.position(), Position { shipped: 25, ..gap });
    }
}
