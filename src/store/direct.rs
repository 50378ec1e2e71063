//! Committing to a store without Raft: the leader's steps (screen duplicates, encode one
//! block, append it to the log durably, apply it) on one process, for the tools and tests
//! that drive a store alone (`tandem bench-segments`, the store's scenario tests, the
//! snapshot tests). A node never uses it: there Raft appends and the state machine
//! applies.
//!
//! Records carry no Raft entry id (their head is empty), so a log written this way is not
//! one a node can start on.

use super::entry;
use super::replicated::Committed;
use super::{Store, StoreError, dedup::Seen};
use crate::model::block::EncodedBlock;
use crate::model::command::Command;
use crate::model::event::{Event, EventOutcome};

/// Screens `events` for duplicates, commits the new ones as the next log entry (proposed at
/// `time_ms`), and returns every event's outcome in order.
pub fn commit_events(
    store: &Store,
    events: Vec<Event>,
    time_ms: i64,
) -> Result<Vec<EventOutcome>, StoreError> {
    let verdicts = store.screen(
        events
            .iter()
            .map(|e| (e.source.as_str(), e.message_id.as_str())),
    )?;
    let mut fresh = Vec::new();
    let mut slots = Vec::with_capacity(events.len());
    for (event, verdict) in events.into_iter().zip(&verdicts) {
        match verdict {
            Seen::New => {
                slots.push(None);
                fresh.push(event);
            }
            Seen::Stored(seq) => slots.push(Some(EventOutcome::Duplicate { seq: *seq })),
            Seen::Repeat(_) => slots.push(None),
        }
    }
    let stored = if fresh.is_empty() {
        Vec::new()
    } else {
        let block =
            EncodedBlock::encode(time_ms, fresh).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        commit_command(store, &Command::Ingest(block))?
    };
    let mut stored = stored.into_iter();
    let mut outcomes: Vec<EventOutcome> = Vec::with_capacity(slots.len());
    for (slot, verdict) in slots.into_iter().zip(&verdicts) {
        let outcome = match (slot, verdict) {
            (Some(outcome), _) => outcome,
            (None, Seen::Repeat(first)) => match outcomes.get(*first) {
                Some(EventOutcome::Stored { seq, .. } | EventOutcome::Duplicate { seq }) => {
                    EventOutcome::Duplicate { seq: *seq }
                }
                None => return Err(StoreError::Corrupt("a repeat before its first".into())),
            },
            (None, _) => stored
                .next()
                .ok_or_else(|| StoreError::Corrupt("fewer outcomes than new events".into()))?,
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Appends `command` to the log as the next entry, durably, and applies it.
pub fn commit_command(store: &Store, command: &Command) -> Result<Vec<EventOutcome>, StoreError> {
    let log = store.log();
    // After the last record, and after the last entry applied (a store may have applied
    // entries its own log does not hold, as a replica fed another's log does).
    let index = log
        .last_index()
        .map_or(1, |last| last + 1)
        .max(store.reader().applied_index()?);
    let body = postcard::to_stdvec(command)
        .map_err(|e| StoreError::Corrupt(format!("command does not encode: {e}")))?;
    let record = entry::encode(entry::NORMAL, &[], &body);
    log.append(&[(index, record.as_slice())])?;
    log.sync()?;
    let mut results = store.apply_committed(&[Committed {
        log_index: index,
        command: Some(command),
        raft_state: Vec::new(),
    }])?;
    Ok(results.pop().unwrap_or_default())
}
