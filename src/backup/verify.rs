//! `tandem backup verify`: download, decrypt and check every chunk the chosen backups
//! need, and every manifest's MAC; report each problem by object and check rather than
//! stopping at the first.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::keys::Identities;
use super::manifest::{self, Manifest};
use super::{BackupError, Progress, Repository};

/// What a verification found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Backups whose manifest passed.
    pub backups_ok: Vec<String>,
    /// Distinct chunks downloaded and checked.
    pub chunks_checked: u64,
    /// Plaintext bytes checked.
    pub bytes_checked: u64,
    /// Each problem: the object and the check that failed.
    pub problems: Vec<String>,
}

/// Verifies backup `only` (or every backup) of `repository` with `identities`.
pub async fn verify(
    repository: &Repository,
    identities: &Identities,
    only: Option<&str>,
    progress: &Arc<Progress>,
) -> Result<Report, BackupError> {
    let mut report = Report::default();
    let names: Vec<String> = match only {
        Some(id) => vec![Manifest::object_name(id)],
        None => {
            let mut names: Vec<String> = repository
                .repo
                .list(manifest::MANIFESTS)
                .await?
                .into_iter()
                .map(|l| l.name)
                .collect();
            names.sort();
            names
        }
    };
    let mut manifests = Vec::new();
    for name in &names {
        let id = name.rsplit('/').next().unwrap_or(name);
        match repository.manifest(id).await {
            Ok(m) => manifests.push(m),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    let total: u64 = manifests.iter().map(|m| m.totals.bytes_scanned).sum();
    progress.total.store(total, Ordering::Relaxed);
    progress.phase("checking chunks");
    let mut checked: HashSet<String> = HashSet::new();
    for manifest in &manifests {
        let before = report.problems.len();
        for file in &manifest.files {
            let sum: u64 = file.chunks.iter().map(|c| c.len).sum();
            if sum != file.size {
                report.problems.push(format!(
                    "{}: file {} has chunks of {sum} bytes but a size of {}",
                    Manifest::object_name(&manifest.id),
                    file.name,
                    file.size
                ));
            }
            for chunk in &file.chunks {
                progress.done.fetch_add(chunk.len, Ordering::Relaxed);
                if !checked.insert(chunk.id.clone()) {
                    continue;
                }
                match check_chunk(repository, identities, &chunk.id, chunk.len).await {
                    Ok(bytes) => {
                        report.chunks_checked += 1;
                        report.bytes_checked += chunk.len;
                        progress.transferred.fetch_add(bytes, Ordering::Relaxed);
                    }
                    Err(e) => report.problems.push(format!(
                        "{e} (needed by backup {}, file {})",
                        manifest.id, file.name
                    )),
                }
            }
        }
        if report.problems.len() == before {
            report.backups_ok.push(manifest.id.clone());
        }
    }
    progress.phase("done");
    Ok(report)
}

/// Downloads and checks one chunk; returns its stored size.
async fn check_chunk(
    repository: &Repository,
    identities: &Identities,
    id: &str,
    len: u64,
) -> Result<u64, BackupError> {
    let object = manifest::chunk_object(id);
    let sealed = repository
        .repo
        .get(&object)
        .await?
        .ok_or_else(|| BackupError::Corrupt {
            object: object.clone(),
            check: "presence".into(),
            detail: "missing".into(),
        })?;
    let stored = sealed.len() as u64;
    repository.open_chunk(identities, id, len, &sealed)?;
    Ok(stored)
}
