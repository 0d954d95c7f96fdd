//! The storage engine's only door to the disk: the [`LogFile`] trait and its
//! real implementation over `std::fs::File`.
//!
//! Everything the engine does to its log goes through these five calls, so
//! tests can swap in a file that fails or "loses power" on purpose.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Positional access to one append-only log file.
///
/// Reads may run on many threads at once; writes come from one writer at a
/// time (the engine serialises them), always at the current end of the file.
pub trait LogFile: Send + Sync {
    /// Fills `buf` from the bytes at `offset`; a short file is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `data` at `offset`, which is the current end of the log.
    fn append(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every byte written so far durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// Current size of the file in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Cuts the file to `len` bytes (used to drop a torn tail or a failed
    /// append).
    fn truncate(&self, len: u64) -> io::Result<()>;
}

/// A [`LogFile`] backed by a real file.
pub struct DiskFile {
    file: File,
}

impl DiskFile {
    /// Wraps an open, readable and writable file.
    pub fn new(file: File) -> Self {
        Self { file }
    }
}

impl LogFile for DiskFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn append(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()
    }
}
