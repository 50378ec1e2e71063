//! The leader's ticks: time passing, proposed through the log.
//!
//! CDP services take time only from the log (see `crate::services::supervisor::Service`):
//! each log entry carries the state clock as of it. When no events arrive nothing would
//! move that time, so segment windows would never age and refreshes never come due. The
//! leader therefore proposes a [`Command::Tick`] every `cluster.tick_interval_ms`, stamped
//! by the same [`Stamper`] as its batches (so a leaping wall clock moves time no faster
//! through ticks than through events), and every [`TICK_BUSY_INTERVAL`] while one of its
//! services has work that advances per log entry (a sweep). Followers never tick: a tick
//! is an entry like any other, applied in the same place on every replica.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use super::proposer::Stamper;
use crate::cluster::{Command, Raft};
use crate::services::supervisor::Supervisor;
use crate::store::Store;

/// How often the leader ticks while a service wants ticks (a sweep is under way).
pub const TICK_BUSY_INTERVAL: Duration = Duration::from_millis(250);

/// What the ticker needs.
pub(super) struct Ticker {
    pub raft: Raft,
    pub self_id: u64,
    pub store: Arc<Store>,
    pub stamper: Arc<Stamper>,
    pub services: Arc<Supervisor>,
    /// `cluster.tick_interval_ms`.
    pub interval: Duration,
}

/// Runs until the node stops.
pub(super) async fn run(ticker: Ticker) {
    loop {
        let wait = if ticker.services.wants_ticks() {
            TICK_BUSY_INTERVAL.min(ticker.interval)
        } else {
            ticker.interval
        };
        tokio::time::sleep(wait).await;
        let leader = ticker.raft.metrics().borrow_watched().current_leader;
        if leader != Some(ticker.self_id) {
            continue;
        }
        let time_ms = ticker.stamper.stamp(&ticker.store);
        if let Err(error) = ticker.raft.client_write(Command::Tick { time_ms }).await {
            // Lost leadership meanwhile, or Raft stopped (which the node reports
            // elsewhere): the next leader ticks.
            tracing::debug!(%error, "a tick was not committed");
        }
    }
}
