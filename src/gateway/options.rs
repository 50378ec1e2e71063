//! What a gateway is told at start-up, the limits it works within, and their validation.
//!
//! Every limit is a named constant here, so the gateway's bounds can be read in one place.
//! Options are validated once, before the gateway binds anything; every problem is
//! listed with the flag it came from and how to fix it.

use reqwest::Url;

use super::error::GatewayError;

/// Largest request body the gateway buffers. Buffering is what lets a request be sent
/// again to another node; nodes accept at most 500 KB, so every request a node could take
/// fits, while memory stays bounded (at most `inflight_max` bodies are held at once).
/// Larger requests get 413 without being forwarded.
pub const BODY_MAX_BYTES: usize = 1024 * 1024;
/// Shortest time a node stays out of rotation after a proxied request failed on it
/// (connection error or 5xx); it returns at its first successful health check after that.
pub const EJECTION_MIN_MS: u64 = 1_000;
/// How long a node that answered 429 loses every power-of-two-choices comparison against
/// a node that did not, so a retry lands elsewhere while the refusing node sheds load.
pub const REFUSAL_PENALTY_MS: u64 = 1_000;
/// Time one health probe may take before the node counts as unreachable. It is not tied
/// to the interval: a node slowed for a moment by load is not a node gone, and a probe
/// too eager would take every node out at once when the machine is busy. Rounds never
/// overlap, so a slow node delays the next round by at most this much.
pub const HEALTH_PROBE_TIMEOUT_MS: u64 = 1_000;
/// Bytes of a node's health reply the gateway reads (enough for its `reason`).
pub const HEALTH_BODY_MAX_BYTES: usize = 4 * 1024;
/// Time allowed to open a TCP connection to a node.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Idle keep-alive connections kept open per node.
pub const IDLE_CONNECTIONS_PER_NODE_MAX: usize = 256;
/// An idle pooled connection to a node is dropped after this long, ms: below the nodes'
/// own idle timeout (`http.idle_timeout_ms`, 60 s), so the gateway never sends a request
/// on a connection the node is closing, which would count as a connection error and eject
/// a healthy node.
pub const IDLE_CONNECTION_MS: u64 = 30_000;
/// Seconds in `Retry-After` on the gateway's own 429/502/503/504 replies.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Most nodes one gateway balances over.
pub const NODES_MAX: usize = 64;
/// Shortest health-check interval accepted.
pub const HEALTH_INTERVAL_MS_MIN: u64 = 50;
/// Longest health-check interval accepted.
pub const HEALTH_INTERVAL_MS_MAX: u64 = 60_000;
/// Highest `inflight_max` accepted (each in-flight request may hold a buffered body).
pub const INFLIGHT_MAX_CEILING: usize = 100_000;
/// Shortest request timeout accepted.
pub const REQUEST_TIMEOUT_MS_MIN: u64 = 100;
/// Longest request timeout accepted.
pub const REQUEST_TIMEOUT_MS_MAX: u64 = 600_000;
/// Highest `attempts_max` accepted.
pub const ATTEMPTS_MAX_CEILING: u32 = 10;

/// Default health-check interval.
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 500;
/// Default bound on requests in flight.
pub const DEFAULT_INFLIGHT_MAX: usize = 2048;
/// Default time a client request may take, all attempts included.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default number of attempts per request (the first one included).
pub const DEFAULT_ATTEMPTS_MAX: u32 = 3;

/// How a gateway runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayOptions {
    /// Base URLs of the nodes, e.g. `http://127.0.0.1:8081` (plain HTTP, no path).
    pub nodes: Vec<String>,
    /// Time between two rounds of `GET /health/ready` on every node.
    pub health_interval_ms: u64,
    /// Requests in flight at most; more are answered 429 at once, never queued.
    pub inflight_max: usize,
    /// Time a client request may take, all attempts included; then 504.
    pub request_timeout_ms: u64,
    /// Attempts per request, the first included; retries go to another node if possible.
    pub attempts_max: u32,
    /// CA certificate (PEM) that `https://` nodes' certificates must chain to; without
    /// one, only `http://` nodes can be reached.
    pub ca_file: Option<std::path::PathBuf>,
}

impl GatewayOptions {
    /// Options for these nodes with every other setting at its default.
    pub fn new(nodes: Vec<String>) -> GatewayOptions {
        GatewayOptions {
            nodes,
            health_interval_ms: DEFAULT_HEALTH_INTERVAL_MS,
            inflight_max: DEFAULT_INFLIGHT_MAX,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            attempts_max: DEFAULT_ATTEMPTS_MAX,
            ca_file: None,
        }
    }

    /// Checks every option; on success returns the node base URLs in canonical form
    /// (`http://host:port`, no trailing slash), in the order given.
    pub fn validate(&self) -> Result<Vec<String>, GatewayError> {
        let mut problems = Vec::new();
        let mut bases: Vec<String> = Vec::new();
        if self.nodes.is_empty() {
            problems.push("--nodes is empty; list node URLs such as http://127.0.0.1:8081".into());
        }
        if self.nodes.len() > NODES_MAX {
            problems.push(format!(
                "--nodes lists {} nodes; at most {NODES_MAX} are supported",
                self.nodes.len()
            ));
        }
        for node in &self.nodes {
            match node_base(node, self.ca_file.is_some()) {
                Ok(base) if bases.contains(&base) => {
                    problems.push(format!("--nodes lists {base} twice; list each node once"));
                }
                Ok(base) => bases.push(base),
                Err(problem) => problems.push(problem),
            }
        }
        check_range(
            &mut problems,
            "--health-interval-ms",
            self.health_interval_ms,
            HEALTH_INTERVAL_MS_MIN,
            HEALTH_INTERVAL_MS_MAX,
        );
        check_range(
            &mut problems,
            "--inflight-max",
            self.inflight_max as u64,
            1,
            INFLIGHT_MAX_CEILING as u64,
        );
        check_range(
            &mut problems,
            "--request-timeout-ms",
            self.request_timeout_ms,
            REQUEST_TIMEOUT_MS_MIN,
            REQUEST_TIMEOUT_MS_MAX,
        );
        check_range(
            &mut problems,
            "--attempts-max",
            u64::from(self.attempts_max),
            1,
            u64::from(ATTEMPTS_MAX_CEILING),
        );
        if problems.is_empty() {
            Ok(bases)
        } else {
            Err(GatewayError::InvalidOptions(problems))
        }
    }
}

fn check_range(problems: &mut Vec<String>, flag: &str, value: u64, min: u64, max: u64) {
    if !(min..=max).contains(&value) {
        problems.push(format!(
            "{flag} = {value} is out of range; use {min}..={max}"
        ));
    }
}

/// The canonical base URL of a node, or why it cannot be one.
fn node_base(raw: &str, https: bool) -> Result<String, String> {
    let url = Url::parse(raw.trim()).map_err(|error| {
        format!("--nodes entry {raw:?} is not a URL ({error}); use http://HOST:PORT")
    })?;
    match url.scheme() {
        "http" => {}
        "https" if https => {}
        "https" => {
            return Err(format!(
                "--nodes entry {raw:?} uses https without --ca-file; give the CA that signed \
                 the nodes' certificates"
            ));
        }
        other => {
            return Err(format!(
                "--nodes entry {raw:?} uses {other}; use http://HOST:PORT or https://HOST:PORT"
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "--nodes entry {raw:?} has no host; use http://HOST:PORT"
        ));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "--nodes entry {raw:?} has a path, query or fragment; give the node's base URL, http://HOST:PORT"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_options_give_canonical_bases() {
        let options = GatewayOptions::new(vec![
            "http://127.0.0.1:8081/".into(),
            " http://localhost:8082".into(),
            "http://[::1]:80".into(),
        ]);
        assert_eq!(
            options.validate().expect("valid"),
            [
                "http://127.0.0.1:8081",
                "http://localhost:8082",
                "http://[::1]"
            ]
        );
    }

    #[test]
    fn every_problem_is_listed_with_its_flag() {
        let options = GatewayOptions {
            nodes: vec![
                "https://a:1".into(),
                "nowhere".into(),
                "http://b:2/v1".into(),
                "http://c:3".into(),
                "http://c:3/".into(),
            ],
            health_interval_ms: 1,
            inflight_max: 0,
            request_timeout_ms: 10,
            attempts_max: 0,
            ca_file: None,
        };
        let Err(GatewayError::InvalidOptions(problems)) = options.validate() else {
            panic!("options should be invalid");
        };
        let text = problems.join("\n");
        for needle in [
            "uses https without --ca-file",
            "\"nowhere\" is not a URL",
            "has a path",
            "http://c:3 twice",
            "--health-interval-ms = 1",
            "--inflight-max = 0",
            "--request-timeout-ms = 10",
            "--attempts-max = 0",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
        assert_eq!(problems.len(), 8, "{text}");
    }

    #[test]
    fn no_nodes_is_a_problem() {
        assert!(GatewayOptions::new(Vec::new()).validate().is_err());
    }
}
