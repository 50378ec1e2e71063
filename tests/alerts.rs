//! The built-in alert evaluator on a real node, with real receivers: a real Alertmanager
//! (Debian's `prometheus-alertmanager`) and a webhook server in the test.
//!
//! Windows are scaled down through `[alerts]` (1 s buckets instead of 60 s) so the
//! scenarios take seconds; the rule logic is the production one. Tests that need
//! Alertmanager skip with a printed reason when it is missing, and fail under `CI`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::alerting::{Alertmanager, Received, free_port, require_tool, webhook};
use support::*;

/// Writes a node config with `alerts` as its `[alerts]` section.
fn config_file(dir: &Path, alerts: &str) -> PathBuf {
    let path = dir.join("tandem.toml");
    std::fs::write(&path, alerts).expect("write config");
    path
}

/// Posts small batches at a steady rate until `stop` is set; returns events acknowledged.
fn steady_load(
    url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        use std::sync::atomic::Ordering;
        let mut sent = 0_u64;
        let mut ticker = tokio::time::interval(Duration::from_millis(50));
        let mut n = 0_u64;
        while !stop.load(Ordering::Relaxed) {
            ticker.tick().await;
            let events: Vec<Value> = (0..10)
                .map(|_| {
                    n += 1;
                    json!({"type": "track", "userId": format!("u{}", n % 50), "event": "Product Viewed",
                           "messageId": format!("steady-{n}")})
                })
                .collect();
            let reply = post(&url, "/v1/batch", &json!({ "batch": events })).await;
            if reply.status == 200 {
                sent += 10;
            }
        }
        sent
    })
}

async fn alerts_view(url: &str) -> Value {
    let reply = get(url, "/v1/admin/alerts").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

fn names_in(view: &Value, state: &str) -> Vec<String> {
    view["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == state)
        .filter_map(|a| a["name"].as_str().map(str::to_owned))
        .collect()
}

/// Polls the node's alerts for `stretch`: nothing may fire, an ingestion alert may be
/// pending at no more than one poll in twenty, and the detector must be judging (not
/// warming up) at nearly every poll.
async fn assert_quiet_during(url: &str, stretch: Duration, every: Duration) {
    let until = Instant::now() + stretch;
    let (mut polls, mut judged, mut pending) = (0_u32, 0_u32, 0_u32);
    let (mut low, mut high) = (f64::MAX, 0.0_f64);
    while Instant::now() < until {
        let view = alerts_view(url).await;
        assert!(
            names_in(&view, "firing").is_empty(),
            "steady load fired: {view}"
        );
        if names_in(&view, "pending")
            .iter()
            .any(|n| n.starts_with("TandemIngestion"))
        {
            pending += 1;
        }
        if view["ingest_rate"]["state"] == "judged" {
            judged += 1;
            let ratio = view["ingest_rate"]["current_per_sec"]
                .as_f64()
                .expect("current")
                / view["ingest_rate"]["baseline_per_sec"]
                    .as_f64()
                    .expect("baseline");
            low = low.min(ratio);
            high = high.max(ratio);
        }
        polls += 1;
        tokio::time::sleep(every).await;
    }
    println!(
        "steady stretch of {stretch:?}: {polls} polls, {judged} judged, {pending} with an \
         ingestion alert pending, current/baseline between {low:.2} and {high:.2}"
    );
    // A stall of the load generator on a busy machine may dip a short window for a moment
    // (pending, never firing); the detector must not see the steady load as a drop.
    assert!(
        pending * 20 <= polls,
        "an ingestion alert was pending at {pending} of {polls} polls"
    );
    assert!(polls >= 10, "only {polls} polls");
    assert!(
        judged * 10 >= polls * 9,
        "the detector judged only {judged} of {polls} polls of the steady stretch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_steady_load_fires_the_drop_alert_to_alertmanager_and_a_webhook() {
    let Some(binary) = require_tool(&["prometheus-alertmanager", "alertmanager"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let am = Alertmanager::start(&binary, dir.path()).await;
    let (hook_url, received) = webhook(Duration::ZERO).await;
    // 1 s buckets: a 3 s current window against the median of the 10 s before it.
    let config = config_file(
        dir.path(),
        &format!(
            r#"
[alerts]
evaluation_interval_ms = 250
repeat_interval_ms = 600000
[[alerts.receivers]]
kind = "alertmanager"
url = "{}"
[[alerts.receivers]]
kind = "webhook"
url = "{hook_url}"
[alerts.ingest_rate]
bucket_ms = 1000
window_buckets = 3
baseline_buckets = 10
baseline_buckets_min = 8
baseline_events_per_sec_min = 20.0
[alerts.rules.ingestion_drop]
for_ms = 2000
"#,
            am.url
        ),
    );
    let config = config.to_str().expect("path");
    let node = NodeProcess::start_with_args(
        &dir.path().join("node"),
        &["--config", config],
        &[],
        true,
        true,
    );

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(node.url.clone(), Arc::clone(&stop));
    // Warm-up (the baseline needs 8 s of stored history), then a steady stretch in which
    // nothing may fire and no ingestion alert may even be pending.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_quiet_during(
        &node.url,
        Duration::from_secs(15),
        Duration::from_millis(250),
    )
    .await;
    assert!(received.lock().expect("received").is_empty());

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let stopped = Instant::now();
    let sent = load.await.expect("load task");
    assert!(sent > 2_000, "the load sent only {sent} events");

    // The webhook hears the firing drop alert.
    let webhook_seen = wait_for(
        "the webhook to receive TandemIngestionDrop",
        Duration::from_secs(90),
        || {
            let received = Arc::clone(&received);
            async move {
                let received = received.lock().expect("received");
                received
                    .iter()
                    .find(|(_, body)| {
                        body["alert"]["name"] == "TandemIngestionDrop" && body["status"] == "firing"
                    })
                    .map(|(at, body)| (*at, body.clone()))
            }
        },
    )
    .await;
    let (at, body) = webhook_seen;
    println!(
        "webhook received the drop alert {:.1} s after the load stopped",
        (at - stopped).as_secs_f64()
    );
    assert_eq!(body["alert"]["scope"], "cluster");
    assert_eq!(body["alert"]["severity"], "critical");
    assert_eq!(body["alert"]["state"], "firing");
    assert!(
        body["alert"]["annotations"]["runbook"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    assert!(body["startsAt"].as_str().is_some_and(|s| s.ends_with('Z')));

    // So does the real Alertmanager, through its v2 API.
    let am_alert = wait_for(
        "Alertmanager to hold TandemIngestionDrop",
        Duration::from_secs(90),
        || {
            let am = &am;
            async move {
                am.alerts()
                    .await
                    .into_iter()
                    .find(|a| a["labels"]["alertname"] == "TandemIngestionDrop")
            }
        },
    )
    .await;
    println!(
        "alertmanager held the drop alert {:.1} s after the load stopped",
        stopped.elapsed().as_secs_f64()
    );
    assert!(stopped.elapsed() < Duration::from_secs(90));
    assert_eq!(am_alert["labels"]["severity"], "critical");
    assert_eq!(am_alert["status"]["state"], "active");
    assert!(
        am_alert["generatorURL"]
            .as_str()
            .is_some_and(|u| u.ends_with("/v1/admin/alerts")),
        "{am_alert}"
    );

    // The node's own view has it firing, in the documented shape.
    let view = alerts_view(&node.url).await;
    let alert = view["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .find(|a| a["name"] == "TandemIngestionDrop")
        .expect("the drop alert in the node's view")
        .clone();
    for field in [
        "name",
        "state",
        "scope",
        "severity",
        "labels",
        "annotations",
        "active_since",
        "fired_at",
        "value",
    ] {
        assert!(alert.get(field).is_some(), "missing {field} in {alert}");
    }
    for field in ["summary", "description", "runbook"] {
        assert!(
            alert["annotations"][field].is_string(),
            "missing annotation {field}"
        );
    }
    assert_eq!(alert["state"], "firing");
    assert!(view["node"].is_u64());
    assert!(view["history"].is_array());

    // Firing counts in /metrics, and the notifications were counted as sent.
    let metrics = client()
        .get(format!("{}/metrics", node.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"tandem_alerts_firing{alertname="TandemIngestionDrop"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"tandem_alert_notifications_total{receiver="webhook-1",outcome="sent"}"#)
    );

    // Load resumes: the alert resolves, reaches the webhook as resolved and the history.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(node.url.clone(), Arc::clone(&stop));
    wait_for(
        "the drop alert to resolve at the webhook",
        Duration::from_secs(60),
        || {
            let received = Arc::clone(&received);
            async move {
                let received = received.lock().expect("received");
                received
                    .iter()
                    .any(|(_, b)| {
                        b["alert"]["name"] == "TandemIngestionDrop" && b["status"] == "resolved"
                    })
                    .then_some(())
            }
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.expect("load");
    let view = alerts_view(&node.url).await;
    let resolved = view["history"]
        .as_array()
        .expect("history")
        .iter()
        .find(|a| a["name"] == "TandemIngestionDrop")
        .expect("resolved alert in the history")
        .clone();
    assert_eq!(resolved["state"], "resolved");
    assert!(resolved["resolved_at"].is_string());
    let firing_notifications = received
        .lock()
        .expect("received")
        .iter()
        .filter(|(_, b)| b["alert"]["name"] == "TandemIngestionDrop" && b["status"] == "firing")
        .count();
    assert_eq!(
        firing_notifications, 1,
        "one firing notification within the repeat interval"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_and_a_slow_receiver_never_slow_ingestion_and_their_queues_stay_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dead_port = free_port();
    let (slow_url, slow_received) = webhook(Duration::from_secs(30)).await;
    // Client errors over 0% fire at once and repeat every evaluation: a flood of
    // notifications into receivers that cannot take them.
    let config = config_file(
        dir.path(),
        &format!(
            r#"
[alerts]
evaluation_interval_ms = 200
repeat_interval_ms = 200
[[alerts.receivers]]
kind = "webhook"
url = "http://127.0.0.1:{dead_port}/hook"
[[alerts.receivers]]
kind = "webhook"
url = "{slow_url}"
[alerts.delivery]
queue_max = 4
attempt_timeout_ms = 300
attempts_max = 4
backoff_ms = 100
backoff_max_ms = 400
[alerts.rules.client_errors]
for_ms = 0
threshold = 0.0
"#
        ),
    );
    let config = config.to_str().expect("path");
    let node = NodeProcess::start_with_args(
        &dir.path().join("node"),
        &["--config", config],
        &[],
        true,
        true,
    );
    // 4xx answers: profiles that do not exist.
    for i in 0..30 {
        let reply = get(&node.url, &format!("/v1/profiles/user_id:nobody-{i}")).await;
        assert_eq!(reply.status, 404);
    }
    wait_for(
        "the client-error alert to fire",
        Duration::from_secs(20),
        || {
            let url = node.url.clone();
            async move {
                names_in(&alerts_view(&url).await, "firing")
                    .contains(&"TandemClientErrors".to_owned())
                    .then_some(())
            }
        },
    )
    .await;

    // Ingestion while both receivers are stuck: every request answers promptly.
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        let started = Instant::now();
        let reply = post(
            &node.url,
            "/v1/track",
            &json!({"userId": "u", "event": "E", "messageId": format!("m-{i}")}),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("slowest of 40 ingest requests with a dead and a slow receiver: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "ingestion slowed to {slowest:?}"
    );

    // Queues stayed bounded, the oldest were dropped and counted; the dead receiver's
    // notifications failed after their retries.
    let view = alerts_view(&node.url).await;
    for (receiver, queued) in view["queued"].as_object().expect("queued") {
        assert!(
            queued.as_u64().expect("count") <= 4,
            "{receiver} queue: {queued}"
        );
    }
    let scrape = || async {
        client()
            .get(format!("{}/metrics", node.url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let metrics = wait_for(
        "a failed notification to the dead receiver",
        Duration::from_secs(20),
        || async {
            let text = scrape().await;
            (value(
                &text,
                r#"tandem_alert_notifications_total{receiver="webhook-0",outcome="failed"}"#,
            ) >= 1.0)
                .then_some(text)
        },
    )
    .await;
    assert!(
        value(
            &metrics,
            r#"tandem_alert_notifications_total{receiver="webhook-0",outcome="dropped"}"#
        ) >= 1.0
            || value(
                &metrics,
                r#"tandem_alert_notifications_total{receiver="webhook-1",outcome="dropped"}"#
            ) >= 1.0,
        "nothing was dropped from a full queue:\n{metrics}"
    );

    // The slow receiver saw retries of its first notification, spaced by a growing backoff
    // (attempts time out at 300 ms; waits 100, 200, 400 ms).
    let attempts = wait_for(
        "four attempts at the slow receiver",
        Duration::from_secs(20),
        || {
            let received = Arc::clone(&slow_received);
            async move {
                let received = received.lock().expect("received");
                (received.len() >= 4)
                    .then(|| received.iter().map(|(at, _)| *at).collect::<Vec<_>>())
            }
        },
    )
    .await;
    let gaps: Vec<Duration> = attempts.windows(2).take(3).map(|w| w[1] - w[0]).collect();
    println!("gaps between attempts at the slow receiver: {gaps:?}");
    for (gap, wait_ms) in gaps.iter().zip([100_u64, 200, 400]) {
        let least = Duration::from_millis(300 + wait_ms);
        assert!(
            *gap >= least - Duration::from_millis(20),
            "gap {gap:?} shorter than {least:?}"
        );
        assert!(
            *gap < least + Duration::from_millis(700),
            "gap {gap:?} far longer than {least:?}"
        );
    }
}

#[tokio::test]
async fn the_alerts_view_needs_a_read_or_admin_key_and_unknown_rules_stop_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(&dir.path().join("node"), &[]);
    // (Which alerts it holds depends on the machine — a nearly full disk is one.)
    let view = alerts_view(&node.url).await;
    assert!(
        view["alerts"].is_array() && view["history"].is_array(),
        "{view}"
    );
    assert_eq!(view["node"], 1);
    let with_write_key = send(
        client()
            .get(format!("{}/v1/admin/alerts", node.url))
            .basic_auth(WRITE_KEY, Some("")),
    )
    .await;
    assert_eq!(with_write_key.status, 403);
    let without = send(client().get(format!("{}/v1/admin/alerts", node.url))).await;
    assert_eq!(without.status, 401);
    drop(node);

    let (code, stderr) = run_node_expecting_exit(
        dir.path(),
        &dir.path().join("other"),
        &[("TANDEM_ALERTS__RULES__NO_SUCH_RULE__FOR_MS", "5")],
        Duration::from_secs(20),
    );
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("no_such_rule") && stderr.contains("ingestion_drop"),
        "{stderr}"
    );
}

/// The issue's "ten minutes of steady load fire nothing", with production-shaped windows
/// scaled by six (10 s buckets, a 30 s window, a 5 min baseline; every rule at its
/// default `for`). Ten minutes is too long for every `cargo test`; run it with
/// `cargo test --test alerts -- --ignored --nocapture` (the last run is recorded in
/// docs/monitoring.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs for about 15 minutes"]
async fn ten_minutes_of_steady_load_fire_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(
        dir.path(),
        r#"
[alerts]
evaluation_interval_ms = 1000
[alerts.ingest_rate]
bucket_ms = 10000
window_buckets = 3
baseline_buckets = 30
baseline_buckets_min = 24
baseline_events_per_sec_min = 20.0
"#,
    );
    let config = config.to_str().expect("path");
    let node = NodeProcess::start_with_args(
        &dir.path().join("node"),
        &["--config", config],
        &[],
        true,
        true,
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(node.url.clone(), Arc::clone(&stop));
    // Warm-up: 24 baseline buckets of 10 s behind a 30 s window.
    wait_for("the detector to start judging", Duration::from_secs(360), || {
        let url = node.url.clone();
        async move { (alerts_view(&url).await["ingest_rate"]["state"] == "judged").then_some(()) }
    })
    .await;
    assert_quiet_during(&node.url, Duration::from_secs(600), Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.await.expect("load");
    println!("events acknowledged during the run: {sent}");
}

/// Notifications of `alert` with `status` the webhook received, with the sending node.
fn notified(received: &Received, alert: &str, status: &str) -> Vec<u64> {
    received
        .lock()
        .expect("received")
        .iter()
        .filter(|(_, b)| b["alert"]["name"] == alert && b["status"] == status)
        .filter_map(|(_, b)| b["node"].as_u64())
        .collect()
}

/// The cluster-scoped drop alert on a 3-node cluster: the leader notifies it once; after
/// the leader is killed the new one adopts it from the replicated notes — no second
/// firing notification — and later sends its resolution, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_leader_failover_the_drop_alert_is_neither_repeated_nor_left_unresolved() {
    use support::cluster::TestCluster;
    let dir = tempfile::tempdir().expect("tempdir");
    let (hook_url, received) = webhook(Duration::ZERO).await;
    let receivers = format!("[{{kind=\"webhook\",url=\"{hook_url}\"}}]");
    let env = [
        ("TANDEM_ALERTS__EVALUATION_INTERVAL_MS", "250"),
        ("TANDEM_ALERTS__REPEAT_INTERVAL_MS", "600000"),
        ("TANDEM_ALERTS__RECEIVERS", receivers.as_str()),
        ("TANDEM_ALERTS__INGEST_RATE__BUCKET_MS", "1000"),
        ("TANDEM_ALERTS__INGEST_RATE__WINDOW_BUCKETS", "3"),
        ("TANDEM_ALERTS__INGEST_RATE__BASELINE_BUCKETS", "60"),
        ("TANDEM_ALERTS__INGEST_RATE__BASELINE_BUCKETS_MIN", "8"),
        (
            "TANDEM_ALERTS__INGEST_RATE__BASELINE_EVENTS_PER_SEC_MIN",
            "20",
        ),
        ("TANDEM_ALERTS__RULES__INGESTION_DROP__FOR_MS", "2000"),
    ];
    let mut cluster = TestCluster::start_with_env(dir.path(), &["r1", "r2", "r3"], &env).await;
    let leader = cluster.leader(Duration::from_secs(30)).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(cluster.urls[&leader].clone(), Arc::clone(&stop));
    tokio::time::sleep(Duration::from_secs(30)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.await.expect("load");
    assert!(sent > 2_000, "the load sent only {sent} events");

    wait_for(
        "the leader to notify the drop",
        Duration::from_secs(60),
        || {
            let received = Arc::clone(&received);
            async move {
                (!notified(&received, "TandemIngestionDrop", "firing").is_empty()).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        notified(&received, "TandemIngestionDrop", "firing"),
        vec![leader]
    );

    cluster.kill9(leader);
    let new_leader = cluster.leader(Duration::from_secs(30)).await;
    assert_ne!(new_leader, leader);
    // The new leader holds the alert as firing, adopted from the replicated note.
    let adopted = wait_for(
        "the new leader to adopt the firing alert",
        Duration::from_secs(20),
        || {
            let url = cluster.urls[&new_leader].clone();
            async move {
                let view = alerts_view(&url).await;
                view["alerts"]
                    .as_array()?
                    .iter()
                    .find(|a| a["name"] == "TandemIngestionDrop" && a["state"] == "firing")
                    .cloned()
            }
        },
    )
    .await;
    println!("adopted on node {new_leader}: {adopted}");
    // Several evaluations later, still one firing notification in all.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        notified(&received, "TandemIngestionDrop", "firing"),
        vec![leader],
        "the new leader notified the drop again"
    );

    // The baseline fills with the quiet time; the condition ends and the new leader (which
    // never notified it itself) sends the resolution, once.
    wait_for("the resolution", Duration::from_secs(90), || {
        let received = Arc::clone(&received);
        async move { (!notified(&received, "TandemIngestionDrop", "resolved").is_empty()).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        notified(&received, "TandemIngestionDrop", "resolved"),
        vec![new_leader]
    );
    assert_eq!(
        notified(&received, "TandemIngestionDrop", "firing"),
        vec![leader]
    );
}

/// The baseline is read from the replicated feed, so a restarted node judges against the
/// baseline it had, at its first evaluation, with no warm-up and no new events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_ingestion_baseline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(
        dir.path(),
        r#"
[alerts]
evaluation_interval_ms = 250
[alerts.ingest_rate]
bucket_ms = 1000
window_buckets = 3
baseline_buckets = 30
baseline_buckets_min = 8
baseline_events_per_sec_min = 20.0
"#,
    );
    let config = config.to_str().expect("path");
    let data = dir.path().join("node");
    let mut node = NodeProcess::start_with_args(&data, &["--config", config], &[], true, true);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = steady_load(node.url.clone(), Arc::clone(&stop));
    let before = wait_for("a judged baseline", Duration::from_secs(40), || {
        let url = node.url.clone();
        async move {
            let rate = alerts_view(&url).await["ingest_rate"].clone();
            (rate["state"] == "judged")
                .then(|| rate["baseline_per_sec"].as_f64())
                .flatten()
        }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.expect("load");
    assert_eq!(node.terminate(), Some(0));

    let node = NodeProcess::start_with_args(&data, &["--config", config], &[], true, true);
    let after = wait_for(
        "the restarted node's first verdict",
        Duration::from_secs(5),
        || {
            let url = node.url.clone();
            async move {
                let rate = alerts_view(&url).await["ingest_rate"].clone();
                match rate["state"].as_str() {
                    Some("warming_up") => None,
                    _ => Some(rate),
                }
            }
        },
    )
    .await;
    println!("baseline before the restart {before:.1}/s, after: {after}");
    assert_eq!(after["state"], "judged", "{after}");
    let baseline = after["baseline_per_sec"].as_f64().expect("baseline");
    assert!(
        (baseline - before).abs() <= before * 0.5,
        "baseline {baseline} after the restart, {before} before"
    );
}
