//! Unit tests of the core through its one entry point, [`Core::handle`]: queue access, refused
//! requests, recovery windows and silent attempts.

use std::collections::{BTreeMap, HashSet};

use procmesh_protocol::messages::agent::Capacity;
use procmesh_protocol::messages::host::{HostInfo, SystemInfo};
use procmesh_protocol::messages::orchestrator::{
    Heartbeat, OrchestratorError, OrchestratorReply, OrchestratorRequest, ProcCapacity,
    QueueConfig, QueueRef, QueueToken, SubmitAction, QUEUE_TOKEN_LEN,
};
use procmesh_protocol::spec::{ActionDef, WorkerDescriptor, WorkerFile, WorkerId};
use procmesh_protocol::{
    ActionState, ActorId, AttemptRef, BlobHash, HostAddr, Lsn, Timestamp, Transition,
};

use crate::{Answer, Core, CoreConfig, Effect, Env, Input, Outcome, Replay, Request};

/// An environment that has every blob but `missing`, and follows every queue.
#[derive(Default)]
pub(crate) struct World {
    missing: HashSet<BlobHash>,
}

impl Env for World {
    fn has_blob(&self, hash: &BlobHash) -> bool {
        !self.missing.contains(hash)
    }

    fn follows(&self, _: u64) -> bool {
        true
    }
}

pub(crate) fn client() -> ActorId {
    HostAddr::Local("client".into())
        .proc("local")
        .unwrap()
        .actor("client")
        .unwrap()
}

pub(crate) fn request(message: OrchestratorRequest, loopback: bool) -> Input {
    Input::Request(Request {
        message,
        from: client(),
        loopback,
        token: None,
        peer: None,
    })
}

pub(crate) fn ask(
    core: &mut Core,
    message: OrchestratorRequest,
    loopback: bool,
    now: u64,
) -> Outcome {
    core.handle(
        request(message, loopback),
        Timestamp(now),
        &World::default(),
    )
}

pub(crate) fn answer(outcome: &Outcome) -> Answer {
    outcome.reply.clone().expect("a reply")
}

pub(crate) fn token(n: u8) -> QueueToken {
    QueueToken::from_bytes([n; QUEUE_TOKEN_LEN])
}

pub(crate) fn create_queue(core: &mut Core, n: u8) -> (u64, QueueToken) {
    let input = Input::Request(Request {
        message: OrchestratorRequest::CreateQueue(QueueConfig::default()),
        from: client(),
        loopback: false,
        token: Some(token(n)),
        peer: None,
    });
    let outcome = core.handle(input, Timestamp(0), &World::default());
    assert!(outcome.changed);
    match answer(&outcome) {
        Ok(OrchestratorReply::QueueCreated { id, token }) => (id, token),
        other => panic!("{other:?}"),
    }
}

pub(crate) fn descriptor() -> WorkerDescriptor {
    WorkerDescriptor {
        executable: "run.sh".into(),
        files: vec![WorkerFile {
            path: "run.sh".into(),
            hash: BlobHash::of(b"#!/bin/sh\n"),
            size: 10,
            executable: true,
        }],
        directories: Vec::new(),
        env: BTreeMap::new(),
        host_program: None,
    }
}

pub(crate) fn register_worker(core: &mut Core) -> WorkerId {
    let outcome = ask(
        core,
        OrchestratorRequest::RegisterWorker(descriptor()),
        false,
        0,
    );
    match answer(&outcome) {
        Ok(OrchestratorReply::WorkerRegistered { id, .. }) => id,
        other => panic!("{other:?}"),
    }
}

pub(crate) fn submit(
    core: &mut Core,
    queue: QueueToken,
    worker: WorkerId,
    n: usize,
    now: u64,
) -> Vec<Lsn> {
    let actions = (0..n)
        .map(|_| SubmitAction {
            action: ActionDef::new(worker),
            priority: None,
            idempotency_key: None,
        })
        .collect();
    let outcome = ask(
        core,
        OrchestratorRequest::Submit {
            queue: QueueRef::Token(queue),
            actions,
        },
        false,
        now,
    );
    match answer(&outcome) {
        Ok(OrchestratorReply::Submitted { lsns }) => lsns,
        other => panic!("{other:?}"),
    }
}

pub(crate) fn host() -> HostAddr {
    HostAddr::Local("host-a".into())
}

pub(crate) fn info() -> HostInfo {
    HostInfo {
        addr: host(),
        capacity: 2,
        labels: BTreeMap::new(),
        system: SystemInfo {
            cores: 2,
            memory_bytes: 1 << 30,
            os: "linux".into(),
            hostname: "a".into(),
            arch: "x86_64".into(),
        },
        version: "0.1.0".into(),
        node: String::new(),
        node_secret: None,
        isolation: None,
    }
}

pub(crate) fn heartbeat(running: Vec<AttemptRef>) -> OrchestratorRequest {
    OrchestratorRequest::Heartbeat(Heartbeat {
        addr: host(),
        procs: vec![ProcCapacity {
            agent: host().proc("p1").unwrap().actor("agent").unwrap(),
            capacity: Capacity { max: 4, free: 4 },
            restarts: 0,
        }],
        running,
    })
}

pub(crate) fn state(core: &Core, lsn: Lsn) -> ActionState {
    core.book().action(lsn).unwrap().record.state()
}

// Attests ORC-15
#[test]
fn queue_ids_only_from_loopback_tokens_from_anywhere() {
    let mut core = Core::new(CoreConfig::default());
    let (id, token) = create_queue(&mut core, 1);
    let status = |core: &mut Core, queue, loopback| {
        answer(&ask(
            core,
            OrchestratorRequest::QueueStatus(queue),
            loopback,
            1,
        ))
    };
    assert_eq!(
        status(&mut core, QueueRef::Id(id), false),
        Err(OrchestratorError::Forbidden)
    );
    assert_eq!(
        status(&mut core, QueueRef::Id(id + 7), false),
        Err(OrchestratorError::Forbidden),
        "whether or not the queue exists"
    );
    assert!(matches!(
        status(&mut core, QueueRef::Id(id), true),
        Ok(OrchestratorReply::QueueStatus(_))
    ));
    assert!(matches!(
        status(&mut core, QueueRef::Token(token), false),
        Ok(OrchestratorReply::QueueStatus(_))
    ));
    assert!(matches!(
        status(&mut core, QueueRef::Token(self::token(9)), false),
        Err(OrchestratorError::UnknownQueue(_))
    ));
}

// Attests ORC-23, ORC-26: a refused request changes nothing, so it is not journaled, and sends
// nothing.
#[test]
fn refused_requests_change_nothing_and_send_nothing() {
    let mut core = Core::new(CoreConfig::default());
    let (_, token) = create_queue(&mut core, 1);
    let worker = register_worker(&mut core);
    let unknown = WorkerId::from_bytes([3; 32]);
    let mut with_missing_input = ActionDef::new(worker);
    with_missing_input
        .inputs
        .push(procmesh_protocol::InputFile {
            path: "in.txt".into(),
            hash: BlobHash::of(b"nowhere"),
            size: 7,
        });
    let world = World {
        missing: [BlobHash::of(b"nowhere")].into_iter().collect(),
    };
    for actions in [
        vec![ActionDef::new(unknown)],
        vec![ActionDef::new(worker), with_missing_input],
    ] {
        let actions = actions
            .into_iter()
            .map(|action| SubmitAction {
                action,
                priority: None,
                idempotency_key: None,
            })
            .collect();
        let input = request(
            OrchestratorRequest::Submit {
                queue: QueueRef::Token(token),
                actions,
            },
            false,
        );
        let outcome = core.handle(input, Timestamp(5), &world);
        assert!(answer(&outcome).is_err());
        assert!(!outcome.changed);
        assert!(outcome.effects.is_empty(), "{:?}", outcome.effects);
    }
    assert_eq!(core.book().len(), 0);
    // A queue is never created without a drawn token.
    let outcome = ask(
        &mut core,
        OrchestratorRequest::CreateQueue(QueueConfig::default()),
        true,
        5,
    );
    assert!(matches!(
        answer(&outcome),
        Err(OrchestratorError::Internal(_))
    ));
    assert!(!outcome.changed);
    // Reads never change state.
    let outcome = ask(&mut core, OrchestratorRequest::ListHosts, true, 5);
    assert!(!outcome.changed);
}

/// A core with one host of one proc (4 slots) and `n` actions placed on it at time 1000.
pub(crate) fn placed(n: usize) -> (Core, Vec<Lsn>) {
    let mut core = Core::new(CoreConfig::default());
    let (_, token) = create_queue(&mut core, 1);
    let worker = register_worker(&mut core);
    assert!(
        ask(
            &mut core,
            OrchestratorRequest::RegisterHost(info()),
            false,
            900
        )
        .changed
    );
    assert!(answer(&ask(&mut core, heartbeat(Vec::new()), false, 950)).is_ok());
    let lsns = submit(&mut core, token, worker, n, 960);
    let outcome = core.handle(Input::Dispatch, Timestamp(1_000), &World::default());
    assert!(outcome.changed);
    assert!(outcome
        .effects
        .iter()
        .any(|e| matches!(e, Effect::SubmitBatch { specs, .. } if specs.len() == n)));
    for lsn in &lsns {
        assert_eq!(state(&core, *lsn), ActionState::Submitting);
    }
    (core, lsns)
}

pub(crate) fn attempt(lsn: Lsn) -> AttemptRef {
    AttemptRef {
        lsn,
        attempt: procmesh_protocol::Attempt::FIRST,
    }
}

// Attests ORC-28
#[test]
fn an_attempt_its_host_stops_mentioning_is_abandoned_then_retried() {
    let (mut core, lsns) = placed(2);
    let (a, b) = (lsns[0], lsns[1]);
    // Just placed: a heartbeat that does not mention it yet is no evidence.
    ask(&mut core, heartbeat(vec![attempt(a)]), false, 1_500);
    assert_eq!(state(&core, b), ActionState::Submitting);
    // Missing from one heartbeat past the interval: noted, not yet abandoned.
    ask(&mut core, heartbeat(vec![attempt(a)]), false, 2_100);
    assert_eq!(state(&core, b), ActionState::Submitting);
    // Missing again a full interval later: abandoned and back to Pending as attempt 2.
    let outcome = ask(&mut core, heartbeat(vec![attempt(a)]), false, 3_100);
    assert!(outcome.changed);
    let record = &core.book().action(b).unwrap().record;
    assert_eq!(record.state(), ActionState::Pending);
    assert_eq!(record.attempt().get(), 2);
    assert!(outcome.effects.iter().any(|e| matches!(
        e,
        Effect::Publish { transition, .. }
            if transition.lsn == b && transition.state == ActionState::Abandoned
    )));
    // The one it keeps mentioning stays placed.
    assert_eq!(state(&core, a), ActionState::Submitting);
    ask(&mut core, heartbeat(vec![attempt(a)]), false, 9_000);
    assert_eq!(state(&core, a), ActionState::Submitting);
}

// Attests ORC-28: a mention in between resets the count.
#[test]
fn a_mention_between_two_silences_keeps_the_attempt() {
    let (mut core, lsns) = placed(1);
    let a = lsns[0];
    ask(&mut core, heartbeat(Vec::new()), false, 2_100);
    ask(&mut core, heartbeat(vec![attempt(a)]), false, 2_600);
    ask(&mut core, heartbeat(Vec::new()), false, 3_200);
    assert_eq!(state(&core, a), ActionState::Submitting);
    // Its report is applied once; the same report again changes nothing (ORC-29).
    let running = Transition::new(
        a,
        procmesh_protocol::Attempt::FIRST,
        ActionState::Running,
        Timestamp(3_300),
    );
    let first = ask(
        &mut core,
        OrchestratorRequest::ActionUpdate(running.clone()),
        false,
        3_300,
    );
    assert!(first.changed);
    let again = ask(
        &mut core,
        OrchestratorRequest::ActionUpdate(running),
        false,
        3_301,
    );
    assert!(!again.changed, "a re-sent report is harmless");
    assert_eq!(state(&core, a), ActionState::Running);
}

// Attests ORC-27, ORC-26
#[test]
fn a_replayed_core_gives_its_hosts_a_fresh_window() {
    let (mut live, lsns) = placed(2);
    let mut log: Vec<(Timestamp, Input)> = Vec::new();
    // Rebuild the same state by replaying inputs: the journal of `placed`.
    let mut replayed = Core::new(CoreConfig::default());
    let mut feed = |core: &mut Core, input: Input, now: u64| {
        let outcome = core.handle(input.clone(), Timestamp(now), &Replay);
        if outcome.changed {
            log.push((Timestamp(now), input));
        }
    };
    feed(
        &mut replayed,
        Input::Request(Request {
            message: OrchestratorRequest::CreateQueue(QueueConfig::default()),
            from: client(),
            loopback: false,
            token: Some(token(1)),
            peer: None,
        }),
        0,
    );
    feed(
        &mut replayed,
        request(OrchestratorRequest::RegisterWorker(descriptor()), false),
        0,
    );
    feed(
        &mut replayed,
        request(OrchestratorRequest::RegisterHost(info()), false),
        900,
    );
    feed(&mut replayed, request(heartbeat(Vec::new()), false), 950);
    let worker = descriptor().id();
    feed(
        &mut replayed,
        request(
            OrchestratorRequest::Submit {
                queue: QueueRef::Token(token(1)),
                actions: (0..2)
                    .map(|_| SubmitAction {
                        action: ActionDef::new(worker),
                        priority: None,
                        idempotency_key: None,
                    })
                    .collect(),
            },
            false,
        ),
        960,
    );
    feed(&mut replayed, Input::Dispatch, 1_000);
    for lsn in &lsns {
        assert_eq!(state(&replayed, *lsn), state(&live, *lsn));
        assert_eq!(
            replayed.book().action(*lsn).unwrap().record.location(),
            live.book().action(*lsn).unwrap().record.location(),
        );
    }
    replayed.audit().unwrap();
    // Long after the last heartbeat (a restart took a while): without a fresh window the host
    // would be lost at once; with one it keeps its placed attempts.
    let now = 60_000;
    let mut without = live.clone();
    without.handle(Input::Tick, Timestamp(now), &World::default());
    assert_eq!(
        state(&without, lsns[0]),
        ActionState::Pending,
        "lost, retried"
    );
    replayed.handle(Input::Recovered, Timestamp(now), &World::default());
    replayed.handle(Input::Tick, Timestamp(now + 100), &World::default());
    assert_eq!(state(&replayed, lsns[0]), ActionState::Submitting);
    live.handle(Input::Recovered, Timestamp(now), &World::default());
    assert_eq!(log.len(), 6);
}

/// The `CreateQueue` input of [`create_queue`] for token `n` (for journals in tests).
pub(crate) fn create_input(n: u8) -> Input {
    Input::Request(Request {
        message: OrchestratorRequest::CreateQueue(QueueConfig::default()),
        from: client(),
        loopback: false,
        token: Some(token(n)),
        peer: None,
    })
}
