//! `tandem bench-validate`: the leader's per-event validation cost, the `Value` path of
//! `model::validate` against the raw path of `model::validate_raw`, side by side in one
//! process on the same batch items, measured in this thread's CPU time (so a busy machine
//! moves the figures less than wall time would).
//!
//! The items are the load generator's (`tandem load`), with its batch-level `context`, in
//! two forms: as it sends them (compact, keys sorted — what serde_json prints) and with
//! every object's keys reversed, as a client that does not sort its keys sends them. Each
//! round times both paths over every item, alternating, and checks that they give the
//! same events; a difference is a failure (exit code 1).

use std::time::Instant;

use serde_json::{Value, json};

use crate::load::workload::Workload;
use crate::model::event::Event;
use crate::model::identity::Blocklist;
use crate::model::validate::{Envelope, normalize};
use crate::model::validate_raw::Prepared;

/// Items per simulated request (what `tandem load` sends by default).
const BATCH_EVENTS: usize = 100;

/// `tandem bench-validate`
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Workload events validated per round and path.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Rounds (each times both paths once, alternating).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Workload seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Runs the benchmark; returns the exit code.
pub fn run_validate(args: ValidateArgs) -> i32 {
    let now_ms = crate::node::now_ms();
    let sorted: Vec<String> = Workload::new(args.seed, args.events, now_ms)
        .map(|generated| generated.json)
        .collect();
    let unsorted: Vec<String> = sorted
        .iter()
        .filter_map(|text| serde_json::from_str::<Value>(text).ok())
        .map(|value| reversed(&value))
        .collect();
    let context = json!({"library": {"name": "tandem-load", "version": env!("CARGO_PKG_VERSION")}});
    let blocklist = Blocklist::default();
    let envelope = Envelope {
        source: "bench",
        received_at_ms: now_ms,
        implied_type: None,
        context: context.as_object(),
        integrations: None,
        sent_at: None,
        blocklist: &blocklist,
        timestamp_future_ms_max: crate::model::time::TIMESTAMP_FUTURE_DEFAULT_MS_MAX,
    };
    let mut failed = false;
    for (form, items) in [("sorted keys", &sorted), ("reversed keys", &unsorted)] {
        for round in 1..=args.rounds {
            let (value_ns, value_events) = timed(|| value_path(items, &envelope));
            let (raw_ns, raw_events) = timed(|| raw_path(items, &envelope));
            if value_events != raw_events {
                eprintln!("{form}, round {round}: the two paths gave different events");
                failed = true;
            }
            let per_event = |ns: u64| ns as f64 / items.len().max(1) as f64 / 1_000.0;
            println!(
                "{form:13}  round {round}  value path {:6.2} us/event  raw path {:6.2} us/event  \
                 raw/value {:.2}  ({} events, {} accepted)",
                per_event(value_ns),
                per_event(raw_ns),
                raw_ns as f64 / value_ns.max(1) as f64,
                items.len(),
                raw_events.len(),
            );
        }
    }
    i32::from(failed)
}

/// The ingest handler's `Value` path over every item.
fn value_path(items: &[String], envelope: &Envelope<'_>) -> Vec<Event> {
    items
        .iter()
        .filter_map(|text| serde_json::from_str::<Value>(text).ok())
        .filter_map(|raw| normalize(raw, envelope, generated_id).ok())
        .collect()
}

/// The raw path, prepared once per request of [`BATCH_EVENTS`] items as the handler does.
fn raw_path(items: &[String], envelope: &Envelope<'_>) -> Vec<Event> {
    let mut events = Vec::with_capacity(items.len());
    for request in items.chunks(BATCH_EVENTS) {
        let prepared = Prepared::new(envelope);
        for text in request {
            let outcome = match prepared.normalize(text, generated_id) {
                Some((_, outcome)) => outcome,
                None => match serde_json::from_str::<Value>(text) {
                    Ok(raw) => normalize(raw, envelope, generated_id),
                    Err(_) => continue,
                },
            };
            events.extend(outcome.ok());
        }
    }
    events
}

fn generated_id() -> String {
    "bench-generated".to_owned()
}

/// Runs `work` and returns this thread's CPU time for it, ns (wall time where the
/// thread's CPU clock cannot be read), and its result.
fn timed<T>(work: impl FnOnce() -> T) -> (u64, T) {
    let started_cpu = thread_cpu_ns();
    let started = Instant::now();
    let result = work();
    let ns = match (started_cpu, thread_cpu_ns()) {
        (Some(start), Some(end)) => end.saturating_sub(start),
        _ => u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
    };
    (ns, result)
}

/// This thread's CPU time, ns (`/proc/thread-self/schedstat`, Linux).
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// `value` as JSON text with every object's keys in reverse order.
fn reversed(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let members: Vec<String> = map
                .iter()
                .rev()
                .map(|(key, value)| format!("{}:{}", Value::from(key.as_str()), reversed(value)))
                .collect();
            format!("{{{}}}", members.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(reversed).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}
