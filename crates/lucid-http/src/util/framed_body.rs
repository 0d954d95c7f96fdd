//! Lucid patch: a response body the caller writes itself, in pieces,
//! framed by the `Content-Length` its head declared (see
//! `Request::respond_raw_with`).

use std::io::{Error, ErrorKind, IoSlice, Result as IoResult, Write};

/// Passes a body of `len` bytes on to the connection's writer and counts
/// it: a write past `len` is refused, and [`finish`](Self::finish) tells
/// whether the body was written whole, so a response whose body came out
/// short or long is never followed by another on its connection.
pub struct FramedBody<'w> {
    inner: &'w mut dyn Write,
    left: usize,
}

impl<'w> FramedBody<'w> {
    /// A body of `len` bytes, written to `inner`.
    pub fn new(inner: &'w mut dyn Write, len: usize) -> FramedBody<'w> {
        FramedBody { inner, left: len }
    }

    /// Ok if the whole body was written, else an `InvalidData` error saying
    /// how many bytes were missing.
    pub fn finish(&self) -> IoResult<()> {
        if self.left == 0 {
            return Ok(());
        }
        let missing = format!("the response body ended {} bytes short", self.left);
        Err(Error::new(ErrorKind::InvalidData, missing))
    }

    /// An error if `len` more bytes would go past the body's length.
    fn check_room(&self, len: usize) -> IoResult<()> {
        if len > self.left {
            let over = "the response body is longer than its Content-Length";
            return Err(Error::new(ErrorKind::InvalidInput, over));
        }
        Ok(())
    }
}

impl Write for FramedBody<'_> {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.check_room(buf.len())?;
        let written = self.inner.write(buf)?;
        self.left -= written;
        Ok(written)
    }

    /// Passed on whole, so that a head still buffered leaves with the
    /// first piece of the body in one write (see `WriteBuffer`).
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> IoResult<usize> {
        self.check_room(bufs.iter().map(|buf| buf.len()).sum())?;
        let written = self.inner.write_vectored(bufs)?;
        self.left -= written;
        Ok(written)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_whole_only_at_its_length() {
        let mut out = Vec::new();
        let mut body = FramedBody::new(&mut out, 5);
        body.write_all(b"abc").unwrap();
        assert_eq!(body.finish().unwrap_err().kind(), ErrorKind::InvalidData);
        assert_eq!(
            body.write_all(b"def").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        body.write_all(b"de").unwrap();
        body.finish().unwrap();
        assert_eq!(out, b"abcde");
    }
}
