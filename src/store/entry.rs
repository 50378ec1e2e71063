//! How a Raft log entry is laid out in a log record, as far as the store reads it.
//!
//! ```text
//! record = kind u8, head_len u32 LE, head, body
//!   kind NORMAL:     head = the cluster layer's entry id, body = postcard(Command)
//!   kind MEMBERSHIP: head = the entry id,                 body = the cluster layer's membership
//!   kind BLANK:      head = the entry id,                 body empty
//! ```
//!
//! The cluster layer (`crate::cluster::log_store`) writes records and owns what `head`
//! and membership bodies mean; the store only needs the [`Command`] of a normal entry, to
//! read event bodies back from the block it carries. A command is encoded once, by the
//! node that proposes it, and its block stays opaque bytes from then on.

use crate::model::command::Command;

/// An entry carrying a command.
pub const NORMAL: u8 = 0;
/// A membership change.
pub const MEMBERSHIP: u8 = 1;
/// A blank entry (a new leader's first).
pub const BLANK: u8 = 2;

/// Lays out a record.
pub fn encode(kind: u8, head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(5 + head.len() + body.len());
    record.push(kind);
    // Heads are a few dozen bytes (an entry id): far below u32::MAX.
    record.extend_from_slice(&(head.len() as u32).to_le_bytes());
    record.extend_from_slice(head);
    record.extend_from_slice(body);
    record
}

/// Splits a record into kind, head and body.
pub fn split(record: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    if record.len() < 5 {
        return Err(format!("log record of {} bytes", record.len()));
    }
    let head_len = u32::from_le_bytes([record[1], record[2], record[3], record[4]]) as usize;
    let rest = &record[5..];
    if head_len > rest.len() {
        return Err(format!(
            "log record head of {head_len} bytes in {} bytes",
            record.len()
        ));
    }
    let (head, body) = rest.split_at(head_len);
    Ok((record[0], head, body))
}

/// The command of a normal entry's record; `None` for membership and blank entries.
pub fn command(record: &[u8]) -> Result<Option<Command>, String> {
    let (kind, _, body) = split(record)?;
    match kind {
        NORMAL => postcard::from_bytes(body)
            .map(Some)
            .map_err(|e| format!("log record command: {e}")),
        MEMBERSHIP | BLANK => Ok(None),
        other => Err(format!("log record kind {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_split_back_into_their_parts() {
        let command = Command::DeleteSegment { id: "vip".into() };
        let body = postcard::to_stdvec(&command).unwrap();
        let record = encode(NORMAL, b"id", &body);
        assert_eq!(split(&record).unwrap(), (NORMAL, &b"id"[..], &body[..]));
        assert_eq!(super::command(&record).unwrap(), Some(command));
        assert_eq!(super::command(&encode(BLANK, b"id", b"")).unwrap(), None);
        assert!(split(&record[..3]).is_err());
        assert!(super::command(&encode(9, b"", b"")).is_err());
    }
}
