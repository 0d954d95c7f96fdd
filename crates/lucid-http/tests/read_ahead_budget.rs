//! The budget bodies are read ahead within (patch 9 of PATCHES.md). The
//! budget is process-wide (`set_body_budget`), so these tests have a test
//! binary of their own and take turns (`TURN`).
#![warn(clippy::all)]

mod common;

use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use common::{config, ok, start, Running};
use lucid_http::{BodyBudget, Request, READ_AHEAD_PATIENCE};

/// A budget of `CAP` bytes that records every reservation.
#[derive(Default)]
struct Recorded {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    used: usize,
    reservations: Vec<usize>,
}

const CAP: usize = 256 * 1024;

impl BodyBudget for Recorded {
    fn reserve_by(&self, bytes: usize, deadline: Instant) -> bool {
        loop {
            {
                let mut state = self.state.lock().unwrap();
                if state.used + bytes <= CAP {
                    state.used += bytes;
                    state.reservations.push(bytes);
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn release(&self, bytes: usize) {
        self.state.lock().unwrap().used -= bytes;
    }
}

impl Recorded {
    fn used(&self) -> usize {
        self.state.lock().unwrap().used
    }

    fn take_reservations(&self) -> Vec<usize> {
        std::mem::take(&mut self.state.lock().unwrap().reservations)
    }
}

/// The budget of this process's servers, set once.
fn budget() -> &'static Arc<Recorded> {
    static BUDGET: OnceLock<Arc<Recorded>> = OnceLock::new();
    BUDGET.get_or_init(|| {
        let budget = Arc::new(Recorded::default());
        assert!(lucid_http::set_body_budget(
            Arc::clone(&budget) as Arc<dyn BodyBudget>
        ));
        budget
    })
}

/// One test at a time uses the budget.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A server reading bodies of up to 1 MiB ahead.
fn server() -> Running {
    let mut config = config();
    config.read_ahead = Some(1 << 20);
    start(config)
}

/// Reads `request`'s body through and checks that the budget is given back
/// then, before the request is answered.
fn read_through(mut request: Request, budget: &Recorded) -> usize {
    let mut body = Vec::new();
    request.as_reader().read_to_end(&mut body).unwrap();
    assert_eq!(budget.used(), 0, "the budget is given back once read");
    ok(request, "");
    body.len()
}

#[test]
fn a_sized_body_reserves_its_length_at_once_and_a_chunked_one_in_steps() {
    let _turn = turn();
    let budget = budget();
    let server = server();
    let mut client = server.client();
    client.send(b"PUT / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n");
    client.send(&vec![b'x'; 100_000]);
    let request = server.recv();
    assert_eq!(budget.used(), 100_000);
    assert_eq!(read_through(request, budget), 100_000);
    assert_eq!(budget.take_reservations(), [100_000]);
    assert_eq!(client.response().status, 200);

    client.send(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = vec![b'x'; 50_000];
    for _ in 0..3 {
        client.send(format!("{:x}\r\n", chunk.len()).as_bytes());
        client.send(&chunk);
        client.send(b"\r\n");
    }
    client.send(b"0\r\n\r\n");
    let request = server.recv();
    assert_eq!(read_through(request, budget), 150_000);
    let steps = budget.take_reservations();
    assert!(
        steps.iter().all(|&step| step <= 64 * 1024) && steps.len() >= 3,
        "{:?}",
        steps
    );
    assert_eq!(client.response().status, 200);
}

#[test]
fn a_body_the_budget_has_no_room_for_is_refused_with_a_503() {
    let _turn = turn();
    let budget = budget();
    let server = server();
    // Holds most of the budget.
    let mut holder = server.client();
    holder.send(b"PUT / HTTP/1.1\r\nContent-Length: 200000\r\n\r\n");
    holder.send(&vec![b'x'; 200_000]);
    let held = server.recv();
    assert_eq!(budget.used(), 200_000);

    let mut late = server.client();
    let started = Instant::now();
    late.send(b"PUT / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n");
    late.send(&vec![b'y'; 100_000]);
    let reply = late.response();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("Retry-After"), Some("1"));
    assert!(reply.message().contains("no memory free"));
    assert!(late.closed());
    assert!(
        started.elapsed() >= READ_AHEAD_PATIENCE,
        "it waited for room first"
    );
    assert!(server.server.try_recv().unwrap().is_none());

    assert_eq!(read_through(held, budget), 200_000);
    assert_eq!(holder.response().status, 200);
    budget.take_reservations();
}
