//! Answering "what should this profile see next?" from a trained [`Recommender`].
//!
//! 1. **Neighbours of the seeds.** Each of the profile's seeds (newest first) votes for
//!    its neighbours with weight `kind × `[`SEED_RANK_DECAY`]`^rank × decay(age)`, where a
//!    purchase counts [`SEED_PURCHASE_WEIGHT`] and a view [`SEED_VIEW_WEIGHT`]. A seed
//!    splits its vote in proportion to its neighbours' evidence, over its total evidence
//!    plus [`EVIDENCE_PRIOR`] — so a seed seen once with one neighbour does not outvote a
//!    seed with a long, well-supported list. The reason names the seed that contributed
//!    most, and whether that link was mostly bought-together or viewed-together.
//! 2. **Popularity top-up.** If fewer than `limit` come from neighbours (a new customer
//!    has none), the most popular products of the profile's favourite category follow
//!    ("popular in …"), then the most popular overall ("popular right now").
//!
//! Products the profile bought are never returned, nor is any product twice. The result
//! is in rank order and deterministic: ties are broken by product id. `score` is the
//! evidence behind each item — summed neighbour votes, or decayed popularity for
//! popularity reasons — and is comparable only between items with the same kind of reason.

use std::collections::{HashMap, HashSet};

use super::decay::factor;
use super::history::{ProfileHistory, SeedKind};
use super::model::Recommender;
use super::{LIMIT_MAX, SEEDS_MAX};

/// Vote weight of a bought seed.
pub const SEED_PURCHASE_WEIGHT: f64 = 1.0;
/// Vote weight of a viewed seed.
pub const SEED_VIEW_WEIGHT: f64 = 0.5;
/// Each older seed's vote is worth this share of the next newer one's.
pub const SEED_RANK_DECAY: f64 = 0.85;
/// Evidence a seed's list is assumed to have beyond what it has (in co-purchases).
pub const EVIDENCE_PRIOR: f64 = 1.0;

/// One recommended product.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// The product.
    pub product_id: String,
    /// The evidence for it (see the module documentation).
    pub score: f64,
    /// Why, for people: "bought together with Classic Camera", "popular in Shoes", …
    pub reason: String,
}

/// Votes gathered for one candidate product.
struct Candidate {
    /// Sum of all seeds' votes.
    score: f64,
    /// The largest single vote.
    best: f64,
    /// The seed that gave it.
    seed: u32,
    /// Whether that link was mostly co-purchase.
    bought: bool,
}

impl Recommender {
    /// Up to `limit` (at most [`LIMIT_MAX`]) products for the profile with `history`, as
    /// of `now_ms`; see the module documentation.
    pub fn recommend(
        &self,
        history: &ProfileHistory,
        limit: usize,
        now_ms: i64,
    ) -> Vec<Recommendation> {
        let limit = limit.min(LIMIT_MAX);
        let mut picked = self.by_neighbours(history, limit, now_ms);
        if let Some(category) = history.favourite_category() {
            let slots = self.category_slots(category);
            let reason = format!("popular in {category}");
            self.top_up(&mut picked, slots, &reason, history, limit, now_ms);
        }
        self.top_up(
            &mut picked,
            self.popular_slots(),
            "popular right now",
            history,
            limit,
            now_ms,
        );
        picked
    }

    /// The popularity baseline: the `limit` most popular products the profile has not
    /// bought, whatever else it did.
    pub fn popular(
        &self,
        history: &ProfileHistory,
        limit: usize,
        now_ms: i64,
    ) -> Vec<Recommendation> {
        let mut picked = Vec::new();
        let limit = limit.min(LIMIT_MAX);
        let slots = self.popular_slots();
        self.top_up(
            &mut picked,
            slots,
            "popular right now",
            history,
            limit,
            now_ms,
        );
        picked
    }

    /// The `limit` products with the most neighbour votes from the profile's seeds.
    fn by_neighbours(
        &self,
        history: &ProfileHistory,
        limit: usize,
        now_ms: i64,
    ) -> Vec<Recommendation> {
        let half_life_ms = self.config().half_life_ms;
        let mut candidates: HashMap<u32, Candidate> = HashMap::new();
        for (rank, seed) in history.seeds().iter().take(SEEDS_MAX).enumerate() {
            let Some(seed_slot) = self.slot(&seed.product_id) else {
                continue;
            };
            let kind = match seed.kind {
                SeedKind::Purchased => SEED_PURCHASE_WEIGHT,
                SeedKind::Viewed => SEED_VIEW_WEIGHT,
            };
            let weight = kind
                * SEED_RANK_DECAY.powi(rank as i32)
                * factor(now_ms - seed.at_ms, half_life_ms);
            let list = self.neighbours_of(seed_slot);
            let scale = list.scale_at(now_ms, half_life_ms);
            let total: f64 = list.edges().iter().map(|e| e.strength()).sum::<f64>() * scale;
            let per_unit = weight * scale / (total + EVIDENCE_PRIOR);
            for edge in list.edges() {
                let vote = per_unit * edge.strength();
                if vote <= 0.0 || history.has_purchased(&self.item(edge.item).product_id) {
                    continue;
                }
                let candidate = candidates.entry(edge.item).or_insert(Candidate {
                    score: 0.0,
                    best: 0.0,
                    seed: seed_slot,
                    bought: false,
                });
                candidate.score += vote;
                if vote > candidate.best {
                    candidate.best = vote;
                    candidate.seed = seed_slot;
                    candidate.bought = edge.bought >= edge.viewed;
                }
            }
        }
        let mut ranked: Vec<(u32, Candidate)> = candidates.into_iter().collect();
        ranked.sort_by(|(a, ca), (b, cb)| {
            cb.score
                .total_cmp(&ca.score)
                .then_with(|| self.item(*a).product_id.cmp(&self.item(*b).product_id))
        });
        ranked.truncate(limit);
        ranked
            .into_iter()
            .map(|(slot, candidate)| Recommendation {
                product_id: self.item(slot).product_id.clone(),
                score: candidate.score,
                reason: self.reason(&candidate),
            })
            .collect()
    }

    fn reason(&self, candidate: &Candidate) -> String {
        let seed = self.item(candidate.seed);
        let label = seed.name.as_deref().unwrap_or(&seed.product_id);
        let how = if candidate.bought { "bought" } else { "viewed" };
        format!("{how} together with {label}")
    }

    /// Appends popular products from `slots` (already ranked) until `limit`, skipping
    /// bought and already picked ones.
    fn top_up(
        &self,
        picked: &mut Vec<Recommendation>,
        slots: &[u32],
        reason: &str,
        history: &ProfileHistory,
        limit: usize,
        now_ms: i64,
    ) {
        if picked.len() >= limit {
            return;
        }
        let half_life_ms = self.config().half_life_ms;
        let mut seen: HashSet<String> = picked.iter().map(|r| r.product_id.clone()).collect();
        for &slot in slots {
            if picked.len() >= limit {
                break;
            }
            let item = self.item(slot);
            if history.has_purchased(&item.product_id) || !seen.insert(item.product_id.clone()) {
                continue;
            }
            picked.push(Recommendation {
                product_id: item.product_id.clone(),
                score: item.popularity.value_at(now_ms, half_life_ms),
                reason: reason.to_owned(),
            });
        }
    }
}
