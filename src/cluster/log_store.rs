//! The Raft log store: `RaftLogStorage` on a fjall database of its own (`raft-log/` in the
//! data directory).
//!
//! Contract (openraft's, and the one that loses data when broken):
//! - after `append` returns, the entries are readable by every reader handle;
//! - openraft is told an append is durable (`IOFlushed::io_completed`) **only after an
//!   fsync that covers it**. A flusher thread does that fsync once for every append queued
//!   behind it, so concurrent appends share fsyncs;
//! - a vote is fsync'd before `save_vote` returns;
//! - writes reach the journal in call order, and an fsync covers everything written before
//!   it, so a truncation is never reordered after the appends that follow it.
//!
//! It is a separate database from the state so that appends never wait for the state
//! machine's write lock, and so that appending (which must fsync) and applying (which need
//! not: the log is the durable record) have their own journals.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};

use super::TypeConfig;
use super::types::{Entry, LogId, Vote};

/// `meta` key: the current vote.
const VOTE: &str = "vote";
/// `meta` key: the last committed log id known to this node.
const COMMITTED: &str = "committed";
/// `meta` key: the last purged log id.
const PURGED: &str = "purged";

/// The log store. Cheap to clone: every clone (and every reader) shares the same state.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    entries: Keyspace,
    meta: Keyspace,
    flusher: std_mpsc::Sender<IOFlushed<TypeConfig>>,
}

fn io(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, std::io::Error> {
    postcard::to_stdvec(value).map_err(io)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, std::io::Error> {
    postcard::from_bytes(bytes).map_err(|e| io(format!("corrupt raft log record: {e}")))
}

impl LogStore {
    /// Opens (or creates) the log store in `dir`.
    pub fn open(dir: &Path) -> Result<LogStore, std::io::Error> {
        let db = Database::builder(dir)
            .cache_size(32 << 20)
            .open()
            .map_err(io)?;
        let entries = db
            .keyspace("entries", || {
                KeyspaceCreateOptions::default()
                    .with_kv_separation(Some(KvSeparationOptions::default()))
            })
            .map_err(io)?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .map_err(io)?;
        let (flusher, pending) = std_mpsc::channel();
        let flush_db = db.clone();
        std::thread::Builder::new()
            .name("tandem-raft-log-fsync".into())
            .spawn(move || flush_loop(&flush_db, &pending))?;
        Ok(LogStore {
            inner: Arc::new(Inner {
                db,
                entries,
                meta,
                flusher,
            }),
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, std::io::Error> {
        match self.inner.meta.get(key).map_err(io)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, std::io::Error> {
        match self.inner.entries.last_key_value() {
            Some(guard) => {
                let (_, value) = guard.into_inner().map_err(io)?;
                let entry: Entry = decode(&value)?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }
}

/// Waits for queued appends, fsyncs the journal once for all of them, then tells openraft.
fn flush_loop(db: &Database, pending: &std_mpsc::Receiver<IOFlushed<TypeConfig>>) {
    while let Ok(first) = pending.recv() {
        let mut waiting = vec![first];
        while let Ok(more) = pending.try_recv() {
            waiting.push(more);
        }
        let result = db.persist(PersistMode::SyncAll);
        for callback in waiting {
            callback.io_completed(result.as_ref().map(|_| ()).map_err(io));
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn bound_key(bound: Bound<&u64>) -> Bound<[u8; 8]> {
    match bound {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        let range = (bound_key(range.start_bound()), bound_key(range.end_bound()));
        let mut out = Vec::new();
        for guard in self.inner.entries.range(range) {
            let (_, value) = guard.into_inner().map_err(io)?;
            out.push(decode(&value)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        self.get_meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, std::io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_meta(PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        let mut batch = self.inner.db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(&self.inner.meta, VOTE, encode(vote)?);
        batch.commit().map_err(io)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        // Advisory (lets a restart re-apply up to here); made durable by the next fsync.
        let mut batch = self.inner.db.batch();
        batch.insert(&self.inner.meta, COMMITTED, encode(&committed)?);
        batch.commit().map_err(io)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = self.inner.db.batch();
        for entry in entries {
            batch.insert(
                &self.inner.entries,
                index_key(entry.log_id.index),
                encode(&entry)?,
            );
        }
        batch.commit().map_err(io)?;
        // Readable now; durable once the flusher's fsync returns.
        self.inner
            .flusher
            .send(callback)
            .map_err(|_| io("the raft log fsync thread has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), std::io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let mut batch = self.inner.db.batch();
        for guard in self.inner.entries.range(index_key(from)..) {
            batch.remove(&self.inner.entries, guard.key().map_err(io)?);
        }
        batch.commit().map_err(io)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        let mut batch = self.inner.db.batch();
        batch.insert(&self.inner.meta, PURGED, encode(&log_id)?);
        for guard in self.inner.entries.range(..=index_key(log_id.index)) {
            batch.remove(&self.inner.entries, guard.key().map_err(io)?);
        }
        batch.commit().map_err(io)
    }
}
