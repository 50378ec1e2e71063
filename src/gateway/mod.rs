//! The load-balancing gateway: one HTTP front that spreads client requests over the
//! healthy nodes of a Tandem cluster (`tandem gateway`, or in-process through [`serve`]).
//!
//! It owns no data. What it owns is the choice of node for each request and what happens
//! when that node fails, built from tower's parts:
//! - **balancing**: a `tower::balance::p2c::Balance` — power of two random choices, the
//!   lighter wins — over a `tower::discover` stream of node services
//!   ([`registry`]); the load is requests in flight, and a recent 429 outweighs any
//!   number of them ([`endpoint`]);
//! - **active health checks**: every interval, `GET /health/ready` on every node
//!   ([`checker`]); only a node whose last check said ready is in the balancer's set;
//! - **passive ejection**: a proxied request that fails on a node with a connection error
//!   or a 5xx takes the node out of the set at once, for at least
//!   [`EJECTION_MIN_MS`](options::EJECTION_MIN_MS) and until its next ready check
//!   ([`health`]);
//! - **retries on another node** when a second copy cannot change the outcome — nodes
//!   deduplicate ingest by `messageId` and store nothing when they answer 429/503 — via a
//!   `tower::retry::Policy` ([`retry`]), within a `tower::timeout` for the whole request;
//! - **load shedding**: at most `inflight_max` requests in flight; the next gets 429 at
//!   once, never a queue ([`proxy`]).
//!
//! Invariants: a node is in the balancer's set only while its last health check said
//! ready and it is not ejected; a request body is buffered whole (at most
//! [`BODY_MAX_BYTES`]) before any node sees it, so every attempt sends identical bytes; a
//! node's reply is relayed unchanged apart from hop-by-hop headers ([`headers`]); the
//! gateway's own replies use the nodes' `{"code","message"}` shape ([`error`]).
//!
//! The gateway answers `/health/live`, `/health/ready` and `/gateway/status` itself
//! ([`status`]) and proxies every other path.

pub mod checker;
pub mod endpoint;
pub mod error;
pub mod headers;
pub mod health;
pub mod options;
pub mod proxy;
pub mod registry;
pub mod retry;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;

pub use error::GatewayError;
pub use options::{BODY_MAX_BYTES, GatewayOptions};

use options::{
    CONNECT_TIMEOUT_MS, HEALTH_PROBE_TIMEOUT_MS, IDLE_CONNECTION_MS, IDLE_CONNECTIONS_PER_NODE_MAX,
};
use proxy::Proxy;
use registry::Registry;

/// Runs a gateway on `listener` until `shutdown` completes, then finishes the requests in
/// flight and returns.
///
/// Options are validated first. One round of health checks runs before the first request
/// is answered (connections wait in the listener's backlog meanwhile), so a gateway
/// started next to ready nodes never answers `no_healthy_nodes` for want of a first check.
pub async fn serve(
    listener: TcpListener,
    options: GatewayOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let nodes = options.validate()?;
    let client = crate::tls::http_client_builder(options.ca_file.as_deref())
        .map_err(|error| GatewayError::Client(error.to_string()))?
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_NODE_MAX)
        .pool_idle_timeout(Duration::from_millis(IDLE_CONNECTION_MS))
        .tcp_nodelay(true)
        .http1_only()
        .build()
        .map_err(|error| GatewayError::Client(endpoint::describe(&error)))?;
    let registry = Registry::new(nodes, client);
    let interval = Duration::from_millis(options.health_interval_ms);
    let probe_timeout = Duration::from_millis(HEALTH_PROBE_TIMEOUT_MS);

    checker::check_all(&registry, probe_timeout).await;
    tracing::info!(
        nodes = registry.nodes().len(),
        in_rotation = registry.in_rotation(),
        "gateway ready to serve"
    );
    let checks = AbortOnDrop(tokio::spawn(checker::run(
        Arc::clone(&registry),
        interval,
        probe_timeout,
    )));

    let proxy = Arc::new(Proxy::new(
        registry,
        options.inflight_max,
        options.request_timeout_ms,
        options.attempts_max,
    ));
    let app = Router::new()
        .route("/health/live", get(status::live))
        .route("/health/ready", get(status::ready))
        .route("/gateway/status", get(status::status))
        .fallback(proxy::handle)
        .with_state(proxy);
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(GatewayError::Serve);
    drop(checks);
    served
}

/// Aborts a background task when dropped, so no exit path of [`serve`] leaves the health
/// checker running.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
