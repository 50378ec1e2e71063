//! CDP service administration: status, and the fault-injection switch (tests and drills).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::auth::Access;
use super::error::ApiError;
use crate::services::supervisor::Fault;

/// `GET /v1/admin/services`
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    Ok(Json(json!({"services": state.node.services().statuses()})).into_response())
}

/// `GET /metrics`: the node's and its services' health in the Prometheus text format, for
/// scraping and alerting. Unauthenticated, like the health endpoints: it carries counts
/// and states, no customer data.
pub async fn metrics(State(state): State<AppState>) -> Response {
    use openraft::async_runtime::WatchReceiver;
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let raft = state.node.raft().metrics().borrow_watched().clone();
    let stats = state.node.stats();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |value: u64| vec![(String::new(), value)];
    metric(
        "tandem_raft_is_leader",
        "gauge",
        "1 on the leader",
        &one(u64::from(raft.current_leader == Some(raft.id))),
    );
    metric(
        "tandem_raft_applied_index",
        "gauge",
        "Last log index applied to the state",
        &one(raft.last_applied.as_ref().map_or(0, |id| id.index)),
    );
    metric(
        "tandem_events_stored_total",
        "counter",
        "Events newly stored through this node",
        &one(stats.events_stored.load(Relaxed)),
    );
    metric(
        "tandem_overloaded_refusals_total",
        "counter",
        "Submissions refused with 429",
        &one(stats.overloaded.load(Relaxed)),
    );
    let services = state.node.services().statuses();
    let per_service = |value: &dyn Fn(&crate::services::supervisor::ServiceStatus) -> u64| {
        services
            .iter()
            .map(|s| (format!("{{service=\"{}\"}}", s.name), value(s)))
            .collect::<Vec<_>>()
    };
    metric(
        "tandem_service_up",
        "gauge",
        "1 while a CDP service is ok, 0 while degraded",
        &per_service(&|s| u64::from(s.status == "ok")),
    );
    metric(
        "tandem_service_lag_entries",
        "gauge",
        "Committed feed entries a service has not processed yet",
        &per_service(&|s| s.lag),
    );
    metric(
        "tandem_service_restarts_total",
        "counter",
        "Service worker restarts (crashes, error loops, hung workers replaced)",
        &per_service(&|s| s.restarts),
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// Body of `POST /v1/admin/faults/services`.
#[derive(Debug, Deserialize)]
pub struct FaultRequest {
    service: String,
    fault: Fault,
}

/// `POST /v1/admin/faults/services` (only with `faults.enabled`): make a service panic,
/// hang or slow down, or clear it (`"fault": "none"`).
pub async fn set_fault(
    State(state): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<FaultRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    if !state.config.faults.enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "faults_disabled",
            "fault injection is off; set faults.enabled = true (never in production)",
        ));
    }
    let Json(request) =
        payload.map_err(|e| ApiError::bad_request("invalid_json", e.body_text()))?;
    let services = state.node.services();
    if !services.set_fault(&request.service, request.fault) {
        return Err(ApiError::bad_request(
            "unknown_service",
            format!(
                "no service {:?}; services: {:?}",
                request.service,
                services.names()
            ),
        ));
    }
    Ok(Json(json!({"service": request.service, "fault": request.fault})).into_response())
}
