//! The parallel backup pipeline on a real node and a real repository directory: chunk
//! writes that start failing part-way through a backup fail the whole backup, leave no
//! manifest, and the next backup (the storage healthy again) succeeds and verifies.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::history::Writers;
use support::{ADMIN_KEY, NodeProcess, binary, wait_for};

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn tandem(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tandem")
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn manifests(repo: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(repo.join("manifests")) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunk_writes_failing_midway_fail_the_backup_and_leave_no_manifest() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = root.path().join("repo");
    let key = root.path().join("repo.key");
    let identity = root.path().join("identity.age");
    let init = tandem(&[
        "backup",
        "init",
        "--repo",
        path(&repo),
        "--repo-key",
        path(&key),
        "--identity",
        path(&identity),
    ]);
    assert!(init.status.success(), "{}", text(&init));
    let env = [
        ("TANDEM_BACKUP__REPO", path(&repo)),
        ("TANDEM_BACKUP__REPO_KEY_FILE", path(&key)),
        ("TANDEM_BACKUP__SCHEDULE", ""),
        ("TANDEM_BACKUP__WORKERS", "3"),
    ];
    let node = NodeProcess::start_with_args(&root.path().join("node"), &[], &env, true, true);
    let writers = Writers::start(vec![node.url.clone()], 4, "pipeline");
    // Enough for a checkpoint of more than 2 MiB (~10 chunks, checked below): the state
    // holds ~80 B per event since the dedup keys left it.
    wait_for("events acknowledged", Duration::from_secs(60), || async {
        (writers.acked_count() >= 40_000).then_some(())
    })
    .await;
    writers.stop().await;

    // Three quarters of the chunk directories cannot be created (a file holds each name),
    // so the chunks named into them fail to write while the others succeed: a storage
    // failing part-way through. With ~10 chunks (names are keyed hashes), the chance that
    // none falls into a blocked directory is about 0.25^10.
    let chunks = repo.join("chunks");
    std::fs::create_dir_all(&chunks).expect("chunks dir");
    let blocked: Vec<PathBuf> = (0x40..=0xff_u32)
        .map(|b| chunks.join(format!("{b:02x}")))
        .collect();
    for file in &blocked {
        std::fs::write(file, b"not a directory").expect("block");
    }
    let create = [
        "backup",
        "create",
        "--target",
        &node.url,
        "--admin-key",
        ADMIN_KEY,
    ];
    let scanned = |out: &Output| {
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        said.split("scanned ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .map(str::to_owned)
    };
    let failed = tandem(&create);
    let said = text(&failed);
    assert!(!failed.status.success(), "the backup succeeded:\n{said}");
    assert!(
        said.contains("chunks/"),
        "the error names no chunk:\n{said}"
    );
    assert!(
        manifests(&repo).is_empty(),
        "a failed backup left a manifest: {:?}",
        manifests(&repo)
    );

    for file in &blocked {
        std::fs::remove_file(file).expect("unblock");
    }
    let ok = tandem(&create);
    assert!(ok.status.success(), "{}", text(&ok));
    let bytes: u64 = scanned(&ok)
        .and_then(|s| s.parse().ok())
        .expect("bytes scanned");
    assert!(
        bytes > 2 << 20,
        "too small a checkpoint to need ~10 chunks: {bytes}"
    );
    assert_eq!(manifests(&repo).len(), 1);
    let verify = tandem(&[
        "backup",
        "verify",
        "--repo",
        path(&repo),
        "--repo-key",
        path(&key),
        "--identity",
        path(&identity),
    ]);
    let said = text(&verify);
    assert!(verify.status.success(), "{said}");
    assert!(said.contains("verified 1 backup(s)"), "{said}");
    assert!(!said.contains("PROBLEM"), "{said}");
}
