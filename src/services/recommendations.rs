//! The recommendation service: learns the [`Recommender`] model and every profile's
//! [`ProfileHistory`] from the change feed, in its own database, and answers
//! `GET /v1/profiles/{id}/recommendations` from what it committed.
//!
//! **State** (in the service's [`ServiceDb`], all postcard):
//! - `model` — the whole model, rewritten at the end of every batch that changed it, in the
//!   same atomic commit as the histories and the cursor;
//! - `h` + profile id (big-endian) — one profile's history.
//!
//! **Invariants.**
//! - *Model, histories and cursor agree.* A running instance's model is the committed blob
//!   plus the batch being processed: it is loaded on first use, and an instance whose batch
//!   did not commit (an error, a panic, a fenced-off hang) is dropped by the supervisor,
//!   whose next instance reloads the blob. A batch that fails also drops the in-memory
//!   model, so even a reused instance could only reload.
//! - *Merges move histories, not products.* A merge folds the merged-away history into the
//!   survivor's ([`ProfileHistory::merge`]) and deletes it; the model is about products and
//!   does not change.
//! - *Quiet events cost nothing.* An event that says nothing about products (identify,
//!   page, most tracks) reads and writes nothing, and a batch of only those leaves the model
//!   blob alone.
//!
//! **Reads.** [`ModelCache`] shares one deserialized model between requests, rechecking
//! the service's committed cursor at most every [`MODEL_RELOAD_INTERVAL`] and reloading
//! only when it moved; one reload runs at a time while other requests keep the previous
//! model. Histories are read as committed, per request.
//!
//! **Caveats.** The blob is rewritten whole per batch (at most
//! [`BATCH_MAX`](super::supervisor::BATCH_MAX) feed entries), so the write cost grows with
//! the catalogue: `tandem bench-reco` measures its size and serialization time. A stored
//! model keeps the [`ModelConfig`] it was built with; a changed configuration applies only
//! once the service's state is rebuilt from the feed (a warning says so at load).

use std::sync::{Arc, Mutex, RwLock, TryLockError};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::db::{ServiceDb, ServiceError, Writes};
use super::event::ServiceEvent;
use super::recommend::{ModelConfig, ProfileHistory, Recommendation, Recommender, signal};
use super::supervisor::{Factory, Service};
use crate::store::read::{FeedItem, Reader};
use crate::store::tables::FeedRecord;

/// The service's name (in health, metrics, fault injection and its data directory).
pub const NAME: &str = "recommendations";
/// Key of the model blob.
const MODEL_KEY: &[u8] = b"model";
/// Prefix of the per-profile history keys.
const HISTORY_PREFIX: &[u8] = b"h";
/// A [`ModelCache`] rechecks the committed cursor at most this often, so a busy endpoint
/// deserializes the model at most twice a second and serves one at most this stale
/// (beyond the service's own lag).
pub const MODEL_RELOAD_INTERVAL: Duration = Duration::from_millis(500);

fn history_key(profile: u64) -> Vec<u8> {
    let mut key = HISTORY_PREFIX.to_vec();
    key.extend_from_slice(&profile.to_be_bytes());
    key
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ServiceError> {
    postcard::to_stdvec(value).map_err(|e| ServiceError::Corrupt(e.to_string()))
}

fn decode_history(bytes: Option<Vec<u8>>) -> Result<Option<ProfileHistory>, ServiceError> {
    bytes
        .map(|bytes| postcard::from_bytes(&bytes))
        .transpose()
        .map_err(|e| ServiceError::Corrupt(format!("profile history: {e}")))
}

/// The committed model, if the service has stored one. A blob that does not decode or
/// breaks the model's invariants is [`ServiceError::Corrupt`].
pub fn load_model(db: &ServiceDb) -> Result<Option<Recommender>, ServiceError> {
    db.get(MODEL_KEY)?
        .map(|bytes| postcard::from_bytes(&bytes))
        .transpose()
        .map_err(|e| ServiceError::Corrupt(format!("recommendation model: {e}")))
}

/// The committed history of `profile_id` (empty for a profile with none).
pub fn history(db: &ServiceDb, profile_id: u64) -> Result<ProfileHistory, ServiceError> {
    Ok(decode_history(db.get(&history_key(profile_id))?)?.unwrap_or_default())
}

/// Up to `limit` (at most [`LIMIT_MAX`](super::recommend::LIMIT_MAX)) recommendations for
/// `profile_id` as of `now_ms`, from the committed history and `cache`'s model.
pub fn recommend(
    db: &ServiceDb,
    cache: &ModelCache,
    profile_id: u64,
    limit: usize,
    now_ms: i64,
) -> Result<Vec<Recommendation>, ServiceError> {
    let loaded = cache.get(db)?;
    let history = history(db, profile_id)?;
    Ok(loaded.model.recommend(&history, limit, now_ms))
}

/// Makes recommendation service instances; `config` shapes a model built from scratch
/// (validate it at start-up: an invalid one makes the service fail on its first event).
pub fn factory(config: ModelConfig) -> Factory {
    Box::new(move || Box::new(Recommendations::new(config.clone())))
}

/// The service; see the module documentation.
pub struct Recommendations {
    /// Tunables of a model built from scratch (a stored model keeps its own).
    config: ModelConfig,
    /// The committed model plus the current batch; `None` until an event needs it.
    model: Option<Recommender>,
}

impl Recommendations {
    /// A service instance that will load its model when it first needs it.
    pub fn new(config: ModelConfig) -> Recommendations {
        Recommendations {
            config,
            model: None,
        }
    }

    /// Applies `items` in feed order, staging every write (the model blob last, if it
    /// changed) in `writes`; returns whether the model changed. [`Service::process`] without
    /// the node state, which this service does not read.
    pub fn apply(
        &mut self,
        db: &ServiceDb,
        items: &[FeedItem],
        writes: &mut Writes,
    ) -> Result<bool, ServiceError> {
        // Taken out so that a failure part-way leaves `None`: the next use reloads the
        // committed model instead of keeping a half-applied batch.
        let mut model = self.model.take();
        let mut changed = false;
        for item in items {
            match (&item.record, &item.event) {
                (FeedRecord::Event { seq, profile }, Some(stored)) => {
                    let event = ServiceEvent::from_feed(*seq, *profile, stored);
                    if signal::of(&event).is_none() {
                        continue;
                    }
                    let model = match &mut model {
                        Some(model) => model,
                        None => model.insert(self.load(db)?),
                    };
                    let key = history_key(*profile);
                    let mut history = decode_history(writes.get(db, &key)?)?.unwrap_or_default();
                    model.observe(&event, &mut history);
                    writes.put(key, encode(&history)?);
                    changed = true;
                }
                (FeedRecord::Merged { into, from }, _) => merge(db, writes, *into, *from)?,
                // An event removed by retention before we got to it, a segment change or
                // a tick.
                _ => {}
            }
        }
        if changed && let Some(model) = &model {
            writes.put(MODEL_KEY.to_vec(), encode(model)?);
        }
        self.model = model;
        Ok(changed)
    }

    /// The committed model, or a new one if none was committed yet.
    fn load(&self, db: &ServiceDb) -> Result<Recommender, ServiceError> {
        match load_model(db)? {
            Some(model) => {
                if model.config() != &self.config {
                    tracing::warn!(
                        service = NAME,
                        stored = ?model.config(),
                        configured = ?self.config,
                        "the stored recommendation model keeps the settings it was built \
                         with; rebuild the service's state from the feed to apply new ones"
                    );
                }
                Ok(model)
            }
            None => Recommender::new(self.config.clone())
                .map_err(|e| ServiceError::Corrupt(e.to_string())),
        }
    }
}

/// Folds `from`'s history into `into`'s and deletes it.
fn merge(db: &ServiceDb, writes: &mut Writes, into: u64, from: u64) -> Result<(), ServiceError> {
    let from_key = history_key(from);
    let Some(absorbed) = decode_history(writes.get(db, &from_key)?)? else {
        return Ok(());
    };
    let into_key = history_key(into);
    let mut survivor = decode_history(writes.get(db, &into_key)?)?.unwrap_or_default();
    survivor.merge(&absorbed);
    writes.put(into_key, encode(&survivor)?);
    writes.delete(from_key);
    Ok(())
}

impl Service for Recommendations {
    fn process(
        &mut self,
        db: &ServiceDb,
        _state: &Reader<'_>,
        items: &[FeedItem],
        writes: &mut Writes,
    ) -> Result<usize, ServiceError> {
        self.apply(db, items, writes).map(|_| items.len())
    }
}

/// A committed model, deserialized for queries, and what it reflects.
#[derive(Debug)]
pub struct LoadedModel {
    /// The model (empty if the service has not stored one yet).
    pub model: Recommender,
    /// The service's committed cursor just before the model was read: the model reflects
    /// the feed at least up to here.
    pub cursor: u64,
    /// Neighbour edges over all products (counted once, at load).
    pub edges: usize,
}

/// The model the query side serves, shared by every request of a node; see the module
/// documentation. Clones share one cache.
#[derive(Clone)]
pub struct ModelCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    /// How long a checked model is served without looking at the cursor again.
    reload_interval: Duration,
    /// The model last loaded and when the cursor was last checked.
    current: RwLock<Option<Cached>>,
    /// Held by the one request reloading.
    loading: Mutex<()>,
}

#[derive(Clone)]
struct Cached {
    model: Arc<LoadedModel>,
    checked_at: Instant,
}

impl Default for ModelCache {
    fn default() -> Self {
        ModelCache::new(MODEL_RELOAD_INTERVAL)
    }
}

impl ModelCache {
    /// An empty cache that rechecks the cursor at most every `reload_interval`.
    pub fn new(reload_interval: Duration) -> ModelCache {
        ModelCache {
            inner: Arc::new(CacheInner {
                reload_interval,
                current: RwLock::new(None),
                loading: Mutex::new(()),
            }),
        }
    }

    /// The model to answer with. Blocks on disk when it (re)loads: call it off the async
    /// workers.
    pub fn get(&self, db: &ServiceDb) -> Result<Arc<LoadedModel>, ServiceError> {
        let current = self.fresh();
        if let Ok(model) = current {
            return Ok(model);
        }
        let _loading = match self.inner.loading.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            // Another request is reloading: serve the previous model rather than queue.
            Err(TryLockError::WouldBlock) => match current {
                Err(Some(previous)) => return Ok(previous.model),
                _ => self.inner.loading.lock().unwrap_or_else(|p| p.into_inner()),
            },
        };
        let previous = match self.fresh() {
            Ok(model) => return Ok(model), // reloaded while we waited
            Err(previous) => previous,
        };
        // The cursor before the blob: the blob is then at least as new as the cursor, so a
        // commit between the two reads costs one extra reload later, never a missed one.
        let cursor = db.cursor()?;
        let model = match previous {
            Some(previous) if previous.model.cursor == cursor => previous.model,
            _ => {
                let model = load_model(db)?.unwrap_or_default();
                let edges = model.edge_count();
                Arc::new(LoadedModel {
                    model,
                    cursor,
                    edges,
                })
            }
        };
        let mut current = self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner());
        *current = Some(Cached {
            model: Arc::clone(&model),
            checked_at: Instant::now(),
        });
        Ok(model)
    }

    /// The cached model if it was checked recently, else what is cached (if anything).
    fn fresh(&self) -> Result<Arc<LoadedModel>, Option<Cached>> {
        let current = self.inner.current.read().unwrap_or_else(|p| p.into_inner());
        match &*current {
            Some(cached) if cached.checked_at.elapsed() < self.inner.reload_interval => {
                Ok(Arc::clone(&cached.model))
            }
            other => Err(other.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::model::event::MessageType;
    use crate::services::recommend::synthetic;
    use crate::services::supervisor::BATCH_MAX;
    use crate::store::Store;

    const T0: i64 = 1_764_000_000_000;

    /// A service database and a node store (the latter only to hand `process` a reader).
    struct Fixture {
        _dir: tempfile::TempDir,
        db: ServiceDb,
        store: Store,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = ServiceDb::open(&dir.path().join("service")).expect("service db");
            let store = Store::open_in(
                dir.path(),
                4 << 20,
                crate::store::apply::ApplySettings {
                    rules: crate::model::resolve::MergeRules::default(),
                    dedup_window_ms: 86_400_000,
                    retention_ms: 86_400_000,
                    audit_records_max: crate::model::audit::AUDIT_RECORDS_DEFAULT_MAX,
                    clock_step_ms_max: crate::model::time::CLOCK_STEP_DEFAULT_MS_MAX,
                },
            )
            .expect("store");
            Fixture {
                _dir: dir,
                db,
                store,
            }
        }

        /// Processes `items` with `service` and commits like the supervisor does.
        fn run(&self, service: &mut dyn Service, items: &[FeedItem]) {
            let mut writes = Writes::default();
            service
                .process(&self.db, &self.store.reader(), items, &mut writes)
                .expect("process");
            let cursor = items.last().map_or(0, |item| item.feed_seq);
            self.db.commit(writes, cursor).expect("commit");
        }

        fn model(&self) -> Recommender {
            load_model(&self.db).expect("decodes").expect("stored")
        }
    }

    fn service() -> Box<dyn Service> {
        factory(ModelConfig::default())()
    }

    fn item(feed_seq: u64, event: &ServiceEvent) -> FeedItem {
        event.to_feed_item(feed_seq)
    }

    fn items(events: &[ServiceEvent]) -> Vec<FeedItem> {
        (1..).zip(events).map(|(n, e)| item(n, e)).collect()
    }

    fn track(seq: u64, profile_id: u64, name: &str, properties: Value) -> ServiceEvent {
        ServiceEvent {
            seq,
            profile_id,
            kind: MessageType::Track,
            name: name.into(),
            timestamp_ms: T0 + seq as i64 * 1_000,
            body: crate::store::body::EventBody::parsed(json!({ "properties": properties })),
        }
    }

    fn product(id: &str) -> Value {
        json!({"product_id": id, "name": format!("Item {id}"), "category": "Cameras"})
    }

    fn view(seq: u64, profile_id: u64, id: &str) -> ServiceEvent {
        track(seq, profile_id, "Product Viewed", product(id))
    }

    fn order(seq: u64, profile_id: u64, ids: &[&str]) -> ServiceEvent {
        let products: Vec<Value> = ids.iter().map(|id| product(id)).collect();
        track(
            seq,
            profile_id,
            "Order Completed",
            json!({ "products": products }),
        )
    }

    fn merged(feed_seq: u64, into: u64, from: u64) -> FeedItem {
        FeedItem {
            feed_seq,
            log_index: feed_seq,
            at_ms: T0,
            record: FeedRecord::Merged { into, from },
            event: None,
            definition: None,
        }
    }

    #[test]
    fn the_model_blob_round_trips_and_a_corrupt_one_is_an_error() {
        let fixture = Fixture::new();
        let mut service = Recommendations::new(ModelConfig::default());
        let events = [order(1, 1, &["cam-1", "lens-1"]), view(2, 2, "cam-1")];
        let mut writes = Writes::default();
        assert!(
            service
                .apply(&fixture.db, &items(&events), &mut writes)
                .expect("apply")
        );
        fixture.db.commit(writes, 2).expect("commit");
        let stored = fixture.model();
        assert_eq!(Some(&stored), service.model.as_ref());
        assert_eq!(stored.len(), 2);
        assert_eq!(stored.product_name("lens-1"), Some("Item lens-1"));

        let mut garbage = Writes::default();
        garbage.put(MODEL_KEY.to_vec(), vec![0xff; 7]);
        fixture.db.commit(garbage, 2).expect("commit");
        assert!(matches!(
            load_model(&fixture.db),
            Err(ServiceError::Corrupt(_))
        ));
        let mut fresh = Recommendations::new(ModelConfig::default());
        let outcome = fresh.apply(
            &fixture.db,
            &items(&[view(3, 3, "cam-1")]),
            &mut Writes::default(),
        );
        assert!(
            matches!(outcome, Err(ServiceError::Corrupt(_))),
            "{outcome:?}"
        );
        assert!(fresh.model.is_none(), "nothing half-loaded is kept");
    }

    #[test]
    fn a_new_instance_resumes_with_the_same_model_as_one_that_never_stopped() {
        let events = synthetic::events(7, 4_000, T0);
        let feed = items(&events);
        let batches: Vec<&[FeedItem]> = feed.chunks(BATCH_MAX).collect();

        // One instance throughout.
        let steady = Fixture::new();
        let mut instance = service();
        for batch in &batches {
            steady.run(instance.as_mut(), batch);
        }

        // A fresh instance per batch, and one batch processed but never committed (a crash
        // between process and commit) that the next instance processes again.
        let restarted = Fixture::new();
        for (n, batch) in batches.iter().enumerate() {
            if n == 2 {
                let mut doomed = service();
                let mut lost = Writes::default();
                doomed
                    .process(&restarted.db, &restarted.store.reader(), batch, &mut lost)
                    .expect("process");
            }
            restarted.run(service().as_mut(), batch);
        }

        let model = steady.model();
        assert!(model.len() > 50, "{} products", model.len());
        assert_eq!(
            postcard::to_stdvec(&model).expect("encode"),
            postcard::to_stdvec(&restarted.model()).expect("encode"),
            "byte-identical models"
        );
        let profiles = steady.db.count(HISTORY_PREFIX).expect("count");
        assert!(profiles > 10);
        assert_eq!(restarted.db.count(HISTORY_PREFIX).expect("count"), profiles);
        for event in events.iter().step_by(97) {
            let id = event.profile_id;
            assert_eq!(
                history(&steady.db, id).expect("history"),
                history(&restarted.db, id).expect("history")
            );
        }
    }

    #[test]
    fn merges_combine_histories_and_drop_the_merged_away_one() {
        let fixture = Fixture::new();
        let mut service = service();
        let mut feed = items(&[
            order(1, 9, &["cam-1", "lens-1"]),
            order(2, 9, &["cam-2", "bag-1"]),
            view(3, 1, "cam-1"),
            order(4, 2, &["cam-2"]),
        ]);
        fixture.run(service.as_mut(), &feed);
        let mut expected = history(&fixture.db, 1).expect("history");
        expected.merge(&history(&fixture.db, 2).expect("history"));

        feed = vec![merged(5, 1, 2), merged(6, 1, 77)];
        fixture.run(service.as_mut(), &feed);

        let survivor = history(&fixture.db, 1).expect("history");
        assert_eq!(survivor, expected);
        assert!(survivor.has_purchased("cam-2"));
        assert_eq!(survivor.seeds().len(), 2);
        assert_eq!(fixture.db.get(&history_key(2)).expect("get"), None);
        assert_eq!(fixture.db.get(&history_key(77)).expect("get"), None);

        let cache = ModelCache::default();
        let ids: Vec<String> = recommend(&fixture.db, &cache, 1, 10, T0 + 10_000)
            .expect("recommend")
            .into_iter()
            .map(|r| r.product_id)
            .collect();
        // bag-1 was bought with cam-2 (the merged-away purchase, now the newest seed), lens-1
        // with cam-1 (the survivor's view); cam-2 itself was bought, so it is left out.
        assert_eq!(ids, ["bag-1", "lens-1", "cam-1"]);
    }

    #[test]
    fn events_without_products_write_nothing() {
        let fixture = Fixture::new();
        let mut service = Recommendations::new(ModelConfig::default());
        let identify = ServiceEvent {
            seq: 1,
            profile_id: 1,
            kind: MessageType::Identify,
            name: String::new(),
            timestamp_ms: T0,
            body: crate::store::body::EventBody::parsed(
                json!({"traits": {"email": "ada@example.com"}}),
            ),
        };
        let quiet = track(2, 1, "Signed Up", json!({}));
        let mut writes = Writes::default();
        let feed = [item(1, &identify), item(2, &quiet), merged(3, 1, 2)];
        assert!(
            !service
                .apply(&fixture.db, &feed, &mut writes)
                .expect("apply")
        );
        assert!(writes.is_empty());
        assert!(service.model.is_none(), "the model is not even loaded");
    }

    #[test]
    fn the_cache_reloads_only_when_the_cursor_moved_and_the_interval_passed() {
        let fixture = Fixture::new();
        let mut service = service();
        let instant = ModelCache::new(Duration::ZERO);
        let patient = ModelCache::new(Duration::from_secs(3600));
        assert!(instant.get(&fixture.db).expect("empty").model.is_empty());

        fixture.run(
            service.as_mut(),
            &items(&[order(1, 1, &["cam-1", "lens-1"])]),
        );
        let first = instant.get(&fixture.db).expect("load");
        assert_eq!((first.model.len(), first.cursor, first.edges), (2, 1, 2));
        assert!(Arc::ptr_eq(
            &first,
            &instant.get(&fixture.db).expect("same")
        ));
        let kept = patient.get(&fixture.db).expect("load");

        fixture.run(service.as_mut(), &[item(2, &view(2, 1, "bag-1"))]);
        let second = instant.get(&fixture.db).expect("reload");
        assert_eq!((second.model.len(), second.cursor), (3, 2));
        assert!(Arc::ptr_eq(
            &kept,
            &patient.get(&fixture.db).expect("cached")
        ));
    }
}
