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
//! - [`Store::commit`] appends a batch to the log and applies it to the state in one write
//!   transaction, journaled with `PersistMode::SyncAll`: when it returns `Ok`, the batch and
//!   its effects are fsync'd. A crash at any instant recovers to the last committed
//!   transaction (fjall replays its journal on open).
//! - The write transaction reads its own writes, so a batch that mentions a customer twice
//!   sees its own earlier updates.
//! - One writer at a time; readers run concurrently on consistent snapshots.
//!
//! Submodules: [`tables`] (layout), [`apply`] (the state machine), [`read`] (queries and
//! the state hash).

pub mod apply;
pub mod read;
pub mod replicated;
pub mod tables;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use fjall::{
    KeyspaceCreateOptions, KvSeparationOptions, PersistMode, Readable, SingleWriterTxDatabase,
    SingleWriterTxKeyspace, SingleWriterWriteTx,
};

use crate::model::event::{Batch, EventOutcome};
use apply::{Applier, ApplySettings};
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
    /// How many applied log entries to keep before compacting them away.
    pub log_retain_entries: u64,
}

/// Most log entries compacted per commit, so compaction never stalls a commit for long.
const COMPACT_PER_COMMIT_MAX: u64 = 8;

/// Memtable size per keyspace. fjall's default (64 MiB) holds ~10⁶ small entries in a
/// skiplist whose searches then dominate the apply path; smaller memtables measured faster
/// (see `docs/benchmarks.md`).
const MEMTABLE_BYTES_MAX: u64 = 8 << 20;

/// Name of the store directory inside a node's data directory.
pub const STORE_DIR: &str = "store";

/// Handles to every keyspace.
pub struct Keyspaces {
    pub(crate) log: SingleWriterTxKeyspace,
    pub(crate) log_meta: SingleWriterTxKeyspace,
    pub(crate) meta: SingleWriterTxKeyspace,
    pub(crate) events: SingleWriterTxKeyspace,
    pub(crate) profile_events: SingleWriterTxKeyspace,
    pub(crate) identities: SingleWriterTxKeyspace,
    pub(crate) profiles: SingleWriterTxKeyspace,
    pub(crate) redirects: SingleWriterTxKeyspace,
    pub(crate) merges: SingleWriterTxKeyspace,
    pub(crate) dedup: SingleWriterTxKeyspace,
    pub(crate) dedup_expiry: SingleWriterTxKeyspace,
}

impl Keyspaces {
    fn open(db: &SingleWriterTxDatabase) -> Result<Keyspaces, StoreError> {
        let plain = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES_MAX)
            })
        };
        // Log entries are whole batches (tens to hundreds of KB): key-value separation keeps
        // them out of compaction, as fjall recommends for large values.
        let log = db.keyspace(LOG, || {
            KeyspaceCreateOptions::default()
                .with_kv_separation(Some(KvSeparationOptions::default()))
        })?;
        Ok(Keyspaces {
            log,
            log_meta: plain(LOG_META)?,
            meta: plain(META)?,
            events: plain(EVENTS)?,
            profile_events: plain(PROFILE_EVENTS)?,
            identities: plain(IDENTITIES)?,
            profiles: plain(PROFILES)?,
            redirects: plain(REDIRECTS)?,
            merges: plain(MERGES)?,
            dedup: plain(DEDUP)?,
            dedup_expiry: plain(DEDUP_EXPIRY)?,
        })
    }

    /// The state keyspaces with their names, in [`STATE_KEYSPACES`] order.
    pub(crate) fn state(&self) -> [(&'static str, &SingleWriterTxKeyspace); 9] {
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

    fn begin_write(&self) -> SingleWriterWriteTx<'_> {
        self.db.write_tx().durability(Some(PersistMode::SyncAll))
    }

    /// Appends `batch` to the log and applies it, durably, in one transaction. Returns the
    /// log index it got and what happened to each event.
    pub fn commit(&self, batch: &Batch) -> Result<(u64, Vec<EventOutcome>), StoreError> {
        let mut tx = self.begin_write();
        let last = meta_u64(&tx, &self.ks.log_meta, LOG_LAST_INDEX, LOG_META)?;
        let index = last + 1;
        tx.insert(&self.ks.log, u64_bytes(index), encode(batch));
        tx.insert(&self.ks.log_meta, LOG_LAST_INDEX, u64_bytes(index));
        if tx.get(&self.ks.log_meta, LOG_FIRST_INDEX)?.is_none() {
            tx.insert(&self.ks.log_meta, LOG_FIRST_INDEX, u64_bytes(index));
        }
        let mut applier = Applier::open(&mut tx, &self.ks, &self.config.apply)?;
        let outcomes = applier.apply(index, batch)?;
        applier.finish()?;
        self.compact(&mut tx, index)?;
        tx.commit()?;
        Ok((index, outcomes))
    }

    /// Drops the oldest log entries beyond the retention count (a bounded number per call).
    /// Everything up to `applied` is in the state, committed in the same transaction.
    fn compact(&self, tx: &mut SingleWriterWriteTx<'_>, applied: u64) -> Result<(), StoreError> {
        let first = meta_u64(tx, &self.ks.log_meta, LOG_FIRST_INDEX, LOG_META)?.max(1);
        let keep_from = applied.saturating_sub(self.config.log_retain_entries) + 1;
        let until = keep_from.min(first + COMPACT_PER_COMMIT_MAX);
        if until <= first {
            return Ok(());
        }
        for index in first..until {
            tx.remove(&self.ks.log, u64_bytes(index));
        }
        tx.insert(&self.ks.log_meta, LOG_FIRST_INDEX, u64_bytes(until));
        Ok(())
    }

    /// Applies already-committed log entries (e.g. replayed from another store's log) to
    /// this store's state, durably, without touching this store's own log.
    pub fn apply_entries(&self, entries: &[(u64, Batch)]) -> Result<(), StoreError> {
        let mut tx = self.begin_write();
        let mut applier = Applier::open(&mut tx, &self.ks, &self.config.apply)?;
        for (index, batch) in entries {
            applier.apply(*index, batch)?;
        }
        applier.finish()?;
        tx.commit()?;
        Ok(())
    }

    /// The log's first and last index (`None` when empty).
    pub fn log_bounds(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let snapshot = self.db.read_tx();
        let first = snapshot.get(&self.ks.log_meta, LOG_FIRST_INDEX)?;
        let last = snapshot.get(&self.ks.log_meta, LOG_LAST_INDEX)?;
        match (first, last) {
            (Some(first), Some(last)) => {
                let (first, last) = (read_u64(&first, LOG_META)?, read_u64(&last, LOG_META)?);
                Ok((first <= last).then_some((first, last)))
            }
            _ => Ok(None),
        }
    }

    /// Reads up to `limit` log entries starting at `from`.
    pub fn log_entries(&self, from: u64, limit: usize) -> Result<Vec<(u64, Batch)>, StoreError> {
        let snapshot = self.db.read_tx();
        let mut out = Vec::new();
        for guard in snapshot.range(&self.ks.log, u64_bytes(from)..).take(limit) {
            let (key, value) = guard.into_inner()?;
            out.push((read_u64(&key, LOG)?, decode(&value, LOG)?));
        }
        Ok(out)
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
