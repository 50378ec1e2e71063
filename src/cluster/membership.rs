//! Membership: who votes, where they are, and the rule that keeps one region's loss from
//! taking the quorum with it.
//!
//! Changes follow openraft's safe path: a new node joins as a **learner** and catches up
//! (snapshot + log) before it is promoted to voter; a replacement adds the new node as a
//! learner first, then swaps voters in one joint-consensus change. Every change that
//! alters the voter set is checked by [`check_layout`] and refused, with the reason, if
//! losing one region would lose the quorum — unless forced.

use std::collections::{BTreeMap, BTreeSet};

use openraft::ChangeMembers;
use serde::Serialize;

use super::{Member, Raft};

/// Why a membership operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// This node is not the leader; retry on the leader.
    #[error("not the leader; the leader is {leader:?} at {leader_url:?}")]
    NotLeader {
        leader: Option<u64>,
        leader_url: Option<String>,
    },
    /// The requested change makes no sense (unknown node, already a voter, …).
    #[error("{0}")]
    Invalid(String),
    /// The new voter layout would not survive the loss of one region.
    #[error("{0} (pass --force to do it anyway)")]
    Layout(String),
    /// Raft refused or failed the change.
    #[error("raft: {0}")]
    Raft(String),
}

/// Checks that losing any one region keeps a quorum of `voters`.
pub fn check_layout(voters: &BTreeMap<u64, Member>) -> Result<(), String> {
    let total = voters.len();
    if total == 0 {
        return Err("a cluster needs at least one voter".into());
    }
    let quorum = total / 2 + 1;
    let mut by_region: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (id, member) in voters {
        by_region
            .entry(member.region.as_str())
            .or_default()
            .push(*id);
    }
    if total > 1 && by_region.len() == 1 {
        let region = by_region.keys().next().copied().unwrap_or("");
        return Err(format!(
            "all {total} voters are in region {region:?}: losing it loses the cluster; \
             place voters in at least 3 regions"
        ));
    }
    for (region, ids) in &by_region {
        let left = total - ids.len();
        if total > 1 && left < quorum {
            return Err(format!(
                "voters {ids:?} are all in region {region:?}: losing it would leave {left} of \
                 {total} voters, short of the quorum of {quorum}; spread voters over more regions"
            ));
        }
    }
    Ok(())
}

/// One member as reported by status.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    /// Node id.
    pub id: u64,
    /// Its client URL.
    pub url: String,
    /// Its peer URL.
    pub peer_url: String,
    /// Its region.
    pub region: String,
    /// `voter` or `learner`.
    pub role: &'static str,
    /// On the leader: the last log index known replicated to it.
    pub matched_index: Option<u64>,
    /// On the leader: how many entries it is behind the leader's log.
    pub lag_entries: Option<u64>,
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    /// The node answering.
    pub node_id: u64,
    /// Its Raft role (`Leader`, `Follower`, …).
    pub state: String,
    /// Current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// The leader's URL, if known.
    pub leader_url: Option<String>,
    /// This node's last log index.
    pub last_log_index: Option<u64>,
    /// This node's last applied index.
    pub applied_index: Option<u64>,
    /// Members, voters first.
    pub members: Vec<MemberView>,
    /// Whether the membership is in a joint (transitional) configuration.
    pub joint: bool,
}

/// The current view from `raft`'s metrics.
pub fn view(raft: &Raft) -> ClusterView {
    use openraft::async_runtime::WatchReceiver;
    let metrics = raft.metrics().borrow_watched().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let last = metrics.last_log_index.unwrap_or(0);
    let replication = metrics.replication.as_ref();
    let mut members: Vec<MemberView> = membership
        .nodes()
        .map(|(id, member)| {
            let matched = replication
                .and_then(|r| r.get(id))
                .map(|m| m.as_ref().map_or(0, |log_id| log_id.index));
            MemberView {
                id: *id,
                url: member.url.clone(),
                peer_url: member.peer_url.clone(),
                region: member.region.clone(),
                role: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                },
                matched_index: matched,
                lag_entries: matched.map(|m| last.saturating_sub(m)),
            }
        })
        .collect();
    members.sort_by_key(|m| (m.role != "voter", m.id));
    let leader_url = metrics
        .current_leader
        .and_then(|id| membership.get_node(&id).map(|m| m.url.clone()));
    ClusterView {
        node_id: metrics.id,
        state: format!("{:?}", metrics.state),
        term: metrics.current_term,
        leader: metrics.current_leader,
        leader_url,
        last_log_index: metrics.last_log_index,
        applied_index: metrics.last_applied.map(|id| id.index),
        joint: membership.get_joint_config().len() > 1,
        members,
    }
}

fn require_leader(raft: &Raft) -> Result<ClusterView, MembershipError> {
    let view = view(raft);
    if view.leader != Some(view.node_id) {
        return Err(MembershipError::NotLeader {
            leader: view.leader,
            leader_url: view.leader_url,
        });
    }
    Ok(view)
}

fn voters_of(raft: &Raft) -> BTreeMap<u64, Member> {
    use openraft::async_runtime::WatchReceiver;
    let metrics = raft.metrics().borrow_watched().clone();
    let membership = metrics.membership_config.membership();
    membership
        .voter_ids()
        .filter_map(|id| membership.get_node(&id).map(|m| (id, m.clone())))
        .collect()
}

fn raft_error(error: impl std::fmt::Display) -> MembershipError {
    MembershipError::Raft(error.to_string())
}

/// How long `add_learner` waits for a committed learner to show in the metrics.
const LEARNER_VISIBLE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a membership change waits for the membership in force to be committed.
const MEMBERSHIP_SETTLED_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits, bounded, until the membership in force is committed (applied), as openraft
/// requires before it starts another change. A leader that has just been elected — a
/// single node right after it initialized the cluster, say — has not committed it yet and
/// would refuse the change with "already undergoing a configuration change".
async fn membership_settled(raft: &Raft) -> Result<(), MembershipError> {
    raft.wait(Some(MEMBERSHIP_SETTLED_WAIT))
        .metrics(
            |m| m.last_applied.as_ref() >= m.membership_config.log_id().as_ref(),
            "the membership in force to be committed",
        )
        .await
        .map_err(raft_error)?;
    Ok(())
}

/// Adds `id` as a learner (it starts catching up at once). Idempotent for the same node.
pub async fn add_learner(raft: &Raft, id: u64, member: Member) -> Result<(), MembershipError> {
    require_leader(raft)?;
    membership_settled(raft).await?;
    let view = require_leader(raft)?;
    if let Some(existing) = view.members.iter().find(|m| m.id == id) {
        if existing.url == member.url
            && existing.peer_url == member.peer_url
            && existing.region == member.region
        {
            return Ok(());
        }
        return Err(MembershipError::Invalid(format!(
            "node {id} is already a member at {} in region {}; node ids are never reused — \
             give the new node a new id",
            existing.url, existing.region
        )));
    }
    raft.add_learner(id, member, false)
        .await
        .map_err(raft_error)?;
    // The change is committed, but the membership views (and so `promote`) read openraft's
    // metrics, which publish it a moment later: reply only once the learner is visible, so
    // "add, then promote" never fails with "not a learner".
    raft.wait(Some(LEARNER_VISIBLE_WAIT))
        .metrics(
            |m| m.membership_config.membership().get_node(&id).is_some(),
            "the new learner in the membership metrics",
        )
        .await
        .map_err(raft_error)?;
    Ok(())
}

/// Promotes learners to voters, after checking the resulting layout.
pub async fn promote(raft: &Raft, ids: &BTreeSet<u64>, force: bool) -> Result<(), MembershipError> {
    require_leader(raft)?;
    membership_settled(raft).await?;
    let view = require_leader(raft)?;
    let mut voters = voters_of(raft);
    for id in ids {
        let member = view.members.iter().find(|m| m.id == *id).ok_or_else(|| {
            MembershipError::Invalid(format!("node {id} is not a learner; add it first"))
        })?;
        voters.insert(
            *id,
            Member {
                url: member.url.clone(),
                peer_url: member.peer_url.clone(),
                region: member.region.clone(),
            },
        );
    }
    if !force {
        check_layout(&voters).map_err(MembershipError::Layout)?;
    }
    raft.change_membership(ChangeMembers::AddVoterIds(ids.clone()), false)
        .await
        .map_err(raft_error)?;
    Ok(())
}

/// Removes `id` from the cluster (voter or learner).
pub async fn remove(raft: &Raft, id: u64, force: bool) -> Result<(), MembershipError> {
    require_leader(raft)?;
    membership_settled(raft).await?;
    let view = require_leader(raft)?;
    if !view.members.iter().any(|m| m.id == id) {
        return Err(MembershipError::Invalid(format!(
            "node {id} is not a member"
        )));
    }
    let mut voters = voters_of(raft);
    if voters.remove(&id).is_some() {
        if !force {
            check_layout(&voters).map_err(MembershipError::Layout)?;
        }
        raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(raft_error)?;
    }
    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
        .await
        .map_err(raft_error)?;
    Ok(())
}

/// Replaces voter `old` by learner `new` in one joint-consensus change.
pub async fn replace(raft: &Raft, old: u64, new: u64, force: bool) -> Result<(), MembershipError> {
    let view = require_leader(raft)?;
    let mut voters = voters_of(raft);
    if voters.remove(&old).is_none() {
        return Err(MembershipError::Invalid(format!(
            "node {old} is not a voter"
        )));
    }
    let learner = view
        .members
        .iter()
        .find(|m| m.id == new && m.role == "learner")
        .ok_or_else(|| {
            MembershipError::Invalid(format!("node {new} is not a learner; add it first"))
        })?;
    voters.insert(
        new,
        Member {
            url: learner.url.clone(),
            peer_url: learner.peer_url.clone(),
            region: learner.region.clone(),
        },
    );
    if !force {
        check_layout(&voters).map_err(MembershipError::Layout)?;
    }
    let ids: BTreeSet<u64> = voters.keys().copied().collect();
    raft.change_membership(ChangeMembers::ReplaceAllVoters(ids), false)
        .await
        .map_err(raft_error)?;
    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([old])), false)
        .await
        .map_err(raft_error)?;
    Ok(())
}

/// Asks the leader to hand leadership to `to`.
pub async fn transfer_leader(raft: &Raft, to: u64) -> Result<(), MembershipError> {
    let view = require_leader(raft)?;
    if !view.members.iter().any(|m| m.id == to && m.role == "voter") {
        return Err(MembershipError::Invalid(format!(
            "node {to} is not a voter"
        )));
    }
    raft.trigger().transfer_leader(to).await.map_err(raft_error)
}

/// Waits until this node (`id`) leads, then makes its own membership entry say `me` (its
/// current address and region) if it says something else — the case of a node restored
/// from a backup, whose membership was written before it knew its address, or of a node
/// restarted on another address. Returns once the entry is right (or Raft stops); a
/// failed change is retried at the next leadership change.
pub async fn refresh_own_address(raft: Raft, id: u64, me: Member) {
    use openraft::async_runtime::WatchReceiver;
    let mut watch = raft.metrics();
    let mut tried_term = None;
    loop {
        let (term, leading, listed) = {
            let metrics = watch.borrow_watched();
            (
                metrics.current_term,
                super::leads(&metrics),
                metrics
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .cloned(),
            )
        };
        if listed.as_ref() == Some(&me) {
            return;
        }
        if leading {
            match listed {
                Some(listed) if tried_term != Some(term) => {
                    tried_term = Some(term);
                    tracing::info!(node_id = id, old = %listed.url, new = %me.url, "updating this node's address in the membership");
                    let change = ChangeMembers::SetNodes(BTreeMap::from([(id, me.clone())]));
                    if let Err(error) = raft.change_membership(change, false).await {
                        tracing::warn!(%error, "could not update this node's address");
                    }
                    continue;
                }
                _ => {}
            }
        }
        if watch.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(regions: &[&str]) -> BTreeMap<u64, Member> {
        regions
            .iter()
            .enumerate()
            .map(|(i, region)| {
                (
                    i as u64 + 1,
                    Member {
                        url: format!("http://n{i}"),
                        peer_url: format!("https://n{i}:9080"),
                        region: (*region).into(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn region_layouts() {
        let cases: &[(&[&str], bool)] = &[
            (&["a"], true),
            (&["a", "b", "c"], true),
            (&["a", "a", "b"], false),
            (&["a", "a", "a"], false),
            (&["a", "b", "c", "d", "e"], true),
            (&["a", "a", "b", "b", "c"], true),
            (&["a", "a", "a", "b", "c"], false),
            (&["a", "b"], false),
        ];
        for (regions, ok) in cases {
            let result = check_layout(&layout(regions));
            assert_eq!(result.is_ok(), *ok, "{regions:?}: {result:?}");
        }
        let message = check_layout(&layout(&["r1", "r1", "r2"])).expect_err("refused");
        assert!(
            message.contains("r1") && message.contains("quorum of 2"),
            "{message}"
        );
    }
}
