//! Lucid patch: a write buffer that keeps vectored writes vectored.
//!
//! `std::io::BufWriter` passes a vectored write on as one only when its
//! inner writer says it supports them, which a type outside the standard
//! library cannot say on stable Rust; otherwise it writes the slices one by
//! one. A response's head and body then left in two writes, and the second
//! waited for the client's delayed ACK (up to 40 ms) behind Nagle's
//! algorithm. `WriteBuffer` gathers small writes as `BufWriter` does, and
//! sends what it holds together with a vectored write's slices in one
//! `writev`.

use std::io::{ErrorKind, IoSlice, Result as IoResult, Write};

/// Slices a vectored write may have to be joined with the buffered bytes in
/// one system call; more are written after a flush (responses use two).
const JOINED_SLICES: usize = 3;

/// Buffers writes up to `capacity` bytes; larger ones go out directly, in
/// one vectored write with whatever is buffered.
pub struct WriteBuffer<W: Write> {
    inner: W,
    buffer: Vec<u8>,
}

impl<W: Write> WriteBuffer<W> {
    /// A buffer of `capacity` bytes in front of `inner`.
    pub fn with_capacity(capacity: usize, inner: W) -> WriteBuffer<W> {
        WriteBuffer {
            inner,
            buffer: Vec::with_capacity(capacity),
        }
    }

    /// Writes out everything buffered.
    fn flush_buffer(&mut self) -> IoResult<()> {
        while !self.buffer.is_empty() {
            match self.inner.write(&self.buffer) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(written) => {
                    self.buffer.drain(..written);
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

impl<W: Write> Write for WriteBuffer<W> {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> IoResult<usize> {
        let total: usize = bufs.iter().map(|buf| buf.len()).sum();
        if self.buffer.len() + total <= self.buffer.capacity() {
            for buf in bufs {
                self.buffer.extend_from_slice(buf);
            }
            return Ok(total);
        }
        if bufs.len() > JOINED_SLICES {
            self.flush_buffer()?;
        }
        // The buffered bytes go first, in the same system call as the new
        // ones; what this call reports written counts the new ones only.
        while !self.buffer.is_empty() {
            let mut joined = [IoSlice::new(&[]); JOINED_SLICES + 1];
            joined[0] = IoSlice::new(&self.buffer);
            joined[1..=bufs.len()].copy_from_slice(bufs);
            match self.inner.write_vectored(&joined[..=bufs.len()]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(written) if written > self.buffer.len() => {
                    let new = written - self.buffer.len();
                    self.buffer.clear();
                    return Ok(new);
                }
                Ok(written) => {
                    self.buffer.drain(..written);
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        self.inner.write_vectored(bufs)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.flush_buffer()?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for WriteBuffer<W> {
    /// Sends what is left, as `BufWriter` does; errors have nobody to go to.
    fn drop(&mut self) {
        let _ = self.flush_buffer();
    }
}

/// Writes every byte of `parts`, in as few vectored writes as `writer`
/// takes (`Write::write_all_vectored` is not stable yet).
pub fn write_all_vectored(writer: &mut dyn Write, mut parts: &mut [IoSlice<'_>]) -> IoResult<()> {
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        match writer.write_vectored(parts) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut parts, written),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each system call's worth of bytes.
    #[derive(Default)]
    struct Calls(Vec<Vec<u8>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> IoResult<usize> {
            self.0
                .push(bufs.iter().flat_map(|buf| buf.iter().copied()).collect());
            Ok(bufs.iter().map(|buf| buf.len()).sum())
        }

        fn flush(&mut self) -> IoResult<()> {
            Ok(())
        }
    }

    /// Takes at most `limit` bytes per call, as a full socket buffer does.
    struct Short(Calls, usize);

    impl Write for Short {
        fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
            self.0.write(&buf[..buf.len().min(self.1)])
        }

        fn flush(&mut self) -> IoResult<()> {
            Ok(())
        }
    }

    #[test]
    fn a_head_and_a_large_body_leave_in_one_call() {
        let mut out = WriteBuffer::with_capacity(16, Calls::default());
        let body = vec![7u8; 100];
        write_all_vectored(&mut out, &mut [IoSlice::new(b"head"), IoSlice::new(&body)]).unwrap();
        out.flush().unwrap();
        assert_eq!(out.inner.0, vec![[&b"head"[..], &body].concat()]);
    }

    #[test]
    fn buffered_bytes_join_the_next_large_write() {
        let mut out = WriteBuffer::with_capacity(16, Calls::default());
        out.write_all(b"small").unwrap();
        out.write_all(&[1u8; 40]).unwrap();
        out.flush().unwrap();
        assert_eq!(out.inner.0, vec![[&b"small"[..], &[1u8; 40]].concat()]);
    }

    #[test]
    fn small_writes_are_gathered_until_flushed() {
        let mut out = WriteBuffer::with_capacity(16, Calls::default());
        out.write_all(b"ab").unwrap();
        out.write_all(b"cd").unwrap();
        assert!(out.inner.0.is_empty());
        out.flush().unwrap();
        assert_eq!(out.inner.0, vec![b"abcd".to_vec()]);
    }

    #[test]
    fn short_writes_lose_and_repeat_nothing() {
        let mut out = WriteBuffer::with_capacity(8, Short(Calls::default(), 3));
        out.write_all(b"12345").unwrap();
        let body: Vec<u8> = (0..50).collect();
        write_all_vectored(&mut out, &mut [IoSlice::new(b"head"), IoSlice::new(&body)]).unwrap();
        out.flush().unwrap();
        let sent = out.inner.0 .0.concat();
        assert_eq!(sent, [&b"12345head"[..], &body].concat());
    }
}
