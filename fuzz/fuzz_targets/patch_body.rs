//! The PATCH body parser: any bytes give an operation or a message, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lucid::http::parse_patch as parse;

fuzz_target!(|data: &[u8]| {
    if let Err(message) = parse(data) {
        assert!(!message.is_empty());
    }
});
