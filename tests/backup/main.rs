//! Backups end to end, on real processes and real files: a node ingests, backs up into a
//! local repository, and `tandem restore` builds a new cluster from it — equal state and
//! services hashes at the backup's log position, every acknowledged event present
//! exactly once, and the old cluster and the restored one refusing each other's traffic.
//!
//! One test binary; each module is one concern.

#[path = "../support/mod.rs"]
mod support;

mod common;

mod corruption;
mod crash;
mod fault_proxy;
mod gc;
mod roundtrip;
mod s3;
mod s3_faults;
mod schedule;
mod verify;
