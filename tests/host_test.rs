//! A host agent in its own OS process with real proc-agent children, reached by a test client
//! on another address: every route, actions with inputs and outputs through a real runner,
//! and what is left after the host is killed.

mod utils;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use procmesh_protocol::action::{ActionState, Attempt, ExitStatus, Lsn};
use procmesh_protocol::messages::agent::{ActionSpec, AgentError, AgentReply, AgentRequest, Probe};
use procmesh_protocol::messages::host::{HostReply, HostRequest, ProcInfo, ProcStatus, SpawnSpec};
use procmesh_protocol::spec::{ActionDef, InputFile};
use procmesh_protocol::{ActorId, HostAddr, SERVICE_PROC};
use procmesh_transport::{BlobStore, Node, NodeBuilder, RemoteRef};
use utils::*;

const T: Duration = Duration::from_secs(30);

struct Mesh {
    _certs: Certs,
    _state: tempfile::TempDir,
    host_proc: Proc,
    host_addr: HostAddr,
    client: Node,
    store: Arc<BlobStore>,
    host: RemoteRef<HostRequest>,
}

async fn mesh(procs: u32) -> Mesh {
    let certs = Certs::new();
    let state = tempfile::tempdir().unwrap();
    let tls = certs.host_dir();
    let (host_proc, host_addr) = start_host(&[
        "--listen",
        "127.0.0.1:0",
        "--node-name",
        "host-a",
        "--tls-dir",
        tls.to_str().unwrap(),
        "--state-dir",
        state.path().to_str().unwrap(),
        "--procs",
        &procs.to_string(),
    ]);
    let store = BlobStore::open(state.path().join("client-blobs")).unwrap();
    // The test plays the orchestrator: only it (and operators) may spawn procs and reach
    // their agents (HST-16, HST-17).
    let client = NodeBuilder::new("client")
        .quic("127.0.0.2:0".parse().unwrap(), certs.orchestrator.clone())
        .blob_store(store.clone())
        .start()
        .await
        .unwrap();
    let host = client.remote_ref(host_addr.proc(SERVICE_PROC).unwrap().actor("host").unwrap());
    Mesh {
        _certs: certs,
        _state: state,
        host_proc,
        host_addr,
        client,
        store,
        host,
    }
}

async fn spawn(host: &RemoteRef<HostRequest>, name: &str) -> ProcInfo {
    // One slot each: a spawn naming none takes every slot left (HST-25).
    let spec = SpawnSpec {
        name: name.into(),
        config: procmesh_protocol::messages::host::ProcConfig {
            max_actions: Some(1),
            ..Default::default()
        },
    };
    match host.ask(HostRequest::Spawn(spec), T).await.unwrap() {
        Ok(HostReply::Spawned(info)) => info,
        other => panic!("spawn {name}: {other:?}"),
    }
}

fn agent(info: &ProcInfo) -> ActorId {
    info.agent.clone().expect("a ready proc names its agent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_through_one_frontend_address() {
    let m = mesh(0).await;
    let a = spawn(&m.host, "a").await;
    let b = spawn(&m.host, "b").await;
    // Both procs are addressed through the host's one frontend address.
    assert_eq!(a.proc_id.addr(), &m.host_addr);
    assert_eq!(b.proc_id.addr(), &m.host_addr);
    assert_eq!(a.status, ProcStatus::Ready);

    // client ↔ proc
    let agent_a: RemoteRef<AgentRequest> = m.client.remote_ref(agent(&a));
    let agent_b: RemoteRef<AgentRequest> = m.client.remote_ref(agent(&b));
    assert!(
        matches!(agent_a.ask(AgentRequest::Capacity, T).await.unwrap(), Ok(AgentReply::Capacity(c)) if c.max > 0)
    );
    // proc ↔ proc: routed, and refused by the agent (PA-AG-6: only its host and the
    // orchestrator may ask it anything).
    for (from, to) in [(&agent_a, &b), (&agent_b, &a)] {
        match from
            .ask(AgentRequest::Probe(Probe::Agent(agent(to))), T)
            .await
            .unwrap()
        {
            Ok(AgentReply::Probed { answered_by, .. }) => {
                panic!("a proc reached another proc's agent ({answered_by})")
            }
            other => assert!(format!("{other:?}").contains("orbidden"), "{other:?}"),
        }
    }
    // A client certificate reaches neither the host's administration nor an agent.
    let intruder = NodeBuilder::new("intruder")
        .quic("127.0.0.3:0".parse().unwrap(), m._certs.client.clone())
        .start()
        .await
        .unwrap();
    let host_as_client: RemoteRef<HostRequest> = intruder.remote_ref(m.host.id().clone());
    let refused = host_as_client.ask(HostRequest::ListProcs, T).await.unwrap();
    assert!(
        matches!(
            refused,
            Err(procmesh_protocol::messages::host::HostError::Forbidden(_))
        ),
        "{refused:?}"
    );
    let agent_as_client: RemoteRef<AgentRequest> = intruder.remote_ref(agent(&a));
    let unanswered = agent_as_client
        .ask(AgentRequest::Capacity, Duration::from_secs(2))
        .await;
    assert!(
        unanswered.is_err(),
        "a client reached an agent: {unanswered:?}"
    );
    intruder.shutdown(Duration::from_secs(1)).await;
    // proc → service: the host answers — with a refusal, since a proc may not ask its
    // host's status (HST-16), which shows the route works and the rule holds.
    let host_actor = m.host.id().clone();
    match agent_a
        .ask(AgentRequest::Probe(Probe::Host(host_actor.clone())), T)
        .await
        .unwrap()
    {
        Err(AgentError::Unreachable { target, reason }) => {
            assert_eq!(target, host_actor);
            assert!(reason.contains("forbidden"), "{reason}");
        }
        other => panic!("proc-to-service probe: {other:?}"),
    }
    // client ↔ service
    assert!(matches!(
        m.host.ask(HostRequest::Status, T).await.unwrap(),
        Ok(HostReply::Status(_))
    ));
    // service → proc: a polite terminate reaches the agent, which stops and exits 0.
    let req = HostRequest::Terminate {
        name: "b".into(),
        grace_ms: 10_000,
        reason: "test".into(),
    };
    match m.host.ask(req, T).await.unwrap() {
        Ok(HostReply::Terminated { status, .. }) => assert_eq!(status, ExitStatus::Code(0)),
        other => panic!("terminate: {other:?}"),
    }
    // Its route is gone, and the name can be used again.
    let err = agent_b.ask(AgentRequest::Capacity, T).await.unwrap_err();
    assert!(err.is_undeliverable(), "{err}");
    let again = spawn(&m.host, "b").await;
    assert_eq!(again.status, ProcStatus::Ready);
    // A name in use is refused.
    let dup = SpawnSpec {
        name: "a".into(),
        config: Default::default(),
    };
    let err = m
        .host
        .ask(HostRequest::Spawn(dup), T)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), "name_in_use");
}

/// Submits `specs` to `agent`, never more than its free capacity, until all are accepted.
async fn submit_all(agent: &RemoteRef<AgentRequest>, report_to: &ActorId, specs: Vec<ActionSpec>) {
    let mut pending = specs.into_iter();
    let mut next = pending.next();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while let Some(spec) = next.take() {
        assert!(
            std::time::Instant::now() < deadline,
            "submissions did not drain in time"
        );
        let req = AgentRequest::Submit {
            action: spec.clone(),
            report_to: report_to.clone(),
        };
        match agent.ask(req, T).await.unwrap() {
            Ok(AgentReply::Accepted(_)) => next = pending.next(),
            Err(AgentError::NoCapacity { .. }) => {
                next = Some(spec);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => panic!("submit: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_100_actions_with_inputs_through_a_real_proc() {
    let m = mesh(1).await;
    let procs = match m.host.ask(HostRequest::ListProcs, T).await.unwrap() {
        Ok(HostReply::Procs(p)) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(procs.len(), 1, "--procs 1 starts one proc: {procs:?}");
    let agent_ref: RemoteRef<AgentRequest> = m.client.remote_ref(agent(&procs[0]));

    let script = "#!/bin/sh\nset -e\ntr a-z A-Z < in.txt > Outputs/out.txt\necho done\n";
    let worker = script_worker(&m.store, script).await;
    let worker_id = worker.id();
    let failing = script_worker(&m.store, "#!/bin/sh\necho broken >&2\nexit 3\n").await;
    let failing_id = failing.id();
    let orchestrator = FakeOrchestrator::builder()
        .worker(worker_id, worker)
        .worker(failing_id, failing)
        .expose_on(&m.client);
    let seen = orchestrator.seen.clone();
    let report_to = orchestrator.id.clone();

    let mut specs = Vec::new();
    let mut expected = BTreeMap::new();
    for i in 1..=100u64 {
        let text = format!("input number {i}\n");
        let hash = m.store.put_bytes(text.as_bytes()).await.unwrap();
        let upper = m
            .store
            .put_bytes(text.to_uppercase().as_bytes())
            .await
            .unwrap();
        expected.insert(i, upper);
        let mut action = ActionDef::new(worker_id);
        action.inputs = vec![InputFile {
            path: "in.txt".into(),
            hash,
            size: text.len() as u64,
        }];
        specs.push(ActionSpec {
            lsn: Lsn(i),
            attempt: Attempt::FIRST,
            priority: 0,
            queue: 0,
            action,
        });
    }
    specs.push(ActionSpec {
        lsn: Lsn(101),
        attempt: Attempt::FIRST,
        priority: 0,
        queue: 0,
        action: ActionDef::new(failing_id),
    });
    submit_all(&agent_ref, &report_to, specs).await;

    let all_done = wait_until(Duration::from_secs(120), || {
        let seen = seen.lock().unwrap();
        (1..=101).all(|lsn| seen.terminal(lsn).is_some())
    });
    let seen = seen.lock().unwrap();
    assert!(
        all_done,
        "{} of 101 ended",
        (1..=101).filter(|&l| seen.terminal(l).is_some()).count()
    );
    for (lsn, want) in expected {
        let t = seen.terminal(lsn).unwrap();
        assert_eq!(
            t.state,
            ActionState::Completed,
            "action {lsn}: {:?}",
            t.detail
        );
        let outputs = &t.detail.outputs;
        assert_eq!(outputs.len(), 1, "{outputs:?}");
        assert_eq!(outputs[0].path, "out.txt");
        assert_eq!(outputs[0].hash, want, "action {lsn}");
        assert_eq!(t.detail.location.as_ref(), Some(&procs[0].proc_id));
        assert_eq!(
            String::from_utf8_lossy(&t.detail.stdout_tail).trim(),
            "done"
        );
    }
    let failed = seen.terminal(101).unwrap();
    assert_eq!(failed.state, ActionState::Failed);
    assert_eq!(failed.detail.exit, Some(ExitStatus::Code(3)));
    assert!(String::from_utf8_lossy(&failed.detail.stderr_tail).contains("broken"));
    // Every action went Running → terminal, with the proc as location.
    assert!(seen.count_in(ActionState::Running) >= 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_host_leaves_no_proc_agent_or_action_alive() {
    let m = mesh(2).await;
    let procs = match m.host.ask(HostRequest::ListProcs, T).await.unwrap() {
        Ok(HostReply::Procs(p)) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(procs.len(), 2);
    // The script leaves a grandchild behind, in its process group, and then becomes `sleep`.
    let script = "#!/bin/sh\nsleep 1000 &\nexec sleep 1000\n";
    let worker = script_worker(&m.store, script).await;
    let worker_id = worker.id();
    let orchestrator = FakeOrchestrator::builder()
        .worker(worker_id, worker)
        .expose_on(&m.client);
    let seen = orchestrator.seen.clone();
    let report_to = orchestrator.id.clone();
    for (i, info) in procs.iter().enumerate() {
        let agent_ref: RemoteRef<AgentRequest> = m.client.remote_ref(agent(info));
        let action = ActionDef::new(worker_id);
        let spec = ActionSpec {
            lsn: Lsn(i as u64 + 1),
            attempt: Attempt::FIRST,
            priority: 0,
            queue: 0,
            action,
        };
        submit_all(&agent_ref, &report_to, vec![spec]).await;
    }
    assert!(
        wait_until(T, || seen.lock().unwrap().count_in(ActionState::Running)
            == 2),
        "actions did not start"
    );
    let host_pid = m.host_proc.pid();
    let tree = descendants(host_pid);
    assert!(tree.len() >= 6, "host tree: {tree:?}");
    // SIGKILL the host: nothing can clean up from inside it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let gone = wait_until(Duration::from_secs(20), || {
        tree.iter().all(|&pid| {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || procmesh_sys::procfs::is_zombie(pid)
        })
    });
    let alive: Vec<_> = tree
        .iter()
        .filter(|&&pid| {
            std::path::Path::new(&format!("/proc/{pid}")).exists()
                && !procmesh_sys::procfs::is_zombie(pid)
        })
        .map(|pid| {
            (
                pid,
                std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
            )
        })
        .collect();
    assert!(gone, "still alive after the host died: {alive:?}");
}
