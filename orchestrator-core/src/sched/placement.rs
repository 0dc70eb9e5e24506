//! Placement: which proc runs which action of a batch (ORC-2 … ORC-5).
//!
//! ```text
//!  batch (dispatch order)  a1 a2 a3 a4 a5 a6 a7        procs (by id)   free   share of 7
//!                                                      A                 6      4.2 → 4
//!  apportion 7 over 6:3:1  ────────────────────▶       B                 3      2.1 → 2
//!  interleave by stride    A B A C A B A               C                 1      0.7 → 1
//! ```
//!
//! A batch is spread over the procs **in proportion to their free capacity** by the largest
//! remainder method ([`apportion`]): each proc gets the whole part of its exact share, and the
//! seats left over go to the largest remainders, ties to the smaller [`ProcId`]. The assigned
//! actions are then interleaved over the procs by stride (the j-th action of a proc with `c` of
//! them sits at `(j + ½) / c`), so the highest-priority actions land on different procs rather
//! than all on the first.
//!
//! An action may require host labels ([`ResourceHints::host_labels`]); it then goes only to a proc
//! whose labels carry every required key with the same value ([`satisfies`]). [`Placer`] takes
//! the candidates in dispatch order and keeps a candidate exactly when the candidates kept so far
//! plus this one still fit (a matching of the constrained ones into eligible free slots exists,
//! found by augmenting paths), which keeps the best set in priority order; unconstrained actions
//! are apportioned over what the constrained ones leave.
//!
//! [`ResourceHints::host_labels`]: procmesh_protocol::spec::ResourceHints::host_labels

use std::collections::{BTreeMap, VecDeque};

use procmesh_protocol::action::Lsn;
use procmesh_protocol::ids::ProcId;

/// Host labels, or the labels an action requires of its host.
pub type Labels = BTreeMap<String, String>;

static NO_LABELS: Labels = BTreeMap::new();

/// A proc that may receive actions: its id, how many more actions it accepts, its host's labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcFree<'a> {
    /// The proc.
    pub id: &'a ProcId,
    /// How many more actions it accepts now.
    pub free: u32,
    /// The labels of its host.
    pub labels: &'a Labels,
}

impl<'a> ProcFree<'a> {
    /// A proc with `free` slots and no labels.
    pub fn new(id: &'a ProcId, free: u32) -> ProcFree<'a> {
        ProcFree {
            id,
            free,
            labels: &NO_LABELS,
        }
    }

    /// This proc with its host's labels.
    pub fn with_labels(self, labels: &'a Labels) -> ProcFree<'a> {
        ProcFree { labels, ..self }
    }
}

/// An action offered to a [`Placer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The action.
    pub lsn: Lsn,
    /// The host labels it needs; `None` or empty for any proc.
    pub requires: Option<&'a Labels>,
}

impl<'a> Candidate<'a> {
    /// An action that may run on any proc.
    pub fn anywhere(lsn: Lsn) -> Candidate<'a> {
        Candidate {
            lsn,
            requires: None,
        }
    }

    /// An action that needs hosts carrying `labels`.
    pub fn requiring(lsn: Lsn, labels: &'a Labels) -> Candidate<'a> {
        Candidate {
            lsn,
            requires: Some(labels),
        }
    }
}

/// One decision: run `lsn` on the proc at index `proc` of the slice the [`Placer`] was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Assignment {
    /// The action.
    pub lsn: Lsn,
    /// Index of its proc in the placer's slice.
    pub proc: usize,
}

/// What became of a [`Placer::offer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The candidate will be placed.
    Taken,
    /// The candidate needs labels no proc with a free slot left can give it; it waits. Later
    /// candidates may still be taken.
    NoEligibleSlot,
    /// The batch is full (every free slot, or the batch limit, is used): this candidate and every
    /// later one wait.
    Full,
}

/// Whether a host with `labels` carries every label in `requires` with the same value.
pub fn satisfies(labels: &Labels, requires: &Labels) -> bool {
    requires
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// Splits `n` seats over `weights` in proportion, by the largest remainder method (ORC-5):
/// entry `i` gets `⌊n·wᵢ/W⌋` or one more, the extra seats going to the largest remainders, ties to
/// the lower index. Never more than `wᵢ` (ORC-2); when `n ≥ W` every entry gets its weight
/// exactly. The result sums to `min(n, W)` (ORC-3).
pub fn apportion(n: u64, weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if n >= total {
        return weights.to_vec();
    }
    let (n, total_wide) = (u128::from(n), u128::from(total));
    let mut seats = Vec::with_capacity(weights.len());
    let mut remainders = Vec::new();
    let mut given = 0u128;
    for (i, &w) in weights.iter().enumerate() {
        let product = n * u128::from(w);
        // n < total, so the whole part is below w: it fits a u32.
        let whole = (product / total_wide) as u32;
        given += u128::from(whole);
        seats.push(whole);
        let remainder = product % total_wide;
        if remainder > 0 {
            remainders.push((remainder, i));
        }
    }
    // The remainders sum to (n − given)·W, each below W, so there are enough of them.
    let leftover = (n - given) as usize;
    remainders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take(leftover) {
        seats[i] += 1;
    }
    seats
}

/// Places `batch` (in dispatch order, none of it constrained) on `procs`: the first
/// `min(batch, total free)` actions, spread in proportion to free capacity (ORC-2 … ORC-5).
/// The assignments come in batch order.
pub fn place(batch: &[Lsn], procs: &[ProcFree<'_>]) -> Vec<Assignment> {
    let mut placer = Placer::new(procs, usize::MAX);
    for &lsn in batch {
        if placer.offer(Candidate::anywhere(lsn)) == Offer::Full {
            break;
        }
    }
    placer.finish()
}

/// Places candidates that may require labels; see [`Placer`].
pub fn place_constrained(batch: &[Candidate<'_>], procs: &[ProcFree<'_>]) -> Vec<Assignment> {
    let mut placer = Placer::new(procs, usize::MAX);
    for &candidate in batch {
        if placer.offer(candidate) == Offer::Full {
            break;
        }
    }
    placer.finish()
}

/// The constrained candidates taken so far that share one requirement set.
#[derive(Debug)]
struct Class<'a> {
    requires: &'a Labels,
    /// Procs with free slots whose labels satisfy `requires`, by id.
    eligible: Vec<usize>,
    /// No candidate of this class fits any more (capacity only shrinks while placing).
    closed: bool,
}

#[derive(Debug, Clone, Copy)]
struct Taken {
    lsn: Lsn,
    /// The class of a constrained candidate.
    class: Option<usize>,
    /// Its proc, once known (constrained ones at once, moved by augmenting paths).
    proc: usize,
}

/// Builds one batch's placement from candidates offered in dispatch order (the driver streams
/// them from the [`PendingIndex`](super::PendingIndex) and stops at [`Offer::Full`]).
///
/// A candidate is taken when the batch is not full and it still fits alongside every candidate
/// taken before it; otherwise it waits. So with no label requirements the first
/// `min(candidates, total free, limit)` candidates are taken (ORC-3, ORC-4); with requirements,
/// a candidate waits only when no eligible slot can be found for it without dropping one taken
/// earlier. Nothing is assigned to a proc beyond its free slots (ORC-2). Deterministic: ties go
/// to the smaller [`ProcId`].
#[derive(Debug)]
pub struct Placer<'a> {
    procs: &'a [ProcFree<'a>],
    /// Proc indices sorted by id.
    by_id: Vec<usize>,
    limit: u64,
    taken: Vec<Taken>,
    unconstrained: u64,
    classes: Vec<Class<'a>>,
    /// Slots used on each proc by constrained candidates.
    load: Vec<u32>,
    /// Constrained candidates (indices into `taken`) on each proc.
    on_proc: Vec<Vec<usize>>,
}

impl<'a> Placer<'a> {
    /// A placer for `procs`, taking at most `max_batch` candidates.
    pub fn new(procs: &'a [ProcFree<'a>], max_batch: usize) -> Placer<'a> {
        let mut by_id: Vec<usize> = (0..procs.len()).collect();
        by_id.sort_by(|&a, &b| procs[a].id.cmp(procs[b].id).then(a.cmp(&b)));
        let total: u64 = procs.iter().map(|p| u64::from(p.free)).sum();
        Placer {
            procs,
            by_id,
            limit: total.min(max_batch as u64),
            taken: Vec::new(),
            unconstrained: 0,
            classes: Vec::new(),
            load: vec![0; procs.len()],
            on_proc: vec![Vec::new(); procs.len()],
        }
    }

    /// How many candidates this batch can take at most: the total free slots, or the batch limit
    /// if smaller.
    pub fn capacity(&self) -> u64 {
        self.limit
    }

    /// How many candidates were taken.
    pub fn taken(&self) -> usize {
        self.taken.len()
    }

    /// Whether no further candidate can be taken.
    pub fn is_full(&self) -> bool {
        self.taken.len() as u64 >= self.limit
    }

    /// Offers the next candidate in dispatch order. Offer each LSN at most once.
    pub fn offer(&mut self, candidate: Candidate<'a>) -> Offer {
        if self.is_full() {
            return Offer::Full;
        }
        let requires = match candidate.requires {
            Some(labels) if !labels.is_empty() => labels,
            _ => {
                self.taken.push(Taken {
                    lsn: candidate.lsn,
                    class: None,
                    proc: usize::MAX,
                });
                self.unconstrained += 1;
                return Offer::Taken;
            }
        };
        let class = self.class_of(requires);
        if self.classes[class].closed {
            return Offer::NoEligibleSlot;
        }
        let index = self.taken.len();
        let proc = match self.direct(class).or_else(|| self.augment(class)) {
            Some(proc) => proc,
            None => {
                // Capacity only shrinks while placing: this class never fits again.
                self.classes[class].closed = true;
                return Offer::NoEligibleSlot;
            }
        };
        self.taken.push(Taken {
            lsn: candidate.lsn,
            class: Some(class),
            proc,
        });
        self.load[proc] += 1;
        self.on_proc[proc].push(index);
        Offer::Taken
    }

    /// The assignments of every taken candidate, in the order offered.
    pub fn finish(self) -> Vec<Assignment> {
        // Unconstrained candidates share what the constrained ones left, in proportion (ORC-5).
        let spare: Vec<u32> = self
            .by_id
            .iter()
            .map(|&p| self.procs[p].free - self.load[p])
            .collect();
        let seats = apportion(self.unconstrained, &spare);
        let mut sequence = stride_order(&seats)
            .into_iter()
            .map(|rank| self.by_id[rank]);
        self.taken
            .iter()
            .map(|t| Assignment {
                lsn: t.lsn,
                proc: match t.class {
                    Some(_) => t.proc,
                    // apportion hands out exactly `unconstrained` seats (n ≤ Σ spare).
                    None => sequence.next().unwrap_or(usize::MAX),
                },
            })
            .collect()
    }

    fn class_of(&mut self, requires: &'a Labels) -> usize {
        if let Some(i) = self.classes.iter().position(|c| c.requires == requires) {
            return i;
        }
        let eligible = self
            .by_id
            .iter()
            .copied()
            .filter(|&p| self.procs[p].free > 0 && satisfies(self.procs[p].labels, requires))
            .collect();
        self.classes.push(Class {
            requires,
            eligible,
            closed: false,
        });
        self.classes.len() - 1
    }

    fn has_room(&self, proc: usize) -> bool {
        self.load[proc] < self.procs[proc].free
    }

    /// The eligible proc with room and the highest quotient `free / (load + 1)`, ties by id.
    fn direct(&self, class: usize) -> Option<usize> {
        let mut best: Option<usize> = None;
        for &p in &self.classes[class].eligible {
            if !self.has_room(p) {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => {
                    let (fp, lp) = (u64::from(self.procs[p].free), u64::from(self.load[p]) + 1);
                    let (fb, lb) = (u64::from(self.procs[b].free), u64::from(self.load[b]) + 1);
                    fp * lb > fb * lp
                }
            };
            if better {
                best = Some(p);
            }
        }
        best
    }

    /// Frees a slot on an eligible proc by moving constrained candidates along an augmenting path
    /// to a proc with room; returns the freed proc.
    fn augment(&mut self, class: usize) -> Option<usize> {
        let n = self.procs.len();
        let mut visited = vec![false; n];
        // parent[q] = (the taken candidate that would move to q, the proc it leaves).
        let mut parent: Vec<Option<(usize, usize)>> = vec![None; n];
        let mut queue = VecDeque::new();
        for &p in &self.classes[class].eligible {
            visited[p] = true;
            queue.push_back(p);
        }
        let mut found = None;
        'search: while let Some(p) = queue.pop_front() {
            for &t in &self.on_proc[p] {
                let Some(c) = self.taken[t].class else {
                    continue;
                };
                for &q in &self.classes[c].eligible {
                    if visited[q] {
                        continue;
                    }
                    visited[q] = true;
                    parent[q] = Some((t, p));
                    if self.has_room(q) {
                        found = Some(q);
                        break 'search;
                    }
                    queue.push_back(q);
                }
            }
        }
        let mut cur = found?;
        while let Some((t, from)) = parent[cur] {
            self.on_proc[from].retain(|&x| x != t);
            self.on_proc[cur].push(t);
            self.load[from] -= 1;
            self.load[cur] += 1;
            self.taken[t].proc = cur;
            cur = from;
        }
        Some(cur)
    }
}

/// The seats of each rank, interleaved: the j-th of `c` seats sits at `(2j + 1) / 2c`, ties to the
/// lower rank.
fn stride_order(seats: &[u32]) -> Vec<usize> {
    let mut slots: Vec<(u64, u64, usize)> = Vec::new();
    for (rank, &c) in seats.iter().enumerate() {
        for j in 0..c {
            slots.push((2 * u64::from(j) + 1, u64::from(c), rank));
        }
    }
    slots.sort_by(|a, b| {
        (u128::from(a.0) * u128::from(b.1))
            .cmp(&(u128::from(b.0) * u128::from(a.1)))
            .then(a.2.cmp(&b.2))
    });
    slots.into_iter().map(|(_, _, rank)| rank).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn procs(n: usize) -> Vec<ProcId> {
        (0..n)
            .map(|i| format!("quic!10.0.0.{}:7700,p{i}", i + 1).parse().unwrap())
            .collect()
    }

    fn lsns(n: u64) -> Vec<Lsn> {
        (1..=n).map(Lsn).collect()
    }

    fn per_proc(assignments: &[Assignment], n: usize) -> Vec<u32> {
        let mut counts = vec![0; n];
        for a in assignments {
            counts[a.proc] += 1;
        }
        counts
    }

    // Attests ORC-5
    #[test]
    fn largest_remainder_apportionment() {
        assert_eq!(apportion(7, &[6, 3, 1]), [4, 2, 1]);
        assert_eq!(apportion(10, &[6, 3, 1]), [6, 3, 1]);
        assert_eq!(apportion(100, &[6, 3, 1]), [6, 3, 1]);
        assert_eq!(apportion(0, &[6, 3, 1]), [0, 0, 0]);
        // Equal remainders: the lower index wins.
        assert_eq!(apportion(1, &[2, 2]), [1, 0]);
        assert_eq!(apportion(3, &[2, 2, 2]), [1, 1, 1]);
        assert_eq!(apportion(2, &[0, 5, 0, 5]), [0, 1, 0, 1]);
        assert_eq!(apportion(3, &[]), Vec::<u32>::new());
        assert_eq!(
            apportion(u64::from(u32::MAX), &[u32::MAX, u32::MAX]),
            [u32::MAX / 2 + 1, u32::MAX / 2]
        );
    }

    // Attests ORC-2, ORC-3, ORC-4, ORC-5
    #[test]
    fn spreads_in_proportion_and_interleaves() {
        let ids = procs(3);
        let free = [
            ProcFree::new(&ids[1], 3),
            ProcFree::new(&ids[0], 6),
            ProcFree::new(&ids[2], 1),
        ];
        let out = place(&lsns(7), &free);
        assert_eq!(out.len(), 7);
        assert_eq!(per_proc(&out, 3), [2, 4, 1]);
        // Batch order kept; the stride puts the top actions on different procs.
        let order: Vec<usize> = out.iter().map(|a| a.proc).collect();
        assert_eq!(order, [1, 0, 1, 2, 1, 0, 1]);
        assert!(out.iter().map(|a| a.lsn).eq(lsns(7)));
    }

    // Attests ORC-2, ORC-3, ORC-4
    #[test]
    fn short_capacity_places_the_head_of_the_batch() {
        let ids = procs(3);
        let free = [
            ProcFree::new(&ids[0], 2),
            ProcFree::new(&ids[1], 0),
            ProcFree::new(&ids[2], 1),
        ];
        let out = place(&lsns(10), &free);
        assert_eq!(
            out.iter().map(|a| a.lsn).collect::<Vec<_>>(),
            lsns(3),
            "the first three, the highest priorities"
        );
        assert_eq!(per_proc(&out, 3), [2, 0, 1]);
        assert!(place(&lsns(5), &[]).is_empty());
        assert!(place(&[], &free).is_empty());
    }

    #[test]
    fn batch_limit_caps_the_placer() {
        let ids = procs(1);
        let free = [ProcFree::new(&ids[0], 10)];
        let mut placer = Placer::new(&free, 2);
        assert_eq!(placer.capacity(), 2);
        assert_eq!(placer.offer(Candidate::anywhere(Lsn(1))), Offer::Taken);
        assert_eq!(placer.offer(Candidate::anywhere(Lsn(2))), Offer::Taken);
        assert!(placer.is_full());
        assert_eq!(placer.offer(Candidate::anywhere(Lsn(3))), Offer::Full);
        assert_eq!(placer.taken(), 2);
        assert_eq!(placer.finish().len(), 2);
    }

    #[test]
    fn labels_must_all_match() {
        let host: Labels = [("gpu".into(), "a100".into()), ("zone".into(), "eu".into())].into();
        let want_gpu: Labels = [("gpu".into(), "a100".into())].into();
        let want_other: Labels = [("gpu".into(), "h100".into())].into();
        assert!(satisfies(&host, &want_gpu));
        assert!(satisfies(&host, &Labels::new()));
        assert!(!satisfies(&host, &want_other));
        assert!(!satisfies(&Labels::new(), &want_gpu));
    }

    // Attests ORC-2, ORC-4
    #[test]
    fn constrained_actions_go_only_to_eligible_procs_and_never_block_others() {
        let ids = procs(2);
        let gpu: Labels = [("gpu".into(), "yes".into())].into();
        let free = [
            ProcFree::new(&ids[0], 2).with_labels(&gpu),
            ProcFree::new(&ids[1], 2),
        ];
        let batch = [
            Candidate::requiring(Lsn(1), &gpu),
            Candidate::requiring(Lsn(2), &gpu),
            Candidate::requiring(Lsn(3), &gpu), // no GPU slot left: waits
            Candidate::anywhere(Lsn(4)),
            Candidate::anywhere(Lsn(5)),
            Candidate::anywhere(Lsn(6)), // capacity exhausted
        ];
        let out = place_constrained(&batch, &free);
        assert_eq!(
            out,
            [
                Assignment {
                    lsn: Lsn(1),
                    proc: 0
                },
                Assignment {
                    lsn: Lsn(2),
                    proc: 0
                },
                Assignment {
                    lsn: Lsn(4),
                    proc: 1
                },
                Assignment {
                    lsn: Lsn(5),
                    proc: 1
                },
            ]
        );
    }

    // Attests ORC-3
    #[test]
    fn augmenting_paths_make_room_for_a_scarcer_requirement() {
        // P0 carries a and b, P1 only a. The first `a` action prefers P0 (larger quotient); the
        // `b` action then needs P0, so the `a` action moves to P1.
        let ids = procs(2);
        let both: Labels = [("a".into(), "1".into()), ("b".into(), "1".into())].into();
        let only_a: Labels = [("a".into(), "1".into())].into();
        let want_b: Labels = [("b".into(), "1".into())].into();
        let free = [
            ProcFree::new(&ids[0], 1).with_labels(&both),
            ProcFree::new(&ids[1], 1).with_labels(&only_a),
        ];
        let mut placer = Placer::new(&free, usize::MAX);
        assert_eq!(
            placer.offer(Candidate::requiring(Lsn(1), &only_a)),
            Offer::Taken
        );
        assert_eq!(
            placer.offer(Candidate::requiring(Lsn(2), &want_b)),
            Offer::Taken
        );
        assert!(placer.is_full());
        let mut out = placer.finish();
        out.sort_by_key(|a| a.lsn);
        assert_eq!(out[0].proc, 1);
        assert_eq!(out[1].proc, 0);
    }

    #[test]
    fn a_closed_class_stays_closed() {
        let ids = procs(1);
        let want: Labels = [("x".into(), "1".into())].into();
        let free = [ProcFree::new(&ids[0], 3)];
        let mut placer = Placer::new(&free, usize::MAX);
        assert_eq!(
            placer.offer(Candidate::requiring(Lsn(1), &want)),
            Offer::NoEligibleSlot
        );
        assert_eq!(
            placer.offer(Candidate::requiring(Lsn(2), &want)),
            Offer::NoEligibleSlot
        );
        // An empty requirement is no requirement.
        let none = Labels::new();
        assert_eq!(
            placer.offer(Candidate::requiring(Lsn(3), &none)),
            Offer::Taken
        );
    }

    #[test]
    fn stride_interleaves() {
        assert_eq!(stride_order(&[2, 1]), [0, 1, 0]);
        assert_eq!(stride_order(&[1, 1, 1]), [0, 1, 2]);
        assert_eq!(stride_order(&[0, 3]), [1, 1, 1]);
    }
}
