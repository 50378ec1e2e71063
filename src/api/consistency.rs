//! How a client asks for a read's freshness, and how the reply says what it got.
//!
//! - `?consistency=linearizable|lease|local` picks the mode (see [`crate::node::reads`]
//!   for each one's guarantee). Without it the read is `linearizable` — unless the client
//!   gave a position, see next.
//! - `?after=N` or the header `Tandem-After: N` (both: the larger) makes the node wait,
//!   bounded, until it has applied log index `N` — the `position.index` of a write reply —
//!   so the read sees that write (read-your-writes) without a leader round. Given without
//!   `consistency`, the read is otherwise `local`.
//!
//! Every reply of a profile read carries a `read` object: the mode, the position waited
//! for, and the node and index it was served at ([`read_json`]).

use axum::http::HeaderMap;
use openraft::async_runtime::WatchReceiver;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::node::reads::{Consistency, ReadRequirement};

/// The header a client may pass its last write's position in.
pub const AFTER_HEADER: &str = "tandem-after";

/// The requirement a read's `consistency` and `after` parameters and `Tandem-After`
/// header ask for. Unknown modes and positions that are not integers are 400
/// `invalid_query`, naming the parameter and what it accepts.
pub fn requirement(
    consistency: Option<&str>,
    after: Option<&str>,
    headers: &HeaderMap,
) -> Result<ReadRequirement, ApiError> {
    let from_query = after.map(|text| position("after", text)).transpose()?;
    let from_header = match headers.get(AFTER_HEADER) {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                ApiError::bad_request(
                    "invalid_query",
                    "the Tandem-After header is not text; send the position.index of a write reply",
                )
            })?;
            Some(position("Tandem-After", text)?)
        }
    };
    let after = from_query.max(from_header);
    let consistency = match consistency {
        None if after.is_some() => Consistency::Local,
        None | Some("linearizable") => Consistency::Linearizable,
        Some("lease") => Consistency::Lease,
        Some("local") => Consistency::Local,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("consistency={other:?}: use linearizable (default), lease or local"),
            ));
        }
    };
    Ok(ReadRequirement { consistency, after })
}

fn position(name: &str, text: &str) -> Result<u64, ApiError> {
    text.trim().parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_query",
            format!(
                "{name}={text:?} is not a log position: send the position.index of a write \
                 reply (a non-negative integer)"
            ),
        )
    })
}

/// The `read` object of a reply: how fresh it is and where it was served.
pub fn read_json(state: &AppState, requirement: ReadRequirement) -> Value {
    let metrics = state.node.raft().metrics().borrow_watched().clone();
    // The state machine's signal can be ahead of Raft's metrics (see `node::reads`): the
    // store shows at least this index, and lags the commit index by no more than this.
    let applied = state.node.applied_index();
    let lag = super::lag_entries(&metrics);
    let behind_metrics = applied
        .unwrap_or(0)
        .saturating_sub(metrics.last_applied.map_or(0, |id| id.index));
    json!({
        "consistency": requirement.consistency.name(),
        "after": requirement.after,
        "node_id": metrics.id,
        "applied_index": applied,
        "lag_entries": lag.saturating_sub(behind_metrics),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, StatusCode};

    fn parse(
        consistency: Option<&str>,
        after: Option<&str>,
        header: Option<&str>,
    ) -> Result<ReadRequirement, ApiError> {
        let mut headers = HeaderMap::new();
        if let Some(header) = header {
            headers.insert(AFTER_HEADER, HeaderValue::from_str(header).expect("header"));
        }
        requirement(consistency, after, &headers)
    }

    fn wants(consistency: Consistency, after: Option<u64>) -> ReadRequirement {
        ReadRequirement { consistency, after }
    }

    #[test]
    fn modes_and_positions_parse() {
        use Consistency::*;
        let cases = [
            ((None, None, None), wants(Linearizable, None)),
            (
                (Some("linearizable"), None, None),
                wants(Linearizable, None),
            ),
            ((Some("lease"), None, None), wants(Lease, None)),
            ((Some("local"), None, None), wants(Local, None)),
            // A position alone is a read-your-writes read: local once caught up.
            ((None, Some("42"), None), wants(Local, Some(42))),
            ((None, None, Some("42")), wants(Local, Some(42))),
            ((None, Some("7"), Some("42")), wants(Local, Some(42))),
            ((Some("lease"), Some("9"), None), wants(Lease, Some(9))),
            (
                (Some("linearizable"), Some("9"), None),
                wants(Linearizable, Some(9)),
            ),
        ];
        for ((consistency, after, header), expected) in cases {
            let got = parse(consistency, after, header).expect("valid");
            assert_eq!(got, expected, "{consistency:?} {after:?} {header:?}");
        }
    }

    #[test]
    fn bad_modes_and_positions_name_the_problem() {
        let cases = [
            ((Some("strong"), None, None), "consistency=\"strong\""),
            ((None, Some("-1"), None), "after=\"-1\""),
            ((None, Some("abc"), None), "after=\"abc\""),
            ((None, None, Some("x")), "Tandem-After=\"x\""),
        ];
        for ((consistency, after, header), named) in cases {
            let error = parse(consistency, after, header).expect_err("invalid");
            assert_eq!(
                (error.status, error.code),
                (StatusCode::BAD_REQUEST, "invalid_query")
            );
            assert!(error.message.contains(named), "{}", error.message);
        }
    }
}
