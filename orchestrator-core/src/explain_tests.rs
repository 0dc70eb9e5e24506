//! Unit tests of `explain`: each reason named from the scheduler's real state, the attempts'
//! story after a retry, read-only handling of the request, and replay with stories.

use procmesh_protocol::messages::orchestrator::{
    OrchestratorError, OrchestratorReply, OrchestratorRequest, QueueRef, Reason, SubmitAction,
};
use procmesh_protocol::spec::ActionDef;
use procmesh_protocol::{ActionState, Lsn, Timestamp};

use crate::core_tests::{
    answer, ask, attempt, create_queue, heartbeat, host, info, placed, register_worker, submit,
    World,
};
use crate::{Core, CoreConfig, Input, Replay};

fn kinds(core: &Core, lsn: Lsn) -> Vec<Reason> {
    let e = core.explain(lsn, Timestamp(5_000)).expect("a known action");
    e.reasons.into_iter().map(|r| r.reason).collect()
}

/// A core with a queue, a worker, one host of one proc (4 slots), nothing placed.
fn fleet() -> (Core, procmesh_protocol::messages::orchestrator::QueueToken) {
    let mut core = Core::new(CoreConfig::default());
    let (_, token) = create_queue(&mut core, 1);
    register_worker(&mut core);
    ask(
        &mut core,
        OrchestratorRequest::RegisterHost(info()),
        false,
        900,
    );
    assert!(answer(&ask(&mut core, heartbeat(Vec::new()), false, 950)).is_ok());
    (core, token)
}

#[test]
fn no_host_alive_is_the_reason_when_none_registered() {
    let mut core = Core::new(CoreConfig::default());
    let (_, token) = create_queue(&mut core, 1);
    let worker = register_worker(&mut core);
    let lsn = submit(&mut core, token, worker, 1, 10)[0];
    assert_eq!(kinds(&core, lsn), vec![Reason::NoHostAlive { known: 0 }]);
}

#[test]
fn unmet_labels_are_named_with_the_alive_hosts() {
    let (mut core, token) = fleet();
    let mut action = ActionDef::new(crate::core_tests::descriptor().id());
    action.resources.host_labels = [("gpu".into(), "a100".into())].into();
    let outcome = ask(
        &mut core,
        OrchestratorRequest::Submit {
            queue: QueueRef::Token(token),
            actions: vec![SubmitAction {
                action,
                priority: None,
                idempotency_key: None,
            }],
        },
        false,
        960,
    );
    let Ok(OrchestratorReply::Submitted { lsns }) = answer(&outcome) else {
        panic!("submitted");
    };
    let e = core.explain(lsns[0], Timestamp(1_000)).unwrap();
    assert_eq!(
        e.reasons[0].reason,
        Reason::LabelsUnmet {
            requires: [("gpu".into(), "a100".into())].into(),
            alive_hosts: 1
        }
    );
    assert!(
        e.reasons[0].summary.contains("gpu=a100"),
        "{}",
        e.reasons[0].summary
    );
}

#[test]
fn all_slots_busy_names_the_proc_and_who_occupies_it() {
    let (mut core, placed_lsns) = placed(4);
    // A second queue's action waits too: its client sees the first queue as a count only.
    let (_, other) = create_queue(&mut core, 2);
    let worker = crate::core_tests::descriptor().id();
    let waiting = submit(&mut core, other, worker, 1, 1_100)[0];
    let e = core.explain(waiting, Timestamp(1_200)).unwrap();
    let Reason::AllSlotsBusy { procs } = &e.reasons[0].reason else {
        panic!("{:?}", e.reasons);
    };
    assert_eq!(procs.len(), 1);
    assert_eq!(procs[0].proc, host().proc("p1").unwrap());
    assert_eq!((procs[0].max, procs[0].placed), (4, 4));
    assert!(procs[0].own.is_empty());
    assert_eq!(procs[0].other_queues, 4);
    assert_eq!(
        procs[0].others.len(),
        1,
        "the operator view names the queue"
    );
    assert_eq!(procs[0].others[0].lsns, placed_lsns);
    let client = core.explain_as(waiting, Timestamp(1_200), false).unwrap();
    let Reason::AllSlotsBusy { procs } = &client.reasons[0].reason else {
        panic!("{:?}", client.reasons);
    };
    assert!(
        procs[0].others.is_empty(),
        "other queues do not leak to a client"
    );
    assert!(client.reasons[0].summary.contains("other queues: 4"));
}

#[test]
fn a_draining_queue_is_reported_and_its_action_still_runs() {
    let (mut core, token) = fleet();
    let lsn = submit(
        &mut core,
        token,
        crate::core_tests::descriptor().id(),
        1,
        960,
    )[0];
    assert!(answer(&ask(
        &mut core,
        OrchestratorRequest::Drain(QueueRef::Token(token)),
        false,
        970
    ))
    .is_ok());
    let reasons = kinds(&core, lsn);
    assert_eq!(reasons[0], Reason::QueueDraining);
    assert_eq!(reasons[1], Reason::WillBePlaced { free_slots: 4 });
}

#[test]
fn schedulable_actions_will_be_placed_or_wait_behind_others() {
    let (mut core, token) = fleet();
    let lsns = submit(
        &mut core,
        token,
        crate::core_tests::descriptor().id(),
        6,
        960,
    );
    assert_eq!(
        kinds(&core, lsns[0]),
        vec![Reason::WillBePlaced { free_slots: 4 }]
    );
    assert_eq!(
        kinds(&core, lsns[5]),
        vec![Reason::AheadInLine {
            ahead: 5,
            free_slots: 4
        }]
    );
}

// Attests ORC-17 as explain reports it; the story of a retry.
#[test]
fn a_sidelined_proc_and_the_story_of_the_retry() {
    let (mut core, lsns) = placed(1);
    let lsn = lsns[0];
    let failed = Input::SubmitFailed {
        attempt: attempt(lsn),
        proc: host().proc("p1").unwrap(),
        reason: "agent refused: full".into(),
    };
    assert!(
        core.handle(failed, Timestamp(1_100), &World::default())
            .changed
    );
    let e = core.explain(lsn, Timestamp(1_200)).unwrap();
    assert_eq!(e.state, ActionState::Pending);
    assert_eq!(e.attempt.get(), 2);
    assert_eq!(
        e.reasons[0].reason,
        Reason::Sidelined {
            procs: vec![host().proc("p1").unwrap()]
        }
    );
    let Reason::Retry {
        attempt,
        max_attempts,
        previous,
    } = &e.reasons[1].reason
    else {
        panic!("{:?}", e.reasons);
    };
    assert_eq!((attempt.get(), *max_attempts), (2, 4));
    assert!(previous.as_deref().unwrap().contains("agent refused"));
    assert_eq!(e.attempts.len(), 2, "{:?}", e.attempts);
    assert_eq!(e.attempts[0].state, ActionState::Abandoned);
    assert_eq!(e.attempts[0].proc, Some(host().proc("p1").unwrap()));
    assert_eq!(e.attempts[0].placed, Some(Timestamp(1_000)));
    assert_eq!(e.attempts[0].ended, Some(Timestamp(1_100)));
    assert_eq!(e.attempts[1].state, ActionState::Pending);
    assert_eq!(e.attempts[1].ended, None);
    core.audit().unwrap();
    // The next heartbeat ends the sideline: it will be placed again.
    ask(&mut core, heartbeat(Vec::new()), false, 1_300);
    assert_eq!(kinds(&core, lsn)[0], Reason::WillBePlaced { free_slots: 4 });
}

#[test]
fn the_request_is_read_only_and_keeps_queue_access() {
    let (mut core, lsns) = placed(1);
    let explain = |queue| OrchestratorRequest::Explain {
        queue,
        lsn: lsns[0],
    };
    let outcome = ask(&mut core, explain(QueueRef::Id(1)), true, 1_500);
    assert!(!outcome.changed);
    let Ok(OrchestratorReply::Explained(e)) = answer(&outcome) else {
        panic!("{:?}", outcome.reply);
    };
    assert!(matches!(
        e.reasons[0].reason,
        Reason::Placed {
            state: ActionState::Submitting,
            ..
        }
    ));
    assert!(!crate::core_tests::request(explain(QueueRef::Id(1)), true).may_change_state());
    assert_eq!(
        answer(&ask(&mut core, explain(QueueRef::Id(1)), false, 1_500)),
        Err(OrchestratorError::Forbidden)
    );
    let (_, other) = create_queue(&mut core, 2);
    assert!(matches!(
        answer(&ask(
            &mut core,
            explain(QueueRef::Token(other)),
            false,
            1_500
        )),
        Err(OrchestratorError::UnknownAction(_))
    ));
}

// Attests ORC-26 with stories: a replay of the journal rebuilds the same book, stories included.
#[test]
fn a_replay_rebuilds_the_stories() {
    let mut live = Core::new(CoreConfig::default());
    let mut log: Vec<(Timestamp, Input)> = Vec::new();
    let mut feed = |core: &mut Core, input: Input, now: u64| {
        let outcome = core.handle(input.clone(), Timestamp(now), &World::default());
        if outcome.changed {
            log.push((Timestamp(now), input));
        }
    };
    feed(&mut live, crate::core_tests::create_input(1), 0);
    let token = crate::core_tests::token(1);
    feed(
        &mut live,
        crate::core_tests::request(
            OrchestratorRequest::RegisterWorker(crate::core_tests::descriptor()),
            false,
        ),
        0,
    );
    feed(
        &mut live,
        crate::core_tests::request(OrchestratorRequest::RegisterHost(info()), false),
        900,
    );
    feed(
        &mut live,
        crate::core_tests::request(heartbeat(Vec::new()), false),
        950,
    );
    let actions = vec![SubmitAction {
        action: ActionDef::new(crate::core_tests::descriptor().id()),
        priority: None,
        idempotency_key: None,
    }];
    let submit = OrchestratorRequest::Submit {
        queue: QueueRef::Token(token),
        actions,
    };
    feed(&mut live, crate::core_tests::request(submit, false), 960);
    feed(&mut live, Input::Dispatch, 1_000);
    let lsn = Lsn(1);
    let failed = Input::SubmitFailed {
        attempt: attempt(lsn),
        proc: host().proc("p1").unwrap(),
        reason: "unreachable".into(),
    };
    feed(&mut live, failed, 1_100);
    feed(
        &mut live,
        crate::core_tests::request(heartbeat(Vec::new()), false),
        1_200,
    );
    feed(&mut live, Input::Dispatch, 1_300);
    assert_eq!(live.attempts(lsn).len(), 2);
    let mut replayed = Core::new(CoreConfig::default());
    for (now, input) in log {
        replayed.handle(input, now, &Replay);
    }
    assert_eq!(replayed.book(), live.book());
    assert_eq!(replayed.attempts(lsn), live.attempts(lsn));
    replayed.audit().unwrap();
}
