//! [`Recommender`]: the item-to-item model — what it learns from each event, how it stays
//! within its limits, and how it is persisted.
//!
//! Per product it keeps a display name and category (the latest an event gave), a decayed
//! popularity (1 per purchase, [`ModelConfig::view_weight`] per view) and a
//! [`NeighbourList`]. Per category, a decayed popularity and a [`TopList`] of its most
//! popular products; globally, a [`TopList`] too. Learning:
//! - an order links every pair of its products (weight 1 each way);
//! - a view links the product with each product the profile viewed or bought within
//!   [`ModelConfig::view_window_ms`] of it (weight `view_weight` each way) — which is why
//!   [`Recommender::observe`] takes the profile's [`ProfileHistory`].
//!
//! Eviction: when more than [`ModelConfig::items_max`] products are tracked, the least
//! popular (ties: greatest id) are dropped down to [`EVICT_TO_PERCENT`]% of the limit in
//! one pass that also drops every edge to them and compacts the slots, so the cost is
//! amortised over a tenth of the limit's new products. Categories beyond
//! [`ModelConfig::categories_max`] are dropped one at a time, least popular first.
//!
//! Persistence: the serialized form is the configuration, the products (with their
//! neighbour lists) and the categories' popularity, in slot order — deterministic bytes
//! for a deterministic model. The id index and top lists are derived and rebuilt when
//! loading, which also checks every invariant ([`RecommendError::CorruptState`]).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::decay::Decayed;
use super::history::ProfileHistory;
use super::neighbours::NeighbourList;
use super::signal::{self, ProductRef, Signal};
use super::toplist::TopList;
use super::{LIMIT_MAX, ModelConfig, PRODUCT_ID_BYTES_MAX, RecommendError};
use crate::services::event::ServiceEvent;

/// Products kept in the global popularity list (enough to fill a full `limit` for a
/// customer who bought many of the most popular products).
const POPULAR_MAX: usize = 2 * LIMIT_MAX;
/// Products kept in each category's popularity list.
const CATEGORY_POPULAR_MAX: usize = LIMIT_MAX;
/// Eviction shrinks the model to this share of `items_max`, in percent.
pub const EVICT_TO_PERCENT: usize = 90;

/// One tracked product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Item {
    /// The product id (unique in the model).
    pub product_id: String,
    /// The latest display name an event gave.
    pub name: Option<String>,
    /// The latest category an event gave.
    pub category: Option<String>,
    /// 1 per purchase, `view_weight` per view, decayed.
    pub popularity: Decayed,
}

/// One tracked category.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct Category {
    /// Weight of its products' purchases and views, decayed.
    popularity: Decayed,
    /// Its most popular products (derived; rebuilt on load).
    #[serde(skip)]
    top: TopList,
}

/// The item-to-item recommendation model; see the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommender {
    /// Validated tunables.
    config: ModelConfig,
    /// Tracked products by slot.
    items: Vec<Item>,
    /// `neighbours[slot]` belongs to `items[slot]`.
    neighbours: Vec<NeighbourList>,
    /// Tracked categories by name.
    categories: BTreeMap<String, Category>,
    /// Product id → slot (derived).
    index: HashMap<String, u32>,
    /// The most popular products (derived).
    popular: TopList,
}

impl Default for Recommender {
    fn default() -> Self {
        Recommender::empty(ModelConfig::default())
    }
}

impl Recommender {
    /// An empty model with `config`, once it is validated.
    pub fn new(config: ModelConfig) -> Result<Recommender, RecommendError> {
        config.validate()?;
        Ok(Recommender::empty(config))
    }

    fn empty(config: ModelConfig) -> Recommender {
        Recommender {
            config,
            items: Vec::new(),
            neighbours: Vec::new(),
            categories: BTreeMap::new(),
            index: HashMap::new(),
            popular: TopList::default(),
        }
    }

    /// Learns from `event`, given `history`, its profile's history so far, then records
    /// the event in that history. Events should come in feed order; each one's own
    /// timestamp is its time.
    pub fn observe(&mut self, event: &ServiceEvent, history: &mut ProfileHistory) {
        if let Some(signal) = signal::of(event) {
            self.learn(&signal, event.timestamp_ms, history);
            history.apply(&signal, event.timestamp_ms);
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Products tracked.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no product is tracked.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Categories tracked.
    pub fn category_count(&self) -> usize {
        self.categories.len()
    }

    /// Neighbour edges over all products.
    pub fn edge_count(&self) -> usize {
        self.neighbours.iter().map(|n| n.edges().len()).sum()
    }

    /// Neighbours of `product_id` (at most `neighbours_max`), or 0 if untracked.
    pub fn neighbour_count(&self, product_id: &str) -> usize {
        self.slot(product_id)
            .map_or(0, |slot| self.neighbours[slot as usize].edges().len())
    }

    /// The latest display name an event gave `product_id`, if it is tracked and has one.
    pub fn product_name(&self, product_id: &str) -> Option<&str> {
        self.slot(product_id)
            .and_then(|slot| self.item(slot).name.as_deref())
    }

    /// The latest category an event gave `product_id`, if it is tracked and has one.
    pub fn product_category(&self, product_id: &str) -> Option<&str> {
        self.slot(product_id)
            .and_then(|slot| self.item(slot).category.as_deref())
    }

    /// An estimate of the heap memory the model uses, in bytes.
    pub fn approx_bytes(&self) -> usize {
        let strings: usize = self
            .items
            .iter()
            .map(|item| {
                2 * item.product_id.len()
                    + item.name.as_ref().map_or(0, String::len)
                    + item.category.as_ref().map_or(0, String::len)
            })
            .sum();
        let per_item =
            size_of::<Item>() + size_of::<NeighbourList>() + size_of::<(String, u32)>() + 16;
        let edges: usize = self.neighbours.iter().map(|n| n.edges().len()).sum();
        let lists = self.popular.slots().len()
            + self
                .categories
                .values()
                .map(|c| c.top.slots().len())
                .sum::<usize>();
        strings
            + self.items.len() * per_item
            + edges * size_of::<super::neighbours::Edge>()
            + lists * size_of::<u32>()
            + self
                .categories
                .keys()
                .map(|name| name.len() + size_of::<(String, Category)>())
                .sum::<usize>()
    }

    fn learn(&mut self, signal: &Signal, at_ms: i64, history: &ProfileHistory) {
        let view_weight = self.config.view_weight;
        match signal {
            Signal::Viewed(product) => {
                let slot = self.touch(product, view_weight, at_ms);
                let window = self.config.view_window_ms;
                for seed in history.seeds() {
                    let near = seed.at_ms.abs_diff(at_ms) <= window.unsigned_abs();
                    if near && let Some(other) = self.slot(&seed.product_id) {
                        self.link(slot, other, (0.0, view_weight), at_ms);
                    }
                }
            }
            Signal::Purchased(products) => {
                let slots: Vec<u32> = products.iter().map(|p| self.touch(p, 1.0, at_ms)).collect();
                for (i, &a) in slots.iter().enumerate() {
                    for &b in &slots[i + 1..] {
                        self.link(a, b, (1.0, 0.0), at_ms);
                    }
                }
            }
            Signal::Browsed(category) => self.touch_category(category, view_weight, at_ms),
        }
        if self.items.len() > self.config.items_max {
            self.evict();
        }
    }

    /// Finds or creates the product's slot, refreshes its labels, adds popularity.
    fn touch(&mut self, product: &ProductRef, weight: f64, at_ms: i64) -> u32 {
        let slot = self.intern(&product.id);
        let index = slot as usize;
        if let Some(name) = &product.name {
            self.items[index].name = Some(name.clone());
        }
        if product.category.is_some() && product.category != self.items[index].category {
            if let Some(old) = &self.items[index].category
                && let Some(category) = self.categories.get_mut(old)
            {
                category.top.remove(slot);
            }
            self.items[index].category = product.category.clone();
        }
        let half_life_ms = self.config.half_life_ms;
        self.items[index]
            .popularity
            .add(weight, at_ms, half_life_ms);
        let items = &self.items;
        self.popular
            .promote(slot, POPULAR_MAX, |a, b| rank(items, half_life_ms, a, b));
        if let Some(name) = self.items[index].category.clone() {
            self.touch_category(&name, weight, at_ms);
            if let Some(category) = self.categories.get_mut(&name) {
                let items = &self.items;
                category.top.promote(slot, CATEGORY_POPULAR_MAX, |a, b| {
                    rank(items, half_life_ms, a, b)
                });
            }
        }
        slot
    }

    fn intern(&mut self, product_id: &str) -> u32 {
        if let Some(slot) = self.slot(product_id) {
            return slot;
        }
        // Fits: items_max ≤ ITEMS_CEILING < u32::MAX, and eviction runs after each event.
        let slot = u32::try_from(self.items.len()).unwrap_or(u32::MAX);
        self.items.push(Item {
            product_id: product_id.to_owned(),
            name: None,
            category: None,
            popularity: Decayed::default(),
        });
        self.neighbours.push(NeighbourList::default());
        self.index.insert(product_id.to_owned(), slot);
        slot
    }

    fn touch_category(&mut self, name: &str, weight: f64, at_ms: i64) {
        let half_life_ms = self.config.half_life_ms;
        if let Some(category) = self.categories.get_mut(name) {
            category.popularity.add(weight, at_ms, half_life_ms);
            return;
        }
        let mut category = Category::default();
        category.popularity.add(weight, at_ms, half_life_ms);
        self.categories.insert(name.to_owned(), category);
        if self.categories.len() > self.config.categories_max {
            self.evict_category(name);
        }
    }

    /// Drops the least popular category (ties: the greatest name), sparing `keep`.
    fn evict_category(&mut self, keep: &str) {
        let half_life_ms = self.config.half_life_ms;
        let weakest = self
            .categories
            .iter()
            .filter(|(name, _)| name.as_str() != keep)
            .min_by(|a, b| {
                let (ka, kb) = (
                    a.1.popularity.rank_key(half_life_ms),
                    b.1.popularity.rank_key(half_life_ms),
                );
                ka.total_cmp(&kb).then_with(|| b.0.cmp(a.0))
            })
            .map(|(name, _)| name.clone());
        if let Some(weakest) = weakest {
            self.categories.remove(&weakest);
        }
    }

    fn link(&mut self, a: u32, b: u32, weights: (f64, f64), at_ms: i64) {
        if a == b {
            return;
        }
        let (half_life_ms, capacity) = (self.config.half_life_ms, self.config.neighbours_max);
        let items = &self.items;
        let id_of = |slot: u32| items[slot as usize].product_id.as_str();
        self.neighbours[a as usize].add(b, weights, at_ms, half_life_ms, capacity, id_of);
        self.neighbours[b as usize].add(a, weights, at_ms, half_life_ms, capacity, id_of);
    }

    /// Keeps the most popular [`EVICT_TO_PERCENT`]% of `items_max` products.
    fn evict(&mut self) {
        let keep_count = (self.config.items_max * EVICT_TO_PERCENT / 100).max(1);
        let keys = self.rank_keys();
        let items = &self.items;
        let rank = |a: &u32, b: &u32| rank_by(items, &keys, *a, *b);
        let mut ranked: Vec<u32> = (0..self.slot_count()).collect();
        if ranked.len() > keep_count {
            ranked.select_nth_unstable_by(keep_count - 1, rank);
            ranked.truncate(keep_count);
        }
        ranked.sort_unstable();
        let mut new_slot: Vec<Option<u32>> = vec![None; self.items.len()];
        for (new, &old) in ranked.iter().enumerate() {
            new_slot[old as usize] = u32::try_from(new).ok();
        }
        let mut slot = 0;
        self.items.retain(|_| {
            slot += 1;
            new_slot[slot - 1].is_some()
        });
        let mut slot = 0;
        self.neighbours.retain(|_| {
            slot += 1;
            new_slot[slot - 1].is_some()
        });
        for list in &mut self.neighbours {
            list.remap(&new_slot);
        }
        self.rebuild_derived();
    }

    /// Every product's popularity rank key, by slot.
    fn rank_keys(&self) -> Vec<f64> {
        let half_life_ms = self.config.half_life_ms;
        self.items
            .iter()
            .map(|item| item.popularity.rank_key(half_life_ms))
            .collect()
    }

    /// Rebuilds the id index and every top list from the products.
    fn rebuild_derived(&mut self) {
        let keys = self.rank_keys();
        let items = &self.items;
        let rank = |a: u32, b: u32| rank_by(items, &keys, a, b);
        self.index = items
            .iter()
            .enumerate()
            .map(|(slot, item)| (item.product_id.clone(), slot as u32))
            .collect();
        self.popular = TopList::rebuild(0..items.len() as u32, POPULAR_MAX, rank);
        let mut members: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for (slot, item) in items.iter().enumerate() {
            if let Some(category) = &item.category {
                members.entry(category).or_default().push(slot as u32);
            }
        }
        for (name, category) in &mut self.categories {
            let slots = members.remove(name.as_str()).unwrap_or_default();
            category.top = TopList::rebuild(slots.into_iter(), CATEGORY_POPULAR_MAX, rank);
        }
    }

    fn slot_count(&self) -> u32 {
        u32::try_from(self.items.len()).unwrap_or(u32::MAX)
    }

    // Read access for the query module.

    pub(super) fn slot(&self, product_id: &str) -> Option<u32> {
        self.index.get(product_id).copied()
    }

    pub(super) fn item(&self, slot: u32) -> &Item {
        &self.items[slot as usize]
    }

    pub(super) fn neighbours_of(&self, slot: u32) -> &NeighbourList {
        &self.neighbours[slot as usize]
    }

    pub(super) fn popular_slots(&self) -> &[u32] {
        self.popular.slots()
    }

    pub(super) fn category_slots(&self, category: &str) -> &[u32] {
        self.categories
            .get(category)
            .map_or(&[], |category| category.top.slots())
    }
}

/// The popularity ranking: `Less` when `a` is more popular (ties: the smaller id).
fn rank(items: &[Item], half_life_ms: i64, a: u32, b: u32) -> Ordering {
    let (ia, ib) = (&items[a as usize], &items[b as usize]);
    let (ka, kb) = (
        ia.popularity.rank_key(half_life_ms),
        ib.popularity.rank_key(half_life_ms),
    );
    kb.total_cmp(&ka)
        .then_with(|| ia.product_id.cmp(&ib.product_id))
}

/// [`rank`] with the keys computed beforehand.
fn rank_by(items: &[Item], keys: &[f64], a: u32, b: u32) -> Ordering {
    let (a, b) = (a as usize, b as usize);
    keys[b]
        .total_cmp(&keys[a])
        .then_with(|| items[a].product_id.cmp(&items[b].product_id))
}

/// The persisted form, borrowed for writing.
#[derive(Serialize)]
struct StateRef<'a> {
    config: &'a ModelConfig,
    items: &'a [Item],
    neighbours: &'a [NeighbourList],
    categories: &'a BTreeMap<String, Category>,
}

/// The persisted form, owned for reading.
#[derive(Deserialize)]
struct State {
    config: ModelConfig,
    items: Vec<Item>,
    neighbours: Vec<NeighbourList>,
    categories: BTreeMap<String, Category>,
}

impl Serialize for Recommender {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StateRef {
            config: &self.config,
            items: &self.items,
            neighbours: &self.neighbours,
            categories: &self.categories,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Recommender {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let state = State::deserialize(deserializer)?;
        Recommender::from_state(state).map_err(serde::de::Error::custom)
    }
}

impl Recommender {
    /// Checks a loaded state's invariants and rebuilds what is derived from it.
    fn from_state(state: State) -> Result<Recommender, RecommendError> {
        let State {
            config,
            items,
            neighbours,
            categories,
        } = state;
        config.validate()?;
        let corrupt = |what: String| Err(RecommendError::CorruptState(what));
        if items.len() != neighbours.len() {
            return corrupt(format!(
                "{} products but {} neighbour lists",
                items.len(),
                neighbours.len()
            ));
        }
        if items.len() > config.items_max || categories.len() > config.categories_max {
            return corrupt("more products or categories than the limits allow".into());
        }
        for (slot, (item, list)) in items.iter().zip(&neighbours).enumerate() {
            let id_ok =
                !item.product_id.is_empty() && item.product_id.len() <= PRODUCT_ID_BYTES_MAX;
            let popularity_ok = item.popularity.value.is_finite() && item.popularity.value >= 0.0;
            if !id_ok
                || !popularity_ok
                || !list.is_valid(slot as u32, items.len(), config.neighbours_max)
            {
                return corrupt(format!("product {:?} is malformed", item.product_id));
            }
        }
        let mut model = Recommender {
            config,
            items,
            neighbours,
            categories,
            index: HashMap::new(),
            popular: TopList::default(),
        };
        model.rebuild_derived();
        if model.index.len() != model.items.len() {
            return corrupt("duplicate product ids".into());
        }
        Ok(model)
    }
}
#[cfg(test)]
impl Recommender {
    pub(super) fn debug_diff(&self, other: &Recommender) {
        assert_eq!(self.items, other.items, "items");
        assert_eq!(self.neighbours, other.neighbours, "neigh");
        assert_eq!(self.index, other.index, "index");
        for (name, c) in &self.categories {
            let o = &other.categories[name];
            assert_eq!(c.popularity, o.popularity, "{name} pop");
            let ids = |m: &Recommender, s: &[u32]| {
                s.iter()
                    .map(|&x| {
                        (
                            m.items[x as usize].product_id.clone(),
                            m.items[x as usize]
                                .popularity
                                .rank_key(m.config.half_life_ms),
                        )
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                ids(self, c.top.slots()),
                ids(other, o.top.slots()),
                "{name} top"
            );
        }
        assert_eq!(self.popular, other.popular, "popular");
    }
}
