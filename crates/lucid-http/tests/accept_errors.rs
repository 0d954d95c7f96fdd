//! An error from `accept`, or from splitting the connection it accepted,
//! does not end the server (patches 8 and 29 of PATCHES.md). The tests run
//! the process out of file descriptors, so they have a test binary of
//! their own and take turns.
#![warn(clippy::all)]

mod common;

use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};
use std::time::Instant;

use common::{config, ok, start, Client, Running, FAILSAFE};

/// Counts the accept errors the server logs.
struct AcceptErrors(AtomicUsize);

impl log::Log for AcceptErrors {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Error
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.args().to_string().contains("Error accepting") {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn flush(&self) {}
}

static ACCEPT_ERRORS: AcceptErrors = AcceptErrors(AtomicUsize::new(0));

/// Held by the test running the process out of descriptors.
static EXHAUSTION: Mutex<()> = Mutex::new(());

/// Waits for the other tests to give their descriptors back, then counts
/// accept errors from zero.
fn exclusive() -> MutexGuard<'static, ()> {
    static SETUP: Once = Once::new();
    SETUP.call_once(|| {
        log::set_logger(&ACCEPT_ERRORS).unwrap();
        log::set_max_level(log::LevelFilter::Error);
        // A lower limit, if `prlimit` (util-linux) is there, makes the
        // exhaustion cheap; without it the test opens up to the current one.
        let _ = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg("--nofile=512:")
            .status();
    });
    let turn = EXHAUSTION.lock().unwrap_or_else(PoisonError::into_inner);
    ACCEPT_ERRORS.0.store(0, Ordering::SeqCst);
    turn
}

/// A server that has served a connection, and that connection.
///
/// Once a connection is served, the accept thread is back in `accept`; the
/// connection stays open, so that no descriptor is freed behind the count
/// of the test.
fn warmed_up_server() -> (Running, Client) {
    let server = start(config());
    server.serve(|request| ok(request, "accepted"));
    let mut warm_up = Client::connect(server.addr);
    warm_up.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(warm_up.response().text(), "accepted");
    (server, warm_up)
}

/// Opens files until the process may open no more but `free` descriptors,
/// then connects a client to `server` with one of them; returns the files,
/// to free the descriptors by dropping them, and the client.
fn connect_with_descriptors_left(server: &Running, free: usize) -> (Vec<File>, Client) {
    let mut files = Vec::new();
    while let Ok(file) = File::open("/dev/null") {
        files.push(file);
    }
    files.truncate(files.len() - free);
    (files, Client::connect(server.addr))
}

/// Waits until the server has logged an accept error, frees the
/// descriptors `files` hold and asserts that a new connection to `server`
/// is served.
fn assert_served_once_freed(server: &Running, files: Vec<File>) {
    let deadline = Instant::now() + FAILSAFE;
    while ACCEPT_ERRORS.0.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "accept never failed");
        std::thread::yield_now();
    }
    drop(files);
    let mut next = Client::connect(server.addr);
    next.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(next.response().text(), "accepted");
}

#[test]
fn the_server_accepts_again_once_descriptors_are_free() {
    let _turn = exclusive();
    let (server, _warm_up) = warmed_up_server();

    // The accept thread, blocked in `accept`, already holds the descriptor
    // of the next connection (Linux takes it before waiting). Three are
    // left free: the first client's socket and the server's two clones of
    // the connection it accepts; the `accept` after that finds none.
    let (files, mut first) = connect_with_descriptors_left(&server, 3);
    first.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(first.response().text(), "accepted");
    assert_served_once_freed(&server, files);
}

#[test]
fn a_connection_accepted_with_no_descriptor_left_to_split_it_is_closed_and_the_server_goes_on() {
    let _turn = exclusive();
    let (server, _warm_up) = warmed_up_server();

    // One descriptor is left free, for the client's socket. The accept
    // thread already holds the descriptor of the connection (see above), so
    // `accept` succeeds, but the server has none left to clone the
    // connection into its reading and writing halves.
    let (files, mut first) = connect_with_descriptors_left(&server, 1);
    first.send_lenient(b"GET / HTTP/1.1\r\n\r\n");
    assert!(
        first.closed(),
        "the connection that could not be split is closed"
    );
    assert_served_once_freed(&server, files);
    assert_eq!(
        ACCEPT_ERRORS.0.load(Ordering::SeqCst),
        1,
        "the failed split is logged once, as an accept error"
    );
}
