//! The alert lifecycle, as a pure state machine over evaluations with time passed in:
//! **pending** (the condition holds, for less than the rule's `for`) → **firing**
//! (notified, and notified again every repeat interval) → **resolved** (notified once,
//! kept in a bounded history). A pending alert whose condition stops is dropped without
//! a notification, as Prometheus does.
//!
//! Cluster-scoped rules are evaluated on the leader only. Their notification state lives
//! in the replicated state ([`AlertNote`]): the evaluator reads the notes and returns,
//! with each cluster notification, the note to commit *before* it is sent. So a leader
//! elected after a failover
//! - adopts an alert the old leader notified (its `startsAt`, its last notification) and
//!   does not notify it again before the repeat interval is up;
//! - resolves an alert the old leader notified as firing and that no longer holds.
//!
//! A node that stops leading forgets its cluster alerts without resolving them: the new
//! leader owns them now.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use super::rules::{Hit, Rule, Scope, Severity};
use crate::model::command::AlertNote;

/// An alert's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The condition holds, not yet for the rule's `for`.
    Pending,
    /// Notified.
    Firing,
    /// Was firing; the condition no longer holds.
    Resolved,
}

/// One alert, as `GET /v1/admin/alerts` shows it and notifications carry it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// The `alertname`.
    pub name: String,
    /// Its state.
    pub state: State,
    /// Node or cluster.
    pub scope: Scope,
    /// Warning or critical.
    pub severity: Severity,
    /// Every label, `alertname` and `severity` included.
    pub labels: BTreeMap<String, String>,
    /// `summary`, `description`, `runbook`.
    pub annotations: BTreeMap<String, String>,
    /// When the condition started to hold, ms since the epoch.
    #[serde(skip)]
    pub active_since_ms: i64,
    /// When it started firing.
    #[serde(skip)]
    pub fired_ms: Option<i64>,
    /// When it resolved.
    #[serde(skip)]
    pub resolved_ms: Option<i64>,
    /// The measured value at the last evaluation.
    pub value: Option<f64>,
}

impl Alert {
    /// The identity: name and labels, e.g. `TandemNodeUnreachable{peer="3"}`.
    pub fn key(&self) -> String {
        alert_key(&self.labels)
    }
}

/// `alertname{k="v",…}` over the labels other than `alertname` (sorted).
pub fn alert_key(labels: &BTreeMap<String, String>) -> String {
    let name = labels.get("alertname").map_or("", String::as_str);
    let rest: Vec<String> = labels
        .iter()
        .filter(|(k, _)| k.as_str() != "alertname")
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{name}{{{}}}", rest.join(","))
}

/// Something to tell the receivers.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The alert, firing or resolved.
    pub alert: Alert,
    /// For a cluster alert: the note to commit before sending (send only if it commits).
    pub note: Option<AlertNote>,
}

/// What a node evaluates and remembers.
pub struct Evaluator {
    /// This node's id (the `node` label of node-scoped alerts).
    node_id: u64,
    /// Re-notify a firing alert after this long, ms.
    repeat_ms: i64,
    /// Most resolved alerts kept.
    history_max: usize,
    /// Alerts pending or firing, by key, with when they were last notified.
    active: BTreeMap<String, (Alert, Option<i64>)>,
    /// Resolved alerts, newest first.
    history: VecDeque<Alert>,
}

impl Evaluator {
    /// An evaluator for node `node_id`.
    pub fn new(node_id: u64, repeat_ms: u64, history_max: usize) -> Evaluator {
        Evaluator {
            node_id,
            repeat_ms: i64::try_from(repeat_ms).unwrap_or(i64::MAX),
            history_max,
            active: BTreeMap::new(),
            history: VecDeque::new(),
        }
    }

    /// Pending and firing alerts.
    pub fn active(&self) -> impl Iterator<Item = &Alert> {
        self.active.values().map(|(alert, _)| alert)
    }

    /// Resolved alerts, newest first.
    pub fn history(&self) -> impl Iterator<Item = &Alert> {
        self.history.iter()
    }

    /// One evaluation at `now_ms`: `hits` holds, per rule, what its condition found;
    /// cluster rules are judged only when `leading`, against the replicated `notes`.
    /// Returns what to notify.
    pub fn step(
        &mut self,
        now_ms: i64,
        hits: Vec<(&Rule, Vec<Hit>)>,
        leading: bool,
        notes: &BTreeMap<String, AlertNote>,
    ) -> Vec<Notification> {
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (rule, rule_hits) in hits {
            if rule.spec.scope == Scope::Cluster && !leading {
                continue;
            }
            for hit in rule_hits {
                let alert = self.describe(rule, hit, now_ms);
                let key = alert.key();
                seen.insert(key.clone());
                let note = notes.get(&key).filter(|n| n.notified_ms > 0);
                self.observe(now_ms, rule, alert, note, &mut out);
            }
        }
        // Alerts whose condition no longer holds (or whose scope this node gave up).
        let gone: Vec<String> = self
            .active
            .keys()
            .filter(|key| !seen.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            let Some((mut alert, notified)) = self.active.remove(&key) else {
                continue;
            };
            if alert.scope == Scope::Cluster && !leading {
                continue;
            }
            if alert.state == State::Firing && notified.is_some() {
                alert.state = State::Resolved;
                alert.resolved_ms = Some(now_ms);
                out.push(self.resolution(alert));
            }
        }
        // Cluster alerts a previous leader left firing that no longer hold here.
        if leading {
            for note in notes.values() {
                if note.notified_ms > 0
                    && !seen.contains(&note.key)
                    && !out.iter().any(|n| n.alert.key() == note.key)
                    && let Some(alert) = self.orphan(note, now_ms)
                {
                    out.push(self.resolution(alert));
                }
            }
        }
        out
    }

    /// Forgets that `key` was notified (its note did not commit), so the next evaluation
    /// tries again.
    pub fn unnotify(&mut self, key: &str) {
        if let Some((_, notified)) = self.active.get_mut(key) {
            *notified = None;
        }
    }

    fn observe(
        &mut self,
        now_ms: i64,
        rule: &Rule,
        fresh: Alert,
        note: Option<&AlertNote>,
        out: &mut Vec<Notification>,
    ) {
        let key = fresh.key();
        let entry = self.active.entry(key).or_insert_with(|| match note {
            // A previous leader notified it: adopt its times, do not repeat early.
            Some(note) => {
                let mut alert = fresh.clone();
                alert.state = State::Firing;
                alert.active_since_ms = note.fired_ms.min(now_ms);
                alert.fired_ms = Some(note.fired_ms);
                (alert, Some(note.notified_ms))
            }
            None => (fresh.clone(), None),
        });
        let (alert, notified) = entry;
        alert.value = fresh.value;
        alert.annotations = fresh.annotations;
        let held_ms = now_ms.saturating_sub(alert.active_since_ms);
        if alert.state == State::Pending && held_ms >= i64::try_from(rule.for_ms).unwrap_or(0) {
            alert.state = State::Firing;
            alert.fired_ms = Some(now_ms);
        }
        let due = match *notified {
            None => true,
            Some(at) => now_ms.saturating_sub(at) >= self.repeat_ms,
        };
        if alert.state == State::Firing && due {
            *notified = Some(now_ms);
            let note = (alert.scope == Scope::Cluster).then(|| AlertNote {
                key: alert.key(),
                fired_ms: alert.fired_ms.unwrap_or(now_ms),
                notified_ms: now_ms,
            });
            out.push(Notification {
                alert: alert.clone(),
                note,
            });
        }
    }

    /// Records a resolved alert in the history and builds its notification.
    fn resolution(&mut self, alert: Alert) -> Notification {
        self.history.push_front(alert.clone());
        self.history.truncate(self.history_max);
        let note = (alert.scope == Scope::Cluster).then(|| AlertNote {
            key: alert.key(),
            fired_ms: alert.fired_ms.unwrap_or(alert.active_since_ms),
            notified_ms: 0,
        });
        Notification { alert, note }
    }

    /// A resolved alert rebuilt from a note a previous leader left firing.
    fn orphan(&self, note: &AlertNote, now_ms: i64) -> Option<Alert> {
        let name = note.key.split('{').next()?.to_owned();
        let spec = super::rules::CATALOGUE
            .iter()
            .find(|spec| spec.alertname == name)?;
        let mut labels = parse_key_labels(&note.key);
        labels.insert("alertname".into(), name.clone());
        Some(Alert {
            name,
            state: State::Resolved,
            scope: Scope::Cluster,
            severity: spec.severity,
            labels,
            annotations: annotations(spec.summary, "no longer holds", spec.runbook),
            active_since_ms: note.fired_ms,
            fired_ms: Some(note.fired_ms),
            resolved_ms: Some(now_ms),
            value: None,
        })
    }

    fn describe(&self, rule: &Rule, hit: Hit, now_ms: i64) -> Alert {
        let spec = rule.spec;
        let mut labels = hit.labels;
        labels.insert("alertname".into(), spec.alertname.into());
        labels.insert("severity".into(), spec.severity.as_str().into());
        if spec.scope == Scope::Node {
            labels.insert("node".into(), self.node_id.to_string());
        }
        Alert {
            name: spec.alertname.into(),
            state: State::Pending,
            scope: spec.scope,
            severity: spec.severity,
            labels,
            annotations: annotations(spec.summary, &hit.description, spec.runbook),
            active_since_ms: now_ms,
            fired_ms: None,
            resolved_ms: None,
            value: hit.value.filter(|v| v.is_finite()),
        }
    }
}

fn annotations(summary: &str, description: &str, runbook: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("summary".to_owned(), summary.to_owned()),
        ("description".to_owned(), description.to_owned()),
        ("runbook".to_owned(), runbook.to_owned()),
    ])
}

/// The labels of an [`alert_key`] (values were written with `{:?}`).
fn parse_key_labels(key: &str) -> BTreeMap<String, String> {
    let inner = key
        .split_once('{')
        .and_then(|(_, rest)| rest.strip_suffix('}'))
        .unwrap_or("");
    inner
        .split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.to_owned(), v.trim_matches('"').to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests;
