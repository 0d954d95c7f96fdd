//! The replication endpoints (see [`crate::replication`]):
//!
//! * `GET /api/replication/stream?after=S&epoch=E&node=N` (scope
//!   `replicate`): the log from a follower's cursor on, streamed on a thread
//!   of its own (200), or why not: 409 on a follower (chains are refused),
//!   410 with `resync` `snapshot` or `diverged` when the cursor cannot be
//!   served;
//! * `POST /api/replication/ack?stream=ID&durable=S` (scope `replicate`):
//!   a follower's confirmation that it made everything up to `S` durable;
//! * `GET /api/admin/replication`, `POST /api/admin/promote` (admin);
//! * the refusal of a write a follower must not take (307 to its primary)
//!   or that too few followers could confirm (503).

use std::sync::Arc;

use lucid_http::Request;

use super::export::{chunked_place, send_chunked};
use super::query::Params;
use super::reply::Reply;
use super::stream_threads::{self, Place};
use super::Context;
use crate::replication::primary::stream_log;
use crate::replication::protocol::CONTENT_TYPE;
use crate::replication::state::Epoch;
use crate::replication::{Replication, ServedStream, StreamStart, WriteRefusal};

/// Stack of a replication stream's thread.
const STACK_SIZE: usize = 256 * 1024;

/// Most replication streams served at once.
pub const MAX_STREAMS: usize = 16;

/// A stream accepted, waiting for its thread.
pub struct ReplicationStream {
    served: ServedStream,
    replication: Arc<Replication>,
    _place: Place,
}

/// The node's replication, or the 404 of a node that runs without it.
fn replication(ctx: &Context) -> Result<&Arc<Replication>, Reply<'static>> {
    ctx.replication
        .as_ref()
        .ok_or_else(|| Reply::message(404, "Replication is not running on this node."))
}

/// Checks a stream request: its cursor, judged by the node's epochs.
pub fn prepare(ctx: &Context, request: &Request) -> Result<ReplicationStream, Reply<'static>> {
    let replication = replication(ctx)?;
    let params = Params::parse(request.url(), &["after", "epoch", "node"], 256)?;
    let after = match params.get("after").map(str::parse::<u64>) {
        Some(Ok(after)) => after,
        _ => return Err(Reply::message(400, "after= must be a sequence number.")),
    };
    let epoch = match params.get("epoch").map(str::parse::<Epoch>) {
        None => None,
        Some(Ok(epoch)) => Some(epoch),
        Some(Err(err)) => return Err(Reply::message(400, format!("epoch=: {err}."))),
    };
    let node = params.get("node").unwrap_or("unnamed");
    let address = request
        .remote_addr()
        .map_or_else(String::new, |addr| addr.to_string());
    let place = chunked_place(
        request,
        &ctx.replicas,
        "A replication stream",
        "replication streams",
    )?;
    match replication.start_stream(epoch, after, node, &address) {
        StreamStart::Serve(served) => Ok(ReplicationStream {
            served: *served,
            replication: Arc::clone(replication),
            _place: place,
        }),
        StreamStart::NotPrimary(message) => Err(Reply::document(
            409,
            &serde_json::json!({"error": "not_primary", "message": message}),
        )),
        StreamStart::Resync(diverged, message) => {
            log::info!(
                "follower {node} ({address}) at {after} in epoch {}: {message}",
                epoch.map_or_else(|| "none".into(), |e| e.to_string())
            );
            Err(Reply::document(
                410,
                &serde_json::json!({
                    "error": "resync",
                    "resync": if diverged { "diverged" } else { "snapshot" },
                    "message": message,
                    "epoch": replication.epoch().map(|e| e.to_string()),
                    "key_check": ctx.store.key_check(),
                }),
            ))
        }
    }
}

impl ReplicationStream {
    /// Hands the connection to a new thread that streams the log, and
    /// returns the status it answers with (200; 503 if no thread can be
    /// started).
    pub fn start(self, request: Request) -> u16 {
        stream_threads::hand_over(request, "lucid-replica", STACK_SIZE, 200, move |request| {
            self.serve(request)
        })
    }

    fn serve(self, request: Request) {
        let Self {
            served,
            replication,
            _place,
        } = self;
        let ServedStream {
            tail,
            hello,
            registered,
        } = served;
        let node = hello.node.clone();
        let ended = send_chunked(request, CONTENT_TYPE, &[], |out| {
            stream_log(tail, &hello, &registered, replication.stopping(), out)
        });
        match ended {
            Ok(()) => log::info!("replication stream {} ended", registered.stream()),
            Err(err) => log::info!(
                "replication stream {} to {node} ended: {err}",
                registered.stream()
            ),
        }
    }
}

/// `POST /api/replication/ack`.
pub fn acknowledge<'b>(ctx: &Context, url: &str) -> Reply<'b> {
    let replication = match replication(ctx) {
        Ok(replication) => replication,
        Err(reply) => return reply,
    };
    let params = match Params::parse(url, &["stream", "durable"], 32) {
        Ok(params) => params,
        Err(reply) => return reply,
    };
    let number = |name| params.get(name).and_then(|v| v.parse::<u64>().ok());
    let (Some(stream), Some(durable)) = (number("stream"), number("durable")) else {
        return Reply::message(400, "stream= and durable= must be numbers.");
    };
    if replication.acknowledge(stream, durable) {
        Reply::json(200, r#"{"message":"ok"}"#)
    } else {
        Reply::message(404, "No such replication stream: connect again.")
    }
}

/// `GET /api/admin/replication`.
pub fn status<'b>(ctx: &Context) -> Reply<'b> {
    match replication(ctx) {
        Ok(replication) => Reply::document(200, &replication.status()),
        Err(reply) => reply,
    }
}

/// `POST /api/admin/promote`.
pub fn promote<'b>(ctx: &Context) -> Reply<'b> {
    let replication = match replication(ctx) {
        Ok(replication) => replication,
        Err(reply) => return reply,
    };
    match replication.promote() {
        Ok(epoch) => Reply::document(
            200,
            &serde_json::json!({
                "message": format!("This node is now a primary, in epoch {epoch}. Remove replication.primary from its config."),
                "epoch": epoch.to_string(),
            }),
        ),
        Err(message) => Reply::message(409, message),
    }
}

/// Why a write to `url` must be refused before anything is written, if it
/// must: 307 to the primary on a follower, 503 when too few followers
/// could confirm it.
pub fn refuse_write(ctx: &Context, url: &str) -> Option<Reply<'static>> {
    match ctx.replication.as_ref()?.write_refusal()? {
        WriteRefusal::Follower(primary) => Some(Reply::redirect(
            format!("{primary}{url}"),
            serde_json::json!({
                "error": "follower",
                "message": format!("This node is a read-only follower of {primary}: write there."),
                "primary": primary,
            }),
        )),
        WriteRefusal::TooFewFollowers(message) => Some(Reply::message(503, message)),
    }
}
