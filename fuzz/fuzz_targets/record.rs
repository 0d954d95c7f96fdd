//! The log record decoder: any bytes at any position decode to a record or
//! an error, never a panic. Input: a mode byte, the position (file id u32,
//! offset u64, little-endian), then the record. With an odd mode byte the
//! record's CRC is fixed up first, so the fuzzer gets past the checksum to
//! the header and frame decoding behind it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lucid::store::record::{
    members, verify, FileHeader, Position, RecordChecksum, RecordHeader, RecordKind,
    FILE_HEADER_LEN, RECORD_HEADER_LEN,
};

fuzz_target!(|data: &[u8]| {
    let Some((head, bytes)) = data.split_at_checked(13) else {
        return;
    };
    let at = Position {
        file_id: u32::from_le_bytes(head[1..5].try_into().unwrap()),
        offset: u64::from_le_bytes(head[5..13].try_into().unwrap()),
    };
    let mut bytes = bytes.to_vec();
    if head[0] % 2 == 1 && bytes.len() >= 4 {
        let mut crc = RecordChecksum::new(at);
        crc.update(&bytes[4..]);
        bytes[..4].copy_from_slice(&crc.finish().to_le_bytes());
    }
    if let Some(header) = bytes.first_chunk::<RECORD_HEADER_LEN>() {
        let _ = RecordHeader::decode(header);
    }
    if let Some(header) = bytes.first_chunk::<FILE_HEADER_LEN>() {
        let _ = FileHeader::decode(header);
    }
    if let Ok(view) = verify(&bytes, at) {
        assert_eq!(view.bytes.len(), bytes.len());
        if view.header.kind == RecordKind::Batch {
            for member in members(&view, at) {
                if let Ok((offset, member)) = member {
                    assert!(offset > at.offset);
                    assert!(member.bytes.len() >= RECORD_HEADER_LEN);
                }
            }
        }
    }
});
