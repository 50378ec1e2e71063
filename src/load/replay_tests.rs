//! Replay preparation against the live generator, and a replay run against a stand-in
//! `/v1/batch` bound to port 0.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::*;
use crate::load::acked;
use crate::load::batch::{Batcher, REQUEST_BYTES_MAX};
use crate::load::run::{LoadOptions, run};
use crate::load::summary::LoadSummary;
use crate::load::workload::Workload;

const START_MS: i64 = 1_764_000_000_000;

fn batcher(seed: u64, events: u64, events_max: usize) -> Batcher {
    Batcher::new(
        Workload::new(seed, events, START_MS),
        events_max,
        REQUEST_BYTES_MAX,
    )
}

#[test]
fn prepared_requests_are_the_live_requests_without_sent_at() {
    let prepared = prepare(batcher(7, 2_000, 100), 2_000, REPLAY_BYTES_MAX).expect("fits");
    let live: Vec<Batch> = batcher(7, 2_000, 100).collect();
    assert_eq!(prepared.batches.len(), 20);
    assert_eq!(prepared.batches.len(), live.len());
    let mut body_bytes = 0;
    for (ready, batch) in prepared.batches.iter().zip(&live) {
        assert_eq!(ready.number, batch.number);
        assert_eq!(ready.events, batch.events);
        assert_eq!(&ready.body[..], batch.body_unstamped().as_bytes());
        let body: Value = serde_json::from_slice(&ready.body).expect("body is JSON");
        assert!(
            body.get("sentAt").is_none(),
            "a prepared body has no sentAt"
        );
        assert_eq!(body["context"]["library"]["name"], "tandem-load");
        let items = body["batch"].as_array().expect("batch array");
        let ids: Vec<&str> = items
            .iter()
            .filter_map(|i| i["messageId"].as_str())
            .collect();
        let want: Vec<&str> = batch.events.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(ids, want);
        body_bytes += ready.body.len() as u64;
    }
    assert_eq!(prepared.cost.body_bytes, body_bytes);
    assert!(prepared.cost.id_bytes > 2_000 * 36, "{:?}", prepared.cost);

    // The same messageIds as the plain generator, whatever time the run starts at.
    let prepared_ids: Vec<&str> = prepared
        .batches
        .iter()
        .flat_map(|b| b.events.iter().map(|(m, _)| m.as_str()))
        .collect();
    let generated: Vec<String> = Workload::new(7, 2_000, START_MS + 86_400_000)
        .map(|e| e.message_id)
        .collect();
    assert_eq!(prepared_ids, generated);
}

#[test]
fn more_than_the_bound_is_refused_naming_how_many_events_fit() {
    let bytes_max = 1 << 20;
    let error = prepare(batcher(7, 10_000, 100), 10_000, bytes_max)
        .expect_err("10,000 events of ~400 bytes do not fit in 1 MiB");
    let LoadError::ReplayTooLarge { events, fitted, .. } = &error else {
        panic!("unexpected error: {error}");
    };
    assert_eq!(*events, 10_000);
    assert!(
        *fitted > 1_000 && *fitted < 3_000 && fitted % 100 == 0,
        "{fitted}"
    );
    let message = error.to_string();
    for part in [
        "--replay: 10000 events would take more than 1 MiB",
        &format!("lower --events to {fitted} or fewer"),
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }

    // The bound is inclusive: exactly the bytes a run needs is enough.
    let cost = prepare(batcher(7, 2_000, 100), 2_000, REPLAY_BYTES_MAX)
        .expect("fits")
        .cost;
    let needed = cost.body_bytes + cost.id_bytes;
    assert!(prepare(batcher(7, 2_000, 100), 2_000, needed).is_ok());
    assert!(prepare(batcher(7, 2_000, 100), 2_000, needed - 1).is_err());
}

/// The bodies a stand-in `/v1/batch` received, in order.
type Seen = Arc<Mutex<Vec<Bytes>>>;

/// A stand-in for a node's `/v1/batch`: the first request gets 503 with `Retry-After: 0`
/// (so the client retries at once), every other one has all its items acknowledged.
async fn fake_batch(State(seen): State<Seen>, body: Bytes) -> Response {
    let items = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["batch"].as_array().map(Vec::len))
        .unwrap_or(0);
    let first = {
        let mut seen = seen
            .lock()
            .expect("no test thread panicked holding the lock");
        seen.push(body);
        seen.len() == 1
    };
    if first {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "0")],
            "busy",
        )
            .into_response();
    }
    axum::Json(json!({"accepted": items, "duplicates": 0, "rejected": []})).into_response()
}

/// Runs 1,000 events of seed 11 against a fresh stand-in; returns the summary, the bodies
/// received and the acknowledged-events file's lines, sorted.
async fn run_against_stand_in(replay: bool) -> (LoadSummary, Vec<Bytes>, Vec<(String, String)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let address = listener.local_addr().expect("bound address");
    let seen = Seen::default();
    let app = Router::new()
        .route("/v1/batch", post(fake_batch))
        .with_state(Arc::clone(&seen));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("temp dir");
    let acked_path = dir.path().join("acked.tsv");
    let mut options = LoadOptions::new(format!("http://{address}"), "wk_test", 1_000);
    options.seed = 11;
    options.batch_size = 50;
    options.concurrency = 4;
    options.acked = Some(acked_path.clone());
    options.replay = replay;
    let summary = run(&options).await.expect("the run is carried out");
    server.abort();

    let bodies = seen.lock().expect("server stopped").clone();
    let mut lines = Vec::new();
    acked::for_each(&acked_path, |m, i| lines.push((m.to_owned(), i.to_owned())))
        .expect("acked file reads back");
    lines.sort();
    (summary, bodies, lines)
}

#[tokio::test]
async fn a_replay_run_resends_the_same_bytes_and_acknowledges_what_a_live_run_does() {
    let (summary, bodies, acked) = run_against_stand_in(true).await;
    assert!(summary.is_ok(), "{summary}");
    assert_eq!((summary.requests, summary.retried), (20, 1), "{summary}");
    assert!(summary.replay.is_some_and(|c| c.body_bytes > 0));
    assert!(
        summary
            .to_string()
            .contains("mode            replay (bodies")
    );
    assert_eq!(bodies.len(), 21, "20 requests and one retry");
    let resent = bodies.iter().filter(|b| **b == bodies[0]).count();
    assert_eq!(
        resent, 2,
        "the retry carried the refused request's very bytes"
    );
    let has_sent_at = |b: &Bytes| b.windows(8).any(|w| w == b"\"sentAt\"");
    assert!(
        !bodies.iter().any(has_sent_at),
        "replay bodies carry no sentAt"
    );

    let mut generated: Vec<(String, String)> = Workload::new(11, 1_000, START_MS)
        .map(|e| (e.message_id, e.identity))
        .collect();
    generated.sort();
    assert_eq!(acked, generated, "every generated event acknowledged once");

    let (live, live_bodies, live_acked) = run_against_stand_in(false).await;
    assert!(live.is_ok() && live.replay.is_none(), "{live}");
    assert!(
        live_bodies.iter().all(has_sent_at),
        "live bodies are stamped"
    );
    assert_eq!(live_acked, acked, "live and replay send the same events");
}
