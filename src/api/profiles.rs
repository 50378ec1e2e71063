//! The profile API: `GET /v1/profiles/{type}:{value}` and its `/events` and `/merges`.
//!
//! Any identity of a profile finds it: after a merge, the anonymous id, the email and the
//! user id all answer with the same profile. Reads need a read key or the admin key.
//! Each read first waits for the freshness asked for (`?consistency=`, `?after=`, see
//! [`super::consistency`]), then runs on a store snapshot in the read pool.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AppState;
use super::auth::Access;
use super::consistency::{read_json, requirement};
use super::error::ApiError;
use crate::model::identity::Identity;
use crate::model::profile::Profile;
use crate::model::validate::format_ms;
use crate::node::Node;
use crate::node::pending::ReadTicket;
use crate::node::reads::{Prepared, ReadRequirement};
use crate::store::read::{PAGE_LIMIT_MAX, Reader};
use crate::store::tables::{MergeAction, MergeRecord, StoredEvent};

/// Default page size of the listing endpoints.
const PAGE_LIMIT_DEFAULT: usize = 100;

/// `?limit=&before=&event=&consistency=&after=`
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    limit: Option<usize>,
    before: Option<u64>,
    event: Option<String>,
    consistency: Option<String>,
    after: Option<String>,
}

/// `?consistency=&after=`
#[derive(Debug, Deserialize)]
pub struct ReadQuery {
    consistency: Option<String>,
    after: Option<String>,
}

impl PageQuery {
    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(PAGE_LIMIT_DEFAULT),
            Some(n) if (1..=PAGE_LIMIT_MAX).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit={n} is out of range; use 1 to {PAGE_LIMIT_MAX}"),
            )),
        }
    }
}

/// `GET /v1/profiles/{id}`
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let read = requirement(
        query.consistency.as_deref(),
        query.after.as_deref(),
        &headers,
    )?;
    let priority = state.config.identity.priority.clone();
    let services = std::sync::Arc::clone(state.node.services());
    let defs = std::sync::Arc::clone(state.node.trait_defs());
    with_profile(&state, &headers, &id, read, move |_, profile| {
        let mut body = profile_json(&profile, &priority);
        body["computed_traits"] = computed_traits(&services, &defs, profile.id);
        body["computed_traits_status"] = service_marker(&services, crate::services::computed::NAME);
        Ok(body)
    })
    .await
}

/// `GET /v1/profiles/{id}/events?limit=&before=&event=`
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (query, limit) = page_query(query)?;
    let read = requirement(
        query.consistency.as_deref(),
        query.after.as_deref(),
        &headers,
    )?;
    with_profile(&state, &headers, &id, read, move |reader, profile| {
        let page = reader.events(&profile, query.before, limit, query.event.as_deref())?;
        let events: Vec<Value> = page
            .items
            .into_iter()
            .map(|(seq, event)| event_json(seq, event))
            .collect();
        Ok(json!({"profile_id": profile.id, "events": events, "next_before": page.next_before}))
    })
    .await
}

/// `GET /v1/profiles/{id}/merges?limit=&before=`
pub async fn merges(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (query, limit) = page_query(query)?;
    let read = requirement(
        query.consistency.as_deref(),
        query.after.as_deref(),
        &headers,
    )?;
    with_profile(&state, &headers, &id, read, move |reader, profile| {
        let page = reader.merges(&profile, query.before, limit)?;
        let merges: Vec<Value> = page
            .items
            .iter()
            .map(|(seq, record)| merge_json(*seq, record))
            .collect();
        Ok(json!({"profile_id": profile.id, "merges": merges, "next_before": page.next_before}))
    })
    .await
}

/// Checks the key, parses `id`, waits for the requested freshness, finds the profile on
/// a fresh snapshot and answers with what `view` makes of it, plus a `read` object saying
/// how fresh the answer is.
pub(crate) async fn with_profile(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    read: ReadRequirement,
    view: impl FnOnce(&Reader, Profile) -> Result<Value, ApiError> + Send + 'static,
) -> Result<Response, ApiError> {
    state.keys.require(headers, Access::Read)?;
    let identity = parse_identity(state, id)?;
    let confirming = std::time::Instant::now();
    let prepared = state.node.prepare_keyed_read(read, &identity).await?;
    if read.consistency != crate::node::reads::Consistency::Local {
        state
            .node
            .metrics()
            .observe_read_stage("confirm", confirming);
    }
    let (identity, view) = match prepared {
        Prepared::Ready => (identity, view),
        Prepared::Keyed(ticket) => {
            let freshness = read_json(state, read);
            let node = Arc::clone(&state.node);
            // The snapshot is taken in the pool, after the ticket: see `node::pending`.
            let unwaited = state
                .read(move |reader| {
                    let (profile, clear) = check(&node, reader, &ticket, &identity)?;
                    if !clear {
                        return Ok(Err((identity, view)));
                    }
                    let profile = profile.ok_or_else(|| not_found(&identity))?;
                    Ok(Ok(view(reader, profile)?))
                })
                .await?;
            match unwaited {
                Ok(body) => return Ok(reply(body, freshness)),
                Err(again) => {
                    let waiting = std::time::Instant::now();
                    state.node.wait_applied(ticket.read_index).await?;
                    state
                        .node
                        .metrics()
                        .observe_read_stage("apply_wait", waiting);
                    again
                }
            }
        }
    };
    // Taken before the snapshot, so the snapshot is at least this fresh.
    let freshness = read_json(state, read);
    let body = state
        .read(move |reader| view(reader, find(reader, &identity)?))
        .await?;
    Ok(reply(body, freshness))
}

/// Finds the profile of `identity` on `reader` (a snapshot taken after `ticket` was
/// issued) and says whether that snapshot answers a linearizable read of it.
fn check(
    node: &Node,
    reader: &Reader,
    ticket: &ReadTicket,
    identity: &Identity,
) -> Result<(Option<Profile>, bool), ApiError> {
    let profile = reader.profile_of(identity)?;
    let mentioned = profile.iter().flat_map(|p| &p.identities);
    let clear = node.read_is_clear(ticket, std::iter::once(identity).chain(mentioned));
    Ok((profile, clear))
}

/// As leader, for a follower's linearizable (or `lease`) read of the profile of
/// `identity`: the log index the follower must apply before it reads. The leader's own
/// applied index when no write in flight mentions the profile (see `node::pending`), else
/// the read index.
pub(crate) async fn read_index_for(
    state: &AppState,
    identity: Identity,
    lease: bool,
) -> Result<u64, String> {
    let ticket = match state.node.read_ticket_here(lease).await {
        Ok(Ok(ticket)) => ticket,
        Ok(Err(index)) => return Ok(index),
        Err(error) => return Err(error.to_string()),
    };
    let node = Arc::clone(&state.node);
    state
        .read(move |reader| {
            let (_, clear) = check(&node, reader, &ticket, &identity)?;
            // `applied_index` counts one past the last entry applied.
            Ok(match clear {
                true => reader.applied_index()?.saturating_sub(1),
                false => ticket.read_index,
            })
        })
        .await
        .map_err(|error| error.message)
}

fn reply(mut body: Value, freshness: Value) -> Response {
    body["read"] = freshness;
    axum::Json(body).into_response()
}

fn page_query(
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<(PageQuery, usize), ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = query.limit()?;
    Ok((query, limit))
}

/// The profile's computed traits from the traits service's own store. Served even while
/// the service is degraded (the `computed_traits_status` marker then says they may be
/// stale); `null` if the store cannot be read.
fn computed_traits(
    services: &crate::services::supervisor::Supervisor,
    defs: &[crate::services::traits::TraitDef],
    profile: u64,
) -> Value {
    let Some(db) = services.db(crate::services::computed::NAME) else {
        return Value::Null;
    };
    match crate::services::computed::values(db, defs, profile, crate::node::now_ms()) {
        Ok(values) => json!(values),
        Err(error) => {
            tracing::warn!(%error, "reading computed traits");
            Value::Null
        }
    }
}

/// `{"service", "status", "stale", "lag"}` for a service whose data a reply includes.
pub fn service_marker(services: &crate::services::supervisor::Supervisor, name: &str) -> Value {
    match services.status(name) {
        Some(status) => json!({
            "service": name,
            "status": status.status,
            "stale": status.status != "ok" || status.lag > 0,
            "lag": status.lag,
            "reason": status.reason,
        }),
        None => json!({"service": name, "status": "missing", "stale": true}),
    }
}

pub(crate) fn parse_identity(state: &AppState, text: &str) -> Result<Identity, ApiError> {
    Identity::parse_key(text, &state.blocklist).map_err(|why| {
        ApiError::bad_request(
            "invalid_identity",
            format!("{text:?} is not a usable identity: {why}"),
        )
    })
}

fn find(reader: &Reader, identity: &Identity) -> Result<Profile, ApiError> {
    reader
        .profile_of(identity)?
        .ok_or_else(|| not_found(identity))
}

fn not_found(identity: &Identity) -> ApiError {
    ApiError::not_found(
        "profile_not_found",
        format!("no profile has the identity {identity}"),
    )
}

fn profile_json(profile: &Profile, priority: &[crate::model::identity::IdClass]) -> Value {
    let identities: Vec<Value> = profile
        .identities
        .iter()
        .map(|i| json!({"type": i.kind.to_string(), "value": i.value}))
        .collect();
    let mut traits = Map::new();
    for (key, value) in &profile.traits {
        let parsed = serde_json::from_str(&value.json).unwrap_or(Value::Null);
        traits.insert(key.clone(), parsed);
    }
    let seen = |ms: i64| (profile.event_count() > 0).then(|| format_ms(ms));
    json!({
        "id": profile.id,
        "canonical_id": profile.canonical(priority).map(Identity::key),
        "identities": identities,
        "traits": traits,
        "first_seen": seen(profile.first_seen_ms),
        "last_seen": seen(profile.last_seen_ms),
        "event_counts": profile.counts_by_type(),
        "events_total": profile.event_count(),
        "merged_profiles": profile.merged_ids,
        "limits": {
            "traits_dropped": profile.audit.traits_dropped,
            "refusals_unrecorded": profile.audit.refusals_unrecorded,
            "merge_records_dropped": profile.audit.records_dropped,
        },
    })
}

fn event_json(seq: u64, event: StoredEvent) -> Value {
    let mut body = match serde_json::from_str(&event.body_json) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    body.insert("seq".into(), json!(seq));
    body.insert("source".into(), json!(event.source));
    Value::Object(body)
}

fn merge_json(seq: u64, record: &MergeRecord) -> Value {
    let mut body = json!({
        "seq": seq,
        "at": format_ms(record.at_ms),
        "messageId": record.message_id,
        "source": record.source,
    });
    let detail = match &record.action {
        MergeAction::Merged {
            into,
            from,
            linked_by,
            identities,
        } => json!({
            "action": "merged",
            "into": into,
            "from": from,
            "linked_by": linked_by.key(),
            "identities": identities.iter().map(Identity::key).collect::<Vec<_>>(),
        }),
        MergeAction::Refused {
            profile,
            identity,
            other_profile,
            rule,
        } => json!({
            "action": "refused",
            "profile": profile,
            "identity": identity.key(),
            "other_profile": other_profile,
            "rule": rule,
        }),
        MergeAction::TraitsDropped {
            profile,
            keys,
            rule,
        } => json!({
            "action": "traits_dropped",
            "profile": profile,
            "keys": keys,
            "rule": rule,
        }),
    };
    if let (Value::Object(body), Value::Object(detail)) = (&mut body, detail) {
        body.extend(detail);
    }
    body
}
