//! The sequential frame scanner: reads a segment file from its header's end and stops at
//! the end of the file or at the first defect — a frame too short, a length over
//! [`FRAME_PAYLOAD_BYTES_MAX`], a crc mismatch, an index out of sequence — reporting where.
//! The callers decide what a defect means: a torn tail to cut in the last segment at open,
//! corruption anywhere else (rolled segments, files to install, [`validate_segment_file`]).
//!
//! It reads through a 1 MiB buffer with `pread` and hashes payloads straight from that
//! buffer, so scanning costs one pass over the bytes and no allocation per frame.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::LogError;
use super::segment::{
    self, FRAME_HEADER_BYTES, FRAME_PAYLOAD_BYTES_MAX, FrameHeader, INDEX_RESERVED,
    SEGMENT_HEADER_BYTES,
};

/// Read buffer of the scanner, bytes.
const SCAN_BUFFER_BYTES: usize = 1 << 20;

/// The result of scanning a segment file.
#[derive(Debug)]
pub(super) struct Scan {
    /// Offset of each good frame.
    pub(super) offsets: Vec<u32>,
    /// Index of the first good frame, if any.
    pub(super) first_index: Option<u64>,
    /// End of the last good frame.
    pub(super) end: u64,
    /// Why the scan stopped before the end of the file (`end` is where), if it did.
    pub(super) defect: Option<String>,
}

impl Scan {
    /// Index of the last good frame, if any.
    pub(super) fn last_index(&self) -> Option<u64> {
        let frames = u64::try_from(self.offsets.len()).ok()?;
        Some(self.first_index? + frames.checked_sub(1)?)
    }

    /// `Err(Corrupt)` naming `path` if the scan found a defect.
    pub(super) fn require_clean(self, path: &Path) -> Result<Scan, LogError> {
        match &self.defect {
            Some(defect) => Err(LogError::Corrupt(format!(
                "{} at offset {}: {defect}",
                path.display(),
                self.end
            ))),
            None => Ok(self),
        }
    }
}

/// Reads `file` (whose header has been checked) frame by frame from the header's end and
/// stops at the end of the file or at the first defect. The first frame must have index
/// `expected_first` if given; each next one the index after. I/O errors are errors, bad
/// bytes are a [`Scan::defect`].
pub(super) fn scan_frames(
    file: &File,
    path: &Path,
    expected_first: Option<u64>,
) -> Result<Scan, LogError> {
    let file_len = file.metadata().map_err(|e| LogError::io(path, e))?.len();
    let mut reader = BufReader::with_capacity(
        SCAN_BUFFER_BYTES,
        PositionedReader {
            file,
            position: SEGMENT_HEADER_BYTES,
        },
    );
    let mut scan = Scan {
        offsets: Vec::new(),
        first_index: None,
        end: SEGMENT_HEADER_BYTES,
        defect: None,
    };
    let mut expected = expected_first;
    while scan.end < file_len {
        let remaining = file_len - scan.end;
        if remaining < FRAME_HEADER_BYTES {
            scan.defect = Some(format!(
                "{remaining} trailing bytes, too short for a frame header"
            ));
            break;
        }
        let mut head = [0u8; FRAME_HEADER_BYTES as usize];
        reader
            .read_exact(&mut head)
            .map_err(|e| LogError::io(path, e))?;
        let header = segment::decode_header(&head);
        let frame_bytes = FRAME_HEADER_BYTES + u64::from(header.len);
        if let Some(defect) = frame_defect(&header, expected, frame_bytes, remaining) {
            scan.defect = Some(defect);
            break;
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&head[8..]);
        if !hash_exact(&mut reader, &mut hasher, u64::from(header.len))
            .map_err(|e| LogError::io(path, e))?
        {
            scan.defect = Some("the file ended while reading a frame".to_owned());
            break;
        }
        if hasher.finalize() != header.crc {
            scan.defect = Some(format!(
                "crc mismatch in the frame of index {}",
                header.index
            ));
            break;
        }
        let offset = u32::try_from(scan.end).map_err(|_| {
            LogError::Corrupt(format!(
                "{}: segment larger than 4 GiB at offset {}",
                path.display(),
                scan.end
            ))
        })?;
        scan.offsets.push(offset);
        scan.first_index.get_or_insert(header.index);
        expected = Some(header.index + 1);
        scan.end += frame_bytes;
    }
    Ok(scan)
}

/// What is wrong with a frame header before its payload is read, if anything.
fn frame_defect(
    header: &FrameHeader,
    expected: Option<u64>,
    frame_bytes: u64,
    remaining: u64,
) -> Option<String> {
    if usize::try_from(header.len).map_or(true, |len| len > FRAME_PAYLOAD_BYTES_MAX) {
        return Some(format!(
            "frame length {} exceeds the {FRAME_PAYLOAD_BYTES_MAX}-byte maximum",
            header.len
        ));
    }
    if frame_bytes > remaining {
        return Some(format!(
            "frame of {frame_bytes} bytes runs past the end of the file ({remaining} bytes left)"
        ));
    }
    if header.index == INDEX_RESERVED {
        return Some(format!("frame has the reserved index {INDEX_RESERVED}"));
    }
    match expected {
        Some(expected) if header.index != expected => Some(format!(
            "frame has index {} where {expected} was expected",
            header.index
        )),
        _ => None,
    }
}

/// Feeds the next `len` bytes of `reader` to `hasher`; `false` if the input ends first.
fn hash_exact(
    reader: &mut impl BufRead,
    hasher: &mut crc32fast::Hasher,
    len: u64,
) -> io::Result<bool> {
    let mut left = len;
    while left > 0 {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(false);
        }
        let take = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        hasher.update(&chunk[..take]);
        reader.consume(take);
        left -= take as u64;
    }
    Ok(true)
}

/// Reads a file sequentially with `pread`, leaving the shared file cursor alone.
struct PositionedReader<'a> {
    /// The file.
    file: &'a File,
    /// Where the next read starts.
    position: u64,
}

impl Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.file.read_at(buf, self.position)?;
        self.position += read as u64;
        Ok(read)
    }
}

/// Checks a whole segment file: its header, every frame's crc, consecutive indexes, no
/// trailing bytes. Returns its first and last index (`None` if it has no frames) and its
/// number of frames. For verifying segment files received in a snapshot.
pub fn validate_segment_file(path: &Path) -> Result<(Option<(u64, u64)>, u64), LogError> {
    let file = File::open(path).map_err(|e| LogError::io(path, e))?;
    segment::check_header(&file, path)?;
    let scan = scan_frames(&file, path, None)?.require_clean(path)?;
    let range = scan.first_index.zip(scan.last_index());
    Ok((range, scan.offsets.len() as u64))
}
