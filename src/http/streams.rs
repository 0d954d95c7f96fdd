//! Responses that outlive a worker's turn: a watch, an export. A worker
//! only checks such a request, takes a place under the route's cap
//! ([`Streams`]) and hands the connection to a thread of its own
//! ([`hand_over`]), so a client that reads slowly, or for hours, never
//! occupies the worker pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tiny_http::Request;

use super::endpoint::Endpoint;
use super::export::{self, Export};
use super::reply::{Reply, Responder};
use super::route;
use super::watch::{self, Watcher};
use super::Context;

/// Whether tiny_http must treat `request` as the last on its connection:
/// a stream ends by closing it (see `ServerConfig::streams` in
/// `vendor/tiny_http/PATCHES.md`).
pub fn is_stream(request: &Request) -> bool {
    Endpoint::resolve(route::route(request.url()), request.method()).is_streamed()
}

/// A streamed request, checked and holding its place, waiting for its
/// thread.
pub enum Prepared {
    /// A watcher, subscribed.
    Watch(Watcher),
    /// An export.
    Export(Export),
}

/// Checks a request for a streamed `endpoint` (see
/// [`Endpoint::is_streamed`]), or answers why not.
pub fn prepare(
    ctx: &Context,
    endpoint: Endpoint,
    request: &Request,
) -> Result<Prepared, Reply<'static>> {
    match endpoint {
        Endpoint::Export => export::prepare(ctx, request).map(Prepared::Export),
        _ => watch::prepare(ctx, request).map(Prepared::Watch),
    }
}

impl Prepared {
    /// Hands the connection to the stream's own thread; returns the status
    /// it answers with.
    pub fn start(self, request: Request) -> u16 {
        match self {
            Self::Watch(watcher) => watcher.start(request),
            Self::Export(export) => export.start(request),
        }
    }
}

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
