//! One product's bounded list of neighbours: the products bought or viewed with it,
//! with decaying weights.
//!
//! Weights are `f32` to keep an edge at 12 bytes (100,000 products × 50 neighbours ≈
//! 60 MB). Decaying every edge on every update would lose the decay to `f32` rounding
//! when updates are frequent, so the list instead stores weights *relative to a base
//! time*: weight `w` observed at `t` is stored as `w · 2^((t − base) / half_life)`. All
//! edges of a list share the base, so they compare directly, at any time. When new
//! weights would be scaled past `2^`[`REBASE_HALF_LIVES`] the list is rebased (every
//! edge decayed once to the new base), which keeps values far from `f32` overflow.
//!
//! Invariants: at most `capacity` edges, distinct items, never the list's own product
//! (the model guarantees that); `latest_ms ≥ base_ms`.
//!
//! When the list is full, a new neighbour always enters, replacing the weakest edge (least
//! evidence; ties: the greater product id). Because weights are time-adjusted, among
//! equally supported edges the oldest is the weakest, so the last slots of a full list
//! churn among recent one-off neighbours — which is how a new neighbour gets the chance to
//! accumulate evidence — while every edge stronger than those keeps its place. (Admitting
//! only newcomers stronger than the weakest edge would starve new neighbours of a list
//! full of equal, old edges.)

use serde::{Deserialize, Serialize};

use super::decay::factor;

/// Rebase when a new weight would be scaled up by more than 2^this.
const REBASE_HALF_LIVES: f64 = 32.0;

/// A neighbour and the weight of the evidence linking it, in the list's base units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct Edge {
    /// The neighbour's slot in the model.
    pub item: u32,
    /// Co-purchase weight.
    pub bought: f32,
    /// Co-view weight.
    pub viewed: f32,
}

impl Edge {
    /// Total evidence, in the list's base units.
    pub fn strength(&self) -> f64 {
        f64::from(self.bought) + f64::from(self.viewed)
    }
}

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub(super) struct NeighbourList {
    /// The time stored weights are relative to, ms.
    base_ms: i64,
    /// The latest observation time added, ms.
    latest_ms: i64,
    /// At most `capacity`, unordered.
    edges: Vec<Edge>,
}

impl NeighbourList {
    /// The edges, unordered.
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// The factor turning stored weights into weights at `now_ms` (reading before the
    /// latest observation reads as of that observation: weights never grow backwards).
    pub fn scale_at(&self, now_ms: i64, half_life_ms: i64) -> f64 {
        factor(now_ms.max(self.latest_ms) - self.base_ms, half_life_ms)
    }

    /// Adds evidence for neighbour `item`, observed at `at_ms`. `id_of` names slots, for
    /// breaking ties when the list is full.
    pub fn add<'a>(
        &mut self,
        item: u32,
        (bought, viewed): (f64, f64),
        at_ms: i64,
        half_life_ms: i64,
        capacity: usize,
        id_of: impl Fn(u32) -> &'a str,
    ) {
        if self.edges.is_empty() {
            self.base_ms = at_ms;
            self.latest_ms = at_ms;
        }
        if (at_ms - self.base_ms) as f64 / half_life_ms.max(1) as f64 > REBASE_HALF_LIVES {
            self.rebase(at_ms, half_life_ms);
        }
        self.latest_ms = self.latest_ms.max(at_ms);
        let grow = 1.0 / factor(at_ms - self.base_ms, half_life_ms);
        let scale = if at_ms >= self.base_ms {
            grow
        } else {
            factor(self.base_ms - at_ms, half_life_ms)
        };
        let added = Edge {
            item,
            bought: (bought * scale) as f32,
            viewed: (viewed * scale) as f32,
        };
        if let Some(edge) = self.edges.iter_mut().find(|e| e.item == item) {
            edge.bought += added.bought;
            edge.viewed += added.viewed;
        } else if self.edges.len() < capacity {
            self.edges.push(added);
        } else if let Some(weakest) = self.weakest(&id_of) {
            self.edges[weakest] = added;
        }
    }

    /// Rewrites neighbour slots after compaction; drops neighbours that were evicted.
    pub fn remap(&mut self, new_slot: &[Option<u32>]) {
        self.edges.retain_mut(
            |edge| match new_slot.get(edge.item as usize).copied().flatten() {
                Some(slot) => {
                    edge.item = slot;
                    true
                }
                None => false,
            },
        );
    }

    /// Whether the list is well formed for a model of `items` products, as product `own`.
    pub fn is_valid(&self, own: u32, items: usize, capacity: usize) -> bool {
        let mut seen: Vec<u32> = self.edges.iter().map(|e| e.item).collect();
        seen.sort_unstable();
        seen.dedup();
        self.edges.len() <= capacity
            && seen.len() == self.edges.len()
            && self.latest_ms >= self.base_ms
            && self.edges.iter().all(|e| {
                e.item != own
                    && (e.item as usize) < items
                    && e.bought.is_finite()
                    && e.viewed.is_finite()
                    && e.bought >= 0.0
                    && e.viewed >= 0.0
            })
    }

    fn rebase(&mut self, to_ms: i64, half_life_ms: i64) {
        let keep = factor(to_ms - self.base_ms, half_life_ms);
        for edge in &mut self.edges {
            edge.bought = (f64::from(edge.bought) * keep) as f32;
            edge.viewed = (f64::from(edge.viewed) * keep) as f32;
        }
        self.base_ms = to_ms;
    }

    fn weakest<'a>(&self, id_of: &impl Fn(u32) -> &'a str) -> Option<usize> {
        (0..self.edges.len()).reduce(|a, b| {
            if weaker(&self.edges[b], &self.edges[a], id_of) {
                b
            } else {
                a
            }
        })
    }
}

/// Whether `a` is weaker than `b`: less evidence, or as much and a greater product id.
fn weaker<'a>(a: &Edge, b: &Edge, id_of: &impl Fn(u32) -> &'a str) -> bool {
    match a.strength().total_cmp(&b.strength()) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => id_of(a.item) > id_of(b.item),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF_LIFE: i64 = 1_000;

    fn id(slot: u32) -> &'static str {
        const IDS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
        IDS[slot as usize]
    }

    #[test]
    fn a_newcomer_replaces_the_weakest_edge_of_a_full_list() {
        let mut list = NeighbourList::default();
        let items = |list: &NeighbourList| {
            let mut items: Vec<u32> = list.edges().iter().map(|e| e.item).collect();
            items.sort_unstable();
            items
        };
        // b and c tie at 2: c, the greater id, is the weaker.
        for (item, weight) in [(0, 3.0), (1, 2.0), (2, 2.0), (3, 1.0)] {
            list.add(item, (weight, 0.0), 0, HALF_LIFE, 3, id);
        }
        assert_eq!(items(&list), vec![0, 1, 3]);
        // Later evidence of equal weight is stronger: the older one-off goes.
        list.add(4, (1.0, 0.0), 10, HALF_LIFE, 3, id);
        assert_eq!(items(&list), vec![0, 1, 4]);
        list.add(4, (2.0, 0.0), 20, HALF_LIFE, 3, id);
        list.add(5, (1.0, 0.0), 30, HALF_LIFE, 3, id);
        assert_eq!(items(&list), vec![0, 4, 5], "4 grew past 1");
    }

    #[test]
    fn weights_decay_with_time_and_survive_rebasing() {
        let mut list = NeighbourList::default();
        list.add(1, (4.0, 0.0), 0, HALF_LIFE, 10, id);
        list.add(2, (0.0, 1.0), HALF_LIFE, HALF_LIFE, 10, id);
        let value = |list: &NeighbourList, item: u32, now: i64| {
            let edge = list.edges().iter().find(|e| e.item == item).copied();
            edge.map_or(0.0, |e| e.strength() * list.scale_at(now, HALF_LIFE))
        };
        assert!((value(&list, 1, HALF_LIFE) - 2.0).abs() < 1e-6);
        assert!((value(&list, 2, HALF_LIFE) - 1.0).abs() < 1e-6);
        assert!(
            (value(&list, 1, 0) - 2.0).abs() < 1e-6,
            "no growth backwards"
        );
        // Far in the future the list rebases; relative weights stay right.
        let later = 40 * HALF_LIFE;
        list.add(2, (0.0, 1.0), later, HALF_LIFE, 10, id);
        assert!((value(&list, 2, later) - 1.0).abs() < 1e-6);
        assert!(value(&list, 1, later) < 1e-9);
    }

    #[test]
    fn remapping_drops_evicted_neighbours() {
        let mut list = NeighbourList::default();
        for item in 1..=3 {
            list.add(item, (1.0, 0.0), 0, HALF_LIFE, 10, id);
        }
        list.remap(&[Some(0), Some(1), None, Some(2)]);
        let items: Vec<u32> = list.edges().iter().map(|e| e.item).collect();
        assert_eq!(items, vec![1, 2]);
        assert!(list.is_valid(0, 3, 10));
    }
}
