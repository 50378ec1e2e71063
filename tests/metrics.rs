//! `GET /metrics` against a real node: the exposition parses, names follow Prometheus
//! conventions, and the counters move by exactly what was sent.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use support::*;

/// One scrape: samples by `name{labels}` (labels as written), plus each family's type.
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    /// Parses the text exposition minimally: `# TYPE name kind` and `name{labels} value`.
    fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name.to_owned(), kind.to_owned());
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let (series, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("sample line without a value: {line:?}"));
                let value: f64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("sample value is not a number: {line:?}"));
                samples.insert(series.to_owned(), value);
            }
        }
        Scrape { samples, types }
    }

    /// The value of one series, 0 when absent (a counter not yet touched).
    fn value(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// Series whose name is `name` (with any labels).
    fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a String, &'a f64)> + 'a {
        self.samples.iter().filter(move |(series, _)| {
            series.as_str() == name || series.starts_with(&format!("{name}{{"))
        })
    }
}

async fn scrape(url: &str) -> Scrape {
    let response = client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    Scrape::parse(&response.text().await.expect("metrics body"))
}

fn batch(tag: &str, count: usize) -> serde_json::Value {
    let events: Vec<_> = (0..count)
        .map(|i| {
            json!({"type": "track", "userId": format!("{tag}-{}", i % 7), "event": "E",
                   "messageId": format!("{tag}-{i}")})
        })
        .collect();
    json!({ "batch": events })
}

#[tokio::test]
async fn counters_move_by_what_was_sent_and_names_follow_conventions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]);
    let before = scrape(&node.url).await;
    let accepted = r#"tandem_ingest_events_total{source="default",outcome="accepted"}"#;
    let duplicate = r#"tandem_ingest_events_total{source="default",outcome="duplicate"}"#;
    let rejected = r#"tandem_ingest_events_total{source="default",outcome="rejected"}"#;

    const N: usize = 120;
    for tag in ["a", "b"] {
        let reply = post(&node.url, "/v1/batch", &batch(tag, N / 2)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // A resend is all duplicates; an invalid item is rejected.
    let reply = post(&node.url, "/v1/batch", &batch("a", N / 2)).await;
    assert_eq!(reply.body["duplicates"], N / 2);
    let mut bad = batch("c", 1);
    bad["batch"]
        .as_array_mut()
        .expect("batch array")
        .push(json!({"type": "no-such-type"}));
    assert_eq!(post(&node.url, "/v1/batch", &bad).await.status, 200);

    let stored_before = before.value("tandem_events_stored_total");
    let after = wait_for("the stored-events counter", Duration::from_secs(10), || {
        let url = node.url.clone();
        async move {
            let after = scrape(&url).await;
            let moved = after.value("tandem_events_stored_total") - stored_before;
            (moved >= (N + 1) as f64).then_some(after)
        }
    })
    .await;
    let moved = |series: &str| after.value(series) - before.value(series);
    assert_eq!(moved("tandem_events_stored_total"), (N + 1) as f64);
    assert_eq!(moved(accepted), (N + 1) as f64);
    assert_eq!(moved(duplicate), (N / 2) as f64);
    assert_eq!(moved(rejected), 1.0);

    // The /v1/batch latency histogram: buckets up to +Inf, a sum and a count of 4.
    let endpoint = r#"endpoint="/v1/batch""#;
    let buckets: Vec<_> = after
        .series("tandem_http_request_duration_seconds_bucket")
        .filter(|(s, _)| s.contains(endpoint))
        .collect();
    assert!(buckets.len() > 5, "buckets for /v1/batch: {buckets:?}");
    let inf = buckets
        .iter()
        .find(|(s, _)| s.contains(r#"le="+Inf""#))
        .expect("a +Inf bucket");
    assert_eq!(*inf.1, 4.0);
    let count = format!("tandem_http_request_duration_seconds_count{{{endpoint}}}");
    let sum = format!("tandem_http_request_duration_seconds_sum{{{endpoint}}}");
    assert_eq!(after.value(&count), 4.0);
    assert!(after.value(&sum) > 0.0);
    let ok = format!(r#"tandem_http_requests_total{{{endpoint},method="POST",status="2xx"}}"#);
    assert_eq!(moved(&ok), 4.0);
    assert!(after.value("tandem_commit_group_events_count") >= 3.0);
    assert_eq!(after.value("tandem_raft_is_leader"), 1.0);
    assert!(after.value("tandem_process_resident_memory_bytes") > 0.0);
    assert!(after.value("tandem_process_open_fds") > 0.0);
    assert!(after.value("tandem_process_cpu_seconds_total") > 0.0);
    assert!(after.value("tandem_disk_free_bytes") > 0.0);
    assert!(
        after.value("tandem_log_fsync_duration_seconds_count") >= 1.0,
        "every commit fsyncs the log"
    );
    assert!(after.value(r#"tandem_disk_usage_bytes{part="log"}"#) > 0.0);

    // A profile read in the default (linearizable) mode is timed stage by stage; a `local`
    // read confirms nothing.
    let stage = |s: &Scrape, stage: &str| {
        s.value(&format!(
            r#"tandem_read_stage_duration_seconds_count{{stage="{stage}"}}"#
        ))
    };
    let read = get(&node.url, "/v1/profiles/user_id:a-1").await;
    assert_eq!(read.status, 200, "{}", read.body);
    let local = get(&node.url, "/v1/profiles/user_id:a-1?consistency=local").await;
    assert_eq!(local.status, 200, "{}", local.body);
    let read_after = scrape(&node.url).await;
    assert_eq!(
        stage(&read_after, "confirm") - stage(&after, "confirm"),
        1.0
    );
    assert_eq!(stage(&read_after, "queued") - stage(&after, "queued"), 2.0);
    assert_eq!(stage(&read_after, "lookup") - stage(&after, "lookup"), 2.0);

    // Conventions: every family is prefixed, counters end in _total, a unit ends the
    // name of every histogram except the dimensionless group-commit sizes.
    for (name, kind) in &after.types {
        assert!(
            name.starts_with("tandem_"),
            "{name} lacks the tandem_ prefix"
        );
        if kind == "counter" {
            assert!(
                after.series(&format!("{name}_total")).next().is_some() || name.ends_with("_total"),
                "counter {name} has no _total series"
            );
        }
        if kind == "histogram" && name != "tandem_commit_group_events" {
            assert!(name.ends_with("_seconds"), "histogram {name} has no unit");
        }
    }
    for series in after.samples.keys() {
        let name = series.split('{').next().unwrap_or(series);
        let family = after.types.keys().any(|f| name.starts_with(f.as_str()));
        assert!(family, "{series} has no # TYPE");
    }
}

#[tokio::test]
async fn request_bytes_refusals_and_service_batches_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A quota of one event per second, burst 20: the second large batch is refused 429.
    let node = NodeProcess::start(
        dir.path(),
        &[
            ("TANDEM_QUOTAS__EVENTS_PER_SEC", "1"),
            ("TANDEM_QUOTAS__BURST_EVENTS", "20"),
            ("TANDEM_LIMITS__BATCH_EVENTS_MAX", "20"),
        ],
    );
    let before = scrape(&node.url).await;
    let bytes = r#"tandem_http_request_bytes_total{endpoint="/v1/batch"}"#;
    let refused = r#"tandem_http_refusals_total{endpoint="/v1/batch",status="429",reason="source_quota_exceeded"}"#;

    let body = batch("q", 20);
    let sent = body.to_string().len() as f64;
    assert_eq!(post(&node.url, "/v1/batch", &body).await.status, 200);
    let reply = post(&node.url, "/v1/batch", &batch("r", 20)).await;
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert_eq!(reply.code(), "source_quota_exceeded");

    let after = wait_for("a service batch measured", Duration::from_secs(20), || {
        let url = node.url.clone();
        async move {
            let after = scrape(&url).await;
            let batches =
                after.value(r#"tandem_service_batch_duration_seconds_count{service="traits"}"#);
            (batches >= 1.0).then_some(after)
        }
    })
    .await;
    // The quota is checked before the body is read in full only when Content-Length
    // says it is over the limit; here both bodies were read.
    let read = after.value(bytes) - before.value(bytes);
    assert!(read >= sent, "request bytes {read} < one body of {sent}");
    assert!(
        read <= 2.0 * sent + 100.0,
        "request bytes {read} > two bodies of ~{sent}"
    );
    assert_eq!(after.value(refused) - before.value(refused), 1.0);
    // Health answers are not refusals, and a node that serves nothing refused nothing else.
    let other: f64 = after
        .series("tandem_http_refusals_total")
        .filter(|(s, _)| !s.contains("source_quota_exceeded"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(other, 0.0);
    for service in ["traits", "segments", "recommendations"] {
        let sum = format!(r#"tandem_service_batch_duration_seconds_sum{{service="{service}"}}"#);
        assert!(after.samples.contains_key(&sum), "{sum} missing");
        // Whether a worker stepped aside for ingest depends on the machine's load; that
        // the counter is there does not.
        let yielded = format!(r#"tandem_service_yielded_seconds_total{{service="{service}"}}"#);
        assert!(after.samples.contains_key(&yielded), "{yielded} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_builds_installs_and_follower_heartbeat_age_are_measured() {
    use support::cluster::{TestCluster, admin_get, admin_post};
    let dir = tempfile::tempdir().expect("tempdir");
    // One node that snapshots every second and keeps no log behind its snapshots: a node
    // added later must install a snapshot.
    let mut cluster = TestCluster::start_with_env(
        dir.path(),
        &["r1"],
        &[
            ("TANDEM_CLUSTER__SNAPSHOT_INTERVAL_SECS", "1"),
            ("TANDEM_CLUSTER__LOG_KEEP_AFTER_SNAPSHOT", "0"),
        ],
    )
    .await;
    let first = cluster.urls[&1].clone();
    for tag in ["s1", "s2", "s3"] {
        assert_eq!(post(&first, "/v1/batch", &batch(tag, 50)).await.status, 200);
    }
    // The writes' last log index (one node: every entry in its log is committed; writes
    // are answered at commit, so `last_applied` may still be short of it).
    let (_, status) = admin_get(&first, "/v1/admin/status").await;
    let written = status["raft"]["last_log_index"]
        .as_u64()
        .expect("last log index");
    cluster
        .wait(
            "a snapshot of the writes, log purged",
            Duration::from_secs(30),
            |_| {
                let url = first.clone();
                async move {
                    let (_, status) = admin_get(&url, "/v1/admin/status").await;
                    (status["raft"]["purged"].as_u64()? >= written).then_some(())
                }
            },
        )
        .await;
    let built = scrape(&first).await;
    assert!(built.value(r#"tandem_snapshot_duration_seconds_count{kind="build"}"#) >= 1.0);
    assert!(built.value(r#"tandem_snapshot_bytes_total{kind="build"}"#) > 0.0);
    assert_eq!(
        built.value(r#"tandem_snapshot_failures_total{kind="build"}"#),
        0.0
    );
    assert_eq!(
        built.value(r#"tandem_snapshot_duration_seconds_count{kind="install"}"#),
        0.0,
        "nothing installed on the node that built it"
    );

    let url = cluster.spawn_joining(2, "r2");
    let (code, body) = admin_post(
        &first,
        "/v1/admin/cluster/learners",
        &json!({"node_id": 2, "url": url, "peer_url": cluster.peer_urls[&2], "region": "r2"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let installed = wait_for(
        "the snapshot installed on node 2",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let scrape = scrape(&url).await;
                let count =
                    scrape.value(r#"tandem_snapshot_duration_seconds_count{kind="install"}"#);
                (count >= 1.0).then_some(scrape)
            }
        },
    )
    .await;
    assert!(installed.value(r#"tandem_snapshot_bytes_total{kind="install"}"#) > 0.0);

    // The leader measures how long ago each follower acknowledged it; heartbeats every
    // 30 ms keep it small.
    let age = r#"tandem_raft_follower_heartbeat_age_seconds{follower="2"}"#;
    let leader = wait_for(
        "node 2's heartbeat age on the leader",
        Duration::from_secs(10),
        || {
            let first = first.clone();
            async move {
                let scrape = scrape(&first).await;
                scrape.samples.contains_key(age).then_some(scrape)
            }
        },
    )
    .await;
    assert!(leader.value(age) < 5.0, "age {}", leader.value(age));
    assert!(
        scrape(&url)
            .await
            .series("tandem_raft_follower_heartbeat_age_seconds")
            .next()
            .is_none(),
        "only the leader reports followers"
    );
}

/// The count of one write stage's histogram.
fn stage_count(scrape: &Scrape, stage: &str) -> f64 {
    scrape.value(&format!(
        r#"tandem_write_stage_duration_seconds_count{{stage="{stage}"}}"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_is_timed_stage_by_stage_on_follower_and_leader() {
    use support::cluster::TestCluster;
    const REQUESTS: usize = 12;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = TestCluster::start(dir.path(), &["r1", "r2", "r3"]).await;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let follower = *cluster
        .urls
        .keys()
        .find(|&&id| id != leader)
        .expect("a follower");
    let (leader_url, follower_url) = (&cluster.urls[&leader], &cluster.urls[&follower]);
    let (leader_before, follower_before) = (scrape(leader_url).await, scrape(follower_url).await);

    let bodies: Vec<_> = (0..REQUESTS)
        .map(|i| batch(&format!("fw{i}"), 20))
        .collect();
    let replies =
        futures::future::join_all(bodies.iter().map(|b| post(follower_url, "/v1/batch", b))).await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    let delta =
        |after: &Scrape, before: &Scrape, series: &str| after.value(series) - before.value(series);
    // Writes are answered at commit, so the leader may apply the last entry just after the
    // replies: scrape it once it has (the assertions below still check every series).
    let applied = "tandem_apply_duration_seconds_count";
    let leader_after = wait_for("the leader to apply", Duration::from_secs(10), || {
        let before = &leader_before;
        async move {
            let after = scrape(leader_url).await;
            (delta(&after, before, applied) >= 1.0).then_some(after)
        }
    })
    .await;
    let follower_after = scrape(follower_url).await;
    let stage = |after: &Scrape, before: &Scrape, name: &str| {
        stage_count(after, name) - stage_count(before, name)
    };

    // The follower queued every request once and forwarded them in at least one group;
    // it never screened or proposed anything itself.
    assert_eq!(
        stage(&follower_after, &follower_before, "queued"),
        REQUESTS as f64
    );
    let forwards = stage(&follower_after, &follower_before, "forward");
    assert!(
        (1.0..=REQUESTS as f64).contains(&forwards),
        "{forwards} forwards"
    );
    for own in ["screen", "raft"] {
        assert_eq!(
            stage(&follower_after, &follower_before, own),
            0.0,
            "{own} on a follower"
        );
    }
    // The leader queued each forwarded group, screened and proposed what it grouped, and
    // replicated it; the stages' sums are time actually spent.
    assert!(stage(&leader_after, &leader_before, "queued") >= forwards);
    for own in ["screen", "raft"] {
        assert!(
            stage(&leader_after, &leader_before, own) >= 1.0,
            "{own} on the leader"
        );
    }
    assert_eq!(stage(&leader_after, &leader_before, "forward"), 0.0);
    let raft_seconds = delta(
        &leader_after,
        &leader_before,
        r#"tandem_write_stage_duration_seconds_sum{stage="raft"}"#,
    );
    assert!(raft_seconds > 0.0, "raft stage sum {raft_seconds}");
    assert!(
        delta(
            &leader_after,
            &leader_before,
            "tandem_replicate_duration_seconds_count"
        ) >= 1.0
    );
    assert!(
        delta(
            &leader_after,
            &leader_before,
            "tandem_apply_duration_seconds_count"
        ) >= 1.0
    );
    // Only a leader replicates; the follower's own replicate histogram stays empty.
    assert_eq!(
        delta(
            &follower_after,
            &follower_before,
            "tandem_replicate_duration_seconds_count"
        ),
        0.0
    );
    assert_eq!(
        leader_after.types["tandem_write_stage_duration_seconds"],
        "histogram"
    );
}
