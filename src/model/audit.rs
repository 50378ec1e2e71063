//! The bookkeeping that bounds a profile's audit trail (its merge history): which
//! records are kept, which refusals were recorded already, and what was left out.
//!
//! Input can repeat a refused link on every event — one profile was sent 64,001
//! identities, 16 new external id types per event — and recording every refusal would let
//! the audit trail itself grow without bound. So, per profile:
//! - a refusal is recorded once per **kind**: the rule that refused it and the other
//!   profile it would have linked (`None` for a new identity). Repeats are counted;
//! - at most `cap` records are kept under the profile's id: recording one more removes
//!   the oldest, which is counted;
//! - the kinds remembered are bounded by the same cap: the oldest is forgotten first (a
//!   forgotten kind that comes back is recorded again, within the record cap).
//!
//! Everything here is a pure function of the calls made, in order, so every replica keeps
//! the same records. The store carries out the decisions (writes and removes records).

use serde::{Deserialize, Serialize};

/// Default most audit records kept under one profile id (`identity.max_audit_records`).
pub const AUDIT_RECORDS_DEFAULT_MAX: usize = 100;
/// Largest accepted `identity.max_audit_records`: the kept records' positions live in the
/// profile record, which every event on the profile rewrites.
pub const AUDIT_RECORDS_CEILING: usize = 10_000;

/// What makes two refusals the same for recording: the rule and the other profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalKind {
    /// The rule that refused the link, e.g. "at most 16 external id types per profile".
    pub rule: String,
    /// The profile the refused identity belongs to; `None` for a new identity or a limit
    /// on the profile itself (trait keys).
    pub other_profile: Option<u64>,
}

/// A profile's audit bookkeeping, stored with the profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// Sequence numbers of the audit records kept under this profile's id, oldest first.
    /// Records written before this bookkeeping existed are not listed (and never removed).
    pub kept: Vec<u64>,
    /// Records removed, oldest first, to stay within the cap.
    pub records_dropped: u64,
    /// Kinds of refusal recorded on this profile or on profiles merged into it, oldest
    /// first, at most the cap.
    pub refused: Vec<RefusalKind>,
    /// Refusals not recorded because their kind was recorded already.
    pub refusals_unrecorded: u64,
    /// Trait values not stored because the profile held its most trait keys.
    pub traits_dropped: u64,
}

impl Audit {
    /// Whether a refusal of `kind` is to be recorded: yes the first time (the kind is
    /// remembered, forgetting the oldest past `cap`), no for a repeat (it is counted).
    pub fn admit_refusal(&mut self, kind: RefusalKind, cap: usize) -> bool {
        if self.refused.contains(&kind) {
            self.refusals_unrecorded = self.refusals_unrecorded.saturating_add(1);
            return false;
        }
        self.refused.push(kind);
        self.forget_oldest_kinds(cap);
        true
    }

    fn forget_oldest_kinds(&mut self, cap: usize) {
        let excess = self.refused.len().saturating_sub(cap.max(1));
        self.refused.drain(..excess);
    }

    /// Notes that record `seq` was written under this profile; returns the records to
    /// remove (oldest first) so that at most `cap` stay.
    pub fn keep(&mut self, seq: u64, cap: usize) -> Vec<u64> {
        self.kept.push(seq);
        let excess = self.kept.len().saturating_sub(cap.max(1));
        self.records_dropped = self.records_dropped.saturating_add(excess as u64);
        self.kept.drain(..excess).collect()
    }

    /// Folds in the bookkeeping of a profile merged into this one. Its records stay under
    /// its own id (reads visit merged profiles), so only the counters and the remembered
    /// kinds carry over (its kinds count as older than ours; at most `cap` are kept).
    pub fn absorb(&mut self, other: Audit, cap: usize) {
        self.records_dropped = self.records_dropped.saturating_add(other.records_dropped);
        self.refusals_unrecorded = self
            .refusals_unrecorded
            .saturating_add(other.refusals_unrecorded);
        self.traits_dropped = self.traits_dropped.saturating_add(other.traits_dropped);
        let mut kinds: Vec<RefusalKind> = other
            .refused
            .into_iter()
            .filter(|kind| !self.refused.contains(kind))
            .collect();
        kinds.append(&mut self.refused);
        self.refused = kinds;
        self.forget_oldest_kinds(cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(rule: &str, other: Option<u64>) -> RefusalKind {
        RefusalKind {
            rule: rule.into(),
            other_profile: other,
        }
    }

    /// Each row: a sequence of refusal kinds offered to one profile (rule letter, other
    /// profile), the cap, and which offers are recorded ('R') or counted ('-').
    #[test]
    fn refusals_are_recorded_once_per_kind_table() {
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, &[(&str, Option<u64>)], usize, &str)] = &[
            (
                "a repeated rule is recorded once",
                &[("a", None), ("a", None), ("a", None)],
                10,
                "R--",
            ),
            (
                "different rules are each recorded",
                &[("a", None), ("b", None), ("a", None), ("b", None)],
                10,
                "RR--",
            ),
            (
                "the same rule against another profile is another kind",
                &[("a", Some(1)), ("a", Some(2)), ("a", Some(1)), ("a", None)],
                10,
                "RR-R",
            ),
            (
                "past the cap on kinds, the oldest kind is forgotten",
                &[
                    ("a", None),
                    ("b", None),
                    ("c", None),
                    ("c", None),
                    ("a", None),
                ],
                2,
                "RRR-R",
            ),
        ];
        for (name, offers, cap, want) in cases {
            let mut audit = Audit::default();
            let got: String = offers
                .iter()
                .map(|(rule, other)| {
                    if audit.admit_refusal(kind(rule, *other), *cap) {
                        'R'
                    } else {
                        '-'
                    }
                })
                .collect();
            assert_eq!(got, *want, "{name}");
            let unrecorded = want.chars().filter(|c| *c == '-').count() as u64;
            assert_eq!(audit.refusals_unrecorded, unrecorded, "{name}: counted");
        }
    }

    #[test]
    fn the_last_records_are_kept_and_the_rest_counted() {
        let mut audit = Audit::default();
        let mut removed = Vec::new();
        for seq in 1..=7 {
            removed.extend(audit.keep(seq, 3));
        }
        assert_eq!(audit.kept, vec![5, 6, 7]);
        assert_eq!(removed, vec![1, 2, 3, 4]);
        assert_eq!(audit.records_dropped, 4);
        // A cap lowered after the fact trims to the new cap at the next record.
        assert_eq!(audit.keep(8, 1), vec![5, 6, 7]);
        assert_eq!(audit.kept, vec![8]);
        assert_eq!(audit.records_dropped, 7);
    }

    #[test]
    fn absorbing_adds_counters_and_bounded_kinds() {
        let mut winner = Audit::default();
        winner.admit_refusal(kind("a", None), 2);
        winner.traits_dropped = 3;
        let mut loser = Audit::default();
        loser.admit_refusal(kind("a", None), 2);
        loser.admit_refusal(kind("b", None), 2);
        loser.admit_refusal(kind("c", None), 2);
        loser.records_dropped = 5;
        loser.kept = vec![9];
        winner.absorb(loser, 2);
        assert_eq!(
            winner.refused,
            vec![kind("c", None), kind("a", None)],
            "the loser's kinds are older; the oldest are forgotten"
        );
        assert_eq!(winner.refusals_unrecorded, 0);
        assert_eq!(winner.records_dropped, 5);
        assert_eq!(winner.traits_dropped, 3);
        assert!(
            winner.kept.is_empty(),
            "the loser's records stay under its id"
        );
    }
}
