//! Backups: consistent checkpoints of a node uploaded to a repository as compressed,
//! encrypted, content-addressed chunks, and restores that build a new cluster from one.
//!
//! What a backup is: the node writes a checkpoint exactly as it writes a Raft snapshot
//! ([`crate::cluster::state_machine::write_checkpoint`]: the state without event bodies,
//! the services' sections, the log's segments hard-linked — the event bodies) into
//! `<data>/backup-staging/`, then uploads it. Every file is cut into content-defined
//! chunks ([`chunker`]); a chunk is named by the keyed blake3 of its plaintext
//! ([`keys::RepoKey::chunk_name`]), compressed with zstd and encrypted with age to the
//! repository's recipients before it leaves the node. A chunk the repository already has
//! is not uploaded again: sealed log segments never change, so a nightly backup uploads
//! the new segments and the parts of the state that changed. The manifest, written last
//! and authenticated ([`manifest`]), lists every chunk the backup needs, the log position,
//! the state and services hashes there and the settings the log was applied with.
//!
//! A restore ([`restore`]) checks all of that, writes the checkpoint into a new data
//! directory and makes it the **initial snapshot of a new cluster** at the backup's log
//! index: new cluster id, a new node id as the only voter, the vote at the backup's term.
//! The old cluster's log is a prefix it never appends to; peers of the old cluster are
//! refused by cluster id ([`crate::cluster::identity`]).
//!
//! Invariants: nothing that leaves a node is readable without the age identity (held by
//! operators, never by nodes); nothing in the repository is trusted before its MAC or its
//! name (chunks) is checked; a manifest never names a chunk that is not already stored;
//! GC ([`prune`]) never deletes a chunk a remaining manifest names.

pub mod archive;
pub mod archive_check;
pub mod archiver;
pub mod chunker;
pub mod create;
pub mod http;
pub mod job;
pub mod keys;
pub mod manifest;
pub mod pipeline;
pub mod pitr;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod schedule;
pub mod verify;
pub mod verify_schedule;
pub mod watch;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub use manifest::{Manifest, RepoConfig};
pub use repo::Repo;

use keys::{Identities, Recipients, RepoKey};

/// zstd level of chunks. Measured on a real checkpoint (docs/benchmarks.md, "Backups"):
/// level 1 spends about a third less CPU than 3 on the state for 2–3% more bytes, and the log's
/// event bodies are already compressed (any level leaves them at 1.00 of their size, and
/// level 1 costs a tenth of encrypting them). Any level writes a plain zstd frame, so the
/// choice is not part of the repository format.
const ZSTD_LEVEL: i32 = 1;

/// Why a backup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A request or a setting makes no sense; fix it and retry.
    #[error("{0}")]
    Invalid(String),
    /// A key or identity file is missing or unusable.
    #[error("key: {0}")]
    Key(String),
    /// Encryption failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// A repository object failed a check: which object, which check.
    #[error("{object}: {check} failed: {detail}")]
    Corrupt {
        object: String,
        check: String,
        detail: String,
    },
    /// The repository's storage refused or failed (after retries).
    #[error("repository object {object}: {detail}")]
    Store {
        object: String,
        detail: String,
        /// The object does not exist.
        missing: bool,
        /// The object already exists (a create-only write).
        exists: bool,
    },
    /// Another backup or a GC holds the repository; retry later.
    #[error("busy: {0}")]
    Busy(String),
    /// The backup does not match this build or these settings (a restore refuses it
    /// unless forced).
    #[error("{0}")]
    Mismatch(String),
    /// A local file or directory could not be used.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl BackupError {
    /// A local I/O error at `path`.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
        move |source| BackupError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Progress of a running operation, shared with whoever reports it (a progress bar, the
/// admin API). Plain counters: readers see a recent value, never a torn one.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes to process in all (0 while unknown).
    pub total: AtomicU64,
    /// Bytes processed.
    pub done: AtomicU64,
    /// Bytes written to (or read from) the repository.
    pub transferred: AtomicU64,
    /// What it is doing.
    pub phase: Mutex<String>,
}

impl Progress {
    /// Sets the phase.
    pub fn phase(&self, phase: &str) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase.to_owned();
    }

    /// The phase.
    pub fn current_phase(&self) -> String {
        self.phase.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `(done, total, transferred)`.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
            self.transferred.load(Ordering::Relaxed),
        )
    }
}

/// An open repository: its storage, its key and its authenticated config.
#[derive(Debug, Clone)]
pub struct Repository {
    /// The storage.
    pub repo: Repo,
    /// The repo key.
    pub key: RepoKey,
    /// The config, authenticated.
    pub config: RepoConfig,
}

impl Repository {
    /// Creates a repository at `url` whose chunks are encrypted to `recipients`; refused
    /// if one exists there.
    pub async fn init(
        url: &str,
        key: RepoKey,
        recipients: Vec<String>,
    ) -> Result<Repository, BackupError> {
        Recipients::parse(&recipients)?;
        let repo = Repo::open(url)?;
        let config = RepoConfig {
            format: manifest::FORMAT_VERSION,
            created_ms: crate::clock::now_ms(),
            recipients,
        };
        let sealed = manifest::seal(&key, manifest::CONFIG, &config)?;
        if !repo.put_new(manifest::CONFIG, sealed).await? {
            return Err(BackupError::Invalid(format!(
                "{url} already holds a repository (its config exists)"
            )));
        }
        Ok(Repository { repo, key, config })
    }

    /// Opens the repository at `url` with `key`, checking its config.
    pub async fn open(url: &str, key: RepoKey) -> Result<Repository, BackupError> {
        let repo = Repo::open(url)?;
        let bytes = repo.get(manifest::CONFIG).await?.ok_or_else(|| {
            BackupError::Invalid(format!(
                "{url} holds no repository (no config object); create one with `tandem backup init`"
            ))
        })?;
        let config: RepoConfig = manifest::open(&key, manifest::CONFIG, &bytes)?;
        if config.format != manifest::FORMAT_VERSION {
            return Err(BackupError::Mismatch(format!(
                "repository {url} is in format {}; this build reads format {}",
                config.format,
                manifest::FORMAT_VERSION
            )));
        }
        Ok(Repository { repo, key, config })
    }

    /// Every backup's manifest, oldest first. A manifest that fails its checks is an
    /// error naming it: nothing is decided on a partial list.
    pub async fn manifests(&self) -> Result<Vec<Manifest>, BackupError> {
        let mut names: Vec<String> = self
            .repo
            .list(manifest::MANIFESTS)
            .await?
            .into_iter()
            .map(|l| l.name)
            .collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            out.push(self.manifest_at(&name).await?);
        }
        Ok(out)
    }

    /// Backup `id`'s manifest, checked.
    pub async fn manifest(&self, id: &str) -> Result<Manifest, BackupError> {
        self.manifest_at(&Manifest::object_name(id)).await
    }

    async fn manifest_at(&self, name: &str) -> Result<Manifest, BackupError> {
        let bytes = self
            .repo
            .get(name)
            .await?
            .ok_or_else(|| BackupError::Store {
                object: name.to_owned(),
                detail: "no such backup".into(),
                missing: true,
                exists: false,
            })?;
        let manifest: Manifest = manifest::open(&self.key, name, &bytes)?;
        if Manifest::object_name(&manifest.id) != name {
            return Err(BackupError::Corrupt {
                object: name.to_owned(),
                check: "id".into(),
                detail: format!("the manifest says it is backup {}", manifest.id),
            });
        }
        Ok(manifest)
    }

    /// The newest backup (by id), if any.
    pub async fn latest(&self) -> Result<Option<Manifest>, BackupError> {
        Ok(self.manifests().await?.pop())
    }

    /// Compresses and encrypts a chunk for upload.
    pub fn seal_chunk(&self, plaintext: &[u8]) -> Result<Vec<u8>, BackupError> {
        seal_chunk_to(&Recipients::parse(&self.config.recipients)?, plaintext)
    }

    /// Decrypts, decompresses and checks chunk `id` (length and name).
    pub fn open_chunk(
        &self,
        identities: &Identities,
        id: &str,
        len: u64,
        sealed: &[u8],
    ) -> Result<Vec<u8>, BackupError> {
        let object = manifest::chunk_object(id);
        let compressed = identities.decrypt(sealed, &object)?;
        let capacity = usize::try_from(len)
            .ok()
            .filter(|l| *l <= chunker::CHUNK_BYTES_MAX)
            .ok_or_else(|| BackupError::Corrupt {
                object: object.clone(),
                check: "length".into(),
                detail: format!("the manifest gives it {len} bytes"),
            })?;
        let plain =
            zstd::bulk::decompress(&compressed, capacity).map_err(|e| BackupError::Corrupt {
                object: object.clone(),
                check: "zstd".into(),
                detail: e.to_string(),
            })?;
        if plain.len() as u64 != len {
            return Err(BackupError::Corrupt {
                object,
                check: "length".into(),
                detail: format!("{} bytes, the manifest says {len}", plain.len()),
            });
        }
        if self.key.chunk_name(&plain) != id {
            return Err(BackupError::Corrupt {
                object,
                check: "content name (keyed blake3)".into(),
                detail: "the content is not the chunk of that name".into(),
            });
        }
        Ok(plain)
    }
}

/// A chunk's stored form: zstd, then age to `recipients`.
pub fn seal_chunk_to(recipients: &Recipients, plaintext: &[u8]) -> Result<Vec<u8>, BackupError> {
    let compressed = zstd::bulk::compress(plaintext, ZSTD_LEVEL)
        .map_err(|e| BackupError::Crypto(format!("compressing a chunk: {e}")))?;
    recipients.encrypt(&compressed)
}

/// A backup id for a backup started at `ms`: sorts by time, unique.
pub fn new_backup_id(ms: i64) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.millisecond()
    );
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{stamp}-{suffix}")
}
