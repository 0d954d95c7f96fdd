//! Responses that outlive a request slot's turn: which routes are answered with
//! a stream (a watch, an export, a snapshot), and starting one. A request slot only checks
//! such a request, takes a place under the route's cap and hands the
//! connection to a thread of its own (see [`super::stream_threads`]), so a
//! client that reads slowly, or for hours, never occupies a request slot.

use lucid_http::Request;

use super::endpoint::Endpoint;
use super::export::{self, Export};
use super::replication::{self, ReplicationStream};
use super::reply::Reply;
use super::route;
use super::snapshot::{self, Snapshot};
use super::watch::{self, Watcher};
use super::Context;

/// Whether lucid-http must treat `request` as the last on its connection:
/// a stream ends by closing it (see `ServerConfig::streams` in
/// `crates/lucid-http/PATCHES.md`).
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
    /// A snapshot.
    Snapshot(Snapshot),
    /// A follower's replication stream.
    Replication(ReplicationStream),
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
        Endpoint::Snapshot => snapshot::prepare(ctx, request).map(Prepared::Snapshot),
        Endpoint::ReplicationStream => {
            replication::prepare(ctx, request).map(Prepared::Replication)
        }
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
            Self::Snapshot(snapshot) => snapshot.start(request),
            Self::Replication(stream) => stream.start(request),
        }
    }
}
