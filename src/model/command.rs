//! What the replicated log carries: the commands every replica applies in the same order.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::block::EncodedBlock;

/// A segment (audience) definition, replicated so every node evaluates the same rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentDef {
    /// Stable id, `[a-z0-9_-]`, chosen by the creator.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// The rule text (validated by the API before it is proposed; see `docs/segments.md`).
    pub rule: String,
}

/// One entry of the replicated log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A block of validated, new (screened for duplicates) events to apply.
    Ingest(EncodedBlock),
    /// Create or replace a segment definition.
    PutSegment(SegmentDef),
    /// Delete a segment definition.
    DeleteSegment {
        /// The segment's id.
        id: String,
    },
    /// Time passes: the leader's periodic stamp, so that work driven by time (segment
    /// windows, refreshes, sweeps) happens at the same place in the log on every replica.
    /// Appended last so that entries encoded before it still decode.
    Tick {
        /// The leader's batch time when it proposed the tick, ms since the epoch; the state
        /// clock follows it within its usual bounds.
        time_ms: i64,
    },
    /// The leader notified receivers of a cluster-scoped alert (or of its resolution):
    /// recorded in the replicated state so that a leader elected later neither repeats a
    /// notification inside the repeat interval nor forgets to resolve one. Appended last so
    /// that entries encoded before it still decode.
    AlertNote(AlertNote),
}

/// The notification state of one cluster-scoped alert, as the replicated state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertNote {
    /// The alert's identity: its name and labels (`TandemIngestionDrop{}`), at most
    /// [`ALERT_KEY_BYTES_MAX`] bytes.
    pub key: String,
    /// When the alert started firing, ms since the epoch (Alertmanager's `startsAt`).
    pub fired_ms: i64,
    /// When receivers were last told it fires, ms since the epoch; 0 once its resolution
    /// was sent.
    pub notified_ms: i64,
}

/// Longest alert key a note may carry.
pub const ALERT_KEY_BYTES_MAX: usize = 512;

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Ingest(block) => write!(f, "ingest a block of {} bytes", block.len()),
            Command::PutSegment(def) => write!(f, "put segment {}", def.id),
            Command::DeleteSegment { id } => write!(f, "delete segment {id}"),
            Command::Tick { time_ms } => write!(f, "tick at {time_ms}"),
            Command::AlertNote(note) => write!(f, "alert note {}", note.key),
        }
    }
}
