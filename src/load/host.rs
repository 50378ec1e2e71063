//! What the machine paid for a load run: CPU time and peak resident memory of chosen
//! processes (the nodes), and bytes written to a disk — read from Linux's `/proc`, so
//! benchmark records can state CPU per event, memory and disk bytes per event beside the
//! rate.
//!
//! Sampling: CPU and disk counters are read at the start and the end; resident memory is
//! sampled every [`SAMPLE_INTERVAL`] and its peak kept. A process that exits mid-run keeps
//! what was last read of it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::LoadError;

/// How often resident memory is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// Counters of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ProcessSample {
    /// User + system CPU time, clock ticks.
    cpu_ticks: u64,
    /// Resident set size, bytes.
    rss_bytes: u64,
}

/// What one watched process used during the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessCost {
    /// The process id.
    pub pid: u32,
    /// CPU time used during the run, seconds.
    pub cpu_seconds: f64,
    /// Largest resident set size seen, bytes.
    pub rss_peak_bytes: u64,
    /// Resident set size at the end, bytes.
    pub rss_end_bytes: u64,
}

/// What the watched processes and disk used during a run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostCost {
    /// Per watched process.
    pub processes: Vec<ProcessCost>,
    /// Bytes written to the watched disk during the run (by anyone), if one was named.
    pub disk_written_bytes: Option<u64>,
    /// The disk's name, e.g. `vda`.
    pub disk: Option<String>,
}

impl HostCost {
    /// CPU seconds of every watched process together.
    pub fn cpu_seconds(&self) -> f64 {
        self.processes.iter().map(|p| p.cpu_seconds).sum()
    }
}

/// Watches processes and a disk while a run goes on.
pub struct HostProbe {
    pids: Vec<u32>,
    disk: Option<String>,
    start: BTreeMap<u32, ProcessSample>,
    disk_start: Option<u64>,
    peaks: Arc<Mutex<BTreeMap<u32, u64>>>,
    sampler: tokio::task::JoinHandle<()>,
    ticks_per_second: u64,
}

impl HostProbe {
    /// Starts watching `pids` and, if named, the disk `disk` (a name in `/proc/diskstats`).
    pub fn start(pids: &[u32], disk: Option<&str>) -> Result<HostProbe, LoadError> {
        let mut start = BTreeMap::new();
        for &pid in pids {
            let sample = read_process(pid).ok_or_else(|| {
                LoadError::InvalidOptions(format!(
                    "--watch-pid {pid}: no such process readable in /proc (Linux only)"
                ))
            })?;
            start.insert(pid, sample);
        }
        let disk_start = match disk {
            Some(name) => Some(read_disk_written(name).ok_or_else(|| {
                LoadError::InvalidOptions(format!(
                    "--disk {name}: not a device in /proc/diskstats (see `lsblk`)"
                ))
            })?),
            None => None,
        };
        let peaks = Arc::new(Mutex::new(
            start
                .iter()
                .map(|(&pid, s)| (pid, s.rss_bytes))
                .collect::<BTreeMap<u32, u64>>(),
        ));
        let sampled = Arc::clone(&peaks);
        let watched = pids.to_vec();
        let sampler = tokio::spawn(async move {
            loop {
                tokio::time::sleep(SAMPLE_INTERVAL).await;
                let mut peaks = sampled.lock().unwrap_or_else(|p| p.into_inner());
                for &pid in &watched {
                    if let Some(sample) = read_process(pid) {
                        let peak = peaks.entry(pid).or_default();
                        *peak = (*peak).max(sample.rss_bytes);
                    }
                }
            }
        });
        Ok(HostProbe {
            pids: pids.to_vec(),
            disk: disk.map(str::to_owned),
            start,
            disk_start,
            peaks,
            sampler,
            ticks_per_second: clock_ticks_per_second(),
        })
    }

    /// Stops watching and returns what was used since [`HostProbe::start`].
    pub fn finish(self) -> HostCost {
        self.sampler.abort();
        let peaks = self.peaks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let processes = self
            .pids
            .iter()
            .map(|&pid| {
                let first = self.start.get(&pid).copied().unwrap_or_default();
                let last = read_process(pid).unwrap_or(first);
                ProcessCost {
                    pid,
                    cpu_seconds: last.cpu_ticks.saturating_sub(first.cpu_ticks) as f64
                        / self.ticks_per_second as f64,
                    rss_peak_bytes: peaks.get(&pid).copied().unwrap_or(0).max(last.rss_bytes),
                    rss_end_bytes: last.rss_bytes,
                }
            })
            .collect();
        let disk_written_bytes = match (&self.disk, self.disk_start) {
            (Some(name), Some(start)) => {
                read_disk_written(name).map(|end| end.saturating_sub(start))
            }
            _ => None,
        };
        HostCost {
            processes,
            disk_written_bytes,
            disk: self.disk,
        }
    }
}

/// CPU ticks and resident memory of `pid`, from `/proc/PID/stat` and `/proc/PID/status`.
fn read_process(pid: u32) -> Option<ProcessSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count fields after
    // its closing parenthesis. utime and stime are fields 14 and 15 (1-based).
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0);
    Some(ProcessSample {
        cpu_ticks: utime + stime,
        rss_bytes: rss_kib * 1024,
    })
}

/// Bytes written to disk `name` since boot (sectors written × 512, `/proc/diskstats`).
fn read_disk_written(name: &str) -> Option<u64> {
    let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
    stats.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(2) == Some(&name))
            .then(|| fields.get(9)?.parse::<u64>().ok())
            .flatten()
            .map(|sectors| sectors * 512)
    })
}

/// The kernel's clock ticks per second (`sysconf(_SC_CLK_TCK)`; 100 on Linux).
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf takes and returns plain integers.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watching_this_process_counts_its_cpu_and_memory() {
        let me = std::process::id();
        let probe = HostProbe::start(&[me], None).expect("this process is readable");
        // Burn a little CPU so there is something to count.
        let mut x = 0_u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let cost = probe.finish();
        assert_eq!(cost.processes.len(), 1);
        assert!(cost.processes[0].rss_peak_bytes > 0);
        assert!(cost.cpu_seconds() > 0.0, "{cost:?}");
    }

    #[tokio::test]
    async fn unknown_processes_and_disks_are_refused_with_the_flag_named() {
        let error = HostProbe::start(&[u32::MAX], None).err().expect("refused");
        assert!(error.to_string().contains("--watch-pid"), "{error}");
        let error = HostProbe::start(&[], Some("no-such-disk"))
            .err()
            .expect("refused");
        assert!(error.to_string().contains("--disk"), "{error}");
    }
}
