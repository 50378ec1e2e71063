//! Incremental backups over generations with retention GC in between.

use serde_json::{Value, json};

use crate::common::*;

/// `profiles` customers with a few orders each, then `generations` backups, each after
/// 1% of the customers changed, with a prune (keep the 3 newest) after every other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn incremental_backups_upload_what_changed_and_gc_keeps_what_kept_backups_need() {
    const PROFILES: usize = 2_000;
    const GENERATIONS: usize = 10;
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let env = repo.node_env();
    let source = start(&root.path().join("source"), &[], &env);
    // The history (event bodies, in the log) outweighs the state, as in a real CDP: each
    // order carries a note of varied text.
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
    send_events(&source.url, events).await;

    // Source hashes by backup id, to compare each restore with.
    let mut hashes: Vec<(String, Value)> = Vec::new();
    let mut uploaded = Vec::new();
    for generation in 0..GENERATIONS {
        if generation > 0 {
            // 1% of the customers change: a new trait on each.
            let changed: Vec<Value> = (0..PROFILES / 100)
                .map(|i| {
                    let p = (generation * 37 + i * 101) % PROFILES;
                    json!({"type": "identify", "userId": format!("customer-{p}"),
                           "messageId": format!("gen-{generation}-{p}"),
                           "traits": {"plan": format!("plan-{generation}")}})
                })
                .collect();
            send_events(&source.url, changed).await;
        }
        let before = settled_hashes(&source.url).await;
        let id = backup_now(&repo, &source);
        let manifest: Value =
            serde_json::from_str(&repo.tandem(&["backup", "show", &id], &[])).expect("json");
        assert_eq!(manifest["state_hash"], before["state_hash"]);
        let totals = &manifest["totals"];
        let (scanned, new, sent) = (
            totals["bytes_scanned"].as_u64().expect("scanned"),
            totals["bytes_new"].as_u64().expect("new"),
            totals["bytes_uploaded"].as_u64().expect("uploaded"),
        );
        println!(
            "generation {generation}: {scanned} bytes scanned, {new} new, {} uploaded",
            totals["bytes_uploaded"]
        );
        assert!(new <= scanned && (generation > 0 || new == scanned));
        uploaded.push(sent);
        hashes.push((id, before));
        if generation % 2 == 1 {
            repo.tandem(
                &[
                    "backup",
                    "prune",
                    "--keep-last",
                    "3",
                    "--keep-daily",
                    "0",
                    "--keep-weekly",
                    "0",
                    "--keep-monthly",
                    "0",
                    "--grace-secs",
                    "0",
                ],
                &[],
            );
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
    // The last prune ran after generation 9: it kept 8 and 9; none ran after… every odd
    // generation prunes, so the survivors are the 3 newest at the last prune.
    let expected: Vec<String> = hashes[GENERATIONS - 3..]
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(kept, expected);
    let verified = repo.tandem(
        &["backup", "verify", "--identity", path(&repo.identity)],
        &[],
    );
    assert!(verified.contains("verified 3 backup(s)"), "{verified}");
    // Every kept backup restores, to the state the source had when it was taken.
    for (id, before) in &hashes[GENERATIONS - 3..] {
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
