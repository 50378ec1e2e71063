//! Telling a hung service worker from a starved one.
//!
//! Service workers run at nice 10 ([`super::SERVICE_NICE`]): under saturating ingest they
//! get a few percent of a core, and a batch that takes 50 ms of CPU can take seconds of
//! wall clock. Judged by wall clock alone, such a worker looked hung and was replaced, and
//! its batch was redone — work wasted exactly when the machine had none to spare. So the
//! supervisor watches the worker thread's CPU clock (`/proc/self/task/TID/schedstat`,
//! nanoseconds on a CPU) while it is busy:
//! - **progressing**: it got at least [`PROGRESS_CPU_MIN_NS`] of CPU within the hang
//!   timeout — slow, perhaps starved, not hung;
//! - **hung**: past the timeout with no such progress (blocked, deadlocked, waiting on
//!   something that will not come), or with more CPU than the timeout spent on one batch
//!   (spinning: a batch is cut to stay well under the timeout), or past
//!   [`BATCH_WALL_MAX`] whatever it did.
//!
//! Without a readable CPU clock (not Linux, or no procfs) the judgement falls back to wall
//! clock alone, as before.

use std::time::Duration;

/// CPU a busy worker must get within the hang timeout to count as progressing, ns. A
/// starved nice-10 thread gets tens of ms per second; a worker blocked forever, or asleep
/// in a loop, gets well under a millisecond.
pub const PROGRESS_CPU_MIN_NS: u64 = 5_000_000;
/// A batch busy longer than this, wall clock, is replaced even while it progresses.
pub const BATCH_WALL_MAX: Duration = Duration::from_secs(60);

/// Nanoseconds thread `tid` of this process has spent on a CPU, if the kernel says.
pub fn thread_cpu_ns(tid: i32) -> Option<u64> {
    super::yielding::SchedClock::of_thread(tid).map(|clock| clock.run_ns)
}

/// What the supervisor has seen of the current batch's CPU use.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The batch observed (its start, ms on the supervisor's clock); 0: none yet.
    batch_ms: u64,
    /// The worker's CPU clock at the first and the last observation that counted, ns
    /// (`None`: not readable).
    cpu_first_ns: Option<u64>,
    cpu_last_ns: Option<u64>,
    /// When the worker last showed progress, ms.
    progress_ms: u64,
}

impl Progress {
    /// Notes the worker's CPU clock `cpu_ns` at `now_ms`, during the batch that began at
    /// `busy_since_ms`.
    pub fn observe(&mut self, busy_since_ms: u64, now_ms: u64, cpu_ns: Option<u64>) {
        if self.batch_ms != busy_since_ms {
            *self = Progress {
                batch_ms: busy_since_ms,
                cpu_first_ns: cpu_ns,
                cpu_last_ns: cpu_ns,
                // Unknown CPU clock: progress is never seen, so wall clock decides.
                progress_ms: if cpu_ns.is_some() {
                    now_ms
                } else {
                    busy_since_ms
                },
            };
            return;
        }
        if let (Some(now), Some(last)) = (cpu_ns, self.cpu_last_ns)
            && now.saturating_sub(last) >= PROGRESS_CPU_MIN_NS
        {
            self.cpu_last_ns = Some(now);
            self.progress_ms = now_ms;
        }
    }

    /// Whether the batch that began at `busy_since_ms` counts as hung at `now_ms`.
    pub fn hung(&self, busy_since_ms: u64, now_ms: u64, timeout: Duration) -> bool {
        let timeout_ms = timeout.as_millis() as u64;
        let busy_ms = now_ms.saturating_sub(busy_since_ms);
        if busy_ms <= timeout_ms {
            return false;
        }
        // Past the wall limit, or never observed: wall clock decides.
        if busy_ms > BATCH_WALL_MAX.as_millis() as u64 || self.batch_ms != busy_since_ms {
            return true;
        }
        let spent_ns = match (self.cpu_first_ns, self.cpu_last_ns) {
            (Some(first), Some(last)) => last.saturating_sub(first),
            _ => 0,
        };
        spent_ns > timeout.as_nanos() as u64 || now_ms.saturating_sub(self.progress_ms) > timeout_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(3);
    const MS: u64 = 1_000_000;

    /// Observes every 100 ms from `start` to `end` with CPU from `cpu(ms)`.
    fn watched(start: u64, end: u64, cpu: impl Fn(u64) -> Option<u64>) -> Progress {
        let mut progress = Progress::default();
        for now in (start + 100..=end).step_by(100) {
            progress.observe(start, now, cpu(now));
        }
        progress
    }

    #[test]
    fn a_starved_worker_that_still_gets_cpu_is_not_hung() {
        // 2% of a core: 20 ms of CPU per second, for 20 s.
        let p = watched(1_000, 21_000, |now| Some((now - 1_000) * 20_000));
        assert!(!p.hung(1_000, 21_000, TIMEOUT));
    }

    #[test]
    fn a_blocked_or_sleeping_worker_is_hung_just_past_the_timeout() {
        // Asleep in a loop: a few µs per wake-up, well under the progress threshold.
        let p = watched(1_000, 3_900, |now| Some(40 * MS + now * 200));
        assert!(!p.hung(1_000, 3_900, TIMEOUT));
        let p = watched(1_000, 4_200, |now| Some(40 * MS + now * 200));
        assert!(p.hung(1_000, 4_200, TIMEOUT));
    }

    #[test]
    fn a_spinning_worker_is_hung_once_it_spent_the_timeout_in_cpu() {
        let p = watched(1_000, 4_500, |now| Some((now - 1_000) * MS));
        assert!(p.hung(1_000, 4_500, TIMEOUT));
    }

    #[test]
    fn any_batch_past_the_wall_limit_is_hung() {
        let end = 1_000 + BATCH_WALL_MAX.as_millis() as u64 + 100;
        let p = watched(1_000, end, |now| Some((now - 1_000) * 20_000));
        assert!(p.hung(1_000, end, TIMEOUT));
    }

    #[test]
    fn without_a_cpu_clock_wall_clock_decides() {
        let p = watched(1_000, 3_900, |_| None);
        assert!(!p.hung(1_000, 3_900, TIMEOUT));
        let p = watched(1_000, 4_100, |_| None);
        assert!(p.hung(1_000, 4_100, TIMEOUT));
    }

    #[test]
    fn a_new_batch_starts_the_count_again() {
        let mut p = watched(1_000, 5_000, |_| Some(7 * MS));
        assert!(p.hung(1_000, 5_000, TIMEOUT));
        p.observe(6_000, 6_100, Some(7 * MS));
        assert!(!p.hung(6_000, 9_050, TIMEOUT));
    }
}
