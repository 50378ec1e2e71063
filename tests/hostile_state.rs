//! Hostile input against the state, through a real node over HTTP: what a client holding
//! a (public) write key can make the state grow, and the orderings it can get wrong —
//! identity explosion, trait overflow, equal timestamps, far-future and ancient
//! timestamps, and configuration that would undo the bounds. After each, a keyed small
//! write still succeeds and reads back.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::*;
use tandem::model::validate::format_ms;

fn node() -> (tempfile::TempDir, NodeProcess) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]);
    (dir, node)
}

fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    i64::try_from(since.as_millis()).expect("ms")
}

/// A keyed small write, then a read of it: the node still takes writes and serves reads.
async fn small_write_succeeds(url: &str, user: &str) {
    let body = json!({"userId": user, "event": "Still Working"});
    let reply = post(url, "/v1/track", &body).await;
    assert_eq!(reply.status, 200, "small write: {}", reply.body);
    let profile = get(url, &format!("/v1/profiles/user_id:{user}")).await;
    assert_eq!(profile.status, 200, "{}", profile.body);
    assert!(profile.body["event_counts"]["track"].as_u64() >= Some(1));
}

/// One identify of `user` carrying 16 external ids, each of a type never sent before.
fn explosive(user: &str, n: usize) -> Value {
    let ids: Vec<Value> = (0..16)
        .map(|k| json!({"type": format!("t{n}-{k}"), "id": format!("id-{n}-{k}")}))
        .collect();
    json!({"type": "identify", "userId": user, "context": {"externalIds": ids}})
}

/// The refusal records in a profile's merge history, by rule.
fn refused_rules(merges: &Value) -> Vec<String> {
    merges["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .filter(|m| m["action"] == "refused")
        .map(|m| m["rule"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn an_identity_explosion_stays_within_the_caps_with_one_refusal_recorded() {
    let (_dir, node) = node();
    // 1,000 events × 16 invented external id types for one user: 16,000 identities offered.
    for round in 0..4 {
        let batch: Vec<Value> = (0..250)
            .map(|i| explosive("victim", round * 250 + i))
            .collect();
        let reply = post(&node.url, "/v1/batch", &json!({"batch": batch})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(
            reply.body["accepted"], 250,
            "events are kept, links refused"
        );
    }
    let profile = get(&node.url, "/v1/profiles/user_id:victim").await;
    assert_eq!(profile.status, 200, "{}", profile.body);
    let identities = profile.body["identities"].as_array().expect("identities");
    let external = identities
        .iter()
        .filter(|i| i["type"].as_str().is_some_and(|t| t.starts_with("ext.")))
        .count();
    assert_eq!(external, 16, "identity.max_external_types");
    assert_eq!(identities.len(), 17, "the user id and 16 external ids");
    assert_eq!(profile.body["events_total"], 1_000);
    // 999 events × 16 refusals: one recorded, the rest counted.
    assert_eq!(profile.body["limits"]["refusals_unrecorded"], 999 * 16 - 1);

    let merges = get(&node.url, "/v1/profiles/user_id:victim/merges?limit=1000").await;
    assert_eq!(merges.status, 200, "{}", merges.body);
    assert_eq!(
        refused_rules(&merges.body),
        ["at most 16 external id types per profile"],
        "one refusal record per kind: {}",
        merges.body
    );
    small_write_succeeds(&node.url, "after-explosion").await;
}

#[tokio::test]
async fn trait_overflow_is_bounded_counted_and_recorded_once() {
    let (_dir, node) = node();
    for n in 0..3 {
        let traits: serde_json::Map<String, Value> = (0..200)
            .map(|k| (format!("e{n}k{k:03}"), json!(k)))
            .collect();
        let reply = post(
            &node.url,
            "/v1/identify",
            &json!({"userId": "collector", "traits": traits}),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let profile = get(&node.url, "/v1/profiles/user_id:collector").await;
    let traits = profile.body["traits"].as_object().expect("traits");
    assert_eq!(traits.len(), 256, "TRAITS_MAX");
    assert_eq!(profile.body["limits"]["traits_dropped"], 600 - 256);
    let merges = get(&node.url, "/v1/profiles/user_id:collector/merges").await;
    let dropped: Vec<&Value> = merges.body["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .filter(|m| m["action"] == "traits_dropped")
        .collect();
    assert_eq!(dropped.len(), 1, "recorded once: {}", merges.body);
    assert_eq!(dropped[0]["rule"], "at most 256 trait keys per profile");
    assert_eq!(
        dropped[0]["keys"][0], "e1k056",
        "the first key past the cap"
    );
    small_write_succeeds(&node.url, "after-traits").await;
}

#[tokio::test]
async fn same_timestamp_identifies_in_one_batch_go_to_log_order() {
    let (_dir, node) = node();
    let at = format_ms(now_ms() - 60_000);
    let identify = |plan: &str| json!({"type": "identify", "userId": "tied", "timestamp": at, "traits": {"plan": plan}});
    let reply = post(
        &node.url,
        "/v1/batch",
        &json!({"batch": [identify("free"), identify("pro")]}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let profile = get(&node.url, "/v1/profiles/user_id:tied").await;
    assert_eq!(profile.body["traits"]["plan"], "pro", "{}", profile.body);

    // A later request with the same timestamp again goes to the later event.
    let reply = post(
        &node.url,
        "/v1/batch",
        &json!({"batch": [identify("team")]}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let profile = get(&node.url, "/v1/profiles/user_id:tied").await;
    assert_eq!(profile.body["traits"]["plan"], "team", "{}", profile.body);
    small_write_succeeds(&node.url, "after-ties").await;
}

#[tokio::test]
async fn far_future_and_ancient_timestamps_are_rejected_with_a_clear_code() {
    let (_dir, node) = node();
    let identify = |timestamp: &str| json!({"userId": "timely", "timestamp": timestamp, "traits": {"plan": "forever"}});
    for timestamp in ["9999-12-31T23:59:59Z", "1970-01-01T00:00:00Z"] {
        let reply = post(&node.url, "/v1/identify", &identify(timestamp)).await;
        assert_eq!(reply.status, 400, "{timestamp}: {}", reply.body);
        assert_eq!(reply.code(), "timestamp_out_of_range", "{timestamp}");
    }
    let reply = post(
        &node.url,
        "/v1/identify",
        &identify(&format_ms(now_ms() + 48 * 3_600_000)),
    )
    .await;
    assert_eq!(reply.code(), "timestamp_out_of_range");
    assert!(
        reply.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("limits.timestamp_future_ms_max")),
        "the message names the setting: {}",
        reply.body
    );

    // In a batch, the valid items are stored and the far-future one is listed.
    let now = now_ms();
    let batch = json!({"batch": [
        {"type": "identify", "userId": "timely", "timestamp": format_ms(now - 1_000),
         "traits": {"plan": "pro"}},
        {"type": "identify", "userId": "timely", "messageId": "pinned",
         "timestamp": "9999-12-31T23:59:59Z", "traits": {"plan": "forever"}},
    ]});
    let reply = post(&node.url, "/v1/batch", &batch).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["accepted"], 1);
    assert_eq!(reply.body["rejected"][0]["index"], 1);
    assert_eq!(reply.body["rejected"][0]["messageId"], "pinned");
    assert_eq!(reply.body["rejected"][0]["code"], "timestamp_out_of_range");

    // A client clock a year fast is fine when it sends sentAt: the skew is corrected.
    let year = 365 * 24 * 3_600_000_i64;
    let skewed = json!({"userId": "timely", "traits": {"plan": "team"},
                        "timestamp": format_ms(now + year - 500),
                        "sentAt": format_ms(now + year)});
    let reply = post(&node.url, "/v1/identify", &skewed).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let profile = get(&node.url, "/v1/profiles/user_id:timely").await;
    assert_eq!(profile.body["traits"]["plan"], "team", "{}", profile.body);
    assert_eq!(
        profile.body["events_total"], 2,
        "nothing out of range was stored"
    );
    small_write_succeeds(&node.url, "after-timestamps").await;
}

#[tokio::test]
async fn bounds_that_would_undo_themselves_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(binary())
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--write-key",
            WRITE_KEY,
            "--data-dir",
        ])
        .arg(dir.path())
        .env("TANDEM_IDENTITY__MAX_EXTERNAL_TYPES", "0")
        .env("TANDEM_IDENTITY__MAX_AUDIT_RECORDS", "1000000")
        .env("TANDEM_LIMITS__CLOCK_STEP_MS_MAX", "90000000")
        .env("TANDEM_LIMITS__TIMESTAMP_FUTURE_MS_MAX", "-1")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "identity.max_external_types is 0",
        "identity.max_audit_records (1000000)",
        "limits.clock_step_ms_max (90000000)",
        "limits.timestamp_future_ms_max (-1)",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
}
