//! Shared helpers of the orchestrator tests: a real orchestrator on QUIC (127.0.0.1), fake
//! hosts (one QUIC node each, one proc whose fake agent reports transitions like a real one)
//! that register and heartbeat, and a client node with a subscriber actor. Every wait is
//! bounded.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use kameo::actor::Spawn;
use kameo::message::{Context, Message};
use kameo::Actor;
use procmesh_orchestrator::{Orchestrator, OrchestratorConfig};
use procmesh_protocol::messages::client::ClientEvent;
use procmesh_protocol::messages::orchestrator::{
    OrchestratorError, OrchestratorReply, OrchestratorRequest, QueueConfig, QueueRef, QueueStatus,
    QueueToken, SubmitAction, SubscriptionTarget,
};
use procmesh_protocol::spec::{ActionDef, WorkerDescriptor, WorkerId};
use procmesh_protocol::{ActionState, ActorId, Attempt, Lsn};
use procmesh_transport::Node;
use procmesh_transport::{MeshCa, NodeBuilder, RemoteRef, Request, Role, TlsIdentity};
use tokio::sync::mpsc;

/// The bound of every wait.
pub const T: Duration = Duration::from_secs(20);

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// One identity of each role from one mesh CA.
pub struct Ids {
    pub ca: MeshCa,
    pub orchestrator: TlsIdentity,
    /// A host certificate naming node `node` (every fake host uses it).
    pub host: TlsIdentity,
    pub client: TlsIdentity,
}

/// A mesh CA and one identity of each role.
pub fn identity() -> Ids {
    procmesh_transport::install_crypto_provider();
    let ca = MeshCa::generate("test", Duration::from_secs(3600)).unwrap();
    let issue = |role, name| {
        ca.issue(role, name, &[], Duration::from_secs(3600))
            .unwrap()
    };
    Ids {
        orchestrator: issue(Role::Orchestrator, "orchestrator"),
        host: issue(Role::Host, "node"),
        client: issue(Role::Client, ""),
        ca,
    }
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
    ScriptWorker::new("#!/bin/sh\necho hi\n")
        .store(orch.node().blob_store().unwrap())
        .await
}

// ---- fake hosts -------------------------------------------------------------------------------

#[allow(unused_imports)]
pub use procmesh_testkit::host::{always, FakeHost, Outcome, Plan};
pub use procmesh_testkit::{eventually, ScriptWorker};

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
                events: Default::default(),
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

pub fn attempt(n: u32) -> Attempt {
    Attempt::new(n).unwrap()
}
