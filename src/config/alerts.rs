//! `[alerts]`: the built-in alert evaluator's settings — how often rules run, where
//! notifications go (Alertmanager's v2 API, plain webhooks), how delivery is bounded and
//! retried, the ingestion-rate detector's windows, and per-rule overrides.
//!
//! The rules themselves (names, defaults, runbook lines) are in `crate::node::alerts`;
//! `docs/monitoring.md` lists them. Rule names given here are checked against that list
//! when the node starts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Config;

/// `[alerts]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Evaluate the built-in rules at all (the `GET /v1/admin/alerts` view stays, empty).
    pub enabled: bool,
    /// How often rules are evaluated, ms.
    pub evaluation_interval_ms: u64,
    /// A firing alert is notified again after this long, ms (Alertmanager's
    /// `repeat_interval` plays the same part behind it).
    pub repeat_interval_ms: u64,
    /// Resolved alerts kept for `GET /v1/admin/alerts`, newest first.
    pub history_max: usize,
    /// The window over which counters become rates (request error shares, fsync latency,
    /// leader changes), ms.
    pub rate_window_ms: u64,
    /// Where notifications go (`[[alerts.receivers]]`).
    pub receivers: Vec<ReceiverConfig>,
    /// How notifications are queued and retried.
    pub delivery: DeliveryConfig,
    /// The ingestion-rate anomaly detector (`ingestion_drop`, `ingestion_spike`).
    pub ingest_rate: IngestRateConfig,
    /// Per-rule overrides by rule name (`[alerts.rules.ingestion_drop]`).
    pub rules: BTreeMap<String, RuleOverride>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            evaluation_interval_ms: 15_000,
            repeat_interval_ms: 4 * 3_600_000,
            history_max: 100,
            rate_window_ms: 300_000,
            receivers: Vec::new(),
            delivery: DeliveryConfig::default(),
            ingest_rate: IngestRateConfig::default(),
            rules: BTreeMap::new(),
        }
    }
}

/// What a receiver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverKind {
    /// Alertmanager: `url` is its base (`http://am:9093`); alerts are POSTed as a JSON
    /// array to `{url}/api/v2/alerts`.
    Alertmanager,
    /// Any HTTP endpoint: each notification is POSTed to `url` as one JSON object.
    Webhook,
}

/// One `[[alerts.receivers]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// `alertmanager` or `webhook`.
    pub kind: ReceiverKind,
    /// `http://` URL (this build has no TLS client).
    pub url: String,
}

/// `[alerts.delivery]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Notifications waiting per receiver; when full the oldest is dropped (and counted).
    pub queue_max: usize,
    /// One attempt (connect, send, answer) may take this long, ms.
    pub attempt_timeout_ms: u64,
    /// Attempts per notification before it is given up (and counted as failed).
    pub attempts_max: u32,
    /// Wait before the first retry, ms; doubles per retry up to `backoff_max_ms`.
    pub backoff_ms: u64,
    /// Longest wait between retries, ms.
    pub backoff_max_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            queue_max: 1_024,
            attempt_timeout_ms: 5_000,
            attempts_max: 6,
            backoff_ms: 500,
            backoff_max_ms: 30_000,
        }
    }
}

/// `[alerts.ingest_rate]`: the ingestion-rate baseline, learned from the replicated
/// feed's history (see `docs/monitoring.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestRateConfig {
    /// Width of one bucket of history, ms.
    pub bucket_ms: u64,
    /// Buckets in the current window (compared with the baseline).
    pub window_buckets: u32,
    /// Buckets before the current window that form the baseline (their median rate).
    pub baseline_buckets: u32,
    /// Fewest baseline buckets the stored history must cover before the detector judges
    /// (warm-up after a fresh start or a long retention gap).
    pub baseline_buckets_min: u32,
    /// A baseline below this many events per second is too quiet to judge.
    pub baseline_events_per_sec_min: f64,
}

impl Default for IngestRateConfig {
    fn default() -> Self {
        IngestRateConfig {
            bucket_ms: 60_000,
            window_buckets: 5,
            baseline_buckets: 60,
            baseline_buckets_min: 30,
            baseline_events_per_sec_min: 1.0,
        }
    }
}

/// `[alerts.rules.NAME]`: changes to one rule's defaults.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleOverride {
    /// `false` turns the rule off.
    pub enabled: Option<bool>,
    /// How long the condition must hold before the alert fires, ms.
    pub for_ms: Option<u64>,
    /// The rule's threshold, in the unit its documentation gives.
    pub threshold: Option<f64>,
}

/// Most receivers.
pub const RECEIVERS_MAX: usize = 16;
/// Longest evaluation interval accepted, ms (one hour).
pub const EVALUATION_INTERVAL_MS_MAX: u64 = 3_600_000;
/// Most buckets the ingestion-rate detector reads per evaluation.
pub const RATE_BUCKETS_MAX: u32 = 1_440;

impl Config {
    pub(super) fn validate_alerts(&self, problem: &mut impl FnMut(String)) {
        let a = &self.alerts;
        if !(100..=EVALUATION_INTERVAL_MS_MAX).contains(&a.evaluation_interval_ms) {
            problem(format!(
                "alerts.evaluation_interval_ms ({}) must lie between 100 and \
                 {EVALUATION_INTERVAL_MS_MAX}",
                a.evaluation_interval_ms
            ));
        }
        if a.repeat_interval_ms < a.evaluation_interval_ms {
            problem(format!(
                "alerts.repeat_interval_ms ({}) is shorter than alerts.evaluation_interval_ms ({})",
                a.repeat_interval_ms, a.evaluation_interval_ms
            ));
        }
        if a.history_max == 0 || a.history_max > 10_000 {
            problem(format!(
                "alerts.history_max ({}) must lie between 1 and 10000",
                a.history_max
            ));
        }
        if a.rate_window_ms < a.evaluation_interval_ms || a.rate_window_ms > 86_400_000 {
            problem(format!(
                "alerts.rate_window_ms ({}) must lie between alerts.evaluation_interval_ms and one day",
                a.rate_window_ms
            ));
        }
        if a.receivers.len() > RECEIVERS_MAX {
            problem(format!(
                "alerts.receivers has {} entries; at most {RECEIVERS_MAX}",
                a.receivers.len()
            ));
        }
        for (i, receiver) in a.receivers.iter().enumerate() {
            // The HTTP client is built without TLS (as for peers): https is refused here
            // rather than failing at every delivery.
            if !receiver.url.starts_with("http://") {
                problem(format!(
                    "alerts.receivers[{i}].url = {:?} must start with http:// (https receivers \
                     are not supported by this build; put a TLS-terminating proxy in front)",
                    receiver.url
                ));
            }
        }
        let d = &a.delivery;
        if d.queue_max == 0 || d.queue_max > 100_000 {
            problem(format!(
                "alerts.delivery.queue_max ({}) must lie between 1 and 100000",
                d.queue_max
            ));
        }
        if d.attempt_timeout_ms == 0 || d.attempts_max == 0 || d.attempts_max > 100 {
            problem(format!(
                "alerts.delivery: attempt_timeout_ms ({}) must be positive and attempts_max ({}) \
                 between 1 and 100",
                d.attempt_timeout_ms, d.attempts_max
            ));
        }
        if d.backoff_ms == 0 || d.backoff_max_ms < d.backoff_ms {
            problem(format!(
                "alerts.delivery.backoff_ms ({}) must be positive and at most backoff_max_ms ({})",
                d.backoff_ms, d.backoff_max_ms
            ));
        }
        let r = &a.ingest_rate;
        if r.bucket_ms < 100 || r.window_buckets == 0 || r.baseline_buckets == 0 {
            problem(format!(
                "alerts.ingest_rate: bucket_ms ({}) must be at least 100, window_buckets ({}) and \
                 baseline_buckets ({}) at least 1",
                r.bucket_ms, r.window_buckets, r.baseline_buckets
            ));
        }
        if r.window_buckets.saturating_add(r.baseline_buckets) > RATE_BUCKETS_MAX {
            problem(format!(
                "alerts.ingest_rate: window_buckets + baseline_buckets ({}) exceeds {RATE_BUCKETS_MAX}",
                r.window_buckets.saturating_add(r.baseline_buckets)
            ));
        }
        if r.baseline_buckets_min == 0 || r.baseline_buckets_min > r.baseline_buckets {
            problem(format!(
                "alerts.ingest_rate.baseline_buckets_min ({}) must lie between 1 and \
                 baseline_buckets ({})",
                r.baseline_buckets_min, r.baseline_buckets
            ));
        }
        if r.baseline_events_per_sec_min.is_nan() || r.baseline_events_per_sec_min < 0.0 {
            problem("alerts.ingest_rate.baseline_events_per_sec_min must be 0 or more".into());
        }
        for (name, rule) in &a.rules {
            if rule.threshold.is_some_and(|t| !t.is_finite()) {
                problem(format!(
                    "alerts.rules.{name}.threshold must be a finite number"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alerts_problem_names_its_setting() {
        let mut config = Config::default();
        let a = &mut config.alerts;
        a.evaluation_interval_ms = 0;
        a.history_max = 0;
        a.receivers.push(ReceiverConfig {
            kind: ReceiverKind::Webhook,
            url: "https://hooks.example.com/x".into(),
        });
        a.delivery.queue_max = 0;
        a.delivery.backoff_ms = 0;
        a.ingest_rate.baseline_buckets_min = a.ingest_rate.baseline_buckets + 1;
        a.rules.insert(
            "no_leader".into(),
            RuleOverride {
                threshold: Some(f64::NAN),
                ..Default::default()
            },
        );
        let mut problems = Vec::new();
        config.validate_alerts(&mut |p| problems.push(p));
        let text = problems.join("\n");
        for needle in [
            "alerts.evaluation_interval_ms",
            "alerts.history_max",
            "alerts.receivers[0].url",
            "alerts.delivery.queue_max",
            "alerts.delivery.backoff_ms",
            "alerts.ingest_rate.baseline_buckets_min",
            "alerts.rules.no_leader.threshold",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        let mut fine = Vec::new();
        Config::default().validate_alerts(&mut |p| fine.push(p));
        assert!(fine.is_empty(), "{fine:?}");
    }
}
