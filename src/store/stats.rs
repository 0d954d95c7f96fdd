//! The store's figures, as `GET /api/admin/stats` and the metrics show
//! them (see [`Store::stats`](super::Store::stats)).

/// The store's size and compaction figures, as `GET /api/admin/stats` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// Live keys.
    pub keys: usize,
    /// Size of the log in bytes.
    pub log_bytes: u64,
    /// Bytes of live records.
    pub live_bytes: u64,
    /// Bytes compaction would reclaim (overwritten and deleted records).
    pub dead_bytes: u64,
    /// Whether writes are refused after a disk failure.
    pub read_only: bool,
    /// Live keys whose record is damaged: they answer an error until
    /// written or deleted.
    pub damaged_keys: usize,
    /// Damaged stretches found in the log by the check after a start from
    /// the hint file; compaction drops them.
    pub damaged_records: u64,
    /// fdatasync calls on the log since start.
    pub fsyncs: u64,
    /// Time spent in them, in microseconds.
    pub fsync_micros: u64,
    /// Compactions since the node started.
    pub compactions: u64,
    /// The most recent compaction, if any.
    pub last_compaction: Option<LastCompaction>,
}

/// The most recent compaction, for stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LastCompaction {
    /// When it finished, milliseconds since the Unix epoch.
    pub finished_at_ms: u64,
    /// How long it took.
    pub duration_ms: u64,
    /// How long writers were paused for the switch.
    pub writers_paused_ms: u64,
    /// Log size before.
    pub bytes_before: u64,
    /// Log size after.
    pub bytes_after: u64,
}
