//! `tandem bench-segments`: what real-time segments cost — the segments service's time per
//! committed event with many segments defined, and the backfill rate of a new segment over
//! a large population.
//!
//! It runs in one process on a scratch directory (deleted afterwards): a real store and a
//! real service database, the store fed by applying committed log entries directly (no
//! Raft, no HTTP — those are measured elsewhere), the service driven the way its
//! supervisor drives it (batches of [`BATCH_MAX`] feed entries, each committed with its
//! cursor). Phases:
//! 1. define `--segments` segments (mixed rules: computed traits, profile traits, event
//!    windows, nested `in_segment`) while the store is empty;
//! 2. apply `--events` events of the load generator's workload and time the service over
//!    them: the per-event cost of real-time evaluation;
//! 3. add simple one-order customers until there are `--profiles` profiles, and time the
//!    service over those too;
//! 4. define one more segment and time its backfill over every profile.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::load::workload::Workload;
use crate::log::{Log, LogOptions};
use crate::model::command::{Command, SegmentDef};
use crate::model::event::Event;
use crate::model::identity::Blocklist;
use crate::model::validate::{Envelope, normalize};
use crate::services::audience::{self, Segments};
use crate::services::db::{ServiceDb, Writes};
use crate::services::supervisor::{BATCH_MAX, Service};
use crate::services::traits::default_defs;
use crate::store::apply::ApplySettings;
use crate::store::{Store, StoreConfig};

/// Events applied to the store per log entry.
const ENTRY_EVENTS: usize = 1_000;

/// `tandem bench-segments`
#[derive(Debug, clap::Args)]
pub struct SegmentsArgs {
    /// Segments defined before the events arrive.
    #[arg(long, default_value_t = 100)]
    pub segments: usize,
    /// Workload events evaluated in real time.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Profiles in the population the new segment backfills over.
    #[arg(long, default_value_t = 1_000_000)]
    pub profiles: u64,
    /// Workload seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Parent directory for the scratch data (a fresh subdirectory, deleted afterwards).
    #[arg(long, default_value = ".")]
    pub work_dir: PathBuf,
}

/// Runs the benchmark; returns the exit code.
pub fn run_segments(args: SegmentsArgs) -> i32 {
    let dir = args
        .work_dir
        .join(format!("tandem-bench-segments-{}", std::process::id()));
    let code = match measure(&args, &dir) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("tandem bench-segments: {error}");
            1
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    code
}

/// The `n`th of the benchmark's segment rules: a mix of what marketers write.
fn rule(n: usize) -> String {
    let categories = ["Cameras", "Audio", "Books", "Kitchen", "Outdoor", "Toys"];
    let category = categories[n % categories.len()];
    let k = 1 + n % 5;
    match n % 8 {
        0 => format!("lifetime_value > {}", 50 * (n + 1)),
        1 => format!("orders_count >= {k} and favorite_category == \"{category}\""),
        2 => format!(
            "event(\"Order Completed\").within({}d).count() >= {k}",
            7 + n % 60
        ),
        3 => format!("open_tickets > 0 and (last_csat == null or last_csat <= {k})"),
        4 => format!(
            "event(\"Product Viewed\").within({}d).count() >= {k} and not event(\"Order Completed\").exists()",
            1 + n % 14
        ),
        5 => format!("avg_order_value >= {} or tickets_90d >= {k}", 20 * k),
        6 if n >= 8 => format!(
            "in_segment(\"seg-{}\") and event(\"Product Added\").within(30d).exists()",
            n - 6
        ),
        _ => format!("trait(\"email\") != null and lifetime_value > {}", 100 * k),
    }
}

fn open_store(dir: &Path) -> Result<Store, String> {
    let log =
        Log::open(LogOptions::new(dir.join("log"))).map_err(|e| format!("opening the log: {e}"))?;
    Store::open(
        StoreConfig {
            path: dir.join("store"),
            cache_bytes: 256 << 20,
            apply: ApplySettings {
                rules: Default::default(),
                dedup_window_ms: 86_400_000,
                retention_ms: 400 * 86_400_000,
                audit_records_max: crate::model::audit::AUDIT_RECORDS_DEFAULT_MAX,
                clock_step_ms_max: crate::model::time::CLOCK_STEP_DEFAULT_MS_MAX,
            },
        },
        log,
    )
    .map_err(|e| format!("opening the store: {e}"))
}

/// Applies `command` as the next committed log entry.
fn commit(store: &Store, command: &Command) -> Result<(), String> {
    crate::store::direct::commit_command(store, command)
        .map(drop)
        .map_err(|e| format!("applying {command}: {e}"))
}

fn to_event(raw: Value, now_ms: i64, blocklist: &Blocklist) -> Option<Event> {
    let envelope = Envelope {
        source: "bench",
        received_at_ms: now_ms,
        implied_type: None,
        context: None,
        integrations: None,
        sent_at: None,
        blocklist,
        timestamp_future_ms_max: crate::model::time::TIMESTAMP_FUTURE_DEFAULT_MS_MAX,
    };
    normalize(raw, &envelope, || uuid::Uuid::new_v4().to_string()).ok()
}

fn apply_events(store: &Store, events: Vec<Event>, now_ms: i64) -> Result<(), String> {
    for chunk in events.chunks(ENTRY_EVENTS) {
        crate::store::direct::commit_events(store, chunk.to_vec(), now_ms)
            .map_err(|e| format!("applying events: {e}"))?;
    }
    Ok(())
}

/// Runs the service over every feed entry not yet processed, as its supervisor would;
/// returns the time spent in the service (reads, evaluation, commits) and entries seen.
fn drain(service: &mut Segments, db: &ServiceDb, store: &Store) -> Result<(Duration, u64), String> {
    let mut spent = Duration::ZERO;
    let mut entries = 0;
    let mut cursor = db.cursor().map_err(|e| e.to_string())?;
    loop {
        let started = Instant::now();
        let reader = store.reader();
        let items = reader
            .feed_after(cursor, BATCH_MAX)
            .map_err(|e| e.to_string())?;
        if items.is_empty() {
            return Ok((spent, entries));
        }
        let mut writes = Writes::default();
        let applied = service
            .process(db, &reader, &items, &mut writes)
            .map_err(|e| e.to_string())?;
        let next = applied
            .checked_sub(1)
            .and_then(|at| items.get(at))
            .ok_or("the service made no progress")?
            .feed_seq;
        db.commit(writes, next).map_err(|e| e.to_string())?;
        spent += started.elapsed();
        entries += applied as u64;
        cursor = next;
    }
}

/// Ticks (as a leader would, through the log) until no sweep is pending; returns the time
/// taken.
fn sweep(service: &mut Segments, db: &ServiceDb, store: &Store) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        drain(service, db, store)?;
        if !service.wants_ticks(db).map_err(|e| e.to_string())? {
            return Ok(started.elapsed());
        }
        commit(
            store,
            &Command::Tick {
                time_ms: crate::clock::now_ms(),
            },
        )?;
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let record = audience::record(db, "backfill-probe")
                .ok()
                .flatten()
                .and_then(|r| r.sweep)
                .map_or(0, |s| s.scanned);
            eprintln!(
                "  … backfill: {record} profiles after {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
}

fn measure(args: &SegmentsArgs, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let store = open_store(dir)?;
    let db = ServiceDb::open(&dir.join("service")).map_err(|e| e.to_string())?;
    let mut service = Segments::new(Arc::new(default_defs())).without_refresh();
    let now_ms = crate::node::now_ms();
    let blocklist = Blocklist::default();

    // 1. Segments first, while nobody exists.
    for n in 0..args.segments {
        let def = SegmentDef {
            id: format!("seg-{n}"),
            name: format!("Benchmark segment {n}"),
            rule: rule(n),
        };
        crate::services::segments::parse(&def.rule)
            .map_err(|e| format!("benchmark rule {n} does not parse: {e}"))?;
        commit(&store, &Command::PutSegment(def))?;
    }
    drain(&mut service, &db, &store)?;
    sweep(&mut service, &db, &store)?;
    eprintln!("defined {} segments", args.segments);

    // 2. The workload, evaluated in real time.
    let started = Instant::now();
    let events: Vec<Event> = Workload::new(args.seed, args.events, now_ms)
        .filter_map(|generated| serde_json::from_str(&generated.json).ok())
        .filter_map(|raw| to_event(raw, now_ms, &blocklist))
        .collect();
    let workload_events = events.len() as u64;
    apply_events(&store, events, now_ms)?;
    eprintln!(
        "applied {workload_events} workload events to the store in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (spent, entries) = drain(&mut service, &db, &store)?;
    let workload_profiles = store.reader().counts().profiles_approx;
    println!(
        "real-time evaluation, {} segments, load-generator workload: {entries} feed entries \
         ({workload_events} events, ~{workload_profiles} profiles) in {:.1} s = {:.1} µs per entry, {:.0} entries/s",
        args.segments,
        spent.as_secs_f64(),
        spent.as_secs_f64() * 1e6 / entries.max(1) as f64,
        entries as f64 / spent.as_secs_f64().max(1e-9),
    );

    // 3. Grow the population with one-order customers.
    let mut added = 0_u64;
    let mut spent_simple = Duration::ZERO;
    let mut entries_simple = 0;
    let target = args.profiles.saturating_sub(workload_profiles);
    while added < target {
        let chunk = (target - added).min(50_000);
        let events: Vec<Event> = (added..added + chunk)
            .filter_map(|i| {
                let raw = json!({
                    "type": "track",
                    "userId": format!("bench-customer-{i}"),
                    "event": "Order Completed",
                    "messageId": format!("bench-order-{i}"),
                    "timestamp": time::OffsetDateTime::from_unix_timestamp_nanos(
                        i128::from(now_ms - (i as i64 % 90) * 86_400_000) * 1_000_000
                    ).ok()?.format(&time::format_description::well_known::Rfc3339).ok()?,
                    "properties": {"revenue": 10 + i % 500, "products": [{"product_id": format!("P{:04}", i % 300), "category": "Books"}]},
                });
                to_event(raw, now_ms, &blocklist)
            })
            .collect();
        apply_events(&store, events, now_ms)?;
        let (spent, entries) = drain(&mut service, &db, &store)?;
        spent_simple += spent;
        entries_simple += entries;
        added += chunk;
        eprintln!("  … {added} of {target} one-order customers added");
    }
    if entries_simple > 0 {
        println!(
            "real-time evaluation, {} segments, one-order customers: {entries_simple} feed entries in {:.1} s = {:.1} µs per entry",
            args.segments,
            spent_simple.as_secs_f64(),
            spent_simple.as_secs_f64() * 1e6 / entries_simple as f64,
        );
    }

    // 4. A new segment backfills over everyone.
    let profiles = store.reader().counts().profiles_approx;
    commit(
        &store,
        &Command::PutSegment(SegmentDef {
            id: "backfill-probe".into(),
            name: "Backfill probe".into(),
            rule: "lifetime_value > 250 and event(\"Order Completed\").within(60d).exists()".into(),
        }),
    )?;
    drain(&mut service, &db, &store)?;
    let took = sweep(&mut service, &db, &store)?;
    let members = audience::record(&db, "backfill-probe")
        .map_err(|e| e.to_string())?
        .map_or(0, |r| r.members);
    println!(
        "backfill of one new segment over ~{profiles} profiles: {:.1} s = {:.0} profiles/s ({members} members)",
        took.as_secs_f64(),
        profiles as f64 / took.as_secs_f64().max(1e-9),
    );
    Ok(())
}
