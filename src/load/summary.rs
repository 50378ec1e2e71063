//! The closing summary of a load run: what was sent and what became of it.
//!
//! Accounting invariant: `sent == acknowledged + rejected + failed`. Duplicates are a
//! subset of acknowledged (the server already had the event, e.g. after a retry whose
//! first reply was lost). Events never sent (`requested - sent`) only occur when the run
//! stopped early, and `stopped` says why.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::host::HostCost;
use super::replay::ReplayCost;

/// Request latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latency {
    /// Summarises a histogram of microseconds; `None` if it is empty.
    pub fn from_micros(histogram: &Histogram<u64>) -> Option<Latency> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1_000.0;
        Some(Latency {
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        })
    }
}

/// What a load run did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadSummary {
    /// The seed that reproduces the run.
    pub seed: u64,
    /// Events asked for.
    pub requested: u64,
    /// Events put in requests.
    pub sent: u64,
    /// Requests made (a retried request counts once).
    pub requests: u64,
    /// Events the server acknowledged as durably stored (duplicates included).
    pub acknowledged: u64,
    /// Events the server refused as invalid.
    pub rejected: u64,
    /// Acknowledged events the server reported as duplicates of stored ones.
    pub duplicates: u64,
    /// Retries, summed over requests.
    pub retried: u64,
    /// Events whose request failed for good (retry budget spent, or refused outright).
    pub failed: u64,
    /// Wall-clock time of the run (for `--replay`, from the first request: preparation
    /// is not counted).
    pub elapsed: Duration,
    /// Latency of successful requests; `None` if there were none.
    pub latency: Option<Latency>,
    /// The first request failure, e.g. `401 unauthorized: unknown write key`.
    pub first_error: Option<String>,
    /// The first per-event rejection, e.g. `missing_field: ...`.
    pub first_rejection: Option<String>,
    /// Why the run stopped before sending everything, if it did.
    pub stopped: Option<String>,
    /// What building the requests cost, if they were built before the run (`--replay`);
    /// `None` for a live run, which generated them while sending.
    pub replay: Option<ReplayCost>,
    /// What the watched processes and disk used during the run (`--watch-pid`, `--disk`).
    pub host: Option<HostCost>,
}

impl LoadSummary {
    /// Whether every requested event was acknowledged.
    pub fn is_ok(&self) -> bool {
        self.acknowledged == self.requested && self.rejected == 0 && self.failed == 0
    }

    /// Acknowledged events per second of the run.
    pub fn events_per_sec(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.acknowledged as f64 / seconds
        } else {
            0.0
        }
    }
}

impl fmt::Display for LoadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, name: &str, value: fmt::Arguments<'_>| {
            writeln!(f, "  {name:<16}{value}")
        };
        writeln!(f, "load summary (seed {})", self.seed)?;
        match &self.replay {
            Some(cost) => row(f, "mode", format_args!("replay ({cost})"))?,
            None => row(
                f,
                "mode",
                format_args!("live (events generated while sending)"),
            )?,
        }
        row(
            f,
            "sent",
            format_args!("{} events in {} requests", self.sent, self.requests),
        )?;
        row(f, "acknowledged", format_args!("{}", self.acknowledged))?;
        row(f, "rejected", format_args!("{}", self.rejected))?;
        row(f, "duplicates", format_args!("{}", self.duplicates))?;
        row(f, "retried", format_args!("{} requests", self.retried))?;
        row(f, "failed", format_args!("{}", self.failed))?;
        if self.sent < self.requested {
            row(
                f,
                "not sent",
                format_args!("{}", self.requested - self.sent),
            )?;
        }
        row(
            f,
            "elapsed",
            format_args!("{:.2} s", self.elapsed.as_secs_f64()),
        )?;
        row(f, "events/s", format_args!("{:.0}", self.events_per_sec()))?;
        match &self.latency {
            Some(l) => row(
                f,
                "latency",
                format_args!(
                    "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    l.p50_ms, l.p99_ms, l.max_ms
                ),
            )?,
            None => row(f, "latency", format_args!("no successful requests"))?,
        }
        if let Some(host) = &self.host {
            let events = self.acknowledged.max(1) as f64;
            for process in &host.processes {
                row(
                    f,
                    &format!("pid {}", process.pid),
                    format_args!(
                        "cpu {:.1} s ({:.1} us/event), rss peak {:.0} MiB, end {:.0} MiB",
                        process.cpu_seconds,
                        process.cpu_seconds * 1e6 / events,
                        process.rss_peak_bytes as f64 / (1 << 20) as f64,
                        process.rss_end_bytes as f64 / (1 << 20) as f64
                    ),
                )?;
            }
            if host.processes.len() > 1 {
                row(
                    f,
                    "watched cpu",
                    format_args!(
                        "{:.1} s ({:.1} us/event)",
                        host.cpu_seconds(),
                        host.cpu_seconds() * 1e6 / events
                    ),
                )?;
            }
            if let (Some(bytes), Some(disk)) = (host.disk_written_bytes, &host.disk) {
                row(
                    f,
                    "disk written",
                    format_args!(
                        "{:.1} MiB on {disk} ({:.0} bytes/event, by every process)",
                        bytes as f64 / (1 << 20) as f64,
                        bytes as f64 / events
                    ),
                )?;
            }
        }
        if let Some(error) = &self.first_error {
            row(f, "first error", format_args!("{error}"))?;
        }
        if let Some(rejection) = &self.first_rejection {
            row(f, "first rejection", format_args!("{rejection}"))?;
        }
        if let Some(reason) = &self.stopped {
            row(f, "stopped", format_args!("{reason}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_run_reads_as_a_table() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        for micros in [2_000, 3_000, 3_100, 40_000] {
            histogram.record(micros).expect("in range");
        }
        let summary = LoadSummary {
            seed: 42,
            requested: 1_000,
            sent: 1_000,
            requests: 10,
            acknowledged: 1_000,
            duplicates: 5,
            retried: 2,
            elapsed: Duration::from_millis(500),
            latency: Latency::from_micros(&histogram),
            ..LoadSummary::default()
        };
        assert!(summary.is_ok());
        let text = summary.to_string();
        let expected = "\
load summary (seed 42)
  mode            live (events generated while sending)
  sent            1000 events in 10 requests
  acknowledged    1000
  rejected        0
  duplicates      5
  retried         2 requests
  failed          0
  elapsed         0.50 s
  events/s        2000
  latency         p50 3.0 ms, p99 40.0 ms, max 40.0 ms
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_replay_run_says_what_preparing_its_bodies_cost() {
        let summary = LoadSummary {
            replay: Some(ReplayCost {
                prepare_elapsed: Duration::from_millis(1_250),
                body_bytes: 120 << 20,
                id_bytes: 3 << 19,
            }),
            ..LoadSummary::default()
        };
        let text = summary.to_string();
        let line = "  mode            replay (bodies prepared in 1.25 s, 120.0 MiB; ids 1.5 MiB)\n";
        assert!(text.contains(line), "{line:?} in\n{text}");
    }

    #[test]
    fn failures_and_early_stops_are_explained() {
        let summary = LoadSummary {
            requested: 1_000,
            sent: 200,
            requests: 2,
            failed: 200,
            first_error: Some("401 unauthorized: unknown write key".into()),
            stopped: Some("the server refused the write key".into()),
            ..LoadSummary::default()
        };
        assert!(!summary.is_ok());
        let text = summary.to_string();
        for line in [
            "  not sent        800\n",
            "  latency         no successful requests\n",
            "  first error     401 unauthorized: unknown write key\n",
            "  stopped         the server refused the write key\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }
}
