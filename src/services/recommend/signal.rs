//! What one event says about products, following the Segment e-commerce v2 spec.
//!
//! Only track events count: `Product Viewed` and `Product Added` are interest in one
//! product (`properties.product_id`, with `name` and `category` when present),
//! `Order Completed` is a purchase of `properties.products[].product_id`, and
//! `Product List Viewed` is interest in `properties.category`. Everything else — and any
//! product id that is missing, empty or longer than [`PRODUCT_ID_BYTES_MAX`] — says
//! nothing. `Cart Viewed` and `Checkout Started` are deliberately ignored: they repeat the
//! basket that `Order Completed` confirms (or that was abandoned).
//!
//! Invariants of a [`Signal`]: ids are non-empty and at most [`PRODUCT_ID_BYTES_MAX`]
//! bytes; labels at most [`LABEL_CHARS_MAX`] characters; a purchase lists distinct
//! products, at most [`ORDER_PRODUCTS_MAX`], in the order's order.

use serde_json::Value;

use super::{LABEL_CHARS_MAX, ORDER_PRODUCTS_MAX, PRODUCT_ID_BYTES_MAX};
use crate::model::event::MessageType;
use crate::services::event::ServiceEvent;

/// A product as an event describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductRef {
    /// `product_id`.
    pub id: String,
    /// `name`, if given.
    pub name: Option<String>,
    /// `category`, if given.
    pub category: Option<String>,
}

/// What an event says about products.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// Interest in one product (viewed or added to a cart).
    Viewed(ProductRef),
    /// An order of these products.
    Purchased(Vec<ProductRef>),
    /// Interest in a category (a product list was viewed).
    Browsed(String),
}

/// The signal in `event`, if any.
pub fn of(event: &ServiceEvent) -> Option<Signal> {
    if event.kind != MessageType::Track {
        return None;
    }
    let properties = event.body.properties()?;
    match event.name.as_str() {
        "Product Viewed" | "Product Added" => product(properties).map(Signal::Viewed),
        "Order Completed" => {
            let products = order_products(properties);
            (!products.is_empty()).then_some(Signal::Purchased(products))
        }
        "Product List Viewed" => label(properties.get("category")).map(Signal::Browsed),
        _ => None,
    }
}

/// The distinct products of an order, at most [`ORDER_PRODUCTS_MAX`].
fn order_products(properties: &Value) -> Vec<ProductRef> {
    let mut products: Vec<ProductRef> = Vec::new();
    let listed = properties.get("products").and_then(Value::as_array);
    for item in listed.into_iter().flatten() {
        if products.len() == ORDER_PRODUCTS_MAX {
            break;
        }
        if let Some(product) = product(item)
            && !products.iter().any(|p| p.id == product.id)
        {
            products.push(product);
        }
    }
    products
}

fn product(object: &Value) -> Option<ProductRef> {
    Some(ProductRef {
        id: product_id(object.get("product_id")?)?,
        name: label(object.get("name")),
        category: label(object.get("category")),
    })
}

/// A product id: a non-empty string (trimmed) or an integer, at most
/// [`PRODUCT_ID_BYTES_MAX`] bytes.
fn product_id(value: &Value) -> Option<String> {
    let id = match value {
        Value::String(text) => text.trim().to_owned(),
        Value::Number(number) if number.is_u64() || number.is_i64() => number.to_string(),
        _ => return None,
    };
    (!id.is_empty() && id.len() <= PRODUCT_ID_BYTES_MAX).then_some(id)
}

/// A display label: a non-empty string, cut to [`LABEL_CHARS_MAX`] characters.
fn label(value: Option<&Value>) -> Option<String> {
    let text = value?.as_str()?.trim();
    (!text.is_empty()).then(|| text.chars().take(LABEL_CHARS_MAX).collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn track(name: &str, properties: Value) -> ServiceEvent {
        ServiceEvent {
            seq: 1,
            profile_id: 1,
            kind: MessageType::Track,
            name: name.into(),
            timestamp_ms: 0,
            body: crate::store::body::EventBody::parsed(json!({ "properties": properties })),
        }
    }

    fn viewed(id: &str) -> Option<Signal> {
        Some(Signal::Viewed(ProductRef {
            id: id.into(),
            name: None,
            category: None,
        }))
    }

    #[test]
    fn events_are_read_as_the_ecommerce_spec_says() {
        let long_id = "x".repeat(PRODUCT_ID_BYTES_MAX + 1);
        let table: Vec<(&str, Value, Option<Signal>)> = vec![
            ("Product Viewed", json!({"product_id": "P1"}), viewed("P1")),
            ("Product Added", json!({"product_id": " P1 "}), viewed("P1")),
            ("Product Viewed", json!({"product_id": 42}), viewed("42")),
            ("Product Viewed", json!({"product_id": ""}), None),
            ("Product Viewed", json!({"product_id": 1.5}), None),
            ("Product Viewed", json!({"product_id": long_id}), None),
            ("Product Viewed", json!({"sku": "P1"}), None),
            (
                "Checkout Started",
                json!({"products": [{"product_id": "P1"}]}),
                None,
            ),
            ("Order Completed", json!({"products": []}), None),
            ("Order Completed", json!({"products": "P1"}), None),
            (
                "Product List Viewed",
                json!({"category": "Shoes"}),
                Some(Signal::Browsed("Shoes".into())),
            ),
            ("Product List Viewed", json!({"category": 7}), None),
        ];
        for (name, properties, expected) in table {
            let event = track(name, properties.clone());
            assert_eq!(of(&event), expected, "{name} {properties}");
        }
    }

    #[test]
    fn an_order_lists_each_product_once_up_to_the_limit() {
        let mut products: Vec<Value> = (0..ORDER_PRODUCTS_MAX + 10)
            .map(|i| json!({"product_id": format!("P{i}"), "name": "Lamp", "category": "Home"}))
            .collect();
        products.insert(1, json!({"product_id": "P0", "quantity": 3}));
        products.insert(2, json!({"name": "no id"}));
        let event = track("Order Completed", json!({ "products": products }));
        let Some(Signal::Purchased(bought)) = of(&event) else {
            panic!("an order is a purchase");
        };
        assert_eq!(bought.len(), ORDER_PRODUCTS_MAX);
        assert_eq!(bought[0].id, "P0");
        assert_eq!(bought[1].id, "P1");
        assert_eq!(bought[0].category.as_deref(), Some("Home"));
    }

    #[test]
    fn only_track_events_count_and_labels_are_cut() {
        let mut page = track("Product Viewed", json!({"product_id": "P1"}));
        page.kind = MessageType::Page;
        assert_eq!(of(&page), None);

        let long_name = "n".repeat(LABEL_CHARS_MAX * 2);
        let event = track(
            "Product Viewed",
            json!({"product_id": "P1", "name": long_name}),
        );
        let Some(Signal::Viewed(product)) = of(&event) else {
            panic!("a view");
        };
        assert_eq!(
            product.name.map(|n| n.chars().count()),
            Some(LABEL_CHARS_MAX)
        );
    }
}
