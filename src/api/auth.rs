//! Who may do what, checked before a request body is read.
//!
//! - **Write keys** (several per source, each named) may only send events: HTTP Basic
//!   with the key as user name and an empty password — what Segment's client libraries
//!   send — or `writeKey` in the JSON body.
//! - **Read keys** may read profiles; **admin keys** may read profiles and use the admin
//!   endpoints. Either is sent as `Authorization: Bearer KEY` or as the Basic user name.
//!   A write key alone never reads anything: it ships inside web pages and apps.
//!
//! Keys are never compared as strings: each configured key is stored as its BLAKE3 hash
//! under a per-process random key, and a presented key is hashed the same way and looked
//! up by that hash. `blake3::Hash` compares in constant time, and what a lookup's timing
//! could reveal is about a hash an attacker cannot compute, not about the key.
//!
//! The key set is replaced whole by [`Keys::reload`] (SIGHUP), so rotation is: add the
//! new key, move clients, remove the old one. Requests already past authentication finish
//! under the set they started with.
//!
//! Two middlewares run before any handler (and so before any body is read): on the
//! ingestion routes an `Authorization` header, when present, must carry a known key; on
//! every other `/v1` route a known key is required. Which role a route needs is still
//! checked by its handler.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::AppState;
use super::error::ApiError;
use super::quota::Bucket;
use crate::config::{Config, KeyRole, Quota};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read profiles.
    Read,
    /// Read profiles and administer.
    Admin,
}

/// A source events are stored under, with its quota.
#[derive(Debug)]
pub struct Source {
    /// Name, recorded on every event it sends.
    pub name: String,
    /// Its ingest quota on this node.
    pub quota: Quota,
    /// Its token bucket (see [`super::quota`]).
    pub bucket: Bucket,
}

/// What one key grants.
#[derive(Debug, Clone)]
enum Role {
    Write(Arc<Source>),
    Read,
    Admin,
}

/// One configured key: its role and a label for logs (`write web/2025-06`), never the key.
#[derive(Debug)]
struct Grant {
    role: Role,
    label: String,
}

/// The keys of one configuration, by keyed hash.
#[derive(Debug, Default)]
struct KeySet {
    grants: HashMap<blake3::Hash, Grant>,
}

/// The keys in force; replaced whole by [`Keys::reload`].
#[derive(Debug)]
pub struct Keys {
    /// Random per process: stored hashes are useless outside it.
    hash_key: [u8; 32],
    current: RwLock<Arc<KeySet>>,
}

/// What a reload changed, by label (`write web/2025-06`, `admin ops`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeyChanges {
    /// Keys now accepted that were not before.
    pub added: Vec<String>,
    /// Keys no longer accepted.
    pub removed: Vec<String>,
}

impl Keys {
    /// The keys configured in `config`.
    pub fn from_config(config: &Config) -> Keys {
        // 244 random bits from the OS (through uuid, already a dependency).
        let mut hash_key = [0_u8; 32];
        hash_key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        hash_key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let keys = Keys {
            hash_key,
            current: RwLock::new(Arc::default()),
        };
        keys.reload(config);
        keys
    }

    /// Replaces the key set with `config`'s (already validated). Sources that stay keep
    /// their token buckets.
    pub fn reload(&self, config: &Config) -> KeyChanges {
        let old = self.current();
        let mut old_sources: HashMap<&str, &Source> = HashMap::new();
        for grant in old.grants.values() {
            if let Role::Write(source) = &grant.role {
                old_sources.insert(&source.name, source);
            }
        }
        let mut grants = HashMap::new();
        for (i, config_source) in config.sources.iter().enumerate() {
            let quota = config.source_quota(i);
            let bucket = match old_sources.get(config_source.name.as_str()) {
                Some(old) => old.bucket.carried_over(quota),
                None => Bucket::full(quota),
            };
            let source = Arc::new(Source {
                name: config_source.name.clone(),
                quota,
                bucket,
            });
            let named = std::iter::once(("write_key", config_source.write_key.as_str()))
                .filter(|(_, key)| !key.is_empty())
                .chain(
                    config_source
                        .write_keys
                        .iter()
                        .map(|k| (k.name.as_str(), k.key.as_str())),
                );
            for (name, key) in named {
                let label = format!("write {}/{name}", config_source.name);
                grants.insert(self.hash(key), (Role::Write(Arc::clone(&source)), label));
            }
        }
        if !config.auth.admin_key.is_empty() {
            let label = "admin admin_key".to_owned();
            grants.insert(self.hash(&config.auth.admin_key), (Role::Admin, label));
        }
        for entry in &config.auth.keys {
            let (role, word) = match entry.role {
                KeyRole::Read => (Role::Read, "read"),
                KeyRole::Admin => (Role::Admin, "admin"),
            };
            grants.insert(
                self.hash(&entry.key),
                (role, format!("{word} {}", entry.name)),
            );
        }
        let grants: HashMap<_, _> = grants
            .into_iter()
            .map(|(hash, (role, label))| (hash, Grant { role, label }))
            .collect();
        let listed = |grants: &HashMap<blake3::Hash, Grant>| -> BTreeSet<(String, [u8; 32])> {
            grants
                .iter()
                .map(|(hash, grant)| (grant.label.clone(), *hash.as_bytes()))
                .collect()
        };
        let (before, after) = (listed(&old.grants), listed(&grants));
        let changes = KeyChanges {
            added: after.difference(&before).map(|(l, _)| l.clone()).collect(),
            removed: before.difference(&after).map(|(l, _)| l.clone()).collect(),
        };
        drop(old_sources);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(KeySet { grants });
        changes
    }

    fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn hash(&self, key: &str) -> blake3::Hash {
        blake3::keyed_hash(&self.hash_key, key.as_bytes())
    }

    fn role(&self, key: &str) -> Option<Role> {
        self.current()
            .grants
            .get(&self.hash(key))
            .map(|grant| grant.role.clone())
    }

    /// The source whose write key is in the `Authorization` header; `None` when there is
    /// no such header (the key may then be in the body: [`Keys::source_from_body`]).
    pub fn source_from_header(&self, headers: &HeaderMap) -> Result<Option<Arc<Source>>, ApiError> {
        match presented_key(headers)? {
            None => Ok(None),
            Some(key) => match self.role(&key) {
                Some(Role::Write(source)) => Ok(Some(source)),
                Some(Role::Read | Role::Admin) => Err(ApiError::unauthorized(
                    "this key cannot send events; use the source's write key",
                )),
                None => Err(ApiError::unauthorized("unknown write key")),
            },
        }
    }

    /// The source whose write key came in the body as `writeKey`.
    pub fn source_from_body(&self, body_key: Option<&str>) -> Result<Arc<Source>, ApiError> {
        let key = body_key.ok_or_else(|| {
            ApiError::unauthorized(
                "missing write key: send HTTP Basic auth with the write key as user name \
                 and an empty password, or \"writeKey\" in the JSON body",
            )
        })?;
        match self.role(key) {
            Some(Role::Write(source)) => Ok(source),
            _ => Err(ApiError::unauthorized("unknown write key")),
        }
    }

    /// Checks a read or admin key; `need` is the least access required.
    pub fn require(&self, headers: &HeaderMap, need: Access) -> Result<Access, ApiError> {
        let Some(key) = presented_key(headers)? else {
            return Err(missing_key());
        };
        let access = match self.role(&key) {
            Some(Role::Admin) => Access::Admin,
            Some(Role::Read) => Access::Read,
            Some(Role::Write(_)) => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "write keys can only send events; use a read key or the admin key",
                ));
            }
            None => return Err(ApiError::unauthorized("unknown key")),
        };
        if need == Access::Admin && access != Access::Admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this endpoint needs an admin key",
            ));
        }
        Ok(access)
    }

    /// Refuses a request whose `Authorization` header is malformed or names no key in
    /// force; with `required`, also one without the header.
    fn admit(&self, headers: &HeaderMap, required: bool) -> Result<(), ApiError> {
        match presented_key(headers)? {
            Some(key) if self.role(&key).is_none() => Err(ApiError::unauthorized("unknown key")),
            Some(_) => Ok(()),
            None if required => Err(missing_key()),
            None => Ok(()),
        }
    }
}

fn missing_key() -> ApiError {
    ApiError::unauthorized("missing key: send Authorization: Bearer <read or admin key>")
}

/// Middleware of the ingestion routes: a key in `Authorization`, if any, must be known —
/// checked before the body is read, so an unknown key costs no body.
pub async fn known_key_if_present(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match state.keys.admit(request.headers(), false) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

/// Middleware of the read and admin routes: a known key is required before the body (of
/// a segment definition, say) is read.
pub async fn known_key_required(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match state.keys.admit(request.headers(), true) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NamedKey, RoleKey, SourceConfig};

    const WEB_OLD: &str = "web-old-write-key-0123456789";
    const WEB_NEW: &str = "web-new-write-key-0123456789";
    const OPS: &str = "ops-admin-key-0123456789";

    fn config(web_keys: &[(&str, &str)]) -> Config {
        Config {
            sources: vec![SourceConfig {
                name: "web".into(),
                write_key: String::new(),
                write_keys: web_keys
                    .iter()
                    .map(|(name, key)| NamedKey {
                        name: (*name).into(),
                        key: (*key).into(),
                    })
                    .collect(),
                events_per_sec: None,
                burst_events: None,
            }],
            auth: crate::config::AuthConfig {
                keys: vec![RoleKey {
                    name: "ops".into(),
                    role: KeyRole::Admin,
                    key: OPS.into(),
                }],
                ..Default::default()
            },
            ..Config::default()
        }
    }

    fn bearer(key: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!("Bearer {key}").parse().expect("header value");
        headers.insert(header::AUTHORIZATION, value);
        headers
    }

    #[test]
    fn reload_adds_and_removes_keys_and_reports_them_by_name() {
        let keys = Keys::from_config(&config(&[("2024", WEB_OLD)]));
        let web = keys.source_from_body(Some(WEB_OLD)).expect("old key");
        assert_eq!(web.name, "web");
        assert!(keys.source_from_body(Some(WEB_NEW)).is_err());

        let overlap = keys.reload(&config(&[("2024", WEB_OLD), ("2025", WEB_NEW)]));
        assert_eq!(overlap.added, vec!["write web/2025".to_owned()]);
        assert!(overlap.removed.is_empty());
        assert!(keys.source_from_body(Some(WEB_OLD)).is_ok());
        assert!(keys.source_from_body(Some(WEB_NEW)).is_ok());

        let done = keys.reload(&config(&[("2025", WEB_NEW)]));
        assert_eq!(done.removed, vec!["write web/2024".to_owned()]);
        assert_eq!(
            keys.source_from_body(Some(WEB_OLD))
                .map(|s| s.name.clone())
                .map_err(|e| e.code),
            Err("unauthorized")
        );
    }

    #[test]
    fn roles_are_kept_apart() {
        let keys = Keys::from_config(&config(&[("2024", WEB_OLD)]));
        assert_eq!(
            keys.require(&bearer(OPS), Access::Admin).ok(),
            Some(Access::Admin)
        );
        let writer = keys
            .require(&bearer(WEB_OLD), Access::Read)
            .map_err(|e| e.status);
        assert_eq!(writer, Err(StatusCode::FORBIDDEN));
        let admin_sending = keys.source_from_header(&bearer(OPS)).map_err(|e| e.status);
        assert_eq!(admin_sending.err(), Some(StatusCode::UNAUTHORIZED));
        assert!(
            keys.admit(&bearer("no-such-key-0123456789"), false)
                .is_err()
        );
        assert!(keys.admit(&HeaderMap::new(), false).is_ok());
        assert!(keys.admit(&HeaderMap::new(), true).is_err());
    }
}
