//! The host agent with in-process procs: spawn and readiness, routing through the frontend,
//! names, terminate/kill, bulk terminate, readiness failures, the local proc, blobs.

mod utils;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use procmesh_host::{Host, HostConfig, ProcManager};
use procmesh_protocol::messages::{
    AgentReply, AgentRequest, Capacity, HostError, HostReply, HostRequest, ProcConfig, ProcReady,
    ProcStatus, SpawnSpec,
};
use procmesh_protocol::{ActorId, BlobHash, ExitStatus, RemoteError};
use procmesh_transport::{BlobStore, NodeBuilder, SendFailure};
use utils::{eventually, quic_node, test_host, test_host_with, T};

fn spec(name: &str) -> SpawnSpec {
    SpawnSpec {
        name: name.to_owned(),
        // One slot: a spawn naming none takes every slot left (HST-25).
        config: ProcConfig {
            max_actions: Some(1),
            ..ProcConfig::default()
        },
    }
}

fn spec_timeout(name: &str, ready_timeout_ms: u64) -> SpawnSpec {
    SpawnSpec {
        name: name.to_owned(),
        config: ProcConfig {
            ready_timeout_ms: Some(ready_timeout_ms),
            max_actions: Some(1),
            ..ProcConfig::default()
        },
    }
}

fn routed(host: &Host, name: &str) -> bool {
    host.node().proc_routes().iter().any(|r| r == name)
}

// Attests HST-2 (success), the bootstrap env contract for in-process procs
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_proc_is_ready_and_reached_through_the_frontend() {
    let t = test_host(|_| {}).await;
    let handle = t.host.spawn(spec("w1")).await.unwrap();
    let ready = handle.ready().await.unwrap();
    assert_eq!(handle.status(), ProcStatus::Ready);
    assert_eq!(
        ready.agent.to_string(),
        format!("{},w1.agent", t.host.addr())
    );
    assert_eq!(ready.addr, *t.host.addr());
    assert_eq!(ready.pid, std::process::id());
    assert_eq!(handle.pid(), None);
    assert!(routed(&t.host, "w1"));
    assert_eq!(
        t.tracker.answers("w1").await,
        vec![Ok(())],
        "the proc heard Ok back"
    );

    // A client on another address reaches the proc's agent and the host agent through the
    // one frontend address.
    let client = quic_node("client", &t.identity).await;
    assert_ne!(client.addr(), t.host.addr());
    let agent = client.remote_ref::<AgentRequest>(ready.agent.clone());
    assert_eq!(
        agent.ask(AgentRequest::Capacity, T).await.unwrap(),
        Ok(AgentReply::Capacity(Capacity { max: 4, free: 3 }))
    );
    let host_agent = client.remote_ref::<HostRequest>(t.host.host_actor());
    match host_agent.ask(HostRequest::ListProcs, T).await.unwrap() {
        Ok(HostReply::Procs(procs)) => {
            assert_eq!(procs.len(), 1);
            assert_eq!(procs[0].proc_id, *handle.proc_id());
            assert_eq!(procs[0].status, ProcStatus::Ready);
            assert_eq!(procs[0].agent.as_ref(), Some(&ready.agent));
        }
        other => panic!("{other:?}"),
    }
    match host_agent.ask(HostRequest::Status, T).await.unwrap() {
        Ok(HostReply::Status(status)) => {
            assert_eq!((status.procs, status.ready), (1, 1));
            assert_eq!(status.info.addr, *t.host.addr());
            assert!(!status.shutting_down);
        }
        other => panic!("{other:?}"),
    }
    // An unknown proc on the host bounces.
    let nobody = ActorId::new(t.host.addr().proc("nobody").unwrap(), "agent").unwrap();
    let err = client
        .remote_ref::<AgentRequest>(nobody)
        .ask(AgentRequest::Capacity, T)
        .await
        .unwrap_err();
    assert!(err.is_undeliverable(), "{err}");
    t.host.shutdown(T).await;
    client.shutdown(Duration::ZERO).await;
}

// Attests HST-1, HST-6
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_unique_reserved_names_refused_and_reusable_after_terminate() {
    let t = test_host(|_| {}).await;
    let first = t.host.spawn(spec("w")).await.unwrap();
    assert_eq!(
        t.host.spawn(spec("w")).await.unwrap_err(),
        HostError::NameInUse("w".into())
    );
    // Over the wire too, with the reserved and bad names.
    let client = quic_node("client", &t.identity).await;
    let host_agent = client.remote_ref::<HostRequest>(t.host.host_actor());
    for (name, code) in [
        ("w", "name_in_use"),
        ("service", "reserved_name"),
        ("local", "reserved_name"),
        ("a.b", "bad_name"),
        ("", "bad_name"),
    ] {
        let answer = host_agent
            .ask(HostRequest::Spawn(spec(name)), T)
            .await
            .unwrap();
        assert_eq!(answer.unwrap_err().code(), code, "{name:?}");
    }
    // Terminate over the wire: polite stop through the agent, exit 0.
    let answer = host_agent
        .ask(
            HostRequest::Terminate {
                name: "w".into(),
                grace_ms: 5_000,
                reason: "test".into(),
            },
            T,
        )
        .await
        .unwrap();
    assert_eq!(
        answer,
        Ok(HostReply::Terminated {
            name: "w".into(),
            status: ExitStatus::Code(0)
        })
    );
    // HST-6: once terminated, no route and the name is free at once.
    assert!(!routed(&t.host, "w"));
    assert!(!t.host.paths().proc_dir("w").exists());
    assert_eq!(first.wait().await, ExitStatus::Code(0));
    let second = t.host.spawn(spec("w")).await.unwrap();
    assert!(!second.same(&first));
    assert!(routed(&t.host, "w"));
    let agent = client.remote_ref::<AgentRequest>(second.ready().await.unwrap().agent);
    assert!(agent.ask(AgentRequest::Capacity, T).await.unwrap().is_ok());
    // Unknown procs.
    assert_eq!(
        t.host.kill("nobody").await.unwrap_err(),
        HostError::UnknownProc("nobody".into())
    );
    t.host.shutdown(T).await;
    client.shutdown(Duration::ZERO).await;
}

// Attests HST-4, HST-5
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_terminates_and_kills_all_see_the_same_status() {
    let t = test_host(|_| {}).await;
    // Stubborn: ignores Stop and SIGTERM, so only SIGKILL ends it.
    let handle = t.host.spawn(spec("stubborn-1")).await.unwrap();
    let mut calls = Vec::new();
    for i in 0..8 {
        let h = handle.clone();
        calls.push(tokio::spawn(async move {
            if i % 3 == 2 {
                h.kill().await
            } else {
                h.terminate(Duration::from_millis(300), "test").await
            }
        }));
    }
    let mut seen = Vec::new();
    for call in calls {
        seen.push(call.await.unwrap().unwrap());
    }
    let status = handle.wait().await;
    assert_eq!(status, ExitStatus::Signal(libc::SIGKILL));
    assert!(seen.iter().all(|s| *s == status), "{seen:?}");
    // After the fact: the same, at once.
    assert_eq!(handle.terminate(T, "again").await, Ok(status));
    assert_eq!(handle.kill().await, Ok(status));
    assert_eq!(handle.status(), ProcStatus::Exited(status));
    assert!(t.tracker.has_ended("stubborn-1"));

    // A stubborn proc and only terminates: SIGKILL comes at the deadline, not before.
    let handle = t.host.spawn(spec("stubborn-2")).await.unwrap();
    let started = tokio::time::Instant::now();
    let (a, b) = tokio::join!(
        handle.terminate(Duration::from_millis(300), "a"),
        handle.terminate(Duration::from_millis(300), "b"),
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(a, Ok(ExitStatus::Signal(libc::SIGKILL)));
    assert_eq!(a, b);

    // A proc that dies by itself while being terminated: the exit wins for everyone.
    let handle = t.host.spawn(spec("stubborn-3")).await.unwrap();
    let h = handle.clone();
    let terminate = tokio::spawn(async move { h.terminate(T, "slow").await });
    assert!(
        eventually(T, || async { handle.status() == ProcStatus::Terminating }).await,
        "the stop was requested"
    );
    t.tracker.crash("stubborn-3", 3);
    assert_eq!(terminate.await.unwrap(), Ok(ExitStatus::Code(3)));
    assert_eq!(handle.kill().await, Ok(ExitStatus::Code(3)));
    assert_eq!(handle.wait().await, ExitStatus::Code(3));
    t.host.shutdown(T).await;
}

// Attests HST-2 (ReadyTimeout), HST-3
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proc_that_never_calls_back_times_out_and_is_cancelled() {
    let t = test_host(|_| {}).await;
    let started = tokio::time::Instant::now();
    let err = t
        .host
        .spawn(spec_timeout("silent-1", 200))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        HostError::ReadyTimeout {
            name: "silent-1".into(),
            timeout_ms: 200
        }
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    // HST-3: when the spawn returns, its task was cancelled and its name, route and work
    // directory are gone.
    assert!(t.tracker.has_ended("silent-1"));
    assert!(t.host.procs().is_empty());
    assert!(!routed(&t.host, "silent-1"));
    assert!(!t.host.paths().proc_dir("silent-1").exists());
    assert_eq!(
        t.host.proc("silent-1").await.unwrap_err(),
        HostError::UnknownProc("silent-1".into())
    );
    // The host's default timeout applies when the spawn names none.
    let t2 = test_host(|c| c.ready_timeout_ms = 150).await;
    let err = t2.host.spawn(spec("silent-2")).await.unwrap_err();
    assert_eq!(err.code(), "ready_timeout");
    // 0 disables the timeout: the spawn waits until the proc is killed.
    let host = t2.host.clone();
    let spawn = tokio::spawn(async move { host.spawn(spec_timeout("silent-3", 0)).await });
    assert!(
        eventually(T, || async {
            t2.host.procs().iter().any(|h| h.name() == "silent-3")
        })
        .await,
        "the spawn started"
    );
    let handle = t2.host.proc("silent-3").await.unwrap();
    assert_eq!(handle.status(), ProcStatus::Starting);
    assert_eq!(handle.kill().await, Ok(ExitStatus::Signal(libc::SIGKILL)));
    assert_eq!(
        spawn.await.unwrap().unwrap_err(),
        HostError::ExitedEarly {
            name: "silent-3".into(),
            status: ExitStatus::Signal(libc::SIGKILL)
        }
    );
    assert_eq!(
        handle.ready().await.unwrap_err().code(),
        "exited_early",
        "ready() waiters see why"
    );
    t.host.shutdown(T).await;
    t2.host.shutdown(T).await;
}

// Attests HST-2 (each failure its own error), HST-3, HST-12
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_failures_have_their_own_errors() {
    let t = test_host(|c| c.agent_ask_timeout_ms = 300).await;
    let cases = [
        (
            "exit7",
            HostError::ExitedEarly {
                name: "exit7".into(),
                status: ExitStatus::Code(7),
            },
        ),
        ("elsewhere", HostError::MissingAgent("elsewhere".into())),
        ("noagent", HostError::MissingAgent("noagent".into())),
        ("wrongnode", HostError::MissingAddress("wrongnode".into())),
        ("deaf", HostError::ChannelLost("deaf".into())),
    ];
    for (name, expected) in cases {
        let err = t.host.spawn(spec(name)).await.unwrap_err();
        assert_eq!(err, expected, "{name}");
        assert!(t.tracker.has_ended(name), "{name} left running");
        assert!(!routed(&t.host, name), "{name} still routed");
        // The answer races with the kill that follows it; if the proc heard it, it was why.
        if let Some(answers) = t.tracker.ready_answers.lock().unwrap().get(name) {
            assert_eq!(answers, &vec![Err(expected.code().to_owned())], "{name}");
        }
    }
    assert!(t.host.procs().is_empty());

    // HST-12: a callback with another pid is refused and changes nothing; the right one works.
    let handle = t.host.spawn(spec("wrongpid")).await.unwrap();
    assert_eq!(
        t.tracker.answers("wrongpid").await,
        vec![Err("unexpected_proc".to_owned()), Ok(())]
    );
    assert_eq!(handle.status(), ProcStatus::Ready);
    // A callback for a proc that is not starting, from a node on another address.
    let client = quic_node("client", &t.identity).await;
    let bootstrap = client.remote_ref::<ProcReady>(t.host.bootstrap_actor());
    for name in ["wrongpid", "nobody"] {
        let proc_id = t.host.addr().proc(name).unwrap();
        let answer = bootstrap
            .ask(
                ProcReady {
                    proc_id: proc_id.clone(),
                    addr: t.host.addr().clone(),
                    agent: proc_id.actor("agent").unwrap(),
                    pid: std::process::id(),
                },
                T,
            )
            .await
            .unwrap();
        assert_eq!(answer.unwrap_err().code(), "unexpected_proc", "{name}");
    }
    assert_eq!(handle.status(), ProcStatus::Ready);
    t.host.shutdown(T).await;
    client.shutdown(Duration::ZERO).await;
}

/// Wraps a manager: procs whose name contains `immortal` ignore SIGTERM and SIGKILL alike.
struct Immortal(procmesh_host::InProcessManager);

struct ImmortalControl(Arc<dyn procmesh_host::ProcControl>);

impl procmesh_host::ProcControl for ImmortalControl {
    fn pid(&self) -> Option<u32> {
        self.0.pid()
    }
    fn ready_pid(&self) -> u32 {
        self.0.ready_pid()
    }
    fn terminate(&self) -> Result<(), HostError> {
        Ok(())
    }
    fn kill(&self) -> Result<(), HostError> {
        Err(HostError::Internal("immortal".into()))
    }
    fn wait(&self) -> procmesh_transport::remote::BoxFuture<'static, ExitStatus> {
        self.0.wait()
    }
}

impl ProcManager for Immortal {
    fn kind(&self) -> &'static str {
        "immortal"
    }
    fn local_hub(&self) -> Option<procmesh_transport::LocalHub> {
        self.0.local_hub()
    }
    fn launch(
        &self,
        launch: procmesh_host::Launch,
    ) -> procmesh_transport::remote::BoxFuture<
        '_,
        Result<Arc<dyn procmesh_host::ProcControl>, HostError>,
    > {
        Box::pin(async move {
            let immortal = launch.name().contains("immortal");
            let control = self.0.launch(launch).await?;
            Ok(if immortal {
                Arc::new(ImmortalControl(control)) as Arc<dyn procmesh_host::ProcControl>
            } else {
                control
            })
        })
    }
}

// Attests HST-13
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_terminate_is_bounded_and_reports_attempted_ok_failed() {
    let tracker = Arc::new(utils::Tracker::default());
    let inner = utils::manager(tracker.clone(), Duration::from_millis(100));
    let (ca, identity) = utils::identity();
    let dir = tempfile::tempdir().unwrap();
    let mut config = HostConfig::ephemeral(dir.path().join("state"), identity.clone());
    config.kill_wait_ms = 200;
    config.capacity = Some(6); // six procs of one slot (HST-25)
    let identity = utils::issue(&ca, procmesh_transport::Role::Orchestrator);
    let host = Host::start(config, Arc::new(Immortal(inner)))
        .await
        .unwrap();
    for i in 0..5 {
        host.spawn(spec(&format!("w{i}"))).await.unwrap();
    }
    // Ignores Stop (stubborn behaviour by name) and the signals (the wrapper).
    host.spawn(spec("stubborn-immortal")).await.unwrap();
    let client = quic_node("client", &identity).await;
    let answer = client
        .remote_ref::<HostRequest>(host.host_actor())
        .ask(
            HostRequest::TerminateAll {
                grace_ms: 200,
                reason: "test".into(),
                max_concurrent: 2,
            },
            T,
        )
        .await
        .unwrap();
    let Ok(HostReply::TerminatedAll(outcome)) = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(outcome.attempted, 6);
    assert_eq!(outcome.ok, 5);
    assert_eq!(outcome.failed.len(), 1);
    assert_eq!(outcome.failed[0].name, "stubborn-immortal");
    assert_eq!(outcome.failed[0].error.code(), "internal");
    assert_eq!(
        outcome.attempted as usize,
        outcome.ok as usize + outcome.failed.len()
    );
    let max = tracker.max_stopping.load(Ordering::SeqCst);
    assert!((1..=2).contains(&max), "at most 2 stops at once, saw {max}");
    // The immortal proc is still there, its stop failed; everyone else is gone.
    let left: Vec<String> = host.procs().iter().map(|h| h.name().to_owned()).collect();
    assert_eq!(left, vec!["stubborn-immortal".to_owned()]);
    let stuck = host.proc("stubborn-immortal").await.unwrap();
    assert_eq!(stuck.status(), ProcStatus::Terminating);
    assert!(stuck.state().stop_failed.is_some());
    assert_eq!(
        stuck.terminate(T, "again").await.unwrap_err().code(),
        "internal",
        "a failed stop is the outcome for later callers too"
    );
    client.shutdown(Duration::ZERO).await;
    host.node().shutdown(Duration::ZERO).await;
}

// The `local` proc: reserved, empty until first asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_proc_is_created_empty_on_first_use() {
    let t = test_host(|_| {}).await;
    let client = quic_node("client", &t.identity).await;
    let local_agent = ActorId::new(t.host.addr().proc("local").unwrap(), "agent").unwrap();
    let remote = client.remote_ref::<AgentRequest>(local_agent.clone());
    let err = remote.ask(AgentRequest::Capacity, T).await.unwrap_err();
    assert!(err.is_undeliverable(), "{err}");
    let local = t.host.local_proc().await.unwrap();
    assert_eq!(local.proc_id(), &t.host.addr().proc("local").unwrap());
    assert!(routed(&t.host, "local"));
    // Empty: the proc is there, no actor is.
    match remote.ask(AgentRequest::Capacity, T).await.unwrap_err() {
        SendFailure::Remote(RemoteError::Undeliverable(reason)) => {
            assert!(reason.contains("no actor"), "{reason}")
        }
        other => panic!("{other}"),
    }
    // Filled by a client of this process; reached from elsewhere through the frontend.
    let agent = utils::test_agent(t.host.addr().proc("local").unwrap());
    local.expose("agent", agent).unwrap();
    assert!(remote.ask(AgentRequest::Capacity, T).await.unwrap().is_ok());
    // The same node on every call; and from it, the host agent answers.
    let again = t.host.local_proc().await.unwrap();
    assert_eq!(again.proc_id(), local.proc_id());
    let status = again
        .remote_ref::<HostRequest>(t.host.host_actor())
        .ask(HostRequest::Status, T)
        .await
        .unwrap();
    assert!(matches!(status, Ok(HostReply::Status(_))));
    t.host.shutdown(T).await;
    client.shutdown(Duration::ZERO).await;
}

// Attests HST-10
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_blobs_shares_transfers_and_verifies() {
    let t = test_host(|_| {}).await;
    let src_dir = tempfile::tempdir().unwrap();
    let src_store = BlobStore::open(src_dir.path()).unwrap();
    let src = NodeBuilder::new("service")
        .quic(utils::loopback(), t.identity.clone())
        .blob_store(src_store.clone())
        .start()
        .await
        .unwrap();
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let a = src_store.put_bytes(&big).await.unwrap();
    let b = src_store.put_bytes(b"small").await.unwrap();
    let from = src.addr().clone();

    let (x, y) = tokio::join!(
        t.host.fetch_blobs(vec![a, b], from.clone()),
        t.host.fetch_blobs(vec![a, a], from.clone()),
    );
    assert_eq!(x, Ok(2));
    assert_eq!(y, Ok(1), "it was missing when asked");
    assert_eq!(t.host.blob_transfers(), 2, "one transfer per blob");
    let store = t.host.node().blob_store().unwrap().clone();
    assert!(store.contains(&a) && store.contains(&b));
    assert!(store.path(&a).starts_with(t.host.paths().blobs.as_path()));

    // Over the wire: present ones are not fetched again.
    let client = quic_node("client", &t.identity).await;
    let host_agent = client.remote_ref::<HostRequest>(t.host.host_actor());
    let answer = host_agent
        .ask(
            HostRequest::FetchBlobs {
                hashes: vec![a, b],
                from: from.clone(),
            },
            T,
        )
        .await
        .unwrap();
    assert_eq!(answer, Ok(HostReply::BlobsReady { fetched: 0 }));
    assert_eq!(t.host.blob_transfers(), 2);

    // A blob the source lacks, and one whose bytes do not match its name.
    let missing = BlobHash::of(b"nobody has this");
    let err = t
        .host
        .fetch_blobs(vec![missing], from.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, HostError::Blob { hash, .. } if hash == missing),
        "{err}"
    );
    let liar = BlobHash::of(b"what it claims to be");
    std::fs::write(src_store.path(&liar), b"something else").unwrap();
    let err = t.host.fetch_blobs(vec![liar], from).await.unwrap_err();
    assert!(
        matches!(err, HostError::Blob { hash, .. } if hash == liar),
        "{err}"
    );
    assert!(!store.contains(&liar), "BLOB-1: nothing kept");
    t.host.shutdown(T).await;
    src.shutdown(Duration::ZERO).await;
    client.shutdown(Duration::ZERO).await;
}

// A host shutting down refuses spawns and stops its procs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_proc_and_refuses_spawns() {
    let t = test_host_with(Duration::from_millis(10), |_| {}).await;
    let handles = [
        t.host.spawn(spec("a")).await.unwrap(),
        t.host.spawn(spec("b")).await.unwrap(),
    ];
    let outcome = t.host.shutdown(T).await;
    assert_eq!((outcome.attempted, outcome.ok), (2, 2));
    for h in &handles {
        assert_eq!(h.wait().await, ExitStatus::Code(0));
    }
    assert_eq!(
        t.host.spawn(spec("c")).await.unwrap_err(),
        HostError::ShuttingDown
    );
    assert!(t.host.node().proc_routes().is_empty());
}

// The state directory: stale caches wiped at start, blobs kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_caches_are_wiped_at_start() {
    let (_, identity) = utils::identity();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for stale in ["workers/abc/file", "procs/old/file"] {
        let path = state.join(stale);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"stale").unwrap();
    }
    let blob = {
        let store = BlobStore::open(state.join("blobs")).unwrap();
        store.put_bytes(b"kept").await.unwrap()
    };
    let tracker = Arc::new(utils::Tracker::default());
    let host = Host::start(
        HostConfig::ephemeral(&state, identity),
        Arc::new(utils::manager(tracker, Duration::ZERO)),
    )
    .await
    .unwrap();
    assert!(state.join("workers").is_dir());
    assert_eq!(std::fs::read_dir(state.join("workers")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(state.join("procs")).unwrap().count(), 0);
    assert!(host.node().blob_store().unwrap().contains(&blob));
    host.shutdown(T).await;
}

// Start errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_needs_an_identity_and_a_reachable_address() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Arc::new(utils::Tracker::default());
    let manager: Arc<dyn ProcManager> = Arc::new(utils::manager(tracker, Duration::ZERO));
    let config = HostConfig {
        state_dir: dir.path().to_owned(),
        ..HostConfig::default()
    };
    let err = Host::start(config, manager.clone()).await.unwrap_err();
    assert!(
        matches!(err, procmesh_host::StartError::NoIdentity),
        "{err}"
    );
    let (_, identity) = utils::identity();
    let mut config = HostConfig::ephemeral(dir.path(), identity);
    config.listen = "0.0.0.0:0".parse().unwrap();
    let err = Host::start(config, manager).await.unwrap_err();
    assert!(
        matches!(err, procmesh_host::StartError::Advertise(_)),
        "{err}"
    );
}
