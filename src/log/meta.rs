//! Small metadata files next to the segments (`meta-<name>`): the caller's bytes followed
//! by their crc32 (LE), for things that must survive a restart with the log, such as a
//! Raft vote.
//!
//! A write goes to `meta-<name>.tmp` and is renamed over the old file; when durable, the
//! temporary file is fsync'd before the rename and the directory after it. Since the rename
//! is atomic, a reader sees the old or the new content, never a mix: a crc mismatch is
//! disk damage, reported as [`LogError::Corrupt`], not a torn write to shrug off. Leftover
//! temporary files are removed at open.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::segment;
use super::{Log, LogError};

/// Prefix of metadata file names.
const META_PREFIX: &str = "meta-";

/// Largest metadata value, bytes.
pub const META_BYTES_MAX: usize = 1 << 20;

/// Longest metadata name, bytes.
pub const META_NAME_BYTES_MAX: usize = 64;

/// Size of the trailing crc, bytes.
const CRC_BYTES: usize = 4;

impl Log {
    /// Replaces the metadata value `name` (1 to [`META_NAME_BYTES_MAX`] ASCII letters,
    /// digits, `-` or `_`) by `bytes` (at most [`META_BYTES_MAX`]), atomically; durably
    /// before returning if `durable`. A failed fsync makes the log unusable.
    pub fn write_meta(&self, name: &str, bytes: &[u8], durable: bool) -> Result<(), LogError> {
        let path = self.meta_path(name)?;
        if bytes.len() > META_BYTES_MAX {
            return Err(LogError::Invalid(format!(
                "metadata {name:?} has {} bytes, the maximum is {META_BYTES_MAX}",
                bytes.len()
            )));
        }
        self.inner.check_usable()?;
        let _guard = self
            .inner
            .meta_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tmp = segment::tmp_path(&path);
        let mut content = Vec::with_capacity(bytes.len() + CRC_BYTES);
        content.extend_from_slice(bytes);
        content.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
        let file = std::fs::File::create(&tmp).map_err(|e| LogError::io(&tmp, e))?;
        file.write_all_at(&content, 0)
            .map_err(|e| LogError::io(&tmp, e))?;
        if durable {
            file.sync_data()
                .map_err(|e| self.inner.fail(LogError::io(&tmp, e)))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| LogError::io(&path, e))?;
        if durable {
            segment::sync_dir(self.dir()).map_err(|e| self.inner.fail(e))?;
        }
        Ok(())
    }

    /// The metadata value `name`, `None` if it was never written.
    pub fn read_meta(&self, name: &str) -> Result<Option<Vec<u8>>, LogError> {
        read_meta_in(self.dir(), name)
    }

    /// The path of metadata `name`, after checking the name.
    fn meta_path(&self, name: &str) -> Result<PathBuf, LogError> {
        meta_path_in(self.dir(), name)
    }
}

/// [`Log::read_meta`] on the log directory `dir` without opening the log: for values
/// needed to open it.
pub fn read_meta_in(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, LogError> {
    let path = meta_path_in(dir, name)?;
    let mut content = match std::fs::read(&path) {
        Ok(content) => content,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io(&path, e)),
    };
    let corrupt = |what: &str| LogError::Corrupt(format!("{}: {what}", path.display()));
    if content.len() < CRC_BYTES || content.len() > META_BYTES_MAX + CRC_BYTES {
        return Err(corrupt(&format!(
            "{} bytes cannot be a metadata file",
            content.len()
        )));
    }
    let body_len = content.len() - CRC_BYTES;
    let mut crc = [0u8; CRC_BYTES];
    crc.copy_from_slice(&content[body_len..]);
    content.truncate(body_len);
    if crc32fast::hash(&content) != u32::from_le_bytes(crc) {
        return Err(corrupt(
            "crc mismatch: the metadata file is damaged (its writes are atomic renames)",
        ));
    }
    Ok(Some(content))
}

/// The path of metadata `name` in `dir`, after checking the name.
fn meta_path_in(dir: &Path, name: &str) -> Result<PathBuf, LogError> {
    let valid = !name.is_empty()
        && name.len() <= META_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(LogError::Invalid(format!(
            "metadata name {name:?}: use 1 to {META_NAME_BYTES_MAX} ASCII letters, digits, '-' or '_'"
        )));
    }
    Ok(dir.join(format!("{META_PREFIX}{name}")))
}
