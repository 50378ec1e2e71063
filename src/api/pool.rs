//! The read executor: a few threads of its own (`tandem-read-N`) that run every store
//! read of the API.
//!
//! Reads used to run in tokio's shared blocking pool, behind whatever apply, duplicate
//! screening and snapshot work was queued there; under saturating ingest a profile read
//! waited for ingest. Here reads have capacity nothing else takes, and a burst of reads
//! cannot take more threads than the pool has, so it cannot starve ingest either.
//!
//! Invariants:
//! - **Bounded**: at most `queue_max` reads wait for a thread; when the queue is full a
//!   read is refused at once ([`PoolError::Full`], answered 429 `read_overloaded` with
//!   `Retry-After`) rather than queued without limit.
//! - **Priority**: the threads run at the default priority, like ingestion; the CDP
//!   services' threads run at nice 10, so on a contended CPU they yield to both.
//! - A read whose requester has gone (client hung up) is skipped, not run.
//! - A panicking read fails only itself; its thread carries on.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Threads of the read pool: the machine's cores, at least 2 and at most 8.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, std::num::NonZeroUsize::get)
        .clamp(2, 8)
}

/// Most reads waiting for a read thread; more are refused with 429.
pub const READ_QUEUE_MAX: usize = 256;

/// One queued read.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a read did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The queue is full; retry shortly.
    #[error("{queued} reads are already waiting for a read thread")]
    Full {
        /// The queue's bound.
        queued: usize,
    },
    /// The read panicked, or the pool stopped before running it.
    #[error("the read did not complete (it panicked, or the node is stopping)")]
    Failed,
}

/// A fixed set of read threads fed by a bounded queue. The threads end when the pool is
/// dropped.
pub struct ReadPool {
    queue: SyncSender<Job>,
    queue_max: usize,
    threads: usize,
}

impl ReadPool {
    /// Starts `threads` read threads (at least one) with room for `queue_max` waiting
    /// reads.
    pub fn start(threads: usize, queue_max: usize) -> std::io::Result<ReadPool> {
        let (queue, jobs) = sync_channel::<Job>(queue_max);
        let jobs = Arc::new(Mutex::new(jobs));
        let threads = threads.max(1);
        for n in 0..threads {
            let jobs = Arc::clone(&jobs);
            std::thread::Builder::new()
                .name(format!("tandem-read-{n}"))
                .spawn(move || work(&jobs))?;
        }
        Ok(ReadPool {
            queue,
            queue_max,
            threads,
        })
    }

    /// Runs `read` on a read thread and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let (reply, outcome) = oneshot::channel();
        let job: Job = Box::new(move || {
            if reply.is_closed() {
                return;
            }
            let _ = reply.send(read());
        });
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(PoolError::Full {
                    queued: self.queue_max,
                });
            }
            Err(TrySendError::Disconnected(_)) => return Err(PoolError::Failed),
        }
        outcome.await.map_err(|_| PoolError::Failed)
    }

    /// How many read threads the pool has.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

/// A read thread: takes jobs until the pool is dropped.
fn work(jobs: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while taking a job, never while running one.
        let job = {
            let jobs = jobs.lock().unwrap_or_else(|p| p.into_inner());
            jobs.recv()
        };
        let Ok(job) = job else { return };
        if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("a read panicked; its request fails, the read thread carries on");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn reads_run_on_named_read_threads() {
        let pool = ReadPool::start(2, 8).expect("start");
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .expect("ran");
        assert!(
            name.as_deref()
                .is_some_and(|n| n.starts_with("tandem-read-")),
            "{name:?}"
        );
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let pool = ReadPool::start(1, 1).expect("start");
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
        assert_eq!(pool.run(|| ()).await, Err(PoolError::Full { queued: 1 }));
        release.send(()).expect("release");
        assert_eq!(first.await, Ok(()));
        assert_eq!(second.await, Ok(()));
    }

    #[tokio::test]
    async fn a_panicking_read_fails_alone() {
        let pool = ReadPool::start(1, 4).expect("start");
        let failed = pool.run(|| panic!("boom")).await;
        assert_eq!(failed, Err::<(), _>(PoolError::Failed));
        assert_eq!(pool.run(|| 7).await, Ok(7));
    }
}
