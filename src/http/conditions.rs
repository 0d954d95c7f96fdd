//! Conditional requests on a key's version: `If-Match` and `If-None-Match`
//! (RFC 9110), with `ETag: "<version>"`.
//!
//! * Writes (PUT, DELETE, PATCH, batch): `If-Match: "<v>"` or `*`,
//!   `If-None-Match: *` (create only) or `"<v>"`; one entity tag per header.
//! * Reads (GET, HEAD): `If-None-Match` with any list of tags, or `*`: a
//!   match answers `304 Not Modified`.
//!
//! Weak tags (`W/"5"`) never match `If-Match` (strong comparison) and match
//! `If-None-Match` by their version (weak comparison).

use lucid_http::Request;

use super::headers::first as header;
use super::reply::Reply;
use crate::store::engine::Expect;

/// The condition a write request puts on its key's current state.
pub fn write_condition(request: &Request) -> Result<Expect, Reply<'static>> {
    let if_match = header(request, "If-Match");
    let if_none_match = header(request, "If-None-Match");
    match (if_match, if_none_match) {
        (None, None) => Ok(Expect::Any),
        (Some(_), Some(_)) => Err(Reply::message(
            400,
            "Use either If-Match or If-None-Match on a write, not both.",
        )),
        (Some(value), None) => match single_tag(value)? {
            Tag::Any => Ok(Expect::Exists),
            Tag::Version(version) => Ok(Expect::Version(version)),
            // Weak or foreign tags never match strongly: the write fails.
            Tag::Weak(_) | Tag::Other => Ok(Expect::Version(0)),
        },
        (None, Some(value)) => match single_tag(value)? {
            Tag::Any => Ok(Expect::Absent),
            Tag::Version(version) | Tag::Weak(version) => Ok(Expect::NotVersion(version)),
            Tag::Other => Ok(Expect::Any),
        },
    }
}

/// Whether a read's `If-None-Match` matches a key at `version`, so the
/// answer is `304 Not Modified`.
pub fn not_modified(request: &Request, version: u64) -> bool {
    header(request, "If-None-Match").is_some_and(|value| {
        value.split(',').any(|tag| match parse_tag(tag) {
            Some(Tag::Any) => true,
            Some(Tag::Version(v) | Tag::Weak(v)) => v == version,
            _ => false,
        })
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    /// `*`
    Any,
    /// `"<version>"`
    Version(u64),
    /// `W/"<version>"`
    Weak(u64),
    /// A well-formed tag that is not one of ours.
    Other,
}

fn single_tag(value: &str) -> Result<Tag, Reply<'static>> {
    parse_tag(value).ok_or_else(|| {
        Reply::message(
            400,
            "A conditional header on a write takes one entity tag: a version in quotes, like \"42\", or *.",
        )
    })
}

fn parse_tag(text: &str) -> Option<Tag> {
    let text = text.trim();
    if text == "*" {
        return Some(Tag::Any);
    }
    let (weak, quoted) = match text.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('"') {
        return None;
    }
    Some(match inner.parse::<u64>() {
        Ok(version) if weak => Tag::Weak(version),
        Ok(version) => Tag::Version(version),
        Err(_) => Tag::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse() {
        assert_eq!(parse_tag("*"), Some(Tag::Any));
        assert_eq!(parse_tag(" \"42\" "), Some(Tag::Version(42)));
        assert_eq!(parse_tag("W/\"7\""), Some(Tag::Weak(7)));
        assert_eq!(parse_tag("\"abc\""), Some(Tag::Other));
        assert_eq!(parse_tag("42"), None);
        assert_eq!(parse_tag("\"4\"2\""), None);
        assert_eq!(parse_tag(""), None);
    }
}
