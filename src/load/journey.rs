//! Customer journeys: what one synthetic customer sends next, given what they sent before.
//!
//! Each customer belongs to one family and walks that family's journey:
//! - **shoppers** browse anonymously (pages, searches, product views with only an
//!   `anonymousId`), then identify (`userId` + the same `anonymousId` + email, name, plan)
//!   or are linked by an `alias` call, then shop as known customers through the
//!   e-commerce funnel (view → add → cart → checkout → order, with drop-off at each step);
//! - **support contacts** are first known only by email (tickets carrying
//!   `context.traits.email` and a support-widget `anonymousId`, or an email-only identify),
//!   then identify with a `userId` and that email;
//! - **social** accounts like, share and mention anonymously; some later identify.
//!
//! Some customers never identify. Known customers occasionally cross into another family
//! (a shopper opens a ticket). Per-customer state is a few bytes ([`Customer`]); all
//! identifiers are derived from the customer's index ([`CustomerIds`]), so a population of
//! millions stays small in memory.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use super::catalogue::{Catalogue, mix};
use super::events::{self, Who};

/// `identify_after` value of a customer who never identifies.
const NEVER: u8 = u8::MAX;

/// Web events: the browser library.
const WEB: (&str, &str) = ("analytics.js", "4.1.0");
/// Known customers' events sent server-side, without an anonymous id.
const SERVER: (&str, &str) = ("analytics-node", "2.1.0");
/// Customer-service events, synced from the help desk.
const HELPDESK: (&str, &str) = ("helpdesk-sync", "1.4.0");
/// Social events, from the social-listening integration.
const SOCIAL: (&str, &str) = ("social-listener", "0.9.2");

/// Which journey a customer walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Shopper,
    Support,
    Social,
}

/// The mutable state of one customer's journey.
#[derive(Debug, Clone)]
pub struct Customer {
    /// The customer's journey.
    pub family: Family,
    /// Events sent before identifying; [`NEVER`] for customers who stay unidentified.
    identify_after: u8,
    /// Whether the identification is an `alias` call rather than an `identify`.
    identifies_by_alias: bool,
    /// Events sent so far (saturating).
    seen: u16,
    /// Position in the shopping funnel (0 = browsing … 4 = ordering).
    funnel_step: u8,
    /// Position in the current ticket's lifecycle (0 = not yet opened … 3 = rating).
    ticket_step: u8,
    /// The product the current shopping session is about.
    anchor: u16,
    /// Orders started so far (names carts and orders).
    order: u16,
    /// Tickets opened so far (names tickets).
    ticket: u16,
}

/// A customer's identifiers, a pure function of the run's seed and the customer's index.
#[derive(Debug, Clone)]
pub struct CustomerIds {
    /// Hash of seed and index: the source of every per-customer constant.
    pub hash: u64,
    /// `<run tag>-<index>`: the stem of ids that must not collide across runs.
    pub key: String,
    /// `userId` once identified.
    pub user_id: String,
    /// The device cookie.
    pub anonymous_id: String,
    /// The email as the customer types it (sometimes capitalised).
    pub email: String,
    /// Given name.
    pub first_name: &'static str,
    /// Family name.
    pub last_name: &'static str,
}

const FIRST_NAMES: &[&str] = &[
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Margaret",
    "Ken",
    "Frances",
    "Niklaus",
    "Radia",
    "Leslie",
    "Hedy",
    "Tim",
    "Katherine",
    "Dennis",
];
const LAST_NAMES: &[&str] = &[
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson", "Allen",
    "Wirth", "Perlman", "Lamport", "Lamarr", "Berners", "Johnson", "Ritchie",
];
const DOMAINS: &[&str] = &["example.com", "example.org", "example.net", "mail.example"];
const PLANS: &[&str] = &["free", "basic", "pro", "enterprise"];
const CHANNELS: &[&str] = &["email", "chat", "phone", "social"];
const PRIORITIES: &[&str] = &["low", "normal", "high", "urgent"];
const PLATFORMS: &[&str] = &[
    "instagram",
    "x",
    "tiktok",
    "facebook",
    "linkedin",
    "youtube",
];
/// Posts of the brand's own accounts that customers like and share.
const BRAND_POSTS: u64 = 500;

impl CustomerIds {
    /// The identifiers of customer `index` in the run with `seed` and `tag`.
    pub fn derive(seed: u64, tag: &str, index: u64) -> CustomerIds {
        let hash = customer_hash(seed, index);
        let key = format!("{tag}-{index}");
        let pick = |shift: u32, len: usize| ((hash >> shift) % len as u64) as usize;
        let first_name = FIRST_NAMES[pick(0, FIRST_NAMES.len())];
        let last_name = LAST_NAMES[pick(8, LAST_NAMES.len())];
        let domain = DOMAINS[pick(16, DOMAINS.len())];
        let mut email = format!("{first_name}.{last_name}.{key}@{domain}");
        // One customer in eight types their address with capitals; the server lower-cases.
        if pick(24, 8) != 0 {
            email = email.to_lowercase();
        }
        let low = mix(hash);
        let high = mix(low);
        let anonymous_id = uuid::Builder::from_random_bytes(
            ((u128::from(high) << 64) | u128::from(low)).to_le_bytes(),
        )
        .into_uuid()
        .to_string();
        CustomerIds {
            hash,
            user_id: format!("u-{key}"),
            key,
            anonymous_id,
            email,
            first_name,
            last_name,
        }
    }

    fn pick<'a>(&self, shift: u32, from: &[&'a str]) -> &'a str {
        from[((self.hash >> shift) % from.len() as u64) as usize]
    }
}

/// The hash every constant of customer `index` is derived from.
pub fn customer_hash(seed: u64, index: u64) -> u64 {
    mix(seed ^ mix(index))
}

impl Customer {
    /// A fresh customer whose identifiers hash to `hash`.
    pub fn new(hash: u64) -> Customer {
        let roll = (hash >> 32) % 100;
        let (family, never_percent, before) = match roll {
            0..55 => (Family::Shopper, 20, 2..=6),
            55..80 => (Family::Support, 30, 1..=4),
            _ => (Family::Social, 60, 1..=5),
        };
        let never = (hash >> 40) % 100 < never_percent;
        let span = u64::from(before.end() - before.start() + 1);
        Customer {
            family,
            identify_after: if never {
                NEVER
            } else {
                before.start() + ((hash >> 48) % span) as u8
            },
            identifies_by_alias: family == Family::Shopper && (hash >> 56) % 100 < 15,
            seen: 0,
            funnel_step: 0,
            ticket_step: 0,
            anchor: 0,
            order: 0,
            ticket: 0,
        }
    }

    /// Whether the customer has identified (sends a `userId`).
    pub fn is_known(&self) -> bool {
        self.identify_after != NEVER && self.seen > u16::from(self.identify_after)
    }
}

/// One generated event before it gets its `messageId`, `timestamp` and `context`.
pub struct Draft {
    /// Who the event is from.
    pub who: Who,
    /// The call, without identifiers.
    pub item: Map<String, Value>,
    /// The sending library, `(name, version)`.
    pub library: (&'static str, &'static str),
    /// Whether the call comes from the customer's device (web or app, with its IP, locale
    /// and user agent) rather than from an integration such as the help desk.
    pub from_device: bool,
}

/// What the customer sends next; advances their state.
pub fn next(
    customer: &mut Customer,
    ids: &CustomerIds,
    catalogue: &Catalogue,
    rng: &mut StdRng,
) -> Draft {
    let turn = customer.seen;
    customer.seen = customer.seen.saturating_add(1);
    if customer.identify_after != NEVER && turn == u16::from(customer.identify_after) {
        return identification(customer, ids);
    }
    let known = customer.is_known();
    let who = who(customer, ids, known, rng);
    let crossover = known && rng.random_bool(0.1);
    let (item, library) = match (customer.family, crossover) {
        (Family::Shopper, false) | (Family::Support | Family::Social, true) => {
            shop(customer, ids, catalogue, rng, known)
        }
        (Family::Support, false) | (Family::Shopper, true) => support(customer, ids, rng, turn),
        (Family::Social, false) => social(ids, rng),
    };
    let library = match &who {
        Who::Known {
            anonymous_id: None, ..
        } if library == WEB => SERVER,
        _ => library,
    };
    Draft::new(who, item, library)
}

impl Draft {
    fn new(who: Who, item: Map<String, Value>, library: (&'static str, &'static str)) -> Draft {
        Draft {
            who,
            item,
            library,
            from_device: library == WEB || library == SERVER,
        }
    }
}

fn who(customer: &Customer, ids: &CustomerIds, known: bool, rng: &mut StdRng) -> Who {
    let anonymous_id = ids.anonymous_id.clone();
    match (known, customer.family) {
        (true, _) => Who::Known {
            user_id: ids.user_id.clone(),
            anonymous_id: rng.random_bool(0.7).then_some(anonymous_id),
        },
        (false, Family::Support) => Who::EmailOnly {
            email: ids.email.clone(),
            anonymous_id,
        },
        (false, _) => Who::Anonymous { anonymous_id },
    }
}

/// The identify (or alias) that turns an anonymous or email-only customer into a known one.
fn identification(customer: &Customer, ids: &CustomerIds) -> Draft {
    let who = Who::Known {
        user_id: ids.user_id.clone(),
        anonymous_id: Some(ids.anonymous_id.clone()),
    };
    if customer.identifies_by_alias {
        let item = events::alias(&ids.anonymous_id);
        return Draft::new(who, item, WEB);
    }
    let item = events::identify(json!({
        "email": ids.email,
        "name": format!("{} {}", ids.first_name, ids.last_name),
        "first_name": ids.first_name,
        "last_name": ids.last_name,
        "plan": ids.pick(4, PLANS),
    }));
    let library = match customer.family {
        Family::Support => HELPDESK,
        Family::Shopper | Family::Social => WEB,
    };
    Draft::new(who, item, library)
}

/// The shopping funnel: browsing, then (for known customers) add → cart → checkout →
/// order, each step continuing with a fixed probability.
fn shop(
    customer: &mut Customer,
    ids: &CustomerIds,
    catalogue: &Catalogue,
    rng: &mut StdRng,
    known: bool,
) -> (Map<String, Value>, (&'static str, &'static str)) {
    let step = if known { customer.funnel_step } else { 0 };
    let anchor = usize::from(customer.anchor);
    let cart_id = format!("c-{}-{}", ids.key, customer.order);
    // The basket is a pure function of the customer and the order number, so the cart,
    // checkout and order of one purchase list the same products.
    let basket = || {
        let mut basket_rng = StdRng::seed_from_u64(mix(ids.hash ^ u64::from(customer.order)));
        catalogue.basket(anchor, &mut basket_rng)
    };
    let (item, continue_probability) = match step {
        1 => {
            let product = &catalogue.products[anchor % catalogue.len()];
            let mut properties = events::product(product, Some(1));
            if let Value::Object(map) = &mut properties {
                map.insert("cart_id".into(), json!(cart_id));
            }
            (events::track("Product Added", properties), 0.7)
        }
        2 => {
            let (products, _) = events::basket_products(catalogue, &basket());
            let properties = json!({"cart_id": cart_id, "products": products});
            (events::track("Cart Viewed", properties), 0.7)
        }
        3 | 4 => {
            let (products, total_cents) = events::basket_products(catalogue, &basket());
            let order_id = format!("o-{}-{}", ids.key, customer.order);
            let name = if step == 3 {
                "Checkout Started"
            } else {
                "Order Completed"
            };
            let properties = json!({
                "order_id": order_id,
                "revenue": events::dollars(total_cents),
                "currency": "USD",
                "products": products,
            });
            (events::track(name, properties), 0.8)
        }
        _ => browse(customer, catalogue, rng),
    };
    customer.funnel_step = match step {
        4 => {
            customer.order = customer.order.wrapping_add(1);
            0
        }
        _ if known && rng.random_bool(continue_probability) => step + 1,
        _ => 0,
    };
    (item, WEB)
}

/// A page view, a search or a product view; a product view sets the session's anchor.
/// Returns the call and the probability that the session moves on to adding to cart.
fn browse(
    customer: &mut Customer,
    catalogue: &Catalogue,
    rng: &mut StdRng,
) -> (Map<String, Value>, f64) {
    let index = catalogue.pick(rng);
    let product = &catalogue.products[index];
    match rng.random_range(0..10) {
        0..3 => {
            let path = format!("/c/{}", product.category.to_lowercase());
            (events::page("Category", &path, product.category), 0.0)
        }
        3..5 => {
            let query = product.name.to_lowercase();
            (
                events::track("Products Searched", json!({"query": query})),
                0.0,
            )
        }
        _ => {
            customer.anchor = u16::try_from(index).unwrap_or(0);
            let properties = events::product(product, None);
            (events::track("Product Viewed", properties), 0.6)
        }
    }
}

/// The ticket lifecycle: opened → updated (a few times) → resolved → rated.
fn support(
    customer: &mut Customer,
    ids: &CustomerIds,
    rng: &mut StdRng,
    turn: u16,
) -> (Map<String, Value>, (&'static str, &'static str)) {
    // A contact's very first touch is sometimes an identify carrying only their email.
    if turn == 0 && !customer.is_known() && rng.random_bool(0.5) {
        return (events::identify(json!({})), HELPDESK);
    }
    let ticket_hash = mix(ids.hash ^ u64::from(customer.ticket));
    let pick = |shift: u32, from: &[&'static str]| {
        from[((ticket_hash >> shift) % from.len() as u64) as usize]
    };
    let mut properties = json!({
        "ticket_id": format!("t-{}-{}", ids.key, customer.ticket),
        "channel": pick(0, CHANNELS),
        "priority": pick(8, PRIORITIES),
    });
    let (name, next_step) = match customer.ticket_step {
        0 => ("Ticket Opened", 1),
        1 => {
            let next = if rng.random_bool(0.4) { 1 } else { 2 };
            ("Ticket Updated", next)
        }
        2 => ("Ticket Resolved", if rng.random_bool(0.6) { 3 } else { 0 }),
        _ => ("Satisfaction Rated", 0),
    };
    if let Value::Object(map) = &mut properties {
        match name {
            "Ticket Updated" => map.insert("status".into(), json!("pending")),
            "Ticket Resolved" => map.insert(
                "resolution_minutes".into(),
                json!(rng.random_range(5..2_880)),
            ),
            "Satisfaction Rated" => map.insert("rating".into(), json!(rating(rng))),
            _ => map.insert("subject".into(), json!("Question about my order")),
        };
    }
    if next_step == 0 {
        customer.ticket = customer.ticket.wrapping_add(1);
    }
    customer.ticket_step = next_step;
    (events::track(name, properties), HELPDESK)
}

/// A 1–5 satisfaction rating, skewed towards happy customers.
fn rating(rng: &mut StdRng) -> u8 {
    match rng.random_range(0..100) {
        0..5 => 1,
        5..12 => 2,
        12..25 => 3,
        25..55 => 4,
        _ => 5,
    }
}

/// A like, share, mention or follow on the customer's usual platform.
fn social(
    ids: &CustomerIds,
    rng: &mut StdRng,
) -> (Map<String, Value>, (&'static str, &'static str)) {
    let platform = if rng.random_bool(0.8) {
        ids.pick(12, PLATFORMS)
    } else {
        PLATFORMS[rng.random_range(0..PLATFORMS.len())]
    };
    let sentiment = match rng.random_range(0..100) {
        0..55 => "positive",
        55..85 => "neutral",
        _ => "negative",
    };
    let brand_post = format!("post-{:04}", rng.random_range(0..BRAND_POSTS));
    let (name, post_id) = match rng.random_range(0..100) {
        0..40 => ("Post Liked", brand_post),
        40..60 => ("Post Shared", brand_post),
        60..85 => (
            "Brand Mentioned",
            format!("post-{}-{}", ids.key, rng.random_range(0..100)),
        ),
        _ => ("Account Followed", brand_post),
    };
    let properties = json!({"platform": platform, "post_id": post_id, "sentiment": sentiment});
    (events::track(name, properties), SOCIAL)
}
