//! [`validate_defs`]: the rules a set of computed-trait definitions must follow, checked
//! at start-up, every problem reported at once with its field and fix.

use std::collections::BTreeSet;

use super::TraitError;
use super::def::{EventFilter, EventNames, TraitDef, TraitKind};

/// Most computed traits a node runs.
pub const DEFS_MAX: usize = 64;
/// Longest trait name, in characters.
pub const NAME_CHARS_MAX: usize = 64;
/// Longest window, in days (ten years).
pub const WINDOW_DAYS_MAX: u32 = 3650;
/// Longest window of a `most_frequent`/`unique` trait, whose daily buckets hold values
/// (bounds its state to this many days × [`super::DISTINCT_DAY_VALUES_MAX`] values).
pub const DISTINCT_WINDOW_DAYS_MAX: u32 = 90;
/// Most names in one event filter.
pub const EVENT_NAMES_MAX: usize = 32;
/// Longest event name in a filter, in characters.
pub const EVENT_NAME_CHARS_MAX: usize = 200;

/// Checks `defs` (as configured under `[[computed_traits]]`); the error lists every
/// problem, each naming its field, e.g. `computed_traits[2].window_days`.
pub fn validate_defs(defs: &[TraitDef]) -> Result<(), TraitError> {
    let mut problems = Vec::new();
    if defs.len() > DEFS_MAX {
        problems.push(format!(
            "computed_traits: {} definitions; at most {DEFS_MAX} are allowed",
            defs.len()
        ));
    }
    let mut names = BTreeSet::new();
    for (i, def) in defs.iter().enumerate() {
        let field = |name: &str| format!("computed_traits[{i}].{name}");
        check_name(&mut problems, &field("name"), &def.name);
        if !names.insert(def.name.as_str()) {
            problems.push(format!(
                "{} = {:?} is used twice; trait names must be unique",
                field("name"),
                def.name
            ));
        }
        check_filter(&mut problems, &field("event"), &def.event);
        check_shape(&mut problems, &field, def);
        check_window(&mut problems, &field("window_days"), def);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(TraitError::Invalid(problems))
    }
}

fn check_name(problems: &mut Vec<String>, field: &str, name: &str) {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    if name.is_empty() || !name.chars().all(allowed) {
        problems.push(format!(
            "{field} = {name:?}: use lower-case letters, digits and '_' (like lifetime_value)"
        ));
    }
    if name.chars().count() > NAME_CHARS_MAX {
        problems.push(format!(
            "{field} is longer than {NAME_CHARS_MAX} characters; shorten it"
        ));
    }
}

fn check_filter(problems: &mut Vec<String>, field: &str, filter: &EventFilter) {
    let EventNames::Only(names) = &filter.names else {
        return;
    };
    if names.is_empty() {
        problems.push(format!(
            "{field} lists no event names; list at least one, or use \"*\" for any"
        ));
    }
    if names.len() > EVENT_NAMES_MAX {
        problems.push(format!(
            "{field} lists {} names; at most {EVENT_NAMES_MAX} are allowed",
            names.len()
        ));
    }
    for name in names {
        if name.is_empty() {
            problems.push(format!("{field} has an empty event name; remove it"));
        } else if name == "*" {
            problems.push(format!(
                "{field} has \"*\" in a list; write event = \"*\" on its own to match any"
            ));
        } else if name.chars().count() > EVENT_NAME_CHARS_MAX {
            problems.push(format!(
                "{field} has a name longer than {EVENT_NAME_CHARS_MAX} characters"
            ));
        }
    }
}

/// The fields each kind needs or must not have.
fn check_shape(problems: &mut Vec<String>, field: &dyn Fn(&str) -> String, def: &TraitDef) {
    let kind = def.kind.as_str();
    match (def.kind.reads_property(), &def.property) {
        (true, None) => problems.push(format!(
            "{}: kind = {kind:?} needs a property, such as property = \"revenue\"",
            field("property")
        )),
        (false, Some(_)) => problems.push(format!(
            "{}: kind = {kind:?} reads no property; remove it",
            field("property")
        )),
        _ => {}
    }
    match (def.kind == TraitKind::NetCount, &def.minus_event) {
        (true, None) => problems.push(format!(
            "{}: kind = \"net_count\" needs the events that count down, such as \
             minus_event = \"Ticket Resolved\"",
            field("minus_event")
        )),
        (false, Some(_)) => problems.push(format!(
            "{}: only kind = \"net_count\" uses minus_event; remove it",
            field("minus_event")
        )),
        (true, Some(minus)) => check_filter(problems, &field("minus_event"), minus),
        (false, None) => {}
    }
}

fn check_window(problems: &mut Vec<String>, field: &str, def: &TraitDef) {
    let Some(days) = def.window_days else {
        return;
    };
    if !(1..=WINDOW_DAYS_MAX).contains(&days) {
        problems.push(format!(
            "{field} = {days}: use 1 to {WINDOW_DAYS_MAX} days, or remove it for all time"
        ));
    } else if def.kind.is_distinct() && days > DISTINCT_WINDOW_DAYS_MAX {
        problems.push(format!(
            "{field} = {days}: kind = {:?} keeps values per day, so its window is at most \
             {DISTINCT_WINDOW_DAYS_MAX} days; shorten it or remove it for all time",
            def.kind.as_str()
        ));
    }
}
