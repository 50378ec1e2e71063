//! Round trips on a local repository: backup, restore as a new cluster with the same
//! hashes and every acknowledged event once; a backup without a quorum; apply-settings
//! mismatches refused unless forced.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;
use crate::support::cluster::admin_post;
use crate::support::history::check_exactly_once;
use crate::support::{self, NodeProcess, get, wait_for};

/// A backup holds every write acknowledged before it began, although writes are answered
/// at commit: with each apply held back 2 s (the `apply` delay point), a backup taken right
/// after a reply is still at or past that write's position, because the node applies what
/// the cluster committed before it writes the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_right_after_a_write_holds_it_though_apply_lags() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let mut env = repo.node_env();
    env.push(("TANDEM_DELAY_AT", "apply@2000".to_owned()));
    let source = start(&root.path().join("source"), &[], &env);
    let write = support::post(
        &source.url,
        "/v1/track",
        &json!({"userId": "last-word", "event": "E", "messageId": "last-word-1"}),
    )
    .await;
    assert_eq!(write.status, 200, "{}", write.body);
    let at = write.body["position"]["index"]
        .as_u64()
        .expect("position.index");
    let id = backup_now(&repo, &source);
    let manifest: Value = repo.manifest(&id);
    assert!(
        manifest["log_index"].as_u64() >= Some(at),
        "the backup is at {} but the write acknowledged before it is at {at}",
        manifest["log_index"]
    );
}

/// Without a quorum a node still backs up: it cannot confirm what the cluster committed,
/// says so in its log, and checkpoints what it has applied, at the log index its manifest
/// records.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_a_quorum_backs_up_what_it_applied_and_says_so() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let key = path(&repo.key).to_owned();
    let env = [
        ("TANDEM_BACKUP__REPO", repo.url.as_str()),
        ("TANDEM_BACKUP__REPO_KEY_FILE", key.as_str()),
        ("TANDEM_CLUSTER__TICK_INTERVAL_MS", "3600000"),
    ];
    let mut cluster = support::cluster::TestCluster::start_with_env(
        &root.path().join("cluster"),
        &["r1", "r2", "r3"],
        &env,
    )
    .await;
    let leader = cluster.leader(Duration::from_secs(30)).await;
    ingest(&cluster.urls[&leader], 300, "alone").await;
    let survivor = (1..=3).find(|id| *id != leader).expect("a follower");
    let url = cluster.urls[&survivor].clone();
    for id in (1..=3).filter(|id| *id != survivor) {
        cluster.kill9(id);
    }
    // Alone, the survivor applies nothing more once it has applied what it knew was
    // committed.
    let applied = wait_for(
        "the survivor's apply to settle",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let first = support::metric(&url, "tandem_raft_applied_index").await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let second = support::metric(&url, "tandem_raft_applied_index").await?;
                (first == second && second > 0.0).then_some(second as u64)
            }
        },
    )
    .await;
    let id = backup_now_at(&repo, &url);
    let manifest: Value = repo.manifest(&id);
    assert_eq!(
        manifest["log_index"].as_u64(),
        Some(applied),
        "the backup holds what the survivor applied: {manifest}"
    );
    let log = cluster.stderr(survivor);
    assert!(
        log.contains("cannot confirm the cluster's commit index"),
        "the survivor says it could not confirm the commit index:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_backup_is_a_new_cluster_with_the_same_state() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let env = repo.node_env();
    let source = start(&root.path().join("source"), &[], &env);

    let acked = ingest(&source.url, 600, "r").await;
    let before = settled_hashes(&source.url).await;
    let id = backup_now(&repo, &source);
    let manifest: Value = repo.manifest(&id);
    // Nothing was written after the hashes were read: the backup is at that position (the
    // state's applied index counts one past the last raft index).
    assert_eq!(
        manifest["log_index"].as_u64().map(|i| i + 1),
        before["applied_index"].as_u64()
    );
    assert_eq!(manifest["state_hash"], before["state_hash"]);
    assert_eq!(manifest["services_hash"], before["services_hash"]);

    let verified = repo.tandem(
        &["backup", "verify", "--identity", path(&repo.identity)],
        &[],
    );
    assert!(verified.contains("verified 1 backup(s)"), "{verified}");

    let restored_dir = root.path().join("restored");
    let (ok, stdout, stderr) = repo.restore(&restored_dir, &[]);
    assert!(ok, "restore failed:\n{stdout}\n{stderr}");
    let record: Value =
        serde_json::from_slice(&std::fs::read(restored_dir.join("RESTORED")).expect("RESTORED"))
            .expect("json");
    // The restored state, before the new cluster writes anything, is the source's at that
    // position.
    assert_eq!(record["state_hash"], before["state_hash"]);
    assert_eq!(record["services_hash"], before["services_hash"]);
    let node_id = record["node_id"].as_u64().expect("node id");
    assert_ne!(node_id, 1, "a restored cluster takes new node ids");

    // Started with the wrong id, it refuses and says which one to use.
    let (code, message) =
        support::run_node_expecting_exit(root.path(), &restored_dir, &[], Duration::from_secs(30));
    assert_ne!(code, Some(0));
    assert!(
        message.contains(&format!("--node-id {node_id}")),
        "{message}"
    );

    let node_id_arg = node_id.to_string();
    let restored = start(&restored_dir, &["--node-id", &node_id_arg], &env);
    // It leads its own new cluster, at its own address.
    wait_for(
        "the restored node to lead with its address",
        Duration::from_secs(30),
        || async {
            let body = get(&restored.url, "/v1/admin/cluster").await.body;
            let members = body["members"].as_array()?;
            let me = members.iter().find(|m| m["id"] == node_id)?;
            (body["leader"] == node_id && me["url"] == restored.url.as_str() && members.len() == 1)
                .then_some(())
        },
    )
    .await;
    // Its services took the backup's state; nothing the new cluster appended changed them.
    let after = settled_hashes(&restored.url).await;
    assert_eq!(after["services_hash"], before["services_hash"], "{after}");
    let checked = check_exactly_once(&restored.url, &acked)
        .await
        .expect("every acknowledged event exactly once");
    assert_eq!(checked, acked.values().map(|ids| ids.len()).sum::<usize>());
    // It takes writes as a cluster of its own.
    let reply = support::post(
        &restored.url,
        "/v1/track",
        &json!({"userId": "after-restore", "event": "Order Completed", "messageId": "after-1"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // Another node joins the restored cluster as usual: it receives the restored snapshot
    // (and the segments) from the new leader and adopts the new cluster's id.
    let joiner_env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let joiner = NodeProcess::start_with_args(
        &root.path().join("joiner"),
        &["--node-id", "9", "--join"],
        &joiner_env,
        true,
        false,
    );
    let (status, body) = admin_post(
        &restored.url,
        "/v1/admin/cluster/learners",
        &json!({"node_id": 9, "url": joiner.url, "peer_url": joiner.peer_url, "region": "r2"}),
    )
    .await;
    assert!(status < 300, "{status} {body}");
    wait_for(
        "the joiner to hold every event",
        Duration::from_secs(60),
        || async { check_exactly_once(&joiner.url, &acked).await.ok() },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(root.path().join("joiner").join("CLUSTER"))
            .expect("the joiner recorded a cluster id")
            .trim(),
        record["cluster_id"].as_str().expect("cluster id")
    );

    // The old cluster and the new one never exchange Raft traffic, although they share
    // the cluster key: each refuses the other's cluster id.
    let (status, body) = admin_post(
        &source.url,
        "/v1/admin/cluster/learners",
        &json!({"node_id": 77, "url": restored.url, "peer_url": restored.peer_url, "region": "r2"}),
    )
    .await;
    assert!(status < 300, "{status} {body}");
    wait_for(
        "the restored node to refuse the old cluster",
        Duration::from_secs(30),
        || async {
            restored
                .stderr()
                .contains("refused a peer request from another cluster")
                .then_some(())
        },
    )
    .await;
    let (status, body) = admin_post(
        &restored.url,
        "/v1/admin/cluster/learners",
        &json!({"node_id": 78, "url": source.url, "peer_url": source.peer_url, "region": "r2"}),
    )
    .await;
    assert!(status < 300, "{status} {body}");
    wait_for(
        "the old cluster to refuse the restored one",
        Duration::from_secs(30),
        || async {
            source
                .stderr()
                .contains("refused a peer request from another cluster")
                .then_some(())
        },
    )
    .await;
    // Nothing crossed: the old cluster never replicated to the restored node, and never
    // saw what the new cluster wrote.
    let view = get(&source.url, "/v1/admin/cluster").await.body;
    let learner = view["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == 77))
        .cloned()
        .expect("learner 77 listed");
    assert_eq!(
        learner["matched_index"].as_u64().unwrap_or(0),
        0,
        "{learner}"
    );
    let reply = get(
        &source.url,
        "/v1/profiles/user_id:after-restore?consistency=local",
    )
    .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    check_exactly_once(&source.url, &acked)
        .await
        .expect("the old cluster still holds its events exactly once");
}

/// A backup taken under other apply settings (here: another dedup window) is refused with
/// the setting named, unless forced; the forced restore says what it overrode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_under_other_apply_settings_is_refused_unless_forced() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path());
    let source = start(&root.path().join("source"), &[], &repo.node_env());
    ingest(&source.url, 100, "s").await;
    let id = backup_now(&repo, &source);
    let config = root.path().join("other.toml");
    std::fs::write(&config, "[ingest]\ndedup_window_hours = 48\n").expect("config");
    let (ok, _, stderr) = repo.restore(
        &root.path().join("refused"),
        &["--backup", &id, "--config", path(&config)],
    );
    assert!(!ok, "a restore under other settings must be refused");
    assert!(
        stderr.contains("ingest.dedup_window_hours") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(!root.path().join("refused").exists());
    let (ok, stdout, stderr) = repo.restore(
        &root.path().join("forced"),
        &["--backup", &id, "--config", path(&config), "--force"],
    );
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("FORCED") && stdout.contains("ingest.dedup_window_hours"),
        "{stdout}"
    );
}
