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

use super::AppState;

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
    let response = next.run(request).await;
    state.node.metrics().record_request(
        &endpoint,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
