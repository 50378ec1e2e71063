//! The ingestion-rate anomaly detector, as a pure function over bucketed counts.
//!
//! The counts come from the replicated feed (records per bucket of state-clock time, see
//! [`crate::store::read::Reader::feed_seq_at`]): the same on every replica, kept across
//! restarts and failovers, so the baseline is never relearned from scratch. The current
//! window (the newest `window_buckets`) is compared with the **median** rate of the
//! `baseline_buckets` before it: a median ignores a short burst or a short outage inside
//! the baseline, where a mean would be dragged by it.
//!
//! No verdict is given while the stored history covers fewer than `baseline_buckets_min`
//! baseline buckets (warm-up), or while the baseline is quieter than
//! `baseline_events_per_sec_min` (an idle cluster has no rate to drop from).

use crate::config::IngestRateConfig;

/// What the detector found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Not enough history, or the current window is not fully covered.
    WarmingUp,
    /// The baseline is too quiet to judge.
    Quiet {
        /// The baseline's median rate, events/s.
        baseline_per_sec: f64,
    },
    /// A rate to compare: `current_per_sec / baseline_per_sec` is the ratio rules check.
    Judged {
        /// Rate over the current window, events/s.
        current_per_sec: f64,
        /// Median rate of the baseline buckets, events/s.
        baseline_per_sec: f64,
    },
}

impl Verdict {
    /// Current rate over baseline, when judged.
    pub fn ratio(&self) -> Option<f64> {
        match *self {
            Verdict::Judged {
                current_per_sec,
                baseline_per_sec,
            } => Some(current_per_sec / baseline_per_sec),
            _ => None,
        }
    }
}

/// Judges `buckets`, newest first: `Some(count)` for a bucket the stored history covers,
/// `None` for one before the history starts.
pub fn assess(buckets: &[Option<u64>], config: &IngestRateConfig) -> Verdict {
    let window = config.window_buckets as usize;
    let seconds = config.bucket_ms as f64 / 1000.0;
    let Some(current) = buckets.get(..window) else {
        return Verdict::WarmingUp;
    };
    let Some(current) = current.iter().copied().sum::<Option<u64>>() else {
        return Verdict::WarmingUp;
    };
    let end = (window + config.baseline_buckets as usize).min(buckets.len());
    let mut baseline: Vec<u64> = buckets[window..end].iter().flatten().copied().collect();
    if baseline.len() < config.baseline_buckets_min as usize || baseline.is_empty() {
        return Verdict::WarmingUp;
    }
    baseline.sort_unstable();
    let mid = baseline.len() / 2;
    let median = if baseline.len() % 2 == 1 {
        baseline[mid] as f64
    } else {
        (baseline[mid - 1] + baseline[mid]) as f64 / 2.0
    };
    let baseline_per_sec = median / seconds;
    if baseline_per_sec < config.baseline_events_per_sec_min || baseline_per_sec <= 0.0 {
        return Verdict::Quiet { baseline_per_sec };
    }
    Verdict::Judged {
        current_per_sec: current as f64 / (seconds * window as f64),
        baseline_per_sec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> IngestRateConfig {
        IngestRateConfig {
            bucket_ms: 10_000,
            window_buckets: 2,
            baseline_buckets: 6,
            baseline_buckets_min: 4,
            baseline_events_per_sec_min: 1.0,
        }
    }

    /// Buckets newest first: the current window, then the baseline.
    fn buckets(current: &[u64], baseline: &[Option<u64>]) -> Vec<Option<u64>> {
        current
            .iter()
            .map(|&c| Some(c))
            .chain(baseline.iter().copied())
            .collect()
    }

    #[test]
    fn verdicts_over_a_table_of_histories() {
        let steady = [Some(1000); 6];
        /// Name, buckets newest first, expected current/baseline ratio.
        type Case = (&'static str, Vec<Option<u64>>, Option<f64>);
        let cases: Vec<Case> = vec![
            // 1000 per 10 s bucket = 100/s.
            ("steady load", buckets(&[1000, 1000], &steady), Some(1.0)),
            ("load stopped", buckets(&[0, 0], &steady), Some(0.0)),
            ("half the rate", buckets(&[500, 500], &steady), Some(0.5)),
            ("a spike", buckets(&[5000, 3000], &steady), Some(4.0)),
            (
                "a short outage inside the baseline does not move the median",
                buckets(
                    &[1000, 1000],
                    &[
                        Some(1000),
                        Some(0),
                        Some(1000),
                        Some(1000),
                        Some(0),
                        Some(1000),
                    ],
                ),
                Some(1.0),
            ),
        ];
        for (name, history, expected) in cases {
            let verdict = assess(&history, &config());
            assert_eq!(verdict.ratio(), expected, "{name}: {verdict:?}");
        }
    }

    #[test]
    fn warm_up_until_history_covers_enough_of_the_baseline() {
        // A fresh cluster: only three baseline buckets are covered by stored history.
        let young = buckets(
            &[0, 0],
            &[Some(900), Some(900), Some(900), None, None, None],
        );
        assert_eq!(assess(&young, &config()), Verdict::WarmingUp);
        // The current window itself reaches before the history: no verdict either.
        let mut partial = buckets(&[0, 0], &[Some(900); 6]);
        partial[1] = None;
        assert_eq!(assess(&partial, &config()), Verdict::WarmingUp);
        // Four covered buckets are enough.
        let enough = buckets(
            &[0, 0],
            &[Some(900), Some(900), Some(900), Some(900), None, None],
        );
        assert_eq!(assess(&enough, &config()).ratio(), Some(0.0));
    }

    #[test]
    fn a_quiet_baseline_is_not_judged() {
        // 5 events per 10 s = 0.5/s, below the 1/s floor: stopping is not a drop.
        let quiet = buckets(&[0, 0], &[Some(5); 6]);
        assert_eq!(
            assess(&quiet, &config()),
            Verdict::Quiet {
                baseline_per_sec: 0.5
            }
        );
    }

    #[test]
    fn a_restart_or_failover_changes_nothing_because_history_is_replicated() {
        // The detector keeps no state: the same stored buckets give the same verdict on
        // a restarted node or a new leader.
        let history = buckets(&[10, 20], &[Some(800), Some(1200), Some(1000), Some(900)]);
        let first = assess(&history, &config());
        let again = assess(&history.clone(), &config());
        assert_eq!(first, again);
        assert_eq!(first.ratio(), Some(15.0 / 950.0));
    }
}
