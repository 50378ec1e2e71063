//! `tandem bench-failover`: measures failover as a client sees it — the time from killing
//! the leader (SIGKILL) to the first acknowledged write *sent after the kill* through the
//! gateway — over many kills, and prints the distribution.
//!
//! It runs its own local 3-node cluster (separate processes, data in a fresh directory it
//! deletes afterwards) with the in-process gateway, four writers sending small batches
//! back to back, and for each round: find the leader, kill -9 it, wait for the first new
//! acknowledgement, restart the killed node, wait until every node is ready again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Notify;

use super::launcher::{ChildNode, NodeSpec};
use super::local_cluster::{
    Admin, FORM_TIMEOUT, form_cluster, start_nodes, stop_nodes, wait_ready,
};
use crate::gateway::{self, GatewayOptions};

/// Concurrent writers during the measurement.
const WRITERS: usize = 4;
/// Longest wait for the first acknowledgement after a kill before the round counts as failed.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// `tandem bench-failover`
#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// Leader kills to measure.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Gateway port; the nodes take the next three, their peer listeners three more
    /// after port + 10. 0 (the default): free ports the system picks, each node keeping
    /// its own across its restarts.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Parent directory for the run's data (a fresh subdirectory, deleted afterwards).
    #[arg(long, default_value = ".")]
    pub work_dir: PathBuf,
}

/// Acknowledged writes: (sent, acknowledged) instants.
type Acks = Arc<Mutex<Vec<(Instant, Instant)>>>;

/// Runs the benchmark; returns the exit code.
pub async fn run_failover(args: FailoverArgs) -> i32 {
    let dir = args
        .work_dir
        .join(format!("tandem-failover-{}", std::process::id()));
    let code = match measure(&args, &dir).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("tandem bench-failover: {error}");
            1
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    code
}

async fn measure(args: &FailoverArgs, dir: &std::path::Path) -> Result<(), String> {
    let regions: Vec<String> = ["r1", "r2", "r3"].iter().map(|r| (*r).to_owned()).collect();
    let key_file = super::launcher::cluster_key_file(dir)?;
    let now_secs = crate::node::now_ms().div_euclid(1000);
    let pki = crate::tls::issue::ensure_local(&dir.join("tls"), 3, now_secs)
        .map_err(|e| format!("local certificates: {e}"))?;
    let specs: Vec<NodeSpec> = (1..=3_u64)
        .filter_map(|id| Some((id, pki.node(id)?)))
        .map(|(id, tls)| NodeSpec {
            id,
            region: regions[id as usize - 1].clone(),
            data_dir: dir.join(format!("node-{id}")),
            listen: super::up::listen_address(args.port, id),
            peer_listen: super::up::peer_listen_address(args.port, id),
            tls,
            bootstrap: id == 1,
            cluster_key_file: key_file.clone(),
            write_key: "bench-write-key-not-secret".into(),
            admin_key: "bench-admin-key-not-secret".into(),
            backup: None,
        })
        .collect();
    let admin = Admin::new("bench-admin-key-not-secret");
    let mut nodes = start_nodes(specs).await?;
    // A killed node restarts on the ports it had: the others know it by them.
    for node in &mut nodes {
        node.pin_addresses()?;
    }
    form_cluster(&admin, &nodes, &regions).await?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(|e| format!("gateway port {}: {e}", args.port))?;
    let gateway_url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| format!("gateway: {e}"))?
    );
    let stop = Arc::new(Notify::new());
    let gateway_stop = Arc::clone(&stop);
    let urls = nodes.iter().map(|n| n.url.clone()).collect();
    let gateway = tokio::spawn(gateway::serve(
        listener,
        GatewayOptions::new(urls),
        async move { gateway_stop.notified().await },
    ));
    let acks: Acks = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(AtomicBool::new(true));
    let counter = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            tokio::spawn(write(
                gateway_url.clone(),
                Arc::clone(&acks),
                Arc::clone(&running),
                Arc::clone(&counter),
            ))
        })
        .collect();

    let mut samples = Vec::new();
    let mut failures = 0;
    for round in 1..=args.kills {
        let leader = find_leader(&admin, &nodes).await?;
        let position = nodes
            .iter()
            .position(|n| n.spec.id == leader)
            .ok_or("leader not found")?;
        let killed = nodes.remove(position);
        let killed_at = Instant::now();
        let spec = killed.kill9();
        match first_ack_after(&acks, killed_at).await {
            Some(elapsed) => {
                println!(
                    "kill {round:>2}: leader {leader} killed; first write acknowledged after {:>6.1} ms",
                    elapsed.as_secs_f64() * 1000.0
                );
                samples.push(elapsed);
            }
            None => {
                println!(
                    "kill {round:>2}: leader {leader} killed; no write acknowledged within {ROUND_TIMEOUT:?}"
                );
                failures += 1;
            }
        }
        let restarted = tokio::task::spawn_blocking(move || ChildNode::start(spec))
            .await
            .map_err(|e| e.to_string())??;
        nodes.push(restarted);
        nodes.sort_by_key(|n| n.spec.id);
        wait_ready(&admin, &nodes, Instant::now() + FORM_TIMEOUT).await?;
    }
    running.store(false, Ordering::Release);
    for writer in writers {
        let _ = writer.await;
    }
    stop.notify_one();
    let _ = gateway.await;
    stop_nodes(nodes).await;
    report(&mut samples, failures, counter.load(Ordering::Relaxed));
    Ok(())
}

async fn write(url: String, acks: Acks, running: Arc<AtomicBool>, counter: Arc<AtomicU64>) {
    let http = crate::tls::plain_http_client();
    while running.load(Ordering::Acquire) {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let items: Vec<_> = (0..10)
            .map(|i| json!({"type": "track", "userId": format!("failover-{}", n % 100), "event": "E", "messageId": format!("f-{n}-{i}")}))
            .collect();
        let sent = Instant::now();
        let reply = http
            .post(format!("{url}/v1/batch"))
            .basic_auth("bench-write-key-not-secret", Some(""))
            .json(&json!({"batch": items}))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if reply.is_ok_and(|r| r.status().is_success()) {
            acks.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((sent, Instant::now()));
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The node that leads: the only one of `nodes` that says so. During an election a
/// deposed leader that has not yet heard of the newer term still says so for a moment,
/// beside the new one; killing it would time no failover at all (a run once measured
/// 7.5 ms), so two claimants mean asking again.
async fn find_leader(admin: &Admin, nodes: &[ChildNode]) -> Result<u64, String> {
    let deadline = Instant::now() + ROUND_TIMEOUT;
    while Instant::now() < deadline {
        let mut claimants = Vec::new();
        for node in nodes {
            if let Some((200, _)) = admin.get(&format!("{}/health/leader", node.url)).await {
                claimants.push(node.spec.id);
            }
        }
        if let [leader] = claimants[..] {
            return Ok(leader);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("no single leader found".into())
}

/// Time from `killed_at` to the first acknowledgement of a write sent after it.
async fn first_ack_after(acks: &Acks, killed_at: Instant) -> Option<Duration> {
    let deadline = killed_at + ROUND_TIMEOUT;
    while Instant::now() < deadline {
        let first = acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(sent, _)| *sent >= killed_at)
            .map(|(_, acked)| *acked)
            .min();
        if let Some(acked) = first {
            return Some(acked - killed_at);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

fn report(samples: &mut [Duration], failures: usize, writes: u64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(index).copied().map_or(f64::NAN, ms)
    };
    println!("\nfailover: leader kill → first acknowledged write through the gateway");
    println!(
        "  kills measured  {} ({} without an ack within {ROUND_TIMEOUT:?})",
        samples.len(),
        failures
    );
    println!("  writes sent     {writes}");
    println!(
        "  min {:.1} ms   p50 {:.1} ms   p90 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        samples.first().copied().map_or(f64::NAN, ms),
        at(0.5),
        at(0.9),
        at(0.99),
        samples.last().copied().map_or(f64::NAN, ms)
    );
}
