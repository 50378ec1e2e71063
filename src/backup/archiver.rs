//! Continuous archiving, the node's task: the leader uploads the committed log to the
//! repository as consecutive ranges ([`super::archive`]); every other node follows the
//! repository's listing, so that its purge guard knows what the archive holds.
//!
//! When the leader uploads: each sealed (rolled) segment's remaining committed entries as
//! soon as the segment is sealed, and at least every `backup.archive_interval_secs` the
//! committed tail since the last upload, in objects of at most
//! [`super::archive::OBJECT_BYTES_MAX`] of plaintext. One upload at a time (nothing else
//! in flight); a failed step is retried with a doubling backoff up to [`BACKOFF_MAX_MS`],
//! each failure counted (`tandem_archive_failures_total`).
//!
//! Why ranges stay consecutive and disjoint across failovers: a node that becomes leader
//! starts by listing the cluster's archive ([`Archiver::resync`]) and continues after its
//! highest range; the newest object is checked first (its MAC), and one that fails — a
//! half-finished or damaged upload of the old leader — is deleted and uploaded again.
//! Before each upload the leader lists what sorts after its next index, and objects are
//! written create-only, so an old leader that still uploads is noticed (the new one
//! resyncs) instead of both writing the same range. Where to start when the archive is
//! empty: at the first entry no snapshot covers, or earlier, after this cluster's newest
//! backup, if the log still holds that.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use serde_json::json;

use super::archive::{self, Range};
use super::keys::RepoKey;
use super::{BackupError, Repository};
use crate::config::Config;
use crate::node::Node;
use crate::node::archive::ArchiveMetrics;

/// How often the task looks.
const TICK_MS: u64 = 500;
/// First retry delay after a failed step; doubles per failure.
const BACKOFF_FIRST_MS: u64 = 500;
/// Longest retry delay.
pub const BACKOFF_MAX_MS: u64 = 30_000;

/// The archiving task's state.
struct Archiver {
    /// The node it archives.
    node: Arc<Node>,
    /// Its configuration.
    config: Arc<Config>,
    /// The repository, once opened.
    repository: Option<Repository>,
    /// The first index the archive lacks, as the leader knows it (`None`: list first).
    next: Option<u64>,
    /// When this node last uploaded (or became leader).
    last_upload: Instant,
    /// When followers last read the listing.
    last_follow: Option<Instant>,
    /// When committed entries started waiting for the archive, ms since the epoch.
    pending_since_ms: Option<i64>,
    /// Current retry delay, and when the next attempt may run.
    backoff_ms: u64,
    retry_at: Instant,
}

/// Runs continuous archiving on `node` until it stops (nothing unless archiving is on).
pub async fn run(node: Arc<Node>, config: Arc<Config>) {
    if !config.archiving() {
        return;
    }
    let metrics = node.metrics().archive.clone();
    metrics
        .interval_seconds
        .set(config.backup.archive_interval_secs);
    metrics
        .backlog_limit_bytes
        .set(config.backup.archive_backlog_mb_max << 20);
    let mut archiver = Archiver {
        node,
        config,
        repository: None,
        next: None,
        last_upload: Instant::now(),
        last_follow: None,
        pending_since_ms: None,
        backoff_ms: BACKOFF_FIRST_MS,
        retry_at: Instant::now(),
    };
    loop {
        tokio::time::sleep(Duration::from_millis(TICK_MS)).await;
        if archiver.node.is_shutting_down() {
            return;
        }
        if Instant::now() >= archiver.retry_at {
            match archiver.step().await {
                Ok(()) => archiver.backoff_ms = BACKOFF_FIRST_MS,
                Err(error) => {
                    metrics.failures.inc();
                    tracing::warn!(%error, retry_ms = archiver.backoff_ms, "log archiving failed; retrying");
                    archiver.retry_at = Instant::now() + Duration::from_millis(archiver.backoff_ms);
                    archiver.backoff_ms = (archiver.backoff_ms * 2).min(BACKOFF_MAX_MS);
                    archiver.next = None;
                }
            }
        }
        archiver.measure(&metrics);
    }
}

impl Archiver {
    fn metrics(&self) -> &ArchiveMetrics {
        &self.node.metrics().archive
    }

    fn cluster(&self) -> Option<String> {
        self.node.cluster().identity().get()
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(self.config.backup.archive_interval_secs)
    }

    fn applied(&self) -> Option<u64> {
        self.node
            .raft()
            .metrics()
            .borrow_watched()
            .last_applied
            .map(|id| id.index)
    }

    async fn repository(&mut self) -> Result<Repository, BackupError> {
        if let Some(repository) = &self.repository {
            return Ok(repository.clone());
        }
        let key = RepoKey::read(&self.config.backup.repo_key_file)?;
        let repository = Repository::open(&self.config.backup.repo, key).await?;
        self.repository = Some(repository.clone());
        Ok(repository)
    }

    /// One look: upload if leading and due, else follow the listing.
    async fn step(&mut self) -> Result<(), BackupError> {
        let repository = self.repository().await?;
        if !self.node.is_leader() {
            self.next = None;
            let due = self
                .last_follow
                .is_none_or(|at| at.elapsed() >= self.interval());
            if due {
                self.follow(&repository).await?;
                self.last_follow = Some(Instant::now());
            }
            return Ok(());
        }
        let next = match self.next {
            Some(next) => next,
            None => self.resync(&repository).await?,
        };
        let Some(applied) = self.applied().filter(|a| *a >= next) else {
            return Ok(());
        };
        let log = self.node.store().log().clone();
        if let Some(first) = log.first_index().filter(|first| next < *first) {
            tracing::error!(
                missing_from = next,
                missing_to = first - 1,
                "the archive lacks entries this node's log no longer holds: the archive has \
                 a gap there; take a full backup to restore point-in-time coverage"
            );
            self.set_next(first);
            return Ok(());
        }
        let segments = log.segments();
        let sealed_end = segments
            .iter()
            .find(|s| s.first_index <= next && s.last_index.is_some_and(|l| l >= next))
            .filter(|s| !s.active)
            .and_then(|s| s.last_index);
        if sealed_end.is_none() && self.last_upload.elapsed() < self.interval() {
            return Ok(());
        }
        let to = sealed_end.map_or(applied, |end| end.min(applied));
        self.upload(&repository, next, to).await
    }

    fn set_next(&mut self, next: u64) {
        self.next = Some(next);
        self.metrics().next_index.store(next, Ordering::Release);
    }

    /// The leader's start: the highest valid range in the repository, or where to begin.
    async fn resync(&mut self, repository: &Repository) -> Result<u64, BackupError> {
        let cluster = self.cluster();
        let mut ranges = archive::list(repository, cluster.as_deref()).await?;
        while let Some(newest) = ranges.last() {
            let Some(bytes) = repository.repo.get(&newest.name).await? else {
                ranges.pop();
                continue;
            };
            match archive::open(repository, &newest.name, &bytes) {
                Ok((header, _)) => {
                    self.note_archived(newest.last, header.last_ms);
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, object = %newest.name, "deleting a damaged archive object (a half-finished upload?) to upload its range again");
                    repository.repo.delete(&newest.name).await?;
                    ranges.pop();
                }
            }
        }
        let next = match ranges.last() {
            Some(range) => range.last + 1,
            None => self.start_index(repository).await?,
        };
        self.set_next(next);
        self.last_upload = Instant::now();
        Ok(next)
    }

    /// Where an empty archive starts.
    async fn start_index(&self, repository: &Repository) -> Result<u64, BackupError> {
        let log = self.node.store().log();
        let first = log.first_index().unwrap_or(1);
        let cluster = self.cluster();
        let backup = repository
            .manifests()
            .await?
            .into_iter()
            .filter(|m| m.cluster_id == cluster)
            .map(|m| m.log_index + 1)
            .max();
        // Entries no snapshot covers yet are needed whatever the backups; entries after the
        // newest backup are what a restore from it replays.
        let purged = crate::cluster::log_store::purged_index(log)
            .map_err(BackupError::from)?
            .map_or(0, |p| p + 1);
        Ok(first.max(purged.min(backup.unwrap_or(u64::MAX))))
    }

    /// Uploads `[from, to]` (or its first [`archive::OBJECT_BYTES_MAX`]).
    async fn upload(
        &mut self,
        repository: &Repository,
        from: u64,
        to: u64,
    ) -> Result<(), BackupError> {
        let cluster = self.cluster();
        let folder = archive::folder(cluster.as_deref());
        // Anything that starts at or after `from` means another leader got there first.
        let offset = format!("{folder}/{:020}-{}", from.saturating_sub(1), "9".repeat(20));
        if !repository
            .repo
            .list_after(&folder, &offset)
            .await?
            .is_empty()
        {
            tracing::info!(
                from,
                "the archive already holds ranges from here; resyncing"
            );
            self.next = None;
            return Ok(());
        }
        let log = self.node.store().log().clone();
        let sealing = repository.clone();
        let cluster_for_seal = cluster.clone();
        let sealed = tokio::task::spawn_blocking(move || {
            let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut bytes = 0_u64;
            log.read_range(from, to, |index, record| {
                bytes += record.len() as u64 + 4;
                records.push((index, record.to_vec()));
                Ok(bytes < archive::OBJECT_BYTES_MAX)
            })
            .map_err(|e| BackupError::Invalid(format!("reading the log to archive: {e}")))?;
            if records.first().map(|r| r.0) != Some(from) {
                return Err(BackupError::Invalid(format!(
                    "the log does not hold index {from} any more"
                )));
            }
            archive::seal(&sealing, cluster_for_seal.as_deref(), &records)
        })
        .await
        .map_err(|e| BackupError::Invalid(format!("archive worker: {e}")))??;
        let (name, bytes, header) = sealed;
        let size = bytes.len() as u64;
        crate::crash::point("archive:before-upload");
        if !repository.repo.put_new(&name, bytes).await? {
            tracing::info!(object = %name, "the archive object exists already; resyncing");
            self.next = None;
            return Ok(());
        }
        let metrics = self.metrics().clone();
        metrics.uploads.inc();
        metrics.uploaded_bytes.inc_by(size);
        self.note_archived(header.last, header.last_ms);
        self.set_next(header.last + 1);
        self.last_upload = Instant::now();
        tracing::debug!(object = %name, size, "archived");
        Ok(())
    }

    /// A follower's view: the highest archived index, from the listing.
    async fn follow(&mut self, repository: &Repository) -> Result<(), BackupError> {
        let cluster = self.cluster();
        let folder = archive::folder(cluster.as_deref());
        let known = self.metrics().next();
        let listed = match known {
            Some(next) => {
                let offset = format!("{folder}/{:020}-{}", next.saturating_sub(1), "9".repeat(20));
                repository.repo.list_after(&folder, &offset).await?
            }
            None => repository.repo.list(&folder).await?,
        };
        let newest: Option<Range> = listed
            .into_iter()
            .filter_map(|l| {
                archive::parse_name(&l.name).map(|(first, last)| Range {
                    first,
                    last,
                    name: l.name,
                    size: l.size,
                })
            })
            .max_by_key(|r| r.last);
        if let Some(newest) = newest {
            let last_ms = match repository.repo.get(&newest.name).await? {
                Some(bytes) => archive::open(repository, &newest.name, &bytes)?.0.last_ms,
                None => None,
            };
            self.note_archived(newest.last, last_ms);
            self.metrics()
                .next_index
                .store(newest.last + 1, Ordering::Release);
        } else if known.is_none() {
            // An empty archive: nothing is archived, and the guard keeps everything.
        }
        Ok(())
    }

    fn note_archived(&self, last: u64, last_ms: Option<i64>) {
        let metrics = self.metrics();
        if last < metrics.archived_index.get() {
            return;
        }
        metrics.archived_index.set(last);
        if let Some(ms) = last_ms {
            metrics.archived_time.set((ms / 1000).max(0) as u64);
        }
        metrics
            .last_upload
            .set((crate::clock::now_ms() / 1000).max(0) as u64);
    }

    /// The recovery point and the backlog, every tick.
    fn measure(&mut self, metrics: &ArchiveMetrics) {
        let now_ms = crate::clock::now_ms();
        let next = metrics.next();
        let waiting = match (self.applied(), next) {
            (Some(applied), Some(next)) => applied >= next,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if waiting {
            let since = *self.pending_since_ms.get_or_insert(now_ms);
            metrics
                .unarchived_seconds
                .set(((now_ms - since) / 1000).max(0) as u64);
        } else {
            self.pending_since_ms = None;
            metrics.unarchived_seconds.set(0);
        }
        let segments = self.node.store().log().segments();
        metrics
            .backlog_bytes
            .set(crate::node::archive::backlog_bytes(&segments, next));
    }
}

/// The archive's state as `GET /v1/admin/backups/status` shows it.
pub fn status(config: &Config, metrics: &ArchiveMetrics) -> serde_json::Value {
    if !config.archiving() {
        return json!({"enabled": false});
    }
    json!({
        "enabled": true,
        "interval_secs": config.backup.archive_interval_secs,
        "archived_index": metrics.archived_index.get(),
        "archived_time_secs": metrics.archived_time.get(),
        "unarchived_secs": metrics.unarchived_seconds.get(),
        "last_upload_secs": metrics.last_upload.get(),
        "backlog_bytes": metrics.backlog_bytes.get(),
        "backlog_limit_bytes": metrics.backlog_limit_bytes.get(),
        "uploads": metrics.uploads.get(),
        "uploaded_bytes": metrics.uploaded_bytes.get(),
        "failures": metrics.failures.get(),
        "unarchived_deleted_segments": metrics.unarchived_deleted.get(),
    })
}
