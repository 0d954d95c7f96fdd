//! Handlers of the operator's endpoints: `/api/admin/*` (store statistics,
//! on-demand compaction, the integrity digest), `/health` and `/metrics`
//! (with how scheduled backups went, when they are on).

use std::time::Duration;

use super::errors::read_error;
use super::query::Params;
use super::reply::Reply;
use super::Context;
use crate::store::StoreStats;
use crate::store::{CompactionError, DigestError};

/// `GET /api/admin/stats`: size and compaction figures as JSON.
pub fn stats<'b>(ctx: &Context) -> Reply<'b> {
    Reply::document(200, &ctx.store.stats())
}

/// `duration` in milliseconds, to a tenth of one (the rest is noise, and
/// as a binary fraction would print as 10.212888999999999).
fn milliseconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 10_000.0).round() / 10.0
}

/// `POST /api/admin/compact`: compacts now and answers with what it did
/// (409 if a compaction is already running).
pub fn compact<'b>(ctx: &Context) -> Reply<'b> {
    match ctx.store.compact() {
        Ok(report) => Reply::document(
            200,
            &serde_json::json!({
                "message": "The log was compacted.",
                "bytes_before": report.bytes_before,
                "bytes_after": report.bytes_after,
                "live_keys": report.live_keys,
                "duration_ms": milliseconds(report.duration),
                "writers_paused_ms": milliseconds(report.writers_paused),
            }),
        ),
        Err(CompactionError::Busy) => Reply::message(409, "A compaction is already running."),
        Err(err @ CompactionError::Unavailable(_)) => Reply::message(503, format!("{err}.")),
        Err(err) => {
            log::error!("compaction failed: {err}");
            Reply::message(500, format!("{err}."))
        }
    }
}

/// `GET /api/admin/digest?prefix=P`: the integrity digest of every key
/// under `P` (every key without it; decoded as a listing's prefix), to
/// compare nodes: `{"prefix","keys","highest_version","digest"}` (see
/// [`crate::store::digest`]: keys past their expiry that the sweeper has
/// not deleted yet are included). A damaged record is a 500 naming its
/// key, never a digest without it. The walk reads every record under the
/// prefix on this request slot, as a compaction runs on one.
pub fn digest<'b>(ctx: &Context, url: &str) -> Reply<'b> {
    let params = match Params::parse(url, &["prefix"], ctx.max_key_bytes) {
        Ok(params) => params,
        Err(reply) => return reply,
    };
    let prefix = params.get("prefix").unwrap_or("");
    let mut room = None;
    let digest = ctx.store.digest(prefix.as_bytes(), &mut |len| {
        ctx.memory.hold(&mut room, len)
    });
    match digest {
        Ok(digest) => Reply::document(
            200,
            &serde_json::json!({
                "prefix": prefix,
                "keys": digest.keys,
                "highest_version": digest.highest_version,
                "digest": digest.hex(),
            }),
        ),
        Err(err @ DigestError::Damaged { .. }) => Reply::message(
            500,
            format!(
                "No digest can be computed: {err}. The key answers 500 until it is written \
                 or deleted; see /health."
            ),
        ),
        Err(DigestError::Read(err)) => read_error(ctx, err),
    }
}

/// `GET /health`: 200 `{"status":"ok"}` while the node serves normally;
/// 200 `{"status":"degraded"}` with a `message` saying what to do while
/// damaged records are known (it serves, and a restart would not help);
/// 503 with `read-only` or `stopping` when it cannot take writes.
pub fn health<'b>(ctx: &Context) -> Reply<'b> {
    if ctx.is_stopping() {
        Reply::json(503, r#"{"status":"stopping"}"#)
    } else if ctx.store.is_read_only() {
        Reply::json(503, r#"{"status":"read-only"}"#)
    } else if let Some(advice) = damage_advice(&ctx.store.stats()) {
        let mut body = serde_json::json!({"status": "degraded", "message": advice});
        add_details(ctx, &mut body);
        Reply::document(200, &body)
    } else if ctx.backups.is_some() || ctx.replication.is_some() {
        let mut body = serde_json::json!({"status": "ok"});
        add_details(ctx, &mut body);
        Reply::document(200, &body)
    } else {
        Reply::json(200, r#"{"status":"ok"}"#)
    }
}

/// Adds to a `/health` answer how scheduled backups went, if they are on
/// (when the last good one was made, and why the last one failed if it
/// did), and on a follower how far it is behind (`replication`).
fn add_details(ctx: &Context, body: &mut serde_json::Value) {
    if let Some(replication) = ctx.replication.as_ref().and_then(|r| r.health()) {
        body["replication"] = replication;
    }
    if let Some(backups) = &ctx.backups {
        let outcomes = backups.outcomes();
        body["backup"] = serde_json::json!({
            "last_success_at": outcomes.last_success_ms,
            "last_success_bytes": outcomes.last_success_bytes,
            "failures": outcomes.failures,
            "last_failure": outcomes.last_failure,
        });
    }
}

/// What an operator should do about the damage `stats` counts, if any.
fn damage_advice(stats: &StoreStats) -> Option<String> {
    let keys = match stats.damaged_keys {
        0 => String::new(),
        n => format!(
            "{n} keys lost their value to damage in the log and answer 500 until written or \
             deleted (the node's log names them). "
        ),
    };
    let records = match stats.damaged_records {
        0 => String::new(),
        n => format!(
            "The log has {n} damaged stretches: compact it (POST /api/admin/compact) to drop \
             them; until then the node restarts only with its hint file. "
        ),
    };
    (!keys.is_empty() || !records.is_empty())
        .then(|| format!("{keys}{records}Check the disk (dmesg, SMART) and your backups."))
}

/// `GET /api/admin/mqtt`: the MQTT bridge's status (404 when it is off).
pub fn mqtt<'b>(ctx: &Context) -> Reply<'b> {
    match &ctx.bridge {
        Some(bridge) => Reply::document(200, &bridge.status()),
        None => Reply::message(404, "The MQTT bridge is off (mqtt.url is not set)."),
    }
}

/// `GET /metrics`: Prometheus text format.
pub fn metrics<'b>(ctx: &Context) -> Reply<'b> {
    let mut body = ctx
        .metrics
        .render(&ctx.store.stats(), ctx.watchers.connected());
    if let Some(backups) = &ctx.backups {
        super::metrics::render_backups(&mut body, &backups.outcomes());
    }
    if let Some(replication) = &ctx.replication {
        super::metrics::render_replication(&mut body, &replication.figures());
    }
    if let Some(bridge) = &ctx.bridge {
        super::metrics::render_mqtt(&mut body, &bridge.status());
    }
    Reply::Text {
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body,
    }
}
