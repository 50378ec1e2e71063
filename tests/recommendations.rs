//! The recommendations endpoint against the real binary: it learns from ingested events,
//! validates its query, and answers 503 `service_degraded` while its service is down.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn product(id: &str) -> Value {
    json!({"product_id": id, "name": format!("Item {id}"), "category": "Cameras"})
}

#[tokio::test]
async fn recommendations_follow_the_feed_and_report_a_degraded_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[("TANDEM_FAULTS__ENABLED", "true")]);
    let batch = json!({"batch": [
        {"type": "track", "userId": "u9", "event": "Order Completed",
         "properties": {"products": [product("cam-1"), product("lens-1")]}},
        {"type": "track", "userId": "u1", "event": "Product Viewed", "properties": product("cam-1")},
        {"type": "identify", "userId": "u1", "traits": {"email": "ada@example.com"}},
    ]});
    assert_eq!(post(&node.url, "/v1/batch", &batch).await.status, 200);

    let path = "/v1/profiles/email:ada@example.com/recommendations?limit=5";
    let body = wait_for("recommendations", Duration::from_secs(20), || async {
        let reply = get(&node.url, path).await;
        (reply.status == 200 && reply.body["model"]["products"] == 2).then_some(reply.body)
    })
    .await;
    let first = &body["items"][0];
    assert_eq!(first["product_id"], "lens-1", "{body}");
    assert_eq!(first["name"], "Item lens-1");
    assert_eq!(first["category"], "Cameras");
    assert_eq!(first["reason"], "bought together with Item cam-1");
    assert_eq!(body["status"]["service"], "recommendations");

    for (path, status, code) in [
        (
            "/v1/profiles/user_id:u1/recommendations?limit=0",
            400,
            "invalid_query",
        ),
        (
            "/v1/profiles/user_id:u1/recommendations?limit=101",
            400,
            "invalid_query",
        ),
        (
            "/v1/profiles/user_id:nobody/recommendations",
            404,
            "profile_not_found",
        ),
    ] {
        let reply = get(&node.url, path).await;
        assert_eq!(
            (reply.status, reply.code()),
            (status, code),
            "{path}: {}",
            reply.body
        );
    }

    let fault = |fault: &str| json!({"service": "recommendations", "fault": fault});
    let set = |body: Value| {
        let url = format!("{}/v1/admin/faults/services", node.url);
        async move { send(client().post(url).bearer_auth(ADMIN_KEY).json(&body)).await }
    };
    assert_eq!(set(fault("hang")).await.status, 200);
    let more = json!({"type": "track", "userId": "u2", "event": "Product Viewed",
                      "properties": product("cam-2")});
    assert_eq!(post(&node.url, "/v1/track", &more).await.status, 200);
    let path = "/v1/profiles/user_id:u1/recommendations";
    let degraded = wait_for("a 503", Duration::from_secs(20), || async {
        let reply = get(&node.url, path).await;
        (reply.status == 503).then_some(reply)
    })
    .await;
    assert_eq!(degraded.code(), "service_degraded");
    assert!(degraded.headers.contains_key("retry-after"));
    let message = degraded.body["message"].as_str().unwrap_or("");
    assert!(
        message.contains("the recommendations service is degraded ("),
        "names the service and why: {message}"
    );

    assert_eq!(set(fault("none")).await.status, 200);
    wait_for("recovery", Duration::from_secs(20), || async {
        let reply = get(&node.url, path).await;
        (reply.status == 200 && reply.body["model"]["products"] == 3).then_some(())
    })
    .await;
}
