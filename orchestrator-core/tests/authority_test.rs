//! The orchestrator's authority table (ORC-33..37), decided by the pure core: for every row, a
//! request from a peer of the wrong role or the wrong node is refused `forbidden` and changes
//! nothing; the right peer is served.

mod utils;

use procmesh_orchestrator_core::authority::node_proof;
use procmesh_orchestrator_core::{Core, Input, Outcome, Peer, PeerRole, Replay, Request};
use procmesh_protocol::messages::orchestrator::{
    OrchestratorError, OrchestratorReply, OrchestratorRequest, QueueRef,
};
use procmesh_protocol::{ActionState, ActorId, AttemptRef, HostAddr, ProcId, Timestamp};
use utils::*;

const SECRET: [u8; 32] = [7; 32];
const BINDING: [u8; 32] = [9; 32];

fn peer(role: PeerRole, addr: HostAddr) -> Peer {
    Peer {
        role,
        cert_name: None,
        addr,
        claim: None,
        proof: None,
        binding: None,
    }
}

/// Host `i` with a shared certificate, claiming node `host-i`, proving `secret`.
fn shared_host(i: usize, secret: [u8; 32]) -> Peer {
    Peer {
        claim: Some(format!("host-{i}")),
        proof: Some(node_proof(&secret, &BINDING)),
        binding: Some(BINDING),
        ..peer(PeerRole::Host, host_addr(i))
    }
}

/// Host `i` with a per-node certificate naming `name`.
fn named_host(i: usize, name: &str) -> Peer {
    Peer {
        cert_name: Some(name.into()),
        ..peer(PeerRole::Host, host_addr(i))
    }
}

fn client() -> Peer {
    peer(PeerRole::Client, HostAddr::Local("client".into()))
}

fn send(
    core: &mut Core,
    message: OrchestratorRequest,
    from: ActorId,
    peer: Peer,
    loopback: bool,
) -> Outcome {
    let input = Input::Request(Request {
        message,
        from,
        loopback,
        token: Some(procmesh_protocol::messages::orchestrator::QueueToken::from_bytes([1; 12])),
        peer: Some(peer),
    });
    core.handle(input, Timestamp(1_000), &TestEnv::default())
}

fn host_service(i: usize) -> ActorId {
    host_addr(i)
        .proc("service")
        .and_then(|p| p.actor("host"))
        .unwrap()
}

fn register(i: usize, secret: [u8; 32]) -> OrchestratorRequest {
    let mut info = host_info(i, 2);
    info.node = format!("host-{i}");
    info.node_secret = Some(hex(&secret));
    OrchestratorRequest::RegisterHost(info)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn assert_forbidden(outcome: &Outcome) {
    match &outcome.reply {
        Some(Err(e @ OrchestratorError::NotPermitted(_))) => assert_eq!(e.code(), "forbidden"),
        other => panic!("expected forbidden, got {other:?}"),
    }
    assert!(!outcome.changed, "a refused request changed state");
    assert!(outcome.effects.is_empty(), "a refused request had effects");
}

/// Refuses `message` from `from`/`peer` and checks that nothing changed.
fn refused(core: &mut Core, message: OrchestratorRequest, from: ActorId, peer: Peer) {
    let before = core.clone();
    let outcome = send(core, message, from, peer, false);
    assert_forbidden(&outcome);
    assert_eq!(*core, before, "state changed");
}

/// A core with hosts 0 and 1 registered (shared certificate, secrets `SECRET`) and one
/// action of a token queue placed and running on proc 0 of host 0.
fn running_mesh() -> (Core, QueueRef, AttemptRef) {
    let mut core = Core::new(config());
    for i in 0..2 {
        let out = send(
            &mut core,
            register(i, SECRET),
            host_service(i),
            shared_host(i, SECRET),
            false,
        );
        assert!(
            matches!(
                out.reply,
                Some(Ok(OrchestratorReply::HostRegistered { .. }))
            ),
            "{:?}",
            out.reply
        );
        let out = send(
            &mut core,
            OrchestratorRequest::Heartbeat(heartbeat(i, &[(0, 1)], vec![])),
            host_service(i),
            shared_host(i, SECRET),
            false,
        );
        assert!(matches!(out.reply, Some(Ok(_))), "{:?}", out.reply);
    }
    let out = send(
        &mut core,
        OrchestratorRequest::CreateQueue(Default::default()),
        client_id(),
        client(),
        false,
    );
    let Some(Ok(OrchestratorReply::QueueCreated { token, .. })) = out.reply else {
        panic!("{:?}", out.reply)
    };
    let queue = QueueRef::Token(token);
    let out = send(
        &mut core,
        OrchestratorRequest::RegisterWorker(worker(1)),
        client_id(),
        client(),
        false,
    );
    assert!(matches!(out.reply, Some(Ok(_))), "{:?}", out.reply);
    let placed = submit_and_place(&mut core, queue);
    let (proc, i) = placement(&core, placed);
    let agent = proc.actor("agent").unwrap();
    let out = send(
        &mut core,
        OrchestratorRequest::ActionUpdate(report(
            placed,
            ActionState::Running,
            &proc,
            Timestamp(1_000),
        )),
        agent,
        shared_host(i, SECRET),
        false,
    );
    assert!(matches!(out.reply, Some(Ok(_))), "{:?}", out.reply);
    (core, queue, placed)
}

/// Submits one action of worker 1 (registered) to `queue` and dispatches: the attempt placed.
fn submit_and_place(core: &mut Core, queue: QueueRef) -> AttemptRef {
    let out = send(
        core,
        OrchestratorRequest::Submit {
            queue,
            actions: vec![action(worker(1).id(), false, None)],
        },
        client_id(),
        client(),
        false,
    );
    assert!(matches!(out.reply, Some(Ok(_))), "{:?}", out.reply);
    let out = core.handle(Input::Dispatch, Timestamp(1_000), &TestEnv::default());
    out.effects
        .iter()
        .find_map(|e| match e {
            procmesh_orchestrator_core::Effect::SubmitBatch { specs, .. } => {
                Some(specs[0].attempt_ref())
            }
            _ => None,
        })
        .expect("the action was placed")
}

/// The proc an attempt is placed on, and the index of its host (0 or 1).
fn placement(core: &Core, attempt: AttemptRef) -> (ProcId, usize) {
    let proc = core
        .book()
        .action(attempt.lsn)
        .unwrap()
        .record
        .location()
        .cloned()
        .unwrap();
    let i = usize::from(proc.addr() != &host_addr(0));
    (proc, i)
}

// Attests ORC-33
#[test]
fn only_a_host_certificate_registers_a_host_and_only_for_its_own_address() {
    let mut core = Core::new(config());
    // A client certificate cannot register a host.
    refused(&mut core, register(0, SECRET), client_id(), client());
    // A host may not register an address its connection does not speak for.
    let mut wrong = shared_host(1, SECRET);
    wrong.claim = Some("host-0".into());
    refused(&mut core, register(0, SECRET), host_service(1), wrong);
    // No secret from a shared certificate: refused.
    let mut info = host_info(0, 2);
    info.node = "host-0".into();
    refused(
        &mut core,
        OrchestratorRequest::RegisterHost(info),
        host_service(0),
        shared_host(0, SECRET),
    );
    // A connection that does not prove the secret it sends: refused.
    refused(
        &mut core,
        register(0, SECRET),
        host_service(0),
        shared_host(0, [8; 32]),
    );
    // The right one binds the node.
    let out = send(
        &mut core,
        register(0, SECRET),
        host_service(0),
        shared_host(0, SECRET),
        false,
    );
    assert!(matches!(
        out.reply,
        Some(Ok(OrchestratorReply::HostRegistered { .. }))
    ));
    // Another secret for the bound node: refused.
    refused(
        &mut core,
        register(0, [8; 32]),
        host_service(0),
        shared_host(0, [8; 32]),
    );
    // The same secret registers again (a restarted host).
    let out = send(
        &mut core,
        register(0, SECRET),
        host_service(0),
        shared_host(0, SECRET),
        false,
    );
    assert!(matches!(
        out.reply,
        Some(Ok(OrchestratorReply::HostRegistered { .. }))
    ));
    // The secret is never shown.
    let out = send(
        &mut core,
        OrchestratorRequest::ListHosts,
        client_id(),
        client(),
        false,
    );
    let Some(Ok(OrchestratorReply::Hosts(hosts))) = out.reply else {
        panic!()
    };
    assert!(hosts.iter().all(|h| h.info.node_secret.is_none()));
    assert_eq!(hosts[0].info.node, "host-0");
}

// Attests ORC-33
#[test]
fn a_per_node_certificate_binds_its_name_and_an_address_keeps_its_node() {
    let mut core = Core::new(config());
    let mut info = host_info(0, 2);
    info.node = "alpha".into();
    // A registration that does not name its certificate's node, or that brings a secret the
    // certificate makes moot: refused (a replay, which has no certificate, would bind
    // something else).
    let mut unnamed = info.clone();
    unnamed.node = String::new();
    refused(
        &mut core,
        OrchestratorRequest::RegisterHost(unnamed),
        host_service(0),
        named_host(0, "alpha"),
    );
    let mut with_secret = info.clone();
    with_secret.node_secret = Some(hex(&SECRET));
    refused(
        &mut core,
        OrchestratorRequest::RegisterHost(with_secret),
        host_service(0),
        named_host(0, "alpha"),
    );
    let out = send(
        &mut core,
        OrchestratorRequest::RegisterHost(info.clone()),
        host_service(0),
        named_host(0, "alpha"),
        false,
    );
    assert!(matches!(out.reply, Some(Ok(_))), "{:?}", out.reply);
    // Another node's certificate claiming the same address: refused.
    refused(
        &mut core,
        OrchestratorRequest::RegisterHost(info.clone()),
        host_service(0),
        named_host(0, "beta"),
    );
    // A registration naming another node than its certificate: refused.
    info.node = "gamma".into();
    refused(
        &mut core,
        OrchestratorRequest::RegisterHost(info),
        host_service(0),
        named_host(0, "alpha"),
    );
}

// Attests ORC-34
#[test]
fn heartbeats_and_lost_procs_come_only_from_the_bound_host() {
    let (mut core, _, _) = running_mesh();
    let beat = || OrchestratorRequest::Heartbeat(heartbeat(0, &[], vec![]));
    // A client; another host; the same host without the proof; a wrong secret.
    refused(&mut core, beat(), host_service(0), client());
    let mut other = shared_host(1, SECRET);
    other.addr = host_addr(0);
    other.claim = Some("host-1".into());
    refused(&mut core, beat(), host_service(0), other);
    let mut unproven = shared_host(0, SECRET);
    unproven.proof = None;
    refused(&mut core, beat(), host_service(0), unproven);
    refused(&mut core, beat(), host_service(0), shared_host(0, [3; 32]));
    let lost = OrchestratorRequest::ProcLost {
        proc_id: proc_id(0, 0),
        reason: "forged".into(),
        status: None,
    };
    refused(
        &mut core,
        lost.clone(),
        host_service(1),
        shared_host(1, SECRET),
    );
    refused(&mut core, lost, host_service(0), client());
}

// Attests ORC-35
#[test]
fn only_the_agent_of_the_proc_an_attempt_is_placed_on_reports_it() {
    let (mut core, _, placed) = running_mesh();
    let (proc, i) = placement(&core, placed);
    let other = 1 - i;
    let done = |p: &ProcId| {
        OrchestratorRequest::ActionUpdate(report(
            placed,
            ActionState::Completed,
            p,
            Timestamp(1_500),
        ))
    };
    // A client reporting a transition, with no token at all.
    refused(
        &mut core,
        done(&proc),
        proc.actor("agent").unwrap(),
        client(),
    );
    // The other host, for a proc of its own or naming the placed proc.
    refused(
        &mut core,
        done(&proc_id(other, 0)),
        agent_id(other, 0),
        shared_host(other, SECRET),
    );
    // Another proc of the right host.
    refused(
        &mut core,
        done(&proc),
        proc_id(i, 5).actor("agent").unwrap(),
        shared_host(i, SECRET),
    );
    // In a batch, the forged transition is skipped and counted.
    let before = core.clone();
    let out = send(
        &mut core,
        OrchestratorRequest::ActionUpdates(vec![report(
            placed,
            ActionState::Completed,
            &proc,
            Timestamp(1_500),
        )]),
        agent_id(i, 5),
        shared_host(i, SECRET),
        false,
    );
    assert_eq!(out.refused, 1);
    assert_eq!(core, before);
    // The agent itself is served.
    let out = send(
        &mut core,
        done(&proc),
        proc.actor("agent").unwrap(),
        shared_host(i, SECRET),
        false,
    );
    assert!(matches!(out.reply, Some(Ok(_))), "{:?}", out.reply);
    assert_eq!(
        core.book().action(placed.lsn).unwrap().record.state(),
        ActionState::Completed
    );
}

// Attests ORC-35, ORC-26
#[test]
fn a_forged_transition_in_a_batch_stays_refused_when_the_journal_is_replayed() {
    let (mut core, queue, placed) = running_mesh();
    // A second action, placed on the other host (each proc has one slot).
    let second = submit_and_place(&mut core, queue);
    let (proc, i) = placement(&core, placed);
    assert_ne!(placement(&core, second).1, i);
    let snapshot = rmp_serde::to_vec_named(&core).expect("a core serialises");

    // The agent of the first action reports it, and in the same batch forges the second.
    let batch = Input::Request(Request {
        message: OrchestratorRequest::ActionUpdates(vec![
            report(placed, ActionState::Completed, &proc, Timestamp(1_500)),
            report(second, ActionState::Completed, &proc, Timestamp(1_500)),
        ]),
        from: proc.actor("agent").unwrap(),
        loopback: false,
        token: None,
        peer: Some(shared_host(i, SECRET)),
    });
    // Journaled as the shell journals it: before it is handled, without its peer.
    let logged: Input =
        rmp_serde::from_slice(&rmp_serde::to_vec_named(&batch).unwrap()).expect("decodes");
    let out = core.handle(batch, Timestamp(1_500), &TestEnv::default());
    assert!(out.changed);
    assert_eq!(out.refused, 1, "the forged transition is refused live");
    let state = |core: &Core, a: AttemptRef| core.book().action(a.lsn).unwrap().record.state();
    assert_eq!(state(&core, placed), ActionState::Completed);
    assert_ne!(state(&core, second), ActionState::Completed);

    // Recovery: the snapshot, then the journaled batch. The forgery stays refused.
    let mut replayed: Core = rmp_serde::from_slice(&snapshot).expect("the snapshot decodes");
    let again = replayed.handle(logged, Timestamp(1_500), &Replay);
    assert_eq!(again.refused, 1);
    assert_ne!(state(&replayed, second), ActionState::Completed);
    assert_eq!(replayed, core, "the replay rebuilds the live state");
}

// Attests ORC-36
#[test]
fn a_worker_is_handed_only_to_a_host_running_it() {
    let (mut core, _, placed) = running_mesh();
    let (proc, i) = placement(&core, placed);
    let id = worker(1).id();
    refused(
        &mut core,
        OrchestratorRequest::GetWorker(id),
        agent_id(1 - i, 0),
        shared_host(1 - i, SECRET),
    );
    refused(
        &mut core,
        OrchestratorRequest::GetWorker(id),
        client_id(),
        client(),
    );
    let out = send(
        &mut core,
        OrchestratorRequest::GetWorker(id),
        proc.actor("agent").unwrap(),
        shared_host(i, SECRET),
        false,
    );
    assert!(
        matches!(out.reply, Some(Ok(OrchestratorReply::Worker(_)))),
        "{:?}",
        out.reply
    );
}

// Attests ORC-37, ORC-15
#[test]
fn client_requests_need_a_client_certificate_and_ids_need_loopback() {
    let (mut core, queue, _) = running_mesh();
    // A host certificate may not act as a client.
    for message in [
        OrchestratorRequest::CreateQueue(Default::default()),
        OrchestratorRequest::QueueStatus(queue),
        OrchestratorRequest::CancelQueue(queue),
        OrchestratorRequest::ListHosts,
    ] {
        refused(&mut core, message, host_service(0), shared_host(0, SECRET));
    }
    // A remote client may not name a queue by its id.
    let before = core.clone();
    let out = send(
        &mut core,
        OrchestratorRequest::QueueStatus(QueueRef::Id(1)),
        client_id(),
        client(),
        false,
    );
    assert!(
        matches!(out.reply, Some(Err(OrchestratorError::Forbidden))),
        "{:?}",
        out.reply
    );
    assert_eq!(core, before);
    // Over loopback it may; with the token from anywhere.
    let out = send(
        &mut core,
        OrchestratorRequest::QueueStatus(QueueRef::Id(1)),
        client_id(),
        client(),
        true,
    );
    assert!(matches!(out.reply, Some(Ok(_))), "{:?}", out.reply);
    let out = send(
        &mut core,
        OrchestratorRequest::QueueStatus(queue),
        client_id(),
        peer(PeerRole::Operator, HostAddr::Local("op".into())),
        false,
    );
    assert!(matches!(out.reply, Some(Ok(_))), "{:?}", out.reply);
}
