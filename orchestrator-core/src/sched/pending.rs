//! [`PendingIndex`]: the pending actions in dispatch order — highest priority first, then LSN
//! (ORC-1).
//!
//! ```text
//!  order       BTreeSet<(Reverse<priority>, Lsn)>   (9, 4) (9, 7) (5, 2) (0, 1) (0, 3) …
//!  priorities  BTreeMap<Lsn, priority>              1→0  2→5  3→0  4→9  7→9
//! ```
//!
//! Two ordered sets and nothing else, so an entry costs about 60 bytes at a million (measured in
//! `tests/sched_test.rs`, ORC-13): the key is 16 bytes, the map entry 12, and B-tree nodes hold
//! 5 to 11 of them. LSNs within a priority arrive in increasing order, which B-trees absorb by
//! appending at the right edge.

use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use procmesh_protocol::action::Lsn;

/// The set of pending actions, ordered by priority (descending), then LSN (ascending) (ORC-1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingIndex {
    order: BTreeSet<(Reverse<i32>, Lsn)>,
    priorities: BTreeMap<Lsn, i32>,
}

impl PendingIndex {
    /// An empty index.
    pub fn new() -> PendingIndex {
        PendingIndex::default()
    }

    /// How many actions are pending.
    pub fn len(&self) -> usize {
        self.priorities.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.priorities.is_empty()
    }

    /// Whether `lsn` is pending.
    pub fn contains(&self, lsn: Lsn) -> bool {
        self.priorities.contains_key(&lsn)
    }

    /// The priority of `lsn`, if it is pending.
    pub fn priority(&self, lsn: Lsn) -> Option<i32> {
        self.priorities.get(&lsn).copied()
    }

    /// Adds `lsn` with `priority`. Returns `false`, changing nothing, if `lsn` is already pending
    /// (use [`set_priority`](Self::set_priority) to move it).
    pub fn insert(&mut self, lsn: Lsn, priority: i32) -> bool {
        if self.priorities.contains_key(&lsn) {
            return false;
        }
        self.priorities.insert(lsn, priority);
        self.order.insert((Reverse(priority), lsn));
        true
    }

    /// Removes `lsn`, returning its priority, or `None` if it was not pending.
    pub fn remove(&mut self, lsn: Lsn) -> Option<i32> {
        let priority = self.priorities.remove(&lsn)?;
        self.order.remove(&(Reverse(priority), lsn));
        Some(priority)
    }

    /// Gives pending `lsn` a new priority, re-ordering it (ORC-1); returns the old priority, or
    /// `None` (changing nothing) if `lsn` is not pending.
    pub fn set_priority(&mut self, lsn: Lsn, priority: i32) -> Option<i32> {
        let slot = self.priorities.get_mut(&lsn)?;
        let old = std::mem::replace(slot, priority);
        if old != priority {
            self.order.remove(&(Reverse(old), lsn));
            self.order.insert((Reverse(priority), lsn));
        }
        Some(old)
    }

    /// The first action in dispatch order and its priority.
    pub fn peek(&self) -> Option<(Lsn, i32)> {
        self.order
            .first()
            .map(|&(Reverse(priority), lsn)| (lsn, priority))
    }

    /// Removes and returns the first action in dispatch order.
    pub fn pop(&mut self) -> Option<(Lsn, i32)> {
        let (Reverse(priority), lsn) = self.order.pop_first()?;
        self.priorities.remove(&lsn);
        Some((lsn, priority))
    }

    /// Removes and returns the first `n` actions in dispatch order (fewer if fewer are pending).
    pub fn pop_n(&mut self, n: usize) -> Vec<(Lsn, i32)> {
        let mut out = Vec::with_capacity(n.min(self.len()));
        while out.len() < n {
            match self.pop() {
                Some(next) => out.push(next),
                None => break,
            }
        }
        out
    }

    /// Every pending action and its priority, in dispatch order.
    pub fn iter(&self) -> impl Iterator<Item = (Lsn, i32)> + '_ {
        self.order
            .iter()
            .map(|&(Reverse(priority), lsn)| (lsn, priority))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsns(v: &[(Lsn, i32)]) -> Vec<u64> {
        v.iter().map(|(lsn, _)| lsn.0).collect()
    }

    // Attests ORC-1
    #[test]
    fn highest_priority_first_then_lsn() {
        let mut index = PendingIndex::new();
        for (lsn, priority) in [(3, 0), (1, 0), (7, 9), (2, 5), (4, 9), (5, -1)] {
            assert!(index.insert(Lsn(lsn), priority));
        }
        assert_eq!(index.len(), 6);
        assert_eq!(index.peek(), Some((Lsn(4), 9)));
        assert_eq!(lsns(&index.iter().collect::<Vec<_>>()), [4, 7, 2, 1, 3, 5]);
        assert_eq!(lsns(&index.pop_n(3)), [4, 7, 2]);
        assert_eq!(index.len(), 3);
        assert_eq!(lsns(&index.pop_n(10)), [1, 3, 5]);
        assert!(index.is_empty());
        assert_eq!(index.pop(), None);
        assert_eq!(index.peek(), None);
    }

    // Attests ORC-1
    #[test]
    fn priority_changes_reorder_and_duplicates_are_refused() {
        let mut index = PendingIndex::new();
        index.insert(Lsn(1), 0);
        index.insert(Lsn(2), 0);
        index.insert(Lsn(3), 0);
        assert!(!index.insert(Lsn(2), 100), "already pending");
        assert_eq!(index.priority(Lsn(2)), Some(0));
        assert_eq!(index.set_priority(Lsn(3), 10), Some(0));
        assert_eq!(index.set_priority(Lsn(1), 0), Some(0));
        assert_eq!(index.set_priority(Lsn(9), 1), None);
        assert_eq!(lsns(&index.iter().collect::<Vec<_>>()), [3, 1, 2]);
        assert_eq!(index.remove(Lsn(1)), Some(0));
        assert_eq!(index.remove(Lsn(1)), None);
        assert!(!index.contains(Lsn(1)));
        assert_eq!(index.pop(), Some((Lsn(3), 10)));
        assert_eq!(index.pop(), Some((Lsn(2), 0)));
    }

    #[test]
    fn extreme_priorities_order_correctly() {
        let mut index = PendingIndex::new();
        index.insert(Lsn(1), i32::MIN);
        index.insert(Lsn(2), i32::MAX);
        index.insert(Lsn(3), 0);
        assert_eq!(lsns(&index.pop_n(3)), [2, 3, 1]);
    }
}
