//! Who may reach the client-facing listener and how hard: the `[http]` connection limits,
//! the named keys of `[auth]` and `[[sources]]`, the per-source `[quotas]`, and their
//! validation.
//!
//! Every key has a name so that rotation can be talked about ("retire `web/2024`") and so
//! the node can log which keys a reload added or removed without ever logging a key.
//! Keys are at least [`CLIENT_KEY_CHARS_MIN`] characters, and the example file's
//! placeholders (`change-me-…`) are refused: a node must never run on a key printed in
//! its own documentation.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::Config;

/// Shortest accepted write, read or admin key. 20 characters of a random alphabet are
/// beyond guessing over HTTP; `openssl rand -hex 16` gives 32.
pub const CLIENT_KEY_CHARS_MIN: usize = 20;

/// Keys starting with this (any case) are the example file's placeholders and refused.
pub const PLACEHOLDER_KEY_PREFIX: &str = "change-me";

/// `[http]`: connection hygiene of the client-facing listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Time from the first byte of a request to the end of its headers, ms; a client that
    /// is slower is disconnected.
    pub header_timeout_ms: u64,
    /// Time a request body may take on top of what its bytes take at
    /// `body_rate_min_bytes_per_sec`, ms. A body that falls behind is answered 408.
    pub body_timeout_ms: u64,
    /// Slowest average upload rate a request body may keep up after `body_timeout_ms`,
    /// bytes per second.
    pub body_rate_min_bytes_per_sec: u64,
    /// A connection with no request in progress and no traffic for this long is closed, ms.
    pub idle_timeout_ms: u64,
    /// Most open connections; beyond it a new connection is answered 429 and closed at once.
    pub connections_max: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            body_rate_min_bytes_per_sec: 16 * 1024,
            idle_timeout_ms: 60_000,
            connections_max: 10_000,
        }
    }
}

/// `[quotas]`: the default per-source ingest quota (a token bucket per source, per node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    /// Events per second a source may send to one node, sustained.
    pub events_per_sec: u64,
    /// Events a source may send at once above the sustained rate (the bucket's size).
    pub burst_events: u64,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        // Several times what one node commits (docs/benchmarks.md): a quota that only
        // bites when an operator lowers it for a source.
        QuotasConfig {
            events_per_sec: 100_000,
            burst_events: 200_000,
        }
    }
}

/// A key with a name, as in `write_keys = [{ name = "2025-06", key = "…" }]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedKey {
    /// Name used in logs and rotation steps; letters, digits, '-' and '_'.
    pub name: String,
    /// The secret itself.
    pub key: String,
}

/// What a read-side key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyRole {
    /// Read profiles, segments and recommendations.
    Read,
    /// Read, and use the admin endpoints.
    Admin,
}

/// One `[[auth.keys]]` entry: a named read or admin key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleKey {
    /// Name used in logs and rotation steps; letters, digits, '-' and '_'.
    pub name: String,
    /// `read` or `admin`.
    pub role: KeyRole,
    /// The secret itself.
    pub key: String,
}

/// A source's effective quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Sustained events per second.
    pub events_per_sec: u64,
    /// Bucket size, events.
    pub burst_events: u64,
}

impl Config {
    /// The quota of source `i`: its own settings, else `[quotas]`.
    pub fn source_quota(&self, i: usize) -> Quota {
        let source = &self.sources[i];
        Quota {
            events_per_sec: source.events_per_sec.unwrap_or(self.quotas.events_per_sec),
            burst_events: source.burst_events.unwrap_or(self.quotas.burst_events),
        }
    }

    /// Every write, read and admin key with the setting it comes from, for validation.
    fn all_keys(&self) -> Vec<(String, &str)> {
        let mut keys = Vec::new();
        for (i, source) in self.sources.iter().enumerate() {
            if !source.write_key.is_empty() {
                keys.push((format!("sources[{i}].write_key"), source.write_key.as_str()));
            }
            for (j, named) in source.write_keys.iter().enumerate() {
                keys.push((format!("sources[{i}].write_keys[{j}]"), named.key.as_str()));
            }
        }
        if !self.auth.admin_key.is_empty() {
            keys.push(("auth.admin_key".into(), self.auth.admin_key.as_str()));
        }
        for (i, entry) in self.auth.keys.iter().enumerate() {
            keys.push((format!("auth.keys[{i}]"), entry.key.as_str()));
        }
        keys
    }

    /// Checks sources, keys, quotas and `[http]`.
    pub(super) fn validate_access(&self, problem: &mut impl FnMut(String)) {
        if self.sources.is_empty() {
            problem(
                "no sources: add a [[sources]] entry with name and write_key, or pass --write-key"
                    .into(),
            );
        }
        let mut names = BTreeSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            check_name(problem, &format!("sources[{i}].name"), &source.name);
            if !names.insert(&source.name) {
                problem(format!(
                    "sources[{i}].name = {:?} is used twice; names must be unique",
                    source.name
                ));
            }
            if source.write_key.is_empty() && source.write_keys.is_empty() {
                problem(format!(
                    "sources[{i}] ({:?}) has no key: set write_key or write_keys",
                    source.name
                ));
            }
            let mut key_names = BTreeSet::new();
            for (j, named) in source.write_keys.iter().enumerate() {
                let setting = format!("sources[{i}].write_keys[{j}].name");
                check_name(problem, &setting, &named.name);
                if !key_names.insert(&named.name) {
                    problem(format!("{setting} = {:?} is used twice", named.name));
                }
            }
            let quota = self.source_quota(i);
            self.check_quota(problem, &format!("sources[{i}] ({:?})", source.name), quota);
        }
        let mut key_names = BTreeSet::new();
        for (i, entry) in self.auth.keys.iter().enumerate() {
            check_name(problem, &format!("auth.keys[{i}].name"), &entry.name);
            if !key_names.insert(&entry.name) {
                problem(format!(
                    "auth.keys[{i}].name = {:?} is used twice; names must be unique",
                    entry.name
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (setting, key) in self.all_keys() {
            check_client_key(problem, &setting, key);
            if !seen.insert(key) {
                problem(format!(
                    "{setting} is the same key as another entry; every key must be unique \
                     so it names one source or role"
                ));
            }
        }
        if self.auth.body_key_request_bytes_max == 0 {
            problem("auth.body_key_request_bytes_max is 0; it must be at least 1".into());
        }
        self.validate_http(problem);
    }

    fn check_quota(&self, problem: &mut impl FnMut(String), what: &str, quota: Quota) {
        if quota.events_per_sec == 0 {
            problem(format!(
                "{what}: events_per_sec is 0; it must be at least 1 (remove the source to stop it)"
            ));
        }
        if quota.burst_events < self.limits.batch_events_max as u64 {
            problem(format!(
                "{what}: burst_events ({}) is below limits.batch_events_max ({}); a full batch \
                 could never be admitted",
                quota.burst_events, self.limits.batch_events_max
            ));
        }
    }

    fn validate_http(&self, problem: &mut impl FnMut(String)) {
        let h = &self.http;
        for (name, value) in [
            ("http.header_timeout_ms", h.header_timeout_ms),
            ("http.body_timeout_ms", h.body_timeout_ms),
            (
                "http.body_rate_min_bytes_per_sec",
                h.body_rate_min_bytes_per_sec,
            ),
            ("http.idle_timeout_ms", h.idle_timeout_ms),
            ("http.connections_max", h.connections_max as u64),
        ] {
            if value == 0 {
                problem(format!("{name} is 0; it must be at least 1"));
            }
        }
        // tokio's semaphore holds at most usize::MAX >> 3 permits.
        if h.connections_max > (usize::MAX >> 3) {
            problem(format!(
                "http.connections_max ({}) is too large",
                h.connections_max
            ));
        }
    }
}

/// A name for a source or key: letters, digits, '-' and '_'.
fn check_name(problem: &mut impl FnMut(String), setting: &str, name: &str) {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        problem(format!(
            "{setting} = {name:?}: use letters, digits, '-' and '_'"
        ));
    }
}

/// A write, read or admin key: long enough, not a placeholder, carriable in Basic auth.
/// Messages name the setting, never the key (except a placeholder, which is public).
fn check_client_key(problem: &mut impl FnMut(String), setting: &str, key: &str) {
    if key
        .get(..PLACEHOLDER_KEY_PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(PLACEHOLDER_KEY_PREFIX))
    {
        problem(format!(
            "{setting} is the example's placeholder {key:?}; replace it with a random key of \
             at least {CLIENT_KEY_CHARS_MIN} characters, e.g. the output of `openssl rand -hex 24`"
        ));
        return;
    }
    if key.chars().count() < CLIENT_KEY_CHARS_MIN {
        problem(format!(
            "{setting} is shorter than {CLIENT_KEY_CHARS_MIN} characters; use a longer random \
             key, e.g. the output of `openssl rand -hex 24`"
        ));
    }
    if key.contains(':') || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        problem(format!(
            "{setting} contains ':', whitespace or control characters, which HTTP Basic auth \
             cannot carry; use letters, digits and punctuation other than ':'"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ConfigError, SourceConfig};
    use super::*;

    fn problems(config: &Config) -> String {
        match config.validate() {
            Ok(()) => String::new(),
            Err(ConfigError::Invalid(problems)) => problems.join("\n"),
            Err(other) => other.to_string(),
        }
    }

    fn with_source(source: SourceConfig) -> Config {
        Config {
            sources: vec![source],
            tls: super::super::TlsConfig {
                peer_plaintext: true,
                ..Default::default()
            },
            ..Config::default()
        }
    }

    fn source(name: &str, write_key: &str) -> SourceConfig {
        SourceConfig {
            name: name.into(),
            write_key: write_key.into(),
            write_keys: Vec::new(),
            events_per_sec: None,
            burst_events: None,
        }
    }

    #[test]
    fn keys_are_checked_for_length_placeholders_and_duplicates() {
        let cases = [
            ("web-write-key-0123456789", ""),
            ("short-key-19-chars-", "shorter than 20"),
            ("change-me-web-write-key", "placeholder"),
            ("CHANGE-ME-and-much-longer-than-20", "placeholder"),
            ("with:colon-and-long-enough", "':'"),
        ];
        for (key, expected) in cases {
            let text = problems(&with_source(source("web", key)));
            if expected.is_empty() {
                assert_eq!(text, "", "{key:?}");
            } else {
                assert!(text.contains(expected), "{key:?}: {text}");
                assert!(text.contains("sources[0].write_key"), "{key:?}: {text}");
            }
        }
        let mut config = with_source(source("web", "web-write-key-0123456789"));
        config.auth.keys.push(RoleKey {
            name: "ops".into(),
            role: KeyRole::Read,
            key: "web-write-key-0123456789".into(),
        });
        assert!(problems(&config).contains("auth.keys[0] is the same key"));
    }

    #[test]
    fn named_keys_and_quotas_are_validated() {
        let mut web = source("web", "");
        let text = problems(&with_source(web.clone()));
        assert!(text.contains("has no key"), "{text}");
        web.write_keys = vec![
            NamedKey {
                name: "2025".into(),
                key: "first-key-of-web-01234".into(),
            },
            NamedKey {
                name: "2025".into(),
                key: "second-key-of-web-0123".into(),
            },
        ];
        web.burst_events = Some(10);
        let text = problems(&with_source(web));
        assert!(text.contains("write_keys[1].name"), "{text}");
        assert!(text.contains("burst_events (10)"), "{text}");
        let mut config = with_source(source("web", "web-write-key-0123456789"));
        config.http.idle_timeout_ms = 0;
        assert!(problems(&config).contains("http.idle_timeout_ms is 0"));
    }
}
