//! Cutting the event stream into `/v1/batch` requests, and pacing them to a rate.
//!
//! A request holds at most the asked-for number of events *and* at most
//! [`REQUEST_BYTES_MAX`] bytes of body, so that a large `--batch-size` never earns a 413
//! from a server with the default `limits.request_bytes_max`. Each request's items are
//! serialised once; retries reuse the same text, so a retried request carries the same
//! events with the same `messageId`s.

use std::time::{Duration, Instant};

use super::workload::{Generated, Workload};

/// Largest request body built: the server's default `limits.request_bytes_max` (500 KiB)
/// less some headroom.
pub const REQUEST_BYTES_MAX: usize = 480 * 1024;
/// Most events per request: the server's default `limits.batch_events_max`.
pub const BATCH_EVENTS_MAX: usize = 2_500;
/// Room reserved in [`REQUEST_BYTES_MAX`] for the envelope around the items.
const ENVELOPE_BYTES_MAX: usize = 256;
/// With a rate set, requests go out at least this many times a second (batches shrink
/// to suit), so a low rate is a steady trickle rather than a burst every few seconds.
const PACED_REQUESTS_PER_SEC_MIN: f64 = 10.0;
/// How far behind schedule the pacer may fall before it forgets the debt instead of
/// bursting to catch up (after a stall, the rate resumes; it does not double).
const PACER_SLACK: Duration = Duration::from_millis(100);

/// One request's worth of events.
#[derive(Debug)]
pub struct Batch {
    /// Position of the request in the run, from 0.
    pub number: u64,
    /// The items as a JSON array, ready to splice into the body.
    pub items_json: String,
    /// `(messageId, identity)` of each item, in order.
    pub events: Vec<(String, String)>,
}

impl Batch {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the batch has no events (never, for batches a [`Batcher`] yields).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The request body, stamped with `sent_at` (RFC 3339).
    pub fn body(&self, sent_at: &str) -> String {
        envelope(&self.items_json, &format!(r#","sentAt":"{sent_at}""#))
    }

    /// The request body without `sentAt`, for a body built long before it is sent
    /// (`--replay`): a stale `sentAt` would make the server shift every event's time by
    /// the age of the body, whereas without one it takes the timestamps as they are.
    pub fn body_unstamped(&self) -> String {
        envelope(&self.items_json, "")
    }
}

/// `{"batch":<items>,<sent_at_member>"context":…}`; `sent_at_member` is empty or
/// `,"sentAt":"…"`.
fn envelope(items_json: &str, sent_at_member: &str) -> String {
    format!(
        r#"{{"batch":{items_json}{sent_at_member},"context":{{"library":{{"name":"tandem-load","version":"{}"}}}}}}"#,
        env!("CARGO_PKG_VERSION"),
    )
}

/// Events per request: the asked-for batch size, shrunk when a rate is set so that
/// requests go out at least ten times a second.
pub fn events_per_request(batch_size: usize, rate: Option<f64>) -> usize {
    let paced = rate.map_or(usize::MAX, |r| {
        (r / PACED_REQUESTS_PER_SEC_MIN).ceil() as usize
    });
    batch_size.min(paced).clamp(1, BATCH_EVENTS_MAX)
}

/// Cuts a workload into batches.
pub struct Batcher {
    /// The event source.
    workload: Workload,
    /// An event that did not fit in the previous batch.
    carry: Option<Generated>,
    /// Most events per batch.
    events_max: usize,
    /// Most body bytes per batch.
    bytes_max: usize,
    /// Number of the next batch.
    next_number: u64,
}

impl Batcher {
    /// Batches of at most `events_max` events and `bytes_max` body bytes.
    pub fn new(workload: Workload, events_max: usize, bytes_max: usize) -> Batcher {
        Batcher {
            workload,
            carry: None,
            events_max: events_max.max(1),
            bytes_max,
            next_number: 0,
        }
    }
}

impl Iterator for Batcher {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let mut items_json = String::from("[");
        let mut events = Vec::with_capacity(self.events_max.min(1_024));
        while events.len() < self.events_max {
            let Some(event) = self.carry.take().or_else(|| self.workload.next()) else {
                break;
            };
            let grown = items_json.len() + 1 + event.json.len() + 1 + ENVELOPE_BYTES_MAX;
            // A lone event always goes, even if it alone is over the limit: the server's
            // 413 then says so, rather than the event silently never being sent.
            if !events.is_empty() && grown > self.bytes_max {
                self.carry = Some(event);
                break;
            }
            if !events.is_empty() {
                items_json.push(',');
            }
            items_json.push_str(&event.json);
            events.push((event.message_id, event.identity));
        }
        if events.is_empty() {
            return None;
        }
        items_json.push(']');
        let number = self.next_number;
        self.next_number += 1;
        Some(Batch {
            number,
            items_json,
            events,
        })
    }
}

/// Spaces requests so that events go out at a steady rate.
#[derive(Debug)]
pub struct Pacer {
    /// Target events per second (> 0).
    events_per_sec: f64,
    /// When the next request may go.
    next: Instant,
}

impl Pacer {
    /// A pacer for `events_per_sec` starting at `now`.
    pub fn new(events_per_sec: f64, now: Instant) -> Pacer {
        Pacer {
            events_per_sec,
            next: now,
        }
    }

    /// Books a request of `events` events; returns when it may be sent.
    pub fn reserve(&mut self, now: Instant, events: usize) -> Instant {
        let earliest = now.checked_sub(PACER_SLACK).unwrap_or(now);
        let at = self.next.max(earliest);
        self.next = at + Duration::from_secs_f64(events as f64 / self.events_per_sec);
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START_MS: i64 = 1_764_000_000_000;

    #[test]
    fn batches_respect_both_limits_and_keep_every_event_in_order() {
        let expected: Vec<_> = Workload::new(5, 3_000, START_MS)
            .map(|e| e.message_id)
            .collect();
        for (events_max, bytes_max) in [
            (100, REQUEST_BYTES_MAX),
            (2_500, REQUEST_BYTES_MAX),
            (50, 8 * 1024),
        ] {
            let batches: Vec<Batch> =
                Batcher::new(Workload::new(5, 3_000, START_MS), events_max, bytes_max).collect();
            let mut seen = Vec::new();
            for (i, batch) in batches.iter().enumerate() {
                assert_eq!(batch.number, i as u64);
                assert!(!batch.is_empty() && batch.len() <= events_max);
                let body = batch.body("2026-01-01T00:00:00.000Z");
                assert!(body.len() <= bytes_max, "{} > {bytes_max}", body.len());
                let parsed: serde_json::Value = serde_json::from_str(&body).expect("body is JSON");
                let items = parsed["batch"].as_array().expect("batch array");
                assert_eq!(items.len(), batch.len());
                assert_eq!(parsed["context"]["library"]["name"], "tandem-load");
                for (item, (message_id, _)) in items.iter().zip(&batch.events) {
                    assert_eq!(item["messageId"], message_id.as_str());
                }
                seen.extend(batch.events.iter().map(|(m, _)| m.clone()));
            }
            assert_eq!(
                seen, expected,
                "events_max {events_max}, bytes_max {bytes_max}"
            );
        }
        let full = Batcher::new(Workload::new(5, 3_000, START_MS), 2_500, REQUEST_BYTES_MAX);
        assert!(
            full.count() >= 3,
            "2500 events of ~400 bytes do not fit one 480 KiB request"
        );
    }

    #[test]
    fn a_rate_shrinks_batches_so_requests_trickle() {
        let cases = [
            (100, None, 100),
            (5_000, None, BATCH_EVENTS_MAX),
            (0, None, 1),
            (100, Some(50.0), 5),
            (100, Some(0.5), 1),
            (100, Some(100_000.0), 100),
        ];
        for (batch_size, rate, want) in cases {
            assert_eq!(
                events_per_request(batch_size, rate),
                want,
                "{batch_size} at {rate:?}"
            );
        }
    }

    #[test]
    fn the_pacer_keeps_the_rate_and_does_not_burst_after_a_stall() {
        let start = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        let mut pacer = Pacer::new(1_000.0, start);
        // 100 events at 1000/s: one request every 100 ms.
        assert_eq!(pacer.reserve(start, 100), start);
        assert_eq!(pacer.reserve(start, 100), start + ms(100));
        assert_eq!(pacer.reserve(start + ms(150), 100), start + ms(200));
        // A 2 s stall: the next request goes at once, then the rate resumes.
        let late = start + ms(2_300);
        assert_eq!(pacer.reserve(late, 100), late - ms(100));
        assert_eq!(pacer.reserve(late, 100), late);
        assert_eq!(pacer.reserve(late, 100), late + ms(100));
    }
}
