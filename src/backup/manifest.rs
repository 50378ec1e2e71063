//! What a repository says about itself and its backups, authenticated: the repository
//! [`RepoConfig`] and one [`Manifest`] per backup.
//!
//! Both are JSON behind one header line carrying a MAC (keyed blake3 under the repo key,
//! over the object's name and the JSON):
//! ```text
//! tandem-backup-object 1 <mac, 64 hex>\n
//! { …json… }
//! ```
//! Anyone with write access to the storage but not the repo key can delete objects, but
//! cannot change or forge a manifest or the config (the list of recipients chunks are
//! encrypted to), nor move a manifest to another name, without `verify` and `restore`
//! saying so. A manifest lists every chunk of every file it needs, in order: restoring it
//! needs no other backup.

use serde::{Deserialize, Serialize};

use super::BackupError;
use super::keys::RepoKey;

/// The repository and manifest format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The config object's name.
pub const CONFIG: &str = "config";
/// Where manifests live.
pub const MANIFESTS: &str = "manifests";
/// Where chunks live.
pub const CHUNKS: &str = "chunks";
const HEADER: &str = "tandem-backup-object 1 ";

/// The repository config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Repository format.
    pub format: u32,
    /// When it was created, ms since the epoch.
    pub created_ms: i64,
    /// age public keys every chunk is encrypted to.
    pub recipients: Vec<String>,
}

/// One chunk of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Its name (keyed blake3 of the plaintext, hex).
    pub id: String,
    /// Plaintext bytes.
    pub len: u64,
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path inside the checkpoint: `state` or `log/<first index>.seg`.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Keyed blake3 of the whole file, hex.
    pub hash: String,
    /// Its chunks, in order.
    pub chunks: Vec<ChunkRef>,
}

/// One service's state in the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// Service name.
    pub name: String,
    /// Feed cursor its state reflects.
    pub cursor: u64,
    /// Its state hash (as `GET /v1/admin/state-hash` reports it).
    pub hash: String,
}

/// What a backup took and uploaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Bytes of the checkpoint (every file).
    pub bytes_scanned: u64,
    /// Chunks referenced.
    pub chunks: u64,
    /// Chunks that were new in the repository.
    pub chunks_uploaded: u64,
    /// Plaintext bytes of the new chunks.
    pub bytes_new: u64,
    /// Bytes written to the repository (compressed, encrypted) for the new chunks.
    pub bytes_uploaded: u64,
}

/// One backup: a consistent checkpoint at a committed log position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format.
    pub format: u32,
    /// The backup's id (sorts by time).
    pub id: String,
    /// The cluster it was taken from (`None` for clusters older than cluster ids).
    pub cluster_id: Option<String>,
    /// The node that took it.
    pub node_id: u64,
    /// When the checkpoint was taken and when the upload ended, ms since the epoch.
    pub started_ms: i64,
    pub finished_ms: i64,
    /// The last log entry the state reflects: index and term.
    pub log_index: u64,
    pub log_term: u64,
    /// The state hash at that position.
    pub state_hash: String,
    /// The services' combined hash, and each service's.
    pub services_hash: String,
    pub services: Vec<ServiceEntry>,
    /// The settings that change how the log is applied (see `Config::apply_record`).
    pub apply: serde_json::Value,
    /// Every file and its chunks.
    pub files: Vec<FileEntry>,
    /// What it cost.
    pub totals: Totals,
    /// The data format of the state and log it holds (`crate::node::format::DATA_FORMAT` of
    /// the build that took it); `None` in backups taken before it was recorded (data format
    /// 3 or 4, which every build that records it reads).
    #[serde(default)]
    pub data_format: Option<u32>,
}

impl Manifest {
    /// The object name of manifest `id`.
    pub fn object_name(id: &str) -> String {
        format!("{MANIFESTS}/{id}")
    }

    /// Every chunk it references.
    pub fn chunk_ids(&self) -> impl Iterator<Item = &str> {
        self.files
            .iter()
            .flat_map(|f| f.chunks.iter().map(|c| c.id.as_str()))
    }
}

/// The object name of chunk `id`.
pub fn chunk_object(id: &str) -> String {
    format!("{CHUNKS}/{}/{id}", id.get(..2).unwrap_or("00"))
}

/// Serialises `value` as object `name`, authenticated under `key`.
pub fn seal<T: Serialize>(key: &RepoKey, name: &str, value: &T) -> Result<Vec<u8>, BackupError> {
    let json = serde_json::to_vec_pretty(value)
        .map_err(|e| BackupError::Invalid(format!("encoding {name}: {e}")))?;
    let mut out = format!("{HEADER}{}\n", key.mac(name, &json)).into_bytes();
    out.extend_from_slice(&json);
    Ok(out)
}

/// Checks and decodes object `name`.
pub fn open<T: serde::de::DeserializeOwned>(
    key: &RepoKey,
    name: &str,
    bytes: &[u8],
) -> Result<T, BackupError> {
    let corrupt = |check: &str, detail: String| BackupError::Corrupt {
        object: name.to_owned(),
        check: check.to_owned(),
        detail,
    };
    let newline = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("header", "no header line".into()))?;
    let header = std::str::from_utf8(&bytes[..newline])
        .map_err(|_| corrupt("header", "not UTF-8".into()))?;
    let mac = header.strip_prefix(HEADER).ok_or_else(|| {
        corrupt(
            "header",
            format!("{header:?} is not a tandem backup object"),
        )
    })?;
    let json = &bytes[newline + 1..];
    if !key.check_mac(name, json, mac) {
        return Err(corrupt(
            "MAC (keyed blake3 under the repo key)",
            "the object was changed, truncated, moved from another name, or the repo key is \
             not this repository's"
                .into(),
        ));
    }
    serde_json::from_slice(json).map_err(|e| corrupt("JSON", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_objects_open_only_unchanged_and_under_their_name() {
        let key = RepoKey::from_bytes([7; 32]);
        let config = RepoConfig {
            format: FORMAT_VERSION,
            created_ms: 1,
            recipients: vec!["age1x".into()],
        };
        let sealed = seal(&key, CONFIG, &config).unwrap();
        assert_eq!(open::<RepoConfig>(&key, CONFIG, &sealed).unwrap(), config);
        let error = open::<RepoConfig>(&key, "manifests/x", &sealed).unwrap_err();
        assert!(error.to_string().contains("MAC"), "{error}");
        for at in [0, 30, sealed.len() - 2] {
            let mut flipped = sealed.clone();
            flipped[at] ^= 0x20;
            let error = open::<RepoConfig>(&key, CONFIG, &flipped).unwrap_err();
            assert!(error.to_string().contains("config"), "{error}");
        }
        let truncated = &sealed[..sealed.len() - 3];
        assert!(open::<RepoConfig>(&key, CONFIG, truncated).is_err());
        let other = RepoKey::from_bytes([8; 32]);
        assert!(open::<RepoConfig>(&other, CONFIG, &sealed).is_err());
    }

    /// A manifest as backups taken before the data format was recorded wrote it.
    fn unrecorded() -> serde_json::Value {
        serde_json::json!({
            "format": FORMAT_VERSION, "id": "0001", "cluster_id": null, "node_id": 1,
            "started_ms": 1, "finished_ms": 2, "log_index": 10, "log_term": 1,
            "state_hash": "s", "services_hash": "h", "services": [], "apply": {},
            "files": [], "totals": Totals::default(),
        })
    }

    #[test]
    fn a_restore_refuses_a_newer_data_format_and_reads_older_and_unrecorded_ones() {
        use crate::backup::restore::check_data_format;
        use crate::node::format::DATA_FORMAT;
        let old: Manifest = serde_json::from_value(unrecorded()).expect("an older manifest");
        assert_eq!(old.data_format, None);
        assert!(check_data_format(&old).is_ok());
        for format in [DATA_FORMAT - 1, DATA_FORMAT] {
            let manifest = Manifest {
                data_format: Some(format),
                ..old.clone()
            };
            assert!(check_data_format(&manifest).is_ok(), "format {format}");
        }
        let newer = Manifest {
            data_format: Some(DATA_FORMAT + 1),
            ..old
        };
        let error = check_data_format(&newer).expect_err("a newer data format");
        let message = error.to_string();
        assert!(
            message.contains(&format!("data format {}", DATA_FORMAT + 1))
                && message.contains(&format!("reads data format {DATA_FORMAT}")),
            "{message}"
        );
        // Written as recorded.
        let json = serde_json::to_value(&newer).expect("encode");
        assert_eq!(json["data_format"], DATA_FORMAT + 1);
    }
}
