//! `tandem load` and `tandem verify`: thin wrappers over [`crate::load`].

use std::path::PathBuf;

use crate::load::{self, LoadOptions, VerifyOptions};

/// `tandem load`
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Base URL of a node or gateway, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub target: String,
    /// A source's write key.
    #[arg(long, env = "TANDEM_WRITE_KEY")]
    pub write_key: String,
    /// Number of events to send.
    #[arg(long)]
    pub events: u64,
    /// Events per second (default: as fast as the concurrency allows).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = load::run::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Events per /v1/batch request.
    #[arg(long, default_value_t = load::run::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Write every acknowledged messageId and its identity to this file (for verify).
    #[arg(long)]
    pub acked: Option<PathBuf>,
    /// Workload seed; the same seed sends the same events (so a rerun is all duplicates).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Build every request body before the clock starts, then only send bytes, so the
    /// generator's CPU stays out of a throughput figure (bodies carry no sentAt; at most
    /// 4 GiB of prepared requests, about 8 million events).
    #[arg(long)]
    pub replay: bool,
    /// Report the CPU time and peak memory of this process during the run (a node's pid;
    /// repeat for several). Linux only.
    #[arg(long = "watch-pid")]
    pub watch_pids: Vec<u32>,
    /// Report bytes written to this disk during the run (a name in /proc/diskstats, e.g.
    /// vda). Counts every process's writes.
    #[arg(long)]
    pub disk: Option<String>,
    /// CA certificate (PEM) to trust for an https:// target.
    #[arg(long, env = "TANDEM_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// `tandem verify`
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Base URL of a node or gateway.
    #[arg(long)]
    pub target: String,
    /// The file written by `tandem load --acked`.
    #[arg(long)]
    pub acked: PathBuf,
    /// CA certificate (PEM) to trust for an https:// target.
    #[arg(long, env = "TANDEM_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// A read key or the admin key.
    #[arg(long, env = "TANDEM_ADMIN_KEY")]
    pub key: String,
    /// Profiles fetched at once.
    #[arg(long, default_value_t = load::run::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `tandem load`; exit code 0 only if every event was acknowledged.
pub async fn run_load(args: LoadArgs) -> i32 {
    let options = LoadOptions {
        target: args.target,
        write_key: args.write_key,
        events: args.events,
        rate: args.rate,
        concurrency: args.concurrency,
        batch_size: args.batch_size,
        acked: args.acked,
        seed: args.seed,
        progress: !args.quiet,
        replay: args.replay,
        watch_pids: args.watch_pids,
        disk: args.disk,
        ca_file: args.ca_file,
    };
    match load::run(&options).await {
        Ok(summary) => {
            println!("{summary}");
            if summary.is_ok() { 0 } else { 1 }
        }
        Err(error) => {
            eprintln!("tandem load: {error}");
            2
        }
    }
}

/// Runs `tandem verify`; exit code 0 only if every acknowledged event is stored once.
pub async fn run_verify(args: VerifyArgs) -> i32 {
    let mut options = VerifyOptions::new(args.target, args.acked, args.key);
    options.concurrency = args.concurrency;
    options.progress = !args.quiet;
    options.ca_file = args.ca_file;
    match load::verify(&options).await {
        Ok(report) => {
            println!("{report}");
            if report.is_ok() { 0 } else { 1 }
        }
        Err(error) => {
            eprintln!("tandem verify: {error}");
            2
        }
    }
}

/// `tandem read-bench`
#[derive(Debug, clap::Args)]
pub struct ReadBenchArgs {
    /// Base URL of a node.
    #[arg(long)]
    pub target: String,
    /// A read key or the admin key.
    #[arg(long, env = "TANDEM_ADMIN_KEY")]
    pub key: String,
    /// An acknowledged-events file (from `tandem load --acked`) to take identities from.
    #[arg(long, required_unless_present = "path")]
    pub acked: Option<PathBuf>,
    /// Seconds to read for.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Readers in parallel.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// The read mode to ask for (`?consistency=`); the node's default (linearizable) if
    /// not given.
    #[arg(long, value_parser = ["linearizable", "lease", "local"])]
    pub consistency: Option<String>,
    /// A log position every read must reflect (`?after=`), e.g. a write reply's
    /// `position.index`.
    #[arg(long)]
    pub after: Option<u64>,
    /// Reads per second in all (spread over the readers); default: each reader reads back
    /// to back.
    #[arg(long)]
    pub rate: Option<f64>,
    /// CA certificate (PEM) to trust for an https:// target.
    #[arg(long, env = "TANDEM_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Read this path (e.g. /health/live) instead of profiles: the HTTP path's own
    /// latency, to set beside the profile reads'. `--acked` is then not needed.
    #[arg(long)]
    pub path: Option<String>,
}

/// Runs `tandem read-bench`.
pub async fn run_read_bench(args: ReadBenchArgs) -> i32 {
    let options = load::readbench::ReadBenchOptions {
        target: args.target,
        key: args.key,
        acked: args.acked.unwrap_or_default(),
        duration: std::time::Duration::from_secs(args.seconds),
        concurrency: args.concurrency,
        consistency: args.consistency,
        after: args.after,
        rate: args.rate,
        ca_file: args.ca_file,
        path: args.path,
    };
    match load::readbench::run(&options).await {
        Ok(report) => {
            println!("{report}");
            if report.errors == 0 { 0 } else { 1 }
        }
        Err(error) => {
            eprintln!("tandem read-bench: {error}");
            2
        }
    }
}
