//! The node's Prometheus metrics: one [`prometheus_client`] registry per node, built at
//! start, encoded on each scrape of `GET /metrics` (every metric is listed in
//! `docs/monitoring.md`).
//!
//! Two kinds of values live here:
//! - **Hot-path instruments** (request counts and latencies, events by source, group-commit
//!   sizes, propose-to-commit latency, leader changes): atomics and histograms the library
//!   updates without locks of ours; a labelled family takes the library's read lock to find
//!   its child.
//! - **Scrape-time gauges** (Raft term and indexes, follower progress, the replicated
//!   events counter, in-flight events, process RSS and fds, bytes on disk): set by
//!   [`Node::encode_metrics`](super::Node::encode_metrics) just before encoding, so the hot
//!   path pays nothing for them. Disk sizes walk the data dir, at most every
//!   [`DISK_USAGE_TTL`].
//!
//! Names follow Prometheus conventions: a `tandem_` prefix, `_total` on counters (the
//! library appends it), units last (`_seconds`, `_bytes`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// How long a measurement of the data dir's size is reused by scrapes.
pub const DISK_USAGE_TTL: Duration = Duration::from_secs(10);

/// A gauge of an unsigned value.
pub type U64Gauge = Gauge<u64, AtomicU64>;

/// Labels of an HTTP request: the route template (never the raw path), the method, and the
/// status class (`2xx` … `5xx`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route, e.g. `/v1/profiles/{id}`; `unmatched` for the fallback.
    pub endpoint: String,
    /// The HTTP method.
    pub method: String,
    /// `2xx`, `4xx`, …
    pub status: String,
}

/// Labels of a latency observation: the route template.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The matched route.
    pub endpoint: String,
}

/// Labels of an ingest outcome count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// The source (write key's name) the events came from.
    pub source: String,
    /// `accepted`, `duplicate` or `rejected`.
    pub outcome: &'static str,
}

/// Labels of a refused request: the route, the status (`429`, `503`) and the reason —
/// the error code of the reply (`overloaded`, `quota_exceeded`, `no_leader`, …), or
/// `other` for a reply without one.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The matched route.
    pub endpoint: String,
    /// `429` or `503`.
    pub status: &'static str,
    /// The error code.
    pub reason: &'static str,
}

/// Labels of a per-follower gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FollowerLabels {
    /// The follower's node id.
    pub follower: u64,
}

/// Labels of a per-service gauge or counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The CDP service's name.
    pub service: String,
}

/// Labels of a per-directory size.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartLabels {
    /// `log`, `store`, `services` or `snapshots`.
    pub part: &'static str,
}

/// Labels of a TLS certificate's expiry.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `client` or `peer`.
    pub listener: &'static str,
}

/// Labels of an alert gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// The alert's name (`TandemIngestionDrop`, …).
    pub alertname: String,
}

/// Labels of a notification count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    /// The receiver: its kind and position in `[[alerts.receivers]]` (`alertmanager-0`).
    pub receiver: String,
    /// `sent`, `failed` (given up after every attempt) or `dropped` (queue full).
    pub outcome: &'static str,
}

/// Labels of a write-path or read-path stage's duration (see [`Metrics::write_stages`] and
/// [`Metrics::read_stages`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// Writes: `queued`, `unapplied`, `screen`, `raft` or `forward`. Reads: `confirm`,
    /// `apply_wait`, `queued` or `lookup`.
    pub stage: &'static str,
}

/// A histogram family's constructor (a plain fn, so the family type can be named).
type HistogramFn = fn() -> Histogram;

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of one node.
pub struct Metrics {
    /// Where the families are registered; encoded on each scrape.
    registry: Registry,
    /// HTTP requests answered, by endpoint, method and status class.
    pub http_requests: Family<RequestLabels, Counter>,
    /// HTTP request latency by endpoint.
    pub http_duration: Family<EndpointLabels, Histogram, HistogramFn>,
    /// Ingested events by source and outcome.
    pub events: Family<EventLabels, Counter>,
    /// Submissions refused with 429.
    pub overloaded: Counter,
    /// Bytes of request bodies read, by endpoint.
    pub request_bytes: Family<EndpointLabels, Counter>,
    /// Requests answered 429 or 503, by endpoint, status and reason.
    pub refusals: Family<RefusalLabels, Counter>,
    /// Events per log entry this node proposed and got committed.
    pub commit_events: Histogram,
    /// Propose-to-commit (and apply) latency of this node's entries.
    pub commit_duration: Histogram,
    /// Durations of a write's stages on this node, by stage: `queued` (admitted → taken
    /// into a group by the proposer, which waits for a free in-flight slot), `screen`
    /// (leader: dedup lookups and block encoding), `raft` (leader: propose → committed
    /// and applied), `forward` (follower: round trip of a group forwarded to the leader).
    pub write_stages: Family<StageLabels, Histogram, HistogramFn>,
    /// Durations of a read's stages on this node, by stage: `confirm` (a linearizable or
    /// lease profile read: confirming leadership and taking a read ticket here, or a read
    /// index from the leader; and any `?after=` wait), `apply_wait` (such a read waiting for apply, when a write in
    /// flight mentions the profile), `queued` (any read: waiting for a read thread) and
    /// `lookup` (on the read thread: the snapshot and the lookups).
    pub read_stages: Family<StageLabels, Histogram, HistogramFn>,
    /// Changes of the leader this node observed.
    pub leader_changes: Counter,
    /// When each TLS listener's certificate expires, Unix seconds.
    pub certificate_expiry: Family<ListenerLabels, Gauge>,
    /// Requests answered, all / 4xx / 5xx, for the alert rules' error shares.
    pub request_classes: [AtomicU64; 3],
    /// The Raft log's fsync histogram alone (shared with the log, which observes it), so
    /// its count and sum can be read back: the library exposes them only by encoding.
    fsync_registry: Registry,
    /// Alerts firing by name (as this node's evaluator sees them).
    pub alerts_firing: Family<AlertLabels, U64Gauge>,
    /// Alert notifications by receiver and outcome.
    pub alert_notifications: Family<NotificationLabels, Counter>,
    /// Latencies of client requests (`/v1/` but not `/v1/admin/`), for the dashboard's
    /// samples (not exported: the histogram above carries them by endpoint).
    pub dashboard_latency: super::samples::LatencyTally,
    /// Backups taken by this node.
    pub backup: BackupMetrics,
    /// Continuous archiving of the log, as this node sees it.
    pub archive: super::archive::ArchiveMetrics,
    /// Scrape-time gauges.
    pub(super) scraped: Scraped,
    /// The data dir, for the disk sizes.
    data_dir: PathBuf,
    /// The last disk measurement and when it was taken.
    disk_cache: Mutex<Option<(Instant, [u64; 4])>>,
}

/// Gauges set at scrape time.
#[derive(Default)]
pub(super) struct Scraped {
    /// Current Raft term.
    pub term: U64Gauge,
    /// 1 on the leader.
    pub is_leader: U64Gauge,
    /// Last index known committed.
    pub commit_index: U64Gauge,
    /// Last index applied.
    pub applied_index: U64Gauge,
    /// On the leader: each follower's matched index.
    pub matched_index: Family<FollowerLabels, U64Gauge>,
    /// On the leader: seconds since each follower last acknowledged an append or heartbeat.
    pub heartbeat_age: Family<FollowerLabels, Gauge<f64, AtomicU64>>,
    /// Events stored, mirrored from the replicated state.
    pub events_stored: Counter,
    /// Events admitted and not answered.
    pub inflight_events: U64Gauge,
    /// 1 while a service is ok.
    pub service_up: Family<ServiceLabels, U64Gauge>,
    /// Feed entries a service has not processed.
    pub service_lag: Family<ServiceLabels, U64Gauge>,
    /// Worker restarts, mirrored from the supervisor.
    pub service_restarts: Family<ServiceLabels, Counter>,
    /// Time service workers slept to leave the CPU to ingest, mirrored from the supervisor.
    pub service_yielded: Family<ServiceLabels, Counter<f64, AtomicU64>>,
    /// Decoded blocks found in the store's block cache (events API and services).
    pub block_cache_hits: Counter,
    /// Blocks read from the log and decoded, because the cache did not hold them.
    pub block_cache_misses: Counter,
    /// Approximate bytes the block cache holds.
    pub block_cache_bytes: U64Gauge,
    /// Event `properties` parsed for the services (once per event per cached block).
    pub feed_properties_parsed: Counter,
    /// Linearizable and lease profile reads on the leader answered without waiting for
    /// apply: no write in flight mentioned the profile (`node::pending`).
    pub profile_reads_unwaited: Counter,
    /// Such reads that waited for apply to reach the read index.
    pub profile_reads_waited: Counter,
    /// Resident set size in bytes.
    pub resident_memory: U64Gauge,
    /// Open file descriptors.
    pub open_fds: U64Gauge,
    /// Bytes under each part of the data dir.
    pub disk: Family<PartLabels, U64Gauge>,
    /// Bytes free for this process on the data dir's filesystem.
    pub disk_free: U64Gauge,
    /// Size of the data dir's filesystem in bytes.
    pub disk_size: U64Gauge,
    /// CPU time of the process (user + system), seconds.
    pub cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
}

/// The parts of the data dir whose sizes are reported, and their directory names.
const PARTS: [&str; 4] = ["log", "store", "services", "snapshots"];

/// Instruments that lower layers own and update, registered here.
pub struct Sources {
    /// The Raft log's fsync durations.
    pub log_fsync: Histogram,
    /// Snapshot builds and installs.
    pub snapshots: crate::cluster::state_machine::SnapshotMetrics,
    /// The services' batch durations.
    pub service_batches: crate::services::supervisor::BatchDurations,
    /// Durations of the state machine's apply calls (a batch of committed entries).
    pub apply: Histogram,
    /// Round trips of the leader's replication requests that carry entries.
    pub replicate: Histogram,
}

impl Sources {
    /// Sources with the log's fsync histogram and fresh, unshared snapshot and service
    /// instruments (for tests of the registry).
    pub fn with_log_fsync(log_fsync: Histogram) -> Sources {
        Sources {
            log_fsync,
            snapshots: Default::default(),
            service_batches: crate::services::supervisor::BatchDurations::new_with_constructor(
                || Histogram::new([1.0]),
            ),
            apply: Histogram::new([1.0]),
            replicate: Histogram::new([1.0]),
        }
    }
}

impl Metrics {
    /// Records how long a write's `stage` took, from `started` until now.
    pub fn observe_stage(&self, stage: &'static str, started: Instant) {
        self.write_stages
            .get_or_create(&StageLabels { stage })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records how long a read's `stage` took, from `started` until now.
    pub fn observe_read_stage(&self, stage: &'static str, started: Instant) {
        self.read_stages
            .get_or_create(&StageLabels { stage })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records when `listener`'s certificate expires; `None` (no TLS) records nothing.
    pub fn set_certificate_expiry(&self, listener: &'static str, not_after: Option<i64>) {
        if let Some(not_after) = not_after {
            self.certificate_expiry
                .get_or_create(&ListenerLabels { listener })
                .set(not_after);
        }
    }

    /// When each TLS listener's certificate expires (Unix seconds), for the alert rules;
    /// empty without TLS.
    pub fn certificate_expiries(&self) -> Vec<(&'static str, i64)> {
        ["client", "peer"]
            .into_iter()
            .filter_map(|listener| {
                let not_after = self.certificate_expiry.get(&ListenerLabels { listener })?;
                Some((listener, not_after.get()))
            })
            .collect()
    }

    /// Builds and registers every family, for a node whose data lives in `data_dir`, with
    /// the instruments of lower layers in `sources`.
    pub fn new(data_dir: &Path, sources: Sources) -> Metrics {
        let Sources {
            log_fsync,
            snapshots,
            service_batches,
            apply,
            replicate,
        } = sources;
        let mut m = Metrics {
            registry: Registry::with_prefix("tandem"),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            events: Family::default(),
            overloaded: Counter::default(),
            request_bytes: Family::default(),
            refusals: Family::default(),
            commit_events: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            commit_duration: latency_histogram(),
            write_stages: Family::new_with_constructor(crate::cluster::stage_histogram),
            read_stages: Family::new_with_constructor(crate::cluster::stage_histogram),
            leader_changes: Counter::default(),
            certificate_expiry: Family::default(),
            request_classes: Default::default(),
            fsync_registry: {
                let mut registry = Registry::default();
                registry.register("fsync", "", log_fsync.clone());
                registry
            },
            alerts_firing: Family::default(),
            alert_notifications: Family::default(),
            dashboard_latency: super::samples::LatencyTally::default(),
            backup: BackupMetrics::default(),
            archive: super::archive::ArchiveMetrics::default(),
            scraped: Scraped::default(),
            data_dir: data_dir.to_owned(),
            disk_cache: Mutex::new(None),
        };
        let r = &mut m.registry;
        let s = &m.scraped;
        r.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status class",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "HTTP request latency by route template",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        r.register(
            "ingest_events",
            "Events received through this node by source and outcome (accepted, duplicate, rejected)",
            m.events.clone(),
        );
        r.register_with_unit(
            "http_request",
            "Bytes of request bodies read, by route template",
            Unit::Bytes,
            m.request_bytes.clone(),
        );
        r.register(
            "http_refusals",
            "Requests answered 429 or 503 (shed or refused), by route template, status and reason",
            m.refusals.clone(),
        );
        r.register(
            "overloaded_refusals",
            "Submissions refused with 429",
            m.overloaded.clone(),
        );
        r.register(
            "inflight_events",
            "Events admitted by this node and not answered yet",
            s.inflight_events.clone(),
        );
        r.register(
            "commit_group_events",
            "Events per log entry proposed by this node (group-commit size)",
            m.commit_events.clone(),
        );
        r.register_with_unit(
            "commit_duration",
            "Propose-to-commit latency of this node's log entries (writes are answered at commit; apply follows)",
            Unit::Seconds,
            m.commit_duration.clone(),
        );
        r.register_with_unit(
            "write_stage_duration",
            "Duration of each stage of a write on this node: queued, unapplied (leader: waiting for apply to come within bounds), screen, raft (leader: propose to commit), forward (follower)",
            Unit::Seconds,
            m.write_stages.clone(),
        );
        r.register_with_unit(
            "read_stage_duration",
            "Duration of each stage of a read on this node: confirm (linearizable or lease profile reads: leadership or read index), apply_wait (such a read waiting for apply), queued (waiting for a read thread), lookup (on the read thread)",
            Unit::Seconds,
            m.read_stages.clone(),
        );
        r.register_with_unit(
            "apply_duration",
            "Duration of each apply of committed entries to the state (a batch of entries)",
            Unit::Seconds,
            apply,
        );
        r.register_with_unit(
            "replicate_duration",
            "Round trip of each replication request with entries (leader to one follower: send, follower append and fsync, reply)",
            Unit::Seconds,
            replicate,
        );
        r.register(
            "events_stored",
            "Events stored in the cluster, from the replicated state (equal on every node once caught up)",
            s.events_stored.clone(),
        );
        r.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When a TLS listener's certificate expires (peer: the earlier of the node's and the cluster CA's), Unix seconds; absent for a plain listener",
            m.certificate_expiry.clone(),
        );
        r.register("raft_term", "Current Raft term", s.term.clone());
        r.register("raft_is_leader", "1 on the leader", s.is_leader.clone());
        r.register(
            "raft_leader_changes",
            "Changes of the known leader observed by this node",
            m.leader_changes.clone(),
        );
        r.register(
            "raft_commit_index",
            "Last log index known committed",
            s.commit_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Last log index applied to the state",
            s.applied_index.clone(),
        );
        r.register(
            "raft_follower_matched_index",
            "On the leader: last log index known replicated to each follower",
            s.matched_index.clone(),
        );
        r.register_with_unit(
            "raft_follower_heartbeat_age",
            "On the leader: time since each follower last acknowledged an append or heartbeat",
            Unit::Seconds,
            s.heartbeat_age.clone(),
        );
        r.register_with_unit(
            "snapshot_duration",
            "Duration of each completed snapshot build or install (kind)",
            Unit::Seconds,
            snapshots.duration,
        );
        r.register_with_unit(
            "snapshot",
            "Bytes of the snapshots built or installed (state file and log segments)",
            Unit::Bytes,
            snapshots.bytes,
        );
        r.register(
            "snapshot_failures",
            "Snapshot builds or installs that failed",
            snapshots.failures,
        );
        r.register_with_unit(
            "service_batch_duration",
            "Duration of each batch of feed entries a CDP service processed and committed",
            Unit::Seconds,
            service_batches,
        );
        r.register(
            "service_up",
            "1 while a CDP service is ok, 0 while degraded",
            s.service_up.clone(),
        );
        r.register(
            "service_lag_entries",
            "Committed feed entries a service has not processed yet",
            s.service_lag.clone(),
        );
        r.register(
            "service_restarts",
            "Service worker restarts (crashes, error loops, hung workers replaced)",
            s.service_restarts.clone(),
        );
        r.register_with_unit(
            "service_yielded",
            "Time CDP service workers slept between batches to leave a contended CPU to ingest",
            Unit::Seconds,
            s.service_yielded.clone(),
        );
        r.register(
            "block_cache_hits",
            "Decoded log blocks found in the block cache (event reads and CDP services)",
            s.block_cache_hits.clone(),
        );
        r.register(
            "block_cache_misses",
            "Log blocks read and decoded because the block cache did not hold them",
            s.block_cache_misses.clone(),
        );
        r.register_with_unit(
            "block_cache",
            "Approximate bytes held by the block cache",
            Unit::Bytes,
            s.block_cache_bytes.clone(),
        );
        r.register(
            "feed_properties_parsed",
            "Event properties parsed for the CDP services (once per event while its block is cached)",
            s.feed_properties_parsed.clone(),
        );
        r.register(
            "profile_reads_unwaited",
            "Linearizable and lease profile reads on the leader answered without waiting for apply (no write in flight mentioned the profile)",
            s.profile_reads_unwaited.clone(),
        );
        r.register(
            "profile_reads_waited",
            "Linearizable and lease profile reads on the leader that waited for apply to reach the read index",
            s.profile_reads_waited.clone(),
        );
        r.register_with_unit(
            "process_resident_memory",
            "Resident set size of the process",
            Unit::Bytes,
            s.resident_memory.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors of the process",
            s.open_fds.clone(),
        );
        r.register_with_unit(
            "log_fsync_duration",
            "Duration of each fsync of the Raft log (one per group of appends)",
            Unit::Seconds,
            log_fsync,
        );
        r.register_with_unit(
            "disk_free",
            "Bytes available to the node on the data dir's filesystem",
            Unit::Bytes,
            s.disk_free.clone(),
        );
        r.register_with_unit(
            "disk_size",
            "Size of the data dir's filesystem as the node can use it (used + available, as df counts)",
            Unit::Bytes,
            s.disk_size.clone(),
        );
        r.register_with_unit(
            "process_cpu",
            "CPU time of the process, user and system",
            Unit::Seconds,
            s.cpu_seconds.clone(),
        );
        r.register(
            "alerts_firing",
            "Alerts firing by name, as this node's evaluator sees them (cluster-scoped ones on the leader)",
            m.alerts_firing.clone(),
        );
        r.register(
            "alert_notifications",
            "Alert notifications by receiver and outcome (sent, failed after every retry, dropped from a full queue)",
            m.alert_notifications.clone(),
        );
        r.register_with_unit(
            "disk_usage",
            "Bytes on disk per part of the data dir (log, store, services, snapshots)",
            Unit::Bytes,
            s.disk.clone(),
        );
        m.backup.register(&mut m.registry);
        m.archive.register(&mut m.registry);
        m
    }

    /// Fsyncs of the Raft log so far: how many, and their total seconds.
    pub fn fsync_totals(&self) -> (u64, f64) {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.fsync_registry).is_err() {
            return (0, 0.0);
        }
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (value("fsync_count ") as u64, value("fsync_sum "))
    }

    /// Counts ingest outcomes of one request from `source`.
    pub fn record_events(&self, source: &str, accepted: u64, duplicate: u64, rejected: u64) {
        for (outcome, n) in [
            ("accepted", accepted),
            ("duplicate", duplicate),
            ("rejected", rejected),
        ] {
            if n > 0 {
                self.events
                    .get_or_create(&EventLabels {
                        source: source.to_owned(),
                        outcome,
                    })
                    .inc_by(n);
            }
        }
    }

    /// The counter of body bytes read on `endpoint` (shared: a clone counts into it).
    pub fn request_bytes_counter(&self, endpoint: &str) -> Counter {
        self.request_bytes.get_or_create_owned(&EndpointLabels {
            endpoint: endpoint.to_owned(),
        })
    }

    /// Counts one request answered 429 or 503 with error code `reason`.
    pub fn record_refusal(&self, endpoint: &str, status: u16, reason: &'static str) {
        let status = match status {
            429 => "429",
            503 => "503",
            _ => return,
        };
        self.refusals
            .get_or_create(&RefusalLabels {
                endpoint: endpoint.to_owned(),
                status,
                reason,
            })
            .inc();
    }

    /// Counts one answered HTTP request.
    pub fn record_request(&self, endpoint: &str, method: &str, status: u16, seconds: f64) {
        self.request_classes[0].fetch_add(1, Ordering::Relaxed);
        match status / 100 {
            4 => self.request_classes[1].fetch_add(1, Ordering::Relaxed),
            5 => self.request_classes[2].fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        let status = format!("{}xx", status / 100);
        self.http_requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_owned(),
            })
            .observe(seconds);
        if endpoint.starts_with("/v1/") && !endpoint.starts_with("/v1/admin/") {
            self.dashboard_latency.observe(seconds);
        }
    }

    /// Sets the process and disk gauges, then encodes the registry as OpenMetrics text.
    pub(super) fn encode(&self) -> Result<String, std::fmt::Error> {
        if let Some(rss) = resident_bytes() {
            self.scraped.resident_memory.set(rss);
        }
        if let Some(fds) = open_fds() {
            self.scraped.open_fds.set(fds);
        }
        if let Some(free) = free_bytes(&self.data_dir) {
            self.scraped.disk_free.set(free);
        }
        if let Some(size) = disk_size_bytes(&self.data_dir) {
            self.scraped.disk_size.set(size);
        }
        if let Some(seconds) = cpu_seconds() {
            mirror_seconds(&self.scraped.cpu_seconds, seconds);
        }
        for (part, bytes) in PARTS.iter().zip(self.disk_usage()) {
            self.scraped
                .disk
                .get_or_create(&PartLabels { part })
                .set(bytes);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Sizes of the data dir's parts, measured at most every [`DISK_USAGE_TTL`].
    fn disk_usage(&self) -> [u64; 4] {
        let mut cache = self.disk_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, sizes)) = *cache
            && at.elapsed() < DISK_USAGE_TTL
        {
            return sizes;
        }
        let sizes = PARTS.map(|part| dir_bytes(&self.data_dir.join(part)));
        *cache = Some((Instant::now(), sizes));
        sizes
    }
}

/// Sets a counter that mirrors a monotonic value kept elsewhere (the replicated state).
pub(super) fn mirror(counter: &Counter, value: u64) {
    counter.inner().store(value, Ordering::Relaxed);
}

/// Sets a seconds counter that mirrors a monotonic time kept elsewhere.
pub(super) fn mirror_seconds(counter: &Counter<f64, AtomicU64>, seconds: f64) {
    counter.inner().store(seconds.to_bits(), Ordering::Relaxed);
}

/// The sum of file sizes under `dir` (0 if it is missing; unreadable entries are skipped).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// The process's resident set size, from `/proc/self/statm` (Linux only).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

/// Bytes available to unprivileged users on the filesystem holding `dir` (statvfs).
// The statvfs field types differ between targets (u32 on some 32-bit ones); the
// conversions are identities only on 64-bit Linux.
#[allow(clippy::useless_conversion)]
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own and reads the NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

/// The share (0..1) of the filesystem holding `dir` that is available to the node.
pub fn disk_free_ratio(dir: &Path) -> Option<f64> {
    let size = disk_size_bytes(dir)?;
    (size > 0).then(|| free_bytes(dir).unwrap_or(0) as f64 / size as f64)
}

/// The size of the filesystem holding `dir` as the node can use it, bytes: used plus
/// available to unprivileged users, as `df` counts it (blocks reserved for root, which the
/// node cannot write, are left out, so `free / size` is `df`'s free share).
#[allow(clippy::useless_conversion)]
fn disk_size_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own and reads the NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let used = u64::from(stat.f_blocks).saturating_sub(u64::from(stat.f_bfree));
    let usable = used.saturating_add(u64::from(stat.f_bavail));
    Some(usable.saturating_mul(u64::from(stat.f_frsize)))
}

/// The process's CPU time (user + system) in seconds, from `/proc/self/stat` (Linux only).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// The process's open file descriptors, from `/proc/self/fd` (Linux only).
fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// Counts changes of the known leader (to another node, or to none during an election)
/// until Raft shuts down.
pub(super) async fn watch_leader(raft: crate::cluster::Raft, metrics: std::sync::Arc<Metrics>) {
    use openraft::async_runtime::WatchReceiver;
    let mut watch = raft.metrics();
    let mut leader = watch.borrow_watched().current_leader;
    while watch.changed().await.is_ok() {
        let now = watch.borrow_watched().current_leader;
        if now != leader {
            metrics.leader_changes.inc();
            leader = now;
        }
    }
}

/// Backups taken by this node (`crate::backup`), for alerting on an overdue or failing
/// backup.
#[derive(Default)]
pub struct BackupMetrics {
    /// When the last successful backup finished, seconds since the epoch (0: never).
    pub last_success: U64Gauge,
    /// How long the last successful backup took, ms.
    pub last_duration_ms: U64Gauge,
    /// Bytes the last successful backup covered (its checkpoint).
    pub last_size: U64Gauge,
    /// Bytes the last successful backup uploaded (new chunks, compressed and encrypted).
    pub last_uploaded: U64Gauge,
    /// Backups that failed.
    pub failures: Counter,
    /// When this node's last failed backup attempt ended, seconds since the epoch (0: none
    /// since start).
    pub last_failure: U64Gauge,
    /// The backup schedule's period (between its next two due times), seconds; 0 without a
    /// schedule or a repository.
    pub schedule_period: U64Gauge,
    /// On the leader: what backup staleness is measured from — the newest backup in the
    /// repository, or when this leader began watching an empty repository; seconds since
    /// the epoch. 0 on followers and without a schedule.
    pub stale_since: U64Gauge,
    /// When the cluster's last successful scheduled verification (restore into scratch,
    /// hashes equal) finished, seconds since the epoch (0: none recorded).
    pub verify_last_success: U64Gauge,
    /// When the cluster's last failed verification finished (0: none recorded).
    pub verify_last_failure: U64Gauge,
    /// How long the cluster's last verification took, ms.
    pub verify_last_duration_ms: U64Gauge,
    /// Verifications run by this node that failed.
    pub verify_failures: Counter,
}

impl BackupMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "backup_last_success_timestamp_seconds",
            "When this node's last successful backup finished (0: never)",
            self.last_success.clone(),
        );
        r.register(
            "backup_last_duration_milliseconds",
            "How long this node's last successful backup took",
            self.last_duration_ms.clone(),
        );
        r.register_with_unit(
            "backup_last_size",
            "Bytes covered by this node's last successful backup",
            Unit::Bytes,
            self.last_size.clone(),
        );
        r.register_with_unit(
            "backup_last_uploaded",
            "Bytes uploaded by this node's last successful backup (new chunks only)",
            Unit::Bytes,
            self.last_uploaded.clone(),
        );
        r.register(
            "backup_failures",
            "Backups started on this node that failed",
            self.failures.clone(),
        );
        r.register(
            "backup_last_failure_timestamp_seconds",
            "When this node's last failed backup attempt ended (0: none since start)",
            self.last_failure.clone(),
        );
        r.register(
            "backup_schedule_period_seconds",
            "The backup schedule's period (0: no schedule)",
            self.schedule_period.clone(),
        );
        r.register(
            "backup_stale_since_timestamp_seconds",
            "On the leader: the newest backup's finish, or when it began watching an empty repository (0: followers, no schedule)",
            self.stale_since.clone(),
        );
        r.register(
            "backup_verify_last_success_timestamp_seconds",
            "When the cluster's last successful backup verification (restore, hashes equal) finished (0: none)",
            self.verify_last_success.clone(),
        );
        r.register(
            "backup_verify_last_failure_timestamp_seconds",
            "When the cluster's last failed backup verification finished (0: none)",
            self.verify_last_failure.clone(),
        );
        r.register(
            "backup_verify_last_duration_milliseconds",
            "How long the cluster's last backup verification took",
            self.verify_last_duration_ms.clone(),
        );
        r.register(
            "backup_verify_failures",
            "Backup verifications run by this node that failed",
            self.verify_failures.clone(),
        );
    }
}
