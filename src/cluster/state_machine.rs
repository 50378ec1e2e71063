//! The Raft state machine: committed entries applied to the [`Store`], and snapshots.
//!
//! - `apply` runs the store's deterministic [`crate::store::apply::Applier`] on each
//!   committed entry in its own transaction (in a blocking thread), together with the
//!   applied log id and membership, then answers the proposer. An entry a consistency check
//!   refuses is skipped on every replica alike and answered [`CommandResult::Refused`].
//! - a snapshot is a file streamed from one consistent store snapshot
//!   ([`Store::export`]); building one first fsyncs the state, since openraft may purge
//!   the log it covers. Installing verifies the file's checksum, marks it current (so a
//!   crash mid-install re-installs it at start-up), then replaces the state from it.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use futures::stream::Stream;
use openraft::EntryPayload;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use serde::{Deserialize, Serialize};

use super::snapshot::{SnapshotFile, Snapshots};
use super::types::{LogId, Snapshot, SnapshotMeta, StoredMembership};
use super::{Command, CommandResult, TypeConfig};
use crate::store::replicated::Committed;
use crate::store::{Store, StoreError};

/// How far the state got, as stored with it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// The state machine handle; clones share everything.
#[derive(Clone)]
pub struct StateMachine {
    store: Arc<Store>,
    snapshots: Snapshots,
    /// The applied state after the last apply (loaded from the store on first use).
    applied: Arc<Mutex<Option<AppliedState>>>,
}

fn io(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}

fn store_io(error: StoreError) -> io::Error {
    io(error)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(io)?
}

impl StateMachine {
    /// A state machine over `store`, keeping snapshots in `snapshots`.
    pub fn new(store: Arc<Store>, snapshots: Snapshots) -> StateMachine {
        StateMachine {
            store,
            snapshots,
            applied: Arc::new(Mutex::new(None)),
        }
    }

    async fn applied(&self) -> io::Result<AppliedState> {
        if let Some(state) = self.applied.lock().map_err(io)?.clone() {
            return Ok(state);
        }
        let store = Arc::clone(&self.store);
        let blob = blocking(move || store.raft_state().map_err(store_io)).await?;
        let state = match blob {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(io)?,
            None => AppliedState::default(),
        };
        *self.applied.lock().map_err(io)? = Some(state.clone());
        Ok(state)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let state = self.applied().await?;
        Ok((state.last_applied, state.membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let mut state = self.applied().await?;
        let mut batch = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            state.last_applied = Some(entry.log_id);
            let command = match entry.payload {
                EntryPayload::Normal(command) => Some(command),
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    None
                }
                EntryPayload::Blank => None,
            };
            let blob = postcard::to_stdvec(&state).map_err(io)?;
            // The store counts applied entries from 1; Raft indexes start at 0.
            batch.push((entry.log_id.index + 1, command, blob, responder));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let store = Arc::clone(&self.store);
        let (batch, results) = blocking(move || {
            let committed: Vec<Committed<'_>> = batch
                .iter()
                .map(|(index, command, blob, _)| Committed {
                    index: *index,
                    command: command.as_ref(),
                    raft_state: blob.clone(),
                })
                .collect();
            let results = store.apply_committed(&committed).map_err(store_io)?;
            Ok((batch, results))
        })
        .await?;
        *self.applied.lock().map_err(io)? = Some(state);
        for ((_, command, _, responder), result) in batch.into_iter().zip(results) {
            let is_ingest = matches!(command, Some(Command::Ingest(_)));
            if let Some(responder) = responder {
                responder.send(match result {
                    Ok(outcomes) if is_ingest => CommandResult::Ingested(outcomes),
                    Ok(_) => CommandResult::Done,
                    Err(why) => CommandResult::Refused(why),
                });
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> io::Result<()> {
        let (store, snapshots, meta) = (
            Arc::clone(&self.store),
            self.snapshots.clone(),
            meta.clone(),
        );
        let installed_meta = meta.clone();
        blocking(move || {
            let file = snapshots.adopt(&snapshot)?;
            let records = Store::verify_snapshot(&mut BufReader::new(File::open(&file.path)?))
                .map_err(store_io)?;
            snapshots.set_current(&meta, &file)?;
            store
                .import(&mut BufReader::new(File::open(&file.path)?))
                .map_err(store_io)?;
            tracing::info!(records, last_log_id = ?meta.last_log_id, "installed snapshot");
            Ok(())
        })
        .await?;
        *self.applied.lock().map_err(io)? = Some(AppliedState {
            last_applied: installed_meta.last_log_id,
            membership: installed_meta.last_membership.clone(),
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let snapshots = self.snapshots.clone();
        let current = blocking(move || snapshots.current()).await?;
        Ok(current.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let (store, snapshots) = (Arc::clone(&self.store), self.snapshots.clone());
        blocking(move || {
            // The log up to this snapshot may be purged once it exists: make the state
            // that covers it durable first.
            store.persist().map_err(store_io)?;
            let path = snapshots.new_path("built");
            let mut out = BufWriter::new(File::create(&path)?);
            let (blob, records) = store.export(&mut out).map_err(store_io)?;
            out.flush()?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            let state: AppliedState = match blob {
                Some(bytes) => postcard::from_bytes(&bytes).map_err(io)?,
                None => AppliedState::default(),
            };
            let meta = SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.membership,
            };
            let file = SnapshotFile { path };
            snapshots.set_current(&meta, &file)?;
            tracing::info!(records, last_log_id = ?meta.last_log_id, "built snapshot");
            Ok(Snapshot {
                meta,
                snapshot: file,
            })
        })
        .await
    }
}
