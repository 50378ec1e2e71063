//! Per-source ingest quotas: one token bucket per source, per node.
//!
//! A bucket holds up to `burst_events` tokens and refills at `events_per_sec`. A request
//! takes as many tokens as it carries events (a batch's item count, before validation),
//! all or nothing: a refused request takes none, so a source over its quota is slowed to
//! its rate rather than starved. Refusals are 429 `source_quota_exceeded` with a
//! `Retry-After` of when the bucket will hold enough, and a body naming the source and
//! its quota; other sources' buckets are untouched, so they carry on.
//!
//! The quota is per node: behind a balancer over N nodes a source may send up to N times
//! its rate. It protects each node's shared commit pipeline from one source; it is not
//! billing.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;

use super::auth::Source;
use super::error::ApiError;
use crate::config::Quota;

/// Longest `Retry-After` a refusal asks for, seconds (a full bucket refills well before at
/// any sane rate; this only caps the header at absurd settings).
pub const RETRY_AFTER_SECS_MAX: u64 = 3600;

/// A source's token bucket.
#[derive(Debug)]
pub struct Bucket {
    state: Mutex<BucketState>,
}

#[derive(Debug, Clone, Copy)]
struct BucketState {
    /// Tokens available at `refilled`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
}

impl Bucket {
    /// A full bucket for `quota`.
    pub fn full(quota: Quota) -> Bucket {
        Bucket {
            state: Mutex::new(BucketState {
                tokens: quota.burst_events as f64,
                refilled: Instant::now(),
            }),
        }
    }

    /// A new bucket with this one's level, capped at the (possibly new) `quota`'s burst:
    /// a key reload must not refill a source that is over its quota.
    pub fn carried_over(&self, quota: Quota) -> Bucket {
        let state = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Bucket {
            state: Mutex::new(BucketState {
                tokens: state.tokens.min(quota.burst_events as f64),
                refilled: state.refilled,
            }),
        }
    }

    /// Takes `events` tokens at `now`, or returns how long until there are enough.
    pub fn take(&self, quota: Quota, events: u64, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let rate = quota.events_per_sec.max(1) as f64;
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        state.tokens = (state.tokens + elapsed * rate).min(quota.burst_events as f64);
        state.refilled = now.max(state.refilled);
        let wanted = events as f64;
        if state.tokens >= wanted {
            state.tokens -= wanted;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((wanted - state.tokens) / rate))
        }
    }
}

/// Charges `events` to `source`'s quota; 429 `source_quota_exceeded` when over it.
pub fn charge(source: &Source, events: u64) -> Result<(), ApiError> {
    let Err(wait) = source.bucket.take(source.quota, events, Instant::now()) else {
        return Ok(());
    };
    let retry_after = wait
        .as_secs_f64()
        .ceil()
        .clamp(1.0, RETRY_AFTER_SECS_MAX as f64) as u64;
    let quota = source.quota;
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "source_quota_exceeded",
        format!(
            "source {:?} is over its quota of {} events/s (burst {}) on this node; nothing \
             from this request was stored; retry after {retry_after} s, or raise the \
             source's events_per_sec",
            source.name, quota.events_per_sec, quota.burst_events
        ),
    );
    error.extra = Some(json!({
        "source": source.name,
        "quota": {"events_per_sec": quota.events_per_sec, "burst_events": quota.burst_events},
    }));
    error.retry_after_secs = Some(retry_after);
    Err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTA: Quota = Quota {
        events_per_sec: 10,
        burst_events: 20,
    };

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let bucket = Bucket::full(QUOTA);
        let start = Instant::now();
        assert_eq!(
            bucket.take(QUOTA, 20, start),
            Ok(()),
            "the whole burst at once"
        );
        let wait = bucket.take(QUOTA, 5, start).expect_err("empty");
        assert_eq!(wait, Duration::from_millis(500), "5 events at 10/s");
        // A refusal takes nothing: half a second later exactly 5 tokens are there.
        let later = start + Duration::from_millis(500);
        assert_eq!(bucket.take(QUOTA, 5, later), Ok(()));
        assert!(bucket.take(QUOTA, 1, later).is_err());
        // Refill stops at the burst.
        let much_later = later + Duration::from_secs(3600);
        assert_eq!(bucket.take(QUOTA, 20, much_later), Ok(()));
        assert!(bucket.take(QUOTA, 1, much_later).is_err());
    }

    #[test]
    fn a_reload_does_not_refill_a_bucket() {
        let bucket = Bucket::full(QUOTA);
        let now = Instant::now();
        assert_eq!(bucket.take(QUOTA, 20, now), Ok(()));
        let carried = bucket.carried_over(QUOTA);
        assert!(carried.take(QUOTA, 1, now).is_err());
        let smaller = Quota {
            events_per_sec: 1,
            burst_events: 2,
        };
        let fresh = Bucket::full(QUOTA).carried_over(smaller);
        assert!(
            fresh.take(smaller, 3, now).is_err(),
            "capped at the new burst"
        );
    }
}
