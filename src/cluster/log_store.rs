//! The Raft log store: `RaftLogStorage` on Tandem's segmented log ([`crate::log`]), which
//! is also the event store.
//!
//! Contract (openraft's, and the one that loses data when broken):
//! - after `append` returns, the entries are readable by every reader handle;
//! - openraft is told an append is durable (`IOFlushed::io_completed`) **only after an
//!   fsync that covers it**. A flusher thread does that fsync once for every append queued
//!   behind it, so concurrent appends share fsyncs;
//! - a vote is fsync'd before `save_vote` returns;
//! - a truncation is durable before `truncate_after` returns, so it is never reordered
//!   after the appends that follow it.
//!
//! What "purge" means here: openraft may purge entries a snapshot covers, and this store
//! records the purged log id — but keeps the segment files, because they hold the event
//! bodies the state indexes. Segments are deleted by retention (`crate::node`), and only
//! below both the purged id and what the state still names.
//!
//! Records are laid out as [`crate::store::entry`] describes: kind, the entry's log id
//! (postcard), then the command (postcard, its block opaque bytes) or membership.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::EntryPayload;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};

use super::TypeConfig;
use super::types::{Entry, LogId, Vote};
use crate::log::Log;
use crate::store::entry;

/// Meta file: the current vote.
const VOTE: &str = "vote";
/// Meta file: the last committed log id known to this node (advisory).
const COMMITTED: &str = "committed";
/// Meta file: the last purged log id.
const PURGED: &str = "purged";
/// The committed id is advisory: write it at most this often.
const COMMITTED_WRITE_INTERVAL: Duration = Duration::from_millis(100);
/// Most recent entries kept decoded in memory: replication to followers and the state
/// machine read entries right after they were appended, and serving them from memory
/// saves reading and decoding them again (and keeps the leader's decoded block heads).
const RECENT_ENTRIES_MAX: usize = 256;
/// Most memory, estimated, of the recent entries kept.
const RECENT_BYTES_MAX: usize = 64 << 20;
/// An entry in memory holds its encoded bytes and, once decoded, its block's head (every
/// event's metadata as owned strings): about this many times the encoded size.
const RECENT_BYTES_PER_ENCODED: usize = 4;

/// The log store. Cheap to clone: every clone (and every reader) shares the same state.
#[derive(Clone)]
pub struct LogStore {
    log: Log,
    flusher: std_mpsc::Sender<IOFlushed<TypeConfig>>,
    committed: Arc<Mutex<CommittedState>>,
    /// The purged index plus one (0 = nothing purged): openraft never gets entries below
    /// it, though the files keep them for the event store.
    readable_from: Arc<std::sync::atomic::AtomicU64>,
    /// The latest appended entries, decoded.
    recent: Arc<Mutex<Recent>>,
    /// Duration of each fsync of the log, seconds (the node exports it as a metric).
    fsync_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// Consecutive entries ending at the log's last, as appended, with their encoded sizes.
#[derive(Default)]
struct Recent {
    entries: std::collections::VecDeque<(Entry, usize)>,
    bytes: usize,
    /// The log's generation they were appended under (see [`Log::generation`]).
    generation: u64,
}

impl Recent {
    /// The entries in `[from, to]` the log holds, if the cache can tell: it ends at the
    /// log's last entry, so it can whenever `from` is at or after its first.
    fn range(&self, from: u64, to: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.0.log_id.index;
        let skip = usize::try_from(from.checked_sub(first)?).ok()?;
        Some(
            self.entries
                .iter()
                .skip(skip)
                .take_while(|(entry, _)| entry.log_id.index <= to)
                .map(|(entry, _)| entry.clone())
                .collect(),
        )
    }

    fn push(&mut self, entry: Entry, bytes: usize) {
        let follows = self
            .entries
            .back()
            .is_none_or(|(last, _)| last.log_id.index + 1 == entry.log_id.index);
        if !follows {
            self.clear();
        }
        self.entries.push_back((entry, bytes));
        self.bytes += bytes;
        while self.entries.len() > RECENT_ENTRIES_MAX || self.bytes > RECENT_BYTES_MAX {
            match self.entries.pop_front() {
                Some((_, size)) => self.bytes -= size,
                None => break,
            }
        }
    }

    /// Drops entries at `index` and above.
    fn truncate_from(&mut self, index: u64) {
        while self
            .entries
            .back()
            .is_some_and(|(entry, _)| entry.log_id.index >= index)
        {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

/// The last committed id openraft told us, and when it was last written out.
struct CommittedState {
    id: Option<LogId>,
    written_at: Option<Instant>,
    /// `id` changed since it was last written (a write skipped by the throttle).
    unwritten: bool,
    /// Where it is written; the last value is written when the log store goes away (at
    /// shutdown), so a clean stop leaves the newest committed index on disk — it is what
    /// tells the next start which records must be intact.
    log: Log,
}

impl CommittedState {
    /// Writes the newest committed id, durably, if the throttle skipped it.
    fn write_unwritten(&mut self) -> Result<(), std::io::Error> {
        if !self.unwritten {
            return Ok(());
        }
        let bytes = encode(&self.id)?;
        self.log.write_meta(COMMITTED, &bytes, true).map_err(io)?;
        self.unwritten = false;
        Ok(())
    }
}

impl Drop for CommittedState {
    fn drop(&mut self) {
        if let Err(error) = self.write_unwritten() {
            tracing::warn!(%error, "could not record the last committed index");
        }
    }
}

fn io(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

/// The committed index this node recorded in the log directory `dir`, read before the log
/// is opened: every record up to it was durable here (a leader commits only what it has
/// fsync'd; a follower records what the leader reported committed, which a torn tail could
/// in rare cases still hold — then the node refuses to start rather than guess).
pub fn committed_index_in(dir: &std::path::Path) -> Result<Option<u64>, std::io::Error> {
    match crate::log::read_meta_in(dir, COMMITTED).map_err(io)? {
        Some(bytes) => Ok(decode::<Option<LogId>>(&bytes)?.map(|id| id.index)),
        None => Ok(None),
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, std::io::Error> {
    postcard::to_stdvec(value).map_err(io)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, std::io::Error> {
    postcard::from_bytes(bytes).map_err(|e| io(format!("corrupt raft log record: {e}")))
}

/// Lays out `entry` as a log record.
pub fn record_of(entry: &Entry) -> Result<Vec<u8>, std::io::Error> {
    let head = encode(&entry.log_id)?;
    Ok(match &entry.payload {
        EntryPayload::Normal(command) => entry::encode(entry::NORMAL, &head, &encode(command)?),
        EntryPayload::Membership(membership) => {
            entry::encode(entry::MEMBERSHIP, &head, &encode(membership)?)
        }
        EntryPayload::Blank => entry::encode(entry::BLANK, &head, &[]),
    })
}

/// Reads a log record back into an entry.
pub fn entry_of(record: &[u8]) -> Result<Entry, std::io::Error> {
    let (kind, head, body) = entry::split(record).map_err(io)?;
    let log_id: LogId = decode(head)?;
    let payload = match kind {
        entry::NORMAL => EntryPayload::Normal(decode(body)?),
        entry::MEMBERSHIP => EntryPayload::Membership(decode(body)?),
        entry::BLANK => EntryPayload::Blank,
        other => return Err(io(format!("log record kind {other}"))),
    };
    Ok(Entry { log_id, payload })
}

/// The log id of the record at `index`, if the log has it.
pub fn log_id_at(log: &Log, index: u64) -> Result<Option<LogId>, std::io::Error> {
    match log.read(index).map_err(io)? {
        Some(record) => {
            let (_, head, _) = entry::split(&record).map_err(io)?;
            decode(head).map(Some)
        }
        None => Ok(None),
    }
}

/// The index of the last entry openraft purged (a snapshot covers it), if any.
pub fn purged_index(log: &Log) -> Result<Option<u64>, std::io::Error> {
    match log.read_meta(PURGED).map_err(io)? {
        Some(bytes) => Ok(Some(decode::<LogId>(&bytes)?.index)),
        None => Ok(None),
    }
}

impl LogStore {
    /// Records the newest committed index now (durably), if the throttle held it back:
    /// call at shutdown, after Raft stopped, so the next start knows every record up to it
    /// must be intact.
    pub fn record_committed(&self) -> Result<(), std::io::Error> {
        self.committed.lock().map_err(io)?.write_unwritten()
    }

    /// Durations of the log's fsyncs, seconds (one per group of appends).
    pub fn fsync_seconds(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.fsync_seconds
    }

    /// The Raft log store over `log`.
    pub fn open(log: Log) -> Result<LogStore, std::io::Error> {
        // 50 µs … ~1.6 s.
        let fsync_seconds = prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 16),
        );
        let (flusher, pending) = std_mpsc::channel();
        let flush_log = log.clone();
        std::thread::Builder::new()
            .name("tandem-raft-log-fsync".into())
            .spawn({
                let fsync_seconds = fsync_seconds.clone();
                move || flush_loop(&flush_log, &pending, &fsync_seconds)
            })?;
        let committed = match log.read_meta(COMMITTED).map_err(io)? {
            Some(bytes) => decode::<Option<LogId>>(&bytes)?,
            None => None,
        };
        let readable_from = purged_index(&log)?.map_or(0, |index| index + 1);
        let committed_log = log.clone();
        let recent = Recent {
            generation: log.generation(),
            ..Recent::default()
        };
        Ok(LogStore {
            recent: Arc::new(Mutex::new(recent)),
            fsync_seconds,
            readable_from: Arc::new(std::sync::atomic::AtomicU64::new(readable_from)),
            log,
            flusher,
            committed: Arc::new(Mutex::new(CommittedState {
                id: committed,
                written_at: None,
                unwritten: false,
                log: committed_log,
            })),
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, std::io::Error> {
        match self.log.read_meta(name).map_err(io)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }
}

/// Waits for queued appends, fsyncs once for all of them, then tells openraft.
fn flush_loop(
    log: &Log,
    pending: &std_mpsc::Receiver<IOFlushed<TypeConfig>>,
    fsync_seconds: &prometheus_client::metrics::histogram::Histogram,
) {
    while let Ok(first) = pending.recv() {
        let mut waiting = vec![first];
        while let Ok(more) = pending.try_recv() {
            waiting.push(more);
        }
        let started = Instant::now();
        let result = log.sync();
        fsync_seconds.observe(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            tracing::error!(%error, "fsync of the raft log failed");
        }
        for callback in waiting {
            callback.io_completed(result.as_ref().map(|_| ()).map_err(io));
        }
    }
}

fn first_index(bound: Bound<&u64>) -> u64 {
    match bound {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    }
}

fn last_index(bound: Bound<&u64>) -> Option<u64> {
    match bound {
        Bound::Included(i) => Some(*i),
        Bound::Excluded(0) => None,
        Bound::Excluded(i) => Some(i - 1),
        Bound::Unbounded => Some(u64::MAX),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        let from = first_index(range.start_bound()).max(
            self.readable_from
                .load(std::sync::atomic::Ordering::Acquire),
        );
        let Some(to) = last_index(range.end_bound()) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        {
            let mut recent = self.recent.lock().map_err(io)?;
            if recent.generation != self.log.generation() {
                // The log was rewritten underneath (a snapshot install replaced it).
                recent.clear();
                recent.generation = self.log.generation();
            }
            if let Some(entries) = recent.range(from, to) {
                return Ok(entries);
            }
        }
        let mut failure = None;
        self.log
            .read_range(from, to, |_, record| match entry_of(record) {
                Ok(entry) => {
                    out.push(entry);
                    Ok(true)
                }
                Err(error) => {
                    failure = Some(error);
                    Ok(false)
                }
            })
            .map_err(io)?;
        match failure {
            Some(error) => Err(error),
            None => Ok(out),
        }
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        self.get_meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, std::io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_meta(PURGED)?;
        let last = match self.log.last_index() {
            Some(index) => log_id_at(&self.log, index)?,
            None => None,
        };
        let last_log_id = match (last, &last_purged_log_id) {
            (Some(last), Some(purged)) if last.index < purged.index => Some(*purged),
            (Some(last), _) => Some(last),
            (None, purged) => *purged,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        self.log.write_meta(VOTE, &encode(vote)?, true).map_err(io)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        // Advisory (lets a restart re-apply up to here without waiting for a leader):
        // written without fsync, and at most every COMMITTED_WRITE_INTERVAL.
        let write = {
            let mut state = self.committed.lock().map_err(io)?;
            state.id = committed;
            let due = state
                .written_at
                .is_none_or(|at| at.elapsed() >= COMMITTED_WRITE_INTERVAL);
            if due {
                state.written_at = Some(Instant::now());
            }
            state.unwritten = !due;
            due
        };
        if write {
            self.log
                .write_meta(COMMITTED, &encode(&committed)?, false)
                .map_err(io)?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        Ok(self.committed.lock().map_err(io)?.id)
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
        let mut records = Vec::new();
        let mut appended = Vec::new();
        for entry in entries {
            let record = record_of(&entry)?;
            records.push((entry.log_id.index, record));
            appended.push(entry);
        }
        let slices: Vec<(u64, &[u8])> = records
            .iter()
            .map(|(index, record)| (*index, record.as_slice()))
            .collect();
        let mut recent = self.recent.lock().map_err(io)?;
        if let Err(error) = self.log.append(&slices) {
            recent.clear();
            return Err(io(error));
        }
        if recent.generation != self.log.generation() {
            recent.clear();
            recent.generation = self.log.generation();
        }
        for (entry, (_, record)) in appended.into_iter().zip(&records) {
            recent.push(entry, record.len() * RECENT_BYTES_PER_ENCODED);
        }
        drop(recent);
        // Readable now; durable once the flusher's fsync returns.
        self.flusher
            .send(callback)
            .map_err(|_| io("the raft log fsync thread has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), std::io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let mut recent = self.recent.lock().map_err(io)?;
        let truncated = self.log.truncate_from(from);
        recent.truncate_from(from);
        recent.generation = self.log.generation();
        truncated.map_err(io)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        // Durable: retention may delete segments up to here, and a purged id that went
        // back after a crash would promise openraft entries that are gone.
        self.log
            .write_meta(PURGED, &encode(&log_id)?, true)
            .map_err(io)?;
        self.readable_from
            .fetch_max(log_id.index + 1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }
}

/// Prepares `log` (just replaced by a restored backup's segments, ending at `last`) to be
/// the log of a **new** one-voter cluster led by `node_id`: every entry up to `last` is
/// recorded as purged (a snapshot covers it: openraft reads none of the old cluster's
/// membership entries and appends after it) and committed, and the vote is set to the
/// restored term for `node_id`, so the new cluster's first election moves to a later term
/// than any entry it holds. Durable when it returns.
pub fn start_new_cluster(log: &Log, last: LogId, node_id: u64) -> Result<(), std::io::Error> {
    let vote = Vote::new(last.leader_id.term, node_id);
    log.write_meta(PURGED, &encode(&last)?, true).map_err(io)?;
    log.write_meta(COMMITTED, &encode(&Some(last))?, true)
        .map_err(io)?;
    log.write_meta(VOTE, &encode(&vote)?, true).map_err(io)
}
