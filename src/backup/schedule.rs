//! Scheduled backups: a cron expression (`backup.schedule`, default nightly at 02:00 UTC),
//! run once per cluster even across failovers.
//!
//! How "once per cluster" holds without a replicated record: every node checks every
//! [`CHECK_INTERVAL`], but only the leader acts, and it acts only when the newest backup
//! in the repository — the cluster's own record of its last run, visible to whichever node
//! leads next — started before the last time the schedule fell due. After a failover the
//! new leader sees the same newest backup, so it neither repeats the run nor skips it (a
//! run missed while there was no leader happens as soon as there is one). Two nodes that
//! both believe they lead for a moment could both start one: the result is one extra,
//! complete backup, never a broken one.

use std::sync::Arc;
use std::time::Duration;

use croner::Cron;

use super::job::Jobs;
use super::keys::RepoKey;
use super::{BackupError, Repository};
use crate::config::Config;
use crate::node::Node;

/// How often a node checks whether a backup is due.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The last time `cron` fell due at or before `now_ms`, after `since_ms`; `None` if it did
/// not fall due in `(since_ms, now_ms]`.
pub fn due_since(cron: &Cron, since_ms: i64, now_ms: i64) -> Option<i64> {
    let since = chrono::DateTime::from_timestamp_millis(since_ms)?;
    let next = cron.find_next_occurrence(&since, false).ok()?;
    let next_ms = next.timestamp_millis();
    (next_ms <= now_ms).then_some(next_ms)
}

/// The start of the newest backup in the repository, if any.
async fn newest_backup_ms(config: &Config) -> Result<Option<i64>, BackupError> {
    let key = RepoKey::read(&config.backup.repo_key_file)?;
    let repository = Repository::open(&config.backup.repo, key).await?;
    let mut names: Vec<String> = repository
        .repo
        .list(super::manifest::MANIFESTS)
        .await?
        .into_iter()
        .map(|l| l.name)
        .collect();
    names.sort();
    match names.last().and_then(|n| n.rsplit('/').next()) {
        Some(id) => Ok(Some(repository.manifest(id).await?.started_ms)),
        None => Ok(None),
    }
}

/// Runs the schedule of `config` on `node` until the process ends (nothing without a
/// repository or a schedule).
pub async fn run(jobs: Arc<Jobs>, node: Arc<Node>, config: Arc<Config>) {
    if config.backup.repo.is_empty() || config.backup.schedule.is_empty() {
        return;
    }
    let cron: Cron = match config.backup.schedule.parse() {
        Ok(cron) => cron,
        Err(error) => {
            tracing::error!(%error, "backup.schedule is not a cron expression; no scheduled backups");
            return;
        }
    };
    // Without any backup yet, the first run is the first due time after this start.
    let started_ms = crate::clock::now_ms();
    loop {
        tokio::time::sleep(CHECK_INTERVAL).await;
        if node.is_shutting_down() || !node.is_leader() || jobs.status().running.is_some() {
            continue;
        }
        let since = match newest_backup_ms(&config).await {
            Ok(newest) => newest.unwrap_or(started_ms),
            Err(error) => {
                tracing::warn!(%error, "scheduled backups: cannot read the repository");
                continue;
            }
        };
        if let Some(due_ms) = due_since(&cron, since, crate::clock::now_ms()) {
            tracing::info!(due_ms, "a scheduled backup is due; starting it");
            if let Err(error) = jobs.start(Arc::clone(&node), Arc::clone(&config)) {
                tracing::warn!(%error, "could not start the scheduled backup");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_due_once_the_schedule_passed_the_newest_backup() {
        let nightly: Cron = "0 2 * * *".parse().unwrap();
        let day = 86_400_000;
        let t0 = 1_764_460_800_000; // 2025-11-30 00:00 UTC
        // Backed up at 02:00:05 on day 0: nothing due until 02:00 on day 1.
        let last = t0 + 2 * 3_600_000 + 5_000;
        assert_eq!(due_since(&nightly, last, t0 + day), None);
        assert_eq!(
            due_since(&nightly, last, t0 + day + 2 * 3_600_000),
            Some(t0 + day + 2 * 3_600_000)
        );
        // A leader that comes up at noon on day 3 after days without one runs at once.
        assert_eq!(
            due_since(&nightly, last, t0 + 3 * day + 12 * 3_600_000),
            Some(t0 + day + 2 * 3_600_000)
        );
        let every_two_seconds: Cron = "*/2 * * * * *".parse().unwrap();
        assert_eq!(due_since(&every_two_seconds, t0, t0 + 1_000), None);
        assert_eq!(
            due_since(&every_two_seconds, t0, t0 + 2_000),
            Some(t0 + 2_000)
        );
    }
}
