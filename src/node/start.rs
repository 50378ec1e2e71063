//! Starting a node: check the data directory's format, open the log, the store and the
//! snapshots, start Raft, bootstrap a one-node cluster on first start when configured to,
//! and start the proposer, the leader's ticker and the log's upkeep.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use super::{Cluster, Node, Stats, format, housekeeping, proposer, ticker};
use crate::cluster::identity::ClusterIdentity;
use crate::cluster::log_store::LogStore;
use crate::cluster::network::{Faults, Network};
use crate::cluster::snapshot::Snapshots;
use crate::cluster::state_machine::StateMachine;
use crate::cluster::{Member, Raft};
use crate::config::Config;
use crate::log::{Log, LogOptions};
use crate::services::db::ServiceDb;
use crate::services::recommend::ModelConfig;
use crate::services::supervisor::{Factory, Opener, Supervisor};
use crate::services::{audience, computed, recommendations};
use crate::store::{Store, StoreConfig};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A directory or file of the data directory could not be used.
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// The store did not open.
    #[error("cannot open the store at {path}: {source}")]
    Store {
        path: String,
        source: crate::store::StoreError,
    },
    /// Raft did not start.
    #[error("cannot start raft: {0}")]
    Raft(String),
    /// The data directory is in another format.
    #[error(transparent)]
    Format(#[from] format::FormatError),
    /// The `[alerts]` section names an unknown rule.
    #[error("{0}")]
    Alerts(String),
    /// The log did not open.
    #[error("cannot open the log: {0}")]
    Log(#[from] crate::log::LogError),
    /// A certificate, key or CA file is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Where this node is reached, as recorded in the membership.
#[derive(Debug, Clone)]
pub struct Advertised {
    /// The client listener's URL.
    pub client_url: String,
    /// The peer listener's URL.
    pub peer_url: String,
}

fn data_dir_error(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::DataDir {
        path: path.display().to_string(),
        source,
    }
}

/// Starts a node with `config`, reachable at `advertised`, calling peers with `tls`.
pub async fn start(
    config: &Config,
    advertised: Advertised,
    tls: &super::tls::NodeTls,
) -> Result<Arc<Node>, NodeError> {
    let Advertised {
        client_url: advertise_url,
        peer_url: advertise_peer_url,
    } = advertised;
    let dir = config.node.data_dir.clone();
    std::fs::create_dir_all(&dir).map_err(data_dir_error(&dir))?;
    let started = std::time::Instant::now();
    format::check_or_stamp(&dir)?;
    format::check_restored(&dir, config.cluster.node_id)?;
    let log_dir = dir.join("log");
    let log = {
        let intact_through = if log_dir.exists() {
            crate::cluster::log_store::committed_index_in(&log_dir)
                .map_err(data_dir_error(&log_dir))?
        } else {
            None
        };
        let options = LogOptions {
            segment_bytes_max: config.storage.segment_mb << 20,
            intact_through,
            ..LogOptions::new(log_dir.clone())
        };
        tokio::task::spawn_blocking(move || Log::open(options))
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))??
    };
    let snapshots = Snapshots::open(&dir).map_err(data_dir_error(&dir))?;
    // A snapshot install a crash interrupted is completed below; until then the state may be
    // ahead of the log, and what the store derives from both waits.
    let install_interrupted = snapshots
        .store_pending()
        .map_err(data_dir_error(&dir))?
        .is_some();
    let store_path = Store::dir_in(&dir);
    let store_config = StoreConfig {
        path: store_path.clone(),
        cache_bytes: config.storage.cache_mb << 20,
        apply: config.apply_settings(),
    };
    let store_log = log.clone();
    // Opened on a thread of its own at the storage priority, which the storage engine's
    // background threads inherit (see `super::priority`).
    let store = tokio::task::spawn_blocking(move || {
        super::priority::spawn_niced(
            "tandem-store-open",
            super::priority::STORAGE_NICE,
            move || {
                if install_interrupted {
                    Store::open_interrupted_install(store_config, store_log)
                } else {
                    Store::open(store_config, store_log)
                }
            },
        )
    })
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?
    .map_err(|e| NodeError::Raft(format!("opening the store: {e}")))?
    .map_err(|source| NodeError::Store {
        path: store_path.display().to_string(),
        source,
    })?;
    let store = Arc::new(store);
    let log_store = LogStore::open(log).map_err(data_dir_error(&log_dir))?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "storage open"
    );

    let cluster_config = &config.cluster;
    let cluster_key = if cluster_config.cluster_key.is_empty() {
        tracing::warn!(
            "cluster.cluster_key is not set: using a random key, so no other node can join this one"
        );
        uuid::Uuid::new_v4().simple().to_string()
    } else {
        cluster_config.cluster_key.clone()
    };
    let raft_config = openraft::Config {
        cluster_name: "tandem".into(),
        heartbeat_interval: cluster_config.heartbeat_ms,
        election_timeout_min: cluster_config.election_timeout_min_ms,
        election_timeout_max: cluster_config.election_timeout_max_ms,
        // Entries are whole group commits (up to limits.commit_events_max events): keep
        // replication messages to a sane size.
        max_payload_entries: 16,
        // Snapshots are built by bytes or time (see `housekeeping`), not every N entries.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: cluster_config.log_keep_after_snapshot,
        // Purging is one small durable write here (the segments stay for the event
        // store), so purge as soon as a snapshot allows it.
        purge_batch_size: 1,
        install_snapshot_timeout: 600_000,
        enable_pre_vote: Some(true),
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::Raft(e.to_string()))?;
    let faults = Arc::new(Faults::default());
    let id = cluster_config.node_id;
    let identity = Arc::new(ClusterIdentity::load(&dir).map_err(data_dir_error(&dir))?);
    let network = Network::new(
        id,
        &cluster_key,
        Arc::clone(&faults),
        tls.peer_http()?,
        Arc::clone(&identity),
    )
    .map_err(|e| NodeError::Raft(e.to_string()))?;
    let replicate_seconds = network.replicate_seconds().clone();
    let state_machine = StateMachine::new(Arc::clone(&store), snapshots.clone());
    let snapshot_metrics = state_machine.snapshot_metrics().clone();
    let apply_seconds = state_machine.apply_seconds().clone();
    {
        let machine = state_machine.clone();
        tokio::task::spawn_blocking(move || machine.finish_interrupted_install())
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
            .map_err(|e| {
                NodeError::Raft(format!("completing an interrupted snapshot install: {e}"))
            })?;
    }
    // Raft owns the state machine; this handle shares it, to attach the services later.
    let services_slot = state_machine.clone();
    let applied_index = state_machine.applied_index();
    let log_store_handle = log_store.clone();
    let raft = Raft::new(id, Arc::new(raft_config), network, log_store, state_machine)
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    let me = Member {
        url: advertise_url.clone(),
        peer_url: advertise_peer_url.clone(),
        region: cluster_config.region.clone(),
    };
    if cluster_config.bootstrap
        && !raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
    {
        tracing::info!(node_id = id, "bootstrapping a one-node cluster");
        if identity.get().is_none() {
            let cluster = identity.create().map_err(data_dir_error(&dir))?;
            tracing::info!(cluster, "new cluster id");
        }
        raft.initialize(BTreeMap::from([(id, me.clone())]))
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
    }
    // A node whose address or region changed (a restored node, before anything else)
    // corrects its own entry in the membership once it leads.
    tokio::spawn(crate::cluster::membership::refresh_own_address(
        raft.clone(),
        id,
        me,
    ));

    let trait_defs = Arc::new(config.computed_traits.clone());
    let open_delay = match config.faults.enabled {
        true => Duration::from_millis(config.faults.service_open_delay_ms),
        false => Duration::ZERO,
    };
    let services = start_services(&dir, &store, &trait_defs, open_delay);
    // From here snapshots carry the services' state; a snapshot installed while Raft
    // started (or an import a crash cut short) has its services' state imported once
    // their databases are open.
    services_slot
        .attach_services(Arc::clone(&services) as Arc<dyn crate::cluster::derived::DerivedState>)
        .map_err(|e| NodeError::Raft(format!("reading the services' snapshot marker: {e}")))?;
    let checkpoint_services = services_slot
        .checkpoint_services()
        .ok_or_else(|| NodeError::Raft("the services are not attached".into()))?;

    let stats = Arc::new(Stats::default());
    let metrics = Arc::new(super::metrics::Metrics::new(
        &dir,
        super::metrics::Sources {
            log_fsync: log_store_handle.fsync_seconds().clone(),
            snapshots: snapshot_metrics,
            service_batches: services.batch_durations().clone(),
            apply: apply_seconds,
            replicate: replicate_seconds,
        },
    ));
    metrics.set_certificate_expiry("client", tls.client_not_after);
    metrics.set_certificate_expiry("peer", tls.peer_not_after);
    tokio::spawn(super::metrics::watch_leader(
        raft.clone(),
        Arc::clone(&metrics),
    ));
    let samples = Arc::new(std::sync::Mutex::new(super::samples::SampleRing::new(
        super::samples::SAMPLES_MAX,
    )));
    tokio::spawn(super::samples::run(
        Arc::clone(&store),
        Arc::clone(&metrics),
        Arc::clone(&samples),
    ));
    let failed = Arc::new(AtomicBool::new(false));
    let (queue, receiver) = mpsc::unbounded_channel();
    let http = tls
        .peer_http()?
        .connect_timeout(std::time::Duration::from_secs(1))
        .build()
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    tokio::spawn(housekeeping::run(
        raft.clone(),
        Arc::clone(&store),
        housekeeping::SnapshotPolicy {
            log_bytes: cluster_config.snapshot_log_mb << 20,
            interval: std::time::Duration::from_secs(cluster_config.snapshot_interval_secs),
        },
        config.archiving().then(|| housekeeping::ArchiveGuard {
            metrics: metrics.archive.clone(),
            backlog_bytes_max: config.backup.archive_backlog_mb_max << 20,
        }),
    ));
    let stamper = Arc::new(proposer::Stamper::new(config.limits.clock_step_ms_max));
    tokio::spawn(ticker::run(ticker::Ticker {
        raft: raft.clone(),
        self_id: id,
        store: Arc::clone(&store),
        stamper: Arc::clone(&stamper),
        services: Arc::clone(&services),
        interval: std::time::Duration::from_millis(cluster_config.tick_interval_ms),
    }));
    let pending = Arc::new(super::pending::PendingWrites::default());
    let context = proposer::Context {
        raft: raft.clone(),
        store: Arc::clone(&store),
        self_id: id,
        http: http.clone(),
        cluster_key: cluster_key.clone(),
        identity: Arc::clone(&identity),
        commit_events_max: config.limits.commit_events_max,
        stamper: Arc::clone(&stamper),
        stats: Arc::clone(&stats),
        metrics: Arc::clone(&metrics),
        failed: Arc::clone(&failed),
        pending: Arc::clone(&pending),
        in_flight: std::sync::Mutex::new(crate::store::dedup::KeyMap::default()),
    };
    tokio::spawn(proposer::run(context, receiver));
    let alerts = super::alerts::Alerts::new(
        &config.alerts,
        id,
        &advertise_url,
        config.node.data_dir.clone(),
        Arc::clone(&metrics),
    )
    .map(Arc::new)
    .map_err(NodeError::Alerts)?;
    let node = Arc::new(Node {
        services,
        checkpoint_services,
        trait_defs,
        recommend_cache: recommendations::ModelCache::default(),
        store,
        http,
        stamper,
        cluster: Cluster {
            id,
            raft,
            log_store: log_store_handle,
            faults,
            snapshots,
            cluster_key,
            identity,
            advertise_url,
            advertise_peer_url,
            region: cluster_config.region.clone(),
            data_dir: dir.clone(),
            applied_index,
            pending,
        },
        queue,
        inflight: Arc::new(Semaphore::new(config.limits.inflight_events_max)),
        inflight_max: config.limits.inflight_events_max,
        inflight_bytes: super::budget::ByteBudget::new(config.limits.inflight_bytes_max),
        shares: super::shares::SourceShares::new(
            config.limits.inflight_events_max * config.limits.source_inflight_percent / 100,
        ),
        shutting_down: AtomicBool::new(false),
        failed,
        stats,
        metrics,
        samples,
        alerts: Arc::clone(&alerts),
    });
    if config.alerts.enabled {
        tokio::spawn(super::alerts::run(Arc::downgrade(&node), alerts));
    }
    Ok(node)
}

/// Starts the supervisor over the services' databases under `<data>/services/`.
///
/// The databases are not opened here: each service's worker opens its own (see
/// [`Opener`]), so after a crash their journals are replayed while the node already
/// listens and ingests, instead of before. The worker runs at the services' priority, and
/// the storage engine's flush and compaction threads, spawned by the open, inherit it (see
/// `super::priority`); opened from a thread at nice 0 they would run above ingest's own
/// storage threads, doing work for services that are meant to yield.
///
/// `open_delay` holds each service's first open back (an injected fault,
/// `faults.service_open_delay_ms`; zero otherwise).
fn start_services(
    dir: &Path,
    store: &Arc<Store>,
    trait_defs: &Arc<Vec<crate::services::traits::TraitDef>>,
    open_delay: Duration,
) -> Arc<Supervisor> {
    let opener = |name: &str| -> Opener {
        let path = dir.join("services").join(name);
        let name = name.to_owned();
        // Only the first attempt is held back.
        let held = AtomicBool::new(open_delay.is_zero());
        Box::new(move || {
            if !held.swap(true, Ordering::AcqRel) {
                tracing::warn!(service = %name, delay_ms = open_delay.as_millis() as u64, "injected fault: holding the service's database open back");
                std::thread::sleep(open_delay);
            }
            ServiceDb::open(&path)
        })
    };
    let defs = Arc::clone(trait_defs);
    let traits: Factory =
        Box::new(move || Box::new(computed::ComputedTraits::new(Arc::clone(&defs))));
    Supervisor::start(
        Arc::clone(store),
        vec![
            (computed::NAME, opener(computed::NAME), traits),
            (
                audience::NAME,
                opener(audience::NAME),
                audience::Segments::factory(Arc::clone(trait_defs)),
            ),
            (
                recommendations::NAME,
                opener(recommendations::NAME),
                recommendations::factory(ModelConfig::default()),
            ),
        ],
    )
}
