//! When a request is sent again to another node: a pure decision, and the
//! `tower::retry::Policy` that applies it.
//!
//! Sending a request twice is safe when the second copy cannot change the outcome:
//! - the connection to the node was never established (the node never saw it);
//! - the node answered 429 or 503, which Tandem nodes send only when nothing from the
//!   request was stored;
//! - the request is idempotent and the failure is ambiguous (connection reset before a
//!   response, 502, 504). Reads are idempotent; so are the Segment ingest endpoints,
//!   because nodes deduplicate events by `messageId` (Segment client libraries always
//!   send one). Anything else (admin writes) is not replayed after an ambiguous failure.
//!
//! Retries go to another node because the balancer has already been told: a connection
//! error, 502, 503 or 504 ejects the node before the policy runs, and a 429 makes it lose
//! every comparison (see `endpoint.rs`). The policy stops early when no node is left in
//! rotation, so the client gets the last node reply (or error) rather than a wait.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use tower::BoxError;
use tower::retry::Policy;

use super::endpoint::{NodeResponse, ProxyRequest};
use super::error::GatewayError;
use super::registry::Registry;

/// The Segment ingest endpoints; nodes deduplicate their events by `messageId`.
const INGEST_PATHS: [&str; 8] = [
    "/v1/track",
    "/v1/identify",
    "/v1/page",
    "/v1/screen",
    "/v1/group",
    "/v1/alias",
    "/v1/batch",
    "/v1/import",
];

/// Whether a request may be replayed after a failure that may have reached a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Sending it twice has the effect of sending it once.
    Idempotent,
    /// Sending it twice might do twice what it asks.
    Unsafe,
}

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The connection was never established; the node did not see the request.
    NotDelivered,
    /// The connection failed or closed before a response; the node may have seen it.
    NoResponse,
    /// The node answered with this status.
    Status(StatusCode),
}

/// Classifies a request by method and path (without query).
pub fn classify(method: &Method, path: &str) -> Replay {
    let path = path.strip_suffix('/').unwrap_or(path);
    let reads = [Method::GET, Method::HEAD, Method::OPTIONS];
    if reads.contains(method) || (method == Method::POST && INGEST_PATHS.contains(&path)) {
        Replay::Idempotent
    } else {
        Replay::Unsafe
    }
}

/// Whether an attempt that ended this way may be sent again (to another node).
pub fn should_retry(replay: Replay, outcome: Outcome) -> bool {
    match outcome {
        Outcome::NotDelivered => true,
        Outcome::NoResponse => replay == Replay::Idempotent,
        Outcome::Status(StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) => true,
        Outcome::Status(StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT) => {
            replay == Replay::Idempotent
        }
        Outcome::Status(_) => false,
    }
}

/// The retry policy of one request; cloned from the template for every request.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts this request may still make after the current one.
    retries_left: u32,
    /// Tells whether any node is left to retry on.
    registry: Arc<Registry>,
}

impl RetryPolicy {
    /// A policy allowing `attempts_max` attempts in all (at least one).
    pub fn new(attempts_max: u32, registry: Arc<Registry>) -> RetryPolicy {
        RetryPolicy {
            retries_left: attempts_max.saturating_sub(1),
            registry,
        }
    }
}

impl Policy<ProxyRequest, NodeResponse, BoxError> for RetryPolicy {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        request: &mut ProxyRequest,
        result: &mut Result<NodeResponse, BoxError>,
    ) -> Option<Self::Future> {
        let outcome = match result {
            Ok(reply) => Outcome::Status(reply.response.status()),
            Err(error) => match error.downcast_ref::<GatewayError>() {
                Some(GatewayError::NodeUnreachable {
                    maybe_delivered, ..
                }) => {
                    if *maybe_delivered {
                        Outcome::NoResponse
                    } else {
                        Outcome::NotDelivered
                    }
                }
                _ => return None,
            },
        };
        if self.retries_left == 0
            || !should_retry(request.replay, outcome)
            || self.registry.in_rotation() == 0
        {
            return None;
        }
        self.retries_left -= 1;
        tracing::debug!(?outcome, path = %request.path_and_query, "retrying on another node");
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, request: &ProxyRequest) -> Option<ProxyRequest> {
        Some(request.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_method_and_path() {
        let cases = [
            (Method::POST, "/v1/batch", Replay::Idempotent),
            (Method::POST, "/v1/track/", Replay::Idempotent),
            (Method::POST, "/v1/import", Replay::Idempotent),
            (Method::GET, "/v1/profiles/user_id/u1", Replay::Idempotent),
            (Method::HEAD, "/health/ready", Replay::Idempotent),
            (Method::POST, "/v1/admin/members", Replay::Unsafe),
            (Method::DELETE, "/v1/profiles/user_id/u1", Replay::Unsafe),
            (Method::PUT, "/v1/batch", Replay::Unsafe),
            (Method::POST, "/v1/batches", Replay::Unsafe),
        ];
        for (method, path, expected) in cases {
            assert_eq!(classify(&method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn retry_decisions() {
        use Outcome::*;
        use Replay::*;
        let status = |code: u16| Status(StatusCode::from_u16(code).expect("valid status"));
        let cases = [
            // Never delivered: always safe.
            (Unsafe, NotDelivered, true),
            (Idempotent, NotDelivered, true),
            // Maybe delivered: only if a replay is harmless.
            (Idempotent, NoResponse, true),
            (Unsafe, NoResponse, false),
            // Nodes promise nothing was stored on 429 and 503.
            (Unsafe, status(429), true),
            (Unsafe, status(503), true),
            (Idempotent, status(503), true),
            // 502 and 504 are ambiguous.
            (Idempotent, status(502), true),
            (Idempotent, status(504), true),
            (Unsafe, status(502), false),
            (Unsafe, status(504), false),
            // Answers, good or bad, are final.
            (Idempotent, status(200), false),
            (Idempotent, status(400), false),
            (Idempotent, status(413), false),
            (Idempotent, status(500), false),
        ];
        for (replay, outcome, expected) in cases {
            assert_eq!(
                should_retry(replay, outcome),
                expected,
                "{replay:?} {outcome:?}"
            );
        }
    }
}
