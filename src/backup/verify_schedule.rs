//! Scheduled verification by restore: the leader proves, on `backup.verify_schedule`,
//! that the repository's newest backup restores — it restores it into a scratch directory
//! under the data directory and checks that the restored state and services hash to the
//! manifest's — and records the result in the repository for the whole cluster.
//!
//! Once per cluster: the record (`verifications/<id>-ok|-failed`, authenticated with the
//! repo key like a manifest) is the cluster's memory, read by whichever node leads; a run
//! is due when the schedule fell due after the newest record started, as for backups
//! ([`super::schedule`]). A leader that dies mid-run wrote no record, so the next one
//! runs it again; two nodes that both believe they lead may both run it (one extra
//! verification, never a wrong result).
//!
//! Bounded and harmless to the node: the restore needs about twice the backup's size on
//! the data directory's filesystem plus [`DISK_RESERVE_BYTES`], and is refused (recorded
//! as failed, with the numbers) when that is not free; the scratch directory is removed
//! after every run, and whatever a crash left there is removed when the node starts
//! ([`clean_scratch`]). It runs on its own thread and runtime at nice [`NICE`] and the
//! lowest best-effort I/O priority, so ingest, on the node's runtime, keeps the CPU and
//! the disk first. While it runs it holds a backup-kind repository lock, so GC does not
//! delete what it is reading.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::keys::Identities;
use super::restore::{self, Options};
use super::{BackupError, Manifest, Progress, Repository};
use crate::config::Config;

/// The scratch directory under the data directory.
pub const SCRATCH: &str = "verify-scratch";
/// Where verification records live in the repository.
pub const RECORDS: &str = "verifications";
/// Records kept in the repository (older ones are removed, except the newest success and
/// the newest failure).
pub const RECORDS_KEPT_MAX: usize = 20;
/// Free bytes left over on the data directory's filesystem after a verification's restore
/// at its largest (about twice the backup: its files, then the store built from them).
pub const DISK_RESERVE_BYTES: u64 = 256 << 20;
/// Nice value of the verification's threads (higher is lower priority).
pub const NICE: i32 = 10;

/// One verification's result, as recorded in the repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Its id (time-ordered, like a backup's).
    pub id: String,
    /// The backup it restored, if it got that far.
    pub backup: Option<String>,
    /// The node that ran it.
    pub node_id: u64,
    /// When it started and finished, ms since the epoch.
    pub started_ms: i64,
    pub finished_ms: i64,
    /// Whether the backup restored with equal hashes.
    pub ok: bool,
    /// Why not, when not.
    pub error: Option<String>,
    /// The restored log index and hashes (equal to the manifest's when `ok`).
    pub log_index: Option<u64>,
    pub state_hash: Option<String>,
    pub services_hash: Option<String>,
    /// Bytes restored.
    pub bytes: u64,
}

impl Record {
    /// Its object name: the outcome is in the name, so the newest success and failure are
    /// found from a listing.
    pub fn object_name(&self) -> String {
        let outcome = if self.ok { "ok" } else { "failed" };
        format!("{RECORDS}/{}-{outcome}", self.id)
    }

    /// How long it took, ms.
    pub fn duration_ms(&self) -> u64 {
        (self.finished_ms - self.started_ms).max(0) as u64
    }
}

/// Reads the record at `name`, checking its MAC.
pub async fn read_record(repository: &Repository, name: &str) -> Result<Record, BackupError> {
    let bytes = repository
        .repo
        .get(name)
        .await?
        .ok_or_else(|| BackupError::Store {
            object: name.to_owned(),
            detail: "no such verification record".into(),
            missing: true,
            exists: false,
        })?;
    super::manifest::open(&repository.key, name, &bytes)
}

/// Writes `record`, then removes the oldest records beyond [`RECORDS_KEPT_MAX`] (never
/// the newest success or failure).
pub async fn write_record(repository: &Repository, record: &Record) -> Result<(), BackupError> {
    let name = record.object_name();
    let sealed = super::manifest::seal(&repository.key, &name, record)?;
    repository.repo.put(&name, sealed).await?;
    let mut names: Vec<String> = repository
        .repo
        .list(RECORDS)
        .await?
        .into_iter()
        .map(|l| l.name)
        .collect();
    names.sort();
    let newest_ok = names.iter().rev().find(|n| n.ends_with("-ok")).cloned();
    let newest_failed = names.iter().rev().find(|n| n.ends_with("-failed")).cloned();
    let excess = names.len().saturating_sub(RECORDS_KEPT_MAX);
    for old in names.iter().take(excess) {
        if Some(old) != newest_ok.as_ref() && Some(old) != newest_failed.as_ref() {
            repository.repo.delete(old).await?;
        }
    }
    Ok(())
}

/// Removes whatever a crashed verification left under `data_dir`.
pub fn clean_scratch(data_dir: &Path) -> Result<(), BackupError> {
    let scratch = data_dir.join(SCRATCH);
    match std::fs::remove_dir_all(&scratch) {
        Ok(()) => {
            tracing::info!(dir = %scratch.display(), "removed a crashed verification's scratch directory");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BackupError::io(&scratch)(e)),
    }
}

/// Bytes a verification of backup `id` (`bytes` big) needs free; refused when `free` does
/// not cover them.
pub fn disk_needed(id: &str, bytes: u64, free: u64) -> Result<u64, BackupError> {
    let needed = bytes.saturating_mul(2).saturating_add(DISK_RESERVE_BYTES);
    if free < needed {
        return Err(BackupError::Invalid(format!(
            "not enough free disk to verify backup {id} by restore: it needs {needed} bytes \
             (twice its {bytes} bytes, plus a reserve of {DISK_RESERVE_BYTES}), {free} are free \
             on the data directory's filesystem; free space or verify elsewhere with \
             `tandem restore`"
        )));
    }
    Ok(needed)
}

/// What a successful verification restored.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The backup.
    pub backup: String,
    /// Its log index, state hash and services hash (equal to its manifest's).
    pub log_index: u64,
    pub state_hash: String,
    pub services_hash: String,
    /// Bytes restored.
    pub bytes: u64,
}

/// Restores the newest backup of `repository` into a fresh scratch directory under
/// `data_dir` and compares hashes with its manifest; the scratch directory is gone when
/// this returns, whatever happened. `Err` names the backup when it got that far.
pub async fn verify_newest(
    repository: &Repository,
    identities: &Identities,
    data_dir: &Path,
    config: &Config,
    progress: &Arc<Progress>,
) -> Result<Verified, (Option<String>, BackupError)> {
    let manifest = repository
        .latest()
        .await
        .map_err(|e| (None, e))?
        .ok_or_else(|| {
            (
                None,
                BackupError::Invalid("the repository holds no backup".into()),
            )
        })?;
    let id = manifest.id.clone();
    let fail = |e| (Some(id.clone()), e);
    let free = crate::node::metrics::free_bytes(data_dir).unwrap_or(0);
    disk_needed(&id, manifest.totals.bytes_scanned, free).map_err(fail)?;
    let scratch: PathBuf = data_dir
        .join(SCRATCH)
        .join(uuid::Uuid::new_v4().simple().to_string());
    let options = Options {
        data_dir: scratch.clone(),
        backup: Some(id.clone()),
        // The check is of the backup, not of this node's settings: a settings mismatch
        // is reported by `tandem restore`, where it matters.
        force: true,
        node_id: None,
        region: "verify".into(),
        config: config.clone(),
    };
    let result = restore::restore(repository, identities, &options, progress).await;
    let _ = std::fs::remove_dir_all(data_dir.join(SCRATCH));
    let restored = result.map_err(fail)?;
    if restored.state_hash != manifest.state_hash
        || restored.services_hash != manifest.services_hash
    {
        return Err(fail(BackupError::Corrupt {
            object: Manifest::object_name(&id),
            check: "state and services hashes".into(),
            detail: format!(
                "restored {} / {}, the manifest records {} / {}",
                restored.state_hash,
                restored.services_hash,
                manifest.state_hash,
                manifest.services_hash
            ),
        }));
    }
    Ok(Verified {
        backup: id,
        log_index: restored.log_index,
        state_hash: restored.state_hash,
        services_hash: restored.services_hash,
        bytes: restored.bytes,
    })
}

/// Lowers the calling thread's CPU (nice [`NICE`]) and I/O (best-effort, lowest level)
/// priority. Linux gives each thread its own; failures leave it as it was.
fn lower_priority() {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_BE: libc::c_long = 2;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    // SAFETY: gettid takes no argument; setpriority and ioprio_set act on this thread
    // only, with plain integer arguments.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE);
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            tid,
            (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | 7,
        );
    }
}

/// One verification of the newest backup, run at low priority on its own thread and
/// runtime; returns its record (also when it failed). `node_id` names the runner.
pub async fn run_once(
    config: Arc<Config>,
    data_dir: PathBuf,
    node_id: u64,
    progress: Arc<Progress>,
) -> Record {
    let started_ms = crate::clock::now_ms();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("backup-verify".into())
        .spawn(move || {
            lower_priority();
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_start(lower_priority)
                .build()
                .map_err(|e| {
                    (
                        None,
                        BackupError::Invalid(format!("verification runtime: {e}")),
                    )
                })
                .and_then(|runtime| {
                    runtime.block_on(locked_verify(&config, &data_dir, node_id, &progress))
                });
            let _ = tx.send(result);
        });
    let result = match spawned {
        Ok(_) => rx.await.unwrap_or_else(|_| {
            Err((
                None,
                BackupError::Invalid("the verification thread panicked".into()),
            ))
        }),
        Err(e) => Err((
            None,
            BackupError::Invalid(format!("verification thread: {e}")),
        )),
    };
    let finished_ms = crate::clock::now_ms().max(started_ms);
    let id = super::new_backup_id(started_ms);
    match result {
        Ok(v) => Record {
            id,
            backup: Some(v.backup),
            node_id,
            started_ms,
            finished_ms,
            ok: true,
            error: None,
            log_index: Some(v.log_index),
            state_hash: Some(v.state_hash),
            services_hash: Some(v.services_hash),
            bytes: v.bytes,
        },
        Err((backup, error)) => Record {
            id,
            backup,
            node_id,
            started_ms,
            finished_ms,
            ok: false,
            error: Some(error.to_string()),
            log_index: None,
            state_hash: None,
            services_hash: None,
            bytes: 0,
        },
    }
}

/// Opens the repository and the identity, holds a backup-kind lock (GC waits) and
/// verifies.
async fn locked_verify(
    config: &Config,
    data_dir: &Path,
    node_id: u64,
    progress: &Arc<Progress>,
) -> Result<Verified, (Option<String>, BackupError)> {
    let setup = async {
        let key = super::keys::RepoKey::read(&config.backup.repo_key_file)?;
        let identities = Identities::read(&config.backup.verify_identity_file)?;
        let repository = Repository::open(&config.backup.repo, key).await?;
        let lock = format!(
            "{}/backup-verify-n{node_id}-{}",
            super::create::LOCKS,
            super::new_backup_id(crate::clock::now_ms())
        );
        let guard = super::create::take_lock(&repository, &lock, "backup").await?;
        Ok::<_, BackupError>((repository, identities, guard))
    };
    let (repository, identities, guard) = setup.await.map_err(|e| (None, e))?;
    let result = verify_newest(&repository, &identities, data_dir, config, progress).await;
    guard.release(&repository).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_sort_by_time_and_carry_the_outcome() {
        let mut record = Record {
            id: super::super::new_backup_id(1_764_460_800_000),
            backup: None,
            node_id: 1,
            started_ms: 1_764_460_800_000,
            finished_ms: 1_764_460_801_500,
            ok: true,
            error: None,
            log_index: None,
            state_hash: None,
            services_hash: None,
            bytes: 0,
        };
        assert!(
            record
                .object_name()
                .starts_with("verifications/20251130T000000.000Z-")
        );
        assert!(record.object_name().ends_with("-ok"));
        record.ok = false;
        assert!(record.object_name().ends_with("-failed"));
        assert_eq!(record.duration_ms(), 1_500);
    }

    #[test]
    fn a_verification_needs_twice_the_backup_plus_the_reserve_free() {
        let bytes = 10 << 20;
        let needed = 2 * bytes + DISK_RESERVE_BYTES;
        assert_eq!(disk_needed("b", bytes, needed).expect("enough"), needed);
        let error = disk_needed("b", bytes, needed - 1).expect_err("short");
        assert!(
            error.to_string().contains("not enough free disk"),
            "{error}"
        );
        assert!(error.to_string().contains(&needed.to_string()), "{error}");
    }

    #[test]
    fn stale_scratch_is_removed_and_a_missing_one_is_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        clean_scratch(dir.path()).expect("nothing to remove");
        let leftover = dir.path().join(SCRATCH).join("crashed").join("store");
        std::fs::create_dir_all(&leftover).expect("mkdir");
        std::fs::write(leftover.join("data"), b"half a restore").expect("write");
        clean_scratch(dir.path()).expect("removed");
        assert!(!dir.path().join(SCRATCH).exists());
    }
}
