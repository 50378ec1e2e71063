//! Embedded storage: the ordered log of committed batches and the state derived from it,
//! in one redb database file.
//!
//! Why redb: see `docs/architecture.md` (measured against fjall in
//! `tools/storage-bench/RESULTS.md`). In short: durable when `commit()` returns, ACID
//! transactions with read-your-writes across many tables, MVCC readers that never block the
//! writer, pure Rust, ~10 s to build.
//!
//! What this module guarantees:
//! - [`Store::commit`] appends a batch to the log and applies it to the state in one write
//!   transaction with `Durability::Immediate`: when it returns `Ok`, the batch and its
//!   effects are fsync'd. A crash at any instant leaves the last committed transaction.
//! - Quick-repair is on: after a crash, opening does not walk the whole file.
//! - One writer at a time (redb's rule); readers run concurrently on snapshots.
//!
//! Submodules: [`tables`] (layout), [`apply`] (the state machine), [`read`] (queries and
//! the state hash).

pub mod apply;
pub mod read;
pub mod tables;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable};

use crate::model::event::{Batch, EventOutcome};
use apply::{Applier, ApplySettings};
use tables::*;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (I/O error, disk full, …). The operation did not happen;
    /// it may succeed later, but the node should report itself unhealthy.
    #[error("storage engine error: {0}")]
    Engine(#[from] redb::Error),
    /// Data on disk does not decode or breaks an invariant. Never retry: stop and restore.
    #[error("corrupt state: {0}")]
    Corrupt(String),
}

macro_rules! engine_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Engine(e.into())
            }
        }
    )*};
}
engine_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The database file.
    pub path: PathBuf,
    /// Page cache size, bytes.
    pub cache_bytes: usize,
    /// What applying does (must match on all replicas).
    pub apply: ApplySettings,
    /// How many applied log entries to keep before compacting them away.
    pub log_retain_entries: u64,
}

/// Most log entries compacted per commit, so compaction never stalls a commit for long.
const COMPACT_PER_COMMIT_MAX: u64 = 8;

/// The embedded store.
pub struct Store {
    db: Database,
    config: StoreConfig,
}

/// Name of the database file inside a node's data directory.
pub const DB_FILE: &str = "tandem.redb";

impl Store {
    /// Opens (or creates) the store at `config.path`, repairing it after a crash.
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        let db = Database::builder()
            .set_cache_size(config.cache_bytes)
            .create(&config.path)?;
        let store = Store { db, config };
        store.init_tables()?;
        Ok(store)
    }

    /// The path of the database file in `data_dir`.
    pub fn file_in(data_dir: &Path) -> PathBuf {
        data_dir.join(DB_FILE)
    }

    fn init_tables(&self) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            txn.open_table(LOG)?;
            txn.open_table(LOG_META)?;
            let settings = &self.config.apply;
            Applier::open(&txn, settings)?;
        }
        txn.commit()?;
        Ok(())
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        // Quick repair makes recovery after kill -9 near-instant at a small commit cost.
        txn.set_quick_repair(true);
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Corrupt(format!("cannot set durability: {e}")))?;
        Ok(txn)
    }

    /// Appends `batch` to the log and applies it, durably, in one transaction. Returns the
    /// log index it got and what happened to each event.
    pub fn commit(&self, batch: &Batch) -> Result<(u64, Vec<EventOutcome>), StoreError> {
        let txn = self.begin_write()?;
        let (index, outcomes) = {
            let mut log = txn.open_table(LOG)?;
            let mut log_meta = txn.open_table(LOG_META)?;
            let last = log_meta.get(LOG_LAST_INDEX)?.map_or(0, |v| v.value());
            let index = last + 1;
            log.insert(index, encode(batch).as_slice())?;
            log_meta.insert(LOG_LAST_INDEX, index)?;
            if log_meta.get(LOG_FIRST_INDEX)?.is_none() {
                log_meta.insert(LOG_FIRST_INDEX, index)?;
            }
            let mut applier = Applier::open(&txn, &self.config.apply)?;
            let outcomes = applier.apply(index, batch)?;
            applier.finish()?;
            self.compact(&mut log, &mut log_meta, index)?;
            (index, outcomes)
        };
        txn.commit()?;
        Ok((index, outcomes))
    }

    /// Drops the oldest log entries beyond the retention count (a bounded number per call).
    /// Everything up to `applied` is in the state, committed in the same transaction.
    fn compact(
        &self,
        log: &mut redb::Table<u64, &[u8]>,
        log_meta: &mut redb::Table<&str, u64>,
        applied: u64,
    ) -> Result<(), StoreError> {
        let first = log_meta.get(LOG_FIRST_INDEX)?.map_or(1, |v| v.value());
        let keep_from = applied.saturating_sub(self.config.log_retain_entries) + 1;
        let until = keep_from.min(first + COMPACT_PER_COMMIT_MAX);
        if until <= first {
            return Ok(());
        }
        for index in first..until {
            log.remove(index)?;
        }
        log_meta.insert(LOG_FIRST_INDEX, until)?;
        Ok(())
    }

    /// Applies already-committed log entries (e.g. replayed from another store's log) to
    /// this store's state, durably, without touching this store's own log.
    pub fn apply_entries(&self, entries: &[(u64, Batch)]) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut applier = Applier::open(&txn, &self.config.apply)?;
            for (index, batch) in entries {
                applier.apply(*index, batch)?;
            }
            applier.finish()?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The log's first and last index (`None` when empty).
    pub fn log_bounds(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(LOG_META)?;
        let first = meta.get(LOG_FIRST_INDEX)?.map(|v| v.value());
        let last = meta.get(LOG_LAST_INDEX)?.map(|v| v.value());
        Ok(first.zip(last).filter(|(first, last)| first <= last))
    }

    /// Reads up to `limit` log entries starting at `from`.
    pub fn log_entries(&self, from: u64, limit: usize) -> Result<Vec<(u64, Batch)>, StoreError> {
        let txn = self.db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let mut out = Vec::new();
        for entry in log.range(from..)?.take(limit) {
            let (index, bytes) = entry?;
            out.push((index.value(), decode(bytes.value(), "log")?));
        }
        Ok(out)
    }

    /// A consistent read-only view of the state.
    pub fn reader(&self) -> Result<read::Reader, StoreError> {
        Ok(read::Reader::new(self.db.begin_read()?))
    }

    /// The settings applying uses.
    pub fn apply_settings(&self) -> &ApplySettings {
        &self.config.apply
    }
}
