//! Property tests of the orchestrator's pure decisions (`sched`, ORC-n): placement, the pending
//! order, the book under random event sequences, a simulated run to the end in virtual time, and
//! the memory a pending action costs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use proptest::collection::vec;
use proptest::prelude::*;

use procmesh_orchestrator_core::sched::{
    place, place_constrained, satisfies, Assignment, Book, CancelOutcome, Candidate, Labels,
    NewAction, PendingIndex, ProcFree,
};
use procmesh_protocol::action::{ActionState, Lsn, Timestamp, Transition, TransitionDetail};
use procmesh_protocol::messages::orchestrator::{QueueConfig, StateCounts};
use procmesh_protocol::{ExitStatus, ProcId};

// ---- a per-thread counting allocator, for ORC-13 ----------------------------------------------

struct Counting;

thread_local! {
    static NET_BYTES: Cell<i64> = const { Cell::new(0) };
}

fn count(delta: i64) {
    let _ = NET_BYTES.try_with(|c| c.set(c.get() + delta));
}

// SAFETY: every call is forwarded to `System` unchanged; only a thread-local counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn net_bytes() -> i64 {
    NET_BYTES.with(Cell::get)
}

// ---- helpers --------------------------------------------------------------------------------

fn proc_ids(n: usize) -> Vec<ProcId> {
    (0..n)
        .map(|i| format!("quic!10.0.{}.1:7700,p{i}", i % 3).parse().unwrap())
        .collect()
}

fn at(ms: u64) -> Timestamp {
    Timestamp(ms)
}

/// A small deterministic generator for simulated runs (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Whether candidates can all be placed at once: bipartite matching onto slots (Kuhn).
fn feasible(requires: &[Option<&Labels>], procs: &[ProcFree<'_>]) -> bool {
    let slots: Vec<usize> = procs
        .iter()
        .enumerate()
        .flat_map(|(i, p)| std::iter::repeat_n(i, p.free as usize))
        .collect();
    let fits = |c: usize, s: usize| match requires[c] {
        Some(r) => satisfies(procs[slots[s]].labels, r),
        None => true,
    };
    let mut owner: Vec<Option<usize>> = vec![None; slots.len()];
    fn try_place(
        c: usize,
        seen: &mut [bool],
        owner: &mut [Option<usize>],
        fits: &dyn Fn(usize, usize) -> bool,
    ) -> bool {
        for s in 0..owner.len() {
            if seen[s] || !fits(c, s) {
                continue;
            }
            seen[s] = true;
            if owner[s].is_none_or(|o| try_place(o, seen, owner, fits)) {
                owner[s] = Some(c);
                return true;
            }
        }
        false
    }
    (0..requires.len()).all(|c| {
        let mut seen = vec![false; slots.len()];
        try_place(c, &mut seen, &mut owner, &fits)
    })
}

fn label_set() -> impl Strategy<Value = Labels> {
    (0u8..3, 0u8..3).prop_map(|(gpu, zone)| {
        let mut labels = Labels::new();
        match gpu {
            1 => drop(labels.insert("gpu".into(), "a100".into())),
            2 => drop(labels.insert("gpu".into(), "h100".into())),
            _ => {}
        }
        match zone {
            1 => drop(labels.insert("zone".into(), "eu".into())),
            2 => drop(labels.insert("zone".into(), "us".into())),
            _ => {}
        }
        labels
    })
}

// ---- placement ------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    // Attests ORC-2, ORC-3, ORC-4, ORC-5
    #[test]
    fn placement_fills_free_capacity_in_proportion(
        free in vec(0u32..12, 0..8),
        batch in 0u64..80,
        rotate in 0usize..8,
    ) {
        let ids = proc_ids(free.len());
        let procs: Vec<ProcFree<'_>> =
            ids.iter().zip(&free).map(|(id, &f)| ProcFree::new(id, f)).collect();
        let lsns: Vec<Lsn> = (1..=batch).map(Lsn).collect();
        let out = place(&lsns, &procs);

        let total: u64 = free.iter().map(|&f| u64::from(f)).sum();
        // ORC-3: exactly min(batch, total free); ORC-4: the head of the batch, in order.
        let placed = batch.min(total);
        prop_assert_eq!(out.len() as u64, placed);
        prop_assert!(out.iter().map(|a| a.lsn).eq(lsns.iter().copied().take(placed as usize)));
        let mut counts = vec![0u64; procs.len()];
        for a in &out {
            counts[a.proc] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            // ORC-2: never beyond the free slots; none on a full proc.
            prop_assert!(c <= u64::from(free[i]));
            // ORC-5: within one of the exact share placed·fᵢ/F.
            if total > 0 {
                let exact = placed * u64::from(free[i]);
                prop_assert!(c * total + total > exact && c * total < exact + total,
                    "proc {} got {} of {} (free {} of {})", i, c, placed, free[i], total);
            }
        }
        // Deterministic and tied by id: the same procs in another order get the same actions.
        let mut order: Vec<usize> = (0..procs.len()).collect();
        let by = rotate.min(order.len());
        order.rotate_left(by);
        let shuffled: Vec<ProcFree<'_>> = order.iter().map(|&i| procs[i]).collect();
        let again: Vec<(Lsn, &ProcId)> =
            place(&lsns, &shuffled).iter().map(|a| (a.lsn, shuffled[a.proc].id)).collect();
        let first: Vec<(Lsn, &ProcId)> = out.iter().map(|a| (a.lsn, procs[a.proc].id)).collect();
        prop_assert_eq!(again, first);
    }

    // Attests ORC-2, ORC-3, ORC-4
    #[test]
    fn constrained_placement_keeps_the_best_feasible_set(
        procs in vec((0u32..4, label_set()), 0..6),
        candidates in vec(prop::option::weighted(0.5, label_set()), 0..16),
    ) {
        let ids = proc_ids(procs.len());
        let free: Vec<ProcFree<'_>> = ids
            .iter()
            .zip(&procs)
            .map(|(id, (f, labels))| ProcFree::new(id, *f).with_labels(labels))
            .collect();
        let batch: Vec<Candidate<'_>> = candidates
            .iter()
            .enumerate()
            .map(|(i, r)| Candidate { lsn: Lsn(i as u64 + 1), requires: r.as_ref() })
            .collect();
        let out = place_constrained(&batch, &free);
        let mut used = vec![0u32; free.len()];
        let taken: BTreeSet<Lsn> = out.iter().map(|a| a.lsn).collect();
        prop_assert_eq!(taken.len(), out.len(), "an action placed twice");
        for Assignment { lsn, proc } in &out {
            used[*proc] += 1;
            let requires = batch[lsn.0 as usize - 1].requires;
            // ORC-2: only on eligible procs.
            prop_assert!(requires.is_none_or(|r| satisfies(free[*proc].labels, r)));
        }
        for (i, p) in free.iter().enumerate() {
            prop_assert!(used[i] <= p.free, "ORC-2");
        }
        // ORC-3/ORC-4: a candidate waits only if it does not fit beside those taken before it.
        let mut before: Vec<Option<&Labels>> = Vec::new();
        for c in &batch {
            if taken.contains(&c.lsn) {
                before.push(c.requires);
            } else {
                let mut with = before.clone();
                with.push(c.requires);
                prop_assert!(!feasible(&with, &free), "{} waited but fits", c.lsn);
            }
        }
    }

    // Attests ORC-1
    #[test]
    fn pending_order_survives_random_changes(
        ops in vec((0u8..4, 0u64..40, -3i32..4, 0usize..4), 0..200),
    ) {
        let mut index = PendingIndex::new();
        let mut model: BTreeMap<Lsn, i32> = BTreeMap::new();
        for (op, lsn, priority, n) in ops {
            let lsn = Lsn(lsn);
            match op {
                0 => {
                    let fresh = !model.contains_key(&lsn);
                    prop_assert_eq!(index.insert(lsn, priority), fresh);
                    model.entry(lsn).or_insert(priority);
                }
                1 => prop_assert_eq!(index.remove(lsn), model.remove(&lsn)),
                2 => {
                    let old = model.get(&lsn).copied();
                    prop_assert_eq!(index.set_priority(lsn, priority), old);
                    if old.is_some() {
                        model.insert(lsn, priority);
                    }
                }
                _ => {
                    let mut expected: Vec<(Lsn, i32)> = model.iter().map(|(&l, &p)| (l, p)).collect();
                    expected.sort_by_key(|&(l, p)| (std::cmp::Reverse(p), l));
                    expected.truncate(n);
                    for (l, _) in &expected {
                        model.remove(l);
                    }
                    prop_assert_eq!(index.pop_n(n), expected);
                }
            }
            let mut expected: Vec<(Lsn, i32)> = model.iter().map(|(&l, &p)| (l, p)).collect();
            expected.sort_by_key(|&(l, p)| (std::cmp::Reverse(p), l));
            prop_assert_eq!(index.iter().collect::<Vec<_>>(), expected.clone());
            prop_assert_eq!(index.len(), model.len());
            prop_assert_eq!(index.peek(), expected.first().copied());
        }
    }
}

// ---- the book under random events -----------------------------------------------------------

#[derive(Debug, Clone)]
enum Event {
    Submit {
        queue: usize,
        priority: i32,
        key: Option<u8>,
    },
    Schedule {
        free: Vec<u32>,
        max_batch: usize,
    },
    Report {
        pick: usize,
        outcome: u8,
    },
    Stale {
        pick: usize,
    },
    ProcLost {
        proc: usize,
    },
    Cancel {
        pick: usize,
    },
    CancelQueue {
        queue: usize,
    },
    Drain {
        queue: usize,
    },
    Reschedule {
        pick: usize,
    },
    SetPriority {
        pick: usize,
        priority: i32,
    },
    Retire {
        queue: usize,
    },
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        8 => (0usize..3, -2i32..3, prop::option::weighted(0.3, 0u8..6))
            .prop_map(|(queue, priority, key)| Event::Submit { queue, priority, key }),
        4 => (vec(0u32..4, 4), 1usize..8)
            .prop_map(|(free, max_batch)| Event::Schedule { free, max_batch }),
        10 => (any::<usize>(), 0u8..6).prop_map(|(pick, outcome)| Event::Report { pick, outcome }),
        1 => any::<usize>().prop_map(|pick| Event::Stale { pick }),
        1 => (0usize..4).prop_map(|proc| Event::ProcLost { proc }),
        1 => any::<usize>().prop_map(|pick| Event::Cancel { pick }),
        1 => (0usize..3).prop_map(|queue| Event::CancelQueue { queue }),
        1 => (0usize..3).prop_map(|queue| Event::Drain { queue }),
        1 => any::<usize>().prop_map(|pick| Event::Reschedule { pick }),
        2 => (any::<usize>(), -2i32..3).prop_map(|(pick, priority)| Event::SetPriority { pick, priority }),
        1 => (0usize..3).prop_map(|queue| Event::Retire { queue }),
    ]
}

/// Recounts each queue's states from the records, independently of the book's own audit.
fn recount(book: &Book, lsns: &BTreeSet<Lsn>) -> BTreeMap<u64, StateCounts> {
    let mut counts: BTreeMap<u64, StateCounts> = BTreeMap::new();
    for &lsn in lsns {
        if let Some(entry) = book.action(lsn) {
            counts
                .entry(entry.queue)
                .or_default()
                .add(entry.record.state());
        }
    }
    counts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    // Attests ORC-1, ORC-3, ORC-4, ORC-6, ORC-8, ORC-9, ORC-10, ORC-12, ORC-14
    #[test]
    fn the_book_stays_consistent_under_random_events(events in vec(event(), 0..120)) {
        let mut book = Book::default();
        let limits = [0u32, 1, 3];
        let queues: Vec<u64> = limits
            .iter()
            .map(|&retry_limit| book.create_queue(QueueConfig { retry_limit, ..QueueConfig::default() }))
            .collect();
        let ids = proc_ids(4);
        let mut known: BTreeSet<Lsn> = BTreeSet::new();
        let mut keys: HashMap<(usize, u8), Lsn> = HashMap::new();
        let mut rescheduled: BTreeSet<Lsn> = BTreeSet::new();
        let mut retired: BTreeSet<Lsn> = BTreeSet::new();
        let mut stopping: BTreeSet<Lsn> = BTreeSet::new();
        let mut now = 0u64;
        for event in events {
            now += 1;
            let alive: Vec<Lsn> = known.difference(&retired).copied().collect();
            let pick = |i: usize| alive.get(i % alive.len().max(1)).copied();
            match event {
                Event::Submit { queue, priority, key } => {
                    let action = NewAction {
                        priority: Some(priority),
                        idempotency_key: key.map(|k| format!("key-{k}")),
                        ..NewAction::default()
                    };
                    let open = book.queue(queues[queue]).unwrap().is_open();
                    match book.submit(queues[queue], action, at(now)) {
                        Ok(s) => {
                            if let Some(k) = key {
                                // ORC-9: a remembered key answers with its first LSN.
                                let first = *keys.entry((queue, k)).or_insert(s.lsn);
                                prop_assert_eq!(s.lsn, first);
                                prop_assert_eq!(s.created, known.insert(s.lsn));
                            } else {
                                prop_assert!(s.created && known.insert(s.lsn));
                            }
                            prop_assert!(open || !s.created, "ORC-10: a closed queue created an action");
                        }
                        Err(_) => prop_assert!(!open),
                    }
                }
                Event::Schedule { free, max_batch } => {
                    let procs: Vec<ProcFree<'_>> =
                        ids.iter().zip(&free).map(|(id, &f)| ProcFree::new(id, f)).collect();
                    let head: Vec<Lsn> = book.pending().iter().map(|(l, _)| l).collect();
                    let total: usize = free.iter().map(|&f| f as usize).sum();
                    let out = book.schedule(&procs, max_batch, at(now));
                    // ORC-1, ORC-3, ORC-4: the first min(pending, free, batch) in dispatch order.
                    let placed = head.len().min(total).min(max_batch);
                    prop_assert_eq!(out.iter().map(|d| d.lsn()).collect::<Vec<_>>(), head[..placed].to_vec());
                    for d in &out {
                        prop_assert_eq!(book.action(d.lsn()).unwrap().record.state(), ActionState::Submitting);
                    }
                }
                Event::Report { pick: i, outcome } => {
                    let Some(lsn) = pick(i) else { continue };
                    let record = book.action(lsn).unwrap().record.clone();
                    let state = [
                        ActionState::Running,
                        ActionState::Running,
                        ActionState::Completed,
                        ActionState::Failed,
                        ActionState::Abandoned,
                        ActionState::Cancelled,
                    ][outcome as usize];
                    let t = record.transition_to(state, at(now));
                    let before = book.counts().total();
                    match book.apply(&t, at(now)) {
                        Ok(update) => {
                            prop_assert_eq!(update.applied.to, state);
                            if update.retry.is_some() {
                                prop_assert!(matches!(state, ActionState::Failed | ActionState::Abandoned));
                                // ORC-10: no retry once a cancellation was asked for.
                                prop_assert!(!stopping.contains(&lsn));
                                prop_assert!(!book.queue(update.queue).unwrap().is_cancelled());
                            }
                        }
                        Err(_) => prop_assert!(!state.is_after(record.state()) || record.is_terminal()),
                    }
                    prop_assert_eq!(book.counts().total(), before, "ORC-12: an action appeared or vanished");
                }
                Event::Stale { pick: i } => {
                    let Some(lsn) = pick(i) else { continue };
                    let record = book.action(lsn).unwrap().record.clone();
                    if let Some(older) = procmesh_protocol::Attempt::new(record.attempt().get() - 1) {
                        let snapshot = format!("{book:?}");
                        let t = Transition::new(lsn, older, ActionState::Completed, at(now));
                        prop_assert!(book.apply(&t, at(now)).is_err());
                        prop_assert_eq!(format!("{book:?}"), snapshot, "ORC-14");
                    }
                }
                Event::ProcLost { proc } => {
                    let on: Vec<Lsn> = book.placed_on(&ids[proc]).collect();
                    let updates = book.proc_lost(&ids[proc], "lost", at(now));
                    prop_assert_eq!(updates.len(), on.len());
                    for u in &updates {
                        prop_assert_eq!(u.retry.is_some(), !stopping.contains(&u.lsn)
                            && !book.queue(u.queue).unwrap().is_cancelled()
                            && (u.attempt.get() as usize) <= limits[queues.iter().position(|&q| q == u.queue).unwrap()] as usize);
                    }
                    prop_assert_eq!(book.placed_on(&ids[proc]).count(), 0);
                }
                Event::Cancel { pick: i } => {
                    let Some(lsn) = pick(i) else { continue };
                    let queue = book.action(lsn).unwrap().queue;
                    if let CancelOutcome::Stopping(order) = book.cancel(queue, lsn, "cancel", at(now)).unwrap() {
                        stopping.insert(order.attempt.lsn);
                    }
                }
                Event::CancelQueue { queue } => {
                    let q = queues[queue];
                    let cancel = book.cancel_queue(q, "cancel", at(now)).unwrap();
                    for order in &cancel.stopping {
                        stopping.insert(order.attempt.lsn);
                        let state = book.action(order.attempt.lsn).unwrap().record.state();
                        prop_assert!(matches!(state, ActionState::Submitting | ActionState::Running));
                    }
                    // ORC-10: nothing of the queue is left pending.
                    for lsn in book.queue(q).unwrap().live() {
                        prop_assert_ne!(book.action(lsn).unwrap().record.state(), ActionState::Pending);
                    }
                }
                Event::Drain { queue } => book.drain(queues[queue]).unwrap(),
                Event::Reschedule { pick: i } => {
                    let Some(lsn) = pick(i) else { continue };
                    let entry = book.action(lsn).unwrap();
                    let (queue, state) = (entry.queue, entry.record.state());
                    let cancelled = book.queue(queue).unwrap().is_cancelled();
                    let result = book.reschedule(queue, lsn, at(now));
                    // ORC-7
                    prop_assert_eq!(result.is_ok(), state.is_retryable() && !cancelled);
                    if result.is_ok() {
                        rescheduled.insert(lsn);
                        // A cancellation stops the attempt it was asked for; the new attempt
                        // a reschedule makes is retried by the limit again.
                        stopping.remove(&lsn);
                    }
                }
                Event::SetPriority { pick: i, priority } => {
                    let Some(lsn) = pick(i) else { continue };
                    let entry = book.action(lsn).unwrap();
                    let (queue, state) = (entry.queue, entry.record.state());
                    let result = book.set_priority(queue, lsn, priority);
                    prop_assert_eq!(result.is_ok(), state == ActionState::Pending);
                    if result.is_ok() {
                        prop_assert_eq!(book.pending().priority(lsn), Some(priority));
                    }
                }
                Event::Retire { queue } => {
                    let q = queues[queue];
                    let lsns: Vec<Lsn> = book.queue(q).unwrap().finished(None).collect();
                    prop_assert_eq!(book.retire(q, &lsns).unwrap(), lsns.len() as u64);
                    retired.extend(lsns);
                }
            }
            // ORC-8, ORC-12: every index agrees with the records.
            prop_assert_eq!(book.audit(), Ok(()));
            let recounted = recount(&book, &known);
            for (i, &q) in queues.iter().enumerate() {
                let counts = recounted.get(&q).copied().unwrap_or_default();
                prop_assert_eq!(*book.queue(q).unwrap().counts(), counts);
                // ORC-6: at most limit + 1 attempts, unless rescheduled by hand.
                for lsn in book.queue(q).unwrap().live().chain(book.queue(q).unwrap().finished(None)) {
                    if !rescheduled.contains(&lsn) {
                        prop_assert!(book.action(lsn).unwrap().record.attempt().get() <= limits[i] + 1);
                    }
                }
            }
            prop_assert_eq!(book.len(), known.len() - retired.len());
        }
    }

    // Attests ORC-3, ORC-6, ORC-11, ORC-12
    #[test]
    fn a_simulated_run_ends_with_every_action_final(
        seed in any::<u64>(),
        limits in vec(0u32..4, 1..4),
        actions in 1usize..150,
        capacities in vec(0u32..5, 1..6),
        fail_percent in 0u64..70,
    ) {
        let mut rng = Rng::new(seed);
        let mut book = Book::default();
        let queues: Vec<(u64, u32)> = limits
            .iter()
            .map(|&retry_limit| {
                (book.create_queue(QueueConfig { retry_limit, ..QueueConfig::default() }), retry_limit)
            })
            .collect();
        let ids = proc_ids(capacities.len());
        // At least one slot somewhere, or nothing could ever run.
        let mut max: Vec<u32> = capacities.clone();
        max[0] = max[0].max(1);
        let mut running: Vec<BTreeSet<Lsn>> = vec![BTreeSet::new(); ids.len()];
        let mut now = 1u64;
        let mut submitted = 0;
        for i in 0..actions {
            let (q, _) = queues[i % queues.len()];
            let priority = rng.below(3) as i32;
            book.submit(q, NewAction { priority: Some(priority), ..NewAction::default() }, at(now)).unwrap();
            submitted += 1;
        }
        for q in &queues {
            book.drain(q.0).unwrap();
        }
        let mut rounds = 0;
        while book.counts().pending + book.counts().submitting + book.counts().running > 0 {
            rounds += 1;
            prop_assert!(rounds < 10_000, "the run does not converge");
            now += 10;
            // Free capacity as the procs report it.
            let free: Vec<u32> = (0..ids.len()).map(|p| max[p] - running[p].len() as u32).collect();
            let procs: Vec<ProcFree<'_>> =
                ids.iter().zip(&free).map(|(id, &f)| ProcFree::new(id, f)).collect();
            let total_free: u64 = free.iter().map(|&f| u64::from(f)).sum();
            let pending_before = book.counts().pending;
            let out = book.schedule(&procs, usize::MAX, at(now));
            // ORC-3: no action waits while capacity is free.
            prop_assert_eq!(out.len() as u64, pending_before.min(total_free));
            for d in &out {
                running[d.proc].insert(d.lsn());
                prop_assert!(running[d.proc].len() as u32 <= max[d.proc], "ORC-2");
            }
            // Every proc finishes some of what it runs; now and then one dies.
            for p in 0..ids.len() {
                if !running[p].is_empty() && rng.chance(3) {
                    let lost = book.proc_lost(&ids[p], "killed", at(now + 1));
                    prop_assert_eq!(lost.len(), running[p].len());
                    running[p].clear();
                    continue;
                }
                let lsns: Vec<Lsn> = running[p].iter().copied().collect();
                for lsn in lsns {
                    if !rng.chance(60) {
                        continue;
                    }
                    let record = book.action(lsn).unwrap().record.clone();
                    let run = record.transition_to(ActionState::Running, at(now + 2));
                    book.apply(&run, at(now + 2)).unwrap();
                    let end = if rng.chance(fail_percent) {
                        record.transition_to(ActionState::Failed, at(now + 3)).with_detail(TransitionDetail {
                            exit: Some(ExitStatus::Code(1)),
                            ..TransitionDetail::default()
                        })
                    } else {
                        record.transition_to(ActionState::Completed, at(now + 3))
                    };
                    book.apply(&end, at(now + 3)).unwrap();
                    running[p].remove(&lsn);
                }
            }
            prop_assert_eq!(book.audit(), Ok(()));
        }
        // ORC-12: nothing lost; every action final; ORC-6: attempts within the limit.
        prop_assert_eq!(book.len(), submitted);
        let counts = book.counts();
        prop_assert_eq!(counts.completed + counts.failed + counts.abandoned, submitted as u64);
        for &(q, limit) in &queues {
            let queue = book.queue(q).unwrap();
            prop_assert!(queue.is_complete(), "ORC-11");
            prop_assert_eq!(queue.live().count(), 0);
            for lsn in queue.finished(None) {
                let record = book.action(lsn).unwrap().record;
                prop_assert!(record.attempt().get() <= limit + 1);
                if record.state() != ActionState::Completed {
                    prop_assert_eq!(record.attempt().get(), limit + 1, "gave up early");
                }
            }
        }
    }
}

// ---- memory ---------------------------------------------------------------------------------

// Attests ORC-13
#[test]
fn a_million_pending_actions_fit_in_512_bytes_each() {
    const N: u64 = 1_000_000;
    let started = Instant::now();
    let before = net_bytes();
    let mut book = Book::default();
    let q = book.create_queue(QueueConfig::default());
    for i in 0..N {
        let action = NewAction {
            priority: Some((i % 4) as i32),
            ..NewAction::default()
        };
        book.submit(q, action, at(i)).unwrap();
    }
    let bytes = net_bytes() - before;
    let per_action = bytes as f64 / N as f64;
    eprintln!(
        "{N} pending actions: {bytes} bytes, {per_action:.1} bytes each, built in {:?}",
        started.elapsed()
    );
    assert_eq!(book.counts().pending, N);
    assert!(
        per_action <= 512.0,
        "{per_action:.1} bytes per pending action (ORC-13)"
    );
    // A guard well below the goal, so a regression shows before the goal is at risk.
    assert!(
        per_action <= 300.0,
        "{per_action:.1} bytes per pending action grew"
    );
    drop(book);

    // The pending index alone, for the record: B-tree nodes cost the same per entry at any size.
    const M: u64 = 200_000;
    let before = net_bytes();
    let mut index = PendingIndex::new();
    for i in 0..M {
        index.insert(Lsn(i + 1), (i % 4) as i32);
    }
    let index_bytes = (net_bytes() - before) as f64 / M as f64;
    eprintln!("pending index alone: {index_bytes:.1} bytes per action");
    assert!(index_bytes <= 100.0);
}
