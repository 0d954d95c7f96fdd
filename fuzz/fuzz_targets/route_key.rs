//! Request routing and key decoding: any request target must route without
//! panicking, and a decoded key must obey the documented rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lucid::http::route::{decode_key, percent_decode, route, Route};

const MAX_KEY: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    let mut key = Vec::new();
    if let Route::Kv { raw_key } = route(url) {
        if decode_key(raw_key, &mut key, MAX_KEY).is_ok() {
            assert!(!key.is_empty() && key.len() <= MAX_KEY);
            assert!(std::str::from_utf8(&key).is_ok());
            assert!(!key.contains(&0));
        }
    }
    // Any text is a possible query value; decoding twice gives the same.
    let mut again = Vec::new();
    let first = percent_decode(url, &mut key, usize::MAX);
    let second = percent_decode(url, &mut again, usize::MAX);
    assert_eq!(first, second);
    if first.is_ok() {
        assert_eq!(key, again);
        assert!(key.len() <= url.len());
    }
});
