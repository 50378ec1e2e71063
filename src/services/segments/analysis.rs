//! What a rule depends on, for the segment service: which segments (evaluation order and
//! cycles), which events and how far back (the counters it must keep), and whether
//! membership can change with time alone.

use std::collections::{BTreeMap, BTreeSet};

use super::ast::{Expr, Operand, Window};

impl Expr {
    /// Every segment id named in `in_segment(...)`.
    pub fn segment_refs(&self) -> BTreeSet<String> {
        let mut refs = BTreeSet::new();
        self.for_each(&mut |node| {
            if let Expr::InSegment { id } = node {
                refs.insert(id.clone());
            }
        });
        refs
    }

    /// Whether any event is counted in a window (`.within(...)`): such a rule can change
    /// its answer as time passes with no new event, so it must be re-evaluated on a clock.
    pub fn is_time_dependent(&self) -> bool {
        let mut windowed = false;
        self.for_each_event(&mut |_, within| windowed |= within.is_some());
        windowed
    }

    /// Every event name the rule counts or tests.
    pub fn event_names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        self.for_each_event(&mut |name, _| {
            names.insert(name.to_string());
        });
        names
    }

    /// The names whose values the rule reads, and whether any may be a profile trait: a
    /// bare name reads the computed trait of that name or else the profile trait,
    /// `computed("x")` only the computed one, `trait("x")` only the profile trait.
    pub fn value_names(&self) -> (BTreeSet<String>, bool) {
        let mut names = BTreeSet::new();
        let mut reads_profile_traits = false;
        let mut visit = |operand: &Operand| match operand {
            Operand::Named(name) => {
                names.insert(name.clone());
                reads_profile_traits = true;
            }
            Operand::Trait(_) => reads_profile_traits = true,
            Operand::Computed(name) => {
                names.insert(name.clone());
            }
            Operand::EventCount { .. } => {}
        };
        self.for_each(&mut |node| match node {
            Expr::Compare { left, .. } | Expr::In { left, .. } | Expr::Contains { left, .. } => {
                visit(left)
            }
            _ => {}
        });
        (names, reads_profile_traits)
    }

    /// The longest `.within(...)` window, in milliseconds; `None` when the rule has none.
    /// Event tests without a window count the whole history, which this does not cover.
    pub fn max_window_ms(&self) -> Option<i64> {
        let mut longest = None;
        self.for_each_event(&mut |_, within| {
            if let Some(window) = within {
                longest = longest.max(Some(window.ms()));
            }
        });
        longest
    }

    /// Calls `visit` on this node and every node below it, parents first.
    fn for_each(&self, visit: &mut impl FnMut(&Expr)) {
        visit(self);
        match self {
            Expr::Or(items) | Expr::And(items) => {
                for item in items {
                    item.for_each(visit);
                }
            }
            Expr::Not(inner) => inner.for_each(visit),
            _ => {}
        }
    }

    /// Calls `visit` with the name and window of every event test and event count.
    fn for_each_event(&self, visit: &mut impl FnMut(&str, Option<Window>)) {
        self.for_each(&mut |node| match node {
            Expr::EventExists { event, within } => visit(event, *within),
            Expr::Compare { left, .. } | Expr::In { left, .. } | Expr::Contains { left, .. } => {
                if let Operand::EventCount { event, within } = left {
                    visit(event, *within);
                }
            }
            _ => {}
        });
    }
}

/// Orders segment definitions so that every segment comes after the segments it refers
/// to, or describes a cycle (`"segment cycle: a → b → a"`). References to ids that are not
/// in `defs` are ignored here (they evaluate as "not a member"). Ties are broken by id,
/// so the order is deterministic.
pub fn check_cycles(defs: &BTreeMap<String, Expr>) -> Result<Vec<String>, String> {
    // Dependencies of each segment, restricted to defined segments.
    let deps: BTreeMap<&str, BTreeSet<&str>> = defs
        .iter()
        .map(|(id, expr)| {
            let known = expr
                .segment_refs()
                .iter()
                .filter_map(|r| defs.get_key_value(r.as_str()).map(|(k, _)| k.as_str()))
                .collect();
            (id.as_str(), known)
        })
        .collect();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, ds) in &deps {
        for d in ds {
            dependents.entry(d).or_default().push(id);
        }
    }
    // Kahn's algorithm; the ready set is ordered, so ties go to the smallest id.
    let mut waiting: BTreeMap<&str, usize> = deps.iter().map(|(id, ds)| (*id, ds.len())).collect();
    let mut ready: BTreeSet<&str> = waiting
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(id, _)| *id)
        .collect();
    let mut order: Vec<String> = Vec::with_capacity(defs.len());
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    while let Some(id) = ready.pop_first() {
        placed.insert(id);
        order.push(id.to_string());
        for dependent in dependents.get(id).into_iter().flatten() {
            if let Some(n) = waiting.get_mut(dependent) {
                *n -= 1;
                if *n == 0 {
                    ready.insert(dependent);
                }
            }
        }
    }
    if order.len() == defs.len() {
        return Ok(order);
    }
    Err(describe_cycle(&deps, &placed))
}

/// Finds one cycle among the unplaced segments: each of them has an unplaced dependency,
/// so following those from any of them must come back to a segment already seen.
fn describe_cycle(deps: &BTreeMap<&str, BTreeSet<&str>>, placed: &BTreeSet<&str>) -> String {
    let unplaced = |id: &&str| !placed.contains(id);
    let mut path: Vec<&str> = Vec::new();
    let mut current = deps.keys().copied().find(|id| unplaced(id));
    while let Some(id) = current {
        if let Some(start) = path.iter().position(|p| *p == id) {
            let mut cycle = path[start..].to_vec();
            cycle.push(id);
            return format!("segment cycle: {}", cycle.join(" → "));
        }
        path.push(id);
        current = deps
            .get(id)
            .and_then(|ds| ds.iter().copied().find(|d| unplaced(d)));
    }
    "segment cycle: (none found; please report this)".to_string()
}
