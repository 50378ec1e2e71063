//! Scheduled backups on a three-node cluster across a failover.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::support::{self, wait_for};

/// A three-node cluster with a schedule every 2 seconds: only the leader takes the
/// backups, one per due time, and after the leader is killed the new one goes on without
/// repeating a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_backups_run_once_per_due_time_on_the_leader_across_a_failover() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let key = path(&repo.key).to_owned();
    let env = [
        ("TANDEM_BACKUP__REPO", repo.url.as_str()),
        ("TANDEM_BACKUP__REPO_KEY_FILE", key.as_str()),
        ("TANDEM_BACKUP__SCHEDULE", "*/2 * * * * *"),
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
