//! `GET /v1/admin/alerts`: this node's pending and firing alerts and the recent history
//! of resolved ones, from the built-in evaluator ([`crate::node::alerts`]). A read or
//! admin key may look; a write key may not.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::Access;
use super::error::ApiError;

/// `{"node", "alerts": [...], "history": [...]}`; see `docs/monitoring.md` for the shape.
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Read)?;
    Ok(Json(state.node.alerts().view()).into_response())
}
