//! Handing a node's derived state over: every service's records and cursor exported into
//! a Raft snapshot and imported from one (the [`DerivedState`] contract the cluster layer
//! names), and hashed, so replicas can show they hold the same derived state.
//!
//! An import fences the running worker exactly as a hang does, replaces the database,
//! then starts a fresh worker from the imported cursor (see the supervisor's module
//! documentation for why any imported cursor is valid).

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{Supervisor, lock, spawn_worker};
use crate::cluster::derived::{DerivedExport, DerivedSource, DerivedState};
use crate::services::db::{ExportView, KeyValue, ServiceError};
use crate::store::replicated::{SectionInfo, SectionWriter};

/// One service's derived state, hashed ([`Supervisor::hashes`]).
#[derive(Debug, Clone, Serialize)]
pub struct ServiceHash {
    /// The service's name.
    pub name: &'static str,
    /// The feed position the hashed state reflects.
    pub cursor: u64,
    /// Records hashed.
    pub records: u64,
    /// blake3 over every record in key order, hex.
    pub hash: String,
}

/// One hash over every service's name, cursor and state hash (in the supervisor's order):
/// two nodes agree on it when every service is at the same cursor with the same state.
/// `GET /v1/admin/state-hash` reports it; backups record it from a snapshot's sections.
pub fn combined_hash<'a>(services: impl IntoIterator<Item = (&'a str, u64, &'a str)>) -> String {
    let mut hasher = blake3::Hasher::new();
    for (name, cursor, hash) in services {
        hasher.update(name.as_bytes());
        hasher.update(&cursor.to_le_bytes());
        hasher.update(hash.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// The hash [`Supervisor::hashes`] gives a service's state, computed from its records in
/// key order (a snapshot section's records): each key and value with its length, then the
/// count.
pub fn records_hash(
    records: impl IntoIterator<Item = Result<(Vec<u8>, Vec<u8>), crate::store::StoreError>>,
) -> Result<(u64, String), crate::store::StoreError> {
    let mut hasher = blake3::Hasher::new();
    let mut count = 0_u64;
    for record in records {
        let (key, value) = record?;
        hasher.update(&(key.len() as u64).to_le_bytes());
        hasher.update(&key);
        hasher.update(&(value.len() as u64).to_le_bytes());
        hasher.update(&value);
        count += 1;
    }
    hasher.update(&count.to_le_bytes());
    Ok((count, hasher.finalize().to_hex().to_string()))
}

impl Supervisor {
    /// Takes one consistent view of every service's state and cursor, now, for a
    /// snapshot; [`ServicesExport::write`] streams them. Workers keep running meanwhile.
    /// Waits for databases still opening (see [`super::Opener`]).
    pub fn export_state(&self) -> Result<ServicesExport, ServiceError> {
        let views = self
            .services
            .iter()
            .map(|s| Ok((s.name, super::wait_db(s)?.export_view())))
            .collect::<Result<_, ServiceError>>()?;
        Ok(ServicesExport { views })
    }

    /// Replaces service `name`'s state with `records` at `cursor` (a section of a
    /// snapshot), then starts a fresh worker from there. The running worker is fenced
    /// first — the generation moves on and the commit lock is held throughout, so it can
    /// never commit again. Returns the number of records, or `None` (with a warning) when
    /// this node runs no service of that name.
    ///
    /// If the import fails, the database is cleared (so the fresh worker rebuilds from the
    /// feed rather than building on part of a state) and the error returned.
    pub fn import_state(
        &self,
        name: &str,
        cursor: u64,
        records: impl IntoIterator<Item = Result<KeyValue, ServiceError>>,
    ) -> Result<Option<u64>, ServiceError> {
        let Some(shared) = self.services.iter().find(|s| s.name == name) else {
            tracing::warn!(
                service = name,
                "a snapshot carries state of a service this node does not run; skipped"
            );
            return Ok(None);
        };
        let db = super::wait_db(shared)?;
        shared.generation.fetch_add(1, Ordering::AcqRel);
        // Held until the fresh worker is started: a worker the watchdog may start meanwhile
        // (reading part of the import) is fenced by that start before it can commit.
        let _guard = lock(&shared.commit_lock);
        let imported = db.import(cursor, records);
        if let Err(error) = &imported {
            tracing::error!(service = name, %error, "importing a service's state failed; it will rebuild from the feed");
            if let Err(error) = db.clear() {
                tracing::error!(service = name, %error, "clearing after a failed import failed");
            }
        }
        let resume_at = if imported.is_ok() { cursor } else { 0 };
        shared.cursor.store(resume_at, Ordering::Release);
        {
            let mut state = lock(&shared.state);
            // The fenced worker's handle is dropped: it exits at its next generation check.
            state.thread = None;
            state.restart_at = None;
            if imported.is_ok() {
                state.imported_cursor = Some(cursor);
            }
        }
        shared.busy_since_ms.store(0, Ordering::Release);
        spawn_worker(shared);
        let records = imported?;
        tracing::info!(
            service = name,
            cursor,
            records,
            "imported a service's state"
        );
        Ok(Some(records))
    }

    /// Every service's state hashed, each from one consistent view with the cursor it
    /// reflects. Services are deterministic (see [`super::Service`]), so two replicas whose
    /// service is at the same cursor have the same hash. Reads every record: for drills
    /// and tests, not frequent polling.
    pub fn hashes(&self) -> Result<Vec<ServiceHash>, ServiceError> {
        self.services
            .iter()
            .map(|s| {
                let view = super::wait_db(s)?.export_view();
                let (records, hash) = view.hash()?;
                Ok(ServiceHash {
                    name: s.name,
                    cursor: view.cursor()?,
                    records,
                    hash,
                })
            })
            .collect()
    }
}

impl DerivedSource for Supervisor {
    fn export(&self) -> Result<Box<dyn DerivedExport>, String> {
        Ok(Box::new(self.export_state().map_err(|e| e.to_string())?))
    }
}

impl DerivedState for Supervisor {
    fn import(
        &self,
        name: &str,
        cursor: u64,
        records: &mut dyn Iterator<Item = Result<KeyValue, crate::store::StoreError>>,
    ) -> Result<(), String> {
        self.import_state(
            name,
            cursor,
            records.map(|r| r.map_err(ServiceError::State)),
        )
        .map(drop)
        .map_err(|e| e.to_string())
    }

    fn names(&self) -> Vec<&'static str> {
        Supervisor::names(self)
    }

    fn ready(&self) -> bool {
        self.services.iter().all(|s| s.db.get().is_some())
    }

    fn wait_ready(&self) -> Result<(), String> {
        for shared in &self.services {
            super::wait_db(shared).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl DerivedExport for ServicesExport {
    fn write(
        &self,
        out: &mut SectionWriter<'_, std::io::BufWriter<std::fs::File>>,
    ) -> Result<(), String> {
        ServicesExport::write(self, out)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Every service's state as of one instant ([`Supervisor::export_state`]).
pub struct ServicesExport {
    views: Vec<(&'static str, ExportView)>,
}

impl ServicesExport {
    /// Writes one snapshot section per service — its name, its cursor, its data records —
    /// streamed from its view. Returns what was written.
    pub fn write<W: std::io::Write>(
        &self,
        out: &mut SectionWriter<'_, W>,
    ) -> Result<Vec<SectionInfo>, ServiceError> {
        let mut written = Vec::with_capacity(self.views.len());
        for (name, view) in &self.views {
            let cursor = view.cursor()?;
            let records = out.section(name, cursor, view.records())?;
            written.push(SectionInfo {
                name: (*name).to_owned(),
                cursor,
                records,
            });
        }
        Ok(written)
    }
}
