//! External programs some tests drive (Debian's `prometheus`, `chromium`): finding them,
//! and running them as process groups this test started and kills.
//!
//! A missing tool skips its test with a printed reason under a plain `cargo test`, and
//! fails it when `CI` is set: CI (`.ci/run`) installs every tool, so a skip there would
//! hide a test that never ran.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The first of `names` found on `PATH` (or in `/usr/sbin`, `/usr/bin`); `None` (the
/// test should return) when none is and `CI` is unset; panics when `CI` is set.
pub fn required_tool(names: &[&str], package: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")]);
    let found = names.iter().find_map(|name| {
        dirs.iter().map(|dir| dir.join(name)).find(|file| {
            file.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    });
    if found.is_none() {
        let reason = format!(
            "none of {names:?} is installed (Debian package `{package}`; .ci/run installs it)"
        );
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set, so this test must run: {reason}"
        );
        println!("skipping: {reason}");
    }
    found
}

/// A child process in its own process group, killed with the whole group on drop (a
/// browser forks helpers; a kill of the group reaches them and nothing else).
pub struct Group {
    child: Option<Child>,
}

impl Group {
    /// Spawns `command` as the leader of a new process group.
    pub fn spawn(mut command: Command) -> Group {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        Group { child: Some(child) }
    }

    /// Waits for the leader to exit within `deadline`; kills the group when it does not
    /// (before reaping the leader, so the group id is still this test's).
    /// Returns the exit code (`None` if killed or signalled).
    pub fn wait(&mut self, deadline: Duration) -> Option<i32> {
        let end = Instant::now() + deadline;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                // Reaped: the group id may no longer be ours to signal (its helpers exit
                // with their parent's pipes).
                self.child = None;
                return status.code();
            }
            if Instant::now() > end {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The leader's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL to the whole group this test started, then reaps the leader.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = child.id() as i32;
            // SAFETY: kill(2) with a negative pid signals the process group we created.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `target/test-artifacts/`, created: where tests keep what a person may want to look at.
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// A free loopback port, read back from a bind to port 0 (then released for the tool
/// that takes it; tools that cannot bind port 0 themselves need this).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}
