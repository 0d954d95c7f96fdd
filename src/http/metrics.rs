//! Request counters and the latency histogram behind `GET /metrics`, and the
//! Prometheus text exposition of them together with the store's figures.
//!
//! Counting a request is a few relaxed atomic additions into fixed arrays:
//! no allocation, no lock.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lucid_http::Method;

use crate::backup::Outcomes;
use crate::mqtt::BridgeStatus;
use crate::replication::follower::FollowState;
use crate::replication::ReplicationFigures;
use crate::store::StoreStats;

const METHODS: [&str; 7] = ["GET", "HEAD", "PUT", "DELETE", "POST", "PATCH", "other"];
const STATUSES: [u16; 20] = [
    101, 200, 201, 204, 304, 307, 400, 401, 403, 404, 405, 409, 410, 412, 413, 414, 500, 503, 504,
    507,
];
/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Counters of answered requests.
pub struct Metrics {
    started: Instant,
    /// Indexed by method, then status (the last column counts other statuses).
    requests: [[AtomicU64; STATUSES.len() + 1]; METHODS.len()],
    /// Requests per latency bucket (not cumulative); the last is +Inf.
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_micros: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_micros: AtomicU64::new(0),
        }
    }
}

/// Which row of the counters a method goes in.
pub fn method_slot(method: &Method) -> usize {
    match method {
        Method::Get => 0,
        Method::Head => 1,
        Method::Put => 2,
        Method::Delete => 3,
        Method::Post => 4,
        Method::Patch => 5,
        _ => 6,
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn record(&self, method_slot: usize, status: u16, took: Duration) {
        let status_slot = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len());
        self.requests[method_slot][status_slot].fetch_add(1, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The whole `/metrics` page, with the store's figures and the number
    /// of connected watchers.
    pub fn render(&self, store: &StoreStats, watchers: usize) -> String {
        let mut out = String::with_capacity(8 * 1024);
        self.render_requests(&mut out);
        self.render_latency(&mut out);
        render_gauges(&mut out, &store_gauges(store));
        render_gauges(&mut out, &self.node_gauges(watchers));
        out
    }

    /// Appends the request counters, one line per method and status seen.
    fn render_requests(&self, out: &mut String) {
        help(
            out,
            "lucid_requests_total",
            "counter",
            "HTTP requests answered, by method and status.",
        );
        for (m, method) in METHODS.iter().enumerate() {
            for (s, count) in self.requests[m].iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count == 0 {
                    continue;
                }
                let status = STATUSES.get(s).map_or("other".to_string(), u16::to_string);
                let _ = writeln!(
                    out,
                    "lucid_requests_total{{method=\"{method}\",status=\"{status}\"}} {count}"
                );
            }
        }
    }

    /// The node's own figures: connected watchers and uptime.
    fn node_gauges(&self, watchers: usize) -> [Gauge; 2] {
        [
            (
                "lucid_watchers",
                "gauge",
                "Connected watch clients.",
                watchers as f64,
            ),
            (
                "lucid_uptime_seconds",
                "gauge",
                "Time since the node started.",
                self.started.elapsed().as_secs_f64(),
            ),
        ]
    }

    /// Appends the latency histogram: its cumulative buckets, sum and count.
    fn render_latency(&self, out: &mut String) {
        help(
            out,
            "lucid_request_duration_seconds",
            "histogram",
            "Time to answer a request.",
        );
        let mut cumulative = 0;
        for (b, count) in self.latency.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = BUCKETS.get(b).map_or("+Inf".to_string(), f64::to_string);
            let _ = writeln!(
                out,
                "lucid_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.latency_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "lucid_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "lucid_request_duration_seconds_count {cumulative}");
    }
}

/// One figure of the page: its name, type, help text and value.
type Gauge = (&'static str, &'static str, &'static str, f64);

/// The store's figures.
fn store_gauges(store: &StoreStats) -> [Gauge; 9] {
    [
        ("lucid_keys", "gauge", "Live keys.", store.keys as f64),
        (
            "lucid_log_bytes",
            "gauge",
            "Size of the log.",
            store.log_bytes as f64,
        ),
        (
            "lucid_dead_bytes",
            "gauge",
            "Bytes of overwritten and deleted records that compaction would reclaim.",
            store.dead_bytes as f64,
        ),
        (
            "lucid_fsyncs_total",
            "counter",
            "fdatasync calls on the log.",
            store.fsyncs as f64,
        ),
        (
            "lucid_fsync_seconds_total",
            "counter",
            "Time spent in fdatasync on the log.",
            store.fsync_micros as f64 / 1e6,
        ),
        (
            "lucid_compactions_total",
            "counter",
            "Compactions since start.",
            store.compactions as f64,
        ),
        (
            "lucid_read_only",
            "gauge",
            "1 if writes are refused after a disk failure.",
            f64::from(u8::from(store.read_only)),
        ),
        (
            "lucid_damaged_keys",
            "gauge",
            "Keys whose latest record is damaged: they answer 500 until written or deleted.",
            store.damaged_keys as f64,
        ),
        (
            "lucid_damaged_records",
            "gauge",
            "Damaged stretches of the log found after a start from the hint file; compaction drops them.",
            store.damaged_records as f64,
        ),
    ]
}

/// Appends each figure of `gauges`: its help, its type and its value.
fn render_gauges(out: &mut String, gauges: &[Gauge]) {
    for (name, kind, text, value) in gauges {
        help(out, name, kind, text);
        let _ = writeln!(out, "{name} {value}");
    }
}

/// Appends the figures of scheduled backups to a `/metrics` page.
pub fn render_backups(out: &mut String, backups: &Outcomes) {
    let gauges: [Gauge; 3] = [
        (
            "lucid_backup_last_success_timestamp_seconds",
            "gauge",
            "When the last good scheduled backup was written (0: none yet).",
            backups.last_success_ms.unwrap_or(0) as f64 / 1000.0,
        ),
        (
            "lucid_backup_last_success_bytes",
            "gauge",
            "Size of the last good scheduled backup.",
            backups.last_success_bytes as f64,
        ),
        (
            "lucid_backup_failures_total",
            "counter",
            "Scheduled backups that failed since the node started.",
            backups.failures as f64,
        ),
    ];
    render_gauges(out, &gauges);
}

/// Appends the figures of replication (`lucid_replication_*`): the
/// node's role, epoch and sequence; on a primary its followers' lag and
/// the writes they did not confirm in time; on a follower how far behind
/// it is.
pub fn render_replication(out: &mut String, figures: &ReplicationFigures) {
    let common: [Gauge; 3] = [
        (
            "lucid_replication_follower",
            "gauge",
            "1 on a follower, 0 on a primary.",
            f64::from(u8::from(figures.follower.is_some())),
        ),
        (
            "lucid_replication_epoch",
            "gauge",
            "The node's epoch number.",
            figures.epoch as f64,
        ),
        (
            "lucid_replication_sequence",
            "gauge",
            "The last sequence number in the log.",
            figures.sequence as f64,
        ),
    ];
    render_gauges(out, &common);
    let Some(follower) = &figures.follower else {
        let primary: [Gauge; 2] = [
            (
                "lucid_replication_followers",
                "gauge",
                "Followers connected.",
                figures.followers.len() as f64,
            ),
            (
                "lucid_replication_ack_timeouts_total",
                "counter",
                "Writes answered 504: followers did not confirm them in time.",
                figures.ack_timeouts as f64,
            ),
        ];
        render_gauges(out, &primary);
        let name = "lucid_replication_follower_lag_records";
        help(
            out,
            name,
            "gauge",
            "Records a follower has not confirmed durable.",
        );
        for f in &figures.followers {
            let node = f
                .node
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let lag = figures.sequence.saturating_sub(f.durable);
            let _ = writeln!(
                out,
                "{name}{{node=\"{node}\",stream=\"{}\"}} {lag}",
                f.stream
            );
        }
        return;
    };
    let gauges: [Gauge; 5] = [
        (
            "lucid_replication_lag_records",
            "gauge",
            "Records the primary has that this follower has not applied.",
            follower.lag_records as f64,
        ),
        (
            "lucid_replication_lag_seconds",
            "gauge",
            "How long this follower has been behind.",
            follower.lag_ms as f64 / 1000.0,
        ),
        (
            "lucid_replication_connected",
            "gauge",
            "1 while the stream from the primary is live.",
            f64::from(u8::from(follower.state == FollowState::Following)),
        ),
        (
            "lucid_replication_applied_records_total",
            "counter",
            "Records applied since the start.",
            follower.applied_records as f64,
        ),
        (
            "lucid_replication_resyncs_total",
            "counter",
            "Snapshots taken from the primary since the start.",
            follower.resyncs as f64,
        ),
    ];
    render_gauges(out, &gauges);
}

/// Appends the figures of the MQTT bridge (`lucid_mqtt_*`).
pub fn render_mqtt(out: &mut String, status: &BridgeStatus) {
    let gauges: [Gauge; 10] = [
        (
            "lucid_mqtt_connected",
            "gauge",
            "1 while the link to the broker is up.",
            f64::from(u8::from(status.connected)),
        ),
        (
            "lucid_mqtt_backlog_changes",
            "gauge",
            "Changes written and not shipped yet.",
            status.backlog_changes as f64,
        ),
        (
            "lucid_mqtt_backlog_bytes",
            "gauge",
            "Bytes of log the changes not shipped take.",
            status.backlog_bytes as f64,
        ),
        (
            "lucid_mqtt_published_total",
            "counter",
            "Messages the broker acknowledged.",
            status.published as f64,
        ),
        (
            "lucid_mqtt_connections_total",
            "counter",
            "Connections made to the broker.",
            status.connections as f64,
        ),
        (
            "lucid_mqtt_retries_total",
            "counter",
            "Failed connection attempts and broken links, each retried.",
            status.retries as f64,
        ),
        (
            "lucid_mqtt_dropped_changes_total",
            "counter",
            "Changes dropped past mqtt.max_backlog_bytes.",
            status.dropped as f64,
        ),
        (
            "lucid_mqtt_received_total",
            "counter",
            "Messages received on the subscriptions.",
            status.received as f64,
        ),
        (
            "lucid_mqtt_stored_total",
            "counter",
            "Messages stored as keys.",
            status.stored as f64,
        ),
        (
            "lucid_mqtt_refused_total",
            "counter",
            "Messages that could not be stored.",
            status.refused as f64,
        ),
    ];
    render_gauges(out, &gauges);
}

/// Appends the `# HELP` and `# TYPE` lines of the metric `name`.
fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> StoreStats {
        StoreStats {
            keys: 3,
            log_bytes: 1000,
            live_bytes: 600,
            dead_bytes: 368,
            read_only: false,
            damaged_keys: 1,
            damaged_records: 2,
            fsyncs: 7,
            fsync_micros: 2_500,
            compactions: 1,
            last_compaction: None,
        }
    }

    #[test]
    fn requests_are_counted_by_method_status_and_latency() {
        let metrics = Metrics::default();
        metrics.record(method_slot(&Method::Get), 200, Duration::from_micros(80));
        metrics.record(method_slot(&Method::Get), 200, Duration::from_millis(3));
        metrics.record(method_slot(&Method::Put), 418, Duration::from_secs(2));
        let page = metrics.render(&stats(), 2);
        assert!(
            page.contains("lucid_requests_total{method=\"GET\",status=\"200\"} 2\n"),
            "{page}"
        );
        assert!(
            page.contains("lucid_requests_total{method=\"PUT\",status=\"other\"} 1\n"),
            "{page}"
        );
        assert!(
            page.contains("lucid_request_duration_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{page}"
        );
        assert!(
            page.contains("lucid_request_duration_seconds_bucket{le=\"0.005\"} 2\n"),
            "{page}"
        );
        assert!(
            page.contains("lucid_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{page}"
        );
        assert!(
            page.contains("lucid_request_duration_seconds_count 3\n"),
            "{page}"
        );
        assert!(page.contains("lucid_keys 3\n"), "{page}");
        assert!(page.contains("lucid_watchers 2\n"), "{page}");
        assert!(page.contains("lucid_damaged_keys 1\n"), "{page}");
        assert!(page.contains("lucid_damaged_records 2\n"), "{page}");
        assert!(
            page.contains("lucid_fsync_seconds_total 0.0025\n"),
            "{page}"
        );
        assert!(
            page.contains("# TYPE lucid_fsyncs_total counter\n"),
            "{page}"
        );
    }
}
