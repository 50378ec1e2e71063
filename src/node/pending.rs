//! The identities that writes this leader proposed, and has not yet applied, mention — so a
//! linearizable read of one profile waits only for the writes that can change it, not for
//! apply to reach the commit index behind every other profile's entries.
//!
//! **Why a profile read may skip the wait.** A profile read by identity `I` answers with the
//! profile that owns `I` (its identities, traits, event index, merge history). Applying an
//! event changes a profile only if the event mentions one of that profile's identities
//! (resolution attaches, merges and refuses only among the owners of the identities an
//! event carries; alias's `previousId` counts under both kinds), or mentions `I` itself
//! while no profile owns it. So, on a leader confirmed in term `T`, a snapshot `S` answers
//! linearizably if no write committed before the read began, touching `I` or an identity
//! `S` gives `I`'s profile, is missing from `S`:
//! - entries of terms before `T` are all applied: the leader applied them before its
//!   first proposal of `T` ([`PendingWrites::verified_term`]);
//! - entries of term `T` were all proposed by this leader, through [`PendingWrites::register`]
//!   before proposing. A group leaves the map only once applied ([`Registration::release`]
//!   after Raft reported the apply — later than its writers' replies, which go out at
//!   commit), and every release bumps a generation. The read takes the
//!   generation, *then* its snapshot, *then* looks up the identities: a group released
//!   before the generation was taken is in the snapshot; one released after it is among
//!   the last releases remembered with their identities (if it mentions the profile, or
//!   too many were released to tell, the read waits); one still registered matches (the
//!   read waits).
//! - A chain of pending writes that reaches the profile (an earlier one attaching a new
//!   identity, a later one mentioning only that) starts with one that mentions an identity
//!   the snapshot already has, and the read waits for the commit index, past all of them.
//! - A group whose fate is unknown (Raft failed it) may still be committed in its term: it
//!   marks the term uncertain, and no read of that term skips the wait.
//!
//! Other commands (segment definitions, ticks, alert notes) do not change profile
//! records. Retention removes expired events in bounded sweeps that every entry carries; a
//! read that skips the wait may show an expired event one sweep longer, as any read may
//! while the sweep catches up.
//!
//! Bounded: the map holds the identities of the events admitted and not yet applied (at
//! most `limits.inflight_events_max` unanswered, plus [`super::UNAPPLIED_GROUPS_MAX`]
//! committed groups of at most `limits.commit_events_max` each), and is keyed by a randomly seeded hash, so a
//! sender cannot aim collisions at it (a collision only makes a read wait).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::model::event::Event;
use crate::model::identity::{IdKind, Identity};

/// See the module doc.
#[derive(Debug, Default)]
pub struct PendingWrites {
    inner: Mutex<Inner>,
    hasher: RandomState,
    /// The term whose earlier entries this leader is known to have applied (set by the
    /// proposer once per term, before its first proposal of the term).
    pub verified_term: AtomicU64,
    /// Profile reads answered without waiting for apply.
    pub reads_unwaited: AtomicU64,
    /// Profile reads that waited for apply to reach the read index.
    pub reads_waited: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Identity hash → groups registered and not released that mention it.
    counts: HashMap<u64, u32>,
    /// Bumped by every release.
    generation: u64,
    /// The last [`RECENT_RELEASES_MAX`] releases: the generation each made, and the group's
    /// identity hashes (sorted). A read that sees the generation move checks what was
    /// released since its ticket here, rather than waiting whatever was released.
    recent: VecDeque<(u64, Vec<u64>)>,
    /// The highest term in which a group's fate became unknown.
    uncertain_term: u64,
}

/// A registered group's identity hashes (each once). Dropped without
/// [`Registration::release`] (a panic, or a task cancelled at shutdown), it releases the
/// group as of unknown fate.
#[derive(Debug)]
#[must_use = "a registration must be released"]
pub struct Registration {
    pending: Arc<PendingWrites>,
    hashes: Vec<u64>,
    term: u64,
}

impl Registration {
    /// Releases the group: `applied` once Raft answered it applied; otherwise its fate is
    /// unknown and no read of its term (or of `current_term`, if later) skips the wait.
    pub fn release(mut self, applied: bool, current_term: u64) {
        let hashes = std::mem::take(&mut self.hashes);
        self.pending
            .release(hashes, self.term, applied, current_term);
        self.term = RELEASED;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.term != RELEASED {
            let hashes = std::mem::take(&mut self.hashes);
            self.pending.release(hashes, self.term, false, self.term);
        }
    }
}

/// The term a released registration is marked with (no real term is this high).
const RELEASED: u64 = u64::MAX;

/// Releases remembered with their identities. A read during which more groups were
/// released than this waits for its read index (at saturation a leader releases a few
/// dozen groups a second, so this covers a read that took a fraction of a second).
const RECENT_RELEASES_MAX: usize = 16;

/// What a read learned from confirming the leadership: the term, the read index, and the
/// generation of the map before its snapshot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadTicket {
    /// The term the leadership was confirmed in.
    pub term: u64,
    /// The commit index at confirmation: waiting for it is always enough.
    pub read_index: u64,
    generation: u64,
}

impl PendingWrites {
    /// Registers the identities of `events`, about to be proposed in `term`.
    pub fn register(self: &Arc<Self>, events: &[Event], term: u64) -> Registration {
        let mut hashes: Vec<u64> = Vec::with_capacity(events.len() * 2);
        for event in events {
            hashes.extend(event.identities.iter().map(|i| self.hash(i)));
            if let Some(previous) = &event.previous_id {
                for kind in [IdKind::UserId, IdKind::AnonymousId] {
                    hashes.push(self.hash(&Identity {
                        kind,
                        value: previous.clone(),
                    }));
                }
            }
        }
        hashes.sort_unstable();
        hashes.dedup();
        let mut inner = lock(&self.inner);
        for &hash in &hashes {
            *inner.counts.entry(hash).or_insert(0) += 1;
        }
        Registration {
            pending: Arc::clone(self),
            hashes,
            term,
        }
    }

    fn release(&self, hashes: Vec<u64>, term: u64, applied: bool, current_term: u64) {
        let mut inner = lock(&self.inner);
        for hash in &hashes {
            if let Some(count) = inner.counts.get_mut(hash) {
                *count -= 1;
                if *count == 0 {
                    inner.counts.remove(hash);
                }
            }
        }
        inner.generation += 1;
        let generation = inner.generation;
        if inner.recent.len() == RECENT_RELEASES_MAX {
            inner.recent.pop_front();
        }
        inner.recent.push_back((generation, hashes));
        if !applied {
            let term = term.max(current_term);
            inner.uncertain_term = inner.uncertain_term.max(term);
        }
    }

    /// A ticket for a read whose leadership was confirmed in `term` at `read_index`, or
    /// `None` when no read of `term` may skip the wait (earlier terms' entries not known
    /// applied, or a group of this term failed). Take it before the read's snapshot.
    pub fn ticket(&self, term: u64, read_index: u64) -> Option<ReadTicket> {
        if self.verified_term.load(Ordering::Acquire) != term {
            return None;
        }
        let inner = lock(&self.inner);
        (inner.uncertain_term < term).then_some(ReadTicket {
            term,
            read_index,
            generation: inner.generation,
        })
    }

    /// Whether a snapshot taken after `ticket` answers a read of a profile with these
    /// `identities` linearizably: nothing registered mentions them, and nothing released
    /// since the ticket did (a group released meanwhile may have applied after the
    /// snapshot was taken). Counts the read either way.
    pub fn clear<'a>(
        &self,
        ticket: &ReadTicket,
        identities: impl IntoIterator<Item = &'a Identity>,
    ) -> bool {
        let hashes: Vec<u64> = identities.into_iter().map(|i| self.hash(i)).collect();
        let inner = lock(&self.inner);
        let clear = inner.uncertain_term < ticket.term
            && hashes.iter().all(|hash| !inner.counts.contains_key(hash))
            && inner.released_since_spare(ticket.generation, &hashes);
        drop(inner);
        let counter = if clear {
            &self.reads_unwaited
        } else {
            &self.reads_waited
        };
        counter.fetch_add(1, Ordering::Relaxed);
        clear
    }

    /// Identity hashes registered (for tests and metrics).
    pub fn len(&self) -> usize {
        lock(&self.inner).counts.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn hash(&self, identity: &Identity) -> u64 {
        self.hasher
            .hash_one((&identity.kind, identity.value.as_str()))
    }
}

impl Inner {
    /// Whether every group released after `generation` is remembered and mentions none of
    /// `hashes`.
    fn released_since_spare(&self, generation: u64, hashes: &[u64]) -> bool {
        if self.generation == generation {
            return true;
        }
        // The releases after `generation` made generations generation + 1 ..= self.generation.
        let remembered = self
            .recent
            .front()
            .is_some_and(|(oldest, _)| *oldest <= generation + 1);
        remembered
            && self
                .recent
                .iter()
                .filter(|(made, _)| *made > generation)
                .all(|(_, released)| hashes.iter().all(|h| released.binary_search(h).is_err()))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::validate::test_event;

    fn user(value: &str) -> Identity {
        Identity {
            kind: IdKind::UserId,
            value: value.into(),
        }
    }

    fn anon(value: &str) -> Identity {
        Identity {
            kind: IdKind::AnonymousId,
            value: value.into(),
        }
    }

    fn event(identities: &[Identity], previous: Option<&str>) -> Event {
        let raw = serde_json::json!({"type": "track", "event": "e", "userId": "unused", "messageId": "m1"});
        let mut event = test_event(raw, 1_700_000_000_000);
        event.identities = identities.to_vec();
        event.previous_id = previous.map(str::to_owned);
        event
    }

    fn verified(term: u64) -> Arc<PendingWrites> {
        let pending = Arc::new(PendingWrites::default());
        pending.verified_term.store(term, Ordering::Release);
        pending
    }

    #[test]
    fn a_registered_identity_makes_reads_of_it_wait_until_released() {
        let pending = verified(3);
        let group = pending.register(&[event(&[user("u1"), anon("a1")], None)], 3);
        let ticket = pending.ticket(3, 10).expect("verified term");
        assert!(!pending.clear(&ticket, [&user("u1")]));
        assert!(!pending.clear(&ticket, [&user("u9"), &anon("a1")]));
        assert!(pending.clear(&ticket, [&user("u9"), &anon("a9")]));
        // The kind matters: user id "a1" is not anonymous id "a1".
        assert!(pending.clear(&ticket, [&user("a1")]));
        group.release(true, 3);
        assert!(pending.is_empty());
        let after = pending.ticket(3, 11).expect("verified term");
        assert!(pending.clear(&after, [&user("u1"), &anon("a1")]));
        assert_eq!(pending.reads_unwaited.load(Ordering::Relaxed), 3);
        assert_eq!(pending.reads_waited.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_release_after_the_ticket_that_mentions_the_profile_makes_the_read_wait() {
        // The released group may be missing from a snapshot taken before it applied, and
        // it may have given the profile the identity a later group mentions.
        let pending = verified(1);
        let group = pending.register(&[event(&[user("u1"), anon("a1")], None)], 1);
        let ticket = pending.ticket(1, 5).expect("verified term");
        group.release(true, 1);
        assert!(!pending.clear(&ticket, [&user("other"), &anon("a1")]));
        // A release that mentions none of the profile's identities does not matter.
        assert!(pending.clear(&ticket, [&user("other"), &anon("a2")]));
    }

    #[test]
    fn more_releases_during_a_read_than_are_remembered_make_it_wait() {
        let pending = verified(1);
        let ticket = pending.ticket(1, 5).expect("verified term");
        for n in 0..RECENT_RELEASES_MAX {
            let group = pending.register(&[event(&[user(&format!("w{n}"))], None)], 1);
            group.release(true, 1);
        }
        assert!(pending.clear(&ticket, [&user("mine")]), "all remembered");
        let group = pending.register(&[event(&[user("one-more")], None)], 1);
        group.release(true, 1);
        assert!(
            !pending.clear(&ticket, [&user("mine")]),
            "the first release after the ticket is forgotten"
        );
        let later = pending.ticket(1, 6).expect("verified term");
        assert!(pending.clear(&later, [&user("mine")]));
    }

    #[test]
    fn overlapping_groups_count_each_registration() {
        let pending = verified(1);
        let first = pending.register(&[event(&[user("u1")], None)], 1);
        let second = pending.register(&[event(&[user("u1")], None), event(&[user("u1")], None)], 1);
        first.release(true, 1);
        let ticket = pending.ticket(1, 5).expect("verified term");
        assert!(!pending.clear(&ticket, [&user("u1")]));
        second.release(true, 1);
        let ticket = pending.ticket(1, 6).expect("verified term");
        assert!(pending.clear(&ticket, [&user("u1")]));
    }

    #[test]
    fn an_alias_counts_its_previous_id_as_both_kinds() {
        let pending = verified(1);
        let _group = pending.register(&[event(&[user("new")], Some("old"))], 1);
        let ticket = pending.ticket(1, 5).expect("verified term");
        assert!(!pending.clear(&ticket, [&user("old")]));
        assert!(!pending.clear(&ticket, [&anon("old")]));
        assert!(!pending.clear(&ticket, [&user("new")]));
    }

    #[test]
    fn no_read_skips_the_wait_in_an_unverified_term_or_after_a_failed_group() {
        let pending = verified(2);
        assert_eq!(pending.ticket(3, 5), None, "term 3 not verified yet");
        let group = pending.register(&[event(&[user("u1")], None)], 2);
        group.release(false, 2);
        assert_eq!(
            pending.ticket(2, 5),
            None,
            "a group of term 2 may still commit"
        );
        pending.verified_term.store(4, Ordering::Release);
        let ticket = pending.ticket(4, 9).expect("a later verified term");
        assert!(pending.clear(&ticket, [&user("u1")]));
        // A failure seen in a later term than the group's marks that term too.
        let group = pending.register(&[event(&[user("u2")], None)], 4);
        group.release(false, 5);
        pending.verified_term.store(5, Ordering::Release);
        assert_eq!(pending.ticket(5, 12), None);
    }

    #[test]
    fn a_registration_dropped_unreleased_counts_as_failed() {
        let pending = verified(7);
        drop(pending.register(&[event(&[user("u1")], None)], 7));
        assert!(pending.is_empty());
        assert_eq!(
            pending.ticket(7, 3),
            None,
            "its group may still commit in term 7"
        );
    }
}
