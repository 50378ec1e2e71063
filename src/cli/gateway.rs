//! `tandem gateway`: the load-balancing gateway in front of several nodes, as a process.
//!
//! Flags map one to one onto [`GatewayOptions`]; the work is in [`crate::gateway`]. The
//! process prints exactly one line to stdout, `tandem gateway listening on http://ADDR`
//! (tests bind port 0 and read it), and stops on SIGTERM or Ctrl-C after finishing the
//! requests in flight. Exit codes: 0 after a clean stop, 2 for unusable flags, 1 otherwise.

use tokio::net::TcpListener;

use crate::cli::node;
use crate::gateway::options::{
    DEFAULT_ATTEMPTS_MAX, DEFAULT_HEALTH_INTERVAL_MS, DEFAULT_INFLIGHT_MAX,
    DEFAULT_REQUEST_TIMEOUT_MS,
};
use crate::gateway::{self, GatewayOptions};

/// `tandem gateway`
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Address to listen on, HOST:PORT; port 0 picks a free port (printed at start-up).
    #[arg(long)]
    pub listen: String,
    /// Base URLs of the nodes, comma-separated: http://127.0.0.1:8081,http://127.0.0.1:8082
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// Milliseconds between health checks of every node (GET /health/ready).
    #[arg(long, default_value_t = DEFAULT_HEALTH_INTERVAL_MS)]
    pub health_interval_ms: u64,
    /// Requests in flight at most; more are answered 429 at once.
    #[arg(long, default_value_t = DEFAULT_INFLIGHT_MAX)]
    pub inflight_max: usize,
    /// Milliseconds a request may take, all attempts included.
    #[arg(long, default_value_t = DEFAULT_REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,
    /// Attempts per request, the first included; retries go to another node.
    #[arg(long, default_value_t = DEFAULT_ATTEMPTS_MAX)]
    pub attempts_max: u32,
    /// CA certificate (PEM) of https:// nodes' certificates.
    #[arg(long, env = "TANDEM_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

impl GatewayArgs {
    /// The options these flags select.
    pub fn options(&self) -> GatewayOptions {
        GatewayOptions {
            nodes: self.nodes.clone(),
            health_interval_ms: self.health_interval_ms,
            inflight_max: self.inflight_max,
            request_timeout_ms: self.request_timeout_ms,
            attempts_max: self.attempts_max,
            ca_file: self.ca_file.clone(),
        }
    }
}

/// Runs `tandem gateway` until SIGTERM or Ctrl-C; returns the exit code.
pub async fn run_gateway(args: GatewayArgs) -> i32 {
    let options = args.options();
    if let Err(error) = options.validate() {
        eprintln!("tandem gateway: {error}");
        return 2;
    }
    let listener = match TcpListener::bind(&args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "tandem gateway: cannot listen on {:?}: {error}; use a free HOST:PORT such as 127.0.0.1:8000",
                args.listen
            );
            return 2;
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("tandem gateway: cannot read the listening address: {error}");
            return 1;
        }
    };
    println!("tandem gateway listening on http://{addr}");
    match gateway::serve(listener, options, node::termination()).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("tandem gateway: {error}");
            1
        }
    }
}
