//! CDP services — computed traits, real-time segments, recommendations — each an isolated,
//! supervised consumer of the committed event feed with its own cursor and derived state.
//!
//! The services — `computed` (computed traits), `audience` (segment membership) and
//! `recommendations` — run under the `supervisor`, each on its own `db`; the pure models
//! they wrap live in `traits`, `segments` and `recommend`.

pub mod audience;
pub mod computed;
pub mod db;
pub mod event;
pub mod recommend;
pub mod recommendations;
pub mod segments;
pub mod supervisor;
pub mod traits;
