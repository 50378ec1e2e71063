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
