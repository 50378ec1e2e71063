//! What the archive covers and whether it is intact, for `tandem backup list` (coverage:
//! from which backup to which log time a point-in-time restore can reach) and `tandem
//! backup verify` (every object downloaded, MAC-checked, decrypted and decoded; gaps and
//! overlaps between ranges named).

use std::collections::BTreeMap;

use serde::Serialize;

use super::archive::{self, Range};
use super::keys::Identities;
use super::manifest::Manifest;
use super::{BackupError, Repository};

/// One cluster's archive as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    /// The cluster (its archive folder's name).
    pub cluster: String,
    /// Objects, and the indexes they span.
    pub objects: usize,
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// Log time of the newest object's last batch, ms since the epoch.
    pub last_ms: Option<i64>,
    /// Gaps and overlaps, named.
    pub problems: Vec<String>,
    /// For each backup of the cluster: its id and the last index a restore from it can
    /// replay to without crossing a gap (its own index if the archive does not continue it).
    pub reach: Vec<(String, u64)>,
}

/// Every archive object, grouped by cluster folder.
async fn by_cluster(repository: &Repository) -> Result<BTreeMap<String, Vec<Range>>, BackupError> {
    let mut out: BTreeMap<String, Vec<Range>> = BTreeMap::new();
    for listed in repository.repo.list(archive::ARCHIVE).await? {
        let mut parts = listed.name.split('/');
        let (Some(_), Some(cluster)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let Some((first, last)) = archive::parse_name(&listed.name) {
            out.entry(cluster.to_owned()).or_default().push(Range {
                first,
                last,
                name: listed.name.clone(),
                size: listed.size,
            });
        }
    }
    for ranges in out.values_mut() {
        ranges.sort_by_key(|r| (r.first, r.last));
    }
    Ok(out)
}

/// The archive's coverage per cluster, with each backup's reach.
pub async fn coverage(
    repository: &Repository,
    manifests: &[Manifest],
) -> Result<Vec<Coverage>, BackupError> {
    let mut out = Vec::new();
    for (cluster, ranges) in by_cluster(repository).await? {
        let last_ms = match ranges.last() {
            Some(newest) => match repository.repo.get(&newest.name).await? {
                Some(bytes) => archive::open(repository, &newest.name, &bytes)
                    .ok()
                    .and_then(|(h, _)| h.last_ms),
                None => None,
            },
            None => None,
        };
        let reach = manifests
            .iter()
            .filter(|m| {
                archive::folder(m.cluster_id.as_deref())
                    == format!("{}/{cluster}", archive::ARCHIVE)
            })
            .map(|m| {
                let end = archive::run_from(&ranges, m.log_index + 1).1;
                (m.id.clone(), end.unwrap_or(m.log_index))
            })
            .collect();
        out.push(Coverage {
            objects: ranges.len(),
            first: ranges.first().map(|r| r.first),
            last: ranges.iter().map(|r| r.last).max(),
            last_ms,
            problems: archive::continuity(&ranges),
            reach,
            cluster,
        });
    }
    Ok(out)
}

/// What verifying the archive found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Objects that passed every check.
    pub objects_ok: u64,
    /// Entries decoded and checked.
    pub entries: u64,
    /// Each problem: the object and the check, or the gap or overlap.
    pub problems: Vec<String>,
}

/// Downloads and checks every archive object, and the continuity of each cluster's ranges.
pub async fn verify(
    repository: &Repository,
    identities: &Identities,
) -> Result<Report, BackupError> {
    let mut report = Report::default();
    for (_, ranges) in by_cluster(repository).await? {
        report.problems.extend(archive::continuity(&ranges));
        for range in &ranges {
            let checked = match repository.repo.get(&range.name).await? {
                None => Err(BackupError::Corrupt {
                    object: range.name.clone(),
                    check: "presence".into(),
                    detail: "listed but gone".into(),
                }),
                Some(bytes) => archive::open(repository, &range.name, &bytes).and_then(
                    |(header, ciphertext)| {
                        archive::decode(identities, &range.name, &header, ciphertext)
                            .map(|entries| entries.len() as u64)
                    },
                ),
            };
            match checked {
                Ok(entries) => {
                    report.objects_ok += 1;
                    report.entries += entries;
                }
                Err(error) => report.problems.push(error.to_string()),
            }
        }
    }
    Ok(report)
}
