//! Computed traits: per-profile values derived from a profile's events — counts, sums,
//! averages, extremes, first/last values, modes and distinct sets, all-time or over a
//! sliding window of days. Pure: no I/O, no clock (the read time is passed in).
//!
//! What this module owns:
//! - [`TraitDef`], the definition as written under `[[computed_traits]]` in the node
//!   configuration, and [`validate_defs`], which lists every problem with its field;
//! - [`ProfileTraits`], the compact per-profile state, with [`ProfileTraits::observe`]
//!   (fold in one event), [`ProfileTraits::merge`] (fold in another profile's state, when
//!   identity resolution merges two profiles) and [`ProfileTraits::values`] (render);
//! - [`default_defs`], the traits the scenario ships with.
//!
//! Invariants:
//! - **merge is exact**: observing two profiles' events separately then merging gives
//!   the same state, byte for byte, as observing all events on one profile, in any order.
//!   Every accumulator is a commutative, associative fold over per-event contributions:
//!   numbers are summed in fixed point ([`value`]), first/last order by
//!   `(timestamp_ms, seq)`, bounded sets keep the smallest values (a property of the
//!   value, not of arrival order), and windows prune relative to the newest day held;
//! - **state is bounded** regardless of event count: O(1) per all-time numeric trait, at
//!   most [`DISTINCT_VALUES_MAX`] values per all-time distinct trait, at most
//!   `window_days` daily buckets per windowed trait, each distinct bucket holding at most
//!   [`DISTINCT_DAY_VALUES_MAX`] values, and strings cut to [`VALUE_BYTES_MAX`] bytes;
//! - **deterministic**: every map is a `BTreeMap`, ties are broken by value order, and
//!   the output never depends on hash order or on the order events arrived in.
//!
//! Caveat: windows prune relative to the newest event day held, not the wall clock, so an
//! event dated far in the future expires the window's older days early. Ingestion corrects
//! client clock skew, which keeps such timestamps rare.

mod acc;
mod def;
mod defaults;
mod path;
mod profile;
mod state;
mod validate;
pub mod value;

#[cfg(test)]
mod config_tests;
#[cfg(test)]
mod journey_tests;
#[cfg(test)]
mod kind_tests;
#[cfg(test)]
mod merge_tests;
#[cfg(test)]
mod test_support;

pub use def::{EventFilter, EventNames, TraitDef, TraitKind};
pub use defaults::default_defs;
pub use path::{ARRAY_ITEMS_MAX, PATH_CHARS_MAX, PATH_STEPS_MAX, PropertyPath};
pub use profile::ProfileTraits;
pub use state::{DISTINCT_DAY_VALUES_MAX, DISTINCT_VALUES_MAX};
pub use validate::{
    DEFS_MAX, DISTINCT_WINDOW_DAYS_MAX, EVENT_NAME_CHARS_MAX, EVENT_NAMES_MAX, NAME_CHARS_MAX,
    WINDOW_DAYS_MAX, validate_defs,
};
pub use value::{NUMBER_ABS_MAX, VALUE_BYTES_MAX};

/// A computed-trait definition that cannot be used. Neither variant is retryable: both
/// are configuration mistakes, fixed by editing `[[computed_traits]]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraitError {
    /// A property path that does not parse; says why and how to write it.
    #[error("property path {path:?}: {reason}")]
    Path {
        /// The path as written.
        path: String,
        /// What is wrong, with the fix.
        reason: String,
    },
    /// Definitions that parse but break a rule: one line each, naming the field
    /// (`computed_traits[2].window_days`) and the fix.
    #[error("invalid computed traits:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}
