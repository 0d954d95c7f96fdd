//! Reading a request's headers.

use lucid_http::Request;

/// The value of the request's first `name` header (names compare without
/// regard to case).
pub fn first<'r>(request: &'r Request, name: &'static str) -> Option<&'r str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}
