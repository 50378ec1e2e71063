//! The built-in alert evaluator: the shipped rules ([`rules`]) evaluated every
//! `alerts.evaluation_interval_ms` on every node, their lifecycle ([`lifecycle`]), and
//! delivery to Alertmanager and webhooks ([`delivery`]). `GET /v1/admin/alerts` shows the
//! pending and firing alerts and a bounded history of resolved ones.
//!
//! Scopes:
//! - **Node** rules (no leader known, error shares, fsync latency, disk space, services)
//!   run on every node about itself and carry a `node` label.
//! - **Cluster** rules (leader churn, unreachable or lagging followers, the ingestion-rate
//!   anomaly) run on the leader only. Before it notifies one, the leader commits an
//!   [`crate::model::command::AlertNote`] through Raft and sends only once it is applied;
//!   a leader elected later reads the notes, so it neither repeats a notification inside
//!   the repeat interval nor forgets to resolve one (see [`lifecycle`]). A leader that
//!   dies between committing and sending loses that one notification (it is sent again at
//!   the next repeat): at most once per repeat interval, never twice.
//!
//! The ingestion-rate baseline is learned from the replicated feed, not from memory
//! ([`anomaly`], [`inputs::rate_buckets`]), so a restart or failover keeps it.
//!
//! Invariants: evaluation never blocks ingestion (its store reads run on the blocking
//! pool, delivery on its own tasks with bounded queues); the history holds at most
//! `alerts.history_max` alerts.

pub mod anomaly;
pub mod delivery;
pub mod inputs;
pub mod lifecycle;
pub mod rules;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::AlertsConfig;
use crate::model::command::AlertNote;
use crate::node::Node;
use crate::node::metrics::{AlertLabels, Metrics};
use delivery::{Delivery, Outgoing, rfc3339};
use lifecycle::{Alert, Evaluator, State};
use rules::{Rule, Scope};

/// Alertmanager forgets a firing alert that is not sent again within its `endsAt`; a
/// firing alert is re-sent to Alertmanager receivers this often (and `endsAt` is set to
/// four times this ahead), as Prometheus does. Webhooks hear only transitions and repeats.
pub const ALERTMANAGER_RESEND: Duration = Duration::from_secs(60);

/// The node's evaluator, its view and its delivery.
pub struct Alerts {
    /// `[alerts]`.
    config: AlertsConfig,
    /// The enabled rules with overrides applied.
    rules: Vec<Rule>,
    /// Lifecycle state and history.
    evaluator: Mutex<Evaluator>,
    /// Counter readings for rates.
    counters: Mutex<inputs::CounterHistory>,
    /// Receivers' queues.
    delivery: Delivery,
    /// This node's id.
    node_id: u64,
    /// `generatorURL`: this node's alerts page.
    generator_url: String,
    /// For the disk-space rule.
    data_dir: PathBuf,
    /// For `tandem_alerts_firing`.
    metrics: Arc<Metrics>,
    /// The ingestion-rate detector's last verdict (judged on the leader only).
    last_rate: Mutex<anomaly::Verdict>,
    /// How long the last evaluation's input gathering (store reads included) took, µs.
    last_gather_us: std::sync::atomic::AtomicU64,
}

impl Alerts {
    /// The evaluator for node `node_id` (reachable at `advertise_url`); starts the
    /// receivers' senders. Fails on unknown rule names in `[alerts.rules]`.
    pub fn new(
        config: &AlertsConfig,
        node_id: u64,
        advertise_url: &str,
        data_dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Result<Alerts, String> {
        let rules = rules::configured(config)?;
        for spec in rules::CATALOGUE {
            metrics
                .alerts_firing
                .get_or_create(&AlertLabels {
                    alertname: spec.alertname.to_owned(),
                })
                .set(0);
        }
        Ok(Alerts {
            evaluator: Mutex::new(Evaluator::new(
                node_id,
                config.repeat_interval_ms,
                config.history_max,
            )),
            counters: Mutex::new(inputs::CounterHistory::default()),
            delivery: Delivery::start(&config.receivers, &config.delivery, Arc::clone(&metrics)),
            rules,
            node_id,
            generator_url: format!("{}/v1/admin/alerts", advertise_url.trim_end_matches('/')),
            data_dir,
            config: config.clone(),
            metrics,
            last_rate: Mutex::new(anomaly::Verdict::WarmingUp),
            last_gather_us: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// This node's pending and firing alerts, as `view` lists them (the dashboard's
    /// reports carry these alone).
    pub fn active(&self) -> Vec<Value> {
        let evaluator = self.evaluator.lock().unwrap_or_else(|p| p.into_inner());
        evaluator.active().map(view).collect()
    }

    /// `GET /v1/admin/alerts`: this node's pending and firing alerts and recent history.
    pub fn view(&self) -> Value {
        let rate = *self.last_rate.lock().unwrap_or_else(|p| p.into_inner());
        let ingest_rate = match rate {
            anomaly::Verdict::WarmingUp => json!({"state": "warming_up"}),
            anomaly::Verdict::Quiet { baseline_per_sec } => {
                json!({"state": "quiet", "baseline_per_sec": baseline_per_sec})
            }
            anomaly::Verdict::Judged {
                current_per_sec,
                baseline_per_sec,
            } => json!({
                "state": "judged",
                "current_per_sec": current_per_sec,
                "baseline_per_sec": baseline_per_sec,
            }),
        };
        let evaluator = self.evaluator.lock().unwrap_or_else(|p| p.into_inner());
        json!({
            "node": self.node_id,
            "enabled": self.config.enabled,
            "ingest_rate": ingest_rate,
            "last_gather_seconds": self.last_gather_us.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6,
            "alerts": evaluator.active().map(view).collect::<Vec<_>>(),
            "history": evaluator.history().map(view).collect::<Vec<_>>(),
            "queued": self.delivery.queued().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        })
    }

    /// One evaluation at `now_ms` over `inputs`; returns what to notify.
    fn evaluate(
        &self,
        now_ms: i64,
        inputs: &rules::Inputs,
        leading: bool,
        notes: &std::collections::BTreeMap<String, AlertNote>,
    ) -> Vec<lifecycle::Notification> {
        let hits = self
            .rules
            .iter()
            .map(|rule| (rule, rule.measure(inputs)))
            .collect();
        let mut evaluator = self.evaluator.lock().unwrap_or_else(|p| p.into_inner());
        let out = evaluator.step(now_ms, hits, leading, notes);
        for spec in rules::CATALOGUE {
            let firing = evaluator
                .active()
                .filter(|a| a.name == spec.alertname && a.state == State::Firing)
                .count();
            self.metrics
                .alerts_firing
                .get_or_create(&AlertLabels {
                    alertname: spec.alertname.to_owned(),
                })
                .set(firing as u64);
        }
        out
    }

    /// Queues `alert` for the receivers.
    fn deliver(&self, alert: Alert, now_ms: i64, alertmanager_only: bool) {
        let ends_ms = match alert.resolved_ms {
            Some(resolved) => resolved,
            None => now_ms + 4 * ALERTMANAGER_RESEND.as_millis() as i64,
        };
        self.delivery.push(&Outgoing {
            alert,
            ends_ms,
            node_id: self.node_id,
            generator_url: self.generator_url.clone(),
            alertmanager_only,
        });
    }
}

/// An alert as `GET /v1/admin/alerts` and webhooks show it.
pub fn view(alert: &Alert) -> Value {
    let mut value = serde_json::to_value(alert).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("active_since".into(), json!(rfc3339(alert.active_since_ms)));
        map.insert("fired_at".into(), json!(alert.fired_ms.map(rfc3339)));
        if alert.state == State::Resolved {
            map.insert("resolved_at".into(), json!(alert.resolved_ms.map(rfc3339)));
        }
    }
    value
}

/// Evaluates every `alerts.evaluation_interval_ms` until the node is dropped or shuts
/// down.
pub async fn run(node: Weak<Node>, alerts: Arc<Alerts>) {
    let interval = Duration::from_millis(alerts.config.evaluation_interval_ms);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_resend = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        let Some(node) = node.upgrade() else { return };
        if node.is_shutting_down() {
            return;
        }
        let resend = last_resend.elapsed() >= ALERTMANAGER_RESEND;
        if resend {
            last_resend = tokio::time::Instant::now();
        }
        evaluate_once(&node, &alerts, resend).await;
    }
}

/// Gathers inputs, evaluates, commits cluster notes, queues notifications.
async fn evaluate_once(node: &Arc<Node>, alerts: &Arc<Alerts>, resend: bool) {
    use openraft::async_runtime::WatchReceiver;
    let now_ms = crate::clock::now_ms();
    let leading = {
        let raft = node.raft().metrics().borrow_watched().clone();
        crate::cluster::leads(&raft)
    };
    let rates = {
        let now = inputs::counters(node);
        let window = i64::try_from(alerts.config.rate_window_ms).unwrap_or(i64::MAX);
        let mut history = alerts.counters.lock().unwrap_or_else(|p| p.into_inner());
        history.advance(now_ms, now, window)
    };
    let gathered = {
        let node = Arc::clone(node);
        let alerts = Arc::clone(alerts);
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let inputs = inputs::gather(
                &node,
                now_ms,
                rates,
                &alerts.config.ingest_rate,
                &alerts.data_dir,
            );
            let notes = if leading {
                node.store().reader().alert_notes()
            } else {
                Ok(Default::default())
            };
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            alerts
                .last_gather_us
                .store(micros, std::sync::atomic::Ordering::Relaxed);
            (inputs, notes)
        })
        .await
    };
    let (inputs, notes) = match gathered {
        Ok((inputs, Ok(notes))) => (inputs, notes),
        Ok((_, Err(error))) => {
            tracing::warn!(%error, "alerts: could not read the replicated alert notes");
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "alerts: gathering inputs failed");
            return;
        }
    };
    *alerts.last_rate.lock().unwrap_or_else(|p| p.into_inner()) = inputs.ingest;
    let notifications = alerts.evaluate(now_ms, &inputs, leading, &notes);
    let mut notified = std::collections::BTreeSet::new();
    for notification in notifications {
        let key = notification.alert.key();
        if let Some(note) = notification.note {
            // Recorded before it is sent: a new leader must not send it again.
            let command = crate::cluster::Command::AlertNote(note);
            if let Err(error) = node.execute(command, false).await {
                tracing::warn!(alert = %key, %error, "alerts: could not record a notification; retrying at the next evaluation");
                alerts
                    .evaluator
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .unnotify(&key);
                continue;
            }
        }
        notified.insert(key);
        alerts.deliver(notification.alert, now_ms, false);
    }
    if resend {
        // Keep firing alerts alive in Alertmanager (which dedups equal label sets).
        let firing: Vec<Alert> = {
            let evaluator = alerts.evaluator.lock().unwrap_or_else(|p| p.into_inner());
            evaluator
                .active()
                .filter(|a| a.state == State::Firing && !notified.contains(&a.key()))
                .filter(|a| a.scope == Scope::Node || leading)
                .cloned()
                .collect()
        };
        for alert in firing {
            alerts.deliver(alert, now_ms, true);
        }
    }
}
