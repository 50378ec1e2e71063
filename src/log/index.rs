//! The `.idx` sidecar of a rolled segment: the byte offset of each of its frames, so that
//! opening the log does not scan every rolled segment.
//!
//! Format: the offsets as `u32` LE, one per frame in order, then a crc32 (LE) of those
//! bytes. The record count is implied by the file length; the first index by the name.
//!
//! The sidecar is an optimisation, never the truth: it is written (fsync'd, renamed into
//! place) when a segment is rolled, deleted when a truncation makes that segment active
//! again, and at open it is used only if its crc matches and it agrees with the segment
//! ([`check_against_segment`]: sane offsets, and the first and last frame headers it points
//! to carry the expected indexes and end exactly at the end of the file). Otherwise the
//! segment is scanned and the sidecar rewritten.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::LogError;
use super::segment::{self, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};

/// Size of one offset in the sidecar, bytes.
const OFFSET_BYTES: usize = 4;

/// Size of the trailing crc, bytes.
const CRC_BYTES: usize = 4;

/// What was found at a sidecar's path.
#[derive(Debug)]
pub(super) enum Sidecar {
    /// No file.
    Missing,
    /// A file that does not decode (wrong length, crc mismatch): why.
    Bad(String),
    /// The decoded offsets.
    Offsets(Vec<u32>),
}

/// Writes the sidecar of the segment starting at `first_index` in `dir`: to a temporary
/// file, fsync'd, renamed into place. The caller fsyncs the directory.
pub(super) fn write(dir: &Path, first_index: u64, offsets: &[u32]) -> Result<(), LogError> {
    let path = segment::index_path(dir, first_index);
    let tmp = segment::tmp_path(&path);
    let mut bytes = Vec::with_capacity(offsets.len() * OFFSET_BYTES + CRC_BYTES);
    for offset in offsets {
        bytes.extend_from_slice(&offset.to_le_bytes());
    }
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let file = File::create(&tmp).map_err(|e| LogError::io(&tmp, e))?;
    file.write_all_at(&bytes, 0)
        .map_err(|e| LogError::io(&tmp, e))?;
    file.sync_data().map_err(|e| LogError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| LogError::io(&path, e))
}

/// Reads and decodes the sidecar at `path`.
pub(super) fn read(path: &Path) -> Result<Sidecar, LogError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Sidecar::Missing),
        Err(e) => return Err(LogError::io(path, e)),
    };
    if bytes.len() < CRC_BYTES || !(bytes.len() - CRC_BYTES).is_multiple_of(OFFSET_BYTES) {
        return Ok(Sidecar::Bad(format!(
            "{} bytes is not a whole number of offsets plus a crc",
            bytes.len()
        )));
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != stored {
        return Ok(Sidecar::Bad("crc mismatch".to_owned()));
    }
    let offsets = body
        .chunks_exact(OFFSET_BYTES)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Sidecar::Offsets(offsets))
}

/// Checks that `offsets` fit the segment file `file` (of length `file_len`, starting at
/// `first_index`): at least one frame, the first right after the header, increasing by at
/// least a frame header each, and the first and last frame headers carrying the expected
/// indexes with the last frame ending exactly at the end of the file. `Err` says why not
/// (a stale or damaged sidecar, to be rebuilt); a failed read counts as a mismatch too,
/// since the scan that follows reports it properly.
pub(super) fn check_against_segment(
    file: &File,
    file_len: u64,
    first_index: u64,
    offsets: &[u32],
) -> Result<(), String> {
    let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else {
        return Err("no offsets".to_owned());
    };
    if u64::from(first) != SEGMENT_HEADER_BYTES {
        return Err(format!(
            "first offset {first}, expected {SEGMENT_HEADER_BYTES}"
        ));
    }
    if offsets
        .windows(2)
        .any(|w| u64::from(w[1]) < u64::from(w[0]) + FRAME_HEADER_BYTES)
    {
        return Err("offsets are not increasing by at least a frame header".to_owned());
    }
    let last_index = first_index + (offsets.len() as u64 - 1);
    check_frame_header(file, u64::from(first), first_index, None)?;
    check_frame_header(file, u64::from(last), last_index, Some(file_len))
}

/// Reads the frame header at `offset` and checks its index and, if given, that the frame
/// ends at `end`.
fn check_frame_header(
    file: &File,
    offset: u64,
    index: u64,
    end: Option<u64>,
) -> Result<(), String> {
    let mut bytes = [0u8; FRAME_HEADER_BYTES as usize];
    file.read_exact_at(&mut bytes, offset)
        .map_err(|e| format!("reading the frame header at offset {offset}: {e}"))?;
    let header = segment::decode_header(&bytes);
    if header.index != index {
        return Err(format!(
            "frame at offset {offset} has index {}, expected {index}",
            header.index
        ));
    }
    let frame_end = offset + FRAME_HEADER_BYTES + u64::from(header.len);
    match end {
        Some(end) if frame_end != end => Err(format!(
            "last frame ends at {frame_end} but the file is {end} bytes"
        )),
        _ => Ok(()),
    }
}
