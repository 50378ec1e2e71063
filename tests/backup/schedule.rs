//! Scheduled backups and verifications on a three-node cluster across a failover.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::support::{self, wait_for};

/// A three-node cluster with a backup schedule every 2 seconds and a verification
/// schedule every 5: only the leader takes the backups and verifies them, one run per due
/// time, and after the leader is killed the new one goes on without repeating a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_backups_run_once_per_due_time_on_the_leader_across_a_failover() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let key = path(&repo.key).to_owned();
    let identity = path(&repo.identity).to_owned();
    let env = [
        ("TANDEM_BACKUP__REPO", repo.url.as_str()),
        ("TANDEM_BACKUP__REPO_KEY_FILE", key.as_str()),
        ("TANDEM_BACKUP__SCHEDULE", "*/2 * * * * *"),
        ("TANDEM_BACKUP__VERIFY_SCHEDULE", "*/5 * * * * *"),
        ("TANDEM_BACKUP__VERIFY_IDENTITY_FILE", identity.as_str()),
    ];
    let mut cluster = support::cluster::TestCluster::start_with_env(
        &root.path().join("cluster"),
        &["r1", "r2", "r3"],
        &env,
    )
    .await;
    let backups = |repo: &Repo| -> Vec<(u64, i64)> {
        let list: Value =
            serde_json::from_str(&repo.tandem(&["backup", "list", "--json"], &[])).expect("json");
        list.as_array()
            .expect("list")
            .iter()
            .map(|b| {
                (
                    b["node_id"].as_u64().expect("node"),
                    b["started_ms"].as_i64().expect("ms"),
                )
            })
            .collect()
    };
    let first_leader = cluster.leader(Duration::from_secs(30)).await;
    wait_for("two scheduled backups", Duration::from_secs(60), || async {
        (backups(&repo).len() >= 2).then_some(())
    })
    .await;
    assert!(
        backups(&repo).iter().all(|(node, _)| *node == first_leader),
        "only the leader runs the schedule: {:?}",
        backups(&repo)
    );
    cluster.kill9(first_leader);
    let second_leader = cluster.leader(Duration::from_secs(30)).await;
    assert_ne!(second_leader, first_leader);
    wait_for(
        "a scheduled backup by the new leader",
        Duration::from_secs(60),
        || async {
            backups(&repo)
                .iter()
                .any(|(node, _)| *node == second_leader)
                .then_some(())
        },
    )
    .await;
    wait_for(
        "a verification by the new leader",
        Duration::from_secs(90),
        || async {
            verifications(&repo)
                .iter()
                .any(|(node, _, _)| *node == second_leader)
                .then_some(())
        },
    )
    .await;
    let runs = verifications(&repo);
    assert!(
        runs.iter()
            .all(|(node, _, ok)| *ok && [first_leader, second_leader].contains(node)),
        "only leaders verify, and the backups verify: {runs:?}"
    );
    for pair in runs.windows(2) {
        assert!(
            pair[1].1 / 5_000 > pair[0].1 / 5_000,
            "two verifications for one due time: {runs:?}"
        );
    }
    let mut all = backups(&repo);
    all.sort_by_key(|(_, ms)| *ms);
    // The schedule falls due at every even second: between two runs there is always a
    // due time the first run did not cover.
    for pair in all.windows(2) {
        assert!(
            pair[1].1 / 2_000 > pair[0].1 / 2_000,
            "two runs for one due time: {all:?}"
        );
    }
}

/// The verification records in the local repository: (node, started ms, ok), oldest
/// first. A record is a header line (its MAC) and JSON.
fn verifications(repo: &Repo) -> Vec<(u64, i64, bool)> {
    let dir = std::path::Path::new(&repo.url).join("verifications");
    let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|path| {
            let bytes = std::fs::read(path).ok()?;
            let json = &bytes[bytes.iter().position(|b| *b == b'\n')? + 1..];
            let record: Value = serde_json::from_slice(json).ok()?;
            Some((
                record["node_id"].as_u64()?,
                record["started_ms"].as_i64()?,
                record["ok"].as_bool()?,
            ))
        })
        .collect()
}
