//! Taking a backup: a checkpoint of a running node, uploaded chunk by chunk.
//!
//! Order, and why it is crash-safe: (1) a lock object says a backup is in progress (GC
//! does not sweep while one is fresh, see [`super::prune`]); (2) the chunks already in
//! the repository are listed once; (3) each file is chunked, and each chunk the
//! repository lacks is compressed, encrypted and uploaded — in parallel, by the bounded
//! pipeline of [`super::pipeline`], which returns only once every write has ended and
//! fails as a whole if any chunk failed; (4) the manifest is written,
//! create-only — only then does the backup exist; (5) the lock is removed. A crash before
//! (4) leaves chunks no manifest names, which GC removes once they are older than its
//! grace period; a crash between (4) and (5) leaves a stale lock that expires.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::keys::Recipients;
use super::manifest::{self, Manifest, ServiceEntry};
use super::pipeline::{Parallelism, Stages};
use super::{BackupError, Progress, Repository};
use crate::cluster::snapshot::SnapshotFile;
use crate::cluster::types::SnapshotMeta;
use crate::store::Store;
use crate::store::replicated::SectionReader;

/// Where locks live.
pub const LOCKS: &str = "locks";

/// What the node knows about a checkpoint beyond its files.
#[derive(Debug, Clone)]
pub struct CheckpointInfo {
    /// The cluster's id.
    pub cluster_id: Option<String>,
    /// The node taking it.
    pub node_id: u64,
    /// When the checkpoint was taken, ms since the epoch.
    pub started_ms: i64,
    /// The settings the log is applied with (`Config::apply_record`).
    pub apply: serde_json::Value,
    /// Its Raft metadata (the last applied log id).
    pub meta: SnapshotMeta,
}

/// A lock object's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lock {
    /// `backup` or `gc`.
    pub kind: String,
    /// When it was taken, ms since the epoch.
    pub started_ms: i64,
}

/// A summary of one backup, for people.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// The backup's id.
    pub id: String,
    /// The node that took it, and when it started (ms since the epoch).
    pub node_id: u64,
    pub started_ms: i64,
    /// The log position it holds.
    pub log_index: u64,
    /// State and services hashes there.
    pub state_hash: String,
    pub services_hash: String,
    /// Bytes of the checkpoint.
    pub bytes_scanned: u64,
    /// Bytes written to the repository.
    pub bytes_uploaded: u64,
    /// Chunks referenced and uploaded.
    pub chunks: u64,
    pub chunks_uploaded: u64,
    /// Bytes scanned per byte of new (plaintext) chunk data; 1.0 = nothing deduplicated.
    pub dedup_ratio: f64,
    /// Wall time, ms.
    pub duration_ms: u64,
}

impl Summary {
    /// The summary of `manifest`.
    pub fn of(manifest: &Manifest) -> Summary {
        let t = &manifest.totals;
        Summary {
            id: manifest.id.clone(),
            node_id: manifest.node_id,
            started_ms: manifest.started_ms,
            log_index: manifest.log_index,
            state_hash: manifest.state_hash.clone(),
            services_hash: manifest.services_hash.clone(),
            bytes_scanned: t.bytes_scanned,
            bytes_uploaded: t.bytes_uploaded,
            chunks: t.chunks,
            chunks_uploaded: t.chunks_uploaded,
            dedup_ratio: if t.bytes_new == 0 {
                f64::INFINITY.min(t.bytes_scanned as f64)
            } else {
                t.bytes_scanned as f64 / t.bytes_new as f64
            },
            duration_ms: (manifest.finished_ms - manifest.started_ms).max(0) as u64,
        }
    }
}

/// The state hash and the services' hashes of a checkpoint's state file.
pub fn checkpoint_hashes(state: &Path) -> Result<(String, Vec<ServiceEntry>), BackupError> {
    let mut input = BufReader::with_capacity(
        256 << 10,
        File::open(state).map_err(BackupError::io(state))?,
    );
    let corrupt = |e: crate::store::StoreError| BackupError::Corrupt {
        object: state.display().to_string(),
        check: "snapshot stream".into(),
        detail: e.to_string(),
    };
    let state_hash = Store::hash_snapshot_state(&mut input).map_err(corrupt)?;
    let mut sections = SectionReader::new(&mut input);
    let mut services = Vec::new();
    while let Some((name, cursor)) = sections.next_section().map_err(corrupt)? {
        let records = std::iter::from_fn(|| sections.next_record().transpose());
        let (_, hash) = crate::services::supervisor::records_hash(records).map_err(corrupt)?;
        services.push(ServiceEntry { name, cursor, hash });
    }
    Ok((state_hash, services))
}

/// The combined services hash of `services` (as `GET /v1/admin/state-hash` reports it).
pub fn services_hash(services: &[ServiceEntry]) -> String {
    crate::services::supervisor::combined_hash(
        services
            .iter()
            .map(|s| (s.name.as_str(), s.cursor, s.hash.as_str())),
    )
}

/// Uploads the checkpoint in `checkpoint` as a new backup; returns its manifest.
/// Blocking: call from a blocking thread; repository requests run on `runtime`, chunks
/// are sealed on `parallelism.workers` threads at a lower priority.
pub fn upload(
    repository: &Repository,
    runtime: &tokio::runtime::Handle,
    checkpoint: &SnapshotFile,
    info: &CheckpointInfo,
    progress: &Arc<Progress>,
    parallelism: Parallelism,
) -> Result<Manifest, BackupError> {
    let started = Instant::now();
    let id = super::new_backup_id(info.started_ms);
    let last = info.meta.last_log_id.ok_or_else(|| {
        BackupError::Invalid("the node has applied nothing yet: there is nothing to back up".into())
    })?;
    // One backup at a time per node: a lock of this node's from before is a crashed
    // backup's, and goes now rather than when it expires.
    let own = format!("{LOCKS}/backup-n{}-", info.node_id);
    for stale in runtime.block_on(repository.repo.list(LOCKS))? {
        if stale.name.starts_with(&own) {
            runtime.block_on(repository.repo.delete(&stale.name))?;
        }
    }
    let lock_name = format!("{own}{id}");
    let lock = runtime.block_on(take_lock(repository, &lock_name, "backup"))?;
    let result = upload_locked(
        repository,
        runtime,
        checkpoint,
        info,
        progress,
        &id,
        last,
        parallelism,
    );
    runtime.block_on(lock.release(repository));
    let manifest = result?;
    tracing::info!(id = %manifest.id, elapsed_ms = started.elapsed().as_millis() as u64, "backup uploaded");
    Ok(manifest)
}

/// A held lock: refreshed every [`LOCK_REFRESH_MS`] while held, so that a lock not
/// refreshed for [`super::prune::LOCK_TTL_MS`] is known to be a crashed holder's.
pub struct LockGuard {
    name: String,
    refresher: tokio::task::JoinHandle<()>,
}

/// How often a held lock is rewritten, ms.
pub const LOCK_REFRESH_MS: u64 = 30_000;

impl LockGuard {
    /// Removes the lock (a lock left behind only delays the other kind until it expires).
    pub async fn release(self, repository: &Repository) {
        self.refresher.abort();
        if let Err(error) = repository.repo.delete(&self.name).await {
            tracing::warn!(%error, lock = %self.name, "could not remove a repository lock");
        }
    }
}

/// Takes lock `name` of `kind` (`backup` or `gc`): writes it, then checks that no fresh
/// lock of the other kind exists; if one does, removes its own and reports busy. Both
/// sides write before they look, so of a backup and a GC starting together at least one
/// sees the other. Backups do not exclude backups, nor GCs GCs: each GC deletes only
/// what no manifest it read names, and only GCs delete manifests.
pub async fn take_lock(
    repository: &Repository,
    name: &str,
    kind: &str,
) -> Result<LockGuard, BackupError> {
    let body = |now: i64| {
        serde_json::to_vec(&Lock {
            kind: kind.to_owned(),
            started_ms: now,
        })
        .unwrap_or_default()
    };
    let now = crate::clock::now_ms();
    repository.repo.put(name, body(now)).await?;
    let others = repository.repo.list(LOCKS).await?;
    let other_kind = if kind == "gc" { "backup-" } else { "gc-" };
    let conflicting = others.iter().find(|l| {
        l.name != name
            && now - l.modified_ms < super::prune::LOCK_TTL_MS
            && l.name.starts_with(&format!("{LOCKS}/{other_kind}"))
    });
    if let Some(other) = conflicting {
        let _ = repository.repo.delete(name).await;
        return Err(BackupError::Busy(format!(
            "{} holds the repository; retry when it ends (a crashed holder's lock expires \
             {} s after its last refresh)",
            other.name,
            super::prune::LOCK_TTL_MS / 1000
        )));
    }
    let refresher = {
        let (repository, name) = (repository.clone(), name.to_owned());
        let kind = kind.to_owned();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(LOCK_REFRESH_MS)).await;
                let lock = Lock {
                    kind: kind.clone(),
                    started_ms: now,
                };
                let bytes = serde_json::to_vec(&lock).unwrap_or_default();
                if let Err(error) = repository.repo.put(&name, bytes).await {
                    tracing::warn!(%error, "could not refresh a repository lock");
                }
            }
        })
    };
    Ok(LockGuard {
        name: name.to_owned(),
        refresher,
    })
}

#[allow(clippy::too_many_arguments)]
fn upload_locked(
    repository: &Repository,
    runtime: &tokio::runtime::Handle,
    checkpoint: &SnapshotFile,
    info: &CheckpointInfo,
    progress: &Arc<Progress>,
    id: &str,
    last: crate::cluster::types::LogId,
    parallelism: Parallelism,
) -> Result<Manifest, BackupError> {
    let state_path = checkpoint.state_path();
    let mut paths = vec![("state".to_owned(), state_path.clone())];
    for path in checkpoint
        .log_files()
        .map_err(BackupError::io(&checkpoint.path))?
    {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| BackupError::Invalid("a log file without a name".into()))?;
        paths.push((format!("log/{name}"), path.clone()));
    }
    let mut total = 0;
    for (_, path) in &paths {
        total += std::fs::metadata(path)
            .map_err(BackupError::io(path))?
            .len();
    }
    progress.total.store(total, Ordering::Relaxed);
    progress.phase("listing the repository's chunks");
    let present: HashSet<String> = runtime
        .block_on(repository.repo.list(manifest::CHUNKS))?
        .into_iter()
        .filter_map(|l| l.name.rsplit('/').next().map(str::to_owned))
        .collect();
    progress.phase("uploading");
    let recipients = Recipients::parse(&repository.config.recipients)?;
    let name = |plain: &[u8]| repository.key.chunk_name(plain);
    let file_hasher = || repository.key.file_hasher();
    let seal = |plain: &[u8]| super::seal_chunk_to(&recipients, plain);
    let store = |id: &str, sealed: Vec<u8>| {
        runtime.block_on(repository.repo.put(&manifest::chunk_object(id), sealed))
    };
    let stages = Stages {
        name: &name,
        file_hasher: &file_hasher,
        seal: &seal,
        store: &store,
    };
    // The state and services hashes read the state file once more; they run beside the
    // upload (at the pipeline's priority) rather than before it.
    let (hashes, uploaded) = std::thread::scope(|scope| {
        let hashes = scope.spawn(|| {
            super::pipeline::lower_priority();
            let started = Instant::now();
            let hashes = checkpoint_hashes(&state_path);
            (hashes, started.elapsed().as_millis() as u64)
        });
        let started = Instant::now();
        let uploaded = super::pipeline::run(&stages, &paths, present, parallelism, progress);
        let chunks_ms = started.elapsed().as_millis() as u64;
        let hashes = hashes.join();
        if let Ok((_, hashes_ms)) = &hashes {
            tracing::info!(
                chunks_ms,
                hashes_ms,
                workers = parallelism.workers,
                "backup phases"
            );
        }
        (hashes.map(|(h, _)| h), uploaded)
    });
    let (files, totals) = uploaded?;
    let (state_hash, services) =
        hashes.map_err(|_| BackupError::Invalid("hashing the checkpoint panicked".into()))??;
    let mut manifest = Manifest {
        format: manifest::FORMAT_VERSION,
        id: id.to_owned(),
        cluster_id: info.cluster_id.clone(),
        node_id: info.node_id,
        started_ms: info.started_ms,
        finished_ms: crate::clock::now_ms(),
        log_index: last.index,
        log_term: last.leader_id.term,
        services_hash: services_hash(&services),
        state_hash,
        services,
        apply: info.apply.clone(),
        files,
        totals,
        data_format: Some(crate::node::format::DATA_FORMAT),
    };
    manifest.finished_ms = manifest.finished_ms.max(manifest.started_ms);
    progress.phase("writing the manifest");
    let name = Manifest::object_name(id);
    let sealed = manifest::seal(&repository.key, &name, &manifest)?;
    crate::crash::point("backup:before-manifest");
    if !runtime.block_on(repository.repo.put_new(&name, sealed))? {
        return Err(BackupError::Invalid(format!("backup {id} already exists")));
    }
    progress.phase("done");
    Ok(manifest)
}

impl From<std::io::Error> for BackupError {
    fn from(source: std::io::Error) -> BackupError {
        BackupError::Io {
            path: String::new(),
            source,
        }
    }
}
