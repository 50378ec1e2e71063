//! API conformance: each endpoint, both auth styles, every limit, gzip, bad input,
//! dedup, timestamp correction and partial batches — against the real binary over HTTP.

mod support;

use std::io::Write;

use serde_json::{Value, json};
use support::*;

fn node() -> (tempfile::TempDir, NodeProcess) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]);
    (dir, node)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

#[tokio::test]
async fn every_endpoint_accepts_its_message_type() {
    let (_dir, node) = node();
    let cases = [
        (
            "/v1/identify",
            json!({"userId": "u1", "traits": {"plan": "pro"}}),
        ),
        (
            "/v1/track",
            json!({"userId": "u1", "event": "Order Completed"}),
        ),
        ("/v1/page", json!({"userId": "u1", "name": "Home"})),
        ("/v1/screen", json!({"userId": "u1", "name": "Cart"})),
        ("/v1/group", json!({"userId": "u1", "groupId": "acme"})),
        ("/v1/alias", json!({"userId": "u1", "previousId": "anon-1"})),
        (
            "/v1/batch",
            json!({"batch": [{"type": "track", "userId": "u1", "event": "E"}]}),
        ),
        (
            "/v1/import",
            json!({"batch": [{"type": "page", "userId": "u1"}]}),
        ),
    ];
    for (path, body) in &cases {
        let reply = post(&node.url, path, body).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert_eq!(reply.body["success"], true, "{path}");
    }
    let profile = get(&node.url, "/v1/profiles/user_id:u1").await;
    assert_eq!(profile.status, 200);
    assert_eq!(profile.body["events_total"], 8);
    let counts = &profile.body["event_counts"];
    for kind in ["identify", "track", "page", "screen", "group", "alias"] {
        assert!(
            counts[kind].as_u64().unwrap_or(0) >= 1,
            "{kind} counted: {counts}"
        );
    }
    assert_eq!(
        get(&node.url, "/v1/profiles/anonymous_id:anon-1")
            .await
            .body["id"],
        profile.body["id"],
        "alias linked the previous id"
    );
}

#[tokio::test]
async fn both_auth_styles_and_their_failures() {
    let (_dir, node) = node();
    let event = json!({"userId": "u1", "event": "E"});
    let with_body_key = json!({"userId": "u1", "event": "E", "writeKey": WRITE_KEY});
    let url = format!("{}/v1/track", node.url);
    let plain = |body: &Value| {
        client()
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    assert_eq!(
        send(plain(&with_body_key)).await.status,
        200,
        "writeKey in body"
    );
    assert_eq!(
        post(&node.url, "/v1/track", &event).await.status,
        200,
        "Basic auth"
    );
    let missing = send(plain(&event)).await;
    assert_eq!((missing.status, missing.code()), (401, "unauthorized"));
    let wrong = send(plain(&event).basic_auth("not-a-key", Some(""))).await;
    assert_eq!((wrong.status, wrong.code()), (401, "unauthorized"));
    let wrong_body = json!({"userId": "u1", "event": "E", "writeKey": "nope-nope"});
    assert_eq!(send(plain(&wrong_body)).await.status, 401);
    let batch =
        json!({"batch": [{"type": "track", "userId": "u", "event": "E"}], "writeKey": WRITE_KEY});
    let batch_url = format!("{}/v1/batch", node.url);
    let reply = send(
        client()
            .post(&batch_url)
            .header("content-type", "application/json")
            .body(batch.to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "batch-level writeKey");

    // Reading profiles: never with the write key alone.
    let profile_url = format!("{}/v1/profiles/user_id:u1", node.url);
    let as_writer = send(client().get(&profile_url).basic_auth(WRITE_KEY, Some(""))).await;
    assert_eq!((as_writer.status, as_writer.code()), (403, "forbidden"));
    assert_eq!(send(client().get(&profile_url)).await.status, 401);
    assert_eq!(
        send(client().get(&profile_url).basic_auth(ADMIN_KEY, Some("")))
            .await
            .status,
        200,
        "admin key as Basic user"
    );
}

#[tokio::test]
async fn limits_are_enforced_and_named() {
    let (_dir, node) = node();
    let big = "x".repeat(33 * 1024);
    let too_big = post(
        &node.url,
        "/v1/track",
        &json!({"userId": "u", "event": "E", "properties": {"p": big}}),
    )
    .await;
    assert_eq!((too_big.status, too_big.code()), (413, "event_too_large"));
    assert!(
        too_big.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("32768")
    );

    let batch = json!({"batch": [
        {"type": "track", "userId": "u", "event": "ok", "messageId": "small"},
        {"type": "track", "userId": "u", "event": "E", "messageId": "huge", "properties": {"p": big}},
    ]});
    let partial = post(&node.url, "/v1/batch", &batch).await;
    assert_eq!(partial.status, 200);
    assert_eq!(partial.body["accepted"], 1);
    assert_eq!(partial.body["rejected"][0]["index"], 1);
    assert_eq!(partial.body["rejected"][0]["messageId"], "huge");
    assert_eq!(partial.body["rejected"][0]["code"], "event_too_large");

    let item = |i: usize| json!({"type": "track", "userId": "u", "event": "E", "messageId": format!("m{i}"), "properties": {"p": "y".repeat(300)}});
    let over_bytes = json!({"batch": (0..2000).map(item).collect::<Vec<_>>()});
    let reply = post(&node.url, "/v1/batch", &over_bytes).await;
    assert_eq!((reply.status, reply.code()), (413, "request_too_large"));

    let tiny = |i: usize| json!({"type": "page", "userId": "u", "messageId": format!("t{i}")});
    let over_count = json!({"batch": (0..2501).map(tiny).collect::<Vec<_>>()});
    let reply = post(&node.url, "/v1/batch", &over_count).await;
    assert_eq!((reply.status, reply.code()), (400, "batch_too_large"));
    let at_count = json!({"batch": (0..2500).map(tiny).collect::<Vec<_>>()});
    assert_eq!(
        post(&node.url, "/v1/batch", &at_count).await.body["accepted"],
        2500
    );
}

#[tokio::test]
async fn gzip_bodies_and_bombs() {
    let (_dir, node) = node();
    let url = format!("{}/v1/batch", node.url);
    let gz = |bytes: Vec<u8>| {
        client()
            .post(&url)
            .basic_auth(WRITE_KEY, Some(""))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(bytes)
    };
    let batch = json!({"batch": [{"type": "track", "userId": "u", "event": "Zipped"}]});
    let reply = send(gz(gzip(batch.to_string().as_bytes()))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // 64 MiB of spaces inside a valid JSON document compresses to ~64 KiB.
    let mut bomb = b"{\"batch\": [".to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 64 << 20));
    bomb.extend(b"]}");
    let compressed = gzip(&bomb);
    assert!(
        compressed.len() < 500 * 1024,
        "the bomb itself is within the wire limit"
    );
    let reply = send(gz(compressed)).await;
    assert_eq!((reply.status, reply.code()), (413, "request_too_large"));

    let reply = send(gz(b"definitely not gzip".to_vec())).await;
    assert_eq!((reply.status, reply.code()), (400, "invalid_gzip"));
    let reply = send(
        client()
            .post(&url)
            .basic_auth(WRITE_KEY, Some(""))
            .header("content-type", "application/json")
            .header("content-encoding", "br")
            .body(batch.to_string()),
    )
    .await;
    assert_eq!((reply.status, reply.code()), (415, "unsupported_encoding"));
}

#[tokio::test]
async fn bad_input_gets_a_named_4xx_and_changes_nothing() {
    let (_dir, node) = node();
    let raw = |path: &str, content_type: &str, body: &str| {
        client()
            .post(format!("{}{path}", node.url))
            .basic_auth(WRITE_KEY, Some(""))
            .header("content-type", content_type)
            .body(body.to_owned())
    };
    let cases: Vec<(&str, &str, &str, u16, &str)> = vec![
        (
            "/v1/track",
            "application/json",
            "{not json",
            400,
            "invalid_json",
        ),
        (
            "/v1/track",
            "text/plain",
            r#"{"userId":"u","event":"E"}"#,
            415,
            "unsupported_media_type",
        ),
        (
            "/v1/track",
            "application/json",
            r#"{"event":"E"}"#,
            400,
            "missing_identity",
        ),
        (
            "/v1/track",
            "application/json",
            r#"{"userId":"undefined","event":"E"}"#,
            400,
            "missing_identity",
        ),
        (
            "/v1/track",
            "application/json",
            r#"{"userId":"u"}"#,
            400,
            "missing_field",
        ),
        (
            "/v1/alias",
            "application/json",
            r#"{"userId":"u"}"#,
            400,
            "missing_field",
        ),
        (
            "/v1/group",
            "application/json",
            r#"{"userId":"u"}"#,
            400,
            "missing_field",
        ),
        (
            "/v1/track",
            "application/json",
            r#"{"userId":"u","event":"E","timestamp":"noon"}"#,
            400,
            "invalid_timestamp",
        ),
        (
            "/v1/track",
            "application/json",
            r#"[1,2,3]"#,
            400,
            "invalid_message",
        ),
        (
            "/v1/batch",
            "application/json",
            r#"{"batch": 5}"#,
            400,
            "invalid_batch",
        ),
        (
            "/v1/batch",
            "application/json",
            r#"{"batch": []}"#,
            400,
            "invalid_batch",
        ),
        (
            "/v1/batch",
            "application/json",
            r#"{"batch": [{"type":"track","userId":"u"}]}"#,
            400,
            "no_valid_events",
        ),
        (
            "/v1/batch",
            "application/json",
            r#"{"batch": [{"type":"buy","userId":"u"}]}"#,
            400,
            "no_valid_events",
        ),
    ];
    for (path, content_type, body, status, code) in cases {
        let reply = send(raw(path, content_type, body)).await;
        assert_eq!(
            (reply.status, reply.code()),
            (status, code),
            "{path} {body}: {}",
            reply.body
        );
        assert!(
            reply.body["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let status = get(&node.url, "/v1/admin/status").await;
    assert_eq!(
        status.body["counts"]["events_approx"], 0,
        "nothing was stored"
    );
    let unknown = get(&node.url, "/v1/nothing-here").await;
    assert_eq!((unknown.status, unknown.code()), (404, "not_found"));
}

#[tokio::test]
async fn client_retries_are_deduplicated() {
    let (_dir, node) = node();
    let event = json!({"userId": "u1", "event": "Order Completed", "messageId": "order-1"});
    let first = post(&node.url, "/v1/track", &event).await;
    assert_eq!(
        (
            first.body["accepted"].clone(),
            first.body["duplicates"].clone()
        ),
        (json!(1), json!(0))
    );
    let retry = post(&node.url, "/v1/track", &event).await;
    assert_eq!(retry.status, 200, "a retry is still a success");
    assert_eq!(
        (
            retry.body["accepted"].clone(),
            retry.body["duplicates"].clone()
        ),
        (json!(0), json!(1))
    );
    let in_batch = json!({"batch": [
        {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "order-1"},
        {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "order-2"},
        {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "order-2"},
    ]});
    let reply = post(&node.url, "/v1/batch", &in_batch).await;
    assert_eq!(
        (
            reply.body["accepted"].clone(),
            reply.body["duplicates"].clone()
        ),
        (json!(1), json!(2))
    );
    let profile = get(&node.url, "/v1/profiles/user_id:u1").await;
    assert_eq!(profile.body["events_total"], 2);
}

#[tokio::test]
async fn timestamps_are_corrected_for_client_clock_skew() {
    let (_dir, node) = node();
    // The client's clock runs 10 days behind: it sent at "Nov 1 12:00" an event it
    // recorded 5 s earlier. The stored timestamp is receivedAt − 5 s.
    let event = json!({"userId": "u1", "event": "E", "messageId": "skewed",
        "timestamp": "2020-11-01T11:59:55.000Z", "sentAt": "2020-11-01T12:00:00.000Z"});
    assert_eq!(post(&node.url, "/v1/track", &event).await.status, 200);
    let events = get(&node.url, "/v1/profiles/user_id:u1/events").await;
    let stored = &events.body["events"][0];
    let parse = |field: &str| {
        time::OffsetDateTime::parse(
            stored[field].as_str().expect(field),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("rfc3339")
    };
    let skew = parse("receivedAt") - parse("timestamp");
    assert_eq!(skew, time::Duration::seconds(5), "{stored}");
    assert_eq!(stored["originalTimestamp"], "2020-11-01T11:59:55.000Z");
}

#[tokio::test]
async fn profiles_merge_and_list_events_and_merges() {
    let (_dir, node) = node();
    let batch = json!({"batch": [
        {"type": "page", "anonymousId": "anon-7", "name": "Home", "messageId": "p1"},
        {"type": "track", "anonymousId": "anon-7", "event": "Product Viewed", "messageId": "t1"},
        {"type": "track", "anonymousId": "anon-7", "event": "Product Added", "messageId": "t2"},
        {"type": "track", "userId": "ada", "event": "Ticket Opened", "messageId": "t3",
         "context": {"traits": {"email": "ada@example.com"}}},
        {"type": "identify", "userId": "ada", "anonymousId": "anon-7", "messageId": "i1",
         "traits": {"name": "Ada", "plan": "pro"}},
        {"type": "identify", "userId": "bob", "anonymousId": "anon-7", "messageId": "i2"},
    ]});
    assert_eq!(post(&node.url, "/v1/batch", &batch).await.status, 200);
    let by_user = get(&node.url, "/v1/profiles/user_id:ada").await;
    for key in ["anonymous_id:anon-7", "email:ADA@example.com"] {
        let other = get(&node.url, &format!("/v1/profiles/{key}")).await;
        assert_eq!(
            other.body["id"], by_user.body["id"],
            "{key} finds the same profile"
        );
    }
    assert_eq!(by_user.body["canonical_id"], "user_id:ada");
    assert_eq!(by_user.body["traits"]["name"], "Ada");
    assert_ne!(
        get(&node.url, "/v1/profiles/user_id:bob").await.body["id"],
        by_user.body["id"]
    );

    let page1 = get(&node.url, "/v1/profiles/user_id:ada/events?limit=2").await;
    let ids = |reply: &Reply| -> Vec<String> {
        reply.body["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["messageId"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(ids(&page1), ["i1", "t3"]);
    let before = page1.body["next_before"].as_u64().expect("more pages");
    let page2 = get(
        &node.url,
        &format!("/v1/profiles/user_id:ada/events?limit=10&before={before}"),
    )
    .await;
    assert_eq!(ids(&page2), ["t2", "t1", "p1"]);
    assert!(page2.body["next_before"].is_null());
    let filtered = get(
        &node.url,
        "/v1/profiles/user_id:ada/events?event=Product%20Added",
    )
    .await;
    assert_eq!(ids(&filtered), ["t2"]);

    let merges = get(&node.url, "/v1/profiles/user_id:ada/merges").await;
    let actions: Vec<&str> = merges.body["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .map(|m| m["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(actions, ["refused", "merged"], "{}", merges.body);
    assert_eq!(merges.body["merges"][0]["messageId"], "i2");
    assert_eq!(
        merges.body["merges"][0]["rule"],
        "at most 1 user_id per profile"
    );

    for (path, status, code) in [
        ("/v1/profiles/user_id:nobody", 404, "profile_not_found"),
        ("/v1/profiles/shoe_size:42", 400, "invalid_identity"),
        ("/v1/profiles/user_id:null", 400, "invalid_identity"),
        (
            "/v1/profiles/user_id:ada/events?limit=0",
            400,
            "invalid_limit",
        ),
        (
            "/v1/profiles/user_id:ada/events?limit=abc",
            400,
            "invalid_query",
        ),
    ] {
        let reply = get(&node.url, path).await;
        assert_eq!((reply.status, reply.code()), (status, code), "{path}");
    }
}

#[tokio::test]
async fn overload_answers_429_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(
        dir.path(),
        &[
            ("TANDEM_LIMITS__INFLIGHT_EVENTS_MAX", "20"),
            ("TANDEM_LIMITS__BATCH_EVENTS_MAX", "20"),
            // One source here: let it use the whole capacity.
            ("TANDEM_LIMITS__SOURCE_INFLIGHT_PERCENT", "100"),
        ],
    );
    let item = |r: usize, i: usize| json!({"type": "track", "userId": format!("u{i}"), "event": "E", "messageId": format!("{r}-{i}")});
    let found = wait_for("a 429 under concurrent load", std::time::Duration::from_secs(60), || {
        let url = node.url.clone();
        async move {
            let round = rand_round();
            let requests = (0..40).map(|k| {
                let body = json!({"batch": (0..20).map(|i| item(round, k * 20 + i)).collect::<Vec<_>>()});
                let url = url.clone();
                async move { post(&url, "/v1/batch", &body).await }
            });
            let replies = futures_join_all(requests).await;
            for reply in &replies {
                assert!(matches!(reply.status, 200 | 429), "only success or overload: {}", reply.body);
            }
            replies.into_iter().find(|r| r.status == 429)
        }
    })
    .await;
    assert_eq!(found.code(), "overloaded");
    assert_eq!(
        found
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
}

/// A full ingest queue is refused at once, not queued without bound: with every batch's
/// parse held back 100 ms (the `parse` delay point), 400 concurrent batches overflow the
/// threads and the 256 waiting places; the overflow is answered 429 `overloaded` with
/// `Retry-After`, and exactly the acknowledged events are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ingest_queue_answers_429_and_stores_only_what_it_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[("TANDEM_DELAY_AT", "parse@100")]);
    let requests = (0..400).map(|k| {
        let url = node.url.clone();
        async move {
            let event = json!({"type": "track", "userId": format!("queued-{k}"), "event": "E",
                               "messageId": format!("queued-{k}")});
            post(&url, "/v1/batch", &json!({ "batch": [event] })).await
        }
    });
    let replies = futures_join_all(requests).await;
    let acknowledged = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    for reply in &replies {
        assert!(
            matches!(reply.status, 200 | 429),
            "only success or a full queue: {} {}",
            reply.status,
            reply.body
        );
    }
    assert!(!refused.is_empty(), "no request overflowed the queue");
    for reply in &refused {
        assert_eq!(reply.code(), "overloaded", "{}", reply.body);
        let message = reply.body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("waiting for a ingest thread"),
            "the ingest queue, not admission, refused it: {message}"
        );
        assert_eq!(
            reply
                .headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
    }
    // Everything acknowledged is applied before counting.
    let applied = get(&node.url, "/v1/admin/state-hash?consistency=linearizable").await;
    assert_eq!(applied.status, 200, "{}", applied.body);
    let stored = metric(&node.url, "tandem_events_stored_total").await;
    assert_eq!(
        stored,
        Some(acknowledged as f64),
        "{acknowledged} acknowledged, {} refused",
        refused.len()
    );
}

fn rand_round() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static ROUND: AtomicUsize = AtomicUsize::new(0);
    ROUND.fetch_add(1, Ordering::Relaxed)
}

/// Runs futures concurrently on the current task (no extra crate for ten lines).
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn invalid_configuration_is_refused_with_every_problem_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(binary())
        .args([
            "node",
            "--listen",
            "nowhere",
            "--write-key",
            "short",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("TANDEM_INGEST__RETENTION_DAYS", "0")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "node.listen",
        "write_key is shorter",
        "ingest.retention_days",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
}

#[tokio::test]
async fn stray_tandem_variables_do_not_stop_a_node() {
    // The CLI reads TANDEM_ADMIN_KEY and friends; tests set TANDEM_TEST_SEED. Neither is a
    // setting, and a node must start with them in its environment.
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(
        dir.path(),
        &[
            ("TANDEM_ADMIN_KEY", "something"),
            ("TANDEM_TEST_SEED", "42"),
        ],
    );
    assert_eq!(get(&node.url, "/health/live").await.status, 200);
}

#[tokio::test]
async fn health_endpoints_and_clean_shutdown() {
    let (_dir, mut node) = node();
    assert_eq!(get(&node.url, "/health/live").await.body["status"], "live");
    assert_eq!(
        get(&node.url, "/health/ready").await.body["status"],
        "ready"
    );
    assert_eq!(
        node.terminate(),
        Some(0),
        "SIGTERM exits cleanly: {}",
        node.stderr()
    );
}
