use std::io::Error as IoError;
use std::io::{self, Cursor, ErrorKind, Read, Write};

use ascii::AsciiString;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::util::{ChunkedDecoder, EqualReader, FusedReader};
use crate::{HTTPVersion, Header, Method, Response};

/// Represents an HTTP request made by a client.
///
/// A `Request` object is what is produced by the server, and is your what
/// your code must analyse and answer.
///
/// This object implements the `Send` trait, therefore you can dispatch your requests to
/// worker threads.
///
/// # Pipelining
///
/// If a client sends multiple requests in a row (without waiting for the response), then you will
/// get multiple `Request` objects simultaneously. This is called *requests pipelining*.
/// Tiny-http automatically reorders the responses so that you don't need to worry about the order
/// in which you call `respond` or `into_writer`.
///
/// This mechanic is disabled if:
///
///  - The body of a request is large enough (handling requires pipelining requires storing the
///    body of the request in a buffer ; if the body is too big, tiny-http will avoid doing that)
///  - A request sends a `Expect: 100-continue` header (which means that the client waits to
///    know whether its body will be processed before sending it)
///  - A request sends a `Connection: close` header or `Connection: upgrade` header (used for
///    websockets), which indicates that this is the last request that will be received on this
///    connection
///
/// # Automatic cleanup
///
/// If a `Request` object is destroyed without `into_writer` or `respond` being called,
/// an empty response with a 500 status code (internal server error) will automatically be
/// sent back to the client.
/// This means that if your code fails during the handling of a request, this "internal server
/// error" response will automatically be sent during the stack unwinding.
///
/// # Testing
///
/// If you want to build fake requests to test your server, use [`TestRequest`](crate::test::TestRequest).
pub struct Request {
    // where to read the body from
    data_reader: Option<Box<dyn Read + Send + 'static>>,

    // if this writer is empty, then the request has been answered
    response_writer: Option<Box<dyn Write + Send + 'static>>,

    remote_addr: Option<SocketAddr>,

    // true if HTTPS, false if HTTP
    secure: bool,

    method: Method,

    path: String,

    http_version: HTTPVersion,

    headers: Vec<Header>,

    body_length: Option<usize>,

    // true if a `100 Continue` response must be sent when `as_reader()` is called
    must_send_continue: bool,

    // If Some, a message must be sent after responding
    notify_when_responded: Option<Sender<()>>,

    // Lucid patch: see `Request::socket`.
    socket: Option<crate::Socket>,

    // Lucid patch: the body was not read along with the head (see
    // `Request::read_body_ahead`).
    body_on_wire: bool,
}

struct NotifyOnDrop<R> {
    sender: Sender<()>,
    inner: R,
}

impl<R: Read> Read for NotifyOnDrop<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}
impl<R: Write> Write for NotifyOnDrop<R> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
impl<R> Drop for NotifyOnDrop<R> {
    fn drop(&mut self) {
        self.sender.send(()).unwrap();
    }
}

/// Error that can happen when building a `Request` object.
#[derive(Debug)]
pub enum RequestCreationError {
    /// The client sent an `Expect` header that was not recognized by tiny-http.
    ExpectationFailed,

    /// Error while reading data from the socket during the creation of the `Request`.
    CreationIoError(IoError),

    /// Lucid patch: the body's framing headers are malformed or
    /// contradictory (see `body_framing`); the message says how.
    BadFraming(&'static str),
}

impl From<IoError> for RequestCreationError {
    fn from(err: IoError) -> RequestCreationError {
        RequestCreationError::CreationIoError(err)
    }
}

/// Builds a new request.
///
/// After the request line and headers have been read from the socket, a new `Request` object
/// is built.
///
/// You must pass a `Read` that will allow the `Request` object to read from the incoming data.
/// It is the responsibility of the `Request` to read only the data of the request and not further.
///
/// The `Write` object will be used by the `Request` to write the response.
#[allow(clippy::too_many_arguments)]
pub fn new_request<R, W>(
    secure: bool,
    method: Method,
    path: String,
    version: HTTPVersion,
    headers: Vec<Header>,
    remote_addr: Option<SocketAddr>,
    mut source_data: R,
    writer: W,
) -> Result<Request, RequestCreationError>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    // Lucid patch: see `body_framing`.
    let (transfer_encoding, content_length) =
        body_framing(&headers).map_err(RequestCreationError::BadFraming)?;

    // true if the client sent a `Expect: 100-continue` header
    let expects_continue = {
        match headers
            .iter()
            .find(|h: &&Header| h.field.equiv("Expect"))
            .map(|h| h.value.as_str())
        {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("100-continue") => true,
            _ => return Err(RequestCreationError::ExpectationFailed),
        }
    };

    // true if the client sent a `Connection: upgrade` header
    let connection_upgrade = {
        match headers
            .iter()
            .find(|h: &&Header| h.field.equiv("Connection"))
            .map(|h| h.value.as_str())
        {
            Some(v) if v.to_ascii_lowercase().contains("upgrade") => true,
            _ => false,
        }
    };

    // we wrap `source_data` around a reading whose nature depends on the transfer-encoding and
    // content-length headers
    let reader = if connection_upgrade {
        // if we have a `Connection: upgrade`, always keeping the whole reader
        Box::new(source_data) as Box<dyn Read + Send + 'static>
    } else if let Some(content_length) = content_length {
        if content_length == 0 {
            Box::new(io::empty()) as Box<dyn Read + Send + 'static>
        } else if content_length <= 1024 && !expects_continue {
            // if the content-length is small enough, we just read everything into a buffer

            let mut buffer = vec![0; content_length];
            let mut offset = 0;

            while offset != content_length {
                let read = source_data.read(&mut buffer[offset..])?;
                if read == 0 {
                    // Lucid patch: the client closed its side before its
                    // whole body arrived; `UnexpectedEof`, answered with a
                    // 400 as a larger body cut short is (upstream closed
                    // the connection without an answer).
                    let info = "the connection ended before the request body did";
                    let err = IoError::new(ErrorKind::UnexpectedEof, info);
                    return Err(RequestCreationError::CreationIoError(err));
                }

                offset += read;
            }

            Box::new(Cursor::new(buffer)) as Box<dyn Read + Send + 'static>
        } else {
            // Lucid patch: see `BodyEndsBeforeConnection`.
            let source_data = BodyEndsBeforeConnection(source_data);
            let (data_reader, _) = EqualReader::new(source_data, content_length); // TODO:
            Box::new(FusedReader::new(data_reader)) as Box<dyn Read + Send + 'static>
        }
    } else if transfer_encoding.is_some() {
        // if a transfer-encoding was specified, then "chunked" is ALWAYS applied
        // over the message (RFC2616 #3.6)
        // Lucid patch: see `BodyEndsBeforeConnection` and `ChunkedDecoder`.
        let source_data = BodyEndsBeforeConnection(source_data);
        Box::new(FusedReader::new(ChunkedDecoder::new(source_data)))
            as Box<dyn Read + Send + 'static>
    } else {
        // if we have neither a Content-Length nor a Transfer-Encoding,
        // assuming that we have no data
        // TODO: could also be multipart/byteranges
        Box::new(io::empty()) as Box<dyn Read + Send + 'static>
    };

    // Lucid patch: see `Request::read_body_ahead`.
    let body_on_wire = !connection_upgrade
        && (transfer_encoding.is_some()
            || content_length.is_some_and(|len| len > 1024 || (len > 0 && expects_continue)));

    Ok(Request {
        data_reader: Some(reader),
        response_writer: Some(Box::new(writer) as Box<dyn Write + Send + 'static>),
        remote_addr,
        secure,
        method,
        path,
        http_version: version,
        headers,
        body_length: content_length,
        must_send_continue: expects_continue,
        notify_when_responded: None,
        socket: None,
        body_on_wire,
    })
}

/// Lucid patch: the request's `Transfer-Encoding` and `Content-Length`,
/// refusing what upstream let through and what lets a request be framed two
/// ways (request smuggling): a `Content-Length` that is not a number,
/// several that differ, one beside `Transfer-Encoding`, and a
/// `Transfer-Encoding` other than `chunked`, and more than one
/// `Transfer-Encoding` header (a proxy that obeys the last one would frame
/// the body differently). Upstream took a malformed length as no body, so
/// the body was read as the next request, and checked only the first
/// `Transfer-Encoding`. A length too large for `usize` becomes
/// `usize::MAX`, which the caller refuses as too large.
fn body_framing(headers: &[Header]) -> Result<(Option<AsciiString>, Option<usize>), &'static str> {
    let mut encodings = headers
        .iter()
        .filter(|h| h.field.equiv("Transfer-Encoding"));
    let transfer_encoding = encodings.next().map(|h| h.value.clone());
    if encodings.next().is_some() {
        return Err("The request has several Transfer-Encoding headers; send one: chunked.");
    }
    let mut content_length = None;
    for header in headers.iter().filter(|h| h.field.equiv("Content-Length")) {
        let value = header.value.as_str().trim();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err("The Content-Length header is not a number of bytes.");
        }
        let length = value.parse().unwrap_or(usize::MAX);
        if content_length.is_some_and(|earlier| earlier != length) {
            return Err("The request has several Content-Length headers that differ.");
        }
        content_length = Some(length);
    }
    match transfer_encoding {
        Some(ref te) if !te.as_str().trim().eq_ignore_ascii_case("chunked") => {
            Err("Transfer-Encoding must be chunked (no other coding is supported).")
        }
        Some(_) if content_length.is_some() => {
            Err("The request has both Content-Length and Transfer-Encoding; send one.")
        }
        framing => Ok((framing, content_length)),
    }
}

/// Lucid patch: a request body read whole (up to a limit) by the
/// connection's own thread before the request is handed to the server's
/// user, so a client that trickles its body holds only its own connection's
/// thread, never one of the user's workers (see `Request::read_body_ahead`).
///
/// All connections together buffer at most what the [`BodyBudget`] set by
/// [`set_body_budget`] grants (by default [`READ_AHEAD_BUDGET`] bytes), so
/// many clients sending large bodies at once cannot exhaust memory. A body
/// framed by `Content-Length` takes its whole length at once, so bodies
/// never hold parts of the budget each while waiting for the rest; a
/// chunked one takes it in steps as it arrives. A body that finds no room
/// within [`READ_AHEAD_PATIENCE`] is not read: its request is refused, as
/// a request half read must not reach a worker. The buffer is given back
/// as soon as it has been read through.
struct ReadAhead {
    buffered: Cursor<Vec<u8>>,
    /// The rest of the connection's reader: past the end of the body,
    /// except for a chunked body over the limit.
    rest: Box<dyn Read + Send + 'static>,
    /// Bytes of the budget this body holds, given back when read or dropped.
    reserved: usize,
    budget: Arc<dyn BodyBudget>,
}

/// Lucid patch: where bodies read ahead take their memory from, shared by
/// every connection (see [`set_body_budget`]).
pub trait BodyBudget: Send + Sync {
    /// Takes `bytes` if there is room for them by `deadline`, waiting for
    /// room until then (and returns true), else takes nothing.
    fn reserve_by(&self, bytes: usize, deadline: Instant) -> bool;
    /// Gives back `bytes` taken by `reserve_by` or `try_reserve`.
    fn release(&self, bytes: usize);
    /// Takes `bytes` if there is room for them now.
    fn try_reserve(&self, bytes: usize) -> bool {
        self.reserve_by(bytes, Instant::now())
    }
}

/// Lucid patch: the most body bytes all connections read ahead at once,
/// unless [`set_body_budget`] says otherwise.
pub const READ_AHEAD_BUDGET: usize = 64 * 1024 * 1024;

/// Lucid patch: how long a body read ahead waits for room in the budget
/// before its request is refused with a 503.
pub const READ_AHEAD_PATIENCE: Duration = Duration::from_secs(2);

/// The budget until [`set_body_budget`]: bytes in use, at most the cap.
struct FixedBudget(AtomicUsize, usize);

impl BodyBudget for FixedBudget {
    /// Polls for room every 10 ms: this budget serves only servers whose
    /// user set none of its own.
    fn reserve_by(&self, bytes: usize, deadline: Instant) -> bool {
        loop {
            let taken = self
                .0
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                    used.checked_add(bytes).filter(|&total| total <= self.1)
                })
                .is_ok();
            if taken || Instant::now() >= deadline {
                return taken;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn release(&self, bytes: usize) {
        self.0.fetch_sub(bytes, Ordering::SeqCst);
    }
}

static BODY_BUDGET: OnceLock<Arc<dyn BodyBudget>> = OnceLock::new();

/// Lucid patch: makes every server of the process read bodies ahead within
/// `budget` (the caller's memory budget, shared with its own buffers)
/// instead of `READ_AHEAD_BUDGET`. Call it before serving; returns false
/// if a budget was already in use.
pub fn set_body_budget(budget: Arc<dyn BodyBudget>) -> bool {
    BODY_BUDGET.set(budget).is_ok()
}

fn body_budget() -> Arc<dyn BodyBudget> {
    Arc::clone(
        BODY_BUDGET.get_or_init(|| Arc::new(FixedBudget(AtomicUsize::new(0), READ_AHEAD_BUDGET))),
    )
}

/// How much of a chunked body is read per step, each step reserved in the
/// budget.
const READ_AHEAD_STEP: usize = 64 * 1024;

impl ReadAhead {
    /// Reads `body` whole if it is `length` bytes long, else (chunked) up
    /// to `limit + 1` bytes, so that a reader can tell a body over the
    /// limit. The error that stopped it, with the rest of `body`, if it
    /// could not: the client's (a timeout, the connection closed, bad
    /// chunked encoding), or `OutOfMemory` when the budget had no room
    /// within [`READ_AHEAD_PATIENCE`].
    fn read(
        body: Box<dyn Read + Send + 'static>,
        length: Option<usize>,
        limit: usize,
    ) -> Result<Self, (Box<dyn Read + Send + 'static>, IoError)> {
        let mut ahead = ReadAhead {
            buffered: Cursor::new(Vec::new()),
            rest: body,
            reserved: 0,
            budget: body_budget(),
        };
        match ahead.fill(length, limit) {
            Ok(()) => Ok(ahead),
            Err(err) => Err((
                std::mem::replace(&mut ahead.rest, Box::new(io::empty())),
                err,
            )),
        }
    }

    fn fill(&mut self, length: Option<usize>, limit: usize) -> io::Result<()> {
        let wanted = length.unwrap_or(limit.saturating_add(1));
        let step_size = if length.is_some() {
            wanted
        } else {
            READ_AHEAD_STEP
        };
        let mut deadline = None;
        let buffered = self.buffered.get_mut();
        while buffered.len() < wanted {
            let step = step_size.min(wanted - buffered.len());
            if !self.budget.try_reserve(step) {
                let by = *deadline.get_or_insert_with(|| Instant::now() + READ_AHEAD_PATIENCE);
                if !self.budget.reserve_by(step, by) {
                    return Err(IoError::new(
                        ErrorKind::OutOfMemory,
                        "no memory is free for the request body",
                    ));
                }
            }
            self.reserved += step;
            // Exact growth: a doubling Vec could hold twice its reservation.
            buffered.reserve_exact(step);
            if (&mut self.rest).take(step as u64).read_to_end(buffered)? == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Frees the buffer once read through, and gives its bytes back.
    fn release(&mut self) {
        self.buffered = Cursor::new(Vec::new());
        self.budget.release(std::mem::take(&mut self.reserved));
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.budget.release(self.reserved);
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.buffered.read(buf)?;
        if read > 0 || buf.is_empty() {
            return Ok(read);
        }
        if self.reserved > 0 {
            self.release();
        }
        self.rest.read(buf)
    }
}

/// Lucid patch: the connection under a request body whose end is known from
/// its own framing (`Content-Length`, or chunked encoding's last chunk). A
/// complete body ends before the connection does, so reaching the end of the
/// connection while reading one means the client gave up half-way: that is
/// an `UnexpectedEof` error, where upstream returned `Ok(0)` and a truncated
/// body read as a complete one.
struct BodyEndsBeforeConnection<R>(R);

impl<R: Read> Read for BodyEndsBeforeConnection<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.0.read(buf)?;
        if read == 0 && !buf.is_empty() {
            return Err(IoError::new(
                ErrorKind::UnexpectedEof,
                "the connection ended before the request body did",
            ));
        }
        Ok(read)
    }
}

impl Request {
    /// Returns true if the request was made through HTTPS.
    #[inline]
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Returns the method requested by the client (eg. `GET`, `POST`, etc.).
    #[inline]
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Returns the resource requested by the client.
    #[inline]
    pub fn url(&self) -> &str {
        &self.path
    }

    /// Returns a list of all headers sent by the client.
    #[inline]
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// Returns the HTTP version of the request.
    #[inline]
    pub fn http_version(&self) -> &HTTPVersion {
        &self.http_version
    }

    /// Returns the length of the body in bytes.
    ///
    /// Returns `None` if the length is unknown.
    #[inline]
    pub fn body_length(&self) -> Option<usize> {
        self.body_length
    }

    /// Returns the address of the client that sent this request.
    ///
    /// The address is always `Some` for TCP listeners, but always `None` for UNIX listeners
    /// (as the remote address of a UNIX client is almost always unnamed).
    ///
    /// Note that this is gathered from the socket. If you receive the request from a proxy,
    /// this function will return the address of the proxy and not the address of the actual
    /// user.
    #[inline]
    pub fn remote_addr(&self) -> Option<&SocketAddr> {
        self.remote_addr.as_ref()
    }

    /// Lucid patch: a handle on the socket under this request, to set
    /// timeouts on the connection once `upgrade` or `into_stream` has
    /// handed it over. `None` for requests not read from a socket.
    pub fn socket(&self) -> Option<crate::Socket> {
        self.socket.clone()
    }

    pub(crate) fn with_socket(mut self, socket: Option<crate::Socket>) -> Self {
        self.socket = socket;
        self
    }

    /// Lucid patch: whether the body was not read along with the head
    /// (chunked, over 1 KiB, or awaited with `100 Continue`) and is still
    /// on the connection.
    pub(crate) fn body_on_wire(&self) -> bool {
        self.body_on_wire
    }

    /// Lucid patch: reads the body still on the wire into memory on the
    /// calling thread (the connection's), after sending `100 Continue` if
    /// the client waits for it, unless its `Content-Length` is over
    /// `limit` (then it is left to the caller, as upstream did); see
    /// `ReadAhead`. An error if it could not be read whole: the request
    /// must then be refused, its body left half read.
    pub(crate) fn read_body_ahead(&mut self, limit: usize) -> io::Result<()> {
        if !self.body_on_wire || self.body_length.is_some_and(|len| len > limit) {
            return Ok(());
        }
        self.send_continue();
        let body = self.data_reader.take().expect("a body reader");
        let (reader, result) = match ReadAhead::read(body, self.body_length, limit) {
            Ok(ahead) => (Box::new(ahead) as Box<dyn Read + Send + 'static>, Ok(())),
            Err((rest, err)) => (rest, Err(err)),
        };
        self.data_reader = Some(reader);
        self.body_on_wire = result.is_err();
        result
    }

    /// Lucid patch: answers with `response` (the whole of it, head and
    /// body) before reading the body. A body the client holds back until
    /// `100 Continue` is never awaited: the connection is shut down once
    /// the answer is written, which ends the drain of the body when the
    /// request is dropped at once. Any other body is drained then, so that
    /// the client can read the answer before the connection closes.
    pub(crate) fn refuse_before_body(mut self, response: &[u8]) -> Result<(), IoError> {
        let sent = self.respond_raw_impl(response, &[]);
        if self.must_send_continue {
            if let Some(socket) = &self.socket {
                let _ = socket.shutdown();
            }
        }
        sent
    }

    /// Sends `100 Continue` if the client waits for it, once.
    ///
    /// Lucid patch: the bare status line. Upstream printed a whole
    /// `Response`, with `Content-Length: 0`, which HTTP forbids on a 1xx
    /// response.
    fn send_continue(&mut self) {
        if self.must_send_continue {
            let writer = self.response_writer.as_mut().unwrap();
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").ok();
            writer.flush().ok();
            self.must_send_continue = false;
        }
    }

    /// Lucid patch: sends the status line and headers of `response` (not
    /// its body) with `Connection: close` and neither `Content-Length` nor
    /// chunked encoding, then hands over the connection's writer: the body
    /// is whatever is written to it, and it ends when the writer is
    /// dropped, which closes the connection. For requests picked by
    /// `ServerConfig::streams` (the last read from their connection);
    /// on another, the connection would stay open after the writer is
    /// dropped.
    pub fn into_stream<R: Read>(
        self,
        response: Response<R>,
    ) -> io::Result<Box<dyn Write + Send + 'static>> {
        self.into_stream_framed(response, false)
    }

    /// Lucid patch: `into_stream`, but sending `Transfer-Encoding: chunked`:
    /// the caller writes the body's chunks, the last one included. A body
    /// cut short (the writer dropped before the last chunk) is then seen
    /// as incomplete by the client, where one ended by closing the
    /// connection would not be.
    pub fn into_chunked_stream<R: Read>(
        self,
        response: Response<R>,
    ) -> io::Result<Box<dyn Write + Send + 'static>> {
        self.into_stream_framed(response, true)
    }

    fn into_stream_framed<R: Read>(
        mut self,
        response: Response<R>,
        chunked: bool,
    ) -> io::Result<Box<dyn Write + Send + 'static>> {
        let mut writer = self.extract_writer_impl();
        let printed = response
            .print_head_until_close(writer.by_ref(), &self.http_version, chunked)
            .and_then(|()| writer.flush());
        let writer = match self.notify_when_responded.take() {
            Some(sender) => Box::new(NotifyOnDrop {
                sender,
                inner: writer,
            }) as Box<dyn Write + Send + 'static>,
            None => writer,
        };
        printed.map(|()| writer)
    }

    /// Sends a response with a `Connection: upgrade` header, then turns the `Request` into a `Stream`.
    ///
    /// The main purpose of this function is to support websockets.
    /// If you detect that the request wants to use some kind of protocol upgrade, you can
    ///  call this function to obtain full control of the socket stream.
    ///
    /// If you call this on a non-websocket request, tiny-http will wait until this `Stream` object
    ///  is destroyed before continuing to read or write on the socket. Therefore you should always
    ///  destroy it as soon as possible.
    pub fn upgrade<R: Read>(
        mut self,
        protocol: &str,
        response: Response<R>,
    ) -> Box<dyn ReadWrite + Send> {
        use crate::util::CustomStream;

        response
            .raw_print(
                self.response_writer.as_mut().unwrap().by_ref(),
                self.http_version.clone(),
                &self.headers,
                false,
                Some(protocol),
            )
            .ok(); // TODO: unused result

        self.response_writer.as_mut().unwrap().flush().ok(); // TODO: unused result

        let stream = CustomStream::new(self.extract_reader_impl(), self.extract_writer_impl());
        if let Some(sender) = self.notify_when_responded.take() {
            let stream = NotifyOnDrop {
                sender,
                inner: stream,
            };
            Box::new(stream) as Box<dyn ReadWrite + Send>
        } else {
            Box::new(stream) as Box<dyn ReadWrite + Send>
        }
    }

    /// Allows to read the body of the request.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # use std::io::Read;
    /// # fn get_content_type(_: &lucid_http::Request) -> &'static str { "" }
    /// # let server = lucid_http::Server::http("127.0.0.1:0").unwrap();
    /// let mut request = server.recv().unwrap();
    ///
    /// if get_content_type(&request) == "application/json" {
    ///     let mut content = String::new();
    ///     request.as_reader().read_to_string(&mut content).unwrap();
    /// }
    /// ```
    ///
    /// If the client sent a `Expect: 100-continue` header with the request, calling this
    ///  function will send back a `100 Continue` response.
    #[inline]
    pub fn as_reader(&mut self) -> &mut dyn Read {
        self.send_continue();
        self.data_reader.as_mut().unwrap()
    }

    /// Turns the `Request` into a writer.
    ///
    /// The writer has a raw access to the stream to the user.
    /// This function is useful for things like CGI.
    ///
    /// Note that the destruction of the `Writer` object may trigger
    /// some events. For exemple if a client has sent multiple requests and the requests
    /// have been processed in parallel, the destruction of a writer will trigger
    /// the writing of the next response.
    /// Therefore you should always destroy the `Writer` as soon as possible.
    #[inline]
    pub fn into_writer(mut self) -> Box<dyn Write + Send + 'static> {
        let writer = self.extract_writer_impl();
        if let Some(sender) = self.notify_when_responded.take() {
            let writer = NotifyOnDrop {
                sender,
                inner: writer,
            };
            Box::new(writer) as Box<dyn Write + Send + 'static>
        } else {
            writer
        }
    }

    /// Extract the response `Writer` object from the Request, dropping this `Writer` has the same side effects
    /// as the object returned by `into_writer` above.
    ///
    /// This may only be called once on a single request.
    fn extract_writer_impl(&mut self) -> Box<dyn Write + Send + 'static> {
        use std::mem;

        assert!(self.response_writer.is_some());

        let mut writer = None;
        mem::swap(&mut self.response_writer, &mut writer);
        writer.unwrap()
    }

    /// Extract the body `Reader` object from the Request.
    ///
    /// This may only be called once on a single request.
    fn extract_reader_impl(&mut self) -> Box<dyn Read + Send + 'static> {
        use std::mem;

        assert!(self.data_reader.is_some());

        let mut reader = None;
        mem::swap(&mut self.data_reader, &mut reader);
        reader.unwrap()
    }

    /// Sends a response to this request.
    #[inline]
    pub fn respond<R>(mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        let res = self.respond_impl(response);
        if let Some(sender) = self.notify_when_responded.take() {
            sender.send(()).unwrap();
        }
        res
    }

    fn respond_impl<R>(&mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        let mut writer = self.extract_writer_impl();

        let do_not_send_body = self.method == Method::Head;

        Self::ignore_client_closing_errors(response.raw_print(
            writer.by_ref(),
            self.http_version.clone(),
            &self.headers,
            do_not_send_body,
            None,
        ))?;

        Self::ignore_client_closing_errors(writer.flush())
    }

    /// Lucid patch: sends a response the caller wrote itself. `head` is the
    /// whole status line and header block (ending with the empty line) and
    /// must frame `body` by `Content-Length`; for a `HEAD` request the
    /// caller passes no body. Skips building a `Response` and its
    /// `Header`s, which costs several allocations per header.
    pub fn respond_raw(mut self, head: &[u8], body: &[u8]) -> Result<(), IoError> {
        let res = self.respond_raw_impl(head, body);
        if let Some(sender) = self.notify_when_responded.take() {
            sender.send(()).unwrap();
        }
        res
    }

    fn respond_raw_impl(&mut self, head: &[u8], body: &[u8]) -> Result<(), IoError> {
        let mut writer = self.extract_writer_impl();
        let mut write = || {
            // Lucid patch: head and body in one write (see `WriteBuffer`).
            let mut parts = [io::IoSlice::new(head), io::IoSlice::new(body)];
            crate::util::write_all_vectored(&mut writer, &mut parts)?;
            writer.flush()
        };
        Self::ignore_client_closing_errors(write())
    }

    /// Lucid patch: sends a response whose body the caller writes itself,
    /// in pieces: `head` (the whole status line and header block, as for
    /// `respond_raw`) declares `Content-Length: body_len`, and `write_body`
    /// writes the `body_len` bytes of the body to the writer it is given.
    /// A head short enough to be buffered leaves with the body's first
    /// piece in one write. Once the body is written whole, the connection
    /// goes on to its next request; if `write_body` fails (a read error
    /// of the caller's, or the client went away) or writes more or fewer
    /// bytes, the connection is shut down instead, since the client would
    /// read what follows with broken framing. For a `HEAD` request, use
    /// `respond_raw` with no body.
    pub fn respond_raw_with<F>(
        mut self,
        head: &[u8],
        body_len: usize,
        write_body: F,
    ) -> io::Result<()>
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()>,
    {
        let mut writer = self.extract_writer_impl();
        let mut write = || {
            writer.write_all(head)?;
            let mut body = crate::util::FramedBody::new(&mut writer, body_len);
            write_body(&mut body)?;
            body.finish()?;
            writer.flush()
        };
        let sent = write();
        if sent.is_err() {
            if let Some(socket) = &self.socket {
                let _ = socket.shutdown();
            }
        }
        drop(writer);
        if let Some(sender) = self.notify_when_responded.take() {
            sender.send(()).unwrap();
        }
        Self::ignore_client_closing_errors(sent)
    }

    fn ignore_client_closing_errors(result: io::Result<()>) -> io::Result<()> {
        result.or_else(|err| match err.kind() {
            ErrorKind::BrokenPipe => Ok(()),
            ErrorKind::ConnectionAborted => Ok(()),
            ErrorKind::ConnectionRefused => Ok(()),
            ErrorKind::ConnectionReset => Ok(()),
            _ => Err(err),
        })
    }

    pub(crate) fn with_notify_sender(mut self, sender: Sender<()>) -> Self {
        self.notify_when_responded = Some(sender);
        self
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        write!(
            formatter,
            "Request({} {} from {:?})",
            self.method, self.path, self.remote_addr
        )
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.response_writer.is_some() {
            let response = Response::empty(500);
            let _ = self.respond_impl(response); // ignoring any potential error
            if let Some(sender) = self.notify_when_responded.take() {
                sender.send(()).unwrap();
            }
        }
    }
}

/// Dummy trait that regroups the `Read` and `Write` traits.
///
/// Automatically implemented on all types that implement both `Read` and `Write`.
pub trait ReadWrite: Read + Write {}
impl<T> ReadWrite for T where T: Read + Write {}

#[cfg(test)]
mod tests {
    use super::Request;

    #[test]
    fn must_be_send() {
        #![allow(dead_code)]
        fn f<T: Send>(_: &T) {}
        fn bar(rq: &Request) {
            f(rq);
        }
    }
}
