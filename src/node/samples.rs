//! The last hour of this node, in memory, for the dashboard: every [`SAMPLE_INTERVAL`]
//! one [`Sample`] of the cluster-wide ingest rate and of this node's request latency,
//! kept in a ring of at most [`SAMPLES_MAX`] (so one hour, bounded whatever happens).
//!
//! - **Ingest rate** is the change of the replicated events counter between two
//!   readings, so it is the same cluster-wide rate on every node that applies, whichever
//!   node took the writes.
//! - **Latency** comes from a [`LatencyTally`] the request middleware feeds (client
//!   requests under `/v1/`, not the admin endpoints the dashboard itself polls): buckets
//!   of atomics whose difference between two readings gives the window's p50 and p99 as
//!   the upper bound of the bucket they fall in.
//!
//! Nothing here survives a restart: the history starts again empty, which the page shows
//! as a shorter chart. The ring and the quantiles are pure and tested without a node.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Time between two samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept: one hour at [`SAMPLE_INTERVAL`].
pub const SAMPLES_MAX: usize = 360;

/// Upper bounds of the latency buckets, seconds: 0.5 ms × 2^i, like the Prometheus
/// request histogram; a last, unbounded bucket catches the rest.
pub const LATENCY_BOUNDS_SECONDS: [f64; 16] = {
    let mut bounds = [0.0; 16];
    let mut i = 0;
    let mut bound = 0.0005;
    while i < 16 {
        bounds[i] = bound;
        bound *= 2.0;
        i += 1;
    }
    bounds
};
/// Buckets of a tally: the bounded ones and the overflow.
const BUCKETS: usize = LATENCY_BOUNDS_SECONDS.len() + 1;

/// Request latencies counted into fixed buckets, updated lock-free on the hot path.
#[derive(Debug, Default)]
pub struct LatencyTally {
    buckets: [AtomicU64; BUCKETS],
}

/// A reading of a [`LatencyTally`]: cumulative counts per bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyCounts(pub [u64; BUCKETS]);

impl LatencyTally {
    /// Counts one request that took `seconds`.
    pub fn observe(&self, seconds: f64) {
        let bucket = LATENCY_BOUNDS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn read(&self) -> LatencyCounts {
        LatencyCounts(std::array::from_fn(|i| {
            self.buckets[i].load(Ordering::Relaxed)
        }))
    }
}

impl LatencyCounts {
    /// Requests counted since `earlier` (a previous reading of the same tally).
    pub fn since(&self, earlier: &LatencyCounts) -> LatencyCounts {
        LatencyCounts(std::array::from_fn(|i| {
            self.0[i].saturating_sub(earlier.0[i])
        }))
    }

    /// Requests counted.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The upper bound, in ms, of the bucket holding quantile `q` (0 < q ≤ 1); `None`
    /// without requests. A quantile in the overflow bucket reports the last bound.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        // The rank of the quantile, 1-based: the smallest count c with c ≥ q × total.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, count) in self.0.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let bound = LATENCY_BOUNDS_SECONDS[i.min(LATENCY_BOUNDS_SECONDS.len() - 1)];
                return Some(bound * 1000.0);
            }
        }
        None
    }
}

/// One point of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Wall-clock time of the reading, ms since the epoch.
    pub at_ms: i64,
    /// Events stored cluster-wide per second since the previous reading.
    pub events_per_sec: f64,
    /// Client requests this node answered per second since the previous reading.
    pub requests_per_sec: f64,
    /// Median latency of those requests, ms (bucket upper bound); `None` without requests.
    pub latency_p50_ms: Option<f64>,
    /// 99th-percentile latency, ms (bucket upper bound); `None` without requests.
    pub latency_p99_ms: Option<f64>,
}

/// What is read at each sample time: cumulative values the next sample is a difference of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Wall-clock time, ms since the epoch.
    pub at_ms: i64,
    /// The replicated events counter.
    pub events_stored: u64,
    /// The latency tally.
    pub latency: LatencyCounts,
}

/// The bounded history: the last [`SAMPLES_MAX`] samples (or fewer, by `capacity`).
#[derive(Debug)]
pub struct SampleRing {
    capacity: usize,
    samples: VecDeque<Sample>,
    last: Option<Reading>,
}

impl SampleRing {
    /// An empty ring keeping at most `capacity` samples (at least one).
    pub fn new(capacity: usize) -> SampleRing {
        let capacity = capacity.max(1);
        SampleRing {
            capacity,
            samples: VecDeque::with_capacity(capacity),
            last: None,
        }
    }

    /// Records `reading`: the first only sets the baseline; each later one adds the sample
    /// of the interval since the previous reading, dropping the oldest when full. A
    /// reading that goes back in time (a wall-clock step) or whose counters went down
    /// (impossible unless the state was replaced by a snapshot install) only resets the
    /// baseline, so no negative or absurd rate is ever shown.
    pub fn record(&mut self, reading: Reading) {
        let Some(last) = self.last.replace(reading) else {
            return;
        };
        let elapsed_ms = reading.at_ms - last.at_ms;
        if elapsed_ms <= 0 || reading.events_stored < last.events_stored {
            return;
        }
        let seconds = elapsed_ms as f64 / 1000.0;
        let window = reading.latency.since(&last.latency);
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at_ms: reading.at_ms,
            events_per_sec: (reading.events_stored - last.events_stored) as f64 / seconds,
            requests_per_sec: window.total() as f64 / seconds,
            latency_p50_ms: window.quantile_ms(0.50),
            latency_p99_ms: window.quantile_ms(0.99),
        });
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.iter().cloned().collect()
    }
}

/// Takes a reading every [`SAMPLE_INTERVAL`] into `ring` until the node stops (the
/// first at once, as the baseline).
pub(super) async fn run(
    store: std::sync::Arc<crate::store::Store>,
    metrics: std::sync::Arc<super::metrics::Metrics>,
    ring: std::sync::Arc<std::sync::Mutex<SampleRing>>,
) {
    let mut every = tokio::time::interval(SAMPLE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Ok(events_stored) = store.reader().events_stored() else {
            continue;
        };
        let reading = Reading {
            at_ms: crate::clock::now_ms(),
            events_stored,
            latency: metrics.dashboard_latency.read(),
        };
        ring.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(reading);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(per_bucket: &[(usize, u64)]) -> LatencyCounts {
        let mut counts = LatencyCounts::default();
        for (bucket, n) in per_bucket {
            counts.0[*bucket] = *n;
        }
        counts
    }

    fn reading(at_s: i64, events: u64, latency: LatencyCounts) -> Reading {
        Reading {
            at_ms: at_s * 1000,
            events_stored: events,
            latency,
        }
    }

    #[test]
    fn tally_puts_each_latency_in_the_first_bucket_that_holds_it() {
        let tally = LatencyTally::default();
        for seconds in [0.0001, 0.0005, 0.0006, 0.003, 100.0] {
            tally.observe(seconds);
        }
        // 0.5 ms holds 0.1 and 0.5 ms; 1 ms holds 0.6 ms; 4 ms holds 3 ms; 100 s overflows.
        assert_eq!(tally.read(), counts(&[(0, 2), (1, 1), (3, 1), (16, 1)]));
    }

    #[test]
    fn quantiles_are_the_bound_of_the_bucket_they_fall_in() {
        // 98 requests ≤ 1 ms, 2 requests in (64 ms, 128 ms].
        let window = counts(&[(1, 98), (8, 2)]);
        assert_eq!(window.quantile_ms(0.5), Some(1.0));
        assert_eq!(window.quantile_ms(0.98), Some(1.0));
        assert_eq!(window.quantile_ms(0.99), Some(128.0));
        assert_eq!(LatencyCounts::default().quantile_ms(0.99), None);
        // The overflow bucket reports the last bound rather than infinity.
        assert_eq!(counts(&[(16, 1)]).quantile_ms(0.5), Some(16384.0));
    }

    #[test]
    fn samples_are_differences_between_readings() {
        let mut ring = SampleRing::new(10);
        ring.record(reading(100, 1_000, counts(&[(0, 10)])));
        assert!(ring.samples().is_empty(), "the first reading is a baseline");
        ring.record(reading(110, 1_500, counts(&[(0, 10), (4, 20)])));
        let samples = ring.samples();
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].at_ms, 110_000);
        assert_eq!(samples[0].events_per_sec, 50.0);
        assert_eq!(samples[0].requests_per_sec, 2.0);
        // Only the 20 new requests count, all in the 8 ms bucket.
        assert_eq!(samples[0].latency_p50_ms, Some(8.0));
        assert_eq!(samples[0].latency_p99_ms, Some(8.0));
        ring.record(reading(120, 1_500, counts(&[(0, 10), (4, 20)])));
        let idle = &ring.samples()[1];
        assert_eq!(idle.events_per_sec, 0.0);
        assert_eq!(idle.latency_p99_ms, None);
    }

    #[test]
    fn the_ring_keeps_only_the_newest_samples() {
        let mut ring = SampleRing::new(3);
        for i in 0..=10 {
            ring.record(reading(i * 10, (i * 100) as u64, LatencyCounts::default()));
        }
        let at: Vec<i64> = ring.samples().iter().map(|s| s.at_ms / 1000).collect();
        assert_eq!(at, vec![80, 90, 100]);
        assert_eq!(SampleRing::new(0).capacity, 1);
    }

    #[test]
    fn a_clock_step_back_or_a_shrinking_counter_resets_the_baseline_only() {
        let mut ring = SampleRing::new(10);
        ring.record(reading(100, 1_000, LatencyCounts::default()));
        ring.record(reading(90, 2_000, LatencyCounts::default()));
        assert!(ring.samples().is_empty(), "time went backwards");
        ring.record(reading(100, 500, LatencyCounts::default()));
        assert!(ring.samples().is_empty(), "the counter went down");
        ring.record(reading(110, 600, LatencyCounts::default()));
        assert_eq!(ring.samples()[0].events_per_sec, 10.0);
    }
}
