//! kill -9 at crash points during backup, GC and restore.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::support::history::check_exactly_once;
use crate::support::{self, binary};

/// kill -9 (crash points: the process aborts there) during a backup, a GC and a restore:
/// nothing half-valid is left — no manifest for the cut backup, kept backups intact after
/// the cut GC, and a cut restore's directory refused by the node and by a second restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashes_during_backup_gc_and_restore_leave_nothing_half_valid() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let source_dir = root.path().join("source");
    let list = |repo: &Repo| -> Vec<String> {
        let list: Value =
            serde_json::from_str(&repo.tandem(&["backup", "list", "--json"], &[])).expect("json");
        list.as_array()
            .expect("list")
            .iter()
            .map(|b| b["id"].as_str().expect("id").to_owned())
            .collect()
    };

    // A backup cut after its chunks are stored, before its manifest.
    let mut env = repo.node_env();
    env.push(("TANDEM_CRASH_AT", "backup:before-manifest".to_owned()));
    let mut crashing = start(&source_dir, &[], &env);
    let acked = ingest(&crashing.url, 300, "k").await;
    let output = Command::new(binary())
        .args([
            "backup",
            "create",
            "--target",
            &crashing.url,
            "--admin-key",
            support::ADMIN_KEY,
        ])
        .output()
        .expect("backup create");
    assert!(!output.status.success(), "the node died mid-backup");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !crashing.has_exited() {
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not die at the crash point"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(crashing.stderr().contains("backup:before-manifest"));
    drop(crashing);
    assert!(list(&repo).is_empty(), "a cut backup never happened");
    let chunks_dir = Path::new(&repo.url).join("chunks");
    assert!(chunks_dir.exists(), "its chunks were stored");

    // The node comes back; backups go on (its stale lock goes), GC removes the leftovers.
    let source = start(&source_dir, &[], &repo.node_env());
    let first = backup_now(&repo, &source);
    ingest(&source.url, 100, "k2").await;
    let second = backup_now(&repo, &source);
    assert_eq!(list(&repo), [first.clone(), second.clone()]);

    // A GC cut after its first chunk deletion: the kept backup is whole, a second run ends
    // the work.
    let (ok, _, stderr) = repo.try_tandem(
        &[
            "backup",
            "prune",
            "--keep-last",
            "1",
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
    assert!(ok, "{stderr}");
    ingest(&source.url, 100, "k3").await;
    let third = backup_now(&repo, &source);
    let output = Command::new(binary())
        .args([
            "backup",
            "prune",
            "--repo",
            &repo.url,
            "--repo-key",
            path(&repo.key),
        ])
        .args([
            "--keep-last",
            "1",
            "--keep-daily",
            "0",
            "--keep-weekly",
            "0",
        ])
        .args(["--keep-monthly", "0", "--grace-secs", "0"])
        .env("TANDEM_CRASH_AT", "gc:chunk-deleted")
        .output()
        .expect("prune");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("gc:chunk-deleted"));
    assert_eq!(list(&repo), [third]);
    let verified = repo.tandem(
        &["backup", "verify", "--identity", path(&repo.identity)],
        &[],
    );
    assert!(verified.contains("verified 1 backup(s)"), "{verified}");
    let out = repo.tandem(
        &[
            "backup",
            "prune",
            "--keep-last",
            "1",
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
    assert!(out.contains("kept 1 backup(s)"), "{out}");

    // A restore cut after its download: the node refuses the directory, so does a second
    // restore; once it is deleted, a restore succeeds.
    let dir = root.path().join("restored");
    let output = Command::new(binary())
        .args([
            "restore",
            "--repo",
            &repo.url,
            "--repo-key",
            path(&repo.key),
        ])
        .args(["--identity", path(&repo.identity), "--data-dir", path(&dir)])
        .env("TANDEM_CRASH_AT", "restore:downloaded")
        .output()
        .expect("restore");
    assert!(!output.status.success());
    assert!(dir.join("restore-incomplete").exists());
    let (code, message) =
        support::run_node_expecting_exit(root.path(), &dir, &[], Duration::from_secs(30));
    assert_ne!(code, Some(0));
    assert!(message.contains("interrupted restore"), "{message}");
    let (ok, _, stderr) = repo.restore(&dir, &[]);
    assert!(!ok && stderr.contains("not empty"), "{stderr}");
    std::fs::remove_dir_all(&dir).expect("remove");
    let (ok, stdout, stderr) = repo.restore(&dir, &[]);
    assert!(ok, "{stdout}\n{stderr}");
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join("RESTORED")).expect("RESTORED"))
            .expect("json");
    let node_id = record["node_id"].as_u64().expect("id").to_string();
    let restored = start(&dir, &["--node-id", &node_id], &repo.node_env());
    check_exactly_once(&restored.url, &acked)
        .await
        .expect("the events acknowledged before the cut backup are all there, once");
}
