//! openraft's storage conformance suite, run against our log store and state machine on
//! real files; the leadership rule; and the state machine giving up on services' state
//! that never imports.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;

use super::TypeConfig;
use super::log_store::LogStore;
use super::snapshot::Snapshots;
use super::state_machine::StateMachine;
use crate::model::resolve::MergeRules;
use crate::store::Store;
use crate::store::apply::ApplySettings;

struct Builder;

/// A store in `dir` with a day of dedup window and retention.
fn open_store(dir: &std::path::Path) -> Result<Store, crate::store::StoreError> {
    Store::open_in(
        dir,
        8 << 20,
        ApplySettings {
            rules: MergeRules::default(),
            dedup_window_ms: 86_400_000,
            retention_ms: 86_400_000,
            audit_records_max: crate::model::audit::AUDIT_RECORDS_DEFAULT_MAX,
            clock_step_ms_max: crate::model::time::CLOCK_STEP_DEFAULT_MS_MAX,
        },
    )
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
        let store = open_store(dir.path())
            .map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
        let log = LogStore::open(store.log().clone())
            .map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
        let snapshots = Snapshots::open(dir.path())
            .map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
        let machine = StateMachine::new(Arc::new(store), snapshots);
        Ok((dir, log, machine))
    }
}

#[test]
fn openraft_storage_suite() {
    TypeConfig::run(async {
        Suite::test_all(Builder).await.expect("storage suite");
    });
}

#[test]
fn a_node_leads_only_in_the_leaders_state_not_by_its_last_vote_alone() {
    let mut metrics = openraft::RaftMetrics::<TypeConfig>::new_initial(2);
    // An ex-leader restarted from its data directory: its committed vote names itself.
    metrics.current_leader = Some(2);
    metrics.state = openraft::ServerState::Follower;
    assert!(!super::leads(&metrics));
    metrics.state = openraft::ServerState::Leader;
    assert!(super::leads(&metrics));
    metrics.current_leader = Some(1);
    assert!(!super::leads(&metrics));
}

/// A checkpoint source whose one section, `x`, holds one record at cursor 5.
struct OneSection;

struct OneSectionExport;

impl super::derived::DerivedSource for OneSection {
    fn export(&self) -> Result<Box<dyn super::derived::DerivedExport>, String> {
        Ok(Box::new(OneSectionExport))
    }
}

impl super::derived::DerivedExport for OneSectionExport {
    fn write(
        &self,
        out: &mut crate::store::replicated::SectionWriter<'_, std::io::BufWriter<std::fs::File>>,
    ) -> Result<(), String> {
        let records = [Ok::<_, crate::store::StoreError>((
            b"k".to_vec(),
            b"v".to_vec(),
        ))];
        out.section("x", 5, records).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Derived state whose imports of real state always fail; starting over (cursor 0, no
/// records) succeeds. Counts the attempts of each.
#[derive(Default)]
struct FailingImports {
    failed: std::sync::atomic::AtomicU32,
    restarted: std::sync::atomic::AtomicU32,
}

impl super::derived::DerivedSource for FailingImports {
    fn export(&self) -> Result<Box<dyn super::derived::DerivedExport>, String> {
        Err("not exported in this test".into())
    }
}

impl super::derived::DerivedState for FailingImports {
    fn import(
        &self,
        _: &str,
        cursor: u64,
        records: &mut dyn Iterator<
            Item = Result<crate::store::replicated::SectionRecord, crate::store::StoreError>,
        >,
    ) -> Result<(), String> {
        use std::sync::atomic::Ordering::SeqCst;
        if cursor == 0 && records.next().is_none() {
            self.restarted.fetch_add(1, SeqCst);
            return Ok(());
        }
        self.failed.fetch_add(1, SeqCst);
        Err("the disk is on fire".into())
    }

    fn names(&self) -> Vec<&'static str> {
        vec!["x"]
    }

    fn ready(&self) -> bool {
        true
    }

    fn wait_ready(&self) -> Result<(), String> {
        Ok(())
    }
}

#[test]
fn pending_services_state_that_never_imports_is_given_up_for_the_feed() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open_store(dir.path()).expect("store"));
    let snapshots = Snapshots::open(dir.path()).expect("snapshots");
    let machine = StateMachine::new(Arc::clone(&store), snapshots.clone());
    let file = snapshots.new_snapshot("built").expect("new snapshot");
    super::state_machine::write_checkpoint(&store, Some(&OneSection), &file).expect("checkpoint");
    snapshots.set_services_pending(&file).expect("mark pending");

    let services = Arc::new(FailingImports::default());
    machine
        .attach_services(Arc::clone(&services) as Arc<dyn super::derived::DerivedState>)
        .expect("attach");
    // Five failed imports with backoff (200 ms doubling: ~6 s), then the services start
    // over from the feed and the mark is cleared.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while machine.services_import_pending().expect("pending") {
        assert!(
            std::time::Instant::now() < deadline,
            "still pending after {} failed imports",
            services.failed.load(SeqCst)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(services.failed.load(SeqCst), 5);
    assert_eq!(services.restarted.load(SeqCst), 1);
}
