//! A fake host: one QUIC node whose one proc (`proc-1`) has a [`FakeAgent`] exposed as
//! `agent`. The agent accepts up to `max` attempts and plays each by a [`Plan`], reporting
//! `Running` and an end to the orchestrator like a real agent (in order, one after another);
//! the host registers and heartbeats its held attempts every 50 ms while
//! [`FakeHost::beating`], registering again on `UnknownHost` and dropping the orphans an ack
//! names.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kameo::actor::Spawn;
use kameo::message::{Context, Message};
use kameo::Actor;
use procmesh_protocol::action::{
    ActionState, Attempt, AttemptRef, ExitStatus, Lsn, Transition, TransitionDetail,
};
use procmesh_protocol::cas::BlobHash;
use procmesh_protocol::ids::ActorId;
use procmesh_protocol::messages::agent::{
    ActionSpec, AgentError, AgentReply, AgentRequest, Capacity,
};
use procmesh_protocol::messages::host::{HostInfo, SystemInfo};
use procmesh_protocol::messages::orchestrator::{
    Heartbeat, OrchestratorError, OrchestratorReply, OrchestratorRequest, ProcCapacity,
};
use procmesh_protocol::spec::OutputFile;
use procmesh_transport::{now, Node, NodeBuilder, RemoteRef, Request, TlsIdentity, WireReply};
use tokio::sync::mpsc;

/// How long the fake host waits for the orchestrator to answer a registration or heartbeat.
pub const ASK_WITHIN: Duration = Duration::from_secs(20);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

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

/// What a fake agent does with each attempt, by LSN and attempt number.
pub type Plan = Arc<dyn Fn(Lsn, Attempt) -> Outcome + Send + Sync>;

/// A plan playing every attempt as `outcome`.
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
        action: ActionSpec,
        report_to: ActorId,
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
    /// Its node (proc `proc-1`).
    pub node: Node,
    /// Its proc's fake agent.
    pub agent: ActorId,
    /// What the agent holds and saw.
    pub log: Arc<Mutex<AgentLog>>,
    /// While set, it registers and heartbeats; clear it to make the host fall silent.
    pub beating: Arc<AtomicBool>,
    /// Its proc's capacity.
    pub max: u32,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a fake host on `node` with one proc of `capacity` registers as: the node its
/// certificate names (`name`; ORC-33).
pub fn host_info(node: &Node, name: &str, capacity: u32) -> HostInfo {
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
        node: name.to_owned(),
        node_secret: None,
        isolation: None,
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
        let name = id.identity().ok().and_then(|i| i.name).unwrap_or_default();
        let task = tokio::spawn(beat(
            node.clone(),
            name,
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

    /// Every submission its agent received, in arrival order.
    pub fn submits(&self) -> Vec<AttemptRef> {
        self.log.lock().unwrap().submits.clone()
    }

    /// Every cancellation its agent received, in arrival order.
    pub fn cancels(&self) -> Vec<AttemptRef> {
        self.log.lock().unwrap().cancels.clone()
    }

    /// How many attempts its agent holds now.
    pub fn held(&self) -> usize {
        self.log.lock().unwrap().held.len()
    }
}

/// Registers, then heartbeats every 50 ms while `beating` (registering again on UnknownHost).
async fn beat(
    node: Node,
    name: String,
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
                    .ask(
                        OrchestratorRequest::RegisterHost(host_info(&node, &name, max)),
                        ASK_WITHIN,
                    )
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
                match orch
                    .ask(OrchestratorRequest::Heartbeat(heartbeat), ASK_WITHIN)
                    .await
                {
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
