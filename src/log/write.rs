//! Changing the log: appending (rolling segments on the way), cutting the tail, deleting
//! old segments. Everything here runs under the writer mutex.
//!
//! An append costs one `pwrite` of a buffer holding all its frames, at the end of the
//! active segment's valid data; its offsets are published to readers only after the write
//! returns. A failed write is cut off again (`set_len`) so the file never keeps a partial
//! frame behind valid data while the log is open; if even that fails, the log is unusable.
//!
//! Multi-step changes are ordered so that a crash at any point leaves a valid log on disk:
//! a roll fsyncs the old segment and writes its sidecar before it creates the next segment
//! (header fsync'd, directory fsync'd); a truncation removes later segments newest first,
//! fsyncing the directory after each, before cutting the file that keeps the boundary; a
//! retention deletion removes the oldest segment first. A step that fails halfway through
//! a truncation marks the log unusable: the in-memory view no longer matches the disk.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::segment::{
    self, FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX, INDEX_RESERVED, Segment, SegmentFile,
};
use super::{APPEND_BYTES_MAX, Log, LogError, index};

/// Largest capacity the append buffer keeps between calls, bytes (a larger one, left by a
/// huge append, is freed).
const APPEND_BUFFER_RETAINED_BYTES_MAX: usize = 16 << 20;

/// What `append` must do to the segment list before it can write.
enum Preparation {
    /// The log has no segment: create one named after the first record.
    Create,
    /// The log is empty and its only segment is named after another index: replace it.
    Replace,
    /// The active segment is full: roll to a new one.
    Roll,
    /// Write to the active segment as it is.
    Ready,
}

/// What a truncation removes, decided (and applied to the in-memory view) under the state
/// lock, carried out on disk afterwards.
struct Truncation {
    /// Whole segments to delete, in index order.
    removed: Vec<Segment>,
    /// The segment that now ends the log, if any remains.
    cut: Option<Cut>,
}

/// The segment left at the end of the log by a truncation.
struct Cut {
    /// Its file.
    file: Arc<SegmentFile>,
    /// Its first index (names its sidecar).
    first_index: u64,
    /// Its new valid length, bytes.
    len: u64,
    /// Whether it was rolled (its sidecar must go: it is active again).
    was_rolled: bool,
}

impl Log {
    /// Appends `records` — `(index, payload)` with consecutive indexes continuing the last
    /// index (any first index if the log is empty). Readable by every clone when it
    /// returns; durable once a later [`Log::sync`] returns. All of one call's records go to
    /// one segment file, in one write. Refused with [`LogError::Invalid`], changing nothing:
    /// a wrong or non-consecutive index, a payload over [`FRAME_PAYLOAD_BYTES_MAX`], more
    /// than [`APPEND_BYTES_MAX`] in one call, or the index `u64::MAX` (reserved).
    pub fn append(&self, records: &[(u64, &[u8])]) -> Result<(), LogError> {
        let Some(&(first, _)) = records.first() else {
            return Ok(());
        };
        let mut writer = self.inner.lock_writer();
        self.inner.check_usable()?;
        let next = self.inner.read_state().next_index();
        let total = check_records(records, next)?;
        let (file, base) = self.prepare_active(first)?;
        let buf = &mut writer.buf;
        buf.clear();
        buf.reserve(usize::try_from(total).unwrap_or(0));
        let mut offsets = Vec::with_capacity(records.len());
        for &(index, payload) in records {
            let offset = base + buf.len() as u64;
            let too_big =
                || LogError::Invalid(format!("{} would grow past 4 GiB", file.path.display()));
            offsets.push(u32::try_from(offset).map_err(|_| too_big())?);
            let len = u32::try_from(payload.len()).map_err(|_| too_big())?;
            segment::encode_frame(buf, index, payload, len);
        }
        if let Err(e) = file.file.write_all_at(buf, base) {
            let error = LogError::io(&file.path, e);
            if let Err(cut) = file.file.set_len(base) {
                return Err(self.inner.fail(LogError::io(&file.path, cut)));
            }
            return Err(error);
        }
        let end = base + buf.len() as u64;
        if buf.capacity() > APPEND_BUFFER_RETAINED_BYTES_MAX {
            *buf = Vec::new();
        }
        let mut state = self.inner.write_state();
        let Some(active) = state.segments.last_mut() else {
            return Err(self.inner.fail(LogError::Unusable(
                "the active segment vanished during an append".into(),
            )));
        };
        active.offsets.extend_from_slice(&offsets);
        active.bytes = end;
        state.appends += 1;
        Ok(())
    }

    /// Makes the active segment ready for an append starting at `first`; returns its file
    /// and where to write.
    fn prepare_active(&self, first: u64) -> Result<(Arc<SegmentFile>, u64), LogError> {
        let dir = self.dir();
        let preparation = match self.inner.read_state().segments.last() {
            None => Preparation::Create,
            Some(active) if active.offsets.is_empty() && active.first_index != first => {
                Preparation::Replace
            }
            Some(active)
                if !active.offsets.is_empty()
                    && active.bytes >= self.inner.options.segment_bytes_max =>
            {
                Preparation::Roll
            }
            Some(_) => Preparation::Ready,
        };
        match preparation {
            Preparation::Create | Preparation::Replace => {
                let old = self.inner.write_state().segments.pop();
                if let Some(old) = old {
                    // Removed before the new one exists: a crash in between leaves an empty
                    // log, never two empty segments.
                    segment::remove_if_present(&old.file.path)?;
                }
                let file = segment::create_segment(dir, first)?;
                segment::sync_dir(dir)?;
                self.inner
                    .write_state()
                    .segments
                    .push(Segment::empty(first, file));
            }
            Preparation::Roll => self.roll()?,
            Preparation::Ready => {}
        }
        let state = self.inner.read_state();
        match state.segments.last() {
            Some(active) => Ok((Arc::clone(&active.file), active.bytes)),
            None => Err(LogError::Unusable(
                "no active segment after preparing an append".into(),
            )),
        }
    }

    /// Rolls the active segment: fsyncs it, writes its sidecar (optional: a failure is
    /// logged, the sidecar is rebuilt at open), creates the next segment and fsyncs the
    /// directory. A failure marks the log unusable (it includes fsyncs).
    fn roll(&self) -> Result<(), LogError> {
        let dir = self.dir();
        let next_first = {
            let state = self.inner.read_state();
            let Some(active) = state.segments.last() else {
                return Ok(());
            };
            let Some(last) = active.last_index() else {
                return Ok(());
            };
            if let Err(e) = active.file.file.sync_data() {
                return Err(self.inner.fail(LogError::io(&active.file.path, e)));
            }
            if let Err(error) = index::write(dir, active.first_index, &active.offsets) {
                tracing::warn!(%error, "could not write the sidecar of a rolled segment; it will be rebuilt at open");
            }
            last + 1
        };
        let file = segment::create_segment(dir, next_first)
            .and_then(|file| segment::sync_dir(dir).map(|()| file))
            .map_err(|e| self.inner.fail(e))?;
        let mut state = self.inner.write_state();
        if let Some(old) = state.segments.last_mut() {
            old.rolled = true;
        }
        state.segments.push(Segment::empty(next_first, file));
        Ok(())
    }

    /// Removes every record with index `>= index`, durably (files and directory fsync'd)
    /// before returning. Later segments are deleted whole; the segment that keeps the
    /// records before `index` is cut and becomes the active one (a rolled segment loses its
    /// sidecar; one hard-linked elsewhere, e.g. by a checkpoint, is replaced by a private
    /// copy first). Nothing to remove is not an error.
    pub fn truncate_from(&self, index: u64) -> Result<(), LogError> {
        let _writer = self.inner.lock_writer();
        self.inner.check_usable()?;
        let Some(truncation) = self.plan_truncation(index) else {
            return Ok(());
        };
        self.carry_out(truncation).map_err(|e| self.inner.fail(e))?;
        self.inner.mark_all_synced();
        Ok(())
    }

    /// Applies a truncation from `index` to the in-memory view (bumping the generation so
    /// readers racing it look again) and returns what to do on disk; `None` if the log has
    /// no record at or after `index`.
    fn plan_truncation(&self, index: u64) -> Option<Truncation> {
        let mut state = self.inner.write_state();
        if index > state.last_index()? {
            return None;
        }
        state.generation += 1;
        let keep = state.segments.partition_point(|s| s.first_index < index);
        let removed = state.segments.split_off(keep);
        let cut = state.segments.last_mut().map(|kept| {
            let frames = usize::try_from(index - kept.first_index).unwrap_or(usize::MAX);
            if let Some(&offset) = kept.offsets.get(frames) {
                kept.bytes = u64::from(offset);
                kept.offsets.truncate(frames);
            }
            let was_rolled = std::mem::replace(&mut kept.rolled, false);
            Cut {
                file: Arc::clone(&kept.file),
                first_index: kept.first_index,
                len: kept.bytes,
                was_rolled,
            }
        });
        Some(Truncation { removed, cut })
    }

    /// Carries out a planned truncation on disk.
    fn carry_out(&self, truncation: Truncation) -> Result<(), LogError> {
        let dir = self.dir();
        for removed in truncation.removed.iter().rev() {
            segment::remove_if_present(&removed.file.path)?;
            segment::remove_if_present(&segment::index_path(dir, removed.first_index))?;
            segment::sync_dir(dir)?;
        }
        let Some(cut) = truncation.cut else {
            return Ok(());
        };
        if segment::is_shared(&cut.file)? {
            let private = segment::rewrite_privately(dir, &cut.file, cut.len)?;
            if let Some(kept) = self.inner.write_state().segments.last_mut() {
                kept.file = Arc::new(private);
            }
        } else {
            let file_len = cut
                .file
                .file
                .metadata()
                .map_err(|e| LogError::io(&cut.file.path, e))?
                .len();
            if file_len > cut.len {
                let file = &cut.file.file;
                file.set_len(cut.len)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| LogError::io(&cut.file.path, e))?;
            }
        }
        if cut.was_rolled {
            segment::remove_if_present(&segment::index_path(dir, cut.first_index))?;
            segment::sync_dir(dir)?;
        }
        Ok(())
    }

    /// Deletes, oldest first, every whole segment (and sidecar) whose last index is below
    /// `index` — never the active segment — and returns how many. Each deletion is durable
    /// (directory fsync'd) before the next, so a crash leaves a log that starts later, never
    /// one with a hole. Readers already reading a deleted segment finish from the open file.
    pub fn delete_segments_before(&self, index: u64) -> Result<usize, LogError> {
        let _writer = self.inner.lock_writer();
        self.inner.check_usable()?;
        let dir = self.dir();
        let mut deleted = 0;
        loop {
            let victim = {
                let state = self.inner.read_state();
                match state.segments.as_slice() {
                    [oldest, _, ..]
                        if oldest.rolled
                            && oldest.last_index().is_some_and(|last| last < index) =>
                    {
                        (oldest.file.path.clone(), oldest.first_index)
                    }
                    _ => break,
                }
            };
            segment::remove_if_present(&victim.0)?;
            segment::remove_if_present(&segment::index_path(dir, victim.1))?;
            segment::sync_dir(dir)?;
            self.inner.write_state().segments.remove(0);
            deleted += 1;
        }
        Ok(deleted)
    }
}

/// Checks an append's records against the log's next index (`None`: empty log, any) and
/// the limits; returns their encoded size, bytes.
fn check_records(records: &[(u64, &[u8])], next: Option<u64>) -> Result<u64, LogError> {
    let Some(&(first, _)) = records.first() else {
        return Ok(0);
    };
    if let Some(next) = next
        && first != next
    {
        return Err(LogError::Invalid(format!(
            "append starts at index {first}, but the log continues at {next}"
        )));
    }
    let mut total = 0u64;
    for (position, &(index, payload)) in records.iter().enumerate() {
        let expected = first
            .checked_add(position as u64)
            .filter(|&i| i != INDEX_RESERVED);
        let Some(expected) = expected else {
            return Err(LogError::Invalid(format!(
                "index {INDEX_RESERVED} is reserved; the log cannot go past it"
            )));
        };
        if index != expected {
            return Err(LogError::Invalid(format!(
                "records are not consecutive: index {index} at position {position}, expected {expected}"
            )));
        }
        if payload.len() > FRAME_PAYLOAD_BYTES_MAX {
            return Err(LogError::Invalid(format!(
                "record {index} has {} payload bytes, the maximum is {FRAME_PAYLOAD_BYTES_MAX}",
                payload.len()
            )));
        }
        total += FRAME_HEADER_BYTES + payload.len() as u64;
        if total > APPEND_BYTES_MAX {
            return Err(LogError::Invalid(format!(
                "one append may write at most {APPEND_BYTES_MAX} bytes; split the records into several calls"
            )));
        }
    }
    Ok(total)
}
