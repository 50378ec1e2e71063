//! The pipeline's ordering, deduplication and error paths, on real files with stages
//! that record what they were asked to do (and fail where a test says).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::*;
use crate::backup::chunker::for_each_chunk;

/// How long a stage waits for another before the test fails.
const WAIT_MS: u64 = 10_000;

fn random(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0_u8; len];
    rng.fill_bytes(&mut data);
    data
}

/// Writes `contents` as files in a temporary directory.
fn files(dir: &tempfile::TempDir, contents: &[Vec<u8>]) -> Vec<(String, PathBuf)> {
    contents
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, bytes).unwrap();
            (format!("f{i}"), path)
        })
        .collect()
}

fn name(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// The chunk names of `bytes` cut on one thread: what the pipeline must list.
fn reference(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for_each_chunk::<std::io::Error>(&mut &bytes[..], |c| {
        out.push(name(c));
        Ok(())
    })
    .unwrap();
    out
}

fn parallel(workers: usize) -> Parallelism {
    Parallelism {
        workers,
        in_flight: 2,
    }
}

/// Stages that name with plain blake3, "seal" by copying and record what they store.
struct Recorder {
    stored: Mutex<Vec<String>>,
    seals: AtomicUsize,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            stored: Mutex::new(Vec::new()),
            seals: AtomicUsize::new(0),
        }
    }

    fn stored(&self) -> Vec<String> {
        self.stored.lock().unwrap().clone()
    }
}

fn file_hasher() -> blake3::Hasher {
    blake3::Hasher::new()
}

#[test]
fn chunks_are_listed_in_file_order_even_when_workers_finish_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let contents = vec![random(6 << 20, 1), random(100, 2), random(3 << 20, 3)];
    let paths = files(&dir, &contents);
    let recorder = Recorder::new();
    // The first chunk's seal waits until a later chunk has been stored: the results
    // arrive out of order for certain.
    let first = name(&contents[0][..for_cut(&contents[0])]);
    let overtaken = (Mutex::new(false), Condvar::new());
    let seal = |plain: &[u8]| -> Result<Vec<u8>, BackupError> {
        recorder.seals.fetch_add(1, Ordering::SeqCst);
        if name(plain) == first {
            let (done, signal) = &overtaken;
            let guard = done.lock().unwrap();
            let (guard, timeout) = signal
                .wait_timeout_while(guard, Duration::from_millis(WAIT_MS), |d| !*d)
                .unwrap();
            assert!(
                *guard && !timeout.timed_out(),
                "no chunk overtook the first"
            );
        }
        Ok(plain.to_vec())
    };
    let store = |id: &str, _: Vec<u8>| -> Result<(), BackupError> {
        recorder.stored.lock().unwrap().push(id.to_owned());
        if id != first {
            *overtaken.0.lock().unwrap() = true;
            overtaken.1.notify_all();
        }
        Ok(())
    };
    let stages = Stages {
        name: &name,
        file_hasher: &file_hasher,
        seal: &seal,
        store: &store,
    };
    let progress = Arc::new(Progress::default());
    let (entries, totals) = run(&stages, &paths, HashSet::new(), parallel(3), &progress).unwrap();
    assert_ne!(
        recorder.stored()[0],
        first,
        "the first chunk was stored first"
    );
    for (entry, bytes) in entries.iter().zip(&contents) {
        let ids: Vec<String> = entry.chunks.iter().map(|c| c.id.clone()).collect();
        assert_eq!(ids, reference(bytes), "{}", entry.name);
        assert_eq!(entry.size, bytes.len() as u64);
        assert_eq!(entry.hash, blake3::hash(bytes).to_hex().to_string());
    }
    let all: usize = contents.iter().map(|c| reference(c).len()).sum();
    assert_eq!(totals.chunks, all as u64);
    assert_eq!(totals.chunks_uploaded, all as u64);
    assert_eq!(
        totals.bytes_scanned,
        contents.iter().map(|c| c.len() as u64).sum::<u64>()
    );
    assert_eq!(progress.done.load(Ordering::Relaxed), totals.bytes_scanned);
}

/// Where the first chunk of `bytes` ends.
fn for_cut(bytes: &[u8]) -> usize {
    crate::backup::chunker::next_cut(bytes)
}

#[test]
fn a_chunk_is_stored_once_and_never_if_the_repository_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = random(4 << 20, 4);
    let paths = files(&dir, &[data.clone(), data.clone(), data.clone()]);
    let names = reference(&data);
    let present: HashSet<String> = [names[0].clone()].into_iter().collect();
    let recorder = Recorder::new();
    let seal = |plain: &[u8]| -> Result<Vec<u8>, BackupError> {
        recorder.seals.fetch_add(1, Ordering::SeqCst);
        Ok(plain.to_vec())
    };
    let store = |id: &str, _: Vec<u8>| -> Result<(), BackupError> {
        recorder.stored.lock().unwrap().push(id.to_owned());
        Ok(())
    };
    let stages = Stages {
        name: &name,
        file_hasher: &file_hasher,
        seal: &seal,
        store: &store,
    };
    let progress = Arc::new(Progress::default());
    let (entries, totals) = run(&stages, &paths, present, parallel(4), &progress).unwrap();
    let mut stored = recorder.stored();
    stored.sort();
    let mut expected: Vec<String> = names[1..].to_vec();
    expected.sort();
    expected.dedup();
    assert_eq!(
        stored, expected,
        "each new chunk stored once, the present one never"
    );
    assert_eq!(recorder.seals.load(Ordering::SeqCst), expected.len());
    assert_eq!(totals.chunks, 3 * names.len() as u64);
    assert_eq!(totals.chunks_uploaded, expected.len() as u64);
    assert!(entries.iter().all(|e| e.chunks.len() == names.len()));
}

#[test]
fn a_failing_write_midway_fails_the_run_and_stops_it_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let contents = vec![random(48 << 20, 5)];
    let paths = files(&dir, &contents);
    let total = contents[0].len() as u64;
    let recorder = Recorder::new();
    let seal = |plain: &[u8]| -> Result<Vec<u8>, BackupError> {
        recorder.seals.fetch_add(1, Ordering::SeqCst);
        Ok(plain.to_vec())
    };
    let store = |id: &str, _: Vec<u8>| -> Result<(), BackupError> {
        let mut stored = recorder.stored.lock().unwrap();
        if stored.len() == 3 {
            return Err(BackupError::Store {
                object: format!("chunks/{id}"),
                detail: "injected: the storage refused".into(),
                missing: false,
                exists: false,
            });
        }
        stored.push(id.to_owned());
        Ok(())
    };
    let stages = Stages {
        name: &name,
        file_hasher: &file_hasher,
        seal: &seal,
        store: &store,
    };
    let progress = Arc::new(Progress::default());
    let workers = 2;
    let error = run(
        &stages,
        &paths,
        HashSet::new(),
        parallel(workers),
        &progress,
    )
    .expect_err("a failed write fails the backup");
    assert!(error.to_string().contains("injected"), "{error}");
    // Threads have all ended: nothing is written after the call returns.
    let stored_at_return = recorder.stored().len();
    assert_eq!(stored_at_return, 3);
    // Promptly: beyond the failing chunk, at most what was already queued or in flight
    // was sealed, and the cutter stopped long before the end of the file.
    let bound = 4 + workers * (QUEUE_CHUNKS_PER_WORKER + 1) + 2 * 2;
    let seals = recorder.seals.load(Ordering::SeqCst);
    assert!(seals <= bound, "{seals} chunks sealed, bound {bound}");
    let done = progress.done.load(Ordering::Relaxed);
    assert!(
        done < total / 4,
        "{done} of {total} bytes processed after the failure"
    );
    assert_eq!(recorder.stored().len(), stored_at_return);
}

#[test]
fn a_worker_error_is_reported_and_the_cutter_stops_at_its_next_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let contents = vec![random(16 << 20, 6), random(48 << 20, 7)];
    let paths = files(&dir, &contents);
    let recorder = Recorder::new();
    let files_started = AtomicUsize::new(0);
    let counting_hasher = || {
        files_started.fetch_add(1, Ordering::SeqCst);
        blake3::Hasher::new()
    };
    let seal = |_: &[u8]| -> Result<Vec<u8>, BackupError> {
        let n = recorder.seals.fetch_add(1, Ordering::SeqCst);
        if n == 2 {
            return Err(BackupError::Crypto("injected: compressing a chunk".into()));
        }
        Ok(Vec::new())
    };
    let store = |id: &str, _: Vec<u8>| -> Result<(), BackupError> {
        recorder.stored.lock().unwrap().push(id.to_owned());
        Ok(())
    };
    let stages = Stages {
        name: &name,
        file_hasher: &counting_hasher,
        seal: &seal,
        store: &store,
    };
    let progress = Arc::new(Progress::default());
    let workers = 3;
    let error = run(
        &stages,
        &paths,
        HashSet::new(),
        parallel(workers),
        &progress,
    )
    .expect_err("a worker's error fails the backup");
    assert!(
        matches!(&error, BackupError::Crypto(m) if m.contains("injected")),
        "the first error is the one reported: {error}"
    );
    let bound = 3 + workers * (QUEUE_CHUNKS_PER_WORKER + 1);
    let seals = recorder.seals.load(Ordering::SeqCst);
    assert!(seals <= bound, "{seals} chunks sealed, bound {bound}");
    assert!(recorder.stored().len() < seals);
    // The first file has ~60 chunks; the cutter is never more than the queues ahead, so
    // it stops inside it and never opens the second.
    assert_eq!(
        files_started.load(Ordering::SeqCst),
        1,
        "the cutter went on"
    );
}

#[test]
fn an_unreadable_file_fails_the_run_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = files(&dir, &[random(1 << 20, 8)]);
    paths.push(("gone".into(), dir.path().join("no-such-file")));
    let keep = |plain: &[u8]| -> Result<Vec<u8>, BackupError> { Ok(plain.to_vec()) };
    let store = |_: &str, _: Vec<u8>| -> Result<(), BackupError> { Ok(()) };
    let stages = Stages {
        name: &name,
        file_hasher: &file_hasher,
        seal: &keep,
        store: &store,
    };
    let progress = Arc::new(Progress::default());
    let error = run(&stages, &paths, HashSet::new(), parallel(2), &progress).unwrap_err();
    assert!(error.to_string().contains("no-such-file"), "{error}");
}

#[test]
fn parallelism_is_bounded_whatever_is_configured() {
    assert_eq!(Parallelism::new(1).workers, 1);
    assert_eq!(Parallelism::new(1000).workers, WORKERS_MAX);
    let auto = Parallelism::new(0);
    assert!((1..=WORKERS_MAX).contains(&auto.workers));
    assert!((1..=UPLOADS_IN_FLIGHT_MAX).contains(&auto.in_flight));
}
