//! The synthetic workload generator (`tandem load`) and the acknowledged-event checker
//! (`tandem verify`): the tools that prove the ingestion promise end to end.
//!
//! `load` sends a seeded, reproducible stream of Segment calls ([`workload`]) to
//! `/v1/batch`, retrying what the server asks it to retry with the *same* `messageId`s
//! (which makes retries safe: the server deduplicates them), and records every event the
//! server acknowledged in the acknowledged-events file ([`acked`]). `verify` reads that
//! file back and, through the profile API, checks that every acknowledged event is stored
//! exactly once — none lost, none doubled — whatever happened to the cluster in between.
//!
//! Layout: [`catalogue`], [`events`], [`journey`] and [`workload`] generate events (pure,
//! seeded, no I/O); [`batch`] cuts them into requests and paces them; [`client`] owns
//! HTTP, authentication and the retry policy; [`reply`] reads the `/v1/batch` reply
//! contract; [`replay`] builds every request before the clock starts (`--replay`, for
//! benchmarks); [`run`](mod@run) drives a load run and [`summary`] reports it; [`acked`] is the
//! acknowledged-events file; [`verify`](mod@verify) is the checker, counting with [`counts`].
//!
//! Invariant of a load run: every event sent ends up counted exactly once as acknowledged,
//! rejected or failed, and only acknowledged events reach the acknowledged-events file.

pub mod acked;
pub mod batch;
pub mod catalogue;
pub mod client;
pub mod counts;
pub mod events;
pub mod host;
pub mod journey;
pub mod readbench;
pub mod replay;
pub mod reply;
pub mod run;
pub mod summary;
pub mod verify;
pub mod workload;

use std::path::PathBuf;

pub use run::{LoadOptions, run};
pub use summary::LoadSummary;
pub use verify::{VerifyOptions, VerifyReport, verify};

/// Why a load or verify run could not be carried out (as opposed to events the server
/// rejected, which a [`LoadSummary`] reports).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// An option is out of range; the message names the option and its limits.
    #[error("{0}")]
    InvalidOptions(String),
    /// The acknowledged-events file could not be created, written, synced or read.
    #[error("cannot {action} the acknowledged-events file {}: {source}", path.display())]
    AckedFile {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line of the acknowledged-events file is malformed.
    #[error("{}:{line}: {reason}", path.display())]
    AckedFormat {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    /// `--replay` would hold more request bytes in memory than
    /// [`replay::REPLAY_BYTES_MAX`]; `fitted` events fitted.
    #[error(
        "--replay: {events} events would take more than {} MiB of prepared requests \
         (only the first {fitted} fit); lower --events to {fitted} or fewer, \
         or run without --replay",
        bytes_max >> 20
    )]
    ReplayTooLarge {
        /// Events asked for.
        events: u64,
        /// Events whose requests fitted under the bound.
        fitted: u64,
        /// The bound, in bytes.
        bytes_max: u64,
    },
    /// The HTTP client could not be set up.
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    /// The server stayed unreachable or overloaded through every retry; trying again
    /// later may succeed.
    #[error("{url}: {message}")]
    Unavailable { url: String, message: String },
    /// The server refused the key.
    #[error(
        "{url}: the server refused the key ({message}); check the key and that it has read access"
    )]
    Unauthorized { url: String, message: String },
    /// The server answered something the checker cannot make sense of.
    #[error("{url}: unexpected reply: {message}")]
    UnexpectedReply { url: String, message: String },
}

impl LoadError {
    /// Whether running the same command again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LoadError::Unavailable { .. })
    }
}
