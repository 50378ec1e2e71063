//! [`ProfileHistory`]: what one profile has viewed and bought, as much as recommending
//! needs and no more.
//!
//! It keeps three small things: **seeds** — the most recently viewed or bought products,
//! newest first, one entry per product, that recommendations start from; **purchased** —
//! products bought, so they are never recommended again; and **interests** — weighted
//! categories, whose heaviest is the profile's favourite category for the popularity
//! fallback.
//!
//! Invariants: at most [`SEEDS_MAX`] seeds, sorted by time (newest first) then product
//! id, distinct; at most [`PURCHASED_MAX`] purchases (the oldest is forgotten first); at
//! most [`INTERESTS_MAX`] interests. Every operation is order-insensitive where it can
//! be: seeds keep the latest time and the strongest kind, so observing the same events in
//! another order, or merging two histories either way round, gives the same history.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::signal::{self, Signal};
use super::{INTERESTS_MAX, PURCHASED_MAX, SEEDS_MAX, VIEW_WEIGHT};
use crate::services::event::ServiceEvent;

/// Interest a bought product adds to its category.
const PURCHASE_INTEREST: f64 = 1.0;
/// Interest a viewed product or a viewed product list adds to its category.
const VIEW_INTEREST: f64 = VIEW_WEIGHT;

/// How a profile met a seed product; a purchase outranks a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SeedKind {
    /// Viewed or added to a cart.
    Viewed,
    /// Bought.
    Purchased,
}

/// A product the profile recently viewed or bought.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seed {
    /// The product.
    pub product_id: String,
    /// The strongest way the profile met it.
    pub kind: SeedKind,
    /// The latest time the profile met it, ms since the epoch.
    pub at_ms: i64,
}

/// One profile's shopping history; see the module documentation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProfileHistory {
    /// Newest first, distinct products, at most [`SEEDS_MAX`].
    seeds: Vec<Seed>,
    /// Product id → latest purchase time, at most [`PURCHASED_MAX`].
    purchased: BTreeMap<String, i64>,
    /// Category → interest weight, at most [`INTERESTS_MAX`].
    interests: BTreeMap<String, f64>,
}

impl ProfileHistory {
    /// An empty history (a new customer).
    pub fn new() -> ProfileHistory {
        ProfileHistory::default()
    }

    /// Records what `event` says about products, if anything.
    pub fn observe(&mut self, event: &ServiceEvent) {
        if let Some(signal) = signal::of(event) {
            self.apply(&signal, event.timestamp_ms);
        }
    }

    /// Records a signal observed at `at_ms`.
    pub(crate) fn apply(&mut self, signal: &Signal, at_ms: i64) {
        match signal {
            Signal::Viewed(product) => {
                self.add_seed(&product.id, SeedKind::Viewed, at_ms);
                if let Some(category) = &product.category {
                    self.add_interest(category, VIEW_INTEREST);
                }
            }
            Signal::Purchased(products) => {
                for product in products {
                    self.add_seed(&product.id, SeedKind::Purchased, at_ms);
                    self.add_purchase(&product.id, at_ms);
                    if let Some(category) = &product.category {
                        self.add_interest(category, PURCHASE_INTEREST);
                    }
                }
            }
            Signal::Browsed(category) => self.add_interest(category, VIEW_INTEREST),
        }
    }

    /// Folds `other` (a profile merged into this one) in: the union of both, bounded as
    /// one history is. `a.merge(&b)` and `b.merge(&a)` give the same history.
    pub fn merge(&mut self, other: &ProfileHistory) {
        for seed in &other.seeds {
            self.upsert_seed(&seed.product_id, seed.kind, seed.at_ms);
        }
        self.bound_seeds();
        for (product_id, at_ms) in &other.purchased {
            self.upsert_purchase(product_id, *at_ms);
        }
        self.bound_purchases();
        for (category, weight) in &other.interests {
            *self.interests.entry(category.clone()).or_default() += weight;
        }
        while self.interests.len() > INTERESTS_MAX {
            self.drop_weakest_interest(None);
        }
    }

    /// Recent seeds, newest first.
    pub fn seeds(&self) -> &[Seed] {
        &self.seeds
    }

    /// Whether the profile bought `product_id` (among its [`PURCHASED_MAX`] latest).
    pub fn has_purchased(&self, product_id: &str) -> bool {
        self.purchased.contains_key(product_id)
    }

    /// Distinct products remembered as bought.
    pub fn purchased_count(&self) -> usize {
        self.purchased.len()
    }

    /// The category the profile showed most interest in (ties: by name).
    pub fn favourite_category(&self) -> Option<&str> {
        let mut best: Option<(&String, f64)> = None;
        for (category, weight) in &self.interests {
            if best.is_none_or(|(_, top)| *weight > top) {
                best = Some((category, *weight));
            }
        }
        best.map(|(category, _)| category.as_str())
    }

    fn add_seed(&mut self, product_id: &str, kind: SeedKind, at_ms: i64) {
        self.upsert_seed(product_id, kind, at_ms);
        self.bound_seeds();
    }

    /// Adds or updates a seed (latest time, strongest kind) without bounding.
    fn upsert_seed(&mut self, product_id: &str, kind: SeedKind, at_ms: i64) {
        match self.seeds.iter_mut().find(|s| s.product_id == product_id) {
            Some(seed) => {
                seed.kind = seed.kind.max(kind);
                seed.at_ms = seed.at_ms.max(at_ms);
            }
            None => self.seeds.push(Seed {
                product_id: product_id.to_owned(),
                kind,
                at_ms,
            }),
        }
    }

    /// Restores the order (newest first, then product id) and keeps [`SEEDS_MAX`].
    fn bound_seeds(&mut self) {
        self.seeds.sort_by(|a, b| {
            b.at_ms
                .cmp(&a.at_ms)
                .then_with(|| a.product_id.cmp(&b.product_id))
        });
        self.seeds.truncate(SEEDS_MAX);
    }

    fn add_purchase(&mut self, product_id: &str, at_ms: i64) {
        self.upsert_purchase(product_id, at_ms);
        self.bound_purchases();
    }

    fn upsert_purchase(&mut self, product_id: &str, at_ms: i64) {
        let latest = self.purchased.entry(product_id.to_owned()).or_insert(at_ms);
        *latest = (*latest).max(at_ms);
    }

    /// Forgets the oldest purchases (ties: the greatest id) beyond [`PURCHASED_MAX`].
    fn bound_purchases(&mut self) {
        while self.purchased.len() > PURCHASED_MAX {
            let oldest = self
                .purchased
                .iter()
                .min_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                .map(|(id, _)| id.clone());
            match oldest {
                Some(oldest) => self.purchased.remove(&oldest),
                None => break,
            };
        }
    }

    /// Adds interest; a new category beyond the limit replaces the weakest one (it is the
    /// profile's latest interest, so it must not be the one forgotten).
    fn add_interest(&mut self, category: &str, weight: f64) {
        if let Some(existing) = self.interests.get_mut(category) {
            *existing += weight;
            return;
        }
        if self.interests.len() >= INTERESTS_MAX {
            self.drop_weakest_interest(Some(category));
        }
        self.interests.insert(category.to_owned(), weight);
    }

    /// Drops the lightest interest (ties: the greatest name), sparing `keep`.
    fn drop_weakest_interest(&mut self, keep: Option<&str>) {
        let weakest = self
            .interests
            .iter()
            .filter(|(category, _)| Some(category.as_str()) != keep)
            .min_by(|a, b| a.1.total_cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(category, _)| category.clone());
        if let Some(weakest) = weakest {
            self.interests.remove(&weakest);
        }
    }
}
