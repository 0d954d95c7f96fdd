//! The threads of responses that outlive a request slot's turn (a watch, an
//! export; see [`super::streams`]): a cap on how many of one kind are
//! served at once ([`Streams`], each holding a [`Place`]), and handing a
//! connection to a thread of its own ([`hand_over`]). A leaf: the streams
//! themselves depend on it, not it on them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lucid_http::Request;

use super::reply::{Reply, Responder};

/// A cap on the streams of one kind served at once, and how many are.
pub struct Streams {
    connected: AtomicUsize,
    max: usize,
}

impl Streams {
    /// At most `max` streams at once.
    pub fn new(max: usize) -> Self {
        Self {
            connected: AtomicUsize::new(0),
            max,
        }
    }

    /// Streams served now.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::SeqCst)
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Waits, until `deadline` at most, for every stream to be gone.
    pub fn wait_gone(&self, deadline: Instant) {
        while self.connected() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Takes a place for one more stream, if the cap allows.
    pub fn admit(self: &Arc<Self>) -> Option<Place> {
        self.connected
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(Arc::clone(self)))
    }
}

/// One stream's place under its cap, given back when dropped.
pub struct Place(Arc<Streams>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts a thread named `name` with a stack of `stack_size` bytes that
/// runs `serve(request)`, and returns `status` (what `serve` answers
/// with). If no thread can be started, answers 503 instead and returns it.
pub fn hand_over(
    request: Request,
    name: &str,
    stack_size: usize,
    status: u16,
    serve: impl FnOnce(Request) + Send + 'static,
) -> u16 {
    // Held here too, so the request can still be answered if the thread
    // cannot start (the closure is dropped then).
    let handoff = Arc::new(Mutex::new(Some(request)));
    let theirs = Arc::clone(&handoff);
    let spawned = thread::Builder::new()
        .name(name.into())
        .stack_size(stack_size)
        .spawn(move || {
            if let Some(request) = take(&theirs) {
                serve(request);
            }
        });
    match spawned {
        Ok(_) => status,
        Err(err) => {
            log::warn!("cannot start a {name} thread: {err}");
            if let Some(request) = take(&handoff) {
                Reply::message(
                    503,
                    "The node cannot start another thread now. Retry later.",
                )
                .send(request, &mut Responder::default());
            }
            503
        }
    }
}

fn take(handoff: &Mutex<Option<Request>>) -> Option<Request> {
    handoff.lock().unwrap_or_else(|e| e.into_inner()).take()
}
