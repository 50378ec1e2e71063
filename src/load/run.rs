//! Driving a load run: generate batches, send up to `concurrency` of them at a time
//! (paced to `rate` if set), tally every reply, record acknowledged events, report.
//!
//! A live run generates each batch just before sending it; a replay run (`replay`) builds
//! every body first ([`super::replay`]) and starts the clock only then. Both send through
//! the same driver, retry policy and tally, so their summaries compare like for like.
//!
//! One task per in-flight request; the driver alone owns the totals, the progress bar
//! and the acknowledged-events file, so none of them needs a lock. The run stops early
//! (in-flight requests finish, no new ones start) when the server refuses the write key
//! (401/403), or when a request spends its whole retry budget: every later request would
//! fail the same way.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use tokio::task::{JoinError, JoinSet};

use super::LoadError;
use super::acked::AckedWriter;
use super::batch::{
    BATCH_EVENTS_MAX, Batch, Batcher, Pacer, REQUEST_BYTES_MAX, events_per_request,
};
use super::catalogue::mix;
use super::client;
use super::host::HostProbe;
use super::replay::{self, REPLAY_BYTES_MAX, ReadyBatch, ReplayCost};
use super::reply::{self, BatchTally};
use super::summary::{Latency, LoadSummary};
use super::workload::Workload;
use crate::model::validate::format_ms;

/// Requests in flight unless told otherwise.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Most requests in flight.
pub const CONCURRENCY_MAX: usize = 1_024;
/// Events per request unless told otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 100;
/// Slowest latency the histogram tracks exactly; slower requests count as this.
const LATENCY_MICROS_MAX: u64 = 10 * 60 * 1_000_000;

/// What to send, where, and how fast.
#[derive(Clone)]
pub struct LoadOptions {
    /// Base URL of a node, e.g. `http://127.0.0.1:8080`.
    pub target: String,
    /// The source's write key (HTTP Basic user, empty password).
    pub write_key: String,
    /// Events to send.
    pub events: u64,
    /// Events per second; `None` sends as fast as `concurrency` allows.
    pub rate: Option<f64>,
    /// Requests in flight at once (1..=[`CONCURRENCY_MAX`]).
    pub concurrency: usize,
    /// Events per request (1..=[`BATCH_EVENTS_MAX`]); requests are also capped at
    /// [`REQUEST_BYTES_MAX`] bytes, and shrink when `rate` is low.
    pub batch_size: usize,
    /// Where to write the acknowledged events, for `tandem verify`.
    pub acked: Option<PathBuf>,
    /// Seed of the workload: the same seed sends the same events.
    pub seed: u64,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Build every request body before the timed run, then only send bytes
    /// ([`super::replay`]); refused if they would take more than [`REPLAY_BYTES_MAX`].
    pub replay: bool,
    /// Processes (the nodes) whose CPU time and peak memory the summary reports.
    pub watch_pids: Vec<u32>,
    /// A disk (name in `/proc/diskstats`) whose bytes written the summary reports.
    pub disk: Option<String>,
    /// CA certificate (PEM) of an `https://` target; `None`: only `http://` targets.
    pub ca_file: Option<PathBuf>,
}

impl LoadOptions {
    /// Options with the defaults: concurrency 8, 100 events per request, no rate limit,
    /// no acknowledged-events file, seed 0, no progress bar, live (not replay).
    pub fn new(
        target: impl Into<String>,
        write_key: impl Into<String>,
        events: u64,
    ) -> LoadOptions {
        LoadOptions {
            target: target.into(),
            write_key: write_key.into(),
            events,
            rate: None,
            concurrency: DEFAULT_CONCURRENCY,
            batch_size: DEFAULT_BATCH_SIZE,
            acked: None,
            seed: 0,
            progress: false,
            replay: false,
            watch_pids: Vec::new(),
            disk: None,
            ca_file: None,
        }
    }

    /// Checks every option, naming the one out of range and its limits.
    pub fn validate(&self) -> Result<(), LoadError> {
        let invalid = |message: String| Err(LoadError::InvalidOptions(message));
        client::base_url(&self.target)?;
        if self.write_key.trim().is_empty() {
            return invalid("--write-key must not be empty".into());
        }
        if self.events == 0 {
            return invalid("--events must be at least 1".into());
        }
        if !(1..=CONCURRENCY_MAX).contains(&self.concurrency) {
            return invalid(format!(
                "--concurrency must be 1 to {CONCURRENCY_MAX}, not {}",
                self.concurrency
            ));
        }
        if !(1..=BATCH_EVENTS_MAX).contains(&self.batch_size) {
            return invalid(format!(
                "--batch-size must be 1 to {BATCH_EVENTS_MAX}, not {}",
                self.batch_size
            ));
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return invalid(format!(
                "--rate must be a positive number of events per second, not {rate}"
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for LoadOptions {
    /// Like a derived `Debug`, but never prints the write key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions")
            .field("target", &self.target)
            .field("write_key", &"<redacted>")
            .field("events", &self.events)
            .field("rate", &self.rate)
            .field("concurrency", &self.concurrency)
            .field("batch_size", &self.batch_size)
            .field("acked", &self.acked)
            .field("seed", &self.seed)
            .field("progress", &self.progress)
            .field("replay", &self.replay)
            .field("watch_pids", &self.watch_pids)
            .field("disk", &self.disk)
            .finish()
    }
}

/// Runs a load: sends `opts.events` events and reports what became of them. Fails only if
/// the run cannot be carried out (bad options, the acknowledged-events file); events the
/// server refused or that could not be delivered are counted in the summary.
pub async fn run(opts: &LoadOptions) -> Result<LoadSummary, LoadError> {
    opts.validate()?;
    let sender = Arc::new(Sender {
        http: client::http_client(opts.ca_file.as_deref())?,
        url: format!("{}/v1/batch", client::base_url(&opts.target)?),
        auth: client::basic_auth(&opts.write_key),
        seed: opts.seed,
    });
    let mut acked = opts.acked.as_deref().map(AckedWriter::create).transpose()?;
    let workload = Workload::new(opts.seed, opts.events, unix_ms());
    let per_request = events_per_request(opts.batch_size, opts.rate);
    let batcher = Batcher::new(workload, per_request, REQUEST_BYTES_MAX);
    let (requests, replay) = if opts.replay {
        let (ready, cost) = prepare_replay(batcher, opts).await?;
        (Requests::Ready(ready.into_iter()), Some(cost))
    } else {
        (Requests::Live(Box::new(batcher)), None)
    };
    let mut totals = Totals::new(opts, replay)?;
    let probe = if opts.watch_pids.is_empty() && opts.disk.is_none() {
        None
    } else {
        Some(HostProbe::start(&opts.watch_pids, opts.disk.as_deref())?)
    };
    let started = Instant::now();
    let mut pacer = opts.rate.map(|rate| Pacer::new(rate, Instant::now()));
    let mut in_flight = JoinSet::new();
    for request in requests {
        if totals.summary.stopped.is_some() {
            break;
        }
        if let Some(pacer) = &mut pacer {
            let at = pacer.reserve(Instant::now(), request.len());
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
        }
        while in_flight.len() >= opts.concurrency {
            if let Some(done) = in_flight.join_next().await {
                totals.record(joined(done), &mut acked)?;
            }
        }
        totals.summary.sent += request.len() as u64;
        totals.summary.requests += 1;
        in_flight.spawn(Arc::clone(&sender).send(request));
        while let Some(done) = in_flight.try_join_next() {
            totals.record(joined(done), &mut acked)?;
        }
    }
    while let Some(done) = in_flight.join_next().await {
        totals.record(joined(done), &mut acked)?;
    }
    if let Some(writer) = acked {
        let lines = writer.finish()?;
        assert_eq!(
            lines, totals.summary.acknowledged,
            "acked file holds exactly the acknowledged events"
        );
    }
    let elapsed = started.elapsed();
    let mut summary = totals.finish(elapsed);
    summary.host = probe.map(HostProbe::finish);
    Ok(summary)
}

/// Builds every request of the run on a blocking thread (seconds of CPU for millions of
/// events, which would stall the runtime) and says what it cost.
async fn prepare_replay(
    batcher: Batcher,
    opts: &LoadOptions,
) -> Result<(Vec<ReadyBatch>, ReplayCost), LoadError> {
    let events = opts.events;
    let building =
        tokio::task::spawn_blocking(move || replay::prepare(batcher, events, REPLAY_BYTES_MAX));
    let prepared = joined(building.await)?;
    if opts.progress {
        eprintln!(
            "tandem load: {} requests ready to replay ({})",
            prepared.batches.len(),
            prepared.cost
        );
    }
    Ok((prepared.batches, prepared.cost))
}

/// The requests of a run, in sending order.
enum Requests {
    /// Generated one by one as the driver asks (boxed: the generator's state is large).
    Live(Box<Batcher>),
    /// Built before the run.
    Ready(std::vec::IntoIter<ReadyBatch>),
}

impl Iterator for Requests {
    type Item = Request;

    fn next(&mut self) -> Option<Request> {
        match self {
            Requests::Live(batcher) => batcher.next().map(Request::Live),
            Requests::Ready(ready) => ready.next().map(Request::Ready),
        }
    }
}

/// One request of a run.
enum Request {
    /// Items serialised, body made per attempt.
    Live(Batch),
    /// Body built before the run.
    Ready(ReadyBatch),
}

impl Request {
    /// Position of the request in the run, from 0.
    fn number(&self) -> u64 {
        match self {
            Request::Live(batch) => batch.number,
            Request::Ready(ready) => ready.number,
        }
    }

    /// Number of events.
    fn len(&self) -> usize {
        match self {
            Request::Live(batch) => batch.len(),
            Request::Ready(ready) => ready.len(),
        }
    }

    /// The body of one attempt; every attempt carries the same events.
    fn body(&self) -> reqwest::Body {
        match self {
            // sentAt is stamped per attempt: the server corrects event times for clock
            // skew with it, so it must say when *this* attempt left.
            Request::Live(batch) => batch.body(&format_ms(unix_ms())).into(),
            // The same bytes every attempt: a shared buffer, no copy, no JSON.
            Request::Ready(ready) => ready.body.clone().into(),
        }
    }

    /// `(messageId, identity)` of each item, in order.
    fn into_events(self) -> Vec<(String, String)> {
        match self {
            Request::Live(batch) => batch.events,
            Request::Ready(ready) => ready.events,
        }
    }
}

/// A task's result; a panic in a task is a bug in this module and is re-raised here.
/// (Tasks are never aborted while the driver waits for them, so a `JoinError` is a panic.)
fn joined<T>(result: Result<T, JoinError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// What every request task needs.
struct Sender {
    /// Shared connection pool.
    http: reqwest::Client,
    /// `{target}/v1/batch`.
    url: String,
    /// `Basic base64(write_key:)`.
    auth: String,
    /// The run's seed, for reproducible retry jitter.
    seed: u64,
}

/// A finished request.
struct BatchDone {
    /// `(messageId, identity)` of each item, in order.
    events: Vec<(String, String)>,
    /// What became of the items.
    tally: BatchTally,
    /// Retries of the request.
    retries: u32,
    /// Latency of the final attempt, if it succeeded.
    latency: Option<Duration>,
}

impl Sender {
    async fn send(self: Arc<Self>, request: Request) -> BatchDone {
        let mut jitter = StdRng::seed_from_u64(mix(self.seed ^ request.number()));
        let build = || {
            self.http
                .post(&self.url)
                .header(AUTHORIZATION, &self.auth)
                .header(CONTENT_TYPE, "application/json")
                .body(request.body())
        };
        let exchange = client::send_with_retries(build, &mut jitter).await;
        let (tally, latency) = match exchange.result {
            Ok(reply) => {
                let ok = (200..300).contains(&reply.status);
                (
                    reply::tally(reply.status, &reply.body, request.len()),
                    ok.then_some(reply.latency),
                )
            }
            Err(message) => {
                // The target has been unreachable or overloaded for a whole retry budget:
                // every later request would wait out its own budget too.
                let stop = "a request was still failing when its retry budget ran out, \
                            so no further requests were sent";
                let tally = BatchTally {
                    stop: Some(stop.to_owned()),
                    ..BatchTally::failure(request.len(), message)
                };
                (tally, None)
            }
        };
        BatchDone {
            events: request.into_events(),
            tally,
            retries: exchange.retries,
            latency,
        }
    }
}

/// The driver's running totals.
struct Totals {
    /// The counts so far.
    summary: LoadSummary,
    /// Latency of successful requests, in microseconds.
    latency_micros: Histogram<u64>,
    /// Acknowledged/total on stderr; hidden unless `progress` is set.
    progress: ProgressBar,
}

impl Totals {
    fn new(opts: &LoadOptions, replay: Option<ReplayCost>) -> Result<Totals, LoadError> {
        let latency_micros = Histogram::new_with_bounds(1, LATENCY_MICROS_MAX, 3)
            .map_err(|e| LoadError::Client(format!("latency histogram: {e}")))?;
        Ok(Totals {
            summary: LoadSummary {
                seed: opts.seed,
                requested: opts.events,
                replay,
                ..LoadSummary::default()
            },
            latency_micros,
            progress: progress_bar(opts),
        })
    }

    fn record(
        &mut self,
        done: BatchDone,
        acked: &mut Option<AckedWriter>,
    ) -> Result<(), LoadError> {
        let tally = &done.tally;
        assert_eq!(tally.acked.len(), done.events.len(), "one outcome per item");
        if let Some(writer) = acked {
            for ((message_id, identity), _) in
                done.events.iter().zip(&tally.acked).filter(|(_, ok)| **ok)
            {
                writer.record(message_id, identity)?;
            }
        }
        let summary = &mut self.summary;
        summary.acknowledged += tally.acknowledged();
        summary.rejected += tally.rejected;
        summary.duplicates += tally.duplicates;
        summary.failed += tally.failed;
        summary.retried += u64::from(done.retries);
        if summary.first_error.is_none() {
            summary.first_error.clone_from(&tally.error);
        }
        if summary.first_rejection.is_none() {
            summary.first_rejection.clone_from(&tally.rejection);
        }
        if summary.stopped.is_none() {
            summary.stopped.clone_from(&tally.stop);
        }
        if let Some(latency) = done.latency {
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency_micros
                .saturating_record(micros.clamp(1, LATENCY_MICROS_MAX));
        }
        self.progress.set_position(summary.acknowledged);
        if summary.rejected + summary.failed + summary.retried > 0 {
            self.progress.set_message(format!(
                "rejected {} failed {} retried {}",
                summary.rejected, summary.failed, summary.retried
            ));
        }
        Ok(())
    }

    fn finish(mut self, elapsed: Duration) -> LoadSummary {
        self.progress.finish_and_clear();
        let s = &mut self.summary;
        assert_eq!(
            s.sent,
            s.acknowledged + s.rejected + s.failed,
            "every sent event is counted once"
        );
        s.elapsed = elapsed;
        s.latency = Latency::from_micros(&self.latency_micros);
        self.summary
    }
}

fn progress_bar(opts: &LoadOptions) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(opts.events), ProgressDrawTarget::stderr());
    let template =
        "{elapsed_precise} [{wide_bar}] {pos}/{len} acknowledged  {per_sec}  eta {eta}  {msg}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Now, in milliseconds since the Unix epoch.
fn unix_ms() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_out_of_range_are_named() {
        let good = LoadOptions::new("http://127.0.0.1:8080", "wk_123", 1_000);
        assert!(good.validate().is_ok());
        let cases: Vec<(LoadOptions, &str)> = vec![
            (
                LoadOptions {
                    target: "ftp://x".into(),
                    ..good.clone()
                },
                "--target",
            ),
            (
                LoadOptions {
                    write_key: " ".into(),
                    ..good.clone()
                },
                "--write-key",
            ),
            (
                LoadOptions {
                    events: 0,
                    ..good.clone()
                },
                "--events",
            ),
            (
                LoadOptions {
                    concurrency: 0,
                    ..good.clone()
                },
                "--concurrency",
            ),
            (
                LoadOptions {
                    batch_size: 2_501,
                    ..good.clone()
                },
                "--batch-size",
            ),
            (
                LoadOptions {
                    rate: Some(0.0),
                    ..good.clone()
                },
                "--rate",
            ),
            (
                LoadOptions {
                    rate: Some(f64::NAN),
                    ..good.clone()
                },
                "--rate",
            ),
        ];
        for (opts, option) in cases {
            let error = opts.validate().expect_err(option).to_string();
            assert!(error.contains(option), "{error}");
        }
        assert!(
            !format!("{good:?}").contains("wk_123"),
            "Debug hides the write key"
        );
    }
}
