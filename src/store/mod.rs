//! Embedded storage: the state derived from the replicated log, in one fjall database (a
//! log-structured merge tree per keyspace, one shared journal), and reads of event bodies
//! from the log itself.
//!
//! The log ([`crate::log`]) is the event store: every event body lives once, compressed,
//! in the log entry that carried it. The state here keeps what queries and resolution need
//! — profiles, the identity graph, per-profile event indexes, merge trails, the change feed
//! — and finds a body by its seq (log index and position, see
//! [`tables::event_seq`]).
//!
//! Why fjall: measured against redb on this workload (`tools/storage-bench/RESULTS.md`,
//! summarised in `docs/architecture.md`): applying a batch updates profiles, identities and
//! index entries at random keys, which a copy-on-write B-tree pays for with a page rewrite
//! per key, while an LSM tree appends — about 4× the durable throughput, with point reads
//! still in microseconds.
//!
//! What this module guarantees:
//! - the state is changed only by applying committed log entries
//!   ([`Store::apply_committed`], in [`replicated`]): each call is one atomic write batch
//!   together with "how far it got", so a crash never leaves part of an entry applied;
//! - applying reads a consistent snapshot plus its own pending writes (the applier's
//!   overlays), so an entry that mentions a customer twice sees its own earlier updates;
//! - one writer at a time; readers run concurrently on consistent snapshots.
//!
//! Applies are not fsync'd: the log is the durable record and is replayed after a crash;
//! [`Store::persist`] fsyncs the state before a snapshot lets that log be purged.
//!
//! Submodules: [`tables`] (layout), [`apply`] (the state machine), [`dedup`] (the
//! idempotency check) and [`dedup_index`] (its index, derived from the feed and the log),
//! [`events`] (bodies from the log), [`read`] (queries and the state hash), [`replicated`]
//! (applying committed entries, snapshot export/import).

pub mod apply;
pub mod batch;
mod bloom;
pub mod body;
#[cfg(test)]
mod body_tests;
#[cfg(test)]
mod bounds_tests;
pub mod dedup;
pub mod dedup_index;
#[cfg(test)]
mod dedup_index_tests;
pub mod direct;
pub mod entry;
pub mod events;
pub mod hot;
pub mod known;
pub mod read;
pub mod recent;
pub mod replicated;
pub mod tables;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, Readable};

use crate::log::{Log, LogError};
use apply::ApplySettings;
use dedup::{ExpiryFactory, Horizon};
use events::BlockCache;
use tables::*;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (I/O error, disk full, …). The operation did not happen;
    /// it may succeed later, but the node should report itself unhealthy.
    #[error("storage engine error: {0}")]
    Engine(#[from] fjall::Error),
    /// Data on disk does not decode or breaks an invariant. Never retry: stop and restore.
    #[error("corrupt state: {0}")]
    Corrupt(String),
    /// The log (where event bodies live) failed.
    #[error("log: {0}")]
    Log(#[from] LogError),
    /// Not ready yet (being rebuilt): the operation may succeed shortly.
    #[error("not ready: {0}")]
    NotReady(String),
    /// A file of the store's own (outside the storage engine) could not be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The database directory.
    pub path: PathBuf,
    /// Block cache size, bytes.
    pub cache_bytes: usize,
    /// What applying does (must match on all replicas).
    pub apply: ApplySettings,
}

/// Memtable size per keyspace. fjall's default (64 MiB) holds ~10⁶ small entries in a
/// skiplist whose searches then dominate the apply path; smaller memtables measured faster
/// (see `docs/benchmarks.md`).
const MEMTABLE_BYTES_MAX: u64 = 2 << 20;

/// Memtable size of the profiles keyspace. A profile record is ~200–400 bytes against
/// ~40 for an index entry, so 16 MiB holds about as many entries (the skiplist search cost)
/// as 2 MiB of the others, and a customer's profile rewritten several times within a
/// session reaches disk once per flush instead of once per rewrite: 0.80× the bytes
/// written per event at equal CPU (3M events, `docs/benchmarks.md`).
const PROFILES_MEMTABLE_BYTES_MAX: u64 = 16 << 20;

/// Memtable size of the profiles' activity records (~20 bytes each, rewritten by every
/// event, read by apply when a profile is not in the hot cache and by every profile read).
/// Large, like the profiles keyspace's: each flush installs a new version of the keyspace,
/// during which its point reads wait (docs/benchmarks.md, "Reads while ingesting: where
/// the tail is"), and a customer rewritten several times within a session reaches disk
/// once per flush.
const ACTIVITY_MEMTABLE_BYTES_MAX: u64 = 16 << 20;

/// Memtable size of the profiles' event index, which apply writes for every event but never
/// searches (event queries seek once per profile). The reason the others' are small — a
/// skiplist search per lookup on the apply path — does not hold for it, and a larger
/// memtable flushes (and compacts its random keys) less often: with the dedup keys, which
/// were then a keyspace of their own, 0.88–0.90× the bytes written per event and 0.73–0.86×
/// the flush and compaction thread's CPU in four of four pairs at 3M events, the node's CPU
/// per event unchanged in the three pairs the machine did not disturb (docs/benchmarks.md,
/// "Fourteenth session: larger memtables for the two index keyspaces"). Like the other
/// options, fixed when a keyspace is created.
const INDEX_MEMTABLE_BYTES_MAX: u64 = 16 << 20;

/// Target size of a table file. Leveled compaction sizes L1 as [`L0_TABLES_MAX`] tables,
/// so fjall's default (64 MiB, with 4 L0 tables) made L1 256 MiB; every 4 flushed
/// memtables of random keys (profiles, dedup hashes, index entries) were merged into all
/// of it, rewriting up to 32× their size as the state grows. 8 MiB tables make L1 small
/// and let deeper levels take the growth (0.91× the bytes written per event at 3M events
/// alone, 0.67× with the profiles memtable). Applies to keyspaces when they are created:
/// fjall keeps a keyspace's options in its data directory, so an existing store keeps
/// what it had.
const TABLE_BYTES_TARGET: u64 = 8 << 20;

/// How every keyspace's data blocks are compressed: lz4, at every level. fjall's default
/// compresses only from level 2 down, but a node writes most of its table bytes into levels
/// 0 and 1 (every flush, and the merges into a level 1 of [`L0_TABLES_MAX`] tables), so
/// profile records and index entries went to disk as they are. Measured at 3M events, four
/// pairs in both orders: 0.80–0.82× the bytes written per event in every pair, fjall's
/// worker 1.16–1.36× (the compressing), the node's CPU per event 0.97–1.03× in three pairs
/// (1.22× in one where every thread ran slower, parsing too) (docs/benchmarks.md, "Sixteenth
/// session: lz4 at every level"). Like the other options, fixed when a keyspace
/// is created; a table records its own compression, so a store holding tables of both
/// kinds reads both.
pub(crate) fn data_block_compression() -> fjall::config::CompressionPolicy {
    fjall::config::CompressionPolicy::all(fjall::CompressionType::Lz4)
}

/// Flushed tables a keyspace's level 0 collects before they are compacted into level 1
/// (fjall's default is 4). L1 is sized as that many tables, 64 MiB, and each level below
/// it 10× the one above, so every level doubles. Measured at 3M events, in both orders of
/// the runs: 0.82–0.86× the bytes written per event and 0.89–0.93× the CPU
/// (docs/benchmarks.md, "Twelfth session"). Most likely because a state of a few hundred
/// MiB per keyspace then needs one level fewer, each level a rewrite of the random keys
/// that pass through it; not verified level by level. Point reads look into every L0
/// table (behind its filter), and 12 or 16 showed no further gain. Like the table size,
/// fixed when a keyspace is created.
const L0_TABLES_MAX: u8 = 8;

fn poisoned_filter() -> StoreError {
    StoreError::Corrupt("a filter's lock is poisoned".into())
}

/// Name of the store directory inside a node's data directory.
pub const STORE_DIR: &str = "store";

/// Handles to every keyspace.
pub struct Keyspaces {
    pub(crate) meta: Keyspace,
    pub(crate) profile_events: Keyspace,
    pub(crate) identities: Keyspace,
    pub(crate) profiles: Keyspace,
    pub(crate) redirects: Keyspace,
    pub(crate) merges: Keyspace,
    pub(crate) dedup: Keyspace,
    pub(crate) feed: Keyspace,
    pub(crate) segment_defs: Keyspace,
    pub(crate) profile_activity: Keyspace,
}

impl Keyspaces {
    fn open(db: &Database) -> Result<Keyspaces, StoreError> {
        let plain = |name: &str| {
            let memtable_bytes = match name {
                PROFILES => PROFILES_MEMTABLE_BYTES_MAX,
                PROFILE_EVENTS => INDEX_MEMTABLE_BYTES_MAX,
                PROFILE_ACTIVITY => ACTIVITY_MEMTABLE_BYTES_MAX,
                _ => MEMTABLE_BYTES_MAX,
            };
            let compaction = fjall::compaction::Leveled::default()
                .with_table_target_size(TABLE_BYTES_TARGET)
                .with_l0_threshold(L0_TABLES_MAX);
            db.keyspace(name, || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(memtable_bytes)
                    .compaction_strategy(Arc::new(compaction))
                    .data_block_compression_policy(data_block_compression())
            })
        };
        Ok(Keyspaces {
            meta: plain(META)?,
            profile_events: plain(PROFILE_EVENTS)?,
            identities: plain(IDENTITIES)?,
            profiles: plain(PROFILES)?,
            redirects: plain(REDIRECTS)?,
            merges: plain(MERGES)?,
            dedup: plain(DEDUP)?,
            feed: plain(FEED)?,
            segment_defs: plain(SEGMENT_DEFS)?,
            profile_activity: plain(PROFILE_ACTIVITY)?,
        })
    }

    /// The state keyspaces with their names, in [`STATE_KEYSPACES`] order.
    pub(crate) fn state(&self) -> [(&'static str, &Keyspace); 10] {
        [
            (META, &self.meta),
            (PROFILE_EVENTS, &self.profile_events),
            (IDENTITIES, &self.identities),
            (PROFILES, &self.profiles),
            (REDIRECTS, &self.redirects),
            (MERGES, &self.merges),
            (DEDUP, &self.dedup),
            (FEED, &self.feed),
            (SEGMENT_DEFS, &self.segment_defs),
            (PROFILE_ACTIVITY, &self.profile_activity),
        ]
    }
}

/// The embedded store.
pub struct Store {
    db: Database,
    ks: Keyspaces,
    config: StoreConfig,
    /// The log: where event bodies are read from.
    log: Log,
    /// Recently decoded blocks, shared by the events API and every service.
    blocks: BlockCache,
    /// The dedup horizon, advanced after each apply.
    horizon: Horizon,
    /// The dedup keys by hash, derived from the feed and the log (see [`dedup_index`]).
    dedup: Arc<dedup_index::DedupIndex>,
    /// Committed identity owners and profiles that applying looks up most.
    hot: hot::HotCache,
    /// Every identity key the state may hold, so applying skips store lookups of new
    /// ones; replaced by a new one, answering "maybe" until the filters' builder has
    /// scanned the state, at open and after a snapshot install (see [`known`]); `None`
    /// (every lookup goes to the store) while a snapshot replaces the state.
    known: std::sync::Mutex<Option<Arc<known::KnownIdentities>>>,
    /// The dedup keys the state may hold, so the leader's screen skips store lookups of
    /// new ones; replaced by a new one, empty until the filters' builder has scanned the
    /// state, at open and after a snapshot install (see [`recent`]).
    recent: std::sync::Mutex<Option<Arc<recent::RecentKeys>>>,
    /// The thread filling `known` and then `recent`, joined before they are replaced and
    /// when the store closes (it holds the database open).
    filters_builder: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Serialises appliers (one writer at a time).
    writer: std::sync::Mutex<()>,
    /// Odd while a snapshot replaces the state and the log; see [`Store::replace_epoch`].
    replace_epoch: std::sync::atomic::AtomicU64,
}

impl Store {
    /// Opens (or creates) the store at `config.path`, recovering from its journal after a
    /// crash. Event bodies are read from `log`.
    pub fn open(config: StoreConfig, log: Log) -> Result<Store, StoreError> {
        Store::open_inner(config, log, false)
    }

    /// [`Store::open`] for a store whose snapshot install a crash interrupted: its state may
    /// be ahead of its log, so the dedup index (derived from both) and the filters wait
    /// until the install is completed ([`Store::rebuild_dedup_index`]); the leader cannot
    /// screen on it meanwhile.
    pub fn open_interrupted_install(config: StoreConfig, log: Log) -> Result<Store, StoreError> {
        Store::open_inner(config, log, true)
    }

    fn open_inner(
        config: StoreConfig,
        log: Log,
        install_interrupted: bool,
    ) -> Result<Store, StoreError> {
        let horizon = Horizon::default();
        let factory: Arc<dyn fjall::compaction::filter::Factory> = Arc::new(ExpiryFactory {
            horizon: horizon.clone(),
        });
        let db = database_builder(&config.path, config.cache_bytes as u64)?
            .with_compaction_filter_factories(Arc::new(move |keyspace: &str| {
                (keyspace == dedup::KEYSPACE).then(|| Arc::clone(&factory))
            }))
            .open()?;
        let ks = Keyspaces::open(&db)?;
        let dedup = dedup_index::DedupIndex::new(config.path.join(dedup_index::RUNS_DIR))?;
        let store = Store {
            db,
            ks,
            log,
            blocks: BlockCache::new(BLOCK_CACHE_BYTES),
            horizon,
            dedup: Arc::new(dedup),
            hot: hot::HotCache::default(),
            known: std::sync::Mutex::new(None),
            recent: std::sync::Mutex::new(None),
            filters_builder: std::sync::Mutex::new(None),
            writer: std::sync::Mutex::new(()),
            replace_epoch: std::sync::atomic::AtomicU64::new(0),
            config,
        };
        let clock = store.reader().clock_ms()?;
        store.advance_horizon(clock);
        if install_interrupted {
            store.dedup.forget()?;
        } else {
            store
                .dedup
                .restore(&store.dedup_source(&store.db.snapshot()), &store.horizon)?;
            store.start_filters()?;
        }
        Ok(store)
    }

    /// Installs empty filters of identity keys and of recent dedup keys, and starts the
    /// thread that fills them from the state, one after the other (see [`known`] and
    /// [`recent`]); until each is filled, the lookups it would spare go to the store.
    /// Callers hold the writer lock, or run before anything can apply.
    fn start_filters(&self) -> Result<(), StoreError> {
        self.stop_filters()?;
        // Sized for twice what the state holds now, as fjall counts it roughly.
        let identities = self.ks.identities.approximate_len() as u64;
        let known = Arc::new(known::KnownIdentities::with_capacity(identities * 2));
        self.set_known(Some(Arc::clone(&known)))?;
        let recent = Arc::new(recent::RecentKeys::new(
            self.config.apply.dedup_window_ms,
            self.horizon.clone(),
        ));
        *self.recent.lock().map_err(|_| poisoned_filter())? = Some(Arc::clone(&recent));
        // Taken after both filters are installed: what commits later is inserted by apply.
        let snapshot = self.db.snapshot();
        let keyspaces = (self.ks.identities.clone(), Arc::clone(&self.dedup));
        let spawned = std::thread::Builder::new()
            .name("tandem-filters".into())
            .spawn(move || {
                let (identities, dedup) = keyspaces;
                fill_known(&known, &snapshot, &identities);
                drop(snapshot);
                recent::build(&recent, &dedup);
            });
        match spawned {
            Ok(builder) => {
                *self.filters_builder.lock().map_err(|_| poisoned_filter())? = Some(builder)
            }
            // Never ready: every lookup goes to the store, as without filters.
            Err(error) => tracing::warn!(
                %error,
                "could not start the filters' builder; identities and duplicates are looked up in the store"
            ),
        }
        Ok(())
    }

    /// Drops both filters (every lookup goes to the store) and waits for their builder to
    /// stop.
    fn stop_filters(&self) -> Result<(), StoreError> {
        if let Some(known) = self.known.lock().map_err(|_| poisoned_filter())?.take() {
            known.abandon();
        }
        if let Some(filter) = self.recent.lock().map_err(|_| poisoned_filter())?.take() {
            filter.abandon();
        }
        let builder = self
            .filters_builder
            .lock()
            .map_err(|_| poisoned_filter())?
            .take();
        if let Some(builder) = builder
            && builder.join().is_err()
        {
            tracing::warn!("the filters' builder panicked");
        }
        Ok(())
    }

    /// The filter of recent dedup keys, if there is one (ready or not).
    pub(crate) fn recent(&self) -> Result<Option<Arc<recent::RecentKeys>>, StoreError> {
        Ok(self.recent.lock().map_err(|_| poisoned_filter())?.clone())
    }

    /// Replaces the filter of identity keys (`None`: none, every lookup goes to the store).
    fn set_known(&self, known: Option<Arc<known::KnownIdentities>>) -> Result<(), StoreError> {
        *self.known.lock().map_err(|_| poisoned_filter())? = known;
        Ok(())
    }

    /// The filter of identity keys the state may hold, if there is one.
    pub(crate) fn known(&self) -> Result<Option<Arc<known::KnownIdentities>>, StoreError> {
        Ok(self.known.lock().map_err(|_| poisoned_filter())?.clone())
    }

    /// Opens the log (`<data_dir>/log`, default options) and the store
    /// (`<data_dir>/store`) of a data directory: for tools and tests that use a store
    /// without a node.
    pub fn open_in(
        data_dir: &Path,
        cache_bytes: usize,
        apply: ApplySettings,
    ) -> Result<Store, StoreError> {
        let log = Log::open(crate::log::LogOptions::new(data_dir.join("log")))?;
        Store::open(
            StoreConfig {
                path: Store::dir_in(data_dir),
                cache_bytes,
                apply,
            },
            log,
        )
    }

    /// The store directory in `data_dir`.
    pub fn dir_in(data_dir: &Path) -> PathBuf {
        data_dir.join(STORE_DIR)
    }

    /// A consistent read-only view of the state.
    pub fn reader(&self) -> read::Reader<'_> {
        read::Reader::new(self.db.snapshot(), &self.ks, self)
    }

    /// The settings applying uses.
    pub fn apply_settings(&self) -> &ApplySettings {
        &self.config.apply
    }

    /// The log event bodies are read from.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Counts snapshot installs: odd while one replaces the state and then the log, so the
    /// feed may name events whose bodies are not in the log yet. A reader that sees the
    /// same even value before and after reading has read one consistent store and log.
    pub fn replace_epoch(&self) -> u64 {
        self.replace_epoch
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks the start (`true`) or the end (`false`) of replacing the state and the log.
    pub fn mark_replacing(&self, starting: bool) {
        let was = self
            .replace_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        debug_assert_eq!(was % 2 == 1, !starting, "unbalanced snapshot install marks");
    }

    /// Screens `(source, messageId)` pairs for duplicates (the leader, before proposing).
    pub fn screen<'k>(
        &self,
        keys: impl IntoIterator<Item = (&'k str, &'k str)>,
    ) -> Result<Vec<dedup::Seen>, StoreError> {
        dedup::Screen::new(self).check(keys)
    }

    /// [`Store::screen`] for keys already hashed with [`tables::dedup_hash`].
    pub fn screen_hashes(
        &self,
        hashes: impl IntoIterator<Item = [u8; 16]>,
    ) -> Result<Vec<dedup::Seen>, StoreError> {
        dedup::Screen::new(self).check_hashes(hashes)
    }

    /// What the dedup index is derived from, at `snapshot`.
    fn dedup_source<'s>(&'s self, snapshot: &'s fjall::Snapshot) -> dedup_index::Source<'s> {
        dedup_index::Source {
            snapshot,
            feed: &self.ks.feed,
            log: &self.log,
        }
    }

    fn advance_horizon(&self, clock_ms: i64) {
        self.horizon
            .advance(clock_ms.saturating_sub(self.config.apply.dedup_window_ms));
    }
}

/// Fills `known` from the identity keys in `snapshot` (the filters' builder thread).
fn fill_known(known: &known::KnownIdentities, snapshot: &fjall::Snapshot, identities: &Keyspace) {
    let started = std::time::Instant::now();
    match known.fill(snapshot.iter(identities).map(|g| g.key())) {
        Ok(Some(scanned)) => tracing::info!(
            identities = scanned,
            bytes = known.bytes(),
            took_ms = started.elapsed().as_millis() as u64,
            "built the filter of known identities"
        ),
        Ok(None) => tracing::debug!("the filter of known identities was abandoned"),
        Err(error) => tracing::warn!(
            %error,
            "could not build the filter of known identities; identities are looked up in the store"
        ),
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The builder holds the database open: stop it, so the store can be reopened.
        if let Err(error) = self.stop_filters() {
            tracing::warn!(%error, "stopping the filters' builder");
        }
        // A run still being written would land in a directory a reopened store reads.
        self.dedup.join_sealer();
    }
}

/// fjall's background threads (memtable flushes and compactions). With more than one,
/// fjall 3.1's pool hands compaction requests from its first worker to the others by
/// re-queueing them, and that worker spins re-queueing while the others compact —
/// measured at 16% of a node's CPU under ingest. One thread does both, without spinning.
pub const FJALL_WORKER_THREADS: usize = 1;

/// Most bytes of journal a database keeps on disk: fjall's smallest allowed bound (its
/// default is 512 MiB).
///
/// A journal file is deleted only once every keyspace has flushed what it wrote there. The
/// small keyspaces written with every batch (the state's `META` and feed, a service's
/// cursor) seldom fill a memtable, so they pin every journal until this bound makes fjall
/// flush them. After a crash the node replays the whole journal into memtables before it
/// opens: with the default, the journals held ~460 MiB (the store) and ~320 MiB (the three
/// services) when a 3M-event load ended, and a node restarted after `kill -9` listened
/// after 9.7–10.8 s; with this bound, 64 and 192 MiB, and 3.6–4.0 s (docs/benchmarks.md,
/// "Restart after kill -9").
pub const JOURNAL_BYTES_MAX: u64 = 64 << 20;

/// How every fjall database of a node is opened (the state store, each service's
/// database): one background thread ([`FJALL_WORKER_THREADS`]), journals bounded by
/// [`JOURNAL_BYTES_MAX`], a block cache of `cache_bytes`; the leftovers of a creation
/// that a crash interrupted are cleared first ([`clear_unfinished_creation`]).
pub(crate) fn database_builder(
    path: &std::path::Path,
    cache_bytes: u64,
) -> Result<fjall::DatabaseBuilder<Database>, fjall::Error> {
    clear_unfinished_creation(path)?;
    Ok(Database::builder(path)
        .cache_size(cache_bytes)
        .worker_threads(FJALL_WORKER_THREADS)
        .max_journaling_size(JOURNAL_BYTES_MAX))
}

/// What fjall 3.1 creates in a new database's directory before its `version` marker: its
/// lock file, its first journal and its keyspaces folder (empty until the marker is
/// written).
const CREATION_LEFTOVERS: [&str; 3] = ["lock", "0.jnl", "keyspaces"];

/// fjall writes (and fsyncs) a new database's `version` marker last, and recovers only a
/// directory that has one; a crash between its first file and the marker leaves a
/// directory it then cannot create again (`0.jnl` exists): the database could never open.
/// Nothing was ever written to such a database (writes start after creation returned), so
/// its leftovers are removed and it is created anew. A directory without a marker that
/// holds anything else is left as it is, for the open to report.
fn clear_unfinished_creation(path: &std::path::Path) -> std::io::Result<()> {
    if !path.is_dir() || path.join("version").try_exists()? {
        return Ok(());
    }
    let mut leftovers = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        let known = CREATION_LEFTOVERS.iter().any(|left| name == *left);
        let empty_folder = name != "keyspaces" || std::fs::read_dir(entry.path())?.next().is_none();
        if !known || !empty_folder {
            return Ok(());
        }
        leftovers.push(entry.path());
    }
    for leftover in leftovers {
        tracing::warn!(
            path = %leftover.display(),
            "removing what an interrupted creation of this database left"
        );
        if leftover.is_dir() {
            std::fs::remove_dir(&leftover)?;
        } else {
            std::fs::remove_file(&leftover)?;
        }
    }
    Ok(())
}

/// Bytes of decoded blocks kept for reads and services.
const BLOCK_CACHE_BYTES: usize = 64 << 20;

/// A `u64` under `key` in a meta keyspace, 0 when absent.
pub(crate) fn meta_u64(
    reader: &impl Readable,
    keyspace: &Keyspace,
    key: &str,
    name: &'static str,
) -> Result<u64, StoreError> {
    match reader.get(keyspace, key)? {
        Some(bytes) => read_u64(&bytes, name),
        None => Ok(0),
    }
}
