//! `tandem up`: the embedded default a newcomer runs — a local deployment with its data
//! under `./tandem-data` and a demo workload, printing where to look.
//!
//! Today this is one node in this process; running it again resumes the same data.

use std::path::{Path, PathBuf};

use crate::cli::node;
use crate::config::{CliOverrides, Config};
use crate::load::{self, LoadOptions};

/// `tandem up`
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the data lives.
    #[arg(long, default_value = "./tandem-data")]
    pub data_dir: PathBuf,
    /// HTTP port on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Write key of the demo source.
    #[arg(long, default_value = "demo-write-key")]
    pub write_key: String,
    /// Admin key (also reads profiles).
    #[arg(long, default_value = "demo-admin-key")]
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
}

/// Runs `tandem up` until Ctrl-C.
pub async fn run_up(args: UpArgs) -> i32 {
    let overrides = CliOverrides {
        data_dir: Some(args.data_dir.clone()),
        listen: Some(format!("127.0.0.1:{}", args.port)),
        write_key: Some(args.write_key.clone()),
        admin_key: Some(args.admin_key.clone()),
        ..CliOverrides::default()
    };
    let config = match Config::load(None, &overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tandem up: {error}");
            return 2;
        }
    };
    let prepared = match node::prepare(config).await {
        Ok(prepared) => prepared,
        Err(error) => {
            eprintln!("tandem up: {error}");
            return 1;
        }
    };
    let url = format!("http://{}", prepared.addr);
    let seed = seed_from_clock();
    let acked = (!args.no_demo).then(|| args.data_dir.join(format!("demo-acked-{seed}.tsv")));
    print_banner(&args, &url, acked.as_deref());
    if let Some(acked) = acked {
        let mut options = LoadOptions::new(url.clone(), args.write_key.clone(), args.demo_events);
        options.rate = Some(args.demo_rate);
        options.acked = Some(acked.clone());
        options.seed = seed;
        tokio::spawn(demo(options, args.admin_key.clone(), url.clone(), acked));
    }
    match prepared.serve(node::termination()).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("tandem up: {error}");
            1
        }
    }
}

fn print_banner(args: &UpArgs, url: &str, acked: Option<&Path>) {
    let key = &args.admin_key;
    println!("Tandem is up (one node, embedded storage).");
    println!("  API          {url}");
    println!("  write key    {}   (source \"default\")", args.write_key);
    println!("  admin key    {key}");
    println!("  data         {}", args.data_dir.display());
    if let Some(acked) = acked {
        println!(
            "  demo load    {} events at {}/s: e-commerce, support and social journeys",
            args.demo_events, args.demo_rate
        );
        println!("               acknowledged ids -> {}", acked.display());
    }
    println!();
    println!("Look around:");
    println!("  curl -s -H 'Authorization: Bearer {key}' {url}/v1/admin/status");
    println!("  curl -s -H 'Authorization: Bearer {key}' {url}/v1/profiles/user_id:<id>");
    println!(
        "  curl -s -u {}: -H 'content-type: application/json' {url}/v1/track \\",
        args.write_key
    );
    println!(
        "       -d '{{\"userId\":\"ada\",\"event\":\"Order Completed\",\"properties\":{{\"revenue\":42}}}}'"
    );
    println!("API reference: docs/api.md. Ctrl-C stops; `tandem up` again resumes the same data.");
}

async fn demo(options: LoadOptions, admin_key: String, url: String, acked: PathBuf) {
    match load::run(&options).await {
        Ok(summary) => {
            println!("\ndemo workload finished:\n{summary}");
            if let Some(identity) = first_identity(&acked) {
                println!("a demo customer's profile:");
                println!(
                    "  curl -s -H 'Authorization: Bearer {admin_key}' {url}/v1/profiles/{identity}"
                );
            }
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

/// A seed that differs per run, so a second `tandem up` sends new demo events rather
/// than duplicates of the first run's.
fn seed_from_clock() -> u64 {
    (crate::node::now_ms() / 1000) as u64
}
