//! What the integration tests share: a `Server` on 127.0.0.1 with the
//! settings a test picks, and a raw `TcpStream` client that sends bytes and
//! parses what comes back.
//!
//! Every socket read by a test has a generous timeout (`FAILSAFE`), so a
//! regression that leaves a client unanswered fails its test instead of
//! hanging it; no test asserts on that timeout.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use lucid_http::{ConfigListenAddr, Request, Server, ServerConfig};

/// How long a client waits for an answer before its test fails.
pub const FAILSAFE: Duration = Duration::from_secs(20);

/// A server's settings with nothing set, listening on 127.0.0.1.
pub fn config() -> ServerConfig {
    ServerConfig::listening(
        ConfigListenAddr::from_socket_addrs("127.0.0.1:0").expect("a local address"),
    )
}

/// A running server and its address; dropping it stops the server.
pub struct Running {
    /// The server, shared with the threads that answer its requests.
    pub server: Arc<Server>,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Starts a server with `config`.
pub fn start(config: ServerConfig) -> Running {
    let server = Server::new(config).expect("a server");
    let addr = server.server_addr().to_ip().expect("a TCP address");
    Running {
        server: Arc::new(server),
        addr,
    }
}

impl Running {
    /// Answers every request on a thread of its own with `handler`, until
    /// the server is dropped.
    pub fn serve(&self, handler: impl Fn(Request) + Send + Sync + 'static) {
        let server = Arc::clone(&self.server);
        std::thread::spawn(move || {
            while let Ok(request) = server.recv() {
                handler(request);
            }
        });
    }

    /// The next request the server hands out.
    pub fn recv(&self) -> Request {
        self.server
            .recv_timeout(FAILSAFE)
            .expect("no server error")
            .expect("a request in time")
    }

    /// A new client connected to the server.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

/// Answers `request` with a 200 whose body is `body`.
pub fn ok(request: Request, body: &str) {
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
    request
        .respond_raw(head.as_bytes(), body.as_bytes())
        .expect("an answer sent");
}

/// A raw HTTP client on one connection.
pub struct Client {
    reader: BufReader<TcpStream>,
}

/// A response as read from the wire.
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The status line and headers, as sent.
    pub head: String,
    /// The body, framed by `Content-Length`, or up to the end of the
    /// connection when there is none.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.head, self.text())
    }
}

impl Reply {
    /// The value of header `name`, if the response has one.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `message` of a JSON refusal's body.
    pub fn message(&self) -> String {
        let text = self.text();
        assert!(
            text.starts_with(r#"{"message":""#),
            "not a JSON refusal: {}",
            text
        );
        text
    }
}

impl Client {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("a connection");
        stream
            .set_read_timeout(Some(FAILSAFE))
            .expect("a read timeout");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Client {
            reader: BufReader::new(stream),
        }
    }

    /// The connection itself.
    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Sends `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("bytes sent");
    }

    /// Sends `bytes`, tolerating a server that already closed the
    /// connection (as it may once it has answered).
    pub fn send_lenient(&mut self, bytes: &[u8]) {
        let _ = self.reader.get_mut().write_all(bytes);
    }

    /// Closes the sending side, as a client that gives up does.
    pub fn finish(&mut self) {
        self.reader
            .get_ref()
            .shutdown(Shutdown::Write)
            .expect("a shutdown");
    }

    /// Reads one response: its head, then a body framed by
    /// `Content-Length` or, without one, up to the end of the connection
    /// (none for a 1xx).
    pub fn response(&mut self) -> Reply {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let read = self.reader.read_line(&mut line).expect("a response line");
            assert!(read > 0, "the connection closed mid-head: {:?}", head);
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("a status line: {:?}", head));
        let mut reply = Reply {
            status,
            head,
            body: Vec::new(),
        };
        if status < 200 {
            return reply;
        }
        match reply.header("Content-Length").map(str::parse::<usize>) {
            Some(length) => {
                let mut body = vec![0; length.expect("a length")];
                self.reader.read_exact(&mut body).expect("the body");
                reply.body = body;
            }
            None => reply.body = self.rest(),
        }
        reply
    }

    /// Everything up to the end of the connection.
    pub fn rest(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => rest,
            Err(err) if err.kind() == ErrorKind::ConnectionReset => rest,
            Err(err) => panic!("the connection did not end: {}", err),
        }
    }

    /// True once the server has closed the connection with nothing more
    /// sent.
    pub fn closed(&mut self) -> bool {
        self.rest().is_empty()
    }
}
