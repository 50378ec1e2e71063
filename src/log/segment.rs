//! One segment: its file name, header and frame format, the frame scanner, and the
//! in-memory index of its frames.
//!
//! A segment file is a 16-byte header — [`MAGIC`] then [`FORMAT_VERSION`] as `u32` LE —
//! followed by frames:
//!
//! ```text
//! len: u32 LE | crc: u32 LE | index: u64 LE | payload: len bytes
//! ```
//!
//! `crc` is crc32 (IEEE) over `index ++ payload`, i.e. over the frame from byte 8 on, so it
//! is computed in one pass over contiguous bytes when writing and reading. The length is
//! not covered by the crc, but a wrong length makes the crc fail (or runs past the file).
//! A payload is at most [`FRAME_PAYLOAD_BYTES_MAX`]; no record has the index `u64::MAX`
//! ([`INDEX_RESERVED`]), so the index after any record exists.
//!
//! Also here: the file operations on segment files that must keep the module's invariants
//! (creating one with its header, copying a prefix, replacing a hard-linked file by a
//! private copy before it may change). Reading a whole file is in `scan.rs`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{LogError, SegmentInfo};

/// The first 12 bytes of every segment file.
pub(super) const MAGIC: [u8; 12] = *b"TANDEMLOG\0\0\0";

/// The segment format this build reads and writes.
pub(super) const FORMAT_VERSION: u32 = 1;

/// Size of the segment header, bytes.
pub(super) const SEGMENT_HEADER_BYTES: u64 = 16;

/// Size of a frame header (`len`, `crc`, `index`), bytes.
pub(super) const FRAME_HEADER_BYTES: u64 = 16;

/// Largest payload of one record, bytes. Larger appends are refused.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 64 << 20;

/// An index no record may have, so that `index + 1` never overflows.
pub(super) const INDEX_RESERVED: u64 = u64::MAX;

/// Chunk size when copying a file prefix, bytes.
const COPY_CHUNK_BYTES: usize = 1 << 20;

/// Suffix of segment files.
const SEGMENT_SUFFIX: &str = ".seg";

/// Suffix of index sidecars.
const INDEX_SUFFIX: &str = ".idx";

/// Suffix of temporary files (removed at open).
pub(super) const TMP_SUFFIX: &str = ".tmp";

/// Digits of the index in file names.
const NAME_DIGITS: usize = 20;

/// An open segment file with its path (for errors). Shared by readers through an `Arc`.
#[derive(Debug)]
pub(super) struct SegmentFile {
    /// Where the file is.
    pub(super) path: PathBuf,
    /// The file, opened for reading and writing (never in append mode: writes are
    /// positioned).
    pub(super) file: File,
}

/// One segment as the log knows it: its file and the offset of each frame.
#[derive(Debug)]
pub(super) struct Segment {
    /// Index of its first frame (also in its file name).
    pub(super) first_index: u64,
    /// Its file.
    pub(super) file: Arc<SegmentFile>,
    /// Byte offset of each frame; frame `i` holds index `first_index + i`. Only offsets of
    /// completely written frames are here.
    pub(super) offsets: Vec<u32>,
    /// End of the last frame (the header's end if none): the valid length of the file.
    pub(super) bytes: u64,
    /// Whether it is rolled (immutable, with a `.idx`) rather than active.
    pub(super) rolled: bool,
}

impl Segment {
    /// A segment with no frames yet.
    pub(super) fn empty(first_index: u64, file: SegmentFile) -> Segment {
        Segment {
            first_index,
            file: Arc::new(file),
            offsets: Vec::new(),
            bytes: SEGMENT_HEADER_BYTES,
            rolled: false,
        }
    }

    /// Index of its last frame, if it has any.
    pub(super) fn last_index(&self) -> Option<u64> {
        let frames = u64::try_from(self.offsets.len()).ok()?;
        frames.checked_sub(1).map(|n| self.first_index + n)
    }

    /// Byte range `[start, end)` of the frame holding `index`, if this segment has it.
    pub(super) fn frame_span(&self, index: u64) -> Option<(u64, u64)> {
        let position = usize::try_from(index.checked_sub(self.first_index)?).ok()?;
        let start = u64::from(*self.offsets.get(position)?);
        let end = self
            .offsets
            .get(position + 1)
            .map_or(self.bytes, |&next| u64::from(next));
        Some((start, end))
    }

    /// Its public description.
    pub(super) fn info(&self, active: bool) -> SegmentInfo {
        SegmentInfo {
            first_index: self.first_index,
            last_index: self.last_index(),
            path: self.file.path.clone(),
            bytes: self.bytes,
            active,
        }
    }
}

/// What a file in the log directory is, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    /// `{first_index:020}.seg`.
    Segment(u64),
    /// `{first_index:020}.idx`.
    Index(u64),
    /// `*.tmp`: an unfinished write.
    Temporary,
    /// Anything else (metadata, the lock file).
    Other,
}

/// Classifies a directory entry by its name.
pub(super) fn file_kind(name: &str) -> FileKind {
    if name.ends_with(TMP_SUFFIX) {
        return FileKind::Temporary;
    }
    let numbered = |suffix: &str| {
        let stem = name.strip_suffix(suffix)?;
        if stem.len() != NAME_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        stem.parse::<u64>().ok()
    };
    if let Some(first) = numbered(SEGMENT_SUFFIX) {
        FileKind::Segment(first)
    } else if let Some(first) = numbered(INDEX_SUFFIX) {
        FileKind::Index(first)
    } else {
        FileKind::Other
    }
}

/// Path of the segment file starting at `first_index`.
pub(super) fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}{SEGMENT_SUFFIX}"))
}

/// Path of the index sidecar of the segment starting at `first_index`.
pub(super) fn index_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}{INDEX_SUFFIX}"))
}

/// `path` with [`TMP_SUFFIX`] appended.
pub(super) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(TMP_SUFFIX);
    PathBuf::from(name)
}

/// The segment header.
pub(super) fn header() -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    header[..MAGIC.len()].copy_from_slice(&MAGIC);
    header[MAGIC.len()..].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// Reads and checks the header of `file`.
pub(super) fn check_header(file: &File, path: &Path) -> Result<(), LogError> {
    let mut bytes = [0u8; SEGMENT_HEADER_BYTES as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => LogError::Corrupt(format!(
                "{}: shorter than the 16-byte segment header",
                path.display()
            )),
            _ => LogError::io(path, e),
        })?;
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(LogError::Corrupt(format!(
            "{}: not a Tandem log segment (bad magic)",
            path.display()
        )));
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&bytes[MAGIC.len()..]);
    let version = u32::from_le_bytes(version);
    if version != FORMAT_VERSION {
        return Err(LogError::Corrupt(format!(
            "{}: segment format version {version}, this build reads version {FORMAT_VERSION}",
            path.display()
        )));
    }
    Ok(())
}

/// Opens an existing segment file for reading and writing.
pub(super) fn open_segment(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| LogError::io(path, e))
}

/// Creates (or empties) the segment file starting at `first_index` and writes its header,
/// fsync'd. The caller fsyncs the directory.
pub(super) fn create_segment(dir: &Path, first_index: u64) -> Result<SegmentFile, LogError> {
    let path = segment_path(dir, first_index);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| LogError::io(&path, e))?;
    file.write_all_at(&header(), 0)
        .map_err(|e| LogError::io(&path, e))?;
    file.sync_data().map_err(|e| LogError::io(&path, e))?;
    Ok(SegmentFile { path, file })
}

/// Appends one frame to `buf`. The caller has checked that `payload` fits a `u32` (it is
/// at most [`FRAME_PAYLOAD_BYTES_MAX`]).
pub(super) fn encode_frame(buf: &mut Vec<u8>, index: u64, payload: &[u8], len: u32) {
    let start = buf.len();
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The decoded fields of a frame header.
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameHeader {
    /// Payload length, bytes.
    pub(super) len: u32,
    /// crc32 over `index ++ payload`.
    pub(super) crc: u32,
    /// The record's index.
    pub(super) index: u64,
}

/// Decodes a frame header.
pub(super) fn decode_header(bytes: &[u8; FRAME_HEADER_BYTES as usize]) -> FrameHeader {
    let [
        l0,
        l1,
        l2,
        l3,
        c0,
        c1,
        c2,
        c3,
        i0,
        i1,
        i2,
        i3,
        i4,
        i5,
        i6,
        i7,
    ] = *bytes;
    FrameHeader {
        len: u32::from_le_bytes([l0, l1, l2, l3]),
        crc: u32::from_le_bytes([c0, c1, c2, c3]),
        index: u64::from_le_bytes([i0, i1, i2, i3, i4, i5, i6, i7]),
    }
}

/// Checks one whole frame (`frame` is exactly its bytes, read from `offset` of `path`) and
/// returns its payload.
pub(super) fn check_frame<'a>(
    frame: &'a [u8],
    expected_index: u64,
    path: &Path,
    offset: u64,
) -> Result<&'a [u8], LogError> {
    let Some((head, payload)) = frame.split_first_chunk::<{ FRAME_HEADER_BYTES as usize }>() else {
        return Err(LogError::Corrupt(format!(
            "{} at offset {offset}: frame of {} bytes is shorter than its header",
            path.display(),
            frame.len()
        )));
    };
    check_parts(head, payload, expected_index, path, offset)?;
    Ok(payload)
}

/// Checks a frame given as its header and payload (read from `offset` of `path`): the
/// length, the index and the crc.
pub(super) fn check_parts(
    head: &[u8; FRAME_HEADER_BYTES as usize],
    payload: &[u8],
    expected_index: u64,
    path: &Path,
    offset: u64,
) -> Result<(), LogError> {
    let corrupt =
        |what: String| LogError::Corrupt(format!("{} at offset {offset}: {what}", path.display()));
    let header = decode_header(head);
    if usize::try_from(header.len).ok() != Some(payload.len()) {
        return Err(corrupt(format!(
            "frame length {} where {} was expected",
            header.len,
            payload.len()
        )));
    }
    if header.index != expected_index {
        return Err(corrupt(format!(
            "frame has index {} where {expected_index} was expected",
            header.index
        )));
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&head[8..]);
    hasher.update(payload);
    if hasher.finalize() != header.crc {
        return Err(corrupt(format!(
            "crc mismatch in the frame of index {expected_index}"
        )));
    }
    Ok(())
}

/// Writes the first `len` bytes of `source` to a new file at `dest` and fsyncs it.
pub(super) fn copy_prefix(source: &SegmentFile, len: u64, dest: &Path) -> Result<File, LogError> {
    let out = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dest)
        .map_err(|e| LogError::io(dest, e))?;
    let mut chunk = vec![0u8; COPY_CHUNK_BYTES];
    let mut position = 0u64;
    while position < len {
        let take = usize::try_from(len - position)
            .map_or(COPY_CHUNK_BYTES, |left| left.min(COPY_CHUNK_BYTES));
        let chunk = &mut chunk[..take];
        source
            .file
            .read_exact_at(chunk, position)
            .map_err(|e| LogError::io(&source.path, e))?;
        out.write_all_at(chunk, position)
            .map_err(|e| LogError::io(dest, e))?;
        position += take as u64;
    }
    out.sync_all().map_err(|e| LogError::io(dest, e))?;
    Ok(out)
}

/// Replaces the file at `source.path` by a private copy of its first `len` bytes (through
/// a temporary file and a rename, then a directory fsync), so other hard links to the old
/// file keep their content. Returns the new file.
pub(super) fn rewrite_privately(
    dir: &Path,
    source: &SegmentFile,
    len: u64,
) -> Result<SegmentFile, LogError> {
    let tmp = tmp_path(&source.path);
    let file = copy_prefix(source, len, &tmp)?;
    std::fs::rename(&tmp, &source.path).map_err(|e| LogError::io(&source.path, e))?;
    sync_dir(dir)?;
    Ok(SegmentFile {
        path: source.path.clone(),
        file,
    })
}

/// Whether the file has other hard links (then it must not be changed in place).
pub(super) fn is_shared(file: &SegmentFile) -> Result<bool, LogError> {
    use std::os::unix::fs::MetadataExt;
    Ok(file
        .file
        .metadata()
        .map_err(|e| LogError::io(&file.path, e))?
        .nlink()
        > 1)
}

/// Fsyncs a directory, making the creations, renames and removals in it durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(dir, e))
}

/// Removes a file; a missing file is not an error.
pub(super) fn remove_if_present(path: &Path) -> Result<(), LogError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LogError::io(path, e)),
        _ => Ok(()),
    }
}
