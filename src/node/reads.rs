//! Read consistency: what a read waits for before it runs on this node's applied state.
//!
//! | mode | waits for | guarantee |
//! |---|---|---|
//! | `linearizable` (default) | the leader confirms it still leads with a quorum round (a read index), then this node applies up to the leader's commit index | sees every write acknowledged anywhere before the read began |
//! | `lease` | the same, but the leader confirms by its lease (a quorum acknowledged it within the last election timeout) instead of a round; falls back to a round when the lease has lapsed | linearizable as long as no node's clock runs faster than another's by more than the lease's margin |
//! | `local` | nothing | this node's applied state; may lag the leader |
//! | `after = N` (with any mode) | this node has applied log index `N` | sees the write whose reply carried position `N` and every write committed before it: read-your-writes with no leader round |
//!
//! Profile reads on the leader in the two linearizable modes skip the wait for apply when
//! no write in flight mentions the profile ([`prepare_keyed`], [`super::pending`]).
//!
//! **Riding out elections.** A linearizable or lease read that finds no leader, a leader
//! that cannot confirm itself, or a leader that does not answer, waits for leadership to
//! move and tries again, for at most [`LEADER_WAIT_MAX`]; only then does it fail with
//! [`ReadError::NoLeader`]. A request to the leader is abandoned as soon as this node
//! sees another leader, so a killed or silent leader costs a read one election, not a
//! timeout.
//!
//! Invariant: a read index is only ever obtained from the node that currently leads (in
//! this node's view), and a read runs only once this node has applied up to it.

use std::time::{Duration, Instant};

use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{LinearizableReadError, RaftError};

use super::Cluster;
use super::peer::Peer;
use super::pending::ReadTicket;
use crate::cluster::Raft;
use crate::model::identity::Identity;

/// Longest a linearizable or lease read waits for a leader that can confirm itself.
pub const LEADER_WAIT_MAX: Duration = Duration::from_secs(3);
/// Longest a read waits for this node to apply up to the index it needs (a read index,
/// or the `after` position).
pub const APPLY_WAIT_MAX: Duration = Duration::from_secs(5);
/// First pause between attempts while leadership settles; doubles up to
/// [`RETRY_PAUSE_MAX`]. A change of leader ends a pause early.
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(20);
/// Longest pause between attempts.
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(200);
/// Shortest time given to one read-index request to the leader.
const PEER_CALL_MIN: Duration = Duration::from_millis(200);

/// Where a follower asks the leader for a read index confirmed by a quorum round.
pub const READ_INDEX_PATH: &str = "/internal/read-index";
/// Where a follower asks the leader for a read index confirmed by the leader's lease.
pub const LEASE_READ_INDEX_PATH: &str = "/internal/lease-read-index";

/// How fresh a read must be (see the module doc for each mode's guarantee).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Confirmed by a quorum round at the leader.
    Linearizable,
    /// Confirmed by the leader's lease.
    Lease,
    /// This node's applied state as it is.
    Local,
}

impl Consistency {
    /// The mode's name in the API.
    pub fn name(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Lease => "lease",
            Consistency::Local => "local",
        }
    }
}

/// What a read waits for before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequirement {
    /// How the read is ordered against other nodes' writes.
    pub consistency: Consistency,
    /// A log index this node must have applied first (a write reply's position).
    pub after: Option<u64>,
}

/// Why a read could not be made as fresh as asked. Every variant is retryable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// No leader confirmed itself within [`LEADER_WAIT_MAX`].
    #[error("no leader: {0}")]
    NoLeader(String),
    /// This node did not apply up to `index` within [`APPLY_WAIT_MAX`].
    #[error(
        "this node has applied up to {applied:?}, not yet index {index}, after waiting {waited:?}"
    )]
    NotCaughtUp {
        /// The index the read needed.
        index: u64,
        /// What this node had applied when it gave up.
        applied: Option<u64>,
        /// How long it waited.
        waited: Duration,
    },
    /// Raft has stopped on this node (shutting down, or a fatal error).
    #[error("raft stopped: {0}")]
    Stopped(String),
}

impl From<super::SubmitError> for ReadError {
    /// Calls to the leader fail only with `NoLeader`; anything else is reported the same
    /// way, since the read was not confirmed and a retry may succeed.
    fn from(error: super::SubmitError) -> Self {
        match error {
            super::SubmitError::NoLeader(why) => ReadError::NoLeader(why),
            other => ReadError::NoLeader(other.to_string()),
        }
    }
}

/// What a profile read must still do once [`prepare_keyed`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// Nothing: any snapshot taken from now on is fresh enough.
    Ready,
    /// This node leads and confirmed it: a snapshot taken from now on is fresh enough if
    /// [`super::Node::read_is_clear`] says so for the profile's identities; otherwise wait
    /// for the ticket's read index ([`super::Node::wait_applied`]) first.
    Keyed(ReadTicket),
}

/// See [`super::Node::prepare_keyed_read`].
pub(super) async fn prepare_keyed(
    cluster: &Cluster,
    http: &reqwest::Client,
    requirement: ReadRequirement,
    identity: &Identity,
) -> Result<Prepared, ReadError> {
    let lease = match requirement.consistency {
        Consistency::Local => {
            return prepare(cluster, http, requirement)
                .await
                .map(|()| Prepared::Ready);
        }
        Consistency::Linearizable => false,
        Consistency::Lease => true,
    };
    if let Some(index) = requirement.after {
        wait_applied(cluster, index).await?;
    }
    let raft = &cluster.raft;
    if crate::cluster::leads(&raft.metrics().borrow_watched()) {
        match ticket_here(cluster, lease).await {
            Ok(Ok(ticket)) => return Ok(Prepared::Keyed(ticket)),
            Ok(Err(index)) => {
                wait_applied(cluster, index).await?;
                return Ok(Prepared::Ready);
            }
            // Leadership is moving: the full path, which follows it.
            Err(_) => {}
        }
    }
    // A follower names the identity, so the leader can answer with an index short of its
    // commit index when no write in flight mentions the profile.
    let body = postcard::to_stdvec(identity).unwrap_or_default();
    linearize(cluster, http, lease, body)
        .await
        .map(|()| Prepared::Ready)
}

/// As leader: confirms the leadership (by lease when `lease` and it holds, else by a
/// round) and returns a ticket if reads of this term may skip the wait for apply
/// ([`super::pending`]), else the read index to wait for. Fails if this node does not
/// lead, or leadership moved across the confirmation.
pub(super) async fn ticket_here(
    cluster: &Cluster,
    lease: bool,
) -> Result<Result<ReadTicket, u64>, ReadError> {
    let raft = &cluster.raft;
    let leads = |term: u64| {
        let metrics = raft.metrics();
        let metrics = metrics.borrow_watched();
        crate::cluster::leads(&metrics) && metrics.current_term == term
    };
    let term = raft.metrics().borrow_watched().current_term;
    if !leads(term) {
        return Err(ReadError::NoLeader("this node does not lead".into()));
    }
    let index = read_index_here(raft, lease).await?;
    if !leads(term) {
        return Err(ReadError::NoLeader(
            "leadership moved while confirming it".into(),
        ));
    }
    Ok(cluster.pending.ticket(term, index).ok_or(index))
}

/// See [`super::Node::prepare_read`].
pub(super) async fn prepare(
    cluster: &Cluster,
    http: &reqwest::Client,
    requirement: ReadRequirement,
) -> Result<(), ReadError> {
    if let Some(index) = requirement.after {
        wait_applied(cluster, index).await?;
    }
    match requirement.consistency {
        Consistency::Local => Ok(()),
        Consistency::Linearizable => linearize(cluster, http, false, Vec::new()).await,
        Consistency::Lease => linearize(cluster, http, true, Vec::new()).await,
    }
}

/// Obtains a read index from whoever leads, following leadership for at most
/// [`LEADER_WAIT_MAX`], then waits until this node has applied up to it. `identity` is
/// empty, or the postcard of the identity a profile read asks for (the leader may then
/// answer with a smaller index, see [`super::pending`]).
async fn linearize(
    cluster: &Cluster,
    http: &reqwest::Client,
    lease: bool,
    identity: Vec<u8>,
) -> Result<(), ReadError> {
    let raft = &cluster.raft;
    let deadline = Instant::now() + LEADER_WAIT_MAX;
    let mut pause = RETRY_PAUSE_MIN;
    loop {
        let leader = raft.metrics().borrow_watched().current_leader;
        let attempt = match leader {
            Some(id) if id == cluster.id => read_index_here(raft, lease).await,
            Some(id) => read_index_from(cluster, http, id, lease, &identity, deadline).await,
            None => Err(ReadError::NoLeader(
                "no leader known: an election is under way".into(),
            )),
        };
        let error = match attempt {
            Ok(index) => return wait_applied(cluster, index).await,
            Err(stopped @ ReadError::Stopped(_)) => return Err(stopped),
            Err(error) => error,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(match error {
                ReadError::NoLeader(why) => {
                    ReadError::NoLeader(format!("{why} (still so after {LEADER_WAIT_MAX:?})"))
                }
                other => other,
            });
        }
        leadership_moves(raft, leader, (now + pause).min(deadline)).await;
        pause = (pause * 2).min(RETRY_PAUSE_MAX);
    }
}

/// This node's read index as leader: confirmed by its lease when `lease` and the lease
/// holds, else by a quorum round.
pub(super) async fn read_index_here(raft: &Raft, lease: bool) -> Result<u64, ReadError> {
    if lease {
        match raft.get_read_log_id(ReadPolicy::LeaseRead).await {
            Ok((read, _)) => return Ok(read.index()),
            // The lease lapsed (no quorum acknowledgement within the election timeout,
            // e.g. a busy core delayed heartbeats): confirm with a round instead.
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {}
            Err(error) => return Err(classify(error)),
        }
    }
    raft.get_read_log_id(ReadPolicy::ReadIndex)
        .await
        .map(|(read, _)| read.index())
        .map_err(classify)
}

fn classify(
    error: RaftError<crate::cluster::TypeConfig, LinearizableReadError<crate::cluster::TypeConfig>>,
) -> ReadError {
    match error {
        RaftError::Fatal(fatal) => ReadError::Stopped(fatal.to_string()),
        RaftError::APIError(error) => {
            ReadError::NoLeader(format!("this node cannot confirm its leadership: {error}"))
        }
    }
}

/// Asks `leader` for a read index; gives up as soon as this node sees another leader.
async fn read_index_from(
    cluster: &Cluster,
    http: &reqwest::Client,
    leader: u64,
    lease: bool,
    identity: &[u8],
    deadline: Instant,
) -> Result<u64, ReadError> {
    let peer = Peer {
        raft: &cluster.raft,
        http,
        cluster_key: &cluster.cluster_key,
        self_id: cluster.id,
        cluster_id: cluster.identity.get(),
    };
    let path = if lease {
        LEASE_READ_INDEX_PATH
    } else {
        READ_INDEX_PATH
    };
    let timeout = deadline
        .saturating_duration_since(Instant::now())
        .max(PEER_CALL_MIN);
    let call = peer.call::<Result<u64, String>>(leader, path, identity.to_vec(), timeout);
    let waiter = cluster.raft.wait(None);
    let moved = waiter.metrics(|m| m.current_leader != Some(leader), "leadership moves");
    tokio::select! {
        reply = call => reply?.map_err(|why| {
            ReadError::NoLeader(format!("leader {leader} refused a read index: {why}"))
        }),
        _ = moved => Err(ReadError::NoLeader(format!(
            "leadership moved away from node {leader} while asking it for a read index"
        ))),
    }
}

/// Returns once this node's view of the leader differs from `leader`, or at `until`.
async fn leadership_moves(raft: &Raft, leader: Option<u64>, until: Instant) {
    let wait = until.saturating_duration_since(Instant::now());
    // A timeout is the expected way out when leadership stays put.
    let _ = raft
        .wait(Some(wait))
        .metrics(|m| m.current_leader != leader, "leadership moves")
        .await;
}

/// Returns once this node has applied log index `index`, or fails after
/// [`APPLY_WAIT_MAX`]. "Applied" is whichever knows first: the state machine's own
/// signal, published from the applying thread as its batch commits, or Raft's metrics,
/// which learn of it a scheduling hop or two later through openraft's core task (and are
/// the only source for an index applied before this run).
pub(super) async fn wait_applied(cluster: &Cluster, index: u64) -> Result<(), ReadError> {
    let raft = &cluster.raft;
    let raft_applied = || {
        raft.metrics()
            .borrow_watched()
            .last_applied
            .as_ref()
            .map(|id| id.index)
    };
    let mut published = cluster.applied_index.clone();
    if *published.borrow_and_update() >= index || raft_applied().is_some_and(|a| a >= index) {
        return Ok(());
    }
    let started = Instant::now();
    let waiter = raft.wait(Some(APPLY_WAIT_MAX));
    let from_raft = waiter.applied_index_at_least(Some(index), "a read's index applied");
    let from_machine = tokio::time::timeout(APPLY_WAIT_MAX, published.wait_for(|a| *a >= index));
    let outcome = tokio::select! {
        outcome = from_raft => match outcome {
            Ok(_) => Ok(()),
            Err(openraft::metrics::WaitError::ShuttingDown) => Err(Some("raft")),
            Err(openraft::metrics::WaitError::Timeout(..)) => Err(None),
        },
        outcome = from_machine => match outcome {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Some("the state machine")),
            Err(_) => Err(None),
        },
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(Some(what)) => Err(ReadError::Stopped(format!("{what} is shutting down"))),
        Err(None) => Err(ReadError::NotCaughtUp {
            index,
            applied: raft_applied().max(Some(*published.borrow())),
            waited: started.elapsed(),
        }),
    }
}
