//! WebSocket for `/api/watch` (`Upgrade: websocket`): the handshake is
//! checked by a request slot ([`accept`]); the watcher's thread answers `101`
//! through lucid-http's `upgrade` and sends one text message per change (the
//! event's JSON) over tungstenite, a ping after silence, and on overflow a
//! final `{"op":"error","message":...}` before closing.
//!
//! Browsers cannot set `Authorization` on a WebSocket, so a token may come
//! as a subprotocol instead, as the Kubernetes API server takes it: the
//! client offers `lucid` and `lucid.bearer.<token>` in
//! `Sec-WebSocket-Protocol`, and the node answers `lucid` (never the
//! token). See [`offered_token`] and [`accept`].
//!
//! A watcher's thread waits for changes, not for its client: every
//! [`POLL`] it reads what the client sent (pings, a close), with a socket
//! read timeout of [`POLL_READ`] so the read never holds it up.

use std::io;
use std::time::{Duration, Instant};

use lucid_http::{Header, ReadWrite, Request, Response, Socket, StatusCode};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use super::End;
use crate::http::headers::first as header;
use crate::http::reply::server_header;
use crate::watch::Event;

/// How often a watcher reads what its client sent.
const POLL: Duration = Duration::from_secs(1);

/// How long one such read may wait for data.
const POLL_READ: Duration = Duration::from_millis(5);

/// How long a closing watcher waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Largest message accepted from a client (it has nothing to say but
/// pings and a close).
const MAX_CLIENT_MESSAGE: usize = 4096;

/// Messages read from the client in one poll at most.
const MAX_READS_PER_POLL: usize = 64;

/// The subprotocol the node speaks; answered when the client offers it.
pub const PROTOCOL: &str = "lucid";

/// Prefix of the subprotocol that carries a bearer token.
const BEARER_PROTOCOL: &str = "lucid.bearer.";

/// An accepted WebSocket handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// Whether to answer `Sec-WebSocket-Protocol: lucid`.
    pub lucid_protocol: bool,
}

/// The subprotocols the client offers, in order.
fn offered_protocols(request: &Request) -> impl Iterator<Item = &str> {
    request
        .headers()
        .iter()
        .filter(|h| h.field.equiv("Sec-WebSocket-Protocol"))
        .flat_map(|h| h.value.as_str().split(','))
        .map(str::trim)
}

/// The token a WebSocket client offers as the subprotocol
/// `lucid.bearer.<token>`, if any (the first such one).
pub fn offered_token(request: &Request) -> Option<&str> {
    offered_protocols(request).find_map(|protocol| protocol.strip_prefix(BEARER_PROTOCOL))
}

/// The handshake's answer for a valid WebSocket handshake, `None` for a
/// request that does not ask for a WebSocket (no `Upgrade: websocket`), or
/// what is wrong with the handshake.
pub fn accept(request: &Request) -> Result<Option<Handshake>, &'static str> {
    let header = |name| header(request, name);
    let has_token = |value: Option<&str>, token: &str| {
        value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(header("Upgrade"), "websocket") {
        return Ok(None);
    }
    if !has_token(header("Connection"), "upgrade") {
        return Err("A WebSocket handshake needs the header Connection: Upgrade.");
    }
    if header("Sec-WebSocket-Version").map(str::trim) != Some("13") {
        return Err("Only WebSocket version 13 is supported: send Sec-WebSocket-Version: 13.");
    }
    let lucid_protocol = offered_protocols(request).any(|protocol| protocol == PROTOCOL);
    if !lucid_protocol && offered_token(request).is_some() {
        return Err("A token offered as the subprotocol lucid.bearer.<token> needs the subprotocol lucid offered too: Sec-WebSocket-Protocol: lucid, lucid.bearer.<token>.");
    }
    match header("Sec-WebSocket-Key").map(str::trim) {
        Some(key) if is_handshake_key(key) => Ok(Some(Handshake {
            accept: tungstenite::handshake::derive_accept_key(key.as_bytes()),
            lucid_protocol,
        })),
        _ => Err("A WebSocket handshake needs a Sec-WebSocket-Key: 16 bytes in base64."),
    }
}

/// Whether `key` is 16 bytes in base64: 22 digits and `==`.
fn is_handshake_key(key: &str) -> bool {
    let digits = key.strip_suffix("==").unwrap_or_default();
    digits.len() == 22
        && digits
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// A watcher's WebSocket.
pub struct Feed {
    ws: WebSocket<Box<dyn ReadWrite + Send>>,
}

impl Feed {
    /// Answers `request` with `101 Switching Protocols` and returns the
    /// WebSocket. `socket` gets the short read timeout the polls rely on.
    pub fn start(request: Request, handshake: &Handshake, socket: Option<&Socket>) -> Self {
        let accept = Header::from_bytes(&b"Sec-WebSocket-Accept"[..], handshake.accept.as_bytes())
            .expect("base64");
        let mut response = Response::empty(StatusCode(101))
            .with_header(server_header())
            .with_header(accept);
        if handshake.lucid_protocol {
            let protocol = Header::from_bytes(&b"Sec-WebSocket-Protocol"[..], PROTOCOL.as_bytes())
                .expect("a plain token");
            response.add_header(protocol);
        }
        let stream = request.upgrade("websocket", response);
        if let Some(socket) = socket {
            if let Err(err) = socket.set_read_timeout(Some(POLL_READ)) {
                log::debug!("cannot set a watcher's read timeout: {err}");
            }
        }
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(16 * 1024)
            .max_write_buffer_size(1024 * 1024)
            .max_message_size(Some(MAX_CLIENT_MESSAGE))
            .max_frame_size(Some(MAX_CLIENT_MESSAGE));
        Self {
            ws: WebSocket::from_raw_socket(stream, Role::Server, Some(config)),
        }
    }

    /// Reads what the client sent until none is waiting: `Ok(false)` once
    /// it closed. Pings are answered by tungstenite on the next flush.
    fn read_pending(&mut self) -> io::Result<bool> {
        for _ in 0..MAX_READS_PER_POLL {
            match self.ws.read() {
                Ok(Message::Close(_)) => return Ok(false),
                Ok(_) => {}
                Err(tungstenite::Error::Io(err)) if is_timeout(&err) => return Ok(true),
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(false)
                }
                Err(err) => return Err(io_error(err)),
            }
        }
        Ok(true)
    }
}

impl super::Feed for Feed {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        self.ws
            .write(Message::text(event.to_json()))
            .map_err(io_error)
    }

    fn keepalive(&mut self) -> io::Result<()> {
        self.ws
            .write(Message::Ping(Default::default()))
            .map_err(io_error)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.ws.flush().map_err(io_error)
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(POLL)
    }

    fn poll(&mut self) -> io::Result<bool> {
        let open = self.read_pending()?;
        if open {
            self.flush()?;
        }
        Ok(open)
    }

    fn finish(&mut self, end: &End) {
        if let Some(json) = end.error_json() {
            if let Err(err) = self.ws.write(Message::text(json)) {
                log::debug!("could not send a watcher its error message: {err}");
            }
        }
        let (code, reason) = match end {
            End::Overflow { .. } => (CloseCode::Again, "fell too far behind"),
            End::Stopping => (CloseCode::Away, "the node is stopping"),
            End::ClientClosed => (CloseCode::Normal, ""),
        };
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // Sends the close frame (or, after the client's, the reply queued
        // by tungstenite), then waits a little for the client's.
        let _ = self.ws.close(Some(frame));
        let deadline = Instant::now() + CLOSE_WAIT;
        while Instant::now() < deadline {
            match self.ws.flush().and_then(|()| self.ws.read()) {
                Err(tungstenite::Error::Io(err)) if is_timeout(&err) => {}
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn io_error(err: tungstenite::Error) -> io::Error {
    match err {
        tungstenite::Error::Io(err) => err,
        other => io::Error::other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_keys_are_16_bytes_of_base64() {
        assert!(is_handshake_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_handshake_key("dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!is_handshake_key("dGhlIHNhbXBsZSBub25j===="));
        assert!(!is_handshake_key("dGhlIHNhbXBsZSBub25jZ!=="));
        assert!(!is_handshake_key(""));
        // RFC 6455's example.
        assert_eq!(
            tungstenite::handshake::derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
