//! Lucid patch: a strict decoder for chunked request bodies (RFC 9112
//! §7.1), replacing `chunked_transfer::Decoder`. That one read a chunk-size
//! line until a CR however long it was (a line of bare LFs and digits grew
//! its buffer without bound, and a body with bare-LF lines waited for the
//! read timeout), and it refused trailer fields. Here every line must end
//! with CRLF, lines and trailers are bounded, and any deviation is an
//! `InvalidData` error at once.

use std::convert::TryFrom;
use std::io::{Error as IoError, ErrorKind, Read, Result as IoResult};

/// Longest chunk-size line (size and extensions) or trailer line.
const MAX_LINE: usize = 4096;

/// Most bytes of trailer fields after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a chunk-size line.
    Size,
    /// In a chunk's data, with this many bytes left.
    Data(u64),
    /// Past the last chunk and its trailers.
    Done,
}

/// The part of a chunk-size line being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinePart {
    /// The hexadecimal size.
    Size,
    /// Whitespace after it.
    Space,
    /// Extensions, after a `;`.
    Extensions,
}

/// Reads the data of a chunked body from `source`, which must end no
/// earlier than the body (a connection's end is an `UnexpectedEof` error).
pub struct ChunkedDecoder<R> {
    source: R,
    state: State,
}

impl<R: Read> ChunkedDecoder<R> {
    /// A decoder at the start of a chunked body.
    pub fn new(source: R) -> Self {
        ChunkedDecoder {
            source,
            state: State::Size,
        }
    }

    fn byte(&mut self) -> IoResult<u8> {
        let mut byte = [0];
        match self.source.read(&mut byte)? {
            0 => Err(IoError::new(
                ErrorKind::UnexpectedEof,
                "the connection ended before the request body did",
            )),
            _ => Ok(byte[0]),
        }
    }

    /// Reads one CRLF-terminated line, calling `each` on its bytes (CRLF
    /// excluded); returns its length.
    fn line(&mut self, mut each: impl FnMut(u8) -> IoResult<()>) -> IoResult<usize> {
        let mut len = 0;
        loop {
            match self.byte()? {
                b'\r' if self.byte()? == b'\n' => return Ok(len),
                b'\r' | b'\n' => return Err(malformed("a line does not end with CRLF")),
                0 => return Err(malformed("a line has a NUL byte")),
                byte => {
                    len += 1;
                    if len > MAX_LINE {
                        return Err(malformed("a chunk-size or trailer line is too long"));
                    }
                    each(byte)?;
                }
            }
        }
    }

    /// Reads a chunk-size line: the size, then optional whitespace and
    /// extensions (`;` and printable text), ignored.
    fn chunk_size(&mut self) -> IoResult<u64> {
        let mut size: Option<u64> = None;
        let mut part = LinePart::Size;
        self.line(|byte| {
            match (part, byte) {
                (LinePart::Size, _) if byte.is_ascii_hexdigit() => {
                    let digit = u64::from((byte as char).to_digit(16).unwrap_or(0));
                    size = Some(
                        size.unwrap_or(0)
                            .checked_mul(16)
                            .and_then(|size| size.checked_add(digit))
                            .ok_or_else(|| malformed("a chunk size is too large"))?,
                    );
                }
                (LinePart::Size | LinePart::Space, b' ' | b'\t') if size.is_some() => {
                    part = LinePart::Space
                }
                (LinePart::Size | LinePart::Space, b';') if size.is_some() => {
                    part = LinePart::Extensions
                }
                (LinePart::Extensions, b'\t' | b' '..=b'~') => {}
                _ => return Err(malformed("a chunk size is not a hexadecimal number")),
            }
            Ok(())
        })?;
        size.ok_or_else(|| malformed("a chunk size is missing"))
    }

    /// Reads the trailer section after the last chunk, ignored.
    fn trailers(&mut self) -> IoResult<()> {
        let mut total = 0;
        loop {
            let len = self.line(|byte| match byte {
                b'\t' | b' '..=b'~' => Ok(()),
                _ => Err(malformed("a trailer line has a control byte")),
            })?;
            if len == 0 {
                return Ok(());
            }
            total += len + 2;
            if total > MAX_TRAILERS {
                return Err(malformed("the trailer fields are too large"));
            }
        }
    }
}

impl<R: Read> Read for ChunkedDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        loop {
            match self.state {
                State::Done => return Ok(0),
                _ if buf.is_empty() => return Ok(0),
                State::Size => {
                    let size = self.chunk_size()?;
                    if size == 0 {
                        self.trailers()?;
                        self.state = State::Done;
                    } else {
                        self.state = State::Data(size);
                    }
                }
                State::Data(left) => {
                    let wanted = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let read = self.source.read(&mut buf[..wanted])?;
                    if read == 0 {
                        return Err(IoError::new(
                            ErrorKind::UnexpectedEof,
                            "the connection ended before the request body did",
                        ));
                    }
                    let left = left - read as u64;
                    self.state = State::Data(left);
                    if left == 0 {
                        if self.byte()? != b'\r' || self.byte()? != b'\n' {
                            return Err(malformed("a chunk is longer than its size"));
                        }
                        self.state = State::Size;
                    }
                    return Ok(read);
                }
            }
        }
    }
}

fn malformed(why: &str) -> IoError {
    IoError::new(
        ErrorKind::InvalidData,
        format!("malformed chunked encoding: {why}"),
    )
}

#[cfg(test)]
mod tests {
    use super::ChunkedDecoder;
    use std::io::{ErrorKind, Read};

    fn decode(body: &[u8]) -> Result<Vec<u8>, ErrorKind> {
        let mut out = Vec::new();
        ChunkedDecoder::new(body)
            .read_to_end(&mut out)
            .map(|_| out)
            .map_err(|err| err.kind())
    }

    #[test]
    fn well_formed_bodies_decode() {
        assert_eq!(decode(b"3\r\nabc\r\n0\r\n\r\n").unwrap(), b"abc");
        assert_eq!(
            decode(b"A;name=value\r\n0123456789\r\n1\r\nx\r\n00\r\nTrailer: t\r\n\r\n").unwrap(),
            b"0123456789x"
        );
        assert_eq!(decode(b"0\r\n\r\n").unwrap(), b"");
        // Nothing past the body is read.
        let mut rest: &[u8] = b"0\r\n\r\nGET / HTTP/1.1";
        let mut out = Vec::new();
        ChunkedDecoder::new(&mut rest)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(rest, b"GET / HTTP/1.1");
    }

    #[test]
    fn malformed_bodies_are_invalid_data_and_short_ones_unexpected_eof() {
        for bad in [
            &b"3\nabc\n0\n\n"[..],
            b"3\r\nabc\n0\r\n\r\n",
            b"3\rx\nabc\r\n0\r\n\r\n",
            b"zz\r\nabc\r\n0\r\n\r\n",
            b"\r\nabc\r\n0\r\n\r\n",
            b" 3\r\nabc\r\n0\r\n\r\n",
            b"3 4\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabcdef\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"3\0\r\nabc\r\n0\r\n\r\n",
            b"0\r\nBad\x01: t\r\n\r\n",
        ] {
            assert_eq!(
                decode(bad),
                Err(ErrorKind::InvalidData),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_line = [&b"1;"[..], &[b'x'; 5000]].concat();
        assert_eq!(decode(&long_line), Err(ErrorKind::InvalidData));
        for short in [&b"3\r\nab"[..], b"3\r\nabc\r\n", b"3\r\nabc\r\n0\r\n", b"3"] {
            assert_eq!(decode(short), Err(ErrorKind::UnexpectedEof));
        }
    }
}
