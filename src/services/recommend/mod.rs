//! Item-to-item product recommendations: a pure model learnt incrementally from the
//! committed event feed, the per-profile history it recommends from, and an offline
//! evaluation.
//!
//! **What it owns.** [`Recommender`] is derived state: for every tracked product, its
//! decayed popularity and its top neighbours — products **bought in the same order**
//! (strong signal, weight 1) or **viewed by the same profile within
//! [`VIEW_WINDOW_MS`]** (weak signal, [`VIEW_WEIGHT`]). [`ProfileHistory`] is the small
//! per-profile record needed to recommend: recent seeds, purchased products (never
//! recommended again) and category interests. Both are plain data: no I/O, no clock, no
//! randomness — `observe` takes the event's own timestamp and `recommend` takes `now_ms`.
//!
//! **Invariants.**
//! - *Deterministic*: the same events in the same order give byte-identical state and
//!   identical recommendations; every ranking breaks ties by product id.
//! - *Bounded*: at most [`ModelConfig::items_max`] products, each with at most
//!   [`ModelConfig::neighbours_max`] neighbours; at most [`ModelConfig::categories_max`]
//!   categories; a history holds at most [`SEEDS_MAX`] seeds, [`PURCHASED_MAX`]
//!   purchases and [`INTERESTS_MAX`] categories; `recommend` returns at most
//!   [`LIMIT_MAX`] items. Eviction always drops the weakest (ties: by id), never at random.
//! - *Lazy decay*: every weight halves every [`ModelConfig::half_life_ms`]; nothing is
//!   rewritten as time passes — weights are stored with the time they refer to and decayed
//!   when read ([`decay`]). Because all weights decay at the same rate, rankings never
//!   change merely because time passed, which is what lets popularity keep exact top lists.
//!
//! **Caveats.** Floating-point decay uses `f64::exp2`, so two replicas on different
//! platforms may differ in the last bits of a score; the state is derived, so a replica
//! can always rebuild it from the feed. A product evicted from the model loses its
//! neighbours; a purchase older than the [`PURCHASED_MAX`] most recent ones may be
//! recommended again.
//!
//! Layout: [`decay`] (half-life math), [`signal`] (what an event says about products),
//! [`history`] ([`ProfileHistory`]), `neighbours` and `toplist` (bounded lists), `model`
//! ([`Recommender`]: learning, eviction, persistence), `query` (`recommend`), [`eval`]
//! (hit-rate@k against a popularity baseline) and [`synthetic`] (the load generator's
//! workload as [`ServiceEvent`](crate::services::event::ServiceEvent)s).

pub mod decay;
pub mod eval;
pub mod history;
mod model;
mod neighbours;
mod query;
pub mod signal;
pub mod synthetic;
mod toplist;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use eval::{EvalReport, evaluate};
pub use history::{ProfileHistory, Seed, SeedKind};
pub use model::Recommender;
pub use query::Recommendation;

/// Default half-life of every weight: 30 days.
pub const HALF_LIFE_MS: i64 = 30 * 24 * 60 * 60 * 1000;
/// Two views by one profile at most this far apart count as viewed together: one hour.
pub const VIEW_WINDOW_MS: i64 = 60 * 60 * 1000;
/// Default neighbours kept per product.
pub const NEIGHBOURS_MAX: usize = 50;
/// Default products tracked.
pub const ITEMS_MAX: usize = 100_000;
/// Default categories tracked.
pub const CATEGORIES_MAX: usize = 1_000;
/// Weight of one co-view (and of one view in popularity), relative to one co-purchase.
pub const VIEW_WEIGHT: f64 = 0.25;
/// Largest `limit` a `recommend` call honours.
pub const LIMIT_MAX: usize = 100;
/// Seeds (recently viewed or bought products) a history keeps.
pub const SEEDS_MAX: usize = 20;
/// Purchased products a history remembers (to exclude them).
pub const PURCHASED_MAX: usize = 500;
/// Category interests a history keeps.
pub const INTERESTS_MAX: usize = 8;
/// Distinct products of one order that are learnt from (pairs grow quadratically).
pub const ORDER_PRODUCTS_MAX: usize = 50;
/// Longest product id accepted, in bytes; events naming longer ids are ignored.
pub const PRODUCT_ID_BYTES_MAX: usize = 128;
/// Product names and categories are cut to this many characters.
pub const LABEL_CHARS_MAX: usize = 120;
/// Hard ceilings on the configurable limits, so a typo cannot ask for terabytes.
const NEIGHBOURS_CEILING: usize = 1_000;
const ITEMS_CEILING: usize = 10_000_000;
const CATEGORIES_CEILING: usize = 100_000;

/// The model's tunables; [`ModelConfig::default`] holds the named defaults above.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Every weight halves after this long, ms.
    pub half_life_ms: i64,
    /// Views by one profile at most this far apart are "viewed together", ms.
    pub view_window_ms: i64,
    /// Neighbours kept per product.
    pub neighbours_max: usize,
    /// Products tracked; beyond it the least popular are evicted.
    pub items_max: usize,
    /// Categories tracked; beyond it the least popular are evicted.
    pub categories_max: usize,
    /// Weight of a co-view and of a view, relative to a co-purchase and a purchase (1).
    pub view_weight: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            half_life_ms: HALF_LIFE_MS,
            view_window_ms: VIEW_WINDOW_MS,
            neighbours_max: NEIGHBOURS_MAX,
            items_max: ITEMS_MAX,
            categories_max: CATEGORIES_MAX,
            view_weight: VIEW_WEIGHT,
        }
    }
}

impl ModelConfig {
    /// Checks every setting, naming the first one out of range and its valid range.
    pub fn validate(&self) -> Result<(), RecommendError> {
        let invalid = |setting, value: String, fix| {
            Err(RecommendError::InvalidConfig {
                setting,
                value,
                fix,
            })
        };
        if self.half_life_ms <= 0 {
            return invalid(
                "half_life_ms",
                self.half_life_ms.to_string(),
                "use a positive duration",
            );
        }
        if self.view_window_ms < 0 {
            return invalid(
                "view_window_ms",
                self.view_window_ms.to_string(),
                "use 0 or more",
            );
        }
        if !(1..=NEIGHBOURS_CEILING).contains(&self.neighbours_max) {
            return invalid(
                "neighbours_max",
                self.neighbours_max.to_string(),
                "use 1 to 1000",
            );
        }
        if !(1..=ITEMS_CEILING).contains(&self.items_max) {
            return invalid("items_max", self.items_max.to_string(), "use 1 to 10000000");
        }
        if !(1..=CATEGORIES_CEILING).contains(&self.categories_max) {
            return invalid(
                "categories_max",
                self.categories_max.to_string(),
                "use 1 to 100000",
            );
        }
        if !(self.view_weight.is_finite() && (0.0..=1.0).contains(&self.view_weight)) {
            return invalid(
                "view_weight",
                self.view_weight.to_string(),
                "use a number from 0 to 1",
            );
        }
        Ok(())
    }
}

/// Why a recommendation model could not be built or loaded. Neither is retryable: the
/// same input fails the same way.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecommendError {
    /// A setting is out of range.
    #[error("recommendation setting {setting} = {value} is invalid: {fix}")]
    InvalidConfig {
        /// The setting's name.
        setting: &'static str,
        /// The rejected value.
        value: String,
        /// What to use instead.
        fix: &'static str,
    },
    /// A persisted model breaks an invariant (truncated or from an incompatible version).
    #[error("recommendation model state is corrupt ({0}); rebuild it from the event feed")]
    CorruptState(String),
}

impl RecommendError {
    /// Whether trying the same thing again may succeed (never, for these errors).
    pub fn is_retryable(&self) -> bool {
        false
    }
}
