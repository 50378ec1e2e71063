//! `GET /v1/profiles/{type}:{value}/recommendations?limit=&consistency=`: products to show
//! the profile next, from the recommendation service's committed state.
//!
//! The profile is resolved like every profile endpoint (any of its identities finds it).
//! While the service is degraded — crashed, hung or lagging — the answer is 503
//! `service_degraded` with `Retry-After` rather than recommendations that may be far
//! behind; a healthy service's small lag is reported in `status` instead. The model comes
//! from the node's [`ModelCache`](crate::services::recommendations::ModelCache), so a
//! request reads one history and never deserializes the model itself (except the one
//! request per reload interval that refreshes it).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Access;
use super::consistency::requirement;
use super::error::ApiError;
use super::profiles::{parse_identity, service_marker, with_profile};
use crate::services::recommend::LIMIT_MAX;
use crate::services::recommendations::{self, NAME};
use crate::services::supervisor::Supervisor;

/// Recommendations returned when the request names no `limit`.
pub const LIMIT_DEFAULT: usize = 10;

/// `?limit=&consistency=&after=`
#[derive(Debug, Deserialize)]
pub struct RecommendQuery {
    limit: Option<usize>,
    consistency: Option<String>,
    after: Option<String>,
}

/// `GET /v1/profiles/{id}/recommendations`
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<RecommendQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    // Cheap checks first, so a bad request or a degraded service costs no quorum round.
    state.keys.require(&headers, Access::Read)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = limit(query.limit)?;
    let read = requirement(
        query.consistency.as_deref(),
        query.after.as_deref(),
        &headers,
    )?;
    parse_identity(&state, &id)?;
    let services = std::sync::Arc::clone(state.node.services());
    // Its database opens after the node starts: a moment's wait, bounded, not a 503.
    services
        .wait_open(NAME, crate::services::supervisor::REQUEST_OPEN_WAIT)
        .await;
    require_healthy(&services)?;
    let cache = state.node.recommend_cache().clone();
    with_profile(&state, &headers, &id, read, move |_, profile| {
        let db = services.db(NAME).ok_or_else(|| opening(NAME))?;
        let loaded = cache.get(db).map_err(storage_error)?;
        let history = recommendations::history(db, profile.id).map_err(storage_error)?;
        let model = &loaded.model;
        let items: Vec<Value> = model
            .recommend(&history, limit, crate::node::now_ms())
            .into_iter()
            .map(|r| {
                json!({
                    "product_id": r.product_id,
                    "name": model.product_name(&r.product_id),
                    "category": model.product_category(&r.product_id),
                    "score": r.score,
                    "reason": r.reason,
                })
            })
            .collect();
        Ok(json!({
            "profile_id": profile.id,
            "items": items,
            "model": {
                "products": model.len(),
                "categories": model.category_count(),
                "edges": loaded.edges,
                "feed_cursor": loaded.cursor,
            },
            "status": service_marker(&services, NAME),
        }))
    })
    .await
}

/// `limit`, defaulted and checked against 1..=[`LIMIT_MAX`].
fn limit(requested: Option<usize>) -> Result<usize, ApiError> {
    match requested {
        None => Ok(LIMIT_DEFAULT),
        Some(n) if (1..=LIMIT_MAX).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(
            "invalid_query",
            format!("limit={n} is out of range; use 1 to {LIMIT_MAX} (default {LIMIT_DEFAULT})"),
        )),
    }
}

/// 503 `service_degraded` unless the service is running and caught up.
fn require_healthy(services: &Supervisor) -> Result<(), ApiError> {
    let Some(status) = services.status(NAME) else {
        return Err(not_running(NAME));
    };
    if status.status == "ok" {
        return Ok(());
    }
    let reason = status.reason.as_deref().unwrap_or("no reason given");
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_degraded",
        format!(
            "the {NAME} service is {} ({reason}); recommendations are unavailable until it \
             recovers — retry later (GET /v1/admin/services shows its state)",
            status.status
        ),
    ))
}

fn not_running(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_degraded",
        format!("the {name} service is not running on this node; try another node"),
    )
}

fn opening(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_degraded",
        format!("the {name} service's database is still opening on this node; retry shortly"),
    )
}

fn storage_error(error: crate::services::db::ServiceError) -> ApiError {
    tracing::error!(service = NAME, %error, "reading recommendations");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_degraded",
        format!("the {NAME} service cannot read its state ({error}); retry later"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_defaults_and_is_bounded() {
        assert_eq!(limit(None).expect("default"), LIMIT_DEFAULT);
        assert_eq!(limit(Some(1)).expect("min"), 1);
        assert_eq!(limit(Some(LIMIT_MAX)).expect("max"), LIMIT_MAX);
        for bad in [0, LIMIT_MAX + 1] {
            let error = limit(Some(bad)).expect_err("out of range");
            assert_eq!(
                (error.status, error.code),
                (StatusCode::BAD_REQUEST, "invalid_query")
            );
            assert!(
                error.message.contains(&format!("limit={bad}")),
                "{}",
                error.message
            );
        }
    }
}
