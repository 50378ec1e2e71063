//! `storage-bench`: measures redb 4.6.0 and fjall 3.1.13 on Tandem's ingest apply path.
//!
//! A *commit* is one atomic, fsync'd write holding, for `B` events: one log entry of `B*400`
//! bytes, `B` 400-byte event records, `B` read-modify-writes of ~300-byte profiles picked at
//! random out of `--profiles`, and `B` 16-byte dedup keys. One `run` of one engine, in a
//! fresh directory:
//!
//! 1. preloads the profile table,
//! 2. measures point-read latency of random profile gets on the idle database,
//! 3. measures durable group-commit throughput with the writer alone (phase A),
//! 4. runs the writer again while another thread does paced random profile gets, measuring
//!    both (phase B-ii),
//! 5. closes the database and reports its size on disk, then deletes the directory.
//!
//! `fsync` measures the raw cost of `write + fsync` on the same filesystem.

mod store;
mod workload;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use store::{EngineKind, Store};
use workload::Workload;

#[derive(Parser)]
#[command(about = "Durable group-commit and point-read benchmark: redb vs fjall")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmark one engine in a fresh directory under --data-dir.
    Run(RunArgs),
    /// Measure the raw cost of append + fsync on the filesystem of --data-dir.
    Fsync {
        /// Directory to write the probe file in (created if missing).
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Number of fsyncs per write size.
        #[arg(long, default_value_t = 300)]
        iterations: usize,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, value_enum)]
    engine: EngineKind,
    /// Events per commit (B).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Events written by the writer alone (phase A).
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Events written while the reader runs (phase B-ii); 0 skips the phase.
    #[arg(long, default_value_t = 1_000_000)]
    concurrent_events: u64,
    /// Profiles preloaded; profile updates and reads pick ids uniformly out of these.
    #[arg(long, default_value_t = 1_000_000)]
    profiles: u64,
    /// Point reads on the idle database (closed loop, one thread).
    #[arg(long, default_value_t = 200_000)]
    idle_reads: u64,
    /// Target rate of the concurrent reader in gets/s; 0 = closed loop (as fast as it can).
    #[arg(long, default_value_t = 10_000)]
    read_rate: u64,
    /// Engine cache size in MiB (redb page cache / fjall block cache).
    #[arg(long, default_value_t = 256)]
    cache_mib: u64,
    /// Pause after the preload before measuring idle reads, in seconds.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Parent of the per-run database directory.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Keep the database directory instead of deleting it.
    #[arg(long)]
    keep: bool,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(&args),
        Command::Fsync {
            data_dir,
            iterations,
        } => fsync_probe(&data_dir, iterations),
    }
}

fn run(args: &RunArgs) -> Result<()> {
    let batch = args.batch as u64;
    if batch == 0
        || args.events == 0
        || !args.events.is_multiple_of(batch)
        || !args.concurrent_events.is_multiple_of(batch)
    {
        bail!("--events and --concurrent-events must be multiples of a non-zero --batch");
    }
    let dir = args.data_dir.join(format!(
        "{:?}-b{}-{}",
        args.engine,
        args.batch,
        std::process::id()
    ));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!(
        "== engine={:?} batch={} dir={}",
        args.engine,
        args.batch,
        dir.display()
    );

    let result = bench(args, &dir);

    let size = dir_size(&dir).with_context(|| format!("measuring {}", dir.display()))?;
    println!(
        "disk after close: apparent {:.0} MiB, allocated {:.0} MiB",
        mib(size.apparent),
        mib(size.allocated)
    );
    if !args.keep {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    result
}

/// Everything that needs the database open; it is closed (dropped) on return.
fn bench(args: &RunArgs, dir: &Path) -> Result<()> {
    let engine = store::open(args.engine, dir, args.cache_mib << 20)?;
    let store: &dyn Store = engine.as_ref();
    let mut workload = Workload::new(args.seed, args.profiles);

    let t = Instant::now();
    store.preload_profiles(0..args.profiles, &|id| workload.initial_profile(id))?;
    println!(
        "preload: {} profiles in {:.1} s",
        args.profiles,
        t.elapsed().as_secs_f64()
    );
    // Let background work triggered by the preload (fjall flush/compaction) settle, so the
    // idle measurement is of an idle database.
    std::thread::sleep(Duration::from_secs(args.settle_secs));

    let mut rng = SmallRng::seed_from_u64(args.seed ^ 0x5eed);
    let mut idle = latency_histogram();
    for _ in 0..args.idle_reads {
        let id = rng.gen_range(0..args.profiles);
        let t = Instant::now();
        let found = store.get_profile(id)?;
        idle.record(nanos(t.elapsed()))?;
        if found.is_none() {
            bail!("profile {id} missing after preload");
        }
    }
    print_latency("idle reads", &idle);

    let alone = write_phase(store, &mut workload, args.batch, args.events)?;
    alone.print("write alone (A)");

    if args.concurrent_events > 0 {
        let stop = AtomicBool::new(false);
        let (writes, reads) = std::thread::scope(|s| -> Result<_> {
            let reader = s.spawn(|| reader(store, &stop, args.profiles, args.read_rate, args.seed));
            let writes = write_phase(store, &mut workload, args.batch, args.concurrent_events);
            stop.store(true, Ordering::Relaxed);
            let reads = reader.join().expect("reader thread panicked")?;
            Ok((writes?, reads))
        })?;
        writes.print("write with reader (B-ii)");
        print_latency("reads during writes (B-ii)", &reads);
    }
    Ok(())
}

/// Throughput and per-commit latency of one writer phase.
struct WriteStats {
    events: u64,
    commits: u64,
    wall: Duration,
    commit_latency: Histogram<u64>,
    /// Events/s in each quarter of the phase, to show drift as the database grows.
    quarters: Vec<f64>,
    /// Bytes this process sent to the storage layer during the phase (`/proc/self/io`),
    /// including the engine's background threads.
    bytes_written: u64,
}

impl WriteStats {
    fn print(&self, label: &str) {
        let secs = self.wall.as_secs_f64();
        let ms = |q| self.commit_latency.value_at_quantile(q) as f64 / 1e6;
        let quarters: Vec<String> = self.quarters.iter().map(|q| format!("{q:.0}")).collect();
        println!(
            "{label}: {} events in {} commits, {secs:.1} s -> {:.0} events/s, {:.1} commits/s; \
             commit ms p50 {:.2} p99 {:.2} max {:.2}; events/s by quarter [{}]; \
             storage writes {:.0} MiB = {:.0} bytes/event",
            self.events,
            self.commits,
            self.events as f64 / secs,
            self.commits as f64 / secs,
            ms(0.5),
            ms(0.99),
            self.commit_latency.max() as f64 / 1e6,
            quarters.join(", "),
            mib(self.bytes_written),
            self.bytes_written as f64 / self.events as f64,
        );
    }
}

fn write_phase(
    store: &dyn Store,
    workload: &mut Workload,
    batch: usize,
    events: u64,
) -> Result<WriteStats> {
    let commits = events / batch as u64;
    let quarter = (commits / 4).max(1);
    let mut commit_latency = latency_histogram();
    let mut quarters = Vec::with_capacity(4);
    let written_before = process_write_bytes()?;
    let start = Instant::now();
    let mut quarter_start = start;
    for i in 1..=commits {
        let commit = workload.next_commit(batch);
        let t = Instant::now();
        store.apply(&commit)?;
        commit_latency.record(nanos(t.elapsed()))?;
        if i % quarter == 0 && quarters.len() < 4 {
            let now = Instant::now();
            quarters.push((quarter * batch as u64) as f64 / (now - quarter_start).as_secs_f64());
            quarter_start = now;
        }
    }
    let wall = start.elapsed();
    let bytes_written = process_write_bytes()? - written_before;
    Ok(WriteStats {
        events,
        commits,
        wall,
        commit_latency,
        quarters,
        bytes_written,
    })
}

/// `write_bytes` of `/proc/self/io`: bytes this process caused to be sent to storage.
fn process_write_bytes() -> Result<u64> {
    let io = fs::read_to_string("/proc/self/io").context("reading /proc/self/io")?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .context("no write_bytes in /proc/self/io")?
        .trim()
        .parse()
        .context("parsing write_bytes of /proc/self/io")
}

/// Random profile gets until `stop` is set, paced at `rate` per second (0 = unpaced).
/// Records the service time of each get (not corrected for coordinated omission).
fn reader(
    store: &dyn Store,
    stop: &AtomicBool,
    profiles: u64,
    rate: u64,
    seed: u64,
) -> Result<Histogram<u64>> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xbeef);
    let mut hist = latency_histogram();
    let interval = (rate > 0).then(|| Duration::from_secs(1) / rate as u32);
    let start = Instant::now();
    let mut issued: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Some(interval) = interval {
            let due = start + interval * issued;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let id = rng.gen_range(0..profiles);
        let t = Instant::now();
        let found = store.get_profile(id)?;
        hist.record(nanos(t.elapsed()))?;
        if found.is_none() {
            bail!("profile {id} missing during concurrent reads");
        }
        issued += 1;
    }
    Ok(hist)
}

/// Raw `write + fsync` / `write + fdatasync` cost for a small and a commit-sized append.
fn fsync_probe(data_dir: &Path, iterations: usize) -> Result<()> {
    fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join(format!("fsync-probe-{}", std::process::id()));
    for size in [4 << 10, 400 << 10, 4 << 20] {
        for datasync in [false, true] {
            let mut file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let buf = vec![0xa5u8; size];
            let mut hist = latency_histogram();
            for _ in 0..iterations {
                let t = Instant::now();
                file.write_all(&buf).context("probe write")?;
                if datasync {
                    file.sync_data().context("probe fdatasync")?;
                } else {
                    file.sync_all().context("probe fsync")?;
                }
                hist.record(nanos(t.elapsed()))?;
            }
            drop(file);
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            let call = if datasync { "fdatasync" } else { "fsync" };
            print_latency(&format!("append {} KiB + {call}", size >> 10), &hist);
        }
    }
    Ok(())
}

fn latency_histogram() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

fn print_latency(label: &str, h: &Histogram<u64>) {
    let us = |q| h.value_at_quantile(q) as f64 / 1e3;
    let slower_than =
        |ms: u64| h.count_between(ms * 1_000_000 + 1, h.max().max(ms * 1_000_000 + 1));
    println!(
        "{label}: n={} us p50 {:.1} p99 {:.1} p999 {:.1} max {:.1}; >1 ms: {}, >10 ms: {}",
        h.len(),
        us(0.5),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1e3,
        slower_than(1),
        slower_than(10),
    );
}

struct DirSize {
    apparent: u64,
    allocated: u64,
}

fn dir_size(dir: &Path) -> std::io::Result<DirSize> {
    use std::os::unix::fs::MetadataExt;
    let mut total = DirSize {
        apparent: 0,
        allocated: 0,
    };
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let sub = dir_size(&entry.path())?;
            total.apparent += sub.apparent;
            total.allocated += sub.allocated;
        } else {
            total.apparent += meta.len();
            total.allocated += meta.blocks() * 512;
        }
    }
    Ok(total)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}
