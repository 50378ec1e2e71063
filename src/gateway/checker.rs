//! Active health checks: every interval, `GET {node}/health/ready` on every node at once.
//!
//! A probe is bounded in time (`HEALTH_PROBE_TIMEOUT_MS`) and in the bytes it reads.
//! Results go to the registry, which moves nodes in and out of rotation. Rounds never
//! overlap: the next one starts an interval after the previous one was started, or at once
//! if it overran.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::MissedTickBehavior;

use super::endpoint::describe;
use super::health::CheckResult;
use super::options::HEALTH_BODY_MAX_BYTES;
use super::registry::Registry;

/// Probes every node once and records the results.
pub async fn check_all(registry: &Registry, timeout: Duration) {
    let probes = registry.nodes().iter().enumerate().map(|(key, node)| {
        let client = registry.client();
        async move {
            let result = probe(client, &node.url, timeout).await;
            registry.record_check(key, result);
        }
    });
    join_all(probes).await;
}

/// Checks every node every `interval`, forever; the first round starts after one interval
/// (the gateway runs a round itself before it serves).
pub async fn run(registry: Arc<Registry>, interval: Duration, timeout: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await; // The first tick is immediate.
    loop {
        ticks.tick().await;
        check_all(&registry, timeout).await;
    }
}

/// One `GET {base}/health/ready`.
async fn probe(client: &reqwest::Client, base: &str, timeout: Duration) -> CheckResult {
    let reply = client
        .get(format!("{base}/health/ready"))
        .timeout(timeout)
        .send()
        .await;
    let mut response = match reply {
        Ok(response) => response,
        Err(error) => {
            return CheckResult::Unreachable {
                error: describe(&error),
            };
        }
    };
    let status = response.status();
    // Read the body even when ready, so the connection goes back to the pool.
    let body = match read_capped(&mut response, HEALTH_BODY_MAX_BYTES).await {
        Ok(body) => body,
        Err(error) => {
            return CheckResult::Unreachable {
                error: describe(&error),
            };
        }
    };
    if status.is_success() {
        CheckResult::Ready
    } else {
        CheckResult::NotReady {
            status: status.as_u16(),
            reason: reason(&body),
        }
    }
}

/// Up to `max` bytes of a response body.
async fn read_capped(response: &mut reqwest::Response, max: usize) -> reqwest::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == max {
            break;
        }
    }
    Ok(body)
}

/// The `reason` (or else `message`) of a node's not-ready reply, if it has one.
fn reason(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    ["reason", "message"]
        .iter()
        .find_map(|field| value.get(field).and_then(|v| v.as_str()))
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_come_from_the_node_reply() {
        assert_eq!(
            reason(br#"{"status":"not_ready","reason":"no_leader"}"#),
            "no_leader"
        );
        assert_eq!(
            reason(br#"{"code":"shutting_down","message":"bye"}"#),
            "bye"
        );
        assert_eq!(reason(b"<html>"), "");
        assert_eq!(reason(br#"{"reason":7}"#), "");
    }
}
