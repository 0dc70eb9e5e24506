//! The orchestrator end to end over QUIC on 127.0.0.1: a real orchestrator, fake hosts whose
//! fake proc agents report transitions like real ones, and a client with a subscriber.

mod utils;

use std::collections::BTreeSet;

use procmesh_protocol::messages::client::ClientEvent;
use procmesh_protocol::messages::orchestrator::{
    HostState, OrchestratorError, OrchestratorReply, OrchestratorRequest, SubscriptionTarget,
};
use procmesh_protocol::spec::{InputFile, SpecError, WorkerId};
use procmesh_protocol::{ActionState, BlobHash, Lsn, ProcId};
use utils::*;

use ActionState::{Abandoned, Cancelled, Completed, Failed, Pending, Running, Submitting};

// Attests ORC-16, ORC-19, ORC-20
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_run_and_results_are_listed_then_retired() {
    let id = identity();
    let (orch, _dir) = orchestrator(&id.orchestrator, |_| {}).await;
    let mut client = Client::connect(&id.client, orch.actor_id()).await;
    let worker = client.register(&worker(&orch).await).await;
    let queue = client.queue(3).await;
    let subscription = client.subscribe(SubscriptionTarget::Queue(queue)).await;
    let host = FakeHost::start(&id.host, orch.actor_id(), 2, always(Outcome::Complete)).await;

    let lsns = client
        .submit(queue, (0..5).map(|_| action(worker)).collect())
        .await
        .unwrap();
    assert_eq!(lsns.len(), 5);
    let events = client.events_until_complete().await;
    for lsn in &lsns {
        assert_eq!(
            transitions_of(&events, *lsn),
            [Pending, Submitting, Running, Completed].map(|s| (attempt(1), s)),
            "every transition of {lsn}, in order"
        );
    }
    assert!(events.iter().all(|e| e.subscription() == subscription));
    let ClientEvent::QueueComplete { status, .. } = events.last().unwrap() else {
        panic!("ends with QueueComplete");
    };
    assert_eq!(status.counts.completed, 5);
    assert_eq!(host.submits().len(), 5);

    // Results: records with outputs and tails, in LSN order, paged.
    let Ok(OrchestratorReply::Results(results)) = client
        .ask(OrchestratorRequest::ListResults {
            queue,
            after: None,
            limit: Some(3),
        })
        .await
    else {
        panic!("no results");
    };
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].record.lsn(), lsns[0]);
    assert_eq!(results[0].record.state(), Completed);
    assert_eq!(results[0].record.location(), Some(host.node.proc_id()));
    assert_eq!(results[0].outputs[0].path, "out.txt");
    assert_eq!(
        results[0].stdout_tail,
        format!("lsn {} attempt 1", lsns[0]).into_bytes()
    );
    assert_eq!(results[0].stderr_tail, b"err");
    let Ok(OrchestratorReply::Results(rest)) = client
        .ask(OrchestratorRequest::ListResults {
            queue,
            after: Some(results[2].record.lsn()),
            limit: None,
        })
        .await
    else {
        panic!("no results");
    };
    assert_eq!(rest.len(), 2);

    // Hosts: alive, with the proc it reported.
    let Ok(OrchestratorReply::Hosts(hosts)) = client.ask(OrchestratorRequest::ListHosts).await
    else {
        panic!("no hosts");
    };
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].state, HostState::Alive);
    assert_eq!(hosts[0].procs[0].agent, host.agent);

    // Retire: gone from the results, the status and the store.
    let answer = client
        .ask(OrchestratorRequest::Retire {
            queue,
            lsns: lsns.clone(),
        })
        .await;
    assert_eq!(answer, Ok(OrchestratorReply::Retired { count: 5 }));
    assert_eq!(client.status(queue).await.counts.total(), 0);
    let answer = client
        .ask(OrchestratorRequest::GetAction {
            queue,
            lsn: lsns[0],
        })
        .await;
    assert_eq!(answer, Err(OrchestratorError::UnknownAction(lsns[0])));
    orch.audit().await.unwrap();

    // Shutdown ends the subscription.
    orch.shutdown().await;
    let ended = client.next_event().await;
    assert!(matches!(ended, ClientEvent::Ended { .. }), "{ended:?}");
}

// Attests ORC-1 (driven: a later, higher-priority action runs first)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_runs_first() {
    let id = identity();
    let (orch, _dir) = orchestrator(&id.orchestrator, |_| {}).await;
    let client = Client::connect(&id.client, orch.actor_id()).await;
    let worker = client.register(&worker(&orch).await).await;
    let queue = client.queue(0).await;
    // Submitted before any host exists, so all three wait.
    let low = client
        .submit(
            queue,
            vec![with_priority(worker, 0), with_priority(worker, 0)],
        )
        .await
        .unwrap();
    let high = client
        .submit(queue, vec![with_priority(worker, 10)])
        .await
        .unwrap();
    let host = FakeHost::start(&id.host, orch.actor_id(), 1, always(Outcome::Complete)).await;
    client.until_complete(queue).await;
    let order: Vec<Lsn> = host.submits().iter().map(|a| a.lsn).collect();
    assert_eq!(order, vec![high[0], low[0], low[1]]);
    orch.audit().await.unwrap();
    orch.shutdown().await;
}

// Attests ORC-6 (driven through proc agents)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_up_to_the_limit() {
    let id = identity();
    let (orch, _dir) = orchestrator(&id.orchestrator, |_| {}).await;
    let client = Client::connect(&id.client, orch.actor_id()).await;
    let worker = client.register(&worker(&orch).await).await;
    let retried = client.queue(3).await;
    let limited = client.queue(1).await;
    let flaky = client.submit(retried, vec![action(worker)]).await.unwrap()[0];
    let broken = client.submit(limited, vec![action(worker)]).await.unwrap()[0];
    let plan: Plan = std::sync::Arc::new(move |lsn, attempt| {
        if lsn == flaky && attempt.get() >= 3 {
            Outcome::Complete
        } else {
            Outcome::Fail
        }
    });
    let host = FakeHost::start(&id.host, orch.actor_id(), 2, plan).await;
    client.until_complete(retried).await;
    client.until_complete(limited).await;

    let view = |queue, lsn| {
        let client = &client;
        async move {
            match client
                .ask(OrchestratorRequest::GetAction { queue, lsn })
                .await
            {
                Ok(OrchestratorReply::Action(view)) => view,
                other => panic!("GetAction: {other:?}"),
            }
        }
    };
    let flaky_view = view(retried, flaky).await;
    assert_eq!(flaky_view.record.state(), Completed);
    assert_eq!(flaky_view.record.attempt(), attempt(3));
    let broken_view = view(limited, broken).await;
    assert_eq!(broken_view.record.state(), Failed);
    assert_eq!(
        broken_view.record.attempt(),
        attempt(2),
        "one retry with limit 1"
    );
    let attempts_of = |lsn| host.submits().iter().filter(|a| a.lsn == lsn).count();
    assert_eq!(attempts_of(flaky), 3);
    assert_eq!(attempts_of(broken), 2);

    // A manual reschedule runs it again whatever the limit (ORC-7).
    let answer = client
        .ask(OrchestratorRequest::Reschedule {
            queue: limited,
            lsn: broken,
        })
        .await;
    assert_eq!(
        answer,
        Ok(OrchestratorReply::Rescheduled {
            attempt: attempt(3)
        })
    );
    assert!(
        eventually(T, || async { attempts_of(broken) == 3 }).await,
        "timed out waiting for the rescheduled attempt"
    );
    client.until_complete(limited).await;
    orch.audit().await.unwrap();
    orch.shutdown().await;
}

// Attests ORC-18, ORC-12 (a lost host's action is abandoned and retried elsewhere)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_host_is_lost_and_its_actions_run_elsewhere() {
    let id = identity();
    let (orch, _dir) = orchestrator(&id.orchestrator, |c| c.lost_after_ms = 400).await;
    let mut client = Client::connect(&id.client, orch.actor_id()).await;
    let worker = client.register(&worker(&orch).await).await;
    let queue = client.queue(3).await;
    client.subscribe(SubscriptionTarget::Queue(queue)).await;
    let a = FakeHost::start(&id.host, orch.actor_id(), 1, always(Outcome::Hang)).await;
    let lsn = client.submit(queue, vec![action(worker)]).await.unwrap()[0];
    assert!(
        eventually(T, || async { a.held() == 1 }).await,
        "timed out waiting for the action on host A"
    );

    let b = FakeHost::start(&id.host, orch.actor_id(), 1, always(Outcome::Complete)).await;
    a.beating.store(false, std::sync::atomic::Ordering::SeqCst);
    let events = client.events_until_complete().await;
    assert_eq!(
        transitions_of(&events, lsn),
        vec![
            (attempt(1), Pending),
            (attempt(1), Submitting),
            (attempt(1), Running),
            (attempt(1), Abandoned),
            (attempt(2), Pending),
            (attempt(2), Submitting),
            (attempt(2), Running),
            (attempt(2), Completed),
        ]
    );
    assert_eq!(b.submits().len(), 1);
    let Ok(OrchestratorReply::Hosts(hosts)) = client.ask(OrchestratorRequest::ListHosts).await
    else {
        panic!("no hosts");
    };
    let state_of = |addr| hosts.iter().find(|h| &h.info.addr == addr).unwrap().state;
    assert_eq!(state_of(a.node.addr()), HostState::Lost);
    assert_eq!(state_of(b.node.addr()), HostState::Alive);

    // Beating again: answered UnknownHost, the host registers again and is alive.
    a.beating.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        eventually(T, || async {
            match client.ask(OrchestratorRequest::ListHosts).await {
                Ok(OrchestratorReply::Hosts(hosts)) => hosts
                    .iter()
                    .any(|h| &h.info.addr == a.node.addr() && h.state == HostState::Alive),
                _ => false,
            }
        })
        .await,
        "timed out waiting for host A back"
    );
    orch.audit().await.unwrap();
    orch.shutdown().await;
}

// Attests ORC-12 (ProcLost)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_proc_abandons_its_actions_which_are_retried() {
    let id = identity();
    let (orch, _dir) = orchestrator(&id.orchestrator, |_| {}).await;
    let client = Client::connect(&id.client, orch.actor_id()).await;
    let worker = client.register(&worker(&orch).await).await;
    let queue = client.queue(3).await;
    let lsn = client.submit(queue, vec![action(worker)]).await.unwrap()[0];
    let plan: Plan = std::sync::Arc::new(|_, attempt| {
        if attempt.get() == 1 {
            Outcome::Hang
        } else {
            Outcome::Complete
        }
    });
    let host = FakeHost::start(&id.host, orch.actor_id(), 1, plan).await;
    assert!(
        eventually(T, || async { host.held() == 1 }).await,
        "timed out waiting for the first attempt"
    );
    // The proc dies (and a fresh one takes its name): it holds nothing any more.
    host.log.lock().unwrap().held.clear();
    let proc_id: ProcId = host.node.proc_id().clone();
    let lost = OrchestratorRequest::ProcLost {
        proc_id,
        status: None,
        reason: "killed by a test".into(),
    };
    // ORC-34: a client cannot mark a proc lost; its host can.
    let answer = client.ask(lost.clone()).await;
    assert!(
        matches!(answer, Err(OrchestratorError::NotPermitted(_))),
        "{answer:?}"
    );
    let from_host = host
        .node
        .remote_ref::<OrchestratorRequest>(orch.actor_id())
        .with_sender(host.node.actor_id("host").unwrap());
    let answer = from_host.ask(lost, T).await.unwrap();
    assert_eq!(answer, Ok(OrchestratorReply::Ack));
    client.until_complete(queue).await;
    let Ok(OrchestratorReply::Action(view)) = client
        .ask(OrchestratorRequest::GetAction { queue, lsn })
        .await
    else {
        panic!("no action");
    };
    assert_eq!(view.record.state(), Completed);
    assert_eq!(view.record.attempt(), attempt(2));
    assert!(view
        .record
        .last_error()
        .unwrap()
        .contains("killed by a test"));
    orch.audit().await.unwrap();
    orch.shutdown().await;
}

// Attests ORC-10 (driven), ORC-24
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queue_stops_running_actions_on_their_agents() {
    let id = identity();
    let (orch, _dir) = orchestrator(&id.orchestrator, |_| {}).await;
    let mut client = Client::connect(&id.client, orch.actor_id()).await;
    let worker = client.register(&worker(&orch).await).await;
    let queue = client.queue(3).await;
    client.subscribe(SubscriptionTarget::Queue(queue)).await;
    let host = FakeHost::start(&id.host, orch.actor_id(), 2, always(Outcome::Hang)).await;
    let lsns = client
        .submit(queue, (0..3).map(|_| action(worker)).collect())
        .await
        .unwrap();
    assert!(
        eventually(T, || async {
            client.status(queue).await.counts.running == 2
        })
        .await,
        "timed out waiting for two running"
    );
    let answer = client.ask(OrchestratorRequest::CancelQueue(queue)).await;
    assert_eq!(answer, Ok(OrchestratorReply::Cancelled { count: 3 }));
    let events = client.events_until_complete().await;
    for lsn in &lsns {
        let states = transitions_of(&events, *lsn);
        assert_eq!(
            states.last(),
            Some(&(attempt(1), Cancelled)),
            "{lsn}: {states:?}"
        );
    }
    let cancelled: BTreeSet<Lsn> = host.cancels().iter().map(|a| a.lsn).collect();
    let ran: BTreeSet<Lsn> = host.submits().iter().map(|a| a.lsn).collect();
    assert_eq!(cancelled, ran, "every running attempt got a Cancel");
    assert_eq!(ran.len(), 2);
    let status = client.status(queue).await;
    assert!(status.cancelled && status.is_complete);
    assert_eq!(status.counts.cancelled, 3);
    // Nothing is retried or accepted afterwards.
    let refused = client.submit(queue, vec![action(worker)]).await;
    assert!(
        matches!(refused, Err(OrchestratorError::QueueCancelled(_))),
        "{refused:?}"
    );
    assert_eq!(host.submits().len(), 2);
    orch.audit().await.unwrap();
    orch.shutdown().await;
}

// Attests ORC-23, ORC-9 (driven)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_change_nothing_and_keys_are_idempotent() {
    let id = identity();
    let (orch, _dir) = orchestrator(&id.orchestrator, |c| c.max_submit_batch = 4).await;
    let client = Client::connect(&id.client, orch.actor_id()).await;
    let descriptor = worker(&orch).await;
    let worker = client.register(&descriptor).await;
    let queue = client.queue(3).await;

    // Idempotency: the same key twice gives one action.
    let keyed = |key: &str| {
        let mut a = action(worker);
        a.idempotency_key = Some(key.into());
        a
    };
    let first = client.submit(queue, vec![keyed("k1")]).await.unwrap();
    let again = client
        .submit(queue, vec![keyed("k1"), keyed("k1")])
        .await
        .unwrap();
    assert_eq!(again, vec![first[0], first[0]]);
    assert_eq!(client.status(queue).await.counts.total(), 1);

    // Unknown worker.
    let unknown = WorkerId::from_bytes([9; 32]);
    let answer = client
        .submit(queue, vec![action(worker), action(unknown)])
        .await;
    assert_eq!(answer, Err(OrchestratorError::UnknownWorker(unknown)));
    // Missing input blob.
    let absent = BlobHash::of(b"never uploaded");
    let mut with_input = action(worker);
    with_input.action.inputs.push(InputFile {
        path: "in/data".into(),
        hash: absent,
        size: 14,
    });
    let answer = client.submit(queue, vec![action(worker), with_input]).await;
    assert_eq!(answer, Err(OrchestratorError::MissingBlobs(vec![absent])));
    // Invalid action: its index and what is wrong.
    let mut escaping = action(worker);
    escaping.action.inputs.push(InputFile {
        path: "../etc/passwd".into(),
        hash: descriptor.files[0].hash,
        size: 1,
    });
    let answer = client.submit(queue, vec![action(worker), escaping]).await;
    let Err(OrchestratorError::InvalidAction { index, error }) = answer else {
        panic!("expected InvalidAction, got {answer:?}");
    };
    assert_eq!(index, 1);
    assert!(matches!(error, SpecError::Path { .. }), "{error}");
    // Too large.
    let answer = client
        .submit(queue, (0..5).map(|_| action(worker)).collect())
        .await;
    assert_eq!(
        answer,
        Err(OrchestratorError::BatchTooLarge { len: 5, max: 4 })
    );
    // Nothing was queued by any refused batch.
    assert_eq!(client.status(queue).await.counts.total(), 1);

    // A worker with a missing file says so; MissingBlobs answers in the order asked.
    let mut other = descriptor.clone();
    other.files[0].hash = absent;
    let answer = client.ask(OrchestratorRequest::RegisterWorker(other)).await;
    let Ok(OrchestratorReply::WorkerRegistered { missing, .. }) = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(missing, vec![absent]);
    let present = descriptor.files[0].hash;
    let answer = client
        .ask(OrchestratorRequest::MissingBlobs(vec![present, absent]))
        .await;
    assert_eq!(answer, Ok(OrchestratorReply::MissingBlobs(vec![absent])));
    // An invalid worker is refused.
    let mut invalid = descriptor.clone();
    invalid.executable = "/bin/sh".into();
    let answer = client
        .ask(OrchestratorRequest::RegisterWorker(invalid))
        .await;
    assert!(
        matches!(answer, Err(OrchestratorError::InvalidWorker(_))),
        "{answer:?}"
    );
    // GetWorker is for hosts running the worker, not for clients (ORC-36).
    let answer = client.ask(OrchestratorRequest::GetWorker(worker)).await;
    assert!(
        matches!(answer, Err(OrchestratorError::NotPermitted(_))),
        "{answer:?}"
    );
    orch.audit().await.unwrap();
    orch.shutdown().await;
}

// Attests ORC-20 (one action's subscription sees only that action), ORC-25 (only its owner ends it)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_subscription_follows_one_action() {
    let id = identity();
    let (orch, _dir) = orchestrator(&id.orchestrator, |_| {}).await;
    let mut client = Client::connect(&id.client, orch.actor_id()).await;
    let worker = client.register(&worker(&orch).await).await;
    let queue = client.queue(3).await;
    let lsns = client
        .submit(queue, vec![action(worker), action(worker)])
        .await
        .unwrap();
    let target = SubscriptionTarget::Action {
        queue,
        lsn: lsns[1],
    };
    client.subscribe(target).await;
    let _host = FakeHost::start(&id.host, orch.actor_id(), 2, always(Outcome::Complete)).await;
    let mut seen = Vec::new();
    while seen.last() != Some(&Completed) {
        match client.next_event().await {
            ClientEvent::Transition { transition, .. } => {
                assert_eq!(transition.lsn, lsns[1]);
                seen.push(transition.state);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, [Submitting, Running, Completed]);
    // An unknown action cannot be followed; an unknown subscription cannot be ended.
    let answer = client
        .ask(OrchestratorRequest::Subscribe {
            target: SubscriptionTarget::Action {
                queue,
                lsn: Lsn(999),
            },
            subscriber: client.subscriber.clone(),
            from: None,
            events: Default::default(),
        })
        .await;
    assert_eq!(answer, Err(OrchestratorError::UnknownAction(Lsn(999))));
    let answer = client
        .ask(OrchestratorRequest::Unsubscribe { subscription: 999 })
        .await;
    assert_eq!(answer, Err(OrchestratorError::UnknownSubscription(999)));
    // ORC-25: another client cannot end this client's subscription; its owner can.
    let mine = client.subscribe(SubscriptionTarget::Queue(queue)).await;
    let other = Client::connect(&id.client, orch.actor_id()).await;
    let answer = other
        .ask(OrchestratorRequest::Unsubscribe { subscription: mine })
        .await;
    assert_eq!(answer, Err(OrchestratorError::UnknownSubscription(mine)));
    let answer = client
        .ask(OrchestratorRequest::Unsubscribe { subscription: mine })
        .await;
    assert_eq!(answer, Ok(OrchestratorReply::Ack));
    orch.shutdown().await;
}
