//! The two engines behind one small interface.
//!
//! Both stores keep four tables/keyspaces (`log`, `events`, `profiles`, `dedup`) with
//! byte-string keys (big-endian integers, so byte order equals numeric order) and apply one
//! [`Commit`] as a single atomic write that is fsync'd before [`Store::apply`] returns.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};

use crate::workload::{next_profile, Commit};

/// Which engine to benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    Redb,
    Fjall,
}

/// What a benchmark needs from an engine.
pub trait Store: Send + Sync {
    /// Bulk-load profiles `ids` with the value produced by `value_for`, durably.
    fn preload_profiles(
        &self,
        ids: std::ops::Range<u64>,
        value_for: &dyn Fn(u64) -> Vec<u8>,
    ) -> Result<()>;

    /// Apply one commit (log entry, events, profile read-modify-writes, dedup inserts)
    /// atomically and durably: it is fsync'd when this returns.
    fn apply(&self, commit: &Commit<'_>) -> Result<()>;

    /// Point-read one profile from the latest committed state; returns the value length.
    fn get_profile(&self, id: u64) -> Result<Option<usize>>;
}

/// Open a fresh store of `kind` inside directory `dir`.
pub fn open(kind: EngineKind, dir: &Path, cache_bytes: u64) -> Result<Box<dyn Store>> {
    Ok(match kind {
        EngineKind::Redb => Box::new(RedbStore::open(dir, cache_bytes)?),
        EngineKind::Fjall => Box::new(FjallStore::open(dir, cache_bytes)?),
    })
}

// ---------------------------------------------------------------------------------------------
// redb
// ---------------------------------------------------------------------------------------------

use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};

type Bytes = &'static [u8];
const LOG: TableDefinition<Bytes, Bytes> = TableDefinition::new("log");
const EVENTS: TableDefinition<Bytes, Bytes> = TableDefinition::new("events");
const PROFILES: TableDefinition<Bytes, Bytes> = TableDefinition::new("profiles");
const DEDUP: TableDefinition<Bytes, Bytes> = TableDefinition::new("dedup");

/// redb: one B-tree file, copy-on-write pages, one writer at a time.
pub struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    fn open(dir: &Path, cache_bytes: u64) -> Result<Self> {
        let path = dir.join("tandem.redb");
        let db = redb::Database::builder()
            .set_cache_size(usize::try_from(cache_bytes).context("cache size overflows usize")?)
            .create(&path)
            .with_context(|| format!("creating redb database at {}", path.display()))?;
        Ok(Self { db })
    }

    fn write_txn(&self) -> Result<redb::WriteTransaction> {
        let mut txn = self.db.begin_write().context("redb: begin_write")?;
        // Immediate is the default in 4.6; set it explicitly since durability is the point.
        txn.set_durability(Durability::Immediate)
            .context("redb: set_durability(Immediate)")?;
        Ok(txn)
    }
}

impl Store for RedbStore {
    fn preload_profiles(
        &self,
        ids: std::ops::Range<u64>,
        value_for: &dyn Fn(u64) -> Vec<u8>,
    ) -> Result<()> {
        const CHUNK: u64 = 100_000;
        let mut start = ids.start;
        while start < ids.end {
            let end = (start + CHUNK).min(ids.end);
            let txn = self.write_txn()?;
            {
                let mut profiles = txn.open_table(PROFILES)?;
                for id in start..end {
                    profiles.insert(id.to_be_bytes().as_slice(), value_for(id).as_slice())?;
                }
            }
            txn.commit().context("redb: preload commit")?;
            start = end;
        }
        Ok(())
    }

    fn apply(&self, commit: &Commit<'_>) -> Result<()> {
        let txn = self.write_txn()?;
        {
            let mut log = txn.open_table(LOG)?;
            log.insert(commit.log_index.to_be_bytes().as_slice(), commit.log_value)?;

            let mut events = txn.open_table(EVENTS)?;
            for (seq, value) in &commit.events {
                events.insert(seq.to_be_bytes().as_slice(), *value)?;
            }

            // Reads inside a redb write transaction see the transaction's own earlier writes,
            // so repeated profile ids within one commit compose correctly.
            let mut profiles = txn.open_table(PROFILES)?;
            for (id, payload) in &commit.profile_updates {
                let key = id.to_be_bytes();
                let new = {
                    let old = profiles.get(key.as_slice())?;
                    next_profile(old.as_ref().map(|g| g.value()), payload)
                };
                profiles.insert(key.as_slice(), new.as_slice())?;
            }

            let mut dedup = txn.open_table(DEDUP)?;
            for (key, value) in &commit.dedup {
                dedup.insert(key.as_slice(), value.as_slice())?;
            }
        }
        txn.commit().context("redb: commit")?;
        Ok(())
    }

    fn get_profile(&self, id: u64) -> Result<Option<usize>> {
        // A fresh read transaction per get: the realistic "latest committed" read.
        let txn = self.db.begin_read().context("redb: begin_read")?;
        let profiles = txn.open_table(PROFILES)?;
        let value = profiles.get(id.to_be_bytes().as_slice())?;
        Ok(value.map(|v| v.value().len()))
    }
}

// ---------------------------------------------------------------------------------------------
// fjall
// ---------------------------------------------------------------------------------------------

use fjall::{KeyspaceCreateOptions, KvSeparationOptions, PersistMode};

/// fjall: LSM-tree, one shared journal for all keyspaces, background flush/compaction.
pub struct FjallStore {
    db: fjall::Database,
    log: fjall::Keyspace,
    events: fjall::Keyspace,
    profiles: fjall::Keyspace,
    dedup: fjall::Keyspace,
}

impl FjallStore {
    fn open(dir: &Path, cache_bytes: u64) -> Result<Self> {
        let db = fjall::Database::builder(dir)
            .cache_size(cache_bytes)
            .open()
            .with_context(|| format!("opening fjall database at {}", dir.display()))?;
        // Log values are B*400 bytes (40-400 KB): key-value separation keeps them out of
        // compaction, which is what fjall recommends for large values.
        let log = db.keyspace("log", || {
            KeyspaceCreateOptions::default()
                .with_kv_separation(Some(KvSeparationOptions::default()))
        })?;
        let events = db.keyspace("events", KeyspaceCreateOptions::default)?;
        let profiles = db.keyspace("profiles", KeyspaceCreateOptions::default)?;
        let dedup = db.keyspace("dedup", KeyspaceCreateOptions::default)?;
        Ok(Self {
            db,
            log,
            events,
            profiles,
            dedup,
        })
    }

    /// An atomic cross-keyspace batch whose commit fsyncs the journal (`SyncAll` = fsync).
    /// Without `durability(Some(SyncAll))` fjall only writes to OS buffers.
    fn durable_batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch().durability(Some(PersistMode::SyncAll))
    }
}

impl Store for FjallStore {
    fn preload_profiles(
        &self,
        ids: std::ops::Range<u64>,
        value_for: &dyn Fn(u64) -> Vec<u8>,
    ) -> Result<()> {
        const CHUNK: u64 = 100_000;
        let mut start = ids.start;
        while start < ids.end {
            let end = (start + CHUNK).min(ids.end);
            let mut batch = self.durable_batch();
            for id in start..end {
                batch.insert(&self.profiles, id.to_be_bytes().as_slice(), value_for(id));
            }
            batch.commit().context("fjall: preload commit")?;
            start = end;
        }
        Ok(())
    }

    fn apply(&self, commit: &Commit<'_>) -> Result<()> {
        let mut batch = self.durable_batch();
        batch.insert(
            &self.log,
            commit.log_index.to_be_bytes().as_slice(),
            commit.log_value,
        );
        for (seq, value) in &commit.events {
            batch.insert(&self.events, seq.to_be_bytes().as_slice(), *value);
        }

        // A plain WriteBatch cannot be read from, so read-your-writes within the commit comes
        // from this overlay: reads hit it first, then the committed keyspace. Each profile key
        // goes into the batch once, with its final value.
        let mut overlay: HashMap<u64, Vec<u8>> =
            HashMap::with_capacity(commit.profile_updates.len());
        for (id, payload) in &commit.profile_updates {
            let new = match overlay.get(id) {
                Some(pending) => next_profile(Some(pending), payload),
                None => {
                    let committed = self.profiles.get(id.to_be_bytes())?;
                    next_profile(committed.as_deref(), payload)
                }
            };
            overlay.insert(*id, new);
        }
        for (id, value) in overlay {
            batch.insert(&self.profiles, id.to_be_bytes().as_slice(), value);
        }

        for (key, value) in &commit.dedup {
            batch.insert(&self.dedup, key.as_slice(), value.as_slice());
        }
        batch.commit().context("fjall: commit")?;
        Ok(())
    }

    fn get_profile(&self, id: u64) -> Result<Option<usize>> {
        Ok(self.profiles.get(id.to_be_bytes())?.map(|v| v.len()))
    }
}
