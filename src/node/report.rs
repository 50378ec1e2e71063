//! What one node says about itself to the dashboard, as Tandem's own type (openraft's
//! metrics stay behind [`Node::report`](super::Node::report)): its Raft role and
//! positions, what it knows of its followers when it leads, its services' health and its
//! last hour of samples. Each node builds its own; the API gathers them from the peers
//! (`crate::api::dashboard`).

use serde::{Deserialize, Serialize};

use super::samples::Sample;

/// One node's view of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node's id.
    pub id: u64,
    /// Its region label.
    pub region: String,
    /// The URL peers and clients reach it at.
    pub url: String,
    /// Raft role: `Leader`, `Follower`, `Candidate` or `Learner`.
    pub state: String,
    /// The leader it knows, if any.
    pub leader: Option<u64>,
    /// Its current term.
    pub term: u64,
    /// Last index in its log.
    pub last_log_index: u64,
    /// Last index applied to its state.
    pub applied_index: u64,
    /// Committed entries it has not applied yet.
    pub apply_lag_entries: u64,
    /// Events stored cluster-wide, from its replicated state.
    pub events_stored: u64,
    /// On the leader: what it knows of each other member's replication.
    pub followers: Vec<FollowerProgress>,
    /// Its CDP services.
    pub services: Vec<ServiceHealth>,
    /// Its last hour, oldest first.
    pub samples: Vec<Sample>,
    /// Its evaluator's pending and firing alerts (`GET /v1/admin/alerts`' `alerts`); the
    /// cluster-scoped ones only on the leader. Absent from a node that predates it.
    #[serde(default)]
    pub alerts: Vec<serde_json::Value>,
}

/// The leader's view of one follower (or learner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowerProgress {
    /// The follower's id.
    pub id: u64,
    /// Last index known replicated to it, if any.
    pub matched_index: Option<u64>,
    /// Entries of the leader's log it does not have yet (known only with `matched_index`).
    pub lag_entries: Option<u64>,
    /// Time since it last acknowledged an append or heartbeat, ms; `None` if it never did
    /// under this leader.
    pub heartbeat_age_ms: Option<u64>,
}

/// One CDP service's health on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceHealth {
    /// The service's name.
    pub name: String,
    /// `ok` or `degraded`.
    pub status: String,
    /// Why it is degraded.
    pub reason: Option<String>,
    /// Feed entries not yet processed.
    pub lag: u64,
    /// Worker restarts since the node started.
    pub restarts: u64,
}

impl super::Node {
    /// This node's report, for the dashboard.
    pub fn report(&self) -> NodeReport {
        use openraft::Instant as _;
        use openraft::async_runtime::WatchReceiver;
        let raft = self.cluster.raft.metrics().borrow_watched().clone();
        let last = raft.last_log_index.unwrap_or(0);
        let mut followers: Vec<FollowerProgress> = Vec::new();
        for (id, matched) in raft.replication.iter().flatten() {
            if *id == raft.id {
                continue;
            }
            let matched_index = matched.as_ref().map(|log_id| log_id.index);
            let heartbeat_age_ms = raft
                .heartbeat
                .as_ref()
                .and_then(|beats| beats.get(id).cloned().flatten())
                .map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX));
            followers.push(FollowerProgress {
                id: *id,
                matched_index,
                lag_entries: matched_index.map(|m| last.saturating_sub(m)),
                heartbeat_age_ms,
            });
        }
        let services = self
            .services
            .statuses()
            .into_iter()
            .map(|s| ServiceHealth {
                name: s.name.to_owned(),
                status: s.status.to_owned(),
                reason: s.reason,
                lag: s.lag,
                restarts: s.restarts,
            })
            .collect();
        let committed = raft
            .cluster_committed
            .as_ref()
            .or(raft.local_committed.as_ref())
            .map_or(0, |id| id.index);
        let applied_index = raft.last_applied.as_ref().map_or(0, |id| id.index);
        NodeReport {
            id: raft.id,
            region: self.cluster.region.clone(),
            url: self.cluster.advertise_url.clone(),
            state: format!("{:?}", raft.state),
            leader: raft.current_leader,
            term: raft.current_term,
            last_log_index: last,
            applied_index,
            apply_lag_entries: committed.saturating_sub(applied_index),
            events_stored: self.store.reader().events_stored().unwrap_or(0),
            followers,
            services,
            samples: self
                .samples
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .samples(),
            alerts: self.alerts().active(),
        }
    }
}
