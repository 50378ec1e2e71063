//! The gateway's nodes: their health, their counters, and the discover stream that tells
//! the balancer which of them are in rotation.
//!
//! The node list is fixed at start-up; a node's key is its index in it. Whether a node is
//! in rotation lives in its [`NodeHealth`] and nowhere else. The balancer learns about it
//! through [`ChangeStream`], a `tower::discover` stream that, each time it is polled,
//! compares every node's rotation state with what it last reported and yields the
//! difference as `Change::Insert` / `Change::Remove`. Reporting differences of a state
//! (rather than queueing events) keeps it bounded however often a node flaps while no
//! request polls the balancer, and means an ejection made when a request fails is seen by
//! the very next `poll_ready` — which is what sends that request's retry elsewhere.
//!
//! Locks are `std::sync::Mutex`es held for a few field updates, never across an await.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::task::AtomicWaker;
use tower::discover::Change;

use super::endpoint::{Endpoint, endpoint};
use super::health::{CheckResult, Membership, NodeHealth};
use super::options::REFUSAL_PENALTY_MS;

/// A node's index in the gateway's node list.
pub type NodeKey = usize;

/// One node as the gateway sees it.
#[derive(Debug)]
pub struct Node {
    /// Base URL, `http://host:port`, no trailing slash.
    pub url: String,
    /// In rotation or not, and why.
    health: Mutex<NodeHealth>,
    /// Until when the node loses p2c comparisons for having answered 429.
    refused_until: Mutex<Option<Instant>>,
    /// Proxied attempts sent to the node.
    requests: AtomicU64,
    /// Attempts that failed with a connection error or a 5xx.
    errors: AtomicU64,
    /// Attempts the node refused with 429.
    refusals: AtomicU64,
}

/// A snapshot of one node for `/gateway/status`.
#[derive(Clone, Debug)]
pub struct NodeSnapshot {
    /// Base URL.
    pub url: String,
    /// Health state at the time of the snapshot.
    pub health: NodeHealth,
    /// Proxied attempts sent to the node.
    pub requests: u64,
    /// Attempts that failed with a connection error or a 5xx.
    pub errors: u64,
    /// Attempts refused with 429.
    pub refusals: u64,
}

/// All nodes, shared by the health checker, the endpoints and the status page.
#[derive(Debug)]
pub struct Registry {
    /// The nodes, indexed by [`NodeKey`].
    nodes: Vec<Node>,
    /// The keep-alive HTTP/1.1 pool used for proxied requests and health probes.
    client: reqwest::Client,
    /// Wakes the balancer's [`ChangeStream`] when a node enters or leaves rotation.
    changed: AtomicWaker,
}

/// Mutex poisoning only means another thread panicked mid-update of a few plain fields;
/// the values are still meaningful, so keep going with them.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    /// Nodes at these base URLs, all out of rotation until their first ready check.
    pub fn new(urls: Vec<String>, client: reqwest::Client) -> Arc<Registry> {
        let nodes = urls
            .into_iter()
            .map(|url| Node {
                url,
                health: Mutex::new(NodeHealth::new()),
                refused_until: Mutex::new(None),
                requests: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                refusals: AtomicU64::new(0),
            })
            .collect();
        Arc::new(Registry {
            nodes,
            client,
            changed: AtomicWaker::new(),
        })
    }

    /// The HTTP client.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The node list.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node with this key.
    ///
    /// Keys only come from this registry's own [`ChangeStream`], so they are in range.
    pub fn node(&self, key: NodeKey) -> &Node {
        &self.nodes[key]
    }

    /// How many nodes are in rotation.
    pub fn in_rotation(&self) -> usize {
        self.nodes
            .iter()
            .filter(|node| lock(&node.health).in_rotation())
            .count()
    }

    /// Records the result of a health probe.
    pub fn record_check(&self, key: NodeKey, result: CheckResult) {
        let node = self.node(key);
        let detail = result.to_string();
        let change = lock(&node.health).checked(result, Instant::now());
        self.announce(node, change, &detail);
    }

    /// Records a proxied attempt that failed with a connection error or a 5xx: the node
    /// is ejected at once.
    pub fn record_failure(&self, key: NodeKey, reason: &str) {
        let node = self.node(key);
        node.errors.fetch_add(1, Ordering::Relaxed);
        let change = lock(&node.health).failed(Instant::now());
        self.announce(node, change, reason);
    }

    /// Records a 429 from the node: it loses p2c comparisons for a while.
    pub fn record_refusal(&self, key: NodeKey) {
        let node = self.node(key);
        node.refusals.fetch_add(1, Ordering::Relaxed);
        *lock(&node.refused_until) =
            Some(Instant::now() + Duration::from_millis(REFUSAL_PENALTY_MS));
    }

    /// Counts an attempt sent to the node.
    pub fn record_attempt(&self, key: NodeKey) {
        self.node(key).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the node answered 429 recently.
    pub fn refused_recently(&self, key: NodeKey, now: Instant) -> bool {
        lock(&self.node(key).refused_until).is_some_and(|until| now < until)
    }

    /// A consistent-per-node snapshot of every node.
    pub fn snapshot(&self) -> Vec<NodeSnapshot> {
        self.nodes
            .iter()
            .map(|node| NodeSnapshot {
                url: node.url.clone(),
                health: lock(&node.health).clone(),
                requests: node.requests.load(Ordering::Relaxed),
                errors: node.errors.load(Ordering::Relaxed),
                refusals: node.refusals.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn announce(&self, node: &Node, change: Option<Membership>, detail: &str) {
        match change {
            Some(Membership::Joined) => {
                tracing::info!(node = %node.url, "node joins rotation");
                self.changed.wake();
            }
            Some(Membership::Left) => {
                tracing::warn!(node = %node.url, reason = %detail, "node leaves rotation");
                self.changed.wake();
            }
            None => {}
        }
    }
}

/// The balancer's `tower::discover` stream: the differences between each node's rotation
/// state and what this stream last reported. It never ends.
pub struct ChangeStream {
    /// The nodes.
    registry: Arc<Registry>,
    /// Per node, whether the balancer has been told it is in rotation.
    reported: Vec<bool>,
}

impl ChangeStream {
    /// A stream that has reported nothing yet: every node starts out of the balancer.
    pub fn new(registry: Arc<Registry>) -> ChangeStream {
        let reported = vec![false; registry.nodes.len()];
        ChangeStream { registry, reported }
    }
}

impl Stream for ChangeStream {
    type Item = Result<Change<NodeKey, Endpoint>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Register before reading, so a change made after the read wakes us.
        this.registry.changed.register(cx.waker());
        for (key, node) in this.registry.nodes.iter().enumerate() {
            let wanted = lock(&node.health).in_rotation();
            if wanted == this.reported[key] {
                continue;
            }
            this.reported[key] = wanted;
            let change = if wanted {
                Change::Insert(key, endpoint(Arc::clone(&this.registry), key))
            } else {
                Change::Remove(key)
            };
            return Poll::Ready(Some(Ok(change)));
        }
        Poll::Pending
    }
}
