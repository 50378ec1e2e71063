//! The `tandem` binary; everything lives in the library (see `src/lib.rs`).

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: under ingest, glibc's allocator (malloc, free and
/// their consolidation) took about a third of a node's CPU; see docs/architecture.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`: its place in the C library's `mi_option_e` (v2 and
/// v3 alike; the Rust bindings name no constant for it). A test pins it by its default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps the memory mimalloc frees instead of handing it back to the OS a second later
/// (its default purge delay): the process's resident set stays at its peak, and memory that
/// is freed and allocated again is reused warm. A node frees and allocates hundreds of MiB
/// a minute (memtables flushed, blocks decoded, request buffers); handed back, each page
/// is faulted in and zeroed again on its next use. On the 2-core VM of
/// docs/benchmarks.md ("mimalloc keeps freed memory") a fresh page costs ~30× a warm one
/// (the host reclaims the guest's free pages), and one node at 1.5M–3M events measured
/// 5–13% more events/s and 4–10% less CPU per event this way. The peak resident set is the
/// bound, as before; it is reached sooner. `MIMALLOC_PURGE_DELAY` in the environment still
/// decides (e.g. `1000` for mimalloc's default).
fn keep_freed_memory() {
    // SAFETY: plain setters and getters of mimalloc's option table, callable at any time;
    // an option the environment set is left as it is.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, -1) };
}

fn main() {
    keep_freed_memory();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            eprintln!("skipped: MIMALLOC_PURGE_DELAY is set, so mimalloc's default is not seen");
            return;
        }
        // SAFETY: as in `keep_freed_memory`.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // 1000 ms is mimalloc v3's default purge delay and no other option's default: an
        // upgrade that moves the option fails here rather than setting another one.
        assert_eq!(get(), 1000);
        keep_freed_memory();
        assert_eq!(get(), -1);
    }
}
