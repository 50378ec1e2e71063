//! The dedup index, kept out of the LSM tree: for every event the state stored within the
//! dedup window, its [`super::tables::dedup_hash`] → its seq and when it was stored.
//!
//! Why not a keyspace keyed by hash (as before, `super::tables::DEDUP`): that wrote one
//! random 16-byte key per event, which the LSM tree then rewrote at every level it
//! compacted through — ~210–230 bytes written per event, and with the event index most of
//! fjall's compaction work — for an index read only when the filter of recent keys says
//! "maybe" (docs/benchmarks.md, "Fourteenth session: what the per-event indexes cost").
//!
//! The index writes nothing to the state: what it holds is derived from what the state and
//! the log hold anyway. The feed has one entry per applied log entry with events, in apply
//! order, with the state clock when it was applied; the entry's block in the log has each
//! event's source and messageId, so its key (and, by position, its seq). Retention keeps
//! both for longer than the dedup window (the configuration refuses a shorter retention).
//! - **pending**: a hash map of the keys applied since the newest run ends. Apply adds a
//!   batch's keys before the batch commits (as it does to the filter of recent keys), so a
//!   lookup never misses a committed key;
//! - **runs**: when pending holds [`RUN_KEYS`] keys it is frozen (and still looked up) and
//!   a thread writes it as a run file — records sorted by hash, a checksum over the file —
//!   which then replaces the frozen map. A run covers the feed entries whose keys are in
//!   `(from, to]`, and runs chain: each starts where the one before it ends;
//! - **lookups** ([`DedupIndex::get`]): pending, the frozen map, then the runs newest first,
//!   one page read from each (the first hash of every page is kept in memory). The leader
//!   looks a key up only when the filter of recent keys may hold it (`super::dedup`);
//! - **expiry**: a run whose every key was stored before the dedup horizon is deleted;
//!   within a run, a lookup checks the found key's time;
//! - **open** ([`DedupIndex::restore`]): the runs are checked — checksum, chain, the newest
//!   covered by the state (the state can be behind a run after a power cut: applies are
//!   not fsync'd), nothing alive before the oldest — and pending is refilled from the feed
//!   entries after the newest (their keys read from the log). Anything that does not check
//!   out is deleted and rebuilt from the feed entries within the window, as after a
//!   snapshot install, once the log holds the snapshot's entries ([`DedupIndex::rebuild`]).
//!
//! Limits: a lookup reads one page per run, and there is one run per [`RUN_KEYS`] keys in
//! the window: at 10M keys, 20 reads of 4 KiB (from the page cache, most often) for each
//! key the filter cannot answer. Runs are never merged; a window of billions of keys would
//! want that. A rebuild reads the block head of every log entry in the window.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use std::sync::atomic::{AtomicBool, Ordering};

use fjall::{Keyspace, Readable, Snapshot};

use super::dedup::{Horizon, KeyMap};
use super::tables::{
    FEED, FeedEntry, FeedRecord, decode, dedup_hash, event_seq, read_u64, u64_bytes,
};
use super::{StoreError, entry};
use crate::log::Log;
use crate::model::command::Command;

/// The directory of the run files, inside the store's directory (fjall reads only its own
/// files there).
pub const RUNS_DIR: &str = "dedup-runs";

/// Keys per run: pending is frozen and written as a run when it holds this many. About
/// 16 MiB per run file and ~25 MiB of hash map while pending. Small in unit tests, so they
/// cross several runs.
pub const RUN_KEYS: usize = if cfg!(test) { 256 } else { 1 << 19 };

/// Most keys pending may hold while a run is still being written (or failed to be): past
/// it, applying fails rather than grow without bound.
const PENDING_KEYS_MAX: usize = 4 * RUN_KEYS;

/// A run file starts with this (the last byte is the run format's version).
const MAGIC: &[u8; 16] = b"TANDEM-DEDUPRUN1";
/// Magic, then record count, from, to, oldest and newest stored-at, each 8 bytes LE.
const HEADER_BYTES: usize = 16 + 5 * 8;
/// A record: hash (16 bytes), seq (u64 BE), stored at (i64 BE).
const RECORD_BYTES: usize = 32;
/// Records per page: one read of 4 KiB per lookup in a run.
const PAGE_RECORDS: usize = 128;
/// The file ends with the crc32 of everything before it.
const TRAILER_BYTES: usize = 4;

/// What a lookup found: the event's seq and when it was stored (state clock, ms).
pub type Found = (u64, i64);

/// The keys apply stored for one log entry.
#[derive(Debug, Clone)]
pub struct EntryKeys {
    /// The key of the entry's feed entry.
    pub key: u64,
    /// The state clock when it was stored.
    pub stored_at_ms: i64,
    /// The seq of its first event.
    pub first_seq: u64,
    /// Each event's hash, in block order (event `i` has seq `first_seq + i`).
    pub hashes: Vec<[u8; 16]>,
}

/// What the index is derived from: the state's feed, at one snapshot, and the log.
pub struct Source<'a> {
    /// The state to read.
    pub snapshot: &'a Snapshot,
    /// Its feed keyspace.
    pub feed: &'a Keyspace,
    /// The log holding the feed entries' blocks.
    pub log: &'a Log,
}

/// The dedup index of one store.
pub struct DedupIndex {
    dir: PathBuf,
    layers: RwLock<Layers>,
    /// The thread writing the frozen map as a run, if one was started.
    sealer: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Layers {
    /// The state was replaced and the index not rebuilt yet: it answers nothing.
    stale: bool,
    /// Keys recorded after `chain_end`, by hash.
    pending: KeyMap<Found>,
    /// The largest record key pending covers (`chain_end` when it holds nothing).
    pending_to: u64,
    /// Where the runs and the frozen map end: the largest record key they cover.
    chain_end: u64,
    /// Keys being written as a run (or whose run could not be written yet).
    frozen: Option<Arc<Frozen>>,
    /// Oldest first.
    runs: Vec<Arc<Run>>,
}

/// Pending keys frozen for a run.
struct Frozen {
    keys: KeyMap<Found>,
    from: u64,
    to: u64,
}

impl DedupIndex {
    /// An empty index whose runs live in `dir` (created if missing). Call
    /// [`DedupIndex::restore`] before using it.
    pub fn new(dir: PathBuf) -> Result<DedupIndex, StoreError> {
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(DedupIndex {
            dir,
            layers: RwLock::new(Layers::default()),
            sealer: Mutex::new(None),
        })
    }

    /// Loads the runs on disk and refills pending from the feed entries after them, or
    /// rebuilds the whole index when the runs do not check out.
    pub fn restore(&self, source: &Source<'_>, horizon: &Horizon) -> Result<(), StoreError> {
        self.join_sealer();
        match self.load_runs(source, horizon)? {
            Loaded::Checked(layers) => {
                let after = layers.chain_end;
                *self.write()? = layers;
                self.fill(source, horizon, after)
            }
            Loaded::Nothing => self.rebuild(source, horizon),
            Loaded::Unusable(why) => {
                tracing::warn!(reason = %why, "rebuilding the dedup index from the feed and the log");
                self.rebuild(source, horizon)
            }
        }
    }

    /// Deletes every run and builds the index anew from the feed entries within the window
    /// (after a snapshot install, or when the runs on disk do not check out).
    pub fn rebuild(&self, source: &Source<'_>, horizon: &Horizon) -> Result<(), StoreError> {
        self.forget()?;
        let start = first_alive(source, horizon)?;
        *self.write()? = Layers {
            pending_to: start,
            chain_end: start,
            ..Layers::default()
        };
        self.fill(source, horizon, start)
    }

    /// Forgets everything (runs deleted) until the next [`DedupIndex::rebuild`]: the state
    /// is being replaced. Lookups fail meanwhile.
    pub fn forget(&self) -> Result<(), StoreError> {
        self.join_sealer();
        *self.write()? = Layers {
            stale: true,
            ..Layers::default()
        };
        for path in self.run_files()? {
            fs::remove_file(&path).map_err(io(&path))?;
        }
        Ok(())
    }

    /// Adds the keys of committed entries (call before their batch commits, entries in log
    /// order). Fails if pending is over its bound because runs cannot be written.
    pub fn record(&self, entries: &[EntryKeys]) -> Result<(), StoreError> {
        let mut layers = self.write()?;
        layers.usable()?;
        if layers.frozen.is_some() && layers.pending.len() >= PENDING_KEYS_MAX {
            return Err(StoreError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(format!(
                    "the dedup index holds {} keys in memory and cannot write them as a run",
                    layers.pending.len()
                )),
            });
        }
        for entry in entries {
            layers.insert(entry);
        }
        Ok(())
    }

    /// Starts writing pending as a run if it is full and no run is being written; retries
    /// a run whose writing failed.
    pub fn seal_if_full(self: &Arc<Self>) -> Result<(), StoreError> {
        let mut sealer = self.sealer.lock().map_err(|_| poisoned())?;
        if sealer.as_ref().is_some_and(|thread| !thread.is_finished()) {
            return Ok(());
        }
        {
            let layers = self.read()?;
            if layers.frozen.is_none() && layers.pending.len() < RUN_KEYS {
                return Ok(());
            }
        }
        let frozen = {
            let mut layers = self.write()?;
            if layers.frozen.is_none() {
                if layers.pending.len() < RUN_KEYS {
                    return Ok(());
                }
                layers.freeze();
            }
            layers.frozen.clone()
        };
        let Some(frozen) = frozen else {
            return Ok(());
        };
        if let Some(finished) = sealer.take() {
            let _ = finished.join();
        }
        let index = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("tandem-dedup-run".into())
            .spawn(move || {
                if let Err(error) = index.seal(&frozen) {
                    tracing::error!(%error, "could not write a dedup run; retrying at the next one");
                }
            });
        match spawned {
            Ok(thread) => *sealer = Some(thread),
            Err(error) => tracing::error!(%error, "could not start the dedup run writer"),
        }
        Ok(())
    }

    /// Deletes the runs whose keys were all stored before `horizon`.
    pub fn expire(&self, horizon: &Horizon) -> Result<(), StoreError> {
        let at = horizon.get();
        let any_dead = self
            .read()?
            .runs
            .first()
            .is_some_and(|run| run.newest_ms < at);
        if !any_dead {
            return Ok(());
        }
        let mut layers = self.write()?;
        while layers.runs.first().is_some_and(|run| run.newest_ms < at) {
            let run = layers.runs.remove(0);
            if let Err(error) = fs::remove_file(&run.path) {
                tracing::warn!(path = %run.path.display(), %error, "could not delete an expired dedup run");
            }
        }
        Ok(())
    }

    /// The seq and stored-at of the event with this hash, if the index holds it (alive or
    /// not: the caller checks the time).
    pub fn get(&self, hash: &[u8; 16]) -> Result<Option<Found>, StoreError> {
        let layers = self.read()?;
        layers.usable()?;
        if let Some(&found) = layers.pending.get(hash) {
            return Ok(Some(found));
        }
        if let Some(found) = layers.frozen.as_ref().and_then(|f| f.keys.get(hash)) {
            return Ok(Some(*found));
        }
        for run in layers.runs.iter().rev() {
            if let Some(found) = run.get(hash)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Calls `visit` with every key the index holds that is alive at `horizon`, and its
    /// time (the filter of recent keys is built this way); returns how many, or `None` if
    /// `abandoned` was set meanwhile. Keys recorded after it started are not visited.
    pub fn visit(
        &self,
        horizon: &Horizon,
        abandoned: &AtomicBool,
        mut visit: impl FnMut(&[u8; 16], i64) -> Result<(), StoreError>,
    ) -> Result<Option<u64>, StoreError> {
        let (pending, frozen, runs) = {
            let layers = self.read()?;
            layers.usable()?;
            let pending: Vec<([u8; 16], i64)> = layers
                .pending
                .iter()
                .map(|(hash, (_, at))| (*hash, *at))
                .collect();
            (pending, layers.frozen.clone(), layers.runs.clone())
        };
        let mut visited = 0_u64;
        let mut one = |hash: &[u8; 16], at: i64| {
            if horizon.alive(at) {
                visited += 1;
                visit(hash, at)
            } else {
                Ok(())
            }
        };
        for (hash, at) in &pending {
            one(hash, *at)?;
        }
        if let Some(frozen) = &frozen {
            for (hash, (_, at)) in &frozen.keys {
                one(hash, *at)?;
            }
        }
        for run in &runs {
            if abandoned.load(Ordering::Acquire) {
                return Ok(None);
            }
            if run.newest_ms < horizon.get() {
                continue;
            }
            let bytes = fs::read(&run.path).map_err(io(&run.path))?;
            let end = HEADER_BYTES + run.count as usize * RECORD_BYTES;
            let records = bytes.get(HEADER_BYTES..end).ok_or_else(|| {
                StoreError::Corrupt(format!("{}: shorter than its records", run.path.display()))
            })?;
            for record in records.as_chunks::<RECORD_BYTES>().0 {
                let (hash, rest) = record.split_first_chunk::<16>().ok_or_else(short)?;
                let at = rest.last_chunk::<8>().ok_or_else(short)?;
                one(hash, i64::from_be_bytes(*at))?;
            }
        }
        Ok(Some(visited))
    }

    /// Keys held (with dead ones not yet dropped) and run files.
    pub fn len(&self) -> Result<(u64, usize), StoreError> {
        let layers = self.read()?;
        let frozen = layers.frozen.as_ref().map_or(0, |f| f.keys.len());
        let runs: u64 = layers.runs.iter().map(|run| run.count).sum();
        Ok((
            (layers.pending.len() + frozen) as u64 + runs,
            layers.runs.len(),
        ))
    }

    /// Waits for a run being written (before the store closes or the index is rebuilt).
    pub fn join_sealer(&self) {
        let thread = match self.sealer.lock() {
            Ok(mut sealer) => sealer.take(),
            Err(_) => None,
        };
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::warn!("the dedup run writer panicked");
        }
    }

    /// Writes `frozen` as a run and puts the run in its place.
    fn seal(&self, frozen: &Arc<Frozen>) -> Result<(), StoreError> {
        let run = Run::write(&self.dir, frozen)?;
        let mut layers = self.write()?;
        if layers
            .frozen
            .as_ref()
            .is_some_and(|held| Arc::ptr_eq(held, frozen))
        {
            layers.runs.push(Arc::new(run));
            layers.frozen = None;
        }
        Ok(())
    }

    /// Adds the feed entries after key `after` (their keys read from the log), writing a
    /// run (on this thread) whenever pending fills up.
    fn fill(&self, source: &Source<'_>, horizon: &Horizon, after: u64) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let mut added = 0_u64;
        let mut written = 0;
        for guard in source
            .snapshot
            .range(source.feed, u64_bytes(after.saturating_add(1))..)
        {
            let (key, value) = guard.into_inner()?;
            let key = read_u64(&key, FEED)?;
            let feed: FeedEntry = decode(&value, FEED)?;
            let events = feed
                .records
                .iter()
                .filter(|record| matches!(record, FeedRecord::Event { .. }))
                .count();
            let first_seq = event_seq(feed.log_index, 0);
            // Dead and event-less entries add no keys; the chain still moves past them.
            let hashes = if events > 0 && horizon.alive(feed.at_ms) {
                let hashes = entry_hashes(source.log, feed.log_index)?;
                let first = feed.records.iter().find_map(|record| match record {
                    FeedRecord::Event { seq, .. } => Some(*seq),
                    _ => None,
                });
                if hashes.len() != events || first != Some(first_seq) {
                    return Err(StoreError::Corrupt(format!(
                        "feed entry {key} names {events} events of log entry {} (the first \
                         {first:?}), whose block holds {}",
                        feed.log_index,
                        hashes.len()
                    )));
                }
                hashes
            } else {
                Vec::new()
            };
            added += hashes.len() as u64;
            let mut layers = self.write()?;
            layers.insert(&EntryKeys {
                key,
                stored_at_ms: feed.at_ms,
                first_seq,
                hashes,
            });
            if layers.pending.len() >= RUN_KEYS {
                layers.freeze();
                let frozen = layers.frozen.clone();
                drop(layers);
                if let Some(frozen) = frozen {
                    self.seal(&frozen)?;
                    written += 1;
                }
            }
        }
        let (keys, runs) = self.len()?;
        tracing::info!(
            keys,
            runs,
            added,
            runs_written = written,
            took_ms = started.elapsed().as_millis() as u64,
            "dedup index ready"
        );
        Ok(())
    }

    /// The runs on disk, checked against each other and the state.
    fn load_runs(&self, source: &Source<'_>, horizon: &Horizon) -> Result<Loaded, StoreError> {
        let mut runs = Vec::new();
        for path in self.run_files()? {
            match Run::load(&path) {
                Ok(run) => runs.push(Arc::new(run)),
                Err(why) => return Ok(Loaded::Unusable(format!("{}: {why}", path.display()))),
            }
        }
        runs.sort_by_key(|run| run.to);
        if let Some(pair) = runs.windows(2).find(|pair| pair[1].from != pair[0].to) {
            return Ok(Loaded::Unusable(format!(
                "no run covers the feed after entry {} up to {}",
                pair[0].to, pair[1].from
            )));
        }
        let (Some(oldest), Some(newest)) = (runs.first(), runs.last()) else {
            return Ok(Loaded::Nothing);
        };
        if newest.newest_ms < horizon.get() {
            // Every run is dead: start afresh from the window.
            return Ok(Loaded::Nothing);
        }
        if source
            .snapshot
            .get(source.feed, u64_bytes(newest.to))?
            .is_none()
        {
            return Ok(Loaded::Unusable(format!(
                "the newest run ends at feed entry {}, which the state does not hold",
                newest.to
            )));
        }
        let before = source
            .snapshot
            .range(source.feed, ..=u64_bytes(oldest.from))
            .next_back();
        if let Some(guard) = before {
            let (key, value) = guard.into_inner()?;
            let feed: FeedEntry = decode(&value, FEED)?;
            if horizon.alive(feed.at_ms) {
                return Ok(Loaded::Unusable(format!(
                    "feed entry {} is in the window but no run holds its keys",
                    read_u64(&key, FEED)?
                )));
            }
        }
        let end = newest.to;
        Ok(Loaded::Checked(Layers {
            stale: false,
            pending: KeyMap::default(),
            pending_to: end,
            chain_end: end,
            frozen: None,
            runs,
        }))
    }

    /// The run files in the directory (leftover temporary files are deleted).
    fn run_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(io(&path))?;
            } else if name.ends_with(".run") {
                files.push(path);
            }
        }
        Ok(files)
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Layers>, StoreError> {
        self.layers.read().map_err(|_| poisoned())
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, Layers>, StoreError> {
        self.layers.write().map_err(|_| poisoned())
    }
}

/// What [`DedupIndex::load_runs`] found.
enum Loaded {
    /// Runs that check out.
    Checked(Layers),
    /// No run, or none alive: build from the window.
    Nothing,
    /// Runs that do not check out, and why.
    Unusable(String),
}

/// The key of the last feed entry before the first one in the dedup window (0 if the
/// window starts at the feed's beginning; the last key if it holds nothing alive). Feed
/// entries are in apply order and the state clock never goes back, so a binary search.
fn first_alive(source: &Source<'_>, horizon: &Horizon) -> Result<u64, StoreError> {
    let at = |key: u64| -> Result<Option<(u64, i64)>, StoreError> {
        match source.snapshot.range(source.feed, u64_bytes(key)..).next() {
            Some(guard) => {
                let (key, value) = guard.into_inner()?;
                let feed: FeedEntry = decode(&value, FEED)?;
                Ok(Some((read_u64(&key, FEED)?, feed.at_ms)))
            }
            None => Ok(None),
        }
    };
    let Some((first, first_ms)) = at(0)? else {
        return Ok(0);
    };
    if horizon.alive(first_ms) {
        return Ok(first.saturating_sub(1));
    }
    // The entry at or after `low` is dead; find the first alive one after it.
    let (mut low, mut high) = (first, u64::MAX);
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        match at(middle)? {
            Some((_, ms)) if !horizon.alive(ms) => low = middle,
            _ => high = middle,
        }
    }
    // Every entry at or after `high` is alive (or there is none): the chain starts before
    // the first of them.
    match at(high)? {
        Some((key, _)) => Ok(key.saturating_sub(1)),
        None => Ok(source
            .snapshot
            .iter(source.feed)
            .next_back()
            .map(|guard| guard.key().map_err(StoreError::from))
            .transpose()?
            .map_or(Ok(0), |key| read_u64(&key, FEED))?),
    }
}

/// The dedup keys of log entry `log_index`'s events, in block order, from its block head.
fn entry_hashes(log: &Log, log_index: u64) -> Result<Vec<[u8; 16]>, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt(format!("log entry {log_index}: {why}"));
    let record = log
        .read(log_index)?
        .ok_or_else(|| corrupt("the feed names it, but the log does not hold it".into()))?;
    let Some(Command::Ingest(block)) = entry::command(&record).map_err(corrupt)? else {
        return Err(corrupt(
            "the feed names its events, but it carries none".into(),
        ));
    };
    let head = block.head().map_err(|e| corrupt(e.to_string()))?;
    Ok(head
        .events
        .iter()
        .map(|event| dedup_hash(&event.source, &event.message_id))
        .collect())
}

fn short() -> StoreError {
    StoreError::Corrupt("a dedup run record is short".into())
}

impl Layers {
    fn usable(&self) -> Result<(), StoreError> {
        if self.stale {
            return Err(StoreError::NotReady(
                "the dedup index is rebuilt after a snapshot install".into(),
            ));
        }
        Ok(())
    }

    fn insert(&mut self, entry: &EntryKeys) {
        for (ordinal, hash) in entry.hashes.iter().enumerate() {
            self.pending.insert(
                *hash,
                (entry.first_seq + ordinal as u64, entry.stored_at_ms),
            );
        }
        self.pending_to = self.pending_to.max(entry.key);
    }

    /// Moves pending into the frozen map (there must be none).
    fn freeze(&mut self) {
        let keys = std::mem::take(&mut self.pending);
        self.frozen = Some(Arc::new(Frozen {
            keys,
            from: self.chain_end,
            to: self.pending_to,
        }));
        self.chain_end = self.pending_to;
    }
}

/// One run file, open for lookups.
struct Run {
    path: PathBuf,
    file: File,
    from: u64,
    to: u64,
    count: u64,
    newest_ms: i64,
    /// The first hash of every page.
    fences: Vec<[u8; 16]>,
}

impl Run {
    /// Writes `frozen` sorted by hash as `{to:020}.run` in `dir`, durably.
    fn write(dir: &Path, frozen: &Frozen) -> Result<Run, StoreError> {
        let mut records: Vec<([u8; 16], Found)> = frozen
            .keys
            .iter()
            .map(|(hash, found)| (*hash, *found))
            .collect();
        records.sort_unstable_by_key(|(hash, _)| *hash);
        let oldest = records.iter().map(|(_, (_, at))| *at).min().unwrap_or(0);
        let newest = records.iter().map(|(_, (_, at))| *at).max().unwrap_or(0);
        let mut bytes =
            Vec::with_capacity(HEADER_BYTES + records.len() * RECORD_BYTES + TRAILER_BYTES);
        bytes.extend_from_slice(MAGIC);
        for field in [
            records.len() as u64,
            frozen.from,
            frozen.to,
            oldest as u64,
            newest as u64,
        ] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        for (hash, (seq, at)) in &records {
            bytes.extend_from_slice(hash);
            bytes.extend_from_slice(&seq.to_be_bytes());
            bytes.extend_from_slice(&at.to_be_bytes());
        }
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let path = dir.join(format!("{:020}.run", frozen.to));
        let temporary = dir.join(format!("{:020}.run.tmp", frozen.to));
        let mut file = File::create(&temporary).map_err(io(&temporary))?;
        file.write_all(&bytes).map_err(io(&temporary))?;
        file.sync_data().map_err(io(&temporary))?;
        drop(file);
        fs::rename(&temporary, &path).map_err(io(&path))?;
        Ok(Run {
            file: File::open(&path).map_err(io(&path))?,
            path,
            from: frozen.from,
            to: frozen.to,
            count: records.len() as u64,
            newest_ms: newest,
            fences: records.chunks(PAGE_RECORDS).map(|page| page[0].0).collect(),
        })
    }

    /// Opens and checks a run file (`Err`: why it cannot be used).
    fn load(path: &Path) -> Result<Run, String> {
        let bytes = fs::read(path).map_err(|e| e.to_string())?;
        if bytes.len() < HEADER_BYTES + TRAILER_BYTES || &bytes[..16] != MAGIC {
            return Err("not a dedup run of this format".into());
        }
        let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_BYTES);
        let crc = u32::from_le_bytes(trailer.try_into().map_err(|_| "short trailer")?);
        if crc32fast::hash(body) != crc {
            return Err("checksum mismatch".into());
        }
        let field = |at: usize| {
            let mut raw = [0_u8; 8];
            raw.copy_from_slice(&body[16 + at * 8..24 + at * 8]);
            u64::from_le_bytes(raw)
        };
        let count = field(0);
        let records = &body[HEADER_BYTES..];
        if records.len() as u64 != count * RECORD_BYTES as u64 {
            return Err(format!(
                "{count} records announced, {} bytes held",
                records.len()
            ));
        }
        let fences = records
            .chunks(PAGE_RECORDS * RECORD_BYTES)
            .map(|page| {
                let mut hash = [0_u8; 16];
                hash.copy_from_slice(&page[..16]);
                hash
            })
            .collect();
        Ok(Run {
            file: File::open(path).map_err(|e| e.to_string())?,
            path: path.to_owned(),
            from: field(1),
            to: field(2),
            count,
            newest_ms: field(4) as i64,
            fences,
        })
    }

    /// The record with this hash: one page read.
    fn get(&self, hash: &[u8; 16]) -> Result<Option<Found>, StoreError> {
        let page = self.fences.partition_point(|fence| fence <= hash);
        let Some(page) = page.checked_sub(1) else {
            return Ok(None);
        };
        let first = page * PAGE_RECORDS;
        let records = (self.count as usize - first).min(PAGE_RECORDS);
        let mut buffer = [0_u8; PAGE_RECORDS * RECORD_BYTES];
        let buffer = &mut buffer[..records * RECORD_BYTES];
        self.file
            .read_exact_at(buffer, (HEADER_BYTES + first * RECORD_BYTES) as u64)
            .map_err(io(&self.path))?;
        let (records, _) = buffer.as_chunks::<RECORD_BYTES>();
        let Ok(at) = records.binary_search_by(|record| record[..16].cmp(hash)) else {
            return Ok(None);
        };
        let record = &records[at];
        let mut seq = [0_u8; 8];
        let mut stored = [0_u8; 8];
        seq.copy_from_slice(&record[16..24]);
        stored.copy_from_slice(&record[24..32]);
        Ok(Some((u64::from_be_bytes(seq), i64::from_be_bytes(stored))))
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

fn poisoned() -> StoreError {
    StoreError::Corrupt("the dedup index's lock is poisoned".into())
}
