//! `tandem bench-backup-stages`: where a backup's CPU goes, per MB, stage by stage, on
//! real checkpoint files (a restored snapshot directory: `state` and `log/*.seg`).
//!
//! Each stage runs alone on one thread over the same in-memory chunks, timed by the
//! thread's own CPU clock (`CLOCK_THREAD_CPUTIME_ID`), which other processes on a shared
//! machine do not inflate the way they inflate wall time. State and log files are
//! reported apart: the log's event bodies are already zstd-compressed, the state is not,
//! so whether compressing again pays is a per-kind question. Object writes are timed in
//! wall-clock (they wait on the disk), with and without an fsync per object.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::backup::chunker;
use crate::backup::keys::{Identities, Recipients, RepoKey};

/// zstd levels compared (3 is what backups use).
const LEVELS: [i32; 4] = [3, 1, -1, -5];

/// `tandem bench-backup-stages`
#[derive(Debug, clap::Args)]
pub struct StagesArgs {
    /// A checkpoint directory (holding `state` and `log/`), or files.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Parent directory of the scratch object writes (a fresh subdirectory, deleted
    /// afterwards): put it on the repository's disk.
    #[arg(long, default_value = ".")]
    pub work_dir: PathBuf,
    /// An older checkpoint's state file: report, for several chunk sizes, how much of
    /// the new state's chunks an incremental backup would upload.
    #[arg(long)]
    pub previous_state: Option<PathBuf>,
}

/// Runs the benchmark; returns the exit code.
pub fn run_stages(args: StagesArgs) -> i32 {
    let scratch = args
        .work_dir
        .join(format!("tandem-bench-backup-{}", std::process::id()));
    let code = match measure(&args, &scratch) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("tandem bench-backup-stages: {error}");
            1
        }
    };
    let _ = std::fs::remove_dir_all(&scratch);
    code
}

/// CPU seconds the calling thread has used.
fn thread_cpu_s() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// Chunks of plaintext.
type Chunks = Vec<Vec<u8>>;

/// The chunks of every file under `paths`, split into state and log, and the CPU seconds
/// cutting them took.
fn load(paths: &[PathBuf]) -> Result<(Chunks, Chunks, f64), String> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files)?;
    }
    let (mut state, mut log) = (Vec::new(), Vec::new());
    let mut cut_s = 0.0;
    for file in files {
        let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let into = if file.extension().is_some_and(|e| e == "seg") {
            &mut log
        } else {
            &mut state
        };
        let start = thread_cpu_s();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let cut = chunker::next_cut(rest);
            into.push(rest[..cut].to_vec());
            rest = &rest[cut..];
        }
        cut_s += thread_cpu_s() - start;
    }
    Ok((state, log, cut_s))
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_file() {
        out.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        collect(&entry, out)?;
    }
    Ok(())
}

fn row(stage: &str, kind: &str, bytes: usize, cpu_s: f64, extra: &str) {
    let mb = bytes as f64 / 1e6;
    println!(
        "{stage:<28} {kind:<6} {mb:>9.1} MB {:>8.2} ms/MB {:>8.0} MB/s/core {extra}",
        1e3 * cpu_s / mb.max(1e-9),
        mb / cpu_s.max(1e-9)
    );
}

fn measure(args: &StagesArgs, scratch: &Path) -> Result<(), String> {
    if let Some(previous) = &args.previous_state {
        compare_sizes(previous, &args.paths)?;
    }
    let (state, log, cut_s) = load(&args.paths)?;
    let all: usize = state.iter().chain(&log).map(Vec::len).sum();
    if all == 0 {
        return Err("no bytes to measure".into());
    }
    println!(
        "{} state chunks, {} log chunks, {:.1} MB; CPU per MB of plaintext, one thread",
        state.len(),
        log.len(),
        all as f64 / 1e6
    );
    row("cut (gear hash)", "all", all, cut_s, "");
    let key = RepoKey::from_bytes([7; 32]);
    std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let identity_path = scratch.join("identity");
    let recipient = Identities::create(&identity_path).map_err(|e| format!("an identity: {e}"))?;
    let identities = Identities::read(&identity_path).map_err(|e| e.to_string())?;
    let recipients = Recipients::parse(&[recipient]).map_err(|e| e.to_string())?;
    for (kind, chunks) in [("state", &state), ("log", &log)] {
        let bytes: usize = chunks.iter().map(Vec::len).sum();
        if bytes == 0 {
            continue;
        }
        let start = thread_cpu_s();
        let names: Vec<String> = chunks.iter().map(|c| key.chunk_name(c)).collect();
        row(
            "chunk names (keyed blake3)",
            kind,
            bytes,
            thread_cpu_s() - start,
            "",
        );
        let start = thread_cpu_s();
        let mut hasher = key.file_hasher();
        for chunk in chunks {
            hasher.update(chunk);
        }
        let _ = hasher.finalize();
        row(
            "file hash (keyed blake3)",
            kind,
            bytes,
            thread_cpu_s() - start,
            "",
        );
        let mut sealed = Vec::new();
        for level in LEVELS {
            let start = thread_cpu_s();
            let compressed: Vec<Vec<u8>> = chunks
                .iter()
                .map(|c| zstd::bulk::compress(c, level).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?;
            let cpu = thread_cpu_s() - start;
            let out: usize = compressed.iter().map(Vec::len).sum();
            let ratio = format!("output {:.3} of input", out as f64 / bytes as f64);
            row(&format!("zstd level {level}"), kind, bytes, cpu, &ratio);
            if level == LEVELS[0] {
                sealed = compressed;
            }
        }
        let start = thread_cpu_s();
        let encrypted: Vec<Vec<u8>> = sealed
            .iter()
            .map(|c| recipients.encrypt(c).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        row("age encrypt", kind, bytes, thread_cpu_s() - start, "");
        let start = thread_cpu_s();
        for (sealed, chunk) in encrypted.iter().zip(chunks.iter()) {
            let plain = identities
                .decrypt(sealed, "chunk")
                .map_err(|e| e.to_string())?;
            zstd::bulk::decompress(&plain, chunk.len()).map_err(|e| e.to_string())?;
        }
        row(
            "age decrypt + unzstd",
            kind,
            bytes,
            thread_cpu_s() - start,
            "",
        );
        for fsync in [false, true] {
            let dir = scratch.join(format!("{kind}-{fsync}"));
            let wall = write_objects(&dir, &names, &encrypted, fsync)?;
            let what = if fsync { "with fsync" } else { "no fsync" };
            row(
                &format!("object writes, {what}"),
                kind,
                bytes,
                wall,
                "(wall-clock, one at a time)",
            );
        }
    }
    Ok(())
}

/// Chunk sizes compared for the state: today's, and two finer ones.
const STATE_SIZES: [chunker::Sizes; 3] = [
    chunker::SIZES,
    chunker::Sizes {
        min: 16 << 10,
        avg_bits: 16,
        max: 256 << 10,
    },
    chunker::Sizes {
        min: 4 << 10,
        avg_bits: 14,
        max: 64 << 10,
    },
];

/// For each of [`STATE_SIZES`]: the new state's chunks, those not in the previous state,
/// and their bytes (plain and zstd level 1) against the whole state's.
fn compare_sizes(previous: &Path, paths: &[PathBuf]) -> Result<(), String> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files)?;
    }
    let state = files
        .iter()
        .find(|f| f.file_name().is_some_and(|n| n == "state"))
        .ok_or("no state file among the paths")?;
    let old = std::fs::read(previous).map_err(|e| format!("{}: {e}", previous.display()))?;
    let new = std::fs::read(state).map_err(|e| format!("{}: {e}", state.display()))?;
    println!(
        "state {:.1} MB, previous {:.1} MB: what an incremental backup uploads of it",
        new.len() as f64 / 1e6,
        old.len() as f64 / 1e6
    );
    for sizes in STATE_SIZES {
        let cut = |bytes: &[u8]| {
            let mut chunks = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                let at = chunker::next_cut_sized(rest, sizes);
                chunks.push(rest[..at].to_vec());
                rest = &rest[at..];
            }
            chunks
        };
        let known: std::collections::HashSet<blake3::Hash> =
            cut(&old).iter().map(|c| blake3::hash(c)).collect();
        let chunks = cut(&new);
        let (mut fresh, mut fresh_bytes, mut fresh_zstd, mut all_zstd) = (0, 0, 0, 0);
        for chunk in &chunks {
            let packed = zstd::bulk::compress(chunk, 1)
                .map_err(|e| e.to_string())?
                .len();
            all_zstd += packed;
            if !known.contains(&blake3::hash(chunk)) {
                fresh += 1;
                fresh_bytes += chunk.len();
                fresh_zstd += packed;
            }
        }
        println!(
            "  chunks {}..~{}..{} KiB: {} chunks, {} new ({:.3} of the bytes); zstd-1 new {:.2} MB of {:.2} MB ({:.3})",
            sizes.min >> 10,
            (sizes.min + (1 << sizes.avg_bits)) >> 10,
            sizes.max >> 10,
            chunks.len(),
            fresh,
            fresh_bytes as f64 / new.len().max(1) as f64,
            fresh_zstd as f64 / 1e6,
            all_zstd as f64 / 1e6,
            fresh_zstd as f64 / all_zstd.max(1) as f64
        );
    }
    Ok(())
}

/// Writes each object as a local repository does (a temporary file renamed into place),
/// optionally syncing each; returns the wall seconds.
fn write_objects(
    dir: &Path,
    names: &[String],
    objects: &[Vec<u8>],
    fsync: bool,
) -> Result<f64, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let start = Instant::now();
    for (name, bytes) in names.iter().zip(objects) {
        let path = dir.join(name);
        let temp = dir.join(format!("{name}.tmp"));
        let mut file = std::fs::File::create(&temp).map_err(|e| e.to_string())?;
        file.write_all(bytes).map_err(|e| e.to_string())?;
        if fsync {
            file.sync_all().map_err(|e| e.to_string())?;
        }
        std::fs::rename(&temp, &path).map_err(|e| e.to_string())?;
    }
    if fsync {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| e.to_string())?;
    }
    Ok(start.elapsed().as_secs_f64())
}
