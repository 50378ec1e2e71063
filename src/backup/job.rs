//! A node taking a backup: at most one at a time, in the background, its progress and
//! outcome kept for `GET /v1/admin/backups/status` and the metrics; beside it, the
//! repository as this node last watched it ([`super::watch`]) and a running scheduled
//! verification ([`super::verify_schedule`]).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::create::{CheckpointInfo, Summary};
use super::keys::RepoKey;
use super::{BackupError, Progress, Repository};
use crate::cluster::snapshot::{LOG_DIR, SnapshotFile};
use crate::config::Config;
use crate::node::Node;

/// Where a node writes backup checkpoints, under its data directory.
pub const STAGING: &str = "backup-staging";

/// The node's backup jobs.
#[derive(Default)]
pub struct Jobs {
    running: Mutex<Option<Running>>,
    last: Mutex<Option<Outcome>>,
    /// The repository as last watched.
    view: Mutex<Option<super::watch::RepoView>>,
    /// The running verification, if any.
    verifying: Mutex<Option<Running>>,
}

struct Running {
    started_ms: i64,
    progress: Arc<Progress>,
}

/// How the last backup ended.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// It is in the repository.
    Succeeded {
        /// What it took.
        summary: Summary,
    },
    /// It failed; nothing was added but unreferenced chunks (GC removes them).
    Failed {
        /// Why.
        error: String,
        /// When, ms since the epoch.
        at_ms: i64,
    },
}

/// What `GET /v1/admin/backups/status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The running backup, if any.
    pub running: Option<RunningStatus>,
    /// The last one's outcome.
    pub last: Option<Outcome>,
    /// The running verification by restore, if any (on the leader).
    pub verifying: Option<RunningStatus>,
    /// The repository as this node last saw it: its newest backup and the cluster's last
    /// verifications (`None` before the first look, or without a repository).
    pub repository: Option<super::watch::RepoView>,
}

/// A running backup's progress.
#[derive(Debug, Clone, Serialize)]
pub struct RunningStatus {
    /// When it started, ms since the epoch.
    pub started_ms: i64,
    /// What it is doing.
    pub phase: String,
    /// Bytes of the checkpoint processed, of `bytes_total`.
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes uploaded so far.
    pub bytes_uploaded: u64,
}

impl Running {
    fn status(&self) -> RunningStatus {
        let (done, total, transferred) = self.progress.snapshot();
        RunningStatus {
            started_ms: self.started_ms,
            phase: self.progress.current_phase(),
            bytes_done: done,
            bytes_total: total,
            bytes_uploaded: transferred,
        }
    }
}

impl Jobs {
    /// The status.
    pub fn status(&self) -> Status {
        let lock = |m: &Mutex<Option<Running>>| {
            m.lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(Running::status)
        };
        Status {
            running: lock(&self.running),
            last: self.last.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            verifying: lock(&self.verifying),
            repository: self.view(),
        }
    }

    /// The repository as last watched.
    pub fn view(&self) -> Option<super::watch::RepoView> {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records the repository as just watched.
    pub fn set_view(&self, view: super::watch::RepoView) {
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = Some(view);
    }

    /// Marks a verification as running with `progress`; `false` if one already runs.
    pub fn begin_verifying(&self, started_ms: i64, progress: Arc<Progress>) -> bool {
        let mut verifying = self.verifying.lock().unwrap_or_else(|p| p.into_inner());
        if verifying.is_some() {
            return false;
        }
        *verifying = Some(Running {
            started_ms,
            progress,
        });
        true
    }

    /// Marks the running verification as ended.
    pub fn end_verifying(&self) {
        *self.verifying.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Starts a backup of `node` into the repository `config` names, in the background;
    /// returns when it started. Refused while one runs, or when no repository is set.
    pub fn start(
        self: &Arc<Self>,
        node: Arc<Node>,
        config: Arc<Config>,
    ) -> Result<i64, BackupError> {
        if config.backup.repo.is_empty() || config.backup.repo_key_file.as_os_str().is_empty() {
            return Err(BackupError::Invalid(
                "backups are not configured on this node: set backup.repo and \
                 backup.repo_key_file (docs/operations.md, \"Backups\")"
                    .into(),
            ));
        }
        let progress = Arc::new(Progress::default());
        let started_ms = crate::clock::now_ms();
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.is_some() {
                return Err(BackupError::Busy(
                    "a backup is already running on this node".into(),
                ));
            }
            *running = Some(Running {
                started_ms,
                progress: Arc::clone(&progress),
            });
        }
        let jobs = Arc::clone(self);
        tokio::spawn(async move {
            let begun = std::time::Instant::now();
            let result = run(&node, &config, started_ms, &progress).await;
            let metrics = &node.metrics().backup;
            let outcome = match result {
                Ok(summary) => {
                    metrics
                        .last_success
                        .set((crate::clock::now_ms() / 1000).max(0) as u64);
                    metrics
                        .last_duration_ms
                        .set(begun.elapsed().as_millis() as u64);
                    metrics.last_size.set(summary.bytes_scanned);
                    metrics.last_uploaded.set(summary.bytes_uploaded);
                    tracing::info!(id = %summary.id, bytes = summary.bytes_scanned, uploaded = summary.bytes_uploaded, "backup succeeded");
                    Outcome::Succeeded { summary }
                }
                Err(error) => {
                    metrics.failures.inc();
                    metrics
                        .last_failure
                        .set((crate::clock::now_ms() / 1000).max(0) as u64);
                    tracing::error!(%error, "backup failed");
                    Outcome::Failed {
                        error: error.to_string(),
                        at_ms: crate::clock::now_ms(),
                    }
                }
            };
            *jobs.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
            *jobs.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
        });
        Ok(started_ms)
    }
}

/// One backup: checkpoint, upload, clean up.
async fn run(
    node: &Arc<Node>,
    config: &Config,
    started_ms: i64,
    progress: &Arc<Progress>,
) -> Result<Summary, BackupError> {
    let key = RepoKey::read(&config.backup.repo_key_file)?;
    let repository = Repository::open(&config.backup.repo, key).await?;
    // Writes are answered at commit, before apply: apply everything committed first, so
    // the backup holds every event acknowledged before it began. Without a leader (no
    // quorum) it holds what this node applied, which the manifest's index says.
    progress.phase("applying what the cluster committed");
    if let Err(error) = node.linearize().await {
        tracing::warn!(
            %error,
            "backup: cannot confirm the cluster's commit index; the checkpoint holds what \
             this node has applied"
        );
    }
    progress.phase("writing the checkpoint");
    let checkpoint_started = std::time::Instant::now();
    let staging: PathBuf = node.cluster().data_dir().join(STAGING);
    let (checkpoint, meta) = {
        let node = Arc::clone(node);
        let staging = staging.clone();
        tokio::task::spawn_blocking(move || -> Result<_, BackupError> {
            // Leftovers of a crashed backup go first.
            if staging.exists() {
                std::fs::remove_dir_all(&staging).map_err(BackupError::io(&staging))?;
            }
            let file = SnapshotFile {
                path: staging.join(format!("{}.snap", uuid::Uuid::new_v4().simple())),
            };
            std::fs::create_dir_all(file.path.join(LOG_DIR))
                .map_err(BackupError::io(&file.path))?;
            let services: &dyn crate::cluster::derived::DerivedSource = node.checkpoint_services();
            let meta = crate::cluster::state_machine::write_checkpoint(
                node.store(),
                Some(services),
                &file,
            )
            .map_err(BackupError::io(&file.path))?;
            Ok((file, meta))
        })
        .await
        .map_err(|e| BackupError::Invalid(format!("checkpoint worker: {e}")))??
    };
    tracing::info!(
        checkpoint_ms = checkpoint_started.elapsed().as_millis() as u64,
        "backup checkpoint written"
    );
    let info = CheckpointInfo {
        cluster_id: node.cluster().identity().get(),
        node_id: node.cluster().id(),
        started_ms,
        apply: config.apply_record(),
        meta,
    };
    let runtime = tokio::runtime::Handle::current();
    let progress_upload = Arc::clone(progress);
    let parallelism = super::pipeline::Parallelism::new(config.backup.workers);
    let uploaded = tokio::task::spawn_blocking(move || {
        let result = super::create::upload(
            &repository,
            &runtime,
            &checkpoint,
            &info,
            &progress_upload,
            parallelism,
        );
        let _ = std::fs::remove_dir_all(&checkpoint.path);
        result
    })
    .await
    .map_err(|e| BackupError::Invalid(format!("upload worker: {e}")))?;
    let manifest = uploaded?;
    progress
        .done
        .store(manifest.totals.bytes_scanned, Ordering::Relaxed);
    Ok(Summary::of(&manifest))
}
