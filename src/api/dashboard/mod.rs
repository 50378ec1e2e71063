//! The live dashboard: a page every node serves, and the one JSON document behind it.
//!
//! - `GET /dashboard` (and its `app.js`, `app.css`): static assets compiled into the
//!   binary (`include_str!`), no key needed, no data in them. The page takes a read or
//!   admin key from its form or from the URL fragment (`#key=…`, never sent to a server),
//!   keeps it in `sessionStorage`, and sends it as `Authorization: Bearer` on every data
//!   call. A strict Content-Security-Policy allows only this origin's script and style.
//! - `GET /v1/admin/dashboard` (read or admin key): the cluster by region, roles, health,
//!   lag, the last hour of ingest rate and latency, and the services — gathered from
//!   every member in parallel, each with [`PEER_TIMEOUT`], so a dead or paused node shows
//!   as unreachable within that time instead of holding the page up
//!   ([`aggregate::aggregate`]). At most [`DOCUMENTS_MAX`] are gathered at once.
//! - `GET /internal/dashboard/node` (on the peer listener, cluster key): this node's own
//!   [`NodeReport`](crate::node::report::NodeReport), what the others ask for over the
//!   peer connection (mutual TLS where the cluster uses it).
//!
//! The document also carries `backups`: the newest backup in the repository, its age and
//! size, and the cluster's last verification by restore, as this node last watched the
//! repository ([`crate::backup::watch`]); `{"configured": false}` without a repository.
//!
//! Alerts are fetched by the page itself from `GET /v1/admin/alerts`, so this document
//! does not depend on the evaluator; where that route is absent the page says so.

pub mod aggregate;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::Access;
use super::error::ApiError;
use crate::cluster::network::FROM_HEADER;
use crate::node::report::NodeReport;
use aggregate::{Member, aggregate};

/// Longest wait for one peer's report.
pub const PEER_TIMEOUT: Duration = Duration::from_millis(1500);
/// Largest peer report accepted, bytes (one hour of samples is ~50 KB).
pub const REPORT_BYTES_MAX: usize = 1 << 20;
/// Dashboard documents gathered at once by one node; more are answered 429 at once
/// (each fans out to every peer, so this bounds the peer requests it causes).
pub const DOCUMENTS_MAX: usize = 8;
/// Path of the internal report route.
pub const REPORT_PATH: &str = "/internal/dashboard/node";

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// Only this origin's script, style and fetches; no framing, no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /dashboard`
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /dashboard/app.js`
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard/app.css`
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /v1/admin/dashboard`: needs a read or admin key (a write key is refused 403).
pub async fn document(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Read)?;
    let Ok(_permit) = state.dashboards.try_acquire() else {
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "dashboard_busy",
            format!("{DOCUMENTS_MAX} dashboard documents are being gathered; retry shortly"),
        ));
    };
    let serving = state.node.report();
    let view = crate::cluster::membership::view(state.node.raft());
    let members: Vec<Member> = view
        .members
        .iter()
        .map(|m| Member {
            id: m.id,
            url: m.url.clone(),
            region: m.region.clone(),
            role: m.role.to_owned(),
        })
        .collect();
    let asks = view
        .members
        .iter()
        .filter(|m| m.id != serving.id)
        .map(|m| async { (m.id, ask_peer(&state, &m.peer_url).await) });
    let reports: BTreeMap<u64, Result<NodeReport, String>> =
        futures::future::join_all(asks).await.into_iter().collect();
    let document = aggregate(&serving, &members, &reports, crate::clock::now_ms());
    let mut document = serde_json::to_value(document).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "dashboard",
            e.to_string(),
        )
    })?;
    if let Some(object) = document.as_object_mut() {
        object.insert("backups".into(), backups_panel(&state));
    }
    Ok(Json(document).into_response())
}

/// The backup panel: the repository as this node last watched it, and this node's own
/// running backup or verification.
fn backups_panel(state: &AppState) -> serde_json::Value {
    let config = &state.config.backup;
    if config.repo.is_empty() {
        return serde_json::json!({"configured": false});
    }
    let status = state.backups.status();
    serde_json::json!({
        "configured": true,
        "schedule": config.schedule,
        "verify_schedule": if config.verify_identity_file.as_os_str().is_empty() {
            ""
        } else {
            config.verify_schedule.as_str()
        },
        "repository": status.repository,
        "running": status.running.is_some(),
        "verifying": status.verifying.is_some(),
    })
}

/// One peer's report from its peer listener at `url`, or why there is none, within
/// [`PEER_TIMEOUT`].
async fn ask_peer(state: &AppState, url: &str) -> Result<NodeReport, String> {
    let cluster = state.node.cluster();
    let asked = async {
        let mut request = state
            .node
            .http()
            .get(format!("{}{REPORT_PATH}", url.trim_end_matches('/')))
            .bearer_auth(cluster.cluster_key())
            .header(FROM_HEADER, cluster.id());
        // Peers refuse requests without their cluster's id (crate::cluster::identity).
        if let Some(id) = cluster.identity().get() {
            request = request.header(crate::cluster::identity::CLUSTER_HEADER, id);
        }
        let response = request.send().await.map_err(|e| unreachable_reason(&e))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > REPORT_BYTES_MAX as u64)
        {
            return Err("report too large".to_owned());
        }
        let body = response.bytes().await.map_err(|e| unreachable_reason(&e))?;
        if body.len() > REPORT_BYTES_MAX {
            return Err("report too large".to_owned());
        }
        serde_json::from_slice(&body).map_err(|e| format!("unreadable report: {e}"))
    };
    match tokio::time::timeout(PEER_TIMEOUT, asked).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", PEER_TIMEOUT.as_millis())),
    }
}

fn unreachable_reason(error: &reqwest::Error) -> String {
    if error.is_connect() {
        "connection refused or unreachable".to_owned()
    } else if error.is_timeout() {
        format!("no answer within {} ms", PEER_TIMEOUT.as_millis())
    } else {
        format!("request failed: {error}")
    }
}

/// `GET /internal/dashboard/node` (cluster key): this node's report.
pub async fn node_report(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match super::peer::admit_peer(&state, &headers) {
        Ok(_) => Json(state.node.report()).into_response(),
        Err((status, message)) => (status, message).into_response(),
    }
}
