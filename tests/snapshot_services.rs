//! The CDP services' state travels in Raft snapshots: one node's snapshot, installed on a
//! node with a fresh data directory, brings each service's derived state and cursor across
//! exactly — including what the change feed no longer has after retention removed it.
//!
//! In-process: real stores, real service databases and supervisors, the state machine
//! driven through openraft's storage traits (no network, no Raft core).

use std::io::{Cursor, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::entry::RaftEntry;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use serde_json::{Value, json};
use tandem::cluster::derived::DerivedState;
use tandem::cluster::log_store::record_of;
use tandem::cluster::snapshot::{SnapshotFile, Snapshots, pack, unpack};
use tandem::cluster::state_machine::StateMachine;
use tandem::cluster::types::{Entry, Snapshot};
use tandem::cluster::{Command, TypeConfig};
use tandem::model::block::EncodedBlock;
use tandem::model::identity::{Blocklist, Identity};
use tandem::model::resolve::MergeRules;
use tandem::model::validate::{Envelope, normalize};
use tandem::services::computed::{self, ComputedTraits};
use tandem::services::db::{ServiceDb, ServiceError, Writes};
use tandem::services::supervisor::{Factory, LAG_DEGRADED, Opener, Service, Supervisor};
use tandem::services::traits::{TraitDef, default_defs};
use tandem::store::apply::ApplySettings;
use tandem::store::read::{FeedItem, Reader};
use tandem::store::replicated::SectionWriter;
use tandem::store::{Store, StoreError};

const DAY_MS: i64 = 86_400_000;
const T0: i64 = 1_764_000_000_000;
const DEADLINE: Duration = Duration::from_secs(20);

/// A second service: counts the feed entries it has seen (under key `n`).
struct Tally;

impl Service for Tally {
    fn process(
        &mut self,
        db: &ServiceDb,
        _state: &Reader<'_>,
        items: &[FeedItem],
        writes: &mut Writes,
    ) -> Result<usize, ServiceError> {
        let seen = writes
            .get(db, b"n")?
            .and_then(|bytes| bytes.try_into().ok())
            .map_or(0, u64::from_be_bytes);
        writes.put(
            b"n".to_vec(),
            (seen + items.len() as u64).to_be_bytes().to_vec(),
        );
        Ok(items.len())
    }
}

/// One node's storage, state machine and services.
struct TestNode {
    store: Arc<Store>,
    machine: StateMachine,
    snapshots: Snapshots,
    supervisor: Option<Arc<Supervisor>>,
    defs: Arc<Vec<TraitDef>>,
}

impl TestNode {
    /// Opens a node in `dir` (state retained for one day) without starting its services.
    fn open(dir: &Path) -> TestNode {
        let store = Store::open_in(
            dir,
            8 << 20,
            ApplySettings {
                rules: MergeRules::default(),
                dedup_window_ms: DAY_MS,
                retention_ms: DAY_MS,
                audit_records_max: tandem::model::audit::AUDIT_RECORDS_DEFAULT_MAX,
                // The scenario leaps two days in one entry to let retention cut the feed.
                clock_step_ms_max: 3 * DAY_MS,
            },
        )
        .expect("open store");
        let store = Arc::new(store);
        let snapshots = Snapshots::open(dir).expect("snapshots");
        TestNode {
            machine: StateMachine::new(Arc::clone(&store), snapshots.clone()),
            store,
            snapshots,
            supervisor: None,
            defs: Arc::new(default_defs()),
        }
    }

    /// Starts the services named in `names` (`traits`, `tally`, `retired` — the last a
    /// tally under another name) and attaches them to the state machine.
    async fn start_services(&mut self, dir: &Path, names: &[&'static str]) {
        let services = names
            .iter()
            .map(|name| {
                let path = dir.join("services").join(name);
                let opener: Opener = Box::new(move || ServiceDb::open(&path));
                let factory: Factory = if *name == computed::NAME {
                    let defs = Arc::clone(&self.defs);
                    Box::new(move || Box::new(ComputedTraits::new(Arc::clone(&defs))))
                } else {
                    Box::new(|| Box::new(Tally))
                };
                (*name, opener, factory)
            })
            .collect();
        self.start_with(services).await;
    }

    /// Starts `services` and attaches them to the state machine.
    async fn start_with(&mut self, services: Vec<(&'static str, Opener, Factory)>) {
        let supervisor = Supervisor::start(Arc::clone(&self.store), services);
        self.machine
            .attach_services(Arc::clone(&supervisor) as Arc<dyn DerivedState>)
            .expect("attach services");
        self.supervisor = Some(supervisor);
    }

    fn supervisor(&self) -> &Supervisor {
        self.supervisor.as_ref().expect("services started")
    }

    /// Applies `orders` orders of `user` at state time `time_ms` as the next log entry.
    async fn apply_orders(&mut self, user: &str, orders: std::ops::Range<u32>, time_ms: i64) {
        let blocklist = Blocklist::default();
        let envelope = Envelope {
            source: "web",
            received_at_ms: time_ms,
            implied_type: None,
            context: None,
            integrations: None,
            sent_at: None,
            blocklist: &blocklist,
            timestamp_future_ms_max: tandem::model::time::TIMESTAMP_FUTURE_DEFAULT_MS_MAX,
        };
        let events = orders
            .map(|n| {
                let raw = json!({
                    "type": "track", "userId": user, "event": "Order Completed",
                    "messageId": format!("{user}-{n}"),
                    "properties": {"revenue": 10, "products": [{"category": "Books"}]},
                });
                normalize(raw, &envelope, || unreachable!("tests give messageIds"))
                    .expect("valid event")
            })
            .collect();
        // The next raft index: one past the last applied is the store's applied index.
        let index = self.store.reader().applied_index().expect("applied index");
        let block = EncodedBlock::encode(time_ms, events).expect("encode");
        let entry = Entry::new_normal(
            openraft::testing::log_id::<TypeConfig>(1, 1, index),
            Command::Ingest(block),
        );
        // As Raft does: durable in the log first, then applied.
        let record = record_of(&entry).expect("record");
        self.store
            .log()
            .append(&[(index, record.as_slice())])
            .expect("append");
        self.store.log().sync().expect("sync");
        self.machine
            .apply(futures::stream::iter(vec![Ok((entry, None))]))
            .await
            .expect("apply");
    }

    /// Waits until every service has processed the whole feed.
    async fn wait_caught_up(&self) {
        let started = std::time::Instant::now();
        loop {
            let next_feed = self.next_feed();
            let statuses = self.supervisor().statuses();
            if statuses.iter().all(|s| s.cursor + 1 >= next_feed) {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "services did not catch up with feed entry {}: {statuses:?}",
                next_feed - 1
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The next feed sequence number (the feed may have lost its old entries, so its head
    /// is not enough).
    fn next_feed(&self) -> u64 {
        let reader = self.store.reader();
        let head = reader.feed_head().expect("feed head");
        reader
            .feed_after(head, 1)
            .expect("feed")
            .first()
            .map_or(head + 1, |item| item.feed_seq + 1)
    }

    /// The first feed entry still stored.
    fn feed_first(&self) -> Option<u64> {
        let first = self.store.reader().feed_after(0, 1).expect("feed");
        first.first().map(|item| item.feed_seq)
    }

    /// `user`'s computed traits at a fixed time.
    fn traits_of(&self, user: &str) -> Value {
        let identity =
            Identity::parse_key(&format!("user_id:{user}"), &Blocklist::default()).expect("key");
        let profile = self
            .store
            .reader()
            .profile_of(&identity)
            .expect("read")
            .unwrap_or_else(|| panic!("no profile for {user}"));
        let db = self.supervisor().db(computed::NAME).expect("traits db");
        let values = computed::values(db, &self.defs, profile.id, T0 + 3 * DAY_MS).expect("traits");
        json!(values)
    }

    /// Waits until no services' state of an installed snapshot is left to import (an
    /// install imports it at once only if every service's database is open; otherwise a
    /// thread does once they are).
    async fn wait_imported(&self) {
        let started = std::time::Instant::now();
        while self.machine.services_import_pending().expect("pending") {
            assert!(
                started.elapsed() < DEADLINE,
                "the services' snapshot state was never imported"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn cursor_of(&self, service: &str) -> u64 {
        self.supervisor().status(service).expect("status").cursor
    }

    async fn build_snapshot(&mut self) -> Snapshot {
        self.machine.build_snapshot().await.expect("build snapshot")
    }

    /// Installs a copy of `snapshot` as received from a peer: packed into one stream,
    /// unpacked into a directory outside the snapshot directory.
    async fn install(&mut self, snapshot: &Snapshot, spool: &Path) {
        let path = spool.join(format!("received-{}.snap", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(path.join("log")).expect("spool");
        let received = SnapshotFile { path };
        let mut packed = Vec::new();
        pack(&snapshot.snapshot, &mut packed).expect("pack");
        unpack(&mut Cursor::new(packed), &received).expect("unpack");
        self.machine
            .install_snapshot(&snapshot.meta, received)
            .await
            .expect("install snapshot");
    }
}

/// Node A with `alice`'s 12 orders two days before `bob`'s 3, so retention has removed
/// alice's events and feed entries by the time of the snapshot; its services caught up.
async fn node_with_history(dir: &Path, services: &[&'static str]) -> TestNode {
    let mut node = TestNode::open(dir);
    node.start_services(dir, services).await;
    node.apply_orders("alice", 0..6, T0).await;
    node.apply_orders("alice", 6..12, T0 + 1000).await;
    node.wait_caught_up().await;
    node.apply_orders("bob", 0..3, T0 + 2 * DAY_MS).await;
    node.wait_caught_up().await;
    assert!(
        node.feed_first().is_some_and(|first| first > 12),
        "retention removed alice's feed entries: first is {:?}",
        node.feed_first()
    );
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_state_and_cursor_arrive_exactly_on_a_new_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let mut a = node_with_history(&a_dir, &["traits", "retired"]).await;
    let alice = a.traits_of("alice");
    assert_eq!(alice["orders_count"], 12, "{alice}");
    assert_eq!(alice["lifetime_value"].as_f64(), Some(120.0), "{alice}");
    let snapshot = a.build_snapshot().await;
    let contents =
        Store::verify_snapshot(&mut reader(&snapshot.snapshot.state_path())).expect("verify");
    let names: Vec<&str> = contents.sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["traits", "retired"]);
    assert_eq!(contents.sections[0].cursor, a.cursor_of("traits"));
    assert_eq!(
        contents.sections[0].records, 3,
        "alice, bob and the layout stamp"
    );

    // B: a fresh data directory, running a service A does not ("tally") and not one A
    // does ("retired").
    let mut b = TestNode::open(&b_dir);
    b.start_services(&b_dir, &["traits", "tally"]).await;
    b.install(&snapshot, dir.path()).await;
    b.wait_imported().await;

    // The feed B got has none of alice's orders, yet her traits are all there.
    assert_eq!(b.feed_first(), a.feed_first());
    assert_eq!(b.traits_of("alice"), alice);
    assert_eq!(b.traits_of("bob"), a.traits_of("bob"));
    let traits = b.supervisor().status("traits").expect("traits");
    assert_eq!(traits.cursor, a.cursor_of("traits"));
    assert_eq!(traits.imported_cursor, Some(a.cursor_of("traits")));
    // "tally" had no section: left alone (it catches up from the feed by itself).
    let tally = b.supervisor().status("tally").expect("tally");
    assert_eq!(tally.imported_cursor, None);
    assert!(b.snapshots.services_pending().expect("pending").is_none());

    // Both go on from there exactly: one more order is counted once.
    a.apply_orders("alice", 12..13, T0 + 2 * DAY_MS + 1000)
        .await;
    b.apply_orders("alice", 12..13, T0 + 2 * DAY_MS + 1000)
        .await;
    a.wait_caught_up().await;
    b.wait_caught_up().await;
    assert_eq!(b.traits_of("alice")["orders_count"], 13);
    assert_eq!(b.traits_of("alice"), a.traits_of("alice"));
    assert_eq!(b.cursor_of("traits"), a.cursor_of("traits"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_installed_before_the_services_run_is_imported_when_they_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let mut a = node_with_history(&a_dir, &["traits"]).await;
    let snapshot = a.build_snapshot().await;

    // As when Raft installs a snapshot while the node starts: no services yet.
    let mut b = TestNode::open(&b_dir);
    b.install(&snapshot, dir.path()).await;
    let pending = b.snapshots.services_pending().expect("pending");
    assert!(pending.is_some(), "the services' state waits for them");
    // A newer snapshot becoming current does not delete the pending one.
    let newer = b.build_snapshot().await;
    assert_ne!(
        Some(&newer.snapshot.path),
        pending.as_ref().map(|p| &p.path)
    );
    assert!(pending.as_ref().is_some_and(|p| p.path.exists()));

    b.start_services(&b_dir, &["traits"]).await;
    b.wait_imported().await;
    assert_eq!(b.traits_of("alice"), a.traits_of("alice"));
    assert_eq!(b.cursor_of("traits"), a.cursor_of("traits"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_without_service_sections_installs_and_leaves_services_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    // A builds its snapshot before any service runs: the store's part and the log only.
    let mut a = TestNode::open(&a_dir);
    a.apply_orders("alice", 0..6, T0).await;
    a.apply_orders("bob", 0..3, T0 + 2 * DAY_MS).await;
    let snapshot = a.build_snapshot().await;
    let contents =
        Store::verify_snapshot(&mut reader(&snapshot.snapshot.state_path())).expect("verify");
    assert!(contents.sections.is_empty());

    let mut b = TestNode::open(&b_dir);
    b.start_services(&b_dir, &["traits"]).await;
    b.install(&snapshot, dir.path()).await;
    b.wait_imported().await;
    let traits = b.supervisor().status("traits").expect("traits");
    assert_eq!(traits.imported_cursor, None);
    // The service rebuilds from the feed, which retention cut: bob's orders only, read
    // from the log segments the snapshot brought.
    b.wait_caught_up().await;
    assert_eq!(b.traits_of("bob")["orders_count"], 3);
    assert_eq!(b.traits_of("alice")["orders_count"], 0);
}

/// The traits service, with `opener` for its database.
fn traits_service(node: &TestNode, opener: Opener) -> Vec<(&'static str, Opener, Factory)> {
    let defs = Arc::clone(&node.defs);
    let factory: Factory = Box::new(move || Box::new(ComputedTraits::new(Arc::clone(&defs))));
    vec![(computed::NAME, opener, factory)]
}

/// The traits service's database opener for a node in `dir`, as slow as the test says: the
/// first `failures` attempts fail, the next opens once the returned sender is used (a
/// journal replay after a crash). Also returns how many attempts were made.
fn gated_opener(
    dir: &Path,
    failures: usize,
) -> (
    std::sync::mpsc::Sender<()>,
    Opener,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(gate);
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&attempts);
    let path = dir.join("services").join(computed::NAME);
    let opener: Opener = Box::new(move || {
        if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < failures {
            return Err(ServiceError::Storage("the disk is on fire".into()));
        }
        let _ = gate.lock().expect("gate").recv();
        ServiceDb::open(&path)
    });
    (release, opener, attempts)
}

/// Waits until the service's status gives a reason containing `text`.
async fn wait_for_reason(node: &TestNode, service: &str, text: &str) {
    let started = std::time::Instant::now();
    loop {
        let status = node.supervisor().status(service).expect("status");
        if status.reason.as_deref().is_some_and(|r| r.contains(text)) {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{service} never said {text:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_database_opens_in_the_background_and_snapshots_wait_for_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::open(dir.path());
    node.apply_orders("alice", 0..3, T0).await;
    let (release, opener, _) = gated_opener(dir.path(), 0);
    node.start_with(traits_service(&node, opener)).await;

    // Meanwhile: degraded with the reason, nothing to read from, and a snapshot build waits.
    wait_for_reason(&node, computed::NAME, "opening its database").await;
    assert!(node.supervisor().db(computed::NAME).is_none());
    let mut machine = node.machine.clone();
    let build = tokio::spawn(async move { machine.build_snapshot().await });
    let waited = tokio::time::timeout(Duration::from_millis(300), async {
        while !build.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_err(),
        "the snapshot was built without the service's state"
    );

    release.send(()).expect("release the open");
    let snapshot = build.await.expect("join").expect("build");
    let contents =
        Store::verify_snapshot(&mut reader(&snapshot.snapshot.state_path())).expect("verify");
    let names: Vec<&str> = contents.sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [computed::NAME]);
    node.wait_caught_up().await;
    assert_eq!(node.traits_of("alice")["orders_count"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_far_behind_never_reads_ok_when_its_database_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::open(dir.path());
    // More feed records than a service may lag by and be ok, in entries of 1,000.
    let entries = LAG_DEGRADED as u32 / 1_000 + 20;
    for n in 0..entries {
        node.apply_orders("alice", n * 1_000..(n + 1) * 1_000, T0 + i64::from(n))
            .await;
    }
    let (release, opener, _) = gated_opener(dir.path(), 0);
    node.start_with(traits_service(&node, opener)).await;
    wait_for_reason(&node, computed::NAME, "opening its database").await;

    // From the open on, every status is "lagging" until the service has caught up most
    // of the way: never "ok" in between, whenever the watchdog last looked.
    release.send(()).expect("release the open");
    let started = std::time::Instant::now();
    loop {
        let status = node.supervisor().status(computed::NAME).expect("status");
        if status.lag <= LAG_DEGRADED {
            break;
        }
        assert_eq!(status.status, "degraded", "{status:?}");
        assert!(started.elapsed() < DEADLINE, "did not catch up: {status:?}");
        tokio::task::yield_now().await;
    }
    node.wait_caught_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_database_that_fails_to_open_is_reported_and_tried_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::open(dir.path());
    node.apply_orders("alice", 0..2, T0).await;
    // Fails once, then opens when the test has seen the failure reported.
    let (release, opener, attempts) = gated_opener(dir.path(), 1);
    node.start_with(traits_service(&node, opener)).await;

    wait_for_reason(&node, computed::NAME, "cannot open its database").await;
    let status = node.supervisor().status(computed::NAME).expect("status");
    assert!(
        status
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("the disk is on fire")),
        "{status:?}"
    );
    release.send(()).expect("release the second open");
    node.wait_caught_up().await;
    assert_eq!(node.traits_of("alice")["orders_count"], 2);
    assert!(attempts.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_never_waits_for_a_service_database_and_imports_once_it_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let mut a = node_with_history(&a_dir, &["traits"]).await;
    let snapshot = a.build_snapshot().await;
    let sent = Store::verify_snapshot(&mut reader(&snapshot.snapshot.state_path()))
        .expect("verify")
        .sections;

    // B's traits database fails to open, then waits for the test to let it open.
    let mut b = TestNode::open(&b_dir);
    let (release, opener, attempts) = gated_opener(&b_dir, 1);
    b.start_with(traits_service(&b, opener)).await;
    wait_for_reason(&b, computed::NAME, "cannot open its database").await;

    // The install completes without the database (Raft's apply path waits for it), and
    // the services' state stays pending, kept on disk.
    tokio::time::timeout(DEADLINE, b.install(&snapshot, dir.path()))
        .await
        .expect("the install waited for a service's database");
    assert!(b.machine.services_import_pending().expect("pending"));
    assert_eq!(
        b.store.reader().applied_index().expect("applied"),
        a.store.reader().applied_index().expect("applied"),
        "the store's part is installed"
    );

    // A snapshot B builds meanwhile carries the pending state, not B's own (older) one.
    b.apply_orders("carol", 0..1, T0 + 2 * DAY_MS + 500).await;
    let rebuilt = b.build_snapshot().await;
    let carried = Store::verify_snapshot(&mut reader(&rebuilt.snapshot.state_path()))
        .expect("verify")
        .sections;
    assert_eq!(carried, sent, "the pending sections, as they came");

    // Once the database opens, the state is imported and the service goes on from there.
    release.send(()).expect("release the open");
    b.wait_imported().await;
    assert!(attempts.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    let traits = b.supervisor().status(computed::NAME).expect("traits");
    assert_eq!(traits.imported_cursor, Some(a.cursor_of(computed::NAME)));
    b.wait_caught_up().await;
    assert_eq!(b.traits_of("alice"), a.traits_of("alice"));
    assert_eq!(b.traits_of("bob"), a.traits_of("bob"));
    assert_eq!(b.traits_of("carol")["orders_count"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packed_snapshot_carries_the_log_and_refuses_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = node_with_history(&dir.path().join("a"), &["traits"]).await;
    let snapshot = a.build_snapshot().await;
    let files = snapshot.snapshot.log_files().expect("log files");
    assert!(!files.is_empty(), "the log travels with the state");
    let mut packed = Vec::new();
    pack(&snapshot.snapshot, &mut packed).expect("pack");
    let into = |name: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.join("log")).expect("dir");
        SnapshotFile { path }
    };
    let good = into("good");
    unpack(&mut Cursor::new(&packed), &good).expect("unpack");
    assert_eq!(
        std::fs::read(good.state_path()).expect("state"),
        std::fs::read(snapshot.snapshot.state_path()).expect("state")
    );
    for (theirs, ours) in files.iter().zip(good.log_files().expect("files")) {
        assert_eq!(
            std::fs::read(theirs).expect("a"),
            std::fs::read(ours).expect("b")
        );
    }
    // A flipped byte in the log part, or a cut stream, is refused.
    let mut damaged = packed.clone();
    let at = damaged.len() - 40;
    damaged[at] ^= 0x10;
    assert!(unpack(&mut Cursor::new(&damaged), &into("damaged")).is_err());
    assert!(unpack(&mut Cursor::new(&packed[..packed.len() - 3]), &into("cut")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_refuses_damaged_truncated_or_padded_sections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = node_with_history(dir.path(), &["traits", "tally"]).await;
    let snapshot = a.build_snapshot().await;
    let bytes = std::fs::read(snapshot.snapshot.state_path()).expect("read");
    let store_len = store_part(&bytes).len();
    let verify = |bytes: &[u8]| Store::verify_snapshot(&mut Cursor::new(bytes));
    assert_eq!(verify(&bytes).expect("intact").sections.len(), 2);

    let mut damaged = bytes.clone();
    damaged[store_len + 12] ^= 0x40;
    assert_corrupt(verify(&damaged), "a flipped byte in a section");
    let end_marker = bytes.len() - 5;
    assert_corrupt(
        verify(&bytes[..end_marker]),
        "sections without an end marker",
    );
    assert_corrupt(verify(&bytes[..bytes.len() - 40]), "a truncated section");

    // Sections written by hand verify; a changed trailer does not.
    let mut forged = bytes[..store_len].to_vec();
    let mut sections = SectionWriter::new(&mut forged);
    let records = vec![Ok::<_, StoreError>((b"k".to_vec(), b"v".to_vec()))];
    assert_eq!(sections.section("traits", 7, records).expect("section"), 1);
    sections.finish().expect("finish");
    let contents = verify(&forged).expect("hand-written sections verify");
    assert_eq!(contents.sections[0].cursor, 7);
    let count_at = forged.len() - 5 - 32 - 8;
    forged[count_at] = 2;
    assert_corrupt(verify(&forged), "a changed record count");
}

fn reader(path: &Path) -> impl Read {
    std::io::BufReader::new(std::fs::File::open(path).expect("open snapshot"))
}

/// The store's part of a snapshot file's bytes.
fn store_part(bytes: &[u8]) -> &[u8] {
    let mut cursor = Cursor::new(bytes);
    Store::skip_snapshot_state(&mut cursor).expect("store part");
    &bytes[..cursor.position() as usize]
}

fn assert_corrupt<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::Corrupt(_)) => {}
        other => panic!("{what}: expected a corrupt snapshot, got {other:?}"),
    }
}
