//! Issue 9's attacks, replayed against a real mesh — an orchestrator and a host as OS processes
//! on 127.0.0.1 — by a peer holding nothing but a client certificate of the mesh CA. Each
//! attack is refused, and the victim's work and the mesh's state are unchanged.

mod utils;

use std::time::{Duration, Instant};

use procmesh_client::{Client, ClientConfig, WorkerBuilder};
use procmesh_protocol::messages::agent::{AgentRequest, Probe};
use procmesh_protocol::messages::host::{HostError, HostInfo, HostRequest, SpawnSpec, SystemInfo};
use procmesh_protocol::messages::orchestrator::{
    Heartbeat, OrchestratorError, OrchestratorReply, OrchestratorRequest, QueueConfig, QueueRef,
    SubmitAction,
};
use procmesh_protocol::spec::{ActionDef, WorkerId};
use procmesh_protocol::{
    ActionState, ActorId, ExitStatus, HostAddr, ProcId, Timestamp, Transition, TransitionDetail,
    SERVICE_PROC,
};
use procmesh_transport::{BlobError, Node, NodeBuilder, TlsIdentity};
use utils::admin::metric;
use utils::{start_mesh_host, start_orchestrator, Certs, Proc};

const T: Duration = Duration::from_secs(20);
/// How long an ask that must go unanswered is given.
const SILENCE: Duration = Duration::from_secs(2);

struct Mesh {
    certs: Certs,
    dir: tempfile::TempDir,
    orchestrator: ActorId,
    host: HostAddr,
    host_admin: String,
    revoked: std::path::PathBuf,
    _procs: Vec<Proc>,
}

fn start_mesh() -> Mesh {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let revoked = dir.path().join("revoked.txt");
    std::fs::write(&revoked, "# revoked certificate serials\n").unwrap();
    let revoked_flag = revoked.to_str().unwrap().to_owned();
    let (orch, orchestrator) = start_orchestrator(
        &certs,
        "127.0.0.1:0",
        &dir.path().join("orchestrator"),
        &["--heartbeat-interval-ms", "200", "--revoked", &revoked_flag],
    );
    let (host_proc, host, host_admin) = start_mesh_host(
        &certs,
        "127.0.0.1:0",
        &dir.path().join("host-a"),
        &orchestrator,
        (1, 2),
        &["--revoked", &revoked_flag],
    );
    Mesh {
        host,
        host_admin,
        certs,
        dir,
        orchestrator,
        revoked,
        _procs: vec![orch, host_proc],
    }
}

impl Mesh {
    async fn client(&self, id: &TlsIdentity, name: &str) -> Client {
        let mut config = ClientConfig::new(self.orchestrator.clone(), id.clone());
        config.bind = Some("127.0.0.1:0".parse().unwrap());
        config.cache_dir = Some(self.dir.path().join(format!("cache-{name}")));
        Client::connect(config).await.expect("client connects")
    }

    fn host_actor(&self) -> ActorId {
        self.host.proc(SERVICE_PROC).unwrap().actor("host").unwrap()
    }
}

/// A bare QUIC node holding `id`, as an attacker writes one.
async fn node(id: &TlsIdentity, builder: impl FnOnce(NodeBuilder) -> NodeBuilder) -> Node {
    builder(NodeBuilder::new("local").quic("127.0.0.1:0".parse().unwrap(), id.clone()))
        .start()
        .await
        .unwrap()
}

async fn script(client: &Client, body: &str) -> WorkerId {
    client
        .register_worker(
            &WorkerBuilder::new()
                .bytes("run.sh", format!("#!/bin/sh\n{body}\n").into_bytes(), true)
                .executable("run.sh")
                .env("PATH", "/usr/bin:/bin"),
        )
        .await
        .expect("worker registered")
}

fn action(worker: WorkerId) -> SubmitAction {
    let mut action = ActionDef::new(worker);
    action.env.insert("SECRET".into(), "hunter2".into());
    SubmitAction {
        action,
        priority: None,
        idempotency_key: None,
    }
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn forbidden<T: std::fmt::Debug>(answer: &Result<T, OrchestratorError>) -> bool {
    matches!(answer, Err(e) if e.code() == "forbidden")
}

fn serial(id: &TlsIdentity) -> String {
    id.identity().unwrap().serial
}

// Attests ORC-33, ORC-34, ORC-35, ORC-37, ORC-40, HST-16, HST-17, HST-22, NODE-6, NODE-7, TLS-6
// against real processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_can_neither_act_as_a_host_nor_reach_hosts_and_procs() {
    let mesh = start_mesh();
    let victim = mesh.client(&mesh.certs.client, "victim").await;
    wait_for("the host's proc", async || {
        victim
            .hosts()
            .await
            .is_ok_and(|h| h.iter().flat_map(|h| &h.procs).count() == 1)
    })
    .await;
    let hosts_before = victim.hosts().await.unwrap();
    let host_view = &hosts_before[0];
    let agent = host_view.procs[0].agent.clone();
    let proc: ProcId = agent.proc_id().clone();

    // The victim runs one action that waits, and one that writes an output.
    let queue = victim.create_queue(QueueConfig::default()).await.unwrap();
    let waiting = script(&victim, "sleep 30").await;
    let writer = script(&victim, "echo secret output > Outputs/out.txt").await;
    let running = queue.submit(vec![action(waiting)]).await.unwrap()[0];
    let done = queue.submit(vec![action(writer)]).await.unwrap()[0];
    wait_for("the first action to run", async || {
        queue
            .action(running)
            .await
            .is_ok_and(|v| v.record.state() == ActionState::Running)
    })
    .await;
    wait_for("the second action to finish", async || {
        queue.result(done).await.is_ok_and(|r| r.is_some())
    })
    .await;
    let result = queue.result(done).await.unwrap().unwrap();
    assert_eq!(result.record.exit(), Some(ExitStatus::Code(0)));
    let output = result.outputs[0].clone();
    assert_eq!(result.tickets.len(), 1, "every output carries a ticket");
    let attempt = queue.action(running).await.unwrap().record.attempt();

    // The attacker holds a client certificate of its own from the mesh CA.
    let mallory = mesh
        .certs
        .ca
        .issue(procmesh_transport::Role::Client, "", &[], T * 10)
        .unwrap();
    let loot = procmesh_transport::BlobStore::open(mesh.dir.path().join("mallory-blobs")).unwrap();
    let attacker = node(&mallory, |b| b.blob_store(loot)).await;
    let me = attacker.actor_id("mallory").unwrap();
    let orch = attacker
        .remote_ref::<OrchestratorRequest>(mesh.orchestrator.clone())
        .with_sender(me.clone());

    // 1. A fake host: registration and heartbeats are refused; the host list is unchanged.
    let fake = HostInfo {
        addr: attacker.addr().clone(),
        capacity: 64,
        labels: Default::default(),
        system: SystemInfo {
            cores: 64,
            memory_bytes: 1 << 40,
            os: "linux".into(),
            hostname: "mallory".into(),
            arch: "x86_64".into(),
        },
        version: "0.1.0".into(),
        node: "mallory".into(),
        node_secret: Some("00".repeat(32)),
        isolation: None,
    };
    let answer = orch
        .ask(OrchestratorRequest::RegisterHost(fake), T)
        .await
        .unwrap();
    assert!(forbidden(&answer), "{answer:?}");
    let beat = Heartbeat {
        addr: mesh.host.clone(),
        procs: Vec::new(),
        running: Vec::new(),
    };
    let answer = orch
        .ask(OrchestratorRequest::Heartbeat(beat), T)
        .await
        .unwrap();
    assert!(forbidden(&answer), "{answer:?}");

    // 2. A forged `Completed` for the victim's running action, with no token at all.
    let detail = TransitionDetail {
        exit: Some(ExitStatus::Code(0)),
        stdout_tail: b"forged".to_vec(),
        ..Default::default()
    };
    let forged =
        Transition::new(running, attempt, ActionState::Completed, Timestamp(1)).with_detail(detail);
    let answer = orch
        .ask(OrchestratorRequest::ActionUpdate(forged.clone()), T)
        .await
        .unwrap();
    assert!(forbidden(&answer), "{answer:?}");
    let answer = orch
        .ask(OrchestratorRequest::ActionUpdates(vec![forged]), T)
        .await
        .unwrap();
    assert!(forbidden(&answer), "{answer:?}");

    // 3. The proc marked lost.
    let lost = OrchestratorRequest::ProcLost {
        proc_id: proc.clone(),
        status: None,
        reason: "forged".into(),
    };
    let answer = orch.ask(lost, T).await.unwrap();
    assert!(forbidden(&answer), "{answer:?}");

    // 4. The host's administration: spawn (with an environment of its choosing), kill, list,
    //    status — all forbidden, and the proc table is unchanged.
    let host = attacker
        .remote_ref::<HostRequest>(mesh.host_actor())
        .with_sender(me.clone());
    let mut spec = SpawnSpec {
        name: "evil".into(),
        config: Default::default(),
    };
    spec.config
        .env
        .insert("LD_PRELOAD".into(), "/tmp/evil.so".into());
    for request in [
        HostRequest::Spawn(spec),
        HostRequest::Kill {
            name: proc.name().to_owned(),
        },
        HostRequest::TerminateAll {
            grace_ms: 0,
            reason: "forged".into(),
            max_concurrent: 0,
        },
        HostRequest::ListProcs,
        HostRequest::Status,
    ] {
        let answer = host.ask(request, T).await.unwrap();
        assert!(matches!(answer, Err(HostError::Forbidden(_))), "{answer:?}");
    }
    let operator = node(&mesh.certs.operator, |b| b).await;
    let procs = operator
        .remote_ref::<HostRequest>(mesh.host_actor())
        .ask(HostRequest::ListProcs, T)
        .await
        .unwrap();
    let Ok(procmesh_protocol::messages::host::HostReply::Procs(procs)) = procs else {
        panic!("an operator lists the procs: {procs:?}")
    };
    assert_eq!(procs.len(), 1, "the proc table is unchanged: {procs:?}");

    // 5. The proc agent through the host: no answer.
    let agent_ref = attacker
        .remote_ref::<AgentRequest>(agent.clone())
        .with_sender(me.clone());
    for request in [
        AgentRequest::Status,
        AgentRequest::Capacity,
        AgentRequest::Probe(Probe::Host(mesh.host_actor())),
    ] {
        let answer = agent_ref.ask(request, SILENCE).await;
        assert!(answer.is_err(), "a client reached the agent: {answer:?}");
    }

    // 6. A queue by integer id, relayed through the host: the host relays nothing (it drops
    //    and counts the envelope, NODE-6), so the orchestrator never judges a relayed sender.
    let relays = "procmesh_host_transport_refused{reason=\"relay\"}";
    let relays_before = metric(&mesh.host_admin, relays);
    let relayed = node(&mallory, |b| b.default_route(mesh.host.clone())).await;
    let answer = relayed
        .remote_ref::<OrchestratorRequest>(mesh.orchestrator.clone())
        .ask(OrchestratorRequest::QueueStatus(QueueRef::Id(1)), SILENCE)
        .await;
    assert!(
        answer.is_err(),
        "a relayed request was answered: {answer:?}"
    );
    assert!(
        metric(&mesh.host_admin, relays) > relays_before,
        "the host did not count the relay it refused"
    );
    // And directly from 127.0.0.1 it is loopback, so it is served: the id check is the
    // connection's own.
    let answer = orch
        .ask(OrchestratorRequest::QueueStatus(QueueRef::Id(1)), T)
        .await
        .unwrap();
    assert!(
        matches!(answer, Ok(OrchestratorReply::QueueStatus(_))),
        "{answer:?}"
    );

    // 7. Another queue's output from the host by hash: refused without its ticket, and a
    //    ticket for another blob does not open it.
    let fetched = attacker.fetch_blob(&mesh.host, output.hash).await;
    assert!(
        matches!(fetched, Err(BlobError::Forbidden(_))),
        "{fetched:?}"
    );
    let mut wrong = result.tickets[0];
    wrong.hash = procmesh_protocol::BlobHash::of(b"another blob");
    let fetched = attacker
        .fetch_blob_with(&mesh.host, output.hash, Some(wrong))
        .await;
    assert!(
        matches!(fetched, Err(BlobError::Forbidden(_))),
        "{fetched:?}"
    );
    // The victim downloads it with the ticket its result carries.
    let out = mesh.dir.path().join("download");
    let path = victim.download(&result, &output, &out).await.unwrap();
    assert_eq!(std::fs::read_to_string(path).unwrap(), "secret output\n");

    // 8. Claiming the host's address: the connection is refused.
    let impostor = node(&mallory, |b| b.addr(mesh.host.clone())).await;
    let answer = impostor
        .remote_ref::<OrchestratorRequest>(mesh.orchestrator.clone())
        .ask(OrchestratorRequest::ListHosts, SILENCE)
        .await;
    assert!(
        answer.is_err(),
        "a peer claiming the host's address was served: {answer:?}"
    );

    // Nothing changed: the action still runs, the hosts are the same.
    let view = queue.action(running).await.unwrap();
    assert_eq!(view.record.state(), ActionState::Running);
    assert_eq!(view.record.attempt(), attempt);
    let hosts_after = victim.hosts().await.unwrap();
    assert_eq!(hosts_after.len(), 1);
    assert_eq!(hosts_after[0].info.addr, mesh.host);
    assert_eq!(hosts_after[0].procs.len(), 1);

    // 9. Revocation: the attacker's serial goes into the file; its open connection closes
    //    within seconds and it cannot connect again. The victim keeps working.
    let mut list = std::fs::read_to_string(&mesh.revoked).unwrap();
    list.push_str(&serial(&mallory));
    list.push('\n');
    std::fs::write(&mesh.revoked, list).unwrap();
    wait_for("the revoked connection to close", async || {
        orch.ask(OrchestratorRequest::ListHosts, SILENCE)
            .await
            .is_err()
    })
    .await;
    let fresh = node(&mallory, |b| b).await;
    let answer = fresh
        .remote_ref::<OrchestratorRequest>(mesh.orchestrator.clone())
        .ask(OrchestratorRequest::ListHosts, SILENCE)
        .await;
    assert!(
        answer.is_err(),
        "a revoked certificate was served: {answer:?}"
    );
    assert_eq!(
        victim.hosts().await.unwrap().len(),
        1,
        "the victim keeps working"
    );
    queue.cancel().await.unwrap();
    victim.close().await;

    for n in [attacker, operator, relayed, impostor, fresh] {
        n.shutdown(Duration::from_millis(200)).await;
    }
}

// Attests NODE-10 against a real orchestrator process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_one_identitys_limit_are_refused_while_the_mesh_serves() {
    let mesh = start_mesh();
    let flood = mesh
        .certs
        .ca
        .issue(procmesh_transport::Role::Client, "", &[], T * 10)
        .unwrap();
    let mut nodes = Vec::new();
    let mut served = 0;
    for _ in 0..300 {
        let n = node(&flood, |b| b).await;
        let answer = n
            .remote_ref::<OrchestratorRequest>(mesh.orchestrator.clone())
            .ask(OrchestratorRequest::ListHosts, SILENCE)
            .await;
        if answer.is_ok() {
            served += 1;
        }
        nodes.push(n);
    }
    // The default limit per identity is 64 connections.
    assert!(
        (1..=64).contains(&served),
        "{served} of 300 connections were served"
    );
    // Another identity is still served (`procmesh hosts`).
    let output = std::process::Command::new(utils::procmesh_bin())
        .args([
            "hosts",
            "--orchestrator",
            &mesh.orchestrator.to_string(),
            "--tls-dir",
        ])
        .arg(mesh.certs.tls_dir(procmesh_transport::Role::Operator))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "procmesh hosts: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(&mesh.host.to_string()));
    for n in nodes {
        n.shutdown(Duration::from_millis(50)).await;
    }
}
