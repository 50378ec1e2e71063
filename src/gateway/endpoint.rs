//! One node as a tower `Service`: the unit the balancer chooses between.
//!
//! An [`Endpoint`] is three layers, outermost first:
//! - [`Refusals`]: the load the balancer compares — a node that answered 429 within
//!   [`REFUSAL_PENALTY_MS`](super::options::REFUSAL_PENALTY_MS) loses every comparison to
//!   one that did not, so a retry after a 429 goes elsewhere when any other node is in
//!   rotation (p2c compares two *distinct* nodes);
//! - `tower::load::PendingRequests`: otherwise, fewer requests in flight wins. Nodes are
//!   replicas of one another, so outstanding work is the signal that matters; unlike a
//!   latency average it cannot starve a node that once answered slowly, and a node that
//!   fails fast is ejected rather than rewarded;
//! - [`NodeService`]: sends the buffered request over the shared keep-alive pool and
//!   reports the outcome to the registry: a connection error or a 5xx other than 503
//!   ejects the node at once; a 429 or 503 ("not now": saturated, or no leader during an
//!   election) only starts its refusal penalty.
//!
//! A node service is always ready: the pool opens connections on demand, and a node that
//! cannot be reached is taken out of rotation rather than left pending.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use tower::Service;
use tower::load::{CompleteOnResponse, Load, PendingRequests};

use super::error::GatewayError;
use super::registry::{NodeKey, Registry};
use super::retry::Replay;

/// A client request, buffered so it can be sent again to another node.
#[derive(Clone, Debug)]
pub struct ProxyRequest {
    /// The client's method.
    pub method: Method,
    /// The client's path and query, e.g. `/v1/batch?x=1`.
    pub path_and_query: String,
    /// Headers to send: the client's end-to-end headers plus `x-forwarded-for`.
    pub headers: HeaderMap,
    /// The whole body (at most `BODY_MAX_BYTES`).
    pub body: Bytes,
    /// Whether the request may be replayed after a failure that may have reached a node.
    pub replay: Replay,
}

/// A node's response head (its body still streaming), and which node sent it.
#[derive(Debug)]
pub struct NodeResponse {
    /// The node that answered.
    pub node: NodeKey,
    /// The response; its body has not been read.
    pub response: reqwest::Response,
}

/// What the balancer holds for each node in rotation.
pub type Endpoint = Refusals<PendingRequests<NodeService>>;

/// The endpoint for one node.
pub fn endpoint(registry: Arc<Registry>, key: NodeKey) -> Endpoint {
    let service = NodeService {
        registry: Arc::clone(&registry),
        key,
    };
    Refusals {
        inner: PendingRequests::new(service, CompleteOnResponse::default()),
        registry,
        key,
    }
}

/// Sends requests to one node.
#[derive(Clone, Debug)]
pub struct NodeService {
    /// Where outcomes are recorded (and the HTTP client).
    registry: Arc<Registry>,
    /// Which node.
    key: NodeKey,
}

impl Service<ProxyRequest> for NodeService {
    type Response = NodeResponse;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<NodeResponse, GatewayError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ProxyRequest) -> Self::Future {
        Box::pin(send(Arc::clone(&self.registry), self.key, request))
    }
}

async fn send(
    registry: Arc<Registry>,
    key: NodeKey,
    request: ProxyRequest,
) -> Result<NodeResponse, GatewayError> {
    registry.record_attempt(key);
    let node = &registry.node(key).url;
    let sent = registry
        .client()
        .request(request.method, format!("{node}{}", request.path_and_query))
        .headers(request.headers)
        .body(request.body)
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status();
            // 503 and 429 are a healthy node saying "not now" (no leader during an
            // election, or saturated): nothing was stored and the node is fine, so it is
            // only penalised, not ejected. Ejecting on them would empty the rotation during
            // every election — every node answers 503 until a leader exists — and delay
            // recovery by a whole health-check interval.
            if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS
            {
                registry.record_refusal(key);
            } else if status.is_server_error() {
                registry.record_failure(key, &format!("a proxied request got {status}"));
            }
            Ok(NodeResponse {
                node: key,
                response,
            })
        }
        Err(error) => {
            let reason = describe(&error);
            registry.record_failure(key, &reason);
            Err(GatewayError::NodeUnreachable {
                node: node.clone(),
                reason,
                maybe_delivered: !error.is_connect(),
            })
        }
    }
}

/// An error and its causes on one line (reqwest's own message omits the cause).
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The load of an endpoint: a recent 429 first, then the inner measure.
///
/// The derived order compares fields in declaration order, so any node without a recent
/// refusal is lighter than any node with one.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct RefusalAwareLoad<M> {
    /// The node answered 429 within the refusal penalty.
    pub refused: bool,
    /// The inner measure (requests in flight).
    pub load: M,
}

/// Adds a node's recent refusals to the load the balancer compares.
#[derive(Debug)]
pub struct Refusals<S> {
    /// The measured service.
    inner: S,
    /// Where refusals are recorded.
    registry: Arc<Registry>,
    /// Which node.
    key: NodeKey,
}

impl<S: Load> Load for Refusals<S> {
    type Metric = RefusalAwareLoad<S::Metric>;

    fn load(&self) -> Self::Metric {
        RefusalAwareLoad {
            refused: self.registry.refused_recently(self.key, Instant::now()),
            load: self.inner.load(),
        }
    }
}

impl<S: Service<R>, R> Service<R> for Refusals<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(refused: bool, in_flight: u32) -> RefusalAwareLoad<u32> {
        RefusalAwareLoad {
            refused,
            load: in_flight,
        }
    }

    #[test]
    fn a_recent_refusal_outweighs_any_number_of_requests_in_flight() {
        assert!(load(false, 1_000) < load(true, 0));
        assert!(load(false, 1) < load(false, 2));
        assert!(load(true, 1) < load(true, 2));
    }
}
