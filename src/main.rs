//! The `tandem` binary; everything lives in the library (see `src/lib.rs`).

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: under ingest, glibc's allocator (malloc, free and
/// their consolidation) took about a third of a node's CPU; see docs/architecture.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = tandem::cli::Cli::parse();
    // Every TLS configuration Tandem builds names ring itself; this makes ring the process
    // default too, for HTTP clients built without one (reqwest has no provider of its own
    // here: aws-lc-rs is not built).
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,fjall=warn,lsm_tree=warn,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tandem: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(tandem::cli::run(cli));
    std::process::exit(code);
}
