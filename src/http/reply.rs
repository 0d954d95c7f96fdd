//! What the API answers: JSON messages and stored values, and how they are
//! written out through tiny_http.
//!
//! Every error body is `{"message": "..."}` with `Content-Type:
//! application/json`. Values are sent with their stored content type,
//! `Last-Modified`, `ETag: "<version>"` and `X-Content-Type-Options:
//! nosniff`, never chunked.

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use tiny_http::{Header, Request, Response, StatusCode};

use crate::store::StoredValue;

/// `201` body of a PUT that created its key.
pub const CREATED: &str = r#"{"message":"The specified key was successfully created."}"#;
/// `200` body of a PUT that replaced a value.
pub const UPDATED: &str = r#"{"message":"The specified key was successfully updated."}"#;
/// `200` body of a DELETE.
pub const DELETED: &str = r#"{"message":"The specified key was successfully deleted."}"#;
/// `409` body for a change to a locked key (the API contract's wording).
pub const CANNOT_UPDATE: &str = r#"{"message":"The specified key cannot be updated."}"#;
/// `404` body for a missing key.
pub const KEY_NOT_FOUND: &str = r#"{"message":"The specified key does not exist."}"#;

/// 9999-12-31T23:59:59Z, the last moment an HTTP date can express.
const LAST_HTTP_DATE_MS: u64 = 253_402_300_799_000;

/// Content type used when a PUT does not name one.
pub const DEFAULT_CONTENT_TYPE: &[u8] = b"application/octet-stream";

/// A response, ready to send.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A JSON document.
    Json {
        /// HTTP status.
        status: u16,
        /// The JSON text.
        body: Cow<'static, str>,
        /// Value of an `Allow` header (for 405).
        allow: Option<&'static str>,
        /// The key's version, sent as `ETag`.
        etag: Option<u64>,
    },
    /// A stored value.
    Value(StoredValue<'a>),
    /// `304 Not Modified` for a key still at this version.
    NotModified(u64),
    /// A generated text document (metrics).
    Text {
        /// Its content type.
        content_type: &'static str,
        /// The text.
        body: String,
    },
}

impl Reply<'_> {
    /// A constant JSON body.
    pub fn json(status: u16, body: &'static str) -> Self {
        Self::Json {
            status,
            body: Cow::Borrowed(body),
            allow: None,
            etag: None,
        }
    }

    /// `{"message": text}` with the given status.
    pub fn message(status: u16, text: impl Into<String>) -> Self {
        let body = serde_json::json!({ "message": text.into() }).to_string();
        Self::Json {
            status,
            body: Cow::Owned(body),
            allow: None,
            etag: None,
        }
    }

    /// Any serialisable document as JSON.
    pub fn document(status: u16, document: &impl serde::Serialize) -> Self {
        let body = serde_json::to_string(document).expect("serialisable document");
        Self::Json {
            status,
            body: Cow::Owned(body),
            allow: None,
            etag: None,
        }
    }

    /// `405` naming the methods the resource accepts.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        let body = format!(r#"{{"message":"This resource accepts only {allow}."}}"#);
        Self::Json {
            status: 405,
            body: Cow::Owned(body),
            allow: Some(allow),
            etag: None,
        }
    }

    /// `500` for a handler that failed unexpectedly.
    pub fn internal_error() -> Self {
        Self::json(
            500,
            r#"{"message":"The node hit an internal error; the request was not completed. The error is in the node's log."}"#,
        )
    }

    /// The same reply with an `ETag` header naming `version`.
    pub fn with_etag(mut self, version: u64) -> Self {
        if let Self::Json { etag, .. } = &mut self {
            *etag = Some(version);
        }
        self
    }

    /// HTTP status of this reply.
    pub fn status(&self) -> u16 {
        match self {
            Self::Json { status, .. } => *status,
            Self::Value(_) | Self::Text { .. } => 200,
            Self::NotModified(_) => 304,
        }
    }

    /// Writes the reply to the client. Errors (the client went away) are
    /// logged at debug level: there is nobody left to tell.
    pub fn send(self, request: Request) {
        let result = match self {
            Self::Json {
                status,
                body,
                allow,
                etag,
            } => {
                let mut headers = vec![header(b"Content-Type", b"application/json")];
                if let Some(allow) = allow {
                    headers.push(header(b"Allow", allow.as_bytes()));
                }
                headers.extend(etag.map(etag_header));
                request.respond(response(status, headers, body.as_bytes()))
            }
            Self::NotModified(version) => {
                request.respond(response(304, vec![etag_header(version)], b""))
            }
            Self::Value(value) => {
                let content_type = Header::from_bytes(&b"Content-Type"[..], value.content_type)
                    .unwrap_or_else(|()| header(b"Content-Type", DEFAULT_CONTENT_TYPE));

                let headers = vec![
                    content_type,
                    header(
                        b"Last-Modified",
                        last_modified(value.timestamp_ms).as_bytes(),
                    ),
                    header(b"X-Content-Type-Options", b"nosniff"),
                    etag_header(value.sequence),
                ];
                request.respond(response(200, headers, value.value))
            }
            Self::Text { content_type, body } => {
                let headers = vec![header(b"Content-Type", content_type.as_bytes())];
                request.respond(response(200, headers, body.as_bytes()))
            }
        };
        if let Err(err) = result {
            log::debug!("could not send a response: {err}");
        }
    }
}

/// The whole response (head and body) written to a connection refused for
/// being over `general.max_connections`: a 503 the client may retry.
pub fn too_many_connections() -> Vec<u8> {
    let body = r#"{"message":"The node has too many open connections; retry in a moment."}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The HTTP date of a write's timestamp. HTTP dates end with the year 9999
/// (formatting a later one panics): a clock that far off shows as that.
fn last_modified(timestamp_ms: u64) -> String {
    let clamped = timestamp_ms.min(LAST_HTTP_DATE_MS);
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(clamped))
}

/// `ETag: "<version>"`.
fn etag_header(version: u64) -> Header {
    header(b"ETag", format!("\"{version}\"").as_bytes())
}

fn response(status: u16, headers: Vec<Header>, body: &[u8]) -> Response<&[u8]> {
    Response::new(StatusCode(status), headers, body, Some(body.len()), None)
        .with_chunked_threshold(usize::MAX)
}

fn header(name: &[u8], value: &[u8]) -> Header {
    Header::from_bytes(name, value).expect("a valid header")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_json_with_escaping() {
        let Reply::Json { status, body, .. } = Reply::message(400, "bad \"key\"") else {
            panic!("not JSON")
        };
        assert_eq!(status, 400);
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["message"], "bad \"key\"");
    }

    #[test]
    fn last_modified_covers_every_timestamp() {
        assert_eq!(last_modified(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            last_modified(1_700_000_000_123),
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
        assert_eq!(last_modified(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn constant_bodies_are_valid_json() {
        for body in [CREATED, UPDATED, DELETED, KEY_NOT_FOUND, CANNOT_UPDATE] {
            let parsed: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(parsed["message"].is_string());
        }
        let Reply::Json { body, allow, .. } = Reply::method_not_allowed("GET, PUT") else {
            panic!("not JSON")
        };
        assert_eq!(allow, Some("GET, PUT"));
        serde_json::from_str::<serde_json::Value>(&body).unwrap();
    }
}
