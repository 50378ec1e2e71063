//! Calling another node's internal endpoints: where the leader is reachable, and one
//! postcard request and reply. Shared by the write path (forwarded proposals and
//! commands) and the read path (read indexes).
//!
//! A failure to get an answer is [`SubmitError::NoLeader`] — the caller may retry once
//! leadership settles, and nothing was done on its behalf — when the request cannot have
//! taken effect: no address, no connection, a plain-text refusal (partitioned, wrong
//! cluster key), or any failure of a request without effects (a read index). For a write
//! ([`Peer::call_write`]) that was sent and then lost — a timeout, a connection dropped
//! mid-reply, an undecodable reply — the leader may have committed it: that is
//! [`SubmitError::Unknown`], so the client learns to retry with the same messageIds
//! instead of being told nothing was stored.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use super::SubmitError;
use crate::cluster::Raft;
use crate::cluster::network::FROM_HEADER;

/// The base URL of `leader`'s peer listener from this node's view of the membership.
pub(super) fn leader_url(raft: &Raft, leader: u64) -> Result<String, SubmitError> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    metrics
        .membership_config
        .membership()
        .get_node(&leader)
        .map(|member| member.peer_url.trim_end_matches('/').to_owned())
        .ok_or_else(|| SubmitError::NoLeader(format!("leader {leader} has no known address")))
}

/// What calling the leader's internal endpoints needs.
pub(super) struct Peer<'a> {
    /// This node's Raft, for the membership (peer addresses).
    pub raft: &'a Raft,
    /// The client internal requests go through.
    pub http: &'a reqwest::Client,
    /// The shared secret internal endpoints require.
    pub cluster_key: &'a str,
    /// This node's id, sent so the receiver can apply fault injection.
    pub self_id: u64,
    /// This node's cluster id, if it has one (see [`crate::cluster::identity`]).
    pub cluster_id: Option<String>,
}

impl Peer<'_> {
    /// POSTs `body` to `path` on `leader` and decodes its postcard reply, for requests
    /// without effects: every failure becomes `NoLeader`.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        leader: u64,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<T, SubmitError> {
        self.post(leader, path, body, timeout, false).await
    }

    /// Like [`Peer::call`], for a request that changes state on the leader (a forwarded
    /// proposal or command): once it may have been delivered, a lost answer is `Unknown`.
    pub async fn call_write<T: serde::de::DeserializeOwned>(
        &self,
        leader: u64,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<T, SubmitError> {
        self.post(leader, path, body, timeout, true).await
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        leader: u64,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
        writes: bool,
    ) -> Result<T, SubmitError> {
        let url = leader_url(self.raft, leader)?;
        let unreachable =
            |e: String| SubmitError::NoLeader(format!("leader {leader} unreachable: {e}"));
        // After the request may have reached the leader, a write's fate is unknown.
        let lost = |e: String| {
            if writes {
                SubmitError::Unknown(format!(
                    "forwarded to leader {leader}, but its answer was lost ({e}); the events may \
                     or may not be stored: retry with the same messageIds"
                ))
            } else {
                unreachable(e)
            }
        };
        let mut request = self
            .http
            .post(format!("{url}{path}"))
            .bearer_auth(self.cluster_key)
            .header(FROM_HEADER, self.self_id);
        if let Some(id) = &self.cluster_id {
            request = request.header(crate::cluster::identity::CLUSTER_HEADER, id);
        }
        let response = request
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() || e.is_builder() {
                    unreachable(e.to_string())
                } else {
                    lost(e.to_string())
                }
            })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| lost(e.to_string()))?;
        if !status.is_success() {
            return Err(unreachable(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        postcard::from_bytes(&bytes).map_err(|e| lost(e.to_string()))
    }
}
