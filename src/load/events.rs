//! The JSON of each synthetic event: who sent it ([`Who`]) and what it says.
//!
//! Builders here only shape JSON; which event a customer sends next is decided in
//! [`super::journey`]. Property names follow the Segment specs: the e-commerce v2 spec for
//! shopping events, and the same conventions (snake_case ids, Title Case event names) for
//! the customer-service and social families, which Segment does not specify.

use serde_json::{Map, Value, json};

use super::catalogue::{Catalogue, Product};

/// The identifiers an event carries, by what is known about the customer at the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Only a device cookie: a browsing visitor or a social account seen from outside.
    Anonymous { anonymous_id: String },
    /// A support contact known by email: the email rides in `context.traits` (or in
    /// `traits` on identify), next to the support widget's anonymous id.
    EmailOnly { email: String, anonymous_id: String },
    /// A customer with a user id; server-side sources send no anonymous id.
    Known {
        user_id: String,
        anonymous_id: Option<String>,
    },
}

impl Who {
    /// Writes the identifiers into `item`: `userId` / `anonymousId`, and for email-only
    /// contacts the email in `traits` (identify) or `context.traits` (other calls).
    pub fn apply(&self, item: &mut Map<String, Value>) {
        match self {
            Who::Anonymous { anonymous_id } => {
                item.insert("anonymousId".into(), json!(anonymous_id));
            }
            Who::EmailOnly {
                email,
                anonymous_id,
            } => {
                item.insert("anonymousId".into(), json!(anonymous_id));
                let holder = if item.get("type") == Some(&json!("identify")) {
                    item.entry("traits")
                } else {
                    let context = item
                        .entry("context")
                        .or_insert_with(|| Value::Object(Map::new()));
                    match context {
                        Value::Object(context) => context.entry("traits"),
                        _ => return,
                    }
                };
                let traits = holder.or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(traits) = traits {
                    traits.insert("email".into(), json!(email));
                }
            }
            Who::Known {
                user_id,
                anonymous_id,
            } => {
                item.insert("userId".into(), json!(user_id));
                if let Some(anonymous_id) = anonymous_id {
                    item.insert("anonymousId".into(), json!(anonymous_id));
                }
            }
        }
    }

    /// The profile key of the event's highest-priority identity, as the profile API
    /// spells it: `user_id:…`, else `email:…` (lower-cased), else `anonymous_id:…`.
    pub fn profile_key(&self) -> String {
        match self {
            Who::Anonymous { anonymous_id } => format!("anonymous_id:{anonymous_id}"),
            Who::EmailOnly { email, .. } => format!("email:{}", email.trim().to_lowercase()),
            Who::Known { user_id, .. } => format!("user_id:{user_id}"),
        }
    }
}

/// A track call.
pub fn track(event: &str, properties: Value) -> Map<String, Value> {
    object(json!({"type": "track", "event": event, "properties": properties}))
}

/// A page call for a path of the shop.
pub fn page(name: &str, path: &str, title: &str) -> Map<String, Value> {
    object(json!({
        "type": "page",
        "name": name,
        "properties": {"path": path, "url": format!("https://shop.example.com{path}"), "title": title},
    }))
}

/// An identify call with the given traits.
pub fn identify(traits: Value) -> Map<String, Value> {
    object(json!({"type": "identify", "traits": traits}))
}

/// An alias call linking `previous_id` to the event's `userId`.
pub fn alias(previous_id: &str) -> Map<String, Value> {
    object(json!({"type": "alias", "previousId": previous_id}))
}

/// The e-commerce spec's product object, with `quantity` when in a cart.
pub fn product(product: &Product, quantity: Option<u32>) -> Value {
    let mut value = json!({
        "product_id": product.product_id,
        "sku": product.sku,
        "name": product.name,
        "category": product.category,
        "price": dollars(product.price_cents),
    });
    if let (Some(quantity), Value::Object(map)) = (quantity, &mut value) {
        map.insert("quantity".into(), json!(quantity));
    }
    value
}

/// `products[]` and the basket's total in cents.
pub fn basket_products(catalogue: &Catalogue, basket: &[(usize, u32)]) -> (Vec<Value>, u64) {
    let mut total_cents = 0u64;
    let products = basket
        .iter()
        .filter_map(|(index, quantity)| {
            let item = catalogue.products.get(*index)?;
            total_cents += u64::from(item.price_cents) * u64::from(*quantity);
            Some(product(item, Some(*quantity)))
        })
        .collect();
    (products, total_cents)
}

/// Cents as a JSON number of dollars with two decimals.
pub fn dollars(cents: impl Into<u64>) -> Value {
    let cents = cents.into();
    json!(cents as f64 / 100.0)
}

/// The `context` object: the sending library, and the customer's device when the call
/// comes from it.
pub fn context(library: (&str, &str), device: Option<&Device>) -> Value {
    let library = json!({"name": library.0, "version": library.1});
    match device {
        Some(device) => json!({
            "library": library,
            "ip": device.ip,
            "locale": device.locale,
            "userAgent": device.user_agent,
        }),
        None => json!({"library": library}),
    }
}

/// A customer's device: stable per customer so their events look like one person's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// A documentation-range IPv4 address.
    pub ip: String,
    /// e.g. `en-GB`.
    pub locale: &'static str,
    /// A browser user agent.
    pub user_agent: &'static str,
}

const LOCALES: &[&str] = &[
    "en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "nl-NL", "sv-SE",
];
const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) Chrome/126.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
];

impl Device {
    /// The device of the customer whose identifier hash is `hash`.
    pub fn from_hash(hash: u64) -> Device {
        let pick = |shift: u32, len: usize| ((hash >> shift) % len as u64) as usize;
        Device {
            ip: format!("203.0.113.{}", 1 + (hash % 254)),
            locale: LOCALES[pick(8, LOCALES.len())],
            user_agent: USER_AGENTS[pick(16, USER_AGENTS.len())],
        }
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_writes_identifiers_where_segment_expects_them() {
        let email_only = Who::EmailOnly {
            email: "Ada@Example.com".into(),
            anonymous_id: "a1".into(),
        };
        let mut ticket = track("Ticket Opened", json!({}));
        email_only.apply(&mut ticket);
        assert_eq!(ticket["context"]["traits"]["email"], "Ada@Example.com");
        assert_eq!(ticket["anonymousId"], "a1");

        let mut hello = identify(json!({}));
        email_only.apply(&mut hello);
        assert_eq!(hello["traits"]["email"], "Ada@Example.com");
        assert_eq!(email_only.profile_key(), "email:ada@example.com");

        let known = Who::Known {
            user_id: "u1".into(),
            anonymous_id: None,
        };
        let mut order = track("Order Completed", json!({}));
        known.apply(&mut order);
        assert_eq!(order["userId"], "u1");
        assert!(order.get("anonymousId").is_none());
        assert_eq!(known.profile_key(), "user_id:u1");
    }

    #[test]
    fn products_carry_the_ecommerce_spec_fields() {
        let catalogue = Catalogue::new();
        let (products, total_cents) = basket_products(&catalogue, &[(0, 2), (7, 1)]);
        for product in &products {
            for field in ["product_id", "sku", "name", "category", "price", "quantity"] {
                assert!(product.get(field).is_some(), "{field} in {product}");
            }
        }
        let expected = 2 * u64::from(catalogue.products[0].price_cents)
            + u64::from(catalogue.products[7].price_cents);
        assert_eq!(total_cents, expected);
    }
}
