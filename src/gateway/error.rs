//! The gateway's one error type: start-up problems and the replies the gateway makes on
//! its own behalf.
//!
//! A reply the gateway makes itself is JSON `{"code": "...", "message": "..."}` like a
//! node's, with a stable `code`. Replies a client may retry (429, 502, 503, 504) carry
//! `Retry-After`. A node's own reply is never turned into one of these: it is relayed as
//! it came.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::options::RETRY_AFTER_SECS;

/// What went wrong, at start-up or for one request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Options that cannot work; each entry names the flag and the fix.
    #[error("invalid gateway options:\n  - {}", .0.join("\n  - "))]
    InvalidOptions(Vec<String>),
    /// The HTTP client for the nodes could not be built.
    #[error("cannot build the HTTP client for nodes: {0}")]
    Client(String),
    /// The listener failed while serving.
    #[error("gateway listener failed: {0}")]
    Serve(#[source] std::io::Error),
    /// `inflight_max` requests are already in flight; retry shortly.
    #[error("the gateway is at its limit of {inflight_max} requests in flight; retry shortly")]
    Overloaded {
        /// The limit that was reached.
        inflight_max: usize,
    },
    /// The request body is over the limit; it was not forwarded.
    #[error(
        "the request body is larger than the gateway's limit of {limit_bytes} bytes; send smaller batches"
    )]
    RequestTooLarge {
        /// The limit in bytes.
        limit_bytes: usize,
    },
    /// The request body could not be read from the client.
    #[error("could not read the request body: {0}")]
    BodyUnreadable(String),
    /// No node is in rotation (none passed its last health check, or all were ejected).
    #[error(
        "no node is healthy right now; retry shortly, and see /gateway/status for each node's last health check"
    )]
    NoHealthyNodes,
    /// A node did not answer: the connection failed or closed before a response.
    #[error("node {node} did not answer: {reason}")]
    NodeUnreachable {
        /// The node's base URL.
        node: String,
        /// What the client library reported.
        reason: String,
        /// False when the connection was never established, so the node cannot have
        /// seen the request; true when it may have.
        maybe_delivered: bool,
    },
    /// No attempt finished within the request timeout.
    #[error("no node answered within {timeout_ms} ms; retry shortly")]
    Timeout {
        /// The request timeout.
        timeout_ms: u64,
    },
    /// A path the gateway never forwards: the nodes' peer routes (`/internal/*`) are for
    /// nodes only, and clients have no business reaching them through the public address.
    #[error("{path} is not served through the gateway")]
    NotForwarded {
        /// The refused path.
        path: String,
    },
    /// A bug in the gateway (a tower layer failed in a way it never should).
    #[error("internal gateway error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// The HTTP status of the reply.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyUnreadable(_) => StatusCode::BAD_REQUEST,
            GatewayError::NotForwarded { .. } => StatusCode::NOT_FOUND,
            GatewayError::NoHealthyNodes => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::NodeUnreachable { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::InvalidOptions(_)
            | GatewayError::Client(_)
            | GatewayError::Serve(_)
            | GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code of the reply.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidOptions(_) => "invalid_options",
            GatewayError::Client(_) | GatewayError::Serve(_) | GatewayError::Internal(_) => {
                "internal"
            }
            GatewayError::Overloaded { .. } => "gateway_overloaded",
            GatewayError::RequestTooLarge { .. } => "request_too_large",
            GatewayError::BodyUnreadable(_) => "body_unreadable",
            GatewayError::NotForwarded { .. } => "not_found",
            GatewayError::NoHealthyNodes => "no_healthy_nodes",
            GatewayError::NodeUnreachable { .. } => "node_unreachable",
            GatewayError::Timeout { .. } => "gateway_timeout",
        }
    }

    /// Whether the client may send the same request again later.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::Overloaded { .. }
                | GatewayError::NoHealthyNodes
                | GatewayError::NodeUnreachable { .. }
                | GatewayError::Timeout { .. }
        )
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let body = json!({"code": self.code(), "message": self.to_string()});
        let mut response = (self.status(), axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if self.retryable() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if matches!(self, GatewayError::RequestTooLarge { .. }) {
            // The rest of the body was never read; the connection cannot be reused.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
