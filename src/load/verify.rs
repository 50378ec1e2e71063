//! `tandem verify`: proves that every acknowledged event is stored exactly once.
//!
//! It reads the acknowledged-events file, looks up each distinct identity's profile
//! (`GET /v1/profiles/{identity}`), pages through each distinct profile's events once
//! (several identities may resolve to one profile after merges; profiles are keyed by
//! their internal `id`), and counts how often each acknowledged `messageId` appears.
//! Exactly once is the promise: zero means an acknowledged event was lost, two or more
//! that a retry or a merge stored it twice.
//!
//! Workers share the queue of identities, the set of profiles already claimed and the
//! counts behind `std::sync::Mutex`es: each is held only for a few map operations and
//! never across an `.await`, which is where a std mutex beats an async one.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use reqwest::header::AUTHORIZATION;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use super::LoadError;
use super::acked;
use super::catalogue::mix;
use super::client::{self, describe_reply, encode_path_segment};
use super::counts::Counts;
use super::run::{CONCURRENCY_MAX, DEFAULT_CONCURRENCY};

/// Events asked for per page (the server's largest page).
pub const EVENTS_PAGE_LIMIT: usize = 1_000;
/// Missing or duplicated ids listed in the report.
const SAMPLE_MAX: usize = 10;

/// What to check, and where.
#[derive(Clone)]
pub struct VerifyOptions {
    /// Base URL of a node, e.g. `http://127.0.0.1:8080`.
    pub target: String,
    /// The acknowledged-events file written by `tandem load --acked`.
    pub acked: PathBuf,
    /// An admin or read key (sent as `Authorization: Bearer`).
    pub key: String,
    /// Identities looked up at once (1..=[`CONCURRENCY_MAX`]).
    pub concurrency: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// CA certificate (PEM) of an `https://` target; `None`: only `http://` targets.
    pub ca_file: Option<PathBuf>,
}

impl VerifyOptions {
    /// Options with the defaults: concurrency 8, no progress bar.
    pub fn new(
        target: impl Into<String>,
        acked: impl Into<PathBuf>,
        key: impl Into<String>,
    ) -> VerifyOptions {
        VerifyOptions {
            target: target.into(),
            acked: acked.into(),
            key: key.into(),
            concurrency: DEFAULT_CONCURRENCY,
            progress: false,
            ca_file: None,
        }
    }

    fn validate(&self) -> Result<String, LoadError> {
        let base = client::base_url(&self.target)?;
        if self.key.trim().is_empty() {
            return Err(LoadError::InvalidOptions("--key must not be empty".into()));
        }
        if !(1..=CONCURRENCY_MAX).contains(&self.concurrency) {
            return Err(LoadError::InvalidOptions(format!(
                "--concurrency must be 1 to {CONCURRENCY_MAX}, not {}",
                self.concurrency
            )));
        }
        Ok(base)
    }
}

impl fmt::Debug for VerifyOptions {
    /// Like a derived `Debug`, but never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("target", &self.target)
            .field("acked", &self.acked)
            .field("key", &"<redacted>")
            .field("concurrency", &self.concurrency)
            .field("progress", &self.progress)
            .finish()
    }
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VerifyReport {
    /// Distinct acknowledged messageIds in the file.
    pub acknowledged: u64,
    /// Of those, stored exactly once.
    pub exactly_once: u64,
    /// Not stored at all.
    pub missing: u64,
    /// The first missing ids, in file order.
    pub missing_sample: Vec<String>,
    /// Stored more than once.
    pub duplicated: u64,
    /// The first duplicated ids with their counts, in file order.
    pub duplicated_sample: Vec<(String, u32)>,
    /// Distinct identities looked up.
    pub identities: u64,
    /// Identities with no profile.
    pub identities_without_profile: u64,
    /// Distinct profiles whose events were read.
    pub profiles: u64,
    /// Events read.
    pub events_scanned: u64,
    /// Requests retried.
    pub retried: u64,
    /// Wall-clock time of the check.
    pub elapsed: Duration,
}

impl VerifyReport {
    /// Whether every acknowledged event is stored exactly once.
    pub fn is_ok(&self) -> bool {
        self.missing == 0 && self.duplicated == 0
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, name: &str, value: fmt::Arguments<'_>| {
            writeln!(f, "  {name:<18}{value}")
        };
        let verdict = if self.is_ok() { "OK" } else { "FAILED" };
        writeln!(f, "verify: {verdict}")?;
        row(f, "acknowledged", format_args!("{}", self.acknowledged))?;
        row(f, "exactly once", format_args!("{}", self.exactly_once))?;
        row(f, "missing", format_args!("{}", self.missing))?;
        row(f, "duplicated", format_args!("{}", self.duplicated))?;
        row(
            f,
            "identities",
            format_args!(
                "{} ({} without a profile)",
                self.identities, self.identities_without_profile
            ),
        )?;
        row(f, "profiles", format_args!("{}", self.profiles))?;
        row(f, "events scanned", format_args!("{}", self.events_scanned))?;
        row(f, "retried", format_args!("{} requests", self.retried))?;
        row(
            f,
            "elapsed",
            format_args!("{:.2} s", self.elapsed.as_secs_f64()),
        )?;
        if !self.missing_sample.is_empty() {
            row(
                f,
                "first missing",
                format_args!("{}", self.missing_sample.join(", ")),
            )?;
        }
        if !self.duplicated_sample.is_empty() {
            let listed: Vec<String> = self
                .duplicated_sample
                .iter()
                .map(|(id, n)| format!("{id} (×{n})"))
                .collect();
            row(f, "first duplicated", format_args!("{}", listed.join(", ")))?;
        }
        Ok(())
    }
}

/// Checks that every event in the acknowledged-events file is stored exactly once.
pub async fn verify(opts: &VerifyOptions) -> Result<VerifyReport, LoadError> {
    let base = opts.validate()?;
    let started = Instant::now();
    let mut counts = Counts::default();
    let mut identities = BTreeSet::new();
    acked::for_each(&opts.acked, |message_id, identity| {
        counts.expect(message_id);
        if !identities.contains(identity) {
            identities.insert(identity.to_owned());
        }
    })?;
    let checker = Arc::new(Checker {
        http: client::http_client(opts.ca_file.as_deref())?,
        base,
        auth: client::bearer_auth(&opts.key),
        progress: progress_bar(opts.progress, identities.len() as u64),
        identities: identities.len() as u64,
        queue: Mutex::new(identities.into_iter()),
        claimed: Mutex::new(HashSet::new()),
        counts: Mutex::new(counts),
        without_profile: AtomicU64::new(0),
        events_scanned: AtomicU64::new(0),
        retried: AtomicU64::new(0),
        requests: AtomicU64::new(0),
    });
    let mut workers = JoinSet::new();
    for _ in 0..opts.concurrency {
        workers.spawn(Arc::clone(&checker).work());
    }
    // The first error ends the check; dropping the JoinSet aborts the other workers.
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(result) => result?,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
    checker.progress.finish_and_clear();
    checker.report(opts, started.elapsed())
}

/// State shared by the verify workers.
struct Checker {
    /// Shared connection pool.
    http: reqwest::Client,
    /// Base URL without a trailing slash.
    base: String,
    /// `Bearer <key>`.
    auth: String,
    /// Identities done, on stderr if asked for.
    progress: ProgressBar,
    /// Distinct identities in the file.
    identities: u64,
    /// Identities not yet looked up.
    queue: Mutex<std::collections::btree_set::IntoIter<String>>,
    /// Profile ids whose events some worker has read or is reading.
    claimed: Mutex<HashSet<u64>>,
    /// Occurrences of each acknowledged messageId.
    counts: Mutex<Counts>,
    /// Identities that resolved to no profile.
    without_profile: AtomicU64,
    /// Events read.
    events_scanned: AtomicU64,
    /// Retries, summed over requests.
    retried: AtomicU64,
    /// Requests made, to seed each request's retry jitter differently.
    requests: AtomicU64,
}

/// The part of `GET /v1/profiles/{identity}` the checker needs.
#[derive(Deserialize)]
struct ProfileRef {
    id: u64,
}

/// One page of `GET /v1/profiles/{identity}/events`, newest first.
#[derive(Deserialize)]
struct EventsPage {
    events: Vec<EventRef>,
    next_before: Option<u64>,
}

/// The part of a stored event the checker needs.
#[derive(Deserialize)]
struct EventRef {
    #[serde(rename = "messageId")]
    message_id: Option<String>,
}

/// A poisoned lock only means another worker panicked, which is re-raised anyway; the
/// data under it (counters and sets) is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Checker {
    async fn work(self: Arc<Self>) -> Result<(), LoadError> {
        loop {
            let next = lock(&self.queue).next();
            let Some(identity) = next else { return Ok(()) };
            self.check_identity(&identity).await?;
            self.progress.inc(1);
        }
    }

    async fn check_identity(&self, identity: &str) -> Result<(), LoadError> {
        let profile_url = format!(
            "{}/v1/profiles/{}",
            self.base,
            encode_path_segment(identity)
        );
        let Some(profile) = self.get::<ProfileRef>(&profile_url).await? else {
            self.without_profile.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        if !lock(&self.claimed).insert(profile.id) {
            return Ok(());
        }
        let mut before: Option<u64> = None;
        loop {
            let mut url = format!("{profile_url}/events?limit={EVENTS_PAGE_LIMIT}");
            if let Some(before) = before {
                url.push_str(&format!("&before={before}"));
            }
            let page: EventsPage =
                self.get(&url)
                    .await?
                    .ok_or_else(|| LoadError::UnexpectedReply {
                        url: url.clone(),
                        message: "the profile disappeared while its events were being read".into(),
                    })?;
            self.events_scanned
                .fetch_add(page.events.len() as u64, Ordering::Relaxed);
            {
                let mut counts = lock(&self.counts);
                for event in &page.events {
                    if let Some(id) = &event.message_id {
                        counts.observe(id);
                    }
                }
            }
            match (page.next_before, before) {
                (None, _) => return Ok(()),
                (Some(next), Some(previous)) if next >= previous => {
                    return Err(LoadError::UnexpectedReply {
                        url,
                        message: format!(
                            "next_before {next} does not move back from {previous}; paging would never end"
                        ),
                    });
                }
                (Some(next), _) => before = Some(next),
            }
        }
    }

    /// GETs `url` as JSON, with retries; `None` on 404 `profile_not_found`.
    async fn get<T: DeserializeOwned>(&self, url: &str) -> Result<Option<T>, LoadError> {
        let request_number = self.requests.fetch_add(1, Ordering::Relaxed);
        let mut jitter = StdRng::seed_from_u64(mix(request_number));
        let build = || self.http.get(url).header(AUTHORIZATION, &self.auth);
        let exchange = client::send_with_retries(build, &mut jitter).await;
        self.retried
            .fetch_add(u64::from(exchange.retries), Ordering::Relaxed);
        let unexpected = |message: String| LoadError::UnexpectedReply {
            url: url.to_owned(),
            message,
        };
        let reply = exchange.result.map_err(|message| LoadError::Unavailable {
            url: url.to_owned(),
            message,
        })?;
        match reply.status {
            200 => serde_json::from_slice(&reply.body)
                .map(Some)
                .map_err(|e| unexpected(e.to_string())),
            404 if is_profile_not_found(&reply.body) => Ok(None),
            401 | 403 => Err(LoadError::Unauthorized {
                url: url.to_owned(),
                message: describe_reply(reply.status, &reply.body),
            }),
            status => Err(unexpected(describe_reply(status, &reply.body))),
        }
    }

    fn report(&self, opts: &VerifyOptions, elapsed: Duration) -> Result<VerifyReport, LoadError> {
        let counts = lock(&self.counts);
        let mut report = VerifyReport {
            identities: self.identities,
            identities_without_profile: self.without_profile.load(Ordering::Relaxed),
            profiles: lock(&self.claimed).len() as u64,
            events_scanned: self.events_scanned.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            elapsed,
            ..VerifyReport::default()
        };
        for count in counts.values() {
            report.acknowledged += 1;
            match count {
                0 => report.missing += 1,
                1 => report.exactly_once += 1,
                _ => report.duplicated += 1,
            }
        }
        // A second pass over the file lists the first problems in file order.
        if !report.is_ok() {
            let mut listed = HashSet::new();
            acked::for_each(&opts.acked, |message_id, _| {
                let count = counts.get(message_id);
                if count == 1 || !listed.insert(message_id.to_owned()) {
                    return;
                }
                if count == 0 && report.missing_sample.len() < SAMPLE_MAX {
                    report.missing_sample.push(message_id.to_owned());
                } else if count > 1 && report.duplicated_sample.len() < SAMPLE_MAX {
                    report
                        .duplicated_sample
                        .push((message_id.to_owned(), count));
                }
            })?;
        }
        Ok(report)
    }
}

/// Whether a 404 body is the profile API's "no such profile" (and not, say, a server
/// without the profile API at all, which must not pass for "every event missing").
fn is_profile_not_found(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Code {
        code: String,
    }
    serde_json::from_slice::<Code>(body).is_ok_and(|c| c.code == "profile_not_found")
}

fn progress_bar(enabled: bool, identities: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(identities), ProgressDrawTarget::stderr());
    let template = "{elapsed_precise} [{wide_bar}] {pos}/{len} identities  {per_sec}  eta {eta}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_profile_not_found_means_no_profile() {
        assert!(is_profile_not_found(
            br#"{"code":"profile_not_found","message":"no profile"}"#
        ));
        assert!(!is_profile_not_found(
            br#"{"code":"not_found","message":"no route"}"#
        ));
        assert!(!is_profile_not_found(b"Not Found"));
    }

    #[test]
    fn the_report_lists_what_is_wrong() {
        let clean = VerifyReport {
            acknowledged: 3,
            exactly_once: 3,
            identities: 2,
            profiles: 1,
            events_scanned: 3,
            elapsed: Duration::from_millis(1_500),
            ..VerifyReport::default()
        };
        assert!(clean.is_ok());
        let text = clean.to_string();
        assert!(text.starts_with("verify: OK\n"), "{text}");
        assert!(
            text.contains("  identities        2 (0 without a profile)\n"),
            "{text}"
        );
        assert!(!text.contains("first missing"));

        let broken = VerifyReport {
            exactly_once: 1,
            missing: 1,
            missing_sample: vec!["m2".into()],
            duplicated: 1,
            duplicated_sample: vec![("m3".into(), 2)],
            ..clean
        };
        assert!(!broken.is_ok());
        let text = broken.to_string();
        for line in [
            "verify: FAILED\n",
            "  first missing     m2\n",
            "  first duplicated  m3 (×2)\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }
}
