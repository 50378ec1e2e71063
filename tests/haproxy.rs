//! Real HAProxy in front of a real three-node cluster, running the shipped
//! `deploy/haproxy/tandem.cfg` (addresses and ports rewritten for loopback): writers send
//! only through the proxy, the leader is killed with SIGKILL and later restarted, and
//! every acknowledged event must end up on every node exactly once — with no operator
//! action between the kill and writes flowing again.
//!
//! The test passes without running when `haproxy` is not on `PATH` (a fresh machine with
//! only a Rust toolchain); `.ci/run` installs it.

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::cluster::TestCluster;
use support::history::{Acked, Writers, check_exactly_once};
use support::{client, get, http_status};

/// The configuration under test, relative to the crate root.
const SHIPPED_CONFIG: &str = "deploy/haproxy/tandem.cfg";
/// The backend that spreads API traffic over ready nodes.
const NODES_BACKEND: &str = "tandem_nodes";
/// The backend that holds the Raft leader alone.
const LEADER_BACKEND: &str = "tandem_leader";
/// Events to wait for in each phase (writers send batches of 20).
const ACKS_PER_PHASE: usize = 200;
/// Least acknowledged events between the kill and the end of the run.
const ACKS_AFTER_KILL_MIN: usize = 2 * ACKS_PER_PHASE;
/// HAProxy's process-wide connection limit in the test (see [`Haproxy::start`]).
const TEST_MAXCONN: u32 = 1000;
/// How long HAProxy may take to start answering.
const HAPROXY_START: Duration = Duration::from_secs(10);
/// How long the checks may take to see a node die or come back (a few seconds at the
/// shipped `inter 500ms fall 2 rise 2`).
const CHECKS: Duration = Duration::from_secs(30);
const ELECTION: Duration = Duration::from_secs(20);
const ACKS: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_behind_haproxy_loses_no_acknowledged_event() {
    let Some(binary) = on_path("haproxy") else {
        println!("skipping: haproxy not installed (.ci/run installs it)");
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = TestCluster::start(&dir.path().join("cluster"), &["r1", "r2", "r3"]).await;
    // Declared after the cluster so it is dropped (killed) first.
    let haproxy = Haproxy::start(&binary, dir.path(), &cluster.urls);
    let leader = cluster.leader(ELECTION).await;
    let all_nodes = [1, 2, 3];
    haproxy
        .wait_in_rotation(&cluster, NODES_BACKEND, &all_nodes)
        .await;
    haproxy
        .wait_in_rotation(&cluster, LEADER_BACKEND, &[leader])
        .await;
    let status = get(&haproxy.url, "/v1/admin/status").await;
    assert_eq!(
        status.body["node_id"].as_u64(),
        Some(leader),
        "/v1/admin/ through the proxy reaches the leader: {}",
        status.body
    );
    // The nodes' peer routes are never offered on the public address, however spelled,
    // even to a caller holding the cluster key.
    for path in [
        "/internal/command",
        "//internal/raft/append",
        "/INTERNAL/propose",
    ] {
        let response = support::client()
            .post(format!("{}{path}", haproxy.url))
            .bearer_auth(support::cluster::CLUSTER_KEY)
            .body("x")
            .send()
            .await
            .expect("haproxy answers");
        assert_eq!(response.status().as_u16(), 404, "{path} through HAProxy");
    }

    let writers = Writers::start(vec![haproxy.url.clone()], 4, "haproxy");
    wait_more_acked(&writers, &cluster, &haproxy, ACKS_PER_PHASE).await;
    let acked_before_kill = writers.acked_count();

    let killed_at = Instant::now();
    cluster.kill9(leader);
    let server = format!("node{leader}");
    eventually(
        &format!("HAProxy to report {server} DOWN"),
        CHECKS,
        &cluster,
        &haproxy,
        || async {
            let status = haproxy.statuses(NODES_BACKEND).await?.remove(&server)?;
            status.starts_with("DOWN").then_some(())
        },
    )
    .await;
    let down_after = killed_at.elapsed();
    let new_leader = cluster.leader(ELECTION).await;
    assert_ne!(new_leader, leader, "a new leader without operator action");
    let elected_after = killed_at.elapsed();
    // Writes resume through the same proxy address: nobody reconfigured anything.
    wait_more_acked(&writers, &cluster, &haproxy, ACKS_PER_PHASE).await;
    let resumed_after = killed_at.elapsed();
    haproxy
        .wait_in_rotation(&cluster, LEADER_BACKEND, &[new_leader])
        .await;

    cluster.restart(leader).await;
    haproxy
        .wait_in_rotation(&cluster, NODES_BACKEND, &all_nodes)
        .await;
    let back_after = killed_at.elapsed();
    wait_more_acked(&writers, &cluster, &haproxy, ACKS_PER_PHASE).await;

    let acked = writers.stop().await;
    let total: usize = acked.values().map(|ids| ids.len()).sum();
    let after_kill = total - acked_before_kill;
    assert!(
        after_kill >= ACKS_AFTER_KILL_MIN,
        "only {after_kill} events acknowledged after the leader kill"
    );
    check_every_node(&cluster, &acked, total).await;
    println!(
        "haproxy: {total} events acknowledged through HAProxy, each stored exactly once on \
         all 3 nodes; {acked_before_kill} before killing leader node {leader}, {after_kill} \
         after; after the kill: {server} DOWN in {down_after:?}, node {new_leader} elected \
         by {elected_after:?}, {ACKS_PER_PHASE} more acks by {resumed_after:?}, node \
         {leader} back in rotation by {back_after:?}; whole test {:?}",
        started.elapsed()
    );
}

/// Waits until every node has the same state, then checks on each (local reads) that
/// all `total` acknowledged events are stored exactly once.
async fn check_every_node(cluster: &TestCluster, acked: &Acked, total: usize) {
    cluster.converged_hash(CONVERGE).await;
    for (id, url) in &cluster.urls {
        let checked = check_exactly_once(url, acked)
            .await
            .unwrap_or_else(|e| panic!("node {id}: {e}"));
        assert_eq!(checked, total, "node {id}");
    }
}

/// Waits until `more` events beyond those acknowledged now are acknowledged.
async fn wait_more_acked(writers: &Writers, cluster: &TestCluster, haproxy: &Haproxy, more: usize) {
    let target = writers.acked_count() + more;
    eventually(
        &format!("{more} more acknowledged events"),
        ACKS,
        cluster,
        haproxy,
        || {
            let done = writers.acked_count() >= target;
            async move { done.then_some(()) }
        },
    )
    .await;
}

/// Polls `check` until it returns `Some`; on timeout, panics with the tails of the
/// HAProxy and node logs.
async fn eventually<T, F, Fut>(
    what: &str,
    deadline: Duration,
    cluster: &TestCluster,
    haproxy: &Haproxy,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > end {
            let nodes: Vec<String> = cluster
                .nodes
                .iter()
                .map(|(id, n)| format!("--- node {id} ---\n{}", tail(&n.stderr(), 20)))
                .collect();
            panic!(
                "timed out after {deadline:?} waiting for {what}\n--- haproxy ---\n{}\n{}",
                tail(&haproxy.log(), 40),
                nodes.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A running `haproxy -db` (foreground) process, killed by pid when dropped — also when
/// the test panics.
struct Haproxy {
    child: Child,
    /// The API frontend, `http://127.0.0.1:PORT`.
    url: String,
    /// The stats page as CSV.
    stats_csv: String,
    /// Where HAProxy's stdout and stderr (its log) go.
    log_path: PathBuf,
}

impl Haproxy {
    /// Writes the test's variant of the shipped config into `dir`, starts HAProxy on it
    /// with `nodes` (node id → URL) as the servers, and waits until it answers.
    fn start(binary: &Path, dir: &Path, nodes: &BTreeMap<u64, String>) -> Haproxy {
        let shipped_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED_CONFIG);
        let shipped = std::fs::read_to_string(&shipped_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", shipped_path.display()));
        // HAProxy cannot bind port 0 and report the port back, so free ports are found by
        // binding listeners to 127.0.0.1:0, reading their ports and closing them just
        // before HAProxy starts. Another process could take one in between; on loopback
        // in a test run that is rare, and HAProxy then fails loudly at start-up.
        let [api_port, stats_port] = free_ports();
        let config = test_config(&shipped, nodes, api_port, stats_port);
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, config).expect("write haproxy.cfg");
        let log_path = dir.join("haproxy.log");
        let log = File::create(&log_path).expect("create haproxy.log");
        // `-db`: stay in the foreground. `-n`: a process-wide connection limit (overriding
        // the shipped global `maxconn`, sized for a production host) that fits the file
        // descriptors a test machine grants: HAProxy needs two per connection and refuses
        // to start when it cannot raise its limit that far.
        let child = Command::new(binary)
            .arg("-f")
            .arg(&config_path)
            .args(["-db", "-n", &TEST_MAXCONN.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn haproxy");
        let mut haproxy = Haproxy {
            child,
            url: format!("http://127.0.0.1:{api_port}"),
            stats_csv: format!("http://127.0.0.1:{stats_port}/stats;csv"),
            log_path,
        };
        haproxy.wait_answering(&format!("http://127.0.0.1:{stats_port}/stats"));
        haproxy
    }

    /// Polls until the API frontend and the stats page answer, or HAProxy exits.
    fn wait_answering(&mut self, stats_url: &str) {
        let deadline = Instant::now() + HAPROXY_START;
        let live_url = format!("{}/health/live", self.url);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("haproxy exited with {status}:\n{}", self.log());
            }
            if http_status(stats_url) == Some(200) && http_status(&live_url) == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not answer within {HAPROXY_START:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What HAProxy logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Server name → `status` column (`UP`, `DOWN`, `UP 1/2`, …) of `backend` in the
    /// stats CSV; `None` if the page cannot be read.
    async fn statuses(&self, backend: &str) -> Option<BTreeMap<String, String>> {
        let reply = client().get(&self.stats_csv).send().await.ok()?;
        let text = reply.text().await.ok()?;
        let mut lines = text.lines();
        let header = lines.next()?.trim_start_matches("# ");
        let column = header.split(',').position(|name| name == "status")?;
        let servers = lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|fields| fields.first() == Some(&backend))
            .filter(|fields| !matches!(fields.get(1), Some(&"BACKEND" | &"FRONTEND")))
            .filter_map(|fields| {
                Some((fields.get(1)?.to_string(), fields.get(column)?.to_string()))
            })
            .collect();
        Some(servers)
    }

    /// Waits until exactly the servers of node ids `up` are UP in `backend`.
    async fn wait_in_rotation(&self, cluster: &TestCluster, backend: &str, up: &[u64]) {
        let want: Vec<String> = up.iter().map(|id| format!("node{id}")).collect();
        eventually(
            &format!("exactly {want:?} UP in {backend}"),
            CHECKS,
            cluster,
            self,
            || async {
                let statuses = self.statuses(backend).await?;
                let now_up: Vec<&String> = statuses
                    .iter()
                    .filter(|(_, status)| status.as_str() == "UP")
                    .map(|(name, _)| name)
                    .collect();
                (now_up == want.iter().collect::<Vec<_>>()).then_some(())
            },
        )
        .await;
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Process-level lines of the shipped config that need root or system paths; the test
/// runs unprivileged, so they are commented out.
const PRIVILEGED: [&str; 4] = ["chroot ", "user ", "group ", "stats socket "];

/// The shipped config made runnable on loopback by an unprivileged test. Only what must
/// differ is changed; timeouts, checks, retries, balancing and routing run as shipped:
///
/// - `chroot`, `user`, `group` and `stats socket` are commented out, and the syslog
///   target `log /dev/log …` becomes stderr (captured in the test's log file);
/// - `bind :8080` (API) and `bind :8404` (stats) bind `127.0.0.1` on the given ports;
/// - each placeholder address `10.0.0.N:8080` becomes node N's address.
///
/// Panics if the shipped file no longer has one of these, so an edit to it cannot
/// silently leave the test running something else.
fn test_config(
    shipped: &str,
    nodes: &BTreeMap<u64, String>,
    api_port: u16,
    stats_port: u16,
) -> String {
    let mut binds = (0, 0);
    let mut servers: BTreeMap<u64, usize> = BTreeMap::new();
    let mut config = String::new();
    for line in shipped.lines() {
        let code = line.trim_start();
        let indent = &line[..line.len() - code.len()];
        let rewritten = if code.starts_with('#') {
            line.to_owned()
        } else if code.starts_with("log /dev/log ") {
            format!("{indent}log stderr format raw local0 info")
        } else if PRIVILEGED.iter().any(|p| code.starts_with(p)) {
            format!("{indent}# (disabled by tests/haproxy.rs) {code}")
        } else if code == "bind :8080" {
            binds.0 += 1;
            format!("{indent}bind 127.0.0.1:{api_port}")
        } else if code == "bind :8404" {
            binds.1 += 1;
            format!("{indent}bind 127.0.0.1:{stats_port}")
        } else {
            let mut line = line.to_owned();
            for (id, url) in nodes {
                let placeholder = format!("10.0.0.{id}:8080");
                if line.contains(&placeholder) {
                    *servers.entry(*id).or_default() += 1;
                    line = line.replace(&placeholder, url.trim_start_matches("http://"));
                }
            }
            line
        };
        config.push_str(&rewritten);
        config.push('\n');
    }
    assert_eq!(
        binds,
        (1, 1),
        "{SHIPPED_CONFIG} should have one `bind :8080` and one `bind :8404`"
    );
    for id in nodes.keys() {
        assert_eq!(
            servers.get(id),
            Some(&2),
            "{SHIPPED_CONFIG} should list 10.0.0.{id}:8080 in both backends"
        );
    }
    let leftover = config
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .find(|line| line.contains(":8080") || line.contains("/dev/log"));
    assert!(
        leftover.is_none(),
        "{SHIPPED_CONFIG}: line not rewritten for the test: {leftover:?}"
    );
    config
}

/// Two distinct free loopback ports (both listeners are open at once, then closed).
fn free_ports() -> [u16; 2] {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let listeners = [bind(), bind()];
    listeners.map(|l| l.local_addr().expect("local addr").port())
}

/// The first executable file called `name` in a `PATH` directory.
fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| {
            file.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
