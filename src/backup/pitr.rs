//! Point-in-time restore (`tandem restore --at TIMESTAMP`): the newest backup taken at or
//! before the timestamp, plus the archived log after it, replayed offline up to and
//! including the last batch whose log time is at or before the timestamp.
//!
//! Steps: pick the base backup (its `started_ms` at or before `--at`; the state it holds is
//! older still); find the run of consecutive archive ranges of the base's cluster that
//! continues from the base's index, and refuse if there is none, if it stops at a gap
//! before reaching the timestamp, or if it ends before it (each refusal says how far the
//! archive reaches); download and check the base's checkpoint exactly as a plain restore
//! does (`super::restore::import_checkpoint`); then for each archive object of the run:
//! download, check its MAC, decrypt, check every record's index, append the records to the
//! new log and apply them through the node's own applier
//! ([`crate::cluster::state_machine::replay_committed`]). Entries that carry no time
//! (membership, blank, segment definitions) are held back until a timed entry at or
//! before the timestamp follows them, so the restore lands exactly on the last batch at or
//! before it. Then the result becomes a new cluster like any restore: a new checkpoint
//! (the replayed state, with the base backup's service sections, which the services
//! catch up from on start) as its initial snapshot, a new node id, a new cluster id.
//!
//! `--at now` restores as far as the archive reaches (after a lost cluster), refusing
//! only a gap. If the landing index is a later backup's, the replayed state hash must
//! equal that backup's: a free end-to-end check of the replay.

use std::fs;
use std::sync::Arc;

use super::archive::{self, Range};
use super::keys::Identities;
use super::manifest::Manifest;
use super::restore::{Options, Restored};
use super::{BackupError, Progress, Repository};
use crate::cluster::derived::{DerivedExport, DerivedSource, SnapshotSections};
use crate::cluster::snapshot::{SnapshotFile, Snapshots};
use crate::cluster::types::Entry;
use crate::log::Log;
use crate::node::format::{RESTORE_INCOMPLETE as INCOMPLETE, RESTORED};
use crate::store::{Store, StoreError};

/// Most entries without a time held back at once while looking for the next timed one.
const UNTIMED_HELD_MAX: usize = 100_000;

/// Where to restore to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The last batch at or before this time, ms since the epoch.
    At(i64),
    /// As far as the archive reaches.
    Latest,
}

impl Target {
    /// Parses `now`/`latest`, RFC 3339, or ms since the epoch.
    pub fn parse(text: &str) -> Result<Target, BackupError> {
        let text = text.trim();
        if text == "now" || text == "latest" {
            return Ok(Target::Latest);
        }
        if let Ok(ms) = text.parse::<i64>() {
            return Ok(Target::At(ms));
        }
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| Target::At(t.timestamp_millis()))
            .map_err(|e| {
                BackupError::Invalid(format!(
                    "--at {text:?}: {e}; give an RFC 3339 time (2026-11-30T14:00:00Z), ms since \
                     the epoch, or `now` (as far as the archive reaches)"
                ))
            })
    }

    fn time_ms(self) -> i64 {
        match self {
            Target::At(ms) => ms,
            Target::Latest => i64::MAX,
        }
    }
}

/// Formats ms since the epoch for messages.
pub fn show_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// Restores `repository` as of `target` into `options.data_dir` (`options.backup` is
/// ignored: the base is chosen by time).
pub async fn restore_at(
    repository: &Repository,
    identities: &Identities,
    options: &Options,
    target: Target,
    progress: &Arc<Progress>,
) -> Result<Restored, BackupError> {
    let manifests = repository.manifests().await?;
    let at_ms = target.time_ms();
    let base = manifests
        .iter()
        .filter(|m| m.started_ms <= at_ms)
        .max_by_key(|m| (m.started_ms, m.id.clone()))
        .cloned()
        .ok_or_else(|| match manifests.iter().map(|m| m.started_ms).min() {
            Some(oldest) => BackupError::Invalid(format!(
                "{} precedes every backup (the oldest started at {}): nothing to restore from",
                show_ms(at_ms),
                show_ms(oldest)
            )),
            None => BackupError::Invalid("the repository holds no backup".into()),
        })?;
    super::restore::check_data_format(&base)?;
    let forced = super::restore::mismatches(&base, &options.config);
    if !forced.is_empty() && !options.force {
        return Err(BackupError::Mismatch(forced.join("; ")));
    }
    let ranges = archive::list(repository, base.cluster_id.as_deref()).await?;
    let (run, end) = archive::run_from(&ranges, base.log_index + 1);
    let run: Vec<Range> = run.into_iter().cloned().collect();
    let after_gap = ranges
        .iter()
        .find(|r| end.map_or(r.first > base.log_index + 1, |e| r.first > e + 1));
    if let (Some(later), Target::Latest) = (after_gap, target) {
        return Err(BackupError::Invalid(format!(
            "the archive has a gap: after backup {} (index {}) it reaches index {}, then \
             resumes at {} ({}); restore --at a time before the gap, or from a backup after it",
            base.id,
            base.log_index,
            end.unwrap_or(base.log_index),
            later.first,
            later.name
        )));
    }
    super::restore::prepare_dir(&options.data_dir)?;
    let result = restore_into(
        repository, identities, options, &manifests, &base, &run, target, forced, progress,
    )
    .await;
    if result.is_err() {
        let _ = fs::remove_dir_all(&options.data_dir);
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn restore_into(
    repository: &Repository,
    identities: &Identities,
    options: &Options,
    manifests: &[Manifest],
    base: &Manifest,
    run: &[Range],
    target: Target,
    forced: Vec<String>,
    progress: &Arc<Progress>,
) -> Result<Restored, BackupError> {
    let dir = options.data_dir.clone();
    let snapshots = Snapshots::open(&dir).map_err(BackupError::io(&dir))?;
    let file = snapshots
        .new_snapshot("base")
        .map_err(BackupError::io(&dir))?;
    progress.phase(&format!("downloading backup {}", base.id));
    for entry in &base.files {
        super::restore::download_file(repository, identities, entry, &file, progress).await?;
    }
    progress.phase("importing the base backup");
    let (opts, manifest, base_file) = (options.clone(), base.clone(), file.clone());
    let (log, store, _, _) = tokio::task::spawn_blocking(move || {
        super::restore::import_checkpoint(&opts, &manifest, &base_file)
    })
    .await
    .map_err(|e| BackupError::Invalid(format!("restore worker: {e}")))??;
    let mut replay = Replay {
        log,
        store,
        at_ms: target.time_ms(),
        next: base.log_index + 1,
        landed: base.log_index,
        landed_ms: None,
        held: Vec::new(),
        passed: false,
        replayed: 0,
    };
    for range in run {
        if replay.passed {
            break;
        }
        let bytes =
            repository
                .repo
                .get(&range.name)
                .await?
                .ok_or_else(|| BackupError::Corrupt {
                    object: range.name.clone(),
                    check: "presence".into(),
                    detail: "listed but gone".into(),
                })?;
        let (header, ciphertext) = archive::open(repository, &range.name, &bytes)?;
        let entries = archive::decode(identities, &range.name, &header, ciphertext)?;
        replay = tokio::task::spawn_blocking(move || replay.feed(entries).map(|()| replay))
            .await
            .map_err(|e| BackupError::Invalid(format!("replay worker: {e}")))??;
        progress.phase(&format!(
            "replayed {} entries: at index {} (log time {})",
            replay.replayed,
            replay.landed,
            replay.landed_ms.map_or("-".into(), show_ms)
        ));
    }
    if let Target::At(at_ms) = target
        && !replay.passed
    {
        let reach = run.last().map_or(base.log_index, |r| r.last);
        return Err(BackupError::Invalid(format!(
            "the archive does not reach {}: after backup {} it ends at index {reach} (last \
                 batch at {}); restore --at an earlier time, or --at now for all of it",
            show_ms(at_ms),
            base.id,
            replay.landed_ms.map_or("no later batch".into(), show_ms)
        )));
    }
    progress.phase("making it a new cluster");
    let (options, base, later) = (options.clone(), base.clone(), manifests.to_vec());
    tokio::task::spawn_blocking(move || {
        finish(&options, &base, &later, &snapshots, &file, replay, forced)
    })
    .await
    .map_err(|e| BackupError::Invalid(format!("restore worker: {e}")))?
}

/// The offline replay's state.
struct Replay {
    log: Log,
    store: Store,
    /// Replay what is at or before this log time.
    at_ms: i64,
    /// The next index expected.
    next: u64,
    /// The last index applied, and its log time.
    landed: u64,
    landed_ms: Option<i64>,
    /// Entries without a time since the last applied one.
    held: Vec<(Entry, Vec<u8>)>,
    /// An entry later than `at_ms` was seen: the replay is complete.
    passed: bool,
    /// Entries applied.
    replayed: u64,
}

impl Replay {
    /// Takes one object's entries (overlaps with what was applied are skipped).
    fn feed(&mut self, entries: Vec<(Entry, Vec<u8>)>) -> Result<(), BackupError> {
        let mut batch: Vec<(Entry, Vec<u8>)> = Vec::new();
        for (entry, record) in entries {
            if entry.log_id.index < self.next {
                continue;
            }
            self.next = entry.log_id.index + 1;
            match archive::entry_time_ms(&entry) {
                Some(ms) if ms > self.at_ms => {
                    self.passed = true;
                    break;
                }
                Some(ms) => {
                    batch.append(&mut self.held);
                    self.landed = entry.log_id.index;
                    self.landed_ms = Some(ms);
                    batch.push((entry, record));
                }
                None if self.at_ms == i64::MAX => {
                    self.landed = entry.log_id.index;
                    batch.push((entry, record));
                }
                None => {
                    if self.held.len() >= UNTIMED_HELD_MAX {
                        return Err(BackupError::Invalid(format!(
                            "over {UNTIMED_HELD_MAX} entries without a time in a row at index {}",
                            entry.log_id.index
                        )));
                    }
                    self.held.push((entry, record));
                }
            }
        }
        self.apply(&batch)
    }

    /// Appends `batch` to the log and applies it.
    fn apply(&mut self, batch: &[(Entry, Vec<u8>)]) -> Result<(), BackupError> {
        let invalid = |what: &str, e: String| BackupError::Invalid(format!("{what}: {e}"));
        for slice in batch.chunks(1024) {
            let records: Vec<(u64, &[u8])> = slice
                .iter()
                .map(|(e, r)| (e.log_id.index, r.as_slice()))
                .collect();
            self.log
                .append(&records)
                .map_err(|e| invalid("appending to the new log", e.to_string()))?;
            let entries: Vec<Entry> = slice.iter().map(|(e, _)| e.clone()).collect();
            crate::cluster::state_machine::replay_committed(&self.store, &entries)
                .map_err(|e| invalid("replaying archived entries", e.to_string()))?;
            self.replayed += slice.len() as u64;
        }
        Ok(())
    }
}

/// The replayed state made the initial snapshot of a new cluster. Blocking.
fn finish(
    options: &Options,
    base: &Manifest,
    manifests: &[Manifest],
    snapshots: &Snapshots,
    base_file: &SnapshotFile,
    replay: Replay,
    forced: Vec<String>,
) -> Result<Restored, BackupError> {
    let dir = &options.data_dir;
    let io_err = super::restore::io_err(dir);
    let Replay {
        log,
        store,
        landed,
        landed_ms,
        ..
    } = replay;
    // What the applier leaves held back is not part of the new log.
    if log.last_index().is_some_and(|last| last > landed) {
        log.truncate_from(landed + 1)
            .map_err(|e| BackupError::Invalid(e.to_string()))?;
    }
    log.sync()
        .map_err(|e| BackupError::Invalid(format!("syncing the new log: {e}")))?;
    let corrupt = |e: StoreError| BackupError::Corrupt {
        object: "replayed state".into(),
        check: "state".into(),
        detail: e.to_string(),
    };
    let state_hash = store.reader().state_hash().map_err(corrupt)?;
    // A later backup at the landing index recorded the state there: they must agree.
    if let Some(later) = manifests.iter().find(|m| {
        m.log_index == landed && m.cluster_id == base.cluster_id && m.state_hash != state_hash
    }) {
        return Err(BackupError::Corrupt {
            object: Manifest::object_name(&later.id),
            check: "replayed state hash".into(),
            detail: format!(
                "replaying the archive to index {landed} gives {state_hash}, backup {} \
                 recorded {}",
                later.id, later.state_hash
            ),
        });
    }
    let (meta, node_id) = super::restore::rebase_as_new_cluster(&store, options)?;
    let last = meta
        .last_log_id
        .filter(|id| id.index == landed)
        .ok_or_else(|| {
            BackupError::Invalid(format!("the replayed state is not at index {landed}"))
        })?;
    let file = snapshots.new_snapshot("restored").map_err(&io_err)?;
    let sections = BaseSections(base_file.state_path());
    let meta = crate::cluster::state_machine::write_checkpoint(&store, Some(&sections), &file)
        .map_err(&io_err)?;
    crate::cluster::log_store::start_new_cluster(&log, last, node_id)
        .map_err(|e| BackupError::Invalid(format!("preparing the log: {e}")))?;
    let (_, services) = super::create::checkpoint_hashes(&file.state_path())?;
    let services_hash = super::create::services_hash(&services);
    drop(store);
    drop(log);
    snapshots
        .set_current(&meta, &file)
        .and_then(|()| snapshots.set_services_pending(&file))
        .map_err(&io_err)?;
    let _ = fs::remove_dir_all(&base_file.path);
    let cluster_id = uuid::Uuid::new_v4().simple().to_string();
    crate::cluster::identity::write_id(&dir.join(crate::cluster::identity::FILE), &cluster_id)
        .map_err(&io_err)?;
    let restored = Restored {
        backup: base.id.clone(),
        log_index: landed,
        state_hash,
        services_hash,
        cluster_id,
        node_id,
        source_cluster_id: base.cluster_id.clone(),
        forced,
        bytes: base.totals.bytes_scanned,
        log_time_ms: landed_ms,
    };
    let record =
        serde_json::to_vec_pretty(&restored).map_err(|e| BackupError::Invalid(e.to_string()))?;
    super::restore::write_durably(&dir.join(RESTORED), &record).map_err(&io_err)?;
    crate::crash::point("restore:before-complete");
    fs::remove_file(dir.join(INCOMPLETE)).map_err(&io_err)?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(&io_err)?;
    Ok(restored)
}

/// The base backup's service sections, copied into the new checkpoint: the services start
/// from them and catch up from the replayed feed.
struct BaseSections(std::path::PathBuf);

impl DerivedSource for BaseSections {
    fn export(&self) -> Result<Box<dyn DerivedExport>, String> {
        Ok(Box::new(SnapshotSections::open(&self.0)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_as_rfc3339_ms_or_now() {
        assert_eq!(Target::parse("now").unwrap(), Target::Latest);
        assert_eq!(
            Target::parse("1764511200000").unwrap(),
            Target::At(1_764_511_200_000)
        );
        assert_eq!(
            Target::parse("2025-11-30T14:00:00Z").unwrap(),
            Target::At(1_764_511_200_000)
        );
        let error = Target::parse("yesterday").unwrap_err().to_string();
        assert!(error.contains("RFC 3339"), "{error}");
    }
}
