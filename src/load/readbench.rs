//! `tandem read-bench`: profile read latency under whatever else the node is doing.
//!
//! It samples identities from an acknowledged-events file (written by `tandem load
//! --acked`), then `concurrency` readers fetch random profiles with
//! `GET /v1/profiles/{identity}` back to back (or at `--rate` reads per second in all) for
//! `duration`, in the read mode asked for with `--consistency` and `--after`, and reports
//! the latency distribution. Run it
//! while a `tandem load` ingests to measure reads during ingestion.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::LoadError;
use super::{acked, client};

/// Most identities kept from the acked file (a uniform sample when it has more).
pub const SAMPLE_MAX: usize = 200_000;

/// Options of a read benchmark.
#[derive(Debug, Clone)]
pub struct ReadBenchOptions {
    /// Base URL of a node.
    pub target: String,
    /// A read key or the admin key.
    pub key: String,
    /// An acknowledged-events file to take identities from.
    pub acked: PathBuf,
    /// How long to read.
    pub duration: Duration,
    /// Readers in parallel.
    pub concurrency: usize,
    /// The read mode asked for (`?consistency=`), or the node's default.
    pub consistency: Option<String>,
    /// A log position every read must reflect (`?after=`).
    pub after: Option<u64>,
    /// Reads per second in all, spread evenly over the readers; `None`: back to back.
    pub rate: Option<f64>,
    /// CA certificate (PEM) of an `https://` target; `None`: only `http://` targets.
    pub ca_file: Option<PathBuf>,
    /// Read this path (e.g. `/health/live`) instead of profiles: the latency of the HTTP
    /// path alone, to set beside the profile reads' (no identities are sampled).
    pub path: Option<String>,
}

/// What a read benchmark measured.
#[derive(Debug)]
pub struct ReadBenchReport {
    /// Identities sampled.
    pub identities: usize,
    /// Reads answered 200.
    pub ok: u64,
    /// Reads answered otherwise (or not at all).
    pub errors: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Latency of successful reads, microseconds.
    pub latency_us: Histogram<u64>,
    /// The first error seen.
    pub first_error: Option<String>,
}

/// Runs the benchmark.
pub async fn run(opts: &ReadBenchOptions) -> Result<ReadBenchReport, LoadError> {
    let base = client::base_url(&opts.target)?;
    let identities = Arc::new(match &opts.path {
        Some(_) => vec![String::new()],
        None => sample(opts)?,
    });
    if identities.is_empty() {
        return Err(LoadError::InvalidOptions(format!(
            "{} has no acknowledged events to take identities from",
            opts.acked.display()
        )));
    }
    let http = client::http_client(opts.ca_file.as_deref())?;
    let auth = client::bearer_auth(&opts.key);
    let query = Arc::new(read_query(opts));
    let shared = Arc::new(Mutex::new(ReadBenchReport {
        identities: identities.len(),
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)
            .map_err(|e| LoadError::InvalidOptions(e.to_string()))?,
        first_error: None,
    }));
    let started = Instant::now();
    let deadline = started + opts.duration;
    let mut readers = Vec::new();
    let concurrency = opts.concurrency.max(1);
    // Each reader's pace, when a rate is asked for.
    let interval = opts
        .rate
        .filter(|rate| *rate > 0.0)
        .map(|rate| Duration::from_secs_f64(concurrency as f64 / rate));
    for reader in 0..concurrency {
        let (http, auth, base) = (http.clone(), auth.clone(), base.clone());
        let (identities, shared) = (Arc::clone(&identities), Arc::clone(&shared));
        let query = Arc::clone(&query);
        let path = opts.path.clone();
        readers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(reader as u64);
            // Readers start spread over one interval so their reads do not bunch up.
            let mut next =
                interval.map(|i| started + i.mul_f64(reader as f64 / concurrency as f64));
            while Instant::now() < deadline {
                if let (Some(at), Some(interval)) = (next.as_mut(), interval) {
                    tokio::time::sleep_until((*at).into()).await;
                    // A reader that fell behind does not burst to catch up.
                    *at = (*at + interval).max(Instant::now());
                }
                let identity = &identities[rng.random_range(0..identities.len())];
                let url = match &path {
                    Some(path) => format!("{base}{path}"),
                    None => format!(
                        "{base}/v1/profiles/{}{query}",
                        client::encode_path_segment(identity)
                    ),
                };
                let sent = Instant::now();
                let result = http.get(&url).header("authorization", &auth).send().await;
                let outcome = match result {
                    Ok(response) if response.status().is_success() => response
                        .bytes()
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Ok(response) => Err(format!("{identity}: status {}", response.status())),
                    Err(error) => Err(format!("{identity}: {error}")),
                };
                let micros = sent.elapsed().as_micros() as u64;
                let mut report = shared.lock().unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Ok(()) => {
                        report.ok += 1;
                        let _ = report.latency_us.record(micros.max(1));
                    }
                    Err(error) => {
                        report.errors += 1;
                        report.first_error.get_or_insert(error);
                    }
                }
            }
        }));
    }
    for reader in readers {
        let _ = reader.await;
    }
    let mut report = Arc::try_unwrap(shared)
        .map_err(|_| LoadError::InvalidOptions("readers still running".into()))?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The query string of every read: `?consistency=&after=` as asked, or empty.
fn read_query(opts: &ReadBenchOptions) -> String {
    let mut pairs = Vec::new();
    if let Some(mode) = &opts.consistency {
        pairs.push(format!("consistency={mode}"));
    }
    if let Some(after) = opts.after {
        pairs.push(format!("after={after}"));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

/// A uniform sample (reservoir) of distinct identities from the acked file.
fn sample(opts: &ReadBenchOptions) -> Result<Vec<String>, LoadError> {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<String> = Vec::new();
    let mut distinct = 0_usize;
    acked::for_each(&opts.acked, |_, identity| {
        if seen.len() < SAMPLE_MAX * 4 && !seen.insert(identity.to_owned()) {
            return;
        }
        distinct += 1;
        if kept.len() < SAMPLE_MAX {
            kept.push(identity.to_owned());
        } else {
            let slot = rng.random_range(0..distinct);
            if slot < SAMPLE_MAX {
                kept[slot] = identity.to_owned();
            }
        }
    })?;
    Ok(kept)
}

impl fmt::Display for ReadBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |q: f64| self.latency_us.value_at_quantile(q) as f64 / 1000.0;
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(f, "read benchmark")?;
        writeln!(f, "  identities      {} sampled", self.identities)?;
        writeln!(
            f,
            "  reads           {} ok, {} errors",
            self.ok, self.errors
        )?;
        writeln!(f, "  elapsed         {:.2} s", seconds)?;
        writeln!(f, "  reads/s         {:.0}", self.ok as f64 / seconds)?;
        write!(
            f,
            "  latency         p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
            ms(0.5),
            ms(0.99),
            ms(0.999),
            self.latency_us.max() as f64 / 1000.0
        )?;
        if let Some(error) = &self.first_error {
            write!(f, "\n  first error     {error}")?;
        }
        Ok(())
    }
}
