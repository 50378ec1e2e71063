//! A local cluster of `tandem node` child processes: start, form (learners, then voters
//! together), wait until ready, stop. Used by `tandem up` and `tandem bench-failover`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::launcher::{ChildNode, NodeSpec};

/// How long forming or resuming the cluster may take.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts every node in order; on failure stops those already started.
pub async fn start_nodes(specs: Vec<NodeSpec>) -> Result<Vec<ChildNode>, String> {
    let mut nodes = Vec::new();
    for spec in specs {
        let id = spec.id;
        match tokio::task::spawn_blocking(move || ChildNode::start(spec)).await {
            Ok(Ok(node)) => {
                println!("node {id} ({}) started at {}", node.spec.region, node.url);
                nodes.push(node);
            }
            Ok(Err(error)) => {
                stop_nodes(nodes).await;
                return Err(error);
            }
            Err(error) => {
                stop_nodes(nodes).await;
                return Err(error.to_string());
            }
        }
    }
    Ok(nodes)
}

/// Stops nodes (SIGTERM, then SIGKILL after a grace period), last first.
pub async fn stop_nodes(nodes: Vec<ChildNode>) {
    for node in nodes.into_iter().rev() {
        let _ = tokio::task::spawn_blocking(move || node.stop()).await;
    }
}

/// Admin calls during formation.
pub struct Admin {
    http: reqwest::Client,
    key: String,
}

impl Admin {
    /// A client sending `key` as the admin bearer token.
    pub fn new(key: &str) -> Admin {
        Admin {
            http: crate::tls::plain_http_client(),
            key: key.to_owned(),
        }
    }

    /// GET; `None` on a transport error.
    pub async fn get(&self, url: &str) -> Option<(u16, Value)> {
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.key)
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// POST JSON; the reply on 2xx, else the error message.
    pub async fn post(&self, url: &str, body: &Value) -> Result<Value, String> {
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let reply: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(reply)
        } else {
            Err(format!("{url}: {status}: {}", reply["message"]))
        }
    }
}

/// On first start: adds nodes 2..N as learners, waits for them, promotes them together.
/// On a rerun the membership is already there; either way, waits until every node is ready.
pub async fn form_cluster(
    admin: &Admin,
    nodes: &[ChildNode],
    regions: &[String],
) -> Result<(), String> {
    let first = &nodes[0].url;
    let deadline = Instant::now() + FORM_TIMEOUT;
    let view = loop {
        if let Some((200, view)) = admin.get(&format!("{first}/v1/admin/cluster")).await
            && view["leader"].is_u64()
        {
            break view;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "node 1 has no leader after {FORM_TIMEOUT:?}; see its node.log"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let known: Vec<u64> = view["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["id"].as_u64()).collect())
        .unwrap_or_default();
    let leader_url = view["leader_url"].as_str().unwrap_or(first).to_owned();
    let missing: Vec<&ChildNode> = nodes
        .iter()
        .filter(|n| !known.contains(&n.spec.id))
        .collect();
    if !missing.is_empty() {
        println!(
            "forming the cluster: adding nodes {:?}",
            missing.iter().map(|n| n.spec.id).collect::<Vec<_>>()
        );
        for node in &missing {
            let body = json!({
                "node_id": node.spec.id,
                "url": node.url,
                "peer_url": node.peer_url,
                "region": node.spec.region,
            });
            admin
                .post(&format!("{leader_url}/v1/admin/cluster/learners"), &body)
                .await?;
        }
        wait_ready(admin, nodes, deadline).await?;
        let ids: Vec<u64> = missing.iter().map(|n| n.spec.id).collect();
        let distinct = regions
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let force = distinct < 3;
        if force {
            eprintln!(
                "warning: fewer than 3 regions: losing one region can take the cluster down \
                 (forcing the layout for this local setup)"
            );
        }
        admin
            .post(
                &format!("{leader_url}/v1/admin/cluster/voters"),
                &json!({"node_ids": ids, "force": force}),
            )
            .await?;
    }
    wait_ready(admin, nodes, deadline).await
}

/// Waits until every node answers `/health/ready` 200.
pub async fn wait_ready(
    admin: &Admin,
    nodes: &[ChildNode],
    deadline: Instant,
) -> Result<(), String> {
    for node in nodes {
        loop {
            if let Some((200, _)) = admin.get(&format!("{}/health/ready", node.url)).await {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node {} not ready after {FORM_TIMEOUT:?}; see {}/node.log",
                    node.spec.id,
                    node.spec.data_dir.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
