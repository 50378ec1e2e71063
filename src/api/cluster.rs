//! Cluster administration over HTTP (admin key): status, membership changes, leadership
//! transfer, and the fault-injection switch used by partition tests and drills.
//!
//! Membership changes run on the leader; any other node answers 409 `not_leader` with the
//! leader's URL, which `tandem cluster` follows.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::auth::Access;
use super::error::ApiError;
use crate::cluster::Member;
use crate::cluster::membership::{self, MembershipError};

impl From<MembershipError> for ApiError {
    fn from(error: MembershipError) -> Self {
        let message = error.to_string();
        match error {
            MembershipError::NotLeader { leader, leader_url } => {
                let mut api = ApiError::new(StatusCode::CONFLICT, "not_leader", message);
                api.extra = Some(json!({"leader": leader, "leader_url": leader_url}));
                api
            }
            MembershipError::Invalid(_) => {
                ApiError::bad_request("invalid_membership_change", message)
            }
            MembershipError::Layout(_) => {
                ApiError::new(StatusCode::CONFLICT, "unsafe_layout", message)
            }
            MembershipError::Raft(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "raft_error", message)
            }
        }
    }
}

fn body<T: serde::de::DeserializeOwned>(
    payload: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    payload
        .map(|Json(value)| value)
        .map_err(|e| ApiError::bad_request("invalid_json", e.body_text()))
}

/// `GET /v1/admin/cluster`
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    Ok(Json(membership::view(state.node.raft())).into_response())
}

/// Body of `POST /v1/admin/cluster/learners`.
#[derive(Debug, Deserialize)]
pub struct AddLearner {
    node_id: u64,
    /// The node's client URL (the gateway and forwarded client reads use it).
    url: String,
    /// The node's peer URL (Raft and forwarded writes use it).
    peer_url: String,
    region: String,
}

/// `POST /v1/admin/cluster/learners`: add a node as a learner; it starts catching up.
pub async fn add_learner(
    State(state): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<AddLearner>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    let request = body(payload)?;
    let web = |url: &str| url.starts_with("http://") || url.starts_with("https://");
    if !web(&request.url)
        || !web(&request.peer_url)
        || request.region.trim().is_empty()
        || request.node_id == 0
    {
        return Err(ApiError::bad_request(
            "invalid_membership_change",
            "node_id must be ≥ 1, url and peer_url must start with http:// or https://, \
             region must not be empty",
        ));
    }
    let member = Member {
        url: request.url.trim_end_matches('/').to_owned(),
        peer_url: request.peer_url.trim_end_matches('/').to_owned(),
        region: request.region,
    };
    membership::add_learner(state.node.raft(), request.node_id, member).await?;
    Ok(Json(membership::view(state.node.raft())).into_response())
}

/// Body of `POST /v1/admin/cluster/voters`.
#[derive(Debug, Deserialize)]
pub struct Promote {
    node_ids: BTreeSet<u64>,
    #[serde(default)]
    force: bool,
}

/// `POST /v1/admin/cluster/voters`: promote caught-up learners to voters.
pub async fn promote(
    State(state): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<Promote>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    let request = body(payload)?;
    membership::promote(state.node.raft(), &request.node_ids, request.force).await?;
    Ok(Json(membership::view(state.node.raft())).into_response())
}

/// Body of `POST /v1/admin/cluster/remove`.
#[derive(Debug, Deserialize)]
pub struct Remove {
    node_id: u64,
    #[serde(default)]
    force: bool,
}

/// `POST /v1/admin/cluster/remove`
pub async fn remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<Remove>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    let request = body(payload)?;
    membership::remove(state.node.raft(), request.node_id, request.force).await?;
    Ok(Json(membership::view(state.node.raft())).into_response())
}

/// Body of `POST /v1/admin/cluster/replace`.
#[derive(Debug, Deserialize)]
pub struct Replace {
    old: u64,
    new: u64,
    #[serde(default)]
    force: bool,
}

/// `POST /v1/admin/cluster/replace`: swap voter `old` for learner `new`.
pub async fn replace(
    State(state): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<Replace>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    let request = body(payload)?;
    membership::replace(state.node.raft(), request.old, request.new, request.force).await?;
    Ok(Json(membership::view(state.node.raft())).into_response())
}

/// Body of `POST /v1/admin/cluster/transfer-leader`.
#[derive(Debug, Deserialize)]
pub struct Transfer {
    to: u64,
}

/// `POST /v1/admin/cluster/transfer-leader`
pub async fn transfer_leader(
    State(state): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<Transfer>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    let request = body(payload)?;
    membership::transfer_leader(state.node.raft(), request.to).await?;
    Ok(Json(json!({"requested": true, "to": request.to})).into_response())
}

/// Body of `POST /v1/admin/faults`.
#[derive(Debug, Deserialize)]
pub struct FaultsRequest {
    /// Peers to cut this node off from (both directions); empty heals.
    #[serde(default)]
    partition: BTreeSet<u64>,
}

/// `POST /v1/admin/faults` (only when `faults.enabled`): set the partitioned peers.
pub async fn set_faults(
    State(state): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<FaultsRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    if !state.config.faults.enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "faults_disabled",
            "fault injection is off; set faults.enabled = true (never in production)",
        ));
    }
    let request = body(payload)?;
    tracing::warn!(partition = ?request.partition, "fault injection: partition set");
    state.node.cluster().faults().set_blocked(request.partition);
    Ok(Json(json!({"partition": state.node.cluster().faults().blocked()})).into_response())
}
