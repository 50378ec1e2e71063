//! The wall clock: the one place Tandem reads it.
//!
//! Nothing that must give the same answer on every replica reads it: applying a log entry
//! takes its time from the entry (the batch time the proposer stamped). Edges read it —
//! the proposer stamping a batch, a request's receive time, services deciding what a
//! time-relative rule means now, status output — and pass the value down.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
