//! Hostile input against a real node: requests built to make one small body expensive,
//! peer routes called by outsiders, and secrets handed over carelessly. Each must get a
//! clear JSON refusal or bounded treatment, with the node ready throughout and a keyed
//! small write still succeeding afterwards.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ADMIN_KEY, NodeProcess, WRITE_KEY, client, get, post, send};

/// The cluster key the peer-route tests configure.
const CLUSTER_KEY: &str = "hostile-test-cluster-key";

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// Peak resident memory of a process, from `/proc` (Linux), in bytes.
fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Events the node has stored, once it has applied every write acknowledged so far
/// (replies go out at commit, a moment before apply).
async fn events_stored(url: &str) -> u64 {
    let applied = get(url, "/v1/admin/state-hash?consistency=linearizable").await;
    assert_eq!(applied.status, 200, "{}", applied.body);
    let status = get(url, "/v1/admin/status").await;
    assert_eq!(status.status, 200, "{}", status.body);
    status.body["counts"]["events_approx"]
        .as_u64()
        .expect("counts.events_approx")
}

/// A small write with the test key must still be accepted.
async fn assert_small_write_succeeds(url: &str, tag: &str) {
    let reply = post(
        url,
        "/v1/track",
        &json!({"userId": format!("canary-{tag}"), "event": "Canary", "messageId": format!("canary-{tag}")}),
    )
    .await;
    assert_eq!(reply.status, 200, "canary write {tag}: {}", reply.body);
}

/// Sends a gzipped `/v1/batch` of `items` tiny items sharing `context`, and checks it is
/// refused with 413 `request_too_large` naming `limit_name`, promptly, without a burst of
/// memory, with nothing stored.
async fn assert_amplification_refused(
    node: &NodeProcess,
    context: Value,
    items: usize,
    limit_name: &str,
) {
    let before = events_stored(&node.url).await;
    let rss_before = peak_rss_bytes(node.pid());
    let batch: Vec<Value> = (0..items)
        .map(|i| json!({"type": "track", "userId": format!("u{i}"), "event": "E"}))
        .collect();
    let body = gzip(
        json!({"batch": batch, "context": context})
            .to_string()
            .as_bytes(),
    );
    assert!(
        body.len() < 16 * 1024,
        "the attack body is small: {}",
        body.len()
    );

    let started = Instant::now();
    let reply = send(
        client()
            .post(format!("{}/v1/batch", node.url))
            .basic_auth(WRITE_KEY, Some(""))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(body),
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert_eq!(reply.code(), "request_too_large", "{}", reply.body);
    assert!(
        reply.body["message"]
            .as_str()
            .is_some_and(|m| m.contains(limit_name)),
        "the refusal names {limit_name}: {}",
        reply.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused promptly, not after building the events: {:?}",
        started.elapsed()
    );
    if let (Some(before), Some(after)) = (rss_before, peak_rss_bytes(node.pid())) {
        assert!(
            after.saturating_sub(before) < 256 << 20,
            "peak memory grew by {} MiB for one refused request",
            (after - before) >> 20
        );
    }
    assert_eq!(events_stored(&node.url).await, before, "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_context_cannot_multiply_a_small_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]);

    // 300 KB of batch-level context and 2,500 tiny items: ~7 KB gzipped. Merged into each
    // item it would be 750 MB of events; the shared part alone is over the event limit.
    let context = json!({"library": {"name": "hostile"}, "padding": "x".repeat(300_000)});
    assert_amplification_refused(&node, context, 2_500, "limits.event_bytes_max").await;
    assert_small_write_succeeds(&node.url, "after-huge-context").await;

    // Just under the event limit: each merged item is valid on its own, but 2,500 of them
    // would be 75 MB; the request's total is bounded instead.
    let context = json!({"padding": "z".repeat(30_000)});
    assert_amplification_refused(&node, context, 2_500, "limits.request_events_bytes_max").await;
    assert_small_write_succeeds(&node.url, "after-near-limit-context").await;
    let live = get(&node.url, "/health/ready").await;
    assert_eq!(live.status, 200, "{}", live.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_limit_holds_after_the_batch_context_is_merged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]);
    // Each item (14 KB) and the shared context (20 KB) are within the 32 KB event limit
    // on their own; merged, each event is over it.
    let context = json!({"padding": "y".repeat(20_000)});
    let pad = "p".repeat(14_000);
    let body = json!({
        "context": context,
        "batch": [
            {"type": "track", "userId": "a", "event": "E", "messageId": "m-a", "properties": {"pad": pad}},
            {"type": "identify", "userId": "b", "traits": {"plan": "pro", "pad": pad}, "messageId": "m-b"},
        ],
    });
    let reply = post(&node.url, "/v1/batch", &body).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.code(), "no_valid_events", "{}", reply.body);
    let rejected = reply.body["rejected"].as_array().expect("rejected list");
    assert_eq!(rejected.len(), 2, "{}", reply.body);
    for item in rejected {
        assert_eq!(item["code"], "event_too_large", "{item}");
        assert!(
            item["message"]
                .as_str()
                .is_some_and(|m| m.contains("batch-level context")),
            "{item}"
        );
    }
    // A shared context within the limit is still merged and accepted.
    let small = json!({
        "context": {"library": {"name": "analytics-node"}},
        "batch": [{"type": "track", "userId": "c", "event": "E", "messageId": "m-c"}],
    });
    let reply = post(&node.url, "/v1/batch", &small).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["accepted"], 1, "{}", reply.body);
}

/// A POST to a peer route at `url` (one of `node`'s listeners) with `key` (if any) as the
/// cluster key, presenting `node`'s own cluster id as a peer of its cluster would (peers
/// of another cluster are refused: see `peer_routes_refuse_outsiders_and_ingest_commands`).
async fn peer_post(
    node: &NodeProcess,
    url: &str,
    path: &str,
    key: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    let cluster = std::fs::read_to_string(node.data_dir.join("CLUSTER")).unwrap_or_default();
    peer_post_as(url, cluster.trim(), path, key, body).await
}

/// POSTs to a peer route at `url` presenting cluster id `cluster` (none if empty).
async fn peer_post_as(
    url: &str,
    cluster: &str,
    path: &str,
    key: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    let mut request = client()
        .post(format!("{url}{path}"))
        .header("x-tandem-from", "2")
        .body(body);
    if !cluster.is_empty() {
        request = request.header("x-tandem-cluster", cluster);
    }
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_routes_refuse_outsiders_and_ingest_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[("TANDEM_CLUSTER__CLUSTER_KEY", CLUSTER_KEY)]);
    let before = events_stored(&node.url).await;

    // An ingest block with a time of the sender's choosing, encoded as a peer would.
    let event = tandem::model::event::Event {
        source: "default".into(),
        message_id: "smuggled".into(),
        kind: tandem::model::event::MessageType::Track,
        name: "Smuggled".into(),
        timestamp_ms: 253_402_300_799_000,
        received_at_ms: 253_402_300_799_000,
        identities: vec![
            tandem::model::identity::Identity::new(
                tandem::model::identity::IdKind::UserId,
                "victim",
                &tandem::model::identity::Blocklist::new(&[]),
            )
            .expect("identity"),
        ],
        previous_id: None,
        traits_json: None,
        body_json: r#"{"type":"track","event":"Smuggled"}"#.into(),
    };
    let block = tandem::model::block::EncodedBlock::encode(253_402_300_799_000, vec![event])
        .expect("encode");
    let command = tandem::cluster::Command::Ingest(block);
    let bytes = postcard::to_stdvec(&command).expect("postcard");

    for path in [
        "/internal/command",
        "/internal/propose",
        "/internal/raft/snapshot",
    ] {
        for key in [
            None,
            Some("a-guessed-cluster-key"),
            Some(WRITE_KEY),
            Some(ADMIN_KEY),
        ] {
            // The client listener does not serve peer routes at all, key or not.
            let (status, text) = peer_post(&node, &node.url, path, key, bytes.clone()).await;
            assert_eq!(
                status, 404,
                "{path} on the client port with {key:?}: {text}"
            );
            // The peer listener (plaintext here: a lone node) still checks the cluster key.
            let (status, text) = peer_post(&node, &node.peer_url, path, key, bytes.clone()).await;
            assert_eq!(status, 401, "{path} with {key:?}: {text}");
        }
    }
    // The right key from another cluster (a cluster restored from a backup shares it), or
    // no cluster id: refused before anything is read.
    for cluster in ["", "another-cluster-id"] {
        let (status, text) = peer_post_as(
            &node.peer_url,
            cluster,
            "/internal/command",
            Some(CLUSTER_KEY),
            bytes.clone(),
        )
        .await;
        assert_eq!(status, 409, "cluster id {cluster:?}: {text}");
        assert!(text.contains("cluster_mismatch"), "{text}");
    }
    let (status, text) = peer_post(
        &node,
        &node.url,
        "/internal/command",
        Some(CLUSTER_KEY),
        bytes.clone(),
    )
    .await;
    assert_eq!(
        status, 404,
        "the cluster key opens nothing on the client port: {text}"
    );
    let (status, text) = peer_post(
        &node,
        &node.peer_url,
        "/internal/command",
        Some(CLUSTER_KEY),
        bytes,
    )
    .await;
    assert_eq!(status, 400, "an ingest through /internal/command: {text}");
    assert!(text.contains("/internal/propose"), "{text}");

    assert_eq!(events_stored(&node.url).await, before, "nothing was stored");
    let live = get(&node.url, "/health/live").await;
    assert_eq!(live.status, 200, "{}", live.body);
    assert_small_write_succeeds(&node.url, "after-peer-routes").await;
}

#[test]
fn a_cluster_key_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("cluster.key");
    std::fs::write(&key_file, format!("{CLUSTER_KEY}\n")).expect("write key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let key_path = key_file.display().to_string();

    let env = [("TANDEM_CLUSTER__CLUSTER_KEY_FILE", key_path.as_str())];
    let (code, stderr) = support::run_node_expecting_exit(
        dir.path(),
        &dir.path().join("data"),
        &env,
        Duration::from_secs(30),
    );
    assert!(
        code.is_some_and(|c| c != 0),
        "the node must refuse to start (exit {code:?}); stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("chmod 600"),
        "the message says what to do:\n{stderr}"
    );

    // Owner-only: it starts, and peers must present the key from the file.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let node = NodeProcess::start(&dir.path().join("ok"), &env);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (status, text) = peer_post(
            &node,
            &node.peer_url,
            "/internal/read-index",
            None,
            Vec::new(),
        )
        .await;
        assert_eq!(status, 401, "{text}");
        let (status, text) = peer_post(
            &node,
            &node.peer_url,
            "/internal/read-index",
            Some(CLUSTER_KEY),
            Vec::new(),
        )
        .await;
        assert_eq!(
            status, 200,
            "the key from the file is the cluster key: {text}"
        );
    });
}

/// Opens a connection that sends the headers of a gzip `/v1/batch` with the write key and
/// a declared body, then nothing: the node reserves the most that body could inflate to.
fn stalled_gzip_upload(url: &str) -> std::net::TcpStream {
    use base64::Engine;
    let host = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:"));
    write!(
        stream,
        "POST /v1/batch HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 4000\r\n\r\n"
    )
    .expect("send headers");
    stream.flush().expect("flush");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_in_progress_share_a_node_wide_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Room for two bodies of the default 500 KB request limit, not three.
    let node = NodeProcess::start(dir.path(), &[("TANDEM_LIMITS__BODY_BYTES_MAX", "1048576")]);
    // One stalled upload at a time, each seen holding its reservation before the next, so
    // no request races them for the budget.
    let mut held = Vec::new();
    for n in 1..=2 {
        held.push(stalled_gzip_upload(&node.url));
        support::wait_for(
            "the stalled upload's reservation",
            Duration::from_secs(10),
            || {
                let url = node.url.clone();
                async move {
                    let status = get(&url, "/v1/admin/status").await;
                    let reserved = status.body["body_bytes_reserved"].as_u64()?;
                    (reserved >= n * 500 * 1024).then_some(())
                }
            },
        )
        .await;
    }

    let small = gzip(
        json!({"batch": [{"type": "track", "userId": "b", "event": "E"}]})
            .to_string()
            .as_bytes(),
    );
    let refused = send(
        client()
            .post(format!("{}/v1/batch", node.url))
            .basic_auth(WRITE_KEY, Some(""))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(small.clone()),
    )
    .await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.code(), "body_budget_exhausted", "{}", refused.body);
    assert!(
        refused.headers.contains_key("retry-after"),
        "429 carries Retry-After"
    );
    assert!(
        refused.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("limits.body_bytes_max")),
        "{}",
        refused.body
    );
    // A small uncompressed body reserves only its declared length: it still fits.
    assert_small_write_succeeds(&node.url, "within-budget").await;

    // Once the stalled uploads go away, the budget is back.
    drop(held);
    support::wait_for("the budget to be released", Duration::from_secs(10), || {
        let (url, small) = (node.url.clone(), small.clone());
        async move {
            let reply = send(
                client()
                    .post(format!("{url}/v1/batch"))
                    .basic_auth(WRITE_KEY, Some(""))
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip")
                    .body(small),
            )
            .await;
            (reply.status == 200).then_some(())
        }
    })
    .await;
}
