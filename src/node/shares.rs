//! Each source's share of the write pipeline's in-flight capacity.
//!
//! The node admits at most `limits.inflight_events_max` events that are not yet committed.
//! Without a per-source bound one source's burst (a misbehaving app, a replayed backlog)
//! could hold all of it, and every other source would get 429 until it drained. A source
//! may hold at most `limits.source_inflight_percent` of the capacity; beyond it, only that
//! source is refused (429), and the rest stays free for the others.
//!
//! Held shares are released when the [`Share`] is dropped, i.e. when the proposal carrying
//! the events is answered or dropped — like the node-wide permits it sits beside.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Events each source holds in flight, against a per-source maximum.
#[derive(Clone)]
pub struct SourceShares {
    held: Arc<Mutex<HashMap<String, usize>>>,
    per_source_max: usize,
}

/// Events of one source admitted in flight; released on drop.
pub struct Share {
    held: Arc<Mutex<HashMap<String, usize>>>,
    source: String,
    events: usize,
}

impl SourceShares {
    /// Shares of at most `per_source_max` events each.
    pub fn new(per_source_max: usize) -> SourceShares {
        SourceShares {
            held: Arc::new(Mutex::new(HashMap::new())),
            per_source_max,
        }
    }

    /// The most one source may hold.
    pub fn per_source_max(&self) -> usize {
        self.per_source_max
    }

    /// Takes `events` more for `source`, or `None` if that would pass its maximum.
    pub fn try_take(&self, source: &str, events: usize) -> Option<Share> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = held.get(source).copied().unwrap_or(0);
        if now + events > self.per_source_max {
            return None;
        }
        held.insert(source.to_owned(), now + events);
        Some(Share {
            held: Arc::clone(&self.held),
            source: source.to_owned(),
            events,
        })
    }

    /// Events `source` holds now.
    #[cfg(test)]
    fn held(&self, source: &str) -> usize {
        let held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        held.get(source).copied().unwrap_or(0)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = held.get_mut(&self.source) {
            *count = count.saturating_sub(self.events);
            if *count == 0 {
                // Sources come and go; the map only holds those with events in flight.
                held.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_is_refused_at_its_share_while_another_is_admitted() {
        let shares = SourceShares::new(100);
        let first = shares.try_take("web", 60).expect("within the share");
        let second = shares.try_take("web", 40).expect("exactly the share");
        assert!(shares.try_take("web", 1).is_none(), "over the share");
        let other = shares
            .try_take("support-desk", 100)
            .expect("another source's own share");
        assert_eq!(shares.held("web"), 100);
        drop(first);
        assert_eq!(shares.held("web"), 40);
        assert!(
            shares.try_take("web", 60).is_some(),
            "released events make room again"
        );
        drop((second, other));
        assert_eq!(shares.held("support-desk"), 0);
    }

    #[test]
    fn a_request_larger_than_the_share_is_refused_and_takes_nothing() {
        let shares = SourceShares::new(10);
        assert!(shares.try_take("web", 11).is_none());
        assert_eq!(shares.held("web"), 0);
        assert!(shares.try_take("web", 10).is_some());
    }

    #[test]
    fn sources_without_events_in_flight_leave_no_entry_behind() {
        let shares = SourceShares::new(10);
        for i in 0..1_000 {
            drop(shares.try_take(&format!("source-{i}"), 1));
        }
        assert!(shares.held.lock().expect("lock").is_empty());
    }
}
