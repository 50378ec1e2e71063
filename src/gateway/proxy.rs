//! The proxy: how a client request becomes node attempts, and a node reply the response.
//!
//! Per request, in order:
//! 1. **shed**: take an in-flight permit or answer 429 at once. The permit is taken before
//!    the body is read, so at most `inflight_max` bodies are buffered, and it is held until
//!    the response body has been streamed back;
//! 2. **buffer** the body, at most [`BODY_MAX_BYTES`] (else 413, nothing forwarded);
//! 3. with no node in rotation, answer 503 `no_healthy_nodes` without waiting;
//! 4. **call the tower stack** built by [`Proxy::new`]: `Timeout` (the whole request) over
//!    `Retry` (the [`RetryPolicy`]) over a `Buffer` that shares one `p2c::Balance` between
//!    all requests; the balancer picks among the [`Endpoint`]s its discover stream
//!    ([`ChangeStream`]) has inserted;
//! 5. **relay** the node's reply — status, end-to-end headers, streamed body — as it came,
//!    including a final 429/503 with the node's own `Retry-After`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::retry::Retry;
use tower::timeout::Timeout;
use tower::timeout::error::Elapsed;
use tower::{BoxError, Service, ServiceExt};

use super::endpoint::{NodeResponse, ProxyRequest};
use super::error::GatewayError;
use super::headers;
use super::options::BODY_MAX_BYTES;
use super::registry::{ChangeStream, Registry};
use super::retry::{RetryPolicy, classify};

#[cfg(doc)]
use super::endpoint::Endpoint;

/// The balancer over the nodes in rotation.
type Balancer = Balance<ChangeStream, ProxyRequest>;
/// The balancer shared by all requests (a `Buffer` worker task owns it).
type Shared = Buffer<ProxyRequest, <Balancer as Service<ProxyRequest>>::Future>;
/// What each request calls.
pub type Stack = Timeout<Retry<RetryPolicy, Shared>>;

/// Everything a proxied request needs.
pub struct Proxy {
    /// The nodes.
    pub registry: Arc<Registry>,
    /// The tower stack; cloned per request (clones share the balancer).
    stack: Stack,
    /// One permit per request in flight.
    inflight: Arc<Semaphore>,
    /// The limit behind `inflight`.
    inflight_max: usize,
    /// The request timeout.
    request_timeout_ms: u64,
}

impl Proxy {
    /// Builds the stack; must run inside a tokio runtime (the buffer spawns its worker).
    pub fn new(
        registry: Arc<Registry>,
        inflight_max: usize,
        request_timeout_ms: u64,
        attempts_max: u32,
    ) -> Proxy {
        let balancer = Balance::new(ChangeStream::new(Arc::clone(&registry)));
        // Each admitted request has at most one call queued at a time, so this bound is
        // never what makes a request wait.
        let shared = Buffer::new(balancer, inflight_max);
        let policy = RetryPolicy::new(attempts_max, Arc::clone(&registry));
        let stack = Timeout::new(
            Retry::new(policy, shared),
            Duration::from_millis(request_timeout_ms),
        );
        Proxy {
            registry,
            stack,
            inflight: Arc::new(Semaphore::new(inflight_max)),
            inflight_max,
            request_timeout_ms,
        }
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> usize {
        self.inflight_max - self.inflight.available_permits()
    }

    /// The in-flight limit.
    pub fn inflight_max(&self) -> usize {
        self.inflight_max
    }

    /// The stack's verdict on an error, in terms a client can act on.
    fn explain(&self, error: BoxError) -> GatewayError {
        if error.is::<Elapsed>() {
            return if self.registry.in_rotation() == 0 {
                GatewayError::NoHealthyNodes
            } else {
                GatewayError::Timeout {
                    timeout_ms: self.request_timeout_ms,
                }
            };
        }
        match error.downcast::<GatewayError>() {
            Ok(error) => *error,
            Err(other) => GatewayError::Internal(other.to_string()),
        }
    }
}

/// The fallback handler: every request that is not one of the gateway's own.
pub async fn handle(
    State(proxy): State<Arc<Proxy>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    if is_peer_path(request.uri().path()) {
        return GatewayError::NotForwarded {
            path: request.uri().path().to_owned(),
        }
        .into_response();
    }
    let Ok(permit) = Arc::clone(&proxy.inflight).try_acquire_owned() else {
        return GatewayError::Overloaded {
            inflight_max: proxy.inflight_max,
        }
        .into_response();
    };
    match forward(&proxy, client, request).await {
        Ok(reply) => relay(reply, permit),
        Err(error) => error.into_response(),
    }
}

/// The nodes' peer routes, which carry Raft traffic, forwarded writes and snapshots between
/// nodes. Leading slashes and case are ignored, so neither `//internal/…` nor
/// `/INTERNAL/…` slips past.
fn is_peer_path(path: &str) -> bool {
    const PREFIX: &[u8] = b"internal";
    let trimmed = path.trim_start_matches('/').as_bytes();
    trimmed.len() >= PREFIX.len()
        && trimmed[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        && matches!(trimmed.get(PREFIX.len()), None | Some(b'/'))
}

async fn forward(
    proxy: &Proxy,
    client: SocketAddr,
    request: Request,
) -> Result<NodeResponse, GatewayError> {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > BODY_MAX_BYTES as u64) {
        return Err(GatewayError::RequestTooLarge {
            limit_bytes: BODY_MAX_BYTES,
        });
    }
    let body = read_body(body, BODY_MAX_BYTES).await?;
    if proxy.registry.in_rotation() == 0 {
        return Err(GatewayError::NoHealthyNodes);
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let request = ProxyRequest {
        replay: classify(&parts.method, parts.uri.path()),
        method: parts.method,
        path_and_query,
        headers: headers::to_node(&parts.headers, client.ip()),
        body,
    };
    call(proxy.stack.clone(), request)
        .await
        .map_err(|error| proxy.explain(error))
}

/// Runs one request through the stack.
///
/// Boxed as `Send` here, where the types are concrete: left to inference inside the
/// handler, rustc cannot prove the stack's future `Send` for every lifetime (a known
/// limitation with higher-ranked bounds) and axum rejects the handler.
fn call(
    stack: Stack,
    request: ProxyRequest,
) -> Pin<Box<dyn Future<Output = Result<NodeResponse, BoxError>> + Send>> {
    Box::pin(stack.oneshot(request))
}

/// The whole body, or `RequestTooLarge` as soon as it passes `max` bytes.
async fn read_body(body: Body, max: usize) -> Result<Bytes, GatewayError> {
    let mut stream = body.into_data_stream();
    let mut buffered = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| GatewayError::BodyUnreadable(error.to_string()))?;
        if buffered.len() + chunk.len() > max {
            return Err(GatewayError::RequestTooLarge { limit_bytes: max });
        }
        buffered.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buffered))
}

/// The node's reply as the client's response; the permit is released when the body has
/// been streamed (or the client went away).
fn relay(reply: NodeResponse, permit: OwnedSemaphorePermit) -> Response {
    let response = reply.response;
    let status = response.status();
    let headers = headers::to_client(response.headers());
    let body = response.bytes_stream().map(move |chunk| {
        let _in_flight = &permit;
        chunk
    });
    let mut relayed = Response::new(Body::from_stream(body));
    *relayed.status_mut() = status;
    *relayed.headers_mut() = headers;
    relayed
}

#[cfg(test)]
mod tests {
    #[test]
    fn peer_paths_are_recognised_however_they_are_spelled() {
        for path in [
            "/internal",
            "/internal/raft/append",
            "//internal/propose",
            "/INTERNAL/command",
            "/Internal/raft/snapshot",
        ] {
            assert!(super::is_peer_path(path), "{path} must not be forwarded");
        }
        for path in ["/v1/batch", "/internals", "/v1/internal/x", "/", ""] {
            assert!(!super::is_peer_path(path), "{path} is a client path");
        }
    }

    use super::*;

    #[tokio::test]
    async fn bodies_are_buffered_up_to_the_limit() {
        let exact = read_body(Body::from(vec![7u8; 64]), 64).await;
        assert_eq!(exact.expect("fits").len(), 64);
        let over = read_body(Body::from(vec![7u8; 65]), 64).await;
        assert!(matches!(
            over,
            Err(GatewayError::RequestTooLarge { limit_bytes: 64 })
        ));
    }
}
