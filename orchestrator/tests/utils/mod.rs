//! Shared helpers of the orchestrator tests: a real orchestrator on QUIC (127.0.0.1), fake
//! hosts (one QUIC node each, one proc whose fake agent reports transitions like a real one)
//! that register and heartbeat, and a client node with a subscriber actor. Every wait is
//! bounded.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kameo::actor::Spawn;
use kameo::message::{Context, Message};
use kameo::Actor;
use procmesh_orchestrator::{Orchestrator, OrchestratorConfig};
use procmesh_protocol::messages::agent::{AgentError, AgentReply, AgentRequest, Capacity};
use procmesh_protocol::messages::client::ClientEvent;
use procmesh_protocol::messages::host::{HostInfo, SystemInfo};
use procmesh_protocol::messages::orchestrator::{
    Heartbeat, OrchestratorError, OrchestratorReply, OrchestratorRequest, ProcCapacity,
    QueueConfig, QueueRef, QueueStatus, QueueToken, SubmitAction, SubscriptionTarget,
};
use procmesh_protocol::spec::{ActionDef, OutputFile, WorkerDescriptor, WorkerFile, WorkerId};
use procmesh_protocol::{
    ActionState, ActorId, Attempt, AttemptRef, BlobHash, ExitStatus, Lsn, Transition,
    TransitionDetail,
};
use procmesh_transport::{
    MeshCa, Node, NodeBuilder, RemoteRef, Request, Role, TlsIdentity, WireReply,
};
use tokio::sync::mpsc;

/// The bound of every wait.
pub const T: Duration = Duration::from_secs(20);

pub use procmesh_transport::now;

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A mesh CA and one node identity (every test node uses it).
pub fn identity() -> TlsIdentity {
    procmesh_transport::install_crypto_provider();
    let ca = MeshCa::generate("test", Duration::from_secs(3600)).unwrap();
    ca.issue(Role::Node, "node", &[], Duration::from_secs(3600))
        .unwrap()
}

/// An orchestrator on 127.0.0.1 with fast heartbeats; keep the tempdir alive.
pub async fn orchestrator(
    id: &TlsIdentity,
    tune: impl FnOnce(&mut OrchestratorConfig),
) -> (Orchestrator, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = OrchestratorConfig::ephemeral(dir.path());
    config.heartbeat_interval_ms = 100;
    config.lost_after_ms = 2_000;
    config.agent_timeout_ms = 2_000;
    tune(&mut config);
    let orch = Orchestrator::start(config, id.clone()).await.unwrap();
    (orch, dir)
}

/// A worker whose one file is stored in the orchestrator's blob store.
pub async fn worker(orch: &Orchestrator) -> WorkerDescriptor {
    let script = b"#!/bin/sh\necho hi\n";
    let hash = orch
        .node()
        .blob_store()
        .unwrap()
        .put_bytes(script)
        .await
        .unwrap();
    WorkerDescriptor {
        executable: "run.sh".into(),
        files: vec![WorkerFile {
            path: "run.sh".into(),
            hash,
            size: script.len() as u64,
            executable: true,
        }],
        directories: Vec::new(),
        env: BTreeMap::new(),
    }
}

// ---- fake proc agents -------------------------------------------------------------------------

/// What a fake agent does with an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Running, then Completed with an output and tails.
    Complete,
    /// Running, then Failed with exit code 1.
    Fail,
    /// Running, then nothing until cancelled.
    Hang,
}

pub type Plan = Arc<dyn Fn(Lsn, Attempt) -> Outcome + Send + Sync>;

pub fn always(outcome: Outcome) -> Plan {
    Arc::new(move |_, _| outcome)
}

/// What a fake agent holds and saw.
#[derive(Default)]
pub struct AgentLog {
    /// Attempts held now, and where to report them.
    pub held: HashMap<AttemptRef, ActorId>,
    /// Every submission, in arrival order.
    pub submits: Vec<AttemptRef>,
    /// Every cancellation, in arrival order.
    pub cancels: Vec<AttemptRef>,
}

/// A proc agent stand-in: accepts up to `max` attempts and plays each by its [`Plan`].
#[derive(Actor)]
pub struct FakeAgent {
    node: Node,
    max: u32,
    plan: Plan,
    log: Arc<Mutex<AgentLog>>,
    /// Ready for the next action's reports: reports of one agent go out in order.
    reports: mpsc::UnboundedSender<(ActorId, Transition)>,
}

fn detail_at(node: &Node) -> TransitionDetail {
    TransitionDetail {
        location: Some(node.proc_id().clone()),
        ..TransitionDetail::default()
    }
}

impl FakeAgent {
    /// One submission, as the real agent would take it.
    fn submit_one(
        &self,
        log: &mut std::sync::MutexGuard<'_, AgentLog>,
        action: procmesh_protocol::messages::agent::ActionSpec,
        report_to: procmesh_protocol::ActorId,
    ) -> Result<AttemptRef, AgentError> {
        let attempt = action.attempt_ref();
        log.submits.push(attempt);
        if log.held.len() >= self.max as usize {
            return Err(AgentError::NoCapacity { max: self.max });
        }
        let running = Transition::new(attempt.lsn, attempt.attempt, ActionState::Running, now())
            .with_detail(detail_at(&self.node));
        let _ = self.reports.send((report_to.clone(), running));
        match (self.plan)(attempt.lsn, attempt.attempt) {
            Outcome::Hang => {
                log.held.insert(attempt, report_to);
            }
            outcome => {
                let (state, exit) = match outcome {
                    Outcome::Complete => (ActionState::Completed, 0),
                    _ => (ActionState::Failed, 1),
                };
                let text = format!("lsn {} attempt {}", attempt.lsn, attempt.attempt);
                let end = Transition::new(attempt.lsn, attempt.attempt, state, now()).with_detail(
                    TransitionDetail {
                        exit: Some(ExitStatus::Code(exit)),
                        cpu_ms: Some(1),
                        outputs: vec![OutputFile {
                            path: "out.txt".into(),
                            hash: BlobHash::of(text.as_bytes()),
                            size: text.len() as u64,
                        }],
                        stdout_tail: text.clone().into_bytes(),
                        stderr_tail: b"err".to_vec(),
                        ..TransitionDetail::default()
                    },
                );
                let _ = self.reports.send((report_to, end));
            }
        }
        Ok(attempt)
    }
}

impl Message<Request<AgentRequest>> for FakeAgent {
    type Reply = WireReply<Result<AgentReply, AgentError>>;

    async fn handle(
        &mut self,
        req: Request<AgentRequest>,
        _ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        let mut log = self.log.lock().unwrap();
        Ok(match req.message {
            AgentRequest::Submit { action, report_to } => self
                .submit_one(&mut log, action, report_to)
                .map(AgentReply::Accepted),
            AgentRequest::SubmitBatch { actions, report_to } => Ok(AgentReply::Batch(
                actions
                    .into_iter()
                    .map(|action| self.submit_one(&mut log, action, report_to.clone()))
                    .collect(),
            )),
            AgentRequest::Cancel {
                lsn,
                attempt,
                reason,
            } => {
                let attempt = AttemptRef { lsn, attempt };
                log.cancels.push(attempt);
                match log.held.remove(&attempt) {
                    Some(report_to) => {
                        let t =
                            Transition::new(lsn, attempt.attempt, ActionState::Cancelled, now())
                                .with_detail(TransitionDetail {
                                    reason: Some(reason),
                                    ..TransitionDetail::default()
                                });
                        let _ = self.reports.send((report_to, t));
                        Ok(AgentReply::Cancelling { found: true })
                    }
                    None => Ok(AgentReply::Cancelling { found: false }),
                }
            }
            AgentRequest::Capacity => Ok(AgentReply::Capacity(Capacity {
                max: self.max,
                free: self.max.saturating_sub(log.held.len() as u32),
            })),
            other => Err(AgentError::Internal(format!("not faked: {other:?}"))),
        })
    }
}

/// Tells reports one after another (PA-AG-1).
async fn pump(node: Node, mut reports: mpsc::UnboundedReceiver<(ActorId, Transition)>) {
    while let Some((to, t)) = reports.recv().await {
        let target: RemoteRef<OrchestratorRequest> = node.remote_ref(to);
        let _ = target.tell(OrchestratorRequest::ActionUpdate(t)).await;
    }
}

/// A fake host: one QUIC node whose one proc (`proc-1`) has a fake agent; registers and
/// heartbeats while `beating`.
pub struct FakeHost {
    pub node: Node,
    pub agent: ActorId,
    pub log: Arc<Mutex<AgentLog>>,
    pub beating: Arc<AtomicBool>,
    pub max: u32,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn host_info(node: &Node, capacity: u32) -> HostInfo {
    HostInfo {
        addr: node.addr().clone(),
        capacity,
        labels: BTreeMap::new(),
        system: SystemInfo {
            cores: 2,
            memory_bytes: 1 << 30,
            os: "linux".into(),
            hostname: "fake".into(),
            arch: "x86_64".into(),
        },
        version: "0.1.0".into(),
    }
}

impl FakeHost {
    /// Starts a host with one proc of capacity `max`, registered with `orchestrator`.
    pub async fn start(id: &TlsIdentity, orchestrator: ActorId, max: u32, plan: Plan) -> FakeHost {
        let node = NodeBuilder::new("proc-1")
            .quic(loopback(), id.clone())
            .start()
            .await
            .unwrap();
        let log = Arc::new(Mutex::new(AgentLog::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(pump(node.clone(), rx));
        let actor = FakeAgent::spawn(FakeAgent {
            node: node.clone(),
            max,
            plan,
            log: log.clone(),
            reports: tx,
        });
        let agent = node.expose("agent", actor).unwrap();
        let beating = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn(beat(
            node.clone(),
            orchestrator,
            agent.clone(),
            max,
            log.clone(),
            beating.clone(),
        ));
        FakeHost {
            node,
            agent,
            log,
            beating,
            max,
            task,
        }
    }

    pub fn submits(&self) -> Vec<AttemptRef> {
        self.log.lock().unwrap().submits.clone()
    }

    pub fn cancels(&self) -> Vec<AttemptRef> {
        self.log.lock().unwrap().cancels.clone()
    }

    pub fn held(&self) -> usize {
        self.log.lock().unwrap().held.len()
    }
}

/// Registers, then heartbeats every 50 ms while `beating` (registering again on UnknownHost).
async fn beat(
    node: Node,
    orchestrator: ActorId,
    agent: ActorId,
    max: u32,
    log: Arc<Mutex<AgentLog>>,
    beating: Arc<AtomicBool>,
) {
    let orch: RemoteRef<OrchestratorRequest> = node.remote_ref(orchestrator);
    let mut registered = false;
    loop {
        if beating.load(Ordering::SeqCst) {
            if !registered {
                let answer = orch
                    .ask(OrchestratorRequest::RegisterHost(host_info(&node, max)), T)
                    .await;
                registered = matches!(answer, Ok(Ok(OrchestratorReply::HostRegistered { .. })));
            } else {
                let (running, free) = {
                    let log = log.lock().unwrap();
                    let running: Vec<AttemptRef> = log.held.keys().copied().collect();
                    (running, max.saturating_sub(log.held.len() as u32))
                };
                let heartbeat = Heartbeat {
                    addr: node.addr().clone(),
                    procs: vec![ProcCapacity {
                        agent: agent.clone(),
                        capacity: Capacity { max, free },
                        restarts: 0,
                    }],
                    running,
                };
                match orch.ask(OrchestratorRequest::Heartbeat(heartbeat), T).await {
                    Ok(Err(OrchestratorError::UnknownHost(_))) => registered = false,
                    Ok(Ok(OrchestratorReply::HeartbeatAck { orphans })) => {
                        let mut log = log.lock().unwrap();
                        for orphan in orphans {
                            log.held.remove(&orphan);
                        }
                    }
                    _ => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- client -----------------------------------------------------------------------------------

/// Records the events it is told.
#[derive(Actor)]
pub struct Subscriber {
    events: mpsc::UnboundedSender<ClientEvent>,
}

impl Message<Request<ClientEvent>> for Subscriber {
    type Reply = ();

    async fn handle(&mut self, req: Request<ClientEvent>, _ctx: &mut Context<Self, Self::Reply>) {
        match req.message {
            ClientEvent::Batch { events, .. } => {
                for event in events {
                    let _ = self.events.send(event);
                }
            }
            event => {
                let _ = self.events.send(event);
            }
        }
    }
}

/// A client on its own QUIC node, with a subscriber actor.
pub struct Client {
    pub node: Node,
    pub orch: RemoteRef<OrchestratorRequest>,
    pub subscriber: ActorId,
    pub events: mpsc::UnboundedReceiver<ClientEvent>,
}

impl Client {
    pub async fn connect(id: &TlsIdentity, orchestrator: ActorId) -> Client {
        let node = NodeBuilder::new("local")
            .quic(loopback(), id.clone())
            .start()
            .await
            .unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let subscriber = node
            .expose("events", Subscriber::spawn(Subscriber { events: tx }))
            .unwrap();
        let orch = node.remote_ref(orchestrator);
        Client {
            node,
            orch,
            subscriber,
            events,
        }
    }

    pub async fn ask(
        &self,
        req: OrchestratorRequest,
    ) -> Result<OrchestratorReply, OrchestratorError> {
        self.orch
            .ask(req, T)
            .await
            .expect("the orchestrator answers")
    }

    /// A queue with `retry_limit`; its token.
    pub async fn queue(&self, retry_limit: u32) -> QueueRef {
        let config = QueueConfig {
            retry_limit,
            ..QueueConfig::default()
        };
        match self.ask(OrchestratorRequest::CreateQueue(config)).await {
            Ok(OrchestratorReply::QueueCreated { token, .. }) => QueueRef::Token(token),
            other => panic!("CreateQueue: {other:?}"),
        }
    }

    pub async fn register(&self, worker: &WorkerDescriptor) -> WorkerId {
        match self
            .ask(OrchestratorRequest::RegisterWorker(worker.clone()))
            .await
        {
            Ok(OrchestratorReply::WorkerRegistered { id, missing }) => {
                assert!(missing.is_empty(), "missing {missing:?}");
                id
            }
            other => panic!("RegisterWorker: {other:?}"),
        }
    }

    pub async fn subscribe(&self, target: SubscriptionTarget) -> u64 {
        match self
            .ask(OrchestratorRequest::Subscribe {
                target,
                subscriber: self.subscriber.clone(),
                from: None,
            })
            .await
        {
            Ok(OrchestratorReply::Subscribed { subscription, .. }) => subscription,
            other => panic!("Subscribe: {other:?}"),
        }
    }

    pub async fn submit(
        &self,
        queue: QueueRef,
        actions: Vec<SubmitAction>,
    ) -> Result<Vec<Lsn>, OrchestratorError> {
        match self
            .ask(OrchestratorRequest::Submit { queue, actions })
            .await?
        {
            OrchestratorReply::Submitted { lsns } => Ok(lsns),
            other => panic!("Submit: {other:?}"),
        }
    }

    pub async fn status(&self, queue: QueueRef) -> QueueStatus {
        match self.ask(OrchestratorRequest::QueueStatus(queue)).await {
            Ok(OrchestratorReply::QueueStatus(status)) => status,
            other => panic!("QueueStatus: {other:?}"),
        }
    }

    /// Waits (bounded) until the queue is complete; its status.
    pub async fn until_complete(&self, queue: QueueRef) -> QueueStatus {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let status = self.status(queue).await;
            if status.is_complete {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "queue not complete in time: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The next event, bounded.
    pub async fn next_event(&mut self) -> ClientEvent {
        tokio::time::timeout(T, self.events.recv())
            .await
            .expect("no event in time")
            .expect("subscriber gone")
    }

    /// Events until (and with) the first `QueueComplete`.
    pub async fn events_until_complete(&mut self) -> Vec<ClientEvent> {
        let mut events = Vec::new();
        loop {
            let event = self.next_event().await;
            let done = matches!(event, ClientEvent::QueueComplete { .. });
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

pub fn action(worker: WorkerId) -> SubmitAction {
    SubmitAction {
        action: ActionDef::new(worker),
        priority: None,
        idempotency_key: None,
    }
}

pub fn with_priority(worker: WorkerId, priority: i32) -> SubmitAction {
    SubmitAction {
        priority: Some(priority),
        ..action(worker)
    }
}

/// The token inside a queue ref.
pub fn token(queue: QueueRef) -> QueueToken {
    match queue {
        QueueRef::Token(token) => token,
        QueueRef::Id(_) => panic!("expected a token"),
    }
}

/// The transitions of `lsn` among `events`, in order.
pub fn transitions_of(events: &[ClientEvent], lsn: Lsn) -> Vec<(Attempt, ActionState)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Transition { transition, .. } if transition.lsn == lsn => {
                Some((transition.attempt, transition.state))
            }
            _ => None,
        })
        .collect()
}

/// Polls `check` every 20 ms until true; panics after [`T`] naming `what`.
pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + T;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn attempt(n: u32) -> Attempt {
    Attempt::new(n).unwrap()
}
