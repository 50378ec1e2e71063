//! The wall clock: the one place Tandem reads it.
//!
//! Nothing that must give the same answer on every replica reads it: applying a log entry
//! takes its time from the entry (the batch or tick time the leader stamped), and the CDP
//! services take theirs from the feed (the state clock as of each entry). Edges read it —
//! the leader stamping a batch or a tick, a request's receive time, a query answering
//! "as of now" (computed traits, recommendations), supervision's timeouts, status output —
//! and pass the value down.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
