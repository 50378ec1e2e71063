//! From pest's parse tree to an [`Expr`], checking what the grammar cannot: that `event`
//! chains are well formed, windows are sensible, and comparisons compare like with like.
//!
//! Every refusal here is a [`SegmentError::Invalid`] pointing at the offending token.
//! The tree's shape is guaranteed by the grammar; should it ever differ (a grammar edit
//! out of step with this file), the parse fails with an "internal error" rather than a
//! panic, because the text reaching here is user input.

use pest::iterators::{Pair, Pairs};

use super::ast::{CmpOp, Expr, Literal, Operand, Window, WindowUnit};
use super::error::SegmentError;
use super::parse::Rule;
use super::{WINDOW_DAYS_MAX, WINDOW_MS_MAX};

/// Builds trees for one rule text (kept for error positions).
pub(super) struct Builder<'t> {
    text: &'t str,
}

/// `.count()` or `.exists()`, the end of an `event(...)` chain.
#[derive(Clone, Copy, PartialEq)]
enum Terminal {
    Count,
    Exists,
}

/// An `event("Name")` chain as written, before it becomes an operand or a condition.
struct EventChain {
    name: String,
    within: Option<Window>,
    terminal: Option<Terminal>,
}

impl<'t> Builder<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        Builder { text }
    }

    /// The next pair, or an internal error at `offset` if the tree is not as expected.
    pub(super) fn next<'i>(
        &self,
        pairs: &mut Pairs<'i, Rule>,
        offset: usize,
    ) -> Result<Pair<'i, Rule>, SegmentError> {
        pairs.next().ok_or_else(|| self.internal(offset))
    }

    fn internal(&self, offset: usize) -> SegmentError {
        SegmentError::invalid(
            self.text,
            offset,
            "internal error: unexpected parse tree (please report this rule)",
        )
    }

    /// `expr`: `and_expr (or and_expr)*`.
    pub(super) fn expr(&self, pair: Pair<'_, Rule>) -> Result<Expr, SegmentError> {
        let items = pair
            .into_inner()
            .filter(|p| p.as_rule() != Rule::kw_or)
            .map(|p| self.and_expr(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(join(items, Expr::Or))
    }

    fn and_expr(&self, pair: Pair<'_, Rule>) -> Result<Expr, SegmentError> {
        let items = pair
            .into_inner()
            .filter(|p| p.as_rule() != Rule::kw_and)
            .map(|p| self.unary(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(join(items, Expr::And))
    }

    fn unary(&self, pair: Pair<'_, Rule>) -> Result<Expr, SegmentError> {
        let at = pair.as_span().start();
        let inner = self.next(&mut pair.into_inner(), at)?;
        match inner.as_rule() {
            Rule::negation => {
                let operand = self.last_child(inner)?;
                Ok(Expr::Not(Box::new(self.unary(operand)?)))
            }
            Rule::group => {
                let mut parts = inner.into_inner().filter(|p| p.as_rule() == Rule::expr);
                let expr = parts.next().ok_or_else(|| self.internal(at))?;
                self.expr(expr)
            }
            Rule::condition => self.condition(inner),
            _ => Err(self.internal(at)),
        }
    }

    fn last_child<'i>(&self, pair: Pair<'i, Rule>) -> Result<Pair<'i, Rule>, SegmentError> {
        let at = pair.as_span().start();
        pair.into_inner().last().ok_or_else(|| self.internal(at))
    }

    fn condition(&self, pair: Pair<'_, Rule>) -> Result<Expr, SegmentError> {
        let at = pair.as_span().start();
        let inner = self.next(&mut pair.into_inner(), at)?;
        match inner.as_rule() {
            Rule::segment_test => Ok(Expr::InSegment {
                id: self.call_name(inner, "a segment id")?,
            }),
            Rule::event_test => self.event_test(inner),
            Rule::comparison => {
                let mut parts = inner.into_inner();
                let operand = self.value_operand(self.next(&mut parts, at)?)?;
                let tail = self.next(&mut parts, at)?;
                self.comparison(operand, tail)
            }
            _ => Err(self.internal(at)),
        }
    }

    /// The string argument of `name("...")`, decoded and non-empty.
    fn call_name(&self, pair: Pair<'_, Rule>, what: &str) -> Result<String, SegmentError> {
        let at = pair.as_span().start();
        let string = pair
            .into_inner()
            .find(|p| p.as_rule() == Rule::string)
            .ok_or_else(|| self.internal(at))?;
        let string_at = string.as_span().start();
        let name = self.string(string)?;
        if name.is_empty() {
            return Err(SegmentError::invalid(
                self.text,
                string_at,
                format!("{what} cannot be empty"),
            ));
        }
        Ok(name)
    }

    fn value_operand(&self, pair: Pair<'_, Rule>) -> Result<Operand, SegmentError> {
        let at = pair.as_span().start();
        let inner = self.next(&mut pair.into_inner(), at)?;
        match inner.as_rule() {
            Rule::ident => Ok(Operand::Named(inner.as_str().to_string())),
            Rule::trait_call => Ok(Operand::Trait(self.call_name(inner, "a trait name")?)),
            Rule::computed_call => Ok(Operand::Computed(
                self.call_name(inner, "a computed trait name")?,
            )),
            _ => Err(self.internal(at)),
        }
    }

    /// `event("Name") method* comparison_tail?`
    fn event_test(&self, pair: Pair<'_, Rule>) -> Result<Expr, SegmentError> {
        let at = pair.as_span().start();
        let mut chain = EventChain {
            name: self.call_name(pair.clone(), "an event name")?,
            within: None,
            terminal: None,
        };
        let mut tail = None;
        for part in pair.into_inner() {
            match part.as_rule() {
                Rule::method_call => self.method(&mut chain, part)?,
                Rule::comparison_tail => tail = Some(part),
                _ => {}
            }
        }
        match (chain.terminal, tail) {
            (None, _) => Err(SegmentError::invalid(
                self.text,
                at,
                "an event(...) chain must end with .count() (then a comparison) or .exists(), \
                 e.g. event(\"Order Completed\").within(30d).count() >= 2",
            )),
            (Some(Terminal::Exists), None) => Ok(Expr::EventExists {
                event: chain.name,
                within: chain.within,
            }),
            (Some(Terminal::Exists), Some(tail)) => Err(SegmentError::invalid(
                self.text,
                tail.as_span().start(),
                ".exists() is already a condition and cannot be compared; drop the comparison, \
                 or use .count() to compare a number",
            )),
            (Some(Terminal::Count), None) => Err(SegmentError::invalid(
                self.text,
                at,
                ".count() is a number: compare it, e.g. event(\"Order Completed\").count() >= 1",
            )),
            (Some(Terminal::Count), Some(tail)) => {
                let operand = Operand::EventCount {
                    event: chain.name,
                    within: chain.within,
                };
                self.comparison(operand, tail)
            }
        }
    }

    /// One `.name(arg?)` of an event chain, checked against what came before it.
    fn method(&self, chain: &mut EventChain, pair: Pair<'_, Rule>) -> Result<(), SegmentError> {
        let at = pair.as_span().start();
        let mut name = None;
        let mut arg = None;
        for part in pair.into_inner() {
            match part.as_rule() {
                Rule::method_name => name = Some(part),
                Rule::method_arg => arg = Some(part),
                _ => {}
            }
        }
        let name = name.ok_or_else(|| self.internal(at))?;
        let name_at = name.as_span().start();
        let fail = |message: String| Err(SegmentError::invalid(self.text, name_at, message));
        let lower = name.as_str().to_ascii_lowercase();
        if chain.terminal.is_some() {
            return fail(format!(
                "nothing can follow .count() or .exists(); move .{lower}() before it or remove it"
            ));
        }
        match lower.as_str() {
            "within" if chain.within.is_some() => {
                fail("an event(...) chain takes one .within(...)".to_string())
            }
            "within" => {
                chain.within = Some(self.window(arg, name_at)?);
                Ok(())
            }
            "count" | "exists" => {
                if let Some(arg) = arg {
                    return Err(SegmentError::invalid(
                        self.text,
                        arg.as_span().start(),
                        format!(
                            ".{lower}() takes no argument; put the window in .within(...) before it"
                        ),
                    ));
                }
                chain.terminal = Some(if lower == "count" {
                    Terminal::Count
                } else {
                    Terminal::Exists
                });
                Ok(())
            }
            _ => fail(format!(
                "unknown method .{}(); an event(...) chain takes .within(<duration>), then \
                 .count() or .exists()",
                name.as_str()
            )),
        }
    }

    /// The duration of `.within(...)`: a whole number and `d`, `h` or `m`.
    fn window(&self, arg: Option<Pair<'_, Rule>>, name_at: usize) -> Result<Window, SegmentError> {
        let Some(arg) = arg else {
            return Err(SegmentError::invalid(
                self.text,
                name_at,
                ".within(...) needs a duration such as 30d, 12h or 90m",
            ));
        };
        parse_window(arg.as_str())
            .map_err(|message| SegmentError::invalid(self.text, arg.as_span().start(), message))
    }

    /// `op value` after an operand: a comparison, `[not] in [...]` or `[not] contains x`.
    fn comparison(&self, left: Operand, tail: Pair<'_, Rule>) -> Result<Expr, SegmentError> {
        let at = tail.as_span().start();
        let mut parts = tail.into_inner();
        let op = self.next(&mut parts, at)?;
        let value = self.next(&mut parts, at)?;
        let value_at = value.as_span().start();
        let checked = |result: Result<(), String>| {
            result.map_err(|message| SegmentError::invalid(self.text, value_at, message))
        };
        let negated = op.clone().into_inner().any(|p| p.as_rule() == Rule::kw_not);
        match op.as_rule() {
            Rule::cmp_op => {
                let op = cmp_op(op.as_str()).ok_or_else(|| self.internal(at))?;
                let right = self.literal(value)?;
                checked(check_compare(&left, op, &right))?;
                Ok(Expr::Compare { left, op, right })
            }
            Rule::in_op => {
                let Literal::List(list) = self.literal(value)? else {
                    return Err(self.internal(value_at));
                };
                checked(check_in(&left, &list))?;
                Ok(negate(negated, Expr::In { left, list }))
            }
            Rule::contains_op => {
                let needle = self.literal(value)?;
                checked(check_contains(&left, &needle))?;
                Ok(negate(negated, Expr::Contains { left, needle }))
            }
            _ => Err(self.internal(at)),
        }
    }

    /// A `literal`, `scalar` or `list` pair.
    fn literal(&self, pair: Pair<'_, Rule>) -> Result<Literal, SegmentError> {
        let at = pair.as_span().start();
        match pair.as_rule() {
            Rule::literal | Rule::scalar => self.literal(self.next(&mut pair.into_inner(), at)?),
            Rule::list => pair
                .into_inner()
                .filter(|p| p.as_rule() == Rule::scalar)
                .map(|p| self.literal(p))
                .collect::<Result<Vec<_>, _>>()
                .map(Literal::List),
            Rule::number => match pair.as_str().parse::<f64>() {
                Ok(n) if n.is_finite() => Ok(Literal::Number(n)),
                _ => Err(SegmentError::invalid(
                    self.text,
                    at,
                    "this number is too large to compare with",
                )),
            },
            Rule::string => self.string(pair).map(Literal::String),
            Rule::kw_true => Ok(Literal::Bool(true)),
            Rule::kw_false => Ok(Literal::Bool(false)),
            Rule::kw_null => Ok(Literal::Null),
            _ => Err(self.internal(at)),
        }
    }

    /// A `string` pair, escapes decoded.
    fn string(&self, pair: Pair<'_, Rule>) -> Result<String, SegmentError> {
        let at = pair.as_span().start();
        let inner = pair
            .into_inner()
            .find(|p| p.as_rule() == Rule::string_inner)
            .ok_or_else(|| self.internal(at))?;
        let start = inner.as_span().start();
        decode_escapes(inner.as_str())
            .map_err(|(offset, message)| SegmentError::invalid(self.text, start + offset, message))
    }
}

/// One item, or all of them joined by `and`/`or`.
fn join(mut items: Vec<Expr>, make: fn(Vec<Expr>) -> Expr) -> Expr {
    if items.len() == 1
        && let Some(item) = items.pop()
    {
        return item;
    }
    make(items)
}

fn negate(negated: bool, expr: Expr) -> Expr {
    if negated {
        Expr::Not(Box::new(expr))
    } else {
        expr
    }
}

fn cmp_op(symbol: &str) -> Option<CmpOp> {
    Some(match symbol {
        "==" => CmpOp::Eq,
        "!=" => CmpOp::Ne,
        ">" => CmpOp::Gt,
        ">=" => CmpOp::Ge,
        "<" => CmpOp::Lt,
        "<=" => CmpOp::Le,
        _ => return None,
    })
}

/// Parses a window such as `30d`; the message says what is wrong otherwise.
pub(super) fn parse_window(text: &str) -> Result<Window, String> {
    let not_a_duration = || {
        format!(
            "`{text}` is not a duration: write a whole number followed by d (days), h (hours) \
             or m (minutes), such as 30d"
        )
    };
    let unit = match text.bytes().last() {
        Some(b'd') => WindowUnit::Days,
        Some(b'h') => WindowUnit::Hours,
        Some(b'm') => WindowUnit::Minutes,
        _ => return Err(not_a_duration()),
    };
    let digits = &text[..text.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_a_duration());
    }
    let too_long = || format!("`{text}` is longer than the longest window, {WINDOW_DAYS_MAX}d");
    let amount: u32 = digits.parse().map_err(|_| too_long())?;
    if amount == 0 {
        return Err(format!("a window must be at least 1m; `{text}` is empty"));
    }
    let window = Window { amount, unit };
    if window.ms() > WINDOW_MS_MAX {
        return Err(too_long());
    }
    Ok(window)
}

/// Decodes the escapes the grammar admits; `Err` carries the byte offset of an escape
/// that does not decode (a `\u{…}` that is not a Unicode scalar value).
fn decode_escapes(raw: &str) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let decoded = match chars.next().map(|(_, e)| e) {
            Some('"') => '"',
            Some('\\') => '\\',
            Some('n') => '\n',
            Some('t') => '\t',
            Some('r') => '\r',
            Some('u') => {
                // `{hex}`: skip the brace, read to the closing one (consumed too).
                let hex: String = chars
                    .by_ref()
                    .map(|(_, h)| h)
                    .skip(1)
                    .take_while(|&h| h != '}')
                    .collect();
                u32::from_str_radix(&hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| (i, format!("\\u{{{hex}}} is not a Unicode character")))?
            }
            _ => return Err((i, "unknown escape".to_string())),
        };
        out.push(decoded);
    }
    Ok(out)
}

/// `left op right` must compare like with like.
fn check_compare(left: &Operand, op: CmpOp, right: &Literal) -> Result<(), String> {
    let symbol = op.symbol();
    match (left, right) {
        (_, Literal::List(_)) => Err(format!(
            "`{symbol}` compares with a single value; to test membership write `in [...]`"
        )),
        (Operand::EventCount { .. }, Literal::Number(_)) => Ok(()),
        (Operand::EventCount { .. }, other) => Err(format!(
            ".count() is a number and cannot be compared with {}",
            describe(other)
        )),
        (_, Literal::Number(_) | Literal::String(_)) => Ok(()),
        (_, other) if op.is_ordering() => Err(format!(
            "`{symbol}` orders numbers or strings, not {}",
            describe(other)
        )),
        _ => Ok(()),
    }
}

/// `left in [...]`: items are scalars (the grammar); a count only matches numbers.
fn check_in(left: &Operand, list: &[Literal]) -> Result<(), String> {
    match (left, list.iter().find(|l| !matches!(l, Literal::Number(_)))) {
        (Operand::EventCount { .. }, Some(other)) => Err(format!(
            ".count() is a number; this list holds {}",
            describe(other)
        )),
        _ => Ok(()),
    }
}

/// `left contains needle`: the needle is a string, number or boolean; never on a count.
fn check_contains(left: &Operand, needle: &Literal) -> Result<(), String> {
    match (left, needle) {
        (Operand::EventCount { .. }, _) => Err(
            "`contains` looks inside strings and lists; .count() is a number (use == or in)"
                .to_string(),
        ),
        (_, Literal::Null | Literal::List(_)) => Err(format!(
            "`contains` looks for a string, number or boolean, not {}",
            describe(needle)
        )),
        _ => Ok(()),
    }
}

/// "a string", "null"…, for messages.
fn describe(literal: &Literal) -> String {
    match literal {
        Literal::Null => "null".to_string(),
        Literal::Bool(b) => format!("the boolean {b}"),
        Literal::Number(n) => format!("the number {n}"),
        Literal::String(_) => format!("the string {literal}"),
        Literal::List(_) => "a list".to_string(),
    }
}
