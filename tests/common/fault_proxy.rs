//! A TCP proxy on loopback between a follower and its primary that can
//! damage the replication stream (`GET /api/replication/stream`): cut it
//! after some bytes, flip a byte inside its records, or answer garbage
//! instead of the primary. Every other request (acknowledgements, snapshot
//! downloads) passes through untouched. A new fault applies to the
//! connections made after it is set: setting one cuts every connection
//! open, so the follower connects again and meets it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// What the proxy does to a replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Passes it through.
    None,
    /// Passes the first this many bytes of the primary's answer (head
    /// included), then cuts both connections.
    CutAfter(usize),
    /// Flips a bit in the first occurrence of these bytes in the primary's
    /// answer (a value inside a record: its CRC no longer matches).
    Flip(Vec<u8>),
    /// Answers itself: a 200 with a chunked body that is no frame.
    GarbageHttp,
    /// Answers itself: bytes that are not HTTP at all.
    NotHttp,
    /// For a snapshot's download (`GET /api/admin/snapshot`), not a
    /// stream: passes the first this many bytes, then nothing more,
    /// holding the connection open (a primary that lost power halfway).
    StallSnapshot(usize),
}

/// The garbage answers.
const GARBAGE_HTTP: &[u8] = b"HTTP/1.1 200 OK\r\n\
    Content-Type: application/x-lucid-replication\r\n\
    Transfer-Encoding: chunked\r\n\r\n\
    13\r\nthis is not a frame\r\n0\r\n\r\n";
const NOT_HTTP: &[u8] = b"SSH-2.0-OpenSSH_9.6\r\nProtocol mismatch.\r\n";

struct State {
    upstream: u16,
    fault: Mutex<Fault>,
    /// Both ends of every connection open, to cut them.
    open: Mutex<Vec<TcpStream>>,
    /// Replication streams met with a fault (not [`Fault::None`]).
    faulty: AtomicUsize,
    /// Replication streams asked for, whatever the fault.
    streams: AtomicUsize,
    stop: AtomicBool,
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    port: u16,
    state: Arc<State>,
}

impl FaultProxy {
    /// A proxy to `127.0.0.1:upstream`, passing everything through.
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            upstream,
            fault: Mutex::new(Fault::None),
            open: Mutex::new(Vec::new()),
            faulty: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let shared = Arc::clone(&state);
        thread::spawn(move || {
            for client in listener.incoming() {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let state = Arc::clone(&shared);
                thread::spawn(move || {
                    let _ = serve(&state, client);
                });
            }
        });
        FaultProxy { port, state }
    }

    /// The port followers connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Applies `fault` from now on, and cuts every open connection.
    pub fn set(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = fault;
        self.cut_all();
    }

    /// Replication streams met with a fault so far.
    pub fn faulty_streams(&self) -> usize {
        self.state.faulty.load(Ordering::SeqCst)
    }

    /// Replication streams asked for so far.
    pub fn streams(&self) -> usize {
        self.state.streams.load(Ordering::SeqCst)
    }

    fn cut_all(&self) {
        for stream in self.state.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.cut_all();
        // Wakes the accepting thread so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Serves one client connection.
fn serve(state: &State, mut client: TcpStream) -> io::Result<()> {
    let head = read_head(&mut client)?;
    let current = state.fault.lock().unwrap().clone();
    let fault = if head.starts_with(b"GET /api/replication/stream") {
        state.streams.fetch_add(1, Ordering::SeqCst);
        match current {
            Fault::StallSnapshot(_) => Fault::None,
            fault => fault,
        }
    } else if head.starts_with(b"GET /api/admin/snapshot") {
        match current {
            Fault::StallSnapshot(_) => current,
            _ => Fault::None,
        }
    } else {
        Fault::None
    };
    if fault != Fault::None {
        state.faulty.fetch_add(1, Ordering::SeqCst);
    }
    let garbage = match fault {
        Fault::GarbageHttp => Some(GARBAGE_HTTP),
        Fault::NotHttp => Some(NOT_HTTP),
        _ => None,
    };
    if let Some(garbage) = garbage {
        client.write_all(garbage)?;
        return client.shutdown(Shutdown::Both);
    }
    let mut upstream = TcpStream::connect(("127.0.0.1", state.upstream))?;
    upstream.write_all(&head)?;
    {
        let mut open = state.open.lock().unwrap();
        open.push(client.try_clone()?);
        open.push(upstream.try_clone()?);
    }
    let (mut to_upstream, mut from_client) = (upstream.try_clone()?, client.try_clone()?);
    thread::spawn(move || {
        let _ = io::copy(&mut from_client, &mut to_upstream);
        let _ = to_upstream.shutdown(Shutdown::Write);
    });
    let relayed = relay(&mut upstream, &mut client, &fault);
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
    relayed
}

/// Sends nothing more and waits until the client closes the connection
/// (or the proxy cuts it), at most a minute.
fn hold_until_closed(client: &mut TcpStream) -> io::Result<()> {
    client.set_read_timeout(Some(std::time::Duration::from_millis(100)))?;
    let mut byte = [0u8; 1];
    for _ in 0..600 {
        match client.peek(&mut byte) {
            Ok(0) => return Ok(()),
            Ok(_) => thread::sleep(std::time::Duration::from_millis(100)),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Reads a request's head (up to the blank line), byte by byte so that
/// nothing after it is taken.
fn read_head(client: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(head)
}

/// Copies the primary's answer to the client, damaged as `fault` says.
fn relay(upstream: &mut TcpStream, client: &mut TcpStream, fault: &Fault) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    // Bytes read but not sent yet: a flip's marker may span two reads.
    let mut pending: Vec<u8> = Vec::new();
    let mut relayed = 0;
    let mut flipped = false;
    loop {
        let n = upstream.read(&mut buf)?;
        if n == 0 {
            return client.write_all(&pending);
        }
        pending.extend_from_slice(&buf[..n]);
        let send = match fault {
            Fault::StallSnapshot(limit) if relayed + pending.len() >= *limit => {
                client.write_all(&pending[..limit - relayed])?;
                return hold_until_closed(client);
            }
            Fault::StallSnapshot(_) => {
                relayed += pending.len();
                pending.len()
            }
            Fault::CutAfter(limit) => {
                let allowed = (limit - relayed).min(pending.len());
                client.write_all(&pending[..allowed])?;
                relayed += allowed;
                if relayed >= *limit {
                    return Ok(());
                }
                pending.clear();
                continue;
            }
            Fault::Flip(marker) if !flipped => {
                match pending.windows(marker.len()).position(|w| w == marker) {
                    Some(at) => {
                        pending[at] ^= 0x20;
                        flipped = true;
                        pending.len()
                    }
                    None => pending.len().saturating_sub(marker.len() - 1),
                }
            }
            _ => pending.len(),
        };
        client.write_all(&pending[..send])?;
        pending.drain(..send);
    }
}
