//! `tandem cluster …`: membership administration against a running cluster.
//!
//! Every command talks to `--target` (any node); membership changes go to the leader,
//! following the `not_leader` answer of a non-leader to the leader's URL.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// `tandem cluster`
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Any node of the cluster, e.g. http://127.0.0.1:8081.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8081")]
    pub target: String,
    /// The admin key.
    #[arg(long, global = true, env = "TANDEM_ADMIN_KEY", default_value = "")]
    pub admin_key: String,
    /// CA certificate (PEM) to trust for an https:// target, e.g. `tandem up`'s
    /// `<data-dir>/tls/ca.pem`.
    #[arg(long, global = true, env = "TANDEM_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// The cluster subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Show members, roles, regions, log and applied indexes, and lag.
    Status,
    /// Add a node: it joins as a learner, catches up, then becomes a voter.
    AddNode {
        /// The new node's id (never reuse an id).
        #[arg(long)]
        node_id: u64,
        /// The new node's client URL (printed by `tandem node`: "listening on").
        #[arg(long)]
        url: String,
        /// The new node's peer URL (printed by `tandem node`: "peer listener on").
        #[arg(long)]
        peer_url: String,
        /// The new node's region.
        #[arg(long)]
        region: String,
        /// Accept a voter layout that one region's loss would break.
        #[arg(long)]
        force: bool,
        /// Leave the node a learner (promote later with another add-node of the same node).
        #[arg(long)]
        learner_only: bool,
        /// Give up waiting for the learner to catch up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        catch_up_timeout_secs: u64,
    },
    /// Promote caught-up learners to voters together (e.g. growing from 1 to 3 voters,
    /// where promoting one at a time would pass through an unsafe 2-voter layout).
    Promote {
        /// Learner ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        node_ids: Vec<u64>,
        /// Accept a voter layout that one region's loss would break.
        #[arg(long)]
        force: bool,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        /// The node to remove.
        #[arg(long)]
        node_id: u64,
        /// Accept a voter layout that one region's loss would break.
        #[arg(long)]
        force: bool,
    },
    /// Replace a voter by a new node (which joins as a learner and catches up first).
    ReplaceNode {
        /// The voter to replace.
        #[arg(long)]
        old: u64,
        /// The new node's id.
        #[arg(long)]
        node_id: u64,
        /// The new node's client URL.
        #[arg(long)]
        url: String,
        /// The new node's peer URL.
        #[arg(long)]
        peer_url: String,
        /// The new node's region.
        #[arg(long)]
        region: String,
        /// Accept a voter layout that one region's loss would break.
        #[arg(long)]
        force: bool,
        /// Give up waiting for the new node to catch up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        catch_up_timeout_secs: u64,
    },
    /// Hand leadership to another voter.
    TransferLeader {
        /// The voter to become leader.
        #[arg(long)]
        to: u64,
    },
}

/// Most entries a learner may be behind to be promoted.
const CAUGHT_UP_LAG_MAX: u64 = 16;

struct Admin {
    http: reqwest::Client,
    key: String,
}

impl Admin {
    async fn get(&self, url: &str) -> Result<(u16, Value), String> {
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// POSTs `body` to `path` on `target`, following `not_leader` to the leader.
    async fn post(&self, target: &str, path: &str, body: &Value) -> Result<Value, String> {
        let mut url = target.trim_end_matches('/').to_owned();
        for _ in 0..3 {
            let response = self
                .http
                .post(format!("{url}{path}"))
                .bearer_auth(&self.key)
                .json(body)
                .send()
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let status = response.status().as_u16();
            let reply = response.json::<Value>().await.unwrap_or(Value::Null);
            if status == 200 {
                return Ok(reply);
            }
            if reply["code"] == "not_leader"
                && let Some(leader) = reply["leader_url"].as_str()
            {
                url = leader.trim_end_matches('/').to_owned();
                continue;
            }
            return Err(format!(
                "{status} {}: {}",
                reply["code"].as_str().unwrap_or("error"),
                reply["message"].as_str().unwrap_or("no message")
            ));
        }
        Err("the leader kept moving; retry".into())
    }

    /// The cluster view from the leader (or from `target` if no leader is known).
    async fn view(&self, target: &str) -> Result<Value, String> {
        let target = target.trim_end_matches('/');
        let (status, view) = self.get(&format!("{target}/v1/admin/cluster")).await?;
        if status != 200 {
            return Err(format!("{target}: {status} {}", view["message"]));
        }
        if view["leader"] != view["node_id"]
            && let Some(leader) = view["leader_url"].as_str()
            && let Ok((200, leader_view)) = self.get(&format!("{leader}/v1/admin/cluster")).await
        {
            return Ok(leader_view);
        }
        Ok(view)
    }
}

/// Runs `tandem cluster …`; returns the exit code.
pub async fn run(args: ClusterArgs) -> i32 {
    let http = crate::tls::http_client_builder(args.ca_file.as_deref())
        .map_err(|e| e.to_string())
        .and_then(|b| b.build().map_err(|e| e.to_string()));
    let http = match http {
        Ok(http) => http,
        Err(error) => {
            eprintln!("tandem cluster: {error}");
            return 2;
        }
    };
    let admin = Admin {
        http,
        key: args.admin_key.clone(),
    };
    let result = match args.command {
        ClusterCommand::Status => status(&admin, &args.target).await,
        ClusterCommand::AddNode {
            node_id,
            url,
            peer_url,
            region,
            force,
            learner_only,
            catch_up_timeout_secs,
        } => {
            add_node(
                &admin,
                &args.target,
                (node_id, &url, &peer_url, &region),
                force,
                learner_only,
                Duration::from_secs(catch_up_timeout_secs),
            )
            .await
        }
        ClusterCommand::Promote { node_ids, force } => admin
            .post(
                &args.target,
                "/v1/admin/cluster/voters",
                &json!({"node_ids": node_ids, "force": force}),
            )
            .await
            .map(|_| println!("nodes {node_ids:?} are now voters")),
        ClusterCommand::RemoveNode { node_id, force } => admin
            .post(
                &args.target,
                "/v1/admin/cluster/remove",
                &json!({"node_id": node_id, "force": force}),
            )
            .await
            .map(|_| println!("node {node_id} removed")),
        ClusterCommand::ReplaceNode {
            old,
            node_id,
            url,
            peer_url,
            region,
            force,
            catch_up_timeout_secs,
        } => {
            replace_node(
                &admin,
                &args.target,
                old,
                (node_id, &url, &peer_url, &region),
                force,
                Duration::from_secs(catch_up_timeout_secs),
            )
            .await
        }
        ClusterCommand::TransferLeader { to } => admin
            .post(
                &args.target,
                "/v1/admin/cluster/transfer-leader",
                &json!({"to": to}),
            )
            .await
            .map(|_| println!("asked the leader to hand over to node {to}")),
    };
    match result {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("tandem cluster: {message}");
            1
        }
    }
}

async fn status(admin: &Admin, target: &str) -> Result<(), String> {
    let view = admin.view(target).await?;
    println!(
        "leader: {}   term: {}   log: {}   {}",
        view["leader"],
        view["term"],
        view["last_log_index"],
        if view["joint"] == true {
            "(membership change in progress)"
        } else {
            ""
        }
    );
    println!(
        "{:>4}  {:<8} {:<12} {:<28} {:>9} {:>9} {:>7}  ready",
        "id", "role", "region", "url", "matched", "applied", "lag"
    );
    let members = view["members"].as_array().cloned().unwrap_or_default();
    for member in &members {
        let url = member["url"].as_str().unwrap_or("");
        let (ready, applied) = match admin.get(&format!("{url}/health/ready")).await {
            Ok((status, body)) => (
                if status == 200 {
                    "ready".to_owned()
                } else {
                    body["reason"].as_str().unwrap_or("not ready").to_owned()
                },
                body["raft"]["applied_index"].to_string(),
            ),
            Err(_) => ("unreachable".to_owned(), "-".to_owned()),
        };
        let role = if member["id"] == view["leader"] {
            "leader"
        } else {
            member["role"].as_str().unwrap_or("")
        };
        println!(
            "{:>4}  {:<8} {:<12} {:<28} {:>9} {:>9} {:>7}  {}",
            member["id"].to_string(),
            role,
            member["region"].as_str().unwrap_or(""),
            url,
            member["matched_index"].to_string(),
            applied,
            member["lag_entries"].to_string(),
            ready
        );
    }
    let regions: BTreeSet<&str> = members
        .iter()
        .filter(|m| m["role"] == "voter")
        .filter_map(|m| m["region"].as_str())
        .collect();
    println!(
        "voter regions: {}",
        regions.into_iter().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

async fn add_node(
    admin: &Admin,
    target: &str,
    (node_id, url, peer_url, region): (u64, &str, &str, &str),
    force: bool,
    learner_only: bool,
    timeout: Duration,
) -> Result<(), String> {
    admin
        .post(
            target,
            "/v1/admin/cluster/learners",
            &json!({"node_id": node_id, "url": url, "peer_url": peer_url, "region": region}),
        )
        .await?;
    println!("node {node_id} added as a learner; catching up…");
    wait_caught_up(admin, target, node_id, timeout).await?;
    if learner_only {
        println!("node {node_id} is caught up and stays a learner (--learner-only)");
        return Ok(());
    }
    admin
        .post(
            target,
            "/v1/admin/cluster/voters",
            &json!({"node_ids": [node_id], "force": force}),
        )
        .await?;
    println!("node {node_id} is now a voter");
    Ok(())
}

async fn replace_node(
    admin: &Admin,
    target: &str,
    old: u64,
    (node_id, url, peer_url, region): (u64, &str, &str, &str),
    force: bool,
    timeout: Duration,
) -> Result<(), String> {
    admin
        .post(
            target,
            "/v1/admin/cluster/learners",
            &json!({"node_id": node_id, "url": url, "peer_url": peer_url, "region": region}),
        )
        .await?;
    println!("node {node_id} added as a learner; catching up…");
    wait_caught_up(admin, target, node_id, timeout).await?;
    admin
        .post(
            target,
            "/v1/admin/cluster/replace",
            &json!({"old": old, "new": node_id, "force": force}),
        )
        .await?;
    println!("node {node_id} replaced node {old} as a voter; node {old} left the cluster");
    Ok(())
}

/// Polls the leader until `node_id` is within [`CAUGHT_UP_LAG_MAX`] entries, printing progress.
async fn wait_caught_up(
    admin: &Admin,
    target: &str,
    node_id: u64,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last_print = Instant::now() - Duration::from_secs(10);
    loop {
        let view = admin.view(target).await?;
        let member = view["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["id"] == node_id))
            .cloned()
            .unwrap_or(Value::Null);
        if let Some(lag) = member["lag_entries"].as_u64() {
            if lag <= CAUGHT_UP_LAG_MAX {
                println!("node {node_id} caught up (lag {lag} entries)");
                return Ok(());
            }
            if last_print.elapsed() >= Duration::from_secs(2) {
                println!(
                    "  node {node_id}: matched {} of {} ({lag} entries behind)",
                    member["matched_index"], view["last_log_index"]
                );
                last_print = Instant::now();
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "node {node_id} did not catch up within {timeout:?}; it stays a learner"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
