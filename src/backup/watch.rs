//! Watching the repository from a running node: the newest backup and the cluster's last
//! verifications, for `GET /v1/admin/backups/status`, the dashboard, the metrics and the
//! alert rules; and, on the leader, starting the scheduled verification when it is due
//! ([`super::verify_schedule`]).
//!
//! The leader looks every [`super::schedule::CHECK_INTERVAL`], followers every
//! [`FOLLOWER_INTERVAL_MS`] (the dashboard can be asked on any node). A look lists the
//! manifests and the verification records and reads only the objects that are new since
//! the last look (at most one manifest and three records), so it stays cheap on a
//! repository with many backups.
//!
//! Metrics set here hold for the cluster, not for this node: every node reports the
//! newest backup's finish as `tandem_backup_last_success_timestamp_seconds` (so a
//! follower's scrape answers the same) and the newest verification times; only the
//! leader reports `tandem_backup_stale_since_timestamp_seconds`.

use std::collections::HashMap;
use std::sync::Arc;

use croner::Cron;
use serde::Serialize;

use super::create::Summary;
use super::job::Jobs;
use super::keys::RepoKey;
use super::verify_schedule::{self, Record};
use super::{BackupError, Progress, Repository};
use crate::config::Config;
use crate::node::Node;

/// How often a follower looks at the repository, ms.
pub const FOLLOWER_INTERVAL_MS: i64 = 60_000;

/// The repository as a node last saw it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepoView {
    /// When it looked, ms since the epoch.
    pub checked_ms: i64,
    /// Backups in the repository.
    pub backups: usize,
    /// The newest backup.
    pub newest: Option<Summary>,
    /// When the newest backup finished, ms since the epoch.
    pub newest_finished_ms: Option<i64>,
    /// The newest verification record, and the newest successful and failed ones.
    pub verify_last: Option<Record>,
    pub verify_last_success: Option<Record>,
    pub verify_last_failure: Option<Record>,
}

/// Objects already read, by name (manifests and records never change under one name).
#[derive(Default)]
struct Cache {
    summaries: HashMap<String, Summary>,
    records: HashMap<String, Record>,
}

impl Cache {
    async fn record(&mut self, repository: &Repository, name: &str) -> Result<Record, BackupError> {
        if let Some(record) = self.records.get(name) {
            return Ok(record.clone());
        }
        let record = verify_schedule::read_record(repository, name).await?;
        self.records.insert(name.to_owned(), record.clone());
        Ok(record)
    }
}

/// One look at the repository.
async fn look(repository: &Repository, cache: &mut Cache) -> Result<RepoView, BackupError> {
    let mut manifests: Vec<String> = listed(repository, super::manifest::MANIFESTS).await?;
    manifests.sort();
    let mut view = RepoView {
        checked_ms: crate::clock::now_ms(),
        backups: manifests.len(),
        ..RepoView::default()
    };
    if let Some(name) = manifests.last() {
        let summary = match cache.summaries.get(name) {
            Some(summary) => summary.clone(),
            None => {
                let id = name.rsplit('/').next().unwrap_or(name);
                let summary = Summary::of(&repository.manifest(id).await?);
                cache.summaries.insert(name.clone(), summary.clone());
                summary
            }
        };
        view.newest_finished_ms = Some(summary.started_ms + summary.duration_ms as i64);
        view.newest = Some(summary);
    }
    let mut records = listed(repository, verify_schedule::RECORDS).await?;
    records.sort();
    if let Some(name) = records.last() {
        view.verify_last = Some(cache.record(repository, name).await?);
    }
    if let Some(name) = records.iter().rev().find(|n| n.ends_with("-ok")) {
        view.verify_last_success = Some(cache.record(repository, name).await?);
    }
    if let Some(name) = records.iter().rev().find(|n| n.ends_with("-failed")) {
        view.verify_last_failure = Some(cache.record(repository, name).await?);
    }
    cache
        .summaries
        .retain(|name, _| manifests.last() == Some(name));
    cache.records.retain(|name, _| records.contains(name));
    Ok(view)
}

async fn listed(repository: &Repository, prefix: &str) -> Result<Vec<String>, BackupError> {
    Ok(repository
        .repo
        .list(prefix)
        .await?
        .into_iter()
        .map(|l| l.name)
        .collect())
}

fn seconds(ms: i64) -> u64 {
    (ms / 1000).max(0) as u64
}

/// Sets the cluster-wide metrics from `view` (timestamps only move forward).
fn export(node: &Node, view: &RepoView) {
    let m = &node.metrics().backup;
    let forward = |gauge: &crate::node::metrics::U64Gauge, ms: Option<i64>| {
        if let Some(ms) = ms {
            gauge.set(gauge.get().max(seconds(ms)));
        }
    };
    forward(&m.last_success, view.newest_finished_ms);
    forward(
        &m.verify_last_success,
        view.verify_last_success.as_ref().map(|r| r.finished_ms),
    );
    forward(
        &m.verify_last_failure,
        view.verify_last_failure.as_ref().map(|r| r.finished_ms),
    );
    if let Some(last) = &view.verify_last {
        m.verify_last_duration_ms.set(last.duration_ms());
    }
}

/// The period of `cron`: the time between its next two due times, seconds.
pub fn period_s(cron: &Cron, now_ms: i64) -> u64 {
    let Some(now) = chrono::DateTime::from_timestamp_millis(now_ms) else {
        return 0;
    };
    let next = cron.find_next_occurrence(&now, false).ok();
    let after = next.and_then(|n| cron.find_next_occurrence(&n, false).ok());
    match (next, after) {
        (Some(a), Some(b)) => seconds((b - a).num_milliseconds()),
        _ => 0,
    }
}

/// Starts a verification of the newest backup in the background (scheduled, or asked for
/// with `POST /v1/admin/backups/verify`); returns when it started. Refused without a
/// repository and a verification identity, or while one runs on this node.
pub fn start_verification(
    jobs: &Arc<Jobs>,
    node: &Arc<Node>,
    config: &Arc<Config>,
) -> Result<i64, BackupError> {
    if config.backup.repo.is_empty() || config.backup.verify_identity_file.as_os_str().is_empty() {
        return Err(BackupError::Invalid(
            "verification by restore is not configured on this node: set backup.repo and \
             backup.verify_identity_file (docs/operations.md, \"Scheduled verification\")"
                .into(),
        ));
    }
    let started_ms = crate::clock::now_ms();
    let progress = Arc::new(Progress::default());
    if !jobs.begin_verifying(started_ms, Arc::clone(&progress)) {
        return Err(BackupError::Busy(
            "a verification is already running on this node".into(),
        ));
    }
    let (jobs, node, config) = (Arc::clone(jobs), Arc::clone(node), Arc::clone(config));
    tokio::spawn(async move {
        let data_dir = node.cluster().data_dir().to_path_buf();
        let record =
            verify_schedule::run_once(Arc::clone(&config), data_dir, node.cluster().id(), progress)
                .await;
        let m = &node.metrics().backup;
        m.verify_last_duration_ms.set(record.duration_ms());
        if record.ok {
            m.verify_last_success.set(seconds(record.finished_ms));
            tracing::info!(backup = ?record.backup, duration_ms = record.duration_ms(), "backup verified by restore: hashes equal");
        } else {
            m.verify_failures.inc();
            m.verify_last_failure.set(seconds(record.finished_ms));
            tracing::error!(backup = ?record.backup, error = ?record.error, "backup verification failed");
        }
        if let Err(error) = save(&config, &record).await {
            tracing::error!(%error, "could not record the verification in the repository");
        }
        jobs.end_verifying();
    });
    Ok(started_ms)
}

async fn save(config: &Config, record: &Record) -> Result<(), BackupError> {
    let key = RepoKey::read(&config.backup.repo_key_file)?;
    let repository = Repository::open(&config.backup.repo, key).await?;
    verify_schedule::write_record(&repository, record).await
}

/// What the loop remembers between looks.
struct Watcher {
    cache: Cache,
    /// When this node last looked.
    looked_ms: Option<i64>,
    /// When this node began leading (while it leads).
    leading_since_ms: Option<i64>,
    /// When the loop started (the first verification is due after it).
    started_ms: i64,
    /// When this node last started a scheduled verification: a run whose record could
    /// not be written is not started again before the next due time.
    verify_started_ms: Option<i64>,
}

impl Watcher {
    /// Whether the leader should verify now: there is a backup, and `cron` fell due since
    /// the newest verification (recorded, or started here) or since the loop started.
    fn verification_due(&self, view: &RepoView, cron: Option<&Cron>, now: i64) -> bool {
        let Some(cron) = cron.filter(|_| view.newest.is_some()) else {
            return false;
        };
        let since = view
            .verify_last
            .as_ref()
            .map_or(self.started_ms, |r| r.started_ms)
            .max(self.verify_started_ms.unwrap_or(0));
        super::schedule::due_since(cron, since, now).is_some()
    }
}

/// Watches the repository of `config` from `node` until the process ends (nothing
/// without a repository). Removes a crashed verification's scratch directory first.
pub async fn run(jobs: Arc<Jobs>, node: Arc<Node>, config: Arc<Config>) {
    let data_dir = node.cluster().data_dir().to_path_buf();
    let cleaned = tokio::task::spawn_blocking(move || verify_schedule::clean_scratch(&data_dir));
    if let Ok(Err(error)) = cleaned.await {
        tracing::error!(%error, "could not remove the verification scratch directory");
    }
    if config.backup.repo.is_empty() {
        return;
    }
    let cron = |expr: &str| expr.parse::<Cron>().ok().filter(|_| !expr.is_empty());
    let backup_cron = cron(&config.backup.schedule);
    let verify_cron = cron(&config.backup.verify_schedule)
        .filter(|_| !config.backup.verify_identity_file.as_os_str().is_empty());
    if !config.backup.verify_schedule.is_empty() && verify_cron.is_none() {
        tracing::info!(
            "scheduled backup verification is off: backup.verify_identity_file is not set"
        );
    }
    let metrics = &node.metrics().backup;
    let mut watcher = Watcher {
        cache: Cache::default(),
        looked_ms: None,
        leading_since_ms: None,
        started_ms: crate::clock::now_ms(),
        verify_started_ms: None,
    };
    loop {
        tokio::time::sleep(super::schedule::CHECK_INTERVAL).await;
        let now = crate::clock::now_ms();
        let leading = !node.is_shutting_down() && node.is_leader();
        if !leading {
            watcher.leading_since_ms = None;
            metrics.stale_since.set(0);
            if watcher
                .looked_ms
                .is_some_and(|at| now - at < FOLLOWER_INTERVAL_MS)
            {
                continue;
            }
        }
        let leading_since = if leading {
            *watcher.leading_since_ms.get_or_insert(now)
        } else {
            now
        };
        let view = match open_and_look(&config, &mut watcher.cache).await {
            Ok(view) => view,
            Err(error) => {
                tracing::warn!(%error, "backups: cannot read the repository");
                continue;
            }
        };
        watcher.looked_ms = Some(now);
        export(&node, &view);
        metrics
            .schedule_period
            .set(backup_cron.as_ref().map_or(0, |c| period_s(c, now)));
        if leading && backup_cron.is_some() {
            metrics
                .stale_since
                .set(seconds(view.newest_finished_ms.unwrap_or(leading_since)));
        }
        let due = leading && watcher.verification_due(&view, verify_cron.as_ref(), now);
        jobs.set_view(view);
        if due && jobs.status().verifying.is_none() {
            tracing::info!("a scheduled backup verification is due; starting it");
            match start_verification(&jobs, &node, &config) {
                Ok(started) => watcher.verify_started_ms = Some(started),
                Err(error) => tracing::warn!(%error, "could not start the scheduled verification"),
            }
        }
    }
}

async fn open_and_look(config: &Config, cache: &mut Cache) -> Result<RepoView, BackupError> {
    let key = RepoKey::read(&config.backup.repo_key_file)?;
    let repository = Repository::open(&config.backup.repo, key).await?;
    look(&repository, cache).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_is_the_gap_between_the_next_two_due_times() {
        let t0 = 1_764_460_800_000; // 2025-11-30 00:00 UTC, a Sunday
        let nightly: Cron = "0 2 * * *".parse().expect("cron");
        assert_eq!(period_s(&nightly, t0), 86_400);
        let weekly: Cron = "0 4 * * 0".parse().expect("cron");
        assert_eq!(period_s(&weekly, t0), 7 * 86_400);
        let every_two_seconds: Cron = "*/2 * * * * *".parse().expect("cron");
        assert_eq!(period_s(&every_two_seconds, t0), 2);
    }
}
