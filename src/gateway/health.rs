//! Whether one node is in rotation: a pure state machine fed by active health checks and
//! by failures of proxied requests.
//!
//! Invariant (asserted after every transition): a node is in rotation exactly when its
//! last health check said ready *and* it is not ejected. A failed proxied request
//! (connection error or a 5xx other than 503) ejects the node for at least [`EJECTION_MIN_MS`]; the
//! ejection ends only at a successful health check made after that time, so a node comes
//! back because it proved itself ready, not because a timer ran out.
//!
//! Nothing here does I/O or reads a clock: callers pass `now`.

use std::time::{Duration, Instant};

use super::options::EJECTION_MIN_MS;

/// What the last `GET /health/ready` on a node found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// 200: the node can serve.
    Ready,
    /// Any other status, with the node's `reason` when it gave one.
    NotReady {
        /// The HTTP status.
        status: u16,
        /// The `reason` (or `message`) field of the reply, possibly empty.
        reason: String,
    },
    /// No answer within the probe timeout, or the connection failed.
    Unreachable {
        /// What the client library reported.
        error: String,
    },
}

impl std::fmt::Display for CheckResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckResult::Ready => write!(f, "ready"),
            CheckResult::NotReady { status, reason } => write!(f, "not ready ({status} {reason})"),
            CheckResult::Unreachable { error } => write!(f, "unreachable ({error})"),
        }
    }
}

/// A change in whether a node is in rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// The node entered rotation.
    Joined,
    /// The node left rotation.
    Left,
}

/// The health of one node.
#[derive(Clone, Debug)]
pub struct NodeHealth {
    /// The last health check said ready.
    healthy: bool,
    /// Set by a failed proxied request; cleared by a ready check at or after this time.
    ejected_until: Option<Instant>,
    /// Cached `healthy && ejected_until.is_none()`; see [`NodeHealth::in_rotation`].
    in_rotation: bool,
    /// The last health check and when it finished; `None` before the first.
    last_check: Option<(Instant, CheckResult)>,
}

impl Default for NodeHealth {
    fn default() -> NodeHealth {
        NodeHealth::new()
    }
}

impl NodeHealth {
    /// A node not yet checked: out of rotation until its first ready check.
    pub fn new() -> NodeHealth {
        NodeHealth {
            healthy: false,
            ejected_until: None,
            in_rotation: false,
            last_check: None,
        }
    }

    /// Records a health check that finished at `now`.
    pub fn checked(&mut self, result: CheckResult, now: Instant) -> Option<Membership> {
        self.healthy = result == CheckResult::Ready;
        if self.healthy && self.ejected_until.is_some_and(|until| now >= until) {
            self.ejected_until = None;
        }
        self.last_check = Some((now, result));
        self.settle()
    }

    /// Records a proxied request that failed on this node at `now`: ejects it (or extends
    /// its ejection) for at least [`EJECTION_MIN_MS`].
    pub fn failed(&mut self, now: Instant) -> Option<Membership> {
        let until = now + Duration::from_millis(EJECTION_MIN_MS);
        self.ejected_until = Some(self.ejected_until.map_or(until, |old| old.max(until)));
        self.settle()
    }

    /// Whether the balancer should have this node.
    pub fn in_rotation(&self) -> bool {
        self.in_rotation
    }

    /// Whether the last health check said ready.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Until when the node is ejected, if it is.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    /// The last health check and when it finished.
    pub fn last_check(&self) -> Option<&(Instant, CheckResult)> {
        self.last_check.as_ref()
    }

    fn settle(&mut self) -> Option<Membership> {
        let wanted = self.healthy && self.ejected_until.is_none();
        let change = match (self.in_rotation, wanted) {
            (false, true) => Some(Membership::Joined),
            (true, false) => Some(Membership::Left),
            _ => None,
        };
        self.in_rotation = wanted;
        assert_eq!(
            self.in_rotation,
            self.healthy && self.ejected_until.is_none(),
            "a node is in rotation exactly when healthy and not ejected"
        );
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_ready() -> CheckResult {
        CheckResult::NotReady {
            status: 503,
            reason: "no_leader".into(),
        }
    }

    /// One step of a scenario: what happens, milliseconds after the start, and the
    /// expected change and rotation state after it.
    enum Step {
        Check(CheckResult),
        Fail,
    }

    fn run(steps: &[(u64, Step, Option<Membership>, bool)]) {
        let start = Instant::now();
        let mut health = NodeHealth::new();
        assert!(!health.in_rotation(), "a new node starts out of rotation");
        for (index, (at_ms, step, change, in_rotation)) in steps.iter().enumerate() {
            let now = start + Duration::from_millis(*at_ms);
            let got = match step {
                Step::Check(result) => health.checked(result.clone(), now),
                Step::Fail => health.failed(now),
            };
            assert_eq!(got, *change, "step {index}: change");
            assert_eq!(health.in_rotation(), *in_rotation, "step {index}: rotation");
        }
    }

    #[test]
    fn checks_move_a_node_in_and_out() {
        use Membership::*;
        run(&[
            (0, Step::Check(CheckResult::Ready), Some(Joined), true),
            (500, Step::Check(CheckResult::Ready), None, true),
            (1_000, Step::Check(not_ready()), Some(Left), false),
            (
                1_500,
                Step::Check(CheckResult::Unreachable {
                    error: "refused".into(),
                }),
                None,
                false,
            ),
            (2_000, Step::Check(CheckResult::Ready), Some(Joined), true),
        ]);
    }

    #[test]
    fn an_ejected_node_returns_only_on_a_ready_check_after_the_minimum() {
        use Membership::*;
        let min = EJECTION_MIN_MS;
        run(&[
            (0, Step::Check(CheckResult::Ready), Some(Joined), true),
            (10, Step::Fail, Some(Left), false),
            // Ready, but too early: still ejected.
            (10 + min / 2, Step::Check(CheckResult::Ready), None, false),
            // The minimum has passed, but the check fails: still out.
            (10 + min, Step::Check(not_ready()), None, false),
            // The first ready check after the minimum brings it back.
            (
                10 + min + 500,
                Step::Check(CheckResult::Ready),
                Some(Joined),
                true,
            ),
        ]);
    }

    #[test]
    fn a_second_failure_extends_the_ejection() {
        use Membership::*;
        let min = EJECTION_MIN_MS;
        run(&[
            (0, Step::Check(CheckResult::Ready), Some(Joined), true),
            (0, Step::Fail, Some(Left), false),
            (min / 2, Step::Fail, None, false),
            (min, Step::Check(CheckResult::Ready), None, false),
            (
                min / 2 + min,
                Step::Check(CheckResult::Ready),
                Some(Joined),
                true,
            ),
        ]);
    }

    #[test]
    fn a_failure_before_any_check_keeps_the_node_out_after_its_first_ready_check() {
        use Membership::*;
        run(&[
            (0, Step::Fail, None, false),
            (1, Step::Check(CheckResult::Ready), None, false),
            (
                EJECTION_MIN_MS,
                Step::Check(CheckResult::Ready),
                Some(Joined),
                true,
            ),
        ]);
    }
}
