//! Offline evaluation: hit-rate@k of the recommender against a popularity baseline, by
//! holding out each customer's last order.
//!
//! Protocol (prequential, so nothing from the future leaks in): events are replayed in
//! time order (timestamp, then `seq`) into a fresh [`Recommender`] and per-profile
//! [`ProfileHistory`]s. Each profile's last `Order Completed` with products is held out:
//! when the replay reaches it, the model — trained on every earlier event, of every
//! customer — recommends `k` products for the profile's history at that moment, and so
//! does the popularity baseline ([`Recommender::popular`]: the most popular products the
//! customer has not bought). A hit is a list containing at least one product of the
//! held-out order. The held-out order itself is never learnt from; every other event is.
//!
//! Both lists exclude what the customer already bought, so a held-out product bought
//! before can be hit by neither.

use std::collections::HashMap;
use std::fmt;
use std::time::Instant;

use super::LIMIT_MAX;
use super::history::ProfileHistory;
use super::model::Recommender;
use super::signal::{self, Signal};
use crate::services::event::ServiceEvent;

/// What an evaluation found.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// List length evaluated (hit-rate@k).
    pub k: usize,
    /// Events replayed.
    pub events: usize,
    /// Distinct profiles in the events.
    pub profiles: usize,
    /// Customers with a held-out order (the number of recommendation lists scored).
    pub customers_evaluated: usize,
    /// Of those, customers with at least one seed when their order came.
    pub customers_with_seeds: usize,
    /// Orders learnt from (not held out).
    pub orders_trained: usize,
    /// Products the model tracked at the end.
    pub items: usize,
    /// Held-out orders the recommender's list hit.
    pub recommender_hits: usize,
    /// Held-out orders the popularity list hit.
    pub popularity_hits: usize,
    /// Wall time of the whole evaluation, ms.
    pub elapsed_ms: u64,
}

impl EvalReport {
    /// Share of held-out orders the recommender hit.
    pub fn hit_rate_recommender(&self) -> f64 {
        ratio(self.recommender_hits, self.customers_evaluated)
    }

    /// Share of held-out orders the popularity baseline hit.
    pub fn hit_rate_popularity(&self) -> f64 {
        ratio(self.popularity_hits, self.customers_evaluated)
    }
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.k;
        writeln!(
            f,
            "events {}, profiles {}, customers evaluated {} ({} with seeds), orders trained {}, products {}",
            self.events,
            self.profiles,
            self.customers_evaluated,
            self.customers_with_seeds,
            self.orders_trained,
            self.items
        )?;
        writeln!(
            f,
            "hit-rate@{k}: recommender {:.3} ({} hits), popularity {:.3} ({} hits)",
            self.hit_rate_recommender(),
            self.recommender_hits,
            self.hit_rate_popularity(),
            self.popularity_hits
        )?;
        let per_second = self.events as f64 * 1000.0 / self.elapsed_ms.max(1) as f64;
        write!(
            f,
            "elapsed {} ms ({per_second:.0} events/s, training and scoring)",
            self.elapsed_ms
        )
    }
}

/// Evaluates hit-rate@`k` (clamped to 1..=[`LIMIT_MAX`]) on `events`; see the module
/// documentation.
pub fn evaluate(events: &[ServiceEvent], k: usize) -> EvalReport {
    let started = Instant::now();
    let k = k.clamp(1, LIMIT_MAX);
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| (events[i].timestamp_ms, events[i].seq));
    let held_out = last_orders(events, &order);
    let mut model = Recommender::default();
    let mut histories: HashMap<u64, ProfileHistory> = HashMap::new();
    let empty = ProfileHistory::new();
    let mut report = EvalReport {
        k,
        events: events.len(),
        profiles: 0,
        customers_evaluated: 0,
        customers_with_seeds: 0,
        orders_trained: 0,
        items: 0,
        recommender_hits: 0,
        popularity_hits: 0,
        elapsed_ms: 0,
    };
    for &i in &order {
        let event = &events[i];
        let Some(&(held, ref bought)) = held_out.get(&event.profile_id) else {
            model.observe(event, histories.entry(event.profile_id).or_default());
            continue;
        };
        if held != i {
            report.orders_trained += usize::from(event.name == "Order Completed");
            model.observe(event, histories.entry(event.profile_id).or_default());
            continue;
        }
        let history = histories.get(&event.profile_id).unwrap_or(&empty);
        let hit =
            |list: Vec<super::Recommendation>| list.iter().any(|r| bought.contains(&r.product_id));
        report.customers_evaluated += 1;
        report.customers_with_seeds += usize::from(!history.seeds().is_empty());
        report.recommender_hits +=
            usize::from(hit(model.recommend(history, k, event.timestamp_ms)));
        report.popularity_hits += usize::from(hit(model.popular(history, k, event.timestamp_ms)));
    }
    report.profiles = count_profiles(events);
    report.items = model.len();
    report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    report
}

/// Each profile's last order with products, in replay order: `(event index, product ids)`.
fn last_orders(events: &[ServiceEvent], order: &[usize]) -> HashMap<u64, (usize, Vec<String>)> {
    let mut last = HashMap::new();
    for &i in order {
        if let Some(Signal::Purchased(products)) = signal::of(&events[i]) {
            let ids = products.into_iter().map(|p| p.id).collect();
            last.insert(events[i].profile_id, (i, ids));
        }
    }
    last
}

fn count_profiles(events: &[ServiceEvent]) -> usize {
    let mut ids: Vec<u64> = events.iter().map(|e| e.profile_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}
