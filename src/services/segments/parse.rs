//! The entry point: bound the input, run the pest grammar, build the tree.
//!
//! pest's parser recurses once per parenthesised group and per prefix `not`, so the
//! nesting is measured with a cheap scan *before* pest runs: an input of 4 KiB of `(`
//! must be refused, not allowed to overflow the stack.

use pest::Parser;

use super::ast::Expr;
use super::build::Builder;
use super::error::{self, Position, SegmentError};
use super::{NESTING_DEPTH_MAX, RULE_TEXT_BYTES_MAX};

/// The pest parser generated from `grammar.pest`.
#[derive(pest_derive::Parser)]
#[grammar = "services/segments/grammar.pest"]
pub(super) struct RuleParser;

/// Parses rule text into an [`Expr`], or says precisely what is wrong with it.
///
/// ```
/// use tandem::services::segments::parse;
/// let rule = parse(r#"trait("plan") == "pro" OR orders_count >= 3"#).unwrap();
/// assert_eq!(rule.to_string(), r#"trait("plan") == "pro" or orders_count >= 3"#);
/// ```
pub fn parse(text: &str) -> Result<Expr, SegmentError> {
    if text.len() > RULE_TEXT_BYTES_MAX {
        return Err(SegmentError::TooLong { bytes: text.len() });
    }
    check_depth(text)?;
    let mut pairs =
        RuleParser::parse(Rule::rule_text, text).map_err(|e| error::from_pest(text, &e))?;
    let builder = Builder::new(text);
    let rule_text = builder.next(&mut pairs, 0)?;
    let mut inner = rule_text.into_inner();
    let expr = builder.next(&mut inner, 0)?;
    builder.expr(expr)
}

/// One level of brackets in [`check_depth`]'s scan.
struct Level {
    /// Depth of the enclosing text: groups and prefix `not`s around this level.
    base: usize,
    /// Prefix `not`s seen at this level since the last `and`/`or`.
    nots: usize,
}

/// What the previous significant token was, to tell a prefix `not` from the infix one in
/// `x not in [...]`, and a group's `(` from a call's `event(`.
#[derive(PartialEq)]
enum Prev {
    /// Start of text, `(`, `and`, `or` or a prefix `not`: a condition starts next.
    ConditionStart,
    /// Anything else.
    Other,
}

/// Refuses text whose groups and prefix `not`s nest deeper than [`NESTING_DEPTH_MAX`].
/// A rough lexer: strings are skipped, words and punctuation classified; anything it
/// misreads is caught by the grammar afterwards, and it never under-counts a group or a
/// `not` that pest would recurse into.
fn check_depth(text: &str) -> Result<(), SegmentError> {
    let mut levels = vec![Level { base: 0, nots: 0 }];
    let mut prev = Prev::ConditionStart;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let depth_here = levels.last().map_or(0, |l| l.base + l.nots);
        match c {
            '"' => {
                skip_string(&mut chars);
                prev = Prev::Other;
            }
            '(' if prev == Prev::ConditionStart => {
                let depth = depth_here + 1;
                if depth > NESTING_DEPTH_MAX {
                    return Err(too_deep(text, at));
                }
                levels.push(Level {
                    base: depth,
                    nots: 0,
                });
            }
            '(' => levels.push(Level {
                base: depth_here,
                nots: 0,
            }),
            ')' => {
                if levels.len() > 1 {
                    levels.pop();
                }
                prev = Prev::Other;
            }
            c if c.is_ascii_alphanumeric() || c == '_' => {
                let mut end = at + c.len_utf8();
                while let Some(&(i, d)) = chars.peek() {
                    if !(d.is_ascii_alphanumeric() || d == '_') {
                        break;
                    }
                    end = i + d.len_utf8();
                    chars.next();
                }
                let word = &text[at..end];
                prev = scan_word(word, prev, &mut levels).map_err(|()| too_deep(text, at))?;
            }
            c if c.is_whitespace() => {}
            _ => prev = Prev::Other,
        }
    }
    Ok(())
}

/// Accounts for one word in [`check_depth`]; `Err` when a prefix `not` is one too deep.
fn scan_word(word: &str, prev: Prev, levels: &mut [Level]) -> Result<Prev, ()> {
    let Some(level) = levels.last_mut() else {
        return Ok(Prev::Other);
    };
    if word.eq_ignore_ascii_case("and") || word.eq_ignore_ascii_case("or") {
        level.nots = 0;
        return Ok(Prev::ConditionStart);
    }
    if word.eq_ignore_ascii_case("not") && prev == Prev::ConditionStart {
        level.nots += 1;
        if level.base + level.nots > NESTING_DEPTH_MAX {
            return Err(());
        }
        return Ok(Prev::ConditionStart);
    }
    Ok(Prev::Other)
}

/// Advances past a string literal whose opening quote was just read.
fn skip_string(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) {
    while let Some((_, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '"' | '\n' => return,
            _ => {}
        }
    }
}

fn too_deep(text: &str, at: usize) -> SegmentError {
    SegmentError::TooDeep {
        at: Position::locate(text, at),
    }
}
