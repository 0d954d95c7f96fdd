//! `GET /api/admin/snapshot`: a point-in-time image of the store (see
//! [`crate::store::snapshot`] for the format and what it holds), for
//! `lucid snapshot save`.
//!
//! Streamed like an export (see `export.rs`): a request slot only checks the
//! request and takes a place under the exports' cap (a snapshot counts as
//! one), and a thread of its own writes the snapshot into a chunked body.
//! The store holds its writers only while it pins the live records, at the
//! start; then the thread copies them from the pinned log file holding no
//! lock, so a slow client delays no write and no compaction (a compaction
//! meanwhile only keeps the old log's disk space until the snapshot ends).
//! A snapshot cut short (the client gone, a disk error) ends without its
//! last chunk, and without the trailer the file would need, so it can
//! never pass for a whole one.

use std::io;
use std::sync::Arc;

use lucid_http::Request;

use super::export::{chunked_stream_place, send_chunked};
use super::reply::Reply;
use super::stream_threads::{self, Place};
use super::Context;
use crate::replication::EPOCH_HEADER;
use crate::store::Store;

/// Stack of a snapshot's thread.
const STACK_SIZE: usize = 256 * 1024;

/// An accepted snapshot request, waiting for its thread.
pub struct Snapshot {
    store: Arc<Store>,
    node_name: Arc<str>,
    /// The node's epoch, sent as `Lucid-Epoch` for a follower to start from.
    epoch: Option<String>,
    _place: Place,
}

/// Checks a snapshot request and takes a place under the exports' cap, or
/// says why not (505 for HTTP/1.0, which has no chunked bodies, 503
/// beyond the cap).
pub fn prepare(ctx: &Context, request: &Request) -> Result<Snapshot, Reply<'static>> {
    let place = chunked_stream_place(ctx, request, "A snapshot")?;
    Ok(Snapshot {
        store: Arc::clone(&ctx.store),
        node_name: Arc::clone(&ctx.node_name),
        epoch: ctx
            .replication
            .as_ref()
            .and_then(|replication| replication.epoch())
            .map(|epoch| epoch.to_string()),
        _place: place,
    })
}

impl Snapshot {
    /// Hands the connection to a new thread that streams the snapshot, and
    /// returns the status it answers with (200; 503 if no thread can be
    /// started).
    pub fn start(self, request: Request) -> u16 {
        stream_threads::hand_over(request, "lucid-snapshot", STACK_SIZE, 200, move |request| {
            self.serve(request)
        })
    }

    fn serve(self, request: Request) {
        let epoch = self.epoch.as_deref().map(|epoch| (EPOCH_HEADER, epoch));
        let extra: Vec<_> = epoch.into_iter().collect();
        let written = send_chunked(request, "application/octet-stream", &extra, |out| {
            self.store
                .snapshot(&self.node_name, out)
                .map_err(|err| io::Error::other(err.to_string()))
        });
        match written {
            Ok(report) => log::info!(
                "snapshot sent: {} keys, {} bytes, up to version {} (writers paused {:.1} ms{})",
                report.info.keys,
                report.info.bytes,
                report.info.sequence,
                report.writers_paused.as_secs_f64() * 1000.0,
                match report.damaged_keys {
                    0 => String::new(),
                    n => format!("; {n} damaged keys"),
                }
            ),
            // Dropped without its last chunk: the client sees it incomplete.
            Err(err) => log::warn!("snapshot cut short: {err}"),
        }
    }
}
