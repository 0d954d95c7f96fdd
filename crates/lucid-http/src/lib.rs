//! # Simple usage
//!
//! ## Creating the server
//!
//! The easiest way to create a server is to call `Server::http()`.
//!
//! The `http()` function returns an `IoResult<Server>` which will return an error
//! in the case where the server creation fails (for example if the listening port is already
//! occupied).
//!
//! ```no_run
//! let server = lucid_http::Server::http("127.0.0.1:0").unwrap();
//! ```
//!
//! A newly-created `Server` will immediately start listening for incoming connections and HTTP
//! requests.
//!
//! ## Receiving requests
//!
//! Calling `server.recv()` will block until the next request is available.
//! This function returns an `IoResult<Request>`, so you need to handle the possible errors.
//!
//! ```no_run
//! # let server = lucid_http::Server::http("127.0.0.1:0").unwrap();
//!
//! loop {
//!     // blocks until the next request is received
//!     let request = match server.recv() {
//!         Ok(rq) => rq,
//!         Err(e) => { println!("error: {}", e); break }
//!     };
//!
//!     // do something with the request
//!     // ...
//! }
//! ```
//!
//! In a real-case scenario, you will probably want to spawn multiple worker tasks and call
//! `server.recv()` on all of them. Like this:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::thread;
//! # let server = lucid_http::Server::http("127.0.0.1:0").unwrap();
//! let server = Arc::new(server);
//! let mut guards = Vec::with_capacity(4);
//!
//! for _ in (0 .. 4) {
//!     let server = server.clone();
//!
//!     let guard = thread::spawn(move || {
//!         loop {
//!             let rq = server.recv().unwrap();
//!
//!             // ...
//!         }
//!     });
//!
//!     guards.push(guard);
//! }
//! ```
//!
//! If you don't want to block, you can call `server.try_recv()` instead.
//!
//! ## Handling requests
//!
//! The `Request` object returned by `server.recv()` contains informations about the client's request.
//! The most useful methods are probably `request.method()` and `request.url()` which return
//! the requested method (`GET`, `POST`, etc.) and url.
//!
//! To handle a request, you need to create a `Response` object. See the docs of this object for
//! more infos. Here is an example of creating a `Response` from a file:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! let response = lucid_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! ```
//!
//! All that remains to do is call `request.respond()`:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! # let server = lucid_http::Server::http("127.0.0.1:0").unwrap();
//! # let request = server.recv().unwrap();
//! # let response = lucid_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! let _ = request.respond(response);
//! ```
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]

#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use zeroize::Zeroizing;

use std::error::Error;
use std::io::Error as IoError;
use std::io::ErrorKind as IoErrorKind;
use std::io::Result as IoResult;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use client::ClientConnection;
use connection::Connection;
use util::MessagesQueue;

#[cfg(unix)]
#[doc(hidden)]
pub use client::serve_bytes;
pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use connection::{ConfigListenAddr, ListenAddr, Listener, Socket};
pub use request::{set_body_budget, BodyBudget, ReadWrite, Request, READ_AHEAD_PATIENCE};
pub use response::{Response, ResponseBox};
pub use test::TestRequest;
pub use util::Pace;

mod client;
mod common;
mod connection;
mod request;
mod response;
mod ssl;
mod test;
mod util;

/// The main class of this library.
///
/// Destroying this object will immediately close the listening socket and the reading
///  part of all the client's connections. Requests that have already been returned by
///  the `recv()` function will not close and the responses will be transferred to the client.
pub struct Server {
    // should be false as long as the server exists
    // when set to true, all the subtasks will close within a few hundreds ms
    close: Arc<AtomicBool>,

    // queue for messages received by child threads
    messages: Arc<MessagesQueue<Message>>,

    // result of TcpListener::local_addr()
    listening_addr: ListenAddr,
}

enum Message {
    Error(IoError),
    NewRequest(Request),
}

impl From<IoError> for Message {
    fn from(e: IoError) -> Message {
        Message::Error(e)
    }
}

impl From<Request> for Message {
    fn from(rq: Request) -> Message {
        Message::NewRequest(rq)
    }
}

// this trait is to make sure that Server implements Share and Send
#[doc(hidden)]
trait MustBeShareDummy: Sync + Send {}
#[doc(hidden)]
impl MustBeShareDummy for Server {}

pub struct IncomingRequests<'a> {
    server: &'a Server,
}

/// Represents the parameters required to create a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The addresses to try to listen to.
    pub addr: ConfigListenAddr,

    /// If `Some`, then the server will use SSL to encode the communications.
    pub ssl: Option<SslConfig>,

    /// Lucid patch: if `Some`, every accepted socket gets this read timeout,
    /// so a client that stops sending mid-request (or stays idle between
    /// requests) is cut off instead of holding a thread forever; and this
    /// write timeout, so a client that stops reading its responses cannot
    /// hold the thread writing one.
    pub read_timeout: Option<std::time::Duration>,

    /// Lucid patch: requests this picks are the last read from their
    /// connection (as if they carried `Connection: close`), so that the
    /// handler can answer with a stream that lasts until it drops it
    /// (`Request::into_stream`): no request pipelined behind one waits
    /// for its end.
    pub streams: Option<fn(&Request) -> bool>,

    /// Lucid patch: if `Some`, at most `max` connections are open at once;
    /// a connection accepted beyond that gets `refusal` written to it (on
    /// plain HTTP) and is closed, without taking a thread.
    pub connection_limit: Option<ConnectionLimit>,

    /// Lucid patch: if `Some(limit)`, a request body of up to `limit` bytes
    /// is read whole by its connection's thread before the request is
    /// handed to `recv`, so a client trickling its body holds no thread of
    /// the caller's; a body the budget has no room for within
    /// [`READ_AHEAD_PATIENCE`] is refused with a 503 (see
    /// `request::ReadAhead`). Larger bodies are streamed as upstream does.
    pub read_ahead: Option<usize>,

    /// Lucid patch: if `Some`, a request head (request line and headers)
    /// longer than this many bytes is refused: 414 if the request line
    /// alone is, else 431. Upstream read heads of any size.
    pub max_head_bytes: Option<usize>,

    /// Lucid patch: if `Some`, a request head must arrive whole within
    /// `Pace::head`, and a body at no less than `Pace::min_body_rate`
    /// (a 408 otherwise); see `util::Paced`.
    pub pace: Option<Pace>,

    /// Lucid patch: if `Some`, decides on the connection's thread whether a
    /// request whose body is still on the wire is served, before any of
    /// that body is read (see [`Screen`]).
    pub screen: Option<Screen>,

    /// Lucid patch: if `Some`, every request is handed to this handler on
    /// its connection's thread, once its head (and a body read ahead, see
    /// `read_ahead`) is read, instead of being queued for `recv` (which
    /// then never returns a request). See [`Handler`].
    pub handler: Option<Handler>,
}

impl ServerConfig {
    /// Lucid patch: a server listening on `addr`, every other setting
    /// unset (plain HTTP, none of the limits).
    pub fn listening(addr: ConfigListenAddr) -> Self {
        ServerConfig {
            addr,
            ssl: None,
            read_timeout: None,
            streams: None,
            connection_limit: None,
            read_ahead: None,
            max_head_bytes: None,
            pace: None,
            screen: None,
            handler: None,
        }
    }
}

/// Lucid patch: the caller's request handler, run on the thread that read
/// the request (each connection has its own): it answers the request there
/// (or hands it on) and returns; the connection reads its next request
/// once that one is answered. No queue, no second thread and no thread
/// switch stand between reading a request and answering it, which the
/// `recv` hand-over costs on every request (upstream's only way). The
/// caller bounds how many requests it handles at once itself (Lucid: a
/// fixed set of request slots); a connection's thread waiting for one
/// holds nothing but its connection.
#[derive(Clone)]
pub struct Handler(pub Arc<HandlerFn>);

/// Lucid patch: the caller's function behind a [`Handler`].
pub type HandlerFn = dyn Fn(Request) + Send + Sync;

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handler(..)")
    }
}

/// Lucid patch: the caller's decision, from a request's head alone, on a
/// request whose body was not read along with its head (a chunked one,
/// one over 1 KiB, or one whose client waits for `100 Continue`): `None`
/// to serve it, or the whole response (head and body, `Connection:
/// close`) that refuses it. A refused request is answered by its
/// connection's thread, which then closes the connection: without reading
/// the body if the client waits for `100 Continue`, else after draining
/// it. A served one gets its `100 Continue` and has its body read ahead
/// (see `ServerConfig::read_ahead`) by the connection's thread before it
/// is handed to `recv`, so the caller decides on a request before its
/// client sends the body and never waits for that body itself.
#[derive(Clone)]
pub struct Screen(pub Arc<ScreenFn>);

/// Lucid patch: the caller's function behind a [`Screen`].
pub type ScreenFn = dyn Fn(&Request) -> Option<Vec<u8>> + Send + Sync;

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Screen(..)")
    }
}

/// Lucid patch: see `ServerConfig::connection_limit`.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    /// Most connections open at once.
    pub max: usize,
    /// The raw bytes (a whole HTTP response) sent to a connection refused
    /// for being one too many.
    pub refusal: Vec<u8>,
}

/// Configuration of the server for SSL.
#[derive(Debug, Clone)]
pub struct SslConfig {
    /// Contains the public certificate to send to clients.
    pub certificate: Vec<u8>,
    /// Contains the ultra-secret private key used to decode communications.
    pub private_key: Vec<u8>,
}

/// Lucid patch: an accept error (out of file descriptors, a connection
/// reset before it was accepted, no descriptor left to split the connection)
/// is transient: it is logged and the accept thread goes on after 50 ms.
/// Upstream ended the accept thread on it, and the server never accepted
/// another connection.
fn back_off_after_accept_error(err: &IoError) {
    log::error!("Error accepting new client: {}", err);
    thread::sleep(Duration::from_millis(50));
}

impl Server {
    /// Shortcut for a simple server on a specific address.
    #[inline]
    pub fn http<A>(addr: A) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig::listening(
            ConfigListenAddr::from_socket_addrs(addr)?,
        ))
    }

    /// Shortcut for an HTTPS server on a specific address.
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    #[inline]
    pub fn https<A>(
        addr: A,
        config: SslConfig,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            ssl: Some(config),
            ..ServerConfig::listening(ConfigListenAddr::from_socket_addrs(addr)?)
        })
    }

    #[cfg(unix)]
    #[inline]
    /// Shortcut for a UNIX socket server at a specific path
    pub fn http_unix(
        path: &std::path::Path,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::new(ServerConfig::listening(ConfigListenAddr::unix_from_path(
            path,
        )))
    }

    /// Builds a new server that listens on the specified address.
    pub fn new(config: ServerConfig) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = config.addr.bind()?;
        Self::from_listener_with_limits(listener, config)
    }

    /// Builds a new server using the specified TCP listener.
    ///
    /// This is useful if you've constructed TcpListener using some less usual method
    /// such as from systemd. For other cases, you probably want the `new()` function.
    pub fn from_listener<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Self::from_listener_with_timeout(listener, ssl_config, None)
    }

    /// Lucid patch: `from_listener` with a read timeout for accepted sockets
    /// (see `ServerConfig::read_timeout`).
    pub fn from_listener_with_timeout<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
        read_timeout: Option<std::time::Duration>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let config = ServerConfig {
            addr: ConfigListenAddr::IP(Vec::new()),
            ssl: ssl_config,
            read_timeout,
            connection_limit: None,
            read_ahead: None,
            streams: None,
            max_head_bytes: None,
            pace: None,
            screen: None,
            handler: None,
        };
        Self::from_listener_with_limits(listener, config)
    }

    /// Lucid patch: a server on `listener` with `config`'s settings other
    /// than its address (see `ServerConfig::read_timeout`,
    /// `connection_limit`, `read_ahead`, `streams`, `max_head_bytes`).
    pub fn from_listener_with_limits<L: Into<Listener>>(
        listener: L,
        config: ServerConfig,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let ServerConfig {
            ssl: ssl_config,
            read_timeout,
            connection_limit,
            read_ahead,
            streams,
            max_head_bytes,
            pace,
            screen,
            handler,
            ..
        } = config;
        let listener = listener.into();
        let open_connections = Arc::new(util::Connections::default());
        // building the "close" variable
        let close_trigger = Arc::new(AtomicBool::new(false));

        // building the TcpListener
        let (server, local_addr) = {
            let local_addr = listener.local_addr()?;
            log::debug!("Server listening on {}", local_addr);
            (listener, local_addr)
        };

        // building the SSL capabilities
        #[cfg(all(feature = "ssl-openssl", feature = "ssl-rustls"))]
        compile_error!(
            "Features 'ssl-openssl' and 'ssl-rustls' must not be enabled at the same time"
        );
        #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
        type SslContext = ();
        #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
        type SslContext = crate::ssl::SslContextImpl;
        let ssl: Option<SslContext> = {
            match ssl_config {
                #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
                Some(config) => Some(SslContext::from_pem(
                    config.certificate,
                    Zeroizing::new(config.private_key),
                )?),
                #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
                Some(_) => return Err(
                    "Building a server with SSL requires enabling the `ssl` feature in tiny-http"
                        .into(),
                ),
                None => None,
            }
        };

        // creating a task where server.accept() is continuously called
        // and ClientConnection objects are pushed in the messages queue
        let messages = MessagesQueue::with_capacity(8);

        let inside_close_trigger = close_trigger.clone();
        let inside_messages = messages.clone();
        thread::spawn(move || {
            // a tasks pool is used to dispatch the connections into threads
            let tasks_pool = util::TaskPool::new();

            log::debug!("Running accept thread");
            while !inside_close_trigger.load(Relaxed) {
                let new_client = match server.accept() {
                    Ok((mut sock, _)) => {
                        use util::RefinedTcpStream;
                        // Lucid patch: see `ServerConfig::connection_limit`.
                        // When the table is full, the connection that has
                        // sent least for longest makes room if there is one
                        // (see `util::Connections::evict_one`).
                        if let Some(limit) = &connection_limit {
                            if open_connections.len() >= limit.max && !open_connections.evict_one()
                            {
                                if ssl.is_none() {
                                    use std::io::Write;
                                    let _ = sock.write_all(&limit.refusal);
                                }
                                let _ = sock.shutdown(Shutdown::Write);
                                continue;
                            }
                        }
                        // Lucid patch: every write leaves at once. Responses
                        // are written whole (see `util::WriteBuffer`), and a
                        // stream's event must not wait for the client's
                        // delayed ACK of the one before (Nagle's algorithm).
                        if let Err(err) = sock.set_nodelay(true) {
                            log::warn!("cannot set TCP_NODELAY on a connection: {}", err);
                        }
                        // Lucid patch: see `ServerConfig::read_timeout`.
                        if let Err(err) = sock.set_read_timeout(read_timeout) {
                            log::warn!("cannot set a read timeout on a connection: {}", err);
                        }
                        if let Err(err) = sock.set_write_timeout(read_timeout) {
                            log::warn!("cannot set a write timeout on a connection: {}", err);
                        }
                        // Lucid patch: see `Request::socket`.
                        let socket = sock.try_clone().ok().map(connection::Socket::new);
                        let halves = match ssl {
                            None => RefinedTcpStream::new(sock),
                            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
                            Some(ref ssl) => {
                                // trying to apply SSL over the connection
                                // if an error occurs, we just close the socket and resume listening
                                let sock = match ssl.accept(sock) {
                                    Ok(s) => s,
                                    Err(_) => continue,
                                };

                                RefinedTcpStream::new(sock)
                            }
                            #[cfg(not(any(feature = "ssl-openssl", feature = "ssl-rustls")))]
                            Some(ref _ssl) => unreachable!(),
                        };
                        // Lucid patch: the second half of a plain connection
                        // needs a file descriptor of its own, which `accept`
                        // may have left none of (see `RefinedTcpStream::new`):
                        // an accept error. The connection is dropped, so its
                        // client sees it closed; upstream panicked, ending
                        // the accept thread.
                        let (read_closable, write_closable) = match halves {
                            Ok(halves) => halves,
                            Err(e) => {
                                back_off_after_accept_error(&e);
                                continue;
                            }
                        };

                        let activity = util::Activity::new(socket.clone());
                        let open = open_connections.register(Arc::clone(&activity));
                        let client = ClientConnection::new(
                            write_closable,
                            read_closable,
                            socket,
                            streams,
                            activity,
                            pace,
                        )
                        .with_limits(read_ahead, max_head_bytes)
                        .with_screen(screen.clone());
                        Ok((client, open))
                    }
                    Err(e) => Err(e),
                };

                match new_client {
                    Ok((client, open)) => {
                        let messages = inside_messages.clone();
                        let handler = handler.clone();
                        let mut client = Some(client);
                        let mut open = Some(open);
                        tasks_pool.spawn(Box::new(move || {
                            let _open = open.take();
                            if let Some(client) = client.take() {
                                // Lucid patch: see `ServerConfig::handler`.
                                let deliver = |rq: Request| match &handler {
                                    Some(handler) => (handler.0)(rq),
                                    None => messages.push(rq.into()),
                                };
                                // Synchronization is needed for HTTPS requests to avoid a deadlock
                                if client.secure() {
                                    let (sender, receiver) = mpsc::channel();
                                    for rq in client {
                                        deliver(rq.with_notify_sender(sender.clone()));
                                        receiver.recv().unwrap();
                                    }
                                } else {
                                    for rq in client {
                                        deliver(rq);
                                    }
                                }
                            }
                        }));
                    }

                    Err(e) => back_off_after_accept_error(&e),
                }
            }
            log::debug!("Terminating accept thread");
        });

        // result
        Ok(Server {
            messages,
            close: close_trigger,
            listening_addr: local_addr,
        })
    }

    /// Returns an iterator for all the incoming requests.
    ///
    /// The iterator will return `None` if the server socket is shutdown.
    #[inline]
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    /// Returns the address the server is listening to.
    #[inline]
    pub fn server_addr(&self) -> ListenAddr {
        self.listening_addr.clone()
    }

    /// Returns the number of clients currently connected to the server.
    pub fn num_connections(&self) -> usize {
        unimplemented!()
        //self.requests_receiver.lock().len()
    }

    /// Blocks until an HTTP request has been submitted and returns it.
    pub fn recv(&self) -> IoResult<Request> {
        match self.messages.pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(rq),
            None => Err(IoError::new(IoErrorKind::Other, "thread unblocked")),
        }
    }

    /// Same as `recv()` but doesn't block longer than timeout
    pub fn recv_timeout(&self, timeout: Duration) -> IoResult<Option<Request>> {
        match self.messages.pop_timeout(timeout) {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Same as `recv()` but doesn't block.
    pub fn try_recv(&self) -> IoResult<Option<Request>> {
        match self.messages.try_pop() {
            Some(Message::Error(err)) => Err(err),
            Some(Message::NewRequest(rq)) => Ok(Some(rq)),
            None => Ok(None),
        }
    }

    /// Unblock thread stuck in recv() or incoming_requests().
    /// If there are several such threads, only one is unblocked.
    /// This method allows graceful shutdown of server.
    pub fn unblock(&self) {
        self.messages.unblock();
    }
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close.store(true, Relaxed);
        // Connect briefly to ourselves to unblock the accept thread
        let maybe_stream = match &self.listening_addr {
            ListenAddr::IP(addr) => TcpStream::connect(addr).map(Connection::from),
            #[cfg(unix)]
            ListenAddr::Unix(addr) => {
                // TODO: use connect_addr when its stabilized.
                let path = addr.as_pathname().unwrap();
                std::os::unix::net::UnixStream::connect(path).map(Connection::from)
            }
        };
        if let Ok(stream) = maybe_stream {
            let _ = stream.shutdown(Shutdown::Both);
        }

        #[cfg(unix)]
        if let ListenAddr::Unix(addr) = &self.listening_addr {
            if let Some(path) = addr.as_pathname() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
