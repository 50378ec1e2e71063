//! CDP services — computed traits, real-time segments, recommendations — each an isolated,
//! supervised consumer of the committed event feed with its own cursor and derived state.
//!
//! Being built; see the submodules.

pub mod event;
