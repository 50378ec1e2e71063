//! Time rules: which event timestamps are accepted, how the state clock follows the batch
//! times in the log, and how a leader stamps batch times. Pure: every clock reading is
//! passed in.
//!
//! Three kinds of time meet here, and none is trusted blindly:
//! - **Event timestamps** come from clients. After skew correction (see
//!   [`super::validate`]) one must lie between [`TIMESTAMP_MIN_MS`] (year 2000) and the
//!   receive time plus `limits.timestamp_future_ms_max` (default 24 h), or the event is
//!   rejected with `timestamp_out_of_range`: a far-future identify would otherwise win
//!   every later trait update ("latest timestamp wins") for as long as its date lies ahead.
//!   Rejected rather than clamped, so no stored event carries a time it was not sent with,
//!   and the client hears why.
//! - **Batch times** are stamped by the leader on each log entry. [`BatchClock`] stamps the
//!   leader's wall clock, but never further ahead of the time that really passed (read
//!   from a monotonic clock, which wall-clock steps do not move) than a credit of
//!   `limits.clock_step_ms_max` that refills as real time passes. A wall clock that jumps
//!   a year ahead moves the stamps by the credit at once, then at most one extra second
//!   per second; a state clock left behind (after the whole cluster was down) catches up
//!   at twice real time.
//! - **The state clock** (dedup expiry, retention) follows batch times in apply, which may
//!   depend on nothing but the log: [`next_clock_ms`] never goes back and moves forward by
//!   at most `limits.clock_step_ms_max` per entry, whoever stamped it (an older build, a
//!   faulty leader, a forged entry). The cost: after a quiet spell longer than the step,
//!   the state clock catches up one step per entry — expiring late, never early.

/// Earliest accepted event timestamp: 2000-01-01T00:00:00Z, ms since the epoch.
pub const TIMESTAMP_MIN_MS: i64 = 946_684_800_000;
/// Default `limits.timestamp_future_ms_max`: how far past its receive time an event may
/// be dated, ms.
pub const TIMESTAMP_FUTURE_DEFAULT_MS_MAX: i64 = 24 * 3_600_000;
/// Default `limits.clock_step_ms_max`: how far one entry may move the state clock, and the
/// leader's batch times may run ahead of elapsed time, ms.
pub const CLOCK_STEP_DEFAULT_MS_MAX: i64 = 3_600_000;

/// Why an event timestamp is out of range, or `None` when it is accepted.
pub fn timestamp_problem(
    timestamp_ms: i64,
    received_at_ms: i64,
    future_ms_max: i64,
) -> Option<String> {
    if timestamp_ms < TIMESTAMP_MIN_MS {
        return Some(
            "the event time (after clock-skew correction) is before 2000-01-01; send the time \
             the event happened, or omit `timestamp` to use the receive time"
                .into(),
        );
    }
    let latest = received_at_ms.saturating_add(future_ms_max);
    if timestamp_ms > latest {
        return Some(format!(
            "the event time (after clock-skew correction) is {} ms after it was received; at \
             most {future_ms_max} ms is accepted (limits.timestamp_future_ms_max). Check the \
             client's clock, and send `sentAt` so that skew is corrected",
            timestamp_ms.saturating_sub(received_at_ms)
        ));
    }
    None
}

/// The state clock after an entry stamped `batch_time_ms`: never backwards, and at most
/// `step_ms_max` forwards. An empty state (clock 0) takes the first entry's time as is.
pub fn next_clock_ms(clock_ms: i64, batch_time_ms: i64, step_ms_max: i64) -> i64 {
    if clock_ms <= 0 {
        return batch_time_ms.max(0);
    }
    clock_ms.max(batch_time_ms.min(clock_ms.saturating_add(step_ms_max)))
}

/// The leader's batch-time stamper (see the module doc).
#[derive(Debug, Clone)]
pub struct BatchClock {
    /// The most stamps may run ahead of elapsed time, and the credit's capacity, ms.
    step_ms_max: i64,
    /// The last stamp given, ms since the epoch (0 = none yet).
    last_ms: i64,
    /// The monotonic reading at the last stamp, ms (`None` before the first).
    last_mono_ms: Option<i64>,
    /// How far the next stamp may still run ahead of elapsed time, ms.
    credit_ms: i64,
}

impl BatchClock {
    /// A stamper allowing `step_ms_max` of run-ahead, with full credit.
    pub fn new(step_ms_max: i64) -> BatchClock {
        BatchClock {
            step_ms_max,
            last_ms: 0,
            last_mono_ms: None,
            credit_ms: step_ms_max,
        }
    }

    /// The time to stamp on a batch, given the wall clock, a monotonic reading (ms from
    /// any fixed origin) and the state clock as last applied. Never below the last stamp.
    pub fn stamp(&mut self, wall_ms: i64, mono_ms: i64, state_clock_ms: i64) -> i64 {
        let elapsed = self
            .last_mono_ms
            .map_or(0, |last| mono_ms.saturating_sub(last).max(0));
        self.last_mono_ms = Some(mono_ms);
        if self.last_ms == 0 && state_clock_ms <= 0 {
            // A new cluster: nothing to measure against; the first entry sets the epoch.
            self.last_ms = wall_ms;
            return wall_ms;
        }
        self.credit_ms = self.credit_ms.saturating_add(elapsed).min(self.step_ms_max);
        let passed = self.last_ms.saturating_add(elapsed).max(state_clock_ms);
        let ceiling = passed.saturating_add(self.credit_ms);
        let stamp = wall_ms.min(ceiling).max(self.last_ms);
        self.credit_ms -= stamp.saturating_sub(passed).clamp(0, self.credit_ms);
        self.last_ms = stamp;
        stamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_000_000_000;
    const HOUR: i64 = 3_600_000;

    #[test]
    fn timestamp_range_table() {
        let cases: &[(&str, i64, i64, bool)] = &[
            ("the receive time", NOW, HOUR, true),
            ("an hour in the past", NOW - HOUR, HOUR, true),
            ("at the future limit", NOW + HOUR, HOUR, true),
            (
                "a millisecond past the future limit",
                NOW + HOUR + 1,
                HOUR,
                false,
            ),
            ("year 9999", 253_402_300_799_000, 24 * HOUR, false),
            ("the first ms of 2000", TIMESTAMP_MIN_MS, HOUR, true),
            ("the last ms of 1999", TIMESTAMP_MIN_MS - 1, HOUR, false),
            ("the epoch", 0, HOUR, false),
            ("far negative", i64::MIN, HOUR, false),
            (
                "a huge allowance does not overflow",
                i64::MAX,
                i64::MAX,
                true,
            ),
        ];
        for (name, timestamp, future_max, ok) in cases {
            let problem = timestamp_problem(*timestamp, NOW, *future_max);
            assert_eq!(problem.is_none(), *ok, "{name}: {problem:?}");
        }
    }

    #[test]
    fn state_clock_table() {
        let cases: &[(&str, i64, i64, i64)] = &[
            ("an empty state takes the first time", 0, NOW, NOW),
            ("forward within the step", NOW, NOW + 1_000, NOW + 1_000),
            ("forward by exactly the step", NOW, NOW + HOUR, NOW + HOUR),
            (
                "a leap is cut to one step",
                NOW,
                NOW + 365 * 24 * HOUR,
                NOW + HOUR,
            ),
            ("a slow leader never moves it back", NOW, NOW - HOUR, NOW),
            ("a negative time on an empty state", 0, -5, 0),
        ];
        for (name, clock, batch, want) in cases {
            assert_eq!(next_clock_ms(*clock, *batch, HOUR), *want, "{name}");
        }
    }

    /// (wall, monotonic, state clock) readings and the stamp each must give.
    type Steps<'a> = &'a [(i64, i64, i64, i64)];

    /// Drives a stamper through readings and checks each stamp.
    fn run(clock: &mut BatchClock, steps: Steps, name: &str) {
        for (i, (wall, mono, state, want)) in steps.iter().enumerate() {
            assert_eq!(clock.stamp(*wall, *mono, *state), *want, "{name}: step {i}");
        }
    }

    #[test]
    fn batch_clock_scenarios() {
        let cases: &[(&str, Steps)] = &[
            (
                "a new cluster stamps its wall clock",
                &[(NOW, 0, 0, NOW), (NOW + 5, 5, NOW, NOW + 5)],
            ),
            (
                "an honest clock is stamped as is, also after a quiet day",
                &[
                    (NOW, 0, NOW - 10, NOW),
                    (NOW + 1_000, 1_000, NOW, NOW + 1_000),
                    (NOW + 24 * HOUR, 24 * HOUR, NOW + 1_000, NOW + 24 * HOUR),
                ],
            ),
            (
                "a wall clock a year ahead gains the credit, then one second per second",
                &[
                    (NOW, 0, NOW, NOW),
                    (NOW + 8_760 * HOUR, 1_000, NOW, NOW + 1_000 + HOUR),
                    (NOW + 8_760 * HOUR, 3_000, NOW, NOW + 3_000 + HOUR + 2_000),
                ],
            ),
            (
                "a slow wall clock never stamps backwards",
                &[(NOW, 0, NOW, NOW), (NOW - HOUR, 1_000, NOW, NOW)],
            ),
            (
                "after the cluster was down a day, the clock catches up at twice real time",
                &[
                    (NOW + 24 * HOUR, 0, NOW, NOW + HOUR),
                    (NOW + 24 * HOUR + HOUR, HOUR, NOW + HOUR, NOW + 3 * HOUR),
                ],
            ),
        ];
        for (name, steps) in cases {
            run(&mut BatchClock::new(HOUR), steps, name);
        }
    }
}
