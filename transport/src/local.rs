//! In-process transport: nodes in one process reach each other through a [`LocalHub`], by
//! `local!<name>` address. Envelopes are handed over as values (no encoding) by one forwarding
//! task per direction, so ordering and bounce semantics are those of the other transports.
//! Used by tests and by `procmesh demo`'s in-process mode.

use std::sync::{Arc, Weak};

use dashmap::DashMap;
use procmesh_protocol::Envelope;
use tokio::sync::mpsc;

use crate::link::{Link, TransportKind};
use crate::node::{NodeInner, PeerInfo};
use crate::stream::{fail_link, our_hello};

/// A registry of in-process nodes by name. Cheap to clone; clones share the registry.
#[derive(Clone, Default)]
pub struct LocalHub {
    nodes: Arc<DashMap<String, Weak<NodeInner>>>,
}

impl std::fmt::Debug for LocalHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalHub")
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

impl LocalHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn register(&self, name: &str, node: &Arc<NodeInner>) {
        self.nodes.insert(name.to_owned(), Arc::downgrade(node));
    }

    pub(crate) fn unregister(&self, node: &Arc<NodeInner>) {
        let me = Arc::downgrade(node);
        self.nodes.retain(|_, n| !Weak::ptr_eq(n, &me));
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<NodeInner>> {
        self.nodes.get(name).and_then(|n| n.upgrade())
    }
}

/// Forwards envelopes from `rx` into `to`, in order, as arriving from `peer`.
async fn forward(
    from: Arc<NodeInner>,
    to: Arc<NodeInner>,
    link: Link,
    mut rx: mpsc::UnboundedReceiver<Envelope>,
    peer: Arc<PeerInfo>,
) {
    loop {
        let env = tokio::select! {
            biased;
            env = rx.recv() => env,
            _ = link.closed() => None,
        };
        match env {
            Some(env) => to.route(env, Some(&peer)).await,
            None => break,
        }
    }
    // fail_link marks the link flushed (LNK-3) once the rest is bounced.
    fail_link(from, link, rx, "in-process link closed".into()).await;
}

pub(crate) async fn run_outbound(
    node: Arc<NodeInner>,
    name: String,
    link: Link,
    rx: mpsc::UnboundedReceiver<Envelope>,
) {
    let target = node.hub.as_ref().and_then(|hub| hub.get(&name));
    let Some(target) = target else {
        let reason = format!("no in-process node named local!{name}");
        return fail_link(node, link, rx, reason).await;
    };
    // The target sees us as a peer, and may answer over a link of its own back to us.
    let us = Arc::new(PeerInfo::new(TransportKind::Local, our_hello(&node, None)));
    let them = Arc::new(PeerInfo::new(
        TransportKind::Local,
        our_hello(&target, None),
    ));
    // NODE-8, NODE-7: both ends admit the link before anything is routed over it.
    if let Err((code, reason)) = target.admit_accepted(&us) {
        target.refuse(code);
        tracing::warn!(code, %reason, peer = %us.hello.addr, "in-process link refused");
        let reason = format!("link to local!{name} refused by the peer: {reason}");
        return fail_link(node, link, rx, reason).await;
    }
    if let Err((code, reason)) = node.admit(&them) {
        node.refuse(code);
        tracing::warn!(code, %reason, peer = %them.hello.addr, "in-process link refused");
        let reason = format!("link to local!{name} refused: {reason}");
        return fail_link(node, link, rx, reason).await;
    }
    let (back, back_rx) = Link::new(us.hello.addr.to_string(), TransportKind::Local);
    target.adopt(&us, &back);
    tokio::spawn(forward(
        target.clone(),
        node.clone(),
        back.clone(),
        back_rx,
        them,
    ));
    let closer = back.clone();
    forward(node, target, link, rx, us).await;
    closer.close();
}

/// The node registered in `node`'s hub under `name`.
pub(crate) fn target(node: &NodeInner, name: &str) -> Option<Arc<NodeInner>> {
    node.hub.as_ref().and_then(|hub| hub.get(name))
}
