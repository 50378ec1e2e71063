//! `tandem backup …` and `tandem restore`: backups from the operator's side.
//!
//! `create` asks a running node (`--target`, admin key) to take a backup into the
//! repository it is configured with, and follows its progress. The others work on the
//! repository directly (`--repo`, `--repo-key`): `list` and `show` need only the repo key,
//! `verify` and `restore` also the age identity (`--identity`) that nodes never hold.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::backup::create::Summary;
use crate::backup::keys::{Identities, RepoKey};
use crate::backup::prune::{GRACE_DEFAULT_MS, Retention};
use crate::backup::{BackupError, Progress, Repository};
use crate::config::{CliOverrides, Config};

/// Where the repository is and its key.
#[derive(Debug, Clone, clap::Args)]
pub struct RepoArgs {
    /// The repository: a directory, file:///dir or s3://bucket/prefix (AWS_* environment
    /// for endpoint and credentials).
    #[arg(long, env = "TANDEM_BACKUP_REPO")]
    pub repo: String,
    /// The repository key file (owner-only).
    #[arg(long, env = "TANDEM_BACKUP_REPO_KEY_FILE")]
    pub repo_key: PathBuf,
}

/// `tandem backup`
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: BackupCommand,
}

/// The backup subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BackupCommand {
    /// Create a repository: a repo key (if the file does not exist) and an age identity
    /// (unless --recipient names an existing public key).
    Init {
        #[command(flatten)]
        repo: RepoArgs,
        /// Where to write a new age identity (the private key that decrypts backups; keep
        /// it away from nodes).
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Encrypt to these age public keys instead (repeatable).
        #[arg(long)]
        recipient: Vec<String>,
    },
    /// Ask a running node to take a backup now, and follow it.
    Create {
        /// The node, e.g. http://127.0.0.1:8081.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        target: String,
        /// The admin key.
        #[arg(long, env = "TANDEM_ADMIN_KEY", default_value = "")]
        admin_key: String,
        /// Give up waiting after this many seconds (the backup goes on).
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
    },
    /// List the repository's backups.
    List {
        #[command(flatten)]
        repo: RepoArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one backup's manifest (JSON).
    Show {
        #[command(flatten)]
        repo: RepoArgs,
        /// The backup id.
        id: String,
    },
    /// Download, decrypt and check every chunk of every backup (or one); exit 1 on any
    /// problem, each named.
    Verify {
        #[command(flatten)]
        repo: RepoArgs,
        /// The age identity file.
        #[arg(long, env = "TANDEM_BACKUP_IDENTITY_FILE")]
        identity: PathBuf,
        /// Only this backup.
        #[arg(long)]
        backup: Option<String>,
    },
    /// Apply retention, then delete chunks no kept backup needs.
    Prune {
        #[command(flatten)]
        repo: RepoArgs,
        /// Keep the N newest backups whatever their dates (the newest is always kept).
        #[arg(long, default_value_t = 1)]
        keep_last: usize,
        /// Keep the newest backup of each of the last N days.
        #[arg(long, default_value_t = 7)]
        keep_daily: usize,
        /// … of each of the last M weeks.
        #[arg(long, default_value_t = 4)]
        keep_weekly: usize,
        /// … of each of the last K months.
        #[arg(long, default_value_t = 6)]
        keep_monthly: usize,
        /// Unreferenced chunks younger than this are kept (a backup may be using them).
        #[arg(long, default_value_t = GRACE_DEFAULT_MS / 1000)]
        grace_secs: i64,
        /// Say what would go, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `tandem restore`
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The age identity file.
    #[arg(long, env = "TANDEM_BACKUP_IDENTITY_FILE")]
    pub identity: PathBuf,
    /// The new node's data directory (absent or empty).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The backup to restore (default: the newest).
    #[arg(long, conflicts_with = "at")]
    pub backup: Option<String>,
    /// Point-in-time restore: the state after the last batch at or before this time (RFC
    /// 3339 or ms since the epoch; `now` = as far as the archive reaches), from the newest
    /// backup before it plus the archived log.
    #[arg(long)]
    pub at: Option<String>,
    /// Restore despite a format or apply-settings mismatch.
    #[arg(long)]
    pub force: bool,
    /// The new node's id (default: one above every id of the backed-up cluster).
    #[arg(long)]
    pub node_id: Option<u64>,
    /// The new node's region (default: the configuration's).
    #[arg(long)]
    pub region: Option<String>,
    /// The configuration the restored node will run with (its apply settings are
    /// compared with the backup's).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Shows `progress` on a bar until `work` ends.
async fn with_bar<T>(
    progress: &Arc<Progress>,
    what: &str,
    work: impl std::future::Future<Output = T>,
) -> T {
    let bar = bar(0, what);
    let ticker = {
        let (progress, bar) = (Arc::clone(progress), bar.clone());
        tokio::spawn(async move {
            loop {
                let (done, total, _) = progress.snapshot();
                bar.set_length(total.max(done));
                bar.set_position(done);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let result = work.await;
    ticker.abort();
    bar.finish_and_clear();
    result
}

async fn open(repo: &RepoArgs) -> Result<Repository, BackupError> {
    Repository::open(&repo.repo, RepoKey::read(&repo.repo_key)?).await
}

/// Runs `tandem backup`; returns the exit code.
pub async fn run(args: BackupArgs) -> i32 {
    match run_command(args.command).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tandem backup: {error}");
            1
        }
    }
}

async fn run_command(command: BackupCommand) -> Result<i32, BackupError> {
    match command {
        BackupCommand::Init {
            repo,
            identity,
            mut recipient,
        } => {
            let key = if repo.repo_key.exists() {
                RepoKey::read(&repo.repo_key)?
            } else {
                let key = RepoKey::create(&repo.repo_key)?;
                println!("wrote a new repository key to {}", repo.repo_key.display());
                key
            };
            if recipient.is_empty() {
                let path = identity.ok_or_else(|| {
                    BackupError::Invalid(
                        "give --identity FILE (a new key is written there) or --recipient".into(),
                    )
                })?;
                let public = Identities::create(&path)?;
                println!(
                    "wrote a new age identity to {} (public key {public})",
                    path.display()
                );
                recipient.push(public);
            }
            Repository::init(&repo.repo, key, recipient).await?;
            println!("repository created at {}", repo.repo);
            Ok(0)
        }
        BackupCommand::Create {
            target,
            admin_key,
            timeout_secs,
        } => create(&target, &admin_key, Duration::from_secs(timeout_secs)).await,
        BackupCommand::List { repo, json } => {
            let repository = open(&repo).await?;
            let manifests = repository.manifests().await?;
            let backups: Vec<Summary> = manifests.iter().map(Summary::of).collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&backups).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<28} {:>10} {:>12} {:>12} {:>8}",
                    "id", "log index", "size", "uploaded", "dedup"
                );
                for b in &backups {
                    println!(
                        "{:<28} {:>10} {:>12} {:>12} {:>7.1}x",
                        b.id, b.log_index, b.bytes_scanned, b.bytes_uploaded, b.dedup_ratio
                    );
                }
                print_coverage(&repository, &manifests).await?;
            }
            Ok(0)
        }
        BackupCommand::Show { repo, id } => {
            let manifest = open(&repo).await?.manifest(&id).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&manifest).unwrap_or_default()
            );
            Ok(0)
        }
        BackupCommand::Verify {
            repo,
            identity,
            backup,
        } => {
            let identities = Identities::read(&identity)?;
            let repository = open(&repo).await?;
            let progress = Arc::new(Progress::default());
            let started = Instant::now();
            let report = with_bar(
                &progress,
                "verifying",
                crate::backup::verify::verify(
                    &repository,
                    &identities,
                    backup.as_deref(),
                    &progress,
                ),
            )
            .await?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "verified {} backup(s): {} chunks, {} bytes checked, {} bytes downloaded in {secs:.1} s",
                report.backups_ok.len(),
                report.chunks_checked,
                report.bytes_checked,
                progress.transferred.load(Ordering::Relaxed)
            );
            let archive = crate::backup::archive_check::verify(&repository, &identities).await?;
            println!(
                "verified {} archive object(s): {} log entries",
                archive.objects_ok, archive.entries
            );
            for problem in report.problems.iter().chain(&archive.problems) {
                println!("PROBLEM: {problem}");
            }
            let problems = report.problems.len() + archive.problems.len();
            Ok(if problems == 0 { 0 } else { 1 })
        }
        BackupCommand::Prune {
            repo,
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            grace_secs,
            dry_run,
        } => {
            let repository = open(&repo).await?;
            let policy = Retention {
                last: keep_last,
                daily: keep_daily,
                weekly: keep_weekly,
                monthly: keep_monthly,
            };
            let report = crate::backup::prune::prune(
                &repository,
                policy,
                grace_secs.saturating_mul(1000),
                dry_run,
            )
            .await?;
            let verb = if dry_run { "would remove" } else { "removed" };
            println!(
                "kept {} backup(s), {verb} {}: {:?}; chunks: {} referenced, {verb} {} ({} bytes), {} unreferenced within the grace period",
                report.kept.len(),
                report.removed.len(),
                report.removed,
                report.chunks_referenced,
                report.chunks_removed,
                report.bytes_removed,
                report.chunks_in_grace
            );
            Ok(0)
        }
    }
}

/// `tandem backup create`: start it on the node, follow its status, print the summary.
async fn create(target: &str, admin_key: &str, timeout: Duration) -> Result<i32, BackupError> {
    let target = target.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| BackupError::Invalid(e.to_string()))?;
    let remote = |e: reqwest::Error| BackupError::Invalid(format!("{target}: {e}"));
    let response = http
        .post(format!("{target}/v1/admin/backups"))
        .bearer_auth(admin_key)
        .send()
        .await
        .map_err(remote)?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(BackupError::Invalid(format!(
            "{target} refused: {} {}",
            status.as_u16(),
            body["message"].as_str().unwrap_or("")
        )));
    }
    let started_ms = body["started_ms"].as_i64().unwrap_or(0);
    let bar = bar(0, "backing up");
    let deadline = Instant::now() + timeout;
    loop {
        let status: Value = http
            .get(format!("{target}/v1/admin/backups/status"))
            .bearer_auth(admin_key)
            .send()
            .await
            .map_err(remote)?
            .json()
            .await
            .map_err(remote)?;
        if let Some(running) = status["running"].as_object() {
            bar.set_length(running["bytes_total"].as_u64().unwrap_or(0));
            bar.set_position(running["bytes_done"].as_u64().unwrap_or(0));
            bar.set_message(running["phase"].as_str().unwrap_or("").to_owned());
        } else if status["last"].is_object() {
            let last = &status["last"];
            let ours = last["summary"]["id"].is_string()
                || last["at_ms"].as_i64().unwrap_or(0) >= started_ms;
            if ours {
                bar.finish_and_clear();
                return match last["result"].as_str() {
                    Some("succeeded") => {
                        let s = &last["summary"];
                        println!(
                            "backup {} at log index {}",
                            s["id"].as_str().unwrap_or("?"),
                            s["log_index"]
                        );
                        println!(
                            "  state hash     {}",
                            s["state_hash"].as_str().unwrap_or("")
                        );
                        println!(
                            "  services hash  {}",
                            s["services_hash"].as_str().unwrap_or("")
                        );
                        println!(
                            "  scanned {} bytes, uploaded {} bytes in {} of {} chunks, dedup ratio {:.1}, {} ms",
                            s["bytes_scanned"],
                            s["bytes_uploaded"],
                            s["chunks_uploaded"],
                            s["chunks"],
                            s["dedup_ratio"].as_f64().unwrap_or(0.0),
                            s["duration_ms"]
                        );
                        Ok(0)
                    }
                    _ => Err(BackupError::Invalid(format!(
                        "the backup failed: {}",
                        last["error"].as_str().unwrap_or("?")
                    ))),
                };
            }
        }
        if Instant::now() > deadline {
            bar.finish_and_clear();
            return Err(BackupError::Invalid(format!(
                "no outcome within {timeout:?}; the backup goes on: see {target}/v1/admin/backups/status"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints the archive's coverage: per cluster, its ranges and the log time it reaches, and
/// how far a point-in-time restore from each backup can go.
async fn print_coverage(
    repository: &Repository,
    manifests: &[crate::backup::Manifest],
) -> Result<(), BackupError> {
    use crate::backup::pitr::show_ms;
    for c in crate::backup::archive_check::coverage(repository, manifests).await? {
        println!(
            "archive of cluster {}: {} object(s), indexes {}..={}, last batch at {}",
            c.cluster,
            c.objects,
            c.first.unwrap_or(0),
            c.last.unwrap_or(0),
            c.last_ms.map_or("-".into(), show_ms)
        );
        for (id, end) in &c.reach {
            println!("  point-in-time restore from backup {id}: up to log index {end}");
        }
        for problem in &c.problems {
            println!("  PROBLEM: {problem}");
        }
    }
    Ok(())
}

/// Prints each new phase of `progress` to stderr (a long replay says how far it got).
fn print_phases(progress: Arc<Progress>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut shown = String::new();
        loop {
            let phase = progress.current_phase();
            if phase != shown {
                eprintln!("{phase}");
                shown = phase;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// Runs `tandem restore`; returns the exit code.
pub async fn run_restore(args: RestoreArgs) -> i32 {
    match restore(args).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("tandem restore: {error}");
            1
        }
    }
}

async fn restore(args: RestoreArgs) -> Result<(), BackupError> {
    // A restore uses the configuration's apply settings and storage sizes; it serves no
    // requests, so it needs no sources, keys or TLS files.
    let config = Config::load_settings(args.config.as_deref(), &CliOverrides::default())
        .map_err(|e| BackupError::Invalid(e.to_string()))?;
    let identities = Identities::read(&args.identity)?;
    let repository = open(&args.repo).await?;
    let options = crate::backup::restore::Options {
        data_dir: args.data_dir.clone(),
        backup: args.backup.clone(),
        force: args.force,
        node_id: args.node_id,
        region: args
            .region
            .clone()
            .unwrap_or_else(|| config.cluster.region.clone()),
        config,
    };
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let target = args
        .at
        .as_deref()
        .map(crate::backup::pitr::Target::parse)
        .transpose()?;
    let restored = match target {
        None => {
            with_bar(
                &progress,
                "restoring",
                crate::backup::restore::restore(&repository, &identities, &options, &progress),
            )
            .await?
        }
        Some(target) => {
            let printer = print_phases(Arc::clone(&progress));
            let restored = crate::backup::pitr::restore_at(
                &repository,
                &identities,
                &options,
                target,
                &progress,
            )
            .await;
            printer.abort();
            let restored = restored?;
            println!(
                "point-in-time restore: backup {} replayed with the archive to log index {} \
                 (last batch at {})",
                restored.backup,
                restored.log_index,
                restored
                    .log_time_ms
                    .map_or("-".into(), crate::backup::pitr::show_ms)
            );
            restored
        }
    };
    let secs = started.elapsed().as_secs_f64();
    for forced in &restored.forced {
        println!("FORCED: {forced}");
    }
    println!(
        "restored backup {} at log index {} into {} ({} bytes in {secs:.1} s)",
        restored.backup,
        restored.log_index,
        args.data_dir.display(),
        restored.bytes
    );
    let of = if args.at.is_some() {
        "of the replayed state; the services catch up from the base backup's on start"
    } else {
        "equal to the backup's"
    };
    println!("  state hash     {} ({of})", restored.state_hash);
    println!("  services hash  {} ({of})", restored.services_hash);
    println!(
        "  a new cluster {} (the backup came from {}); its first node is node {}",
        restored.cluster_id,
        restored
            .source_cluster_id
            .as_deref()
            .unwrap_or("a cluster without an id"),
        restored.node_id
    );
    println!(
        "start it with: tandem node --data-dir {} --node-id {} [--listen …] [--config …]; add \
         nodes to it with tandem cluster add-node (docs/operations.md)",
        args.data_dir.display(),
        restored.node_id
    );
    Ok(())
}
