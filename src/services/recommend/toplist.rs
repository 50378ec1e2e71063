//! A bounded, ranked list of product slots: the most popular products, globally or in
//! one category.
//!
//! Maintained incrementally: when a product's popularity grows, [`TopList::promote`]
//! moves it to its place. That is exact because popularity rank keys only ever grow (see
//! [`super::decay`]): a product outside the list can only enter it by being promoted
//! itself. Eviction and loading rebuild lists from scratch with [`TopList::rebuild`].
//!
//! Invariant: at most `capacity` distinct slots, sorted by the model's ranking (most
//! popular first, ties by product id).

use std::cmp::Ordering;

/// See the module documentation.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct TopList {
    /// Most popular first.
    slots: Vec<u32>,
}

impl TopList {
    /// The ranked slots.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// Puts `slot`, whose rank just rose, at its place (or leaves it out if it does not
    /// make the top `capacity`). `rank(a, b)` is `Less` when `a` ranks before `b`.
    pub fn promote(&mut self, slot: u32, capacity: usize, rank: impl Fn(u32, u32) -> Ordering) {
        self.remove(slot);
        let at = self
            .slots
            .partition_point(|&other| rank(other, slot) == Ordering::Less);
        if at < capacity {
            self.slots.insert(at, slot);
            self.slots.truncate(capacity);
        }
    }

    /// Takes `slot` out, if present.
    pub fn remove(&mut self, slot: u32) {
        self.slots.retain(|&s| s != slot);
    }

    /// The top `capacity` of `candidates`.
    pub fn rebuild(
        candidates: impl Iterator<Item = u32>,
        capacity: usize,
        rank: impl Fn(u32, u32) -> Ordering,
    ) -> TopList {
        let mut slots: Vec<u32> = candidates.collect();
        if slots.len() > capacity && capacity > 0 {
            slots.select_nth_unstable_by(capacity - 1, |&a, &b| rank(a, b));
            slots.truncate(capacity);
        }
        slots.sort_unstable_by(|&a, &b| rank(a, b));
        slots.truncate(capacity);
        TopList { slots }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_keeps_the_list_ranked_and_bounded() {
        // Popularity by slot; ties rank the lower slot first.
        let mut popularity: [f64; 5] = [5.0, 1.0, 3.0, 3.0, 0.5];
        let mut list = TopList::default();
        for slot in 0..5u32 {
            list.promote(slot, 3, |a, b| {
                let (a, b) = (a as usize, b as usize);
                popularity[b].total_cmp(&popularity[a]).then(a.cmp(&b))
            });
        }
        assert_eq!(list.slots(), &[0, 2, 3]);

        popularity[1] = 10.0;
        let rank = |a: u32, b: u32| {
            let (a, b) = (a as usize, b as usize);
            popularity[b].total_cmp(&popularity[a]).then(a.cmp(&b))
        };
        list.promote(1, 3, rank);
        assert_eq!(list.slots(), &[1, 0, 2]);
        assert_eq!(TopList::rebuild(0..5, 3, rank), list);
        assert_eq!(TopList::rebuild(0..5, 0, rank).slots(), &[] as &[u32]);
    }
}
