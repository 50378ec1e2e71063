//! Tandem: a customer data platform that stays up.
//!
//! The crate is layered bottom-up; each layer only uses the ones above it in this list:
//! - [`model`]: events, identities, profiles, identity resolution — pure rules, no I/O;
//! - [`store`]: the embedded fjall store — the log of committed batches and the state
//!   machine that derives profiles from it;
//! - [`cluster`]: openraft adapters — log store, state machine, snapshots, peer network;
//! - [`node`]: a running node — its Raft member and the write pipeline (admission, group
//!   commit, forwarding to the leader) between the API and the replicated log;
//! - [`api`]: the HTTP API (Segment-compatible ingestion, profile reads, health, admin);
//! - [`gateway`]: the load-balancing HTTP front over several nodes (tower's p2c balancer);
//! - [`config`]: the configuration file, environment overrides and their validation;
//! - [`load`]: the synthetic workload generator and the acknowledged-event checker;
//! - [`cli`]: the `tandem` command line.
//!
//! `docs/architecture.md` is the guided tour.

pub mod api;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod gateway;
pub mod load;
pub mod log;
pub mod model;
pub mod node;
pub mod services;
pub mod store;
