//! Identity and authority at the host, with real QUIC peers holding certificates of other roles
//! from the host's own mesh CA, and real Unix links to its backend socket.

mod utils;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kameo::actor::Spawn;
use kameo::message::{Context, Message};
use kameo::Actor;
use procmesh_host::{Host, HostConfig, Launch, ProcControl, ProcManager, StartError};
use procmesh_protocol::cas::DownloadTicket;
use procmesh_protocol::messages::{
    AgentRequest, HostError, HostReply, HostRequest, OrchestratorError, OrchestratorReply,
    OrchestratorRequest, ProcConfig, ProcReady, ProcStatus, SpawnSpec,
};
use procmesh_protocol::{BlobHash, ExitStatus, HostAddr};
use procmesh_transport::remote::BoxFuture;
use procmesh_transport::{
    BlobError, BlobStore, MeshCa, Node, NodeBuilder, Request, Role, TlsIdentity, WireReply,
};
use tokio::sync::watch;
use utils::{eventually, issue, quic_node, test_agent, test_host, T};

fn spec(name: &str) -> SpawnSpec {
    SpawnSpec {
        name: name.into(),
        // One slot: a spawn naming none takes every slot left (HST-25).
        config: ProcConfig {
            max_actions: Some(1),
            ..ProcConfig::default()
        },
    }
}

async fn ask(node: &Node, host: &Host, req: HostRequest) -> Result<HostReply, HostError> {
    node.remote_ref::<HostRequest>(host.host_actor())
        .ask(req, T)
        .await
        .unwrap()
}

fn admin_requests() -> Vec<HostRequest> {
    vec![
        HostRequest::Spawn(spec("evil")),
        HostRequest::Kill { name: "w1".into() },
        HostRequest::Terminate {
            name: "w1".into(),
            grace_ms: 0,
            reason: "evil".into(),
        },
        HostRequest::TerminateAll {
            grace_ms: 0,
            reason: "evil".into(),
            max_concurrent: 0,
        },
        HostRequest::ListProcs,
        HostRequest::Status,
    ]
}

// Attests HST-16
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_other_hosts_cannot_administer_a_host_and_nothing_changes() {
    let t = test_host(|_| {}).await;
    t.host.spawn(spec("w1")).await.unwrap();
    let before = t.host.list();
    for role in [Role::Client, Role::Host] {
        let node = quic_node("intruder", &issue(&t.ca, role)).await;
        for req in admin_requests() {
            let what = format!("{req:?}");
            match ask(&node, &t.host, req).await {
                Err(HostError::Forbidden(reason)) => {
                    assert!(reason.contains(role.as_str()), "{reason}")
                }
                other => panic!("{role} {what}: {other:?}"),
            }
        }
        // Nor may it ask the host to fetch blobs into its store.
        let fetch = HostRequest::FetchBlobs {
            hashes: vec![BlobHash::of(b"x")],
            from: node.addr().clone(),
        };
        assert_eq!(
            ask(&node, &t.host, fetch).await.unwrap_err().code(),
            "forbidden"
        );
        node.shutdown(Duration::ZERO).await;
    }
    // The proc table is unchanged, and the refusals are counted by kind.
    assert_eq!(t.host.list(), before);
    assert_eq!(t.host.procs()[0].status(), ProcStatus::Ready);
    let refused = t.host.refusals();
    for kind in [
        "spawn",
        "kill",
        "terminate",
        "terminate_all",
        "list_procs",
        "status",
        "fetch_blobs",
    ] {
        assert_eq!(refused[kind], 2, "{kind}: {refused:?}");
    }
    t.host.shutdown(T).await;
}

// Attests HST-16 (operators and the orchestrator)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_and_the_orchestrator_administer_the_host() {
    let t = test_host(|_| {}).await;
    t.host.spawn(spec("w1")).await.unwrap();
    let operator = quic_node("operator", &issue(&t.ca, Role::Operator)).await;
    match ask(&operator, &t.host, HostRequest::ListProcs).await {
        Ok(HostReply::Procs(procs)) => assert_eq!(procs.len(), 1),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ask(&operator, &t.host, HostRequest::Status).await,
        Ok(HostReply::Status(_))
    ));
    // An operator does not make the host fetch blobs.
    let fetch = HostRequest::FetchBlobs {
        hashes: vec![],
        from: operator.addr().clone(),
    };
    assert_eq!(
        ask(&operator, &t.host, fetch).await.unwrap_err().code(),
        "forbidden"
    );
    let orchestrator = quic_node("orchestrator", &t.identity).await;
    let kill = HostRequest::Kill { name: "w1".into() };
    assert!(matches!(
        ask(&orchestrator, &t.host, kill).await,
        Ok(HostReply::Terminated { .. })
    ));
    t.host.shutdown(T).await;
}

// Attests HST-17
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_orchestrator_reaches_a_proc_agent_through_the_host() {
    let t = test_host(|_| {}).await;
    let handle = t.host.spawn(spec("w1")).await.unwrap();
    let agent = handle.ready().await.unwrap().agent;
    for role in [Role::Client, Role::Operator, Role::Host] {
        let node = quic_node("intruder", &issue(&t.ca, role)).await;
        for req in [AgentRequest::Status, AgentRequest::Capacity] {
            let answer = node
                .remote_ref::<AgentRequest>(agent.clone())
                .ask(req, Duration::from_millis(500))
                .await;
            assert!(answer.is_err(), "{role}: {answer:?}");
        }
        node.shutdown(Duration::ZERO).await;
    }
    assert_eq!(t.host.refusals()["relay"], 6);
    let orchestrator = quic_node("orchestrator", &t.identity).await;
    let answer = orchestrator
        .remote_ref::<AgentRequest>(agent)
        .ask(AgentRequest::Capacity, T)
        .await
        .unwrap();
    assert!(answer.is_ok(), "{answer:?}");
    t.host.shutdown(T).await;
}

// Attests HST-19
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_request_may_only_set_allowed_environment_variables() {
    let t = test_host(|c| c.spawn_env_allow = vec!["RUST_LOG".into(), "APP_*".into()]).await;
    let orchestrator = quic_node("orchestrator", &t.identity).await;
    let with_env = |name: &str, vars: &[&str]| {
        let mut s = spec(name);
        s.config.env = vars.iter().map(|v| ((*v).to_owned(), "x".into())).collect();
        HostRequest::Spawn(s)
    };
    for bad in ["LD_PRELOAD", "PROCMESH_EXECUTOR", "PATH"] {
        match ask(&orchestrator, &t.host, with_env("w1", &["RUST_LOG", bad])).await {
            Err(HostError::Forbidden(reason)) => assert!(reason.contains(bad), "{reason}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    assert!(t.host.procs().is_empty(), "nothing was spawned");
    assert!(
        t.tracker.ended.lock().unwrap().is_empty(),
        "nothing started"
    );
    let ok = ask(
        &orchestrator,
        &t.host,
        with_env("w1", &["RUST_LOG", "APP_X"]),
    )
    .await;
    assert!(matches!(ok, Ok(HostReply::Spawned(_))), "{ok:?}");
    t.host.shutdown(T).await;
}

/// An orchestrator that registers hosts and hands them a ticket key.
#[derive(Actor)]
struct TicketOrchestrator {
    key: [u8; 32],
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Message<Request<OrchestratorRequest>> for TicketOrchestrator {
    type Reply = WireReply<Result<OrchestratorReply, OrchestratorError>>;

    async fn handle(
        &mut self,
        req: Request<OrchestratorRequest>,
        _ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        Ok(Ok(match req.message {
            OrchestratorRequest::RegisterHost(_) => OrchestratorReply::HostRegistered {
                heartbeat_interval_ms: 60_000,
                lost_after_ms: 600_000,
                ticket_key: Some(hex(&self.key)),
            },
            OrchestratorRequest::Heartbeat(_) => {
                OrchestratorReply::HeartbeatAck { orphans: vec![] }
            }
            _ => OrchestratorReply::Ack,
        }))
    }
}

async fn blob_node(name: &str, id: &TlsIdentity, dir: &std::path::Path) -> Node {
    NodeBuilder::new(name)
        .quic(utils::loopback(), id.clone())
        .blob_store(BlobStore::open(dir.join(name)).unwrap())
        .start()
        .await
        .unwrap()
}

fn now_ms() -> u64 {
    procmesh_transport::now().as_millis()
}

// Attests HST-22
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_blobs_need_their_download_ticket() {
    let key = [0x42u8; 32];
    let (ca, host_id) = utils::identity();
    let orch_id = issue(&ca, Role::Orchestrator);
    let orch = quic_node("service", &orch_id).await;
    let orch_actor = orch
        .expose(
            "orchestrator",
            TicketOrchestrator::spawn(TicketOrchestrator { key }),
        )
        .unwrap();
    let t = utils::test_host_in(&ca, host_id, Duration::from_millis(10), |c| {
        c.orchestrator = Some(orch_actor);
    })
    .await;
    let store = t.host.node().blob_store().unwrap().clone();
    let mut blobs = Vec::new();
    for content in ["a", "b", "c", "d", "e", "f"] {
        blobs.push(store.put_bytes(content.as_bytes()).await.unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let client = blob_node("client", &issue(&ca, Role::Client), dir.path()).await;
    let host = t.host.addr().clone();
    let forbidden = |r: Result<std::path::PathBuf, BlobError>| match r {
        Err(BlobError::Forbidden(reason)) => {
            assert!(reason.contains("download ticket"), "{reason}")
        }
        other => panic!("{other:?}"),
    };
    // No ticket.
    forbidden(client.fetch_blob_with(&host, blobs[0], None).await);
    // A valid ticket, once the host registered and holds the key.
    let valid = DownloadTicket::issue(&key, blobs[1], now_ms() + 60_000);
    assert!(
        eventually(T, || async {
            client
                .fetch_blob_with(&host, blobs[1], Some(valid))
                .await
                .is_ok()
        })
        .await,
        "a valid ticket was never honoured"
    );
    let fetched = client.blob_store().unwrap().path(&blobs[1]);
    assert_eq!(std::fs::read(fetched).unwrap(), b"b");
    // Expired, forged (another key), for another blob.
    let expired = DownloadTicket::issue(&key, blobs[2], now_ms() - 1);
    forbidden(client.fetch_blob_with(&host, blobs[2], Some(expired)).await);
    let forged = DownloadTicket::issue(&[9u8; 32], blobs[3], now_ms() + 60_000);
    forbidden(client.fetch_blob_with(&host, blobs[3], Some(forged)).await);
    let elsewhere = DownloadTicket::issue(&key, blobs[1], now_ms() + 60_000);
    forbidden(
        client
            .fetch_blob_with(&host, blobs[4], Some(elsewhere))
            .await,
    );
    // A client pushes nothing into the host's store.
    let pushed = client
        .push_blob(&host, BlobHash::of(b"push"), 4, &b"push"[..])
        .await;
    assert!(pushed.is_err(), "{pushed:?}");
    assert!(!store.contains(&BlobHash::of(b"push")));
    // Operators fetch without a ticket.
    let operator = blob_node("operator", &issue(&ca, Role::Operator), dir.path()).await;
    operator.fetch_blob(&host, blobs[5]).await.unwrap();
    t.host.shutdown(T).await;
}

/// A manager whose procs are pretend OS children: pid this test process (or 1 for names
/// starting `otherpid`), started by nothing; a test connects in their place.
struct PretendOs {
    secrets: Arc<Mutex<HashMap<String, [u8; 32]>>>,
}

struct PretendChild {
    pid: u32,
    exit: watch::Sender<Option<ExitStatus>>,
}

impl ProcControl for PretendChild {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn ready_pid(&self) -> u32 {
        self.pid
    }

    fn terminate(&self) -> Result<(), HostError> {
        self.exit.send_replace(Some(ExitStatus::Signal(15)));
        Ok(())
    }

    fn kill(&self) -> Result<(), HostError> {
        self.exit.send_replace(Some(ExitStatus::Signal(9)));
        Ok(())
    }

    fn wait(&self) -> BoxFuture<'static, ExitStatus> {
        let mut rx = self.exit.subscribe();
        Box::pin(async move {
            match rx.wait_for(Option::is_some).await {
                Ok(status) => status.unwrap_or(ExitStatus::Signal(9)),
                Err(_) => ExitStatus::Signal(9),
            }
        })
    }
}

impl ProcManager for PretendOs {
    fn kind(&self) -> &'static str {
        "pretend-os"
    }

    fn launch(&self, launch: Launch) -> BoxFuture<'_, Result<Arc<dyn ProcControl>, HostError>> {
        Box::pin(async move {
            let name = launch.name().to_owned();
            let secret = launch.bootstrap.secret.expect("a bootstrap secret").0;
            self.secrets.lock().unwrap().insert(name.clone(), secret);
            let pid = if name.starts_with("otherpid") {
                1
            } else {
                std::process::id()
            };
            let (exit, _) = watch::channel(None);
            let control: Arc<dyn ProcControl> = Arc::new(PretendChild { pid, exit });
            Ok(control)
        })
    }
}

/// Connects to the host's backend as the proc `name`, claiming it with `secret`, and sends
/// its ready callback; returns the node and the answer.
async fn pretend_proc(
    host: &Host,
    name: &str,
    secret: Option<[u8; 32]>,
) -> (Node, Result<(), String>) {
    let mut builder = NodeBuilder::new(name)
        .addr(host.addr().clone())
        .default_route(host.backend().clone());
    if let Some(secret) = secret {
        builder = builder.node_claim(name, Some(secret));
    }
    let node = builder.start().await.unwrap();
    let proc_id = host.addr().proc(name).unwrap();
    let agent = node.expose("agent", test_agent(proc_id.clone())).unwrap();
    let answer = node
        .remote_ref::<ProcReady>(host.bootstrap_actor())
        .ask(
            ProcReady {
                proc_id,
                addr: host.addr().clone(),
                agent,
                pid: std::process::id(),
            },
            Duration::from_secs(2),
        )
        .await;
    let answer = match answer {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    (node, answer)
}

// Attests HST-18
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_proc_itself_registers_a_backend_route() {
    let (_, identity) = utils::identity();
    let dir = tempfile::tempdir().unwrap();
    let secrets = Arc::new(Mutex::new(HashMap::new()));
    let mut config = HostConfig::ephemeral(dir.path().join("state"), identity);
    config.ready_timeout_ms = 20_000;
    let host = Host::start(
        config,
        Arc::new(PretendOs {
            secrets: secrets.clone(),
        }),
    )
    .await
    .unwrap();
    assert!(matches!(host.backend(), HostAddr::Unix(_)));
    // The backend socket's directory is the host's alone.
    let run = host.paths().run.clone();
    assert_eq!(
        std::fs::metadata(&run).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let spawning = {
        let host = host.clone();
        tokio::spawn(async move { host.spawn(spec("w1")).await })
    };
    assert!(eventually(T, || async { secrets.lock().unwrap().contains_key("w1") }).await);
    assert!(eventually(T, || async { host.procs().len() == 1 }).await);
    let secret = secrets.lock().unwrap()["w1"];

    // A wrong secret, and none at all: the link is refused, no route, nothing changes.
    for (wrong, n) in [(Some([7u8; 32]), 1), (None, 2)] {
        let (node, answer) = pretend_proc(&host, "w1", wrong).await;
        assert!(answer.is_err(), "{answer:?}");
        assert!(!host.node().proc_routes().contains(&"w1".to_owned()));
        assert_eq!(host.refusals()["backend"], n);
        assert_eq!(host.procs()[0].status(), ProcStatus::Starting);
        node.shutdown(Duration::ZERO).await;
    }
    // The right secret from another pid than the child's.
    let other = {
        let host = host.clone();
        tokio::spawn(async move {
            let mut s = spec("otherpid");
            s.config.ready_timeout_ms = Some(1_500);
            host.spawn(s).await
        })
    };
    assert!(
        eventually(T, || async {
            secrets.lock().unwrap().contains_key("otherpid")
        })
        .await
    );
    assert!(eventually(T, || async { host.procs().len() == 2 }).await);
    let other_secret = secrets.lock().unwrap()["otherpid"];
    let (node, answer) = pretend_proc(&host, "otherpid", Some(other_secret)).await;
    assert!(answer.is_err(), "{answer:?}");
    assert_eq!(host.refusals()["backend"], 3);
    node.shutdown(Duration::ZERO).await;
    assert!(matches!(
        other.await.unwrap(),
        Err(HostError::ReadyTimeout { .. })
    ));

    // The proc itself: admitted, routed, ready.
    let (node, answer) = pretend_proc(&host, "w1", Some(secret)).await;
    assert_eq!(answer, Ok(()));
    let handle = spawning.await.unwrap().unwrap();
    assert_eq!(handle.status(), ProcStatus::Ready);
    assert!(host.node().proc_routes().contains(&"w1".to_owned()));
    node.shutdown(Duration::ZERO).await;
    host.shutdown(Duration::from_millis(100)).await;
}

// Attests HST-28
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_orchestrator_may_claim_the_orchestrators_address() {
    // The host's orchestrator is not up (say, restarting): somebody else claims its address.
    let (ca, id) = utils::identity();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let orch_addr: HostAddr = format!("quic!127.0.0.1:{port}").parse().unwrap();
    let orch_actor = orch_addr
        .proc("service")
        .unwrap()
        .actor("orchestrator")
        .unwrap();
    let t = utils::test_host_in(&ca, id, Duration::from_millis(10), |c| {
        c.orchestrator = Some(orch_actor.clone());
    })
    .await;
    for role in [Role::Client, Role::Operator, Role::Host] {
        let squatter = NodeBuilder::new("service")
            .quic(utils::loopback(), issue(&ca, role))
            .addr(orch_addr.clone())
            .start()
            .await
            .unwrap();
        let answer = squatter
            .remote_ref::<HostRequest>(t.host.host_actor())
            .with_sender(orch_actor.clone())
            .ask(HostRequest::ListProcs, Duration::from_secs(2))
            .await;
        assert!(
            answer.is_err(),
            "a {role} stood in for the orchestrator: {answer:?}"
        );
        squatter.shutdown(Duration::from_millis(100)).await;
    }
    // Each squatter was refused; one may have dialled twice (its link attempt raced with the
    // ask that needed it), and each attempt is refused and counted.
    let refused = t.host.refusals()["orchestrator_address"];
    assert!(
        (3..=6).contains(&refused),
        "{refused} refusals for 3 squatters"
    );
    // The orchestrator itself, at its address, is admitted.
    let real = NodeBuilder::new("service")
        .quic(
            format!("127.0.0.1:{port}").parse().unwrap(),
            issue(&ca, Role::Orchestrator),
        )
        .start()
        .await
        .unwrap();
    assert_eq!(*real.addr(), orch_addr);
    let answer = real
        .remote_ref::<HostRequest>(t.host.host_actor())
        .with_sender(orch_actor)
        .ask(HostRequest::ListProcs, T)
        .await
        .unwrap();
    assert!(answer.is_ok(), "{answer:?}");
    real.shutdown(Duration::from_millis(100)).await;
    t.host.shutdown(T).await;
}

fn unnamed_host_identity(ca: &MeshCa) -> TlsIdentity {
    ca.issue(Role::Host, "", &[], Duration::from_secs(3600))
        .unwrap()
}

// Attests HST-21
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_secret_persists_across_restarts() {
    let (ca, named) = utils::identity();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let start = |identity: TlsIdentity| {
        let mut config = HostConfig::ephemeral(&state, identity);
        config.node_name = Some("rack4-node17".into());
        let tracker = Arc::new(utils::Tracker::default());
        Host::start(
            config,
            Arc::new(utils::manager(tracker, Duration::from_millis(10))),
        )
    };
    // A fleet-wide certificate: the configured name, and the secret goes to the orchestrator.
    let host = start(unnamed_host_identity(&ca)).await.unwrap();
    let info = host.info();
    assert_eq!(info.node, "rack4-node17");
    let secret = info.node_secret.clone().expect("a node secret");
    let file = host.paths().node_secret.clone();
    assert_eq!(hex(&std::fs::read(&file).unwrap()), secret);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    host.shutdown(T).await;
    let host = start(unnamed_host_identity(&ca)).await.unwrap();
    assert_eq!(host.info().node_secret, Some(secret.clone()), "kept");
    host.shutdown(T).await;
    // A per-node certificate: its name wins and the secret is never sent.
    let host = start(named.clone()).await.unwrap();
    assert_eq!(host.info().node, "node");
    assert_eq!(host.info().node_secret, None);
    host.shutdown(T).await;
    // A secret others may read: the host does not start.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    match start(named).await {
        Err(StartError::NodeSecret(e)) => assert!(e.to_string().contains("node.secret"), "{e}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}
