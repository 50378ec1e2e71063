//! Reading records: by index, and by range with a visitor.
//!
//! A read looks the record up under a short read lock (segment file, byte range), releases
//! it, and reads with `pread`, so reads never wait for a write or an fsync and never block
//! one. Every frame read is checked (length, index, crc); a failure is
//! [`LogError::Corrupt`] naming the file and offset — unless the log's generation moved
//! meanwhile (a truncation or install rewrote bytes under the read), in which case the
//! record is looked up again, at most [`READ_ATTEMPTS_MAX`] times.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::segment::{self, FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX, SegmentFile};
use super::{Log, LogError, State};

/// How many times a read racing truncations looks its record up.
const READ_ATTEMPTS_MAX: u32 = 8;

/// Most bytes `read_range` reads in one `pread` (a larger single frame is read alone).
const READ_CHUNK_BYTES_MAX: u64 = 4 << 20;

/// Why a `read_range` step failed.
enum Failure {
    /// Reading or checking a frame (retried if a truncation raced it).
    Read(LogError),
    /// The visitor's own error (returned as is).
    Visit(LogError),
}

/// Consecutive frames of one segment, to read with one `pread`.
struct Run {
    /// The segment's file.
    file: Arc<SegmentFile>,
    /// Index of the first frame.
    first_index: u64,
    /// Number of frames.
    frames: u64,
    /// Byte range `[start, end)` in the file.
    start: u64,
    /// End of the last frame.
    end: u64,
}

impl Log {
    /// The payload at `index`; `None` if the log does not hold it. The frame's crc is
    /// checked: a mismatch is [`LogError::Corrupt`] naming the file and offset.
    pub fn read(&self, index: u64) -> Result<Option<Vec<u8>>, LogError> {
        let mut attempts = 1;
        loop {
            let (run, generation) = {
                let state = self.inner.read_state();
                self.inner.check_usable()?;
                (locate_run(&state, index, index), state.generation)
            };
            let Some(run) = run.filter(|run| run.first_index == index) else {
                return Ok(None);
            };
            match read_frame(&run) {
                Ok(payload) => return Ok(Some(payload)),
                Err(_)
                    if attempts < READ_ATTEMPTS_MAX
                        && self.inner.read_state().generation != generation =>
                {
                    attempts += 1;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Visits the records with indexes in `[from, to_inclusive]` in order, each checked, and
    /// stops early when `visit` returns `Ok(false)` (or an error, returned as is). Records
    /// below the first index (deleted by retention) are skipped; the range ends at the
    /// last index. Reads a few MiB per `pread`; memory stays bounded by that or one frame.
    pub fn read_range(
        &self,
        from: u64,
        to_inclusive: u64,
        mut visit: impl FnMut(u64, &[u8]) -> Result<bool, LogError>,
    ) -> Result<(), LogError> {
        let mut next = from;
        let mut buf = Vec::new();
        let mut attempts = 1;
        while next <= to_inclusive {
            let (run, generation) = {
                let state = self.inner.read_state();
                self.inner.check_usable()?;
                (locate_run(&state, next, to_inclusive), state.generation)
            };
            let Some(run) = run else {
                return Ok(());
            };
            let result = read_run(&run, &mut buf)
                .map_err(Failure::Read)
                .and_then(|()| {
                    let mut position = 0;
                    for index in run.first_index..run.first_index + run.frames {
                        let payload =
                            next_frame(&buf, &mut position, index, &run).map_err(Failure::Read)?;
                        next = index + 1;
                        if !visit(index, payload).map_err(Failure::Visit)? {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                });
            match result {
                Ok(true) => attempts = 1,
                Ok(false) => return Ok(()),
                Err(Failure::Read(_))
                    if attempts < READ_ATTEMPTS_MAX
                        && self.inner.read_state().generation != generation =>
                {
                    attempts += 1;
                }
                Err(Failure::Read(e) | Failure::Visit(e)) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The run of frames starting at `max(index, first index)` and ending at `to` or at the
/// end of its segment, at most [`READ_CHUNK_BYTES_MAX`] long (at least one frame).
fn locate_run(state: &State, index: u64, to: u64) -> Option<Run> {
    let index = index.max(state.first_index()?);
    if index > to {
        return None;
    }
    let segment = &state.segments[state.segment_of(index)?];
    let (start, mut end) = segment.frame_span(index)?;
    let last = segment.last_index()?.min(to);
    let mut frames = 1;
    while index + frames <= last {
        let Some((_, frame_end)) = segment.frame_span(index + frames) else {
            break;
        };
        if frame_end - start > READ_CHUNK_BYTES_MAX {
            break;
        }
        end = frame_end;
        frames += 1;
    }
    Some(Run {
        file: Arc::clone(&segment.file),
        first_index: index,
        frames,
        start,
        end,
    })
}

/// Reads and checks the single frame of `run`, returning its payload.
fn read_frame(run: &Run) -> Result<Vec<u8>, LogError> {
    let path = &run.file.path;
    let payload_len = check_span(run)?;
    let mut head = [0u8; FRAME_HEADER_BYTES as usize];
    let mut payload = vec![0u8; payload_len];
    run.file
        .file
        .read_exact_at(&mut head, run.start)
        .map_err(|e| read_error(run, e))?;
    run.file
        .file
        .read_exact_at(&mut payload, run.start + FRAME_HEADER_BYTES)
        .map_err(|e| read_error(run, e))?;
    segment::check_parts(&head, &payload, run.first_index, path, run.start)?;
    Ok(payload)
}

/// Reads the bytes of `run` into `buf`.
fn read_run(run: &Run, buf: &mut Vec<u8>) -> Result<(), LogError> {
    check_span(run)?;
    let len = usize::try_from(run.end - run.start).map_err(|_| span_error(run))?;
    buf.clear();
    buf.resize(len, 0);
    run.file
        .file
        .read_exact_at(buf, run.start)
        .map_err(|e| read_error(run, e))
}

/// Checks that the byte range of a run is plausible before allocating for it; returns the
/// payload length if the run is a single frame.
fn check_span(run: &Run) -> Result<usize, LogError> {
    let bytes = run
        .end
        .checked_sub(run.start)
        .ok_or_else(|| span_error(run))?;
    let payload_max = (FRAME_PAYLOAD_BYTES_MAX as u64).max(READ_CHUNK_BYTES_MAX);
    if bytes < FRAME_HEADER_BYTES * run.frames || bytes > payload_max + FRAME_HEADER_BYTES {
        return Err(span_error(run));
    }
    usize::try_from(bytes - FRAME_HEADER_BYTES).map_err(|_| span_error(run))
}

/// The frame at `*position` of `buf` (the bytes of `run`), checked to hold `index`;
/// advances `position` past it.
fn next_frame<'a>(
    buf: &'a [u8],
    position: &mut usize,
    index: u64,
    run: &Run,
) -> Result<&'a [u8], LogError> {
    let offset = run.start + *position as u64;
    let rest = &buf[*position..];
    let frame_len = rest
        .first_chunk::<{ FRAME_HEADER_BYTES as usize }>()
        .map(|head| segment::decode_header(head).len)
        .and_then(|len| usize::try_from(len).ok())
        .and_then(|len| len.checked_add(FRAME_HEADER_BYTES as usize))
        .filter(|&len| len <= rest.len())
        .ok_or_else(|| {
            LogError::Corrupt(format!(
                "{} at offset {offset}: the frame of index {index} does not fit the range the index gives",
                run.file.path.display()
            ))
        })?;
    let payload = segment::check_frame(&rest[..frame_len], index, &run.file.path, offset)?;
    *position += frame_len;
    Ok(payload)
}

/// A read that came up short means the file is shorter than its index says.
fn read_error(run: &Run, e: io::Error) -> LogError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return LogError::Corrupt(format!(
            "{} at offset {}: the file ends before the frame of index {}",
            run.file.path.display(),
            run.start,
            run.first_index
        ));
    }
    LogError::io(&run.file.path, e)
}

/// The in-memory index gives an impossible byte range.
fn span_error(run: &Run) -> LogError {
    LogError::Corrupt(format!(
        "{} at offset {}: implausible frame range [{}, {}) for index {}",
        run.file.path.display(),
        run.start,
        run.start,
        run.end,
        run.first_index
    ))
}
