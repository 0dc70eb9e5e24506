//! The orchestrator's gate over real QUIC peers: a shared-certificate host that cannot prove a
//! bound node's secret is not admitted for its address (ORC-38), and the blob store serves and
//! takes blobs by role and grant (ORC-39).

mod utils;

use std::time::Duration;

use procmesh_protocol::messages::host::{HostInfo, SystemInfo};
use procmesh_protocol::messages::orchestrator::{
    Heartbeat, OrchestratorError, OrchestratorReply, OrchestratorRequest,
};
use procmesh_protocol::{ActorId, BlobHash, HostAddr};
use procmesh_transport::{BlobError, BlobStore, Node, NodeBuilder, RemoteRef, Role, TlsIdentity};
use utils::*;

const SILENCE: Duration = Duration::from_secs(2);

fn info(addr: &HostAddr, node: &str, secret: &[u8; 32]) -> HostInfo {
    HostInfo {
        addr: addr.clone(),
        capacity: 1,
        labels: Default::default(),
        system: SystemInfo {
            cores: 1,
            memory_bytes: 1 << 30,
            os: "linux".into(),
            hostname: node.into(),
            arch: "x86_64".into(),
        },
        version: "0.1.0".into(),
        node: node.into(),
        node_secret: Some(secret.iter().map(|b| format!("{b:02x}")).collect()),
        isolation: None,
    }
}

async fn shared_host(id: &TlsIdentity, claim_addr: Option<&HostAddr>, secret: [u8; 32]) -> Node {
    let mut builder = NodeBuilder::new("service")
        .quic(loopback(), id.clone())
        .node_claim("n1", Some(secret));
    if let Some(addr) = claim_addr {
        builder = builder.addr(addr.clone());
    }
    builder.start().await.unwrap()
}

/// A fleet-wide host certificate (no node name).
fn fleet_certificate(id: &Ids) -> TlsIdentity {
    id.ca
        .issue(Role::Host, "", &[], Duration::from_secs(3600))
        .unwrap()
}

/// A host on `fleet` registering with `orchestrator` as node n1 with `secret`: the host, its
/// reference to the orchestrator, and the answer.
async fn register_n1(
    fleet: &TlsIdentity,
    orchestrator: ActorId,
    secret: [u8; 32],
) -> (
    Node,
    RemoteRef<OrchestratorRequest>,
    Result<OrchestratorReply, OrchestratorError>,
) {
    let host = shared_host(fleet, None, secret).await;
    let addr = host.addr().clone();
    let orch_ref = host
        .remote_ref::<OrchestratorRequest>(orchestrator)
        .with_sender(host.actor_id("host").unwrap());
    let answer = orch_ref
        .ask(
            OrchestratorRequest::RegisterHost(info(&addr, "n1", &secret)),
            T,
        )
        .await
        .unwrap();
    (host, orch_ref, answer)
}

fn beat(addr: &HostAddr) -> OrchestratorRequest {
    OrchestratorRequest::Heartbeat(Heartbeat {
        addr: addr.clone(),
        procs: Vec::new(),
        running: Vec::new(),
    })
}

// Attests ORC-38
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_certificate_host_must_prove_the_bound_nodes_secret() {
    let id = identity();
    let (orch, _dir) = orchestrator(&id.orchestrator, |_| {}).await;
    let fleet = fleet_certificate(&id);
    let (real, orch_ref, answer) = register_n1(&fleet, orch.actor_id(), [5u8; 32]).await;
    let addr = real.addr().clone();
    assert!(
        matches!(
            answer,
            Ok(OrchestratorReply::HostRegistered {
                ticket_key: Some(_),
                ..
            })
        ),
        "{answer:?}"
    );

    // The same certificate, the same claimed node and address, another secret: not admitted,
    // so it can neither heartbeat for the node nor receive anything meant for it.
    let impostor = shared_host(&fleet, Some(&addr), [6u8; 32]).await;
    let answer = impostor
        .remote_ref::<OrchestratorRequest>(orch.actor_id())
        .with_sender(addr.proc("service").unwrap().actor("host").unwrap())
        .ask(beat(&addr), SILENCE)
        .await;
    assert!(answer.is_err(), "an impostor was admitted: {answer:?}");
    assert!(orch.refusals().get("connection").copied().unwrap_or(0) >= 1);
    // The real node keeps working.
    let answer = orch_ref.ask(beat(&addr), T).await.unwrap();
    assert!(
        matches!(answer, Ok(OrchestratorReply::HeartbeatAck { .. })),
        "{answer:?}"
    );
    impostor.shutdown(Duration::from_millis(100)).await;
    real.shutdown(Duration::from_millis(100)).await;
    orch.shutdown().await;
}

// Attests ORC-38
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_take_a_registered_hosts_address_even_first_after_a_restart() {
    let id = identity();
    let dir = tempfile::tempdir().unwrap();
    let mut config = procmesh_orchestrator::OrchestratorConfig::ephemeral(dir.path());
    config.heartbeat_interval_ms = 100;
    config.lost_after_ms = 5_000;
    let orch = procmesh_orchestrator::Orchestrator::start(config.clone(), id.orchestrator.clone())
        .await
        .unwrap();
    // The journal keeps the fleet's node secrets: only the orchestrator's user reads it.
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let fleet = fleet_certificate(&id);
    let secret = [5u8; 32];
    let (real, _, answer) = register_n1(&fleet, orch.actor_id(), secret).await;
    assert!(answer.is_ok(), "{answer:?}");
    let addr = real.addr().clone();
    let actor = orch.actor_id();
    let HostAddr::Quic(listen) = orch.addr() else {
        panic!("not QUIC")
    };
    real.shutdown(Duration::from_millis(100)).await;
    orch.shutdown().await;
    drop(orch);

    // The orchestrator restarts from its journal; a client claiming the host's address is
    // the first to connect. It is not admitted: it can neither receive the node's dispatches
    // nor be answered as that address.
    config.listen = listen;
    let mut restarted = None;
    for _ in 0..50 {
        // The old endpoint's socket may take a moment to go.
        match procmesh_orchestrator::Orchestrator::start(config.clone(), id.orchestrator.clone())
            .await
        {
            Ok(orch) => {
                restarted = Some(orch);
                break;
            }
            Err(error) => {
                tracing::debug!(%error, "restart");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let orch = restarted.expect("the orchestrator restarts on its address");
    let squatter = NodeBuilder::new("local")
        .quic(loopback(), id.client.clone())
        .addr(addr.clone())
        .start()
        .await
        .unwrap();
    let answer = squatter
        .remote_ref::<OrchestratorRequest>(actor.clone())
        .with_sender(addr.proc("local").unwrap().actor("client").unwrap())
        .ask(OrchestratorRequest::ListHosts, SILENCE)
        .await;
    assert!(
        answer.is_err(),
        "a client squatted a host's address: {answer:?}"
    );
    assert!(orch.refusals().get("connection").copied().unwrap_or(0) >= 1);
    squatter.shutdown(Duration::from_millis(100)).await;

    // The node itself comes back at its address and is served.
    let back = shared_host(&fleet, Some(&addr), secret).await;
    let answer = back
        .remote_ref::<OrchestratorRequest>(actor)
        .with_sender(addr.proc("service").unwrap().actor("host").unwrap())
        .ask(beat(&addr), T)
        .await
        .unwrap();
    assert!(
        matches!(answer, Ok(OrchestratorReply::HeartbeatAck { .. })),
        "{answer:?}"
    );
    back.shutdown(Duration::from_millis(100)).await;
    orch.shutdown().await;
}

// Attests ORC-39
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blob_store_serves_by_role_and_grant() {
    let id = identity();
    let (orch, dir) = orchestrator(&id.orchestrator, |_| {}).await;
    let worker = worker(&orch).await;
    let hash: BlobHash = worker.files[0].hash;
    let node = |who: TlsIdentity, name: &'static str| {
        let store = BlobStore::open(dir.path().join(name)).unwrap();
        async move {
            NodeBuilder::new("local")
                .quic(loopback(), who)
                .blob_store(store)
                .start()
                .await
                .unwrap()
        }
    };
    let from = orch.addr();
    // A host with nothing dispatched to it, and a client without a ticket: refused.
    let host = node(id.host.clone(), "host").await;
    let fetched = host.fetch_blob(&from, hash).await;
    assert!(
        matches!(fetched, Err(BlobError::Forbidden(_))),
        "{fetched:?}"
    );
    let client = node(id.client.clone(), "client").await;
    let fetched = client.fetch_blob(&from, hash).await;
    assert!(
        matches!(fetched, Err(BlobError::Forbidden(_))),
        "{fetched:?}"
    );
    // An operator may; a client may push, a host may not.
    let operator_id = id
        .ca
        .issue(Role::Operator, "", &[], Duration::from_secs(3600))
        .unwrap();
    let operator = node(operator_id, "operator").await;
    operator.fetch_blob(&from, hash).await.unwrap();
    client
        .push_blob(&from, BlobHash::of(b"input"), 5, &b"input"[..])
        .await
        .unwrap();
    let pushed = host
        .push_blob(&from, BlobHash::of(b"junk"), 4, &b"junk"[..])
        .await;
    assert!(
        pushed.is_err(),
        "a host pushed into the orchestrator's store"
    );
    assert!(!orch
        .node()
        .blob_store()
        .unwrap()
        .contains(&BlobHash::of(b"junk")));
    assert!(orch.refusals().get("blob").copied().unwrap_or(0) >= 3);
    // A host an action needing the blob was dispatched to may fetch it.
    let client_actor = Client::connect(&id.client, orch.actor_id()).await;
    let queue = client_actor.queue(0).await;
    let w = client_actor.register(&worker).await;
    let fake = FakeHost::start(&id.host, orch.actor_id(), 1, always(Outcome::Hang)).await;
    client_actor
        .submit(queue, vec![action(w)])
        .await
        .expect("submitted");
    assert!(eventually(T, || async { fake.held() == 1 }).await);
    let granted = NodeBuilder::new("local")
        .quic(loopback(), id.host.clone())
        .blob_store(BlobStore::open(dir.path().join("granted")).unwrap())
        .start()
        .await
        .unwrap();
    granted.fetch_blob(&from, hash).await.unwrap();
    for n in [host, client, operator, granted] {
        n.shutdown(Duration::from_millis(100)).await;
    }
    orch.shutdown().await;
}

// Attests ORC-35 over real QUIC peers: another host cannot report for a host's proc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cannot_report_for_another_hosts_proc() {
    let id = identity();
    let (orch, _dir) = orchestrator(&id.orchestrator, |_| {}).await;
    let client = Client::connect(&id.client, orch.actor_id()).await;
    let queue = client.queue(0).await;
    let w = client.register(&worker(&orch).await).await;
    let a = FakeHost::start(&id.host, orch.actor_id(), 1, always(Outcome::Hang)).await;
    let lsn = client
        .submit(queue, vec![action(w)])
        .await
        .expect("submitted")[0];
    assert!(eventually(T, || async { a.held() == 1 }).await);
    let attempt = a.submits()[0];
    // Host B: its own per-node certificate, registered, with a proc of its own.
    let other = id
        .ca
        .issue(Role::Host, "other", &[], Duration::from_secs(3600))
        .unwrap();
    let b = FakeHost::start(&other, orch.actor_id(), 1, always(Outcome::Hang)).await;
    assert!(
        eventually(T, || async {
            matches!(
                client.ask(OrchestratorRequest::ListHosts).await,
                Ok(OrchestratorReply::Hosts(h)) if h.len() == 2
            )
        })
        .await
    );
    let forged = procmesh_protocol::Transition::new(
        attempt.lsn,
        attempt.attempt,
        procmesh_protocol::ActionState::Completed,
        procmesh_protocol::Timestamp(1),
    );
    for sender in [b.agent.clone(), a.agent.clone()] {
        // From B's connection, as B's agent or naming A's: refused (the transport drops a
        // sender of another address; the core refuses B's own agent).
        let answer = b
            .node
            .remote_ref::<OrchestratorRequest>(orch.actor_id())
            .with_sender(sender)
            .ask(OrchestratorRequest::ActionUpdate(forged.clone()), SILENCE)
            .await;
        assert!(
            matches!(
                &answer,
                Err(_)
                    | Ok(Err(
                        procmesh_protocol::messages::orchestrator::OrchestratorError::NotPermitted(
                            _
                        )
                    ))
            ),
            "{answer:?}"
        );
    }
    let Ok(OrchestratorReply::Action(view)) = client
        .ask(OrchestratorRequest::GetAction { queue, lsn })
        .await
    else {
        panic!("no action")
    };
    assert_ne!(
        view.record.state(),
        procmesh_protocol::ActionState::Completed
    );
    assert!(orch.refusals().get("ActionUpdate").copied().unwrap_or(0) >= 1);
    orch.shutdown().await;
}
