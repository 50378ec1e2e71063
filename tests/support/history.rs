//! Writers that record what the cluster acknowledged, and the check that every
//! acknowledged event is stored exactly once on a node.
//!
//! Each writer owns one customer (`userId` = `writer-N`) and sends batches with unique
//! messageIds to any node, retrying the *same* batch on other nodes after a 429, a 503 or a
//! network error — as a client library would. Only a 200 counts as acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{WRITE_KEY, client, get};

/// Events per batch a writer sends.
pub const BATCH: usize = 20;
/// How long a writer keeps retrying one batch before giving up on it (unacknowledged).
const RETRY_BUDGET: Duration = Duration::from_secs(30);

/// Acknowledged messageIds by customer.
pub type Acked = BTreeMap<String, BTreeSet<String>>;

/// Running writers.
pub struct Writers {
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// Starts `count` writers spreading batches over `urls`.
    pub fn start(urls: Vec<String>, count: usize, tag: &str) -> Writers {
        let acked = Arc::new(Mutex::new(Acked::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..count)
            .map(|w| {
                let (urls, acked, stop) = (urls.clone(), Arc::clone(&acked), Arc::clone(&stop));
                let user = format!("writer-{tag}-{w}");
                tokio::spawn(write_loop(urls, user, w, acked, stop))
            })
            .collect();
        Writers {
            acked,
            stop,
            handles,
        }
    }

    /// Events acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked
            .lock()
            .expect("acked")
            .values()
            .map(BTreeSet::len)
            .sum()
    }

    /// Stops the writers (each finishes or gives up its current batch) and returns what was
    /// acknowledged.
    pub async fn stop(self) -> Acked {
        self.stop.store(true, Ordering::Release);
        for handle in self.handles {
            handle.await.expect("writer task");
        }
        std::mem::take(&mut *self.acked.lock().expect("acked"))
    }
}

async fn write_loop(
    urls: Vec<String>,
    user: String,
    writer: usize,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
) {
    let http = client();
    let mut next_node = writer;
    for n in 0.. {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let ids: Vec<String> = (0..BATCH).map(|i| format!("{user}-{n}-{i}")).collect();
        let items: Vec<_> = ids
            .iter()
            .map(|id| {
                json!({"type": "track", "userId": user, "event": "Order Completed",
                              "messageId": id, "properties": {"revenue": 10}})
            })
            .collect();
        let body = json!({"batch": items}).to_string();
        let started = Instant::now();
        while started.elapsed() < RETRY_BUDGET {
            let url = &urls[next_node % urls.len()];
            let sent = http
                .post(format!("{url}/v1/batch"))
                .basic_auth(WRITE_KEY, Some(""))
                .header("content-type", "application/json")
                .timeout(Duration::from_secs(10))
                .body(body.clone())
                .send()
                .await;
            match sent.map(|r| r.status().as_u16()) {
                Ok(200) => {
                    acked
                        .lock()
                        .expect("acked")
                        .entry(user.clone())
                        .or_default()
                        .extend(ids.iter().cloned());
                    break;
                }
                Ok(429 | 503 | 502 | 504) | Err(_) => {
                    next_node += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(other) => panic!("writer {user}: unexpected status {other}"),
            }
        }
    }
}

/// Checks on the node at `url` (local reads) that every acknowledged messageId is stored
/// exactly once; returns how many were checked.
pub async fn check_exactly_once(url: &str, acked: &Acked) -> Result<usize, String> {
    let mut checked = 0;
    for (user, ids) in acked {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut before: Option<u64> = None;
        loop {
            let cursor = before.map(|b| format!("&before={b}")).unwrap_or_default();
            let page = get(
                url,
                &format!("/v1/profiles/user_id:{user}/events?limit=1000&consistency=local{cursor}"),
            )
            .await;
            if page.status != 200 {
                return Err(format!(
                    "{url}: events of {user}: {} {}",
                    page.status, page.body
                ));
            }
            for event in page.body["events"].as_array().into_iter().flatten() {
                let id = event["messageId"].as_str().unwrap_or("").to_owned();
                *counts.entry(id).or_insert(0) += 1;
            }
            match page.body["next_before"].as_u64() {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        for id in ids {
            match counts.get(id) {
                Some(1) => checked += 1,
                Some(n) => return Err(format!("{url}: {id} stored {n} times")),
                None => return Err(format!("{url}: acknowledged {id} is missing")),
            }
        }
        if let Some((id, n)) = counts.iter().find(|(_, n)| **n > 1) {
            return Err(format!("{url}: {id} stored {n} times"));
        }
    }
    Ok(checked)
}
