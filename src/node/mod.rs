//! The commit pipeline between the API and the store: admission control, group commit
//! and shutdown.
//!
//! ```text
//!  HTTP handlers ──submit()──▶ [bounded queue] ──▶ committer thread ──▶ Store::commit (fsync)
//!        ▲                                               │
//!        └──────────── outcomes (oneshot) ◀──────────────┘
//! ```
//!
//! Invariants:
//! - **Nothing acknowledged is lost**: `submit` returns outcomes only after the batch holding
//!   the events is committed durably.
//! - **Bounded**: at most `inflight_events_max` events are admitted and not yet committed;
//!   beyond that `submit` fails fast with [`SubmitError::Overloaded`] (the API answers 429
//!   with `Retry-After`). Nothing is buffered without bound and nothing is dropped silently.
//! - **Group commit**: while one commit is being fsync'd, new submissions queue; the next
//!   commit takes all of them (up to `commit_events_max`), so concurrent requests share fsyncs
//!   without any added waiting.
//!
//! This is the seam where replication plugs in: a replicated node proposes the same
//! [`Batch`] through Raft instead of committing it locally.

mod committer;

pub use committer::now_ms;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::model::event::{Event, EventOutcome};
use crate::store::{Store, StoreError};

/// Why a submission was not committed. None of these means the events were stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    /// Too many events in flight; retry after a moment.
    #[error("the node is at its in-flight limit of {limit} events; retry shortly")]
    Overloaded { limit: usize },
    /// The node is shutting down; retry against another node or after restart.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The storage engine failed; the node is unhealthy.
    #[error("storage failure: {0}")]
    Storage(String),
    /// Applying this request broke a state invariant (a bug, caught by an assertion);
    /// nothing from it was stored and the node carries on. Retrying will fail the same way.
    #[error("internal consistency check refused the request: {0}")]
    Rejected(String),
}

/// A batch of validated events waiting to be committed.
struct Proposal {
    events: Vec<Event>,
    reply: oneshot::Sender<Result<Vec<EventOutcome>, SubmitError>>,
}

/// What the committer receives.
enum Message {
    Propose(Proposal),
    /// Commit everything queued before this, then stop. Proposals queued after it are
    /// dropped unanswered, which their submitters see as `ShuttingDown` (never acknowledged).
    Stop,
}

/// Counters of the pipeline, for status output.
#[derive(Debug, Default)]
pub struct Stats {
    /// Commits (fsyncs) done.
    pub commits: AtomicU64,
    /// Events committed (stored or found duplicate).
    pub events_committed: AtomicU64,
    /// Events newly stored.
    pub events_stored: AtomicU64,
    /// Events found to be duplicates.
    pub events_duplicate: AtomicU64,
    /// Submissions refused with `Overloaded`.
    pub overloaded: AtomicU64,
}

/// A running single-node pipeline.
pub struct Node {
    store: Arc<Store>,
    queue: mpsc::UnboundedSender<Message>,
    inflight: Arc<Semaphore>,
    inflight_max: usize,
    shutting_down: AtomicBool,
    /// Set when the committer hit a storage error; the node reports itself not ready.
    failed: Arc<AtomicBool>,
    stats: Arc<Stats>,
    committer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Node {
    /// Starts the committer thread over `store`.
    pub fn start(store: Arc<Store>, inflight_events_max: usize, commit_events_max: usize) -> Node {
        // The queue itself is unbounded, but only holders of in-flight permits can send,
        // so it holds at most `inflight_events_max` events.
        let (queue, receiver) = mpsc::unbounded_channel();
        let failed = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let committer = committer::spawn(
            Arc::clone(&store),
            receiver,
            commit_events_max,
            Arc::clone(&failed),
            Arc::clone(&stats),
        );
        Node {
            store,
            queue,
            inflight: Arc::new(Semaphore::new(inflight_events_max)),
            inflight_max: inflight_events_max,
            shutting_down: AtomicBool::new(false),
            failed,
            stats,
            committer: std::sync::Mutex::new(Some(committer)),
        }
    }

    /// Commits `events` durably and returns what happened to each, in order.
    pub async fn submit(&self, events: Vec<Event>) -> Result<Vec<EventOutcome>, SubmitError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(SubmitError::Storage(
                "an earlier commit failed; the node needs attention".into(),
            ));
        }
        let count = u32::try_from(events.len().max(1)).unwrap_or(u32::MAX);
        let Ok(_permit) = Arc::clone(&self.inflight).try_acquire_many_owned(count) else {
            self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::Overloaded {
                limit: self.inflight_max,
            });
        };
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Message::Propose(Proposal { events, reply }))
            .map_err(|_| SubmitError::ShuttingDown)?;
        // The permit is held until the commit finished, whatever its result.
        outcome.await.map_err(|_| SubmitError::ShuttingDown)?
    }

    /// Stops admitting new work; queued work still commits.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Whether new work is refused because of shutdown.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Whether a storage failure stopped the node from committing.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Events admitted and not yet committed.
    pub fn inflight_events(&self) -> usize {
        self.inflight_max - self.inflight.available_permits()
    }

    /// Pipeline counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The store, for reads.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Waits for queued work to commit and the committer to stop. Call after the HTTP
    /// server stopped, so nothing can submit any more.
    pub fn shutdown(&self) {
        self.begin_shutdown();
        // A send error means the committer already stopped; nothing to wait for then.
        let _ = self.queue.send(Message::Stop);
        let handle = self.committer.lock().map(|mut h| h.take()).unwrap_or(None);
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the committer thread panicked during shutdown");
        }
    }
}

impl From<StoreError> for SubmitError {
    fn from(error: StoreError) -> Self {
        SubmitError::Storage(error.to_string())
    }
}
