//! The Raft state machine: committed entries applied to the [`Store`], and snapshots.
//!
//! - `apply` runs the store's deterministic [`crate::store::apply::Applier`] over every
//!   entry openraft hands over in one call, in one atomic write batch (in a blocking
//!   thread), together with the applied log id and membership, then answers the proposers.
//!   An entry that fails to apply (a damaged block, a broken invariant) is never skipped:
//!   the error stops Raft on this node (fail-stop), because skipping would let this
//!   replica diverge silently from the others.
//! - a snapshot is a directory ([`super::snapshot`]): the state streamed from one
//!   consistent store snapshot ([`Store::export`]) followed by one section per CDP service
//!   — its cursor and derived state, each from one consistent view of its own database,
//!   taken just before the store's ([`DerivedState::export`]) — and the log segments
//!   up to the snapshot's index, hard-linked ([`crate::log::Log::checkpoint_to`]). Building
//!   one first fsyncs the state, since openraft may purge the log it covers. Installing
//!   verifies the whole state file (every checksum), marks it current (so a crash
//!   mid-install re-installs it at start-up) and its services pending, replaces the state,
//!   then the log (unless this node's log already holds the snapshot's last entry), then
//!   each service's state ([`DerivedState::import`]), then clears the pending mark.
//!
//! The services start after Raft (which may install a snapshot while it starts), so the
//! state machine reaches them through a slot that the node fills once they run
//! ([`StateMachine::attach_services`]). Until then snapshots are built without service
//! sections, and an installed snapshot's services stay pending; attaching imports them.
//! A pending mark left by a crash is imported the same way at the next start.
//!
//! Why the pieces need not be taken at the same instant: the store part is at some feed
//! head `h` and a service's section at its own cursor `c`. The feed is a deterministic
//! function of the log, so the state at `c` is one this replica's service reaches by
//! itself once its feed reaches `c`, whether `c` is behind `h` or ahead of it; from there
//! it follows the feed as usual (see `crate::services::supervisor`). Taking the
//! services' views first makes `c <= h`, the regime a running node is always in. A
//! snapshot without sections (built before the services ran) leaves the services as they
//! are: they catch up from the feed.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::TryStreamExt;
use futures::stream::Stream;
use openraft::EntryPayload;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use serde::{Deserialize, Serialize};

use super::derived::{DerivedExport, DerivedSource, DerivedState, SnapshotSections};
use super::log_store::log_id_at;
use super::snapshot::{SnapshotFile, Snapshots};
use super::types::{LogId, Snapshot, SnapshotMeta, StoredMembership};
use super::{CommandResult, TypeConfig};
use crate::store::replicated::{Committed, SectionReader, SectionWriter};
use crate::store::{Store, StoreError};

/// First wait before the pending services' state of an installed snapshot is tried
/// again (a service's database still opening, or an import failed); it doubles up to
/// [`IMPORT_RETRY_MAX`].
const IMPORT_RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest wait between two attempts to import pending services' state.
const IMPORT_RETRY_MAX: Duration = Duration::from_secs(30);
/// Imports of pending services' state that may fail (with every database open) before the
/// services start over from the feed instead.
const IMPORT_ATTEMPTS_MAX: u32 = 5;

/// How far the state got, as stored with it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// Labels of a snapshot measurement: `build` (made here) or `install` (received).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct SnapshotKind {
    /// `build` or `install`.
    pub kind: &'static str,
}

/// A histogram family's constructor (a plain fn, so the family type can be named).
type HistogramFn = fn() -> prometheus_client::metrics::histogram::Histogram;

fn snapshot_histogram() -> prometheus_client::metrics::histogram::Histogram {
    // 10 ms … ~5.5 min: a snapshot of a small state takes milliseconds, of a large one
    // minutes.
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 16),
    )
}

/// What snapshots cost, for the node's registry (`tandem_snapshot_*`): durations of the
/// builds and installs that completed, and the bytes they covered (state file plus
/// hard-linked log segments). Clones share the values.
#[derive(Clone, Debug)]
pub struct SnapshotMetrics {
    /// Seconds per completed build or install; the count is the number of them.
    pub duration: prometheus_client::metrics::family::Family<
        SnapshotKind,
        prometheus_client::metrics::histogram::Histogram,
        HistogramFn,
    >,
    /// Bytes of the snapshots built or installed.
    pub bytes: prometheus_client::metrics::family::Family<
        SnapshotKind,
        prometheus_client::metrics::counter::Counter,
    >,
    /// Builds or installs that failed.
    pub failures: prometheus_client::metrics::family::Family<
        SnapshotKind,
        prometheus_client::metrics::counter::Counter,
    >,
}

impl Default for SnapshotMetrics {
    fn default() -> Self {
        let metrics = SnapshotMetrics {
            duration: prometheus_client::metrics::family::Family::new_with_constructor(
                snapshot_histogram,
            ),
            bytes: Default::default(),
            failures: Default::default(),
        };
        // Both kinds exist from the start, so a scrape shows zeros rather than nothing.
        for kind in ["build", "install"] {
            let labels = SnapshotKind { kind };
            drop(metrics.duration.get_or_create(&labels));
            drop(metrics.bytes.get_or_create(&labels));
            drop(metrics.failures.get_or_create(&labels));
        }
        metrics
    }
}

impl SnapshotMetrics {
    /// Records one build or install that ended with `result` after `started`.
    fn record<T>(
        &self,
        kind: &'static str,
        started: std::time::Instant,
        result: &io::Result<T>,
        bytes: impl FnOnce(&T) -> u64,
    ) {
        let labels = SnapshotKind { kind };
        match result {
            Ok(done) => {
                self.duration
                    .get_or_create(&labels)
                    .observe(started.elapsed().as_secs_f64());
                self.bytes.get_or_create(&labels).inc_by(bytes(done));
            }
            Err(_) => {
                self.failures.get_or_create(&labels).inc();
            }
        }
    }
}

/// The state machine handle; clones share everything.
#[derive(Clone)]
pub struct StateMachine {
    store: Arc<Store>,
    snapshots: Snapshots,
    /// The applied state after the last apply (loaded from the store on first use).
    applied: Arc<Mutex<Option<AppliedState>>>,
    /// The CDP services' derived state, once they run.
    services: Arc<OnceLock<Arc<dyn DerivedState>>>,
    /// Held while importing services' state, and while a checkpoint decides where the
    /// services' sections come from, so imports never overlap and a checkpoint never pairs
    /// the store with services' state older than an install. Never held while waiting for
    /// a service's database: an install takes it on Raft's apply path.
    services_import: Arc<Mutex<()>>,
    /// Set while a thread imports the pending services' state in the background
    /// ([`StateMachine::import_pending_in_background`]).
    importing: Arc<AtomicBool>,
    /// Snapshot builds and installs, for the node's metrics.
    metrics: SnapshotMetrics,
    /// The last log index whose effects the store shows, published the moment an apply
    /// batch is committed (from the applying thread) or a snapshot installed — before
    /// openraft's own metrics learn of it through its core task. Reads wait on it
    /// ([`StateMachine::applied_index`]).
    applied_index: Arc<tokio::sync::watch::Sender<u64>>,
    /// Durations of [`RaftStateMachine::apply`] calls, seconds (the node exports them).
    apply_seconds: prometheus_client::metrics::histogram::Histogram,
}

fn io(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}

fn store_io(error: StoreError) -> io::Error {
    io(error)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(io)?
}

impl StateMachine {
    /// A state machine over `store`, keeping snapshots in `snapshots`.
    pub fn new(store: Arc<Store>, snapshots: Snapshots) -> StateMachine {
        StateMachine {
            store,
            snapshots,
            applied: Arc::new(Mutex::new(None)),
            services: Arc::new(OnceLock::new()),
            services_import: Arc::new(Mutex::new(())),
            importing: Arc::new(AtomicBool::new(false)),
            metrics: SnapshotMetrics::default(),
            applied_index: Arc::new(tokio::sync::watch::Sender::new(0)),
            apply_seconds: super::stage_histogram(),
        }
    }

    /// Durations of apply calls (a batch of committed entries each), seconds.
    pub fn apply_seconds(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.apply_seconds
    }

    /// The last log index the store shows the effects of (0 until the first apply or
    /// install of this run; a reader of it also checks Raft's own applied index). It only
    /// grows, and the state is visible to a new store reader before it moves.
    pub fn applied_index(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_index.subscribe()
    }

    /// Publishes `index` as applied, unless a later index already is.
    fn publish_applied(applied: &tokio::sync::watch::Sender<u64>, index: u64) {
        applied.send_if_modified(|current| {
            let later = index > *current;
            if later {
                *current = index;
            }
            later
        });
    }

    /// Snapshot builds and installs so far (shared with every clone).
    pub fn snapshot_metrics(&self) -> &SnapshotMetrics {
        &self.metrics
    }

    /// Gives snapshots access to the running services (once; a second call is ignored).
    /// The services' state of a snapshot installed before they ran, or whose import a crash
    /// interrupted, is imported in the background once their databases are open
    /// ([`StateMachine::import_pending_in_background`]): a node does not wait for them to
    /// serve.
    pub fn attach_services(&self, supervisor: Arc<dyn DerivedState>) -> io::Result<()> {
        if self.services.set(supervisor).is_err() {
            tracing::warn!("services were already attached to the state machine");
            return Ok(());
        }
        if let Some(file) = self.snapshots.services_pending()? {
            tracing::info!(path = %file.path.display(), "the services' state of an installed snapshot is still to be imported; importing it once their databases are open");
            self.import_pending_in_background();
        }
        Ok(())
    }

    /// The services as checkpoints (snapshot builds, backups) see them, once attached.
    pub fn checkpoint_services(&self) -> Option<CheckpointServices> {
        Some(CheckpointServices {
            services: Arc::clone(self.services.get()?),
            snapshots: self.snapshots.clone(),
            import_lock: Arc::clone(&self.services_import),
        })
    }

    /// Whether the services' state of an installed snapshot is still to be imported.
    pub fn services_import_pending(&self) -> io::Result<bool> {
        Ok(self.snapshots.services_pending()?.is_some())
    }

    /// Imports the services' state of the snapshot installed last, if it is still pending,
    /// on a thread of its own once the services' databases are open; tried again with
    /// backoff until nothing is pending. At most one such thread runs.
    fn import_pending_in_background(&self) {
        if self.importing.swap(true, Ordering::AcqRel) {
            return;
        }
        let machine = self.clone();
        let spawned = std::thread::Builder::new()
            .name("services-import".into())
            .spawn(move || machine.import_pending_until_done());
        if let Err(error) = spawned {
            self.importing.store(false, Ordering::Release);
            tracing::error!(%error, "cannot start the thread importing the services' snapshot state; it is imported at the next start");
        }
    }

    fn import_pending_until_done(&self) {
        let mut backoff = IMPORT_RETRY_MIN;
        let mut failed_imports = 0;
        loop {
            match self.import_pending_once(failed_imports) {
                Ok(()) => {
                    self.importing.store(false, Ordering::Release);
                    // An install that left a new import pending meanwhile may have seen this
                    // thread still running and not started another.
                    match self.snapshots.services_pending() {
                        Ok(Some(_)) if !self.importing.swap(true, Ordering::AcqRel) => {
                            backoff = IMPORT_RETRY_MIN;
                            failed_imports = 0;
                            continue;
                        }
                        _ => return,
                    }
                }
                Err(Retry { error, imported }) => {
                    failed_imports += u32::from(imported);
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "the services' state of an installed snapshot is not imported yet; trying again");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(IMPORT_RETRY_MAX);
                }
            }
        }
    }

    /// One attempt of [`StateMachine::import_pending_in_background`]. After
    /// [`IMPORT_ATTEMPTS_MAX`] failed imports (with every database open), the services
    /// start over from the feed instead, as when the snapshot is gone.
    fn import_pending_once(&self, failed_imports: u32) -> Result<(), Retry> {
        let Some(supervisor) = self.services.get() else {
            return Ok(());
        };
        let waiting = |error: String| Retry {
            error,
            imported: false,
        };
        supervisor.wait_ready().map_err(waiting)?;
        let _guard = self
            .services_import
            .lock()
            .map_err(|e| waiting(e.to_string()))?;
        let file = match self.snapshots.services_pending() {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(()),
            Err(error) => return Err(waiting(error.to_string())),
        };
        let imported = match failed_imports < IMPORT_ATTEMPTS_MAX {
            true => import_pending(supervisor.as_ref(), &self.snapshots, &file),
            false => {
                tracing::error!(path = %file.path.display(), attempts = failed_imports, "the services' state of an installed snapshot cannot be imported; they rebuild from the feed");
                rebuild_from_feed(supervisor.as_ref(), &self.snapshots)
            }
        };
        imported.map_err(|error| Retry {
            error: error.to_string(),
            imported: true,
        })
    }

    /// Completes a snapshot install that a crash interrupted: imports the snapshot's state
    /// into the store again and brings the log in line, before Raft or any reader sees the
    /// state. Without this, the store would claim the snapshot's applied index while
    /// holding only part of its data. Returns whether there was one to complete.
    pub fn finish_interrupted_install(&self) -> io::Result<bool> {
        let Some(file) = self.snapshots.store_pending()? else {
            return Ok(false);
        };
        let (meta, current) = self.snapshots.current()?.ok_or_else(|| {
            io(
                "snapshots/store-pending is set but there is no current snapshot; \
                the data directory was changed by hand: restore it or start this node afresh",
            )
        })?;
        if current.path != file.path {
            return Err(io(format!(
                "snapshots/store-pending names {} but the current snapshot is {}; restore \
                 the data directory or start this node afresh",
                file.path.display(),
                current.path.display()
            )));
        }
        tracing::warn!(path = %file.path.display(), "a snapshot install was interrupted; importing it again");
        Store::verify_snapshot(&mut BufReader::new(File::open(file.state_path())?))
            .map_err(store_io)?;
        replace_store(&self.store, &self.snapshots, &file, &meta)?;
        *self.applied.lock().map_err(io)? = None;
        Ok(true)
    }

    async fn applied(&self) -> io::Result<AppliedState> {
        if let Some(state) = self.applied.lock().map_err(io)?.clone() {
            return Ok(state);
        }
        let store = Arc::clone(&self.store);
        let blob = blocking(move || store.raft_state().map_err(store_io)).await?;
        let state = match blob {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(io)?,
            None => AppliedState::default(),
        };
        *self.applied.lock().map_err(io)? = Some(state.clone());
        Ok(state)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let state = self.applied().await?;
        Ok((state.last_applied, state.membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let mut state = self.applied().await?;
        let mut batch = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            state.last_applied = Some(entry.log_id);
            let command = match entry.payload {
                EntryPayload::Normal(command) => Some(command),
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    None
                }
                EntryPayload::Blank => None,
            };
            batch.push((entry.log_id.index, command, responder));
        }
        if batch.is_empty() {
            return Ok(());
        }
        if let Some(delay) = crate::crash::delay("apply") {
            tokio::time::sleep(delay).await;
        }
        let started = std::time::Instant::now();
        let blob = postcard::to_stdvec(&state).map_err(io)?;
        let store = Arc::clone(&self.store);
        let published = Arc::clone(&self.applied_index);
        let (batch, results) = blocking(move || {
            let last = batch.len() - 1;
            let committed: Vec<Committed<'_>> = batch
                .iter()
                .enumerate()
                .map(|(at, (index, command, _))| Committed {
                    log_index: *index,
                    command: command.as_ref(),
                    // Only the batch's last blob is stored.
                    raft_state: if at == last { blob.clone() } else { Vec::new() },
                })
                .collect();
            let results = store.apply_committed(&committed).map_err(|error| {
                tracing::error!(%error, "applying committed entries failed; this node stops (fail-stop)");
                store_io(error)
            })?;
            // The batch is committed: a read waiting for it may go now, without waiting
            // for this task and openraft's core to be scheduled.
            if let Some((index, _, _)) = batch.last() {
                Self::publish_applied(&published, *index);
            }
            Ok((batch, results))
        })
        .await?;
        self.apply_seconds.observe(started.elapsed().as_secs_f64());
        *self.applied.lock().map_err(io)? = Some(state);
        for ((_, command, responder), outcomes) in batch.into_iter().zip(results) {
            let is_ingest = matches!(command, Some(crate::model::command::Command::Ingest(_)));
            if let Some(responder) = responder {
                responder.send(if is_ingest {
                    CommandResult::Ingested(outcomes)
                } else {
                    CommandResult::Done
                });
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> io::Result<()> {
        let (machine, meta) = (self.clone(), meta.clone());
        let installed_meta = meta.clone();
        let started = std::time::Instant::now();
        let installed = blocking(move || {
            let _guard = machine.services_import.lock().map_err(io)?;
            let snapshots = &machine.snapshots;
            let file = snapshots.adopt(&snapshot)?;
            let contents =
                Store::verify_snapshot(&mut BufReader::new(File::open(file.state_path())?))
                    .map_err(store_io)?;
            for segment in file.log_files()? {
                crate::log::validate_segment_file(&segment).map_err(io)?;
            }
            snapshots.set_current(&meta, &file)?;
            snapshots.set_services_pending(&file)?;
            snapshots.set_store_pending(&file)?;
            crate::crash::point("snapshot-install:marked");
            let mut input = replace_store(&machine.store, snapshots, &file, &meta)?;
            let bytes = file.bytes().unwrap_or(0);
            tracing::info!(records = contents.records, services = contents.sections.len(), bytes, last_log_id = ?meta.last_log_id, "installed snapshot");
            let Some(supervisor) = machine.services.get() else {
                tracing::info!("services not running yet: their state in the snapshot stays pending");
                return Ok(bytes);
            };
            // Raft's apply path waits for this: it never waits for a service's database,
            // and the services' state, derived, never fails the install.
            if !supervisor.ready() {
                tracing::info!("a service's database is not open: the services' state in the snapshot stays pending until it is");
                machine.import_pending_in_background();
                return Ok(bytes);
            }
            match import_sections(supervisor.as_ref(), &mut input) {
                Ok(()) => snapshots.clear_services_pending()?,
                Err(error) => {
                    tracing::warn!(%error, "importing the services' state of the snapshot failed; it stays pending");
                    machine.import_pending_in_background();
                }
            }
            Ok(bytes)
        })
        .await;
        self.metrics
            .record("install", started, &installed, |bytes| *bytes);
        installed?;
        *self.applied.lock().map_err(io)? = Some(AppliedState {
            last_applied: installed_meta.last_log_id,
            membership: installed_meta.last_membership.clone(),
        });
        if let Some(last) = installed_meta.last_log_id {
            Self::publish_applied(&self.applied_index, last.index);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let snapshots = self.snapshots.clone();
        let current = blocking(move || snapshots.current()).await?;
        Ok(current.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let (store, snapshots) = (Arc::clone(&self.store), self.snapshots.clone());
        let services = self.checkpoint_services();
        let metrics = self.metrics.clone();
        let built = blocking(move || {
            let started = std::time::Instant::now();
            let file = snapshots.new_snapshot("built")?;
            let services = services.as_ref().map(|s| s as &dyn DerivedSource);
            let meta = write_checkpoint(&store, services, &file)?;
            snapshots.set_current(&meta, &file)?;
            let bytes = file.bytes().unwrap_or(0);
            tracing::info!(
                bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                last_log_id = ?meta.last_log_id,
                "built snapshot"
            );
            Ok((
                Snapshot {
                    meta,
                    snapshot: file,
                },
                bytes,
            ))
        });
        let started = std::time::Instant::now();
        let built = built.await;
        metrics.record("build", started, &built, |(_, bytes)| *bytes);
        built.map(|(snapshot, _)| snapshot)
    }
}

/// Applies committed `entries` (consecutive, after the store's applied index) to `store`
/// offline, exactly as [`StateMachine`]'s `apply` does on a running node — the same
/// applier, the applied log id and membership kept with the state — for a point-in-time
/// restore replaying archived entries (`crate::backup::pitr`). The entries' records must
/// already be in the store's log (event bodies are read back from it). Blocking.
pub fn replay_committed(store: &Store, entries: &[super::types::Entry]) -> io::Result<()> {
    let mut state: AppliedState = match store.raft_state().map_err(store_io)? {
        Some(bytes) => postcard::from_bytes(&bytes).map_err(io)?,
        None => AppliedState::default(),
    };
    let mut commands = Vec::with_capacity(entries.len());
    for entry in entries {
        state.last_applied = Some(entry.log_id);
        commands.push(match &entry.payload {
            EntryPayload::Normal(command) => Some(command),
            EntryPayload::Membership(membership) => {
                state.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                None
            }
            EntryPayload::Blank => None,
        });
    }
    let Some(last) = entries.len().checked_sub(1) else {
        return Ok(());
    };
    let blob = postcard::to_stdvec(&state).map_err(io)?;
    let committed: Vec<Committed<'_>> = entries
        .iter()
        .zip(commands)
        .enumerate()
        .map(|(at, (entry, command))| Committed {
            log_index: entry.log_id.index,
            command,
            raft_state: if at == last { blob.clone() } else { Vec::new() },
        })
        .collect();
    store.apply_committed(&committed).map_err(store_io)?;
    Ok(())
}

/// Writes a consistent checkpoint of `store` (and of `services`' state, if given) into
/// `file`, a fresh snapshot directory: the state file, then the log's segments up to the
/// state's applied index, hard-linked; everything fsync'd. Returns its Raft metadata.
/// Raft snapshots and backups (`crate::backup`) are both built this way; a backup's
/// checkpoint lives outside `snapshots/` so Raft never replaces it mid-upload. Blocking.
pub fn write_checkpoint(
    store: &Store,
    services: Option<&dyn DerivedSource>,
    file: &SnapshotFile,
) -> io::Result<SnapshotMeta> {
    // The log up to this checkpoint may be purged once it is a snapshot: make the state
    // that covers it durable first.
    store.persist().map_err(store_io)?;
    let mut out = BufWriter::new(File::create(file.state_path())?);
    // The services' views first: each cursor is then at or behind the store's feed head,
    // as it always is on a running node.
    let services = services
        .map(|supervisor| supervisor.export())
        .transpose()
        .map_err(io)?;
    let exported = store.export(&mut out).map_err(store_io)?;
    let mut sections = SectionWriter::new(&mut out);
    if let Some(services) = &services {
        services.write(&mut sections).map_err(io)?;
    }
    let services = sections.finish().map_err(store_io)?;
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    // Every applied entry is in the log on a running node; the bound only matters to
    // state machines driven without a log (openraft's storage suite).
    let covered = exported
        .applied_index
        .checked_sub(1)
        .zip(store.log().last_index())
        .map(|(applied, last)| applied.min(last));
    if let Some(last) = covered {
        store
            .log()
            .checkpoint_to(&file.path.join(super::snapshot::LOG_DIR), last)
            .map_err(io)?;
    }
    File::open(&file.path)?.sync_all()?;
    let state: AppliedState = match exported.raft_state {
        Some(bytes) => postcard::from_bytes(&bytes).map_err(io)?,
        None => AppliedState::default(),
    };
    tracing::debug!(records = exported.records, services, "checkpoint written");
    Ok(SnapshotMeta {
        last_log_id: state.last_applied,
        last_membership: state.membership,
    })
}

/// Makes a restored state (just imported into `store`) the start of a **new cluster**
/// whose only voter is `node_id` (by default one above every id of the old cluster) at
/// `member`: the applied log id stays, the membership is replaced (durably). Returns the
/// snapshot metadata to install the restored snapshot under and the node id. The old
/// cluster's membership must not survive a restore: a node that believed it would try to
/// rejoin the old cluster with a rewound log; and reusing an old id is refused, since an
/// old leader may remember how far that id's log went.
pub fn rebase_for_new_cluster(
    store: &Store,
    node_id: Option<u64>,
    member: super::Member,
) -> io::Result<(SnapshotMeta, u64)> {
    let state: AppliedState = match store.raft_state().map_err(store_io)? {
        Some(bytes) => postcard::from_bytes(&bytes).map_err(io)?,
        None => AppliedState::default(),
    };
    let last = state
        .last_applied
        .ok_or_else(|| io("the restored state has applied no log entry; nothing to restore"))?;
    let old: std::collections::BTreeSet<u64> = state
        .membership
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .collect();
    let node_id = match node_id {
        Some(id) if old.contains(&id) => {
            return Err(io(format!(
                "node id {id} belonged to the backed-up cluster (ids {old:?}); a restored \
                 cluster is new and takes new ids: pick another or leave it to the default"
            )));
        }
        Some(0) => return Err(io("node ids start at 1")),
        Some(id) => id,
        None => old.last().map_or(1, |max| max + 1),
    };
    let membership = openraft::Membership::new(
        vec![std::collections::BTreeSet::from([node_id])],
        std::collections::BTreeMap::from([(node_id, member)]),
    )
    .map_err(io)?;
    let stored = StoredMembership::new(Some(last), membership);
    let rebased = AppliedState {
        last_applied: Some(last),
        membership: stored.clone(),
    };
    store
        .set_raft_state(&postcard::to_stdvec(&rebased).map_err(io)?)
        .map_err(store_io)?;
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: stored,
    };
    Ok((meta, node_id))
}

/// Replaces the store's state and log by those of `file` (current, verified, marked
/// store-pending), then clears the mark: the one path of a first install and of its
/// completion after a crash. Returns the state file positioned at the services' sections.
fn replace_store(
    store: &Store,
    snapshots: &Snapshots,
    file: &SnapshotFile,
    meta: &SnapshotMeta,
) -> io::Result<BufReader<File>> {
    let mut input = BufReader::new(File::open(file.state_path())?);
    // Services reading the feed meanwhile would find entries whose bodies are not in the
    // log yet: they drop what they read while the mark is up (see Store::replace_epoch).
    store.mark_replacing(true);
    let replaced = store.import(&mut input).map_err(store_io).and_then(|_| {
        crate::crash::point("snapshot-install:store-imported");
        install_log(store, file, meta)?;
        // Derived from the state and the log: once both are the snapshot's.
        store.rebuild_dedup_index().map_err(store_io)
    });
    store.mark_replacing(false);
    replaced?;
    crate::crash::point("snapshot-install:log-installed");
    snapshots.clear_store_pending()?;
    Ok(input)
}

/// Brings the log in line with an installed snapshot. If this node's log already holds
/// the snapshot's last entry (openraft truncated anything conflicting before the
/// install), it has every entry the snapshot covers and stays as it is. Otherwise the log
/// is replaced by the snapshot's segments (hard-linked, so the snapshot keeps its copy for
/// nodes it may serve later); openraft treats those entries as purged and appends after
/// them.
fn install_log(store: &Store, file: &SnapshotFile, meta: &SnapshotMeta) -> io::Result<()> {
    let log = store.log();
    let Some(last) = &meta.last_log_id else {
        return Ok(());
    };
    if log_id_at(log, last.index)?.as_ref() == Some(last) {
        return Ok(());
    }
    let files = file.log_files()?;
    if files.is_empty() {
        return log.truncate_from(0).map_err(io);
    }
    let staging = file.path.join("install");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    let mut linked = Vec::with_capacity(files.len());
    for source in &files {
        let name = source
            .file_name()
            .ok_or_else(|| io("snapshot log file without a name"))?;
        let target = staging.join(name);
        std::fs::hard_link(source, &target)?;
        linked.push(target);
    }
    log.install(&linked, last.index).map_err(io)?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(())
}

/// Imports every service section from `input` (positioned after the store's part of a
/// verified snapshot) into `supervisor`'s services. A section of a service this node does
/// not run is read past; a service without a section keeps its state.
fn import_sections(supervisor: &dyn DerivedState, input: &mut impl Read) -> io::Result<()> {
    let mut sections = SectionReader::new(input);
    while let Some((name, cursor)) = sections.next_section().map_err(store_io)? {
        let mut records = std::iter::from_fn(|| sections.next_record().transpose());
        supervisor.import(&name, cursor, &mut records).map_err(io)?;
    }
    Ok(())
}

/// Starts every service over from the feed (their pending state cannot be imported) and
/// clears the pending mark.
fn rebuild_from_feed(supervisor: &dyn DerivedState, snapshots: &Snapshots) -> io::Result<()> {
    for name in supervisor.names() {
        supervisor
            .import(name, 0, &mut std::iter::empty())
            .map_err(io)?;
    }
    snapshots.clear_services_pending()
}

/// A failed attempt to import pending services' state: why, and whether the import itself
/// failed (rather than waiting for a database).
struct Retry {
    error: String,
    imported: bool,
}

/// The services as a checkpoint (a snapshot build, a backup) sees them: their live state,
/// or, while a snapshot's services' state is still to be imported, that snapshot's sections
/// as they are. The live state is older than the store's then, and may stand at a feed
/// position whose entries the installed state no longer has.
#[derive(Clone)]
pub struct CheckpointServices {
    services: Arc<dyn DerivedState>,
    snapshots: Snapshots,
    import_lock: Arc<Mutex<()>>,
}

impl CheckpointServices {
    /// The pending snapshot's sections, if an import is pending (decided under the lock).
    fn pending(&self) -> Result<Option<Box<dyn DerivedExport>>, String> {
        let _guard = self.import_lock.lock().map_err(|e| e.to_string())?;
        self.pending_locked()
    }

    fn pending_locked(&self) -> Result<Option<Box<dyn DerivedExport>>, String> {
        let Some(file) = self
            .snapshots
            .services_pending()
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        Ok(Some(Box::new(SnapshotSections::open(&file.state_path())?)))
    }
}

impl DerivedSource for CheckpointServices {
    fn export(&self) -> Result<Box<dyn DerivedExport>, String> {
        if let Some(pending) = self.pending()? {
            return Ok(pending);
        }
        // Wait for the databases without the lock, then decide again under it: an install
        // may have left an import pending meanwhile.
        self.services.wait_ready()?;
        let _guard = self.import_lock.lock().map_err(|e| e.to_string())?;
        match self.pending_locked()? {
            Some(pending) => Ok(pending),
            None => self.services.export(),
        }
    }
}

/// Imports the services' state of `file`, a snapshot installed earlier (its store part
/// already imported), and clears the pending mark.
fn import_pending(
    supervisor: &dyn DerivedState,
    snapshots: &Snapshots,
    file: &SnapshotFile,
) -> io::Result<()> {
    tracing::info!(path = %file.path.display(), "importing the services' state of an installed snapshot");
    let mut input = match File::open(file.state_path()) {
        Ok(input) => BufReader::new(input),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            // Only if someone removed it. The services may hold part of an import: start
            // them over from the feed.
            tracing::error!(path = %file.path.display(), "the snapshot holding the services' pending state is gone; they rebuild from the feed");
            return rebuild_from_feed(supervisor, snapshots);
        }
        Err(error) => return Err(error),
    };
    Store::skip_snapshot_state(&mut input).map_err(store_io)?;
    import_sections(supervisor, &mut input)?;
    snapshots.clear_services_pending()
}
