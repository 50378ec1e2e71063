//! Synthetic model of Tandem's ingest apply path.
//!
//! Values are slices of a pool of random (incompressible) bytes taken at random offsets, so
//! building a commit costs little more than choosing numbers and neither engine gains from
//! compression (fjall compresses blocks with LZ4 by default; redb does not compress).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Size of one event record value.
pub const EVENT_BYTES: usize = 400;
/// Size of one profile value (8-byte update counter + payload).
pub const PROFILE_BYTES: usize = 300;
const PROFILE_PAYLOAD_BYTES: usize = PROFILE_BYTES - 8;
const POOL_BYTES: usize = 16 << 20;

/// One durable transaction's worth of writes for `B` events.
pub struct Commit<'a> {
    /// Index of this commit in the ordered log of committed batches.
    pub log_index: u64,
    /// `B * 400` bytes: the batch as appended to the log.
    pub log_value: &'a [u8],
    /// `B` event records keyed by monotonic sequence number.
    pub events: Vec<(u64, &'a [u8])>,
    /// `B` read-modify-writes of random profile ids: (id, payload for the new value).
    pub profile_updates: Vec<(u64, &'a [u8])>,
    /// `B` dedup inserts: 16 random bytes -> event sequence number.
    pub dedup: Vec<([u8; 16], [u8; 8])>,
}

/// Builds the next profile value from the current one (if any): bump the counter held in
/// the first 8 bytes, then append the new payload.
pub fn next_profile(old: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
    let count = old.and_then(|v| v.get(..8)).map_or(0, |b| {
        u64::from_be_bytes(b.try_into().expect("slice of length 8"))
    });
    let mut value = Vec::with_capacity(8 + payload.len());
    value.extend_from_slice(&(count + 1).to_be_bytes());
    value.extend_from_slice(payload);
    value
}

/// Deterministic generator of commits and profile values.
pub struct Workload {
    pool: Vec<u8>,
    rng: SmallRng,
    profiles: u64,
    next_log_index: u64,
    next_seq: u64,
}

impl Workload {
    pub fn new(seed: u64, profiles: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut pool = vec![0u8; POOL_BYTES];
        rng.fill(pool.as_mut_slice());
        Self {
            pool,
            rng,
            profiles,
            next_log_index: 0,
            next_seq: 0,
        }
    }

    /// Initial value of profile `id` for preloading.
    pub fn initial_profile(&self, id: u64) -> Vec<u8> {
        let off = (id as usize * 4099) % (self.pool.len() - PROFILE_PAYLOAD_BYTES);
        next_profile(None, &self.pool[off..off + PROFILE_PAYLOAD_BYTES])
    }

    /// The next commit of `batch` events.
    pub fn next_commit(&mut self, batch: usize) -> Commit<'_> {
        let log_index = self.next_log_index;
        self.next_log_index += 1;
        let first_seq = self.next_seq;
        self.next_seq += batch as u64;

        // Draw all random numbers first, then borrow the pool immutably for the slices.
        let rng = &mut self.rng;
        let pool_len = self.pool.len();
        let log_off = rng.gen_range(0..=pool_len - batch * EVENT_BYTES);
        let event_offs: Vec<usize> = (0..batch)
            .map(|_| rng.gen_range(0..=pool_len - EVENT_BYTES))
            .collect();
        let updates: Vec<(u64, usize)> = (0..batch)
            .map(|_| {
                (
                    rng.gen_range(0..self.profiles),
                    rng.gen_range(0..=pool_len - PROFILE_PAYLOAD_BYTES),
                )
            })
            .collect();
        let dedup = (0..batch as u64)
            .map(|i| (rng.gen::<[u8; 16]>(), (first_seq + i).to_be_bytes()))
            .collect();

        let pool = &self.pool;
        Commit {
            log_index,
            log_value: &pool[log_off..log_off + batch * EVENT_BYTES],
            events: event_offs
                .iter()
                .zip(first_seq..)
                .map(|(&off, seq)| (seq, &pool[off..off + EVENT_BYTES]))
                .collect(),
            profile_updates: updates
                .into_iter()
                .map(|(id, off)| (id, &pool[off..off + PROFILE_PAYLOAD_BYTES]))
                .collect(),
            dedup,
        }
    }
}
