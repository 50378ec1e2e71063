//! The synthetic product catalogue the e-commerce customers shop from.
//!
//! A fixed catalogue (the same for every seed, so runs with different seeds still sell the
//! same products) of [`PRODUCTS_PER_CATEGORY`] × 10 categories of products. It has enough
//! structure for recommendations to find something: products come in small *collections*
//! (a camera body, its lens, its bag) that are bought together, and every category has a
//! complement category (cameras → accessories) whose same-slot products ride along in
//! baskets.

use rand::Rng;
use rand::rngs::StdRng;

/// The product categories, with the nouns their product names are made from and a
/// typical price in cents.
const CATEGORIES: &[(&str, &[&str], u32)] = &[
    (
        "Cameras",
        &["Camera", "Lens", "Tripod", "Flash", "Camera Bag"],
        34_900,
    ),
    (
        "Accessories",
        &["Strap", "Memory Card", "Battery", "Charger", "Case"],
        2_900,
    ),
    (
        "Audio",
        &["Headphones", "Earbuds", "Speaker", "Soundbar", "Turntable"],
        12_900,
    ),
    (
        "Computers",
        &["Laptop", "Monitor", "Keyboard", "Mouse", "Dock"],
        59_900,
    ),
    ("Home", &["Lamp", "Throw", "Vase", "Cushion", "Rug"], 4_900),
    (
        "Kitchen",
        &["Kettle", "Blender", "Pan", "Knife Set", "Coffee Grinder"],
        6_900,
    ),
    (
        "Outdoor",
        &["Tent", "Backpack", "Sleeping Bag", "Headlamp", "Stove"],
        9_900,
    ),
    (
        "Fitness",
        &[
            "Yoga Mat",
            "Dumbbells",
            "Jump Rope",
            "Foam Roller",
            "Bottle",
        ],
        3_900,
    ),
    (
        "Books",
        &["Novel", "Cookbook", "Field Guide", "Atlas", "Journal"],
        1_900,
    ),
    (
        "Toys",
        &["Puzzle", "Building Set", "Board Game", "Plush", "Kite"],
        2_400,
    ),
];

/// Products in each category.
pub const PRODUCTS_PER_CATEGORY: usize = 30;
/// Products per collection (the unit of co-purchase).
const COLLECTION_SIZE: usize = 5;
/// Most distinct products in one basket.
pub const BASKET_PRODUCTS_MAX: usize = 5;

const ADJECTIVES: &[&str] = &[
    "Classic", "Compact", "Pro", "Everyday", "Travel", "Studio", "Nordic", "Urban",
];

/// One product.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    /// Stable id, e.g. `P0042`.
    pub product_id: String,
    /// Stock-keeping unit, e.g. `CAM-0042`.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Category name.
    pub category: &'static str,
    /// Unit price in cents.
    pub price_cents: u32,
}

/// The whole catalogue.
#[derive(Debug, Clone)]
pub struct Catalogue {
    /// All products; product `i` is in category `i / PRODUCTS_PER_CATEGORY`.
    pub products: Vec<Product>,
}

impl Catalogue {
    /// Builds the fixed catalogue.
    pub fn new() -> Catalogue {
        let mut products = Vec::with_capacity(CATEGORIES.len() * PRODUCTS_PER_CATEGORY);
        for (category_index, (category, nouns, price_cents)) in CATEGORIES.iter().enumerate() {
            for slot in 0..PRODUCTS_PER_CATEGORY {
                let index = category_index * PRODUCTS_PER_CATEGORY + slot;
                let noun = nouns[slot % nouns.len()];
                let adjective = ADJECTIVES[(slot / nouns.len()) % ADJECTIVES.len()];
                // Prices spread from 50% to 200% of the category's typical price.
                let spread = 50 + (mix(index as u64) % 151) as u32;
                products.push(Product {
                    product_id: format!("P{index:04}"),
                    sku: format!("{}-{index:04}", sku_prefix(category)),
                    name: format!("{adjective} {noun}"),
                    category,
                    price_cents: (price_cents * spread / 100 / 100) * 100 + 99,
                });
            }
        }
        Catalogue { products }
    }

    /// Number of products.
    pub fn len(&self) -> usize {
        self.products.len()
    }

    /// Whether the catalogue is empty (never, but clippy asks).
    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    /// A product to look at: popular products (low slots) are viewed more often.
    pub fn pick(&self, rng: &mut StdRng) -> usize {
        let category = rng.random_range(0..CATEGORIES.len());
        // Squaring a uniform number skews towards the first slots of each category.
        let skewed: f64 = rng.random::<f64>().powi(2);
        let slot =
            ((skewed * PRODUCTS_PER_CATEGORY as f64) as usize).min(PRODUCTS_PER_CATEGORY - 1);
        category * PRODUCTS_PER_CATEGORY + slot
    }

    /// A basket built around `anchor`: the anchor, often another product of its
    /// collection, sometimes the same-slot product of the complement category.
    /// Returns `(product index, quantity)` pairs, at most [`BASKET_PRODUCTS_MAX`].
    pub fn basket(&self, anchor: usize, rng: &mut StdRng) -> Vec<(usize, u32)> {
        let anchor = anchor % self.len();
        let mut items = vec![(anchor, rng.random_range(1..=2))];
        let collection_start = anchor - anchor % COLLECTION_SIZE;
        while items.len() < BASKET_PRODUCTS_MAX && rng.random_bool(0.45) {
            let mate = collection_start + rng.random_range(0..COLLECTION_SIZE);
            if !items.iter().any(|(p, _)| *p == mate) {
                items.push((mate, 1));
            }
        }
        if items.len() < BASKET_PRODUCTS_MAX && rng.random_bool(0.3) {
            let complement = self.complement(anchor);
            if !items.iter().any(|(p, _)| *p == complement) {
                items.push((complement, rng.random_range(1..=3)));
            }
        }
        items
    }

    /// The same-slot product in the complement category (the next category round-robin,
    /// so Cameras → Accessories, Accessories → Audio, …).
    fn complement(&self, product: usize) -> usize {
        let category = product / PRODUCTS_PER_CATEGORY;
        let slot = product % PRODUCTS_PER_CATEGORY;
        ((category + 1) % CATEGORIES.len()) * PRODUCTS_PER_CATEGORY + slot
    }
}

impl Default for Catalogue {
    fn default() -> Self {
        Catalogue::new()
    }
}

/// The names of all categories.
pub fn category_names() -> impl Iterator<Item = &'static str> {
    CATEGORIES.iter().map(|(name, _, _)| *name)
}

fn sku_prefix(category: &str) -> String {
    category.chars().take(3).collect::<String>().to_uppercase()
}

/// SplitMix64: a cheap, well-mixed hash of one integer. Used wherever a value must be a
/// pure function of an index (product prices, customer identifiers) rather than drawn
/// from the run's random stream.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::SeedableRng;

    use super::*;

    #[test]
    fn catalogue_has_a_few_hundred_products_in_ten_categories() {
        let catalogue = Catalogue::new();
        assert_eq!(catalogue.len(), 300);
        assert_eq!(category_names().count(), 10);
        let ids: HashSet<_> = catalogue.products.iter().map(|p| &p.product_id).collect();
        assert_eq!(ids.len(), catalogue.len(), "product ids are unique");
        assert!(catalogue.products.iter().all(|p| p.price_cents > 0));
    }

    #[test]
    fn baskets_follow_collections_and_complements() {
        let catalogue = Catalogue::new();
        let mut rng = StdRng::seed_from_u64(7);
        let mut multi = 0;
        for _ in 0..1_000 {
            let anchor = catalogue.pick(&mut rng);
            let basket = catalogue.basket(anchor, &mut rng);
            assert_eq!(basket[0].0, anchor);
            assert!(basket.len() <= BASKET_PRODUCTS_MAX);
            for (product, quantity) in &basket[1..] {
                let same_collection = product / COLLECTION_SIZE == anchor / COLLECTION_SIZE;
                let complement = *product == catalogue.complement(anchor);
                assert!(same_collection || complement, "{anchor} with {product}");
                assert!(*quantity >= 1);
            }
            multi += usize::from(basket.len() > 1);
        }
        assert!(multi > 300, "co-purchase is common: {multi}/1000");
    }
}
