//! Identity resolution: given the identities an event carries and the current identity
//! graph, decide which profile the event belongs to, which new identities to attach to
//! it, which other profiles to merge into it — and which links to refuse.
//!
//! The decision is a pure function of its inputs ([`resolve`]), so it can be tested as a
//! table and replayed deterministically on every replica. The store carries out the
//! returned [`Plan`].
//!
//! The rules:
//! 1. Identities are considered in priority order (default: user id, email, phone,
//!    external ids, anonymous id). The highest-priority identity that already belongs to a
//!    profile makes that profile the target; if the highest-priority identity is new, the
//!    target is a new profile — unless a lower-priority identity's profile can adopt it.
//! 2. Every further identity either is attached (if new) or brings its profile along in a
//!    merge (if owned elsewhere) — but only when the combined profile stays within the
//!    limits: per class (default: at most one user id, so two known users who share a
//!    browser are never merged), per external id type, on the number of external id types
//!    and on the total number of identities. A link that would break a limit is refused
//!    and reported. The last two bound what one profile can collect whatever the events
//!    say: the per-type limit alone let a client invent a new type per identity.
//! 3. Placeholder values never reach this point (see [`super::identity::Blocklist`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::identity::{IdClass, IdKind, Identity};

/// Default most distinct external id types (`ext.<type>`) on one profile.
pub const EXTERNAL_TYPES_DEFAULT_MAX: usize = 16;
/// Default most identities of all classes on one profile.
pub const IDENTITIES_DEFAULT_MAX: usize = 200;

/// Merge limits and the canonical-id priority order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeRules {
    /// Classes, highest priority first. Every class must appear exactly once.
    pub priority: Vec<IdClass>,
    /// Most identities of each class one profile may hold. For `External`, the limit
    /// applies to each external type separately.
    pub limits: BTreeMap<IdClass, usize>,
    /// Most distinct external id types one profile may hold.
    pub external_types_max: usize,
    /// Most identities (all classes together) one profile may hold.
    pub identities_max: usize,
}

impl Default for MergeRules {
    fn default() -> Self {
        MergeRules {
            priority: vec![
                IdClass::UserId,
                IdClass::Email,
                IdClass::Phone,
                IdClass::External,
                IdClass::AnonymousId,
            ],
            limits: BTreeMap::from([
                (IdClass::UserId, 1),
                (IdClass::Email, 5),
                (IdClass::Phone, 5),
                (IdClass::External, 5),
                (IdClass::AnonymousId, 100),
            ]),
            external_types_max: EXTERNAL_TYPES_DEFAULT_MAX,
            identities_max: IDENTITIES_DEFAULT_MAX,
        }
    }
}

impl MergeRules {
    fn rank(&self, identity: &Identity) -> usize {
        let class = identity.kind.class();
        self.priority
            .iter()
            .position(|c| *c == class)
            .unwrap_or(self.priority.len())
    }

    fn limit(&self, class: IdClass) -> usize {
        self.limits.get(&class).copied().unwrap_or(usize::MAX)
    }

    /// The first limit broken by giving `members` the extra identities `added`, if any.
    /// Only what `added` grows is checked (its classes, its external types, the total), so
    /// a profile over a limit lowered after the fact can still gain identities of other
    /// classes — but never more identities once it is over the total.
    fn broken_limit(&self, members: &[&Identity], added: &[Identity]) -> Option<String> {
        let mut fresh: Vec<&Identity> = Vec::with_capacity(added.len());
        for new in added {
            if !members.contains(&new) && !fresh.contains(&new) {
                fresh.push(new);
            }
        }
        if fresh.is_empty() {
            return None;
        }
        let all = || members.iter().chain(fresh.iter()).copied();
        for new in &fresh {
            let same = |identity: &&Identity| match (&identity.kind, &new.kind) {
                (IdKind::External(a), IdKind::External(b)) => a == b,
                (a, b) => a.class() == b.class(),
            };
            let limit = self.limit(new.kind.class());
            if all().filter(same).count() > limit {
                return Some(match &new.kind {
                    IdKind::External(kind) => {
                        format!("at most {limit} ext.{kind} per profile")
                    }
                    kind => format!("at most {limit} {} per profile", kind.class()),
                });
            }
        }
        let types_grow = fresh.iter().any(|new| match &new.kind {
            IdKind::External(kind) => !members
                .iter()
                .any(|m| matches!(&m.kind, IdKind::External(held) if held == kind)),
            _ => false,
        });
        if types_grow {
            let mut types: Vec<&str> = all()
                .filter_map(|identity| match &identity.kind {
                    IdKind::External(kind) => Some(kind.as_str()),
                    _ => None,
                })
                .collect();
            types.sort_unstable();
            types.dedup();
            if types.len() > self.external_types_max {
                return Some(format!(
                    "at most {} external id types per profile",
                    self.external_types_max
                ));
            }
        }
        if members.len() + fresh.len() > self.identities_max {
            return Some(format!(
                "at most {} identities per profile",
                self.identities_max
            ));
        }
        None
    }
}

/// Read access to the identity graph that resolution needs.
pub trait IdentityGraph {
    /// The profile that owns `identity`, if any.
    fn owner(&self, identity: &Identity) -> Option<u64>;
    /// All identities of profile `id` (none if it has no profile).
    fn identities_of(&self, id: u64) -> &[Identity];
}

/// The profile an event lands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// An existing profile.
    Existing(u64),
    /// A profile to create.
    New,
}

/// A link resolution decided not to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The identity that was not attached or whose profile was not merged.
    pub identity: Identity,
    /// The profile that owns `identity`, when it exists.
    pub other_profile: Option<u64>,
    /// The rule that refused it, e.g. "at most 1 user_id per profile".
    pub rule: String,
}

/// What to do with one event's identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Where the event goes.
    pub target: Target,
    /// New identities to attach to the target (for `Target::New`, its identities).
    pub attach: Vec<Identity>,
    /// Profiles to merge into the target, in order.
    pub merge: Vec<u64>,
    /// Links refused by a limit.
    pub refusals: Vec<Refusal>,
}

/// Decides where an event with `identities` goes. `identities` must be non-empty.
pub fn resolve(identities: &[Identity], graph: &impl IdentityGraph, rules: &MergeRules) -> Plan {
    let mut ordered: Vec<&Identity> = Vec::with_capacity(identities.len());
    for identity in identities {
        if !ordered.contains(&identity) {
            ordered.push(identity);
        }
    }
    ordered.sort_by_key(|identity| rules.rank(identity));

    let mut plan = Plan {
        target: Target::New,
        attach: Vec::new(),
        merge: Vec::new(),
        refusals: Vec::new(),
    };
    // The identities the target will hold once the plan is carried out.
    let mut members: Vec<&Identity> = Vec::new();
    // Profiles already merged or refused: an event often carries several identities of
    // the same other profile, and it must be merged (or refused) once, not once per identity.
    let mut decided: Vec<u64> = Vec::new();
    for identity in ordered {
        let owner = graph.owner(identity);
        match owner {
            Some(owner) if plan.target == Target::Existing(owner) => {}
            Some(owner) if decided.contains(&owner) => {}
            Some(owner) if plan.target == Target::New && members.is_empty() => {
                plan.target = Target::Existing(owner);
                members.extend(graph.identities_of(owner));
            }
            Some(owner) => {
                decided.push(owner);
                let theirs = graph.identities_of(owner);
                match rules.broken_limit(&members, theirs) {
                    None if plan.target == Target::New => {
                        // The new identities so far join the existing profile instead.
                        plan.target = Target::Existing(owner);
                        members.extend(theirs);
                    }
                    None => {
                        plan.merge.push(owner);
                        members.extend(theirs);
                    }
                    Some(rule) => plan.refusals.push(Refusal {
                        identity: identity.clone(),
                        other_profile: Some(owner),
                        rule,
                    }),
                }
            }
            None => match rules.broken_limit(&members, std::slice::from_ref(identity)) {
                None => {
                    plan.attach.push(identity.clone());
                    members.push(identity);
                }
                Some(rule) => plan.refusals.push(Refusal {
                    identity: identity.clone(),
                    other_profile: None,
                    rule,
                }),
            },
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::identity::Blocklist;

    /// A small in-memory identity graph that carries out plans the way the store does.
    #[derive(Default)]
    struct Graph {
        owners: HashMap<Identity, u64>,
        profiles: BTreeMap<u64, Vec<Identity>>,
        next: u64,
    }

    impl IdentityGraph for Graph {
        fn owner(&self, identity: &Identity) -> Option<u64> {
            self.owners.get(identity).copied()
        }
        fn identities_of(&self, id: u64) -> &[Identity] {
            self.profiles.get(&id).map_or(&[], Vec::as_slice)
        }
    }

    impl Graph {
        /// Resolves and applies one event; returns the profile it landed on and the plan.
        fn event(&mut self, ids: &[&str], rules: &MergeRules) -> (u64, Plan) {
            let ids: Vec<Identity> = ids.iter().map(|t| parse(t)).collect();
            let plan = resolve(&ids, self, rules);
            let target = match plan.target {
                Target::Existing(id) => id,
                Target::New => {
                    self.next += 1;
                    self.profiles.insert(self.next, vec![]);
                    self.next
                }
            };
            for loser in &plan.merge {
                let moved = self.profiles.remove(loser).expect("loser exists");
                for identity in moved {
                    self.owners.insert(identity.clone(), target);
                    self.profiles
                        .get_mut(&target)
                        .expect("target")
                        .push(identity);
                }
            }
            for identity in &plan.attach {
                self.owners.insert(identity.clone(), target);
                self.profiles
                    .get_mut(&target)
                    .expect("target")
                    .push(identity.clone());
            }
            (target, plan)
        }
    }

    fn parse(text: &str) -> Identity {
        Identity::parse_key(text, &Blocklist::default()).expect(text)
    }

    /// Scenario table: each row is a sequence of events (their identities); the expected
    /// result is which events share a profile, as letters (same letter = same profile),
    /// and how many refusals the last event produced.
    #[test]
    fn resolution_scenarios() {
        let rules = MergeRules::default();
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, &[&[&str]], &str, usize)] = &[
            (
                "anonymous browsing, then login links the device",
                &[
                    &["anonymous_id:a1"],
                    &["anonymous_id:a1"],
                    &["user_id:u1", "anonymous_id:a1"],
                ],
                "AAA",
                0,
            ),
            (
                "two devices of one user merge through the user id",
                &[
                    &["anonymous_id:a1"],
                    &["anonymous_id:a2"],
                    &["user_id:u1", "anonymous_id:a1"],
                    &["user_id:u1", "anonymous_id:a2"],
                ],
                "AAAA",
                0,
            ),
            (
                "shared device: a second known user is never merged into the first",
                &[
                    &["user_id:u1", "anonymous_id:shared"],
                    &["user_id:u2", "anonymous_id:shared"],
                ],
                "AB",
                1,
            ),
            (
                "support contact known by email later identifies",
                &[
                    &["email:ada@example.com"],
                    &["user_id:u1", "email:ada@example.com"],
                ],
                "AA",
                0,
            ),
            (
                "email links an anonymous profile and a user profile",
                &[
                    &["anonymous_id:a1", "email:x@y.z"],
                    &["user_id:u9"],
                    &["user_id:u9", "email:x@y.z"],
                ],
                "AAA",
                0,
            ),
            (
                "an email owned by another known user is not stolen",
                &[
                    &["user_id:u1", "email:x@y.z"],
                    &["user_id:u2", "email:x@y.z"],
                ],
                "AB",
                1,
            ),
            (
                "external ids link like any identity",
                &[
                    &["ext.shopify_id:7", "email:x@y.z"],
                    &["user_id:u1", "ext.shopify_id:7"],
                ],
                "AA",
                0,
            ),
            (
                "a new user id arriving with an owned anonymous id of a known user is kept apart",
                &[
                    &["user_id:u1", "anonymous_id:a1"],
                    &["anonymous_id:a1"],
                    &["user_id:u2", "anonymous_id:a1"],
                ],
                "AAB",
                1,
            ),
        ];
        for (name, events, want, want_refusals) in cases {
            let mut graph = Graph::default();
            let mut letters: BTreeMap<u64, char> = BTreeMap::new();
            let mut got = String::new();
            let mut last_refusals = 0;
            for ids in *events {
                let (target, plan) = graph.event(ids, &rules);
                let next = (b'A' + letters.len() as u8) as char;
                got.push(*letters.entry(target).or_insert(next));
                last_refusals = plan.refusals.len();
            }
            // Merges relabel: the final owner of each event's first identity decides.
            let mut final_letters = String::new();
            let mut relabel: BTreeMap<u64, char> = BTreeMap::new();
            for ids in *events {
                let owner = graph.owner(&parse(ids[0])).expect("owned");
                let next = (b'A' + relabel.len() as u8) as char;
                final_letters.push(*relabel.entry(owner).or_insert(next));
            }
            assert_eq!(
                final_letters, *want,
                "{name}: final grouping (landed: {got})"
            );
            assert_eq!(last_refusals, *want_refusals, "{name}: refusals");
        }
    }

    #[test]
    fn email_limit_refuses_extra_emails_but_keeps_the_event() {
        let rules = MergeRules {
            limits: BTreeMap::from([(IdClass::UserId, 1), (IdClass::Email, 2)]),
            ..MergeRules::default()
        };
        let mut graph = Graph::default();
        let (p, _) = graph.event(&["user_id:u1", "email:a@x.io"], &rules);
        let (q, _) = graph.event(&["user_id:u1", "email:b@x.io"], &rules);
        let (r, plan) = graph.event(&["user_id:u1", "email:c@x.io"], &rules);
        assert_eq!((p, q, r), (p, p, p));
        assert_eq!(plan.refusals.len(), 1);
        assert_eq!(plan.refusals[0].rule, "at most 2 email per profile");
        assert_eq!(plan.refusals[0].other_profile, None);
        assert_eq!(graph.owner(&parse("email:c@x.io")), None);
    }

    #[test]
    fn several_identities_of_one_profile_merge_it_once() {
        let rules = MergeRules::default();
        let mut graph = Graph::default();
        let (user, _) = graph.event(&["user_id:u1"], &rules);
        let (other, _) = graph.event(&["email:a@x.io", "anonymous_id:a1"], &rules);
        let (target, plan) =
            graph.event(&["user_id:u1", "email:a@x.io", "anonymous_id:a1"], &rules);
        assert_eq!(target, user);
        assert_eq!(plan.merge, vec![other], "merged once");

        let (_, _) = graph.event(&["user_id:u2", "email:b@x.io", "anonymous_id:b1"], &rules);
        let (_, plan) = graph.event(&["user_id:u1", "email:b@x.io", "anonymous_id:b1"], &rules);
        assert_eq!(plan.refusals.len(), 1, "refused once: {:?}", plan.refusals);
    }

    #[test]
    fn merge_into_new_profile_adopts_the_existing_one() {
        let rules = MergeRules::default();
        let mut graph = Graph::default();
        let (anon, _) = graph.event(&["anonymous_id:a1"], &rules);
        let (target, plan) = graph.event(&["user_id:u1", "anonymous_id:a1"], &rules);
        assert_eq!(target, anon, "no new profile is created and merged");
        assert_eq!(plan.target, Target::Existing(anon));
        assert_eq!(plan.attach, vec![parse("user_id:u1")]);
        assert!(plan.merge.is_empty());
    }

    #[test]
    fn per_type_external_limits() {
        let rules = MergeRules {
            limits: BTreeMap::from([(IdClass::External, 1)]),
            ..MergeRules::default()
        };
        let mut graph = Graph::default();
        graph.event(&["user_id:u1", "ext.crm:1", "ext.shop:1"], &rules);
        let (_, plan) = graph.event(&["user_id:u1", "ext.crm:2"], &rules);
        assert_eq!(plan.refusals[0].rule, "at most 1 ext.crm per profile");
    }

    /// Each row: the rules' caps (external types, total), the identities already on the
    /// profile of `user_id:u1`, the next event's identities, and the rules it refuses
    /// (in the order resolution meets them).
    #[test]
    fn external_type_and_total_caps_table() {
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, usize, usize, &[&str], &[&str], &[&str])] = &[
            (
                "a new type within the type cap is attached",
                2,
                10,
                &["ext.a:1"],
                &["user_id:u1", "ext.b:1"],
                &[],
            ),
            (
                "a type beyond the cap is refused, another of a held type is not",
                2,
                10,
                &["ext.a:1", "ext.b:1"],
                &["user_id:u1", "ext.c:1", "ext.a:2"],
                &["at most 2 external id types per profile"],
            ),
            (
                "every type beyond the cap is refused by the same rule",
                1,
                10,
                &["ext.a:1"],
                &["user_id:u1", "ext.b:1", "ext.c:1", "ext.d:1"],
                &[
                    "at most 1 external id types per profile",
                    "at most 1 external id types per profile",
                    "at most 1 external id types per profile",
                ],
            ),
            (
                "the total cap refuses any class once reached",
                16,
                3,
                &["email:a@x.io", "anonymous_id:a1"],
                &["user_id:u1", "anonymous_id:a2", "phone:5550100"],
                &[
                    "at most 3 identities per profile",
                    "at most 3 identities per profile",
                ],
            ),
            (
                "identities already held never count twice",
                16,
                3,
                &["email:a@x.io", "anonymous_id:a1"],
                &["user_id:u1", "email:a@x.io", "anonymous_id:a1"],
                &[],
            ),
        ];
        for (name, types_max, total_max, held, event, want) in cases {
            let rules = MergeRules {
                external_types_max: *types_max,
                identities_max: *total_max,
                ..MergeRules::default()
            };
            let mut graph = Graph::default();
            let mut first = vec!["user_id:u1"];
            first.extend_from_slice(held);
            graph.event(&first, &MergeRules::default());
            let (_, plan) = graph.event(event, &rules);
            let rules_hit: Vec<&str> = plan.refusals.iter().map(|r| r.rule.as_str()).collect();
            assert_eq!(rules_hit, *want, "{name}");
            let owner = graph.owner(&parse("user_id:u1")).expect("owned");
            let held = graph.identities_of(owner);
            assert!(
                held.len() <= *total_max,
                "{name}: {} identities",
                held.len()
            );
        }
    }

    #[test]
    fn a_merge_that_would_pass_the_total_cap_is_refused() {
        let rules = MergeRules {
            identities_max: 3,
            ..MergeRules::default()
        };
        let mut graph = Graph::default();
        let (user, _) = graph.event(&["user_id:u1", "anonymous_id:a1"], &rules);
        let (other, _) = graph.event(&["anonymous_id:a2", "anonymous_id:a3"], &rules);
        let (target, plan) = graph.event(&["user_id:u1", "anonymous_id:a2"], &rules);
        assert_eq!(target, user);
        assert!(plan.merge.is_empty(), "4 identities would break the cap");
        assert_eq!(plan.refusals.len(), 1);
        assert_eq!(plan.refusals[0].other_profile, Some(other));
        assert_eq!(plan.refusals[0].rule, "at most 3 identities per profile");
    }
}
