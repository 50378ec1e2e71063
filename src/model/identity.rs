//! Identifiers: what counts as an identity, how values are normalised, and which
//! values are junk that must never link two customers.
//!
//! An [`Identity`] is a `(kind, value)` pair such as `email:ada@example.com`. Values are
//! normalised before they are compared (emails lower-cased, phone numbers stripped of
//! punctuation) so that the same customer typed twice is one identity. Placeholder values
//! that client code emits by mistake (`"null"`, `"undefined"`, `"[object Object]"`, `"0"`)
//! are refused outright: left in, one of them would merge every customer who hit the same
//! bug into a single profile — the classic wrong merge.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest identity value accepted, in bytes, after normalisation.
pub const IDENTITY_VALUE_BYTES_MAX: usize = 512;

/// Longest external-id type name (the `type` of a `context.externalIds` entry).
pub const EXTERNAL_TYPE_BYTES_MAX: usize = 64;

/// The kind of an identifier.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IdKind {
    /// `userId`: the customer's id in the sender's own user database.
    UserId,
    /// `traits.email` or `context.traits.email`.
    Email,
    /// `traits.phone` or `context.traits.phone`.
    Phone,
    /// An entry of `context.externalIds`, keyed by its `type` (e.g. `shopify_customer_id`).
    External(String),
    /// `anonymousId`: a device or browser cookie id.
    AnonymousId,
}

/// The coarse class of an [`IdKind`], used by merge limits and the priority order, where
/// all external id types are ranked together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdClass {
    UserId,
    Email,
    Phone,
    External,
    AnonymousId,
}

impl IdKind {
    /// The class this kind belongs to.
    pub fn class(&self) -> IdClass {
        match self {
            IdKind::UserId => IdClass::UserId,
            IdKind::Email => IdClass::Email,
            IdKind::Phone => IdClass::Phone,
            IdKind::External(_) => IdClass::External,
            IdKind::AnonymousId => IdClass::AnonymousId,
        }
    }

    /// Parses the textual form used in URLs: `user_id`, `anonymous_id`, `email`, `phone`,
    /// `ext.<type>`.
    pub fn parse(text: &str) -> Option<IdKind> {
        match text {
            "user_id" => Some(IdKind::UserId),
            "anonymous_id" => Some(IdKind::AnonymousId),
            "email" => Some(IdKind::Email),
            "phone" => Some(IdKind::Phone),
            other => {
                let external = other.strip_prefix("ext.")?;
                valid_external_type(external).then(|| IdKind::External(external.to_owned()))
            }
        }
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdKind::UserId => f.write_str("user_id"),
            IdKind::AnonymousId => f.write_str("anonymous_id"),
            IdKind::Email => f.write_str("email"),
            IdKind::Phone => f.write_str("phone"),
            IdKind::External(kind) => write!(f, "ext.{kind}"),
        }
    }
}

impl fmt::Display for IdClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdClass::UserId => "user_id",
            IdClass::Email => "email",
            IdClass::Phone => "phone",
            IdClass::External => "external",
            IdClass::AnonymousId => "anonymous_id",
        })
    }
}

/// A normalised identifier of a customer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// What kind of identifier this is.
    pub kind: IdKind,
    /// The normalised value.
    pub value: String,
}

impl Identity {
    /// Builds an identity from a raw value, normalising it; `None` if the value is junk
    /// (see [`Blocklist`]) or malformed for its kind.
    pub fn new(kind: IdKind, raw: &str, blocklist: &Blocklist) -> Result<Identity, IdentityError> {
        let value = normalize(&kind, raw)?;
        if blocklist.is_junk(&value) {
            return Err(IdentityError::Placeholder);
        }
        Ok(Identity { kind, value })
    }

    /// The key under which this identity is stored: `kind:value`. Built by hand: apply
    /// makes one per identity lookup, and `format!` was ~2% of a node's samples.
    pub fn key(&self) -> String {
        let (prefix, kind) = match &self.kind {
            IdKind::UserId => ("", "user_id"),
            IdKind::AnonymousId => ("", "anonymous_id"),
            IdKind::Email => ("", "email"),
            IdKind::Phone => ("", "phone"),
            IdKind::External(kind) => ("ext.", kind.as_str()),
        };
        let mut key = String::with_capacity(prefix.len() + kind.len() + 1 + self.value.len());
        for part in [prefix, kind, ":", self.value.as_str()] {
            key.push_str(part);
        }
        key
    }

    /// Parses `kind:value` as used in profile URLs, normalising the value.
    pub fn parse_key(text: &str, blocklist: &Blocklist) -> Result<Identity, IdentityError> {
        let (kind, value) = text.split_once(':').ok_or(IdentityError::BadKey)?;
        let kind = IdKind::parse(kind).ok_or(IdentityError::UnknownKind)?;
        Identity::new(kind, value, blocklist)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Why a raw value is not an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the value is empty")]
    Empty,
    #[error("the value is longer than {IDENTITY_VALUE_BYTES_MAX} bytes")]
    TooLong,
    #[error(
        "the value is a placeholder (such as \"null\", \"undefined\" or \"0\"), not an identity"
    )]
    Placeholder,
    #[error("the value is not an email address")]
    BadEmail,
    #[error("the value is not a phone number (digits, optionally a leading '+')")]
    BadPhone,
    #[error("expected kind:value, e.g. user_id:42 or email:ada@example.com")]
    BadKey,
    #[error("unknown identity kind; use user_id, anonymous_id, email, phone or ext.<type>")]
    UnknownKind,
}

/// Whether `text` may name an external-id type: short, lower-case ASCII letters, digits, `_`, `-`.
pub fn valid_external_type(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= EXTERNAL_TYPE_BYTES_MAX
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn normalize(kind: &IdKind, raw: &str) -> Result<String, IdentityError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(IdentityError::Empty);
    }
    let value = match kind {
        IdKind::Email => {
            let lower = trimmed.to_lowercase();
            let (local, domain) = lower.split_once('@').ok_or(IdentityError::BadEmail)?;
            if local.is_empty() || domain.is_empty() || domain.contains('@') {
                return Err(IdentityError::BadEmail);
            }
            lower
        }
        IdKind::Phone => {
            let mut digits = String::with_capacity(trimmed.len());
            for (i, c) in trimmed.chars().enumerate() {
                match c {
                    '0'..='9' => digits.push(c),
                    '+' if i == 0 => digits.push(c),
                    ' ' | '-' | '.' | '(' | ')' => {}
                    _ => return Err(IdentityError::BadPhone),
                }
            }
            if digits.trim_start_matches('+').len() < 3 {
                return Err(IdentityError::BadPhone);
            }
            digits
        }
        IdKind::UserId | IdKind::AnonymousId | IdKind::External(_) => trimmed.to_owned(),
    };
    if value.len() > IDENTITY_VALUE_BYTES_MAX {
        return Err(IdentityError::TooLong);
    }
    Ok(value)
}

/// Values that are never identities.
///
/// Built-in: the placeholders client code emits by mistake, compared case-insensitively,
/// plus any value made only of zeros, dashes, dots, spaces or `x`s (`"0000"`,
/// `"00000000-0000-0000-0000-000000000000"`, `"---"`). Operators add their own junk values
/// (a shop's test account, say) through configuration.
#[derive(Debug, Clone, Default)]
pub struct Blocklist {
    /// Extra junk values, lower-cased.
    extra: Vec<String>,
}

/// The built-in placeholder values, lower-case.
pub const BUILTIN_JUNK: &[&str] = &[
    "null",
    "nil",
    "none",
    "undefined",
    "nan",
    "n/a",
    "na",
    "-1",
    "anonymous",
    "anon",
    "unknown",
    "guest",
    "user",
    "test",
    "true",
    "false",
    "[object object]",
    "{}",
    "[]",
    "\"\"",
    "''",
    "noemail@example.com",
    "test@test.com",
    "email@example.com",
];

impl Blocklist {
    /// A blocklist with the built-in values plus `extra` (compared case-insensitively).
    pub fn new(extra: &[String]) -> Blocklist {
        Blocklist {
            extra: extra.iter().map(|v| v.trim().to_lowercase()).collect(),
        }
    }

    /// Whether `value` (already normalised) is a placeholder.
    pub fn is_junk(&self, value: &str) -> bool {
        let lower = value.to_lowercase();
        if lower
            .chars()
            .all(|c| matches!(c, '0' | '-' | '.' | ' ' | 'x' | '+'))
        {
            return true;
        }
        BUILTIN_JUNK.contains(&lower.as_str()) || self.extra.contains(&lower)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: IdKind, raw: &str) -> Result<String, IdentityError> {
        Identity::new(kind, raw, &Blocklist::new(&["shop-test-account".into()])).map(|i| i.value)
    }

    #[test]
    fn normalisation_and_junk_table() {
        use IdentityError::*;
        let cases: &[(IdKind, &str, Result<&str, IdentityError>)] = &[
            (IdKind::Email, " Ada@Example.COM ", Ok("ada@example.com")),
            (IdKind::Email, "not-an-email", Err(BadEmail)),
            (IdKind::Email, "a@b@c", Err(BadEmail)),
            (IdKind::Email, "test@test.com", Err(Placeholder)),
            (IdKind::Phone, "+1 (555) 010-9999", Ok("+15550109999")),
            (IdKind::Phone, "555.010.9999", Ok("5550109999")),
            (IdKind::Phone, "call me", Err(BadPhone)),
            (IdKind::Phone, "000-000", Err(Placeholder)),
            (IdKind::UserId, "  42 ", Ok("42")),
            (IdKind::UserId, "", Err(Empty)),
            (IdKind::UserId, "   ", Err(Empty)),
            (IdKind::UserId, "null", Err(Placeholder)),
            (IdKind::UserId, "NULL", Err(Placeholder)),
            (IdKind::UserId, "undefined", Err(Placeholder)),
            (IdKind::UserId, "0", Err(Placeholder)),
            (IdKind::UserId, "-1", Err(Placeholder)),
            (IdKind::UserId, "[object Object]", Err(Placeholder)),
            (IdKind::UserId, "Shop-Test-Account", Err(Placeholder)),
            (IdKind::UserId, "100", Ok("100")),
            (
                IdKind::AnonymousId,
                "00000000-0000-0000-0000-000000000000",
                Err(Placeholder),
            ),
            (IdKind::AnonymousId, "anonymous", Err(Placeholder)),
            (IdKind::AnonymousId, "----", Err(Placeholder)),
        ];
        for (kind, raw, want) in cases {
            let got = id(kind.clone(), raw);
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "{kind}:{raw:?}");
        }
        assert_eq!(id(IdKind::UserId, &"x".repeat(600)), Err(TooLong));
    }

    #[test]
    fn keys_round_trip() {
        let blocklist = Blocklist::default();
        for text in [
            "user_id:42",
            "email:a@b.c",
            "ext.shopify_id:9:9",
            "anonymous_id:abc",
            "phone:+15555550123",
        ] {
            let identity = Identity::parse_key(text, &blocklist).expect(text);
            assert_eq!(identity.key(), text);
            assert_eq!(identity.key(), identity.to_string());
        }
        assert_eq!(
            Identity::parse_key("color:red", &blocklist),
            Err(IdentityError::UnknownKind)
        );
        assert_eq!(
            Identity::parse_key("ext.Bad Type:1", &blocklist),
            Err(IdentityError::UnknownKind)
        );
        assert_eq!(
            Identity::parse_key("42", &blocklist),
            Err(IdentityError::BadKey)
        );
    }
}
