//! Who may do what.
//!
//! - **Write keys** (one per source) may only send events: HTTP Basic with the key as user
//!   name and an empty password — what Segment's client libraries send — or `writeKey` in
//!   the JSON body.
//! - **Read keys** may read profiles; the **admin key** may read profiles and use the admin
//!   endpoints. Either is sent as `Authorization: Bearer KEY` or as the Basic user name.
//!   A write key alone never reads anything: it ships inside web pages and apps.

use std::collections::{HashMap, HashSet};

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::error::ApiError;
use crate::config::Config;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read profiles.
    Read,
    /// Read profiles and administer.
    Admin,
}

/// The keys of the running configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    /// write key → source name.
    sources: HashMap<String, String>,
    read: HashSet<String>,
    admin: Option<String>,
}

impl Keys {
    /// The keys configured in `config`.
    pub fn from_config(config: &Config) -> Keys {
        Keys {
            sources: config
                .sources
                .iter()
                .map(|s| (s.write_key.clone(), s.name.clone()))
                .collect(),
            read: config.auth.read_keys.iter().cloned().collect(),
            admin: (!config.auth.admin_key.is_empty()).then(|| config.auth.admin_key.clone()),
        }
    }

    /// The source whose write key is in the Basic auth header or, failing that, the body.
    pub fn source(&self, headers: &HeaderMap, body_key: Option<&str>) -> Result<&str, ApiError> {
        let key = match presented_key(headers)? {
            Some(key) => key,
            None => body_key.map(str::to_owned).ok_or_else(|| {
                ApiError::unauthorized(
                    "missing write key: send HTTP Basic auth with the write key as user name \
                     and an empty password, or \"writeKey\" in the JSON body",
                )
            })?,
        };
        self.sources
            .get(&key)
            .map(String::as_str)
            .ok_or_else(|| ApiError::unauthorized("unknown write key"))
    }

    /// Checks a read or admin key; `need` is the least access required.
    pub fn require(&self, headers: &HeaderMap, need: Access) -> Result<Access, ApiError> {
        let Some(key) = presented_key(headers)? else {
            return Err(ApiError::unauthorized(
                "missing key: send Authorization: Bearer <read or admin key>",
            ));
        };
        let access = if self.admin.as_deref() == Some(key.as_str()) {
            Access::Admin
        } else if self.read.contains(&key) {
            Access::Read
        } else if self.sources.contains_key(&key) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "write keys can only send events; use a read key or the admin key",
            ));
        } else {
            return Err(ApiError::unauthorized("unknown key"));
        };
        if need == Access::Admin && access != Access::Admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this endpoint needs the admin key",
            ));
        }
        Ok(access)
    }
}

/// The key from `Authorization: Basic base64(key:)` or `Authorization: Bearer key`.
fn presented_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || {
        ApiError::unauthorized(
            "malformed Authorization header: use Basic base64(key:) or Bearer key",
        )
    };
    let value = value.to_str().map_err(|_| malformed())?.trim();
    let (scheme, rest) = value.split_once(' ').ok_or_else(malformed)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Some(rest.to_owned()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(malformed());
    }
    let decoded = STANDARD.decode(rest).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let user = decoded
        .split_once(':')
        .map_or(decoded.as_str(), |(user, _)| user);
    Ok(Some(user.to_owned()))
}
