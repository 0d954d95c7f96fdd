//! The request reader (lucid-http): any bytes sent on a connection
//! (request lines, headers, `Content-Length` and chunked framing, bodies,
//! several pipelined requests) are read as requests or refused with an
//! answer, never a panic or a hang. Every answer is a whole HTTP/1.1
//! response.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small limits, so that inputs reach the read-ahead and head limits.
    let answers = lucid_http::serve_bytes(data, 256, 512);
    assert!(answers.is_empty() || answers.starts_with(b"HTTP/1.1 "));
});
