//! The contract between snapshots and the node's derived state (the CDP services).
//!
//! A snapshot carries the services' derived state beside the store's (see
//! [`super::state_machine`]). The cluster layer sits below the services, so it names what it
//! needs as a trait and the services implement it
//! (`crate::services::supervisor::Supervisor`); the dependency points down.

use std::fs::File;
use std::io::{BufReader, BufWriter, Seek};
use std::path::{Path, PathBuf};

use crate::store::replicated::{SectionReader, SectionRecord, SectionWriter};
use crate::store::{Store, StoreError};

/// Something a checkpoint takes the derived state's sections from.
pub trait DerivedSource: Send + Sync {
    /// Takes one consistent view of every part, now (before the store's view is taken, so
    /// each part's cursor is at or behind the store's feed head). May wait for a part
    /// still opening; fails if one cannot be read.
    fn export(&self) -> Result<Box<dyn DerivedExport>, String>;
}

/// Derived state that travels in snapshots, one named part (section) per service.
pub trait DerivedState: DerivedSource + 'static {
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

    /// Whether every part can be imported and exported now, without waiting (a service's
    /// database may still be opening after a restart, or failing to open).
    fn ready(&self) -> bool;

    /// Waits until [`DerivedState::ready`], bounded; fails at once if a part's last attempt
    /// to open failed.
    fn wait_ready(&self) -> Result<(), String>;
}

/// Views taken by [`DerivedSource::export`], streamed into a snapshot later.
pub trait DerivedExport: Send {
    /// Writes one section per part.
    fn write(&self, out: &mut SectionWriter<'_, BufWriter<File>>) -> Result<(), String>;
}

/// The service sections of a snapshot's state file, copied as they are into another
/// checkpoint: a restore's base backup, or a snapshot whose services' state is still to be
/// imported. The file is opened when this is made, so it may be deleted meanwhile.
pub struct SnapshotSections {
    file: File,
    path: PathBuf,
}

impl SnapshotSections {
    /// Opens the state file at `path`.
    pub fn open(path: &Path) -> Result<SnapshotSections, String> {
        let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(SnapshotSections {
            file,
            path: path.to_owned(),
        })
    }
}

impl DerivedExport for SnapshotSections {
    fn write(&self, out: &mut SectionWriter<'_, BufWriter<File>>) -> Result<(), String> {
        let failed = |e: StoreError| format!("{}: {e}", self.path.display());
        let mut file = &self.file;
        file.rewind()
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let mut input = BufReader::with_capacity(256 << 10, file);
        Store::skip_snapshot_state(&mut input).map_err(failed)?;
        let mut sections = SectionReader::new(&mut input);
        while let Some((name, cursor)) = sections.next_section().map_err(failed)? {
            let records = std::iter::from_fn(|| sections.next_record().transpose());
            out.section::<StoreError>(&name, cursor, records)
                .map_err(failed)?;
        }
        Ok(())
    }
}
