//! openraft's storage conformance suite, run against our log store and state machine on
//! real files.

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

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::write(TypeConfig::err_from_error(&e)))?;
        let store = Store::open_in(
            dir.path(),
            8 << 20,
            ApplySettings {
                rules: MergeRules::default(),
                dedup_window_ms: 86_400_000,
                retention_ms: 86_400_000,
                audit_records_max: crate::model::audit::AUDIT_RECORDS_DEFAULT_MAX,
                clock_step_ms_max: crate::model::time::CLOCK_STEP_DEFAULT_MS_MAX,
            },
        )
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
