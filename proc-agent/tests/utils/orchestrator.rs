//! A fake orchestrator for the report pump's tests: a kameo actor exposed on a transport
//! [`Node`] of a [`LocalHub`], answering `ActionUpdate(s)` as a script says — acknowledge,
//! refuse with an error, or stay silent (the reply is lost; the ask times out).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kameo::actor::Spawn;
use kameo::message::{Context, Message};
use kameo::reply::{DelegatedReply, ReplySender};
use kameo::Actor;
use procmesh_protocol::action::Transition;
use procmesh_protocol::ids::{ActorId, HostAddr};
use procmesh_protocol::messages::orchestrator::{
    OrchestratorError, OrchestratorReply, OrchestratorRequest,
};
use procmesh_transport::{LocalHub, Node, NodeBuilder, Request, WireReply};

type Answer = Result<OrchestratorReply, OrchestratorError>;

/// What the fake does with the `n`-th message (0-based) it receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// Records its transitions and answers `Ack`.
    Ack,
    /// Records its transitions, never answers (a lost reply).
    Silent,
    /// Records nothing and answers this error (it did not apply them).
    Refuse(OrchestratorError),
    /// Records its transitions and answers this error (it judged them).
    Judge(OrchestratorError),
}

/// What the fake saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every transition recorded, in arrival order (repeats included).
    pub transitions: Vec<Transition>,
    /// Messages received.
    pub messages: usize,
    /// Transitions in messages answered with `Ack` / `Updated`.
    pub acknowledged: Vec<Transition>,
}

/// The script: the answer to message `n`.
pub type ScriptFn = Box<dyn Fn(usize) -> Script + Send + Sync>;

/// The fake orchestrator actor.
#[derive(Actor)]
pub struct FakeOrchestrator {
    seen: Arc<Mutex<Seen>>,
    script: ScriptFn,
    /// Replies never sent (kept so the ask is not failed by a dropped sender).
    held: Vec<ReplySender<WireReply<Answer>>>,
}

impl Message<Request<OrchestratorRequest>> for FakeOrchestrator {
    type Reply = DelegatedReply<WireReply<Answer>>;

    async fn handle(
        &mut self,
        req: Request<OrchestratorRequest>,
        ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        let transitions = match req.message {
            OrchestratorRequest::ActionUpdate(t) => vec![t],
            OrchestratorRequest::ActionUpdates(ts) => ts,
            _ => Vec::new(),
        };
        let mut seen = self.seen.lock().unwrap();
        let n = seen.messages;
        seen.messages += 1;
        let script = (self.script)(n);
        if !matches!(script, Script::Refuse(_)) {
            seen.transitions.extend(transitions.iter().cloned());
        }
        let answer = match script {
            Script::Silent => {
                let (delegated, sender) = ctx.reply_sender();
                self.held.extend(sender);
                return delegated;
            }
            Script::Ack => {
                seen.acknowledged.extend(transitions);
                Ok(OrchestratorReply::Ack)
            }
            Script::Refuse(e) | Script::Judge(e) => Err(e),
        };
        ctx.reply(Ok(answer))
    }
}

/// The id the fake is exposed under on hub node `local!orc`: fixed, so a test can report to
/// it before it exists.
pub fn orchestrator_id() -> ActorId {
    HostAddr::Local("orc".into())
        .proc("service")
        .and_then(|p| p.actor("orchestrator"))
        .expect("valid id")
}

/// A running fake: its node and what it saw.
pub struct Fake {
    /// Its node (`local!orc`, proc `service`).
    pub node: Node,
    /// What it saw.
    pub seen: Arc<Mutex<Seen>>,
    /// Where it is.
    pub id: ActorId,
}

impl Fake {
    /// Starts the fake on `hub` under [`orchestrator_id`], answering by `script`.
    pub async fn start(hub: &LocalHub, script: ScriptFn) -> Fake {
        let fake = Fake::start_with(NodeBuilder::new("service").local(hub, "orc"), script).await;
        assert_eq!(fake.id, orchestrator_id());
        fake
    }

    /// Starts the fake as `orchestrator` on the node `builder` builds.
    pub async fn start_with(builder: NodeBuilder, script: ScriptFn) -> Fake {
        let node = builder.start().await.expect("fake orchestrator node");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let actor = FakeOrchestrator::spawn_with_mailbox(
            FakeOrchestrator {
                seen: seen.clone(),
                script,
                held: Vec::new(),
            },
            kameo::mailbox::unbounded(),
        );
        let id = node.expose("orchestrator", actor).expect("expose");
        Fake { node, seen, id }
    }

    /// A copy of what it saw.
    pub fn transitions(&self) -> Vec<Transition> {
        self.seen.lock().unwrap().transitions.clone()
    }

    /// Messages it received.
    pub fn messages(&self) -> usize {
        self.seen.lock().unwrap().messages
    }

    /// Takes the actor away and shuts its node down.
    pub async fn stop(&self) {
        self.node.unexpose("orchestrator");
        self.node.shutdown(Duration::from_millis(100)).await;
    }
}

/// A proc agent's node on `hub` (`local!agent`, proc `worker-1`), which reports go out of.
pub async fn agent_node(hub: &LocalHub) -> Node {
    NodeBuilder::new("worker-1")
        .local(hub, "agent")
        .start()
        .await
        .expect("agent node")
}
