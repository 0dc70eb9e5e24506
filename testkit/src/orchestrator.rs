//! A stand-in orchestrator: a kameo actor exposed as `orchestrator` on a transport node. It
//! records every request it is sent ([`Seen`], and an [`Event`] stream) and answers as its
//! builder says:
//!
//! - serves the workers it was given to `GetWorker` (`UnknownWorker` otherwise);
//! - with [`FakeOrchestratorBuilder::registers_hosts`], answers `RegisterHost` and
//!   `Heartbeat` like an orchestrator would (the heartbeat ack names
//!   [`FakeOrchestrator::orphans`]; after [`FakeOrchestrator::forget`] is set, the next
//!   heartbeat is answered `UnknownHost`);
//! - with [`FakeOrchestratorBuilder::script`], answers the `n`-th request (0-based) as the
//!   [`Script`] says: normally, never (a lost reply), or with an error;
//! - acknowledges everything else.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kameo::actor::Spawn;
use kameo::message::{Context, Message};
use kameo::reply::{DelegatedReply, ReplySender};
use kameo::Actor;
use procmesh_protocol::action::{ActionState, AttemptRef, Transition};
use procmesh_protocol::ids::ActorId;
use procmesh_protocol::messages::orchestrator::{
    OrchestratorError, OrchestratorReply, OrchestratorRequest,
};
use procmesh_protocol::spec::{WorkerDescriptor, WorkerId};
use procmesh_transport::{Node, NodeBuilder, Request, WireReply};
use tokio::sync::mpsc;

type Answer = Result<OrchestratorReply, OrchestratorError>;

/// How long [`FakeOrchestrator::next`] waits for a matching request.
pub const NEXT_WITHIN: Duration = Duration::from_secs(10);

/// What the fake does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// Records its transitions and answers normally (`Ack` for updates).
    Ack,
    /// Records its transitions, never answers (a lost reply; the ask times out).
    Silent,
    /// Records nothing and answers this error (it did not apply them).
    Refuse(OrchestratorError),
    /// Records its transitions and answers this error (it judged them).
    Judge(OrchestratorError),
}

/// What the fake saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// The variant name of every request, in arrival order (`"GetWorker"`, `"ActionUpdate"`).
    pub requests: Vec<String>,
    /// Requests received.
    pub messages: usize,
    /// Every transition recorded, in arrival order (repeats included; none of refused
    /// requests).
    pub transitions: Vec<Transition>,
    /// Transitions of requests answered normally ([`Script::Ack`]).
    pub acknowledged: Vec<Transition>,
}

impl Seen {
    /// The final transition of `lsn`, if it has ended.
    pub fn terminal(&self, lsn: u64) -> Option<&Transition> {
        self.transitions
            .iter()
            .find(|t| t.lsn.0 == lsn && t.state.is_terminal())
    }

    /// How many recorded transitions enter `state`.
    pub fn count_in(&self, state: ActionState) -> usize {
        self.transitions.iter().filter(|t| t.state == state).count()
    }
}

/// One request the fake received, and whether it answered it `UnknownHost` (a forgotten
/// host's heartbeat).
#[derive(Debug, Clone)]
pub struct Event {
    /// The request.
    pub request: OrchestratorRequest,
    /// Whether it was refused as from an unknown host.
    pub refused: bool,
}

/// Configures a [`FakeOrchestrator`]; start it with [`start`](Self::start) or
/// [`expose_on`](Self::expose_on).
pub struct FakeOrchestratorBuilder {
    workers: BTreeMap<WorkerId, WorkerDescriptor>,
    heartbeat_interval_ms: Option<u64>,
    script: Box<dyn Fn(usize) -> Script + Send + Sync>,
}

impl FakeOrchestratorBuilder {
    /// Serves `descriptor` under `id` to `GetWorker`.
    pub fn worker(mut self, id: WorkerId, descriptor: WorkerDescriptor) -> Self {
        self.workers.insert(id, descriptor);
        self
    }

    /// Answers `RegisterHost` with this heartbeat interval (hosts lost after ten of them) and
    /// `Heartbeat` with an ack naming the orphans. Without it both are just acknowledged.
    pub fn registers_hosts(mut self, heartbeat_interval_ms: u64) -> Self {
        self.heartbeat_interval_ms = Some(heartbeat_interval_ms);
        self
    }

    /// Answers the `n`-th request (0-based) as `script(n)` says (default: always
    /// [`Script::Ack`]).
    pub fn script(mut self, script: impl Fn(usize) -> Script + Send + Sync + 'static) -> Self {
        self.script = Box::new(script);
        self
    }

    /// Starts the node `builder` builds and exposes the fake on it as `orchestrator`.
    pub async fn start(self, builder: NodeBuilder) -> FakeOrchestrator {
        let node = builder.start().await.expect("fake orchestrator node");
        self.expose_on(&node)
    }

    /// Exposes the fake as `orchestrator` on `node` (kept in the returned handle).
    pub fn expose_on(self, node: &Node) -> FakeOrchestrator {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let forget = Arc::new(AtomicBool::new(false));
        let orphans = Arc::new(Mutex::new(Vec::new()));
        let (tx, events) = mpsc::unbounded_channel();
        let actor = OrchestratorActor::spawn_with_mailbox(
            OrchestratorActor {
                workers: self.workers,
                heartbeat_interval_ms: self.heartbeat_interval_ms,
                script: self.script,
                seen: seen.clone(),
                forget: forget.clone(),
                orphans: orphans.clone(),
                events: tx,
                held: Vec::new(),
            },
            kameo::mailbox::unbounded(),
        );
        let id = node.expose("orchestrator", actor).expect("expose");
        FakeOrchestrator {
            node: node.clone(),
            id,
            seen,
            events,
            forget,
            orphans,
        }
    }
}

/// A running fake orchestrator: its node, its id and what it saw.
pub struct FakeOrchestrator {
    /// The node it is exposed on.
    pub node: Node,
    /// Where it is (`orchestrator` on [`node`](Self::node)).
    pub id: ActorId,
    /// What it saw.
    pub seen: Arc<Mutex<Seen>>,
    /// Every request, in arrival order (see also [`next`](Self::next)).
    pub events: mpsc::UnboundedReceiver<Event>,
    /// While set, the next heartbeat is answered `UnknownHost` (and the flag cleared); only
    /// with [`FakeOrchestratorBuilder::registers_hosts`].
    pub forget: Arc<AtomicBool>,
    /// What every heartbeat ack names as orphans.
    pub orphans: Arc<Mutex<Vec<AttemptRef>>>,
}

impl FakeOrchestrator {
    /// A fake that serves no workers, acknowledges everything and answers every request.
    pub fn builder() -> FakeOrchestratorBuilder {
        FakeOrchestratorBuilder {
            workers: BTreeMap::new(),
            heartbeat_interval_ms: None,
            script: Box::new(|_| Script::Ack),
        }
    }

    /// A copy of the transitions it recorded.
    pub fn transitions(&self) -> Vec<Transition> {
        self.seen.lock().unwrap().transitions.clone()
    }

    /// Requests it received.
    pub fn messages(&self) -> usize {
        self.seen.lock().unwrap().messages
    }

    /// The next request that `pick` selects, skipping others; panics after [`NEXT_WITHIN`].
    pub async fn next<R>(&mut self, mut pick: impl FnMut(&OrchestratorRequest) -> Option<R>) -> R {
        self.next_event(|e| pick(&e.request)).await
    }

    /// The next event that `pick` selects, skipping others; panics after [`NEXT_WITHIN`].
    pub async fn next_event<R>(&mut self, mut pick: impl FnMut(&Event) -> Option<R>) -> R {
        let deadline = tokio::time::Instant::now() + NEXT_WITHIN;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("no such event in time")
                .expect("orchestrator gone");
            if let Some(r) = pick(&event) {
                return r;
            }
        }
    }

    /// Takes the actor away and shuts its node down.
    pub async fn stop(&self) {
        self.node.unexpose("orchestrator");
        self.node.shutdown(Duration::from_millis(100)).await;
    }
}

/// The actor behind a [`FakeOrchestrator`].
#[derive(Actor)]
struct OrchestratorActor {
    workers: BTreeMap<WorkerId, WorkerDescriptor>,
    heartbeat_interval_ms: Option<u64>,
    script: Box<dyn Fn(usize) -> Script + Send + Sync>,
    seen: Arc<Mutex<Seen>>,
    forget: Arc<AtomicBool>,
    orphans: Arc<Mutex<Vec<AttemptRef>>>,
    events: mpsc::UnboundedSender<Event>,
    /// Replies never sent (kept so the ask is not failed by a dropped sender).
    held: Vec<ReplySender<WireReply<Answer>>>,
}

impl OrchestratorActor {
    /// The answer of an orchestrator that accepted `message`.
    fn answer(&self, message: OrchestratorRequest, forgotten: bool) -> Answer {
        match (message, self.heartbeat_interval_ms) {
            (OrchestratorRequest::GetWorker(id), _) => match self.workers.get(&id) {
                Some(d) => Ok(OrchestratorReply::Worker(d.clone())),
                None => Err(OrchestratorError::UnknownWorker(id)),
            },
            (OrchestratorRequest::RegisterHost(_), Some(interval)) => {
                Ok(OrchestratorReply::HostRegistered {
                    heartbeat_interval_ms: interval,
                    lost_after_ms: 10 * interval,
                    ticket_key: None,
                })
            }
            (OrchestratorRequest::Heartbeat(hb), Some(_)) => {
                if forgotten {
                    Err(OrchestratorError::UnknownHost(hb.addr))
                } else {
                    Ok(OrchestratorReply::HeartbeatAck {
                        orphans: self.orphans.lock().unwrap().clone(),
                    })
                }
            }
            _ => Ok(OrchestratorReply::Ack),
        }
    }
}

impl Message<Request<OrchestratorRequest>> for OrchestratorActor {
    type Reply = DelegatedReply<WireReply<Answer>>;

    async fn handle(
        &mut self,
        req: Request<OrchestratorRequest>,
        ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        let message = req.message;
        let transitions = match &message {
            OrchestratorRequest::ActionUpdate(t) => vec![t.clone()],
            OrchestratorRequest::ActionUpdates(ts) => ts.clone(),
            _ => Vec::new(),
        };
        let forgotten = self.heartbeat_interval_ms.is_some()
            && matches!(message, OrchestratorRequest::Heartbeat(_))
            && self.forget.swap(false, Ordering::SeqCst);
        let _ = self.events.send(Event {
            request: message.clone(),
            refused: forgotten,
        });
        let script = {
            let mut seen = self.seen.lock().unwrap();
            let kind = format!("{message:?}");
            seen.requests
                .push(kind.split(['(', ' ', '{']).next().unwrap_or("").to_owned());
            let n = seen.messages;
            seen.messages += 1;
            let script = (self.script)(n);
            if !matches!(script, Script::Refuse(_)) {
                seen.transitions.extend(transitions.iter().cloned());
            }
            if script == Script::Ack {
                seen.acknowledged.extend(transitions);
            }
            script
        };
        let answer = match script {
            Script::Silent => {
                let (delegated, sender) = ctx.reply_sender();
                self.held.extend(sender);
                return delegated;
            }
            Script::Ack => self.answer(message, forgotten),
            Script::Refuse(e) | Script::Judge(e) => Err(e),
        };
        ctx.reply(Ok(answer))
    }
}
