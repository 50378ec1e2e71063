//! The cluster's identity: a random id, the same on every member, that peers present on
//! every internal request and check on receipt.
//!
//! Why it exists: a node restored from a backup holds a prefix of the old cluster's log
//! (a rewound log). It starts a **new** cluster (`crate::backup::restore`); if it ever
//! exchanged Raft traffic with the old cluster — an operator adds it back by mistake, or
//! an old node still lists its address — the two histories would be spliced together, or
//! an old leader would meet a log that went backwards (openraft panics on that). The
//! shared cluster key cannot tell them apart (a restore keeps it), so each cluster gets
//! its own id, kept in `<data>/CLUSTER`:
//! - written when a node bootstraps a new cluster, and by a restore (a new id);
//! - adopted by a node that joins (`--join`): it has no id and no Raft state yet, and
//!   takes the id of the first peer that talks to it;
//! - a cluster bootstrapped before ids existed has none; its nodes keep accepting
//!   requests without an id and refuse every request that carries one.
//!
//! A node with an id refuses requests with another id or without one (409
//! `cluster_mismatch`).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Header carrying the sender's cluster id on internal requests.
pub const CLUSTER_HEADER: &str = "x-tandem-cluster";
/// The file holding a node's cluster id, in its data directory.
pub const FILE: &str = "CLUSTER";

/// A node's cluster id, if it has one, and where it is kept.
#[derive(Debug)]
pub struct ClusterIdentity {
    path: PathBuf,
    id: RwLock<Option<String>>,
}

/// What to do with a peer's request, by cluster id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Same cluster (or neither side has an id).
    Accept,
    /// This node had no id and no Raft state: it adopted the sender's.
    Adopted,
    /// Another cluster: the reason, for the refusal.
    Refuse(String),
}

impl ClusterIdentity {
    /// The identity recorded in `data_dir`, if any.
    pub fn load(data_dir: &Path) -> io::Result<ClusterIdentity> {
        let path = data_dir.join(FILE);
        let id = match fs::read_to_string(&path) {
            Ok(text) => {
                let id = text.trim().to_owned();
                if !valid(&id) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} does not hold a cluster id: {id:?}", path.display()),
                    ));
                }
                Some(id)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(ClusterIdentity {
            path,
            id: RwLock::new(id),
        })
    }

    /// The id, if this node has one.
    pub fn get(&self) -> Option<String> {
        self.id.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Gives this node a new random id (bootstrapping a cluster), durably.
    pub fn create(&self) -> io::Result<String> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.set(&id)?;
        Ok(id)
    }

    /// Records `id` durably and uses it from now on.
    pub fn set(&self, id: &str) -> io::Result<()> {
        write_id(&self.path, id)?;
        *self.id.write().unwrap_or_else(|p| p.into_inner()) = Some(id.to_owned());
        Ok(())
    }

    /// Decides on a request that presented `presented` (the header's value, if any).
    /// `fresh` tells whether this node has no Raft state yet (never initialized, never
    /// joined): only then may it adopt the sender's id. It is asked only in that case.
    pub fn admit(&self, presented: Option<&str>, fresh: impl FnOnce() -> bool) -> Admission {
        match (self.get(), presented) {
            (Some(own), Some(theirs)) if own == theirs => Admission::Accept,
            (Some(own), Some(theirs)) => Admission::Refuse(format!(
                "this node belongs to cluster {own}, the request comes from cluster {theirs}; a \
                 cluster restored from a backup is a new cluster and never rejoins the old one"
            )),
            (Some(own), None) => Admission::Refuse(format!(
                "this node belongs to cluster {own} and the request names no cluster"
            )),
            (None, None) => Admission::Accept,
            (None, Some(theirs)) if valid(theirs) && fresh() => match self.set(theirs) {
                Ok(()) => Admission::Adopted,
                Err(e) => Admission::Refuse(format!("cannot record the cluster id: {e}")),
            },
            (None, Some(theirs)) => Admission::Refuse(format!(
                "this node belongs to a cluster created before cluster ids; the request comes \
                 from cluster {theirs}"
            )),
        }
    }
}

/// Writes a cluster id file durably (write, fsync, rename, fsync the directory).
pub fn write_id(path: &Path, id: &str) -> io::Result<()> {
    let temp = path.with_extension("tmp");
    let mut file = fs::File::create(&temp)?;
    writeln!(file, "{id}")?;
    file.sync_all()?;
    fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_adopted_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let joiner = ClusterIdentity::load(dir.path()).unwrap();
        assert_eq!(joiner.admit(None, || true), Admission::Accept);
        assert!(matches!(
            joiner.admit(Some("abc"), || false),
            Admission::Refuse(_)
        ));
        assert_eq!(joiner.admit(Some("abc"), || true), Admission::Adopted);
        assert_eq!(joiner.admit(Some("abc"), || false), Admission::Accept);
        assert!(matches!(
            joiner.admit(Some("other"), || true),
            Admission::Refuse(_)
        ));
        assert!(matches!(joiner.admit(None, || true), Admission::Refuse(_)));
        let reloaded = ClusterIdentity::load(dir.path()).unwrap();
        assert_eq!(reloaded.get().as_deref(), Some("abc"));
        let created = reloaded.create().unwrap();
        assert_ne!(created, "abc");
        assert!(matches!(
            reloaded.admit(Some("abc"), || false),
            Admission::Refuse(_)
        ));
    }
}
