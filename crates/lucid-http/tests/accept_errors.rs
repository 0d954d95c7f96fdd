//! An error from `accept` does not end the server (patch 8 of
//! PATCHES.md). The test runs the process out of file descriptors, so it
//! has a test binary of its own.
#![warn(clippy::all)]

mod common;

use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::{config, ok, start, Client, FAILSAFE};

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

/// Opens files until the process may open no more.
fn exhaust_file_descriptors() -> Vec<File> {
    let mut files = Vec::new();
    while let Ok(file) = File::open("/dev/null") {
        files.push(file);
    }
    files
}

#[test]
fn the_server_accepts_again_once_descriptors_are_free() {
    log::set_logger(&ACCEPT_ERRORS).unwrap();
    log::set_max_level(log::LevelFilter::Error);
    // A lower limit, if `prlimit` (util-linux) is there, makes the
    // exhaustion cheap; without it the test opens up to the current one.
    let _ = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg("--nofile=512:")
        .status();
    let server = start(config());
    server.serve(|request| ok(request, "accepted"));
    // Once a connection is served, the accept thread is back in `accept`;
    // it stays open, so that no descriptor is freed behind the count below.
    let mut warm_up = Client::connect(server.addr);
    warm_up.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(warm_up.response().text(), "accepted");

    // The accept thread, blocked in `accept`, already holds the descriptor
    // of the next connection (Linux takes it before waiting). Three are
    // left free: the first client's socket and the server's two clones of
    // the connection it accepts; the `accept` after that finds none.
    let mut files = exhaust_file_descriptors();
    files.truncate(files.len() - 3);
    let mut first = Client::connect(server.addr);
    first.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(first.response().text(), "accepted");
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
