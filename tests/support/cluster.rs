//! A real multi-process cluster for tests: N `tandem node` processes on loopback, node 1
//! bootstrapped, the others added as learners and promoted together, each in its own
//! data directory. Nodes are stopped by pid when the cluster is dropped.
//!
//! Peers talk mutual TLS, as `tandem up` sets up: a CA and node certificates are issued
//! into `<root>/tls` at start (by [`tandem::tls::issue`], as `tandem up` does) and given
//! to every node through the environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{ADMIN_KEY, NodeProcess, client, get, send};

/// Shared secret of the test clusters.
pub const CLUSTER_KEY: &str = "test-cluster-key";

/// A running test cluster.
pub struct TestCluster {
    root: PathBuf,
    regions: Vec<String>,
    /// Extra environment for every node.
    extra_env: Vec<(String, String)>,
    /// Node id → process (absent while killed).
    pub nodes: BTreeMap<u64, NodeProcess>,
    /// Node id → URL (stable across restarts: a restarted node binds the same port).
    pub urls: BTreeMap<u64, String>,
    /// Node id → peer URL (stable across restarts too).
    pub peer_urls: BTreeMap<u64, String>,
    /// The cluster CA and node certificates.
    pub pki: tandem::tls::issue::LocalPki,
}

/// Nodes a test cluster has certificates for (ids 1 to this).
pub const CERTIFIED_NODES_MAX: usize = 9;

fn node_env() -> Vec<(&'static str, &'static str)> {
    vec![("TANDEM_FAULTS__ENABLED", "true")]
}

impl TestCluster {
    /// Starts `regions.len()` nodes (node i+1 in `regions[i]`) and forms one cluster.
    pub async fn start(root: &Path, regions: &[&str]) -> TestCluster {
        TestCluster::start_with_env(root, regions, &[]).await
    }

    /// Like [`TestCluster::start`], with extra environment for every node.
    pub async fn start_with_env(
        root: &Path,
        regions: &[&str],
        env: &[(&str, &str)],
    ) -> TestCluster {
        let mut cluster = TestCluster {
            root: root.to_owned(),
            extra_env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            regions: regions.iter().map(|r| (*r).to_owned()).collect(),
            nodes: BTreeMap::new(),
            urls: BTreeMap::new(),
            peer_urls: BTreeMap::new(),
            pki: issue_certificates(root),
        };
        for id in 1..=regions.len() as u64 {
            cluster.spawn(id, None);
        }
        let first = cluster.urls[&1].clone();
        for id in 2..=regions.len() as u64 {
            let body = json!({
                "node_id": id,
                "url": cluster.urls[&id],
                "peer_url": cluster.peer_urls[&id],
                "region": regions[id as usize - 1],
            });
            let reply = admin_post(&first, "/v1/admin/cluster/learners", &body).await;
            assert_eq!(reply.0, 200, "add learner {id}: {}", reply.1);
        }
        if regions.len() > 1 {
            let ids: Vec<u64> = (2..=regions.len() as u64).collect();
            cluster
                .wait("learners caught up", Duration::from_secs(60), |c| {
                    let first = c.urls[&1].clone();
                    async move {
                        let (_, view) = admin_get(&first, "/v1/admin/cluster").await;
                        let members = view["members"].as_array()?.clone();
                        members
                            .iter()
                            .all(|m| m["lag_entries"].as_u64().is_some_and(|lag| lag <= 2))
                            .then_some(())
                    }
                })
                .await;
            let reply = admin_post(
                &first,
                "/v1/admin/cluster/voters",
                &json!({"node_ids": ids}),
            )
            .await;
            assert_eq!(reply.0, 200, "promote: {}", reply.1);
        }
        for id in 1..=regions.len() as u64 {
            cluster.wait_ready(id).await;
        }
        cluster
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.root.join(format!("node-{id}"))
    }

    /// Starts node `id` (on `listen` and `peer_listen` if given, else port 0) and records
    /// its URLs.
    fn spawn(&mut self, id: u64, listen: Option<(&str, &str)>) {
        let dir = self.data_dir(id);
        let region = self.regions[id as usize - 1].clone();
        let id_text = id.to_string();
        let mut env = node_env();
        let join = if id == 1 { "false" } else { "true" };
        env.push((
            "TANDEM_CLUSTER__BOOTSTRAP",
            if join == "true" { "false" } else { "true" },
        ));
        env.push(("TANDEM_CLUSTER__NODE_ID", &id_text));
        env.push(("TANDEM_CLUSTER__REGION", &region));
        env.push(("TANDEM_CLUSTER__CLUSTER_KEY", CLUSTER_KEY));
        let tls = self
            .pki
            .node(id)
            .expect("a certificate for every test node id");
        let (cert, key, ca) = (
            tls.cert.display().to_string(),
            tls.key.display().to_string(),
            tls.ca.display().to_string(),
        );
        env.push(("TANDEM_TLS__PEER_CERT_FILE", &cert));
        env.push(("TANDEM_TLS__PEER_KEY_FILE", &key));
        env.push(("TANDEM_TLS__PEER_CA_FILE", &ca));
        for (key, value) in &self.extra_env {
            env.push((key.as_str(), value.as_str()));
        }
        if let Some((listen, peer_listen)) = listen {
            env.push(("TANDEM_NODE__LISTEN", listen));
            env.push(("TANDEM_NODE__PEER_LISTEN", peer_listen));
        }
        let node = NodeProcess::start_with(&dir, &env, listen.is_none(), id == 1);
        self.urls.insert(id, node.url.clone());
        self.peer_urls.insert(id, node.peer_url.clone());
        self.nodes.insert(id, node);
    }

    /// Starts a new node `id` in `region` that waits to be added (`--join`); returns its URL.
    pub fn spawn_joining(&mut self, id: u64, region: &str) -> String {
        while self.regions.len() < id as usize {
            self.regions.push(String::new());
        }
        self.regions[id as usize - 1] = region.to_owned();
        self.spawn(id, None);
        self.urls[&id].clone()
    }

    /// Like [`TestCluster::spawn_joining`], with extra environment for this start only
    /// (a restart goes without it).
    pub fn spawn_joining_with_env(
        &mut self,
        id: u64,
        region: &str,
        env: &[(&str, &str)],
    ) -> String {
        let saved = self.extra_env.clone();
        self.extra_env
            .extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let url = self.spawn_joining(id, region);
        self.extra_env = saved;
        url
    }

    /// Whether node `id`'s process has exited.
    pub fn has_exited(&mut self, id: u64) -> bool {
        self.nodes.get_mut(&id).is_none_or(NodeProcess::has_exited)
    }

    /// What node `id` wrote to stderr so far.
    pub fn stderr(&self, id: u64) -> String {
        self.nodes
            .get(&id)
            .map(NodeProcess::stderr)
            .unwrap_or_default()
    }

    /// Kills node `id` with SIGKILL.
    pub fn kill9(&mut self, id: u64) {
        if let Some(mut node) = self.nodes.remove(&id) {
            node.kill9();
        }
    }

    /// Restarts a killed node on its old address and data.
    pub async fn restart(&mut self, id: u64) {
        let addr = self.urls[&id].trim_start_matches("http://").to_owned();
        let peer_addr = without_scheme(&self.peer_urls[&id]).to_owned();
        self.spawn(id, Some((&addr, &peer_addr)));
        self.wait_ready(id).await;
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) node `id`: a grey failure — alive but silent.
    pub fn pause(&self, id: u64, stop: bool) {
        let pid = self.nodes[&id].pid();
        let signal = if stop { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal} {pid}");
    }

    /// Cuts node `id` off from `peers` (both directions, through its fault switch).
    pub async fn partition(&self, id: u64, peers: &[u64]) {
        let reply = admin_post(
            &self.urls[&id],
            "/v1/admin/faults",
            &json!({"partition": peers}),
        )
        .await;
        assert_eq!(reply.0, 200, "partition: {}", reply.1);
    }

    /// The node every live node agrees is leader, waiting up to `deadline`.
    pub async fn leader(&self, deadline: Duration) -> u64 {
        self.wait("an agreed leader", deadline, |c| {
            let urls: Vec<(u64, String)> =
                c.nodes.keys().map(|id| (*id, c.urls[id].clone())).collect();
            async move {
                let mut leaders = Vec::new();
                for (_, url) in &urls {
                    let reply = get(url, "/health/ready").await;
                    leaders.push(reply.body["raft"]["leader"].as_u64()?);
                }
                let first = *leaders.first()?;
                let agreed = leaders.iter().all(|l| *l == first);
                let alive = urls.iter().any(|(id, _)| *id == first);
                (agreed && alive).then_some(first)
            }
        })
        .await
    }

    /// Waits until node `id` answers ready.
    pub async fn wait_ready(&self, id: u64) {
        let url = self.urls[&id].clone();
        self.wait(
            &format!("node {id} ready"),
            Duration::from_secs(60),
            move |_| {
                let url = url.clone();
                async move { (get(&url, "/health/ready").await.status == 200).then_some(()) }
            },
        )
        .await;
    }

    /// The highest log index a live node knows committed. Writes are answered at commit,
    /// before apply: every write acknowledged before this call is at or below it.
    async fn committed_index(&self) -> u64 {
        let mut committed = 0;
        for id in self.nodes.keys() {
            let index = super::metric(&self.urls[id], "tandem_raft_commit_index").await;
            committed = committed.max(index.unwrap_or(0.0) as u64);
        }
        committed
    }

    /// Waits until every live node has applied every write acknowledged before the call,
    /// the same index, and has the same state hash; returns the hash.
    pub async fn converged_hash(&self, deadline: Duration) -> String {
        let committed = self.committed_index().await;
        self.wait("equal state hashes on every node", deadline, |c| {
            let urls: Vec<String> = c.nodes.keys().map(|id| c.urls[id].clone()).collect();
            async move {
                let mut hashes = Vec::new();
                for url in &urls {
                    let reply = get(url, "/v1/admin/state-hash").await;
                    // `applied_index` is one past the last entry applied.
                    if reply.body["applied_index"].as_u64()? <= committed {
                        return None;
                    }
                    hashes.push(reply.body["state_hash"].as_str()?.to_owned());
                }
                let first = hashes.first()?.clone();
                hashes.iter().all(|h| *h == first).then_some(first)
            }
        })
        .await
    }

    /// Waits until every live node has applied every write acknowledged before the call
    /// and fed the same entries (equal feed heads), every service on every node has
    /// processed its node's whole feed (cursor = feed head), and the nodes' services hashes
    /// are equal; returns the hash. The leader's ticks move the feed head on, so a sample
    /// taken across one is simply retried.
    pub async fn converged_services_hash(&self, deadline: Duration) -> String {
        let committed = self.committed_index().await;
        self.wait("equal services hashes on every node", deadline, |c| {
            let urls: Vec<String> = c.nodes.keys().map(|id| c.urls[id].clone()).collect();
            async move {
                let mut seen = Vec::new();
                for url in &urls {
                    let reply = get(url, "/v1/admin/state-hash").await;
                    if reply.body["applied_index"].as_u64()? <= committed {
                        return None;
                    }
                    let head = reply.body["feed_head"].as_u64()?;
                    let caught_up = reply.body["services"]
                        .as_array()?
                        .iter()
                        .all(|s| s["cursor"].as_u64() == Some(head));
                    if !caught_up {
                        return None;
                    }
                    seen.push((head, reply.body["services_hash"].as_str()?.to_owned()));
                }
                let first = seen.first()?.clone();
                seen.iter().all(|s| *s == first).then_some(first.1)
            }
        })
        .await
    }

    /// Polls `check` every 50 ms until it returns `Some`, or panics after `deadline`.
    pub async fn wait<T, F, Fut>(&self, what: &str, deadline: Duration, mut check: F) -> T
    where
        F: FnMut(&TestCluster) -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let end = Instant::now() + deadline;
        loop {
            if let Some(value) = check(self).await {
                return value;
            }
            if Instant::now() > end {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|(id, n)| format!("--- node {id} ---\n{}", tail(&n.stderr(), 30)))
                    .collect();
                panic!(
                    "timed out after {deadline:?} waiting for {what}\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `HOST:PORT` of an `http://` or `https://` URL.
pub fn without_scheme(url: &str) -> &str {
    url.trim_start_matches("https://")
        .trim_start_matches("http://")
}

/// A CA and node certificates for [`CERTIFIED_NODES_MAX`] nodes under `<root>/tls`.
pub fn issue_certificates(root: &Path) -> tandem::tls::issue::LocalPki {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    tandem::tls::issue::ensure_local(&root.join("tls"), CERTIFIED_NODES_MAX, now)
        .expect("issue test certificates")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// GET with the admin key; (status, JSON).
pub async fn admin_get(url: &str, path: &str) -> (u16, Value) {
    let reply = get(url, path).await;
    (reply.status, reply.body)
}

/// POST JSON with the admin key; (status, JSON).
pub async fn admin_post(url: &str, path: &str, body: &Value) -> (u16, Value) {
    let reply = send(
        client()
            .post(format!("{url}{path}"))
            .bearer_auth(ADMIN_KEY)
            .json(body),
    )
    .await;
    (reply.status, reply.body)
}
