//! The segment layer's one error type, and how positions and pest's failures become
//! messages a marketer can act on.
//!
//! Every error that points into the rule carries a [`Position`]: line and column (1-based,
//! columns counted in characters) and an excerpt of the line with a caret under the spot.
//! pest reports what it expected as grammar rule names; [`expected_words`] translates each
//! into plain words, so no `Rule::cmp_op` ever reaches a user. None of these errors is
//! worth retrying: the rule text has to change.

use std::fmt;

use pest::error::{ErrorVariant, InputLocation};

use super::parse::Rule;
use super::{NESTING_DEPTH_MAX, RULE_TEXT_BYTES_MAX};

/// Widest excerpt shown, in characters; longer lines are cut around the column.
const EXCERPT_CHARS_MAX: usize = 72;

/// Why a rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// The rule text is longer than [`RULE_TEXT_BYTES_MAX`].
    #[error(
        "the rule is {bytes} bytes long; the limit is {RULE_TEXT_BYTES_MAX} bytes: split it \
         into smaller segments and combine them with in_segment(\"...\")"
    )]
    TooLong {
        /// The rule's length in bytes.
        bytes: usize,
    },
    /// Parentheses and `not`s nest deeper than [`NESTING_DEPTH_MAX`].
    #[error(
        "{at}: the rule nests deeper than {NESTING_DEPTH_MAX} levels (parentheses and `not`); \
         simplify it or split it into segments combined with in_segment(\"...\")\n{}",
        at.excerpt
    )]
    TooDeep {
        /// Where the limit was crossed.
        at: Position,
    },
    /// The text does not follow the grammar.
    #[error("{at}: expected {expected}\n{}", at.excerpt)]
    Syntax {
        /// Where parsing stopped.
        at: Position,
        /// What would have been accepted there, in words.
        expected: String,
    },
    /// The text parses but means nothing sensible (a type mismatch, a bad window, an
    /// unknown method…).
    #[error("{at}: {message}\n{}", at.excerpt)]
    Invalid {
        /// The offending part of the rule.
        at: Position,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl SegmentError {
    /// Where in the rule the problem is, when it is at one place.
    pub fn position(&self) -> Option<&Position> {
        match self {
            SegmentError::TooLong { .. } => None,
            SegmentError::TooDeep { at }
            | SegmentError::Syntax { at, .. }
            | SegmentError::Invalid { at, .. } => Some(at),
        }
    }

    /// An [`Invalid`](SegmentError::Invalid) error at byte `offset` of `text`.
    pub(super) fn invalid(text: &str, offset: usize, message: impl Into<String>) -> Self {
        SegmentError::Invalid {
            at: Position::locate(text, offset),
            message: message.into(),
        }
    }
}

/// A place in the rule text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The line (or the part of it around the column) and a caret line under it.
    pub excerpt: String,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

impl Position {
    /// The position of byte `offset` in `text` (clamped to the text, and back to a
    /// character boundary).
    pub fn locate(text: &str, offset: usize) -> Position {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
        let line_text = text[line_start..line_end].trim_end_matches('\r');
        let column = text[line_start..offset].chars().count() + 1;
        Position {
            line: before.matches('\n').count() + 1,
            column,
            excerpt: excerpt(line_text, column),
        }
    }
}

/// `line_text` cut to at most [`EXCERPT_CHARS_MAX`] characters around `column`, with a
/// caret under it. Tabs are kept in the caret line so it lines up.
fn excerpt(line_text: &str, column: usize) -> String {
    let chars: Vec<char> = line_text.chars().collect();
    let caret_at = column - 1;
    let start = caret_at.saturating_sub(EXCERPT_CHARS_MAX / 2);
    let start = start.min(chars.len().saturating_sub(EXCERPT_CHARS_MAX));
    let end = (start + EXCERPT_CHARS_MAX).min(chars.len());
    let lead = if start > 0 { "…" } else { "" };
    let tail = if end < chars.len() { "…" } else { "" };
    let shown: String = chars[start..end].iter().collect();
    let pad: String = chars[start..caret_at.min(chars.len())]
        .iter()
        .map(|&c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    let lead_pad = if start > 0 { " " } else { "" };
    format!("  {lead}{shown}{tail}\n  {lead_pad}{pad}^")
}

/// Turns pest's failure into a [`SegmentError::Syntax`] in plain words.
pub(super) fn from_pest(text: &str, error: &pest::error::Error<Rule>) -> SegmentError {
    let offset = match error.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((start, _)) => start,
    };
    let expected = match &error.variant {
        ErrorVariant::ParsingError {
            positives,
            negatives,
        } if text.as_bytes().get(offset) == Some(&b'\\')
            && positives.contains(&Rule::string_end) =>
        {
            // Inside a string, a backslash that does not start a known escape stops
            // the (atomic) string body right there: name the escape, not the quote.
            rule_words(Rule::escape).to_string()
        }
        ErrorVariant::ParsingError {
            positives,
            negatives,
        } => {
            let reserved_here = negatives.contains(&Rule::reserved)
                || (reserved_word_at(text, offset)
                    && positives.iter().any(|&rule| expects_a_name(rule)));
            expected_words(positives, reserved_here)
        }
        ErrorVariant::CustomError { message } => message.clone(),
    };
    SegmentError::Syntax {
        at: Position::locate(text, offset),
        expected,
    }
}

/// Whether the word starting at byte `offset` is one of the reserved words. (`ident` is
/// atomic, so pest does not report the `!reserved` check that refused it.)
fn reserved_word_at(text: &str, offset: usize) -> bool {
    let rest = text.get(offset..).unwrap_or("");
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let word = rest[..end].to_ascii_lowercase();
    [
        "and", "or", "not", "in", "contains", "true", "false", "null",
    ]
    .contains(&word.as_str())
}

/// Whether `rule` is where a trait name could have stood.
fn expects_a_name(rule: Rule) -> bool {
    matches!(
        rule_words(rule),
        w if w.starts_with("a condition") || w == "a trait name"
    )
}

/// "A, B or C" from the rules pest would have accepted, plus a note when what stood
/// there was a reserved word.
pub(super) fn expected_words(positives: &[Rule], found_reserved: bool) -> String {
    let mut words: Vec<&str> = Vec::new();
    for &rule in positives {
        let word = rule_words(rule);
        if !words.contains(&word) {
            words.push(word);
        }
    }
    // pest's order depends on how far each alternative got; sort so a rule always
    // gets the same message (backquoted words first, then plain ones).
    words.sort_unstable();
    let mut text = match words.split_last() {
        None => "something else".to_string(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    };
    if found_reserved {
        text.push_str(
            " (found a reserved word: and, or, not, in, contains, true, false and null \
             cannot be trait names; write trait(\"name\") or computed(\"name\") instead)",
        );
    }
    text
}

/// What a grammar rule means to someone writing a rule.
fn rule_words(rule: Rule) -> &'static str {
    match rule {
        Rule::rule_text
        | Rule::expr
        | Rule::and_expr
        | Rule::unary
        | Rule::negation
        | Rule::group
        | Rule::condition
        | Rule::comparison
        | Rule::segment_test
        | Rule::event_test => {
            "a condition (such as plan == \"pro\", event(\"Order Completed\").exists() or \
             in_segment(\"vip\"))"
        }
        Rule::value_operand | Rule::ident | Rule::trait_call | Rule::computed_call => {
            "a trait name"
        }
        Rule::comparison_tail | Rule::cmp_op | Rule::in_op | Rule::contains_op => {
            "a comparison operator (==, !=, >, >=, <, <=, in, contains)"
        }
        Rule::literal | Rule::scalar => "a value (a number, a \"string\", true, false or null)",
        Rule::list => "a [list] of values",
        Rule::number => "a number",
        Rule::string | Rule::string_inner => "a \"double-quoted string\"",
        Rule::escape => "an escape (\\\", \\\\, \\n, \\t, \\r or \\u{hex})",
        Rule::string_end => "a closing \" (strings end on the line they start)",
        Rule::method_call | Rule::dot => "a method such as .within(30d), .count() or .exists()",
        Rule::method_name => "a method name (within, count or exists)",
        Rule::method_arg => "a duration such as 30d, 12h or 90m",
        Rule::reserved => "a reserved word",
        Rule::kw_or => "`or`",
        Rule::kw_and => "`and`",
        Rule::kw_not => "`not`",
        Rule::kw_in => "`in`",
        Rule::kw_contains => "`contains`",
        Rule::kw_true => "`true`",
        Rule::kw_false => "`false`",
        Rule::kw_null => "`null`",
        Rule::kw_trait => "`trait`",
        Rule::kw_computed => "`computed`",
        Rule::kw_event => "`event`",
        Rule::kw_in_segment => "`in_segment`",
        Rule::lparen => "`(`",
        Rule::rparen => "`)`",
        // `[` only ever opens a list.
        Rule::lbracket => "a [list] of values",
        Rule::rbracket => "`]`",
        Rule::comma => "`,`",
        Rule::EOI => "the end of the rule",
        // Silent rules: pest never reports them.
        Rule::WHITESPACE | Rule::plain_char | Rule::ident_char => "a character",
    }
}
