//! Real-process cluster tests: three (or five) `tandem node` processes on loopback, faults
//! injected while writers run, then every acknowledged event must be on every node
//! exactly once and every node's state hash equal.

mod support;

use std::time::Duration;

use support::cluster::{TestCluster, admin_get, admin_post};
use support::history::{Writers, check_exactly_once};
use support::{get, metric, post};

const ELECTION: Duration = Duration::from_secs(20);
const CONVERGE: Duration = Duration::from_secs(60);

async fn wait_more_acked(writers: &Writers, cluster: &TestCluster, more: usize) {
    let target = writers.acked_count() + more;
    cluster
        .wait(
            &format!("{more} more acknowledged events"),
            Duration::from_secs(60),
            |_| {
                let done = writers.acked_count() >= target;
                async move { done.then_some(()) }
            },
        )
        .await;
}

/// Segments whose memberships change while the writers run: by a count that grows, and
/// by events within a window of time (time-dependent: refreshed as log time passes).
async fn define_segments(cluster: &TestCluster) {
    let leader = cluster.urls[&cluster.leader(ELECTION).await].clone();
    for (id, rule) in [
        ("steady", "orders_count >= 60"),
        (
            "busy",
            r#"event("Order Completed").within(2m).count() >= 100"#,
        ),
        ("both", r#"in_segment("steady") and in_segment("busy")"#),
    ] {
        let (code, body) = admin_post(
            &leader,
            "/v1/segments",
            &serde_json::json!({"id": id, "rule": rule}),
        )
        .await;
        assert_eq!(code, 201, "define segment {id}: {body}");
    }
}

/// Every live node converged: equal state hashes, every acknowledged event stored exactly
/// once, and equal derived state (every service at the feed head with equal hashes).
async fn check_all(cluster: &TestCluster, acked: &support::history::Acked) -> usize {
    let hash = cluster.converged_hash(CONVERGE).await;
    let services = cluster.converged_services_hash(CONVERGE).await;
    assert!(!services.is_empty());
    let mut checked = 0;
    for (id, url) in &cluster.urls {
        if cluster.nodes.contains_key(id) {
            checked = check_exactly_once(url, acked)
                .await
                .unwrap_or_else(|e| panic!("node {id}: {e}"));
        }
    }
    assert!(!hash.is_empty());
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_follower_kill_and_restart_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Ticks every second, so log time (and with it the time-dependent segment) moves on
    // through the test.
    let mut cluster = TestCluster::start_with_env(
        dir.path(),
        &["r1", "r2", "r3"],
        &[("TANDEM_CLUSTER__TICK_INTERVAL_MS", "1000")],
    )
    .await;
    define_segments(&cluster).await;
    let urls: Vec<String> = cluster.urls.values().cloned().collect();
    let writers = Writers::start(urls, 4, "kill");
    wait_more_acked(&writers, &cluster, 200).await;

    let leader = cluster.leader(ELECTION).await;
    cluster.kill9(leader);
    let new_leader = cluster.leader(ELECTION).await;
    assert_ne!(
        new_leader, leader,
        "a new leader is elected without operator action"
    );
    wait_more_acked(&writers, &cluster, 200).await;

    let follower = *cluster
        .nodes
        .keys()
        .find(|id| **id != new_leader)
        .expect("a follower");
    cluster.kill9(follower);
    let elected = get(&cluster.urls[&new_leader], "/health/leader").await;
    let elected_term = elected.body["raft"]["term"].as_u64().expect("term");
    cluster.restart(leader).await;
    // Its last vote, read back from its data directory, names itself: it must not claim to
    // lead (load balancers route writes by this) unless it won a newer term since.
    let claim = get(&cluster.urls[&leader], "/health/leader").await;
    if claim.status == 200 {
        let term = claim.body["raft"]["term"].as_u64().expect("term");
        assert!(
            term > elected_term,
            "the restarted ex-leader claims its old term's leadership: {}",
            claim.body
        );
    }
    wait_more_acked(&writers, &cluster, 200).await;
    cluster.restart(follower).await;
    wait_more_acked(&writers, &cluster, 100).await;

    let acked = writers.stop().await;
    let checked = check_all(&cluster, &acked).await;
    assert!(checked >= 700, "only {checked} acknowledged events checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_and_partitioned_nodes_do_not_stop_the_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = TestCluster::start(dir.path(), &["r1", "r2", "r3"]).await;
    let urls: Vec<String> = cluster.urls.values().cloned().collect();
    let writers = Writers::start(urls, 3, "grey");
    wait_more_acked(&writers, &cluster, 100).await;

    // Grey failure: the leader is alive but silent (SIGSTOP).
    let leader = cluster.leader(ELECTION).await;
    cluster.pause(leader, true);
    let others: Vec<u64> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .collect();
    cluster
        .wait("a new leader among the others", ELECTION, |c| {
            let url = c.urls[&others[0]].clone();
            async move {
                let reply = get(&url, "/health/ready").await;
                let new = reply.body["raft"]["leader"].as_u64()?;
                (new != leader).then_some(())
            }
        })
        .await;
    wait_more_acked(&writers, &cluster, 100).await;
    cluster.pause(leader, false);
    wait_more_acked(&writers, &cluster, 100).await;

    // Partition the current leader from both followers: the majority side elects a new
    // leader and keeps taking writes; the old leader acknowledges nothing on its own.
    let leader = cluster.leader(ELECTION).await;
    let followers: Vec<u64> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .collect();
    cluster.partition(leader, &followers).await;
    for follower in &followers {
        cluster.partition(*follower, &[leader]).await;
    }
    cluster
        .wait("the majority side elects a leader", ELECTION, |c| {
            let url = c.urls[&followers[0]].clone();
            async move {
                let reply = get(&url, "/health/ready").await;
                let new = reply.body["raft"]["leader"].as_u64()?;
                (new != leader && reply.status == 200).then_some(())
            }
        })
        .await;
    wait_more_acked(&writers, &cluster, 100).await;
    let isolated = post(
        &cluster.urls[&leader],
        "/v1/track",
        &serde_json::json!({"userId": "isolated", "event": "E", "messageId": "isolated-1"}),
    )
    .await;
    assert_ne!(
        isolated.status, 200,
        "an isolated old leader must not acknowledge: {}",
        isolated.body
    );
    for id in cluster.nodes.keys() {
        cluster.partition(*id, &[]).await;
    }
    wait_more_acked(&writers, &cluster, 100).await;

    let acked = writers.stop().await;
    check_all(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_whole_region_keeps_the_cluster_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = TestCluster::start(dir.path(), &["a", "a", "b", "b", "c"]).await;
    let urls: Vec<String> = cluster.urls.values().cloned().collect();
    let writers = Writers::start(urls, 3, "region");
    wait_more_acked(&writers, &cluster, 100).await;
    // Region "a" is nodes 1 and 2 — node 1 is the bootstrap leader, so this takes the
    // leader down too.
    cluster.kill9(1);
    cluster.kill9(2);
    cluster.leader(ELECTION).await;
    wait_more_acked(&writers, &cluster, 200).await;
    let acked = writers.stop().await;
    check_all(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_layouts_are_refused_and_reads_are_linearizable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = TestCluster::start(dir.path(), &["r1", "r2", "r3"]).await;
    let url = cluster.urls[&1].clone();
    // Moving the region-r3 voter into r1 would put 2 of 3 voters in one region.
    let (status, body) = admin_post(
        &url,
        "/v1/admin/cluster/remove",
        &serde_json::json!({"node_id": 3}),
    )
    .await;
    assert_eq!(
        status, 409,
        "removing to 2 voters in 2 regions is unsafe: {body}"
    );
    assert_eq!(body["code"], "unsafe_layout");
    assert!(
        body["message"].as_str().unwrap_or("").contains("quorum"),
        "{body}"
    );

    // Reads: linearizable by default, local on request with its lag.
    let write = post(
        &url,
        "/v1/track",
        &serde_json::json!({"userId": "reader", "event": "E", "messageId": "r-1"}),
    )
    .await;
    assert_eq!(write.status, 200);
    for (id, node_url) in &cluster.urls {
        let linear = get(node_url, "/v1/profiles/user_id:reader").await;
        assert_eq!(
            linear.status, 200,
            "node {id}: a linearizable read sees the write"
        );
        assert_eq!(linear.body["read"]["consistency"], "linearizable");
        let local = get(node_url, "/v1/profiles/user_id:reader?consistency=local").await;
        assert_eq!(local.body["read"]["consistency"], "local");
        assert!(local.body["read"]["lag_entries"].is_u64());
    }
    let (status, view) = admin_get(&url, "/v1/admin/cluster").await;
    assert_eq!(status, 200);
    assert_eq!(view["members"].as_array().map(Vec::len), Some(3));

    // A segment defined through a follower is forwarded to the leader, committed, and
    // every node evaluates it: the reader's profile enters it everywhere.
    let leader = cluster.leader(ELECTION).await;
    let follower = cluster
        .urls
        .keys()
        .copied()
        .find(|id| *id != leader)
        .expect("a follower");
    let (status, body) = admin_post(
        &cluster.urls[&follower],
        "/v1/segments",
        &serde_json::json!({"id": "readers", "rule": "event(\"E\").exists()"}),
    )
    .await;
    assert_eq!(status, 201, "create through follower {follower}: {body}");
    for (id, node_url) in &cluster.urls {
        let node_url = node_url.clone();
        cluster
            .wait(
                &format!("node {id} evaluates the segment"),
                CONVERGE,
                |_| {
                    let node_url = node_url.clone();
                    async move {
                        let reply = get(&node_url, "/v1/profiles/user_id:reader/segments").await;
                        let ids = reply.body["segments"].as_array()?.clone();
                        (ids.len() == 1 && ids[0]["id"] == "readers").then_some(())
                    }
                },
            )
            .await;
    }
}

/// A three-node cluster that snapshots every second, with writers running, whose leader has
/// written `events` more events and purged its log behind a snapshot of them: a node added
/// now must install that snapshot (with events and the services' state, not just the
/// bootstrap's). Returns the cluster, the running writers and the leader's URL.
async fn cluster_with_purged_log(
    dir: &std::path::Path,
    tag: &str,
    events: usize,
) -> (TestCluster, Writers, String) {
    let cluster = TestCluster::start_with_env(
        dir,
        &["r1", "r2", "r3"],
        &[
            ("TANDEM_CLUSTER__SNAPSHOT_INTERVAL_SECS", "1"),
            ("TANDEM_CLUSTER__LOG_KEEP_AFTER_SNAPSHOT", "0"),
        ],
    )
    .await;
    define_segments(&cluster).await;
    let urls: Vec<String> = cluster.urls.values().cloned().collect();
    let writers = Writers::start(urls, 3, tag);
    wait_more_acked(&writers, &cluster, events).await;
    let leader_url = cluster.urls[&cluster.leader(ELECTION).await].clone();
    let (_, status) = admin_get(&leader_url, "/v1/admin/status").await;
    let written = status["applied_index"].as_u64().expect("applied index");
    cluster
        .wait(
            "the leader purged its log behind a snapshot of the writes",
            Duration::from_secs(30),
            |_| {
                let url = leader_url.clone();
                async move {
                    let (_, status) = admin_get(&url, "/v1/admin/status").await;
                    let purged = status["raft"]["purged"].as_u64()?;
                    (purged >= written).then_some(())
                }
            },
        )
        .await;
    (cluster, writers, leader_url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_catches_up_from_a_snapshot_and_replaces_a_voter() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Snapshot often, so the log a newcomer would need is purged and it must install a
    // snapshot streamed from the leader.
    let (mut cluster, writers, leader_url) = cluster_with_purged_log(dir.path(), "snap", 600).await;

    let new_url = cluster.spawn_joining(4, "r3");
    let (code, body) = admin_post(
        &leader_url,
        "/v1/admin/cluster/learners",
        &serde_json::json!({"node_id": 4, "url": new_url, "peer_url": cluster.peer_urls[&4], "region": "r3"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    cluster.wait_ready(4).await;
    let (code, body) = admin_post(
        &leader_url,
        "/v1/admin/cluster/replace",
        &serde_json::json!({"old": 3, "new": 4}),
    )
    .await;
    assert_eq!(code, 200, "replace 3 by 4: {body}");
    let (_, view) = admin_get(&leader_url, "/v1/admin/cluster").await;
    let ids: Vec<u64> = view["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["id"].as_u64())
        .collect();
    assert_eq!(ids, [1, 2, 4], "node 3 left, node 4 votes: {view}");
    cluster.kill9(3);
    wait_more_acked(&writers, &cluster, 100).await;

    let (_, new_status) = admin_get(&new_url, "/v1/admin/status").await;
    assert!(
        new_status["raft"]["snapshot"].is_u64(),
        "node 4 installed a snapshot: {new_status}"
    );
    let acked = writers.stop().await;
    check_all(&cluster, &acked).await;

    // The services' state came in the snapshot too: node 4's computed-traits service
    // started from the snapshot's cursor, not from an empty state, and ends exactly where
    // node 1's does.
    let traits = traits_status(&new_url).await;
    assert!(
        traits["imported_cursor"].as_u64().is_some_and(|c| c > 0),
        "node 4 imported the traits service's state: {traits}"
    );
    let old_url = cluster.urls[&1].clone();
    for url in [&old_url, &new_url] {
        cluster
            .wait("the traits service caught up", CONVERGE, |_| {
                let url = url.clone();
                async move {
                    let status = traits_status(&url).await;
                    let cursor = status["cursor"].as_u64()?;
                    (cursor >= status["feed_head"].as_u64()?).then_some(())
                }
            })
            .await;
    }
    assert_eq!(
        traits_status(&new_url).await["cursor"],
        traits_status(&old_url).await["cursor"]
    );
    for (user, ids) in &acked {
        let path = format!("/v1/profiles/user_id:{user}?consistency=local");
        let (old, new) = (get(&old_url, &path).await, get(&new_url, &path).await);
        let traits = &new.body["computed_traits"];
        assert_eq!(
            traits, &old.body["computed_traits"],
            "{user}: node 4's computed traits equal node 1's"
        );
        assert!(
            traits["orders_count"]
                .as_u64()
                .is_some_and(|n| n >= ids.len() as u64),
            "{user}: every acknowledged order is counted: {traits}"
        );
    }
}

/// The computed-traits service's status on the node at `url`.
async fn traits_status(url: &str) -> serde_json::Value {
    let (_, body) = admin_get(url, "/v1/admin/services").await;
    body["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == "traits"))
        .cloned()
        .unwrap_or_else(|| panic!("no traits service in {body}"))
}

/// The places in a snapshot install where a crash must leave a node that recovers by
/// itself (see `src/crash.rs`).
const INSTALL_CRASH_POINTS: [&str; 5] = [
    "snapshot-install:marked",
    "snapshot-install:store-cleared",
    "snapshot-install:store-partial",
    "snapshot-install:store-imported",
    "snapshot-install:log-installed",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_snapshot_install_is_completed_at_restart() {
    let seed = std::env::var("TANDEM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let point = INSTALL_CRASH_POINTS[(seed % INSTALL_CRASH_POINTS.len() as u64) as usize];
    println!("seed {seed}: crash at {point} (replay with TANDEM_TEST_SEED={seed})");
    let dir = tempfile::tempdir().expect("tempdir");
    // Enough events (each at least one record, its profile index entry; the dedup keys
    // are no longer in the state) that the snapshot's state spans more than one import
    // batch of 10,000 records, so a crash "partway" lands between two of them.
    let (mut cluster, writers, leader_url) =
        cluster_with_purged_log(dir.path(), "crash-install", 12_000).await;
    let new_url = cluster.spawn_joining_with_env(4, "r3", &[("TANDEM_CRASH_AT", point)]);
    let (code, body) = admin_post(
        &leader_url,
        "/v1/admin/cluster/learners",
        &serde_json::json!({"node_id": 4, "url": new_url, "peer_url": cluster.peer_urls[&4], "region": "r3"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !cluster.has_exited(4) {
        assert!(
            std::time::Instant::now() < deadline,
            "seed {seed}: node 4 did not crash at {point}; stderr:\n{}",
            cluster.stderr(4)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cluster
            .stderr(4)
            .contains(&format!("crashing at crash point {point}")),
        "seed {seed}: node 4 died, but not at {point}:\n{}",
        cluster.stderr(4)
    );

    // Restarted without the crash point: it completes the install and catches up.
    cluster.restart(4).await;
    assert!(
        cluster
            .stderr(4)
            .contains("snapshot install was interrupted"),
        "seed {seed}: node 4 noticed the interrupted install:\n{}",
        cluster.stderr(4)
    );
    let acked = writers.stop().await;
    cluster.converged_hash(CONVERGE).await;
    check_all(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_wide_events_counter_is_equal_on_every_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = TestCluster::start(dir.path(), &["r1", "r2", "r3"]).await;
    let leader = cluster.leader(ELECTION).await;
    // Writes through every node: followers forward theirs to the leader.
    const PER_NODE: usize = 40;
    for (id, url) in &cluster.urls {
        let batch: Vec<_> = (0..PER_NODE)
            .map(|i| serde_json::json!({"type": "track", "userId": format!("u{i}"), "event": "E", "messageId": format!("n{id}-{i}")}))
            .collect();
        let reply = post(url, "/v1/batch", &serde_json::json!({ "batch": batch })).await;
        assert_eq!(reply.status, 200, "node {id}: {}", reply.body);
    }
    let total = (PER_NODE * cluster.urls.len()) as f64;
    cluster
        .wait(
            "tandem_events_stored_total equal on every node",
            CONVERGE,
            |cluster| {
                let urls: Vec<String> = cluster.urls.values().cloned().collect();
                async move {
                    for url in &urls {
                        if metric(url, "tandem_events_stored_total").await != Some(total) {
                            return None;
                        }
                    }
                    Some(())
                }
            },
        )
        .await;
    let leader_url = &cluster.urls[&leader];
    assert_eq!(metric(leader_url, "tandem_raft_is_leader").await, Some(1.0));
    for id in cluster.urls.keys().filter(|id| **id != leader) {
        let matched = format!("tandem_raft_follower_matched_index{{follower=\"{id}\"}}");
        let index = metric(leader_url, &matched).await;
        assert!(
            index.is_some_and(|i| i > 0.0),
            "the leader reports follower {id}'s progress: {index:?}"
        );
    }
}
