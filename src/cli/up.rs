//! `tandem up`: the embedded default — a real cluster of separate `tandem node` processes on
//! this machine (three by default, regions r1, r2, r3), the load-balancing gateway in front
//! of them, and a demo workload through the gateway.
//!
//! Data lives under `--data-dir` (`./tandem-data/node-N`); nodes listen on the ports after
//! the gateway's (`--port 8080` → nodes on 8081, 8082, 8083) and their peer listeners ten
//! further (8091, 8092, 8093), so running `tandem up` again restarts the same nodes on the
//! same addresses and resumes the same cluster. Ctrl-C stops the gateway, then each node
//! cleanly.
//!
//! Between nodes the local cluster is encrypted and authenticated: `tandem up` keeps a
//! local CA and one certificate per node in `<data-dir>/tls/` (keys mode 0600, issued
//! afresh when missing or within 30 days of expiry) and every node's peer listener
//! requires mutual TLS. The client side (gateway and nodes' client listeners) stays plain
//! HTTP on 127.0.0.1: it never leaves the machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::launcher::{ChildNode, NodeSpec, cluster_key_file};
use super::local_cluster::{Admin, form_cluster, start_nodes, stop_nodes};
use crate::gateway::{self, GatewayOptions};
use crate::load::{self, LoadOptions};

/// Most nodes `tandem up` starts.
pub const NODES_MAX: usize = 9;
/// Node N's peer port is the gateway's port + this + N (past the client ports).
pub const PEER_PORT_OFFSET: u32 = 10;

/// `tandem up`
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the data lives (one directory per node).
    #[arg(long, default_value = "./tandem-data")]
    pub data_dir: PathBuf,
    /// Gateway port on 127.0.0.1; nodes take the next ports. 0 = random ports (no resume).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Region labels, assigned to nodes in turn.
    #[arg(long, value_delimiter = ',', default_value = "r1,r2,r3")]
    pub regions: Vec<String>,
    /// Write key of the demo source.
    #[arg(long, default_value = "demo-write-key-not-secret")]
    pub write_key: String,
    /// Admin key (also reads profiles).
    #[arg(long, default_value = "demo-admin-key-not-secret")]
    pub admin_key: String,
    /// Start without the demo workload.
    #[arg(long)]
    pub no_demo: bool,
    /// Events the demo workload sends.
    #[arg(long, default_value_t = 20_000)]
    pub demo_events: u64,
    /// Events per second of the demo workload.
    #[arg(long, default_value_t = 200.0)]
    pub demo_rate: f64,
    /// Take no backups. By default the cluster backs itself up nightly (02:00 UTC) into
    /// `<data-dir>/backups`, created with its keys on the first start.
    #[arg(long)]
    pub no_backups: bool,
}

/// Runs `tandem up` until Ctrl-C.
pub async fn run_up(args: UpArgs) -> i32 {
    if args.nodes == 0 || args.nodes > NODES_MAX || args.regions.is_empty() {
        eprintln!(
            "tandem up: --nodes must be 1 to {NODES_MAX} and --regions must name at least one region"
        );
        return 2;
    }
    let key = match cluster_key_file(&args.data_dir) {
        Ok(key) => key,
        Err(error) => {
            eprintln!("tandem up: {error}");
            return 1;
        }
    };
    let now_secs = crate::node::now_ms().div_euclid(1000);
    let pki =
        match crate::tls::issue::ensure_local(&args.data_dir.join("tls"), args.nodes, now_secs) {
            Ok(pki) => pki,
            Err(error) => {
                eprintln!("tandem up: local certificates: {error}");
                return 1;
            }
        };
    let backups = if args.no_backups {
        None
    } else {
        match ensure_local_backups(&args.data_dir).await {
            Ok(backups) => Some(backups),
            Err(error) => {
                eprintln!("tandem up: local backup repository: {error}");
                return 1;
            }
        }
    };
    let specs = node_specs(&args, &key, &pki, backups.as_ref());
    let nodes = match start_nodes(specs).await {
        Ok(nodes) => nodes,
        Err(error) => {
            eprintln!("tandem up: {error}");
            return 1;
        }
    };
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let admin = Admin::new(&args.admin_key);
    if let Err(error) = form_cluster(&admin, &nodes, &args.regions).await {
        eprintln!("tandem up: {error}");
        stop_nodes(nodes).await;
        return 1;
    }
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "tandem up: cannot listen on 127.0.0.1:{}: {error}",
                args.port
            );
            stop_nodes(nodes).await;
            return 1;
        }
    };
    let gateway_url = match listener.local_addr() {
        Ok(addr) => format!("http://{addr}"),
        Err(error) => {
            eprintln!("tandem up: {error}");
            stop_nodes(nodes).await;
            return 1;
        }
    };
    let stop = Arc::new(Notify::new());
    let gateway_stop = Arc::clone(&stop);
    let gateway = tokio::spawn(gateway::serve(
        listener,
        GatewayOptions::new(urls),
        async move { gateway_stop.notified().await },
    ));
    print_banner(&args, &gateway_url, &nodes, backups.as_ref());
    if !args.no_demo {
        let seed = (crate::node::now_ms() / 1000) as u64;
        let acked = args.data_dir.join(format!("demo-acked-{seed}.tsv"));
        let mut options = LoadOptions::new(
            gateway_url.clone(),
            args.write_key.clone(),
            args.demo_events,
        );
        options.rate = Some(args.demo_rate);
        options.acked = Some(acked.clone());
        options.seed = seed;
        tokio::spawn(demo(
            options,
            args.admin_key.clone(),
            gateway_url.clone(),
            acked,
        ));
    }
    let nodes = supervise(nodes).await;
    println!("stopping: gateway, then {} nodes", nodes.len());
    stop.notify_one();
    if let Ok(Err(error)) = gateway.await {
        eprintln!("gateway: {error}");
    }
    stop_nodes(nodes).await;
    println!("stopped; `tandem up` again resumes the same cluster");
    0
}

fn node_specs(
    args: &UpArgs,
    key_file: &std::path::Path,
    pki: &crate::tls::issue::LocalPki,
    backups: Option<&LocalBackups>,
) -> Vec<NodeSpec> {
    (1..=args.nodes as u64)
        .filter_map(|id| Some((id, pki.node(id)?)))
        .map(|(id, tls)| NodeSpec {
            id,
            region: args.regions[(id as usize - 1) % args.regions.len()].clone(),
            data_dir: args.data_dir.join(format!("node-{id}")),
            listen: listen_address(args.port, id),
            peer_listen: peer_listen_address(args.port, id),
            tls,
            bootstrap: id == 1,
            cluster_key_file: key_file.to_owned(),
            write_key: args.write_key.clone(),
            admin_key: args.admin_key.clone(),
            backup: backups.map(|b| (b.repo.clone(), b.repo_key.clone())),
        })
        .collect()
}

/// `tandem up`'s backup repository: a directory in the data dir, its repository key (which
/// the nodes hold) and the age identity that decrypts it (which in a real deployment
/// stays off the nodes; here one machine holds everything, so the demo can restore).
struct LocalBackups {
    /// The repository's directory, absolute.
    repo: String,
    /// The repository key file (0600).
    repo_key: PathBuf,
    /// The age identity file (0600).
    identity: PathBuf,
}

/// Creates `<data-dir>/backups` and its keys in `<data-dir>/backup-keys/` on the first
/// start; later starts reuse them.
async fn ensure_local_backups(data_dir: &Path) -> Result<LocalBackups, String> {
    use crate::backup::Repository;
    use crate::backup::keys::{Identities, RepoKey};
    let root = std::path::absolute(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let repo_dir = root.join("backups");
    let keys = root.join("backup-keys");
    let local = LocalBackups {
        repo: repo_dir.display().to_string(),
        repo_key: keys.join("repo.key"),
        identity: keys.join("identity.txt"),
    };
    if repo_dir.join(crate::backup::manifest::CONFIG).exists() {
        if !local.repo_key.exists() {
            return Err(format!(
                "{} holds a repository but its key {} is gone; move the repository away or pass --no-backups",
                local.repo,
                local.repo_key.display()
            ));
        }
        return Ok(local);
    }
    // No repository yet: keys left by an interrupted first start never encrypted
    // anything, so they are replaced.
    for stale in [&local.repo_key, &local.identity] {
        match std::fs::remove_file(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", stale.display())),
        }
    }
    for dir in [&repo_dir, &keys] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let key = RepoKey::create(&local.repo_key).map_err(|e| e.to_string())?;
    let public = Identities::create(&local.identity).map_err(|e| e.to_string())?;
    Repository::init(&local.repo, key, vec![public])
        .await
        .map_err(|e| e.to_string())?;
    Ok(local)
}

/// Waits for Ctrl-C, SIGTERM or SIGHUP (a closed terminal), reporting any node that exits
/// on its own meanwhile.
async fn supervise(mut nodes: Vec<ChildNode>) -> Vec<ChildNode> {
    let termination = super::node::termination();
    tokio::pin!(termination);
    let hangup = super::node::hangup();
    tokio::pin!(hangup);
    loop {
        tokio::select! {
            _ = &mut termination => return nodes,
            _ = &mut hangup => return nodes,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                for node in &mut nodes {
                    if let Some(status) = node.exited() {
                        eprintln!(
                            "node {} exited ({status}); the cluster continues with the others. \
                             Its log: {}/node.log. Restart `tandem up` to bring it back.",
                            node.spec.id,
                            node.spec.data_dir.display()
                        );
                    }
                }
                nodes.retain_mut(|node| node.exited().is_none());
            }
        }
    }
}

fn print_banner(args: &UpArgs, url: &str, nodes: &[ChildNode], backups: Option<&LocalBackups>) {
    let key = &args.admin_key;
    println!();
    println!(
        "Tandem is up: a {}-node cluster behind a gateway.",
        nodes.len()
    );
    println!("  API (gateway)  {url}");
    for node in nodes {
        println!(
            "  node {}         {}  region {}  (peers: {})",
            node.spec.id, node.url, node.spec.region, node.peer_url
        );
    }
    println!(
        "  dashboard      {url}/dashboard#key={}   (every node serves /dashboard; what follows # never leaves the browser)",
        fragment_escape(key)
    );
    println!("  write key      {}   (source \"default\")", args.write_key);
    println!("  admin key      {key}");
    println!(
        "  data           {}  (logs: node-N/node.log)",
        args.data_dir.display()
    );
    println!(
        "  between nodes  mutual TLS (local CA: {}/tls/ca.pem); clients: plain HTTP on 127.0.0.1",
        args.data_dir.display()
    );
    match backups {
        Some(b) => println!(
            "  backups        nightly at 02:00 UTC, and the log archived every 10 s, into {} (keys: {}/backup-keys/, owner-only)",
            b.repo,
            args.data_dir.display()
        ),
        None => println!("  backups        none (--no-backups)"),
    }
    if !args.no_demo {
        println!(
            "  demo load      {} events at {}/s: e-commerce, support and social journeys",
            args.demo_events, args.demo_rate
        );
    }
    println!();
    println!("Look around:");
    println!(
        "  tandem cluster status --target {} --admin-key {key}",
        nodes[0].url
    );
    println!("  curl -s -H 'Authorization: Bearer {key}' {url}/v1/profiles/user_id:<id>");
    println!(
        "  curl -s -u {}: -H 'content-type: application/json' {url}/v1/track \\",
        args.write_key
    );
    println!(
        "       -d '{{\"userId\":\"ada\",\"event\":\"Order Completed\",\"properties\":{{\"revenue\":42}}}}'"
    );
    println!(
        "  kill -9 a node's pid (see `ps`), and watch writes keep flowing through the gateway."
    );
    if let Some(b) = backups {
        println!(
            "  tandem backup create --target {} --admin-key {key}    # a backup now",
            nodes[0].url
        );
        println!(
            "  tandem backup list --repo {} --repo-key {}",
            b.repo,
            b.repo_key.display()
        );
        println!(
            "  tandem backup verify --repo {} --repo-key {} --identity {}",
            b.repo,
            b.repo_key.display(),
            b.identity.display()
        );
    }
    println!(
        "API reference: docs/api.md; operations: docs/operations.md. Ctrl-C stops everything."
    );
}

/// `text` percent-encoded for a URL fragment (the dashboard decodes it), so any key
/// survives the link.
fn fragment_escape(text: &str) -> String {
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

/// Segments the demo defines (unless they exist), so there is something to look at.
const DEMO_SEGMENTS: [(&str, &str); 3] = [
    ("big-spenders", "lifetime_value > 200"),
    (
        "recent-buyers",
        "event(\"Order Completed\").within(7d).exists()",
    ),
    ("needs-care", "open_tickets > 0 or tickets_90d >= 2"),
];

async fn define_demo_segments(admin_key: &str, url: &str) {
    let client = crate::tls::plain_http_client();
    for (id, rule) in DEMO_SEGMENTS {
        let reply = client
            .post(format!("{url}/v1/segments"))
            .bearer_auth(admin_key)
            .json(&serde_json::json!({"id": id, "rule": rule}))
            .send()
            .await;
        match reply {
            Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::CONFLICT => {}
            Ok(r) => eprintln!("demo segment {id}: {}", r.status()),
            Err(error) => eprintln!("demo segment {id}: {error}"),
        }
    }
}

async fn demo(options: LoadOptions, admin_key: String, url: String, acked: PathBuf) {
    define_demo_segments(&admin_key, &url).await;
    match load::run(&options).await {
        Ok(summary) => {
            println!("\ndemo workload finished:\n{summary}");
            if let Some(identity) = first_identity(&acked) {
                println!("a demo customer's profile:");
                println!(
                    "  curl -s -H 'Authorization: Bearer {admin_key}' {url}/v1/profiles/{identity}"
                );
            }
            println!("segments the demo defined, and their members:");
            println!("  curl -s -H 'Authorization: Bearer {admin_key}' {url}/v1/segments");
            println!(
                "  curl -s -H 'Authorization: Bearer {admin_key}' {url}/v1/segments/big-spenders/members"
            );
            println!("check every acknowledged demo event is stored exactly once:");
            println!(
                "  tandem verify --target {url} --acked {} --key {admin_key}",
                acked.display()
            );
        }
        Err(error) => eprintln!("demo workload could not run: {error}"),
    }
}

fn first_identity(acked: &Path) -> Option<String> {
    let text = std::fs::read_to_string(acked).ok()?;
    let line = text.lines().next()?;
    load::acked::parse_line(line)
        .ok()
        .map(|(_, identity)| identity.to_owned())
}

/// Node `id`'s client address on 127.0.0.1 when the gateway takes `port`: the port after it
/// plus `id - 1`, or any free port when `port` is 0.
pub(super) fn listen_address(port: u16, id: u64) -> String {
    match port {
        0 => "127.0.0.1:0".into(),
        _ => format!("127.0.0.1:{}", u32::from(port) + id as u32),
    }
}

/// Node `id`'s peer address on 127.0.0.1 (see [`PEER_PORT_OFFSET`]), or any free port when
/// `port` is 0.
pub(super) fn peer_listen_address(port: u16, id: u64) -> String {
    match port {
        0 => "127.0.0.1:0".into(),
        _ => format!(
            "127.0.0.1:{}",
            u32::from(port) + PEER_PORT_OFFSET + id as u32
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_escaped_for_the_dashboard_link() {
        assert_eq!(
            super::fragment_escape("demo-admin-key-not-secret"),
            "demo-admin-key-not-secret"
        );
        assert_eq!(super::fragment_escape("a&b=c%d e"), "a%26b%3Dc%25d%20e");
    }
}
