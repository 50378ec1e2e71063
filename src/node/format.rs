//! The data directory's format version: a data directory written by another format is
//! refused at start with what to do, never misread.
//!
//! `<data>/FORMAT` holds one line, `tandem-data <version>`. Version 5 keeps each profile's
//! activity (seen times, counts) in a record of its own (`profile_activity`), so an event
//! that changes nothing else no longer rewrites the whole profile: a version-4 (or 3)
//! directory is read as it is and restamped (its profile records carry their activity,
//! and each is rewritten in the new layout the next time it changes), but a build of
//! version 4 would read a rewritten profile with zero counts, so it refuses version 5.
//! Version 4 no longer writes the
//! dedup keys into the state (they are derived from the feed and the log, see
//! `crate::store::dedup_index`): a version-3 directory is read as it is and restamped
//! (its old keys expire from the state by themselves), but a build of version 3 would
//! miss every key stored since and take retries for new events, so it refuses version 4.
//! Version 3 records each
//! member's peer URL beside its client URL in the membership (log entries and snapshot
//! metadata, postcard: a field more is a format change). Version 2 keeps the event
//! bodies in the log (`log/`) and the state without them (`store/`). Version 1 (before it)
//! had no `FORMAT` file, a fjall Raft log in `raft-log/` and event bodies in the state.

use std::fs;
use std::io::Write;
use std::path::Path;

/// The format this build reads and writes.
pub const DATA_FORMAT: u32 = 5;
/// What `tandem --version` prints: the release and [`DATA_FORMAT`] (a literal, as the
/// attribute needs one; a test keeps the two equal).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (data format 5)");
/// The older formats this build upgrades in place by restamping them (nothing to convert).
const UPGRADED_IN_PLACE: [u32; 2] = [3, 4];
/// The version file's name.
const FILE: &str = "FORMAT";

/// Written into a data directory when `tandem restore` starts, removed when it ends: a
/// node refuses to start on a directory that holds it.
pub const RESTORE_INCOMPLETE: &str = "restore-incomplete";
/// Written when a restore ends: what was restored, and the node id to start with.
pub const RESTORED: &str = "RESTORED";

/// Checks, when a node starts on `dir`, that no restore was cut short there and that the
/// node runs with the id the restore chose (`crate::backup::restore`).
pub fn check_restored(dir: &Path, node_id: u64) -> Result<(), FormatError> {
    if dir.join(RESTORE_INCOMPLETE).exists() {
        return Err(FormatError::Mismatch(format!(
            "{} holds an interrupted restore; delete the directory and run tandem restore again",
            dir.display()
        )));
    }
    let path = dir.join(RESTORED);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(FormatError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let restored: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| FormatError::Mismatch(format!("{}: {e}", path.display())))?;
    let wanted = restored["node_id"].as_u64().unwrap_or(0);
    if wanted != node_id {
        return Err(FormatError::Mismatch(format!(
            "{} was restored from backup {} as node {wanted} of a new cluster; start it with \
             --node-id {wanted} (it was started as node {node_id})",
            dir.display(),
            restored["backup"].as_str().unwrap_or("?"),
        )));
    }
    Ok(())
}

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// It was written by a build with another on-disk format.
    #[error("{0}")]
    Mismatch(String),
    /// It could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Checks `dir`'s format, or stamps an empty (new) directory with this build's.
pub fn check_or_stamp(dir: &Path) -> Result<(), FormatError> {
    let path = dir.join(FILE);
    let io = |source| FormatError::Io {
        path: path.display().to_string(),
        source,
    };
    match fs::read_to_string(&path) {
        Ok(text) => {
            let version = text
                .trim()
                .strip_prefix("tandem-data ")
                .and_then(|v| v.parse::<u32>().ok());
            match version {
                Some(DATA_FORMAT) => Ok(()),
                Some(from) if UPGRADED_IN_PLACE.contains(&from) => {
                    tracing::info!(
                        dir = %dir.display(),
                        from,
                        to = DATA_FORMAT,
                        "upgrading the data directory's format in place (nothing to convert)"
                    );
                    stamp(dir, &path)
                }
                Some(other) => Err(FormatError::Mismatch(format!(
                    "data directory {} is in format {other}; this build of Tandem reads format \
                     {DATA_FORMAT}. Run the Tandem version that wrote it, or start this one with \
                     an empty --data-dir and restore or re-ingest the data",
                    dir.display()
                ))),
                None => Err(FormatError::Mismatch(format!(
                    "{} does not name a data format ({:?}); it should read `tandem-data \
                     {DATA_FORMAT}`",
                    path.display(),
                    text.trim()
                ))),
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if dir.join("raft-log").exists() || dir.join("store").exists() {
                return Err(FormatError::Mismatch(format!(
                    "data directory {} was written by an older Tandem (format 1: event bodies \
                     in the state, the Raft log in raft-log/); this build keeps events in the \
                     log (format {DATA_FORMAT}) and cannot read it. Start with an empty \
                     --data-dir (in a cluster: add it as a new node, which receives the data \
                     from the leader), or re-ingest the events",
                    dir.display()
                )));
            }
            stamp(dir, &path)
        }
        Err(error) => Err(io(error)),
    }
}

/// Writes this build's format into `path` (in `dir`), durably.
fn stamp(dir: &Path, path: &Path) -> Result<(), FormatError> {
    let io = |source| FormatError::Io {
        path: path.display().to_string(),
        source,
    };
    let temp = dir.join("FORMAT.tmp");
    let mut file = fs::File::create(&temp).map_err(io)?;
    writeln!(file, "tandem-data {DATA_FORMAT}").map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&temp, path).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_names_this_data_format() {
        assert!(
            VERSION.ends_with(&format!("(data format {DATA_FORMAT})")),
            "{VERSION}"
        );
    }

    #[test]
    fn a_new_directory_is_stamped_and_then_accepted() {
        let dir = tempfile::tempdir().unwrap();
        check_or_stamp(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join(FILE)).unwrap(),
            format!("tandem-data {DATA_FORMAT}\n")
        );
        check_or_stamp(dir.path()).unwrap();
    }

    #[test]
    fn other_formats_are_refused_with_what_to_do() {
        let old = tempfile::tempdir().unwrap();
        fs::create_dir(old.path().join("raft-log")).unwrap();
        let error = check_or_stamp(old.path()).unwrap_err().to_string();
        assert!(
            error.contains("format 1") && error.contains("empty --data-dir"),
            "{error}"
        );

        let newer = tempfile::tempdir().unwrap();
        fs::write(newer.path().join(FILE), "tandem-data 9\n").unwrap();
        let error = check_or_stamp(newer.path()).unwrap_err().to_string();
        assert!(error.contains("format 9"), "{error}");

        // An older format this build reads as it is: restamped, never again read by the
        // build that wrote it.
        for older in UPGRADED_IN_PLACE {
            let previous = tempfile::tempdir().unwrap();
            fs::write(previous.path().join(FILE), format!("tandem-data {older}\n")).unwrap();
            check_or_stamp(previous.path()).unwrap();
            assert_eq!(
                fs::read_to_string(previous.path().join(FILE)).unwrap(),
                format!("tandem-data {DATA_FORMAT}\n")
            );
        }

        let garbage = tempfile::tempdir().unwrap();
        fs::write(garbage.path().join(FILE), "hello").unwrap();
        assert!(check_or_stamp(garbage.path()).is_err());
    }
}
