//! Raft RPCs to peers: `RaftNetworkV2` over HTTP/2 to each peer's peer listener — mutual
//! TLS (h2 by ALPN) by default, cleartext with prior knowledge when the cluster is
//! configured so — with postcard bodies and a shared cluster key.
//!
//! Snapshots are packed into one stream as they are sent (state file, then log segments;
//! see [`super::snapshot`]); nothing holds a whole snapshot in memory. Every call honours openraft's soft timeout and reports a peer it
//! cannot reach as `Unreachable`, so openraft backs off instead of hammering it.
//!
//! Fault injection: [`Faults`] holds the set of peers this node pretends it cannot reach.
//! Calls to them fail as unreachable and their calls to us are refused (see
//! [`super::server`]), which is a symmetric network partition between this node and them.
//! Tests drive it through the admin API; it is off (empty) unless used.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::Future;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::snapshot::SnapshotFile;
use super::types::{Snapshot, Vote};
use super::{Member, TypeConfig};

/// Header carrying the sender's node id on internal requests.
pub const FROM_HEADER: &str = "x-tandem-from";
/// Header carrying the postcard-encoded `(vote, meta)` of a streamed snapshot, base64.
pub const SNAPSHOT_HEADER: &str = "x-tandem-snapshot";

/// Peers this node pretends it cannot reach, in both directions.
#[derive(Debug, Default)]
pub struct Faults {
    blocked: RwLock<BTreeSet<u64>>,
}

impl Faults {
    /// Replaces the set of blocked peers.
    pub fn set_blocked(&self, peers: BTreeSet<u64>) {
        *self.blocked.write().unwrap_or_else(|p| p.into_inner()) = peers;
    }

    /// Whether traffic with `peer` is blocked.
    pub fn is_blocked(&self, peer: u64) -> bool {
        self.blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&peer)
    }

    /// The blocked peers.
    pub fn blocked(&self) -> BTreeSet<u64> {
        self.blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Creates peer clients; one per target.
#[derive(Clone)]
pub struct Network {
    http: reqwest::Client,
    self_id: u64,
    cluster_key: Arc<str>,
    faults: Arc<Faults>,
    /// This node's cluster id, sent on every request (see [`super::identity`]).
    identity: Arc<super::identity::ClusterIdentity>,
    /// Round trips of replication requests that carry entries, seconds (the node exports
    /// them): send, the follower's append and fsync, the reply.
    replicate_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Network {
    /// A network for node `self_id`, authenticating with `cluster_key` and presenting the
    /// cluster id of `identity`, its calls made by a client from `http` (which carries the
    /// node's TLS identity and the cluster CA when peers use mutual TLS).
    pub fn new(
        self_id: u64,
        cluster_key: &str,
        faults: Arc<Faults>,
        http: reqwest::ClientBuilder,
        identity: Arc<super::identity::ClusterIdentity>,
    ) -> Result<Network, reqwest::Error> {
        // HTTP/2 only (h2 by ALPN over TLS, prior knowledge in plaintext): one multiplexed
        // connection per peer carries heartbeats, appends and votes side by side, so a
        // large append never queues a heartbeat behind it on the same connection.
        let http = http
            .http2_prior_knowledge()
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()?;
        Ok(Network {
            http,
            self_id,
            cluster_key: cluster_key.into(),
            faults,
            identity,
            replicate_seconds: super::stage_histogram(),
        })
    }

    /// Round trips of replication requests with entries, seconds.
    pub fn replicate_seconds(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.replicate_seconds
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerClient {
        PeerClient {
            network: self.clone(),
            target,
            url: node.peer_url.trim_end_matches('/').to_owned(),
        }
    }
}

/// RPCs to one peer.
pub struct PeerClient {
    network: Network,
    target: u64,
    url: String,
}

type RpcError = RPCError<TypeConfig>;

impl PeerClient {
    fn request(&self, path: &str, timeout: Duration) -> Result<reqwest::RequestBuilder, RpcError> {
        if self.network.faults.is_blocked(self.target) {
            return Err(RPCError::Unreachable(Unreachable::from_string(format!(
                "node {} is partitioned from this node by fault injection",
                self.target
            ))));
        }
        let request = self
            .network
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&*self.network.cluster_key)
            .header(FROM_HEADER, self.network.self_id)
            .timeout(timeout);
        Ok(match self.network.identity.get() {
            Some(id) => request.header(super::identity::CLUSTER_HEADER, id),
            None => request,
        })
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcError> {
        let body = postcard::to_stdvec(request).map_err(|e| network_error(&e))?;
        let response = self
            .request(path, option.soft_ttl())?
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        decode_reply(response).await
    }
}

/// Reads a `Result<T, String>` postcard reply; a remote error counts as unreachable (the
/// peer is up but cannot serve Raft, e.g. shutting down).
async fn decode_reply<Resp: DeserializeOwned>(
    response: reqwest::Response,
) -> Result<Resp, RpcError> {
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes);
        return Err(RPCError::Unreachable(Unreachable::from_string(format!(
            "peer answered {status}: {text}"
        ))));
    }
    let reply: Result<Resp, String> =
        postcard::from_bytes(&bytes).map_err(|e| network_error(&e))?;
    reply.map_err(|message| RPCError::Unreachable(Unreachable::from_string(message)))
}

/// Chunks of a packed snapshot ([`super::snapshot::pack`]), produced by a blocking thread
/// a few chunks ahead of the sender.
fn packed_stream(
    snapshot: SnapshotFile,
) -> impl futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + 'static {
    let (chunks, receiver) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut writer = ChunkWriter {
            chunks: chunks.clone(),
            buf: Vec::with_capacity(PACK_CHUNK_BYTES),
        };
        let outcome = super::snapshot::pack(&snapshot, &mut writer)
            .and_then(|_| std::io::Write::flush(&mut writer));
        if let Err(error) = outcome {
            tracing::warn!(%error, path = %snapshot.path.display(), "packing a snapshot to send failed");
            let _ = chunks.blocking_send(Err(error));
        }
    });
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    })
}

/// Shortest timeout of a replication request that carries entries.
const APPEND_TIMEOUT_MIN: Duration = Duration::from_secs(2);

/// Bytes per chunk of a packed snapshot sent to a peer.
const PACK_CHUNK_BYTES: usize = 256 << 10;

/// Writes into fixed-size chunks handed to the sending task.
struct ChunkWriter {
    chunks: tokio::sync::mpsc::Sender<Result<axum::body::Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = PACK_CHUNK_BYTES - self.buf.len();
        let taken = bytes.len().min(room);
        self.buf.extend_from_slice(&bytes[..taken]);
        if self.buf.len() == PACK_CHUNK_BYTES {
            self.flush()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = axum::body::Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(PACK_CHUNK_BYTES),
        ));
        self.chunks
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the snapshot receiver went away"))
    }
}

fn transport_error(error: &reqwest::Error) -> RpcError {
    if error.is_connect() || error.is_timeout() {
        RPCError::Unreachable(Unreachable::new(error))
    } else {
        network_error(error)
    }
}

fn network_error(error: &(impl std::error::Error + 'static)) -> RpcError {
    RPCError::Network(NetworkError::new(error))
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcError> {
        // openraft times a replication request by the heartbeat interval (30 ms here), which
        // suits heartbeats but not a request carrying megabytes of entries: timing those out
        // made the leader back off 200 ms per timeout and stalled commits (measured). A
        // request with entries gets at least APPEND_TIMEOUT_MIN; failure detection does not
        // depend on it (elections do that).
        if rpc.entries.is_empty() {
            return self.call("/internal/raft/append", &rpc, &option).await;
        }
        let option = RPCOption::new(option.hard_ttl().max(APPEND_TIMEOUT_MIN));
        let started = std::time::Instant::now();
        let reply = self.call("/internal/raft/append", &rpc, &option).await;
        self.network
            .replicate_seconds
            .observe(started.elapsed().as_secs_f64());
        reply
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        self.call("/internal/raft/vote", &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        self.call("/internal/raft/pre-vote", &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        use base64::Engine;
        let header =
            postcard::to_stdvec(&(&vote, &snapshot.meta)).map_err(|e| network_error(&e))?;
        let header = base64::engine::general_purpose::STANDARD.encode(header);
        let body = reqwest::Body::wrap_stream(packed_stream(snapshot.snapshot));
        // A snapshot can be large: allow far longer than a heartbeat-sized RPC.
        let timeout = option.hard_ttl().max(Duration::from_secs(600));
        let send = self
            .request("/internal/raft/snapshot", timeout)?
            .header(SNAPSHOT_HEADER, header)
            .body(body)
            .send();
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = send => {
                let response = sent.map_err(|e| transport_error(&e))?;
                Ok(decode_reply(response).await?)
            }
        }
    }
}
