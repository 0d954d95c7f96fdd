//! The replication stream's wire format: what a primary sends a follower on
//! `GET /api/replication/stream`, inside a chunked HTTP body.
//!
//! ```text
//! frame: kind u8, payload length u32 LE, payload
//! kind 1 HELLO      JSON: {"stream", "node", "epoch", "history", "key_check", "last_sequence"}
//!                   (first frame, once)
//! kind 2 RECORDS    file id u32 LE, offset u64 LE, after u64 LE, then whole records
//!                   exactly as they lie in the primary's log from that offset
//!                   (sync markers included); `after` is the sequence number the
//!                   follower must have applied last (a gap is never silent)
//! kind 3 HEARTBEAT  last sequence u64 LE, primary's clock in ms u64 LE
//!                   (when nothing was appended for a second)
//! ```
//!
//! The records carry their CRCs, which cover the primary's file id and
//! their offset there, so the follower checks each before applying it; in
//! an encrypted log they travel sealed, as on disk.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use super::state::{ClosedEpoch, Epoch};
use crate::store::tail::Chunk;

/// Content type of the stream.
pub const CONTENT_TYPE: &str = "application/x-lucid-replication";

/// How much of the log one RECORDS frame carries at most (a longer record
/// travels alone).
pub const MAX_RECORDS: usize = 1024 * 1024;

/// Bytes of a RECORDS frame's payload before its records.
const RECORDS_HEAD: usize = 4 + 8 + 8 + 8;

const HELLO: u8 = 1;
const RECORDS: u8 = 2;
const HEARTBEAT: u8 = 3;

/// The first frame: who the primary is and where its history stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The primary's id for this stream, to name in acknowledgements.
    pub stream: u64,
    /// The primary's node name.
    pub node: String,
    /// Its current epoch.
    pub epoch: Epoch,
    /// Its closed epochs, oldest first.
    pub history: Vec<ClosedEpoch>,
    /// Its log's key check value (0: not encrypted); a follower's must
    /// match.
    pub key_check: u32,
    /// Its last sequence number when the stream began.
    pub last_sequence: u64,
}

/// A frame as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'b> {
    /// See [`Hello`].
    Hello(Hello),
    /// Whole records from the primary's log.
    Records {
        /// The primary's log's file id.
        file_id: u32,
        /// The first record's offset there.
        offset: u64,
        /// The sequence number the follower must have applied last.
        after: u64,
        /// The primary's last sequence number when they were sent.
        primary_last: u64,
        /// The records.
        bytes: &'b [u8],
    },
    /// Nothing new for a while.
    Heartbeat {
        /// The primary's last sequence number.
        last_sequence: u64,
        /// The primary's clock, ms since the epoch.
        time_ms: u64,
    },
}

/// Writes the HELLO frame.
pub fn write_hello(out: &mut impl Write, hello: &Hello) -> io::Result<()> {
    let json = serde_json::to_vec(hello).map_err(io::Error::other)?;
    write_head(out, HELLO, json.len())?;
    out.write_all(&json)
}

/// Writes a RECORDS frame of `chunk`, the primary's last sequence number
/// being `primary_last`.
pub fn write_records(out: &mut impl Write, chunk: &Chunk<'_>, primary_last: u64) -> io::Result<()> {
    write_head(out, RECORDS, RECORDS_HEAD + chunk.bytes.len())?;
    let mut head = [0u8; RECORDS_HEAD];
    head[..4].copy_from_slice(&chunk.file_id.to_le_bytes());
    head[4..12].copy_from_slice(&chunk.offset.to_le_bytes());
    head[12..20].copy_from_slice(&chunk.after.to_le_bytes());
    head[20..].copy_from_slice(&primary_last.to_le_bytes());
    out.write_all(&head)?;
    out.write_all(chunk.bytes)
}

/// Writes a HEARTBEAT frame.
pub fn write_heartbeat(out: &mut impl Write, last_sequence: u64, time_ms: u64) -> io::Result<()> {
    write_head(out, HEARTBEAT, 16)?;
    out.write_all(&last_sequence.to_le_bytes())?;
    out.write_all(&time_ms.to_le_bytes())
}

fn write_head(out: &mut impl Write, kind: u8, len: usize) -> io::Result<()> {
    let len = u32::try_from(len).map_err(|_| io::Error::other("a frame over 4 GiB"))?;
    let mut head = [kind, 0, 0, 0, 0];
    head[1..].copy_from_slice(&len.to_le_bytes());
    out.write_all(&head)
}

/// Reads frames from a stream, into one reused buffer.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    max_payload: usize,
}

impl<R: Read> FrameReader<R> {
    /// Reads frames from `inner`, refusing any whose payload is longer than
    /// `max_payload` bytes.
    pub fn new(inner: R, max_payload: usize) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            max_payload,
        }
    }

    /// The next frame; `None` at a clean end of the stream between frames.
    /// A stream cut inside a frame, an unknown kind, a frame too long or a
    /// malformed payload is an error (`InvalidData`, or `UnexpectedEof`).
    pub fn read_frame(&mut self) -> io::Result<Option<Frame<'_>>> {
        let mut head = [0u8; 5];
        match self.inner.read(&mut head[..1])? {
            0 => return Ok(None),
            _ => self.inner.read_exact(&mut head[1..])?,
        }
        let len = u32::from_le_bytes(head[1..].try_into().expect("4 bytes")) as usize;
        if len > self.max_payload {
            return Err(invalid(format!(
                "a frame of {len} bytes, more than the {} this node accepts",
                self.max_payload
            )));
        }
        self.buf.resize(len, 0);
        self.inner.read_exact(&mut self.buf)?;
        let payload = &self.buf[..];
        let u64_at = |at: usize| u64::from_le_bytes(payload[at..at + 8].try_into().expect("8"));
        match head[0] {
            HELLO => serde_json::from_slice(payload)
                .map(|hello| Some(Frame::Hello(hello)))
                .map_err(|err| invalid(format!("a malformed hello: {err}"))),
            RECORDS if len > RECORDS_HEAD => Ok(Some(Frame::Records {
                file_id: u32::from_le_bytes(payload[..4].try_into().expect("4")),
                offset: u64_at(4),
                after: u64_at(12),
                primary_last: u64_at(20),
                bytes: &payload[RECORDS_HEAD..],
            })),
            HEARTBEAT if len == 16 => Ok(Some(Frame::Heartbeat {
                last_sequence: u64_at(0),
                time_ms: u64_at(8),
            })),
            kind => Err(invalid(format!("a frame of kind {kind} and {len} bytes"))),
        }
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the primary sent {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            stream: 7,
            node: "pi-1".into(),
            epoch: Epoch { number: 2, id: 99 },
            history: vec![ClosedEpoch {
                epoch: Epoch { number: 1, id: 5 },
                end: 40,
            }],
            key_check: 0,
            last_sequence: 41,
        }
    }

    fn chunk() -> Chunk<'static> {
        Chunk {
            file_id: 3,
            offset: 32,
            after: 41,
            bytes: b"records",
            last_sequence: 42,
        }
    }

    #[test]
    fn frames_read_back_as_written() {
        let mut stream = Vec::new();
        write_hello(&mut stream, &hello()).unwrap();
        write_records(&mut stream, &chunk(), 50).unwrap();
        write_heartbeat(&mut stream, 42, 1_000).unwrap();
        let mut reader = FrameReader::new(&stream[..], 1024);
        assert_eq!(reader.read_frame().unwrap(), Some(Frame::Hello(hello())));
        assert_eq!(
            reader.read_frame().unwrap(),
            Some(Frame::Records {
                file_id: 3,
                offset: 32,
                after: 41,
                primary_last: 50,
                bytes: b"records"
            })
        );
        assert_eq!(
            reader.read_frame().unwrap(),
            Some(Frame::Heartbeat {
                last_sequence: 42,
                time_ms: 1_000
            })
        );
        assert_eq!(reader.read_frame().unwrap(), None);
    }

    #[test]
    fn cut_unknown_oversized_and_malformed_frames_are_errors() {
        let mut stream = Vec::new();
        write_records(&mut stream, &chunk(), 50).unwrap();
        let cut = &stream[..stream.len() - 1];
        let err = FrameReader::new(cut, 1024).read_frame().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err = FrameReader::new(&stream[..], 8).read_frame().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        for garbage in [
            &b"\x09\x00\x00\x00\x00"[..],
            b"\x01\x02\x00\x00\x00{]",
            b"\x03\x01\x00\x00\x00x",
        ] {
            let err = FrameReader::new(garbage, 1024).read_frame().unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{garbage:?}");
        }
    }
}
