//! The committer thread: drains queued proposals into one batch, commits it durably and
//! answers every submitter.
//!
//! It is a plain OS thread, not a tokio task, because a commit blocks on fsync for
//! milliseconds; on a runtime worker that would stall unrelated requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::{Message, Proposal, Stats, SubmitError};
use crate::model::event::{Batch, EventOutcome};
use crate::store::{Store, StoreError};

pub(super) fn spawn(
    store: Arc<Store>,
    receiver: mpsc::UnboundedReceiver<Message>,
    commit_events_max: usize,
    failed: Arc<AtomicBool>,
    stats: Arc<Stats>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("tandem-committer".into())
        .spawn(move || {
            let guard = FailOnPanic(Arc::clone(&failed));
            run(&store, receiver, commit_events_max, &failed, &stats);
            std::mem::forget(guard);
        })
        .expect("the OS refused to start the committer thread")
}

/// Marks the node failed if the committer panics (an assertion on state caught a bug):
/// the node then stops admitting writes instead of acknowledging into a dead queue.
struct FailOnPanic(Arc<AtomicBool>);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
        tracing::error!("the committer stopped unexpectedly; the node no longer accepts writes");
    }
}

fn run(
    store: &Store,
    mut receiver: mpsc::UnboundedReceiver<Message>,
    commit_events_max: usize,
    failed: &AtomicBool,
    stats: &Stats,
) {
    let mut last_time_ms = 0_i64;
    let mut carry: Option<Message> = None;
    loop {
        let first = match carry.take() {
            Some(message) => message,
            None => match receiver.blocking_recv() {
                Some(message) => message,
                None => return,
            },
        };
        let Message::Propose(first) = first else {
            return;
        };
        let mut group = vec![first];
        let mut events = group[0].events.len();
        let mut stop_after = false;
        while events < commit_events_max {
            match receiver.try_recv() {
                Ok(Message::Propose(proposal)) => {
                    events += proposal.events.len();
                    group.push(proposal);
                }
                Ok(Message::Stop) => {
                    stop_after = true;
                    break;
                }
                Err(_) => break,
            }
        }
        last_time_ms = last_time_ms.max(now_ms());
        commit_group(store, group, last_time_ms, failed, stats);
        if stop_after {
            carry = Some(Message::Stop);
        }
    }
}

fn commit_group(
    store: &Store,
    group: Vec<Proposal>,
    time_ms: i64,
    failed: &AtomicBool,
    stats: &Stats,
) {
    let mut sizes = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    let mut events = Vec::new();
    for proposal in group {
        sizes.push(proposal.events.len());
        replies.push(proposal.reply);
        events.extend(proposal.events);
    }
    let batch = Batch { time_ms, events };
    match store.commit(&batch) {
        Ok((_, outcomes)) => {
            record(stats, &outcomes);
            let mut outcomes = outcomes.into_iter();
            for (size, reply) in sizes.into_iter().zip(replies) {
                let mine: Vec<EventOutcome> = outcomes.by_ref().take(size).collect();
                // The submitter may have gone (client hung up); the events are stored anyway.
                let _ = reply.send(Ok(mine));
            }
        }
        Err(StoreError::Corrupt(why)) if replies.len() > 1 => {
            // An invariant check refused the batch and nothing was written. If one request
            // triggers a bug, it must not take the others (or the node) down with it:
            // commit each request alone, so only the culprit is refused.
            tracing::error!(%why, requests = replies.len(), "batch refused by a consistency check; isolating the request that causes it");
            let mut events = batch.events.into_iter();
            for (size, reply) in sizes.into_iter().zip(replies) {
                let alone = Proposal {
                    events: events.by_ref().take(size).collect(),
                    reply,
                };
                commit_group(store, vec![alone], time_ms, failed, stats);
            }
        }
        Err(StoreError::Corrupt(why)) => {
            tracing::error!(%why, "request refused by a consistency check; nothing from it was stored");
            for reply in replies {
                let _ = reply.send(Err(SubmitError::Rejected(why.clone())));
            }
        }
        Err(error) => {
            tracing::error!(%error, "commit failed; refusing writes until restart");
            failed.store(true, Ordering::Release);
            let error = SubmitError::from(error);
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

fn record(stats: &Stats, outcomes: &[EventOutcome]) {
    let stored = outcomes
        .iter()
        .filter(|o| matches!(o, EventOutcome::Stored { .. }))
        .count() as u64;
    let total = outcomes.len() as u64;
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats.events_committed.fetch_add(total, Ordering::Relaxed);
    stats.events_stored.fetch_add(stored, Ordering::Relaxed);
    stats
        .events_duplicate
        .fetch_add(total - stored, Ordering::Relaxed);
}

/// Wall-clock milliseconds since the epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
