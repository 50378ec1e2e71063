//! Delivery of notifications to receivers, off the evaluation and ingest paths.
//!
//! Each receiver has its own bounded queue and its own task: the evaluator only pushes
//! (never waits), a full queue drops its **oldest** notification (counted as `dropped`),
//! and the task sends one notification at a time with a timeout per attempt and
//! exponential backoff between attempts, giving up after `attempts_max` (counted as
//! `failed`). So a receiver that is down or slow costs a bounded amount of memory and one
//! idle task — never a request's latency.
//!
//! Alertmanager receives its v2 API (`POST {url}/api/v2/alerts`, a JSON array of
//! `{labels, annotations, startsAt, endsAt, generatorURL}`); a webhook receives one JSON
//! object per notification ([`webhook_body`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;

use super::lifecycle::{Alert, State};
use crate::config::{DeliveryConfig, ReceiverConfig, ReceiverKind};
use crate::node::metrics::{Metrics, NotificationLabels};

/// One notification as queued: the alert and the times a receiver needs.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The alert (firing or resolved).
    pub alert: Alert,
    /// `endsAt`, ms: the resolution time, or for a firing alert when a receiver that
    /// hears nothing more may consider it over.
    pub ends_ms: i64,
    /// Sent by this node (`node` in a webhook body).
    pub node_id: u64,
    /// The page that shows it (`generatorURL`).
    pub generator_url: String,
    /// Only for Alertmanager receivers (a periodic re-send that keeps a firing alert
    /// alive there; webhooks hear only transitions and repeats).
    pub alertmanager_only: bool,
}

/// One receiver's queue and counters.
struct Queue {
    /// What waits, oldest first (at most `queue_max`).
    items: Mutex<VecDeque<Outgoing>>,
    /// Wakes the sender.
    wake: Notify,
}

/// Every receiver's queue; each is drained by its own task.
pub struct Delivery {
    /// `(receiver config, its label, its queue)`.
    receivers: Vec<(ReceiverConfig, String, Arc<Queue>)>,
    /// Most notifications waiting per receiver.
    queue_max: usize,
    /// Counters.
    metrics: Arc<Metrics>,
}

impl Delivery {
    /// Queues for `receivers`, and starts their senders (on the current tokio runtime).
    pub fn start(
        receivers: &[ReceiverConfig],
        config: &DeliveryConfig,
        metrics: Arc<Metrics>,
    ) -> Delivery {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.attempt_timeout_ms))
            .build()
            .unwrap_or_default();
        let receivers: Vec<_> = receivers
            .iter()
            .enumerate()
            .map(|(i, receiver)| {
                let kind = match receiver.kind {
                    ReceiverKind::Alertmanager => "alertmanager",
                    ReceiverKind::Webhook => "webhook",
                };
                let label = format!("{kind}-{i}");
                let queue = Arc::new(Queue {
                    items: Mutex::new(VecDeque::new()),
                    wake: Notify::new(),
                });
                tokio::spawn(send_loop(Sender {
                    receiver: receiver.clone(),
                    label: label.clone(),
                    queue: Arc::clone(&queue),
                    client: client.clone(),
                    config: config.clone(),
                    metrics: Arc::clone(&metrics),
                }));
                (receiver.clone(), label, queue)
            })
            .collect();
        Delivery {
            receivers,
            queue_max: config.queue_max,
            metrics,
        }
    }

    /// Queues `outgoing` for every receiver it is meant for, dropping the oldest waiting
    /// notification of a full queue. Never waits.
    pub fn push(&self, outgoing: &Outgoing) {
        for (receiver, label, queue) in &self.receivers {
            if outgoing.alertmanager_only && receiver.kind != ReceiverKind::Alertmanager {
                continue;
            }
            let dropped = {
                let mut items = queue.items.lock().unwrap_or_else(|p| p.into_inner());
                items.push_back(outgoing.clone());
                let mut dropped = 0;
                while items.len() > self.queue_max {
                    items.pop_front();
                    dropped += 1;
                }
                dropped
            };
            if dropped > 0 {
                self.count(label, "dropped", dropped);
            }
            queue.wake.notify_one();
        }
    }

    /// Notifications waiting, per receiver label.
    pub fn queued(&self) -> Vec<(String, usize)> {
        self.receivers
            .iter()
            .map(|(_, label, queue)| {
                let items = queue.items.lock().unwrap_or_else(|p| p.into_inner());
                (label.clone(), items.len())
            })
            .collect()
    }

    fn count(&self, label: &str, outcome: &'static str, n: u64) {
        count(&self.metrics, label, outcome, n);
    }
}

fn count(metrics: &Metrics, label: &str, outcome: &'static str, n: u64) {
    metrics
        .alert_notifications
        .get_or_create(&NotificationLabels {
            receiver: label.to_owned(),
            outcome,
        })
        .inc_by(n);
}

/// What one receiver's task needs.
struct Sender {
    receiver: ReceiverConfig,
    label: String,
    queue: Arc<Queue>,
    client: reqwest::Client,
    config: DeliveryConfig,
    metrics: Arc<Metrics>,
}

/// Sends the queue's notifications one by one, for as long as the runtime runs.
async fn send_loop(sender: Sender) {
    loop {
        let next = {
            let mut items = sender.queue.items.lock().unwrap_or_else(|p| p.into_inner());
            items.pop_front()
        };
        let Some(outgoing) = next else {
            sender.queue.wake.notified().await;
            continue;
        };
        let outcome = match send_with_retries(&sender, &outgoing).await {
            Ok(()) => "sent",
            Err(error) => {
                tracing::warn!(
                    receiver = %sender.label,
                    alert = %outgoing.alert.key(),
                    %error,
                    "alert notification given up"
                );
                "failed"
            }
        };
        count(&sender.metrics, &sender.label, outcome, 1);
    }
}

/// Attempts with a timeout each and exponential backoff between them.
async fn send_with_retries(sender: &Sender, outgoing: &Outgoing) -> Result<(), String> {
    let (url, body) = match sender.receiver.kind {
        ReceiverKind::Alertmanager => (
            format!(
                "{}/api/v2/alerts",
                sender.receiver.url.trim_end_matches('/')
            ),
            Value::Array(vec![alertmanager_alert(outgoing)]),
        ),
        ReceiverKind::Webhook => (sender.receiver.url.clone(), webhook_body(outgoing)),
    };
    let timeout = Duration::from_millis(sender.config.attempt_timeout_ms);
    let mut backoff = Duration::from_millis(sender.config.backoff_ms);
    let backoff_max = Duration::from_millis(sender.config.backoff_max_ms);
    let mut last_error = String::new();
    for attempt in 1..=sender.config.attempts_max {
        let request = sender.client.post(&url).timeout(timeout).json(&body);
        match request.send().await {
            Ok(reply) if reply.status().is_success() => return Ok(()),
            Ok(reply) => last_error = format!("{url} answered {}", reply.status()),
            Err(error) => last_error = format!("{url}: {error}"),
        }
        if attempt < sender.config.attempts_max {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(backoff_max);
        }
    }
    Err(format!(
        "{} attempts failed; last: {last_error}",
        sender.config.attempts_max
    ))
}

/// RFC 3339 text of `ms` since the epoch (UTC).
pub fn rfc3339(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// One alert in Alertmanager's v2 API shape.
pub fn alertmanager_alert(outgoing: &Outgoing) -> Value {
    let alert = &outgoing.alert;
    json!({
        "labels": alert.labels,
        "annotations": alert.annotations,
        "startsAt": rfc3339(alert.fired_ms.unwrap_or(alert.active_since_ms)),
        "endsAt": rfc3339(outgoing.ends_ms),
        "generatorURL": outgoing.generator_url,
    })
}

/// A plain webhook's body: the status, the sending node, the alert as
/// `GET /v1/admin/alerts` shows it, and Alertmanager's fields.
pub fn webhook_body(outgoing: &Outgoing) -> Value {
    let alert = &outgoing.alert;
    let status = match alert.state {
        State::Resolved => "resolved",
        _ => "firing",
    };
    json!({
        "version": "1",
        "status": status,
        "node": outgoing.node_id,
        "alert": super::view(alert),
        "startsAt": rfc3339(alert.fired_ms.unwrap_or(alert.active_since_ms)),
        "endsAt": rfc3339(outgoing.ends_ms),
        "generatorURL": outgoing.generator_url,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::node::alerts::rules::{Scope, Severity};

    fn outgoing(state: State) -> Outgoing {
        let labels = BTreeMap::from([
            ("alertname".to_owned(), "TandemIngestionDrop".to_owned()),
            ("severity".to_owned(), "critical".to_owned()),
        ]);
        Outgoing {
            alert: Alert {
                name: "TandemIngestionDrop".into(),
                state,
                scope: Scope::Cluster,
                severity: Severity::Critical,
                labels,
                annotations: BTreeMap::from([("runbook".to_owned(), "look".to_owned())]),
                active_since_ms: 1_764_000_000_000,
                fired_ms: Some(1_764_000_120_000),
                resolved_ms: (state == State::Resolved).then_some(1_764_000_300_000),
                value: Some(0.0),
            },
            ends_ms: 1_764_000_300_000,
            node_id: 2,
            generator_url: "http://n2:8080/v1/admin/alerts".into(),
            alertmanager_only: false,
        }
    }

    #[test]
    fn alertmanager_gets_its_v2_fields_with_rfc3339_times() {
        let alert = alertmanager_alert(&outgoing(State::Firing));
        assert_eq!(alert["labels"]["alertname"], "TandemIngestionDrop");
        assert_eq!(alert["annotations"]["runbook"], "look");
        assert_eq!(
            alert["startsAt"], "2025-11-24T16:02:00Z",
            "startsAt is when it fired"
        );
        assert_eq!(alert["endsAt"], "2025-11-24T16:05:00Z");
        assert_eq!(alert["generatorURL"], "http://n2:8080/v1/admin/alerts");
        assert_eq!(alert.as_object().map(|o| o.len()), Some(5));
    }

    #[test]
    fn a_webhook_gets_the_status_the_sender_and_the_alert_as_the_view_shows_it() {
        let body = webhook_body(&outgoing(State::Resolved));
        assert_eq!(body["status"], "resolved");
        assert_eq!(body["node"], 2);
        assert_eq!(body["alert"]["state"], "resolved");
        assert_eq!(body["alert"]["resolved_at"], "2025-11-24T16:05:00Z");
        assert_eq!(body["alert"]["active_since"], "2025-11-24T16:00:00Z");
        assert_eq!(body["startsAt"], "2025-11-24T16:02:00Z");
        assert_eq!(webhook_body(&outgoing(State::Firing))["status"], "firing");
    }
}
