//! [`QueueBook`]: one queue's bookkeeping — settings, counts per state, membership, drain and
//! cancel flags, completion, idempotency keys (ORC-8 … ORC-11).
//!
//! ```text
//!            submit                 terminal, no retry          retire
//!  (new) ──────────────▶  live  ──────────────────────▶ finished ──────▶ (gone)
//!                          ▲                                │
//!                          └──────── manual reschedule ─────┘
//! ```
//!
//! Every unretired action of the queue is in exactly one of `live` (not terminal) and `finished`
//! (terminal with no retry to come: the results not yet retired), and the counts per state are
//! kept in step with every move. The [`Book`](super::Book) drives a `QueueBook`; it may also be
//! used alone, fed with [`add`](QueueBook::add), [`moved`](QueueBook::moved) and
//! [`remove`](QueueBook::remove).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use procmesh_protocol::action::{ActionState, Lsn};
use procmesh_protocol::messages::orchestrator::{QueueConfig, QueueStatus, StateCounts};

/// One queue's bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueBook {
    id: u64,
    config: QueueConfig,
    counts: StateCounts,
    draining: bool,
    cancelled: bool,
    accepted: u64,
    live: BTreeSet<Lsn>,
    finished: BTreeSet<Lsn>,
    keys: IdempotencyKeys,
}

impl QueueBook {
    /// An empty, open queue remembering at most `max_keys` idempotency keys.
    pub fn new(id: u64, config: QueueConfig, max_keys: usize) -> QueueBook {
        QueueBook {
            id,
            config,
            counts: StateCounts::default(),
            draining: false,
            cancelled: false,
            accepted: 0,
            live: BTreeSet::new(),
            finished: BTreeSet::new(),
            keys: IdempotencyKeys::new(max_keys),
        }
    }

    /// Its id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its settings.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// How many of its unretired actions are in each state (ORC-8).
    pub fn counts(&self) -> &StateCounts {
        &self.counts
    }

    /// Whether it refuses new actions and finishes the rest (ORC-10).
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Whether it was cancelled (ORC-10).
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// How many actions it ever accepted (repeated idempotency keys not counted, retired ones
    /// still counted).
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// ORC-11: no unretired action is in a non-terminal state (every one is final: terminal with
    /// no retry to come), and the queue either accepted at least one action or will accept none
    /// (draining or cancelled). A fresh queue is not complete; a queue whose every action is
    /// final is, even if all were retired. A queue that is not draining can become incomplete
    /// again with a new submission, and any queue with a manual reschedule.
    pub fn is_complete(&self) -> bool {
        self.live.is_empty() && (self.accepted > 0 || self.draining || self.cancelled)
    }

    /// Its status, as the wire carries it.
    pub fn status(&self) -> QueueStatus {
        QueueStatus {
            id: self.id,
            name: self.config.name.clone(),
            counts: self.counts,
            draining: self.draining,
            cancelled: self.cancelled,
            is_complete: self.is_complete(),
        }
    }

    /// Whether it accepts new actions: neither draining nor cancelled.
    pub fn is_open(&self) -> bool {
        !self.draining && !self.cancelled
    }

    /// Whether `lsn` is one of its unretired actions.
    pub fn contains(&self, lsn: Lsn) -> bool {
        self.live.contains(&lsn) || self.finished.contains(&lsn)
    }

    /// Its actions that are not terminal, in LSN order.
    pub fn live(&self) -> impl Iterator<Item = Lsn> + '_ {
        self.live.iter().copied()
    }

    /// Its final actions not yet retired, in LSN order, after `after` if given.
    pub fn finished(&self, after: Option<Lsn>) -> impl Iterator<Item = Lsn> + '_ {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.finished.range((from, Bound::Unbounded)).copied()
    }

    /// How many final actions are not yet retired.
    pub fn finished_len(&self) -> usize {
        self.finished.len()
    }

    /// The LSN an idempotency key got, if the key is remembered (ORC-9).
    pub fn key(&self, key: &str) -> Option<Lsn> {
        self.keys.get(key)
    }

    /// Its idempotency keys.
    pub fn keys(&self) -> &IdempotencyKeys {
        &self.keys
    }

    /// Refuses new actions from now on; the rest finish (ORC-10).
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// Marks it cancelled: no new actions, no reschedules, no retries (ORC-10). Cancelling its
    /// actions is the caller's part ([`Book::cancel_queue`](super::Book::cancel_queue)).
    pub fn cancel(&mut self) {
        self.cancelled = true;
    }

    /// Counts a newly accepted action in `state`, remembering its idempotency key.
    pub fn add(&mut self, lsn: Lsn, state: ActionState, key: Option<&str>) {
        self.accepted += 1;
        self.counts.add(state);
        if state.is_terminal() {
            self.finished.insert(lsn);
        } else {
            self.live.insert(lsn);
        }
        if let Some(key) = key {
            self.keys.insert(key, lsn);
        }
    }

    /// Follows one action from `from` to `to` (ORC-8).
    pub fn moved(&mut self, lsn: Lsn, from: ActionState, to: ActionState) {
        self.counts.moved(from, to);
        match (from.is_terminal(), to.is_terminal()) {
            (false, true) => {
                self.live.remove(&lsn);
                self.finished.insert(lsn);
            }
            (true, false) => {
                self.finished.remove(&lsn);
                self.live.insert(lsn);
            }
            _ => {}
        }
    }

    /// Forgets an action in `state` (retired). Its idempotency key stays remembered.
    pub fn remove(&mut self, lsn: Lsn, state: ActionState) {
        self.counts.remove(state);
        self.live.remove(&lsn);
        self.finished.remove(&lsn);
    }
}

/// A bounded map from idempotency key to LSN (ORC-9): at most `max` keys, the oldest forgotten
/// first. A key resubmitted after it was forgotten creates a new action.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyKeys {
    map: HashMap<Arc<str>, Lsn>,
    order: VecDeque<Arc<str>>,
    max: usize,
}

impl IdempotencyKeys {
    /// An empty map holding at most `max` keys (0 remembers none).
    pub fn new(max: usize) -> IdempotencyKeys {
        IdempotencyKeys {
            map: HashMap::new(),
            order: VecDeque::new(),
            max,
        }
    }

    /// The LSN `key` got, if remembered.
    pub fn get(&self, key: &str) -> Option<Lsn> {
        self.map.get(key).copied()
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Remembers `key → lsn`, forgetting the oldest key if full; returns the forgotten key. A key
    /// already remembered keeps its first LSN.
    pub fn insert(&mut self, key: &str, lsn: Lsn) -> Option<Arc<str>> {
        if self.max == 0 || self.map.contains_key(key) {
            return None;
        }
        let mut forgotten = None;
        if self.map.len() >= self.max {
            if let Some(oldest) = self.order.pop_front() {
                self.map.remove(&oldest);
                forgotten = Some(oldest);
            }
        }
        let key: Arc<str> = Arc::from(key);
        self.map.insert(key.clone(), lsn);
        self.order.push_back(key);
        forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> QueueBook {
        QueueBook::new(7, QueueConfig::default(), 2)
    }

    // Attests ORC-8, ORC-11
    #[test]
    fn counts_and_membership_follow_moves() {
        let mut q = queue();
        assert!(!q.is_complete(), "a fresh queue is not complete");
        q.add(Lsn(1), ActionState::Pending, None);
        q.add(Lsn(2), ActionState::Pending, None);
        assert!(!q.is_complete());
        q.moved(Lsn(1), ActionState::Pending, ActionState::Running);
        q.moved(Lsn(1), ActionState::Running, ActionState::Completed);
        q.moved(Lsn(2), ActionState::Pending, ActionState::Failed);
        assert_eq!(q.counts().get(ActionState::Completed), 1);
        assert_eq!(q.counts().get(ActionState::Failed), 1);
        assert_eq!(q.counts().get(ActionState::Pending), 0);
        assert!(q.is_complete());
        assert_eq!(q.finished(None).collect::<Vec<_>>(), [Lsn(1), Lsn(2)]);
        assert_eq!(q.finished(Some(Lsn(1))).collect::<Vec<_>>(), [Lsn(2)]);
        // A manual reschedule makes it live again.
        q.moved(Lsn(2), ActionState::Failed, ActionState::Pending);
        assert!(!q.is_complete());
        assert_eq!(q.live().collect::<Vec<_>>(), [Lsn(2)]);
        q.moved(Lsn(2), ActionState::Pending, ActionState::Cancelled);
        q.remove(Lsn(1), ActionState::Completed);
        q.remove(Lsn(2), ActionState::Cancelled);
        assert_eq!(q.counts().total(), 0);
        assert!(!q.contains(Lsn(1)));
        assert!(
            q.is_complete(),
            "complete stays true once everything is retired"
        );
        let status = q.status();
        assert_eq!(status.id, 7);
        assert!(status.is_complete && !status.draining && !status.cancelled);
    }

    // Attests ORC-10, ORC-11
    #[test]
    fn draining_or_cancelled_empty_queue_is_complete() {
        let mut q = queue();
        assert!(q.is_open());
        q.drain();
        assert!(!q.is_open());
        assert!(q.is_complete());
        let mut q = queue();
        q.cancel();
        assert!(!q.is_open());
        assert!(q.is_complete());
        assert!(q.status().cancelled);
    }

    // Attests ORC-9
    #[test]
    fn keys_are_bounded_oldest_first() {
        let mut keys = IdempotencyKeys::new(2);
        assert_eq!(keys.insert("a", Lsn(1)), None);
        assert_eq!(keys.insert("a", Lsn(9)), None);
        assert_eq!(keys.get("a"), Some(Lsn(1)), "the first LSN is kept");
        keys.insert("b", Lsn(2));
        assert_eq!(keys.insert("c", Lsn(3)).as_deref(), Some("a"));
        assert_eq!(keys.get("a"), None);
        assert_eq!((keys.get("b"), keys.get("c")), (Some(Lsn(2)), Some(Lsn(3))));
        assert_eq!(keys.len(), 2);
        let mut none = IdempotencyKeys::new(0);
        none.insert("a", Lsn(1));
        assert!(none.is_empty());
    }
}
