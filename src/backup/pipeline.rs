//! The upload pipeline of a backup: files cut into chunks on one thread, chunks named,
//! compressed and encrypted on N worker threads, sealed chunks written by a few uploader
//! threads, results gathered in order on the caller's thread.
//!
//! ```text
//! cutter ──jobs (2N)──▶ N sealers ──sealed (U)──▶ U uploaders ──results──▶ caller
//! (read, cut,             (keyed blake3 name,      (object writes,          (chunk list
//!  file hash)              dedup, zstd, age)         retried by Repo)         in order)
//! ```
//!
//! Bounds: every channel between stages is bounded, so at most about `3N + 2U` chunks of
//! at most [`super::chunker::CHUNK_BYTES_MAX`] are in memory (N ≤ [`WORKERS_MAX`], U ≤
//! [`UPLOADS_IN_FLIGHT_MAX`]: 64 MiB at most); at most U object writes are in flight. The
//! results channel is not bounded by count but each result is a name and two numbers, one
//! per chunk, as the manifest holds anyway.
//!
//! Order and errors: chunks carry a sequence number and the caller puts each result at its
//! place, so the chunk list is the files' order whatever order the workers finish in. The
//! first error stops the pipeline: it is recorded, every stage drops what it still
//! receives, the cutter stops at its next chunk, and the call returns that error only
//! after every thread has ended — so no object write is in flight once it returns, and
//! the caller never writes a manifest after a failure.
//!
//! Priority: all of these threads run at [`WORKER_NICE`], so under saturating ingest a
//! backup takes the CPU ingest leaves (and runs longer) rather than slowing
//! acknowledgements.

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use super::manifest::{ChunkRef, FileEntry, Totals};
use super::{BackupError, Progress};

/// Most sealing worker threads per pipeline.
pub const WORKERS_MAX: usize = crate::config::BACKUP_WORKERS_MAX;
/// Most object writes (or reads) in flight per pipeline.
pub const UPLOADS_IN_FLIGHT_MAX: usize = 8;
/// Chunks queued per worker between the cutter and the workers.
const QUEUE_CHUNKS_PER_WORKER: usize = 2;
/// Nice value of the pipeline's threads (Linux, per thread): the same as the services'
/// ([`crate::services::supervisor::SERVICE_NICE`]), for the same reason.
pub const WORKER_NICE: i32 = 10;

/// How parallel a pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parallelism {
    /// Sealing (or opening) worker threads, 1..=[`WORKERS_MAX`].
    pub workers: usize,
    /// Object writes (or reads) in flight, 1..=[`UPLOADS_IN_FLIGHT_MAX`].
    pub in_flight: usize,
}

impl Parallelism {
    /// `configured` workers, or the machine's available parallelism when 0; bounded.
    /// Object requests in flight: twice the workers (they wait on storage, not CPU),
    /// bounded.
    pub fn new(configured: usize) -> Parallelism {
        let workers = if configured == 0 {
            std::thread::available_parallelism().map_or(2, usize::from)
        } else {
            configured
        }
        .clamp(1, WORKERS_MAX);
        Parallelism {
            workers,
            in_flight: (2 * workers).clamp(2, UPLOADS_IN_FLIGHT_MAX),
        }
    }
}

/// Seals a chunk: its plaintext to its stored form.
pub type SealFn<'a> = dyn Fn(&[u8]) -> Result<Vec<u8>, BackupError> + Sync + 'a;
/// Stores a sealed chunk under its name.
pub type StoreFn<'a> = dyn Fn(&str, Vec<u8>) -> Result<(), BackupError> + Sync + 'a;

/// What the pipeline does at each stage; [`super::create`] fills it from a repository,
/// tests with their own failures.
pub struct Stages<'a> {
    /// A chunk's name (keyed blake3 of its plaintext).
    pub name: &'a (dyn Fn(&[u8]) -> String + Sync),
    /// A new whole-file hasher (keyed blake3).
    pub file_hasher: &'a (dyn Fn() -> blake3::Hasher + Sync),
    /// A chunk's stored form (compressed, encrypted).
    pub seal: &'a SealFn<'a>,
    /// Writes a sealed chunk under its name (blocking; retried inside).
    pub store: &'a StoreFn<'a>,
}

/// The files of a backup, cut, sealed and stored: one entry per file in the given order,
/// and what it cost. `present` holds the names of the chunks the repository already has
/// (not written again).
pub fn run(
    stages: &Stages<'_>,
    files: &[(String, PathBuf)],
    present: HashSet<String>,
    parallelism: Parallelism,
    progress: &Arc<Progress>,
) -> Result<(Vec<FileEntry>, Totals), BackupError> {
    let shared = Shared {
        known: Mutex::new(present),
        abort: AtomicBool::new(false),
        error: Mutex::new(None),
        progress,
    };
    let workers = parallelism.workers.clamp(1, WORKERS_MAX);
    let uploaders = parallelism.in_flight.clamp(1, UPLOADS_IN_FLIGHT_MAX);
    let (job_tx, job_rx) = sync_channel::<Job>(QUEUE_CHUNKS_PER_WORKER * workers);
    let (sealed_tx, sealed_rx) = sync_channel::<Sealed>(uploaders);
    let (result_tx, result_rx) = std::sync::mpsc::channel::<Outcome>();
    let job_rx = Mutex::new(job_rx);
    let sealed_rx = Mutex::new(sealed_rx);
    let (cut, outcomes) = std::thread::scope(|scope| {
        for _ in 0..workers {
            let (sealed_tx, result_tx) = (sealed_tx.clone(), result_tx.clone());
            let (job_rx, shared) = (&job_rx, &shared);
            let spawned = std::thread::Builder::new()
                .name("backup-seal".into())
                .spawn_scoped(scope, move || {
                    lower_priority();
                    seal_chunks(stages, job_rx, &sealed_tx, &result_tx, shared);
                });
            if let Err(error) = spawned {
                shared.fail(BackupError::Invalid(format!(
                    "starting a backup worker: {error}"
                )));
            }
        }
        drop(sealed_tx);
        for _ in 0..uploaders {
            let result_tx = result_tx.clone();
            let (sealed_rx, shared) = (&sealed_rx, &shared);
            let spawned = std::thread::Builder::new()
                .name("backup-put".into())
                .spawn_scoped(scope, move || {
                    lower_priority();
                    store_chunks(stages, sealed_rx, &result_tx, shared);
                });
            if let Err(error) = spawned {
                shared.fail(BackupError::Invalid(format!(
                    "starting a backup uploader: {error}"
                )));
            }
        }
        drop(result_tx);
        // The cutter starts last: if a worker could not start, it sees the abort before
        // its first chunk rather than filling a queue nobody drains.
        let cutter = std::thread::Builder::new()
            .name("backup-cut".into())
            .spawn_scoped(scope, || {
                lower_priority();
                cut_files(stages, files, job_tx, &shared)
            });
        // Every sender is held by a stage now: the loop ends when the last one ends.
        let outcomes: Vec<Outcome> = result_rx.iter().collect();
        let cut = match cutter {
            Ok(handle) => handle
                .join()
                .map_err(|_| BackupError::Invalid("the backup's cutter panicked".into())),
            Err(error) => Err(BackupError::Invalid(format!(
                "starting the cutter: {error}"
            ))),
        };
        (cut, outcomes)
    });
    let cut = cut?;
    if let Some(error) = shared.error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(error);
    }
    assemble(cut, outcomes)
}

/// State every stage sees.
struct Shared<'p> {
    /// Names of chunks stored or being stored: a chunk is sealed by the first worker that
    /// inserts its name.
    known: Mutex<HashSet<String>>,
    /// Set by the first error: every stage drops its input from then on.
    abort: AtomicBool,
    /// The first error.
    error: Mutex<Option<BackupError>>,
    /// Reported progress.
    progress: &'p Arc<Progress>,
}

impl Shared<'_> {
    fn fail(&self, error: BackupError) {
        let mut first = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(error);
        }
        self.abort.store(true, Ordering::SeqCst);
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
    }
}

/// A chunk on its way to a worker.
struct Job {
    seq: usize,
    data: Vec<u8>,
}

/// A sealed chunk on its way to an uploader.
struct Sealed {
    seq: usize,
    id: String,
    len: u64,
    plain_len: u64,
    bytes: Vec<u8>,
}

/// A chunk done: its place, name, plaintext length and stored bytes (0: not uploaded).
struct Outcome {
    seq: usize,
    id: String,
    len: u64,
    uploaded: Option<u64>,
}

/// A file as cut: its name, size, whole-file hash and the sequence numbers of its chunks.
struct CutFile {
    name: String,
    size: u64,
    hash: String,
    seqs: std::ops::Range<usize>,
}

fn cut_files(
    stages: &Stages<'_>,
    files: &[(String, PathBuf)],
    jobs: SyncSender<Job>,
    shared: &Shared<'_>,
) -> Vec<CutFile> {
    let mut out = Vec::with_capacity(files.len());
    let mut seq = 0;
    for (name, path) in files {
        let first = seq;
        let mut hasher = (stages.file_hasher)();
        let cut = File::open(path)
            .map_err(BackupError::io(path))
            .and_then(|mut input| {
                super::chunker::for_each_chunk(&mut input, |chunk| -> Result<(), BackupError> {
                    if shared.aborted() {
                        return Err(BackupError::Invalid("stopped".into()));
                    }
                    hasher.update(chunk);
                    let job = Job {
                        seq,
                        data: chunk.to_vec(),
                    };
                    seq += 1;
                    // A send fails only when every worker has gone, which only an abort does.
                    jobs.send(job)
                        .map_err(|_| BackupError::Invalid("stopped".into()))
                })
                .map_err(|e| match e {
                    BackupError::Io { source, .. } => BackupError::io(path)(source),
                    other => other,
                })
            });
        match cut {
            Ok(size) => out.push(CutFile {
                name: name.clone(),
                size,
                hash: hasher.finalize().to_hex().to_string(),
                seqs: first..seq,
            }),
            Err(error) => {
                shared.fail(error);
                break;
            }
        }
    }
    out
}

fn seal_chunks(
    stages: &Stages<'_>,
    jobs: &Mutex<Receiver<Job>>,
    sealed: &SyncSender<Sealed>,
    results: &std::sync::mpsc::Sender<Outcome>,
    shared: &Shared<'_>,
) {
    loop {
        let job = match jobs.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        if shared.aborted() {
            continue;
        }
        let id = (stages.name)(&job.data);
        let len = job.data.len() as u64;
        let new = shared
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone());
        if !new {
            shared.progress.done.fetch_add(len, Ordering::Relaxed);
            let _ = results.send(Outcome {
                seq: job.seq,
                id,
                len,
                uploaded: None,
            });
            continue;
        }
        match (stages.seal)(&job.data) {
            Ok(bytes) => {
                let item = Sealed {
                    seq: job.seq,
                    id,
                    len: bytes.len() as u64,
                    plain_len: len,
                    bytes,
                };
                if sealed.send(item).is_err() {
                    return;
                }
            }
            Err(error) => shared.fail(error),
        }
    }
}

fn store_chunks(
    stages: &Stages<'_>,
    sealed: &Mutex<Receiver<Sealed>>,
    results: &std::sync::mpsc::Sender<Outcome>,
    shared: &Shared<'_>,
) {
    loop {
        let item = match sealed.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(item) => item,
            Err(_) => return,
        };
        if shared.aborted() {
            continue;
        }
        match (stages.store)(&item.id, item.bytes) {
            Ok(()) => {
                crate::crash::point("backup:chunk-uploaded");
                let progress = shared.progress;
                progress.done.fetch_add(item.plain_len, Ordering::Relaxed);
                progress.transferred.fetch_add(item.len, Ordering::Relaxed);
                let _ = results.send(Outcome {
                    seq: item.seq,
                    id: item.id,
                    len: item.plain_len,
                    uploaded: Some(item.len),
                });
            }
            Err(error) => shared.fail(error),
        }
    }
}

/// The files' entries from the chunks' outcomes; every chunk must have one.
fn assemble(
    cut: Vec<CutFile>,
    outcomes: Vec<Outcome>,
) -> Result<(Vec<FileEntry>, Totals), BackupError> {
    let count = cut.last().map_or(0, |f| f.seqs.end);
    let mut slots: Vec<Option<ChunkRef>> = vec![None; count];
    let mut totals = Totals::default();
    for outcome in outcomes {
        if let Some(bytes) = outcome.uploaded {
            totals.chunks_uploaded += 1;
            totals.bytes_new += outcome.len;
            totals.bytes_uploaded += bytes;
        }
        if let Some(slot) = slots.get_mut(outcome.seq) {
            *slot = Some(ChunkRef {
                id: outcome.id,
                len: outcome.len,
            });
        }
    }
    let mut files = Vec::with_capacity(cut.len());
    for file in cut {
        let mut chunks = Vec::with_capacity(file.seqs.len());
        for seq in file.seqs {
            // A chunk without an outcome means a stage ended without reporting: never
            // write a manifest over that.
            let chunk = slots.get_mut(seq).and_then(Option::take).ok_or_else(|| {
                BackupError::Invalid(format!(
                    "backup pipeline: chunk {seq} of {} has no result",
                    file.name
                ))
            })?;
            chunks.push(chunk);
        }
        totals.chunks += chunks.len() as u64;
        totals.bytes_scanned += file.size;
        files.push(FileEntry {
            name: file.name,
            size: file.size,
            hash: file.hash,
            chunks,
        });
    }
    Ok((files, totals))
}

/// Lowers the calling thread's priority to [`WORKER_NICE`]; a failure only costs
/// priority, so it is logged.
pub fn lower_priority() {
    // SAFETY: gettid and setpriority take and return plain integers; PRIO_PROCESS with a
    // thread id changes only that thread.
    let outcome = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, WORKER_NICE)
    };
    if outcome != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not lower a backup thread's priority");
    }
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
