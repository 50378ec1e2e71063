//! The gateway's own endpoints: liveness, readiness and a status page per node.
//!
//! - `GET /health/live`: 200 while the gateway serves HTTP;
//! - `GET /health/ready`: 200 while at least one node is in rotation, else 503 with
//!   `Retry-After`; both list the nodes;
//! - `GET /gateway/status`: every node's health, last check, ejection and counters, and
//!   the requests in flight.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::health::CheckResult;
use super::options::RETRY_AFTER_SECS;
use super::proxy::Proxy;
use super::registry::NodeSnapshot;

/// `GET /health/live`
pub async fn live() -> Json<Value> {
    Json(json!({"status": "live"}))
}

/// `GET /health/ready`
pub async fn ready(State(proxy): State<Arc<Proxy>>) -> Response {
    let nodes = proxy.registry.snapshot();
    let in_rotation = nodes.iter().filter(|n| n.health.in_rotation()).count();
    let brief: Vec<Value> = nodes
        .iter()
        .map(|node| {
            json!({
                "url": node.url,
                "healthy": node.health.healthy(),
                "in_rotation": node.health.in_rotation(),
            })
        })
        .collect();
    if in_rotation > 0 {
        let body = json!({"status": "ready", "nodes_in_rotation": in_rotation, "nodes": brief});
        (StatusCode::OK, Json(body)).into_response()
    } else {
        let body = json!({
            "status": "not_ready",
            "reason": "no_healthy_nodes",
            "nodes_in_rotation": 0,
            "nodes": brief,
        });
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        response
    }
}

/// `GET /gateway/status`
pub async fn status(State(proxy): State<Arc<Proxy>>) -> Json<Value> {
    let now = Instant::now();
    let nodes: Vec<Value> = proxy
        .registry
        .snapshot()
        .iter()
        .map(|node| node_report(node, now))
        .collect();
    Json(json!({
        "inflight": proxy.inflight(),
        "inflight_max": proxy.inflight_max(),
        "nodes": nodes,
    }))
}

/// One node on the status page. Instants are shown relative to now, in milliseconds.
fn node_report(node: &NodeSnapshot, now: Instant) -> Value {
    let last_check = node.health.last_check().map(|(at, result)| {
        let ago_ms = now.saturating_duration_since(*at).as_millis() as u64;
        let mut report = match result {
            CheckResult::Ready => json!({"result": "ready"}),
            CheckResult::NotReady { status, reason } => {
                json!({"result": "not_ready", "status": status, "reason": reason})
            }
            CheckResult::Unreachable { error } => {
                json!({"result": "unreachable", "error": error})
            }
        };
        report["ms_ago"] = json!(ago_ms);
        report
    });
    let ejected_for_ms = node
        .health
        .ejected_until()
        .map(|until| until.saturating_duration_since(now).as_millis() as u64);
    json!({
        "url": node.url,
        "healthy": node.health.healthy(),
        "in_rotation": node.health.in_rotation(),
        "last_check": last_check,
        "ejected_for_ms": ejected_for_ms,
        "requests": node.requests,
        "errors": node.errors,
        "refusals": node.refusals,
    })
}
