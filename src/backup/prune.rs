//! Retention and garbage collection: which backups to keep (N daily, M weekly, K monthly,
//! always the newest), and removing the chunks no kept backup needs.
//!
//! Crash safety, by order: manifests of dropped backups are deleted first, then the
//! chunks no remaining manifest names; a crash in between leaves unreferenced chunks that
//! the next run removes. A chunk is deleted only if (1) no manifest in the repository
//! names it — the list of manifests is read after the lock is taken, and a manifest that
//! fails its checks stops the sweep (nothing is decided on a partial list) — and (2) it
//! is older than the grace period, and (3) no backup holds a fresh lock (refreshed within [`LOCK_TTL_MS`]). A backup in
//! progress may rely on a chunk it found already stored but no manifest names yet (a
//! crashed backup's leftovers): (3) protects it, and (2) protects one that started
//! uploading just before the lock was checked.

use std::collections::{BTreeSet, HashSet};

use serde::Serialize;

use super::create::LOCKS;
use super::manifest::{self, Manifest};
use super::{BackupError, Repository};

/// A lock not refreshed for this long is a crashed holder's and is ignored, ms (holders
/// refresh every [`super::create::LOCK_REFRESH_MS`]).
pub const LOCK_TTL_MS: i64 = 5 * 60_000;
/// Default grace period of unreferenced chunks, ms.
pub const GRACE_DEFAULT_MS: i64 = 3_600_000;

/// How many backups to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Retention {
    /// The N newest backups, whatever their dates.
    pub last: usize,
    /// The newest backup of each of the last N days that have one.
    pub daily: usize,
    /// … of each of the last M ISO weeks (Monday to Sunday, UTC).
    pub weekly: usize,
    /// … of each of the last K months (UTC).
    pub monthly: usize,
}

const DAY_MS: i64 = 86_400_000;

/// The ids of the backups `policy` keeps among `backups` (`(id, started ms)`): the newest
/// always (and the `last` newest), then the newest of each day, week and month up to each count. Pure.
pub fn keep(backups: &[(String, i64)], policy: Retention) -> BTreeSet<String> {
    let mut sorted: Vec<&(String, i64)> = backups.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut kept = BTreeSet::new();
    for (id, _) in sorted.iter().take(policy.last.max(1)) {
        kept.insert(id.clone());
    }
    let day = |ms: i64| ms.div_euclid(DAY_MS);
    // 1970-01-01 was a Thursday: shifting by 3 days starts weeks on Mondays.
    let week = |ms: i64| (day(ms) + 3).div_euclid(7);
    let month = |ms: i64| {
        let date = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        i64::from(date.year()) * 12 + i64::from(u8::from(date.month()))
    };
    let buckets: [(usize, &dyn Fn(i64) -> i64); 3] = [
        (policy.daily, &day),
        (policy.weekly, &week),
        (policy.monthly, &month),
    ];
    for (count, bucket) in buckets {
        let mut last = None;
        let mut taken = 0;
        for (id, ms) in &sorted {
            if taken == count {
                break;
            }
            let b = bucket(*ms);
            if last != Some(b) {
                last = Some(b);
                kept.insert(id.clone());
                taken += 1;
            }
        }
    }
    kept
}

/// What a prune did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Backups kept.
    pub kept: Vec<String>,
    /// Backups whose manifests were removed.
    pub removed: Vec<String>,
    /// Chunks the kept backups need.
    pub chunks_referenced: u64,
    /// Unreferenced chunks removed, and their stored bytes.
    pub chunks_removed: u64,
    pub bytes_removed: u64,
    /// Unreferenced chunks kept because they are younger than the grace period.
    pub chunks_in_grace: u64,
}

/// Applies `policy` to `repository`, then collects garbage older than `grace_ms`.
pub async fn prune(
    repository: &Repository,
    policy: Retention,
    grace_ms: i64,
    dry_run: bool,
) -> Result<Report, BackupError> {
    let lock = format!(
        "{LOCKS}/gc-{}",
        super::new_backup_id(crate::clock::now_ms())
    );
    let guard = super::create::take_lock(repository, &lock, "gc").await?;
    let result = prune_locked(repository, policy, grace_ms, dry_run).await;
    guard.release(repository).await;
    result
}

async fn prune_locked(
    repository: &Repository,
    policy: Retention,
    grace_ms: i64,
    dry_run: bool,
) -> Result<Report, BackupError> {
    let manifests = repository.manifests().await?;
    let listed: Vec<(String, i64)> = manifests
        .iter()
        .map(|m| (m.id.clone(), m.started_ms))
        .collect();
    let kept_ids = keep(&listed, policy);
    let mut report = Report::default();
    let mut referenced: HashSet<&str> = HashSet::new();
    for m in &manifests {
        if kept_ids.contains(&m.id) {
            report.kept.push(m.id.clone());
            referenced.extend(m.chunk_ids());
        } else {
            report.removed.push(m.id.clone());
        }
    }
    report.chunks_referenced = referenced.len() as u64;
    if !dry_run {
        for id in &report.removed {
            repository.repo.delete(&Manifest::object_name(id)).await?;
            crate::crash::point("gc:manifest-deleted");
        }
    }
    let now = crate::clock::now_ms();
    for chunk in repository.repo.list(manifest::CHUNKS).await? {
        let id = chunk.name.rsplit('/').next().unwrap_or("");
        if referenced.contains(id) {
            continue;
        }
        if now - chunk.modified_ms < grace_ms {
            report.chunks_in_grace += 1;
            continue;
        }
        if !dry_run {
            repository.repo.delete(&chunk.name).await?;
            crate::crash::point("gc:chunk-deleted");
        }
        report.chunks_removed += 1;
        report.bytes_removed += chunk.size;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_764_460_800_000; // 2025-11-30 00:00 UTC, a Sunday

    fn at(days: i64, hours: i64) -> i64 {
        T0 + days * DAY_MS + hours * 3_600_000
    }

    #[test]
    fn retention_keeps_the_newest_per_day_week_and_month() {
        // Two backups a day for 70 days, newest last.
        let backups: Vec<(String, i64)> = (0..70)
            .flat_map(|d| {
                [
                    (format!("d{d:02}a"), at(d, 1)),
                    (format!("d{d:02}b"), at(d, 13)),
                ]
            })
            .collect();
        let keep = |daily, weekly, monthly| {
            super::keep(
                &backups,
                Retention {
                    last: 0,
                    daily,
                    weekly,
                    monthly,
                },
            )
        };
        assert_eq!(keep(0, 0, 0), BTreeSet::from(["d69b".to_owned()]));
        assert_eq!(
            keep(3, 0, 0),
            BTreeSet::from(["d69b".into(), "d68b".into(), "d67b".into()])
        );
        // Day 69 is 2026-02-07, a Saturday: the newest of each of the last two weeks are
        // that one and the Sunday ending the week before (day 63).
        assert_eq!(
            keep(0, 2, 0),
            BTreeSet::from(["d69b".into(), "d63b".into()])
        );
        // Months: February (day 69), January (its last day is day 62), December (day 31).
        assert_eq!(
            keep(0, 0, 3),
            BTreeSet::from(["d69b".into(), "d62b".into(), "d31b".into()])
        );
        let combined = keep(7, 4, 3);
        assert!(
            combined.len() <= 7 + 4 + 3 && combined.len() >= 7,
            "{combined:?}"
        );
        let last = Retention {
            last: 4,
            daily: 0,
            weekly: 0,
            monthly: 0,
        };
        assert_eq!(
            super::keep(&backups, last),
            BTreeSet::from(["d69b".into(), "d69a".into(), "d68b".into(), "d68a".into()])
        );
        let empty: &[(String, i64)] = &[];
        assert!(super::keep(empty, last).is_empty());
    }
}
