//! Configuration: one TOML file (`tandem.example.toml` documents every setting),
//! `TANDEM_*` environment overrides, then command-line flags — each layer overriding the
//! one before — validated at start-up.
//!
//! Environment variables name a setting by its path with `__` between levels:
//! `TANDEM_NODE__LISTEN=0.0.0.0:8080`, `TANDEM_INGEST__DEDUP_WINDOW_HOURS=48`. Other
//! `TANDEM_*` variables (without `__`) are ignored here: they belong to the CLI.
//!
//! Validation collects every problem at once and names each setting and its fix, so an
//! operator fixes a file in one pass rather than one error per restart.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::model::identity::IdClass;
use crate::model::resolve::MergeRules;
use crate::store::apply::ApplySettings;

mod access;
mod alerts;
pub use access::{
    CLIENT_KEY_CHARS_MIN, HttpConfig, KeyRole, NamedKey, PLACEHOLDER_KEY_PREFIX, Quota,
    QuotasConfig, RoleKey,
};
pub use alerts::{
    AlertsConfig, DeliveryConfig, IngestRateConfig, ReceiverConfig, ReceiverKind, RuleOverride,
};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the node keeps data and listens.
    pub node: NodeConfig,
    /// Keys for reading profiles and administering the node.
    pub auth: AuthConfig,
    /// Event sources: each has a name and the write keys its client libraries use.
    pub sources: Vec<SourceConfig>,
    /// Timeouts and the connection cap of the client-facing listener.
    pub http: HttpConfig,
    /// The default per-source ingest quota.
    pub quotas: QuotasConfig,
    /// Request and queue limits.
    pub limits: LimitsConfig,
    /// Dedup and retention.
    pub ingest: IngestConfig,
    /// Identity resolution rules.
    pub identity: IdentityConfig,
    /// Storage engine settings.
    pub storage: StorageConfig,
    /// Replication: this node's identity and Raft timing.
    pub cluster: ClusterConfig,
    /// Fault injection for tests and drills.
    pub faults: FaultsConfig,
    /// The built-in alert evaluator and where it delivers.
    pub alerts: AlertsConfig,
    /// Where backups go (`tandem backup`, `POST /v1/admin/backups`).
    pub backup: BackupConfig,
    /// Computed traits kept per profile (`[[computed_traits]]`; see `tandem.example.toml`).
    pub computed_traits: Vec<crate::services::traits::TraitDef>,
    /// Certificates of the client listener (HTTPS) and the peer listener (mutual TLS).
    pub tls: TlsConfig,
}

/// `[tls]`: certificate and key files. Key files must be readable by their owner only
/// (mode 0600 or 0400); a key others can read is refused at start. Paths come from this
/// file or the environment (`TANDEM_TLS__PEER_KEY_FILE`, …), never from flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Certificate chain (PEM, leaf first) of the client listener; with
    /// `client_key_file`, the client listener speaks HTTPS. Empty: plain HTTP.
    pub client_cert_file: PathBuf,
    /// Private key (PEM) of `client_cert_file`.
    pub client_key_file: PathBuf,
    /// This node's certificate chain (PEM) on the peer listener, presented to peers both
    /// as server and as client: it must carry both extended key usages and name the host
    /// of the node's peer URL.
    pub peer_cert_file: PathBuf,
    /// Private key (PEM) of `peer_cert_file`.
    pub peer_key_file: PathBuf,
    /// The cluster CA (PEM): a peer must present a certificate it signed, and a peer
    /// server's certificate must chain to it.
    pub peer_ca_file: PathBuf,
    /// Peer traffic in cleartext, without certificates. Only for a network nothing else
    /// can reach (and tests); mutual TLS is required unless this is set.
    pub peer_plaintext: bool,
}

impl TlsConfig {
    /// Whether the client listener speaks HTTPS.
    pub fn client_https(&self) -> bool {
        !self.client_cert_file.as_os_str().is_empty()
    }
}

/// Most backup worker threads (`backup.workers`): beyond the cores there is nothing to
/// gain, and each holds chunks in memory.
pub const BACKUP_WORKERS_MAX: usize = 16;

/// `[backup]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// The backup repository: a directory (`/var/backups/tandem` or `file:///…`) or
    /// S3-compatible storage (`s3://bucket/prefix`, endpoint and credentials from the
    /// `AWS_*` environment). Empty: this node takes no backups.
    pub repo: String,
    /// File holding the repository key (64 hex characters), readable by its owner only:
    /// it names chunks and authenticates manifests. Nodes never hold the key that
    /// decrypts backups (see docs/security.md).
    pub repo_key_file: PathBuf,
    /// When the cluster takes a backup: a cron expression (UTC; five fields, or six with
    /// seconds first). Only the leader runs it, and it runs when the newest backup in the
    /// repository is older than the last due time, so a failover neither skips nor repeats
    /// one. Empty: no schedule (`tandem backup create` only).
    pub schedule: String,
    /// Continuous archiving of the committed log into the repository: the leader uploads
    /// each sealed segment as it is sealed and, at least this often, the committed tail —
    /// the recovery point after losing the whole cluster. 0: off (backups only).
    pub archive_interval_secs: u64,
    /// Most bytes of log segments a node keeps for the archive beyond what retention
    /// would keep (the purge guard); past it, retention deletes them and the archive gets
    /// a gap (alerted well before; see docs/operations.md, "Point-in-time restore").
    pub archive_backlog_mb_max: u64,
    /// When the cluster proves its newest backup restorable: a cron expression (UTC, as
    /// `schedule`; default weekly, Sundays 04:00). The leader restores the newest backup
    /// into a scratch directory under the data directory and compares its state and
    /// services hashes with the manifest's (`crate::backup::verify_schedule`). Runs only
    /// with `verify_identity_file` set. Empty: no scheduled verification.
    pub verify_schedule: String,
    /// An age identity file (from `tandem backup init --identity`, or a second identity
    /// whose recipient the repository also encrypts to) that lets nodes decrypt backups
    /// for scheduled verification. Empty: no scheduled verification (nodes then cannot
    /// read backups at all; see docs/operations.md, "Scheduled verification").
    pub verify_identity_file: PathBuf,
    /// Threads that name, compress and encrypt a backup's chunks (at a lower priority than
    /// ingest); 0: one per core. At most [`BACKUP_WORKERS_MAX`].
    pub workers: usize,
}

/// Longest `backup.archive_interval_secs`.
pub const ARCHIVE_INTERVAL_SECS_MAX: u64 = 3_600;

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            repo: String::new(),
            repo_key_file: PathBuf::new(),
            schedule: "0 2 * * *".into(),
            archive_interval_secs: 10,
            archive_backlog_mb_max: 16 << 10,
            verify_schedule: "0 4 * * 0".into(),
            verify_identity_file: PathBuf::new(),
            workers: 0,
        }
    }
}

/// `[faults]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FaultsConfig {
    /// Enables `POST /v1/admin/faults` (partitions between nodes). Never in production.
    pub enabled: bool,
    /// Holds each service's database open back this long after the node starts, as a long
    /// journal replay would (tests of what the node serves meanwhile). Needs `enabled`.
    pub service_open_delay_ms: u64,
}

/// Longest `faults.service_open_delay_ms`.
pub const SERVICE_OPEN_DELAY_MS_MAX: u64 = 600_000;

impl Default for Config {
    fn default() -> Self {
        Config {
            node: NodeConfig::default(),
            auth: AuthConfig::default(),
            sources: Vec::new(),
            http: HttpConfig::default(),
            quotas: QuotasConfig::default(),
            limits: LimitsConfig::default(),
            ingest: IngestConfig::default(),
            identity: IdentityConfig::default(),
            storage: StorageConfig::default(),
            cluster: ClusterConfig::default(),
            faults: FaultsConfig::default(),
            alerts: AlertsConfig::default(),
            backup: BackupConfig::default(),
            computed_traits: crate::services::traits::default_defs(),
            tls: TlsConfig::default(),
        }
    }
}

/// `[node]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Directory for the database file.
    pub data_dir: PathBuf,
    /// Address to listen on for HTTP; port 0 picks a free port (printed at start-up).
    pub listen: String,
    /// Address of the peer listener (Raft and the other `/internal/*` routes, nothing
    /// else); port 0 picks a free port (printed at start-up). Never put it behind the
    /// gateway or a public load balancer.
    pub peer_listen: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("./tandem-data"),
            listen: "127.0.0.1:8080".into(),
            peer_listen: "127.0.0.1:9080".into(),
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Key for admin endpoints (named `admin_key`); also reads profiles. Empty = none;
    /// `[[auth.keys]]` may add more.
    pub admin_key: String,
    /// Named read and admin keys (`[[auth.keys]]`); several per role allow rotation.
    pub keys: Vec<RoleKey>,
    /// Largest request body, bytes, when the write key is in the body rather than the
    /// `Authorization` header; such bodies may not be gzipped either. Bounds what a sender
    /// without a key can make the node read and parse.
    pub body_key_request_bytes_max: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            admin_key: String::new(),
            keys: Vec::new(),
            body_key_request_bytes_max: 64 * 1024,
        }
    }
}

/// One `[[sources]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Name, shown on stored events (`web`, `support-desk`, …).
    pub name: String,
    /// A write key client libraries send (named `write_key`); may be empty when
    /// `write_keys` has some.
    #[serde(default)]
    pub write_key: String,
    /// More write keys, each named; several at once allow rotation without downtime.
    #[serde(default)]
    pub write_keys: Vec<NamedKey>,
    /// Sustained events per second on one node; unset = `quotas.events_per_sec`.
    #[serde(default)]
    pub events_per_sec: Option<u64>,
    /// Burst above the sustained rate, events; unset = `quotas.burst_events`.
    #[serde(default)]
    pub burst_events: Option<u64>,
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest single event, bytes of JSON (Segment: 32 KB).
    pub event_bytes_max: usize,
    /// Largest request body after decompression, bytes (Segment: 500 KB).
    pub request_bytes_max: usize,
    /// Most bytes of events one request may turn into once each item has the batch-level
    /// `context` and `integrations` merged in: a small body with a large batch context
    /// must not multiply into gigabytes.
    pub request_events_bytes_max: usize,
    /// Most events in one /v1/batch request (Segment: 2500).
    pub batch_events_max: usize,
    /// Most events accepted but not yet committed; beyond it requests get 429.
    pub inflight_events_max: usize,
    /// Most bytes of event bodies accepted but not yet committed; beyond it requests get 429.
    pub inflight_bytes_max: usize,
    /// The share of `inflight_events_max` one source may hold, percent; beyond it that
    /// source's requests get 429 while other sources are still admitted.
    pub source_inflight_percent: usize,
    /// Most bytes of request bodies (after decompression) being read and validated at
    /// once, node-wide; a request that would pass it gets 429. Each request reserves the
    /// most its body can become (`request_bytes_max` for gzip, else its declared length).
    pub body_bytes_max: usize,
    /// Most events in one committed log entry (one fsync).
    pub commit_events_max: usize,
    /// How far past its receive time an event may be dated (after clock-skew
    /// correction), ms; later ones are rejected with `timestamp_out_of_range`.
    pub timestamp_future_ms_max: i64,
    /// Most one log entry may move the state clock forward, and the leader's batch times
    /// may run ahead of the time that really passed, ms. Must be the same on every node
    /// and below the dedup window.
    pub clock_step_ms_max: i64,
}

/// The highest `limits.request_events_bytes_max` accepted: the events of one request are
/// committed in one log entry, and an entry must stay well inside a block's and a peer
/// RPC's limits.
pub const REQUEST_EVENTS_BYTES_CEILING: usize = 16 << 20;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            event_bytes_max: 32 * 1024,
            request_bytes_max: 500 * 1024,
            request_events_bytes_max: 2 << 20,
            batch_events_max: 2500,
            inflight_events_max: 50_000,
            inflight_bytes_max: 256 << 20,
            source_inflight_percent: 50,
            body_bytes_max: 256 << 20,
            commit_events_max: 5_000,
            timestamp_future_ms_max: crate::model::time::TIMESTAMP_FUTURE_DEFAULT_MS_MAX,
            clock_step_ms_max: crate::model::time::CLOCK_STEP_DEFAULT_MS_MAX,
        }
    }
}

/// `[ingest]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// How long a messageId is remembered to drop client retries, hours.
    pub dedup_window_hours: u64,
    /// How long events are kept, days. Profiles are kept regardless.
    pub retention_days: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            dedup_window_hours: 24,
            retention_days: 365,
        }
    }
}

/// `[identity]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Most user ids per profile. 1 keeps two known users of a shared device apart.
    pub max_user_ids: usize,
    /// Most emails per profile.
    pub max_emails: usize,
    /// Most phone numbers per profile.
    pub max_phones: usize,
    /// Most external ids of each type per profile.
    pub max_external_ids_per_type: usize,
    /// Most anonymous ids per profile.
    pub max_anonymous_ids: usize,
    /// Most distinct external id types (`context.externalIds[].type`) per profile.
    pub max_external_types: usize,
    /// Most identities of all classes together per profile.
    pub max_identities: usize,
    /// Most merge-history (audit) records kept under one profile id; older ones are
    /// removed and counted. A refusal is recorded once per profile, rule and other profile.
    pub max_audit_records: usize,
    /// Identity classes, highest priority first; decides the canonical id and merge target.
    pub priority: Vec<IdClass>,
    /// Extra junk values never treated as identities (case-insensitive).
    pub blocklist: Vec<String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        let rules = MergeRules::default();
        let limit = |class| rules.limits[&class];
        IdentityConfig {
            max_user_ids: limit(IdClass::UserId),
            max_emails: limit(IdClass::Email),
            max_phones: limit(IdClass::Phone),
            max_external_ids_per_type: limit(IdClass::External),
            max_anonymous_ids: limit(IdClass::AnonymousId),
            max_external_types: rules.external_types_max,
            max_identities: rules.identities_max,
            max_audit_records: crate::model::audit::AUDIT_RECORDS_DEFAULT_MAX,
            priority: rules.priority,
            blocklist: Vec::new(),
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Block cache of the state store, MiB.
    pub cache_mb: usize,
    /// Size at which the log's active segment is sealed and a new one started, MiB. Sealed
    /// segments are the unit that snapshots link and retention deletes.
    pub segment_mb: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            cache_mb: 512,
            segment_mb: 64,
        }
    }
}

/// `[cluster]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's id, unique in the cluster and never reused for a different disk.
    pub node_id: u64,
    /// Region (or zone) label; voters are spread so one region's loss keeps a quorum.
    pub region: String,
    /// URL clients (the gateway, other nodes forwarding a client's request) reach this
    /// node's client listener at; empty = `http(s)://<bound listen address>`.
    pub advertise_url: String,
    /// URL peers reach this node's peer listener at; empty = `https://<bound peer
    /// address>` (`http://` with `tls.peer_plaintext`). Its host must be named by the
    /// node's peer certificate.
    pub advertise_peer_url: String,
    /// Shared secret on internal (peer) requests. Empty = a random key per start, which
    /// is fine for a single node but lets nobody join it. Prefer `cluster_key_file` or the
    /// environment (`TANDEM_CLUSTER__CLUSTER_KEY`): a key in a shared config file is read
    /// by whoever can read the file.
    pub cluster_key: String,
    /// A file holding the cluster key (surrounding whitespace ignored); it must be
    /// readable by its owner only (mode 0600 or 0400). Overrides `cluster_key`.
    pub cluster_key_file: PathBuf,
    /// On first start (empty Raft log), become a one-node cluster. Set to false on nodes
    /// that will be added to an existing cluster with `tandem cluster add-node`.
    pub bootstrap: bool,
    /// Leader heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in [min, max] ms starts an election.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the election timeout, ms.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot once this many MiB of log were written since the last one.
    pub snapshot_log_mb: u64,
    /// Build a snapshot at least this often (seconds) while entries are applied.
    pub snapshot_interval_secs: u64,
    /// Log entries kept behind the latest snapshot, so a briefly lagging follower catches
    /// up from the log instead of needing a whole snapshot.
    pub log_keep_after_snapshot: u64,
    /// How often the leader proposes a tick (`Command::Tick`) while no sweep is under way,
    /// ms: the time that moves segment windows and refreshes on every replica when no
    /// events arrive (they take time from the log, never from a node's clock).
    pub tick_interval_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: 1,
            region: "default".into(),
            advertise_url: String::new(),
            advertise_peer_url: String::new(),
            cluster_key: String::new(),
            cluster_key_file: PathBuf::new(),
            bootstrap: true,
            heartbeat_ms: 30,
            election_timeout_min_ms: 120,
            election_timeout_max_ms: 240,
            snapshot_log_mb: 1024,
            snapshot_interval_secs: 3600,
            log_keep_after_snapshot: 500,
            tick_interval_ms: 60_000,
        }
    }
}

/// A configuration that could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable does not parse.
    #[error("cannot load configuration: {0}")]
    Load(String),
    /// Settings that parse but make no sense; one line each, naming the setting and the fix.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Shortest `cluster.tick_interval_ms`: a tick is a log entry on every replica.
pub const TICK_INTERVAL_MS_MIN: u64 = 100;
/// Longest `cluster.tick_interval_ms`: windows and refreshes on an idle cluster run at
/// most this late.
pub const TICK_INTERVAL_MS_MAX: u64 = 3_600_000;

/// Shortest accepted cluster key (write, read and admin keys: [`CLIENT_KEY_CHARS_MIN`]).
pub const KEY_CHARS_MIN: usize = 8;

impl Config {
    /// Whether continuous log archiving is on: a repository and a non-zero interval.
    pub fn archiving(&self) -> bool {
        !self.backup.repo.is_empty() && self.backup.archive_interval_secs > 0
    }

    /// Loads defaults ← `file` ← `TANDEM_*` environment ← `overrides` (command-line flags),
    /// then validates.
    pub fn load(file: Option<&Path>, overrides: &CliOverrides) -> Result<Config, ConfigError> {
        let config = Config::load_settings(file, overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// Loads the settings as [`Config::load`] does, without validating them as a node's
    /// configuration (no listener, keys or TLS files are needed): for tools that read a
    /// node's settings without running one (`tandem restore` compares the apply settings).
    /// Validates what such tools use: the computed-trait definitions.
    pub fn load_settings(
        file: Option<&Path>,
        overrides: &CliOverrides,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist (see tandem.example.toml)",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only nested names (`TANDEM_SECTION__KEY`) are settings: other `TANDEM_*`
        // variables (the CLI's `TANDEM_ADMIN_KEY`, a test's `TANDEM_TEST_SEED`) are not,
        // and must not stop a node from starting.
        figment = figment.merge(
            Env::prefixed("TANDEM_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        );
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        overrides.apply(&mut config);
        if !config.cluster.cluster_key_file.as_os_str().is_empty() {
            config.cluster.cluster_key = read_secret_file(&config.cluster.cluster_key_file)
                .map_err(|e| ConfigError::Load(format!("cluster.cluster_key_file: {e}")))?;
        }
        if let Err(error) = crate::services::traits::validate_defs(&config.computed_traits) {
            return Err(ConfigError::Invalid(vec![format!(
                "computed_traits: {error}"
            )]));
        }
        Ok(config)
    }

    /// Checks every setting; returns all problems found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |text: String| problems.push(text);
        if self.node.listen.parse::<SocketAddr>().is_err() {
            problem(format!(
                "node.listen = {:?} is not an address; use HOST:PORT such as 127.0.0.1:8080",
                self.node.listen
            ));
        }
        if self.node.peer_listen.parse::<SocketAddr>().is_err() {
            problem(format!(
                "node.peer_listen = {:?} is not an address; use HOST:PORT such as 10.0.0.7:9080",
                self.node.peer_listen
            ));
        }
        if let (Ok(client), Ok(peer)) = (
            self.node.listen.parse::<SocketAddr>(),
            self.node.peer_listen.parse::<SocketAddr>(),
        ) && client.port() != 0
            && client.port() == peer.port()
            && (client.ip() == peer.ip()
                || client.ip().is_unspecified()
                || peer.ip().is_unspecified())
        {
            problem(format!(
                "node.peer_listen ({}) is node.listen's address; the peer listener needs a port \
                 of its own (e.g. 9080), reachable by the other nodes only",
                self.node.peer_listen
            ));
        }
        self.validate_tls(&mut problem);
        self.validate_access(&mut problem);
        self.validate_limits(&mut problem);
        self.validate_identity(&mut problem);
        self.validate_cluster(&mut problem);
        self.validate_alerts(&mut problem);
        if !self.backup.schedule.is_empty() && self.backup.schedule.parse::<croner::Cron>().is_err()
        {
            problem(format!(
                "backup.schedule = {:?} is not a cron expression; use five fields such as \
                 \"0 2 * * *\" (02:00 UTC daily), or \"\" for no schedule",
                self.backup.schedule
            ));
        }
        if !self.backup.verify_schedule.is_empty()
            && self.backup.verify_schedule.parse::<croner::Cron>().is_err()
        {
            problem(format!(
                "backup.verify_schedule = {:?} is not a cron expression; use five fields such \
                 as \"0 4 * * 0\" (Sundays 04:00 UTC), or \"\" for no scheduled verification",
                self.backup.verify_schedule
            ));
        }
        if !self.backup.verify_identity_file.as_os_str().is_empty() && self.backup.repo.is_empty() {
            problem(
                "backup.verify_identity_file is set but backup.repo is not: scheduled \
                 verification needs the repository"
                    .into(),
            );
        }
        if self.backup.workers > BACKUP_WORKERS_MAX {
            problem(format!(
                "backup.workers = {} is more than {}; use 0 for one per core",
                self.backup.workers, BACKUP_WORKERS_MAX
            ));
        }
        if self.backup.repo.is_empty() != self.backup.repo_key_file.as_os_str().is_empty() {
            problem(
                "backup.repo and backup.repo_key_file go together: set both (or neither)".into(),
            );
        }
        if self.backup.archive_interval_secs > ARCHIVE_INTERVAL_SECS_MAX {
            problem(format!(
                "backup.archive_interval_secs = {} is longer than {ARCHIVE_INTERVAL_SECS_MAX}: \
                 the recovery point after a lost cluster would be over an hour; use 1..=3600, \
                 or 0 to turn archiving off",
                self.backup.archive_interval_secs
            ));
        }
        if self.archiving() && self.backup.archive_backlog_mb_max == 0 {
            problem(
                "backup.archive_backlog_mb_max must be at least 1 while archiving is on (it \
                 bounds the log kept for the archive)"
                    .into(),
            );
        }
        if self.faults.service_open_delay_ms > 0 && !self.faults.enabled {
            problem(
                "faults.service_open_delay_ms injects a fault: it needs faults.enabled = true \
                 (never in production)"
                    .into(),
            );
        }
        if self.faults.service_open_delay_ms > SERVICE_OPEN_DELAY_MS_MAX {
            problem(format!(
                "faults.service_open_delay_ms = {} is longer than {SERVICE_OPEN_DELAY_MS_MAX} \
                 (10 min)",
                self.faults.service_open_delay_ms
            ));
        }
        if let Err(error) = crate::services::traits::validate_defs(&self.computed_traits) {
            problem(format!("computed_traits: {error}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    fn validate_limits(&self, problem: &mut impl FnMut(String)) {
        let l = &self.limits;
        let positive = [
            ("limits.event_bytes_max", l.event_bytes_max),
            ("limits.request_bytes_max", l.request_bytes_max),
            (
                "limits.request_events_bytes_max",
                l.request_events_bytes_max,
            ),
            ("limits.batch_events_max", l.batch_events_max),
            ("limits.inflight_events_max", l.inflight_events_max),
            ("limits.inflight_bytes_max", l.inflight_bytes_max),
            ("limits.body_bytes_max", l.body_bytes_max),
            ("limits.commit_events_max", l.commit_events_max),
            (
                "ingest.dedup_window_hours",
                self.ingest.dedup_window_hours as usize,
            ),
            ("ingest.retention_days", self.ingest.retention_days as usize),
            ("storage.cache_mb", self.storage.cache_mb),
            ("storage.segment_mb", self.storage.segment_mb as usize),
            (
                "cluster.snapshot_log_mb",
                self.cluster.snapshot_log_mb as usize,
            ),
            (
                "cluster.snapshot_interval_secs",
                self.cluster.snapshot_interval_secs as usize,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                problem(format!("{name} is 0; it must be at least 1"));
            }
        }
        if l.commit_events_max > crate::model::block::BLOCK_EVENTS_MAX {
            problem(format!(
                "limits.commit_events_max ({}) is above {}, the most events one log entry can hold",
                l.commit_events_max,
                crate::model::block::BLOCK_EVENTS_MAX
            ));
        }
        let segment_bytes_ceiling_mb = crate::log::SEGMENT_BYTES_MAX_CEILING >> 20;
        if self.storage.segment_mb > segment_bytes_ceiling_mb {
            problem(format!(
                "storage.segment_mb ({}) is above {segment_bytes_ceiling_mb}: offsets inside a \
                 segment are 32-bit",
                self.storage.segment_mb
            ));
        }
        if l.event_bytes_max > l.request_bytes_max {
            problem(format!(
                "limits.event_bytes_max ({}) is larger than limits.request_bytes_max ({}); \
                 an event must fit in a request",
                l.event_bytes_max, l.request_bytes_max
            ));
        }
        if l.request_events_bytes_max < l.event_bytes_max
            || l.request_events_bytes_max > REQUEST_EVENTS_BYTES_CEILING
        {
            problem(format!(
                "limits.request_events_bytes_max ({}) must lie between limits.event_bytes_max \
                 ({}) and {REQUEST_EVENTS_BYTES_CEILING} (one request's events go into one log \
                 entry, which peers must be able to receive)",
                l.request_events_bytes_max, l.event_bytes_max
            ));
        }
        if l.source_inflight_percent == 0 || l.source_inflight_percent > 100 {
            problem(format!(
                "limits.source_inflight_percent ({}) must be 1 to 100",
                l.source_inflight_percent
            ));
        } else if l.inflight_events_max * l.source_inflight_percent / 100 < l.batch_events_max {
            problem(format!(
                "limits.source_inflight_percent ({}%) of limits.inflight_events_max ({}) is \
                 smaller than limits.batch_events_max ({}); a full batch could never be admitted",
                l.source_inflight_percent, l.inflight_events_max, l.batch_events_max
            ));
        }
        if l.body_bytes_max < l.request_bytes_max {
            problem(format!(
                "limits.body_bytes_max ({}) is smaller than limits.request_bytes_max ({}); \
                 a full request could never be read",
                l.body_bytes_max, l.request_bytes_max
            ));
        }
        if l.inflight_bytes_max < l.request_events_bytes_max {
            problem(format!(
                "limits.inflight_bytes_max ({}) is smaller than limits.request_events_bytes_max \
                 ({}); a full request could never be admitted",
                l.inflight_bytes_max, l.request_events_bytes_max
            ));
        }
        if l.inflight_events_max < l.batch_events_max {
            problem(format!(
                "limits.inflight_events_max ({}) is smaller than limits.batch_events_max ({}); \
                 a full batch could never be admitted",
                l.inflight_events_max, l.batch_events_max
            ));
        }
        if l.timestamp_future_ms_max < 0 {
            problem(format!(
                "limits.timestamp_future_ms_max ({}) is negative; use 0 or more (ms)",
                l.timestamp_future_ms_max
            ));
        }
        let dedup_window_ms = self.ingest.dedup_window_hours.saturating_mul(3_600_000);
        if l.clock_step_ms_max < 1_000 || l.clock_step_ms_max as u64 >= dedup_window_ms {
            problem(format!(
                "limits.clock_step_ms_max ({}) must be at least 1000 and below the dedup window \
                 ({dedup_window_ms} ms): one log entry must never be able to expire the window",
                l.clock_step_ms_max
            ));
        }
        let ticks = TICK_INTERVAL_MS_MIN..=TICK_INTERVAL_MS_MAX;
        if !ticks.contains(&self.cluster.tick_interval_ms) {
            problem(format!(
                "cluster.tick_interval_ms ({}) must lie between {TICK_INTERVAL_MS_MIN} and \
                 {TICK_INTERVAL_MS_MAX}: it is how often log time moves segment windows \
                 while no events arrive",
                self.cluster.tick_interval_ms
            ));
        }
        if self.ingest.retention_days * 24 < self.ingest.dedup_window_hours {
            problem(format!(
                "ingest.retention_days ({}) is shorter than ingest.dedup_window_hours ({} h); \
                 raise retention or shorten the window",
                self.ingest.retention_days, self.ingest.dedup_window_hours
            ));
        }
    }

    fn validate_cluster(&self, problem: &mut impl FnMut(String)) {
        let c = &self.cluster;
        if c.node_id == 0 {
            problem("cluster.node_id is 0; node ids start at 1".into());
        }
        if c.region.is_empty() || c.region.chars().any(|ch| ch.is_whitespace() || ch == ',') {
            problem(format!(
                "cluster.region = {:?}: use a short label without spaces or commas, e.g. eu-west-1a",
                c.region
            ));
        }
        let scheme = if self.tls.client_https() {
            "https://"
        } else {
            "http://"
        };
        if !c.advertise_url.is_empty() && !c.advertise_url.starts_with(scheme) {
            problem(format!(
                "cluster.advertise_url = {:?} must start with {scheme} (the client listener's scheme)",
                c.advertise_url
            ));
        }
        let peer_scheme = if self.tls.peer_plaintext {
            "http://"
        } else {
            "https://"
        };
        if !c.advertise_peer_url.is_empty() && !c.advertise_peer_url.starts_with(peer_scheme) {
            problem(format!(
                "cluster.advertise_peer_url = {:?} must start with {peer_scheme} (the peer listener's scheme)",
                c.advertise_peer_url
            ));
        }
        if !c.cluster_key.is_empty() {
            check_key(problem, "cluster.cluster_key", &c.cluster_key);
        }
        if c.heartbeat_ms == 0 || c.election_timeout_min_ms <= c.heartbeat_ms * 2 {
            problem(format!(
                "cluster.election_timeout_min_ms ({}) must be more than twice cluster.heartbeat_ms ({}), \
                 or followers start elections against a healthy leader",
                c.election_timeout_min_ms, c.heartbeat_ms
            ));
        }
        if c.election_timeout_max_ms <= c.election_timeout_min_ms {
            problem(format!(
                "cluster.election_timeout_max_ms ({}) must be above cluster.election_timeout_min_ms ({}): \
                 the spread is what stops split votes",
                c.election_timeout_max_ms, c.election_timeout_min_ms
            ));
        }
    }

    fn validate_tls(&self, problem: &mut impl FnMut(String)) {
        let t = &self.tls;
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        if set(&t.client_cert_file) != set(&t.client_key_file) {
            problem(
                "tls.client_cert_file and tls.client_key_file go together: set both for HTTPS, \
                 or neither for plain HTTP"
                    .into(),
            );
        }
        let peer_files = [&t.peer_cert_file, &t.peer_key_file, &t.peer_ca_file];
        if t.peer_plaintext {
            if peer_files.iter().any(|p| set(p)) {
                problem(
                    "tls.peer_plaintext = true and peer certificate files are both set; \
                     remove one of them"
                        .into(),
                );
            }
        } else if !peer_files.iter().all(|p| set(p)) {
            problem(
                "peer traffic needs mutual TLS: set tls.peer_cert_file, tls.peer_key_file and \
                 tls.peer_ca_file (docs/operations.md, \"TLS certificates\"), or \
                 tls.peer_plaintext = true on a network nothing else can reach"
                    .into(),
            );
        }
    }

    fn validate_identity(&self, problem: &mut impl FnMut(String)) {
        let all = [
            IdClass::UserId,
            IdClass::Email,
            IdClass::Phone,
            IdClass::External,
            IdClass::AnonymousId,
        ];
        let listed: BTreeSet<IdClass> = self.identity.priority.iter().copied().collect();
        if listed.len() != self.identity.priority.len() || listed.len() != all.len() {
            problem(format!(
                "identity.priority = {:?} must list each of user_id, email, phone, external, \
                 anonymous_id exactly once",
                self.identity.priority
            ));
        }
        let i = &self.identity;
        for (name, value) in [
            ("identity.max_user_ids", i.max_user_ids),
            ("identity.max_emails", i.max_emails),
            ("identity.max_phones", i.max_phones),
            (
                "identity.max_external_ids_per_type",
                i.max_external_ids_per_type,
            ),
            ("identity.max_anonymous_ids", i.max_anonymous_ids),
            ("identity.max_external_types", i.max_external_types),
            ("identity.max_identities", i.max_identities),
            ("identity.max_audit_records", i.max_audit_records),
        ] {
            if value == 0 {
                problem(format!("{name} is 0; it must be at least 1"));
            }
        }
        if i.max_audit_records > crate::model::audit::AUDIT_RECORDS_CEILING {
            problem(format!(
                "identity.max_audit_records ({}) is above {}: the kept records' positions are \
                 stored in the profile, which every event on it rewrites",
                i.max_audit_records,
                crate::model::audit::AUDIT_RECORDS_CEILING
            ));
        }
    }

    /// The merge rules of `[identity]`.
    pub fn merge_rules(&self) -> MergeRules {
        let i = &self.identity;
        MergeRules {
            priority: i.priority.clone(),
            limits: BTreeMap::from([
                (IdClass::UserId, i.max_user_ids),
                (IdClass::Email, i.max_emails),
                (IdClass::Phone, i.max_phones),
                (IdClass::External, i.max_external_ids_per_type),
                (IdClass::AnonymousId, i.max_anonymous_ids),
            ]),
            external_types_max: i.max_external_types,
            identities_max: i.max_identities,
        }
    }

    /// The settings that change how the log is applied — identity rules, dedup window,
    /// retention, the clock step, computed-trait definitions — as one JSON value. A backup
    /// records it; a restore under other settings would not reproduce the same state from
    /// the same log, so it is refused unless forced.
    pub fn apply_record(&self) -> serde_json::Value {
        serde_json::json!({
            "identity": self.identity,
            "ingest.dedup_window_hours": self.ingest.dedup_window_hours,
            "ingest.retention_days": self.ingest.retention_days,
            "limits.clock_step_ms_max": self.limits.clock_step_ms_max,
            "computed_traits": self.computed_traits,
        })
    }

    /// What the state machine needs.
    pub fn apply_settings(&self) -> ApplySettings {
        ApplySettings {
            rules: self.merge_rules(),
            dedup_window_ms: (self.ingest.dedup_window_hours * 3_600_000) as i64,
            retention_ms: (self.ingest.retention_days * 86_400_000) as i64,
            audit_records_max: self.identity.max_audit_records,
            clock_step_ms_max: self.limits.clock_step_ms_max,
        }
    }
}

fn check_key(problem: &mut (impl FnMut(String) + ?Sized), name: &str, key: &str) {
    if key.chars().count() < KEY_CHARS_MIN {
        problem(format!(
            "{name} is shorter than {KEY_CHARS_MIN} characters; use a longer random key"
        ));
    }
    if key.contains(':') || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        problem(format!(
            "{name} contains ':', whitespace or control characters, which HTTP Basic auth \
             cannot carry; use letters, digits and punctuation other than ':'"
        ));
    }
}

/// Reads a secret from a file that only its owner may read: a key file that others can
/// read is refused, not silently used.
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    let metadata = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} is readable by others (mode {mode:o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = metadata;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret.to_owned())
}

/// Settings given as command-line flags; they override file and environment.
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--listen`
    pub listen: Option<String>,
    /// `--write-key`: adds (or replaces the key of) the source named `default`.
    pub write_key: Option<String>,
    /// `--admin-key`
    pub admin_key: Option<String>,
    /// `--node-id`
    pub node_id: Option<u64>,
    /// `--region`
    pub region: Option<String>,
    /// `--advertise-url`
    pub advertise_url: Option<String>,
    /// `--peer-listen`
    pub peer_listen: Option<String>,
    /// `--advertise-peer-url`
    pub advertise_peer_url: Option<String>,
    /// `--cluster-key-file`
    pub cluster_key_file: Option<PathBuf>,
    /// `--join`: do not bootstrap.
    pub join: bool,
    /// `--enable-faults`
    pub enable_faults: bool,
}

impl CliOverrides {
    fn apply(&self, config: &mut Config) {
        if let Some(dir) = &self.data_dir {
            config.node.data_dir = dir.clone();
        }
        if let Some(listen) = &self.listen {
            config.node.listen = listen.clone();
        }
        if let Some(key) = &self.admin_key {
            config.auth.admin_key = key.clone();
        }
        if let Some(id) = self.node_id {
            config.cluster.node_id = id;
        }
        if let Some(region) = &self.region {
            config.cluster.region = region.clone();
        }
        if let Some(url) = &self.advertise_url {
            config.cluster.advertise_url = url.clone();
        }
        if let Some(listen) = &self.peer_listen {
            config.node.peer_listen = listen.clone();
        }
        if let Some(url) = &self.advertise_peer_url {
            config.cluster.advertise_peer_url = url.clone();
        }
        if let Some(path) = &self.cluster_key_file {
            config.cluster.cluster_key_file = path.clone();
        }
        if self.join {
            config.cluster.bootstrap = false;
        }
        if self.enable_faults {
            config.faults.enabled = true;
        }
        if let Some(key) = &self.write_key {
            match config.sources.iter_mut().find(|s| s.name == "default") {
                Some(source) => source.write_key = key.clone(),
                None => config.sources.push(SourceConfig {
                    name: "default".into(),
                    write_key: key.clone(),
                    write_keys: Vec::new(),
                    events_per_sec: None,
                    burst_events: None,
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config {
            tls: TlsConfig {
                peer_plaintext: true,
                ..TlsConfig::default()
            },
            sources: vec![SourceConfig {
                name: "web".into(),
                write_key: "web-write-key-0123456789".into(),
                write_keys: Vec::new(),
                events_per_sec: None,
                burst_events: None,
            }],
            ..Config::default()
        }
    }

    #[test]
    fn defaults_with_a_source_are_valid() {
        valid().validate().expect("valid");
    }

    #[test]
    fn every_problem_is_reported_with_its_setting() {
        let mut config = valid();
        config.node.listen = "nowhere".into();
        config.sources.push(SourceConfig {
            name: "web".into(),
            write_key: "short".into(),
            write_keys: Vec::new(),
            events_per_sec: None,
            burst_events: None,
        });
        config.limits.event_bytes_max = 1 << 20;
        config.identity.priority.pop();
        config.ingest.retention_days = 0;
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("expected problems");
        };
        let text = problems.join("\n");
        for needle in [
            "node.listen",
            "sources[1].name",
            "sources[1].write_key is shorter",
            "limits.event_bytes_max",
            "identity.priority",
            "ingest.retention_days is 0",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn example_file_parses_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tandem.example.toml");
        let from_file: Config = Figment::from(Toml::file_exact(&path))
            .extract()
            .expect("tandem.example.toml parses");
        let expected = Config {
            sources: from_file.sources.clone(),
            auth: from_file.auth.clone(),
            ..Config::default()
        };
        assert_eq!(from_file, expected, "the example documents the defaults");
        // Its keys are placeholders, refused so that no node runs on a published key; with
        // real keys in their place it is valid.
        let Err(ConfigError::Invalid(problems)) = from_file.validate() else {
            panic!("the example's placeholder keys must be refused");
        };
        // So is a cluster without peer certificates: the default is mutual TLS.
        assert_eq!(problems.len(), from_file.sources.len() + 1, "{problems:?}");
        assert!(
            problems
                .iter()
                .all(|p| p.contains("placeholder") || p.contains("needs mutual TLS")),
            "{problems:?}"
        );
        let mut replaced = from_file;
        for (i, source) in replaced.sources.iter_mut().enumerate() {
            source.write_key = format!("a-real-random-write-key-{i}");
        }
        replaced.tls.peer_cert_file = "node.pem".into();
        replaced.tls.peer_key_file = "node.key".into();
        replaced.tls.peer_ca_file = "ca.pem".into();
        replaced
            .validate()
            .expect("the example with real keys is valid");
    }

    #[test]
    fn an_injected_open_delay_needs_faults_enabled_and_a_bound() {
        let mut config = valid();
        config.faults.service_open_delay_ms = 5_000;
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("a fault without faults.enabled must be refused");
        };
        assert!(problems[0].contains("faults.enabled"), "{problems:?}");
        config.faults.enabled = true;
        config.validate().expect("with faults enabled");
        config.faults.service_open_delay_ms = SERVICE_OPEN_DELAY_MS_MAX + 1;
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("an unbounded delay must be refused");
        };
        assert!(problems[0].contains("longer than"), "{problems:?}");
    }

    #[test]
    fn the_peer_listener_needs_its_own_port() {
        let mut config = valid();
        config.node.listen = "0.0.0.0:8080".into();
        config.node.peer_listen = "10.0.0.7:8080".into();
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("the same port twice must be refused");
        };
        assert!(problems[0].contains("node.peer_listen"), "{problems:?}");
        config.node.peer_listen = "10.0.0.7:9080".into();
        config.validate().expect("ports of their own");
        config.node.listen = "127.0.0.1:0".into();
        config.node.peer_listen = "127.0.0.1:0".into();
        config.validate().expect("two free ports");
    }

    #[test]
    fn flags_override_and_add_the_default_source() {
        let mut config = valid();
        CliOverrides {
            listen: Some("127.0.0.1:0".into()),
            write_key: Some("flag-write-key-0123456789".into()),
            ..CliOverrides::default()
        }
        .apply(&mut config);
        assert_eq!(config.node.listen, "127.0.0.1:0");
        assert_eq!(config.sources[1].name, "default");
        config.validate().expect("valid");
    }
}
