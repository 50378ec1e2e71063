//! The node's side of continuous log archiving (the uploads themselves are
//! `crate::backup::archiver`): how far the archive has got, as metrics, and the **purge
//! guard** that keeps retention from deleting log segments the archive does not hold yet.
//!
//! The guard, and what happens at its bound: while archiving is on, retention deletes no
//! segment holding an index at or after the first unarchived one (or any segment while that
//! index is not known yet, e.g. the repository was unreachable since start). The log held
//! back that way — the *backlog* — is bounded by `backup.archive_backlog_mb_max`. Past the
//! bound, the disk wins: retention deletes what it would have deleted without archiving,
//! the archive gets a gap there, and that is loud, never silent: an error in the log,
//! `tandem_archive_unarchived_deleted_segments_total`, the `TandemArchiveBehind` alert
//! (which fired well before, at [`BACKLOG_ALERT_RATIO`] of the bound), the gap named by
//! `tandem backup list` and `verify`, and `tandem restore --at` refusing to cross it. A
//! new full backup restarts point-in-time coverage after it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::{Registry, Unit};

use super::metrics::U64Gauge;
use crate::log::SegmentInfo;

/// Share of `backup.archive_backlog_mb_max` at which the archive alert fires.
pub const BACKLOG_ALERT_RATIO: f64 = 0.8;

/// How far continuous archiving has got, as this node sees it (the leader uploads; the
/// others follow the repository's listing). Clones share the values.
#[derive(Default, Clone)]
pub struct ArchiveMetrics {
    /// The first log index the archive does not hold (0: not known yet). The purge guard
    /// reads it.
    pub next_index: Arc<AtomicU64>,
    /// The last archived index.
    pub archived_index: U64Gauge,
    /// Log time of the last archived timed entry, seconds since the epoch.
    pub archived_time: U64Gauge,
    /// Seconds that committed entries have been waiting for the archive (0: none waits):
    /// the recovery point if the whole cluster were lost now.
    pub unarchived_seconds: U64Gauge,
    /// When this node last uploaded an object or saw the archive advance, seconds since the
    /// epoch.
    pub last_upload: U64Gauge,
    /// Bytes of log segments on this node that hold unarchived entries.
    pub backlog_bytes: U64Gauge,
    /// The backlog's bound, bytes (`backup.archive_backlog_mb_max`); 0 while archiving is off.
    pub backlog_limit_bytes: U64Gauge,
    /// `backup.archive_interval_secs`; 0 while archiving is off.
    pub interval_seconds: U64Gauge,
    /// Objects uploaded by this node, and their bytes (compressed, encrypted).
    pub uploads: Counter,
    pub uploaded_bytes: Counter,
    /// Failed upload or listing attempts (each retried with backoff).
    pub failures: Counter,
    /// Segments retention deleted before the archive held them (the bound was reached).
    pub unarchived_deleted: Counter,
}

impl ArchiveMetrics {
    /// Adds them to `r` as `tandem_archive_*`.
    pub fn register(&self, r: &mut Registry) {
        let gauges = [
            (
                "archive_archived_index",
                "Last log index held by the archive",
                &self.archived_index,
            ),
            (
                "archive_archived_timestamp_seconds",
                "Log time of the last archived batch",
                &self.archived_time,
            ),
            (
                "archive_unarchived_seconds",
                "How long committed entries have waited for the archive (the recovery point if the cluster were lost now)",
                &self.unarchived_seconds,
            ),
            (
                "archive_last_upload_timestamp_seconds",
                "When the archive last advanced as this node sees it",
                &self.last_upload,
            ),
            (
                "archive_interval_seconds",
                "backup.archive_interval_secs (0: archiving off)",
                &self.interval_seconds,
            ),
        ];
        for (name, help, gauge) in gauges {
            r.register(name, help, gauge.clone());
        }
        r.register_with_unit(
            "archive_backlog",
            "Bytes of log segments on this node holding entries the archive lacks",
            Unit::Bytes,
            self.backlog_bytes.clone(),
        );
        r.register_with_unit(
            "archive_backlog_limit",
            "Bound of the archive backlog (backup.archive_backlog_mb_max)",
            Unit::Bytes,
            self.backlog_limit_bytes.clone(),
        );
        r.register_with_unit(
            "archive_uploaded",
            "Bytes of archive objects this node uploaded",
            Unit::Bytes,
            self.uploaded_bytes.clone(),
        );
        let counters = [
            (
                "archive_uploads",
                "Archive objects this node uploaded",
                &self.uploads,
            ),
            (
                "archive_failures",
                "Failed archive uploads or listings (retried)",
                &self.failures,
            ),
            (
                "archive_unarchived_deleted_segments",
                "Log segments deleted by retention before the archive held them (backlog bound reached)",
                &self.unarchived_deleted,
            ),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
    }

    /// The first unarchived index, if known.
    pub fn next(&self) -> Option<u64> {
        Some(self.next_index.load(Ordering::Acquire)).filter(|n| *n > 0)
    }
}

/// Bytes of the segments holding any index at or after `next` (all of them if `next` is
/// unknown).
pub fn backlog_bytes(segments: &[SegmentInfo], next: Option<u64>) -> u64 {
    segments
        .iter()
        .filter(|s| match (next, s.last_index) {
            (Some(next), Some(last)) => last >= next,
            (Some(_), None) => false,
            (None, _) => true,
        })
        .map(|s| s.bytes)
        .sum()
}

/// What the guard decides for one retention pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Retention may delete the segments entirely before this index.
    pub keep_from: u64,
    /// Segments it deletes that the archive lacks (only past the bound).
    pub unarchived_deleted: usize,
}

/// The guard: retention wants to delete segments before `keep_from`; the archive holds
/// everything before `next` (unknown: nothing). Below `backlog_bytes_max` of backlog, the
/// unarchived segments stay; at or past it, retention proceeds and the deleted
/// unarchived segments are counted.
pub fn guard(
    segments: &[SegmentInfo],
    keep_from: u64,
    next: Option<u64>,
    backlog_bytes_max: u64,
) -> Decision {
    let archived_before = next.unwrap_or(0);
    let wanted = |s: &&SegmentInfo| s.last_index.is_some_and(|last| last < keep_from) && !s.active;
    let unarchived = segments
        .iter()
        .filter(wanted)
        .filter(|s| s.last_index.is_some_and(|last| last >= archived_before))
        .count();
    if unarchived == 0 {
        return Decision {
            keep_from,
            unarchived_deleted: 0,
        };
    }
    if backlog_bytes(segments, next) >= backlog_bytes_max {
        return Decision {
            keep_from,
            unarchived_deleted: unarchived,
        };
    }
    Decision {
        keep_from: keep_from.min(archived_before),
        unarchived_deleted: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(first: u64, last: u64, bytes: u64, active: bool) -> SegmentInfo {
        SegmentInfo {
            first_index: first,
            last_index: Some(last),
            path: std::path::PathBuf::from(format!("{first}.seg")),
            bytes,
            active,
        }
    }

    #[test]
    fn unarchived_segments_stay_until_the_backlog_reaches_its_bound() {
        let segments = [
            segment(1, 100, 10, false),
            segment(101, 200, 10, false),
            segment(201, 300, 10, false),
            segment(301, 350, 5, true),
        ];
        // Retention wants everything before 301; the archive holds up to 150.
        let held = guard(&segments, 301, Some(151), 1_000);
        assert_eq!(
            held,
            Decision {
                keep_from: 151,
                unarchived_deleted: 0
            }
        );
        // Archive unknown (repository unreachable since start): nothing goes.
        assert_eq!(guard(&segments, 301, None, 1_000).keep_from, 0);
        // Fully archived: the guard does not interfere.
        assert_eq!(guard(&segments, 301, Some(351), 1_000).keep_from, 301);
        // Backlog 25 bytes (segments 101.., 201.., 301..) at a bound of 25: the disk wins,
        // and the two unarchived segments retention deletes are counted.
        assert_eq!(backlog_bytes(&segments, Some(151)), 25);
        assert_eq!(
            guard(&segments, 301, Some(151), 25),
            Decision {
                keep_from: 301,
                unarchived_deleted: 2
            }
        );
    }
}
