//! Opening a log directory: listing its files, loading every segment's index, and
//! repairing what a crash may leave behind — and nothing else.
//!
//! Repaired (each logged with `tracing::warn!`): leftover `*.tmp` files (unfinished
//! metadata, sidecar or copy writes) are removed; a sidecar without its segment is removed;
//! a missing, damaged or stale sidecar of a rolled segment is rebuilt by scanning it; the
//! last segment loses a torn tail (everything from its first bad frame on) and any sidecar
//! (a crash between writing it and creating the next segment), and gets its header back if
//! the crash came before the header was on disk; a last segment shared with another hard
//! link is replaced by a private copy before anything can append to it.
//!
//! Refused with [`LogError::Corrupt`]: a bad frame or header in a rolled segment, a rolled
//! segment with no frames, any gap or overlap between consecutive segments, and a bad frame
//! in the last segment at or below the index the caller knows was durable
//! ([`super::LogOptions::intact_through`]): that is damage to acknowledged records, not a
//! torn write.

use std::path::{Path, PathBuf};

use super::LogError;
use super::index::{self, Sidecar};
use super::scan;
use super::segment::{self, FileKind, SEGMENT_HEADER_BYTES, Segment, SegmentFile};

/// The segment and sidecar files of a directory, by first index.
struct Listing {
    /// `(first_index, path)` of every segment, sorted.
    segments: Vec<(u64, PathBuf)>,
    /// First indexes of the sidecars present, sorted.
    sidecars: Vec<u64>,
}

/// Loads the segments of `dir` in index order, repairing a crash's leftovers (see the
/// module docs). `verify_rolled` scans rolled segments even when their sidecar is good.
pub(super) fn recover(
    dir: &Path,
    verify_rolled: bool,
    intact_through: Option<u64>,
) -> Result<Vec<Segment>, LogError> {
    let listing = list(dir)?;
    let mut dir_changed = false;
    for &first in &listing.sidecars {
        if listing
            .segments
            .binary_search_by_key(&first, |(f, _)| *f)
            .is_err()
        {
            let path = segment::index_path(dir, first);
            tracing::warn!(path = %path.display(), "removing a sidecar without its segment");
            segment::remove_if_present(&path)?;
            dir_changed = true;
        }
    }
    let mut segments = Vec::with_capacity(listing.segments.len());
    let count = listing.segments.len();
    for (position, (first, path)) in listing.segments.into_iter().enumerate() {
        let has_sidecar = listing.sidecars.binary_search(&first).is_ok();
        let segment = if position + 1 < count {
            load_rolled(
                dir,
                first,
                path,
                has_sidecar,
                verify_rolled,
                &mut dir_changed,
            )?
        } else {
            load_last(
                dir,
                first,
                path,
                has_sidecar,
                intact_through,
                &mut dir_changed,
            )?
        };
        if let Some(previous) = segments.last() {
            check_contiguous(previous, &segment)?;
        }
        segments.push(segment);
    }
    if dir_changed {
        segment::sync_dir(dir)?;
    }
    Ok(segments)
}

/// Lists `dir`, removing temporary files on the way.
fn list(dir: &Path) -> Result<Listing, LogError> {
    let mut listing = Listing {
        segments: Vec::new(),
        sidecars: Vec::new(),
    };
    let entries = std::fs::read_dir(dir).map_err(|e| LogError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io(dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        match segment::file_kind(&name) {
            FileKind::Segment(first) => listing.segments.push((first, entry.path())),
            FileKind::Index(first) => listing.sidecars.push(first),
            FileKind::Temporary => {
                tracing::warn!(path = %entry.path().display(), "removing a leftover temporary file");
                segment::remove_if_present(&entry.path())?;
            }
            FileKind::Other => {}
        }
    }
    listing.segments.sort_unstable_by_key(|(first, _)| *first);
    listing.sidecars.sort_unstable();
    Ok(listing)
}

/// Loads a rolled segment: from its sidecar if that is good (and `verify` is off), else by
/// scanning it (any defect is corruption) and rewriting the sidecar.
fn load_rolled(
    dir: &Path,
    first: u64,
    path: PathBuf,
    has_sidecar: bool,
    verify: bool,
    dir_changed: &mut bool,
) -> Result<Segment, LogError> {
    let file = segment::open_segment(&path)?;
    segment::check_header(&file, &path)?;
    let file_len = file.metadata().map_err(|e| LogError::io(&path, e))?.len();
    let sidecar_path = segment::index_path(dir, first);
    let sidecar = if has_sidecar {
        index::read(&sidecar_path)?
    } else {
        Sidecar::Missing
    };
    let trusted = match sidecar {
        Sidecar::Offsets(offsets) => {
            match index::check_against_segment(&file, file_len, first, &offsets) {
                Ok(()) => Some(offsets),
                Err(why) => {
                    tracing::warn!(path = %sidecar_path.display(), why, "sidecar does not match its segment");
                    None
                }
            }
        }
        Sidecar::Bad(why) => {
            tracing::warn!(path = %sidecar_path.display(), why, "damaged sidecar");
            None
        }
        Sidecar::Missing => None,
    };
    let offsets = match trusted {
        Some(offsets) if !verify => offsets,
        trusted => {
            let scan = scan::scan_frames(&file, &path, Some(first))?.require_clean(&path)?;
            if scan.offsets.is_empty() {
                return Err(LogError::Corrupt(format!(
                    "{}: a segment that is not the last one has no records",
                    path.display()
                )));
            }
            if trusted.as_ref() != Some(&scan.offsets) {
                tracing::warn!(path = %sidecar_path.display(), "rebuilding the sidecar from its segment");
                index::write(dir, first, &scan.offsets)?;
                *dir_changed = true;
            }
            scan.offsets
        }
    };
    let file = SegmentFile { path, file };
    Ok(Segment {
        first_index: first,
        file: std::sync::Arc::new(file),
        offsets,
        bytes: file_len,
        rolled: true,
    })
}

/// Loads the last (active) segment: scans it, cuts a torn tail, restores a torn header,
/// drops a stale sidecar, and makes the file private if it is hard-linked elsewhere.
fn load_last(
    dir: &Path,
    first: u64,
    path: PathBuf,
    has_sidecar: bool,
    intact_through: Option<u64>,
    dir_changed: &mut bool,
) -> Result<Segment, LogError> {
    let file = segment::open_segment(&path)?;
    let file_len = file.metadata().map_err(|e| LogError::io(&path, e))?.len();
    if file_len < SEGMENT_HEADER_BYTES {
        tracing::warn!(path = %path.display(), file_len, "restoring the header of a segment created just before a crash");
        let restore = file
            .set_len(0)
            .and_then(|()| std::os::unix::fs::FileExt::write_all_at(&file, &segment::header(), 0))
            .and_then(|()| file.sync_all());
        restore.map_err(|e| LogError::io(&path, e))?;
        *dir_changed = true;
    } else {
        segment::check_header(&file, &path)?;
    }
    let scan = scan::scan_frames(&file, &path, Some(first))?;
    let mut file = SegmentFile { path, file };
    if let Some(defect) = &scan.defect {
        let damaged = scan.last_index().map_or(first, |last| last + 1);
        if intact_through.is_some_and(|intact| damaged <= intact) {
            return Err(LogError::Corrupt(format!(
                "{}: record {damaged} is damaged ({defect}) at offset {}, but records up to {} \
                 were durable here: this is disk damage, not an interrupted write. Nothing was \
                 cut. Replace this node's data from a healthy replica (docs/operations.md, \
                 \"Replacing a node\")",
                file.path.display(),
                scan.end,
                intact_through.unwrap_or(0)
            )));
        }
        tracing::warn!(
            path = %file.path.display(),
            offset = scan.end,
            cut_bytes = file_len - scan.end,
            defect,
            "cutting the torn tail of the last segment (a write interrupted by a crash, never synced)"
        );
    }
    if segment::is_shared(&file)? {
        tracing::warn!(path = %file.path.display(), "the active segment has other hard links; making a private copy");
        file = segment::rewrite_privately(dir, &file, scan.end)?;
    } else if scan.defect.is_some() {
        file.file
            .set_len(scan.end)
            .and_then(|()| file.file.sync_all())
            .map_err(|e| LogError::io(&file.path, e))?;
    }
    if has_sidecar {
        segment::remove_if_present(&segment::index_path(dir, first))?;
        *dir_changed = true;
    }
    Ok(Segment {
        first_index: first,
        file: std::sync::Arc::new(file),
        offsets: scan.offsets,
        bytes: scan.end,
        rolled: false,
    })
}

/// `Err(Corrupt)` unless `next` starts right after the last index of `previous`.
fn check_contiguous(previous: &Segment, next: &Segment) -> Result<(), LogError> {
    let expected = previous.last_index().map(|last| last + 1);
    if expected == Some(next.first_index) {
        return Ok(());
    }
    Err(LogError::Corrupt(format!(
        "{} starts at index {} but {} ends at {}: a gap or an overlap between segments",
        next.file.path.display(),
        next.first_index,
        previous.file.path.display(),
        previous
            .last_index()
            .map_or_else(|| "(no records)".to_owned(), |last| last.to_string())
    )))
}
