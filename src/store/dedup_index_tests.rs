//! The dedup index's runs ([`super::dedup_index`]) through a real store: lookups across
//! runs and memory, reopening on the runs it wrote, and rebuilding when they do not check
//! out. Unit-test builds write a run every [`RUN_KEYS`] (256) keys.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::dedup::Seen;
use super::dedup_index::{RUN_KEYS, RUNS_DIR};
use super::tests::{Batch, DAY_MS, T0, batch, commit, open_with, screen, settings};
use super::*;
use crate::model::event::EventOutcome;

/// `count` new events, `tag`-named, proposed at `time_ms`.
fn visits(time_ms: i64, tag: &str, count: usize) -> Batch {
    batch(
        time_ms,
        (0..count)
            .map(|n| json!({"type": "track", "messageId": format!("{tag}-{n}"), "userId": format!("u{n}"), "event": "Visit"}))
            .collect(),
    )
}

/// Commits `batches` batches of 100 events; returns them with their events' seqs.
fn ingest(store: &Store, time_ms: i64, tag: &str, batches: usize) -> Vec<(Batch, Vec<u64>)> {
    (0..batches)
        .map(|b| {
            let visits = visits(time_ms, &format!("{tag}{b}"), 100);
            let seqs = commit(store, &visits)
                .into_iter()
                .map(|outcome| match outcome {
                    EventOutcome::Stored { seq } => seq,
                    other => panic!("a new event was not stored: {other:?}"),
                })
                .collect();
            (visits, seqs)
        })
        .collect()
}

/// Every event of `ingested` is a duplicate of the seq it was stored with.
fn assert_all_found(store: &Store, ingested: &[(Batch, Vec<u64>)], when: &str) {
    for (batch, seqs) in ingested {
        let expected: Vec<Seen> = seqs.iter().map(|seq| Seen::Stored(*seq)).collect();
        assert_eq!(screen(store, batch), expected, "{when}");
    }
}

fn runs_dir(dir: &Path, name: &str) -> PathBuf {
    Store::dir_in(&dir.join(name)).join(RUNS_DIR)
}

/// The run files, by name, with their inode numbers.
fn runs(dir: &Path, name: &str) -> Vec<(String, u64)> {
    let mut runs: Vec<(String, u64)> = std::fs::read_dir(runs_dir(dir, name))
        .expect("runs dir")
        .map(|entry| entry.expect("entry"))
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".run"))
        .map(|entry| {
            let inode = entry.metadata().expect("metadata").ino();
            (entry.file_name().to_string_lossy().into_owned(), inode)
        })
        .collect();
    runs.sort();
    runs
}

fn open(dir: &Path, name: &str) -> Store {
    open_with(dir, name, settings())
}

#[test]
fn duplicates_are_found_in_runs_and_in_memory_and_after_a_reopen_without_a_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), "a");
    let ingested = ingest(&store, T0, "v", 12);
    assert_all_found(&store, &ingested, "while runs were being written");
    store.dedup.join_sealer();
    let (keys, run_count) = store.dedup.len().expect("len");
    assert_eq!(keys, 1_200);
    assert!(
        run_count >= 1_200 / RUN_KEYS - 1,
        "only {run_count} runs for 1,200 keys"
    );
    assert_all_found(&store, &ingested, "with the runs written");
    let fresh = screen(&store, &visits(T0, "fresh", 100));
    assert!(fresh.iter().all(|seen| *seen == Seen::New), "{fresh:?}");
    drop(store);

    let before = runs(dir.path(), "a");
    assert!(!before.is_empty());
    let store = open(dir.path(), "a");
    assert_eq!(
        runs(dir.path(), "a"),
        before,
        "the runs were rewritten at open although they checked out"
    );
    assert_all_found(&store, &ingested, "after a reopen");
    let more = ingest(&store, T0 + 1_000, "w", 3);
    assert_all_found(&store, &more, "applied after the reopen");
    assert_eq!(store.dedup.len().expect("len").0, 1_500);
}

#[test]
fn runs_that_do_not_check_out_are_rebuilt_from_the_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ingested = {
        let store = open(dir.path(), "a");
        let ingested = ingest(&store, T0, "v", 12);
        store.dedup.join_sealer();
        ingested
    };
    let files = runs(dir.path(), "a");
    assert!(files.len() >= 3, "{files:?}");
    let path = |name: &str| runs_dir(dir.path(), "a").join(name);

    // A damaged run (one byte of a record flipped).
    let damaged = path(&files[1].0);
    let mut bytes = std::fs::read(&damaged).expect("read run");
    bytes[100] ^= 0x40;
    std::fs::write(&damaged, bytes).expect("write run");
    let store = open(dir.path(), "a");
    assert_all_found(&store, &ingested, "after a damaged run");
    drop(store);
    assert_ne!(runs(dir.path(), "a"), files, "the damaged run was kept");

    // The oldest run missing: keys alive in the state that no run holds.
    let files = runs(dir.path(), "a");
    std::fs::remove_file(path(&files[0].0)).expect("remove run");
    let store = open(dir.path(), "a");
    assert_all_found(&store, &ingested, "after the oldest run went missing");
    drop(store);

    // A run the state does not cover (as after a power cut, when the state's unsynced tail
    // is lost but a run written from it survived), claiming a key the state never stored.
    let files = runs(dir.path(), "a");
    let newest = &files.last().expect("a run").0;
    let to: u64 = newest.trim_end_matches(".run").parse().expect("run name");
    let mut bytes = std::fs::read(path(newest)).expect("read run");
    let header_to = 16 + 2 * 8;
    let (from, beyond) = (to, to + (1_000 << 16));
    bytes[16 + 8..header_to].copy_from_slice(&from.to_le_bytes());
    bytes[header_to..header_to + 8].copy_from_slice(&beyond.to_le_bytes());
    let body = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path(&format!("{beyond:020}.run")), bytes).expect("write run");
    let store = open(dir.path(), "a");
    assert!(
        !runs(dir.path(), "a")
            .iter()
            .any(|(name, _)| *name == format!("{beyond:020}.run")),
        "a run past the state was kept"
    );
    assert_all_found(&store, &ingested, "after a run past the state");
    let more = ingest(&store, T0 + 1_000, "w", 1);
    assert_all_found(&store, &more, "applied after the rebuild");
}

#[test]
fn runs_whose_keys_all_expired_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), "a");
    let old = ingest(&store, T0, "v", 6);
    store.dedup.join_sealer();
    assert!(!runs(dir.path(), "a").is_empty());
    // Two days later (the window is one): the old keys are dead, their runs go.
    let young = ingest(&store, T0 + 2 * DAY_MS, "w", 1);
    store.dedup.join_sealer();
    assert!(
        runs(dir.path(), "a").is_empty(),
        "expired runs kept: {:?}",
        runs(dir.path(), "a")
    );
    for (batch, _) in &old {
        assert!(screen(&store, batch).iter().all(|seen| *seen == Seen::New));
    }
    assert_all_found(&store, &young, "the young keys");

    // Reopened with no run on disk: built from the feed entries within the window only,
    // found by a binary search past the dead ones.
    let more = ingest(&store, T0 + 2 * DAY_MS + 1_000, "x", 3);
    drop(store);
    for (name, _) in runs(dir.path(), "a") {
        std::fs::remove_file(runs_dir(dir.path(), "a").join(name)).expect("remove run");
    }
    let store = open(dir.path(), "a");
    assert_eq!(
        store.dedup.len().expect("len").0,
        400,
        "the rebuilt index holds dead keys"
    );
    for (batch, _) in &old {
        assert!(screen(&store, batch).iter().all(|seen| *seen == Seen::New));
    }
    assert_all_found(&store, &young, "the young keys after a reopen");
    assert_all_found(&store, &more, "the younger keys after a reopen");
    // The rebuild wrote a run (400 keys > 256) whose range starts past the dead entries:
    // it did not read the feed from its beginning.
    let rebuilt = runs(dir.path(), "a");
    let first = rebuilt.first().expect("a rebuilt run");
    let bytes = std::fs::read(runs_dir(dir.path(), "a").join(&first.0)).expect("read run");
    let from = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
    // Feed keys count records: the six dead entries of 100 events hold keys 1..=600.
    assert_eq!(
        from, 600,
        "the rebuild started after feed key {from}, not the dead entries"
    );
}

#[test]
fn a_run_that_cannot_be_written_is_retried_and_memory_stays_bounded_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), "a");
    // The runs' directory turned into a file: every run write fails (as on a full or
    // broken disk), whoever runs the tests.
    let runs_path = runs_dir(dir.path(), "a");
    std::fs::remove_dir_all(&runs_path).expect("remove the runs dir");
    std::fs::write(&runs_path, b"").expect("a file in its place");

    // 3 batches fill pending (256 keys) and it is frozen; its run fails, and is retried
    // (and fails) after every apply while pending grows towards its bound, 4 × 256.
    let held = ingest(&store, T0, "v", 14);
    store.dedup.join_sealer();
    let (keys, run_count) = store.dedup.len().expect("len");
    assert_eq!((keys, run_count), (1_400, 0));
    assert_all_found(&store, &held, "while no run could be written");

    // Past the bound, applying fails (the node stops applying rather than grow), and the
    // entry's events are not half-stored.
    let refused = visits(T0, "refused", 100);
    let error = direct::commit_events(&store, refused.events.clone(), refused.time_ms)
        .expect_err("an apply past the bound");
    assert!(
        matches!(&error, StoreError::Io { source, .. } if source.to_string().contains("cannot write them as a run")),
        "{error}"
    );
    assert!(
        screen(&store, &refused)
            .iter()
            .all(|seen| *seen == Seen::New),
        "a refused entry's keys were recorded"
    );
    assert_eq!(store.dedup.len().expect("len").0, 1_400);

    // The disk mended: the next seal retries the frozen keys, then writes what piled up.
    std::fs::remove_file(&runs_path).expect("remove the file");
    std::fs::create_dir(&runs_path).expect("the runs dir again");
    for _ in 0..2 {
        store.dedup.seal_if_full().expect("seal");
        store.dedup.join_sealer();
    }
    let (keys, run_count) = store.dedup.len().expect("len");
    assert_eq!((keys, run_count), (1_400, 2));
    assert_eq!(runs(dir.path(), "a").len(), 2);
    assert_all_found(&store, &held, "once the runs were written");
    drop(store);
    let store = open(dir.path(), "a");
    assert_eq!(
        store.dedup.len().expect("len"),
        (1_400, 2),
        "runs rewritten at open"
    );
    assert_all_found(&store, &held, "after a reopen");
}
