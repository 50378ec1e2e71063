//! Background upkeep of a node's log: when to build a snapshot, and which log segments
//! retention lets go.
//!
//! - **Snapshots by bytes or time**, not every N entries: a snapshot is built once
//!   `cluster.snapshot_log_bytes` of log were written since the last one, or
//!   `cluster.snapshot_interval_secs` passed with anything new applied. A snapshot is
//!   cheap (a state checkpoint without event bodies plus hard links to sealed segments),
//!   and what it buys — a restart replays less, a new node catches up by receiving files —
//!   does not need one every few seconds.
//! - **Segment retention**: a segment file is deleted once every entry in it is both
//!   before the oldest entry the state still names (the change feed's first entry:
//!   retention removes events from the state first) and covered by a snapshot (openraft
//!   purged it). Neither the state nor Raft can then ask for it. While continuous
//!   archiving is on, the purge guard ([`super::archive`]) also keeps the segments the
//!   archive does not hold yet, up to its bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;

use crate::cluster::Raft;
use crate::cluster::log_store::purged_index;
use crate::store::Store;

/// How often the upkeep looks.
const TICK: Duration = Duration::from_secs(1);
/// How often segment retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(30);

/// When to snapshot.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotPolicy {
    /// Build one after this many bytes of log since the last.
    pub log_bytes: u64,
    /// Build one at least this often while entries are applied.
    pub interval: Duration,
}

/// The purge guard's settings, while continuous archiving is on.
#[derive(Clone)]
pub struct ArchiveGuard {
    /// How far the archive got (read), and the counters the guard updates.
    pub metrics: super::archive::ArchiveMetrics,
    /// `backup.archive_backlog_mb_max`, bytes.
    pub backlog_bytes_max: u64,
}

/// Runs the upkeep until the node stops.
pub async fn run(
    raft: Raft,
    store: Arc<Store>,
    policy: SnapshotPolicy,
    guard: Option<ArchiveGuard>,
) {
    let mut baseline_bytes = store.log().total_bytes();
    let mut baseline_at = Instant::now();
    let mut last_snapshot = raft.metrics().borrow_watched().snapshot;
    let mut last_retention = Instant::now();
    loop {
        tokio::time::sleep(TICK).await;
        let metrics = raft.metrics().borrow_watched().clone();
        let bytes = store.log().total_bytes();
        if metrics.snapshot != last_snapshot {
            // Built (by us or on openraft's own account) or installed: start over.
            last_snapshot = metrics.snapshot;
            baseline_bytes = bytes;
            baseline_at = Instant::now();
        }
        let behind = metrics.last_applied.as_ref().map(|id| id.index)
            > metrics.snapshot.as_ref().map(|id| id.index);
        let by_bytes = bytes.saturating_sub(baseline_bytes) >= policy.log_bytes;
        let by_time = baseline_at.elapsed() >= policy.interval;
        if behind && (by_bytes || by_time) {
            tracing::info!(
                log_bytes_since = bytes.saturating_sub(baseline_bytes),
                seconds_since = baseline_at.elapsed().as_secs(),
                "building a snapshot"
            );
            if let Err(error) = raft.trigger().snapshot().await {
                tracing::warn!(%error, "could not trigger a snapshot");
            }
            // Counted from the request, so a slow build is not requested again meanwhile.
            baseline_bytes = bytes;
            baseline_at = Instant::now();
        }
        if last_retention.elapsed() >= RETENTION_EVERY {
            last_retention = Instant::now();
            let (store, guard) = (Arc::clone(&store), guard.clone());
            let outcome =
                tokio::task::spawn_blocking(move || drop_old_segments(&store, guard.as_ref()))
                    .await;
            match outcome {
                Ok(Ok(0)) => {}
                Ok(Ok(deleted)) => tracing::info!(deleted, "retention deleted log segments"),
                Ok(Err(error)) => tracing::warn!(%error, "log segment retention failed"),
                Err(error) => tracing::warn!(%error, "log segment retention task failed"),
            }
        }
    }
}

/// Deletes the segments nobody can ask for any more (and, with `guard`, that the archive
/// holds or the backlog bound gives up); returns how many.
pub fn drop_old_segments(store: &Store, guard: Option<&ArchiveGuard>) -> Result<usize, String> {
    let log = store.log();
    let Some(purged) = purged_index(log).map_err(|e| e.to_string())? else {
        return Ok(0);
    };
    let needed = store
        .reader()
        .first_fed_log_index()
        .map_err(|e| e.to_string())?
        .unwrap_or(u64::MAX);
    let mut keep_from = needed.min(purged.saturating_add(1));
    if let Some(guard) = guard {
        let next = guard.metrics.next();
        let decision =
            super::archive::guard(&log.segments(), keep_from, next, guard.backlog_bytes_max);
        if decision.unarchived_deleted > 0 {
            tracing::error!(
                segments = decision.unarchived_deleted,
                archived_before = ?next,
                bound_bytes = guard.backlog_bytes_max,
                "the archive backlog reached backup.archive_backlog_mb_max: retention deletes \
                 log segments the archive does not hold; point-in-time restore will not cross \
                 this gap (take a full backup once archiving works again)"
            );
            guard
                .metrics
                .unarchived_deleted
                .inc_by(decision.unarchived_deleted as u64);
        }
        keep_from = decision.keep_from;
    }
    log.delete_segments_before(keep_from)
        .map_err(|e| e.to_string())
}
