//! `tandem restore`: a node data directory built from a backup, as the first node of a
//! **new** cluster.
//!
//! Steps: check the manifest (MAC, format, apply settings — a mismatch is refused unless
//! forced); download every chunk, decrypt it and check its name, rebuild each file and
//! check its keyed hash; stamp the data format; import the state into a fresh store and
//! check that its state hash and the services' hash equal the manifest's (the state at
//! the backup's log position, as the source had it); install the log segments; then make
//! it a new cluster ([`crate::cluster::state_machine::rebase_for_new_cluster`]: a new
//! node id as the only voter; [`crate::cluster::log_store::start_new_cluster`]: every
//! restored entry purged and committed, the vote at the backup's term), install the
//! checkpoint as the current snapshot with the services' state pending (imported when the
//! node starts), and write a new cluster id.
//!
//! Why a snapshot and not a fresh log: the applier refuses an index below the state's,
//! and openraft purges the log behind snapshots; so the restored state is the new
//! cluster's initial snapshot at the backup's index, and the new cluster appends after
//! it. Nodes that join it receive that snapshot (and the segments, the event bodies).
//!
//! Anything that fails leaves no half-built directory behind: the directory is removed
//! (it must have been empty or absent at the start), and a crash mid-restore leaves no
//! `RESTORED` marker, which a node refuses to start without once a restore began
//! (`restore-incomplete` marker).

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::keys::Identities;
use super::manifest::{self, ChunkRef, FileEntry, Manifest};
use super::pipeline::Parallelism;
use super::{BackupError, Progress, Repository};
use crate::cluster::Member;
use crate::cluster::snapshot::{SnapshotFile, Snapshots};
use crate::config::Config;
use crate::log::{Log, LogOptions};
use crate::store::{Store, StoreConfig};

use crate::node::format::{DATA_FORMAT, RESTORE_INCOMPLETE as INCOMPLETE, RESTORED};

/// Buffer of a restored file's writes, bytes: a few chunks per write call.
const WRITE_BUFFER_BYTES: usize = 4 << 20;

/// What to restore, where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The new data directory (absent or empty).
    pub data_dir: PathBuf,
    /// The backup (default: the newest).
    pub backup: Option<String>,
    /// Restore despite a format or apply-settings mismatch.
    pub force: bool,
    /// The new node's id (default: one above every id of the old cluster).
    pub node_id: Option<u64>,
    /// The new node's region.
    pub region: String,
    /// The configuration the restored node will run with (its apply settings are
    /// compared with the backup's).
    pub config: Config,
}

/// What a restore did (also written to `<data>/RESTORED`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restored {
    /// The backup restored.
    pub backup: String,
    /// The log position the restored state is at.
    pub log_index: u64,
    /// State hash of the restored state (checked equal to the backup's).
    pub state_hash: String,
    /// Services hash of the restored services' state (checked equal to the backup's).
    pub services_hash: String,
    /// The new cluster's id.
    pub cluster_id: String,
    /// The node id to start the restored node with.
    pub node_id: u64,
    /// The cluster the backup came from.
    pub source_cluster_id: Option<String>,
    /// Mismatches overridden by `--force`.
    pub forced: Vec<String>,
    /// Bytes restored.
    pub bytes: u64,
    /// Point-in-time restores: the log time of the last batch replayed, ms since the epoch.
    #[serde(default)]
    pub log_time_ms: Option<i64>,
}

/// Refuses a backup whose state and log are in a newer data format than this build reads:
/// they would be misread (a build of data format 3 importing a format-4 state, for one,
/// would miss every dedup key stored since). Not something `--force` can override.
pub fn check_data_format(manifest: &Manifest) -> Result<(), BackupError> {
    match manifest.data_format {
        Some(format) if format > DATA_FORMAT => Err(BackupError::Invalid(format!(
            "backup {} holds data format {format}; this build reads data format {DATA_FORMAT} \
             and older. Restore it with a build of data format {format} or newer (`tandem \
             --version` names a build's)",
            manifest.id
        ))),
        _ => Ok(()),
    }
}

/// Checks a manifest against this build and `config`; returns the mismatches.
pub fn mismatches(manifest: &Manifest, config: &Config) -> Vec<String> {
    let mut found = Vec::new();
    if manifest.format != manifest::FORMAT_VERSION {
        found.push(format!(
            "backup {} is in format {}; this build writes format {}",
            manifest.id,
            manifest.format,
            manifest::FORMAT_VERSION
        ));
    }
    let here = config.apply_record();
    if manifest.apply != here {
        let mut keys: Vec<String> = Vec::new();
        if let (Some(a), Some(b)) = (manifest.apply.as_object(), here.as_object()) {
            for (key, value) in a {
                if b.get(key) != Some(value) {
                    keys.push(key.clone());
                }
            }
            for key in b.keys() {
                if !a.contains_key(key) {
                    keys.push(key.clone());
                }
            }
        }
        found.push(format!(
            "backup {} was applied with other settings ({}) than this configuration: the same \
             log would not give the same state. Restore with the configuration the cluster \
             ran with, or pass --force",
            manifest.id,
            keys.join(", ")
        ));
    }
    found
}

/// Restores a backup of `repository` into `options.data_dir`.
pub async fn restore(
    repository: &Repository,
    identities: &Identities,
    options: &Options,
    progress: &Arc<Progress>,
) -> Result<Restored, BackupError> {
    let manifest = match &options.backup {
        Some(id) => repository.manifest(id).await?,
        None => repository
            .latest()
            .await?
            .ok_or_else(|| BackupError::Invalid("the repository holds no backup".into()))?,
    };
    check_data_format(&manifest)?;
    let forced = mismatches(&manifest, &options.config);
    if !forced.is_empty() && !options.force {
        return Err(BackupError::Mismatch(forced.join("; ")));
    }
    let dir = &options.data_dir;
    prepare_dir(dir)?;
    let result = restore_into(repository, identities, options, &manifest, forced, progress).await;
    if result.is_err() {
        // Nothing half-built stays: the directory was empty or absent when we began.
        let _ = fs::remove_dir_all(dir);
    }
    result
}

pub(super) fn prepare_dir(dir: &Path) -> Result<(), BackupError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::Invalid(format!(
                    "{} is not empty; restore into a new directory",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(BackupError::io(dir))?;
        }
        Err(e) => return Err(BackupError::io(dir)(e)),
    }
    let marker = dir.join(INCOMPLETE);
    File::create(&marker)
        .and_then(|f| f.sync_all())
        .map_err(BackupError::io(&marker))
}

async fn restore_into(
    repository: &Repository,
    identities: &Identities,
    options: &Options,
    manifest: &Manifest,
    forced: Vec<String>,
    progress: &Arc<Progress>,
) -> Result<Restored, BackupError> {
    let dir = options.data_dir.clone();
    let snapshots = Snapshots::open(&dir).map_err(BackupError::io(&dir))?;
    let file = snapshots
        .new_snapshot("restored")
        .map_err(BackupError::io(&dir))?;
    progress
        .total
        .store(manifest.totals.bytes_scanned, Ordering::Relaxed);
    progress.phase("downloading");
    for entry in &manifest.files {
        download_file(repository, identities, entry, &file, progress).await?;
    }
    crate::crash::point("restore:downloaded");
    progress.phase("importing the state");
    let (options, manifest) = (options.clone(), manifest.clone());
    let restored = tokio::task::spawn_blocking(move || {
        build_data_dir(&options, &manifest, &snapshots, &file, forced)
    })
    .await
    .map_err(|e| BackupError::Invalid(format!("restore worker: {e}")))??;
    progress.phase("done");
    Ok(restored)
}

/// Downloads one file of the backup into the snapshot directory, checking every chunk and
/// the whole file's hash. Chunks are fetched and opened (decrypted, decompressed, name
/// checked) [`Parallelism::in_flight`] at a time on blocking threads, and written in
/// order as they come.
pub(super) async fn download_file(
    repository: &Repository,
    identities: &Identities,
    entry: &FileEntry,
    into: &SnapshotFile,
    progress: &Arc<Progress>,
) -> Result<(), BackupError> {
    let path = local_path(into, &entry.name)?;
    let mut out = BufWriter::with_capacity(
        WRITE_BUFFER_BYTES,
        File::create(&path).map_err(BackupError::io(&path))?,
    );
    let mut hasher = repository.key.file_hasher();
    let mut size = 0_u64;
    let parallelism = Parallelism::new(0);
    let context = Arc::new((repository.clone(), identities.clone()));
    let mut opened = futures::stream::iter(entry.chunks.iter().cloned())
        .map(|chunk| open_chunk(Arc::clone(&context), chunk, &entry.name))
        .buffered(parallelism.in_flight);
    while let Some(chunk) = opened.next().await {
        let (stored, plain) = chunk?;
        progress.transferred.fetch_add(stored, Ordering::Relaxed);
        hasher.update(&plain);
        out.write_all(&plain).map_err(BackupError::io(&path))?;
        size += plain.len() as u64;
        progress
            .done
            .fetch_add(plain.len() as u64, Ordering::Relaxed);
    }
    let file = out
        .into_inner()
        .map_err(|e| BackupError::io(&path)(e.into_error()))?;
    file.sync_all().map_err(BackupError::io(&path))?;
    let hash = hasher.finalize().to_hex().to_string();
    if size != entry.size || hash != entry.hash {
        return Err(BackupError::Corrupt {
            object: entry.name.clone(),
            check: "file size and keyed hash".into(),
            detail: format!("rebuilt {size} bytes, the manifest says {}", entry.size),
        });
    }
    Ok(())
}

/// Fetches chunk `chunk` of file `file` and opens it on a blocking thread; returns its
/// stored size and its checked plaintext.
async fn open_chunk(
    context: Arc<(Repository, Identities)>,
    chunk: ChunkRef,
    file: &str,
) -> Result<(u64, Vec<u8>), BackupError> {
    let object = manifest::chunk_object(&chunk.id);
    let sealed = context
        .0
        .repo
        .get(&object)
        .await?
        .ok_or_else(|| BackupError::Corrupt {
            object: object.clone(),
            check: "presence".into(),
            detail: format!("missing, and backup needs it for {file}"),
        })?;
    let stored = sealed.len() as u64;
    let plain = tokio::task::spawn_blocking(move || {
        let (repository, identities) = &*context;
        repository.open_chunk(identities, &chunk.id, chunk.len, &sealed)
    })
    .await
    .map_err(|e| BackupError::Invalid(format!("restore worker: {e}")))??;
    Ok((stored, plain))
}

/// Where a backup file goes in the snapshot directory; refuses any other name.
fn local_path(into: &SnapshotFile, name: &str) -> Result<PathBuf, BackupError> {
    if name == "state" {
        return Ok(into.state_path());
    }
    let segment = name
        .strip_prefix("log/")
        .filter(|s| {
            s.strip_suffix(".seg")
                .is_some_and(|stem| !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()))
        })
        .ok_or_else(|| BackupError::Invalid(format!("the manifest names a file {name:?}")))?;
    Ok(into
        .path
        .join(crate::cluster::snapshot::LOG_DIR)
        .join(segment))
}

pub(super) fn io_err(dir: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |e| BackupError::io(dir)(e)
}

/// The downloaded checkpoint `file` of `manifest` made the content of a fresh log and store
/// in `options.data_dir`: the state imported and checked against the manifest's hashes,
/// the segments installed. Returns them with the state and services hashes. Blocking.
pub(super) fn import_checkpoint(
    options: &Options,
    manifest: &Manifest,
    file: &SnapshotFile,
) -> Result<(Log, Store, String, String), BackupError> {
    let dir = &options.data_dir;
    crate::node::format::check_or_stamp(dir).map_err(|e| BackupError::Invalid(e.to_string()))?;
    let log = Log::open(LogOptions {
        segment_bytes_max: options.config.storage.segment_mb << 20,
        ..LogOptions::new(dir.join("log"))
    })
    .map_err(|e| BackupError::Invalid(format!("opening the new log: {e}")))?;
    let store = Store::open(
        StoreConfig {
            path: Store::dir_in(dir),
            cache_bytes: options.config.storage.cache_mb.min(64) << 20,
            apply: options.config.apply_settings(),
        },
        log.clone(),
    )
    .map_err(|e| BackupError::Invalid(format!("opening the new store: {e}")))?;
    let state = file.state_path();
    let corrupt = |e: crate::store::StoreError| BackupError::Corrupt {
        object: "state".into(),
        check: "snapshot stream".into(),
        detail: e.to_string(),
    };
    Store::verify_snapshot(&mut BufReader::new(
        File::open(&state).map_err(io_err(&state))?,
    ))
    .map_err(corrupt)?;
    store
        .import(&mut BufReader::with_capacity(
            256 << 10,
            File::open(&state).map_err(io_err(&state))?,
        ))
        .map_err(corrupt)?;
    let state_hash = store.reader().state_hash().map_err(corrupt)?;
    let (_, services) = super::create::checkpoint_hashes(&state)?;
    let services_hash = super::create::services_hash(&services);
    if state_hash != manifest.state_hash || services_hash != manifest.services_hash {
        return Err(BackupError::Corrupt {
            object: Manifest::object_name(&manifest.id),
            check: "state and services hashes".into(),
            detail: format!(
                "the restored state hashes to {state_hash} / {services_hash}, the backup \
                 recorded {} / {}",
                manifest.state_hash, manifest.services_hash
            ),
        });
    }
    // The log: the backup's segments, hard-linked from the restored snapshot.
    let segments = file.log_files().map_err(io_err(&file.path))?;
    if !segments.is_empty() {
        let staging = file.path.join("install");
        fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        let mut linked = Vec::with_capacity(segments.len());
        for source in &segments {
            let target = staging.join(source.file_name().unwrap_or_default());
            fs::hard_link(source, &target).map_err(io_err(&target))?;
            linked.push(target);
        }
        log.install(&linked, manifest.log_index)
            .map_err(|e| BackupError::Invalid(format!("installing the log: {e}")))?;
        let _ = fs::remove_dir_all(&staging);
    }
    // The dedup index is derived from the state and the log: now that both are in place.
    store
        .rebuild_dedup_index()
        .map_err(|e| BackupError::Invalid(format!("building the dedup index: {e}")))?;
    Ok((log, store, state_hash, services_hash))
}

/// Makes the restored `store` the state of a new cluster whose only voter is the new node
/// (`options.node_id`, or one above every old id); returns the new snapshot meta and id.
pub(super) fn rebase_as_new_cluster(
    store: &Store,
    options: &Options,
) -> Result<(crate::cluster::types::SnapshotMeta, u64), BackupError> {
    // The addresses are unknown until the node starts; it writes them in then
    // (`crate::cluster::membership::refresh_own_address`).
    let member = Member {
        url: String::new(),
        peer_url: String::new(),
        region: options.region.clone(),
    };
    crate::cluster::state_machine::rebase_for_new_cluster(store, options.node_id, member)
        .map_err(|e| BackupError::Invalid(e.to_string()))
}

/// The local half: a data directory from the downloaded checkpoint. Blocking.
fn build_data_dir(
    options: &Options,
    manifest: &Manifest,
    snapshots: &Snapshots,
    file: &SnapshotFile,
    forced: Vec<String>,
) -> Result<Restored, BackupError> {
    let dir = &options.data_dir;
    let (log, store, state_hash, services_hash) = import_checkpoint(options, manifest, file)?;
    let (meta, node_id) = rebase_as_new_cluster(&store, options)?;
    let last = meta
        .last_log_id
        .ok_or_else(|| BackupError::Invalid("the backup has no log position".into()))?;
    if last.index != manifest.log_index {
        return Err(BackupError::Corrupt {
            object: Manifest::object_name(&manifest.id),
            check: "log position".into(),
            detail: format!(
                "the state is at index {}, the manifest says {}",
                last.index, manifest.log_index
            ),
        });
    }
    crate::cluster::log_store::start_new_cluster(&log, last, node_id)
        .map_err(|e| BackupError::Invalid(format!("preparing the log: {e}")))?;
    drop(store);
    drop(log);
    snapshots
        .set_current(&meta, file)
        .and_then(|()| snapshots.set_services_pending(file))
        .map_err(io_err(dir))?;
    let cluster_id = uuid::Uuid::new_v4().simple().to_string();
    crate::cluster::identity::write_id(&dir.join(crate::cluster::identity::FILE), &cluster_id)
        .map_err(io_err(dir))?;
    let restored = Restored {
        backup: manifest.id.clone(),
        log_index: manifest.log_index,
        state_hash,
        services_hash,
        cluster_id,
        node_id,
        source_cluster_id: manifest.cluster_id.clone(),
        forced,
        bytes: manifest.totals.bytes_scanned,
        log_time_ms: None,
    };
    let record =
        serde_json::to_vec_pretty(&restored).map_err(|e| BackupError::Invalid(e.to_string()))?;
    write_durably(&dir.join(RESTORED), &record).map_err(io_err(dir))?;
    crate::crash::point("restore:before-complete");
    fs::remove_file(dir.join(INCOMPLETE)).map_err(io_err(dir))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(restored)
}

pub(super) fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = path.with_extension("tmp");
    let mut out = File::create(&temp)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    fs::rename(&temp, path)
}
