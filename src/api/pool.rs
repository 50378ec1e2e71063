//! Work pools: a few threads of their own, fed by a bounded queue, for the API's two kinds
//! of blocking work — every store read (`tandem-read-N`) and the parsing and validation
//! of ingest bodies (`tandem-ingest-N`).
//!
//! Reads used to run in tokio's shared blocking pool, behind whatever apply, duplicate
//! screening and snapshot work was queued there; under saturating ingest a profile read
//! waited for ingest. And ingest bodies used to be parsed on the async workers, where a
//! 100-event body holds a worker for most of a millisecond while a read's request and
//! reply wait in the same worker's queue. Here each kind has capacity the other cannot
//! take, and a burst of either cannot take more threads than its pool has.
//!
//! Invariants:
//! - **Bounded**: at most `queue_max` jobs wait for a thread; when the queue is full a
//!   job is refused at once ([`PoolError::Full`], answered 429 with `Retry-After`) rather
//!   than queued without limit.
//! - **Priority**: each pool's threads run at the nice value it was started with
//!   (reads: 0, like the async workers; ingest parsing:
//!   [`crate::node::priority::INGEST_NICE`]); see [`crate::node::priority`].
//! - A job whose requester has gone (client hung up) is skipped, not run.
//! - A panicking job fails only itself; its thread carries on.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Threads of a pool: the machine's cores, at least 2 and at most 8.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, std::num::NonZeroUsize::get)
        .clamp(2, 8)
}

/// Most reads waiting for a read thread; more are refused with 429.
pub const READ_QUEUE_MAX: usize = 256;
/// Most ingest bodies waiting to be parsed; more are refused with 429. Each waiting body
/// already counts against `limits.body_bytes_max`, which bounds their bytes.
pub const INGEST_QUEUE_MAX: usize = 256;

/// One queued read.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a job did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The queue is full; retry shortly.
    #[error("{queued} jobs are already waiting for a {pool} thread")]
    Full {
        /// The pool's name.
        pool: &'static str,
        /// The queue's bound.
        queued: usize,
    },
    /// The job panicked, or the pool stopped before running it.
    #[error("the {pool} job did not complete (it panicked, or the node is stopping)")]
    Failed {
        /// The pool's name.
        pool: &'static str,
    },
}

/// A fixed set of threads fed by a bounded queue. The threads end when the pool is
/// dropped.
pub struct WorkPool {
    /// The pool's name: its threads are `tandem-{name}-N`.
    name: &'static str,
    /// Where jobs wait for a thread.
    queue: SyncSender<Job>,
    /// The queue's bound.
    queue_max: usize,
    /// How many threads take jobs.
    threads: usize,
}

impl WorkPool {
    /// Starts `threads` threads (at least one) named `tandem-{name}-N` at nice value
    /// `nice`, with room for `queue_max` waiting jobs. A nice value that cannot be set
    /// costs only priority: the thread runs and a warning says so.
    pub fn start(
        name: &'static str,
        threads: usize,
        queue_max: usize,
        nice: i32,
    ) -> std::io::Result<WorkPool> {
        let (queue, jobs) = sync_channel::<Job>(queue_max);
        let jobs = Arc::new(Mutex::new(jobs));
        let threads = threads.max(1);
        for n in 0..threads {
            let jobs = Arc::clone(&jobs);
            std::thread::Builder::new()
                .name(format!("tandem-{name}-{n}"))
                .spawn(move || {
                    if nice != 0
                        && let Err(error) = crate::node::priority::nice_this_thread(nice)
                    {
                        tracing::warn!(pool = name, nice, %error, "could not lower a pool thread's priority");
                    }
                    work(name, &jobs)
                })?;
        }
        Ok(WorkPool {
            name,
            queue,
            queue_max,
            threads,
        })
    }

    /// Runs `job` on one of the pool's threads and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let (reply, outcome) = oneshot::channel();
        let job: Job = Box::new(move || {
            if reply.is_closed() {
                return;
            }
            let _ = reply.send(job());
        });
        let pool = self.name;
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(PoolError::Full {
                    pool,
                    queued: self.queue_max,
                });
            }
            Err(TrySendError::Disconnected(_)) => return Err(PoolError::Failed { pool }),
        }
        outcome.await.map_err(|_| PoolError::Failed { pool })
    }

    /// How many threads the pool has.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

/// A pool thread: takes jobs until the pool is dropped.
fn work(name: &str, jobs: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while taking a job, never while running one.
        let job = {
            let jobs = jobs.lock().unwrap_or_else(|p| p.into_inner());
            jobs.recv()
        };
        let Ok(job) = job else { return };
        if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!(
                pool = name,
                "a job panicked; its request fails, the pool's thread carries on"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn jobs_run_on_named_threads_at_the_pool_priority() {
        let base = crate::node::priority::this_thread_nice().expect("nice");
        let nice = (base + 2).min(19);
        let pool = WorkPool::start("ingest", 2, 8, nice).expect("start");
        let (name, got) = pool
            .run(|| {
                let name = std::thread::current().name().map(str::to_owned);
                (name, crate::node::priority::this_thread_nice().ok())
            })
            .await
            .expect("ran");
        assert!(
            name.as_deref()
                .is_some_and(|n| n.starts_with("tandem-ingest-")),
            "{name:?}"
        );
        assert_eq!(got, Some(nice));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let pool = WorkPool::start("read", 1, 1, 0).expect("start");
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let started = Arc::new(AtomicUsize::new(0));
        let running = Arc::clone(&started);
        // The first read holds the only thread until released.
        let mut first = Box::pin(pool.run(move || {
            running.fetch_add(1, Ordering::SeqCst);
            let _ = gate.recv();
        }));
        assert!(futures::poll!(&mut first).is_pending());
        while started.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The second waits in the queue, which is then full.
        let mut second = Box::pin(pool.run(|| ()));
        assert!(futures::poll!(&mut second).is_pending());
        assert_eq!(
            pool.run(|| ()).await,
            Err(PoolError::Full {
                pool: "read",
                queued: 1
            })
        );
        release.send(()).expect("release");
        assert_eq!(first.await, Ok(()));
        assert_eq!(second.await, Ok(()));
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone() {
        let pool = WorkPool::start("read", 1, 4, 0).expect("start");
        let failed = pool.run(|| panic!("boom")).await;
        assert_eq!(failed, Err::<(), _>(PoolError::Failed { pool: "read" }));
        assert_eq!(pool.run(|| 7).await, Ok(7));
    }
}
