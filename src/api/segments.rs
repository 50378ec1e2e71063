//! Segment (audience) endpoints.
//!
//! Definitions are replicated state: creating, replacing or deleting one commits a command
//! through the Raft log (forwarded to the leader from any node), so every node evaluates the
//! same rules. Membership is the segments service's derived state on the node answering.
//!
//! - `GET /v1/segments`, `GET /v1/segments/{id}` (read key): definitions with the service's
//!   status of each (members, backfill progress).
//! - `POST /v1/segments`, `PUT /v1/segments/{id}`, `DELETE /v1/segments/{id}` (admin key).
//! - `GET /v1/segments/{id}/members?limit=&after=` (read key): members in profile id order.
//! - `GET /v1/segment-transitions?after=&limit=` (read key): entered/exited, oldest first.
//! - `GET /v1/profiles/{type}:{value}/segments` (read key).
//!
//! Membership reads are served even while the segments service is degraded: the last good
//! result, marked `"stale": true` in `status` (see `docs/api.md`).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Access;
use super::consistency::requirement;
use super::error::ApiError;
use super::profiles::{service_marker, with_profile};
use crate::cluster::Command;
use crate::model::command::SegmentDef;
use crate::services::audience::{self, SEGMENTS_MAX, SegmentRecord};
use crate::services::db::ServiceDb;
use crate::services::segments::{self, SegmentError};
use crate::services::supervisor::Supervisor;
use crate::store::read::PAGE_LIMIT_MAX;

/// Longest segment id, in bytes.
pub const SEGMENT_ID_MAX: usize = 64;
/// Longest segment name, in characters.
pub const SEGMENT_NAME_MAX: usize = 200;
/// Default page size of the listing endpoints.
const PAGE_DEFAULT: usize = 100;

/// Body of `POST /v1/segments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    id: String,
    name: Option<String>,
    rule: String,
}

/// Body of `PUT /v1/segments/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceRequest {
    name: Option<String>,
    rule: String,
}

/// Query of the listings.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    after: Option<u64>,
    consistency: Option<String>,
}

fn limit(query: &ListQuery) -> Result<usize, ApiError> {
    match query.limit {
        None => Ok(PAGE_DEFAULT),
        Some(n) if (1..=PAGE_LIMIT_MAX).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(
            "invalid_query",
            format!("limit {n} is out of range: use 1 to {PAGE_LIMIT_MAX}"),
        )),
    }
}

fn json_body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload
        .map(|Json(body)| body)
        .map_err(|e| ApiError::bad_request("invalid_json", e.body_text()))
}

fn check_id(id: &str) -> Result<(), ApiError> {
    let valid = !id.is_empty()
        && id.len() <= SEGMENT_ID_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_segment_id",
            format!(
                "segment id {id:?} is invalid: use 1 to {SEGMENT_ID_MAX} characters of a-z, 0-9, _ and -"
            ),
        ))
    }
}

fn rule_error(error: &SegmentError) -> ApiError {
    let mut api = ApiError::bad_request("invalid_rule", format!("rule: {error}"));
    if let Some(at) = error.position() {
        api.extra = Some(json!({"position": {"line": at.line, "column": at.column}}));
    }
    api
}

/// Validates a definition against the others (rule syntax and meaning, cycles, limits).
fn validate(def: &SegmentDef, others: &[SegmentDef]) -> Result<(), ApiError> {
    check_id(&def.id)?;
    if def.name.chars().count() > SEGMENT_NAME_MAX {
        return Err(ApiError::bad_request(
            "invalid_segment",
            format!("name is longer than {SEGMENT_NAME_MAX} characters"),
        ));
    }
    let rule = segments::parse(&def.rule).map_err(|e| rule_error(&e))?;
    let mut rules = std::collections::BTreeMap::new();
    for other in others.iter().filter(|o| o.id != def.id) {
        if let Ok(expr) = segments::parse(&other.rule) {
            rules.insert(other.id.clone(), expr);
        }
    }
    if others.iter().filter(|o| o.id != def.id).count() >= SEGMENTS_MAX {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_segments",
            format!("a cluster holds at most {SEGMENTS_MAX} segments; delete unused ones first"),
        ));
    }
    rules.insert(def.id.clone(), rule);
    segments::check_cycles(&rules).map_err(|cycle| {
        ApiError::bad_request(
            "segment_cycle",
            format!("{cycle}: a segment cannot contain itself through in_segment(...)"),
        )
    })?;
    Ok(())
}

/// The current definitions, after a linearizable barrier (so a create right after a
/// delete, through any node, sees it).
async fn current_defs(state: &AppState) -> Result<Vec<SegmentDef>, ApiError> {
    state.node.linearize().await?;
    state.read(|reader| Ok(reader.segment_defs()?)).await
}

/// Waits (bounded) for the segments service's database, which opens after the node starts.
async fn wait_open(state: &AppState) {
    state
        .node
        .services()
        .wait_open(
            audience::NAME,
            crate::services::supervisor::REQUEST_OPEN_WAIT,
        )
        .await;
}

fn service_db(services: &Supervisor) -> Result<&ServiceDb, ApiError> {
    services.db(audience::NAME).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "the segments service's database is not open on this node yet (it opens after a \
             restart, while the node already serves); retry shortly",
        )
    })
}

fn service_error(error: crate::services::db::ServiceError) -> ApiError {
    tracing::error!(%error, "segments service read failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
        format!("the segments service cannot read its data: {error}"),
    )
}

/// A definition with the service's view of it.
fn segment_json(def: &SegmentDef, record: Option<&SegmentRecord>, total_profiles: u64) -> Value {
    let rule = segments::parse(&def.rule)
        .map(|expr| expr.to_string())
        .unwrap_or_else(|_| def.rule.clone());
    let (status, members, sweep) = match record {
        None => ("pending", Value::Null, Value::Null),
        Some(record) if record.def != *def => ("pending", json!(record.members), Value::Null),
        Some(record) => {
            let sweep = record.sweep.as_ref().map(|sweep| {
                let percent = if total_profiles == 0 {
                    0.0
                } else {
                    (sweep.scanned as f64 * 100.0 / total_profiles as f64).min(99.9)
                };
                json!({
                    "kind": sweep.kind,
                    "profiles_scanned": sweep.scanned,
                    "profiles_total_approx": total_profiles,
                    "percent": (percent * 10.0).round() / 10.0,
                    "started_at_ms": sweep.started_ms,
                })
            });
            let status = match (&record.error, &record.sweep) {
                (Some(_), _) => "error",
                (None, Some(s)) if s.kind == audience::SweepKind::Backfill => "backfilling",
                _ => "ready",
            };
            (status, json!(record.members), json!(sweep))
        }
    };
    json!({
        "id": def.id,
        "name": def.name,
        "rule": def.rule,
        "canonical_rule": rule,
        "status": status,
        "members": members,
        "sweep": sweep,
        "last_sweep_at_ms": record.map(|r| r.last_sweep_ms).filter(|ms| *ms > 0),
        "error": record.and_then(|r| r.error.clone()),
    })
}

/// The definitions with the service's view of each (read in the read pool).
async fn describe(state: &AppState, defs: Vec<SegmentDef>) -> Result<Vec<Value>, ApiError> {
    wait_open(state).await;
    let services = Arc::clone(state.node.services());
    state
        .read(move |reader| {
            let db = service_db(&services)?;
            let total = reader.counts().profiles_approx;
            defs.iter()
                .map(|def| {
                    let record = audience::record(db, &def.id).map_err(service_error)?;
                    Ok(segment_json(def, record.as_ref(), total))
                })
                .collect()
        })
        .await
}

/// One definition with the service's view of it.
async fn describe_one(state: &AppState, def: &SegmentDef) -> Result<Value, ApiError> {
    let mut described = describe(state, vec![def.clone()]).await?;
    Ok(described.remove(0))
}

/// `GET /v1/segments`
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Read)?;
    let defs = current_defs(&state).await?;
    let items = describe(&state, defs).await?;
    let status = service_marker(state.node.services(), audience::NAME);
    Ok(Json(json!({"segments": items, "status": status})).into_response())
}

/// `GET /v1/segments/{id}`
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Read)?;
    let defs = current_defs(&state).await?;
    let def = find(&defs, &id)?;
    let mut body = describe_one(&state, def).await?;
    body["status_of_service"] = service_marker(state.node.services(), audience::NAME);
    Ok(Json(body).into_response())
}

fn find<'a>(defs: &'a [SegmentDef], id: &str) -> Result<&'a SegmentDef, ApiError> {
    defs.iter().find(|def| def.id == id).ok_or_else(|| {
        ApiError::not_found("segment_not_found", format!("no segment with id {id:?}"))
    })
}

/// `POST /v1/segments`: creates; 409 if the id is taken.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<CreateRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    let request = json_body(payload)?;
    check_id(&request.id)?;
    let def = SegmentDef {
        name: request.name.unwrap_or_else(|| request.id.clone()),
        id: request.id,
        rule: request.rule,
    };
    let defs = current_defs(&state).await?;
    if defs.iter().any(|d| d.id == def.id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "segment_exists",
            format!(
                "segment {:?} exists; PUT /v1/segments/{} replaces it",
                def.id, def.id
            ),
        ));
    }
    validate(&def, &defs)?;
    state
        .node
        .execute(Command::PutSegment(def.clone()), false)
        .await?;
    let body = describe_one(&state, &def).await?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `PUT /v1/segments/{id}`: creates or replaces (the new rule backfills).
pub async fn replace(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    payload: Result<Json<ReplaceRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    let request = json_body(payload)?;
    check_id(&id)?;
    let def = SegmentDef {
        name: request.name.unwrap_or_else(|| id.clone()),
        id,
        rule: request.rule,
    };
    let defs = current_defs(&state).await?;
    validate(&def, &defs)?;
    let existed = defs.iter().any(|d| d.id == def.id);
    state
        .node
        .execute(Command::PutSegment(def.clone()), false)
        .await?;
    let body = describe_one(&state, &def).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(body)).into_response())
}

/// `DELETE /v1/segments/{id}`: its memberships are removed (each recorded as an exit).
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    let defs = current_defs(&state).await?;
    find(&defs, &id)?;
    let users: Vec<&str> = defs
        .iter()
        .filter(|d| d.id != id)
        .filter(|d| segments::parse(&d.rule).is_ok_and(|rule| rule.segment_refs().contains(&id)))
        .map(|d| d.id.as_str())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "segment_in_use",
            format!("segment {id:?} is used by in_segment(...) in {users:?}; change those first"),
        ));
    }
    state
        .node
        .execute(Command::DeleteSegment { id: id.clone() }, false)
        .await?;
    Ok(Json(json!({"id": id, "deleted": true})).into_response())
}

/// `GET /v1/segments/{id}/members`
pub async fn members(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Read)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = limit(&query)?;
    // Membership is read from the segments service after a linearizable barrier on the
    // definitions; the parameter is only checked (`after` here is the paging cursor).
    requirement(query.consistency.as_deref(), None, &HeaderMap::new())?;
    let defs = current_defs(&state).await?;
    find(&defs, &id)?;
    wait_open(&state).await;
    let services = Arc::clone(state.node.services());
    let segment = id.clone();
    let (record, page) = state
        .run_read(move || {
            let db = service_db(&services)?;
            let record = audience::record(db, &segment).map_err(service_error)?;
            let page =
                audience::members(db, &segment, query.after, limit).map_err(service_error)?;
            Ok((record, page))
        })
        .await?;
    let next_after = if page.len() == limit {
        page.last().map(|(profile, _)| *profile)
    } else {
        None
    };
    let members: Vec<Value> = page
        .iter()
        .map(|(profile, at)| json!({"profile_id": profile, "entered_at_ms": at}))
        .collect();
    Ok(Json(json!({
        "segment": id,
        "members": members,
        "total": record.map(|r| r.members),
        "next_after": next_after,
        "status": service_marker(state.node.services(), audience::NAME),
    }))
    .into_response())
}

/// `GET /v1/segment-transitions`
pub async fn transitions(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Read)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = limit(&query)?;
    wait_open(&state).await;
    let services = Arc::clone(state.node.services());
    let page = state
        .run_read(move || {
            let db = service_db(&services)?;
            audience::transitions(db, query.after.unwrap_or(0), limit).map_err(service_error)
        })
        .await?;
    let next_after = page.last().map(|t| t.seq);
    Ok(Json(json!({
        "transitions": page,
        "next_after": next_after,
        "status": service_marker(state.node.services(), audience::NAME),
    }))
    .into_response())
}

/// Query of `GET /v1/profiles/{id}/segments`.
#[derive(Debug, Deserialize)]
pub struct ProfileQuery {
    consistency: Option<String>,
    after: Option<String>,
}

/// `GET /v1/profiles/{type}:{value}/segments`
pub async fn of_profile(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<ProfileQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let read = requirement(
        query.consistency.as_deref(),
        query.after.as_deref(),
        &headers,
    )?;
    wait_open(&state).await;
    let services = std::sync::Arc::clone(state.node.services());
    with_profile(&state, &headers, &id, read, move |_, profile| {
        let db = service_db(&services)?;
        let segments = audience::segments_of(db, profile.id).map_err(service_error)?;
        let segments: Vec<Value> = segments
            .iter()
            .map(|(id, at)| json!({"id": id, "entered_at_ms": at}))
            .collect();
        Ok(json!({
            "profile_id": profile.id,
            "segments": segments,
            "status": service_marker(&services, audience::NAME),
        }))
    })
    .await
}
