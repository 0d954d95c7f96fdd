use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, ErrorKind, Read};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use crate::common::{HTTPVersion, Method};
use crate::util::{Activity, Pace, Paced, RefinedTcpStream, WriteBuffer};
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<Paced<RefinedTcpStream>>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    //  (Lucid patch: a `WriteBuffer`, which keeps a response one write)
    sink: SequentialWriterBuilder<WriteBuffer<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<Paced<RefinedTcpStream>>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // Lucid patch: see `Request::socket`.
    socket: Option<crate::Socket>,

    // Lucid patch: see `ServerConfig::streams`.
    streams: Option<fn(&Request) -> bool>,

    // Lucid patch: bodies up to this size are read before the request is
    // handed out (see `request::ReadAhead`).
    read_ahead: Option<usize>,

    // Lucid patch: longest request head (request line and headers) read.
    max_head: usize,

    // Lucid patch: what the connection is doing, for `util::Paced` and
    // `util::Connections`.
    activity: Arc<Activity>,

    // Lucid patch: see `ServerConfig::screen`.
    screen: Option<crate::Screen>,

    // Lucid patch: the line of the request head being read, a buffer kept
    // from line to line and request to request (see `read_next_line`).
    line: Vec<u8>,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
    /// Lucid patch: the request line is longer than the head may be.
    UriTooLong,
    /// Lucid patch: the head is longer than it may be.
    HeadTooLarge,
    /// Lucid patch: the head has a byte outside ASCII.
    NotAscii,
    /// Lucid patch: see `request::body_framing`.
    BadFraming(&'static str),
    /// Lucid patch: the request line names an HTTP version other than 1.0
    /// and 1.1.
    VersionNotSupported,
    /// Lucid patch: a line of the head ends with a bare LF, or has a bare
    /// CR or a NUL byte.
    BadLine,
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    ///
    /// Lucid patch: `activity` describes the connection, whose reads are
    /// held to `pace` (see `util::Paced`).
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        socket: Option<crate::Socket>,
        streams: Option<fn(&Request) -> bool>,
        activity: Arc<Activity>,
        pace: Option<Pace>,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();

        let read_socket = Paced::new(read_socket, Arc::clone(&activity), pace);
        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(WriteBuffer::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            socket,
            streams,
            read_ahead: None,
            max_head: usize::MAX,
            activity,
            screen: None,
            line: Vec::new(),
        }
    }

    /// Lucid patch: request bodies up to `read_ahead` bytes are read whole
    /// by this connection's thread before their request is handed out; a
    /// request head over `max_head` bytes is refused (414 if the request
    /// line alone is, else 431).
    pub fn with_limits(
        mut self,
        read_ahead: Option<usize>,
        max_head: Option<usize>,
    ) -> ClientConnection {
        self.read_ahead = read_ahead;
        self.max_head = max_head.unwrap_or(usize::MAX);
        self
    }

    /// Lucid patch: `screen` decides on requests whose body is still on
    /// the wire (see `ServerConfig::screen`).
    pub fn with_screen(mut self, screen: Option<crate::Screen>) -> ClientConnection {
        self.screen = screen;
        self
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    ///
    /// Lucid patch: a bare LF, a bare CR or a NUL byte is an error at once
    /// (RFC 9112 §2.2, RFC 9110 §5.5). Upstream kept NULs and read past a
    /// bare LF until the read timeout.
    ///
    /// Lucid patch: the line is read into `self.line` and returned as a
    /// view of it: one buffer for every line, where upstream allocated one
    /// per line (and then copied each header out of it).
    fn read_next_line(&mut self, budget: &mut usize) -> Result<&str, ReadError> {
        use std::io::BufRead;
        // Lucid patch: scanned a buffer at a time (see `SequentialReader`'s
        // `BufRead`), not a byte at a time; only the line's own bytes are
        // consumed, so a body or the next request stays where it is.
        let line = &mut self.line;
        line.clear();
        loop {
            let available = self
                .next_header_source
                .fill_buf()
                .map_err(ReadError::ReadIoError)?;
            if available.is_empty() {
                let eof = IoError::new(ErrorKind::ConnectionAborted, "Unexpected EOF");
                return Err(ReadError::ReadIoError(eof));
            }
            let (taken, complete) = match available.iter().position(|&byte| byte == b'\n') {
                Some(lf) => (lf + 1, true),
                None => (available.len(), false),
            };
            let checked_from = line.len().saturating_sub(1);
            line.extend_from_slice(&available[..taken]);
            self.next_header_source.consume(taken);
            check_line_bytes(&line[checked_from..])?;
            // Lucid patch: see `with_limits` (the line ending is free).
            let content = line.len() - usize::from(complete);
            if content > *budget {
                return Err(ReadError::HeadTooLarge);
            }
            if complete {
                *budget -= content;
                line.truncate(content - 1); // the CR before the LF
                if !line.is_ascii() {
                    return Err(ReadError::NotAscii);
                }
                return std::str::from_utf8(line).map_err(|_| ReadError::NotAscii);
            }
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let mut head_budget;
        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let mut budget = self.max_head;
                let line = self.read_next_line(&mut budget).map_err(|err| match err {
                    ReadError::HeadTooLarge => ReadError::UriTooLong,
                    err => err,
                })?;
                head_budget = budget;

                let (method, target, version) = parse_request_line(line.trim())?;
                (method, origin_form(target), version)
            };

            // getting all headers
            let headers = {
                // Lucid patch: room for a usual request's headers at once,
                // instead of growing one at a time.
                let mut headers = Vec::with_capacity(8);
                loop {
                    let line = self.read_next_line(&mut head_budget)?;

                    if line.is_empty() {
                        break;
                    };
                    headers.push(match FromStr::from_str(line.trim()) {
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // Lucid patch: refused here, before the request takes the
        // connection's writer. Upstream answered 505 from `next` with a
        // second writer while the request still held the first, so the
        // answer waited on itself for ever and the connection's thread and
        // socket were never freed.
        if version != HTTPVersion(1, 0) && version != HTTPVersion(1, 1) {
            return Err(ReadError::VersionNotSupported);
        }
        // Lucid patch: from here on, the body's minimum rate applies.
        self.activity.start_body();

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
                request::RequestCreationError::BadFraming(why) => ReadError::BadFraming(why),
            }
        })?;

        // return the request
        Ok(request.with_socket(self.socket.clone()))
    }
}

impl ClientConnection {
    /// Lucid patch: answers a request that cannot be read with `status` and
    /// `{"message": message}`.
    fn refuse(&mut self, status: u16, message: &str) {
        let writer = self.sink.next().unwrap();
        json_refusal(status, message)
            .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
            .ok();
    }

    /// Lucid patch: a request whose body is still on the wire is screened
    /// (see `ServerConfig::screen`), then its body read ahead (see
    /// `Request::read_body_ahead`), both on this thread; `None` if it was
    /// answered here, and the connection is to be closed.
    fn screen_and_read_ahead(&mut self, mut rq: Request) -> Option<Request> {
        if !rq.body_on_wire() {
            return Some(rq);
        }
        let refusal = self.screen.as_ref().and_then(|screen| (screen.0)(&rq));
        if let Some(refusal) = refusal {
            rq.refuse_before_body(&refusal).ok();
            return None;
        }
        let Some(limit) = self.read_ahead else {
            return Some(rq);
        };
        match rq.read_body_ahead(limit) {
            Ok(()) => Some(rq),
            Err(err) => {
                let (status, message) = body_refusal(&err);
                let mut response = json_refusal(status, &message);
                if status == 503 {
                    let retry = crate::Header::from_bytes(&b"Retry-After"[..], &b"1"[..])
                        .expect("a valid header");
                    response.add_header(retry);
                }
                rq.respond(response).ok();
                None
            }
        }
    }
}

/// Lucid patch: `{"message": message}` with `status`, closing the
/// connection.
fn json_refusal(status: u16, message: &str) -> crate::Response<std::io::Cursor<Vec<u8>>> {
    use crate::{Header, Response, StatusCode};
    let escaped = message.replace('\\', "\\\\").replace('"', "\\\"");
    let header =
        |name: &[u8], value: &[u8]| Header::from_bytes(name, value).expect("a valid header");
    Response::from_string(format!(r#"{{"message":"{}"}}"#, escaped))
        .with_status_code(StatusCode(status))
        .with_header(header(b"Content-Type", b"application/json"))
        .with_header(header(b"Connection", b"close"))
}

/// Lucid patch: the status and message for a body that could not be read
/// ahead.
fn body_refusal(err: &IoError) -> (u16, String) {
    match err.kind() {
        // A read timeout is `WouldBlock` on Linux.
        ErrorKind::TimedOut | ErrorKind::WouldBlock => {
            (408, "The request body did not arrive in time.".to_owned())
        }
        ErrorKind::UnexpectedEof => (
            400,
            "The connection ended before the request body did.".to_owned(),
        ),
        ErrorKind::OutOfMemory => (
            503,
            "The server has no memory free for the request body now; nothing was done. Retry in a moment.".to_owned(),
        ),
        _ => (400, format!("The request body could not be read: {err}.")),
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        // Lucid patch: one request at a time per connection. The next
        // request is read only once the previous one is answered, so a
        // request's response never waits for another one's: a caller may
        // answer requests in any order (Lucid answers writes from one
        // thread once they are durable; with pipelined requests in flight
        // together, that thread could wait on a response it was to send
        // itself). Clients that wait for each answer, nearly all of them,
        // see no difference.
        self.sink.wait_for_writers();
        self.activity.wait_for_request();
        let rq = match self.read() {
            // Lucid patch: every error is answered with a JSON
            // `{"message": ...}` (upstream sent empty bodies, or nothing),
            // and the connection is closed: where the next request would
            // start is not known.
            // A read timeout is `WouldBlock` on Linux.
            Err(ReadError::ReadIoError(ref err))
                if matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) =>
            {
                self.refuse(408, "The request did not arrive in time.");
                return None;
            }
            Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::UnexpectedEof => {
                self.refuse(400, "The connection ended before the request body did.");
                return None;
            }
            Err(ReadError::ReadIoError(_)) => return None,
            Err(err) => {
                let (status, message) = match err {
                    ReadError::WrongRequestLine => (400, "The request line is malformed."),
                    ReadError::WrongHeader(_) => (400, "A header line is malformed."),
                    ReadError::ExpectationFailed(_) => {
                        (417, "The only Expect header understood is 100-continue.")
                    }
                    ReadError::UriTooLong => (414, "The request line is too long."),
                    ReadError::HeadTooLarge => (431, "The request's headers are too large."),
                    ReadError::NotAscii => (
                        400,
                        "The request head has bytes outside ASCII: percent-encode them in the URL.",
                    ),
                    ReadError::BadFraming(why) => (400, why),
                    ReadError::VersionNotSupported => {
                        (505, "Only HTTP/1.0 and HTTP/1.1 are supported.")
                    }
                    ReadError::BadLine => (
                        400,
                        "Lines of the request head must end with CRLF and hold no NUL or bare CR.",
                    ),
                    ReadError::ReadIoError(_) => unreachable!("answered above"),
                };
                self.refuse(status, message);
                return None;
            }
            Ok(rq) => rq,
        };
        // Lucid patch: see `screen_and_read_ahead`.
        let Some(rq) = self.screen_and_read_ahead(rq) else {
            self.no_more_requests = true;
            return None;
        };

        // updating the status of the connection
        let connection_header = rq
            .headers()
            .iter()
            .find(|h| h.field.equiv("Connection"))
            .map(|h| h.value.as_str());

        let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

        match lowercase {
            Some(ref val) if val.contains("close") => self.no_more_requests = true,
            Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
            Some(ref val)
                if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
            {
                self.no_more_requests = true
            }
            None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
            _ => (),
        };

        // Lucid patch: see `ServerConfig::streams`.
        let stream = self.streams.is_some_and(|picks| picks(&rq));
        if stream {
            self.no_more_requests = true;
        }
        // Lucid patch: a stream or an upgraded connection is its caller's;
        // its client may stay silent for as long as the caller allows.
        let upgrade = lowercase
            .as_deref()
            .is_some_and(|val| val.contains("upgrade"));
        if stream || upgrade {
            self.activity.hand_over();
        }

        // returning the request
        Some(rq)
    }
}

/// Lucid patch: feeds `input` to a connection as a client would send it
/// (over a Unix socket pair) and reads every request from it as the server
/// does, each body to its end, then answers it; returns what the server
/// wrote back. For fuzzing the request reader: heads, framing, chunked
/// bodies, the read-ahead and the errors' answers.
#[cfg(unix)]
#[doc(hidden)]
pub fn serve_bytes(input: &[u8], read_ahead: usize, max_head: usize) -> Vec<u8> {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    let (server_side, mut client_side) = UnixStream::pair().expect("a socket pair");
    let mut client_reader = client_side.try_clone().expect("a socket clone");
    let input = input.to_vec();
    let client = std::thread::spawn(move || {
        let _ = client_side.write_all(&input);
        let _ = client_side.shutdown(std::net::Shutdown::Write);
        let mut answers = Vec::new();
        let _ = client_reader.read_to_end(&mut answers);
        answers
    });
    let (read, write) = RefinedTcpStream::new(crate::connection::Connection::from(server_side))
        .expect("a socket clone");
    let connection = ClientConnection::new(write, read, None, None, Activity::new(None), None)
        .with_limits(Some(read_ahead), Some(max_head));
    for mut request in connection {
        let mut body = Vec::new();
        let _ = request.as_reader().read_to_end(&mut body);
    }
    client.join().expect("the client thread")
}

/// Lucid patch: refuses, as soon as they arrive, the bytes a request head
/// line may not hold: NUL, a CR not followed by LF, an LF not preceded by CR
/// (RFC 9112 §2.2). `bytes` is the part of a line not checked yet, with the
/// byte before it (a CR at its end may still be followed by an LF).
fn check_line_bytes(bytes: &[u8]) -> Result<(), ReadError> {
    for (i, &byte) in bytes.iter().enumerate() {
        // Most bytes are printable: one comparison each.
        if byte > b'\r' {
            continue;
        }
        let next = bytes.get(i + 1);
        let bad = match byte {
            0 => true,
            b'\r' => next.is_some_and(|&next| next != b'\n'),
            b'\n' => i == 0 || bytes[i - 1] != b'\r',
            _ => false,
        };
        if bad {
            return Err(ReadError::BadLine);
        }
    }
    Ok(())
}

/// Parses a "HTTP/1.1" string.
///
/// Lucid patch: any `HTTP/<digit>.<digit>` (RFC 9112 §2.3), so that every
/// well-formed version Lucid does not speak gets a 505, not a 400.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    match version.as_bytes() {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Ok(HTTPVersion(major - b'0', minor - b'0'))
        }
        _ => Err(ReadError::WrongRequestLine),
    }
}

/// Lucid patch: the origin form (path and query) of a request target in
/// absolute form, `http://host/path?query`, which proxies send and servers
/// must accept (RFC 9112 §3.2.2); other targets are returned as they are.
/// Upstream handed the whole URI on as the path.
fn origin_form(target: String) -> String {
    let scheme_len = ["http://", "https://"].iter().find_map(|scheme| {
        let prefix = target.get(..scheme.len())?;
        prefix.eq_ignore_ascii_case(scheme).then_some(scheme.len())
    });
    let Some(scheme_len) = scheme_len else {
        return target;
    };
    let after_authority = &target[scheme_len..];
    match after_authority.find(['/', '?']) {
        Some(at) if after_authority[at..].starts_with('/') => after_authority[at..].to_owned(),
        Some(at) => format!("/{}", &after_authority[at..]),
        None => "/".to_owned(),
    }
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn served_bytes_get_one_answer_per_request() {
        let answers = super::serve_bytes(
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            256,
            512,
        );
        let text = String::from_utf8(answers).unwrap();
        assert_eq!(text.matches("HTTP/1.1 500").count(), 2, "{text}");
        let refused = super::serve_bytes(b"GET / HTTP/1.1\nHost: x\n\n", 256, 512);
        assert!(refused.starts_with(b"HTTP/1.1 400"));
    }

    #[test]
    fn absolute_targets_become_their_path_and_query() {
        for (target, origin) in [
            ("http://host/api/kv/k", "/api/kv/k"),
            ("HTTPS://host:8080/api/kv?prefix=a", "/api/kv?prefix=a"),
            ("http://host?x=1", "/?x=1"),
            ("http://host", "/"),
            ("/api/kv/k", "/api/kv/k"),
            ("*", "*"),
        ] {
            assert_eq!(super::origin_form(target.to_owned()), origin);
        }
    }
}
