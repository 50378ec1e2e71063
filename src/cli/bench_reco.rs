//! `tandem bench-reco`: recommendation quality and cost on the load generator's seeded
//! workload, offline — no node, no network; one seed reproduces every number.
//!
//! 1. **Quality**: [`evaluate`] — hit-rate@k of the model against the popularity
//!    baseline, each customer's last order held out.
//! 2. **Training**: every event replayed in feed order into a fresh model.
//! 3. **Persistence**: the model blob's size and its encode and decode times (the service
//!    rewrites the blob after every batch; the query cache decodes it on every reload).
//! 4. **Service path**: the same events through the recommendation service into a real
//!    service database, in supervisor-sized batches, committed like the supervisor does —
//!    and a check that it ends with exactly the offline model.
//! 5. **Query latency**: `recommend(history, k, now)` for every profile, as a distribution.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::services::db::{ServiceDb, Writes};
use crate::services::event::ServiceEvent;
use crate::services::recommend::{
    LIMIT_MAX, ModelConfig, ProfileHistory, Recommender, evaluate, synthetic,
};
use crate::services::recommendations::Recommendations;
use crate::services::supervisor::BATCH_MAX;
use crate::store::read::FeedItem;

/// Most events one run generates (they are all held in memory, about 1 KiB each).
pub const EVENTS_MAX: u64 = 2_000_000;
/// The generated events end here (a fixed time, so a seed reproduces the same run), ms
/// since the epoch; queries are answered as of this time.
const END_MS: i64 = 1_764_000_000_000;

/// `tandem bench-reco`
#[derive(Debug, Clone, clap::Args)]
pub struct RecoArgs {
    /// Events to generate (1 to 2000000).
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Workload seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// List length: hit-rate@k and the `limit` of the timed queries (1 to 100).
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Parent directory of the service database the service path writes (a fresh
    /// subdirectory, deleted afterwards); the system's temporary directory by default.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// Runs the benchmark and prints its report; returns the exit code.
pub async fn run_reco(args: RecoArgs) -> i32 {
    let outcome = tokio::task::spawn_blocking(move || run_reco_blocking(&args)).await;
    match outcome {
        Ok(Ok(report)) => {
            println!("{report}");
            0
        }
        Ok(Err(error)) => {
            eprintln!("tandem bench-reco: {error}");
            1
        }
        Err(error) => {
            eprintln!("tandem bench-reco: the benchmark thread failed: {error}");
            1
        }
    }
}

/// Runs every measurement and returns the report's text.
pub fn run_reco_blocking(args: &RecoArgs) -> Result<String, String> {
    if !(1..=EVENTS_MAX).contains(&args.events) {
        return Err(format!(
            "--events {} is out of range; use 1 to {EVENTS_MAX}",
            args.events
        ));
    }
    if !(1..=LIMIT_MAX).contains(&args.k) {
        return Err(format!(
            "--k {} is out of range; use 1 to {LIMIT_MAX}",
            args.k
        ));
    }
    let mut out = String::new();
    let started = Instant::now();
    let events = synthetic::events(args.seed, args.events, END_MS);
    line(
        &mut out,
        format!(
            "tandem bench-reco: seed {}, {} events generated in {} ms, k {}",
            args.seed,
            events.len(),
            started.elapsed().as_millis(),
            args.k
        ),
    );

    line(
        &mut out,
        "quality (each customer's last order held out):".into(),
    );
    for text in evaluate(&events, args.k).to_string().lines() {
        line(&mut out, format!("  {text}"));
    }

    let started = Instant::now();
    let (model, histories) = train(&events);
    let elapsed = started.elapsed();
    line(
        &mut out,
        format!(
            "training: {} events in {} ms ({:.0} events/s); {} products, {} categories, \
             {} neighbour edges, ~{:.1} MiB in memory",
            events.len(),
            elapsed.as_millis(),
            per_second(events.len(), elapsed),
            model.len(),
            model.category_count(),
            model.edge_count(),
            model.approx_bytes() as f64 / (1 << 20) as f64
        ),
    );

    line(&mut out, persistence(&model)?);
    line(&mut out, service_path(args, &events, &model)?);
    line(&mut out, latency(&model, &histories, args.k)?);
    Ok(out)
}

fn line(out: &mut String, text: String) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{text}");
}

fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// A model and every profile's history, trained on all `events` in feed order.
fn train(events: &[ServiceEvent]) -> (Recommender, BTreeMap<u64, ProfileHistory>) {
    let mut model = Recommender::default();
    let mut histories: BTreeMap<u64, ProfileHistory> = BTreeMap::new();
    for event in events {
        model.observe(event, histories.entry(event.profile_id).or_default());
    }
    (model, histories)
}

/// Blob size, encode and decode times.
fn persistence(model: &Recommender) -> Result<String, String> {
    let started = Instant::now();
    let blob = postcard::to_stdvec(model).map_err(|e| format!("encoding the model: {e}"))?;
    let encode = started.elapsed();
    let started = Instant::now();
    let decoded: Recommender =
        postcard::from_bytes(&blob).map_err(|e| format!("decoding the model: {e}"))?;
    let decode = started.elapsed();
    if &decoded != model {
        return Err("the decoded model differs from the encoded one".into());
    }
    Ok(format!(
        "model blob: {} bytes ({:.2} MiB); encode {:.2} ms, decode {:.2} ms",
        blob.len(),
        blob.len() as f64 / (1 << 20) as f64,
        encode.as_secs_f64() * 1e3,
        decode.as_secs_f64() * 1e3
    ))
}

/// The events through the service into a fresh service database, batch by batch.
fn service_path(
    args: &RecoArgs,
    events: &[ServiceEvent],
    offline: &Recommender,
) -> Result<String, String> {
    let parent = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = parent.join(format!("tandem-bench-reco-{}", std::process::id()));
    let outcome = run_service(&dir, events, offline);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn run_service(
    dir: &Path,
    events: &[ServiceEvent],
    offline: &Recommender,
) -> Result<String, String> {
    let db = ServiceDb::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let feed: Vec<FeedItem> = (1..).zip(events).map(|(n, e)| e.to_feed_item(n)).collect();
    let mut service = Recommendations::new(ModelConfig::default());
    let started = Instant::now();
    let mut batches = 0;
    for batch in feed.chunks(BATCH_MAX) {
        let mut writes = Writes::default();
        service
            .apply(&db, batch, &mut writes)
            .map_err(|e| format!("service: {e}"))?;
        let cursor = batch.last().map_or(0, |item| item.feed_seq);
        db.commit(writes, cursor)
            .map_err(|e| format!("service commit: {e}"))?;
        batches += 1;
    }
    let elapsed = started.elapsed();
    let stored = crate::services::recommendations::load_model(&db)
        .map_err(|e| format!("service model: {e}"))?;
    if stored.as_ref().is_some_and(|stored| stored != offline) {
        return Err("the service's committed model differs from the offline one".into());
    }
    let profiles = db
        .count(b"h")
        .map_err(|e| format!("counting histories: {e}"))?;
    Ok(format!(
        "service path: {} events in {batches} batches of at most {BATCH_MAX} in {} ms \
         ({:.0} events/s, model blob rewritten per batch); {profiles} histories; committed \
         model identical to the offline one",
        events.len(),
        elapsed.as_millis(),
        per_second(events.len(), elapsed)
    ))
}

/// `recommend` latency over every profile's history.
fn latency(
    model: &Recommender,
    histories: &BTreeMap<u64, ProfileHistory>,
    k: usize,
) -> Result<String, String> {
    // 1 ns to 60 s, 3 significant digits.
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| format!("histogram: {e}"))?;
    let mut returned = 0;
    let started = Instant::now();
    for history in histories.values() {
        let call = Instant::now();
        let list = model.recommend(history, k, END_MS);
        let nanos = u64::try_from(call.elapsed().as_nanos()).unwrap_or(u64::MAX);
        histogram.saturating_record(nanos.max(1));
        returned += list.len();
    }
    let elapsed = started.elapsed();
    let micros = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1e3;
    Ok(format!(
        "query latency, recommend(history, {k}) over {} profiles: p50 {:.1} µs, p90 {:.1} µs, \
         p99 {:.1} µs, max {:.1} µs; {:.0} queries/s on one thread; {:.1} items per list",
        histories.len(),
        micros(0.5),
        micros(0.9),
        micros(0.99),
        histogram.max() as f64 / 1e3,
        per_second(histories.len(), elapsed),
        returned as f64 / histories.len().max(1) as f64
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_reports_every_measurement() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Small enough to take about a second in a debug build.
        let args = RecoArgs {
            events: 3_000,
            seed: 3,
            k: 10,
            work_dir: Some(dir.path().to_path_buf()),
        };
        let report = run_reco_blocking(&args).expect("runs");
        for expected in [
            "3000 events generated",
            "hit-rate@10: recommender",
            "training: 3000 events",
            "model blob:",
            "identical to the offline one",
            "p99",
        ] {
            assert!(
                report.contains(expected),
                "{expected:?} missing from:\n{report}"
            );
        }
        let leftovers = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(leftovers, 0, "the service database is deleted");
    }

    #[test]
    fn out_of_range_arguments_are_refused_with_the_range() {
        let args = |events, k| RecoArgs {
            events,
            seed: 1,
            k,
            work_dir: None,
        };
        let error = run_reco_blocking(&args(0, 10)).expect_err("no events");
        assert!(error.contains("use 1 to 2000000"), "{error}");
        let error = run_reco_blocking(&args(10, 101)).expect_err("k too large");
        assert!(error.contains("use 1 to 100"), "{error}");
    }
}
