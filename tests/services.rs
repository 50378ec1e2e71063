//! CDP services on a real node: segments through their API, and isolation — each fault
//! type injected into each service during a load, while ingestion, profiles and the other
//! services carry on, and the faulty service then catches up exactly.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ADMIN_KEY, NodeProcess, Reply, client, get, post, send, wait_for};

const DEADLINE: Duration = Duration::from_secs(30);

async fn admin(method: reqwest::Method, url: &str, path: &str, body: Option<Value>) -> Reply {
    let mut request = client()
        .request(method, format!("{url}{path}"))
        .bearer_auth(ADMIN_KEY);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    send(request).await
}

fn order(user: &str, n: u64) -> Value {
    json!({
        "type": "track",
        "userId": user,
        "event": "Order Completed",
        "messageId": format!("{user}-order-{n}"),
        "properties": {"revenue": 10, "products": [{"product_id": format!("P{}", n % 7), "category": "Books"}]},
    })
}

/// Every service's status by name.
async fn statuses(url: &str) -> BTreeMap<String, Value> {
    let reply = get(url, "/v1/admin/services").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| (s["name"].as_str().unwrap_or("").to_owned(), s.clone()))
        .collect()
}

async fn feed_head(url: &str) -> u64 {
    let all = statuses(url).await;
    all.values()
        .map(|s| s["feed_head"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_follow_events_backfill_and_deletion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]);
    let url = node.url.clone();

    // Existing customers before the segment exists: user i has i orders.
    for i in 1..=6u64 {
        let batch: Vec<Value> = (0..i).map(|n| order(&format!("cust{i}"), n)).collect();
        let reply = post(&url, "/v1/batch", &json!({"batch": batch})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    // Bad definitions: 4xx naming the problem.
    let bad = admin(
        reqwest::Method::POST,
        &url,
        "/v1/segments",
        Some(json!({"id": "loyal", "rule": "orders_count >= >= 3"})),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.code(), "invalid_rule");
    assert_eq!(bad.body["position"], json!({"line": 1, "column": 17}));
    let bad_id = admin(
        reqwest::Method::POST,
        &url,
        "/v1/segments",
        Some(json!({"id": "Loyal Customers", "rule": "orders_count >= 3"})),
    )
    .await;
    assert_eq!(bad_id.code(), "invalid_segment_id", "{}", bad_id.body);
    let read_key_write = send(
        client()
            .post(format!("{url}/v1/segments"))
            .basic_auth(support::WRITE_KEY, Some(""))
            .header("content-type", "application/json")
            .body(json!({"id": "x1", "rule": "a == 1"}).to_string()),
    )
    .await;
    assert!(
        [401, 403].contains(&read_key_write.status),
        "{}",
        read_key_write.body
    );

    // A new segment backfills over the existing profiles.
    let created = admin(
        reqwest::Method::POST,
        &url,
        "/v1/segments",
        Some(json!({"id": "loyal", "name": "Loyal", "rule": "orders_count >= 3"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let again = admin(
        reqwest::Method::POST,
        &url,
        "/v1/segments",
        Some(json!({"id": "loyal", "rule": "orders_count >= 3"})),
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.body);
    let members = |url: String, id: &'static str| async move {
        let status = get(&url, &format!("/v1/segments/{id}")).await;
        let ready = status.body["status"] == "ready";
        // Membership read after the status said the backfill was done.
        let reply = get(&url, &format!("/v1/segments/{id}/members?limit=2")).await;
        ready.then_some(reply)
    };
    let page = wait_for("the backfill", DEADLINE, || members(url.clone(), "loyal")).await;
    assert_eq!(page.body["total"], 4, "{}", page.body);
    assert_eq!(page.body["members"].as_array().map(Vec::len), Some(2));
    let after = page.body["next_after"].as_u64().expect("a next page");
    let rest = get(
        &url,
        &format!("/v1/segments/loyal/members?limit=10&after={after}"),
    )
    .await;
    assert_eq!(rest.body["members"].as_array().map(Vec::len), Some(2));
    assert_eq!(rest.body["next_after"], Value::Null);

    // A segment over another one, and real-time entry on new events.
    let vip = admin(
        reqwest::Method::PUT,
        &url,
        "/v1/segments/vip",
        Some(json!({"rule": "in_segment(\"loyal\") and event(\"Order Completed\").within(30d).count() >= 5"})),
    )
    .await;
    assert_eq!(vip.status, 201, "{}", vip.body);
    let cycle = admin(
        reqwest::Method::PUT,
        &url,
        "/v1/segments/loyal",
        Some(json!({"rule": "in_segment(\"vip\")"})),
    )
    .await;
    assert_eq!(cycle.code(), "segment_cycle", "{}", cycle.body);
    let reply = post(
        &url,
        "/v1/batch",
        &json!({"batch": [order("cust2", 2), order("cust4", 4)]}),
    )
    .await;
    assert_eq!(reply.status, 200);
    let segments_of = |url: String, user: &'static str, want: Vec<&'static str>| async move {
        let reply = get(&url, &format!("/v1/profiles/user_id:{user}/segments")).await;
        let ids: Vec<&str> = reply.body["segments"]
            .as_array()?
            .iter()
            .filter_map(|s| s["id"].as_str())
            .collect();
        (ids == want).then_some(())
    };
    wait_for("cust2 enters loyal", DEADLINE, || {
        segments_of(url.clone(), "cust2", vec!["loyal"])
    })
    .await;
    wait_for("cust4 enters vip", DEADLINE, || {
        segments_of(url.clone(), "cust4", vec!["loyal", "vip"])
    })
    .await;

    // Deleting a segment others use is refused; deleting the user first works, and its
    // members leave, each recorded as an exit.
    let in_use = admin(reqwest::Method::DELETE, &url, "/v1/segments/loyal", None).await;
    assert_eq!(in_use.code(), "segment_in_use", "{}", in_use.body);
    let deleted = admin(reqwest::Method::DELETE, &url, "/v1/segments/vip", None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    wait_for("vip memberships removed", DEADLINE, || {
        segments_of(url.clone(), "cust4", vec!["loyal"])
    })
    .await;
    let transitions = get(&url, "/v1/segment-transitions?limit=1000").await;
    let vip_moves: Vec<(bool, String)> = transitions.body["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter(|t| t["segment"] == "vip")
        .map(|t| {
            (
                t["entered"] == true,
                t["cause"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(vip_moves.contains(&(true, "event".into())), "{vip_moves:?}");
    assert!(
        vip_moves.contains(&(false, "deleted".into())),
        "{vip_moves:?}"
    );
    let gone = get(&url, "/v1/segments/vip").await;
    assert_eq!(gone.status, 404);

    // A rule true of a brand-new profile holds from its first event, and an event that
    // changes its input takes the profile out again.
    let browsers = admin(
        reqwest::Method::PUT,
        &url,
        "/v1/segments/browsers",
        Some(json!({"rule": "orders_count == 0"})),
    )
    .await;
    assert_eq!(browsers.status, 201, "{}", browsers.body);
    let page =
        json!({"type": "page", "userId": "visitor9", "name": "Home", "messageId": "visitor9-home"});
    assert_eq!(
        post(&url, "/v1/batch", &json!({"batch": [page]}))
            .await
            .status,
        200
    );
    wait_for("a new visitor enters browsers", DEADLINE, || {
        segments_of(url.clone(), "visitor9", vec!["browsers"])
    })
    .await;
    assert_eq!(
        post(&url, "/v1/batch", &json!({"batch": [order("visitor9", 0)]}))
            .await
            .status,
        200
    );
    wait_for(
        "the visitor leaves browsers after an order",
        DEADLINE,
        || segments_of(url.clone(), "visitor9", vec![]),
    )
    .await;

    // A merge combines computed traits: two anonymous orders, one logged-in order, then
    // the login links them.
    let anonymous = |n: u64, revenue: u64| {
        json!({"type": "track", "anonymousId": "anon-merge-7", "event": "Order Completed",
               "messageId": format!("anon-merge-{n}"), "properties": {"revenue": revenue}})
    };
    let batch = json!({"batch": [
        anonymous(1, 30),
        anonymous(2, 50),
        {"type": "track", "userId": "merger7", "event": "Order Completed",
         "messageId": "merger7-1", "properties": {"revenue": 400}},
    ]});
    assert_eq!(post(&url, "/v1/batch", &batch).await.status, 200);
    let link = json!({"type": "identify", "userId": "merger7", "anonymousId": "anon-merge-7",
                      "messageId": "merger7-login"});
    assert_eq!(post(&url, "/v1/identify", &link).await.status, 200);
    let merged = wait_for("merged computed traits", DEADLINE, || {
        let url = url.clone();
        async move {
            let reply = get(&url, "/v1/profiles/anonymous_id:anon-merge-7").await;
            let traits = &reply.body["computed_traits"];
            (traits["orders_count"] == json!(3)).then(|| traits.clone())
        }
    })
    .await;
    assert_eq!(merged["lifetime_value"], json!(480), "{merged}");
    assert_eq!(merged["avg_order_value"], json!(160), "{merged}");
    wait_for("the merged customer enters loyal", DEADLINE, || {
        segments_of(url.clone(), "merger7", vec!["loyal"])
    })
    .await;
}

/// Users and how many orders each has been sent (acknowledged).
type Sent = Arc<std::sync::Mutex<BTreeMap<String, u64>>>;

/// A steady load: batches of orders over 300 users, skewed so that some users get many
/// orders and some only a few; stops when `stop` is set. Every batch must be
/// acknowledged — ingestion is never affected by a service's fault.
fn start_load(
    url: String,
    stop: Arc<AtomicBool>,
    sent: Sent,
    acked: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    use rand::{Rng, SeedableRng};
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        while !stop.load(Ordering::Acquire) {
            let mut batch = Vec::new();
            let mut counted = Vec::new();
            for _ in 0..20 {
                let index = rng.random_range(0..300u32).min(rng.random_range(0..300u32));
                let user = format!("load{index}");
                let n = *sent.lock().expect("sent").get(&user).unwrap_or(&0)
                    + counted.iter().filter(|u| **u == user).count() as u64;
                batch.push(order(&user, n));
                counted.push(user);
            }
            let reply = post(&url, "/v1/batch", &json!({"batch": batch})).await;
            assert_eq!(
                reply.status, 200,
                "ingestion failed during a service fault: {}",
                reply.body
            );
            {
                let mut sent = sent.lock().expect("sent");
                for user in counted {
                    *sent.entry(user).or_insert(0) += 1;
                }
            }
            acked.fetch_add(20, Ordering::Relaxed);
            // Pacing, not waiting on a condition: a steady moderate rate.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// A node serves before its services' databases are open (after a crash they replay their
/// journals): segment and recommendation requests wait for the database, bounded, then
/// answer 503 with `Retry-After`, and succeed once it is open. The open is held back by an
/// injected fault (`faults.service_open_delay_ms`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_a_service_database_then_answer_503_until_it_opens() {
    const HELD_MS: u64 = 15_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let held = HELD_MS.to_string();
    let node = NodeProcess::start_with(
        dir.path(),
        &[
            ("TANDEM_FAULTS__ENABLED", "true"),
            ("TANDEM_FAULTS__SERVICE_OPEN_DELAY_MS", &held),
        ],
        true,
        false,
    );
    let started = Instant::now();
    let url = node.url.clone();
    let opening = wait_for("the services to say they are opening", DEADLINE, || {
        let url = url.clone();
        async move {
            let all = statuses(&url).await;
            all.values()
                .all(|s| s["reason"] == "opening its database")
                .then_some(all)
        }
    })
    .await;
    assert_eq!(opening.len(), 3, "{opening:?}");
    // The node may still be electing itself (it was not waited on to be ready): 503 until
    // it leads; the messageId makes the retries one event.
    wait_for("an event to be acknowledged", DEADLINE, || {
        let url = url.clone();
        async move { (post(&url, "/v1/track", &order("u1", 1)).await.status == 200).then_some(()) }
    })
    .await;

    for path in ["/v1/segments", "/v1/profiles/user_id:u1/recommendations"] {
        let asked = Instant::now();
        let reply = get(&url, path).await;
        let waited = asked.elapsed();
        assert!(
            started.elapsed() < Duration::from_millis(HELD_MS),
            "the databases opened before {path} was answered: the test proves nothing"
        );
        assert_eq!(reply.status, 503, "{path}: {}", reply.body);
        assert!(
            reply.headers.contains_key("retry-after"),
            "{path}: no Retry-After"
        );
        assert!(!reply.code().is_empty(), "{path}: {}", reply.body);
        assert!(
            waited >= Duration::from_millis(1_900),
            "{path} answered 503 after {waited:?}, without waiting for the database"
        );
    }

    // Once the databases are open, the same requests succeed.
    for path in ["/v1/segments", "/v1/profiles/user_id:u1/recommendations"] {
        wait_for(&format!("{path} to answer 200"), DEADLINE, || {
            let url = url.clone();
            async move { (get(&url, path).await.status == 200).then_some(()) }
        })
        .await;
    }
    assert!(started.elapsed() >= Duration::from_millis(HELD_MS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_in_each_service_stays_isolated_and_catches_up_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[("TANDEM_FAULTS__ENABLED", "true")]);
    let url = node.url.clone();
    // Membership that double-applied or skipped events would get wrong.
    for (id, rule) in [
        ("exactly3", "orders_count == 3"),
        (
            "even",
            "event(\"Order Completed\").count() in [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]",
        ),
    ] {
        let reply = admin(
            reqwest::Method::PUT,
            &url,
            &format!("/v1/segments/{id}"),
            Some(json!({"rule": rule})),
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    let names: Vec<String> = statuses(&url).await.keys().cloned().collect();
    assert!(names.len() >= 2, "services: {names:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let sent: Sent = Arc::default();
    let acked = Arc::new(AtomicU64::new(0));
    let load = start_load(
        url.clone(),
        Arc::clone(&stop),
        Arc::clone(&sent),
        Arc::clone(&acked),
    );

    for faulty in &names {
        for fault in ["panic", "error", "hang", "slow"] {
            let what = format!("{fault} in {faulty}");
            let before = statuses(&url).await[faulty.as_str()]["restarts"]
                .as_u64()
                .unwrap_or(0);
            let reply = admin(
                reqwest::Method::POST,
                &url,
                "/v1/admin/faults/services",
                Some(json!({"service": faulty, "fault": fault})),
            )
            .await;
            assert_eq!(reply.status, 200, "{what}: {}", reply.body);
            // The fault shows: degraded (hang, slow, error loop) or restarted (panic).
            wait_for(&format!("{what} to show"), DEADLINE, || {
                let url = url.clone();
                let faulty = faulty.clone();
                async move {
                    let status = statuses(&url).await.remove(faulty.as_str())?;
                    let restarted = status["restarts"].as_u64().unwrap_or(0) > before;
                    let slow = status["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("slow"));
                    // panic and error: crashed and restarted; hang: replaced (after
                    // being reported slow); slow: reported slow.
                    let shown = match fault {
                        "slow" => status["status"] == "degraded" && slow,
                        _ => restarted,
                    };
                    shown.then_some(())
                }
            })
            .await;
            let metrics = client()
                .get(format!("{url}/metrics"))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("metrics body");
            let down = format!("tandem_service_up{{service=\"{faulty}\"}} 0");
            let restarted = format!("tandem_service_restarts_total{{service=\"{faulty}\"}} 0");
            assert!(
                metrics.contains(&down) || !metrics.contains(&restarted),
                "{what}: metrics must show the fault:\n{metrics}"
            );
            let health = get(&url, "/health/ready").await;
            assert_eq!(
                health.status, 200,
                "{what}: a degraded service must not make the node unready: {}",
                health.body
            );
            // Meanwhile, every other service keeps up with the feed and stays ok, and
            // profiles are served.
            let head = feed_head(&url).await;
            for other in names.iter().filter(|n| *n != faulty) {
                wait_for(
                    &format!("{other} to keep up during {what}"),
                    DEADLINE,
                    || {
                        let url = url.clone();
                        let other = other.clone();
                        async move {
                            let status = statuses(&url).await.remove(other.as_str())?;
                            let cursor = status["cursor"].as_u64().unwrap_or(0);
                            (status["status"] == "ok" && cursor >= head).then_some(())
                        }
                    },
                )
                .await;
            }
            let profile = get(&url, "/v1/profiles/user_id:load1").await;
            assert_eq!(profile.status, 200, "{what}: {}", profile.body);
            // Clear it; the faulty service recovers and catches up.
            let reply = admin(
                reqwest::Method::POST,
                &url,
                "/v1/admin/faults/services",
                Some(json!({"service": faulty, "fault": "none"})),
            )
            .await;
            assert_eq!(reply.status, 200);
            let head = feed_head(&url).await;
            wait_for(
                &format!("{faulty} to recover after {what}"),
                DEADLINE,
                || {
                    let url = url.clone();
                    let faulty = faulty.clone();
                    async move {
                        let status = statuses(&url).await.remove(faulty.as_str())?;
                        let cursor = status["cursor"].as_u64().unwrap_or(0);
                        (status["status"] == "ok" && cursor >= head).then_some(())
                    }
                },
            )
            .await;
        }
    }
    stop.store(true, Ordering::Release);
    load.await.expect("load");
    assert!(acked.load(Ordering::Relaxed) > 0);

    // Exactly once: every service's derived state matches what was acknowledged.
    let head = feed_head(&url).await;
    wait_for("every service caught up", DEADLINE, || {
        let url = url.clone();
        async move {
            let all = statuses(&url).await;
            all.values()
                .all(|s| s["status"] == "ok" && s["cursor"].as_u64().unwrap_or(0) >= head)
                .then_some(())
        }
    })
    .await;
    let sent = sent.lock().expect("sent").clone();
    let mut exactly3 = Vec::new();
    let mut even = Vec::new();
    for (user, orders) in &sent {
        let profile = get(&url, &format!("/v1/profiles/user_id:{user}")).await;
        assert_eq!(
            profile.body["computed_traits"]["orders_count"],
            json!(orders),
            "{user}: computed orders_count must count each acknowledged order once"
        );
        let segments = get(&url, &format!("/v1/profiles/user_id:{user}/segments")).await;
        let ids: Vec<&str> = segments.body["segments"]
            .as_array()
            .expect("segments")
            .iter()
            .filter_map(|s| s["id"].as_str())
            .collect();
        assert_eq!(
            ids.contains(&"exactly3"),
            *orders == 3,
            "{user} with {orders} orders: {ids:?}"
        );
        assert_eq!(
            ids.contains(&"even"),
            *orders % 2 == 0 && *orders <= 30,
            "{user} with {orders} orders: {ids:?}"
        );
        if *orders == 3 {
            exactly3.push(user.clone());
        }
        if *orders % 2 == 0 && *orders <= 30 {
            even.push(user.clone());
        }
    }
    let total = |id: &'static str| {
        let url = url.clone();
        async move {
            get(&url, &format!("/v1/segments/{id}/members?limit=1000"))
                .await
                .body["total"]
                .clone()
        }
    };
    assert_eq!(total("exactly3").await, json!(exactly3.len()));
    assert_eq!(total("even").await, json!(even.len()));
}
