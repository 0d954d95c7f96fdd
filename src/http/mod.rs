//! The HTTP API on a lucid-http server: each request is answered on the
//! thread of its connection that read it, in one of a fixed number of
//! request slots (`slots.rs`), whose buffers it reuses from request to
//! request. A handler answers a write with its reply and the write's
//! ticket; with `sync: always` the connection's thread does not wait for
//! the fsync: the reply is held and sent once the write is durable (see
//! `ack.rs`), and the slot is free for the next request.
//!
//! What a request asks for is resolved once from its route and method (an
//! `Endpoint`, see `endpoint.rs`): `admit` checks it against its token and
//! its body, then `dispatch` hands it to its handler.
//!
//! A panic while handling a request is caught: the client gets a 500 JSON
//! message, the panic is logged, and the connection goes on.
//!
//! `GET /api/watch` is the exception: its slot only checks and subscribes
//! the watcher, then hands its connection to a thread of its own (see
//! `watch.rs`).
//!
//! SIGTERM or SIGINT stops the server gracefully: the requests being
//! answered are finished, those read later get a 503; `run` returns once
//! every slot is back, or after [`SHUTDOWN_GRACE`].

mod access;
mod ack;
mod admin;
mod assets;
mod batch;
mod body;
mod conditions;
mod endpoint;
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
mod query;
mod replication;
mod reply;
pub mod route;
mod slots;
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
    ConfigListenAddr, ConnectionLimit, Handler, Pace, Request, Screen, Server, ServerConfig,
    SslConfig,
};

use crate::auth::{Auth, Claims};
use crate::config::{self, General, Storage, Tls};
use crate::memory::{MemoryBudget, Reservation};
use crate::store::{Acknowledger, Store};
use ack::Answer;
use endpoint::{batch_body_limit, Endpoint, Resource, PATCH_BODY_LIMIT};
use reply::{Reply, Responder};
use route::{decode_key, KeyError, Route};
use slots::Slots;

/// What every request slot shares.
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
    /// Replication streams to followers and their cap.
    replicas: Arc<stream_threads::Streams>,
    /// The node's role, epochs and followers; `None` in tests that serve a
    /// bare store.
    replication: Option<Arc<crate::replication::Replication>>,
    /// The MQTT bridge, when it runs.
    bridge: Option<Arc<crate::mqtt::Bridge>>,
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
            replicas: Arc::new(stream_threads::Streams::new(replication::MAX_STREAMS)),
            replication: None,
            bridge: None,
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

    /// Replicates as `replication` says: followers' streams, a follower's
    /// refusal of writes, `min_acks`.
    pub fn with_replication(mut self, replication: Arc<crate::replication::Replication>) -> Self {
        self.replication = Some(replication);
        self
    }

    /// Reports the MQTT bridge's status (`GET /api/admin/mqtt`, `/metrics`).
    pub fn with_bridge(mut self, bridge: Option<Arc<crate::mqtt::Bridge>>) -> Self {
        self.bridge = bridge;
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

/// A request slot's buffers, reused across requests.
#[derive(Default)]
pub struct Buffers {
    /// The decoded key (see [`admit`]).
    key: Vec<u8>,
    /// A record being written, or one read back for a GET; while a
    /// listing or a watch is admitted, its decoded prefix.
    record: Vec<u8>,
    /// The pieces of a large value, verified and sent from the log through
    /// it (see [`crate::store::Store::get_sendable`]); empty until the
    /// slot's first such GET, then kept.
    chunk: Vec<u8>,
    /// The memory budget's room for a large value read whole into
    /// `record` (an encrypted store's), held until it is sent.
    room: Option<Reservation>,
}

impl Buffers {
    /// Capacity kept between requests; a buffer grown past it by a large
    /// value is shrunk back, so idle slots hold little memory.
    const KEEP: usize = 256 * 1024;

    /// Shrinks the record buffer; one that held a value in room taken from
    /// the memory budget is freed first, then the room given back.
    fn trim(&mut self) {
        if self.room.is_some() {
            self.record = Vec::new();
            self.room = None;
        }
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
    /// The requests answered at once, shared with the connections' threads.
    slots: Arc<Slots>,
    tls: bool,
    /// The context [`run`](Self::run) serves with, for [`screen`].
    context: Arc<OnceLock<Arc<Context>>>,
}

impl HttpServer {
    /// Binds the configured address. A request is answered by the thread of
    /// its connection, in a request slot (see the module documentation). A request whose
    /// body did not come with its head is first checked there with the same
    /// rules, and its body read whole before it takes a slot, so a client
    /// trickling its body never holds one; request heads are limited to
    /// [`head_limit`] bytes.
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
        let slots = Arc::new(Slots::new(general.request_slots()));
        let (screened, answered, answering) = (
            Arc::clone(&context),
            Arc::clone(&context),
            Arc::clone(&slots),
        );
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
            handler: Some(Handler(Arc::new(move |request| {
                answer(&answered, &answering, request)
            }))),
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
            slots,
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

    /// How many requests are answered at once (`general.threads`).
    pub fn threads(&self) -> usize {
        self.slots.size()
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
        let (slots, flag) = (Arc::clone(&self.slots), Arc::clone(&ctx));
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
                    slots.close();
                }
            })
            .map_err(|err| format!("cannot start the signal thread: {err}"))?;
        // Idle unless writes wait (`sync: always`, or followers'
        // confirmations, which a promotion can turn on while serving).
        let acknowledging = {
            let ctx = Arc::clone(&ctx);
            thread::Builder::new()
                .name("lucid-ack".into())
                .spawn(move || ack::run(&ctx))
                .map_err(|err| format!("cannot start the acknowledging thread: {err}"))?
        };
        let busy = self.slots.wait_returned_after_close(SHUTDOWN_GRACE);
        if busy > 0 {
            log::warn!(
                "{busy} requests still being answered after {SHUTDOWN_GRACE:?}; stopping anyway"
            );
        }
        // Writes appended are answered once durable.
        ctx.acknowledger.close();
        let _ = acknowledging.join();
        // Lets watchers send their closing frames.
        ctx.watchers.wait_gone(Instant::now() + WATCHERS_GRACE);
        Ok(())
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

/// The largest request body any endpoint reads (a batch's), which
/// lucid-http reads ahead whole: a body over its endpoint's limit is
/// refused before it is read (see [`admit`]).
fn largest_body(max_value_bytes: usize) -> usize {
    batch_body_limit(max_value_bytes).max(PATCH_BODY_LIMIT)
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

/// How long a graceful stop waits for requests being answered.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a graceful stop then waits for watchers to close their streams
/// (`on_stop` is expected to have closed the store's change feed).
const WATCHERS_GRACE: Duration = Duration::from_secs(2);

/// Answers `request` on its connection's thread (lucid-http's
/// [`Handler`]) in a request slot, waiting for one if all are in use; a
/// request read once the server stops gets a 503. Waits until the server
/// runs (`context` is set), as the request would in a queue.
fn answer(context: &OnceLock<Arc<Context>>, slots: &Slots, request: Request) {
    let ctx = context.wait();
    let Some(mut slot) = slots.take() else {
        Reply::stopping().send(request, &mut Responder::default());
        return;
    };
    let slot = &mut *slot;
    serve(
        ctx,
        request,
        &mut slot.url,
        &mut slot.bufs,
        &mut slot.responder,
    );
}

/// Answers one request: resolves its endpoint, [`admit`]s it, and hands it
/// to its stream ([`stream`]) or its handler ([`dispatch`]).
fn serve(
    ctx: &Context,
    mut request: Request,
    url: &mut String,
    bufs: &mut Buffers,
    responder: &mut Responder,
) {
    let started = Instant::now();
    let method = metrics::method_slot(request.method());
    url.clear();
    url.push_str(request.url());
    let url = url.as_str();
    let route = route::route(url);
    let endpoint = Endpoint::resolve(route, request.method());
    let admitted = catch_panic(
        || admit(ctx, &request, url, route, endpoint, bufs),
        || Err(Reply::internal_error()),
    );
    if endpoint.is_streamed() && admitted.is_ok() {
        let status = stream(ctx, endpoint, request, responder);
        ctx.metrics.record(method, status, started.elapsed());
        return;
    }
    let answer = catch_panic(
        || match admitted {
            Ok(admitted) => dispatch(ctx, endpoint, admitted, bufs, &mut request, url),
            Err(refused) => refused.into(),
        },
        || Reply::internal_error().into(),
    );
    if answer.reply.status() == 500 {
        let target = access::WithoutQuery(url);
        log::debug!("500 for {} {target}", request.method());
    }
    // A write is answered once it may be acknowledged: with `sync:
    // always`, once durable, by the acknowledging thread.
    ack::send(ctx, request, answer, method, started, responder);
}

/// Answers an admitted request for a streamed `endpoint`: hands its
/// connection to the stream's own thread, or sends why not. Returns the
/// status.
fn stream(ctx: &Context, endpoint: Endpoint, request: Request, responder: &mut Responder) -> u16 {
    let prepared = catch_panic(
        || streams::prepare(ctx, endpoint, &request),
        || Err(Reply::internal_error()),
    );
    match prepared {
        Ok(stream) => stream.start(request),
        Err(reply) => {
            let status = reply.status();
            reply.send(request, responder);
            status
        }
    }
}

/// The answer of `endpoint`'s handler to a request [`admit`] let through
/// (a streamed endpoint's aside: see [`stream`]).
fn dispatch<'b>(
    ctx: &Context,
    endpoint: Endpoint,
    admitted: Admitted,
    bufs: &'b mut Buffers,
    request: &mut Request,
    url: &str,
) -> Answer<'b> {
    match endpoint {
        Endpoint::Key(op) => kv::handle(ctx, op, admitted.key, bufs, request, url),
        Endpoint::ListKeys => list::handle(ctx, url).into(),
        Endpoint::Batch => batch::handle(ctx, request, admitted.claims.as_ref()),
        Endpoint::Stats => admin::stats(ctx).into(),
        Endpoint::Compact => admin::compact(ctx).into(),
        Endpoint::Import => import::handle(ctx, request),
        Endpoint::ReplicationStatus => replication::status(ctx).into(),
        Endpoint::Promote => replication::promote(ctx).into(),
        Endpoint::ReplicationAck => replication::acknowledge(ctx, url).into(),
        Endpoint::Digest => admin::digest(ctx, url).into(),
        Endpoint::Mqtt => admin::mqtt(ctx).into(),
        Endpoint::Health => admin::health(ctx).into(),
        Endpoint::Metrics => admin::metrics(ctx).into(),
        Endpoint::Console | Endpoint::MethodNotAllowed(Resource::Console) if !ctx.ui_enabled => {
            not_found().into()
        }
        Endpoint::Console => ui::handle(request, url, ctx.auth.is_some()).into(),
        Endpoint::MethodNotAllowed(resource) => Reply::method_not_allowed(resource.allow()).into(),
        Endpoint::NotFound => not_found().into(),
        Endpoint::Watch | Endpoint::Export | Endpoint::Snapshot | Endpoint::ReplicationStream => {
            unreachable!("streams are answered by `stream`")
        }
    }
}

/// The 404 for a request to no resource (the web console's, when it is
/// off, included).
fn not_found<'b>() -> Reply<'b> {
    Reply::message(
        404,
        "No such resource. The API lives under /api/kv/{key}, /api/kv?prefix=, /api/batch, /api/watch and /api/admin/.",
    )
}

/// What [`admit`] found out about a request it let through.
struct Admitted {
    /// The token's claims, when authentication is on.
    claims: Option<Claims>,
    /// Whether the key of `/api/kv/{key}` decoded (into the key buffer),
    /// or why not; `Ok` for other routes.
    key: Result<(), KeyError>,
}

/// Whether a request may reach its handler, decided from its head alone
/// and its `endpoint`: its token (see [`access::check`]), and for a request
/// with a body, that its endpoint reads one, of that size, for a key that
/// decodes. The key of `/api/kv/{key}` is decoded here, once, into
/// `bufs.key`. The slot runs it on every request; the connection's
/// thread runs it first on a request whose body is still on the wire (see
/// [`screen`]), so that a client refused is told before it sends its body
/// and an accepted body is read whole before a slot answers it.
fn admit(
    ctx: &Context,
    request: &Request,
    url: &str,
    route: Route<'_>,
    endpoint: Endpoint,
    bufs: &mut Buffers,
) -> Result<Admitted, Reply<'static>> {
    let key = match route {
        Route::Kv { raw_key } => decode_key(raw_key, &mut bufs.key, ctx.max_key_bytes),
        _ => Ok(()),
    };
    // An empty key is checked as one; its 400 comes after.
    let decoded = match (route, key) {
        (Route::Kv { .. }, Ok(()) | Err(KeyError::Empty)) => Some(bufs.key.as_slice()),
        _ => None,
    };
    let claims = access::check(
        ctx,
        request,
        url,
        route,
        endpoint,
        decoded,
        &mut bufs.record,
    )?;
    if endpoint.writes() {
        if let Some(refusal) = replication::refuse_write(ctx, url) {
            return Err(refusal);
        }
    }
    let admitted = Admitted { claims, key };
    let Some(body) = endpoint.body() else {
        if body::after_head(request) {
            return Err(body::not_read());
        }
        return Ok(admitted);
    };
    if let Err(err) = key {
        return Err(kv::key_error(err, ctx.max_key_bytes));
    }
    let limit = body.limit(ctx.max_value_bytes);
    if request.body_length().is_some_and(|len| len > limit) {
        return Err(body::too_large(body, limit));
    }
    Ok(admitted)
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
    let endpoint = Endpoint::resolve(route, request.method());
    let mut scratch = Buffers::default();
    let refused = catch_panic(
        || admit(ctx, request, url, route, endpoint, &mut scratch).err(),
        || Some(Reply::internal_error()),
    )?;
    let status = refused.status();
    let response = refused.to_closing_bytes(request);
    let method = metrics::method_slot(request.method());
    ctx.metrics.record(method, status, started.elapsed());
    Some(response)
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
