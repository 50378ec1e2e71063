//! The dashboard against real nodes: its JSON document's keys and bounds over HTTP, and
//! the page itself in a real headless browser (Debian's `chromium`) that loads it, shows
//! three nodes and the leader, and changes after the leader is killed with SIGKILL.
//!
//! The browser runs with `--dump-dom` (the DOM after the page's scripts ran) and
//! `--screenshot`; checks read the page's `data-testid` attributes, never pixels. The
//! last screenshot is kept as `target/test-artifacts/dashboard.png`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cluster::TestCluster;
use support::tools::{Group, artifacts_dir, required_tool};
use support::*;

const ELECTION: Duration = Duration::from_secs(30);
/// How long one browser run may take before it is killed.
const BROWSER_RUN: Duration = Duration::from_secs(60);
/// How long the page may take to show a change.
const PAGE_CHANGE: Duration = Duration::from_secs(60);
/// How long the document may take with one member dead or paused: the peer timeout
/// (1.5 s) and a margin for a loaded 2-core machine.
const DOCUMENT_BOUND: Duration = Duration::from_secs(4);

async fn dashboard(url: &str, key: Option<&str>) -> Reply {
    let mut request = client().get(format!("{url}/v1/admin/dashboard"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    send(request).await
}

/// Every node object of a document, by id.
fn nodes(doc: &Value) -> Vec<Value> {
    doc["regions"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["nodes"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn node_in(doc: &Value, id: u64) -> Value {
    nodes(doc)
        .into_iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("node {id} missing from {doc}"))
}

#[tokio::test]
async fn the_page_needs_no_key_but_the_document_needs_a_read_or_admin_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]);

    let page = client()
        .get(format!("{}/dashboard", node.url))
        .send()
        .await
        .expect("GET /dashboard");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.expect("html");
    assert!(html.contains(r#"<script src="/dashboard/app.js">"#));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external resource"
    );
    for asset in ["/dashboard/app.js", "/dashboard/app.css"] {
        let reply = send(client().get(format!("{}{asset}", node.url))).await;
        assert_eq!(reply.status, 200, "{asset}");
    }

    assert_eq!(dashboard(&node.url, None).await.status, 401);
    assert_eq!(
        dashboard(&node.url, Some("no-such-key-0123456789"))
            .await
            .status,
        401
    );
    let writer = dashboard(&node.url, Some(WRITE_KEY)).await;
    assert_eq!(
        writer.status, 403,
        "a write key reads nothing: {}",
        writer.body
    );
    assert_eq!(writer.code(), "forbidden");
    // The peer route is served only on the peer listener.
    let peer = send(
        client()
            .get(format!("{}/internal/dashboard/node", node.url))
            .bearer_auth(ADMIN_KEY)
            .header("x-tandem-from", "2"),
    )
    .await;
    assert_eq!(peer.status, 404);

    let reply = post(
        &node.url,
        "/v1/batch",
        &json!({"batch": [{"type": "track", "userId": "ada", "event": "E", "messageId": "m1"}]}),
    )
    .await;
    assert_eq!(reply.status, 200);
    // The document shows the state as applied, which follows the reply (sent at commit)
    // within moments.
    let doc = wait_for(
        "the dashboard to count the event",
        Duration::from_secs(10),
        || async {
            let doc = dashboard(&node.url, Some(ADMIN_KEY)).await;
            assert_eq!(doc.status, 200, "{}", doc.body);
            (doc.body["events_stored"].as_u64() >= Some(1)).then_some(doc)
        },
    )
    .await;
    let body = &doc.body;
    assert_eq!(body["node"], 1);
    assert_eq!(body["leader"], 1);
    assert_eq!(
        (body["reachable"].clone(), body["members"].clone()),
        (json!(1), json!(1))
    );
    let me = node_in(body, 1);
    assert_eq!(me["reachable"], true);
    assert_eq!(me["state"], "Leader");
    let services: Vec<&str> = body["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(services.contains(&"segments"), "{services:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_paused_member_shows_unreachable_within_the_peer_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = TestCluster::start(dir.path(), &["r1", "r2", "r3"]).await;
    let leader = cluster.leader(ELECTION).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let (observer, victim) = (others[0], others[1]);
    let url = cluster.urls[&observer].clone();

    // Right after an election a member may not have answered a peer call yet (a loaded
    // machine): wait, bounded, for the whole cluster to be in view.
    let doc = cluster
        .wait("every member reachable", Duration::from_secs(30), |c| {
            let url = c.urls[&observer].clone();
            async move {
                let doc = dashboard(&url, Some(ADMIN_KEY)).await.body;
                (doc["reachable"] == 3 && doc["leader"].as_u64().is_some()).then_some(doc)
            }
        })
        .await;
    assert_eq!(doc["leader"], leader);
    let regions: Vec<&str> = doc["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .filter_map(|r| r["region"].as_str())
        .collect();
    assert_eq!(regions, ["r1", "r2", "r3"]);
    // Lag and heartbeat age come from the leader's view of each follower.
    let victim_view = node_in(&doc, victim);
    assert!(
        victim_view["heartbeat_age_ms"].as_u64().is_some(),
        "{victim_view}"
    );
    assert!(victim_view["replication_lag_entries"].as_u64().is_some());

    // Paused (SIGSTOP): alive, silent. The document still answers within the bound.
    cluster.pause(victim, true);
    let started = Instant::now();
    let doc = dashboard(&url, Some(ADMIN_KEY)).await;
    let took = started.elapsed();
    cluster.pause(victim, false);
    assert_eq!(doc.status, 200);
    assert!(took < DOCUMENT_BOUND, "took {took:?} with a paused member");
    let paused = node_in(&doc.body, victim);
    assert_eq!(paused["reachable"], false, "{paused}");
    assert!(
        paused["error"].as_str().unwrap_or("").contains("no answer"),
        "{paused}"
    );

    // Back: reachable again.
    cluster
        .wait("the resumed node reachable", Duration::from_secs(30), |c| {
            let url = c.urls[&observer].clone();
            async move {
                let doc = dashboard(&url, Some(ADMIN_KEY)).await.body;
                (node_in(&doc, victim)["reachable"] == true).then_some(())
            }
        })
        .await;

    // Killed (SIGKILL): refused connections, shown at once.
    cluster.kill9(victim);
    let started = Instant::now();
    let doc = dashboard(&url, Some(ADMIN_KEY)).await;
    assert!(started.elapsed() < DOCUMENT_BOUND);
    assert_eq!(node_in(&doc.body, victim)["reachable"], false);
    assert_eq!(doc.body["reachable"], 2);
    assert_eq!(doc.body["members"], 3);
}

/// Headless Chromium with its own profile directory.
struct Browser {
    binary: PathBuf,
    profile: tempfile::TempDir,
}

impl Browser {
    fn command(&self, budget_ms: u64) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(["--headless", "--no-sandbox", "--disable-gpu"])
            .args([
                "--no-first-run",
                "--disable-extensions",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .arg(format!("--virtual-time-budget={budget_ms}"))
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// The DOM after the page's scripts ran for `budget_ms` of virtual time.
    fn dom(&self, url: &str, budget_ms: u64) -> String {
        let out = tempfile::NamedTempFile::new().expect("temp file");
        let mut command = self.command(budget_ms);
        command
            .arg("--dump-dom")
            .arg(url)
            .stdout(out.reopen().expect("reopen"));
        let code = Group::spawn(command).wait(BROWSER_RUN);
        assert_eq!(code, Some(0), "chromium --dump-dom {url} did not finish");
        std::fs::read_to_string(out.path()).expect("dom")
    }

    /// A PNG of the page at `path`.
    fn screenshot(&self, url: &str, path: &Path) {
        let mut command = self.command(4000);
        command
            .arg(format!("--screenshot={}", path.display()))
            .arg("--window-size=1280,1100")
            .arg(url)
            .stdout(Stdio::null());
        let code = Group::spawn(command).wait(BROWSER_RUN);
        assert_eq!(code, Some(0), "chromium --screenshot did not finish");
        let bytes = std::fs::read(path).expect("screenshot written");
        assert!(
            bytes.starts_with(b"\x89PNG"),
            "not a PNG: {}",
            path.display()
        );
    }
}

/// The opening tag that contains `needle` (e.g. `data-testid="node-2"`).
fn tag<'a>(dom: &'a str, needle: &str) -> Option<&'a str> {
    let at = dom.find(needle)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

/// The value of attribute `name` in an opening tag.
fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    let end = at + tag[at..].find('"')?;
    Some(tag[at..end].to_owned())
}

/// What the page shows: node id → (health, is-leader), and the leader it names.
#[derive(Debug, PartialEq)]
struct Shown {
    nodes: Vec<(u64, String, bool)>,
    leader: Option<u64>,
}

fn shown(dom: &str) -> Shown {
    let mut nodes = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find("data-node-id=\"") {
        let opening = tag(rest, "data-node-id=\"").expect("node tag");
        let id: u64 = attr(opening, "data-node-id")
            .and_then(|v| v.parse().ok())
            .expect("node id");
        let health = attr(opening, "data-health").unwrap_or_default();
        let leader = attr(opening, "data-leader").as_deref() == Some("true");
        nodes.push((id, health, leader));
        rest = &rest[at + 14..];
    }
    let leader = tag(dom, "data-testid=\"leader\"")
        .and_then(|t| attr(t, "data-leader"))
        .and_then(|v| v.parse().ok());
    Shown { nodes, leader }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser_follows_a_leader_kill() {
    let Some(binary) = required_tool(&["chromium", "chromium-browser"], "chromium") else {
        return;
    };
    let browser = Browser {
        binary,
        profile: tempfile::tempdir().expect("profile dir"),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = TestCluster::start(dir.path(), &["r1", "r2", "r3"]).await;
    let leader = cluster.leader(ELECTION).await;
    let observer = if leader == 1 { 2 } else { 1 };
    let observer_url = cluster.urls[&observer].clone();
    let page = |key: &str| format!("{observer_url}/dashboard#key={key}");
    for i in 0..5 {
        let events: Vec<Value> = (0..20)
            .map(|j| {
                json!({"type": "track", "userId": format!("u{j}"), "event": "E",
                            "messageId": format!("dash-{i}-{j}")})
            })
            .collect();
        let reply = post(
            &cluster.urls[&observer],
            "/v1/batch",
            &json!({"batch": events}),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    // Without a key, with a write key, with an unknown key: the form and a clear message.
    let dom = browser.dom(&format!("{}/dashboard", cluster.urls[&observer]), 2000);
    let message = tag(&dom, "data-testid=\"auth-message\"").map(|_| dom.clone());
    assert!(
        message.is_some_and(|d| d.contains("Enter a read or admin key")),
        "{dom}"
    );
    let dom = browser.dom(&page(WRITE_KEY), 2000);
    assert!(
        dom.contains("403 forbidden") && dom.contains("use a read or admin key"),
        "{dom}"
    );
    assert!(
        shown(&dom).nodes.is_empty(),
        "no data shown for a write key"
    );
    let dom = browser.dom(&page("not-a-key-0123456789"), 2000);
    assert!(dom.contains("401 unauthorized"), "{dom}");

    // With the admin key in the fragment: three nodes, all reachable, and the leader.
    let before = cluster
        .wait(
            "the page showing three reachable nodes",
            PAGE_CHANGE,
            |_| {
                let dom = browser.dom(&page(ADMIN_KEY), 3000);
                async move {
                    let s = shown(&dom);
                    let ready = s.nodes.len() == 3
                        && s.nodes.iter().all(|(_, health, _)| health == "reachable")
                        && s.leader == Some(leader);
                    ready.then_some((s, dom))
                }
            },
        )
        .await;
    let (shown_before, dom) = before;
    let leaders: Vec<u64> = shown_before
        .nodes
        .iter()
        .filter(|(_, _, l)| *l)
        .map(|(id, _, _)| *id)
        .collect();
    assert_eq!(leaders, vec![leader]);
    for region in ["r1", "r2", "r3"] {
        assert!(
            dom.contains(&format!("data-testid=\"region-{region}\"")),
            "{region}"
        );
    }
    assert!(dom.contains("data-testid=\"service-segments\""));
    // This build has the alert evaluator: its view renders (none, or alert cards).
    assert!(
        dom.contains("data-testid=\"alerts-none\"") || dom.contains("data-testid=\"alert\""),
        "the alerts section shows the evaluator's view"
    );
    assert!(dom.contains("data-testid=\"backups\"") && dom.contains("not configured yet"));
    let artifacts = artifacts_dir();
    browser.screenshot(&page(ADMIN_KEY), &artifacts.join("dashboard-before.png"));

    // Kill the leader; the page shows it unreachable and names the new one.
    cluster.kill9(leader);
    let new_leader = cluster.leader(ELECTION).await;
    assert_ne!(new_leader, leader);
    let after = cluster
        .wait("the page showing the kill", PAGE_CHANGE, |_| {
            let dom = browser.dom(&page(ADMIN_KEY), 3000);
            async move {
                let s = shown(&dom);
                let dead = s
                    .nodes
                    .iter()
                    .any(|(id, health, _)| *id == leader && health == "unreachable");
                (dead && s.leader == Some(new_leader)).then_some(s)
            }
        })
        .await;
    assert_eq!(
        after.nodes.len(),
        3,
        "the dead node keeps its place: {after:?}"
    );
    let path = artifacts.join("dashboard.png");
    browser.screenshot(&page(ADMIN_KEY), &path);
    println!(
        "dashboard screenshots: {} (before) and {} (after killing leader {leader}; new leader {new_leader})",
        artifacts.join("dashboard-before.png").display(),
        path.display()
    );
}
