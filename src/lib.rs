//! Tandem: a customer data platform that stays up.
//!
//! The crate is layered bottom-up; each layer only uses the ones above it in this list
//! (`docs/architecture.md` is the guided tour, in the same order):
//! - [`clock`]: the wall clock, read at the edges and passed down; [`crash`]: named crash
//!   points a test can make the process die at (nothing unless armed by the environment);
//! - [`tls`]: rustls with the ring provider — PEM certificates and owner-only key files,
//!   certificate dates, the listeners' and clients' TLS configurations, and the local CA
//!   `tandem up` issues (uses nothing else of the crate);
//! - [`model`]: events, blocks, identities, profiles, identity resolution — pure rules, no
//!   I/O;
//! - [`log`]: the segmented append-only log — the Raft log and the event store at once;
//! - [`store`]: the state derived from the log (fjall) and the deterministic state machine,
//!   the dedup index, event bodies read back from the log;
//! - [`cluster`]: openraft adapters — log store, state machine, snapshots, peer network;
//! - [`load`]: the synthetic workload generator, the acknowledged-event checker and the
//!   read benchmark (its workload also feeds the services' benchmarks and tests);
//! - [`services`]: the CDP services (computed traits, segments, recommendations), each a
//!   supervised consumer of the change feed; they give snapshots their state through
//!   [`cluster::derived::DerivedState`];
//! - [`config`]: the configuration file, environment overrides and their validation;
//! - [`node`]: a running node — its Raft member, the write pipeline (admission, duplicate
//!   screening, group commit, forwarding to the leader), read consistency, log upkeep,
//!   the built-in alert evaluator and its delivery;
//! - [`backup`]: backups — a node's checkpoint uploaded as compressed, encrypted,
//!   content-addressed chunks with an authenticated manifest; verify, retention and GC;
//!   restore into a new cluster. After [`node`] because a backup is taken of a running
//!   node and a restore writes a node's data directory; before [`api`], which serves it;
//! - [`api`]: the HTTP API (Segment-compatible ingestion, profile reads, health, admin) and
//!   the receiving side of peer RPCs;
//! - [`gateway`]: the load-balancing HTTP front over several nodes (tower's p2c balancer;
//!   uses nothing else of the crate but [`tls`], for `https://` nodes);
//! - [`cli`]: the `tandem` command line.

pub mod api;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod crash;
pub mod gateway;
pub mod load;
pub mod log;
pub mod model;
pub mod node;
pub mod services;
pub mod store;
pub mod tls;
