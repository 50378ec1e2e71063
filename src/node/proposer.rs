//! The proposer task: groups queued submissions into log entries and gets them committed,
//! by this node's Raft when it leads, or by forwarding them to the leader.
//!
//! As leader, a group is screened for duplicates before it is proposed, so a duplicate
//! never enters the log and followers never consult the dedup index:
//! 1. **Term gate.** Once per term, before its first proposal, the leader confirms its
//!    leadership and waits until it has applied every entry of earlier terms (a read
//!    index), so the dedup index it consults includes everything any earlier leader
//!    committed — a retry after a failover is still recognised.
//! 2. **In flight.** Each event's dedup hash is looked up among the groups this leader has
//!    proposed and not yet applied; a hit waits for that group's outcome (a duplicate of
//!    an event that was stored, or a failure if it was not — never an acknowledgement of
//!    something unstored). Misses are registered as this group's before the store is
//!    consulted, and removed only after the group was applied, so an event is always
//!    either in flight or in the store's index when the next group looks.
//! 3. **Store.** The rest are looked up in the applied dedup index.
//! 4. What is new is encoded once into a block ([`EncodedBlock`]) and proposed.
//!
//! Each group is stamped with a batch time by [`BatchClock`]: the wall clock, but never
//! running ahead of the time that really passed (monotonic) by more than
//! `limits.clock_step_ms_max`, so a wall clock that leaps cannot expire dedup entries or
//! retention early through the state clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::peer::Peer;
use super::pending::PendingWrites;
use super::{
    FORWARDS_INFLIGHT_MAX, PROPOSALS_INFLIGHT_MAX, Proposal, Stats, SubmitError,
    UNAPPLIED_GROUPS_MAX, now_ms,
};
use crate::cluster::{Command, CommandResult, Raft, TypeConfig};
use crate::model::block::EncodedBlock;
use crate::model::event::{Event, EventOutcome};
use crate::model::time::BatchClock;
use crate::store::Store;
use crate::store::dedup::{KeyMap, Seen};
use crate::store::tables::{dedup_hash, event_seq};
use openraft::async_runtime::WatchReceiver;
use openraft::error::ClientWriteError;
use openraft::impls::ProgressResponder;
use openraft::raft::ClientWriteResult;

/// How long a forwarded proposal may take at the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of event bodies in one log entry (the block is compressed, but every
/// replica decompresses what it reads, and peers' RPC limits must hold).
pub const COMMIT_BYTES_MAX: usize = 8 << 20;

/// What the proposer needs.
pub(super) struct Context {
    pub raft: Raft,
    pub store: Arc<Store>,
    pub self_id: u64,
    pub http: reqwest::Client,
    pub cluster_key: String,
    /// This cluster's id, sent with forwarded proposals.
    pub identity: Arc<crate::cluster::identity::ClusterIdentity>,
    pub commit_events_max: usize,
    /// Stamps batch times (and the ticker's tick times).
    pub stamper: Arc<Stamper>,
    pub stats: Arc<Stats>,
    /// Group-commit sizes and propose-to-commit latency.
    pub metrics: Arc<super::metrics::Metrics>,
    pub failed: Arc<AtomicBool>,
    /// The identities of groups proposed and not yet applied, and the term whose earlier
    /// entries this leader is known to have applied (shared with linearizable reads).
    pub pending: Arc<PendingWrites>,
    /// Dedup hashes of events proposed by this leader and not yet applied.
    pub in_flight: Mutex<KeyMap<Arc<GroupOutcome>>>,
}

/// The seqs of a group's events by dedup hash, once applied.
type Seqs = Arc<KeyMap<u64>>;

/// What became of a group's events: their seqs once applied, or `None` if the group
/// failed (their fate then is unknown to this node). The channel holds `None` until then.
pub(super) struct GroupOutcome {
    done: watch::Sender<Option<Option<Seqs>>>,
}

impl GroupOutcome {
    fn new() -> Arc<GroupOutcome> {
        Arc::new(GroupOutcome {
            done: watch::channel(None).0,
        })
    }

    async fn wait(&self) -> Option<Seqs> {
        let mut receiver = self.done.subscribe();
        match receiver.wait_for(Option::is_some).await {
            Ok(value) => value.clone().flatten(),
            Err(_) => None,
        }
    }
}

/// Runs until the queue closes.
pub(super) async fn run(context: Context, mut queue: mpsc::UnboundedReceiver<Proposal>) {
    let context = Arc::new(context);
    let lead_slots = Arc::new(Semaphore::new(PROPOSALS_INFLIGHT_MAX));
    let forward_slots = Arc::new(Semaphore::new(FORWARDS_INFLIGHT_MAX));
    let unapplied = Arc::new(Semaphore::new(UNAPPLIED_GROUPS_MAX));
    while let Some(first) = queue.recv().await {
        // Wait for a free slot before draining: the group grows while entries are in
        // flight, which is what makes concurrent requests share a commit. A follower's
        // forwards have slots of their own, more of them: the leader groups what arrives
        // again, so a forward held back here only adds a round trip of waiting.
        let leads = crate::cluster::leads(&context.raft.metrics().borrow_watched());
        let slots = if leads { &lead_slots } else { &forward_slots };
        let Ok(slot) = Arc::clone(slots).acquire_owned().await else {
            return;
        };
        // A submitter that stopped waiting (its reply says the outcome is unknown) is not
        // proposed: its client retries.
        let mut group: Vec<Proposal> = std::iter::once(first)
            .filter(|p| !p.reply.is_closed())
            .collect();
        let mut events: usize = group.iter().map(|p| p.events.len()).sum();
        let mut bytes: usize = group.iter().map(|p| body_bytes(&p.events)).sum();
        while events < context.commit_events_max && bytes < COMMIT_BYTES_MAX {
            match queue.try_recv() {
                Ok(proposal) if proposal.reply.is_closed() => {}
                Ok(proposal) => {
                    events += proposal.events.len();
                    bytes += body_bytes(&proposal.events);
                    group.push(proposal);
                }
                Err(_) => break,
            }
        }
        if group.is_empty() {
            continue;
        }
        for proposal in &group {
            context.metrics.observe_stage("queued", proposal.queued);
        }
        let time_ms = context.stamper.stamp(&context.store);
        let context = Arc::clone(&context);
        let unapplied = Arc::clone(&unapplied);
        tokio::spawn(async move {
            commit_group(&context, group, time_ms, slot, unapplied).await;
        });
    }
}

/// The leader's [`BatchClock`], shared by everything that stamps a time into the log
/// (batches and ticks), so no path can stamp past its bounds.
pub(super) struct Stamper {
    clock: Mutex<BatchClock>,
    /// The monotonic origin.
    started: Instant,
}

impl Stamper {
    /// A stamper allowing `clock_step_ms_max` of run-ahead (`limits.clock_step_ms_max`).
    pub fn new(clock_step_ms_max: i64) -> Stamper {
        Stamper {
            clock: Mutex::new(BatchClock::new(clock_step_ms_max)),
            started: Instant::now(),
        }
    }

    /// The time to stamp on the next entry.
    pub fn stamp(&self, store: &Store) -> i64 {
        let elapsed_ms = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let state_clock = state_clock_ms(store);
        lock(&self.clock).stamp(now_ms(), elapsed_ms, state_clock)
    }
}

/// The state clock as last applied (0, and a warning, if the store cannot say: the batch
/// clock then bounds stamps by its own last stamp and elapsed time).
fn state_clock_ms(store: &Store) -> i64 {
    store.reader().clock_ms().unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot read the state clock to bound the batch time");
        0
    })
}

fn body_bytes(events: &[Event]) -> usize {
    events.iter().map(|e| e.body_json.len()).sum()
}

/// Where a proposal's outcomes go.
type Reply = tokio::sync::oneshot::Sender<Result<Vec<EventOutcome>, SubmitError>>;

/// The replies of a group and how many events each is owed.
struct Replies(Vec<(usize, Reply)>);

impl Replies {
    fn deliver(self, outcomes: Vec<EventOutcome>) {
        let mut outcomes = outcomes.into_iter();
        for (size, reply) in self.0 {
            // The submitter may have gone (client hung up); the events are stored anyway.
            let _ = reply.send(Ok(outcomes.by_ref().take(size).collect()));
        }
    }

    /// Delivers each proposal its outcomes, or `error` if any of its events has none.
    fn deliver_partial(self, outcomes: Vec<Option<EventOutcome>>, error: &SubmitError) {
        let mut outcomes = outcomes.into_iter();
        for (size, reply) in self.0 {
            let mine: Option<Vec<EventOutcome>> = outcomes.by_ref().take(size).collect();
            let _ = reply.send(mine.ok_or_else(|| error.clone()));
        }
    }

    fn fail(self, error: &SubmitError) {
        for (_, reply) in self.0 {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

/// Commits a group, holding `slot` until its proposers have their answers; as leader also
/// a permit of `unapplied` until the group is applied.
async fn commit_group(
    context: &Context,
    group: Vec<Proposal>,
    time_ms: i64,
    slot: OwnedSemaphorePermit,
    unapplied: Arc<Semaphore>,
) {
    let leader = context.raft.metrics().borrow_watched().current_leader;
    let mut events = Vec::new();
    let mut local = Replies(Vec::new());
    let mut forwarded = Replies(Vec::new());
    let mut forwarded_events = Vec::new();
    for proposal in group {
        let size = proposal.events.len();
        if proposal.forwarded {
            forwarded.0.push((size, proposal.reply));
            forwarded_events.extend(proposal.events);
        } else {
            local.0.push((size, proposal.reply));
            events.extend(proposal.events);
        }
    }
    if leader == Some(context.self_id) {
        events.extend(forwarded_events);
        local.0.extend(forwarded.0);
        // Wait for apply to come within bounds before proposing more (the group grows
        // meanwhile); the semaphore is never closed.
        let waited = Instant::now();
        let Ok(unapplied) = unapplied.acquire_owned().await else {
            return;
        };
        context.metrics.observe_stage("unapplied", waited);
        lead(context, local, events, time_ms, slot, unapplied).await;
        return;
    }
    // Not the leader: a forwarded proposal is not forwarded again (the sender retries).
    forwarded.fail(&SubmitError::NoLeader(
        "this node is not the leader any more; retry".into(),
    ));
    if local.0.is_empty() {
        return;
    }
    let started = Instant::now();
    let forwarded = forward(context, leader, &events).await;
    context.metrics.observe_stage("forward", started);
    match forwarded {
        Ok(outcomes) => {
            context.stats.forwarded.fetch_add(1, Ordering::Relaxed);
            local.deliver(outcomes);
        }
        Err(error) => local.fail(&error),
    }
}

/// The leader's part: term gate, duplicate screening, encoding, proposing.
///
/// The proposers are answered once the entry is committed — durable on a quorum, with
/// outcomes that follow from its log index — and `slot` is released then. What depends
/// on the state holding the events waits for apply, with `unapplied`: the group's
/// registration for keyed reads (see `super::pending`) and its dedup hashes in flight.
async fn lead(
    context: &Context,
    replies: Replies,
    events: Vec<Event>,
    time_ms: i64,
    slot: OwnedSemaphorePermit,
    unapplied: OwnedSemaphorePermit,
) {
    let term = match verify_term(context).await {
        Ok(term) => term,
        Err(error) => {
            replies.fail(&error);
            return;
        }
    };
    let hashes: Vec<[u8; 16]> = events
        .iter()
        .map(|e| dedup_hash(&e.source, &e.message_id))
        .collect();
    let ours = GroupOutcome::new();
    // Step 2: in flight, or registered as ours.
    let mut waiting = Vec::new();
    let mut candidates = Vec::new();
    {
        let mut in_flight = lock(&context.in_flight);
        for (at, hash) in hashes.iter().enumerate() {
            match in_flight.get(hash) {
                Some(group) => waiting.push((at, Arc::clone(group))),
                None => {
                    in_flight.insert(*hash, Arc::clone(&ours));
                    candidates.push(at);
                }
            }
        }
    }
    // Registered before proposing, released once applied: see `super::pending`.
    let registration = context.pending.register(&events, term);
    let outcome = screen_and_propose(context, events, &hashes, &candidates, time_ms).await;
    let mut outcomes: Vec<Option<EventOutcome>> = vec![None; hashes.len()];
    let (seqs, error, applying) = match outcome {
        Ok((found, applying)) => {
            let mut seqs = KeyMap::default();
            seqs.reserve(found.len());
            for (at, outcome) in found {
                let (EventOutcome::Stored { seq } | EventOutcome::Duplicate { seq }) = outcome;
                seqs.insert(hashes[at], seq);
                outcomes[at] = Some(outcome);
            }
            (Some(Arc::new(seqs)), None, applying)
        }
        Err(error) => (None, Some(error), None),
    };
    let committed = seqs.is_some();
    ours.done.send_replace(Some(seqs));
    let duplicates = outcomes
        .iter()
        .filter(|o| matches!(o, Some(EventOutcome::Duplicate { .. })))
        .count();
    // Events that repeat one in flight (in an earlier group, or earlier in this one).
    for (at, group) in waiting {
        if let Some(seqs) = group.wait().await
            && let Some(&seq) = seqs.get(&hashes[at])
        {
            outcomes[at] = Some(EventOutcome::Duplicate { seq });
            context
                .stats
                .events_duplicate
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    context
        .stats
        .events_duplicate
        .fetch_add(duplicates as u64, Ordering::Relaxed);
    let error = error.unwrap_or_else(|| {
        SubmitError::NoLeader(
            "an earlier copy of an event in this request was not committed; retry".into(),
        )
    });
    replies.deliver_partial(outcomes, &error);
    drop(slot);
    // Until applied, the events are not in the store's dedup index or the profiles: keep
    // them in flight and registered.
    let applied = match applying {
        Some(applying) => applying.applied(context).await,
        None => committed,
    };
    let current_term = context.raft.metrics().borrow_watched().current_term;
    registration.release(applied, current_term);
    {
        let mut in_flight = lock(&context.in_flight);
        for &at in &candidates {
            if in_flight
                .get(&hashes[at])
                .is_some_and(|group| Arc::ptr_eq(group, &ours))
            {
                in_flight.remove(&hashes[at]);
            }
        }
    }
    drop(unapplied);
}

/// Screens the `candidates` (positions in `events`) against the store, encodes the new
/// ones into a block and commits it. Returns the outcome of every candidate once
/// committed, and the apply still to come if a block was proposed.
async fn screen_and_propose(
    context: &Context,
    events: Vec<Event>,
    hashes: &[[u8; 16]],
    candidates: &[usize],
    time_ms: i64,
) -> Result<(Vec<(usize, EventOutcome)>, Option<Applying>), SubmitError> {
    let store = Arc::clone(&context.store);
    let candidates = candidates.to_vec();
    let keys: Vec<[u8; 16]> = candidates.iter().map(|&at| hashes[at]).collect();
    let started = Instant::now();
    let screened = tokio::task::spawn_blocking(move || {
        let verdicts = store
            .screen_hashes(keys)
            .map_err(|e| SubmitError::Storage(e.to_string()))?;
        let mut found = Vec::new();
        let mut fresh = Vec::new();
        let mut events: Vec<Option<Event>> = events.into_iter().map(Some).collect();
        for (&at, verdict) in candidates.iter().zip(verdicts) {
            match verdict {
                Seen::Stored(seq) => found.push((at, EventOutcome::Duplicate { seq })),
                // Candidates are unique within the group (repeats wait in flight), so a
                // repeat is impossible here; treat it as new rather than trust it.
                Seen::New | Seen::Repeat(_) => {
                    if let Some(event) = events[at].take() {
                        fresh.push((at, event));
                    }
                }
            }
        }
        let (positions, fresh): (Vec<usize>, Vec<Event>) = fresh.into_iter().unzip();
        let block = if fresh.is_empty() {
            None
        } else {
            Some(
                EncodedBlock::encode(time_ms, fresh)
                    .map_err(|e| SubmitError::Rejected(e.to_string()))?,
            )
        };
        Ok::<_, SubmitError>((found, positions, block))
    })
    .await
    .map_err(|e| SubmitError::Storage(format!("screening failed: {e}")))??;
    context.metrics.observe_stage("screen", started);
    let (mut found, positions, block) = screened;
    let Some(block) = block else {
        return Ok((found, None));
    };
    debug_assert!(hashes.len() >= positions.len());
    let (outcomes, applying) = propose(context, block, positions.len()).await?;
    found.extend(positions.into_iter().zip(outcomes));
    Ok((found, Some(applying)))
}

/// Once per term: confirms leadership and waits until every entry of earlier terms is
/// applied, so the dedup index is complete before anything is screened against it (and
/// linearizable reads may count on it, see `super::pending`). Returns the term.
async fn verify_term(context: &Context) -> Result<u64, SubmitError> {
    let term = context.raft.metrics().borrow_watched().current_term;
    let verified = &context.pending.verified_term;
    if verified.load(Ordering::Acquire) == term {
        return Ok(term);
    }
    context
        .raft
        .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
        .await
        .map_err(|e| SubmitError::NoLeader(format!("cannot confirm leadership: {e}")))?;
    verified.fetch_max(term, Ordering::AcqRel);
    Ok(term)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Proposes a block of `events` new events and waits until it is committed. Its events'
/// outcomes follow from the entry's log index alone (every event of a block is new, and
/// seqs are log index and ordinal), so they are known at commit, before apply.
async fn propose(
    context: &Context,
    block: EncodedBlock,
    events: usize,
) -> Result<(Vec<EventOutcome>, Applying), SubmitError> {
    let started = Instant::now();
    let (responder, committed, applied) = ProgressResponder::new();
    if let Err(fatal) = context
        .raft
        .client_write_ff(Command::Ingest(block), Some(responder))
        .await
    {
        return Err(fatal_write(context, &fatal.to_string()));
    }
    let log_id = match committed.await {
        Ok(log_id) => log_id,
        // Completed without a commit: rejected or discarded, never applied.
        Err(_) => {
            let error = match applied.await {
                Ok(Err(error)) => write_error(context, &error),
                Ok(Ok(_)) => SubmitError::Storage(
                    "an ingest entry was applied without being reported committed".into(),
                ),
                Err(_) => SubmitError::Unknown("raft stopped while the entry was in flight".into()),
            };
            return Err(error);
        }
    };
    let outcomes: Vec<EventOutcome> = (0..events)
        .map(|ordinal| EventOutcome::Stored {
            seq: event_seq(log_id.index, ordinal),
        })
        .collect();
    record(&context.stats, &outcomes);
    let metrics = &context.metrics;
    metrics
        .commit_duration
        .observe(started.elapsed().as_secs_f64());
    metrics.observe_stage("raft", started);
    metrics.commit_events.observe(events as f64);
    Ok((
        outcomes,
        Applying {
            applied,
            index: log_id.index,
            events,
        },
    ))
}

/// A committed entry's apply, still to come.
pub(super) struct Applying {
    applied: tokio::sync::oneshot::Receiver<ClientWriteResult<TypeConfig>>,
    /// The entry's log index.
    index: u64,
    /// Events in its block.
    events: usize,
}

impl Applying {
    /// Waits for the apply; true if it stored exactly the outcomes given at commit.
    async fn applied(self, context: &Context) -> bool {
        match self.applied.await {
            Ok(Ok(response)) => match response.data {
                // The failure point stands in for a state that disagrees (a bug), so the
                // fail-stop below is tested (`tests/crash.rs`).
                CommandResult::Ingested(outcomes)
                    if !crate::crash::fails("apply-outcome")
                        && outcomes.len() == self.events
                        && outcomes.iter().enumerate().all(|(ordinal, outcome)| {
                            *outcome
                                == EventOutcome::Stored {
                                    seq: event_seq(self.index, ordinal),
                                }
                        }) =>
                {
                    true
                }
                other => {
                    // The state disagrees with what the proposers were told: stop writing.
                    let _ = fatal_write(
                        context,
                        &format!(
                            "entry {} applied as {other:?}, not as {} stored events",
                            self.index, self.events
                        ),
                    );
                    false
                }
            },
            Ok(Err(error)) => {
                let _ = write_error(context, &error);
                false
            }
            // Raft stopped (shutdown or a fatal error) before applying.
            Err(_) => false,
        }
    }
}

/// A write Raft refused or lost: leadership moved (the entry may or may not commit under
/// the next leader; clients retry, safely, since messageIds dedup), or a fatal error.
fn write_error(context: &Context, error: &ClientWriteError<TypeConfig>) -> SubmitError {
    match error {
        ClientWriteError::ForwardToLeader(forward)
        | ClientWriteError::LogEntryDiscarded(forward) => {
            let hint = forward.leader_id.map_or_else(
                || "no leader yet".to_owned(),
                |id| format!("node {id} leads now"),
            );
            SubmitError::Unknown(format!(
                "leadership changed while the entry was in flight ({hint})"
            ))
        }
        other => fatal_write(context, &other.to_string()),
    }
}

/// Marks the node failed after a write error it cannot recover from.
fn fatal_write(context: &Context, error: &str) -> SubmitError {
    tracing::error!(%error, "raft write failed fatally");
    context.failed.store(true, Ordering::Release);
    SubmitError::Storage(error.to_owned())
}

/// Commits one administrative command (a segment definition change): through this node's
/// Raft when it leads, else by forwarding it once to the leader's `/internal/command`.
pub(super) async fn execute(
    cluster: &super::Cluster,
    http: &reqwest::Client,
    command: Command,
    forwarded: bool,
) -> Result<(), SubmitError> {
    let raft = &cluster.raft;
    let leader = raft.metrics().borrow_watched().current_leader;
    if leader != Some(cluster.id) {
        let Some(leader) = leader.filter(|_| !forwarded) else {
            return Err(SubmitError::NoLeader(
                "this node is not the leader and knows no other; retry".into(),
            ));
        };
        let body =
            postcard::to_stdvec(&command).map_err(|e| SubmitError::Storage(e.to_string()))?;
        let peer = Peer {
            raft,
            http,
            cluster_key: &cluster.cluster_key,
            self_id: cluster.id,
            cluster_id: cluster.identity.get(),
        };
        return peer
            .call_write::<Result<(), SubmitError>>(
                leader,
                "/internal/command",
                body,
                FORWARD_TIMEOUT,
            )
            .await?;
    }
    match raft.client_write(command).await {
        Ok(response) => match response.data {
            CommandResult::Done | CommandResult::Ingested(_) => Ok(()),
        },
        Err(error) => match error.forward_to_leader() {
            Some(_) => Err(SubmitError::NoLeader(
                "leadership changed while committing; retry".into(),
            )),
            None => Err(SubmitError::Storage(error.to_string())),
        },
    }
}

/// Sends events to the leader's `/internal/propose` and returns their outcomes.
async fn forward(
    context: &Context,
    leader: Option<u64>,
    events: &[Event],
) -> Result<Vec<EventOutcome>, SubmitError> {
    let Some(leader) = leader else {
        return Err(SubmitError::NoLeader(
            "an election is under way; retry".into(),
        ));
    };
    let body = postcard::to_stdvec(events).map_err(|e| SubmitError::Storage(e.to_string()))?;
    let peer = Peer {
        raft: &context.raft,
        http: &context.http,
        cluster_key: &context.cluster_key,
        self_id: context.self_id,
        cluster_id: context.identity.get(),
    };
    peer.call_write::<Result<Vec<EventOutcome>, SubmitError>>(
        leader,
        "/internal/propose",
        body,
        FORWARD_TIMEOUT,
    )
    .await?
}

/// Counts a committed entry and its stored events.
fn record(stats: &Stats, outcomes: &[EventOutcome]) {
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats
        .events_stored
        .fetch_add(outcomes.len() as u64, Ordering::Relaxed);
}
