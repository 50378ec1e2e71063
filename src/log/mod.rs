//! The segmented, append-only log: opaque payloads at consecutive `u64` indexes, in
//! segment files, durable when asked. It will carry both the Raft log and the event store,
//! and knows nothing of either.
//!
//! # On disk
//!
//! One directory holds:
//! - segment files `{first_index:020}.seg`: a 16-byte header (`TANDEMLOG\0\0\0` + format
//!   version `u32` LE) then frames `len u32 | crc u32 | index u64 | payload`, all little
//!   endian, where `crc` is crc32 over `index ++ payload` (`segment.rs`);
//! - for each *rolled* segment (every one but the last) a sidecar `{first_index:020}.idx`
//!   with its frame offsets and their crc (`index.rs`); it only saves a scan at open, so a
//!   missing or bad one is rebuilt;
//! - metadata files `meta-<name>`, replaced atomically (`meta.rs`);
//! - `lock`, locked exclusively while a [`Log`] has the directory open.
//!
//! # Invariants
//!
//! - Indexes are consecutive across the whole log: segment `k + 1` starts right after the
//!   last index of segment `k`, and the frames inside a segment are consecutive from the
//!   index in its name. Only the last segment may be empty.
//! - The last segment is the *active* one: appends go there, and it has no `.idx`. Every
//!   other segment is *rolled*: immutable, complete, with at least one frame.
//! - A segment file that can still change (the active one, or one being truncated) is never
//!   shared with another directory entry: files hard-linked by [`Log::checkpoint_to`] are
//!   copied before they are truncated, so a checkpoint never changes after it is taken.
//! - The in-memory index (per segment, the offset of every frame) only ever names bytes
//!   that are completely written: an append publishes its offsets after its write returns.
//!
//! # Durability and recovery
//!
//! [`Log::append`] makes records readable, [`Log::sync`] makes them durable (one
//! `fdatasync` of the active file covers every append before it; rolling a segment fsyncs
//! the old file, its `.idx` and the new directory entry on the spot). `truncate_from`,
//! `delete_segments_before`, `install` and durable `write_meta` are durable when they
//! return. A failed fsync makes the log unusable ([`LogError::Unusable`]): after one, the
//! kernel may have dropped the dirty pages, so a retry could report durable what is not.
//!
//! [`Log::open`] scans the last segment frame by frame: the first frame that is short,
//! oversized, fails its crc or breaks the index sequence ends the valid data, and the file
//! is cut there (a torn tail from a crash, never acknowledged; logged with the bytes cut).
//! So a corrupted frame in the *active* segment is detected by a read while the log is open,
//! and cut (with everything after it) at the next open. Anything wrong elsewhere — a bad
//! rolled segment, a gap or an overlap between segments — is [`LogError::Corrupt`]: the log
//! stops rather than skip data. Rolled segments are trusted through their `.idx` at open
//! (their first and last frame headers are checked), and every read verifies the crc of
//! what it returns; [`LogOptions::verify_on_open`] checks every frame at open instead.
//!
//! # Concurrency
//!
//! [`Log`] is `Send + Sync` and clones share everything. One writer at a time (appends,
//! truncation, retention, install, checkpoint take the writer mutex); readers take a short
//! read lock on the in-memory index, then read with `pread` on a shared file handle, so
//! they never wait for a write or an fsync. `sync` holds no lock while it fsyncs. A reader
//! racing a truncation that moves bytes under it notices the generation change and looks
//! the record up again.

mod index;
mod meta;
mod read;
mod recover;
mod scan;
mod segment;
#[cfg(test)]
mod tests;
mod transfer;
mod write;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

pub use meta::{META_BYTES_MAX, META_NAME_BYTES_MAX, read_meta_in};
pub use scan::validate_segment_file;
pub use segment::FRAME_PAYLOAD_BYTES_MAX;
use segment::Segment;

/// Default size at which the active segment is rolled, bytes.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;

/// Largest accepted [`LogOptions::segment_bytes_max`], bytes. With [`APPEND_BYTES_MAX`] it
/// keeps every frame offset below 4 GiB, so offsets fit the `u32`s of the index.
pub const SEGMENT_BYTES_MAX_CEILING: u64 = 2 << 30;

/// Largest encoded size (frame headers included) of the records of one `append` call,
/// bytes. It bounds the write buffer.
pub const APPEND_BYTES_MAX: u64 = 1 << 30;

/// Name of the lock file held while a [`Log`] has its directory open.
const LOCK_FILE: &str = "lock";

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file system failed (disk full, permissions…). The operation did not happen (or,
    /// for multi-step operations, see [`LogError::Unusable`]); it may succeed later.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// Data on disk is damaged or not a Tandem log. Never retry: stop and restore.
    #[error("corrupt log: {0}")]
    Corrupt(String),
    /// The caller asked for something the log does not allow (non-consecutive index,
    /// oversized payload, bad option). Nothing was changed.
    #[error("invalid log request: {0}")]
    Invalid(String),
    /// An earlier operation failed halfway (a failed fsync, a truncation or install cut
    /// short): the in-memory view may not match the disk. Reopen the log.
    #[error("log unusable until reopened: {0}")]
    Unusable(String),
}

impl LogError {
    /// An [`LogError::Io`] on `path`.
    pub(crate) fn io(path: &Path, source: io::Error) -> LogError {
        LogError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How to open a log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The log's directory; created if missing.
    pub dir: PathBuf,
    /// The active segment is rolled before an append once it holds this many bytes.
    /// `1..=SEGMENT_BYTES_MAX_CEILING`; one append's records always land in one file, so a
    /// segment may exceed it by one call.
    pub segment_bytes_max: u64,
    /// Check every frame of every rolled segment at open (reads the whole log), instead of
    /// trusting their `.idx` sidecars. Reads verify crcs either way.
    pub verify_on_open: bool,
    /// Records up to this index are known to have been durable here (the caller recorded
    /// them as committed): a bad frame at or below it is disk damage, refused with
    /// [`LogError::Corrupt`], not a torn tail to cut — cutting it would silently drop
    /// records that were acknowledged.
    pub intact_through: Option<u64>,
}

impl LogOptions {
    /// Default options for a log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> LogOptions {
        LogOptions {
            dir: dir.into(),
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            verify_on_open: false,
            intact_through: None,
        }
    }
}

/// A description of one segment file, for monitoring and retention decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Index of its first record (also the number in its file name).
    pub first_index: u64,
    /// Index of its last record; `None` if it holds none (only the active segment can).
    pub last_index: Option<u64>,
    /// Its file.
    pub path: PathBuf,
    /// Its valid length (header and whole frames), bytes.
    pub bytes: u64,
    /// Whether it is the active (last) segment.
    pub active: bool,
}

/// A handle to an open log. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Log {
    /// Everything the clones share.
    inner: Arc<Inner>,
}

/// The shared state of a [`Log`].
struct Inner {
    /// The options it was opened with (`dir` as given).
    options: LogOptions,
    /// The writer's mutex: held by every operation that changes files or the segment list.
    /// It is always taken before `state`, never while holding it.
    writer: Mutex<Writer>,
    /// The segment list and in-memory index; written only by the holder of `writer`.
    state: RwLock<State>,
    /// The highest `State::appends` known durable (every append numbered at or below it
    /// has been fsync'd), so a `sync` with nothing new to flush returns at once.
    synced_appends: AtomicU64,
    /// Set once when an operation fails halfway; every later call returns it.
    unusable: OnceLock<String>,
    /// Serialises `write_meta` calls (they share a temporary file name).
    meta_lock: Mutex<()>,
    /// The exclusive lock on the directory's `lock` file, held until the last clone drops.
    _lock_file: File,
}

/// What the writer keeps between calls.
struct Writer {
    /// The buffer an append's frames are built in (reused; shrunk after a huge call).
    buf: Vec<u8>,
}

/// The segment list and in-memory index.
struct State {
    /// The segments in index order; the last one is active. Empty only if the log is.
    segments: Vec<Segment>,
    /// Number of appends published so far (the sequence number of the latest).
    appends: u64,
    /// Bumped before an operation rewrites or removes bytes a reader may have located
    /// (truncation, install), so a reader whose read failed knows to look again.
    generation: u64,
}

impl State {
    /// Index of the first record, if any.
    fn first_index(&self) -> Option<u64> {
        let first = self.segments.first()?;
        first.last_index().map(|_| first.first_index)
    }

    /// Index of the last record, if any.
    fn last_index(&self) -> Option<u64> {
        self.segments.iter().rev().find_map(Segment::last_index)
    }

    /// The index the next append must start at; `None` if the log is empty (any index).
    fn next_index(&self) -> Option<u64> {
        self.last_index().map(|last| last.saturating_add(1))
    }

    /// Position in `segments` of the segment holding `index`, if the log holds it.
    fn segment_of(&self, index: u64) -> Option<usize> {
        let position = self
            .segments
            .partition_point(|s| s.first_index <= index)
            .checked_sub(1)?;
        let last = self.segments[position].last_index()?;
        (index <= last).then_some(position)
    }
}

impl Log {
    /// Opens (creating if needed) the log in `options.dir`, recovering from a crash: cuts a
    /// torn tail off the last segment, rebuilds missing `.idx` sidecars, removes leftover
    /// temporary files. Fails with [`LogError::Corrupt`] on damage it must not repair.
    pub fn open(options: LogOptions) -> Result<Log, LogError> {
        if options.segment_bytes_max == 0 || options.segment_bytes_max > SEGMENT_BYTES_MAX_CEILING {
            return Err(LogError::Invalid(format!(
                "segment_bytes_max is {}, it must be between 1 and {SEGMENT_BYTES_MAX_CEILING}",
                options.segment_bytes_max
            )));
        }
        let dir = &options.dir;
        std::fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let lock_file = lock_dir(dir)?;
        let segments = recover::recover(dir, options.verify_on_open, options.intact_through)?;
        let state = State {
            segments,
            appends: 0,
            generation: 0,
        };
        Ok(Log {
            inner: Arc::new(Inner {
                options,
                writer: Mutex::new(Writer { buf: Vec::new() }),
                state: RwLock::new(state),
                synced_appends: AtomicU64::new(0),
                unusable: OnceLock::new(),
                meta_lock: Mutex::new(()),
                _lock_file: lock_file,
            }),
        })
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.options.dir
    }

    /// Index of the first record, if any.
    pub fn first_index(&self) -> Option<u64> {
        self.inner.read_state().first_index()
    }

    /// Index of the last record, if any.
    pub fn last_index(&self) -> Option<u64> {
        self.inner.read_state().last_index()
    }

    /// A number that changes whenever records already written are rewritten or removed
    /// (truncation, install) — never on appends. A cache of records is valid while it
    /// holds the number it was filled under.
    pub fn generation(&self) -> u64 {
        self.inner.read_state().generation
    }

    /// Makes durable everything appended before this call: one `fdatasync` of the active
    /// segment (earlier segments were fsync'd when rolled). Holds no lock while it syncs,
    /// so appends continue meanwhile; concurrent calls each sync. After a failed fsync the
    /// log is unusable (see the module docs).
    pub fn sync(&self) -> Result<(), LogError> {
        let (file, appends) = {
            let state = self.inner.read_state();
            self.inner.check_usable()?;
            match state.segments.last() {
                Some(active) => (Arc::clone(&active.file), state.appends),
                None => return Ok(()),
            }
        };
        if self.inner.synced_appends.load(Ordering::Acquire) >= appends {
            return Ok(());
        }
        let synced = if crate::crash::fails("log-fsync") {
            Err(std::io::Error::other(
                "injected fsync failure (TANDEM_FAIL_AT)",
            ))
        } else {
            file.file.sync_data()
        };
        if let Err(e) = synced {
            return Err(self.inner.fail(LogError::io(&file.path, e)));
        }
        self.inner
            .synced_appends
            .fetch_max(appends, Ordering::AcqRel);
        Ok(())
    }

    /// A description of every segment, in index order.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let state = self.inner.read_state();
        let count = state.segments.len();
        state
            .segments
            .iter()
            .enumerate()
            .map(|(i, s)| s.info(i + 1 == count))
            .collect()
    }

    /// Total valid bytes of all segment files (headers and frames).
    pub fn total_bytes(&self) -> u64 {
        self.inner
            .read_state()
            .segments
            .iter()
            .map(|s| s.bytes)
            .sum()
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.read_state();
        f.debug_struct("Log")
            .field("dir", &self.inner.options.dir)
            .field("first_index", &state.first_index())
            .field("last_index", &state.last_index())
            .field("segments", &state.segments.len())
            .finish()
    }
}

impl Inner {
    /// The state, for reading. A poisoned lock is taken anyway: the state is only changed
    /// by short, non-panicking updates, and failures halfway mark the log unusable.
    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, for writing (only by the holder of the writer mutex).
    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer mutex.
    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Err(Unusable)` if an earlier operation failed halfway.
    fn check_usable(&self) -> Result<(), LogError> {
        match self.unusable.get() {
            Some(why) => Err(LogError::Unusable(why.clone())),
            None => Ok(()),
        }
    }

    /// Marks the log unusable because of `error` (the first reason wins) and returns it.
    fn fail(&self, error: LogError) -> LogError {
        let why = error.to_string();
        if self.unusable.set(why.clone()).is_ok() {
            tracing::error!(dir = %self.options.dir.display(), error = %why, "log unusable until reopened");
        }
        error
    }

    /// Records that every append published so far is durable.
    fn mark_all_synced(&self) {
        let appends = self.read_state().appends;
        self.synced_appends.fetch_max(appends, Ordering::AcqRel);
    }
}

/// Takes the exclusive lock on `dir/lock`, so two [`Log`]s (in this process or another)
/// never write the same directory.
fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| LogError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LogError::Invalid(format!(
            "{} is already open by another Log (close it first)",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(LogError::io(&path, e)),
    }
}
