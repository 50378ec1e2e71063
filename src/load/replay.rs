//! Replay mode (`tandem load --replay`): every request of a run built before the clock
//! starts, so that the timed phase only sends bytes and the generator's own CPU stays out
//! of a throughput figure.
//!
//! [`prepare`] drains the same [`Batcher`](super::batch::Batcher) a live run sends from —
//! same seed, same cut into requests, same `messageId`s in the same requests — so
//! `--acked`, `tandem verify` and the retry policy work unchanged, and a rerun with the
//! same seed is all duplicates. Each body is one refcounted [`Bytes`]: a retry resends the
//! very same bytes, and each attempt costs a reference-count increment, not a copy or any
//! JSON work.
//!
//! Two differences from a live run, both deliberate:
//! - bodies carry no `sentAt` ([`Batch::body_unstamped`]): it would be stale by the time
//!   the body is sent, and the server would shift every event's time by that age; without
//!   it the server takes each event's `timestamp` as it is;
//! - memory is bounded: preparation stops with [`LoadError::ReplayTooLarge`] as soon as
//!   the bodies and the per-event ids kept for tallying would pass [`REPLAY_BYTES_MAX`].

use std::fmt;
use std::time::{Duration, Instant};

use tokio_util::bytes::Bytes;

use super::LoadError;
use super::batch::Batch;

/// Most bytes the prepared requests of one run may hold: bodies plus the `messageId` and
/// identity of every event (kept to tally replies and write the acknowledged-events
/// file). About 8 million events of the default workload.
pub const REPLAY_BYTES_MAX: u64 = 4 << 30;

/// One request, built and ready to send.
#[derive(Debug)]
pub struct ReadyBatch {
    /// Position of the request in the run, from 0 (seeds its retry jitter, as in a live
    /// run).
    pub number: u64,
    /// The whole `/v1/batch` body; cloning it shares the buffer.
    pub body: Bytes,
    /// `(messageId, identity)` of each item, in order.
    pub events: Vec<(String, String)>,
}

impl ReadyBatch {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the batch has no events (never, for batches [`prepare`] builds).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// What preparation cost, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ReplayCost {
    /// Wall-clock time spent generating and serialising every request (one thread, so
    /// about as much CPU time).
    pub prepare_elapsed: Duration,
    /// Bytes of request bodies held.
    pub body_bytes: u64,
    /// Bytes held for the per-event `(messageId, identity)` pairs.
    pub id_bytes: u64,
}

impl fmt::Display for ReplayCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        write!(
            f,
            "bodies prepared in {:.2} s, {:.1} MiB; ids {:.1} MiB",
            self.prepare_elapsed.as_secs_f64(),
            mib(self.body_bytes),
            mib(self.id_bytes),
        )
    }
}

/// A run's requests, built.
#[derive(Debug)]
pub struct Prepared {
    /// The requests, in the order a live run would send them.
    pub batches: Vec<ReadyBatch>,
    /// What building them cost.
    pub cost: ReplayCost,
}

/// Builds every request `batches` yields, refusing as soon as bodies and ids would pass
/// `bytes_max`. `events` is the run's event count, for the refusal's message.
pub fn prepare(
    batches: impl Iterator<Item = Batch>,
    events: u64,
    bytes_max: u64,
) -> Result<Prepared, LoadError> {
    let started = Instant::now();
    let mut ready = Vec::new();
    let mut cost = ReplayCost::default();
    let mut fitted = 0;
    for batch in batches {
        let body = batch.body_unstamped().into_bytes();
        let body_bytes = body.len() as u64;
        let id_bytes: u64 = batch.events.iter().map(|(m, i)| pair_bytes(m, i)).sum();
        if cost.body_bytes + cost.id_bytes + body_bytes + id_bytes > bytes_max {
            return Err(LoadError::ReplayTooLarge {
                events,
                fitted,
                bytes_max,
            });
        }
        cost.body_bytes += body_bytes;
        cost.id_bytes += id_bytes;
        fitted += batch.len() as u64;
        ready.push(ReadyBatch {
            number: batch.number,
            body: Bytes::from(body),
            events: batch.events,
        });
    }
    cost.prepare_elapsed = started.elapsed();
    Ok(Prepared {
        batches: ready,
        cost,
    })
}

/// Bytes one `(messageId, identity)` pair holds: two `String`s and their text.
fn pair_bytes(message_id: &str, identity: &str) -> u64 {
    (2 * size_of::<String>() + message_id.len() + identity.len()) as u64
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
