//! Snapshot files: where they live, which one is current, and durable replacement.
//!
//! A snapshot is a file in `<data>/snapshots/` in the format of
//! [`crate::store::replicated`], plus the record of which file is current and its Raft
//! metadata (`current`, postcard, replaced atomically by rename). Only the current file is
//! kept; older ones are deleted once a newer one is current — except one whose services'
//! state is still to be imported (`services-pending`, see
//! [`Snapshots::set_services_pending`]).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::types::SnapshotMeta;

/// The data of a snapshot as openraft carries it: a file on disk, never the state in memory.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    /// The snapshot file.
    pub path: PathBuf,
}

/// The snapshot directory.
#[derive(Debug, Clone)]
pub struct Snapshots {
    dir: PathBuf,
}

const CURRENT: &str = "current";
const SERVICES_PENDING: &str = "services-pending";

impl Snapshots {
    /// The snapshot directory under `data_dir`, created if missing.
    pub fn open(data_dir: &Path) -> io::Result<Snapshots> {
        let dir = data_dir.join("snapshots");
        fs::create_dir_all(&dir)?;
        Ok(Snapshots { dir })
    }

    /// A fresh path for a snapshot being written or received.
    pub fn new_path(&self, label: &str) -> PathBuf {
        self.dir
            .join(format!("{label}-{}.snap", uuid::Uuid::new_v4().simple()))
    }

    /// The current snapshot, if there is one.
    pub fn current(&self) -> io::Result<Option<(SnapshotMeta, SnapshotFile)>> {
        let bytes = match fs::read(self.dir.join(CURRENT)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let (meta, name): (SnapshotMeta, String) = postcard::from_bytes(&bytes)
            .map_err(|e| io::Error::other(format!("corrupt snapshots/current: {e}")))?;
        let path = self.dir.join(name);
        Ok(Some((meta, SnapshotFile { path })))
    }

    /// Makes `file` (already fsync'd, inside this directory) the current snapshot and
    /// deletes the others.
    pub fn set_current(&self, meta: &SnapshotMeta, file: &SnapshotFile) -> io::Result<()> {
        let bytes = postcard::to_stdvec(&(meta, file_name(file)?)).map_err(io::Error::other)?;
        self.replace(CURRENT, &bytes)?;
        let pending = self.services_pending()?.map(|f| f.path);
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_snapshot = path.extension().is_some_and(|e| e == "snap");
            if is_snapshot && path != file.path && Some(&path) != pending.as_ref() {
                // A leftover partial snapshot or an older one; failing to delete it only
                // wastes space.
                let _ = fs::remove_file(&path);
            }
        }
        Ok(())
    }

    /// Records durably that the services' state in `file` (a snapshot in this directory)
    /// is still to be imported, and keeps `file` until [`Snapshots::clear_services_pending`].
    /// Installing a snapshot sets it before replacing anything and clears it once the
    /// services are imported; a node that starts with it set imports them then (after a
    /// crash, or when the snapshot was installed before the services were running).
    pub fn set_services_pending(&self, file: &SnapshotFile) -> io::Result<()> {
        self.replace(SERVICES_PENDING, file_name(file)?.as_bytes())
    }

    /// The snapshot whose services' state is still to be imported, if any.
    pub fn services_pending(&self) -> io::Result<Option<SnapshotFile>> {
        match fs::read_to_string(self.dir.join(SERVICES_PENDING)) {
            Ok(name) => Ok(Some(SnapshotFile {
                path: self.dir.join(name),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records that the services' state was imported (the file it kept goes at the next
    /// [`Snapshots::set_current`] unless it is current).
    pub fn clear_services_pending(&self) -> io::Result<()> {
        match fs::remove_file(self.dir.join(SERVICES_PENDING)) {
            Ok(()) => File::open(&self.dir)?.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Replaces file `name` with `bytes` durably (write, fsync, rename, fsync the directory).
    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let temp = self.dir.join(format!("{name}.tmp"));
        let mut out = File::create(&temp)?;
        out.write_all(bytes)?;
        out.sync_all()?;
        fs::rename(&temp, self.dir.join(name))?;
        File::open(&self.dir)?.sync_all()
    }

    /// Moves a received file into the directory (if it is elsewhere) and returns its path.
    pub fn adopt(&self, file: &SnapshotFile) -> io::Result<SnapshotFile> {
        if file.path.parent() == Some(self.dir.as_path()) {
            return Ok(file.clone());
        }
        let path = self.new_path("received");
        fs::rename(&file.path, &path)?;
        Ok(SnapshotFile { path })
    }
}

fn file_name(file: &SnapshotFile) -> io::Result<String> {
    Ok(file
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other("snapshot path has no file name"))?
        .to_owned())
}
