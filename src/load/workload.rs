//! The synthetic workload: a seeded, reproducible stream of Segment calls from a
//! population of customers.
//!
//! A [`Workload`] is an iterator of [`Generated`] events. Everything in it — which
//! customer acts, what they send, every `messageId` — comes from one [`StdRng`] seeded with
//! the run's seed, so the same seed and event count give byte-identical events (apart from
//! timestamps, which are anchored at the `start_ms` the caller passes). That is what makes
//! a load run repeatable and its retries safe: a resent event has the same `messageId`.
//!
//! The population is sized to the run: one customer per [`EVENTS_PER_CUSTOMER`] events,
//! at most [`CUSTOMERS_MAX`]. A fifth of the events come from the most active tenth of
//! customers, so some profiles grow long histories. Event times spread over the
//! [`HISTORY_MS`] before `start_ms`, in generation order.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::catalogue::{Catalogue, mix};
use super::events::Device;
use super::journey::{self, Customer, CustomerIds, Draft};
use crate::model::validate::format_ms;

/// Events per synthetic customer, on average.
pub const EVENTS_PER_CUSTOMER: u64 = 10;
/// Largest population, however many events are asked for (about 30 MB of state).
pub const CUSTOMERS_MAX: u64 = 2_000_000;
/// How far back event timestamps reach: seven days.
pub const HISTORY_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// Share of events sent by the most active customers.
const HOT_EVENT_SHARE: f64 = 0.2;
/// The most active customers are the first `1 / HOT_CUSTOMER_DIVISOR` of the population.
const HOT_CUSTOMER_DIVISOR: u64 = 10;
/// Largest random offset added to an event's timestamp.
const TIMESTAMP_JITTER_MS: i64 = 60_000;

/// One event, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The event's `messageId` (a UUID v4 drawn from the seeded generator).
    pub message_id: String,
    /// The profile key of its highest-priority identity (see [`super::events::Who::profile_key`]).
    pub identity: String,
    /// The batch item as JSON text.
    pub json: String,
}

/// The seeded event stream.
pub struct Workload {
    /// The run's seed: with `total`, determines every event.
    seed: u64,
    /// Short hex tag derived from the seed, part of every customer id, so runs with
    /// different seeds create different customers.
    tag: String,
    /// The single source of randomness.
    rng: StdRng,
    /// Journey state of every customer.
    customers: Vec<Customer>,
    /// The products on sale.
    catalogue: Catalogue,
    /// Events to produce.
    total: u64,
    /// Events produced so far.
    produced: u64,
    /// Timestamps end here, ms since the epoch.
    start_ms: i64,
}

impl Workload {
    /// A stream of `total` events for `seed`, with timestamps ending at `start_ms`.
    pub fn new(seed: u64, total: u64, start_ms: i64) -> Workload {
        let population = customers_for(total);
        let customers = (0..population)
            .map(|index| Customer::new(journey::customer_hash(seed, index)))
            .collect();
        Workload {
            seed,
            tag: format!("{:08x}", mix(seed) >> 32),
            rng: StdRng::seed_from_u64(seed),
            customers,
            catalogue: Catalogue::new(),
            total,
            produced: 0,
            start_ms,
        }
    }

    /// Events still to come.
    pub fn remaining(&self) -> u64 {
        self.total - self.produced
    }

    /// Number of customers in the population.
    pub fn population(&self) -> usize {
        self.customers.len()
    }

    fn pick_customer(&mut self) -> usize {
        let population = self.customers.len() as u64;
        let hot = (population / HOT_CUSTOMER_DIVISOR).max(1);
        let range = if self.rng.random_bool(HOT_EVENT_SHARE) {
            hot
        } else {
            population
        };
        self.rng.random_range(0..range) as usize
    }

    fn timestamp_ms(&mut self) -> i64 {
        let progress =
            i128::from(self.produced) * i128::from(HISTORY_MS) / i128::from(self.total.max(1));
        let offset = i64::try_from(progress).unwrap_or(HISTORY_MS);
        let jitter = self.rng.random_range(0..TIMESTAMP_JITTER_MS);
        (self.start_ms - HISTORY_MS + offset + jitter).min(self.start_ms - 1)
    }

    fn generate(&mut self) -> Generated {
        let index = self.pick_customer();
        let ids = CustomerIds::derive(self.seed, &self.tag, index as u64);
        let message_id = uuid::Builder::from_random_bytes(self.rng.random())
            .into_uuid()
            .to_string();
        let timestamp = format_ms(self.timestamp_ms());
        let Draft {
            who,
            mut item,
            library,
            from_device,
        } = journey::next(
            &mut self.customers[index],
            &ids,
            &self.catalogue,
            &mut self.rng,
        );
        item.insert("messageId".into(), json!(message_id));
        item.insert("timestamp".into(), json!(timestamp));
        let device = from_device.then(|| Device::from_hash(ids.hash));
        let context = super::events::context(library, device.as_ref());
        item.insert("context".into(), context);
        who.apply(&mut item);
        Generated {
            message_id,
            identity: who.profile_key(),
            json: Value::Object(item).to_string(),
        }
    }
}

impl Iterator for Workload {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        if self.produced >= self.total {
            return None;
        }
        let event = self.generate();
        self.produced += 1;
        Some(event)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = usize::try_from(self.remaining()).unwrap_or(usize::MAX);
        (remaining, Some(remaining))
    }
}

/// The population size for a run of `events` events.
pub fn customers_for(events: u64) -> u64 {
    (events / EVENTS_PER_CUSTOMER).clamp(1, CUSTOMERS_MAX)
}

#[cfg(test)]
#[path = "workload_tests.rs"]
mod tests;
