//! Backup administration over HTTP (admin key):
//! - `POST /v1/admin/backups`: start a backup of this node into its configured repository
//!   (202; one at a time: 409 `backup_running`);
//! - `GET /v1/admin/backups/status`: the running backup's progress and the last outcome,
//!   and continuous archiving's state (`archive`: archived index and time, recovery point);
//!   the running verification, and the repository as this node last watched it (newest
//!   backup, the cluster's last verification results);
//! - `POST /v1/admin/backups/verify`: verify the newest backup by restoring it into a
//!   scratch directory now, as the schedule does (202; needs
//!   `backup.verify_identity_file`; one at a time: 409 `backup_running`);
//! - `GET /v1/admin/backups`: the repository's backups (their manifests, checked).
//!
//! Verify, prune and restore need the operator's keys (the age identity never lives on a
//! node) and run in `tandem backup` / `tandem restore` instead.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::auth::Access;
use super::error::ApiError;
use crate::backup::create::Summary;
use crate::backup::keys::RepoKey;
use crate::backup::{BackupError, Repository};

fn api_error(error: BackupError) -> ApiError {
    match error {
        BackupError::Busy(message) => {
            ApiError::new(StatusCode::CONFLICT, "backup_running", message)
        }
        BackupError::Invalid(message) => {
            ApiError::new(StatusCode::CONFLICT, "backup_not_configured", message)
        }
        other => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "backup_repository",
            other.to_string(),
        ),
    }
}

/// `POST /v1/admin/backups`
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    let started_ms = state
        .backups
        .start(state.node.clone(), state.config.clone())
        .map_err(api_error)?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"started_ms": started_ms, "status": "/v1/admin/backups/status"})),
    )
        .into_response())
}

/// `POST /v1/admin/backups/verify`
pub async fn verify(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    let started_ms =
        crate::backup::watch::start_verification(&state.backups, &state.node, &state.config)
            .map_err(api_error)?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"started_ms": started_ms, "status": "/v1/admin/backups/status"})),
    )
        .into_response())
}

/// `GET /v1/admin/backups/status`
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    let mut body = serde_json::to_value(state.backups.status()).unwrap_or_default();
    body["archive"] = crate::backup::archiver::status(&state.config, &state.node.metrics().archive);
    Ok(axum::Json(body).into_response())
}

/// `GET /v1/admin/backups`
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.keys.require(&headers, Access::Admin)?;
    let config = &state.config.backup;
    if config.repo.is_empty() || config.repo_key_file.as_os_str().is_empty() {
        return Err(api_error(BackupError::Invalid(
            "backups are not configured on this node: set backup.repo and backup.repo_key_file"
                .into(),
        )));
    }
    let key = RepoKey::read(&config.repo_key_file).map_err(api_error)?;
    let repository = Repository::open(&config.repo, key)
        .await
        .map_err(api_error)?;
    let manifests = repository.manifests().await.map_err(api_error)?;
    let backups: Vec<Summary> = manifests.iter().map(Summary::of).collect();
    Ok(axum::Json(json!({"repo": config.repo, "backups": backups})).into_response())
}
