//! Embedded storage: the ordered log of committed batches and the state derived from it,
//! in one fjall database (a log-structured merge tree per keyspace, one shared journal).
//!
//! Why fjall: measured against redb on this workload (`tools/storage-bench/RESULTS.md`,
//! summarised in `docs/architecture.md`): applying a batch updates profiles, identities and
//! dedup entries at random keys, which a copy-on-write B-tree pays for with a page rewrite
//! per key (~12 KB written per event), while an LSM tree appends (~2.3 KB per event) —
//! about 4× the durable throughput, with point reads still in microseconds.
//!
//! What this module guarantees:
//! - the state is changed only by applying committed log entries
//!   ([`Store::apply_committed`], in [`replicated`]), each in one write transaction
//!   together with "how far it got", so a crash never leaves half an entry applied;
//! - the write transaction reads its own writes, so a batch that mentions a customer twice
//!   sees its own earlier updates;
//! - one writer at a time; readers run concurrently on consistent snapshots.
//!
//! Applies are not fsync'd one by one: the Raft log (`crate::cluster::log_store`) is the
//! durable record and is replayed after a crash; [`Store::persist`] fsyncs the state before
//! a snapshot lets that log be purged.
//!
//! Submodules: [`tables`] (layout), [`apply`] (the state machine), [`read`] (queries and
//! the state hash), [`replicated`] (applying committed entries, snapshot export/import).

pub mod apply;
pub mod read;
pub mod replicated;
pub mod tables;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use fjall::{KeyspaceCreateOptions, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace};

use apply::ApplySettings;
use tables::*;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (I/O error, disk full, …). The operation did not happen;
    /// it may succeed later, but the node should report itself unhealthy.
    #[error("storage engine error: {0}")]
    Engine(#[from] fjall::Error),
    /// Data on disk does not decode or breaks an invariant. Never retry: stop and restore.
    #[error("corrupt state: {0}")]
    Corrupt(String),
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The database directory.
    pub path: PathBuf,
    /// Block cache size, bytes.
    pub cache_bytes: usize,
    /// What applying does (must match on all replicas).
    pub apply: ApplySettings,
}

/// Memtable size per keyspace. fjall's default (64 MiB) holds ~10⁶ small entries in a
/// skiplist whose searches then dominate the apply path; smaller memtables measured faster
/// (see `docs/benchmarks.md`).
const MEMTABLE_BYTES_MAX: u64 = 8 << 20;

/// Name of the store directory inside a node's data directory.
pub const STORE_DIR: &str = "store";

/// Handles to every keyspace.
pub struct Keyspaces {
    pub(crate) meta: SingleWriterTxKeyspace,
    pub(crate) events: SingleWriterTxKeyspace,
    pub(crate) profile_events: SingleWriterTxKeyspace,
    pub(crate) identities: SingleWriterTxKeyspace,
    pub(crate) profiles: SingleWriterTxKeyspace,
    pub(crate) redirects: SingleWriterTxKeyspace,
    pub(crate) merges: SingleWriterTxKeyspace,
    pub(crate) dedup: SingleWriterTxKeyspace,
    pub(crate) dedup_expiry: SingleWriterTxKeyspace,
    pub(crate) feed: SingleWriterTxKeyspace,
    pub(crate) segment_defs: SingleWriterTxKeyspace,
}

impl Keyspaces {
    fn open(db: &SingleWriterTxDatabase) -> Result<Keyspaces, StoreError> {
        let plain = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES_MAX)
            })
        };
        Ok(Keyspaces {
            meta: plain(META)?,
            events: plain(EVENTS)?,
            profile_events: plain(PROFILE_EVENTS)?,
            identities: plain(IDENTITIES)?,
            profiles: plain(PROFILES)?,
            redirects: plain(REDIRECTS)?,
            merges: plain(MERGES)?,
            dedup: plain(DEDUP)?,
            dedup_expiry: plain(DEDUP_EXPIRY)?,
            feed: plain(FEED)?,
            segment_defs: plain(SEGMENT_DEFS)?,
        })
    }

    /// The state keyspaces with their names, in [`STATE_KEYSPACES`] order.
    pub(crate) fn state(&self) -> [(&'static str, &SingleWriterTxKeyspace); 11] {
        [
            (META, &self.meta),
            (EVENTS, &self.events),
            (PROFILE_EVENTS, &self.profile_events),
            (IDENTITIES, &self.identities),
            (PROFILES, &self.profiles),
            (REDIRECTS, &self.redirects),
            (MERGES, &self.merges),
            (DEDUP, &self.dedup),
            (DEDUP_EXPIRY, &self.dedup_expiry),
            (FEED, &self.feed),
            (SEGMENT_DEFS, &self.segment_defs),
        ]
    }
}

/// The embedded store.
pub struct Store {
    db: SingleWriterTxDatabase,
    ks: Keyspaces,
    config: StoreConfig,
}

impl Store {
    /// Opens (or creates) the store at `config.path`, recovering from its journal after a
    /// crash.
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        let db = SingleWriterTxDatabase::builder(&config.path)
            .cache_size(config.cache_bytes as u64)
            .open()?;
        let ks = Keyspaces::open(&db)?;
        Ok(Store { db, ks, config })
    }

    /// The store directory in `data_dir`.
    pub fn dir_in(data_dir: &Path) -> PathBuf {
        data_dir.join(STORE_DIR)
    }

    /// A consistent read-only view of the state.
    pub fn reader(&self) -> read::Reader<'_> {
        read::Reader::new(self.db.read_tx(), &self.ks)
    }

    /// The settings applying uses.
    pub fn apply_settings(&self) -> &ApplySettings {
        &self.config.apply
    }
}

/// A `u64` under `key` in a meta keyspace, 0 when absent.
pub(crate) fn meta_u64(
    reader: &impl Readable,
    keyspace: &SingleWriterTxKeyspace,
    key: &str,
    name: &'static str,
) -> Result<u64, StoreError> {
    match reader.get(keyspace, key)? {
        Some(bytes) => read_u64(&bytes, name),
        None => Ok(0),
    }
}
