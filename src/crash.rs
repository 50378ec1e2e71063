//! Crash points: named places where a test can make the process die at once, as a
//! `kill -9` or a power cut would, to prove that recovery handles a crash exactly there.
//!
//! A crash point does nothing unless the environment variable [`ENV`] names it when the
//! process starts; then the process prints the point's name to stderr and aborts (no
//! destructors, no flushing — what is on disk is what a crash would leave). The points are
//! listed in `docs/operations.md`; production never sets the variable.
//!
//! Failure points are the same idea for errors instead of deaths: when [`FAIL_ENV`] is
//! `point@N`, the `N`th pass through `point` and every later one report an injected I/O
//! error (an fsync that fails, as a dying disk's does), so tests can check that the node
//! stops loudly rather than carrying on.
//!
//! Delay points ([`DELAY_ENV`]) hold a stage back instead, so a test can check what
//! depends on it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the crash point to die at, e.g.
/// `TANDEM_CRASH_AT=snapshot-install:store-half`.
pub const ENV: &str = "TANDEM_CRASH_AT";

/// Dies here if [`ENV`] names `point`.
pub fn point(point: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()));
    if armed.as_deref() == Some(point) {
        eprintln!("tandem: crashing at crash point {point} ({ENV} is set)");
        std::process::abort();
    }
}

/// The environment variable naming the failure point and the pass it starts failing at,
/// e.g. `TANDEM_FAIL_AT=log-fsync@20`.
pub const FAIL_ENV: &str = "TANDEM_FAIL_AT";

/// Whether this pass through `point` must fail (see [`FAIL_ENV`]).
pub fn fails(point: &str) -> bool {
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static PASSES: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let value = std::env::var(FAIL_ENV).ok()?;
        let (name, from) = value.split_once('@').unwrap_or((value.as_str(), "1"));
        Some((name.to_owned(), from.parse().ok()?))
    });
    match armed {
        Some((name, from)) if name == point => PASSES.fetch_add(1, Ordering::Relaxed) + 1 >= *from,
        _ => false,
    }
}

/// The environment variable naming a delay point and its delay in milliseconds, e.g.
/// `TANDEM_DELAY_AT=apply@2000`: every pass through that point waits that long first, so
/// a test can hold a stage back (apply behind commit, say) and check what depends on it.
pub const DELAY_ENV: &str = "TANDEM_DELAY_AT";

/// How long to wait at `point`, if [`DELAY_ENV`] names it.
pub fn delay(point: &str) -> Option<std::time::Duration> {
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        let value = std::env::var(DELAY_ENV).ok()?;
        let (name, ms) = value.split_once('@')?;
        Some((name.to_owned(), ms.parse().ok()?))
    });
    match armed {
        Some((name, ms)) if name == point => Some(std::time::Duration::from_millis(*ms)),
        _ => None,
    }
}
