//! `GET /metrics` and the request instrumentation behind its HTTP families.
//!
//! The scrape encodes the node's registry ([`crate::node::metrics`]); the middleware
//! counts every answered request by route template (axum's [`MatchedPath`], never the raw
//! path, so label values stay bounded) and status class, and observes its latency.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use futures::TryStreamExt;

use super::AppState;
use super::error::ErrorCode;

/// The exposition format `prometheus-client` writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`: the node's and its services' health in the Prometheus (OpenMetrics)
/// text format, for scraping and alerting; every metric is listed in
/// `docs/monitoring.md`. Unauthenticated, like the health endpoints: it carries counts
/// and states, no customer data.
pub async fn metrics(State(state): State<AppState>) -> Response {
    match state.node.encode_metrics() {
        Ok(text) => ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded",
        )
            .into_response(),
    }
}

/// Middleware: counts the request and observes its latency under its route template.
pub async fn instrument(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().clone();
    // Count body bytes as the handler reads them (a body never read is never counted).
    let counter = state.node.metrics().request_bytes_counter(&endpoint);
    let (parts, body) = request.into_parts();
    let body = axum::body::Body::from_stream(body.into_data_stream().inspect_ok(move |chunk| {
        counter.inc_by(chunk.len() as u64);
    }));
    let response = next.run(Request::from_parts(parts, body)).await;
    let status = response.status();
    // A 503 from a health endpoint is its answer (not ready, not the leader), not a
    // refusal.
    let refused = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::SERVICE_UNAVAILABLE && !endpoint.starts_with("/health/"));
    if refused {
        let reason = response
            .extensions()
            .get::<ErrorCode>()
            .map_or("other", |code| code.0);
        state
            .node
            .metrics()
            .record_refusal(&endpoint, status.as_u16(), reason);
    }
    state.node.metrics().record_request(
        &endpoint,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
