//! What the API answers: JSON messages and stored values, and how they are
//! written out through lucid-http.
//!
//! Every error body is `{"message": "..."}` with `Content-Type:
//! application/json`. Values are sent with their stored content type,
//! `Last-Modified`, `ETag: "<version>"` and `X-Content-Type-Options:
//! nosniff`, never chunked: a small value in one write with its head, a
//! large one from the log in pieces after it (see
//! [`Store::get_sendable`](crate::store::Store::get_sendable)).

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lucid_http::{Header, Method, Request, StatusCode};

use super::assets::{Asset, Encoding, SECURITY_HEADERS};
use crate::store::{StoredValue, ValueInLog};

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

/// `Content-Security-Policy` of every stored value served.
const VALUE_POLICY: &[u8] = b"sandbox; default-src 'none'";

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
        /// Value of a `Retry-After` header (for 503).
        retry_after: Option<&'static str>,
    },
    /// A stored value.
    Value(StoredValue<'a>),
    /// A large stored value, verified and left in the log, sent from there
    /// through `chunk`.
    ValueInLog {
        /// The value.
        value: ValueInLog<'a>,
        /// The slot's buffer the value is sent through.
        chunk: &'a mut Vec<u8>,
    },
    /// `304 Not Modified` for a key still at this version.
    NotModified(u64),
    /// A file of the web console.
    Asset {
        /// The file.
        asset: &'static Asset,
        /// How it is sent.
        encoding: Encoding,
    },
    /// `307 Temporary Redirect` to `location`, with a JSON body saying why.
    Redirect {
        /// The `Location`.
        location: String,
        /// The JSON text.
        body: String,
    },
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
            retry_after: None,
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
            retry_after: None,
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
            retry_after: None,
        }
    }

    /// `307` to `location` with `document` as its JSON body.
    pub fn redirect(location: String, document: serde_json::Value) -> Self {
        Self::Redirect {
            location,
            body: document.to_string(),
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
            retry_after: None,
        }
    }

    /// `503` for a request with a large body that found no room in the
    /// memory budget (see [`crate::memory`]), to retry in a moment.
    pub fn over_memory_budget() -> Self {
        Self::Json {
            status: 503,
            body: Cow::Borrowed(
                r#"{"message":"The node is using its whole memory budget (storage.memory_budget) for other large requests; nothing was changed. Retry in a moment."}"#,
            ),
            allow: None,
            etag: None,
            retry_after: Some("1"),
        }
    }

    /// `503` for a request read while the node stops.
    pub fn stopping() -> Self {
        Self::Json {
            status: 503,
            body: Cow::Borrowed(
                r#"{"message":"The node is stopping; nothing was done. Retry once it is back."}"#,
            ),
            allow: None,
            etag: None,
            retry_after: Some("1"),
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

    /// The same reply owning everything it holds, or the reply itself if
    /// it borrows a stored value.
    pub fn into_owned(self) -> Result<Reply<'static>, Self> {
        match self {
            Self::Json {
                status,
                body,
                allow,
                etag,
                retry_after,
            } => Ok(Reply::Json {
                status,
                body,
                allow,
                etag,
                retry_after,
            }),
            Self::NotModified(version) => Ok(Reply::NotModified(version)),
            Self::Redirect { location, body } => Ok(Reply::Redirect { location, body }),
            Self::Text { content_type, body } => Ok(Reply::Text { content_type, body }),
            Self::Asset { asset, encoding } => Ok(Reply::Asset { asset, encoding }),
            Self::Value(_) | Self::ValueInLog { .. } => Err(self),
        }
    }

    /// HTTP status of this reply.
    pub fn status(&self) -> u16 {
        match self {
            Self::Json { status, .. } => *status,
            Self::Value(_) | Self::ValueInLog { .. } | Self::Text { .. } => 200,
            Self::Redirect { .. } => 307,
            Self::NotModified(_) => 304,
            Self::Asset { encoding, .. } => match encoding {
                Encoding::NotModified => 304,
                Encoding::Plain | Encoding::Gzip => 200,
            },
        }
    }

    /// Writes the reply to the client, its head built in `out`'s reused
    /// buffer. Errors (the client went away) are logged at debug level:
    /// there is nobody left to tell.
    pub fn send(self, request: Request, out: &mut Responder) {
        let (head, body) = self.render(&request, out, false);
        let sent = match self {
            Self::ValueInLog { value, chunk } if request.method() != &Method::Head => {
                request.respond_raw_with(head, value.len(), |body| value.copy_to(body, chunk))
            }
            _ => request.respond_raw(head, body),
        };
        if let Err(err) = sent {
            log::debug!("could not send a response: {err}");
        }
    }

    /// The whole reply to `request` (head and body) with `Connection:
    /// close`, for lucid-http to send on the connection's thread: a
    /// refusal (never a value left in the log, which a slot sends).
    pub fn to_closing_bytes(&self, request: &Request) -> Vec<u8> {
        let mut out = Responder::default();
        let (head, body) = self.render(request, &mut out, true);
        [head, body].concat()
    }

    /// The head (built in `out`) and body of the reply to `request`, the
    /// head saying `Connection: close` if `closing`.
    fn render<'o, 's>(
        &'s self,
        request: &Request,
        out: &'o mut Responder,
        closing: bool,
    ) -> (&'o [u8], &'s [u8]) {
        let status = self.status();
        let mut head = out.start(request, status);
        if closing {
            head.field(b"Connection", b"close");
        }
        let body = self.write_fields(&mut head);
        // A 304 has no body, and no length: it describes the client's copy.
        if status != 304 {
            head.content_length(match self {
                Self::ValueInLog { value, .. } => value.len(),
                _ => body.len(),
            });
        }
        // A HEAD's reply is the GET's head alone.
        let body = if request.method() == &Method::Head {
            b""
        } else {
            body
        };
        (head.finish(), body)
    }

    /// Writes the fields of this kind of reply into `head` and returns the
    /// body.
    fn write_fields(&self, head: &mut Head) -> &[u8] {
        match self {
            Self::Json {
                body,
                allow,
                etag,
                retry_after,
                ..
            } => {
                head.field(b"Content-Type", b"application/json");
                if let Some(allow) = allow {
                    head.field(b"Allow", allow.as_bytes());
                }
                if let Some(seconds) = retry_after {
                    head.field(b"Retry-After", seconds.as_bytes());
                }
                if let Some(version) = etag {
                    head.etag(*version);
                }
                body.as_bytes()
            }
            Self::NotModified(version) => {
                head.etag(*version);
                b""
            }
            Self::Redirect { location, body } => {
                head.field(b"Content-Type", b"application/json");
                head.field(b"Location", location.as_bytes());
                body.as_bytes()
            }
            Self::Value(value) => {
                head.value_fields(value.content_type, value.timestamp_ms, value.sequence);
                value.value
            }
            // Sent after the head, from the log (see `send`).
            Self::ValueInLog { value, .. } => {
                head.value_fields(value.content_type(), value.timestamp_ms(), value.sequence());
                b""
            }
            Self::Text { content_type, body } => {
                head.field(b"Content-Type", content_type.as_bytes());
                body.as_bytes()
            }
            Self::Asset { asset, encoding } => head.asset_fields(asset, *encoding),
        }
    }
}

/// Writes reply heads into a buffer reused from reply to reply; one per
/// request slot. The `Date` field is formatted once a second.
#[derive(Default)]
pub struct Responder {
    head: Vec<u8>,
    /// The Unix second `date` was formatted for.
    date_second: u64,
    date: [u8; HTTP_DATE_LEN],
}

/// Length of an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
const HTTP_DATE_LEN: usize = 29;

impl Responder {
    /// Starts the head of a reply to `request`: status line, `Server` and
    /// `Date`.
    fn start(&mut self, request: &Request, status: u16) -> Head<'_> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if now.as_secs() != self.date_second || self.date[0] == 0 {
            self.date_second = now.as_secs();
            write_http_date(&mut self.date, now.as_millis() as u64);
        }
        let head = &mut self.head;
        head.clear();
        head.extend_from_slice(match request.http_version() {
            version if *version <= (1, 0) => b"HTTP/1.0 ",
            _ => b"HTTP/1.1 ",
        });
        head.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        head.push(b' ');
        head.extend_from_slice(StatusCode(status).default_reason_phrase().as_bytes());
        head.extend_from_slice(b"\r\n");
        let mut head = Head(head);
        head.field(b"Server", SERVER_NAME.as_bytes());
        head.field(b"Date", &self.date);
        head
    }
}

/// A reply head being written.
struct Head<'a>(&'a mut Vec<u8>);

impl<'a> Head<'a> {
    fn field(&mut self, name: &[u8], value: &[u8]) {
        for part in [name, b": ", value, b"\r\n"] {
            self.0.extend_from_slice(part);
        }
    }

    /// `ETag: "<version>"`.
    fn etag(&mut self, version: u64) {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(version).as_bytes();
        for part in [&b"ETag: \""[..], digits, b"\"\r\n"] {
            self.0.extend_from_slice(part);
        }
    }

    /// The fields of a stored value written at `timestamp_ms` with
    /// `sequence`.
    fn value_fields(&mut self, content_type: &[u8], timestamp_ms: u64, sequence: u64) {
        let content_type = if is_header_safe(content_type) {
            content_type
        } else {
            DEFAULT_CONTENT_TYPE
        };
        self.field(b"Content-Type", content_type);
        self.last_modified(timestamp_ms);
        self.field(b"X-Content-Type-Options", b"nosniff");
        // A value opened in a browser is never a page of the node's
        // origin (where the console and its token live): whatever
        // type its writer gave it, it runs no script and loads
        // nothing.
        self.field(b"Content-Security-Policy", VALUE_POLICY);
        self.etag(sequence);
    }

    /// The fields of a file of the web console; returns the file as
    /// `encoding` says.
    fn asset_fields(&mut self, asset: &'static Asset, encoding: Encoding) -> &'static [u8] {
        self.field(b"Content-Type", asset.content_type.as_bytes());
        self.field(b"ETag", asset.etag.as_bytes());
        self.field(b"Vary", b"Accept-Encoding");
        for (name, value) in SECURITY_HEADERS {
            self.field(name.as_bytes(), value.as_bytes());
        }
        match encoding {
            Encoding::NotModified => b"",
            Encoding::Plain => asset.plain,
            Encoding::Gzip => {
                self.field(b"Content-Encoding", b"gzip");
                asset.gzipped
            }
        }
    }

    fn last_modified(&mut self, timestamp_ms: u64) {
        let mut date = [0u8; HTTP_DATE_LEN];
        write_http_date(&mut date, timestamp_ms);
        self.field(b"Last-Modified", &date);
    }

    fn content_length(&mut self, len: usize) {
        self.field(
            b"Content-Length",
            itoa::Buffer::new().format(len).as_bytes(),
        );
    }

    /// Ends the head and returns it. The body is sent with it in one write
    /// (`Request::respond_raw`): a reply in two writes would wait for the
    /// client's delayed ACK.
    fn finish(self) -> &'a [u8] {
        self.0.extend_from_slice(b"\r\n");
        self.0
    }
}

/// Whether `value` can be sent as a header value as it is: printable ASCII
/// and tabs.
fn is_header_safe(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// The `Server` header of every response.
pub const SERVER_NAME: &str = "lucid";

/// The `Server` header for responses built with lucid-http's `Response`
/// (event streams, WebSocket upgrades), which would otherwise say
/// `tiny-http (Rust)`, upstream's default.
pub fn server_header() -> Header {
    Header::from_bytes(&b"Server"[..], SERVER_NAME.as_bytes()).expect("a valid header")
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

/// Writes the HTTP date of a timestamp (`Sun, 06 Nov 1994 08:49:37 GMT`)
/// into `out`. HTTP dates end with the year 9999 (formatting a later one
/// panics): a clock that far off shows as that.
fn write_http_date(out: &mut [u8; HTTP_DATE_LEN], timestamp_ms: u64) {
    use std::io::Write;
    let clamped = timestamp_ms.min(LAST_HTTP_DATE_MS);
    let date = httpdate::HttpDate::from(UNIX_EPOCH + Duration::from_millis(clamped));
    write!(&mut out[..], "{date}").expect("an HTTP date is 29 bytes");
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
        let date = |timestamp_ms| {
            let mut out = [0u8; HTTP_DATE_LEN];
            write_http_date(&mut out, timestamp_ms);
            String::from_utf8(out.to_vec()).unwrap()
        };
        assert_eq!(date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(date(1_700_000_000_123), "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(date(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
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
