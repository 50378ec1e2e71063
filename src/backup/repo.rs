//! The repository's storage: objects by name through the `object_store` crate — a local
//! directory (the embedded default) or S3-compatible storage — with bounded retries.
//!
//! Layout under the repository's root:
//! ```text
//! config                     the repository config (format, recipients), authenticated
//! manifests/<backup id>      one authenticated manifest per complete backup
//! chunks/<2 hex>/<64 hex>    age(zstd(chunk)), named by the chunk's keyed blake3
//! locks/<id>                 a backup or GC in progress (see crate::backup::prune)
//! archive/<cluster>/<first>-<last>   continuous archive of the committed log: consecutive
//!                            index ranges, 20-digit zero-padded (crate::backup::archive)
//! ```
//! A manifest is written last (create-only): a backup without one never happened, and
//! its chunks are garbage that GC removes after its grace period.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::BackupError;

/// Attempts per request before giving up (transient errors: 5xx, 429, dropped
/// connections, timeouts). The only retry layer: object_store's own is off for S3
/// (`max_retries = 0`), so a request is sent at most this many times, and every request
/// Tandem makes is safe to repeat (chunks are content-addressed, locks are overwritten,
/// deletes of a missing object succeed, and a create-only write that finds its own bytes
/// already stored counts as done — see [`Repo::put_new`]).
const ATTEMPTS_MAX: u32 = 6;
/// First retry delay; doubles per attempt up to [`RETRY_DELAY_MAX_MS`], with up to 50%
/// random jitter added so that many clients do not retry in step. Six attempts wait at
/// most 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s (×1.5 with jitter), about 9 s, on top of the
/// requests themselves (each bounded by [`super::http::REQUEST_TIMEOUT_MS`]); a 503's
/// `Retry-After` is honoured first, capped (`super::http::RETRY_AFTER_MAX_MS`).
const RETRY_FIRST_MS: u64 = 200;
/// Longest delay between two attempts.
const RETRY_DELAY_MAX_MS: u64 = 5_000;

/// A pseudo-random delay up to `max`, for retry jitter (not security: the clock's
/// nanoseconds, which differ between processes and attempts).
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let max_ms = max.as_millis() as u64;
    Duration::from_millis(if max_ms == 0 { 0 } else { nanos % (max_ms + 1) })
}

/// One stored object as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its name relative to the repository root.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Last modified, ms since the epoch.
    pub modified_ms: i64,
}

/// A backup repository's storage.
#[derive(Clone)]
pub struct Repo {
    store: Arc<dyn ObjectStore>,
    /// Where it is, for messages.
    url: String,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repo({})", self.url)
    }
}

impl Repo {
    /// Opens the repository at `url`: `s3://bucket/prefix` (endpoint, region and
    /// credentials from the `AWS_*` environment: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP), `file:///dir` or a plain
    /// directory path (created if missing).
    pub fn open(url: &str) -> Result<Repo, BackupError> {
        let invalid = |why: String| BackupError::Invalid(format!("repository {url:?}: {why}"));
        let store: Arc<dyn ObjectStore> = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("no bucket; use s3://bucket/prefix".into()));
            }
            let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_default();
            if !endpoint.starts_with("http://") {
                return Err(invalid(format!(
                    "S3 is reached over plain http in this build (no TLS yet): set \
                     AWS_ENDPOINT_URL=http://… and AWS_ALLOW_HTTP=true (a local S3-compatible \
                     server, or a TLS-terminating proxy); got {endpoint:?}"
                )));
            }
            // Retries are ours alone (`Repo::retry`): object_store's would multiply them.
            let no_retries = object_store::RetryConfig {
                max_retries: 0,
                ..Default::default()
            };
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(no_retries)
                .with_http_connector(super::http::PlainHttpConnector)
                .build()
                .map_err(|e| invalid(e.to_string()))?;
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
            }
        } else {
            let dir = url.strip_prefix("file://").unwrap_or(url);
            if dir.is_empty() || dir.contains("://") {
                return Err(invalid(
                    "use a directory path, file:///path or s3://bucket/prefix".into(),
                ));
            }
            std::fs::create_dir_all(dir).map_err(|e| invalid(e.to_string()))?;
            // fsync: every write is durable (file and directory entry) before it returns,
            // as S3's are, so a manifest written after its chunks never outlives them
            // across a power cut.
            Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| invalid(e.to_string()))?
                    .with_fsync(true),
            )
        };
        Ok(Repo {
            store,
            url: url.to_owned(),
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stores `bytes` at `name`, replacing any object there.
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), BackupError> {
        let path = ObjectPath::from(name);
        let payload = PutPayload::from(bytes);
        self.retry(name, "put", || self.store.put(&path, payload.clone()))
            .await
            .map(drop)
    }

    /// Stores `bytes` at `name` only if nothing is there; `Ok(false)` if something else
    /// was. An object holding exactly `bytes` counts as written: an attempt whose reply was
    /// lost (a dropped connection after the server stored it) is retried and then finds
    /// its own write.
    pub async fn put_new(&self, name: &str, bytes: Vec<u8>) -> Result<bool, BackupError> {
        let path = ObjectPath::from(name);
        let payload = PutPayload::from(bytes.clone());
        let result = self
            .retry(name, "put", || {
                self.store
                    .put_opts(&path, payload.clone(), PutOptions::from(PutMode::Create))
            })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(BackupError::Store { exists: true, .. }) => {
                Ok(self.get(name).await?.is_some_and(|stored| stored == bytes))
            }
            Err(e) => Err(e),
        }
    }

    /// The object at `name`, or `None` if there is none.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, BackupError> {
        let path = ObjectPath::from(name);
        let result = self
            .retry(name, "get", || async {
                self.store.get(&path).await?.bytes().await
            })
            .await;
        match result {
            Ok(bytes) => Ok(Some(bytes.to_vec())),
            Err(BackupError::Store { missing: true, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes `name` (no error if it is already gone).
    pub async fn delete(&self, name: &str) -> Result<(), BackupError> {
        let path = ObjectPath::from(name);
        match self
            .retry(name, "delete", || self.store.delete(&path))
            .await
        {
            Ok(()) | Err(BackupError::Store { missing: true, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every object whose name starts with `prefix` (a directory such as `chunks`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, BackupError> {
        let path = ObjectPath::from(prefix);
        self.retry(prefix, "list", || async {
            self.store
                .list(Some(&path))
                .map_ok(|meta| Listed {
                    name: meta.location.to_string(),
                    size: meta.size,
                    modified_ms: meta.last_modified.timestamp_millis(),
                })
                .try_collect::<Vec<_>>()
                .await
        })
        .await
    }

    /// Every object under `prefix` whose name sorts after `offset` (a full object name):
    /// lets a listing start where the caller already knows the repository's content.
    pub async fn list_after(&self, prefix: &str, offset: &str) -> Result<Vec<Listed>, BackupError> {
        let path = ObjectPath::from(prefix);
        let offset = ObjectPath::from(offset);
        self.retry(prefix, "list", || async {
            self.store
                .list_with_offset(Some(&path), &offset)
                .map_ok(|meta| Listed {
                    name: meta.location.to_string(),
                    size: meta.size,
                    modified_ms: meta.last_modified.timestamp_millis(),
                })
                .try_collect::<Vec<_>>()
                .await
        })
        .await
    }

    /// Runs `op` with up to [`ATTEMPTS_MAX`] attempts on transient errors.
    async fn retry<T, F, Fut>(&self, name: &str, what: &str, mut op: F) -> Result<T, BackupError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let mut delay = Duration::from_millis(RETRY_FIRST_MS);
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    let missing = matches!(error, object_store::Error::NotFound { .. });
                    let exists = matches!(
                        error,
                        object_store::Error::AlreadyExists { .. }
                            | object_store::Error::Precondition { .. }
                    );
                    let permanent = missing
                        || exists
                        || matches!(
                            error,
                            object_store::Error::NotSupported { .. }
                                | object_store::Error::PermissionDenied { .. }
                                | object_store::Error::Unauthenticated { .. }
                                | object_store::Error::InvalidPath { .. }
                        );
                    if permanent || attempt >= ATTEMPTS_MAX {
                        return Err(BackupError::Store {
                            object: name.to_owned(),
                            detail: format!("{what} failed after {attempt} attempt(s): {error}"),
                            missing,
                            exists,
                        });
                    }
                    tracing::warn!(object = name, %error, attempt, "repository request failed; retrying");
                    tokio::time::sleep(delay + jitter(delay / 2)).await;
                    delay = (delay * 2).min(Duration::from_millis(RETRY_DELAY_MAX_MS));
                    attempt += 1;
                }
            }
        }
    }
}
