//! Snapshots on disk: where they live, which one is current, durable replacement, and the
//! packed stream that carries one to another node.
//!
//! A snapshot is a directory in `<data>/snapshots/`:
//! - `state`: the state and the services' sections, in the format of
//!   [`crate::store::replicated`] — no event bodies;
//! - `log/`: the log segment files holding every entry up to the snapshot's index that the
//!   log still had — the event bodies. Sealed segments are hard links to the live log's
//!   files (they never change), so building a snapshot copies only the state and the part
//!   of the active segment it covers, however large the event history.
//!
//! The record of which one is current and its Raft metadata is `current` (postcard,
//! replaced atomically by rename). Only the current snapshot is kept; older ones are
//! deleted once a newer one is current — except one whose services' state is still to be
//! imported (`services-pending`, see [`Snapshots::set_services_pending`]).
//!
//! To another node a snapshot travels as one stream ([`pack`] / [`unpack`]): the `state`
//! file as it is, then the log part:
//! ```text
//! magic "TANDEM-LOGPART\x01\x00"
//! file* : 0x01, name_len u16 LE, name, size u64 LE, bytes, blake3(bytes) (32 bytes)
//! end   : 0xFE, file count u32 LE
//! ```

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::types::SnapshotMeta;
use crate::store::Store;

/// The data of a snapshot as openraft carries it: a directory on disk, never the state in
/// memory.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    /// The snapshot directory.
    pub path: PathBuf,
}

impl SnapshotFile {
    /// The state file.
    pub fn state_path(&self) -> PathBuf {
        self.path.join(STATE)
    }

    /// The log segment files, in index order (their names sort by first index).
    pub fn log_files(&self) -> io::Result<Vec<PathBuf>> {
        let dir = self.path.join(LOG_DIR);
        let mut files = Vec::new();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let path = entry?.path();
                    if path.extension().is_some_and(|e| e == "seg") {
                        files.push(path);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        files.sort();
        Ok(files)
    }

    /// Total size on disk (state and log files), bytes.
    pub fn bytes(&self) -> io::Result<u64> {
        let mut total = fs::metadata(self.state_path())?.len();
        for file in self.log_files()? {
            total += fs::metadata(file)?.len();
        }
        Ok(total)
    }
}

/// The snapshot directory.
#[derive(Debug, Clone)]
pub struct Snapshots {
    dir: PathBuf,
}

const CURRENT: &str = "current";
const SERVICES_PENDING: &str = "services-pending";
const STORE_PENDING: &str = "store-pending";
/// The state file in a snapshot directory.
pub const STATE: &str = "state";
/// The log segments' directory in a snapshot directory.
pub const LOG_DIR: &str = "log";
/// A received packed stream, before it is unpacked.
const PACKED: &str = "packed";
const LOG_PART_MAGIC: &[u8; 16] = b"TANDEM-LOGPART\x01\x00";
const FILE_TAG: u8 = 0x01;
const END_TAG: u8 = 0xFE;
/// Longest segment file name accepted in a packed stream.
const NAME_BYTES_MAX: usize = 255;
/// Most log files in one packed stream.
const LOG_FILES_MAX: u32 = 1_000_000;

impl Snapshots {
    /// The snapshot directory under `data_dir`, created if missing.
    pub fn open(data_dir: &Path) -> io::Result<Snapshots> {
        let dir = data_dir.join("snapshots");
        fs::create_dir_all(&dir)?;
        Ok(Snapshots { dir })
    }

    /// A fresh, empty snapshot directory (with its `log/`), for one being built or received.
    pub fn new_snapshot(&self, label: &str) -> io::Result<SnapshotFile> {
        let path = self
            .dir
            .join(format!("{label}-{}.snap", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(path.join(LOG_DIR))?;
        Ok(SnapshotFile { path })
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

    /// Makes `file` (complete and fsync'd, inside this directory) the current snapshot
    /// and deletes the others.
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
                let _ = remove(&path);
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

    /// Records durably that the store is being replaced by the state in `file` (a snapshot
    /// in this directory, already current). Set before the store is cleared and cleared
    /// once the store and the log match the snapshot: a node that starts with it set was
    /// interrupted mid-install, holds part of the snapshot's state under the snapshot's
    /// applied index, and must import it again before anything reads the state.
    pub fn set_store_pending(&self, file: &SnapshotFile) -> io::Result<()> {
        self.replace(STORE_PENDING, file_name(file)?.as_bytes())
    }

    /// The snapshot whose import into the store a crash interrupted, if any.
    pub fn store_pending(&self) -> io::Result<Option<SnapshotFile>> {
        self.pending(STORE_PENDING)
    }

    /// Records that the store and the log match the installed snapshot.
    pub fn clear_store_pending(&self) -> io::Result<()> {
        self.clear(STORE_PENDING)
    }

    fn pending(&self, marker: &str) -> io::Result<Option<SnapshotFile>> {
        match fs::read_to_string(self.dir.join(marker)) {
            Ok(name) => Ok(Some(SnapshotFile {
                path: self.dir.join(name),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn clear(&self, marker: &str) -> io::Result<()> {
        match fs::remove_file(self.dir.join(marker)) {
            Ok(()) => File::open(&self.dir)?.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The snapshot whose services' state is still to be imported, if any.
    pub fn services_pending(&self) -> io::Result<Option<SnapshotFile>> {
        self.pending(SERVICES_PENDING)
    }

    /// Records that the services' state was imported (the snapshot it kept goes at the
    /// next [`Snapshots::set_current`] unless it is current).
    pub fn clear_services_pending(&self) -> io::Result<()> {
        self.clear(SERVICES_PENDING)
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

    /// Moves a received snapshot into the directory (if it is elsewhere) and returns it.
    pub fn adopt(&self, file: &SnapshotFile) -> io::Result<SnapshotFile> {
        if file.path.parent() == Some(self.dir.as_path()) {
            return Ok(file.clone());
        }
        let adopted = self.new_snapshot("received")?;
        remove(&adopted.path)?;
        fs::rename(&file.path, &adopted.path)?;
        Ok(adopted)
    }

    /// Where a packed stream being received is written, in a fresh snapshot directory.
    pub fn receiving(&self) -> io::Result<(SnapshotFile, PathBuf)> {
        let file = self.new_snapshot("receiving")?;
        let packed = file.path.join(PACKED);
        Ok((file, packed))
    }
}

fn remove(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
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

fn corrupt(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// Writes `snapshot` as one stream: its state file, then its log part.
pub fn pack(snapshot: &SnapshotFile, out: &mut impl Write) -> io::Result<u64> {
    let mut written = io::copy(&mut File::open(snapshot.state_path())?, out)?;
    out.write_all(LOG_PART_MAGIC)?;
    written += LOG_PART_MAGIC.len() as u64;
    let files = snapshot.log_files()?;
    for path in &files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::other("log file without a name"))?;
        let mut input = File::open(path)?;
        let size = input.metadata()?.len();
        out.write_all(&[FILE_TAG])?;
        out.write_all(&(name.len() as u16).to_le_bytes())?;
        out.write_all(name.as_bytes())?;
        out.write_all(&size.to_le_bytes())?;
        let mut hasher = blake3::Hasher::new();
        let mut left = size;
        let mut buf = vec![0_u8; 256 << 10];
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            input.read_exact(&mut buf[..want])?;
            hasher.update(&buf[..want]);
            out.write_all(&buf[..want])?;
            left -= want as u64;
        }
        out.write_all(hasher.finalize().as_bytes())?;
        written += 1 + 2 + name.len() as u64 + 8 + size + 32;
    }
    out.write_all(&[END_TAG])?;
    out.write_all(&(files.len() as u32).to_le_bytes())?;
    Ok(written + 5)
}

/// Unpacks the stream in `input` into `into` (a fresh snapshot directory): the state file
/// (checked as it is read: every trailer, see [`Store::verify_snapshot`]) and each log file
/// (its blake3 checked). Everything is fsync'd before it returns.
pub fn unpack(input: &mut impl Read, into: &SnapshotFile) -> io::Result<()> {
    let mut state = BufWriter::new(File::create(into.state_path())?);
    let mut tee = TeeReader {
        input: &mut *input,
        copy: &mut state,
    };
    Store::verify_snapshot(&mut tee).map_err(|e| corrupt(e.to_string()))?;
    state.flush()?;
    state.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let mut magic = [0_u8; 16];
    input.read_exact(&mut magic)?;
    if &magic != LOG_PART_MAGIC {
        return Err(corrupt("snapshot stream: no log part after the state"));
    }
    let log_dir = into.path.join(LOG_DIR);
    let mut count = 0_u32;
    loop {
        let mut tag = [0_u8; 1];
        input.read_exact(&mut tag)?;
        match tag[0] {
            FILE_TAG => {}
            END_TAG => {
                let mut said = [0_u8; 4];
                input.read_exact(&mut said)?;
                if u32::from_le_bytes(said) != count {
                    return Err(corrupt("snapshot log part: file count mismatch"));
                }
                File::open(&log_dir)?.sync_all()?;
                return Ok(());
            }
            other => return Err(corrupt(format!("snapshot log part: tag {other:#x}"))),
        }
        count += 1;
        if count > LOG_FILES_MAX {
            return Err(corrupt("snapshot log part: too many files"));
        }
        let mut len = [0_u8; 2];
        input.read_exact(&mut len)?;
        let len = u16::from_le_bytes(len) as usize;
        if len == 0 || len > NAME_BYTES_MAX {
            return Err(corrupt("snapshot log part: bad file name length"));
        }
        let mut name = vec![0_u8; len];
        input.read_exact(&mut name)?;
        let name = String::from_utf8(name).map_err(|_| corrupt("log file name not UTF-8"))?;
        let plain = name
            .strip_suffix(".seg")
            .is_some_and(|stem| !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()));
        if !plain {
            return Err(corrupt(format!("snapshot log part: file name {name:?}")));
        }
        let mut size = [0_u8; 8];
        input.read_exact(&mut size)?;
        let mut left = u64::from_le_bytes(size);
        let path = log_dir.join(&name);
        let mut out = BufWriter::new(File::create(&path)?);
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0_u8; 256 << 10];
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            input.read_exact(&mut buf[..want])?;
            hasher.update(&buf[..want]);
            out.write_all(&buf[..want])?;
            left -= want as u64;
        }
        let mut digest = [0_u8; 32];
        input.read_exact(&mut digest)?;
        if digest != *hasher.finalize().as_bytes() {
            return Err(corrupt(format!(
                "snapshot log file {name}: checksum mismatch"
            )));
        }
        out.flush()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
}

/// Unpacks the received `packed` file of `snapshot` into it and deletes the packed file.
pub fn unpack_received(snapshot: &SnapshotFile, packed: &Path) -> io::Result<()> {
    let mut input = BufReader::with_capacity(256 << 10, File::open(packed)?);
    unpack(&mut input, snapshot)?;
    fs::remove_file(packed)
}

/// Passes reads through, copying every byte read to `copy`.
struct TeeReader<'a, R: Read, W: Write> {
    input: &'a mut R,
    copy: &'a mut W,
}

impl<R: Read, W: Write> Read for TeeReader<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}
