//! The segment (audience) rule language: parsing, the stored form, evaluation and the
//! static facts the segment service needs about a rule.
//!
//! ```text
//! lifetime_value > 500 and event("Order Completed").within(30d).count() >= 2
//!     and not in_segment("churned")
//! ```
//!
//! This module owns the language and nothing else: it does no I/O and reads no clock.
//! - [`parse`] turns text into an [`Expr`] (grammar in `grammar.pest`, tree building and
//!   type checks in `build.rs`), refusing with a [`SegmentError`] that names the line,
//!   column and what was expected, with a caret excerpt. Input is bounded before pest sees
//!   it: at most [`RULE_TEXT_BYTES_MAX`] bytes and [`NESTING_DEPTH_MAX`] nested
//!   parentheses and `not`s, so parsing (which recurses) and evaluation cannot exhaust the
//!   stack.
//! - [`Expr`] is what the service stores (serde) and prints back as canonical text
//!   (`Display`); `parse(&expr.to_string())` gives back `expr`.
//! - [`evaluate`] is a pure function of a rule and a [`Facts`] view of one profile; time
//!   enters only through the windows the facts answer for, so the caller fixes "now".
//! - [`Expr::segment_refs`], [`check_cycles`], [`Expr::is_time_dependent`],
//!   [`Expr::event_names`] and [`Expr::max_window_ms`] tell the service what a rule
//!   depends on.
//!
//! The language reference, including the missing-value semantics, is `docs/segments.md`.

mod analysis;
mod ast;
mod build;
mod error;
mod eval;
mod parse;

#[cfg(test)]
mod tests;

pub use analysis::check_cycles;
pub use ast::{CmpOp, Expr, Literal, Operand, Window, WindowUnit};
pub use error::{Position, SegmentError};
pub use eval::{Facts, evaluate};
pub use parse::parse;

/// Longest rule text accepted, in bytes (4 KiB). Larger audiences are built from smaller
/// segments with `in_segment(...)`.
pub const RULE_TEXT_BYTES_MAX: usize = 4096;

/// Deepest nesting accepted: parentheses groups and prefix `not`s enclosing one another.
pub const NESTING_DEPTH_MAX: usize = 32;

/// Longest window accepted in `.within(...)`, in days.
pub const WINDOW_DAYS_MAX: i64 = 400;

/// Longest window accepted in `.within(...)`, in milliseconds.
pub const WINDOW_MS_MAX: i64 = WINDOW_DAYS_MAX * 86_400_000;
