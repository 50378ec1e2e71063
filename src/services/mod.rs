//! CDP services — computed traits, real-time segments, recommendations — each an isolated,
//! supervised consumer of the committed event feed with its own cursor and derived state.
//!
//! `audience` (segment membership), `computed` (computed traits) and the supervisor are
//! wired into the node; the pure models live in `segments`, `traits` and `recommend`.

pub mod audience;
pub mod computed;
pub mod db;
pub mod event;
pub mod recommend;
pub mod recommendations;
pub mod segments;
pub mod supervisor;
pub mod traits;
