//! The HTTP API: a lucid-http server shared by a pool of worker threads, each
//! calling `recv()` and answering one request at a time with buffers it
//! reuses from request to request. A handler answers a write with its reply
//! and the write's ticket; with `sync: always` a worker does not wait for
//! the fsync: the reply is held and sent once the write is durable (see
//! `ack.rs`).
//!
//! A panic while handling a request is caught: the client gets a 500 JSON
//! message, the panic is logged, and the worker goes on.
//!
//! `GET /api/watch` is the exception: a worker only checks and subscribes
//! the watcher, then hands its connection to a thread of its own (see
//! `watch.rs`).
//!
//! SIGTERM or SIGINT stops the server gracefully: each worker finishes the
//! request it is answering and those already queued, then exits; `run`
//! returns once all have, or after [`SHUTDOWN_GRACE`].

mod access;
mod ack;
mod admin;
mod assets;
mod batch;
mod conditions;
mod errors;
mod export;
#[cfg(test)]
mod faults;
mod headers;
mod import;
mod kv;
mod list;
mod metrics;
mod patch;
mod pool;
mod query;
mod reply;
pub mod route;
mod snapshot;
mod stream_threads;
mod streams;
mod ui;
mod watch;

pub use import::MAX_LINES as MAX_IMPORT_LINES;
pub use patch::parse as parse_patch;

use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use lucid_http::{
    ConfigListenAddr, ConnectionLimit, Method, Pace, Request, Screen, Server, ServerConfig,
    SslConfig,
};

use crate::auth::{Auth, Claims};
use crate::config::{self, General, Storage, Tls};
use crate::memory::MemoryBudget;
use crate::store::{Acknowledger, Store};
use pool::Pool;
use reply::{Reply, Responder};
use route::Route;

/// What every worker shares.
pub struct Context {
    /// The store behind the API.
    pub store: Arc<Store>,
    /// Longest accepted key in bytes.
    pub max_key_bytes: usize,
    /// Largest accepted value in bytes.
    pub max_value_bytes: usize,
    /// Request counters for `/metrics`.
    metrics: metrics::Metrics,
    /// Set once a stop signal arrives.
    stopping: AtomicBool,
    /// Connected watchers and their cap.
    watchers: Arc<stream_threads::Streams>,
    /// Exports being streamed and their cap.
    exports: Arc<stream_threads::Streams>,
    /// Token verification; `None` when authentication is off.
    auth: Option<Auth>,
    /// Whether `/metrics` needs no token.
    metrics_public: bool,
    /// Replies to writes held until they are durable (`sync: always`).
    acknowledger: Acknowledger<ack::Held>,
    /// Memory for request bodies (`storage.memory_budget`).
    memory: Arc<MemoryBudget>,
    /// Whether the web console is served at `/ui` (`ui.enabled`).
    ui_enabled: bool,
    /// The node's name, in its snapshots (`general.node_name`).
    node_name: Arc<str>,
    /// How scheduled backups went, if they are on.
    backups: Option<Arc<crate::backup::BackupStatus>>,
}

impl Context {
    /// The context for serving `store` with the given limits.
    pub fn new(store: Arc<Store>, max_key_bytes: usize, max_value_bytes: usize) -> Self {
        Self {
            store,
            max_key_bytes,
            max_value_bytes,
            metrics: metrics::Metrics::default(),
            stopping: AtomicBool::new(false),
            watchers: Arc::new(stream_threads::Streams::new(
                config::Watch::default().max_watchers,
            )),
            exports: Arc::new(stream_threads::Streams::new(export::MAX_EXPORTS)),
            auth: None,
            metrics_public: true,
            acknowledger: Acknowledger::default(),
            memory: Arc::new(MemoryBudget::new(
                config::Storage::default().memory_budget,
                max_value_bytes,
            )),
            ui_enabled: true,
            node_name: "lucid".into(),
            backups: None,
        }
    }

    /// Names the node `name` in its snapshots, and reports scheduled
    /// backups from `backups` in `/metrics` and `/health`.
    pub fn with_backups(
        mut self,
        name: &str,
        backups: Option<Arc<crate::backup::BackupStatus>>,
    ) -> Self {
        self.node_name = name.into();
        self.backups = backups;
        self
    }

    /// Holds request bodies within `memory` (shared with lucid-http's
    /// read-ahead, see [`lucid_http::set_body_budget`]).
    pub fn with_memory_budget(mut self, memory: Arc<MemoryBudget>) -> Self {
        self.memory = memory;
        self
    }

    /// Serves the web console at `/ui` or not (`ui.enabled`; 404 then).
    pub fn with_ui(mut self, enabled: bool) -> Self {
        self.ui_enabled = enabled;
        self
    }

    /// Serves at most `max` watchers at once (`watch.max_watchers`).
    pub fn with_max_watchers(mut self, max: usize) -> Self {
        self.watchers = Arc::new(stream_threads::Streams::new(max));
        self
    }

    /// Requires tokens as `auth` says (`None`: no authentication); with
    /// them, `/metrics` needs `admin` unless `metrics_public`.
    pub fn with_auth(mut self, auth: Option<Auth>, metrics_public: bool) -> Self {
        self.auth = auth;
        self.metrics_public = metrics_public;
        self
    }

    /// Whether a stop signal has arrived.
    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Per-worker scratch space, reused across requests.
#[derive(Default)]
pub struct Buffers {
    /// The decoded key.
    key: Vec<u8>,
    /// A record being written, or one read back for a GET.
    record: Vec<u8>,
}

impl Buffers {
    /// Capacity kept between requests; a buffer grown past it by a large
    /// value is shrunk back, so idle workers hold little memory.
    const KEEP: usize = 256 * 1024;

    fn trim(&mut self) {
        Self::shrink(&mut self.record);
    }

    /// Frees `buf` if a large value grew it past [`Self::KEEP`].
    fn shrink(buf: &mut Vec<u8>) {
        if buf.capacity() > Self::KEEP {
            *buf = Vec::with_capacity(Self::KEEP);
        }
    }
}

/// A bound HTTP server, not yet answering.
pub struct HttpServer {
    server: Arc<Server>,
    threads: usize,
    tls: bool,
    /// The context [`run`](Self::run) serves with, for [`screen`].
    context: Arc<OnceLock<Arc<Context>>>,
}

impl HttpServer {
    /// Binds the configured address. A request whose body did not come with
    /// its head is checked by its connection's thread, with the workers'
    /// own rules, which then reads the body whole before a worker sees the
    /// request, so a client trickling its body never holds a worker;
    /// request heads are limited to [`head_limit`] bytes.
    pub fn bind(general: &General, storage: &Storage) -> Result<Self, String> {
        let addresses = general.listen_addresses()?;
        if general.ip_address().is_none() {
            log::info!(
                "general.bind_address {} resolves to {}",
                general.bind_address,
                addresses
                    .iter()
                    .map(|addr| addr.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let ssl = ssl_config(&general.tls)?;
        let tls = ssl.is_some();
        let context = Arc::new(OnceLock::new());
        let screened = Arc::clone(&context);
        let config = ServerConfig {
            addr: ConfigListenAddr::IP(addresses),
            ssl,
            read_timeout: general.read_timeout(),
            streams: Some(streams::is_stream),
            connection_limit: Some(ConnectionLimit {
                max: general.max_connections,
                refusal: reply::too_many_connections(),
            }),
            read_ahead: Some(largest_body(storage.max_value_bytes)),
            max_head_bytes: Some(head_limit(storage.max_key_bytes)),
            pace: Some(Pace::default()),
            screen: Some(Screen(Arc::new(move |request| screen(&screened, request)))),
        };
        let server = Server::new(config).map_err(|err| {
            let tls_hint = if tls {
                " Or are general.tls's files not a PEM certificate chain and its key?"
            } else {
                ""
            };
            format!(
                "cannot listen on {}, port {}: {err}. Is another process using the port? \
                 Change general.port or general.bind_address in the config.{tls_hint}",
                general.bind_address, general.port
            )
        })?;
        Ok(Self {
            server: Arc::new(server),
            threads: general.worker_threads(),
            tls,
            context,
        })
    }

    /// `https` when TLS is on, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// The address actually bound (the real port when 0 was configured).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.server.server_addr().to_ip()
    }

    /// Number of worker threads [`run`](Self::run) starts.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Answers requests until `signals` (from [`stop_signals`]) delivers
    /// SIGTERM or SIGINT, then stops gracefully (see the module
    /// documentation); `on_stop` runs when the signal arrives.
    pub fn run(
        self,
        ctx: Context,
        mut signals: Signals,
        on_stop: impl FnOnce() + Send + 'static,
    ) -> Result<(), String> {
        let ctx = Arc::new(ctx);
        // Only `run` sets it, once.
        let _ = self.context.set(Arc::clone(&ctx));
        let pool = Pool::new(self.threads);
        let (server, workers, flag) = (Arc::clone(&self.server), self.threads, Arc::clone(&ctx));
        thread::Builder::new()
            .name("lucid-signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    let name = if signal == SIGTERM {
                        "SIGTERM"
                    } else {
                        "SIGINT"
                    };
                    log::info!("{name} received: finishing the requests in flight, then stopping");
                    on_stop();
                    flag.stopping.store(true, Ordering::SeqCst);
                    for _ in 0..workers {
                        server.unblock();
                    }
                }
            })
            .map_err(|err| format!("cannot start the signal thread: {err}"))?;
        let acknowledging = if ctx.store.syncs_every_write() {
            let ctx = Arc::clone(&ctx);
            let thread = thread::Builder::new()
                .name("lucid-ack".into())
                .spawn(move || ack::run(&ctx))
                .map_err(|err| format!("cannot start the acknowledging thread: {err}"))?;
            Some(thread)
        } else {
            None
        };
        let started = pool.start(&self.server, &ctx, worker);
        if started.is_ok() {
            while !ctx.is_stopping() && pool.live() > 0 {
                thread::sleep(Duration::from_millis(100));
            }
        } else {
            // Stops the workers that did start.
            ctx.stopping.store(true, Ordering::SeqCst);
            for _ in 0..workers {
                self.server.unblock();
            }
        }
        let busy = pool.wait_exited(Instant::now() + SHUTDOWN_GRACE);
        if busy > 0 {
            log::warn!("{busy} workers still busy after {SHUTDOWN_GRACE:?}; stopping anyway");
        }
        // Writes the workers appended are answered once durable.
        ctx.acknowledger.close();
        if let Some(thread) = acknowledging {
            let _ = thread.join();
        }
        // Lets watchers send their closing frames.
        ctx.watchers.wait_gone(Instant::now() + WATCHERS_GRACE);
        started
    }
}

/// The certificate and key for lucid-http, read from `tls`'s files; `None`
/// when TLS is not configured.
fn ssl_config(tls: &Tls) -> Result<Option<SslConfig>, String> {
    if !tls.enabled() {
        return Ok(None);
    }
    if !cfg!(feature = "tls") {
        return Err(
            "general.tls is set, but this lucid was built without TLS: build it with \
             `cargo build --release --features tls`, or leave general.tls empty and put a \
             TLS-terminating proxy in front"
                .into(),
        );
    }
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|err| {
            format!(
                "cannot read the TLS {what} {}: {err} (general.tls in the config)",
                path.display()
            )
        })
    };
    Ok(Some(SslConfig {
        certificate: read(&tls.certificate, "certificate")?,
        private_key: read(&tls.private_key, "private key")?,
    }))
}

/// The largest request body any route reads (a batch's), which
/// lucid-http reads ahead whole: a body over its route's limit is refused
/// before it is read (see [`admit`]).
fn largest_body(max_value_bytes: usize) -> usize {
    batch::max_body(max_value_bytes).max(patch::MAX_BODY)
}

/// Room in a request head for everything but the key: the request line's
/// other parts and the headers (a token is at most 8 KiB of them).
const HEAD_ROOM: usize = 16 * 1024;

/// The longest request head accepted: room for the longest key with every
/// byte percent-encoded, and `HEAD_ROOM`.
pub fn head_limit(max_key_bytes: usize) -> usize {
    3 * max_key_bytes + HEAD_ROOM
}

/// Catches SIGTERM and SIGINT from now on, for [`HttpServer::run`]. Call it
/// first thing, so a stop requested during start-up is not fatal.
pub fn stop_signals() -> Result<Signals, String> {
    Signals::new([SIGTERM, SIGINT]).map_err(|err| format!("cannot install signal handlers: {err}"))
}

/// How long a graceful stop waits for busy workers.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a graceful stop then waits for watchers to close their streams
/// (`on_stop` is expected to have closed the store's change feed).
const WATCHERS_GRACE: Duration = Duration::from_secs(2);

/// A worker of the [`Pool`]: answers requests until the server stops.
fn worker(server: &Server, ctx: &Context) {
    let mut bufs = Buffers::default();
    let mut responder = Responder::default();
    // The request target, copied so the request can be borrowed mutably by
    // the handler; reused, so no allocation per request.
    let mut url = String::new();
    loop {
        let mut request = match server.recv() {
            Ok(request) => request,
            Err(_) if ctx.is_stopping() => return,
            Err(err) => {
                log::warn!("could not receive a request: {err}");
                continue;
            }
        };
        let started = Instant::now();
        let method = metrics::method_slot(request.method());
        url.clear();
        url.push_str(request.url());
        let route = route::route(&url);
        let key = &mut bufs.key;
        let checked = catch_panic(
            || admit(ctx, &request, &url, route, key),
            || Err(Reply::internal_error()),
        );
        let (claims, refused) = match checked {
            Ok(claims) => (claims, None),
            Err(reply) => (None, Some(reply)),
        };
        if streams::is_streamed(route) && refused.is_none() {
            let prepared = catch_panic(
                || streams::prepare(ctx, route, &request),
                || Err(Reply::internal_error()),
            );
            let status = match prepared {
                Ok(watcher) => watcher.start(request),
                Err(reply) => {
                    let status = reply.status();
                    reply.send(request, &mut responder);
                    status
                }
            };
            ctx.metrics.record(method, status, started.elapsed());
            continue;
        }
        let answer = catch_panic(
            || {
                if let Some(refused) = refused {
                    return refused.into();
                }
                match route {
            Route::Kv { raw_key } => kv::handle(ctx, &mut bufs, &mut request, &url, raw_key),
            Route::List => list::handle(ctx, &request, &url).into(),
            Route::Batch => batch::handle(ctx, &mut request, claims.as_ref()),
            Route::AdminStats => admin::stats(ctx, &request).into(),
            Route::AdminCompact => admin::compact(ctx, &request).into(),
            Route::AdminImport => import::handle(ctx, &mut request),
            Route::Health => admin::health(ctx, &request).into(),
            Route::Metrics => admin::metrics(ctx, &request).into(),
            Route::Ui if ctx.ui_enabled => ui::handle(&request, &url, ctx.auth.is_some()).into(),
            Route::Ui | Route::Unknown => Reply::message(
                404,
                "No such resource. The API lives under /api/kv/{key}, /api/kv?prefix=, /api/batch, /api/watch and /api/admin/.",
            ).into(),
            Route::Watch | Route::AdminExport | Route::AdminSnapshot => {
                unreachable!("streams are answered above")
            }
        }
            },
            || Reply::internal_error().into(),
        );
        if answer.reply.status() == 500 {
            let target = access::WithoutQuery(&url);
            log::debug!("500 for {} {target}", request.method());
        }
        // A write is answered once it may be acknowledged: with `sync:
        // always`, once durable, by the acknowledging thread.
        ack::send(ctx, request, answer, method, started, &mut responder);
        bufs.trim();
    }
}

/// Whether a request may reach its handler, decided from its head alone:
/// its token (see [`access::check`], whose claims it returns), and for a
/// request with a body, that its route reads one, of that size, for a key
/// that decodes. The worker runs it on every request; the connection's
/// thread runs it first on a request whose body is still on the wire (see
/// [`screen`]), so that a client refused is told before it sends its body
/// and an accepted body is read whole before a worker sees it.
fn admit(
    ctx: &Context,
    request: &Request,
    url: &str,
    route: Route<'_>,
    scratch: &mut Vec<u8>,
) -> Result<Option<Claims>, Reply<'static>> {
    let claims = access::check(ctx, request, url, route, scratch)?;
    let Some(limit) = body_limit(ctx, route, request.method()) else {
        if body_after_head(request) {
            return Err(body_not_allowed());
        }
        return Ok(claims);
    };
    if let Route::Kv { raw_key } = route {
        route::decode_key(raw_key, scratch, ctx.max_key_bytes)
            .map_err(|err| kv::key_error(err, ctx.max_key_bytes))?;
    }
    if request.body_length().is_some_and(|len| len > limit) {
        return Err(match (route, request.method()) {
            (Route::Batch, _) => batch::too_large("A batch body", limit),
            (Route::AdminImport, _) => batch::too_large("An import body", limit),
            (_, Method::Patch) => patch::too_large(),
            _ => kv::too_large(limit),
        });
    }
    Ok(claims)
}

/// The largest body `route` reads for `method`; `None` if it reads none.
fn body_limit(ctx: &Context, route: Route<'_>, method: &Method) -> Option<usize> {
    match route {
        Route::Kv { .. } if method == &Method::Put => Some(ctx.max_value_bytes),
        Route::Kv { .. } if method == &Method::Patch => Some(patch::MAX_BODY),
        Route::Batch | Route::AdminImport if method == &Method::Post => {
            Some(batch::max_body(ctx.max_value_bytes))
        }
        _ => None,
    }
}

/// [`admit`] on the connection's thread, for lucid-http's
/// [`lucid_http::Screen`]: `None` to serve the request, else the whole
/// reply refusing it, which closes the connection. Waits until the
/// server runs (`context` is set), as the request would in the queue.
fn screen(context: &OnceLock<Arc<Context>>, request: &Request) -> Option<Vec<u8>> {
    let ctx = context.wait();
    let started = Instant::now();
    let url = request.url();
    let route = route::route(url);
    let mut scratch = Vec::new();
    let refused = catch_panic(
        || admit(ctx, request, url, route, &mut scratch).err(),
        || Some(Reply::internal_error()),
    )?;
    let status = refused.status();
    let response = refused.to_closing_bytes(request);
    let method = metrics::method_slot(request.method());
    ctx.metrics.record(method, status, started.elapsed());
    Some(response)
}

/// The 413 for a request with a body where none is read.
fn body_not_allowed<'b>() -> Reply<'b> {
    Reply::message(
        413,
        "Only PUT and PATCH /api/kv/{key}, POST /api/batch and POST /api/admin/import read a request body; this request must not carry one over 1 KiB, nor a chunked one.",
    )
}

/// Request bodies up to this size are read by lucid-http along with the
/// request's head; larger ones, and those whose client waits for `100
/// Continue`, are screened on the connection's thread first (see
/// [`screen`]).
const PREBUFFERED_BODY: usize = 1024;

/// Whether the request came with a body that was not read along with its
/// head (a chunked one included), so that a route reading none refuses it
/// rather than have it read ahead and ignored.
fn body_after_head(request: &Request) -> bool {
    let has = |name: &'static str| headers::first(request, name);
    let expects_continue = || has("Expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    match request.body_length() {
        Some(len) => len > PREBUFFERED_BODY || (len > 0 && expects_continue()),
        None => has("Transfer-Encoding").is_some(),
    }
}

/// Runs a handler, turning a panic into a logged error: what `on_panic`
/// returns (a 500 reply).
fn catch_panic<T>(handler: impl FnOnce() -> T, on_panic: impl FnOnce() -> T) -> T {
    panic::catch_unwind(AssertUnwindSafe(handler)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        log::error!("a request handler panicked: {what}");
        on_panic()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_handler_becomes_a_500() {
        let reply = catch_panic(|| panic!("bug in a handler"), Reply::internal_error);
        assert_eq!(reply, Reply::internal_error());
        assert_eq!(reply.status(), 500);
        let reply = catch_panic(|| Reply::json(200, reply::DELETED), Reply::internal_error);
        assert_eq!(reply.status(), 200);
    }
}
