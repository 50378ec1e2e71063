//! The HTTP API: routes, shared state, health and admin endpoints, and serving.
//!
//! Every reply is JSON. Every error is `{"code", "message"}` with a stable code (see
//! [`error`]). Handlers never panic on input and never block the async workers on disk:
//! writes go through the [`crate::node`] pipeline; reads wait for the freshness the client
//! asked for ([`consistency`]), then run on a store snapshot in the read pool's own
//! threads ([`pool`]), which nothing else uses; ingest bodies are parsed and validated in
//! a pool of their own, off the async workers that every read's request crosses.
//!
//! Connections are accepted and timed by [`mod@serve`] and [`watchdog`] (header, body and
//! idle limits, a connection cap); keys are checked by [`auth`] before any body is read;
//! ingestion is held to per-source [`quota`]s.

pub mod alerts;
pub mod auth;
pub mod backups;
pub mod body;
pub mod cluster;
pub mod consistency;
pub mod dashboard;
pub mod error;
pub mod ingest;
pub mod metrics;
pub mod peer;
pub mod pool;
pub mod profiles;
pub mod quota;
pub mod recommendations;
pub mod segments;
pub mod serve;
pub mod services;
pub mod watchdog;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::model::event::MessageType;
use crate::model::identity::Blocklist;
use crate::node::Node;
use crate::store::read::Reader;
use auth::{Access, Keys};
use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The commit pipeline and store.
    pub node: Arc<Node>,
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Write, read and admin keys; replaced whole on reload (SIGHUP).
    pub keys: Arc<Keys>,
    /// Junk identity values.
    pub blocklist: Arc<Blocklist>,
    /// The threads every store read runs on.
    reads: Arc<pool::WorkPool>,
    /// The threads ingest bodies are parsed and validated on.
    ingest: Arc<pool::WorkPool>,
    /// Node-wide bytes of request bodies being read and validated (`limits.body_bytes_max`).
    pub bodies: body::BodyBudget,
    /// Dashboard documents being gathered at once (each asks every peer).
    pub dashboards: Arc<tokio::sync::Semaphore>,
    /// This node's backup jobs.
    pub backups: Arc<crate::backup::job::Jobs>,
}

impl AppState {
    /// State for a node running with `config`; starts the read threads.
    pub fn new(node: Arc<Node>, config: Arc<Config>) -> std::io::Result<AppState> {
        let reads =
            pool::WorkPool::start("read", pool::default_threads(), pool::READ_QUEUE_MAX, 0)?;
        let ingest = pool::WorkPool::start(
            "ingest",
            pool::default_threads(),
            pool::INGEST_QUEUE_MAX,
            crate::node::priority::INGEST_NICE,
        )?;
        let backups: Arc<crate::backup::job::Jobs> = Arc::default();
        // Scheduled backups (nothing without `[backup] repo` and `schedule`); needs the
        // runtime, which every caller runs in.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(crate::backup::schedule::run(
                Arc::clone(&backups),
                Arc::clone(&node),
                Arc::clone(&config),
            ));
            // Continuous log archiving (nothing unless `[backup] archive_interval_secs`).
            runtime.spawn(crate::backup::archiver::run(
                Arc::clone(&node),
                Arc::clone(&config),
            ));
            // The repository watch and scheduled verification (cleans a crashed
            // verification's scratch directory even without a repository).
            runtime.spawn(crate::backup::watch::run(
                Arc::clone(&backups),
                Arc::clone(&node),
                Arc::clone(&config),
            ));
        }
        Ok(AppState {
            keys: Arc::new(Keys::from_config(&config)),
            blocklist: Arc::new(Blocklist::new(&config.identity.blocklist)),
            reads: Arc::new(reads),
            ingest: Arc::new(ingest),
            bodies: body::BodyBudget::new(config.limits.body_bytes_max),
            dashboards: Arc::new(tokio::sync::Semaphore::new(dashboard::DOCUMENTS_MAX)),
            backups,
            node,
            config,
        })
    }

    /// Runs `query` on a fresh store snapshot in the read pool. A full queue is answered
    /// 429 `read_overloaded` at once.
    pub async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Reader) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = Arc::clone(self.node.store());
        self.run_read(move || query(&store.reader())).await
    }

    /// Runs `read` (a read of a service's own database, say) in the read pool, like
    /// [`AppState::read`] without a store snapshot.
    pub async fn run_read<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let node = Arc::clone(&self.node);
        let queued = std::time::Instant::now();
        pooled(&self.reads, "read_overloaded", move || {
            node.metrics().observe_read_stage("queued", queued);
            let started = std::time::Instant::now();
            let answer = read();
            node.metrics().observe_read_stage("lookup", started);
            answer
        })
        .await
    }

    /// Runs `work` (parsing and validating an ingest body) in the ingest pool. A full
    /// queue is answered 429 `overloaded` at once, like a full commit pipeline.
    pub async fn ingest_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        pooled(&self.ingest, "overloaded", move || {
            if let Some(delay) = crate::crash::delay("parse") {
                std::thread::sleep(delay);
            }
            work()
        })
        .await
    }
}

/// Runs `work` in `pool`; a full queue is 429 `full_code`.
async fn pooled<T: Send + 'static>(
    pool: &pool::WorkPool,
    full_code: &'static str,
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    match pool.run(work).await {
        Ok(result) => result,
        Err(full @ pool::PoolError::Full { .. }) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            full_code,
            format!("{full}; retry shortly"),
        )),
        Err(failed @ pool::PoolError::Failed { .. }) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            failed.to_string(),
        )),
    }
}

/// The client listener's routes: everything but the peer routes, which only the peer
/// listener serves (`/internal/*` here is 404 like any unknown path).
pub fn router(state: AppState) -> Router {
    let single = |kind: MessageType| {
        post(
            move |s: State<AppState>, h: HeaderMap, b: axum::body::Body| {
                ingest::single(kind, s, h, b)
            },
        )
    };
    // A key in Authorization is checked before any handler, so before any body is read.
    let ingestion = Router::new()
        .route("/v1/identify", single(MessageType::Identify))
        .route("/v1/track", single(MessageType::Track))
        .route("/v1/page", single(MessageType::Page))
        .route("/v1/screen", single(MessageType::Screen))
        .route("/v1/group", single(MessageType::Group))
        .route("/v1/alias", single(MessageType::Alias))
        .route("/v1/batch", post(ingest::batch))
        .route("/v1/import", post(ingest::batch))
        .route_layer(from_fn_with_state(
            state.clone(),
            auth::known_key_if_present,
        ));
    let keyed = Router::new()
        .route("/v1/profiles/{id}", get(profiles::get))
        .route("/v1/profiles/{id}/events", get(profiles::events))
        .route("/v1/profiles/{id}/merges", get(profiles::merges))
        .route(
            "/v1/profiles/{id}/recommendations",
            get(recommendations::get),
        )
        .route("/v1/profiles/{id}/segments", get(segments::of_profile))
        .route("/v1/segments", get(segments::list).post(segments::create))
        .route(
            "/v1/segments/{id}",
            get(segments::get)
                .put(segments::replace)
                .delete(segments::delete),
        )
        .route("/v1/segments/{id}/members", get(segments::members))
        .route("/v1/segment-transitions", get(segments::transitions))
        .route("/v1/admin/status", get(admin_status))
        .route("/v1/admin/state-hash", get(admin_state_hash))
        .route(
            "/v1/admin/backups",
            get(backups::list).post(backups::create),
        )
        .route("/v1/admin/backups/status", get(backups::status))
        .route("/v1/admin/backups/verify", post(backups::verify))
        .route("/v1/admin/cluster", get(cluster::status))
        .route("/v1/admin/cluster/learners", post(cluster::add_learner))
        .route("/v1/admin/cluster/voters", post(cluster::promote))
        .route("/v1/admin/cluster/remove", post(cluster::remove))
        .route("/v1/admin/cluster/replace", post(cluster::replace))
        .route(
            "/v1/admin/cluster/transfer-leader",
            post(cluster::transfer_leader),
        )
        .route("/v1/admin/faults", post(cluster::set_faults))
        .route("/v1/admin/faults/services", post(services::set_fault))
        .route("/v1/admin/services", get(services::status))
        .route("/v1/admin/alerts", get(alerts::list))
        .route("/v1/admin/dashboard", get(dashboard::document))
        .route_layer(from_fn_with_state(state.clone(), auth::known_key_required));
    Router::new()
        .merge(ingestion)
        .merge(keyed)
        .route("/metrics", get(metrics::metrics))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/app.css", get(dashboard::style))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health/leader", get(leader))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.clone(), metrics::instrument))
        .with_state(state)
}

/// The peer listener's routes: the peer RPCs ([`peer`]) and nothing else.
pub fn peer_router(state: AppState) -> Router {
    peer::routes()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.clone(), metrics::instrument))
        .with_state(state)
}

/// Most connections the peer listener holds open: each peer keeps two (Raft, and
/// forwarded writes and read indexes), so this leaves room for far more nodes than a
/// cluster has, while a flood of peer-port connections cannot exhaust file descriptors.
pub const PEER_CONNECTIONS_MAX: usize = 256;

/// Serves the client routes until `shutdown` completes, then finishes in-flight requests,
/// under the `[http]` limits (see [`serve::serve`]), over TLS with `tls`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let http = state.config.http.clone();
    serve::serve(listener, router(state), &http, tls, shutdown).await
}

/// Serves the peer routes like [`serve`] (mutual TLS with `tls`), with the `[http]`
/// timeouts and at most [`PEER_CONNECTIONS_MAX`] connections.
pub async fn serve_peers(
    listener: TcpListener,
    state: AppState,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = state.config.http.clone();
    http.connections_max = http.connections_max.min(PEER_CONNECTIONS_MAX);
    serve::serve(listener, peer_router(state), &http, tls, shutdown).await
}

/// Liveness: 503 once a fatal storage or Raft error has stopped the node (fail-stop, like
/// PostgreSQL after a failed fsync), so a supervisor restarts it — recovery then starts
/// from what is durable — instead of keeping a process that can no longer apply.
async fn live(State(state): State<AppState>) -> Response {
    use openraft::async_runtime::WatchReceiver;
    let raft_stopped = match &state.node.raft().metrics().borrow_watched().running_state {
        Ok(()) => None,
        Err(fatal) => Some(fatal.to_string()),
    };
    if state.node.has_failed() || raft_stopped.is_some() {
        let cause = raft_stopped.unwrap_or_else(|| "a raft write failed".to_owned());
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "failed",
                "reason": format!("a fatal error stopped this node ({cause}); see its log, then restart it"),
            })),
        )
            .into_response();
    }
    axum::Json(json!({"status": "live"})).into_response()
}

async fn ready(State(state): State<AppState>) -> Response {
    use openraft::async_runtime::WatchReceiver;
    let metrics = state.node.raft().metrics().borrow_watched().clone();
    let reason = if state.node.is_shutting_down() {
        Some("shutting down".to_owned())
    } else if state.node.has_failed() {
        Some("a fatal storage or raft error stopped writes; see the node's log".to_owned())
    } else if let Err(fatal) = &metrics.running_state {
        Some(format!("raft stopped: {fatal}"))
    } else if metrics.current_leader.is_none() {
        Some("no leader known (election in progress, or no quorum reachable)".to_owned())
    } else if lag_entries(&metrics) > READY_LAG_ENTRIES_MAX {
        Some(format!(
            "catching up: {} committed entries not applied yet (ready below {READY_LAG_ENTRIES_MAX})",
            lag_entries(&metrics)
        ))
    } else {
        None
    };
    let detail = json!({
        "node_id": metrics.id,
        "state": format!("{:?}", metrics.state),
        "leader": metrics.current_leader,
        "term": metrics.current_term,
        "last_log_index": metrics.last_log_index,
        "applied_index": metrics.last_applied.as_ref().map(|id| id.index),
        "lag_entries": lag_entries(&metrics),
    });
    // A degraded CDP service does not make the node unready: ingestion and profiles go on;
    // the per-service status says what is degraded.
    let services = state.node.services().statuses();
    match reason {
        None => axum::Json(json!({"status": "ready", "raft": detail, "services": services}))
            .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not_ready", "reason": reason, "raft": detail, "services": services})),
        )
            .into_response(),
    }
}

/// Most committed-but-unapplied entries for a node to count as caught up (ready).
pub const READY_LAG_ENTRIES_MAX: u64 = 64;

/// Committed entries this node has not applied yet.
pub fn lag_entries(metrics: &openraft::RaftMetrics<crate::cluster::TypeConfig>) -> u64 {
    let committed = metrics
        .cluster_committed
        .as_ref()
        .or(metrics.local_committed.as_ref());
    let committed = committed.map_or(0, |id| id.index);
    let applied = metrics.last_applied.as_ref().map_or(0, |id| id.index);
    committed.saturating_sub(applied)
}

/// `GET /health/leader`: 200 only on the leader, once a quorum has acknowledged it in its
/// term. openraft restarts an ex-leader whose vote for itself was committed as the leader
/// of that old term until it hears of a newer one; load balancers route writes by this
/// answer, so such a node must not say "leader" before a quorum confirms it (a single-node
/// cluster's leader is its own quorum).
async fn leader(State(state): State<AppState>) -> Response {
    use openraft::async_runtime::WatchReceiver;
    let metrics = state.node.raft().metrics().borrow_watched().clone();
    let body = json!({
        "node_id": metrics.id,
        "leader": metrics.current_leader,
        "term": metrics.current_term,
    });
    if crate::cluster::leads(&metrics)
        && metrics.last_quorum_acked.is_some()
        && !state.node.is_shutting_down()
    {
        axum::Json(json!({"status": "leader", "raft": body})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not_leader", "raft": body})),
        )
            .into_response()
    }
}

async fn admin_status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use openraft::async_runtime::WatchReceiver;
    use std::sync::atomic::Ordering::Relaxed;
    state.keys.require(&headers, Access::Admin)?;
    let (applied_index, counts) = state
        .read(move |reader| Ok((reader.applied_index()?, reader.counts())))
        .await?;
    let metrics = state.node.raft().metrics().borrow_watched().clone();
    let stats = state.node.stats();
    let body = json!({
        "node_id": metrics.id,
        "applied_index": applied_index,
        "raft": {
            "state": format!("{:?}", metrics.state),
            "term": metrics.current_term,
            "leader": metrics.current_leader,
            "last_log_index": metrics.last_log_index,
            "last_applied": metrics.last_applied.as_ref().map(|id| id.index),
            "snapshot": metrics.snapshot.as_ref().map(|id| id.index),
            "purged": metrics.purged.as_ref().map(|id| id.index),
        },
        "counts": counts,
        "inflight_events": state.node.inflight_events(),
        "body_bytes_reserved": state.bodies.reserved_bytes(),
        "commits": stats.commits.load(Relaxed),
        "events_stored": stats.events_stored.load(Relaxed),
        "events_duplicate": stats.events_duplicate.load(Relaxed),
        "forwarded": stats.forwarded.load(Relaxed),
        "overloaded_refusals": stats.overloaded.load(Relaxed),
    });
    Ok(axum::Json(body).into_response())
}

/// The query of `GET /v1/admin/state-hash`.
#[derive(serde::Deserialize)]
struct StateHashQuery {
    consistency: Option<String>,
    after: Option<String>,
}

/// `GET /v1/admin/state-hash`: this node's state as applied now (`local`, the default:
/// drills compare nodes' states as they are), or, with `consistency` or `after` as for
/// profile reads, once the node has applied what that read mode requires — e.g. every
/// write acknowledged before the request, with `consistency=linearizable`.
async fn admin_state_hash(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<StateHashQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    let axum::extract::Query(query) =
        query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let consistency = match (&query.consistency, &query.after) {
        (None, None) => Some("local"),
        (given, _) => given.as_deref(),
    };
    let read = consistency::requirement(consistency, query.after.as_deref(), &headers)?;
    state.node.prepare_read(read).await?;
    let services = Arc::clone(state.node.services());
    let body: Value = state
        .read(move |reader| {
            let services = services.hashes().map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("hashing the services' state: {e}"),
                )
            })?;
            Ok(json!({
                "applied_index": reader.applied_index()?,
                "state_hash": reader.state_hash()?,
                "feed_head": reader.feed_head()?,
                "services_hash": services_hash(&services),
                "services": services,
            }))
        })
        .await?;
    Ok(axum::Json(body).into_response())
}

fn services_hash(services: &[crate::services::supervisor::ServiceHash]) -> String {
    crate::services::supervisor::combined_hash(
        services.iter().map(|s| (s.name, s.cursor, s.hash.as_str())),
    )
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(
        "not_found",
        format!("no endpoint {method} {}; see docs/api.md", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
