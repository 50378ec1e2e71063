//! A running node: the store, its Raft member, and the write pipeline between the API and
//! the replicated log — admission control, group commit, forwarding to the leader.
//!
//! ```text
//!  HTTP handlers ─submit()─▶ [admission: ≤ inflight_events_max] ─▶ proposer task
//!       ▲                                                    │ one Batch per group
//!       │                      leader: raft.client_write_ff ─▶ quorum fsync (commit) ─▶ apply
//!       │                                follower: POST leader/internal/propose
//!       └────────────── per-event outcomes (at commit) ◀─────┘
//! ```
//!
//! Invariants:
//! - **Nothing acknowledged is lost**: `submit` returns outcomes only after the batch is
//!   committed (durable on a quorum). It does not wait for apply: an event's outcome
//!   follows from its entry's log index, and reads that promise to see acknowledged writes
//!   wait for apply themselves (linearizable and lease reads for the read index or the
//!   profile's pending writes, `after` for the position). At most
//!   [`UNAPPLIED_GROUPS_MAX`] committed groups wait for apply before the leader stops
//!   proposing.
//! - **Bounded**: at most `inflight_events_max` events and `inflight_bytes_max` bytes of
//!   event bodies are admitted and unanswered; beyond that `submit` fails at once with [`SubmitError::Overloaded`] (429 + `Retry-After`).
//! - **Group commit**: while proposals are in flight, new submissions queue; the proposer
//!   takes all of them (up to `commit_events_max`) into the next log entry. At most
//!   [`PROPOSALS_INFLIGHT_MAX`] entries are in flight at once on the leader, and at most
//!   [`FORWARDS_INFLIGHT_MAX`] forwarded groups on a follower.
//! - **Any node accepts writes**: a follower forwards the validated events to the leader;
//!   a forwarded proposal is never forwarded again (no ping-pong during elections).

pub mod alerts;
pub mod archive;
pub mod budget;
pub mod format;
pub mod housekeeping;
pub mod metrics;
mod peer;
pub mod pending;
pub mod priority;
mod proposer;
pub mod reads;
pub mod report;
pub mod samples;
mod shares;
mod start;
mod ticker;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::cluster::Raft;
use crate::cluster::network::Faults;
use crate::cluster::snapshot::Snapshots;
use crate::model::event::{Event, EventOutcome};
use crate::store::Store;

pub use format::{DATA_FORMAT, FormatError};
pub use proposer::COMMIT_BYTES_MAX;
pub use start::{Advertised, NodeError, start};

/// Log entries being replicated at once by one node's proposer.
pub const PROPOSALS_INFLIGHT_MAX: usize = 4;
/// Groups a follower's proposer forwards to the leader at once. More than
/// [`PROPOSALS_INFLIGHT_MAX`]: the leader regroups forwarded proposals into its own
/// entries, so holding a group back on the follower only adds a forward's round trip of
/// waiting (measured: docs/benchmarks.md, "Write latency below saturation"). What a
/// follower has in flight stays bounded by its admission limits as well.
pub const FORWARDS_INFLIGHT_MAX: usize = 32;
/// Groups the leader has had committed (and answered) but not yet applied. Writes are
/// answered at commit; this bounds how far apply may fall behind before the proposer
/// stops proposing (and its next group grows instead).
pub const UNAPPLIED_GROUPS_MAX: usize = 8;
/// Longest a submission waits for its outcome; after it the reply says the outcome is
/// unknown (the entry may still commit — a retry with the same messageIds is exact). An
/// isolated leader, which cannot commit and does not know it lost its followers, answers
/// within this.
pub const COMMIT_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a submission was not committed. None of these means the events were stored.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum SubmitError {
    /// Too many events in flight; retry after a moment.
    #[error("the node is at its in-flight limit of {limit} {unit}; retry shortly")]
    Overloaded {
        /// The limit reached.
        limit: usize,
        /// What it counts: `events` or `bytes`.
        unit: String,
    },
    /// The node is shutting down; retry against another node or after restart.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// No leader is known (an election is under way, or no quorum is reachable); nothing
    /// was proposed.
    #[error("no leader: {0}")]
    NoLeader(String),
    /// The events were proposed (or may have been) but their fate is not known: the leader
    /// changed while the entry was in flight, or it was not committed within
    /// [`COMMIT_WAIT_MAX`]. A retry with the same messageIds is exact.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The storage engine or Raft failed; the node is unhealthy.
    #[error("storage failure: {0}")]
    Storage(String),
    /// Applying this request broke a state invariant (a bug, caught by an assertion);
    /// nothing from it was stored and the node carries on. Retrying will fail the same way.
    #[error("internal consistency check refused the request: {0}")]
    Rejected(String),
}

/// Events waiting to be proposed, and where to send their outcomes.
struct Proposal {
    events: Vec<Event>,
    /// Their admission: held until the proposal is committed or dropped (not merely until
    /// the submitter stops waiting), so what is queued stays bounded.
    _permit: (
        tokio::sync::OwnedSemaphorePermit,
        budget::Taken,
        shares::Share,
    ),
    /// Forwarded by a follower: if this node is not the leader either, give up rather
    /// than forward again.
    forwarded: bool,
    reply: oneshot::Sender<Result<Vec<EventOutcome>, SubmitError>>,
    /// When it was queued (the proposer reports how long it waited to join a group).
    queued: std::time::Instant,
}

/// Counters of the pipeline, for status output.
#[derive(Debug, Default)]
pub struct Stats {
    /// Log entries proposed by this node and committed.
    pub commits: AtomicU64,
    /// Events newly stored through this node.
    pub events_stored: AtomicU64,
    /// Events found to be duplicates.
    pub events_duplicate: AtomicU64,
    /// Submissions refused with `Overloaded`.
    pub overloaded: AtomicU64,
    /// Proposals forwarded to the leader.
    pub forwarded: AtomicU64,
}

/// The parts of a node that replication uses.
pub struct Cluster {
    id: u64,
    raft: Raft,
    /// The log store Raft was given (a handle to the same one), for the shutdown record of
    /// the committed index.
    log_store: crate::cluster::log_store::LogStore,
    faults: Arc<Faults>,
    snapshots: Snapshots,
    cluster_key: String,
    /// This cluster's id (see [`crate::cluster::identity`]).
    identity: Arc<crate::cluster::identity::ClusterIdentity>,
    advertise_url: String,
    advertise_peer_url: String,
    region: String,
    /// The data directory (backups write their checkpoints under it).
    data_dir: std::path::PathBuf,
    /// The last log index the store shows, as the state machine publishes it (ahead of
    /// Raft's metrics); reads wait on it.
    applied_index: tokio::sync::watch::Receiver<u64>,
    /// What this leader proposed and has not applied; lets profile reads skip the wait.
    pending: Arc<pending::PendingWrites>,
}

impl Cluster {
    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }
    /// Fault injection switches.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }
    /// The snapshot directory.
    pub fn snapshots(&self) -> &Snapshots {
        &self.snapshots
    }
    /// The shared secret of internal requests.
    pub fn cluster_key(&self) -> &str {
        &self.cluster_key
    }
    /// This cluster's id, if it has one.
    pub fn identity(&self) -> &Arc<crate::cluster::identity::ClusterIdentity> {
        &self.identity
    }
    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }
    /// The URL clients reach this node's client listener at.
    pub fn advertise_url(&self) -> &str {
        &self.advertise_url
    }
    /// The URL peers reach this node's peer listener at.
    pub fn advertise_peer_url(&self) -> &str {
        &self.advertise_peer_url
    }
    /// This node's region label.
    pub fn region(&self) -> &str {
        &self.region
    }
}

/// A running node.
pub struct Node {
    store: Arc<Store>,
    cluster: Cluster,
    /// The supervised CDP services.
    services: Arc<crate::services::supervisor::Supervisor>,
    /// The services' state as checkpoints take it (pending snapshot state first).
    checkpoint_services: crate::cluster::state_machine::CheckpointServices,
    /// The computed-trait definitions the traits service uses.
    trait_defs: Arc<Vec<crate::services::traits::TraitDef>>,
    /// The recommendation model the query side serves, shared by every request.
    recommend_cache: crate::services::recommendations::ModelCache,
    /// Client for forwarding to the leader.
    http: reqwest::Client,
    /// The leader's batch-time stamper (shared with the proposer and the ticker).
    stamper: Arc<proposer::Stamper>,
    queue: mpsc::UnboundedSender<Proposal>,
    inflight: Arc<Semaphore>,
    inflight_max: usize,
    /// Admission by size of event bodies (`limits.inflight_bytes_max`).
    inflight_bytes: budget::ByteBudget,
    /// Each source's share of the in-flight events (`limits.source_inflight_percent`).
    shares: shares::SourceShares,
    shutting_down: AtomicBool,
    /// Set when Raft or the store hit a fatal error; the node reports itself not ready.
    failed: Arc<AtomicBool>,
    stats: Arc<Stats>,
    /// The Prometheus registry and its instruments.
    metrics: Arc<metrics::Metrics>,
    /// The alert evaluator's view and delivery.
    alerts: Arc<alerts::Alerts>,
    /// The last hour of samples for the dashboard (bounded ring).
    samples: Arc<std::sync::Mutex<samples::SampleRing>>,
}

impl Node {
    /// Commits `events` through the replicated log and returns what happened to each.
    pub async fn submit(&self, events: Vec<Event>) -> Result<Vec<EventOutcome>, SubmitError> {
        self.enqueue(events, false).await
    }

    /// Like [`Node::submit`], for events a follower forwarded to this node.
    pub async fn submit_here(&self, events: Vec<Event>) -> Result<Vec<EventOutcome>, SubmitError> {
        self.enqueue(events, true).await
    }

    async fn enqueue(
        &self,
        events: Vec<Event>,
        forwarded: bool,
    ) -> Result<Vec<EventOutcome>, SubmitError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(SubmitError::Storage(
                "an earlier fatal error stopped this node; it needs a restart".into(),
            ));
        }
        let source = events.first().map_or("", |e| e.source.as_str()).to_owned();
        let Some(share) = self.shares.try_take(&source, events.len().max(1)) else {
            self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::Overloaded {
                limit: self.shares.per_source_max(),
                unit: format!("events of source {source:?} (limits.source_inflight_percent)"),
            });
        };
        let count = u32::try_from(events.len().max(1)).unwrap_or(u32::MAX);
        let Ok(permit) = Arc::clone(&self.inflight).try_acquire_many_owned(count) else {
            self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::Overloaded {
                limit: self.inflight_max,
                unit: "events".into(),
            });
        };
        let bytes: usize = events.iter().map(|e| e.body_json.len()).sum();
        let Some(bytes_permit) = self.inflight_bytes.try_take(bytes) else {
            self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::Overloaded {
                limit: self.inflight_bytes.bytes_max(),
                unit: "bytes".into(),
            });
        };
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Proposal {
                events,
                _permit: (permit, bytes_permit, share),
                forwarded,
                reply,
                queued: std::time::Instant::now(),
            })
            .map_err(|_| SubmitError::ShuttingDown)?;
        match tokio::time::timeout(COMMIT_WAIT_MAX, outcome).await {
            Ok(outcome) => outcome.map_err(|_| SubmitError::ShuttingDown)?,
            Err(_) => Err(SubmitError::Unknown(format!(
                "not committed within {COMMIT_WAIT_MAX:?} (no quorum reachable, or overloaded)"
            ))),
        }
    }

    /// Commits an administrative command (segment definitions) through the replicated
    /// log, forwarding it to the leader when this node does not lead. `forwarded` is set
    /// for commands a follower sent here, which are never forwarded again.
    pub async fn execute(
        &self,
        command: crate::cluster::Command,
        forwarded: bool,
    ) -> Result<(), SubmitError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        use openraft::async_runtime::WatchReceiver;
        let leads = crate::cluster::leads(&self.cluster.raft.metrics().borrow_watched());
        let timeless = self.store.reader().clock_ms().unwrap_or(0) <= 0;
        if leads && timeless && !matches!(command, crate::cluster::Command::Tick { .. }) {
            // A new cluster has no time in its log yet: tick first, so this command's feed
            // entry carries a real time and retention (which measures from the state
            // clock) does not remove it at the first event, before services read it.
            let tick = crate::cluster::Command::Tick {
                time_ms: self.stamper.stamp(&self.store),
            };
            proposer::execute(&self.cluster, &self.http, tick, forwarded).await?;
        }
        proposer::execute(&self.cluster, &self.http, command, forwarded).await
    }

    /// Returns once this node's state is as fresh as `requirement` asks, so a read that
    /// follows has that mode's guarantee (see [`reads`]): waits for this node to apply the
    /// `after` position, then for a linearizable or lease read confirms a read index with
    /// whoever leads (following leadership through an election, bounded) and waits to
    /// apply up to it.
    pub async fn prepare_read(
        &self,
        requirement: reads::ReadRequirement,
    ) -> Result<(), reads::ReadError> {
        reads::prepare(&self.cluster, &self.http, requirement).await
    }

    /// The last log index this node's store shows: the state machine's own signal or
    /// Raft's metrics, whichever is further (the signal runs ahead of the metrics).
    pub fn applied_index(&self) -> Option<u64> {
        use openraft::async_runtime::WatchReceiver;
        let raft = self
            .cluster
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .as_ref()
            .map(|id| id.index);
        let published = *self.cluster.applied_index.borrow();
        raft.max((published > 0).then_some(published))
    }

    /// Prepares a read of one profile: as [`Node::prepare_read`], except that a
    /// linearizable or lease read on the leader returns [`reads::Prepared::Keyed`] instead of
    /// waiting for apply to reach the read index — the read then waits only if a write
    /// not yet applied mentions the profile's identities (see [`pending`]).
    pub async fn prepare_keyed_read(
        &self,
        requirement: reads::ReadRequirement,
        identity: &crate::model::identity::Identity,
    ) -> Result<reads::Prepared, reads::ReadError> {
        reads::prepare_keyed(&self.cluster, &self.http, requirement, identity).await
    }

    /// As leader, for a follower's profile read: a ticket if the read may skip the wait
    /// for apply, else the read index (see [`reads::ticket_here`]).
    pub async fn read_ticket_here(
        &self,
        lease: bool,
    ) -> Result<Result<pending::ReadTicket, u64>, reads::ReadError> {
        reads::ticket_here(&self.cluster, lease).await
    }

    /// Whether a snapshot taken after `ticket` was issued answers a read of the profile
    /// with these identities (the identity asked for and, if a profile owns it, all of
    /// that profile's) without waiting: see [`pending::PendingWrites::clear`].
    pub fn read_is_clear<'a>(
        &self,
        ticket: &pending::ReadTicket,
        identities: impl IntoIterator<Item = &'a crate::model::identity::Identity>,
    ) -> bool {
        self.cluster.pending.clear(ticket, identities)
    }

    /// Returns once this node has applied log index `index` (bounded by
    /// [`reads::APPLY_WAIT_MAX`]).
    pub async fn wait_applied(&self, index: u64) -> Result<(), reads::ReadError> {
        reads::wait_applied(&self.cluster, index).await
    }

    /// [`Node::prepare_read`] for a linearizable read.
    pub async fn linearize(&self) -> Result<(), reads::ReadError> {
        self.prepare_read(reads::ReadRequirement {
            consistency: reads::Consistency::Linearizable,
            after: None,
        })
        .await
    }

    /// As leader, a read index a follower may serve a read at: confirmed by a quorum
    /// round, or with `lease` by this node's leader lease (a round when it has lapsed).
    pub async fn read_index_here(&self, lease: bool) -> Result<u64, reads::ReadError> {
        reads::read_index_here(&self.cluster.raft, lease).await
    }

    /// Stops admitting new work.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Whether this node leads the cluster now (as far as it knows).
    pub fn is_leader(&self) -> bool {
        use openraft::async_runtime::WatchReceiver;
        crate::cluster::leads(&self.cluster.raft.metrics().borrow_watched())
    }

    /// Whether new work is refused because of shutdown.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Whether a fatal error stopped the node from committing.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Events admitted and not yet answered.
    pub fn inflight_events(&self) -> usize {
        self.inflight_max - self.inflight.available_permits()
    }

    /// Pipeline counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The alert evaluator (its view for `GET /v1/admin/alerts`).
    pub fn alerts(&self) -> &Arc<alerts::Alerts> {
        &self.alerts
    }

    /// The HTTP client for peer requests (connect timeout 1 s; callers bound the rest).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The node's metrics, for instrumenting requests.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// Refreshes the scrape-time gauges from Raft, the replicated state, the services and
    /// the process, and encodes every metric as Prometheus (OpenMetrics) text.
    pub fn encode_metrics(&self) -> Result<String, std::fmt::Error> {
        use openraft::async_runtime::WatchReceiver;
        let raft = self.cluster.raft.metrics().borrow_watched().clone();
        let m = &self.metrics;
        let s = &m.scraped;
        s.term.set(raft.current_term);
        s.is_leader.set(u64::from(crate::cluster::leads(&raft)));
        let committed = raft
            .cluster_committed
            .as_ref()
            .or(raft.local_committed.as_ref());
        s.commit_index.set(committed.map_or(0, |id| id.index));
        s.applied_index
            .set(raft.last_applied.as_ref().map_or(0, |id| id.index));
        // Followers are only known on the leader; elsewhere the families are emptied so a
        // former leader does not report stale progress.
        s.matched_index.clear();
        s.heartbeat_age.clear();
        for (follower, acked) in raft.heartbeat.iter().flatten() {
            use openraft::Instant as _;
            if let (true, Some(at)) = (*follower != raft.id, acked) {
                s.heartbeat_age
                    .get_or_create(&metrics::FollowerLabels {
                        follower: *follower,
                    })
                    .set(at.elapsed().as_secs_f64());
            }
        }
        for (follower, matched) in raft.replication.iter().flatten() {
            if *follower != raft.id {
                s.matched_index
                    .get_or_create(&metrics::FollowerLabels {
                        follower: *follower,
                    })
                    .set(matched.as_ref().map_or(0, |id| id.index));
            }
        }
        if let Ok(stored) = self.store.reader().events_stored() {
            metrics::mirror(&s.events_stored, stored);
        }
        let blocks = self.store.block_cache();
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        metrics::mirror(&s.block_cache_hits, load(&blocks.stats().hits));
        metrics::mirror(&s.block_cache_misses, load(&blocks.stats().misses));
        metrics::mirror(
            &s.feed_properties_parsed,
            load(&blocks.stats().properties_parsed),
        );
        s.block_cache_bytes.set(blocks.bytes());
        let pending = &self.cluster.pending;
        metrics::mirror(&s.profile_reads_unwaited, load(&pending.reads_unwaited));
        metrics::mirror(&s.profile_reads_waited, load(&pending.reads_waited));
        metrics::mirror(&m.overloaded, self.stats.overloaded.load(Ordering::Relaxed));
        s.inflight_events.set(self.inflight_events() as u64);
        for status in self.services.statuses() {
            let labels = metrics::ServiceLabels {
                service: status.name.to_string(),
            };
            s.service_up
                .get_or_create(&labels)
                .set(u64::from(status.status == "ok"));
            s.service_lag.get_or_create(&labels).set(status.lag);
            metrics::mirror(&s.service_restarts.get_or_create(&labels), status.restarts);
            metrics::mirror_seconds(
                &s.service_yielded.get_or_create(&labels),
                status.yielded_ms as f64 / 1e3,
            );
        }
        m.encode()
    }

    /// The store, for reads.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Replication parts.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.cluster.raft
    }

    /// The supervised CDP services.
    pub fn services(&self) -> &Arc<crate::services::supervisor::Supervisor> {
        &self.services
    }

    /// The services' state as a checkpoint (a backup) takes it: the pending state of an
    /// installed snapshot until it is imported, the live state otherwise.
    pub fn checkpoint_services(&self) -> &crate::cluster::state_machine::CheckpointServices {
        &self.checkpoint_services
    }

    /// The computed-trait definitions.
    pub fn trait_defs(&self) -> &Arc<Vec<crate::services::traits::TraitDef>> {
        &self.trait_defs
    }

    /// The recommendation model the query side serves.
    pub fn recommend_cache(&self) -> &crate::services::recommendations::ModelCache {
        &self.recommend_cache
    }

    /// Stops Raft and makes the state durable. Call after the HTTP server stopped.
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        if let Err(error) = self.cluster.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
        if let Err(error) = self.cluster.log_store.record_committed() {
            tracing::warn!(%error, "could not record the committed index at shutdown");
        }
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || store.persist()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "could not persist the state at shutdown"),
            Err(error) => tracing::error!(%error, "persist task failed"),
        }
    }
}

pub use crate::clock::now_ms;
