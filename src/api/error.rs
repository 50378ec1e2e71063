//! The API's one error type and how it becomes an HTTP response.
//!
//! Every error reply is JSON `{"code": "...", "message": "..."}` (plus `rejected` for a
//! batch whose items were all invalid). `code` values are stable and listed in
//! `docs/api.md`; `message` names the problem and, where there is one, the fix. Overload,
//! shutdown and storage trouble carry `Retry-After`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::node::SubmitError;
use crate::node::reads::{APPLY_WAIT_MAX, ReadError};
use crate::store::StoreError;

/// Seconds a client should wait before retrying after 429/503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// An error reply.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Extra JSON fields merged into the body (e.g. `rejected`).
    pub extra: Option<Value>,
    /// `Retry-After` seconds when not the default [`RETRY_AFTER_SECS`] (a quota refill).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
            retry_after_secs: None,
        }
    }

    /// 400 with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401: no or unknown key.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404 with the given code.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    fn retryable(&self) -> bool {
        matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
    }
}

/// The `code` of an error reply, carried in the response's extensions so the request
/// metrics can count refusals by reason.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self
            .retry_after_secs
            .or_else(|| self.retryable().then_some(RETRY_AFTER_SECS));
        let mut body = json!({"code": self.code, "message": self.message});
        if let (Some(Value::Object(extra)), Value::Object(map)) = (self.extra, &mut body) {
            map.extend(extra);
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        // For the metrics middleware: why a request was refused, without parsing the body.
        response.extensions_mut().insert(ErrorCode(self.code));
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Overloaded { .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                error.to_string(),
            ),
            SubmitError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the node is shutting down; retry (nothing from this request was stored)",
            ),
            SubmitError::NoLeader(message) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_leader",
                format!(
                    "the cluster has no reachable leader right now ({message}); nothing from this request was stored"
                ),
            ),
            SubmitError::Unknown(message) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                format!(
                    "the outcome is unknown ({message}): the events may or may not have been \
                     stored; retry with the same messageIds, which makes the retry exact"
                ),
            ),
            SubmitError::Rejected(message) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!(
                    "an internal consistency check refused this request and nothing from it \
                     was stored; retrying will not help — please report it: {message}"
                ),
            ),
            SubmitError::Storage(message) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                format!("the node cannot write: {message}"),
            ),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::NoLeader(message) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_leader",
                format!(
                    "the read could not be confirmed with a leader ({message}); retry, or read \
                     with consistency=local"
                ),
            ),
            ReadError::NotCaughtUp { index, applied, .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_caught_up",
                format!(
                    "this node has applied up to index {} and did not reach index {index} within \
                     {APPLY_WAIT_MAX:?}; retry, or read from another node",
                    applied.map_or_else(|| "none".to_owned(), |i| i.to_string())
                ),
            ),
            ReadError::Stopped(message) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                format!("the node cannot serve reads: {message}"),
            ),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "read failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            format!("the node cannot read its store: {error}"),
        )
    }
}
