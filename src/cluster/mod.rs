//! Replication: openraft underneath the state machine of [`crate::store`].
//!
//! Every node runs a Raft member. A write becomes a [`Command`] in the replicated log; once
//! a quorum has it durably, every replica applies it with the same
//! [`crate::store::apply::Applier`] and so reaches the same state (the determinism test in
//! `src/store/tests.rs` and the cluster tests compare state hashes). The log is also the
//! event store: its segments ([`crate::log`]) keep the event bodies the state indexes.
//!
//! Adapters, one contract each:
//! - [`log_store`]: `RaftLogStorage` on the segmented log; an append is acknowledged to
//!   openraft only after its fsync (grouped across appends), votes are fsync'd before
//!   returning;
//! - [`state_machine`]: `RaftStateMachine` over the [`crate::store::Store`]; snapshots are
//!   a state checkpoint plus hard links to the log's segments, never the whole state in
//!   memory;
//! - [`network`]: `RaftNetworkV2` over HTTP/2 with postcard bodies, with a fault-injection
//!   switch that drops traffic to chosen peers (partition tests); the receiving side of
//!   those RPCs is `crate::api::peer` (it needs the running node);
//! - [`derived`]: what snapshots need of the node's derived state (implemented by the
//!   services).
//!
//! Why openraft 0.10 (pinned `=0.10.0-alpha.37`) and not 0.9: see `docs/architecture.md`.

pub mod derived;
pub mod identity;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod snapshot;
pub mod state_machine;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::model::event::EventOutcome;

/// A member of the cluster as Raft records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Base URL of the node's client listener (the API), e.g. `https://10.0.0.7:8080`:
    /// where the gateway and clients are pointed.
    pub url: String,
    /// Base URL of the node's peer listener (Raft RPCs, forwarded writes, read indexes),
    /// e.g. `https://10.0.0.7:9080`: mutual TLS unless the cluster runs in plaintext.
    pub peer_url: String,
    /// Region (or zone) label, used to refuse voter layouts that one region's loss would
    /// break.
    pub region: String,
}

pub use crate::model::command::Command;

/// What applying a [`Command`] returned to its proposer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Per-event outcomes of an ingest (every event of the block), in order.
    Ingested(Vec<EventOutcome>),
    /// A command without per-event outcomes (segment definitions) was applied.
    Done,
}

openraft::declare_raft_types!(
    /// Tandem's Raft types.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = Member,
);

/// Whether the node these metrics are of leads now: in the leader's state, not only named
/// by its vote. openraft derives `current_leader` from the last committed vote, so an
/// ex-leader restarted from its data directory names itself until it hears of the newer
/// term, though it is a follower.
pub fn leads(metrics: &openraft::RaftMetrics<TypeConfig>) -> bool {
    metrics.state == openraft::ServerState::Leader && metrics.current_leader == Some(metrics.id)
}

/// A histogram for the stages of a write (apply, replication round trips, and the node's
/// own stages): 0.1 ms … ~5.7 s in steps of ×1.5, fine enough to tell apart stages of a
/// few milliseconds.
pub fn stage_histogram() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(0.0001, 1.5, 28),
    )
}

/// The Raft handle type.
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;

/// Shorthands for openraft's generic types, instantiated for Tandem.
pub mod types {
    use super::TypeConfig;
    pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
    pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
    pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
    pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
    pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
    pub type Snapshot =
        openraft::type_config::alias::SnapshotOf<TypeConfig, super::snapshot::SnapshotFile>;
}
