//! The proposer task: groups queued submissions into log entries and gets them committed,
//! by this node's Raft when it leads, or by forwarding them to the leader.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use super::{PROPOSALS_INFLIGHT_MAX, Proposal, Stats, SubmitError, now_ms};
use crate::cluster::network::FROM_HEADER;
use crate::cluster::{Command, CommandResult, Raft};
use crate::model::event::{Batch, Event, EventOutcome};
use openraft::async_runtime::WatchReceiver;

/// How long a forwarded proposal may take at the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// What the proposer needs.
pub(super) struct Context {
    pub raft: Raft,
    pub self_id: u64,
    pub http: reqwest::Client,
    pub cluster_key: String,
    pub commit_events_max: usize,
    pub stats: Arc<Stats>,
    pub failed: Arc<AtomicBool>,
}

/// Runs until the queue closes.
pub(super) async fn run(context: Context, mut queue: mpsc::UnboundedReceiver<Proposal>) {
    let context = Arc::new(context);
    let slots = Arc::new(Semaphore::new(PROPOSALS_INFLIGHT_MAX));
    let mut last_time_ms = 0_i64;
    while let Some(first) = queue.recv().await {
        // Wait for a free slot before draining: the group grows while entries are in
        // flight, which is what makes concurrent requests share a commit.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut group = vec![first];
        let mut events = group[0].events.len();
        while events < context.commit_events_max {
            match queue.try_recv() {
                Ok(proposal) => {
                    events += proposal.events.len();
                    group.push(proposal);
                }
                Err(_) => break,
            }
        }
        last_time_ms = last_time_ms.max(now_ms());
        let context = Arc::clone(&context);
        let time_ms = last_time_ms;
        tokio::spawn(async move {
            let _slot = slot;
            commit_group(&context, group, time_ms).await;
        });
    }
}

/// The replies of a group and how many events each is owed.
/// Where a proposal's outcomes go.
type Reply = tokio::sync::oneshot::Sender<Result<Vec<EventOutcome>, SubmitError>>;

struct Replies(Vec<(usize, Reply)>);

impl Replies {
    fn deliver(self, outcomes: Vec<EventOutcome>) {
        let mut outcomes = outcomes.into_iter();
        for (size, reply) in self.0 {
            // The submitter may have gone (client hung up); the events are stored anyway.
            let _ = reply.send(Ok(outcomes.by_ref().take(size).collect()));
        }
    }

    fn fail(self, error: &SubmitError) {
        for (_, reply) in self.0 {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

async fn commit_group(context: &Context, group: Vec<Proposal>, time_ms: i64) {
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
        propose(context, local, Batch { time_ms, events }).await;
        return;
    }
    // Not the leader: a forwarded proposal is not forwarded again (the sender retries).
    forwarded.fail(&SubmitError::NoLeader(
        "this node is not the leader any more; retry".into(),
    ));
    if local.0.is_empty() {
        return;
    }
    match forward(context, leader, &events).await {
        Ok(outcomes) => {
            context.stats.forwarded.fetch_add(1, Ordering::Relaxed);
            local.deliver(outcomes);
        }
        Err(error) => local.fail(&error),
    }
}

async fn propose(context: &Context, replies: Replies, batch: Batch) {
    match context.raft.client_write(Command::Ingest(batch)).await {
        Ok(response) => match response.data {
            CommandResult::Ingested(outcomes) => {
                record(&context.stats, &outcomes);
                replies.deliver(outcomes);
            }
            CommandResult::Refused(why) => replies.fail(&SubmitError::Rejected(why)),
            CommandResult::Done => replies.fail(&SubmitError::Rejected(
                "an ingest entry was answered as a non-ingest command".into(),
            )),
        },
        Err(error) => {
            if let Some(forward) = error.forward_to_leader() {
                // Leadership moved while the entry was in flight; it was not committed by
                // us. Clients retry (safely: messageIds dedup).
                let hint = forward.leader_id.map_or_else(
                    || "no leader yet".to_owned(),
                    |id| format!("node {id} leads now"),
                );
                replies.fail(&SubmitError::NoLeader(format!(
                    "leadership changed ({hint}); retry"
                )));
            } else {
                tracing::error!(%error, "raft write failed fatally");
                context.failed.store(true, Ordering::Release);
                replies.fail(&SubmitError::Storage(error.to_string()));
            }
        }
    }
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
        };
        return peer
            .call::<Result<(), SubmitError>>(leader, "/internal/command", body, FORWARD_TIMEOUT)
            .await?;
    }
    match raft.client_write(command).await {
        Ok(response) => match response.data {
            CommandResult::Refused(why) => Err(SubmitError::Rejected(why)),
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

/// Longest a linearizable read waits for the leader's read index and for this node to
/// apply up to it.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(5);

/// Read-index requests tried before giving up, following leadership as it moves.
const READ_INDEX_ATTEMPTS_MAX: usize = 3;

/// See [`super::Node::linearize`].
pub(super) async fn linearize(
    cluster: &super::Cluster,
    http: &reqwest::Client,
) -> Result<(), SubmitError> {
    let raft = &cluster.raft;
    let mut last_error = SubmitError::NoLeader("an election is under way; retry".into());
    for attempt in 0..READ_INDEX_ATTEMPTS_MAX {
        if attempt > 0 {
            // Leadership may have just moved: give this node's view a moment to catch up.
            tokio::time::sleep(Duration::from_millis(20 * attempt as u64)).await;
        }
        let leader = raft.metrics().borrow_watched().current_leader;
        if leader == Some(cluster.id) {
            return raft
                .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                .await
                .map(|_| ())
                .map_err(|e| SubmitError::NoLeader(format!("cannot confirm leadership: {e}")));
        }
        let Some(leader) = leader else { continue };
        match read_index_from(cluster, http, leader).await {
            Ok(index) => {
                return raft
                    .wait(Some(READ_INDEX_TIMEOUT))
                    .applied_index_at_least(Some(index), "linearizable read")
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        SubmitError::NoLeader(format!(
                            "not caught up to the read index {index}: {e}"
                        ))
                    });
            }
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

/// Asks `leader` for a read index.
async fn read_index_from(
    cluster: &super::Cluster,
    http: &reqwest::Client,
    leader: u64,
) -> Result<u64, SubmitError> {
    let peer = Peer {
        raft: &cluster.raft,
        http,
        cluster_key: &cluster.cluster_key,
        self_id: cluster.id,
    };
    let index: Result<u64, String> = peer
        .call(
            leader,
            "/internal/read-index",
            Vec::new(),
            READ_INDEX_TIMEOUT,
        )
        .await?;
    index.map_err(|e| SubmitError::NoLeader(format!("leader {leader} refused a read index: {e}")))
}

fn leader_url(raft: &Raft, leader: u64) -> Result<String, SubmitError> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    metrics
        .membership_config
        .membership()
        .get_node(&leader)
        .map(|member| member.url.trim_end_matches('/').to_owned())
        .ok_or_else(|| SubmitError::NoLeader(format!("leader {leader} has no known address")))
}

/// What calling the leader's internal endpoints needs.
struct Peer<'a> {
    raft: &'a Raft,
    http: &'a reqwest::Client,
    cluster_key: &'a str,
    self_id: u64,
}

impl Peer<'_> {
    /// POSTs `body` to `path` on `leader` and decodes its postcard reply. Transport errors
    /// and plain-text refusals (partitioned, wrong cluster key) become `NoLeader`.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        leader: u64,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<T, SubmitError> {
        let url = leader_url(self.raft, leader)?;
        let unreachable =
            |e: String| SubmitError::NoLeader(format!("leader {leader} unreachable: {e}"));
        let response = self
            .http
            .post(format!("{url}{path}"))
            .bearer_auth(self.cluster_key)
            .header(FROM_HEADER, self.self_id)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if !status.is_success() {
            return Err(unreachable(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        postcard::from_bytes(&bytes).map_err(|e| unreachable(e.to_string()))
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
    };
    peer.call::<Result<Vec<EventOutcome>, SubmitError>>(
        leader,
        "/internal/propose",
        body,
        FORWARD_TIMEOUT,
    )
    .await?
}

fn record(stats: &Stats, outcomes: &[EventOutcome]) {
    let stored = outcomes
        .iter()
        .filter(|o| matches!(o, EventOutcome::Stored { .. }))
        .count() as u64;
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats.events_stored.fetch_add(stored, Ordering::Relaxed);
    stats
        .events_duplicate
        .fetch_add(outcomes.len() as u64 - stored, Ordering::Relaxed);
}
