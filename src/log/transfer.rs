//! Whole segment files in and out: checkpoints (a cheap, frozen copy of a prefix of the
//! log, for snapshots) and installs (replacing the log with received segment files).
//!
//! A checkpoint hard-links every rolled segment it needs whole and copies the byte prefix
//! of the one holding its last index, so it costs at most one segment of I/O. It stays
//! frozen: appends never touch rolled segments or bytes before the end of the log, and a
//! truncation replaces a hard-linked file by a private copy instead of cutting it in place.
//! The copy runs without the writer mutex (appends continue); if a truncation or install
//! raced it (the generation moved), it is redone under the mutex.
//!
//! An install validates everything before it touches the live log (headers, every frame,
//! consecutive indexes across files, the expected last index) and fsyncs the files. Then,
//! fsyncing the directory after each step, it deletes the local segments newest first and
//! moves the new ones in newest first: a crash at any point leaves a valid log (a prefix of
//! the old one, or a suffix of the new one), which the caller's own record of the install
//! (e.g. a snapshot pointer) must lead it to redo.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::scan;
use super::segment::{self, Segment, SegmentFile};
use super::{Log, LogError, index};

/// A validated file waiting to be moved into the log.
struct Staged {
    /// Where it is.
    source: PathBuf,
    /// Its first index.
    first_index: u64,
    /// Its frame offsets.
    offsets: Vec<u32>,
    /// Its length, bytes.
    bytes: u64,
    /// Whether it has other hard links (then the one that becomes active is copied).
    shared: bool,
}

impl Log {
    /// Writes into `dir` (existing, empty) segment files holding exactly the records with
    /// index `<= up_to` that the log has: rolled segments wholly below are hard-linked, the
    /// one holding `up_to` is copied up to the end of that frame. Later appends, truncations
    /// or retention never change these files. Returns their paths in index order (none if
    /// `up_to` is below the first index); `up_to` past the last index is
    /// [`LogError::Invalid`]. The files and `dir` are fsync'd.
    pub fn checkpoint_to(&self, dir: &Path, up_to: u64) -> Result<Vec<PathBuf>, LogError> {
        let mut entries = std::fs::read_dir(dir).map_err(|e| LogError::io(dir, e))?;
        if entries.next().is_some() {
            return Err(LogError::Invalid(format!(
                "checkpoint directory {} is not empty",
                dir.display()
            )));
        }
        if let Some(paths) = self.checkpoint_once(dir, up_to, false)? {
            return Ok(paths);
        }
        self.checkpoint_once(dir, up_to, true)?.ok_or_else(|| {
            LogError::Unusable("a checkpoint under the writer mutex was raced".to_owned())
        })
    }

    /// One checkpoint attempt; `None` if a truncation or install raced the copy made
    /// without the mutex. On `None` or an error, the files written are removed again.
    fn checkpoint_once(
        &self,
        dir: &Path,
        up_to: u64,
        hold_lock: bool,
    ) -> Result<Option<Vec<PathBuf>>, LogError> {
        let mut written = Vec::new();
        let result = self.checkpoint_into(dir, up_to, hold_lock, &mut written);
        match result {
            Ok(true) => {
                segment::sync_dir(dir)?;
                Ok(Some(written))
            }
            Ok(false) | Err(_) => {
                for path in &written {
                    let _ = std::fs::remove_file(path);
                }
                result.map(|_| None)
            }
        }
    }

    /// Links and copies the checkpoint's files into `dir`, pushing each path to `written`
    /// before creating it; `false` if the copy was raced.
    fn checkpoint_into(
        &self,
        dir: &Path,
        up_to: u64,
        hold_lock: bool,
        written: &mut Vec<PathBuf>,
    ) -> Result<bool, LogError> {
        let writer = self.inner.lock_writer();
        self.inner.check_usable()?;
        let (links, source, prefix_bytes, generation) = {
            let state = self.inner.read_state();
            let Some(last) = state.last_index() else {
                return Ok(true);
            };
            if up_to > last {
                return Err(LogError::Invalid(format!(
                    "checkpoint up to index {up_to}, but the log ends at {last}"
                )));
            }
            let Some(position) = state.segment_of(up_to) else {
                return Ok(true);
            };
            let links: Vec<(PathBuf, u64)> = state.segments[..position]
                .iter()
                .map(|s| (s.file.path.clone(), s.first_index))
                .collect();
            let holder = &state.segments[position];
            let Some((_, end)) = holder.frame_span(up_to) else {
                return Ok(true);
            };
            (
                links,
                (Arc::clone(&holder.file), holder.first_index),
                end,
                state.generation,
            )
        };
        for (path, first_index) in links {
            let dest = segment::segment_path(dir, first_index);
            written.push(dest.clone());
            std::fs::hard_link(&path, &dest).map_err(|e| LogError::io(&dest, e))?;
        }
        let writer = if hold_lock {
            Some(writer)
        } else {
            drop(writer);
            None
        };
        let dest = segment::segment_path(dir, source.1);
        written.push(dest.clone());
        segment::copy_prefix(&source.0, prefix_bytes, &dest)?;
        Ok(writer.is_some() || self.inner.read_state().generation == generation)
    }

    /// Replaces the whole log by the segment files `files` (in index order, anywhere on
    /// the same file system; copied if not), which must end at `last_index`. Every file is
    /// checked and fsync'd first; a bad set is refused ([`LogError::Corrupt`] for a bad
    /// file or a gap, [`LogError::Invalid`] for a wrong `last_index`) with the live log
    /// untouched. Then the local segments are deleted and the files moved in under their
    /// proper names (see the module docs for the crash order). A failure after that first
    /// deletion makes the log unusable.
    pub fn install(&self, files: &[PathBuf], last_index: u64) -> Result<(), LogError> {
        let staged = self.stage(files, last_index)?;
        let _writer = self.inner.lock_writer();
        self.inner.check_usable()?;
        let segments = self.replace_all(&staged).map_err(|e| self.inner.fail(e))?;
        {
            let mut state = self.inner.write_state();
            state.segments = segments;
            state.generation += 1;
        }
        self.inner.mark_all_synced();
        Ok(())
    }

    /// Validates and fsyncs the files of an install.
    fn stage(&self, files: &[PathBuf], last_index: u64) -> Result<Vec<Staged>, LogError> {
        let log_dir = std::fs::canonicalize(self.dir()).map_err(|e| LogError::io(self.dir(), e))?;
        let mut staged: Vec<Staged> = Vec::with_capacity(files.len());
        for path in files {
            let canonical = std::fs::canonicalize(path).map_err(|e| LogError::io(path, e))?;
            if canonical.parent() == Some(log_dir.as_path()) {
                return Err(LogError::Invalid(format!(
                    "{} is inside the log directory; install takes files from elsewhere",
                    path.display()
                )));
            }
            let file = File::open(path).map_err(|e| LogError::io(path, e))?;
            segment::check_header(&file, path)?;
            let expected = staged
                .last()
                .map(|s| s.first_index + s.offsets.len() as u64);
            let scan = scan::scan_frames(&file, path, expected)?.require_clean(path)?;
            let Some(first_index) = scan.first_index else {
                return Err(LogError::Corrupt(format!(
                    "{} holds no records",
                    path.display()
                )));
            };
            file.sync_all().map_err(|e| LogError::io(path, e))?;
            let shared = {
                use std::os::unix::fs::MetadataExt;
                file.metadata().map_err(|e| LogError::io(path, e))?.nlink() > 1
            };
            staged.push(Staged {
                source: path.clone(),
                first_index,
                offsets: scan.offsets,
                bytes: scan.end,
                shared,
            });
        }
        let Some(last) = staged.last() else {
            return Err(LogError::Invalid(
                "install needs at least one segment file".to_owned(),
            ));
        };
        let end = last.first_index + (last.offsets.len() as u64 - 1);
        if end != last_index {
            return Err(LogError::Invalid(format!(
                "the files end at index {end}, not at the expected {last_index}"
            )));
        }
        Ok(staged)
    }

    /// Deletes every local segment and moves the staged files in; returns the new segment
    /// list.
    fn replace_all(&self, staged: &[Staged]) -> Result<Vec<Segment>, LogError> {
        let dir = self.dir();
        let old: Vec<(PathBuf, u64)> = self
            .inner
            .read_state()
            .segments
            .iter()
            .map(|s| (s.file.path.clone(), s.first_index))
            .collect();
        for (path, first_index) in old.iter().rev() {
            segment::remove_if_present(path)?;
            segment::remove_if_present(&segment::index_path(dir, *first_index))?;
            segment::sync_dir(dir)?;
        }
        let count = staged.len();
        for (position, file) in staged.iter().enumerate().rev() {
            let dest = segment::segment_path(dir, file.first_index);
            let active = position + 1 == count;
            if active && file.shared {
                copy_in(&file.source, &dest)?;
            } else {
                move_in(&file.source, &dest)?;
            }
            segment::sync_dir(dir)?;
        }
        let mut segments = Vec::with_capacity(count);
        for (position, file) in staged.iter().enumerate() {
            let rolled = position + 1 < count;
            if rolled && let Err(error) = index::write(dir, file.first_index, &file.offsets) {
                tracing::warn!(%error, "could not write the sidecar of an installed segment; it will be rebuilt at open");
            }
            let path = segment::segment_path(dir, file.first_index);
            let handle = segment::open_segment(&path)?;
            segments.push(Segment {
                first_index: file.first_index,
                file: Arc::new(SegmentFile { path, file: handle }),
                offsets: file.offsets.clone(),
                bytes: file.bytes,
                rolled,
            });
        }
        segment::sync_dir(dir)?;
        Ok(segments)
    }
}

/// Moves `source` to `dest`; across file systems, copies it instead (see [`copy_in`]).
fn move_in(source: &Path, dest: &Path) -> Result<(), LogError> {
    match std::fs::rename(source, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => copy_in(source, dest),
        Err(e) => Err(LogError::io(dest, e)),
    }
}

/// Copies `source` to `dest` through a fsync'd temporary file and a rename.
fn copy_in(source: &Path, dest: &Path) -> Result<(), LogError> {
    let tmp = segment::tmp_path(dest);
    std::fs::copy(source, &tmp).map_err(|e| LogError::io(&tmp, e))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| LogError::io(&tmp, e))?;
    std::fs::rename(&tmp, dest).map_err(|e| LogError::io(dest, e))
}
