//! Exponential time decay, computed lazily.
//!
//! A weight `w` recorded at time `t` is worth `w · 2^(−(now − t) / half_life)` at `now`.
//! Nothing is rewritten as time passes: a [`Decayed`] stores a value *as of* a time and
//! is decayed when read or when more weight is added. Reading at a time before the stored
//! one returns the stored value (weights never grow by looking into the past), and
//! weight added with an older timestamp is decayed to the stored time first, so the result
//! does not depend on which of two events arrived first (up to rounding).
//!
//! Every weight decays by the same factor over the same interval, so the order of two
//! weights is the same at every `now`. [`Decayed::rank_key`] is that order as one number
//! (`log2(value) + at / half_life`): a key that only grows when weight is added and never
//! changes otherwise, which lets top lists be maintained incrementally and exactly.

use serde::{Deserialize, Serialize};

/// The factor a weight keeps after `elapsed_ms` (1 when `elapsed_ms ≤ 0`).
pub fn factor(elapsed_ms: i64, half_life_ms: i64) -> f64 {
    if elapsed_ms <= 0 {
        return 1.0;
    }
    (-(elapsed_ms as f64) / half_life_ms.max(1) as f64).exp2()
}

/// A decaying weight: `value` as of `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Decayed {
    /// The weight at `at_ms`.
    pub value: f64,
    /// The time `value` refers to, ms since the epoch.
    pub at_ms: i64,
}

impl Decayed {
    /// Adds `weight` observed at `at_ms`.
    pub fn add(&mut self, weight: f64, at_ms: i64, half_life_ms: i64) {
        if self.value == 0.0 {
            *self = Decayed {
                value: weight,
                at_ms,
            };
        } else if at_ms >= self.at_ms {
            self.value = self.value * factor(at_ms - self.at_ms, half_life_ms) + weight;
            self.at_ms = at_ms;
        } else {
            self.value += weight * factor(self.at_ms - at_ms, half_life_ms);
        }
    }

    /// The weight at `now_ms`.
    pub fn value_at(&self, now_ms: i64, half_life_ms: i64) -> f64 {
        self.value * factor(now_ms - self.at_ms, half_life_ms)
    }

    /// A number that orders weights as they compare at any `now` (greater = heavier);
    /// negative infinity for an empty weight.
    pub fn rank_key(&self, half_life_ms: i64) -> f64 {
        if self.value <= 0.0 {
            return f64::NEG_INFINITY;
        }
        self.value.log2() + self.at_ms as f64 / half_life_ms.max(1) as f64
    }

    /// Adds another decaying weight (used when merging).
    pub fn merge(&mut self, other: &Decayed, half_life_ms: i64) {
        if other.value > 0.0 {
            self.add(other.value, other.at_ms, half_life_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 24 * 60 * 60 * 1000;
    const HALF_LIFE: i64 = 30 * DAY_MS;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn a_weight_halves_every_half_life() {
        // (elapsed, expected factor)
        let table = [
            (0, 1.0),
            (-DAY_MS, 1.0),
            (HALF_LIFE, 0.5),
            (2 * HALF_LIFE, 0.25),
            (HALF_LIFE / 2, std::f64::consts::FRAC_1_SQRT_2),
            (10 * HALF_LIFE, 1.0 / 1024.0),
        ];
        for (elapsed, expected) in table {
            let got = factor(elapsed, HALF_LIFE);
            assert!(close(got, expected), "{elapsed} ms: {got} vs {expected}");
        }
    }

    #[test]
    fn adding_decays_the_old_weight_first_whatever_the_arrival_order() {
        let mut in_order = Decayed::default();
        in_order.add(4.0, 0, HALF_LIFE);
        in_order.add(1.0, HALF_LIFE, HALF_LIFE);
        assert!(close(in_order.value, 3.0) && in_order.at_ms == HALF_LIFE);

        let mut reversed = Decayed::default();
        reversed.add(1.0, HALF_LIFE, HALF_LIFE);
        reversed.add(4.0, 0, HALF_LIFE);
        assert!(close(reversed.value, in_order.value));
        assert_eq!(reversed.at_ms, in_order.at_ms);

        assert!(close(in_order.value_at(2 * HALF_LIFE, HALF_LIFE), 1.5));
        assert!(
            close(in_order.value_at(0, HALF_LIFE), 3.0),
            "no growth backwards"
        );
    }

    #[test]
    fn rank_keys_order_weights_as_they_compare_at_any_time() {
        let old_heavy = Decayed {
            value: 8.0,
            at_ms: 0,
        };
        let new_light = Decayed {
            value: 3.0,
            at_ms: 2 * HALF_LIFE,
        };
        // 8 two half-lives ago is worth 2 now: less than 3.
        assert!(new_light.rank_key(HALF_LIFE) > old_heavy.rank_key(HALF_LIFE));
        for now in [2 * HALF_LIFE, 3 * HALF_LIFE, 50 * HALF_LIFE] {
            assert!(new_light.value_at(now, HALF_LIFE) > old_heavy.value_at(now, HALF_LIFE));
        }
        assert_eq!(Decayed::default().rank_key(HALF_LIFE), f64::NEG_INFINITY);

        let mut growing = old_heavy;
        let before = growing.rank_key(HALF_LIFE);
        growing.add(0.001, HALF_LIFE, HALF_LIFE);
        assert!(
            growing.rank_key(HALF_LIFE) > before,
            "adding only raises the key"
        );
    }
}
