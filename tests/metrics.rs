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
