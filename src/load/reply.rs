//! The `/v1/batch` reply contract, read into per-item outcomes.
//!
//! - 2xx: `{"accepted": n, "duplicates": d, "rejected": [{"index": i, ...}]}` — every item
//!   not listed in `rejected` is durably acknowledged (stored now, or a duplicate of an
//!   event already stored);
//! - 400: no item was valid; all are rejected (`rejected` lists why, when the body is the
//!   batch's own validation result);
//! - anything else (401, 403, 413, 415, other 4xx) fails the whole request, as does a
//!   spent retry budget ([`BatchTally::failure`]); 401/403 also stop the run (see
//!   [`BatchTally::stop`]): no later request with the same key can succeed.
//!
//! [`tally`] is pure, so the contract is tested as a table.

use serde::Deserialize;

use super::client::describe_reply;

/// What became of one request's items.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchTally {
    /// Per item, in batch order: whether the server acknowledged it.
    pub acked: Vec<bool>,
    /// Items refused as invalid.
    pub rejected: u64,
    /// Acknowledged items the server already had.
    pub duplicates: u64,
    /// Items whose request failed.
    pub failed: u64,
    /// Why the request failed, if it did.
    pub error: Option<String>,
    /// The first rejection's code and message.
    pub rejection: Option<String>,
    /// Why sending more requests is pointless, if it is (e.g. the write key was refused).
    pub stop: Option<String>,
}

impl BatchTally {
    /// Items acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.acked.iter().filter(|a| **a).count() as u64
    }

    /// A request that failed for good: all `items` count as failed.
    pub fn failure(items: usize, error: String) -> BatchTally {
        BatchTally {
            acked: vec![false; items],
            failed: items as u64,
            error: Some(error),
            ..BatchTally::default()
        }
    }
}

/// One entry of a reply's `rejected` list.
#[derive(Deserialize)]
struct Rejected {
    index: usize,
    #[serde(rename = "messageId", default)]
    message_id: Option<String>,
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// A 2xx reply.
#[derive(Deserialize)]
struct Accepted {
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    duplicates: u64,
    #[serde(default)]
    rejected: Vec<Rejected>,
}

/// A 400 reply.
#[derive(Deserialize)]
struct Refused {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    rejected: Vec<Rejected>,
}

/// The outcome of a final reply to a request of `items` items.
pub fn tally(status: u16, body: &[u8], items: usize) -> BatchTally {
    match status {
        200..=299 => match serde_json::from_slice::<Accepted>(body) {
            Ok(reply) => accepted(reply, items),
            Err(error) => BatchTally::failure(
                items,
                format!(
                    "{status} reply is not the /v1/batch result ({error}); the server may be a different service"
                ),
            ),
        },
        400 => {
            let (rejection, code) = match serde_json::from_slice::<Refused>(body) {
                Ok(reply) => {
                    let first = reply.rejected.first().map(describe_rejection);
                    (
                        first.unwrap_or_else(|| format!("{}: {}", reply.code, reply.message)),
                        reply.code,
                    )
                }
                Err(_) => (describe_reply(status, body), String::new()),
            };
            tracing::debug!(%code, "batch refused: no valid item");
            BatchTally {
                acked: vec![false; items],
                rejected: items as u64,
                rejection: Some(rejection),
                ..BatchTally::default()
            }
        }
        _ => BatchTally {
            stop: matches!(status, 401 | 403).then(|| {
                "the server refused the write key, so no further requests were sent".to_owned()
            }),
            ..BatchTally::failure(items, describe_reply(status, body))
        },
    }
}

fn accepted(reply: Accepted, items: usize) -> BatchTally {
    let mut acked = vec![true; items];
    let mut rejection = None;
    for item in &reply.rejected {
        match acked.get_mut(item.index) {
            Some(slot) => {
                *slot = false;
                rejection.get_or_insert_with(|| describe_rejection(item));
            }
            None => tracing::warn!(
                index = item.index,
                items,
                "reply rejects an item the batch does not have"
            ),
        }
    }
    let acknowledged = acked.iter().filter(|a| **a).count() as u64;
    if reply.accepted + reply.duplicates != acknowledged {
        tracing::warn!(
            accepted = reply.accepted,
            duplicates = reply.duplicates,
            acknowledged,
            "reply counts disagree with its rejected list"
        );
    }
    BatchTally {
        rejected: items as u64 - acknowledged,
        duplicates: reply.duplicates.min(acknowledged),
        acked,
        rejection,
        ..BatchTally::default()
    }
}

fn describe_rejection(item: &Rejected) -> String {
    let id = item.message_id.as_deref().unwrap_or("?");
    format!(
        "{}: {} (item {}, messageId {id})",
        item.code, item.message, item.index
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        name: &'static str,
        status: u16,
        body: &'static str,
        acked: &'static [bool],
        rejected: u64,
        duplicates: u64,
        failed: u64,
        stop: bool,
    }

    #[test]
    fn batch_reply_table() {
        let cases = [
            Case {
                name: "all stored",
                status: 200,
                body: r#"{"success":true,"accepted":3,"duplicates":0,"rejected":[]}"#,
                acked: &[true, true, true],
                rejected: 0,
                duplicates: 0,
                failed: 0,
                stop: false,
            },
            Case {
                name: "one rejected, one duplicate",
                status: 200,
                body: r#"{"success":true,"accepted":1,"duplicates":1,"rejected":[{"index":1,"messageId":"m1","code":"missing_field","message":"`event` is required"}]}"#,
                acked: &[true, false, true],
                rejected: 1,
                duplicates: 1,
                failed: 0,
                stop: false,
            },
            Case {
                name: "out-of-range index is ignored",
                status: 200,
                body: r#"{"accepted":2,"duplicates":0,"rejected":[{"index":9,"code":"x","message":"y"}]}"#,
                acked: &[true, true],
                rejected: 0,
                duplicates: 0,
                failed: 0,
                stop: false,
            },
            Case {
                name: "no valid item",
                status: 400,
                body: r#"{"code":"no_valid_items","message":"every item was rejected","rejected":[{"index":0,"code":"missing_identity","message":"m"},{"index":1,"code":"missing_identity","message":"m"}]}"#,
                acked: &[false, false],
                rejected: 2,
                duplicates: 0,
                failed: 0,
                stop: false,
            },
            Case {
                name: "malformed body",
                status: 400,
                body: r#"{"code":"invalid_json","message":"expected value at line 1"}"#,
                acked: &[false, false],
                rejected: 2,
                duplicates: 0,
                failed: 0,
                stop: false,
            },
            Case {
                name: "unknown write key",
                status: 401,
                body: r#"{"code":"unauthorized","message":"unknown write key"}"#,
                acked: &[false, false],
                rejected: 0,
                duplicates: 0,
                failed: 2,
                stop: true,
            },
            Case {
                name: "too large",
                status: 413,
                body: r#"{"code":"too_large","message":"split it"}"#,
                acked: &[false],
                rejected: 0,
                duplicates: 0,
                failed: 1,
                stop: false,
            },
            Case {
                name: "200 from something else",
                status: 200,
                body: "<html>hello</html>",
                acked: &[false, false],
                rejected: 0,
                duplicates: 0,
                failed: 2,
                stop: false,
            },
        ];
        for case in cases {
            let got = tally(case.status, case.body.as_bytes(), case.acked.len());
            let name = case.name;
            assert_eq!(got.acked, case.acked, "{name}");
            assert_eq!(
                (got.rejected, got.duplicates, got.failed, got.stop.is_some()),
                (case.rejected, case.duplicates, case.failed, case.stop),
                "{name}"
            );
            assert_eq!(
                got.acknowledged() + got.rejected + got.failed,
                case.acked.len() as u64,
                "{name}: every item counted once"
            );
            assert_eq!(got.error.is_some(), case.failed > 0, "{name}");
            assert_eq!(got.rejection.is_some(), case.rejected > 0, "{name}");
        }
    }

    #[test]
    fn rejections_and_errors_name_the_problem() {
        let body = br#"{"accepted":0,"duplicates":0,"rejected":[{"index":0,"messageId":"m0","code":"missing_field","message":"`event` is required on track calls"}]}"#;
        let got = tally(200, body, 1);
        assert_eq!(
            got.rejection.as_deref(),
            Some("missing_field: `event` is required on track calls (item 0, messageId m0)")
        );
        let got = tally(
            403,
            br#"{"code":"forbidden","message":"read key cannot write"}"#,
            1,
        );
        assert_eq!(
            got.error.as_deref(),
            Some("403 forbidden: read key cannot write")
        );
    }
}
