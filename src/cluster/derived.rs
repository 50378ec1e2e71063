//! The contract between snapshots and the node's derived state (the CDP services).
//!
//! A snapshot carries the services' derived state beside the store's (see
//! [`super::state_machine`]). The cluster layer sits below the services, so it names what it
//! needs as a trait and the services implement it
//! (`crate::services::supervisor::Supervisor`); the dependency points down.

use std::fs::File;
use std::io::BufWriter;

use crate::store::StoreError;
use crate::store::replicated::{SectionRecord, SectionWriter};

/// Derived state that travels in snapshots, one named part (section) per service.
pub trait DerivedState: Send + Sync + 'static {
    /// Takes one consistent view of every part, now (before the store's view is taken, so
    /// each part's cursor is at or behind the store's feed head). May wait for a part
    /// still opening; fails if one cannot be read.
    fn export(&self) -> Result<Box<dyn DerivedExport>, String>;

    /// Replaces part `name` with `records` at `cursor` (a section of a verified snapshot).
    /// A part this node does not run is skipped.
    fn import(
        &self,
        name: &str,
        cursor: u64,
        records: &mut dyn Iterator<Item = Result<SectionRecord, StoreError>>,
    ) -> Result<(), String>;

    /// The parts' names.
    fn names(&self) -> Vec<&'static str>;
}

/// Views taken by [`DerivedState::export`], streamed into a snapshot later.
pub trait DerivedExport: Send {
    /// Writes one section per part.
    fn write(&self, out: &mut SectionWriter<'_, BufWriter<File>>) -> Result<(), String>;
}
