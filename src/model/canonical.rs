//! Canonical JSON: deciding, in one pass over the text, whether a JSON value is already
//! written exactly as `serde_json` would print it after parsing it into a
//! [`serde_json::Value`] — compact, object keys in byte order without repeats, strings
//! escaped only where serde_json escapes them, numbers in serde_json's own form.
//!
//! Validation stores each event as `Value::to_string()` of its normalised object. Most
//! parts of a message (its `properties`, `context`, …) are passed through unchanged, and a
//! part that is already canonical prints as the very bytes it arrived as, so it can be
//! copied instead of parsed into a tree of allocations and printed again. [`scan`] says
//! which parts may be copied; anything it is unsure of is reported as not canonical and
//! goes through `Value`, so the stored bytes never depend on which path was taken.
//!
//! [`scan`] also refuses ([`Bail`]) text that a `Value` parse of the whole message would
//! reject although the syntax check of a batch already passed it: nesting deeper than
//! [`DEPTH_MAX`], a number out of range, a `\u` escape of a UTF-16 surrogate. The caller
//! then takes the `Value` path for the whole message, which gives the same rejection as
//! before.

/// Deepest nesting [`scan`] accepts, counted from the scanned value. serde_json's parser
/// refuses 128 levels; a message's parts sit at most two levels below its top, so this
/// leaves room and anything deeper is decided by the full parse.
pub const DEPTH_MAX: usize = 100;

/// The text must go through a full `Value` parse (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bail;

/// One open object or array while scanning.
struct Frame<'a> {
    /// An object (keys and values alternate) rather than an array.
    object: bool,
    /// The next string in this object is a key.
    expect_key: bool,
    /// The previous key of this object, raw (keys with escapes are never canonical).
    last_key: Option<&'a [u8]>,
}

/// Whether `text` (one syntactically valid JSON value) is canonical: `Ok(true)` if it
/// prints as itself after a `Value` round trip, `Ok(false)` if it must be re-printed.
pub fn scan(text: &str) -> Result<bool, Bail> {
    let bytes = text.as_bytes();
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut canonical = true;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            open @ (b'{' | b'[') => {
                if stack.len() >= DEPTH_MAX {
                    return Err(Bail);
                }
                let object = open == b'{';
                stack.push(Frame {
                    object,
                    expect_key: object,
                    last_key: None,
                });
                at += 1;
            }
            b'}' | b']' => {
                stack.pop();
                at += 1;
            }
            b',' => {
                if let Some(frame) = stack.last_mut() {
                    frame.expect_key = frame.object;
                }
                at += 1;
            }
            b':' => at += 1,
            b'"' => {
                let (end, plain) = string_end(bytes, at)?;
                let inner = &bytes[at + 1..end - 1];
                match stack.last_mut() {
                    Some(frame) if frame.expect_key => {
                        let ordered = frame.last_key.is_none_or(|last| last < inner);
                        canonical &= plain == Escapes::None && ordered;
                        frame.last_key = Some(inner);
                        frame.expect_key = false;
                    }
                    _ => canonical &= plain != Escapes::Other,
                }
                at = end;
            }
            b'-' | b'0'..=b'9' => {
                let start = at;
                while at < bytes.len() && matches!(bytes[at], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    at += 1;
                }
                canonical &= number_is_canonical(&text[start..at])?;
            }
            b't' | b'f' | b'n' => {
                while at < bytes.len() && bytes[at].is_ascii_alphabetic() {
                    at += 1;
                }
            }
            _ => {
                // Whitespace (the only other thing valid JSON holds between tokens).
                canonical = false;
                at += 1;
            }
        }
    }
    Ok(canonical)
}

/// What escapes a string holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escapes {
    /// None at all.
    None,
    /// Only `\"`, `\\`, `\b`, `\t`, `\n`, `\f`, `\r`: the ones serde_json writes itself.
    Printed,
    /// Others (`\/`, `\uXXXX`): printed differently after a round trip.
    Other,
}

/// The end (one past the closing quote) of the string opening at `start`, and its escapes.
fn string_end(bytes: &[u8], start: usize) -> Result<(usize, Escapes), Bail> {
    let mut escapes = Escapes::None;
    let mut at = start + 1;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => return Ok((at + 1, escapes)),
            b'\\' => {
                let code = *bytes.get(at + 1).ok_or(Bail)?;
                match code {
                    b'"' | b'\\' | b'b' | b't' | b'n' | b'f' | b'r' => {
                        if escapes == Escapes::None {
                            escapes = Escapes::Printed;
                        }
                        at += 2;
                    }
                    b'u' => {
                        let hex = bytes.get(at + 2..at + 6).ok_or(Bail)?;
                        let hex = std::str::from_utf8(hex).map_err(|_| Bail)?;
                        let unit = u16::from_str_radix(hex, 16).map_err(|_| Bail)?;
                        if (0xD800..=0xDFFF).contains(&unit) {
                            // Pairs and lone halves alike: the full parse decides.
                            return Err(Bail);
                        }
                        escapes = Escapes::Other;
                        at += 6;
                    }
                    _ => {
                        escapes = Escapes::Other;
                        at += 2;
                    }
                }
            }
            _ => at += 1,
        }
    }
    Err(Bail)
}

/// Most digits of an integer taken as canonical without parsing it: it fits both `i64`
/// and `u64`, so serde_json prints it back digit for digit.
const INTEGER_DIGITS_MAX: usize = 18;

/// Whether a number token prints as itself; [`Bail`] if serde_json cannot hold it.
fn number_is_canonical(token: &str) -> Result<bool, Bail> {
    let digits = token.strip_prefix('-').unwrap_or(token);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        let leading_zero = digits.len() > 1 && digits.starts_with('0');
        let negative_zero = token.starts_with('-') && digits == "0";
        if digits.len() <= INTEGER_DIGITS_MAX && !leading_zero && !negative_zero {
            return Ok(true);
        }
    }
    // Fractions, exponents, long integers: parse as serde_json does and compare its print.
    let number: serde_json::Number = serde_json::from_str(token).map_err(|_| Bail)?;
    let printed = serde_json::to_string(&number).map_err(|_| Bail)?;
    Ok(printed == token)
}

#[cfg(test)]
#[path = "canonical_tests.rs"]
mod tests;
