//! The receiving side of peer traffic: Raft RPCs and writes forwarded by followers.
//!
//! Routes (all `POST`, postcard bodies, `Authorization: Bearer <cluster key>`, sender id in
//! `x-tandem-from`):
//! - `/internal/raft/append`, `/internal/raft/vote`, `/internal/raft/pre-vote`: handed to
//!   the local Raft;
//! - `/internal/raft/snapshot`: the body (a snapshot file) is streamed to disk, then
//!   installed;
//! - `/internal/propose`: validated events from a follower, proposed here (the leader) and
//!   answered with their outcomes;
//! - `/internal/command`: an administrative command (segment definitions) from a follower
//!   (never an ingest: events only arrive through `/internal/propose`);
//! - `/internal/read-index`, `/internal/lease-read-index`: this node's read index as
//!   leader, confirmed by a quorum round or by its leader lease (see
//!   [`crate::node::reads`]); with a body naming an identity, the index a read of that
//!   identity's profile must wait for (see [`crate::node::pending`]).
//!
//! Requests from another cluster (a different `x-tandem-cluster` id, see
//! [`crate::cluster::identity`]) are refused with 409 `cluster_mismatch`.
//!
//! Requests from a peer blocked by fault injection are refused with 503, completing the
//! symmetric partition that [`crate::cluster::network::Faults`] starts on the sending side.
//!
//! These handlers live in the API layer, not beside the openraft adapters in `cluster/`,
//! because they need the running node (its Raft handle, its write pipeline, its snapshot
//! directory): the cluster layer below stays free of HTTP servers and of the node.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::AppState;
use crate::cluster::identity::Admission;
use crate::cluster::network::{FROM_HEADER, SNAPSHOT_HEADER};
use crate::cluster::snapshot::SnapshotFile;
use crate::cluster::types::{Snapshot, SnapshotMeta, Vote};
use crate::model::event::Event;
use crate::model::identity::Identity;
use crate::node::reads;

/// Largest Raft append or forwarded proposal accepted, bytes.
pub const RPC_BYTES_MAX: usize = 512 << 20;

/// The internal routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/internal/raft/append", post(append))
        .route("/internal/raft/vote", post(vote))
        .route("/internal/raft/pre-vote", post(pre_vote))
        .route("/internal/raft/snapshot", post(snapshot))
        .route("/internal/propose", post(propose))
        .route(reads::READ_INDEX_PATH, post(read_index))
        .route(reads::LEASE_READ_INDEX_PATH, post(lease_read_index))
        .route("/internal/command", post(command))
        .route(
            super::dashboard::REPORT_PATH,
            axum::routing::get(super::dashboard::node_report),
        )
}

/// A postcard `Result<T, E>` reply.
fn reply<T: Serialize, E: Serialize>(result: Result<T, E>) -> Response {
    match postcard::to_stdvec(&result) {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// A refused internal request: a status and a plain-text reason.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal(status, message.into())
}

/// [`admit`] for internal routes outside this module: the sender's id, or the refusal's
/// status and reason.
pub fn admit_peer(state: &AppState, headers: &HeaderMap) -> Result<u64, (StatusCode, String)> {
    admit(state, headers).map_err(|Refusal(status, message)| (status, message))
}

/// Checks the cluster key and fault injection; returns the sender's id.
fn admit(state: &AppState, headers: &HeaderMap) -> Result<u64, Refusal> {
    let cluster = state.node.cluster();
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compared as hashes: blake3's equality is constant-time, so the time a refusal takes
    // says nothing about how much of a guess was right.
    let matches = presented.is_some_and(|key| {
        blake3::hash(key.as_bytes()) == blake3::hash(cluster.cluster_key().as_bytes())
    });
    if !matches {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "wrong or missing cluster key",
        ));
    }
    let from = headers
        .get(FROM_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "missing x-tandem-from"))?;
    let presented = headers
        .get(crate::cluster::identity::CLUSTER_HEADER)
        .and_then(|v| v.to_str().ok());
    // Whether this node has no Raft state yet (only then may it adopt a cluster id):
    // looked at only when it matters, not on every heartbeat.
    let fresh = || {
        use openraft::async_runtime::WatchReceiver;
        let metrics = cluster.raft().metrics();
        let metrics = metrics.borrow_watched();
        metrics.last_log_index.is_none()
            && metrics
                .membership_config
                .membership()
                .nodes()
                .next()
                .is_none()
    };
    match cluster.identity().admit(presented, fresh) {
        Admission::Accept => {}
        Admission::Adopted => {
            tracing::info!(
                cluster = presented.unwrap_or(""),
                from,
                "joined cluster: adopted its id"
            );
        }
        Admission::Refuse(why) => {
            tracing::warn!(from, %why, "refused a peer request from another cluster");
            return Err(refuse(
                StatusCode::CONFLICT,
                format!("cluster_mismatch: {why}"),
            ));
        }
    }
    if cluster.faults().is_blocked(from) {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("node {from} is partitioned from this node by fault injection"),
        ));
    }
    Ok(from)
}

async fn read_body(body: Body) -> Result<Bytes, Refusal> {
    axum::body::to_bytes(body, RPC_BYTES_MAX)
        .await
        .map_err(|e| refuse(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Refusal> {
    postcard::from_bytes(bytes).map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn append(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let handled = async {
        admit(&state, &headers)?;
        let rpc = decode(&read_body(body).await?)?;
        let result = state.node.raft().append_entries(rpc).await;
        Ok::<_, Refusal>(reply(result.map_err(|e| e.to_string())))
    };
    handled.await.unwrap_or_else(IntoResponse::into_response)
}

async fn vote(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let handled = async {
        admit(&state, &headers)?;
        let rpc = decode(&read_body(body).await?)?;
        let result = state.node.raft().vote(rpc).await;
        Ok::<_, Refusal>(reply(result.map_err(|e| e.to_string())))
    };
    handled.await.unwrap_or_else(IntoResponse::into_response)
}

async fn pre_vote(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let handled = async {
        admit(&state, &headers)?;
        let rpc = decode(&read_body(body).await?)?;
        let result = state.node.raft().pre_vote(rpc).await;
        Ok::<_, Refusal>(reply(result.map_err(|e| e.to_string())))
    };
    handled.await.unwrap_or_else(IntoResponse::into_response)
}

async fn snapshot(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let handled = async {
        admit(&state, &headers)?;
        let (vote, meta) = snapshot_header(&headers)?;
        let file = receive_file(&state, body).await?;
        let snapshot = Snapshot {
            meta,
            snapshot: file,
        };
        let result = state
            .node
            .raft()
            .install_full_snapshot(vote, snapshot)
            .await;
        Ok::<_, Refusal>(reply(result.map_err(|e| e.to_string())))
    };
    handled.await.unwrap_or_else(IntoResponse::into_response)
}

fn snapshot_header(headers: &HeaderMap) -> Result<(Vote, SnapshotMeta), Refusal> {
    use base64::Engine;
    let text = headers
        .get(SNAPSHOT_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "missing snapshot header"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))?;
    decode(&bytes)
}

/// Streams the request body (a packed snapshot) into a new snapshot directory, then
/// unpacks it there (checking every checksum) in a blocking thread.
async fn receive_file(state: &AppState, body: Body) -> Result<SnapshotFile, Refusal> {
    let internal = |e: std::io::Error| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let (snapshot, packed) = state
        .node
        .cluster()
        .snapshots()
        .receiving()
        .map_err(internal)?;
    let mut file = tokio::fs::File::create(&packed).await.map_err(internal)?;
    let mut stream = body.into_data_stream();
    let outcome = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(std::io::Error::other)?;
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        drop(file);
        let unpacking = snapshot.clone();
        tokio::task::spawn_blocking(move || {
            crate::cluster::snapshot::unpack_received(&unpacking, &packed)
        })
        .await
        .map_err(std::io::Error::other)?
    }
    .await;
    if let Err(error) = outcome {
        let _ = tokio::fs::remove_dir_all(&snapshot.path).await;
        return Err(internal(error));
    }
    Ok(snapshot)
}

async fn propose(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let handled = async {
        admit(&state, &headers)?;
        let events: Vec<Event> = decode(&read_body(body).await?)?;
        let node = Arc::clone(&state.node);
        let result = node.submit_here(events).await;
        Ok::<_, Refusal>(reply(result))
    };
    handled.await.unwrap_or_else(IntoResponse::into_response)
}

/// An administrative command (segment definitions) forwarded by a follower.
async fn command(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let handled = async {
        admit(&state, &headers)?;
        let command: crate::cluster::Command = decode(&read_body(body).await?)?;
        // Events reach the log only through /internal/propose, where the leader screens
        // them for duplicates and stamps the block's time itself; an ingest command here
        // would let a peer choose both.
        if matches!(command, crate::cluster::Command::Ingest(_)) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "/internal/command takes administrative commands only; events go through \
                 /internal/propose",
            ));
        }
        let node = Arc::clone(&state.node);
        let result = node.execute(command, true).await;
        Ok::<_, Refusal>(reply(result))
    };
    handled.await.unwrap_or_else(IntoResponse::into_response)
}

/// A follower asks the leader for a read index: the log index a linearizable read must
/// wait for. Confirms leadership with a quorum first. A body names the identity of a
/// profile read (postcard): the index may then be short of the commit index.
async fn read_index(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    answer_read_index(state, headers, body, false).await
}

/// A follower asks the leader for a read index for a lease read: confirmed by the
/// leader's lease, or by a quorum round when the lease has lapsed. A body as for
/// [`read_index`].
async fn lease_read_index(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer_read_index(state, headers, body, true).await
}

async fn answer_read_index(
    state: AppState,
    headers: HeaderMap,
    body: Body,
    lease: bool,
) -> Response {
    let handled = async {
        admit(&state, &headers)?;
        let body = read_body(body).await?;
        let result = if body.is_empty() {
            state
                .node
                .read_index_here(lease)
                .await
                .map_err(|e| e.to_string())
        } else {
            let identity: Identity = decode(&body)?;
            super::profiles::read_index_for(&state, identity, lease).await
        };
        Ok::<_, Refusal>(reply(result))
    };
    handled.await.unwrap_or_else(IntoResponse::into_response)
}
