//! Thirty generations of incremental backups with retention GC in between: each backup
//! uploads a fraction of the full one, GC leaves exactly the chunks the kept backups
//! name (nothing they need deleted, nothing else kept), and every kept backup restores to
//! the state the source had when it was taken.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Value, json};

use crate::common::*;

/// Customers; 1% of them change between generations.
const PROFILES: usize = 2_000;
/// Backups taken.
const GENERATIONS: usize = 30;
/// Backups each prune keeps (the newest).
const KEEP: usize = 3;
/// A prune after every this many backups.
const PRUNE_EVERY: usize = 2;

/// `PROFILES` customers with a few orders each. The history (event bodies, in the log)
/// outweighs the state, as in a real CDP: each order carries a note of varied text.
fn seed_events() -> Vec<Value> {
    let mut events = Vec::new();
    let mut noise = 0x2545_f491_4f6c_dd1d_u64;
    for p in 0..PROFILES {
        for o in 0..5 {
            let note: String = (0..40)
                .map(|_| {
                    noise ^= noise << 13;
                    noise ^= noise >> 7;
                    noise ^= noise << 17;
                    format!("{:x}", noise & 0xffff_ffff)
                })
                .collect();
            events.push(json!({
                "type": "track", "userId": format!("customer-{p}"), "event": "Order Completed",
                "messageId": format!("seed-{p}-{o}"),
                "properties": {"revenue": p % 97 + o, "note": note,
                               "products": [{"category": format!("c{}", p % 13)}]},
            }));
        }
    }
    events
}

/// 1% of the customers get a new trait in `generation`.
fn changes(generation: usize) -> Vec<Value> {
    (0..PROFILES / 100)
        .map(|i| {
            let p = (generation * 37 + i * 101) % PROFILES;
            json!({"type": "identify", "userId": format!("customer-{p}"),
                   "messageId": format!("gen-{generation}-{p}"),
                   "traits": {"plan": format!("plan-{generation}")}})
        })
        .collect()
}

/// The chunk ids stored in the repository at `dir`.
fn stored_chunks(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let chunks = dir.join("chunks");
    for shard in std::fs::read_dir(&chunks).into_iter().flatten().flatten() {
        for chunk in std::fs::read_dir(shard.path()).expect("shard").flatten() {
            out.insert(chunk.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// The chunk ids backup `id`'s manifest names.
fn named_chunks(repo: &Repo, id: &str) -> BTreeSet<String> {
    let manifest: Value = repo.manifest(id);
    manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .flat_map(|f| f["chunks"].as_array().expect("chunks").iter())
        .map(|c| c["id"].as_str().expect("chunk id").to_owned())
        .collect()
}

fn prune(repo: &Repo) -> String {
    let keep = KEEP.to_string();
    repo.tandem(
        &["backup", "prune", "--keep-last", &keep, "--keep-daily", "0"],
        &[
            "--keep-weekly",
            "0",
            "--keep-monthly",
            "0",
            "--grace-secs",
            "0",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn incremental_backups_upload_what_changed_and_gc_keeps_what_kept_backups_need() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let source = start(&root.path().join("source"), &[], &repo.node_env());
    send_events(&source.url, seed_events()).await;
    let repo_dir = Path::new(&repo.url).to_path_buf();

    // Source hashes by backup id, to compare each restore with.
    let mut hashes: Vec<(String, Value)> = Vec::new();
    let mut uploaded = Vec::new();
    for generation in 0..GENERATIONS {
        if generation > 0 {
            send_events(&source.url, changes(generation)).await;
        }
        let before = settled_hashes(&source.url).await;
        let id = backup_now(&repo, &source);
        let manifest: Value = repo.manifest(&id);
        assert_eq!(manifest["state_hash"], before["state_hash"]);
        let totals = &manifest["totals"];
        let (scanned, new, sent) = (
            totals["bytes_scanned"].as_u64().expect("scanned"),
            totals["bytes_new"].as_u64().expect("new"),
            totals["bytes_uploaded"].as_u64().expect("uploaded"),
        );
        println!("generation {generation}: {scanned} bytes scanned, {new} new, {sent} uploaded");
        assert!(new <= scanned && (generation > 0 || new == scanned));
        uploaded.push(sent);
        hashes.push((id, before));
        if generation % PRUNE_EVERY == PRUNE_EVERY - 1 {
            let report = prune(&repo);
            // GC keeps exactly what the kept backups name: nothing they need is gone, and
            // the repository does not grow with the generations it dropped.
            let kept: Vec<&String> = hashes.iter().rev().take(KEEP).map(|(id, _)| id).collect();
            let needed: BTreeSet<String> =
                kept.iter().flat_map(|id| named_chunks(&repo, id)).collect();
            let stored = stored_chunks(&repo_dir);
            assert_eq!(
                stored.len(),
                needed.len(),
                "generation {generation}: {} chunks stored, the {} kept backups name {}\n{report}",
                stored.len(),
                kept.len(),
                needed.len()
            );
            assert_eq!(stored, needed, "generation {generation}: {report}");
        }
    }
    // After the first, a backup uploads a fraction of what the first (full) one did: the
    // log's chunks repeat; the state's, where 1% of customers changed, mostly do not.
    for (generation, sent) in uploaded.iter().enumerate().skip(1) {
        assert!(
            *sent * 3 < uploaded[0],
            "generation {generation} uploaded {sent} bytes, the full backup {}",
            uploaded[0]
        );
    }
    let list: Value =
        serde_json::from_str(&repo.tandem(&["backup", "list", "--json"], &[])).expect("json");
    let kept: Vec<String> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|b| b["id"].as_str().expect("id").to_owned())
        .collect();
    // The last generation pruned (30 is a multiple of PRUNE_EVERY): the KEEP newest remain.
    let expected: Vec<String> = hashes[GENERATIONS - KEEP..]
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(kept, expected);
    let verified = repo.tandem(
        &["backup", "verify", "--identity", path(&repo.identity)],
        &[],
    );
    assert!(
        verified.contains(&format!("verified {KEEP} backup(s)")),
        "{verified}"
    );
    // Every kept backup restores, to the state the source had when it was taken.
    for (id, before) in &hashes[GENERATIONS - KEEP..] {
        let dir = root.path().join(format!("restore-{id}"));
        let (ok, stdout, stderr) = repo.restore(&dir, &["--backup", id]);
        assert!(ok, "restore {id}:\n{stdout}\n{stderr}");
        let record: Value =
            serde_json::from_slice(&std::fs::read(dir.join("RESTORED")).expect("RESTORED"))
                .expect("json");
        assert_eq!(record["state_hash"], before["state_hash"], "{id}");
        assert_eq!(record["services_hash"], before["services_hash"], "{id}");
    }
    // A pruned backup is gone.
    let (ok, _, stderr) = repo.restore(&root.path().join("pruned"), &["--backup", &hashes[0].0]);
    assert!(!ok && stderr.contains("no such backup"), "{stderr}");
}
