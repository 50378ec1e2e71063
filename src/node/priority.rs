//! CPU priorities of a node's threads: which work yields when the cores are contended.
//!
//! On Linux a nice value belongs to a thread, and a thread inherits its creator's. The
//! plan, from most to least urgent:
//!
//! | nice | threads | why |
//! |---|---|---|
//! | 0 | async workers (HTTP, Raft), read threads (`tandem-read-N`), apply, the Raft log's fsync thread | a read waits on these: its request and reply cross the async workers, a linearizable read waits for apply |
//! | [`INGEST_NICE`] | ingest parsing (`tandem-ingest-N`): JSON parse and validation of write bodies | the heaviest per-request work; a read never waits on it, and at a contended moment an ingest request can wait a little longer |
//! | [`STORAGE_NICE`] | the store's background flushes and compactions (`fjall:worker`), and the scans that fill the filters of known identities and recent dedup keys after the store opens (`tandem-filters`; after a snapshot install it runs at the installing thread's priority) | the largest share of a node's CPU under ingest, and nothing waits on it until memtables pile up — then the storage engine stalls writers, and apply, at which point these threads have the CPU to themselves again |
//! | 10 | the CDP services (`services::supervisor::SERVICE_NICE`), and their databases' flush and compaction threads (`fjall:worker`, spawned when each service's database opens) | derived state that may lag; while ingest contends for the CPU they also sleep between batches (`services::supervisor::yielding`) |
//!
//! A nice value only matters while threads compete for a core: on an idle machine every
//! thread runs at once, so ingest alone reaches the same rate at any nice. Lowering a
//! priority needs no privilege; raising one back does, so a thread is never niced and then
//! restored — niced threads are created for the purpose ([`spawn_niced`]).

use std::io;

/// Nice value of the ingest parsing threads.
pub const INGEST_NICE: i32 = 2;
/// Nice value of the store's background (flush and compaction) threads.
pub const STORAGE_NICE: i32 = 5;

/// Lowers the calling thread's priority to `nice` (a higher value yields more). Fails
/// only on a platform without per-thread nice values, or if the value is out of range.
pub fn nice_this_thread(nice: i32) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take and return plain integers; PRIO_PROCESS with
        // a thread id changes only that thread.
        let outcome = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
        };
        if outcome != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = nice;
        Err(io::Error::other("per-thread nice values are Linux only"))
    }
}

/// The calling thread's nice value.
pub fn this_thread_nice() -> io::Result<i32> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: as above; getpriority can return -1 legitimately, so errno is cleared
        // first and checked after.
        unsafe {
            *libc::__errno_location() = 0;
            let tid = libc::gettid();
            let nice = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
            if nice == -1 && *libc::__errno_location() != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(nice)
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(io::Error::other("per-thread nice values are Linux only"))
    }
}

/// Runs `work` on a new thread named `name` whose priority is lowered to `nice` first,
/// and returns its result: every thread `work` spawns inherits that priority (this is
/// how the storage engine's workers are niced — they are spawned when it opens). If the
/// priority cannot be lowered, `work` still runs and a warning says so.
pub fn spawn_niced<T: Send + 'static>(
    name: &str,
    nice: i32,
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let label = name.to_owned();
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            if let Err(error) = nice_this_thread(nice) {
                tracing::warn!(thread = label, nice, %error, "could not lower a thread's priority");
            }
            work()
        })?;
    thread
        .join()
        .map_err(|_| io::Error::other(format!("the thread {name:?} panicked")))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn threads_spawned_by_niced_work_inherit_its_priority() {
        let before = this_thread_nice().expect("nice");
        let target = (before + 3).min(19);
        let (own, child) = spawn_niced("niced-test", target, || {
            let own = this_thread_nice().expect("own nice");
            let child = std::thread::spawn(|| this_thread_nice().expect("child nice"))
                .join()
                .expect("child");
            (own, child)
        })
        .expect("spawned");
        assert_eq!((own, child), (target, target));
        // The caller's own priority is untouched.
        assert_eq!(this_thread_nice().expect("nice"), before);
    }
}
