//! `tandem backup verify`: download, decrypt and check every chunk the chosen backups
//! need, and every manifest's MAC; report each problem by object and check rather than
//! stopping at the first. Each distinct chunk is checked once, several at a time
//! ([`Parallelism`]); a backup is reported good only if every chunk it needs is.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use serde::Serialize;

use super::keys::Identities;
use super::manifest::{self, Manifest};
use super::pipeline::Parallelism;
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
    // Each distinct chunk once, with the first backup and file that need it (for the
    // message); checked `in_flight` at a time, in any order.
    let mut bad_manifests: HashSet<usize> = HashSet::new();
    let mut first_need: HashMap<&str, (usize, &str, u64)> = HashMap::new();
    for (at, manifest) in manifests.iter().enumerate() {
        for file in &manifest.files {
            let sum: u64 = file.chunks.iter().map(|c| c.len).sum();
            if sum != file.size {
                bad_manifests.insert(at);
                report.problems.push(format!(
                    "{}: file {} has chunks of {sum} bytes but a size of {}",
                    Manifest::object_name(&manifest.id),
                    file.name,
                    file.size
                ));
            }
            for chunk in &file.chunks {
                first_need
                    .entry(chunk.id.as_str())
                    .or_insert((at, file.name.as_str(), chunk.len));
            }
        }
    }
    let context = Arc::new((repository.clone(), identities.clone()));
    let mut checks = futures::stream::iter(first_need.iter())
        .map(|(id, (_, _, len))| {
            let (context, id, len) = (Arc::clone(&context), (*id).to_owned(), *len);
            async move { (check_chunk(context, &id, len).await, id, len) }
        })
        .buffer_unordered(Parallelism::new(0).in_flight);
    let mut failed: HashSet<String> = HashSet::new();
    while let Some((outcome, id, len)) = checks.next().await {
        progress.done.fetch_add(len, Ordering::Relaxed);
        match outcome {
            Ok(bytes) => {
                report.chunks_checked += 1;
                report.bytes_checked += len;
                progress.transferred.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(e) => {
                let (at, file, _) = first_need[id.as_str()];
                report.problems.push(format!(
                    "{e} (needed by backup {}, file {file})",
                    manifests[at].id
                ));
                failed.insert(id);
            }
        }
    }
    drop(checks);
    for (at, manifest) in manifests.iter().enumerate() {
        // A backup is good only if every chunk it needs is, whichever backup's check
        // found a bad one first.
        if !bad_manifests.contains(&at) && !manifest.chunk_ids().any(|id| failed.contains(id)) {
            report.backups_ok.push(manifest.id.clone());
        }
    }
    progress.phase("done");
    Ok(report)
}

/// Downloads and checks one chunk; returns its stored size.
async fn check_chunk(
    context: Arc<(Repository, Identities)>,
    id: &str,
    len: u64,
) -> Result<u64, BackupError> {
    let object = manifest::chunk_object(id);
    let sealed = context
        .0
        .repo
        .get(&object)
        .await?
        .ok_or_else(|| BackupError::Corrupt {
            object: object.clone(),
            check: "presence".into(),
            detail: "missing".into(),
        })?;
    let stored = sealed.len() as u64;
    let id = id.to_owned();
    tokio::task::spawn_blocking(move || {
        let (repository, identities) = &*context;
        repository.open_chunk(identities, &id, len, &sealed)
    })
    .await
    .map_err(|e| BackupError::Invalid(format!("verify worker: {e}")))??;
    Ok(stored)
}
