//! Shared helpers of the host integration tests: certificates, a scriptable in-process proc
//! (a small node with a kameo test agent that calls back ready), and the testkit's fake
//! orchestrator and bounded waiting.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kameo::actor::Spawn;
use kameo::message::{Context, Message};
use kameo::Actor;
use procmesh_host::{Host, HostConfig, InProcessLaunch, InProcessManager};
use procmesh_protocol::messages::RunningAction;
use procmesh_protocol::messages::{
    AgentError, AgentReply, AgentRequest, AgentStatus, Capacity, HostError, ProcReady,
};
use procmesh_protocol::{
    ActionState, ActorId, Attempt, AttemptRef, ExitStatus, HostAddr, Lsn, Timestamp,
};
use procmesh_transport::{MeshCa, Node, NodeBuilder, Request, Role, TlsIdentity, WireReply};
use tokio::sync::oneshot;

/// A bound for every wait of the tests.
pub const T: Duration = Duration::from_secs(10);

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A mesh CA and a host identity from it.
pub fn identity() -> (MeshCa, TlsIdentity) {
    let ca = MeshCa::generate("test", Duration::from_secs(3600)).unwrap();
    let id = ca
        .issue(Role::Host, "node", &[], Duration::from_secs(3600))
        .unwrap();
    (ca, id)
}

/// An identity of `role` from `ca` (no node name for clients and operators).
pub fn issue(ca: &MeshCa, role: Role) -> TlsIdentity {
    let name = if role.is_node() { role.as_str() } else { "" };
    ca.issue(role, name, &[], Duration::from_secs(3600))
        .unwrap()
}

/// A node on its own QUIC address (a client, a test orchestrator, a blob source).
pub async fn quic_node(name: &str, id: &TlsIdentity) -> Node {
    NodeBuilder::new(name)
        .quic(loopback(), id.clone())
        .start()
        .await
        .unwrap()
}

pub use procmesh_testkit::eventually;

/// How a scripted in-process proc behaves.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// Calls back ready; exits 0 on `Stop` (after `stop_delay`), with signal 15 on SIGTERM.
    Normal,
    /// Never calls back; runs until killed.
    Silent,
    /// Exits at once with this code, never calling back.
    ExitAtOnce(i32),
    /// Calls back ready; ignores `Stop` and SIGTERM.
    Stubborn,
    /// Names an agent in another proc.
    AgentElsewhere,
    /// Names an agent that is not exposed.
    NoAgent,
    /// Calls back through a node of another name: the host has no route under its own.
    WrongNode,
    /// Calls back first with a wrong pid (refused), then correctly.
    WrongPidFirst,
    /// Its agent never answers.
    Deaf,
}

/// What the procs of one test did.
#[derive(Default)]
pub struct Tracker {
    /// Procs whose life future ended or was dropped, by name (cancelled or not).
    pub ended: Mutex<Vec<String>>,
    /// Stops in progress now (from `Stop` received to exit).
    pub stopping: AtomicU32,
    /// The most stops ever in progress at once.
    pub max_stopping: AtomicU32,
    /// Answers to each proc's ready callbacks, by name.
    pub ready_answers: Mutex<HashMap<String, Vec<Result<(), String>>>>,
    /// Attempts the procs' agents were asked to cancel.
    pub cancelled: Mutex<Vec<AttemptRef>>,
    /// Crash triggers of running procs.
    crash: Mutex<HashMap<String, oneshot::Sender<i32>>>,
}

impl Tracker {
    /// Makes the running proc `name` exit with `code` by itself.
    pub fn crash(&self, name: &str, code: i32) {
        let tx = self
            .crash
            .lock()
            .unwrap()
            .remove(name)
            .expect("a running proc");
        let _ = tx.send(code);
    }

    /// The answers the proc `name` heard to its ready callbacks, once it heard them (after
    /// the spawn resolved, the answer may still be on its way to the proc).
    pub async fn answers(&self, name: &str) -> Vec<Result<(), String>> {
        let heard = || self.ready_answers.lock().unwrap().get(name).cloned();
        assert!(
            eventually(T, || async { heard().is_some() }).await,
            "{name} heard nothing"
        );
        heard().unwrap()
    }

    pub fn has_ended(&self, name: &str) -> bool {
        self.ended.lock().unwrap().iter().any(|n| n == name)
    }
}

/// Counts a proc's end when dropped (its future finished or was cancelled).
struct EndGuard {
    name: String,
    tracker: Arc<Tracker>,
    node: Option<Node>,
    stopping: Arc<AtomicBool>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if self.stopping.load(Ordering::SeqCst) {
            self.tracker.stopping.fetch_sub(1, Ordering::SeqCst);
        }
        self.tracker.ended.lock().unwrap().push(self.name.clone());
        if let Some(node) = self.node.take() {
            tokio::spawn(async move { node.shutdown(Duration::ZERO).await });
        }
    }
}

/// The test agent: answers capacity and status, and asks its proc to exit on `Stop`.
#[derive(Actor)]
pub struct TestAgent {
    proc_id: procmesh_protocol::ProcId,
    stop: Option<oneshot::Sender<()>>,
    stubborn: bool,
    deaf: bool,
    running: Vec<RunningAction>,
    tracker: Option<Arc<Tracker>>,
}

/// The attempt a `busy*` proc runs.
pub fn busy_attempt() -> AttemptRef {
    AttemptRef {
        lsn: Lsn(7),
        attempt: Attempt::FIRST,
    }
}

impl Message<Request<AgentRequest>> for TestAgent {
    type Reply = WireReply<Result<AgentReply, AgentError>>;

    async fn handle(
        &mut self,
        req: Request<AgentRequest>,
        _ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        if self.deaf {
            std::future::pending::<()>().await;
        }
        let capacity = Capacity { max: 4, free: 3 };
        Ok(Ok(match req.message {
            AgentRequest::Capacity => AgentReply::Capacity(capacity),
            AgentRequest::Status => AgentReply::Status(AgentStatus {
                proc_id: self.proc_id.clone(),
                capacity,
                actions: self.running.clone(),
                stopping: false,
            }),
            AgentRequest::Drain { .. } => AgentReply::Stopping { running: 0 },
            AgentRequest::Stop { .. } => {
                if !self.stubborn {
                    if let Some(stop) = self.stop.take() {
                        let _ = stop.send(());
                    }
                }
                AgentReply::Stopping { running: 0 }
            }
            AgentRequest::Cancel { lsn, attempt, .. } => {
                let attempt = AttemptRef { lsn, attempt };
                if let Some(tracker) = &self.tracker {
                    tracker.cancelled.lock().unwrap().push(attempt);
                }
                AgentReply::Cancelling {
                    found: self.running.iter().any(|r| r.action == attempt),
                }
            }
            _ => return Ok(Err(AgentError::Internal("not a test agent's job".into()))),
        }))
    }
}

/// A well-behaved test agent of the proc `proc_id`, spawned.
pub fn test_agent(proc_id: procmesh_protocol::ProcId) -> kameo::actor::ActorRef<TestAgent> {
    TestAgent::spawn(TestAgent {
        proc_id,
        stop: None,
        stubborn: false,
        deaf: false,
        running: Vec::new(),
        tracker: None,
    })
}

/// A proc's life, scripted by `behaviour`.
pub async fn run_proc(
    start: InProcessLaunch,
    behaviour: Behaviour,
    stop_delay: Duration,
    tracker: Arc<Tracker>,
) -> ExitStatus {
    let InProcessLaunch {
        launch,
        hub,
        local_name,
        mut stop,
    } = start;
    let name = launch.name().to_owned();
    let stopping = Arc::new(AtomicBool::new(false));
    let mut guard = EndGuard {
        name: name.clone(),
        tracker: tracker.clone(),
        node: None,
        stopping: stopping.clone(),
    };
    match behaviour {
        Behaviour::ExitAtOnce(code) => return ExitStatus::Code(code),
        Behaviour::Silent => return std::future::pending::<ExitStatus>().await,
        _ => {}
    }
    let frontend = launch.bootstrap.proc_id.addr().clone();
    let node_name = if behaviour == Behaviour::WrongNode {
        "someone-else"
    } else {
        name.as_str()
    };
    let node = NodeBuilder::new(node_name)
        .local(&hub, &local_name)
        .addr(frontend.clone())
        .default_route(launch.bootstrap.backend.clone())
        .start()
        .await
        .unwrap();
    guard.node = Some(node.clone());
    let (stop_tx, mut stop_rx) = oneshot::channel();
    let agent_ref = TestAgent::spawn(TestAgent {
        proc_id: launch.bootstrap.proc_id.clone(),
        stop: Some(stop_tx),
        stubborn: behaviour == Behaviour::Stubborn,
        deaf: behaviour == Behaviour::Deaf,
        running: if name.starts_with("busy") {
            vec![RunningAction {
                action: busy_attempt(),
                state: ActionState::Running,
                since: Timestamp::from_millis(1),
            }]
        } else {
            Vec::new()
        },
        tracker: Some(tracker.clone()),
    });
    let agent = node.expose("agent", agent_ref).unwrap();
    let named_agent = match behaviour {
        Behaviour::AgentElsewhere => {
            ActorId::new(frontend.proc("some-other-proc").unwrap(), "agent").unwrap()
        }
        Behaviour::NoAgent => ActorId::new(launch.bootstrap.proc_id.clone(), "nobody").unwrap(),
        _ => launch.bootstrap.proc_id.actor("agent").unwrap(),
    };
    let _ = agent;
    let (crash_tx, crash_rx) = oneshot::channel();
    tracker.crash.lock().unwrap().insert(name.clone(), crash_tx);
    let callback = node.remote_ref::<ProcReady>(launch.bootstrap.callback.clone());
    let ready = |pid| ProcReady {
        proc_id: launch.bootstrap.proc_id.clone(),
        addr: node.addr().clone(),
        agent: named_agent.clone(),
        pid,
    };
    let mut answers = Vec::new();
    if behaviour == Behaviour::WrongPidFirst {
        let answer = callback
            .ask(ready(std::process::id() + 1), T)
            .await
            .unwrap();
        answers.push(answer.map_err(|e: HostError| e.code().to_owned()));
    }
    let answer = callback.ask(ready(std::process::id()), T).await;
    let answer = match answer {
        Ok(answer) => answer.map_err(|e| e.code().to_owned()),
        Err(e) => Err(e.to_string()),
    };
    answers.push(answer);
    tracker
        .ready_answers
        .lock()
        .unwrap()
        .insert(name.clone(), answers);
    let stubborn = behaviour == Behaviour::Stubborn;
    let status = tokio::select! {
        Ok(()) = &mut stop_rx => {
            let now = tracker.stopping.fetch_add(1, Ordering::SeqCst) + 1;
            stopping.store(true, Ordering::SeqCst);
            tracker.max_stopping.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(stop_delay).await;
            ExitStatus::Code(0)
        }
        _ = stop.requested(), if !stubborn => ExitStatus::Signal(libc::SIGTERM),
        Ok(code) = crash_rx => ExitStatus::Code(code),
    };
    drop(guard);
    status
}

/// An in-process manager whose procs behave by name: a name starting with a behaviour's
/// prefix (`silent`, `exit7`, `stubborn`, `elsewhere`, `noagent`, `wrongnode`, `wrongpid`,
/// `deaf`) behaves so; any other name is `Normal`.
pub fn manager(tracker: Arc<Tracker>, stop_delay: Duration) -> InProcessManager {
    InProcessManager::new(move |start: InProcessLaunch| {
        let name = start.launch.name().to_owned();
        let behaviour = behaviour_of(&name);
        run_proc(start, behaviour, stop_delay, tracker.clone())
    })
}

pub fn behaviour_of(name: &str) -> Behaviour {
    let prefixes = [
        ("silent", Behaviour::Silent),
        ("exit7", Behaviour::ExitAtOnce(7)),
        ("stubborn", Behaviour::Stubborn),
        ("elsewhere", Behaviour::AgentElsewhere),
        ("noagent", Behaviour::NoAgent),
        ("wrongnode", Behaviour::WrongNode),
        ("wrongpid", Behaviour::WrongPidFirst),
        ("deaf", Behaviour::Deaf),
    ];
    prefixes
        .into_iter()
        .find(|(p, _)| name.starts_with(p))
        .map(|(_, b)| b)
        .unwrap_or(Behaviour::Normal)
}

/// A host on `127.0.0.1:0` with in-process procs; keep the tempdir alive.
pub struct TestHost {
    pub host: Host,
    pub tracker: Arc<Tracker>,
    /// An orchestrator identity from the host's CA: test nodes standing in for the
    /// orchestrator (the only remote role that may spawn, list, and reach procs) use it.
    pub identity: TlsIdentity,
    /// The host's CA, for identities of other roles.
    pub ca: MeshCa,
    pub dir: tempfile::TempDir,
}

pub async fn test_host(tweak: impl FnOnce(&mut HostConfig)) -> TestHost {
    test_host_with(Duration::from_millis(20), tweak).await
}

pub async fn test_host_with(stop_delay: Duration, tweak: impl FnOnce(&mut HostConfig)) -> TestHost {
    let (ca, id) = identity();
    test_host_in(&ca, id, stop_delay, tweak).await
}

/// A test host with this host identity from `ca` (to share a CA with other test nodes).
pub async fn test_host_in(
    ca: &MeshCa,
    host_identity: TlsIdentity,
    stop_delay: Duration,
    tweak: impl FnOnce(&mut HostConfig),
) -> TestHost {
    let dir = tempfile::tempdir().unwrap();
    let mut config = HostConfig::ephemeral(dir.path().join("state"), host_identity);
    config.ready_timeout_ms = 5_000;
    config.kill_wait_ms = 2_000;
    tweak(&mut config);
    let tracker = Arc::new(Tracker::default());
    let host = Host::start(config, Arc::new(manager(tracker.clone(), stop_delay)))
        .await
        .unwrap();
    TestHost {
        host,
        tracker,
        identity: issue(ca, Role::Orchestrator),
        ca: MeshCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap(),
        dir,
    }
}

pub use procmesh_testkit::orchestrator::FakeOrchestrator;

/// A test orchestrator on its own QUIC node that registers hosts with this heartbeat interval.
pub async fn orchestrator(id: &TlsIdentity, heartbeat_interval_ms: u64) -> FakeOrchestrator {
    FakeOrchestrator::builder()
        .registers_hosts(heartbeat_interval_ms)
        .start(NodeBuilder::new("service").quic(loopback(), id.clone()))
        .await
}

/// The frontend address of a host.
pub fn frontend(host: &Host) -> HostAddr {
    host.addr().clone()
}
