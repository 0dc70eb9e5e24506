//! Unit tests of [`Book`]: one dispatch cycle at a time, in virtual time.

use super::*;
use procmesh_protocol::action::{Attempt, ExitStatus, Ignored, RetryError};
use procmesh_protocol::messages::orchestrator::OrchestratorError;

fn at(ms: u64) -> Timestamp {
    Timestamp(ms)
}

fn proc_id(host: u8, name: &str) -> ProcId {
    format!("quic!10.0.0.{host}:7700,{name}").parse().unwrap()
}

fn config(retry_limit: u32) -> QueueConfig {
    QueueConfig {
        retry_limit,
        ..QueueConfig::default()
    }
}

fn plain() -> NewAction {
    NewAction::default()
}

fn keyed(key: &str) -> NewAction {
    NewAction {
        idempotency_key: Some(key.to_owned()),
        ..NewAction::default()
    }
}

fn prioritised(priority: i32) -> NewAction {
    NewAction {
        priority: Some(priority),
        ..NewAction::default()
    }
}

/// Reports `state` for the current attempt of `lsn`, as its proc would.
fn report(book: &mut Book, lsn: Lsn, state: ActionState, ms: u64) -> Update {
    let t = book
        .action(lsn)
        .unwrap()
        .record
        .transition_to(state, at(ms));
    let t = if state == ActionState::Failed {
        t.with_detail(TransitionDetail {
            exit: Some(ExitStatus::Code(1)),
            ..TransitionDetail::default()
        })
    } else {
        t
    };
    let update = book.apply(&t, at(ms)).unwrap();
    book.audit().unwrap();
    update
}

fn state(book: &Book, lsn: Lsn) -> ActionState {
    book.action(lsn).unwrap().record.state()
}

// Attests ORC-6, ORC-8, ORC-11, ORC-12
#[test]
fn a_full_cycle_with_a_retry() {
    let mut book = Book::default();
    let q = book.create_queue(config(1));
    let p = proc_id(1, "a");
    let procs = [ProcFree::new(&p, 1)];

    let lsn = book.submit(q, plain(), at(10)).unwrap().lsn;
    assert_eq!(lsn, Lsn(1));
    assert_eq!(state(&book, lsn), ActionState::Pending);
    assert_eq!(book.status(q).unwrap().counts.pending, 1);

    // Attempt 1: placed, runs, fails → retried.
    let dispatched = book.schedule(&procs, 10, at(20));
    assert_eq!(dispatched.len(), 1);
    assert_eq!(dispatched[0].lsn(), lsn);
    assert_eq!(dispatched[0].transition.detail.location.as_ref(), Some(&p));
    assert_eq!(book.placed_on(&p).collect::<Vec<_>>(), [lsn]);
    assert!(
        book.schedule(&procs, 10, at(21)).is_empty(),
        "nothing pending"
    );
    report(&mut book, lsn, ActionState::Running, 30);
    let failed = report(&mut book, lsn, ActionState::Failed, 40);
    let retry = failed.retry.expect("limit 1 allows one retry");
    assert_eq!(retry.attempt.get(), 2);
    assert_eq!(retry.state, ActionState::Pending);
    assert!(!failed.finished && !failed.queue_complete);
    assert_eq!(state(&book, lsn), ActionState::Pending);
    assert_eq!(book.placed_on(&p).count(), 0);

    // Attempt 2: completes; the queue is complete.
    book.schedule(&procs, 10, at(50));
    report(&mut book, lsn, ActionState::Running, 60);
    let done = report(&mut book, lsn, ActionState::Completed, 70);
    assert!(done.finished && done.queue_complete && done.retry.is_none());
    let status = book.status(q).unwrap();
    assert!(status.is_complete);
    assert_eq!(status.counts.completed, 1);
    let results = book.results(q, None, 10).unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].attempt().get(), 2);

    assert_eq!(book.retire(q, &[lsn, Lsn(99)]).unwrap(), 1);
    assert!(book.is_empty());
    assert_eq!(book.status(q).unwrap().counts.total(), 0);
    book.audit().unwrap();
}

// Attests ORC-6
#[test]
fn the_limit_ends_an_action_failed() {
    let mut book = Book::default();
    let q = book.create_queue(config(1));
    let p = proc_id(1, "a");
    let lsn = book.submit(q, plain(), at(1)).unwrap().lsn;
    for attempt in 1..=2 {
        book.schedule(&[ProcFree::new(&p, 1)], 1, at(10));
        let update = report(&mut book, lsn, ActionState::Failed, 20);
        assert_eq!(update.retry.is_some(), attempt == 1);
    }
    assert_eq!(state(&book, lsn), ActionState::Failed);
    assert_eq!(book.action(lsn).unwrap().record.attempt().get(), 2);
    assert!(book.status(q).unwrap().is_complete);
}

// Attests ORC-1, ORC-4
#[test]
fn priority_then_lsn_and_changes_while_pending() {
    let mut book = Book::default();
    let q = book.create_queue(QueueConfig {
        default_priority: 5,
        ..QueueConfig::default()
    });
    let low = book.submit(q, prioritised(0), at(1)).unwrap().lsn;
    let default = book.submit(q, plain(), at(1)).unwrap().lsn;
    let high = book.submit(q, prioritised(9), at(1)).unwrap().lsn;
    let later_low = book.submit(q, prioritised(0), at(1)).unwrap().lsn;
    assert_eq!(book.action(default).unwrap().priority, 5);
    assert_eq!(book.set_priority(q, later_low, 10), Ok(0));
    let p = proc_id(1, "a");
    let order: Vec<Lsn> = book
        .schedule(&[ProcFree::new(&p, 3)], 10, at(2))
        .iter()
        .map(Dispatch::lsn)
        .collect();
    assert_eq!(order, [later_low, high, default]);
    assert_eq!(book.pending().peek(), Some((low, 0)));
    assert_eq!(
        book.set_priority(q, high, 1),
        Err(BookError::NotPending {
            lsn: high,
            state: ActionState::Submitting
        })
    );
    book.audit().unwrap();
}

// Attests ORC-9, ORC-10
#[test]
fn idempotency_keys_and_draining() {
    let mut book = Book::default();
    let q = book.create_queue(QueueConfig::default());
    let other = book.create_queue(QueueConfig::default());
    let first = book.submit(q, keyed("k"), at(1)).unwrap();
    assert!(first.created);
    let again = book.submit(q, keyed("k"), at(2)).unwrap();
    assert_eq!(
        again,
        Submitted {
            lsn: first.lsn,
            created: false
        }
    );
    assert_eq!(book.len(), 1);
    // Keys are per queue.
    assert!(book.submit(other, keyed("k"), at(3)).unwrap().created);
    // A batch repeating a key within itself creates one action.
    let batch = book
        .submit_batch(q, vec![keyed("b"), keyed("b"), keyed("k")], at(4))
        .unwrap();
    assert_eq!(batch[0].lsn, batch[1].lsn);
    assert!(batch[0].created && !batch[1].created);
    assert_eq!(batch[2].lsn, first.lsn);

    book.drain(q).unwrap();
    assert_eq!(
        book.submit(q, plain(), at(5)),
        Err(BookError::QueueDraining(q))
    );
    // A remembered key still answers; a batch with one new action is refused whole.
    assert_eq!(book.submit(q, keyed("k"), at(5)).unwrap().lsn, first.lsn);
    let before = book.len();
    assert_eq!(
        book.submit_batch(q, vec![keyed("k"), keyed("new")], at(5)),
        Err(BookError::QueueDraining(q))
    );
    assert_eq!(book.len(), before);
    let long = "x".repeat(book.limits().max_key_len + 1);
    assert!(matches!(
        book.submit(other, keyed(&long), at(6)),
        Err(BookError::KeyTooLong { .. })
    ));
    assert_eq!(
        book.submit(99, plain(), at(6)),
        Err(BookError::UnknownQueue(99))
    );
    book.audit().unwrap();
}

// Attests ORC-9
#[test]
fn keys_are_bounded_per_queue() {
    let mut book = Book::new(BookLimits {
        max_keys_per_queue: 2,
        ..BookLimits::default()
    });
    let q = book.create_queue(QueueConfig::default());
    let a = book.submit(q, keyed("a"), at(1)).unwrap().lsn;
    book.submit(q, keyed("b"), at(1)).unwrap();
    book.submit(q, keyed("c"), at(1)).unwrap();
    let again = book.submit(q, keyed("a"), at(1)).unwrap();
    assert!(
        again.created && again.lsn != a,
        "the oldest key was forgotten"
    );
}

// Attests ORC-10, ORC-11
#[test]
fn cancelling_a_queue_stops_placed_actions_and_retries_nothing() {
    let mut book = Book::default();
    let q = book.create_queue(config(5));
    let p = proc_id(1, "a");
    let lsns: Vec<Lsn> = (0..4)
        .map(|_| book.submit(q, plain(), at(1)).unwrap().lsn)
        .collect();
    book.schedule(&[ProcFree::new(&p, 2)], 10, at(2));
    report(&mut book, lsns[0], ActionState::Running, 3);

    let cancel = book.cancel_queue(q, "user asked", at(4)).unwrap();
    assert_eq!(cancel.count(), 4);
    assert_eq!(
        cancel.cancelled.iter().map(|u| u.lsn).collect::<Vec<_>>(),
        [lsns[2], lsns[3]]
    );
    assert_eq!(
        cancel
            .stopping
            .iter()
            .map(|s| (s.attempt.lsn, s.proc.clone()))
            .collect::<Vec<_>>(),
        [(lsns[0], Some(p.clone())), (lsns[1], Some(p.clone()))]
    );
    assert_eq!(
        book.action(lsns[2]).unwrap().record.last_error(),
        Some("user asked")
    );
    book.audit().unwrap();
    assert!(!book.status(q).unwrap().is_complete);
    // The proc stops one; the other fails on its own: no retry in a cancelled queue.
    report(&mut book, lsns[0], ActionState::Cancelled, 5);
    let failed = report(&mut book, lsns[1], ActionState::Failed, 5);
    assert!(failed.finished && failed.retry.is_none() && failed.queue_complete);
    assert_eq!(
        book.submit(q, plain(), at(6)),
        Err(BookError::QueueCancelled(q))
    );
    assert_eq!(
        book.reschedule(q, lsns[1], at(6)),
        Err(BookError::QueueCancelled(q))
    );
    let status = book.status(q).unwrap();
    assert!(status.cancelled && status.is_complete);
    assert_eq!(status.counts.cancelled, 3);
}

// Attests ORC-10
#[test]
fn cancelling_one_placed_action_prevents_its_retry() {
    let mut book = Book::default();
    let q = book.create_queue(config(5));
    let p = proc_id(1, "a");
    let lsn = book.submit(q, plain(), at(1)).unwrap().lsn;
    book.schedule(&[ProcFree::new(&p, 1)], 1, at(2));
    let CancelOutcome::Stopping(order) = book.cancel(q, lsn, "no", at(3)).unwrap() else {
        panic!("a placed action is stopped by its proc");
    };
    assert_eq!(
        order.attempt,
        book.action(lsn).unwrap().record.attempt_ref()
    );
    // The proc dies before it stops the action: abandoned, but not retried.
    let updates = book.proc_lost(&p, "crashed", at(4));
    assert_eq!(updates.len(), 1);
    assert!(updates[0].finished && updates[0].retry.is_none());
    assert_eq!(state(&book, lsn), ActionState::Abandoned);
    assert_eq!(
        book.cancel(q, lsn, "again", at(5)),
        Ok(CancelOutcome::AlreadyFinished(ActionState::Abandoned))
    );
    book.audit().unwrap();
}

// Attests ORC-12
#[test]
fn lost_procs_and_hosts_abandon_and_retry() {
    let mut book = Book::default();
    let q = book.create_queue(config(3));
    let (a1, a2, b1) = (proc_id(1, "a1"), proc_id(1, "a2"), proc_id(2, "b1"));
    for _ in 0..6 {
        book.submit(q, plain(), at(1)).unwrap();
    }
    let procs = [
        ProcFree::new(&a1, 2),
        ProcFree::new(&a2, 2),
        ProcFree::new(&b1, 2),
    ];
    assert_eq!(book.schedule(&procs, 10, at(2)).len(), 6);
    let on_b1: Vec<Lsn> = book.placed_on(&b1).collect();
    let updates = book.proc_lost(&b1, "exit 137", at(3));
    assert_eq!(updates.iter().map(|u| u.lsn).collect::<Vec<_>>(), on_b1);
    assert!(updates.iter().all(|u| u.retry.is_some()));
    assert_eq!(
        book.action(on_b1[0]).unwrap().record.last_error(),
        Some("exit 137")
    );
    let host = a1.addr().clone();
    assert_eq!(book.host_lost(&host, "silent", at(4)).len(), 4);
    assert_eq!(book.counts().pending, 6);
    assert_eq!(book.placed_on(&a1).count() + book.placed_on(&a2).count(), 0);
    book.audit().unwrap();
}

#[test]
fn orphans_are_attempts_not_placed_there() {
    let mut book = Book::default();
    let q = book.create_queue(config(3));
    let (a, b) = (proc_id(1, "a"), proc_id(2, "b"));
    let first = book.submit(q, plain(), at(1)).unwrap().lsn;
    let second = book.submit(q, plain(), at(1)).unwrap().lsn;
    book.schedule(&[ProcFree::new(&a, 1), ProcFree::new(&b, 1)], 2, at(2));
    let on_a = book.action(first).unwrap().record.attempt_ref();
    let on_b = book.action(second).unwrap().record.attempt_ref();
    let stale = AttemptRef {
        lsn: first,
        attempt: Attempt::new(7).unwrap(),
    };
    let unknown = AttemptRef {
        lsn: Lsn(99),
        attempt: Attempt::FIRST,
    };
    assert_eq!(
        book.orphans(a.addr(), &[on_a, on_b, stale, unknown]),
        [on_b, stale, unknown]
    );
}

// Attests ORC-7
#[test]
fn reschedule_by_hand() {
    let mut book = Book::default();
    let q = book.create_queue(config(0));
    let p = proc_id(1, "a");
    let failed = book.submit(q, plain(), at(1)).unwrap().lsn;
    let done = book.submit(q, plain(), at(1)).unwrap().lsn;
    book.schedule(&[ProcFree::new(&p, 2)], 2, at(2));
    report(&mut book, failed, ActionState::Failed, 3);
    report(&mut book, done, ActionState::Completed, 3);
    assert_eq!(state(&book, failed), ActionState::Failed, "limit 0");
    book.drain(q).unwrap();
    let t = book.reschedule(q, failed, at(4)).unwrap();
    assert_eq!(
        (t.lsn, t.attempt.get(), t.state),
        (failed, 2, ActionState::Pending)
    );
    assert!(!book.status(q).unwrap().is_complete);
    let before = book.action(done).unwrap().record.clone();
    assert_eq!(
        book.reschedule(q, done, at(4)),
        Err(BookError::Retry(RetryError::NotRetryable {
            lsn: done,
            state: ActionState::Completed
        }))
    );
    assert_eq!(book.action(done).unwrap().record, &before);
    assert!(matches!(
        book.reschedule(q, failed, at(5)),
        Err(BookError::Retry(_))
    ));
    book.audit().unwrap();
}

// Attests ORC-14
#[test]
fn refused_transitions_change_nothing() {
    let mut book = Book::default();
    let q = book.create_queue(config(3));
    let other = book.create_queue(config(3));
    let p = proc_id(1, "a");
    let lsn = book.submit(q, plain(), at(1)).unwrap().lsn;
    book.schedule(&[ProcFree::new(&p, 1)], 1, at(2));
    let attempt_1 = book
        .action(lsn)
        .unwrap()
        .record
        .transition_to(ActionState::Completed, at(9));
    report(&mut book, lsn, ActionState::Failed, 3);
    let snapshot = format!("{book:?}");
    // The first attempt's late report is stale: dropped.
    assert!(matches!(
        book.apply(&attempt_1, at(10)),
        Err(ApplyError::Ignored(Ignored::Stale { .. }))
    ));
    let unknown = Transition::new(Lsn(77), Attempt::FIRST, ActionState::Running, at(10));
    assert_eq!(
        book.apply(&unknown, at(10)),
        Err(ApplyError::UnknownAction(Lsn(77)))
    );
    let backwards = book
        .action(lsn)
        .unwrap()
        .record
        .transition_to(ActionState::New, at(10));
    assert!(book.apply(&backwards, at(10)).is_err());
    assert_eq!(format!("{book:?}"), snapshot);
    // Client requests naming the wrong queue find nothing.
    assert_eq!(
        book.set_priority(other, lsn, 3),
        Err(BookError::UnknownAction(lsn))
    );
    assert_eq!(
        book.cancel(other, lsn, "x", at(11)),
        Err(BookError::UnknownAction(lsn))
    );
    assert_eq!(book.retire(other, &[lsn]), Ok(0));
    assert_eq!(format!("{book:?}"), snapshot);
}

// Attests ORC-2, ORC-3
#[test]
fn labelled_actions_wait_for_an_eligible_proc() {
    let mut book = Book::default();
    let q = book.create_queue(QueueConfig::default());
    let gpu: Labels = [("gpu".to_owned(), "a100".to_owned())].into();
    let needs_gpu = book
        .submit(
            q,
            NewAction {
                priority: Some(10),
                requires: gpu.clone(),
                ..NewAction::default()
            },
            at(1),
        )
        .unwrap()
        .lsn;
    let anywhere = book.submit(q, plain(), at(1)).unwrap().lsn;
    let (cpu, gpu_proc) = (proc_id(1, "cpu"), proc_id(2, "gpu"));
    let out = book.schedule(&[ProcFree::new(&cpu, 4)], 10, at(2));
    assert_eq!(
        out.iter().map(Dispatch::lsn).collect::<Vec<_>>(),
        [anywhere]
    );
    assert_eq!(book.action(needs_gpu).unwrap().requires, Some(&gpu));
    let out = book.schedule(
        &[
            ProcFree::new(&cpu, 3),
            ProcFree::new(&gpu_proc, 1).with_labels(&gpu),
        ],
        10,
        at(3),
    );
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].lsn(), out[0].proc), (needs_gpu, 1));
    book.audit().unwrap();
}

#[test]
fn errors_map_onto_the_wire() {
    let e: OrchestratorError = BookError::QueueDraining(3).into();
    assert_eq!(e.code(), "queue_draining");
    let e: OrchestratorError = BookError::UnknownAction(Lsn(4)).into();
    assert_eq!(e, OrchestratorError::UnknownAction(Lsn(4)));
    let e: OrchestratorError = BookError::KeyTooLong { len: 300, max: 256 }.into();
    assert!(e.to_string().contains("300 bytes"));
    assert_eq!(e.code(), "key_too_long");
}

#[test]
fn limits_defaults() {
    let limits = BookLimits::default();
    assert_eq!(limits.max_keys_per_queue, 1 << 20);
    assert_eq!(limits.max_key_len, 256);
    assert_eq!(limits.max_scan, 1 << 16);
}

// Attests ORC-13
#[test]
fn entries_stay_small() {
    // The record (ACT-10), its queue and priority, in place in the slab (no growth waste beyond
    // one chunk); the LSN → slot map adds a 16-byte bucket and 1 control byte, at 1..2 buckets
    // per entry.
    assert_eq!(std::mem::size_of::<Entry>(), 120);
    assert_eq!(std::mem::size_of::<Option<Entry>>(), 120);
    let worst_store = 120 + 2 * (std::mem::size_of::<(Lsn, u32)>() + 1);
    // Index: a 16-byte key and a 12-byte map entry, B-tree nodes at least 5/11 full, plus node
    // headers; queue membership: an 8-byte key likewise.
    let worst_btrees = (16 + 12 + 8) * 11 / 5 + 3 * 16;
    assert!(
        worst_store + worst_btrees <= 512,
        "{worst_store} + {worst_btrees} bytes per pending action (ORC-13)"
    );
}
