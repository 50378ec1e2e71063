//! Supervision: every CDP service runs on its own worker thread, consuming the change feed
//! from its own cursor, watched by a supervisor that restarts it when it panics, replaces
//! it when it hangs, and reports it degraded while it lags — without ingestion, profiles
//! or the other services noticing.
//!
//! Invariants:
//! - **Exactly once**: a worker commits its derived state and its new cursor atomically
//!   ([`super::db::ServiceDb::commit`]); a restarted worker resumes from the committed
//!   cursor, so nothing is skipped and nothing applied twice.
//! - **Fencing**: a hung worker is replaced by a new one with a higher generation. Commits
//!   happen under a per-service lock after checking the generation, so a hung worker that
//!   wakes up later can never commit over its successor.
//! - **Bounded**: each batch reads at most [`BATCH_MAX`] feed records (plus the rest of
//!   one log entry: batches hold whole entries); restarts back off exponentially up to
//!   [`BACKOFF_MAX`].
//! - **Deterministic**: services take time from the feed, never from this module's clock,
//!   which only supervises (backoff, slow and hung batches); see [`Service`]. Replicas
//!   whose service is at the same cursor hold the same state ([`Supervisor::hashes`]).
//! - **Snapshots**: every service's state travels in Raft snapshots
//!   ([`Supervisor::export_state`], [`Supervisor::import_state`]), so a new node gets
//!   derived state the feed no longer has (it is subject to retention). An import fences
//!   the running worker exactly as a hang does, replaces the database, then starts a
//!   fresh worker from the imported cursor.
//!
//! Why an imported state is valid whatever its cursor: the feed is a deterministic
//! function of the committed log (every replica numbers the same entries the same way),
//! so a service state at cursor `c` is a state this replica's service could itself have
//! reached, once its own feed reaches `c`. If `c` is behind the node's feed head, the
//! worker processes the rest from the feed; if `c` were ahead, the worker would wait for
//! the store to apply up to `c` and go on from there — the entries up to `c` are already
//! in the state and are not applied twice. Snapshots take the services' views before the
//! store's (see `crate::cluster::state_machine`), so in practice `c` is at or behind the
//! store's feed head: the regime services always run in. What a service reads from the
//! store besides the feed it reads as of the entry it is processing (segments bound the
//! event index by the entry's position), so a store ahead of its cursor changes nothing.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::db::{ServiceDb, ServiceError, Writes};
use crate::store::Store;
use crate::store::read::{FeedItem, Reader};

mod handover;
mod progress;
mod yielding;

pub use handover::{ServiceHash, ServicesExport, combined_hash, records_hash};

/// Most feed entries one batch processes.
pub const BATCH_MAX: usize = 512;
/// A worker busy on one batch for longer than this without getting CPU (or having spent
/// this much CPU on it) is considered hung and replaced; see [`progress`].
pub const HANG_TIMEOUT: Duration = Duration::from_secs(3);
/// A worker busy on one batch for longer than this is reported degraded (slow).
pub const SLOW_BATCH: Duration = Duration::from_secs(1);
/// How long a degraded service must look healthy before it is reported ok again.
pub const RECOVERY_HOLD: Duration = Duration::from_secs(1);
/// A service further behind the feed head than this many entries is reported degraded.
pub const LAG_DEGRADED: u64 = 20_000;
/// First restart delay after a crash; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often the supervisor looks at its workers.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// How long an idle worker waits before looking at the feed again.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// A CDP service: consumes feed entries into its own derived state.
///
/// **Determinism.** A service's state must be a function of the feed it has processed and
/// nothing else — not the node's wall clock, not how the supervisor cut the feed into
/// batches, not how far the node's state has moved past the entries being processed — so
/// every replica holds the same derived state at the same cursor (the services hash in
/// `GET /v1/admin/state-hash` checks it). Time comes from the feed (`FeedItem::at_ms`, the
/// state clock as of each entry; ticks through the log carry it forward when no events
/// arrive); work that is not driven by an event (sweeps) advances a fixed amount per log
/// entry.
pub trait Service: Send + 'static {
    /// Applies `items` (whole log entries, in feed order), staging every write in
    /// `writes`. Returns how many of them it applied: all, or fewer — ending at a log entry
    /// boundary — when it stopped early to keep a batch well under [`HANG_TIMEOUT`]; the
    /// supervisor commits the cursor after the last one applied and hands over the rest
    /// next time.
    fn process(
        &mut self,
        db: &ServiceDb,
        state: &Reader<'_>,
        items: &[FeedItem],
        writes: &mut Writes,
    ) -> Result<usize, ServiceError>;

    /// Whether the service has work that advances only as log entries arrive (a segment
    /// sweep, say): the leader then proposes ticks more often, so it progresses while no
    /// events arrive. Asked after every commit.
    fn wants_ticks(&mut self, _db: &ServiceDb) -> Result<bool, ServiceError> {
        Ok(false)
    }

    /// The layout version of the records this service writes. Records stamped with another
    /// (or, for a layout above 1, with none: written before layouts were stamped) are
    /// cleared when a worker starts, and the state is rebuilt from the feed — derived
    /// state is never misread.
    fn layout(&self) -> u32 {
        1
    }
}

/// Makes a fresh service instance (after a crash the old one is gone).
pub type Factory = Box<dyn Fn() -> Box<dyn Service> + Send + Sync>;

/// Opens a service's database. Called once, by the service's first worker, on its own
/// thread and at its priority ([`SERVICE_NICE`], which the storage engine's background
/// threads inherit), so a node listens before its services' databases have replayed their
/// journals; until then [`Supervisor::db`] answers `None` and the service reports itself
/// degraded ("opening its database").
pub type Opener = Box<dyn Fn() -> Result<ServiceDb, ServiceError> + Send + Sync>;

/// A service's status reason while its database opens.
const OPENING: &str = "opening its database";

/// Longest a request for a service's data waits for its database to open (after a
/// restart, [`Supervisor::wait_open`]) before it is answered 503.
pub const REQUEST_OPEN_WAIT: Duration = Duration::from_secs(2);

/// Longest a snapshot build, install or state hash waits for a service's database to open
/// (journal replay is bounded by `crate::store::JOURNAL_BYTES_MAX`, seconds at most).
pub const OPEN_WAIT_MAX: Duration = Duration::from_secs(300);

/// An injected fault (tests and drills; see `POST /v1/admin/faults/services`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// Behave.
    None,
    /// Panic on the next batch.
    Panic,
    /// Block inside the next batch until the fault is cleared.
    Hang,
    /// Take an extra 1.2 s over every batch (past [`SLOW_BATCH`]).
    Slow,
    /// Fail every batch with an error until cleared (an error loop: crash, restart with
    /// backoff, crash again).
    Error,
}

impl Fault {
    fn from_u8(value: u8) -> Fault {
        match value {
            1 => Fault::Panic,
            2 => Fault::Hang,
            3 => Fault::Slow,
            4 => Fault::Error,
            _ => Fault::None,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Fault::None => 0,
            Fault::Panic => 1,
            Fault::Hang => 2,
            Fault::Slow => 3,
            Fault::Error => 4,
        }
    }
}

/// Health of one service, as reported by `/health/ready` and `/v1/admin/services`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// The service's name.
    pub name: &'static str,
    /// `ok` or `degraded`.
    pub status: &'static str,
    /// Why it is degraded.
    pub reason: Option<String>,
    /// Feed position processed.
    pub cursor: u64,
    /// Feed entries not yet processed.
    pub lag: u64,
    /// The last feed position when the status was taken.
    pub feed_head: u64,
    /// Restarts since the node started.
    pub restarts: u64,
    /// Time its workers stepped aside for ingest since the node started, ms (see
    /// [`yielding`]).
    pub yielded_ms: u64,
    /// The cursor of the state last imported from a Raft snapshot since the node started,
    /// if any.
    pub imported_cursor: Option<u64>,
    /// The injected fault, if any.
    pub fault: Fault,
}

/// Labels of a per-service measurement.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ServiceLabel {
    /// The service's name.
    pub service: &'static str,
}

/// A histogram family's constructor (a plain fn, so the family type can be named).
pub type HistogramFn = fn() -> prometheus_client::metrics::histogram::Histogram;

/// Durations of the batches each service processed and committed, for the node's
/// registry (`tandem_service_batch_duration_seconds`).
pub type BatchDurations = prometheus_client::metrics::family::Family<
    ServiceLabel,
    prometheus_client::metrics::histogram::Histogram,
    HistogramFn,
>;

fn batch_histogram() -> prometheus_client::metrics::histogram::Histogram {
    // 0.1 ms … ~3.3 s: a hung batch (over HANG_TIMEOUT) is replaced, not measured.
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
    )
}

/// What workers and the supervisor share about one service.
struct Shared {
    name: &'static str,
    /// Seconds per batch processed and committed by this service's workers.
    batch_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Set once, by the worker that opened it ([`open_db`]).
    db: OnceLock<ServiceDb>,
    opener: Opener,
    /// Held while opening, so a fresh worker (after an import or a crash) never opens the
    /// database a second time beside one still opening it.
    open_lock: Mutex<()>,
    /// The last failure to open, if the database is not open; waiters read it.
    open_failure: Mutex<Option<String>>,
    /// Notified when an open succeeds or fails, for blocking waiters ([`wait_db`]: snapshot
    /// builds and imports, the state hash).
    open_done: Condvar,
    /// True once the database is open, for async waiters ([`Supervisor::wait_open`]:
    /// requests), which must not hold a thread while they wait.
    opened: tokio::sync::watch::Sender<bool>,
    store: Arc<Store>,
    factory: Factory,
    /// The worker allowed to commit.
    generation: AtomicU64,
    /// Held while checking the generation and committing.
    commit_lock: Mutex<()>,
    /// When the current batch started (ms since an epoch of the supervisor), 0 when idle.
    busy_since_ms: AtomicU64,
    /// The current worker's thread id (0: not started yet), whose CPU clock tells a hung
    /// batch from a starved one.
    worker_tid: AtomicI32,
    cursor: AtomicU64,
    /// Nanoseconds its workers slept to leave the CPU to ingest ([`yielding`]).
    yielded_ns: AtomicU64,
    /// What the service last said [`Service::wants_ticks`].
    wants_ticks: AtomicBool,
    fault: AtomicU8,
    state: Mutex<WorkerState>,
    epoch: Instant,
}

struct WorkerState {
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    degraded: Option<String>,
    restarts: u64,
    backoff: Duration,
    restart_at: Option<Instant>,
    lag: u64,
    /// Since when a degraded service has looked healthy.
    healthy_since: Option<Instant>,
    /// The cursor of the last state imported from a snapshot.
    imported_cursor: Option<u64>,
    /// The current batch's CPU use, as the supervisor saw it.
    progress: progress::Progress,
}

/// Supervises a set of services.
pub struct Supervisor {
    services: Vec<Arc<Shared>>,
    /// Every service's batch durations.
    batch_durations: BatchDurations,
}

impl Supervisor {
    /// Starts every service's worker (which first opens its database: see [`Opener`]) and
    /// the watchdog task.
    pub fn start(
        store: Arc<Store>,
        services: Vec<(&'static str, Opener, Factory)>,
    ) -> Arc<Supervisor> {
        let batch_durations = BatchDurations::new_with_constructor(batch_histogram);
        let services: Vec<Arc<Shared>> = services
            .into_iter()
            .map(|(name, opener, factory)| {
                Arc::new(Shared {
                    name,
                    batch_seconds: batch_durations
                        .get_or_create_owned(&ServiceLabel { service: name }),
                    db: OnceLock::new(),
                    opener,
                    open_lock: Mutex::new(()),
                    open_failure: Mutex::new(None),
                    open_done: Condvar::new(),
                    opened: tokio::sync::watch::Sender::new(false),
                    store: Arc::clone(&store),
                    factory,
                    generation: AtomicU64::new(0),
                    commit_lock: Mutex::new(()),
                    busy_since_ms: AtomicU64::new(0),
                    worker_tid: AtomicI32::new(0),
                    cursor: AtomicU64::new(0),
                    yielded_ns: AtomicU64::new(0),
                    wants_ticks: AtomicBool::new(false),
                    fault: AtomicU8::new(0),
                    state: Mutex::new(WorkerState {
                        thread: None,
                        degraded: None,
                        restarts: 0,
                        backoff: BACKOFF_MIN,
                        restart_at: None,
                        lag: 0,
                        healthy_since: None,
                        imported_cursor: None,
                        progress: progress::Progress::default(),
                    }),
                    epoch: Instant::now(),
                })
            })
            .collect();
        for shared in &services {
            spawn_worker(shared);
        }
        let supervisor = Arc::new(Supervisor {
            services,
            batch_durations,
        });
        let watched = Arc::clone(&supervisor);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                for shared in &watched.services {
                    watch(shared);
                }
            }
        });
        supervisor
    }

    /// Every service's batch durations (shared with the workers), for the node's metrics.
    pub fn batch_durations(&self) -> &BatchDurations {
        &self.batch_durations
    }

    /// Every service's status.
    pub fn statuses(&self) -> Vec<ServiceStatus> {
        self.services.iter().map(|s| status(s)).collect()
    }

    /// One service's status.
    pub fn status(&self, name: &str) -> Option<ServiceStatus> {
        self.services
            .iter()
            .find(|s| s.name == name)
            .map(|s| status(s))
    }

    /// One service's database, for reads: `None` for an unknown service, or while its
    /// database is still opening.
    pub fn db(&self, name: &str) -> Option<&ServiceDb> {
        self.services
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.db.get())
    }

    /// Waits, up to `max`, for service `name`'s database to be open (it opens after the
    /// node starts: see [`Opener`]); returns whether it is. For requests that read a
    /// service's data: a node just started answers them a moment later instead of 503.
    pub async fn wait_open(&self, name: &str, max: Duration) -> bool {
        let Some(shared) = self.services.iter().find(|s| s.name == name) else {
            return false;
        };
        // Every request for a service's data comes here: no timer once it is open.
        if shared.db.get().is_some() {
            return true;
        }
        let mut opened = shared.opened.subscribe();
        tokio::time::timeout(max, opened.wait_for(|open| *open))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// Injects (or clears) a fault. Returns false for an unknown service.
    pub fn set_fault(&self, name: &str, fault: Fault) -> bool {
        match self.services.iter().find(|s| s.name == name) {
            Some(shared) => {
                shared.fault.store(fault.to_u8(), Ordering::Release);
                tracing::warn!(service = name, ?fault, "fault injection");
                true
            }
            None => false,
        }
    }

    /// Whether some service has work that advances only as log entries arrive, so the
    /// leader should tick more often ([`Service::wants_ticks`]).
    pub fn wants_ticks(&self) -> bool {
        self.services
            .iter()
            .any(|s| s.wants_ticks.load(Ordering::Acquire))
    }

    /// The services' names.
    pub fn names(&self) -> Vec<&'static str> {
        self.services.iter().map(|s| s.name).collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The service's database, opened by the calling worker if no worker has yet (see
/// [`Opener`]). A failure is kept for waiters ([`wait_db`]) and returned; the supervisor
/// then restarts the worker with backoff, which tries again.
fn open_db(shared: &Shared) -> Result<&ServiceDb, String> {
    let _opening = lock(&shared.open_lock);
    if let Some(db) = shared.db.get() {
        return Ok(db);
    }
    let started = Instant::now();
    // A panic in the opener is a failure like any other: recorded, so waiters do not wait
    // for an open that will not finish.
    let opened = catch_unwind(AssertUnwindSafe(|| (shared.opener)()))
        .unwrap_or_else(|panic| Err(ServiceError::Storage(panic_message(&panic))));
    let outcome = match opened {
        Ok(db) => {
            tracing::info!(
                service = shared.name,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "service database open"
            );
            let db = shared.db.get_or_init(|| db);
            // Set under the waiters' lock, after the database: a waiter that found neither
            // holds this lock until its wait begins, so it cannot miss the notification.
            *lock(&shared.open_failure) = None;
            shared.opened.send_replace(true);
            Ok(db)
        }
        Err(error) => {
            let reason = format!("cannot open its database: {error}");
            *lock(&shared.open_failure) = Some(reason.clone());
            Err(reason)
        }
    };
    shared.open_done.notify_all();
    outcome
}

/// Waits for the service's database to be opened by its worker; fails at once if the
/// last attempt failed, and after [`OPEN_WAIT_MAX`].
fn wait_db(shared: &Shared) -> Result<&ServiceDb, ServiceError> {
    let deadline = Instant::now() + OPEN_WAIT_MAX;
    let mut failure = lock(&shared.open_failure);
    loop {
        if let Some(db) = shared.db.get() {
            return Ok(db);
        }
        if let Some(reason) = failure.as_ref() {
            return Err(not_open(shared.name, reason));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(not_open(
                shared.name,
                &format!("still opening after {OPEN_WAIT_MAX:?}"),
            ));
        }
        // Slices of 100 ms only keep the deadline: the outcome is published under this
        // lock before the notification (see `open_db`), so none is missed.
        failure = shared
            .open_done
            .wait_timeout(failure, left.min(Duration::from_millis(100)))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

fn not_open(name: &str, reason: &str) -> ServiceError {
    ServiceError::Storage(format!("service {name}'s database is not open: {reason}"))
}

/// The degraded reason of a service `lag` feed entries behind (over [`LAG_DEGRADED`]).
fn lagging(lag: u64) -> String {
    format!("lagging {lag} feed entries behind")
}

fn status(shared: &Shared) -> ServiceStatus {
    // Read the cursor before the head, so `lag` is never understated.
    let cursor = shared.cursor.load(Ordering::Acquire);
    let head = shared.store.reader().feed_head().unwrap_or(0);
    let lag = head.saturating_sub(cursor);
    let state = lock(&shared.state);
    // The watchdog updates `degraded` every tick (100 ms). Whether the database is open, and
    // how far behind the service is, are known now: so a service does not read `ok` in the
    // tick after a start, or after its database opened, while it is far behind.
    let reason = match (&state.degraded, shared.db.get().is_some()) {
        (Some(reason), true) if reason.starts_with(OPENING) => None,
        (None, false) => Some(OPENING.to_owned()),
        (reason, _) => reason.clone(),
    }
    .or_else(|| (lag > LAG_DEGRADED).then(|| lagging(lag)));
    ServiceStatus {
        name: shared.name,
        status: if reason.is_some() { "degraded" } else { "ok" },
        reason,
        cursor,
        lag,
        feed_head: head,
        restarts: state.restarts,
        yielded_ms: shared.yielded_ns.load(Ordering::Relaxed) / 1_000_000,
        imported_cursor: state.imported_cursor,
        fault: Fault::from_u8(shared.fault.load(Ordering::Acquire)),
    }
}

fn spawn_worker(shared: &Arc<Shared>) {
    let generation = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
    let worker = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name(format!("tandem-svc-{}", shared.name))
        .spawn(move || {
            lower_priority(worker.name);
            // SAFETY: gettid takes nothing and returns the calling thread's id.
            worker
                .worker_tid
                .store(unsafe { libc::gettid() }, Ordering::Release);
            catch_unwind(AssertUnwindSafe(|| run(&worker, generation)))
                .unwrap_or_else(|panic| Err(panic_message(&panic)))
        });
    let mut state = lock(&shared.state);
    match spawned {
        Ok(handle) => state.thread = Some(handle),
        Err(error) => {
            state.degraded = Some(format!("cannot start a worker thread: {error}"));
            state.restart_at = Some(Instant::now() + state.backoff);
        }
    }
}

/// Nice value of service worker threads. Ingestion and reads run at the default (0); a
/// service at 10 gets about a tenth of a contended core, so under saturating ingest the
/// services lag (and say so) instead of taking CPU from acknowledgements, and catch up as
/// soon as there is room.
pub const SERVICE_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to [`SERVICE_NICE`] (Linux: a nice
/// value is per thread). A failure only costs priority, so it is logged, not fatal.
fn lower_priority(name: &str) {
    // SAFETY: gettid and setpriority take and return plain integers; PRIO_PROCESS with a
    // thread id changes only that thread.
    let outcome = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, SERVICE_NICE)
    };
    if outcome != 0 {
        tracing::warn!(service = name, error = %std::io::Error::last_os_error(), "could not lower the service thread's priority");
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        format!("panicked: {text}")
    } else if let Some(text) = panic.downcast_ref::<String>() {
        format!("panicked: {text}")
    } else {
        "panicked".into()
    }
}

/// The supervisor's look at one service: crashed → restart with backoff; hung → fence it
/// off and start a successor; lagging → degraded; caught up and running → ok.
fn watch(shared: &Arc<Shared>) {
    let head = shared.store.reader().feed_head().unwrap_or(0);
    let cursor = shared.cursor.load(Ordering::Acquire);
    let busy_since = shared.busy_since_ms.load(Ordering::Acquire);
    let now = shared.epoch.elapsed().as_millis() as u64;
    let mut state = lock(&shared.state);
    state.lag = head.saturating_sub(cursor);
    if state.thread.as_ref().is_some_and(|t| t.is_finished()) {
        let outcome = state.thread.take().map(|t| t.join());
        let reason = match outcome {
            Some(Ok(Err(reason))) => reason,
            Some(Err(_)) => "panicked".into(),
            _ => "stopped".into(),
        };
        tracing::error!(service = shared.name, %reason, backoff_ms = state.backoff.as_millis() as u64, "service crashed; restarting");
        state.degraded = Some(format!("{reason}; restarting"));
        state.restart_at = Some(Instant::now() + state.backoff);
        state.backoff = (state.backoff * 2).min(BACKOFF_MAX);
    }
    if busy_since != 0 {
        let tid = shared.worker_tid.load(Ordering::Acquire);
        let cpu = if tid > 0 {
            progress::thread_cpu_ns(tid)
        } else {
            None
        };
        state.progress.observe(busy_since, now, cpu);
    }
    if busy_since != 0
        && state.progress.hung(busy_since, now, HANG_TIMEOUT)
        && state.thread.is_some()
    {
        tracing::error!(
            service = shared.name,
            busy_ms = now.saturating_sub(busy_since),
            "service hung; starting a replacement worker"
        );
        state.degraded = Some(format!(
            "hung (no progress for more than {HANG_TIMEOUT:?}); replaced"
        ));
        // The hung thread is abandoned: fenced off by the generation, it exits if it ever
        // wakes up.
        state.thread = None;
        state.restarts += 1;
        shared.busy_since_ms.store(0, Ordering::Release);
        drop(state);
        spawn_worker(shared);
        return;
    }
    if let Some(at) = state.restart_at
        && Instant::now() >= at
        && state.thread.is_none()
    {
        state.restart_at = None;
        state.restarts += 1;
        drop(state);
        spawn_worker(shared);
        return;
    }
    let busy_ms = if busy_since == 0 {
        0
    } else {
        now.saturating_sub(busy_since)
    };
    if shared.db.get().is_some()
        && state
            .degraded
            .as_deref()
            .is_some_and(|reason| reason.starts_with(OPENING))
    {
        // Open now: nothing to recover from, so no hold before it is reported ok.
        state.degraded = None;
    }
    if state.thread.is_some() && state.restart_at.is_none() {
        if shared.db.get().is_none() {
            state.degraded = Some(match lock(&shared.open_failure).as_deref() {
                Some(failure) => format!("{OPENING} again; the last attempt failed: {failure}"),
                None => OPENING.into(),
            });
        } else if busy_ms > SLOW_BATCH.as_millis() as u64 {
            state.degraded = Some(format!(
                "slow: the current batch has taken {busy_ms} ms (more than {SLOW_BATCH:?})"
            ));
        } else if state.lag > LAG_DEGRADED {
            state.degraded = Some(lagging(state.lag));
        } else if state.degraded.is_some() {
            // Running, not stuck, caught up enough: recovered once that has held for
            // RECOVERY_HOLD (so a service slow on every batch does not flap to ok
            // between batches).
            let healthy_since = *state.healthy_since.get_or_insert_with(Instant::now);
            if healthy_since.elapsed() >= RECOVERY_HOLD {
                state.degraded = None;
                state.healthy_since = None;
                state.backoff = BACKOFF_MIN;
            }
            return;
        }
    }
    state.healthy_since = None;
}

/// A worker's life: process feed batches from the committed cursor until fenced off.
/// Nothing here reads the wall clock on the service's behalf: time reaches services
/// through the feed (see [`Service`]); the clock is only for supervision.
fn run(shared: &Shared, generation: u64) -> Result<(), String> {
    let db = open_db(shared)?;
    let mut service = (shared.factory)();
    let mut cursor = db.cursor().map_err(|e| e.to_string())?;
    shared.cursor.store(cursor, Ordering::Release);
    if !check_layout(shared, db, generation, service.layout(), &mut cursor)? {
        return Ok(());
    }
    let wants = service.wants_ticks(db).map_err(|e| e.to_string())?;
    shared.wants_ticks.store(wants, Ordering::Release);
    loop {
        if shared.generation.load(Ordering::Acquire) != generation {
            return Ok(());
        }
        // A snapshot being installed: the feed may name bodies the log lacks yet.
        let epoch = shared.store.replace_epoch();
        if epoch % 2 == 1 {
            std::thread::sleep(IDLE_WAIT);
            continue;
        }
        let reader = shared.store.reader();
        let items = reader
            .feed_after(cursor, BATCH_MAX)
            .map_err(|e| e.to_string())?;
        if items.is_empty() {
            std::thread::sleep(IDLE_WAIT);
            continue;
        }
        mark_busy(shared);
        let started = Instant::now();
        let head = reader.feed_head().map_err(|e| e.to_string())?;
        let clock = yielding::SchedClock::this_thread();
        apply_fault(shared, generation)?;
        let mut writes = Writes::default();
        let applied = service
            .process(db, &reader, &items, &mut writes)
            .map_err(|e| e.to_string())?;
        if shared.store.replace_epoch() != epoch {
            // A snapshot install began under this batch: what it read may mix the old
            // and new state. Read again once the install is done.
            shared.busy_since_ms.store(0, Ordering::Release);
            continue;
        }
        let Some(last) = applied.checked_sub(1).and_then(|at| items.get(at)) else {
            return Err(format!(
                "applied {applied} of {} feed records: a batch must make progress",
                items.len()
            ));
        };
        let next = last.feed_seq;
        if !commit(shared, db, generation, writes, next)? {
            return Ok(());
        }
        shared
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        cursor = next;
        let wants = service.wants_ticks(db).map_err(|e| e.to_string())?;
        shared.wants_ticks.store(wants, Ordering::Release);
        shared.busy_since_ms.store(0, Ordering::Release);
        step_aside(shared, clock, head);
    }
}

/// Sleeps between batches while ingest needs the CPU more than this worker does (see
/// [`yielding`]): `before` is the worker's clock and `head` the feed head when the batch
/// began.
fn step_aside(shared: &Shared, before: Option<yielding::SchedClock>, head: u64) {
    let Some(before) = before else {
        return;
    };
    let Some(after) = yielding::SchedClock::this_thread() else {
        return;
    };
    let ingest_active = shared
        .store
        .reader()
        .feed_head()
        .is_ok_and(|now| now > head);
    if let Some(pause) = yielding::pause(before, after, ingest_active) {
        shared
            .yielded_ns
            .fetch_add(pause.as_nanos() as u64, Ordering::Relaxed);
        std::thread::sleep(pause);
    }
}

/// Makes sure the service's records are in `layout`: stamps a new database, or clears
/// one written in another layout (the worker then rebuilds from the start of the feed).
/// Returns false when this worker was fenced off meanwhile.
fn check_layout(
    shared: &Shared,
    db: &ServiceDb,
    generation: u64,
    layout: u32,
    cursor: &mut u64,
) -> Result<bool, String> {
    let found = db.layout().map_err(|e| e.to_string())?;
    if found == Some(layout) {
        return Ok(true);
    }
    let _guard = lock(&shared.commit_lock);
    if shared.generation.load(Ordering::Acquire) != generation {
        return Ok(false);
    }
    // Before layouts were stamped every service wrote layout 1.
    let held = found.or((*cursor > 0).then_some(1));
    if held.is_some_and(|held| held != layout) {
        tracing::warn!(
            service = shared.name,
            found = held,
            layout,
            "the service's records are in another layout; rebuilding them from the feed"
        );
        db.clear().map_err(|e| e.to_string())?;
        *cursor = 0;
    }
    let mut writes = Writes::default();
    ServiceDb::stamp_layout(&mut writes, layout);
    db.commit(writes, *cursor).map_err(|e| e.to_string())?;
    shared.cursor.store(*cursor, Ordering::Release);
    Ok(true)
}

fn mark_busy(shared: &Shared) {
    shared.busy_since_ms.store(
        shared.epoch.elapsed().as_millis().max(1) as u64,
        Ordering::Release,
    );
}

/// Commits unless this worker was fenced off; returns whether it committed.
fn commit(
    shared: &Shared,
    db: &ServiceDb,
    generation: u64,
    writes: Writes,
    cursor: u64,
) -> Result<bool, String> {
    let _guard = lock(&shared.commit_lock);
    if shared.generation.load(Ordering::Acquire) != generation {
        return Ok(false);
    }
    db.commit(writes, cursor).map_err(|e| e.to_string())?;
    shared.cursor.store(cursor, Ordering::Release);
    Ok(true)
}

fn apply_fault(shared: &Shared, generation: u64) -> Result<(), String> {
    match Fault::from_u8(shared.fault.load(Ordering::Acquire)) {
        Fault::None => {}
        Fault::Error => return Err(format!("injected error in service {}", shared.name)),
        Fault::Panic => {
            // One panic per injection: the restarted worker behaves.
            shared.fault.store(Fault::None.to_u8(), Ordering::Release);
            panic!("injected fault in service {}", shared.name);
        }
        Fault::Hang => {
            while Fault::from_u8(shared.fault.load(Ordering::Acquire)) == Fault::Hang
                && shared.generation.load(Ordering::Acquire) == generation
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Fault::Slow => std::thread::sleep(SLOW_BATCH + Duration::from_millis(200)),
    }
    Ok(())
}
