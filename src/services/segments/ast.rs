//! The parsed form of a rule: what is stored, evaluated and analysed.
//!
//! Invariants of an [`Expr`] built by [`parse`](super::parse) (the only constructor the
//! service uses): `And`/`Or` have at least two children; comparisons have been type
//! checked (an event count is only compared with numbers, `>`/`<` only with numbers or
//! strings, `contains` never with `null` or a list); windows are between one minute and
//! [`WINDOW_MS_MAX`](super::WINDOW_MS_MAX); names are not empty; and the tree is no deeper
//! than [`NESTING_DEPTH_MAX`](super::NESTING_DEPTH_MAX) groups and `not`s. A rule read back
//! from storage was written by this code, so it holds them too.
//!
//! `Display` prints the canonical text (lower-case keywords, single spaces, minimal
//! parentheses); parsing it gives back an equal tree.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A boolean rule: the definition of an audience.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expr {
    /// True when any child is true (`a or b or c`).
    Or(Vec<Expr>),
    /// True when every child is true (`a and b and c`).
    And(Vec<Expr>),
    /// The negation of the child (`not a`, and the `not in` / `not contains` forms).
    Not(Box<Expr>),
    /// `left op right`: an operand compared with a literal.
    Compare {
        /// What is read from the profile.
        left: Operand,
        /// The comparison.
        op: CmpOp,
        /// The literal compared with (never a list).
        right: Literal,
    },
    /// `left in [a, b, …]`: the operand equals one of the items.
    In {
        /// What is read from the profile.
        left: Operand,
        /// The candidates (scalars only).
        list: Vec<Literal>,
    },
    /// `left contains needle`: substring of a string, or element of a list.
    Contains {
        /// What is read from the profile.
        left: Operand,
        /// What is looked for (a string, number or boolean).
        needle: Literal,
    },
    /// `event("Name")[.within(d)].exists()`: at least one such event (in the window).
    EventExists {
        /// The event name, matched exactly.
        event: String,
        /// The look-back window; `None` means the profile's whole history.
        within: Option<Window>,
    },
    /// `in_segment("id")`: the profile is a member of another segment.
    InSegment {
        /// The other segment's id.
        id: String,
    },
}

/// What a comparison reads from the profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operand {
    /// A bare name: the computed trait of that name if the profile has one, else the
    /// profile trait (see [`Facts::value`](super::Facts::value)).
    Named(String),
    /// `trait("name")`: the profile trait only.
    Trait(String),
    /// `computed("name")`: the computed trait only.
    Computed(String),
    /// `event("Name")[.within(d)].count()`: how many such events (in the window).
    EventCount {
        /// The event name, matched exactly.
        event: String,
        /// The look-back window; `None` means the profile's whole history.
        within: Option<Window>,
    },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=` (always the negation of `==`)
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

/// A literal written in a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Literal {
    /// `null` (also what a missing value equals).
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A finite decimal number such as `500`, `-3` or `12.5`.
    Number(f64),
    /// A double-quoted string, escapes decoded.
    String(String),
    /// `[a, b, …]` of scalars; only after `in`.
    List(Vec<Literal>),
}

/// A look-back window such as `30d`: kept in the unit it was written in so that it prints
/// back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// How many units (at least one).
    pub amount: u32,
    /// The unit.
    pub unit: WindowUnit,
}

/// The unit of a [`Window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowUnit {
    /// `d`
    Days,
    /// `h`
    Hours,
    /// `m`
    Minutes,
}

impl WindowUnit {
    /// Milliseconds in one unit.
    pub fn ms(self) -> i64 {
        match self {
            WindowUnit::Days => 86_400_000,
            WindowUnit::Hours => 3_600_000,
            WindowUnit::Minutes => 60_000,
        }
    }

    /// The suffix written in rules.
    pub fn suffix(self) -> char {
        match self {
            WindowUnit::Days => 'd',
            WindowUnit::Hours => 'h',
            WindowUnit::Minutes => 'm',
        }
    }
}

impl Window {
    /// The window's length in milliseconds.
    pub fn ms(self) -> i64 {
        i64::from(self.amount) * self.unit.ms()
    }
}

impl CmpOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        }
    }

    /// Whether this operator orders its operands (`>`, `>=`, `<`, `<=`).
    pub fn is_ordering(self) -> bool {
        !matches!(self, CmpOp::Eq | CmpOp::Ne)
    }
}

/// Binding strength, for deciding where `Display` needs parentheses.
fn precedence(expr: &Expr) -> u8 {
    match expr {
        Expr::Or(_) => 1,
        Expr::And(_) => 2,
        _ => 3,
    }
}

/// Writes `child`, parenthesised when it binds no tighter than `min` requires. Equal
/// precedence is parenthesised too, so `(a or b) or c` keeps its shape on a round trip.
fn write_child(f: &mut fmt::Formatter<'_>, child: &Expr, min: u8) -> fmt::Result {
    if precedence(child) < min {
        write!(f, "({child})")
    } else {
        write!(f, "{child}")
    }
}

fn write_joined(f: &mut fmt::Formatter<'_>, items: &[Expr], word: &str, min: u8) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            write!(f, " {word} ")?;
        }
        write_child(f, item, min)?;
    }
    Ok(())
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Or(items) => write_joined(f, items, "or", 2),
            Expr::And(items) => write_joined(f, items, "and", 3),
            // No cosmetic parentheses: they count towards the nesting limit, and printing
            // more than the source had could push a rule at the limit over it.
            Expr::Not(inner) => match inner.as_ref() {
                Expr::In { left, list } => {
                    write!(f, "{left} not in ")?;
                    write_list(f, list)
                }
                Expr::Contains { left, needle } => write!(f, "{left} not contains {needle}"),
                _ => {
                    f.write_str("not ")?;
                    write_child(f, inner, 3)
                }
            },
            Expr::Compare { left, op, right } => write!(f, "{left} {} {right}", op.symbol()),
            Expr::In { left, list } => {
                write!(f, "{left} in ")?;
                write_list(f, list)
            }
            Expr::Contains { left, needle } => write!(f, "{left} contains {needle}"),
            Expr::EventExists { event, within } => {
                write_event(f, event, *within)?;
                f.write_str(".exists()")
            }
            Expr::InSegment { id } => {
                f.write_str("in_segment(")?;
                write_string(f, id)?;
                f.write_str(")")
            }
        }
    }
}

fn write_event(f: &mut fmt::Formatter<'_>, event: &str, within: Option<Window>) -> fmt::Result {
    f.write_str("event(")?;
    write_string(f, event)?;
    f.write_str(")")?;
    match within {
        Some(window) => write!(f, ".within({window})"),
        None => Ok(()),
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (function, name) = match self {
            Operand::Named(name) => return f.write_str(name),
            Operand::Trait(name) => ("trait", name),
            Operand::Computed(name) => ("computed", name),
            Operand::EventCount { event, within } => {
                write_event(f, event, *within)?;
                return f.write_str(".count()");
            }
        };
        write!(f, "{function}(")?;
        write_string(f, name)?;
        f.write_str(")")
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Null => f.write_str("null"),
            Literal::Bool(b) => write!(f, "{b}"),
            // `f64`'s Display never uses an exponent and prints the shortest text that
            // reads back as the same number, so it is valid rule syntax.
            Literal::Number(n) => write!(f, "{n}"),
            Literal::String(s) => write_string(f, s),
            Literal::List(items) => write_list(f, items),
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.amount, self.unit.suffix())
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, items: &[Literal]) -> fmt::Result {
    f.write_str("[")?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    f.write_str("]")
}

/// Writes `s` as a rule string literal, escaping what the grammar requires.
fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c if c.is_control() => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}
