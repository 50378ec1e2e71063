//! A real node process runs its threads at the priorities `node::priority` plans: reads
//! and the async workers at the node's own nice value, ingest parsing a little lower, the
//! store's flushes and compactions lower still, and ingest and reads keep working with
//! the parsing moved onto its own threads. Linux only: it reads `/proc/PID/task`.
#![cfg(target_os = "linux")]

mod support;

use serde_json::json;
use support::{NodeProcess, get, post, wait_for};
use tandem::node::priority::{INGEST_NICE, STORAGE_NICE, this_thread_nice};
use tandem::services::supervisor::SERVICE_NICE;

/// `(thread name, nice value)` of every thread of process `pid`.
fn threads(pid: u32) -> Vec<(String, i32)> {
    let mut found = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the node's threads");
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // After the parenthesised name: state is field 3, nice field 19.
        let after_name = &stat[stat.rfind(')').expect("stat has a name") + 2..];
        let nice: i32 = after_name
            .split(' ')
            .nth(16)
            .and_then(|n| n.parse().ok())
            .expect("stat has a nice value");
        found.push((name.trim().to_owned(), nice));
    }
    found
}

#[tokio::test]
async fn a_node_runs_reads_at_its_own_priority_and_background_work_lower() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]);
    // A batch goes through the ingest threads; a read through the read threads.
    let batch = post(
        &node.url,
        "/v1/batch",
        &json!({"batch": [
            {"type": "track", "userId": "prio", "event": "E", "messageId": "prio-1"},
            {"type": "identify", "userId": "prio", "traits": {"plan": "pro"}, "messageId": "prio-2"},
        ]}),
    )
    .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    assert_eq!(batch.body["accepted"], 2, "{}", batch.body);
    let read = get(&node.url, "/v1/profiles/user_id:prio").await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body["events_total"], 2, "{}", read.body);
    // The services open their databases after the node is ready (their storage threads
    // start with the open): wait until none is still opening.
    let url = node.url.clone();
    wait_for(
        "the services' databases to open",
        std::time::Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let services = get(&url, "/v1/admin/services").await;
                let all = services.body["services"].as_array()?.clone();
                (!all.is_empty() && all.iter().all(|s| s["reason"] != "opening its database"))
                    .then_some(())
            }
        },
    )
    .await;

    // The node inherits this test's nice value; the plan is relative to it.
    let base = this_thread_nice().expect("own nice");
    let lowered = |by: i32| (base + by).min(19);
    let threads = threads(node.pid());
    let niceness = |prefix: &str| -> Vec<i32> {
        threads
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, nice)| *nice)
            .collect()
    };
    let report = format!("{threads:?}");
    let reads = niceness("tandem-read-");
    assert!(!reads.is_empty(), "no read threads: {report}");
    assert!(reads.iter().all(|n| *n == base), "reads: {report}");
    let workers = niceness("tokio-");
    assert!(!workers.is_empty(), "no async workers: {report}");
    assert!(
        workers.iter().all(|n| *n == base),
        "async workers: {report}"
    );
    let ingest = niceness("tandem-ingest-");
    assert!(!ingest.is_empty(), "no ingest threads: {report}");
    assert!(
        ingest.iter().all(|n| *n == lowered(INGEST_NICE)),
        "ingest: {report}"
    );
    // The storage engine's background threads: the store's at the storage priority, the
    // services' databases' at the services' own; none at the node's.
    let storage = niceness("fjall:worker");
    assert!(
        storage.contains(&lowered(STORAGE_NICE)),
        "no storage thread at nice {}: {report}",
        lowered(STORAGE_NICE)
    );
    assert!(
        storage.contains(&lowered(SERVICE_NICE)),
        "no services' storage thread at nice {}: {report}",
        lowered(SERVICE_NICE)
    );
    assert!(
        storage
            .iter()
            .all(|n| [lowered(STORAGE_NICE), lowered(SERVICE_NICE)].contains(n)),
        "a storage thread at another priority: {report}"
    );
}
