//! Crash points: named places where a test can make the process die at once, as a
//! `kill -9` or a power cut would, to prove that recovery handles a crash exactly there.
//!
//! A crash point does nothing unless the environment variable [`ENV`] names it when the
//! process starts; then the process prints the point's name to stderr and aborts (no
//! destructors, no flushing — what is on disk is what a crash would leave). The points are
//! listed in `docs/operations.md`; production never sets the variable.

use std::sync::OnceLock;

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
