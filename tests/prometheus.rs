//! A real Prometheus (Debian's `prometheus` package) scrapes a real 3-node cluster every
//! second: every node is `up == 1`, and after the leader is killed with SIGKILL the
//! survivors' leader-change counter, as Prometheus stored it, has increased, the dead
//! node is `up == 0`, and Prometheus sees the new leader's `tandem_raft_is_leader == 1`.
//!
//! Prometheus runs on a free loopback port with its own storage directory, as a process
//! group this test started and kills when it ends, pass or fail.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::cluster::TestCluster;
use support::tools::{Group, free_port, required_tool};
use support::*;

const ELECTION: Duration = Duration::from_secs(30);
/// How long Prometheus may take to start and to see a change (1 s scrapes).
const PROMETHEUS: Duration = Duration::from_secs(60);

/// A running Prometheus.
struct Prometheus {
    url: String,
    log: std::path::PathBuf,
    _group: Group,
}

impl Prometheus {
    fn start(binary: &std::path::Path, dir: &std::path::Path, targets: &[String]) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: tandem\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = dir.join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            log,
            _group: Group::spawn(command),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// An instant query: each series' `instance` label → value.
    async fn query(&self, promql: &str) -> Option<BTreeMap<String, f64>> {
        let response = client()
            .get(format!(
                "{}/api/v1/query?query={}",
                self.url,
                encode(promql)
            ))
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        if body["status"] != "success" {
            return None;
        }
        body["data"]["result"]
            .as_array()?
            .iter()
            .map(|series| {
                let instance = series["metric"]["instance"].as_str()?.to_owned();
                let value = series["value"][1].as_str()?.parse().ok()?;
                Some((instance, value))
            })
            .collect()
    }
}

/// `text` percent-encoded for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_node_and_sees_a_leader_kill() {
    let Some(binary) = required_tool(&["prometheus"], "prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = TestCluster::start(&dir.path().join("cluster"), &["r1", "r2", "r3"]).await;
    let instance: BTreeMap<u64, String> = cluster
        .urls
        .iter()
        .map(|(id, url)| (*id, url.trim_start_matches("http://").to_owned()))
        .collect();
    let targets: Vec<String> = instance.values().cloned().collect();
    let prometheus = Prometheus::start(&binary, dir.path(), &targets);

    let all_up = cluster
        .wait("Prometheus to scrape all three nodes", PROMETHEUS, |_| {
            let prometheus = &prometheus;
            async move {
                let up = prometheus.query("up{job=\"tandem\"}").await?;
                (up.len() == 3 && up.values().all(|v| *v == 1.0)).then_some(up)
            }
        })
        .await;
    let mut expected = targets.clone();
    expected.sort();
    assert_eq!(
        all_up.keys().cloned().collect::<Vec<_>>(),
        expected,
        "Prometheus log:\n{}",
        prometheus.log_tail()
    );

    let leader = cluster.leader(ELECTION).await;
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    // The leader as Prometheus sees it, and each survivor's leader changes before the kill.
    let before = cluster
        .wait("Prometheus to see the leader", PROMETHEUS, |_| {
            let prometheus = &prometheus;
            let leader_instance = instance[&leader].clone();
            async move {
                let is_leader = prometheus.query("tandem_raft_is_leader").await?;
                if is_leader.get(&leader_instance) != Some(&1.0) {
                    return None;
                }
                prometheus.query("tandem_raft_leader_changes_total").await
            }
        })
        .await;
    println!("leader {leader}; leader changes before the kill: {before:?}");

    cluster.kill9(leader);
    let new_leader = cluster.leader(ELECTION).await;
    assert_ne!(new_leader, leader);
    let after = cluster
        .wait(
            "Prometheus to see the leader change on every survivor",
            PROMETHEUS,
            |_| {
                let prometheus = &prometheus;
                let instance = &instance;
                let before = &before;
                let survivors = &survivors;
                async move {
                    let changes = prometheus.query("tandem_raft_leader_changes_total").await?;
                    let increased = survivors.iter().all(|id| {
                        let key = &instance[id];
                        changes.get(key).copied().unwrap_or(0.0)
                            > before.get(key).copied().unwrap_or(f64::MAX)
                    });
                    let up = prometheus.query("up{job=\"tandem\"}").await?;
                    let dead_down = up.get(&instance[&leader]) == Some(&0.0);
                    let is_leader = prometheus.query("tandem_raft_is_leader").await?;
                    let new_seen = is_leader.get(&instance[&new_leader]) == Some(&1.0);
                    (increased && dead_down && new_seen).then_some(changes)
                }
            },
        )
        .await;
    println!("after killing leader {leader} (new leader {new_leader}): leader changes {after:?}");
}
