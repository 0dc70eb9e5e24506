//! [`Events`]: every queue's recent transitions, each with its index (ORC-32), so that a
//! subscriber can resume where it was — after a reconnect, or an orchestrator restart, since
//! this is core state, rebuilt by the replay of the journal like the rest.
//!
//! ```text
//!  queue 7: next = 1042   ring [seq 1042-len … 1041]   at most `event_backlog` transitions
//!  Subscribe { from: 1030 } ─▶ replay 1030 … 1041, then live from 1042
//!  Subscribe { from: 3 }    ─▶ Lagged { missed: the ones no longer kept }, then the ring, live
//! ```
//!
//! A queue whose every action was retired forgets its kept transitions (its counter stays), so
//! what the orchestrator keeps follows what is live, not how many queues ever existed.
//!
//! Kept transitions carry no stdout/stderr tails (at most 64 KiB each): a replayed `Completed`
//! names its outputs, and the tails stay with the result.

use std::collections::{BTreeMap, VecDeque};

use procmesh_protocol::{Lsn, Transition, TransitionDetail};
use serde::{Deserialize, Serialize};

/// One queue's numbered transitions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct QueueEvents {
    /// The index the next transition gets (the first is 1).
    next: u64,
    /// The last transitions, oldest first; the last one has index `next - 1`.
    ring: VecDeque<Transition>,
}

/// What a subscription starting at some index gets before it goes live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Kept transitions from the asked index on, with their indices, oldest first.
    pub events: Vec<(u64, Transition)>,
    /// Transitions from the asked index on that are no longer kept.
    pub missed: u64,
    /// The index the queue's next transition will have.
    pub next: u64,
}

/// Every queue's numbered transitions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Events {
    queues: BTreeMap<u64, QueueEvents>,
}

impl Events {
    /// Numbers `t` in `queue` and keeps it (without tails), dropping the oldest beyond `keep`;
    /// returns its index.
    pub fn record(&mut self, queue: u64, t: &Transition, keep: usize) -> u64 {
        let q = self.queues.entry(queue).or_insert_with(|| QueueEvents {
            next: 1,
            ring: VecDeque::new(),
        });
        let seq = q.next;
        q.next += 1;
        if keep > 0 {
            if q.ring.len() >= keep {
                q.ring.pop_front();
            }
            q.ring.push_back(light(t));
        }
        seq
    }

    /// Forgets the kept transitions of `queue` (every action of it was retired), keeping its
    /// counter: a subscriber resuming from before gets `Lagged`.
    pub fn forget(&mut self, queue: u64) {
        if let Some(q) = self.queues.get_mut(&queue) {
            q.ring = VecDeque::new();
        }
    }

    /// The index `queue`'s next transition will have.
    pub fn next(&self, queue: u64) -> u64 {
        self.queues.get(&queue).map_or(1, |q| q.next)
    }

    /// What a subscription to `queue` (or to its action `lsn`) from index `from` gets first.
    pub fn since(&self, queue: u64, from: u64, lsn: Option<Lsn>) -> Backlog {
        let Some(q) = self.queues.get(&queue) else {
            return Backlog {
                next: 1,
                ..Backlog::default()
            };
        };
        let first_kept = q.next - q.ring.len() as u64;
        let from = from.max(1);
        let missed = if lsn.is_none() {
            first_kept
                .saturating_sub(from)
                .min(q.next.saturating_sub(from))
        } else {
            0
        };
        let events = q
            .ring
            .iter()
            .enumerate()
            .map(|(i, t)| (first_kept + i as u64, t))
            .filter(|(seq, t)| *seq >= from && lsn.is_none_or(|l| t.lsn == l))
            .map(|(seq, t)| (seq, t.clone()))
            .collect();
        Backlog {
            events,
            missed,
            next: q.next,
        }
    }
}

/// `t` without its stdout/stderr tails.
fn light(t: &Transition) -> Transition {
    let d = &t.detail;
    Transition {
        detail: TransitionDetail {
            location: d.location.clone(),
            exit: d.exit,
            reason: d.reason.clone(),
            cpu_ms: d.cpu_ms,
            peak_memory_bytes: d.peak_memory_bytes,
            outputs: d.outputs.clone(),
            stdout_tail: Vec::new(),
            stderr_tail: Vec::new(),
            ran: d.ran.clone(),
        },
        ..*t
    }
}

#[cfg(test)]
mod tests {
    use procmesh_protocol::{ActionState, Attempt, Timestamp};

    use super::*;

    fn t(lsn: u64) -> Transition {
        let mut t = Transition::new(Lsn(lsn), Attempt::FIRST, ActionState::Pending, Timestamp(1));
        t.detail.stdout_tail = b"tail".to_vec();
        t
    }

    // Attests ORC-32
    #[test]
    fn indices_are_dense_per_queue_and_resume_where_asked() {
        let mut events = Events::default();
        for lsn in 1..=5 {
            assert_eq!(events.record(7, &t(lsn), 3), lsn);
        }
        assert_eq!(events.record(8, &t(9), 3), 1, "per queue");
        assert_eq!(events.next(7), 6);
        let b = events.since(7, 4, None);
        assert_eq!(b.missed, 0);
        assert_eq!(b.events.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [4, 5]);
        assert!(b.events[0].1.detail.stdout_tail.is_empty(), "no tails kept");
        // Older than what is kept: told as missed, then the ring.
        let b = events.since(7, 1, None);
        assert_eq!(b.missed, 2);
        assert_eq!(b.events.len(), 3);
        // Up to date: nothing to replay.
        let b = events.since(7, 6, None);
        assert_eq!((b.missed, b.events.len(), b.next), (0, 0, 6));
        // One action only.
        let b = events.since(7, 1, Some(Lsn(4)));
        assert_eq!(b.events.len(), 1);
        assert_eq!(events.since(99, 1, None).next, 1);
    }
}
