//! Pure data and rules: events, identities, profiles and identity resolution.
//!
//! Nothing in `model` does I/O or reads a clock; every function here can be tested as a
//! table and gives the same answer on every replica.

pub mod audit;
pub mod block;
pub mod command;
pub mod event;
pub mod identity;
pub mod profile;
pub mod resolve;
pub mod time;
pub mod validate;
