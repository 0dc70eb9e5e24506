//! The report pump's fake orchestrator: the testkit's [`Fake`] exposed on a transport
//! [`Node`] of a [`LocalHub`], answering `ActionUpdate(s)` as a script says — acknowledge,
//! refuse with an error, or stay silent (the reply is lost; the ask times out).

use procmesh_protocol::ids::{ActorId, HostAddr};
use procmesh_transport::{LocalHub, Node, NodeBuilder};

pub use procmesh_testkit::orchestrator::{FakeOrchestrator as Fake, Script};

/// The script: the answer to message `n`.
pub type ScriptFn = Box<dyn Fn(usize) -> Script + Send + Sync>;

/// The id the fake is exposed under on hub node `local!orc`: fixed, so a test can report to
/// it before it exists.
pub fn orchestrator_id() -> ActorId {
    HostAddr::Local("orc".into())
        .proc("service")
        .and_then(|p| p.actor("orchestrator"))
        .expect("valid id")
}

/// Starts the fake on `hub` under [`orchestrator_id`], answering by `script`.
pub async fn fake(hub: &LocalHub, script: ScriptFn) -> Fake {
    let fake = fake_on(NodeBuilder::new("service").local(hub, "orc"), script).await;
    assert_eq!(fake.id, orchestrator_id());
    fake
}

/// Starts the fake as `orchestrator` on the node `builder` builds.
pub async fn fake_on(builder: NodeBuilder, script: ScriptFn) -> Fake {
    Fake::builder().script(script).start(builder).await
}

/// A proc agent's node on `hub` (`local!agent`, proc `worker-1`), which reports go out of.
pub async fn agent_node(hub: &LocalHub) -> Node {
    NodeBuilder::new("worker-1")
        .local(hub, "agent")
        .start()
        .await
        .expect("agent node")
}
