//! Service workers step aside while ingest needs the CPU.
//!
//! Nice 10 ([`super::SERVICE_NICE`]) is not enough on its own. A niced thread still runs
//! whenever a core is free for a moment. On a node at saturating ingest, the three
//! service workers still took 26–28% of its CPU. Every request that woke up behind them
//! then waited for a core. Measured on a 2-core machine (`docs/benchmarks.md`, "Services
//! step aside while ingest contends"):
//! - the one-node saturating rate was 0.75× the rate with the services stopped;
//! - on three nodes at 15,000 events/s the write p99 was 142 ms, against 16–21 ms with
//!   them stopped.
//!
//! So after each batch, the worker reads its own scheduler clocks
//! (`/proc/thread-self/schedstat`: time on a CPU, time runnable but waiting for one). It
//! then sleeps [`YIELD_FACTOR`] times the CPU time the batch used (at most
//! [`YIELD_MAX`]) when both of these held during the batch:
//! - **contended**: it waited for a CPU longer than it ran;
//! - **ingest active**: new entries reached the feed.
//!
//! That caps each service at about a tenth of a core while ingest contends.
//!
//! What it does not do:
//! - **It does not slow a catch-up.** When ingest pauses, the feed head stands still and
//!   the workers run flat out, even when they only contend with each other (three
//!   services on two cores, or three replicas' services on one machine).
//! - **It does not touch an uncontended machine.** A worker that gets a core when it
//!   wants one never sleeps.
//!
//! The cost is freshness. Under sustained contended ingest the services lag further, and
//! say so (`degraded`, `lagging N feed entries behind`), then work the backlog off as soon
//! as ingest lets up. The pause comes between batches, with no lock held and no batch
//! open, so the supervisor sees an idle worker. It is never on the path of an
//! acknowledgement.
//!
//! Without the clocks (not Linux, no procfs), workers never pause: nice alone applies.

use std::time::Duration;

/// How many times its last batch's CPU time a contended worker sleeps while ingest is
/// active: at most `1 / (1 + 9)` of a core per service.
pub const YIELD_FACTOR: u32 = 9;
/// Longest single pause, so a worker looks at the feed (and at its fence) often.
pub const YIELD_MAX: Duration = Duration::from_millis(500);

/// A thread's scheduler clocks, nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedClock {
    /// Time spent on a CPU.
    pub run_ns: u64,
    /// Time spent runnable, waiting for a CPU.
    pub wait_ns: u64,
}

impl SchedClock {
    /// The calling thread's clocks, if the kernel says.
    pub fn this_thread() -> Option<SchedClock> {
        parse(&std::fs::read_to_string("/proc/thread-self/schedstat").ok()?)
    }

    /// Thread `tid`'s clocks (a thread of this process), if the kernel says.
    pub fn of_thread(tid: i32) -> Option<SchedClock> {
        parse(&std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?)
    }
}

/// `schedstat`: time on a CPU, time waiting on a run queue (ns), and time slices run.
fn parse(text: &str) -> Option<SchedClock> {
    let mut fields = text.split_whitespace();
    Some(SchedClock {
        run_ns: fields.next()?.parse().ok()?,
        wait_ns: fields.next()?.parse().ok()?,
    })
}

/// How long a worker steps aside after a batch, given its clocks before and after the
/// batch and whether ingest added entries to the feed meanwhile; `None`: go on at once.
pub fn pause(before: SchedClock, after: SchedClock, ingest_active: bool) -> Option<Duration> {
    let ran = after.run_ns.saturating_sub(before.run_ns);
    let waited = after.wait_ns.saturating_sub(before.wait_ns);
    if !ingest_active || waited <= ran || ran == 0 {
        return None;
    }
    Some(Duration::from_nanos(ran.saturating_mul(u64::from(YIELD_FACTOR))).min(YIELD_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn clock(run_ms: u64, wait_ms: u64) -> SchedClock {
        SchedClock {
            run_ns: run_ms * MS,
            wait_ns: wait_ms * MS,
        }
    }

    #[test]
    fn a_worker_that_waited_longer_than_it_ran_while_ingest_went_on_sleeps_nine_times_its_cpu() {
        let pause = pause(clock(100, 500), clock(120, 560), true);
        assert_eq!(pause, Some(Duration::from_millis(180)));
    }

    #[test]
    fn the_pause_is_bounded() {
        assert_eq!(pause(clock(0, 0), clock(200, 900), true), Some(YIELD_MAX));
    }

    #[test]
    fn no_pause_without_contention() {
        // Waited as long as it ran, or less: the cores were not scarce enough.
        assert_eq!(pause(clock(0, 0), clock(20, 20), true), None);
        assert_eq!(pause(clock(0, 0), clock(20, 5), true), None);
    }

    #[test]
    fn no_pause_while_ingest_rests_so_a_catch_up_runs_flat_out() {
        // Contended by the other services only: the feed head stood still.
        assert_eq!(pause(clock(0, 0), clock(20, 200), false), None);
    }

    #[test]
    fn no_pause_for_a_batch_that_used_no_cpu_or_for_clocks_that_went_backwards() {
        assert_eq!(pause(clock(50, 50), clock(50, 90), true), None);
        assert_eq!(pause(clock(50, 90), clock(40, 10), true), None);
    }

    #[test]
    fn schedstat_is_read_as_run_then_wait() {
        assert_eq!(
            parse("123456 789 42\n"),
            Some(SchedClock {
                run_ns: 123_456,
                wait_ns: 789
            })
        );
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse(""), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_threads_clocks_are_readable_and_advance_with_work() {
        let Some(before) = SchedClock::this_thread() else {
            // A kernel built without CONFIG_SCHED_INFO: workers never pause there.
            assert!(
                std::env::var_os("CI").is_none(),
                "/proc/thread-self/schedstat is unreadable"
            );
            eprintln!("skipped: /proc/thread-self/schedstat is unreadable on this kernel");
            return;
        };
        let mut x = 0_u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = SchedClock::this_thread().expect("schedstat");
        assert!(after.run_ns > before.run_ns, "{before:?} → {after:?}");
    }
}
