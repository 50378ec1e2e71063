//! The acknowledged-events file: the contract between `tandem load` and `tandem verify`.
//!
//! One line per event the server acknowledged, `messageId<TAB>identity\n`, where identity
//! is the profile key of the event's highest-priority identity ([`profile_key_of`]). The
//! file holds only acknowledged events: [`AckedWriter`] is fed after each reply, and
//! [`AckedWriter::finish`] flushes and fsyncs, so a file that `load` reported complete
//! survives a crash of the machine that ran it. Neither field may contain a tab or a line
//! break; the writer refuses such values rather than write a line that reads back wrong.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::LoadError;
use crate::model::identity::{Blocklist, IdKind, Identity};

/// Writes the acknowledged-events file.
pub struct AckedWriter {
    /// Where the file is, for error messages.
    path: PathBuf,
    /// Buffered: one `write` system call per 64 KiB, not per event.
    out: BufWriter<File>,
    /// Lines written so far.
    lines: u64,
}

impl AckedWriter {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> Result<AckedWriter, LoadError> {
        let file = File::create(path).map_err(|e| io_error("create", path, e))?;
        Ok(AckedWriter {
            path: path.to_owned(),
            out: BufWriter::with_capacity(64 * 1024, file),
            lines: 0,
        })
    }

    /// Records one acknowledged event.
    pub fn record(&mut self, message_id: &str, identity: &str) -> Result<(), LoadError> {
        let line = format_line(message_id, identity).map_err(|reason| LoadError::AckedFormat {
            path: self.path.clone(),
            line: self.lines + 1,
            reason,
        })?;
        self.out
            .write_all(line.as_bytes())
            .map_err(|e| io_error("write", &self.path, e))?;
        self.lines += 1;
        Ok(())
    }

    /// Flushes and fsyncs the file; returns the number of lines written.
    pub fn finish(mut self) -> Result<u64, LoadError> {
        self.out
            .flush()
            .map_err(|e| io_error("write", &self.path, e))?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| io_error("sync", &self.path, e))?;
        Ok(self.lines)
    }
}

/// The line for one acknowledged event, with its newline; refuses fields that would not
/// read back as written.
pub fn format_line(message_id: &str, identity: &str) -> Result<String, String> {
    check_field("messageId", message_id)?;
    check_field("identity", identity)?;
    Ok(format!("{message_id}\t{identity}\n"))
}

/// Splits one line (without its newline) into `(messageId, identity)`.
pub fn parse_line(line: &str) -> Result<(&str, &str), String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (message_id, identity) = line
        .split_once('\t')
        .ok_or_else(|| "expected messageId<TAB>identity".to_owned())?;
    check_field("messageId", message_id)?;
    check_field("identity", identity)?;
    if !identity.contains(':') {
        return Err(format!(
            "identity {identity:?} is not kind:value (e.g. user_id:42)"
        ));
    }
    Ok((message_id, identity))
}

fn check_field(name: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{name} is empty"));
    }
    if value.contains(['\t', '\n', '\r']) {
        return Err(format!("{name} {value:?} contains a tab or line break"));
    }
    Ok(())
}

/// Calls `visit(messageId, identity)` for each line of the file at `path`, in order.
pub fn for_each(path: &Path, mut visit: impl FnMut(&str, &str)) -> Result<u64, LoadError> {
    let file = File::open(path).map_err(|e| io_error("open", path, e))?;
    let mut lines = 0;
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| io_error("read", path, e))?;
        let (message_id, identity) =
            parse_line(&line).map_err(|reason| LoadError::AckedFormat {
                path: path.to_owned(),
                line: number as u64 + 1,
                reason,
            })?;
        visit(message_id, identity);
        lines += 1;
    }
    Ok(lines)
}

/// The profile key of a Segment call's highest-priority identity, as the server
/// normalises it: `user_id:<userId>`, else `email:<email>` (from `traits` or
/// `context.traits`, lower-cased), else `anonymous_id:<anonymousId>`. Placeholder values
/// the server ignores are skipped. `None` if the call carries no usable identity.
pub fn profile_key_of(item: &Value) -> Option<String> {
    let blocklist = Blocklist::default();
    let identity = |kind: IdKind, value: Option<&Value>| {
        let raw = match value? {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            _ => return None,
        };
        Identity::new(kind, &raw, &blocklist).ok().map(|i| i.key())
    };
    let email = || {
        identity(
            IdKind::Email,
            item.get("traits").and_then(|t| t.get("email")),
        )
        .or_else(|| {
            let context_traits = item.get("context").and_then(|c| c.get("traits"));
            identity(IdKind::Email, context_traits.and_then(|t| t.get("email")))
        })
    };
    identity(IdKind::UserId, item.get("userId"))
        .or_else(email)
        .or_else(|| identity(IdKind::AnonymousId, item.get("anonymousId")))
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> LoadError {
    LoadError::AckedFile {
        action,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lines_round_trip_through_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("acked.tsv");
        let events = [
            ("6f1c8e0a-0000-4000-8000-000000000001", "user_id:u-1"),
            ("m2", "email:ada@example.com"),
            ("m3", "anonymous_id:3b2f"),
        ];
        let mut writer = AckedWriter::create(&path).expect("create");
        for (message_id, identity) in events {
            writer.record(message_id, identity).expect("record");
        }
        assert_eq!(writer.finish().expect("finish"), 3);

        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text.lines().next(),
            Some("6f1c8e0a-0000-4000-8000-000000000001\tuser_id:u-1")
        );
        let mut read = Vec::new();
        let lines =
            for_each(&path, |m, i| read.push((m.to_owned(), i.to_owned()))).expect("for_each");
        assert_eq!(lines, 3);
        let written: Vec<_> = events
            .iter()
            .map(|(m, i)| (m.to_string(), i.to_string()))
            .collect();
        assert_eq!(read, written);
    }

    #[test]
    fn malformed_lines_are_refused_with_their_line_number() {
        let cases = [
            ("m1\tuser_id:u1", Ok(("m1", "user_id:u1"))),
            ("m1\tuser_id:u1\r", Ok(("m1", "user_id:u1"))),
            ("m1 user_id:u1", Err("expected messageId<TAB>identity")),
            ("\tuser_id:u1", Err("messageId is empty")),
            ("m1\t", Err("identity is empty")),
            ("m1\tu1", Err("is not kind:value")),
            ("m1\tuser_id:u\t1", Err("contains a tab")),
        ];
        for (line, want) in cases {
            match (parse_line(line), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{line:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{line:?}: {got}"),
                (got, want) => panic!("{line:?}: got {got:?}, want {want:?}"),
            }
        }
        assert!(format_line("m\n1", "user_id:u1").is_err());

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("acked.tsv");
        std::fs::write(&path, "m1\tuser_id:u1\nbroken\n").expect("write");
        let error = for_each(&path, |_, _| {}).expect_err("line 2 is broken");
        assert!(error.to_string().contains(":2:"), "{error}");
    }

    #[test]
    fn the_profile_key_is_the_highest_identity_the_server_accepts() {
        let cases = [
            (
                json!({"userId": "u1", "anonymousId": "a1", "traits": {"email": "x@y.z"}}),
                Some("user_id:u1"),
            ),
            (
                json!({"userId": 42, "anonymousId": "a1"}),
                Some("user_id:42"),
            ),
            (
                json!({"anonymousId": "a1", "traits": {"email": "Ada@Example.COM"}}),
                Some("email:ada@example.com"),
            ),
            (
                json!({"anonymousId": "a1", "context": {"traits": {"email": "b@c.d"}}}),
                Some("email:b@c.d"),
            ),
            (
                json!({"userId": "null", "anonymousId": "a1"}),
                Some("anonymous_id:a1"),
            ),
            (
                json!({"anonymousId": "a1", "traits": {"email": "not-an-email"}}),
                Some("anonymous_id:a1"),
            ),
            (json!({"event": "E"}), None),
        ];
        for (item, want) in cases {
            assert_eq!(profile_key_of(&item).as_deref(), want, "{item}");
        }
    }
}
