//! The `tandem` command line: one binary, one subcommand per job.

pub mod backup;
pub mod bench;
pub mod bench_backup;
pub mod bench_reco;
pub mod bench_segments;
pub mod cluster;
pub mod gateway;
pub mod launcher;
pub mod load;
pub mod local_cluster;
pub mod node;
pub mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{CliOverrides, Config};

/// Tandem: a customer data platform that stays up.
#[derive(Debug, Parser)]
#[command(name = "tandem", version = crate::node::format::VERSION, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node.
    Node(NodeArgs),
    /// Start a local deployment with a demo workload (the embedded default).
    Up(up::UpArgs),
    /// Send a synthetic e-commerce, support and social workload.
    Load(load::LoadArgs),
    /// Check that every acknowledged event is stored exactly once.
    Verify(load::VerifyArgs),
    /// Measure failover: leader kill to the first acknowledged write, over many kills.
    BenchFailover(bench::FailoverArgs),
    /// Measure recommendation quality (hit-rate@k vs popularity) and query latency, offline.
    BenchReco(bench_reco::RecoArgs),
    /// Measure real-time segment evaluation per event and the backfill rate.
    BenchSegments(bench_segments::SegmentsArgs),
    /// Measure a backup's CPU per MB, stage by stage, on checkpoint files.
    BenchBackupStages(bench_backup::StagesArgs),
    /// Administer cluster membership: status, add/remove/replace nodes, transfer leadership.
    Cluster(cluster::ClusterArgs),
    /// Measure profile read latency (run it during a load to measure reads while ingesting).
    ReadBench(load::ReadBenchArgs),
    /// Run the load-balancing gateway in front of several nodes.
    Gateway(gateway::GatewayArgs),
    /// Backups: create a repository, take, list, show, verify and prune backups.
    Backup(backup::BackupArgs),
    /// Build a new node's data directory from a backup: the first node of a new cluster.
    Restore(backup::RestoreArgs),
}

/// `tandem node`
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Directory for the node's data (overrides node.data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address, HOST:PORT; port 0 picks a free port (overrides node.listen).
    #[arg(long)]
    pub listen: Option<String>,
    /// Write key of a source named "default" (added to the configured sources).
    #[arg(long)]
    pub write_key: Option<String>,
    /// Admin key; it can also read profiles (overrides auth.admin_key).
    #[arg(long)]
    pub admin_key: Option<String>,
    /// Configuration file (TOML; see tandem.example.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's id in the cluster (overrides cluster.node_id).
    #[arg(long)]
    pub node_id: Option<u64>,
    /// This node's region label (overrides cluster.region).
    #[arg(long)]
    pub region: Option<String>,
    /// URL clients and the gateway reach this node's client listener at (overrides
    /// cluster.advertise_url).
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// Peer listener address, HOST:PORT: Raft and the other /internal/* routes, mutual TLS
    /// (overrides node.peer_listen); port 0 picks a free port. Certificates: the `[tls]` section.
    #[arg(long)]
    pub peer_listen: Option<String>,
    /// URL peers reach this node's peer listener at (overrides cluster.advertise_peer_url).
    #[arg(long)]
    pub advertise_peer_url: Option<String>,
    /// File holding the shared secret of peer requests, the same on every node, readable
    /// by its owner only (overrides cluster.cluster_key_file). The key itself is never a
    /// flag: flags are visible to every user in `ps`. The environment variable
    /// TANDEM_CLUSTER__CLUSTER_KEY is the other way to pass it.
    #[arg(long, env = "TANDEM_CLUSTER_KEY_FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Do not bootstrap a one-node cluster on first start: wait to be added by
    /// `tandem cluster add-node`.
    #[arg(long)]
    pub join: bool,
    /// Enable the fault-injection admin endpoint (tests and drills only).
    #[arg(long)]
    pub enable_faults: bool,
}

impl NodeArgs {
    /// The configuration these flags select.
    pub fn config(&self) -> Result<Config, crate::config::ConfigError> {
        let overrides = CliOverrides {
            data_dir: self.data_dir.clone(),
            listen: self.listen.clone(),
            write_key: self.write_key.clone(),
            admin_key: self.admin_key.clone(),
            node_id: self.node_id,
            region: self.region.clone(),
            advertise_url: self.advertise_url.clone(),
            peer_listen: self.peer_listen.clone(),
            advertise_peer_url: self.advertise_peer_url.clone(),
            cluster_key_file: self.cluster_key_file.clone(),
            join: self.join,
            enable_faults: self.enable_faults,
        };
        Config::load(self.config.as_deref(), &overrides)
    }
}

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Node(args) => run_node(args).await,
        Command::Up(args) => up::run_up(args).await,
        Command::Load(args) => load::run_load(args).await,
        Command::Verify(args) => load::run_verify(args).await,
        Command::ReadBench(args) => load::run_read_bench(args).await,
        Command::Gateway(args) => gateway::run_gateway(args).await,
        Command::Cluster(args) => cluster::run(args).await,
        Command::Backup(args) => backup::run(args).await,
        Command::Restore(args) => backup::run_restore(args).await,
        Command::BenchFailover(args) => bench::run_failover(args).await,
        Command::BenchReco(args) => bench_reco::run_reco(args).await,
        Command::BenchSegments(args) => {
            tokio::task::spawn_blocking(move || bench_segments::run_segments(args))
                .await
                .unwrap_or(1)
        }
        Command::BenchBackupStages(args) => {
            tokio::task::spawn_blocking(move || bench_backup::run_stages(args))
                .await
                .unwrap_or(1)
        }
    }
}

async fn run_node(args: NodeArgs) -> i32 {
    let config = match args.config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tandem node: {error}");
            return 2;
        }
    };
    let prepared = match node::prepare(config).await {
        Ok(prepared) => prepared,
        Err(error) => {
            eprintln!("tandem node: {error}");
            return 1;
        }
    };
    if let Err(error) = prepared.reload_keys_on_hangup(move || args.config()) {
        eprintln!("tandem node: cannot listen for SIGHUP (key reload): {error}");
        return 1;
    }
    // The peer line first: readers that stop at "listening on" have seen it by then.
    println!("tandem node peer listener on {}", prepared.peer_url);
    println!("tandem node listening on {}", prepared.client_url);
    match prepared.serve(node::termination()).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("tandem node: {error}");
            1
        }
    }
}
