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
