//! Gathering one evaluation's [`Inputs`] from the running node: Raft's view (leader,
//! followers' progress and heartbeats), the replicated feed (ingestion-rate buckets), the
//! node's counters turned into rates over `alerts.rate_window_ms`, the disk and the
//! services. This is the only part of the evaluator that touches the node; the rules
//! and the lifecycle are pure.

use std::collections::VecDeque;

use openraft::Instant as _;

use super::anomaly::{self, Verdict};
use super::rules::{BackupHealth, Inputs, Peer, ServiceHealth};
use crate::config::IngestRateConfig;
use crate::node::Node;
use crate::store::StoreError;

/// Most counter samples kept for rates (a window of a day at a 100 ms interval would
/// need more; then the rate covers the newest samples only).
pub const RATE_SAMPLES_MAX: usize = 4_096;

/// Counter readings at one time: leader changes, requests (all, 4xx, 5xx), fsyncs
/// (count, seconds).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    leader_changes: u64,
    requests: [u64; 3],
    fsync_count: u64,
    fsync_seconds: f64,
}

/// Counter readings over the rate window, oldest first.
#[derive(Debug, Default)]
pub struct CounterHistory {
    samples: VecDeque<(i64, Counters)>,
}

impl CounterHistory {
    /// Adds a reading at `now_ms` and returns the increase since the oldest reading inside
    /// `window_ms` (zero on the first call).
    pub fn advance(&mut self, now_ms: i64, now: Counters, window_ms: i64) -> Counters {
        self.samples.push_back((now_ms, now));
        while self.samples.len() > RATE_SAMPLES_MAX
            || self
                .samples
                .get(1)
                .is_some_and(|(t, _)| *t <= now_ms - window_ms)
        {
            self.samples.pop_front();
        }
        let (_, old) = self.samples.front().copied().unwrap_or((now_ms, now));
        Counters {
            leader_changes: now.leader_changes.saturating_sub(old.leader_changes),
            requests: [0, 1, 2].map(|i| now.requests[i].saturating_sub(old.requests[i])),
            fsync_count: now.fsync_count.saturating_sub(old.fsync_count),
            fsync_seconds: (now.fsync_seconds - old.fsync_seconds).max(0.0),
        }
    }
}

/// Reads the node's counters.
pub fn counters(node: &Node) -> Counters {
    use std::sync::atomic::Ordering::Relaxed;
    let m = node.metrics();
    let (fsync_count, fsync_seconds) = m.fsync_totals();
    Counters {
        leader_changes: m.leader_changes.get(),
        requests: [0, 1, 2].map(|i| m.request_classes[i].load(Relaxed)),
        fsync_count,
        fsync_seconds,
    }
}

/// Ingestion-rate buckets, newest first, ending at `now_ms`: `Some(records)` for a bucket
/// the stored feed covers, `None` for one that starts before the stored history.
pub fn rate_buckets(
    node: &Node,
    now_ms: i64,
    config: &IngestRateConfig,
) -> Result<Vec<Option<u64>>, StoreError> {
    let reader = node.store().reader();
    let Some(start_ms) = reader.feed_start_ms()? else {
        return Ok(Vec::new());
    };
    let bucket = i64::try_from(config.bucket_ms).unwrap_or(i64::MAX);
    let count = (config.window_buckets + config.baseline_buckets) as i64;
    let mut buckets = Vec::with_capacity(count as usize);
    let mut upper = reader.feed_seq_at(now_ms)?;
    for i in 0..count {
        let from_ms = now_ms - (i + 1) * bucket;
        if from_ms < start_ms {
            buckets.push(None);
            continue;
        }
        let lower = reader.feed_seq_at(from_ms)?;
        buckets.push(Some(upper.saturating_sub(lower)));
        upper = lower;
    }
    Ok(buckets)
}

/// Everything the rules look at, now. Reads the store: call off the async workers.
pub fn gather(
    node: &Node,
    now_ms: i64,
    rates: Counters,
    rate_config: &IngestRateConfig,
    data_dir: &std::path::Path,
) -> Inputs {
    use openraft::async_runtime::WatchReceiver;
    let raft = node.raft().metrics().borrow_watched().clone();
    let leading = crate::cluster::leads(&raft);
    let mut peers = Vec::new();
    if leading {
        let heartbeats = raft.heartbeat.clone().unwrap_or_default();
        for (id, matched) in raft.replication.iter().flatten() {
            if *id == raft.id {
                continue;
            }
            let age = heartbeats
                .get(id)
                .and_then(|at| at.as_ref())
                .map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX));
            peers.push(Peer {
                id: *id,
                matched_index: matched.as_ref().map_or(0, |log_id| log_id.index),
                heartbeat_age_ms: age,
            });
        }
    }
    // Only the leader judges the cluster's ingestion rate; followers skip the reads.
    let ingest = if leading {
        match rate_buckets(node, now_ms, rate_config) {
            Ok(buckets) => anomaly::assess(&buckets, rate_config),
            Err(error) => {
                tracing::warn!(%error, "alerts: could not read the feed's history");
                Verdict::WarmingUp
            }
        }
    } else {
        Verdict::WarmingUp
    };
    let services = node
        .services()
        .statuses()
        .into_iter()
        .map(|s| ServiceHealth {
            name: s.name.to_string(),
            status: s.status.to_string(),
            lag: s.lag,
        })
        .collect();
    Inputs {
        node_id: raft.id,
        leader: raft.current_leader,
        last_log_index: raft.last_log_index.unwrap_or(0),
        peers,
        ingest,
        leader_changes: rates.leader_changes,
        requests: rates.requests,
        fsyncs: (rates.fsync_count, rates.fsync_seconds),
        disk_free_ratio: crate::node::metrics::disk_free_ratio(data_dir),
        services,
        archive: archive_health(node),
        certificates: node
            .metrics()
            .certificate_expiries()
            .into_iter()
            .map(|(listener, not_after)| {
                (listener, (not_after * 1000 - now_ms) as f64 / 86_400_000.0)
            })
            .collect(),
        backup: backup_health(node, now_ms),
    }
}

/// The backup metrics as the rules read them.
fn backup_health(node: &Node, now_ms: i64) -> BackupHealth {
    let m = &node.metrics().backup;
    let since = m.stale_since.get();
    BackupHealth {
        last_success_s: m.last_success.get(),
        last_failure_s: m.last_failure.get(),
        period_s: m.schedule_period.get(),
        stale_for_s: (since > 0).then(|| ((now_ms / 1000).max(0) as u64).saturating_sub(since)),
        verify_last_success_s: m.verify_last_success.get(),
        verify_last_failure_s: m.verify_last_failure.get(),
    }
}

/// Continuous archiving's state on `node`, if it is on.
fn archive_health(node: &crate::node::Node) -> Option<super::rules::ArchiveHealth> {
    let archive = &node.metrics().archive;
    let interval = archive.interval_seconds.get();
    (interval > 0).then(|| super::rules::ArchiveHealth {
        unarchived_secs: archive.unarchived_seconds.get() as f64,
        interval_secs: interval as f64,
        backlog_bytes: archive.backlog_bytes.get() as f64,
        backlog_limit_bytes: archive.backlog_limit_bytes.get() as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_totals_read_back_the_shared_histogram() {
        let dir = tempfile::tempdir().expect("tempdir");
        let histogram = prometheus_client::metrics::histogram::Histogram::new([0.1, 1.0]);
        let metrics = crate::node::metrics::Metrics::new(
            dir.path(),
            crate::node::metrics::Sources::with_log_fsync(histogram.clone()),
        );
        assert_eq!(metrics.fsync_totals(), (0, 0.0));
        histogram.observe(0.5);
        histogram.observe(0.25);
        assert_eq!(metrics.fsync_totals(), (2, 0.75));
    }

    #[test]
    fn counter_history_gives_increases_over_the_window_and_stays_bounded() {
        let mut history = CounterHistory::default();
        let at = |n: u64| Counters {
            leader_changes: n,
            requests: [n * 10, n, 0],
            fsync_count: n,
            fsync_seconds: n as f64,
        };
        assert_eq!(history.advance(0, at(0), 100).leader_changes, 0);
        assert_eq!(history.advance(50, at(2), 100).leader_changes, 2);
        assert_eq!(history.advance(100, at(3), 100).requests[0], 30);
        // The reading at 0 falls out of the window: increases are since 50.
        let delta = history.advance(160, at(10), 100);
        assert_eq!(delta.leader_changes, 8);
        for t in 0..(RATE_SAMPLES_MAX as i64 * 2) {
            history.advance(200 + t, at(10), i64::MAX / 2);
        }
        assert!(history.samples.len() <= RATE_SAMPLES_MAX);
    }
}
