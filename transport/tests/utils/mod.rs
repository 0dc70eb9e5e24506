//! Shared helpers of the transport integration tests: a test message, a recording kameo actor,
//! and node pairs over each transport.
#![allow(dead_code)]

pub mod raw;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kameo::message::{Context, Message};
use kameo::Actor;
use procmesh_protocol::messages::RemoteMessage;
use procmesh_transport::{LocalHub, MeshCa, Node, NodeBuilder, Request, Role, TlsIdentity};
use serde::{Deserialize, Serialize};

/// The message every test actor speaks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TestMsg {
    /// Answers `n + 1`.
    Ping(u64),
    /// Records `n`; answers how many were recorded.
    Seq(u64),
    /// Answers how many `Seq` were recorded.
    Count,
    /// Answers how many `Seq` arrived out of order (each must be the previous + 1, from 0).
    OrderViolations,
    /// Answers 1 if the request came from a loopback peer, else 0.
    IsLoopback,
    /// Answers after sleeping this many milliseconds.
    Sleep(u64),
    /// Answers with an error from the handler.
    Fail,
    /// Answers the role of the peer's certificate: 0 none, 1 orchestrator, 2 host, 3 client,
    /// 4 operator.
    PeerRole,
}

impl RemoteMessage for TestMsg {
    type Reply = u64;
}

/// Records what it is told.
#[derive(Actor, Default)]
pub struct Recorder {
    seen: u64,
    next: u64,
    violations: u64,
}

impl Message<Request<TestMsg>> for Recorder {
    type Reply = Result<u64, String>;

    async fn handle(
        &mut self,
        req: Request<TestMsg>,
        _ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        Ok(match req.message {
            TestMsg::Ping(n) => n + 1,
            TestMsg::Seq(n) => {
                if n != self.next {
                    self.violations += 1;
                }
                self.next = n + 1;
                self.seen += 1;
                self.seen
            }
            TestMsg::Count => self.seen,
            TestMsg::OrderViolations => self.violations,
            TestMsg::IsLoopback => req.is_loopback() as u64,
            TestMsg::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                ms
            }
            TestMsg::Fail => return Err("asked to fail".into()),
            TestMsg::PeerRole => match req.identity().map(|i| i.role) {
                None => 0,
                Some(Role::Orchestrator) => 1,
                Some(Role::Host) => 2,
                Some(Role::Client) => 3,
                Some(Role::Operator) => 4,
            },
        })
    }
}

/// Which transport a pair of nodes uses.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Quic,
    Unix,
    Local,
}

/// A CA and a node identity from it.
pub fn identity() -> (MeshCa, TlsIdentity) {
    let ca = MeshCa::generate("test", Duration::from_secs(3600)).unwrap();
    let id = ca
        .issue(Role::Host, "node", &[], Duration::from_secs(3600))
        .unwrap();
    (ca, id)
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Two started nodes that reach each other over `kind`; keep the tempdir alive.
pub async fn pair(kind: Kind) -> (Node, Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = match kind {
        Kind::Quic => {
            let (_, id) = identity();
            let a = NodeBuilder::new("a").quic(loopback(), id.clone());
            let b = NodeBuilder::new("b").quic(loopback(), id);
            (a.start().await.unwrap(), b.start().await.unwrap())
        }
        Kind::Unix => {
            let a = NodeBuilder::new("a").unix(dir.path().join("a.sock"));
            let b = NodeBuilder::new("b").unix(dir.path().join("b.sock"));
            (a.start().await.unwrap(), b.start().await.unwrap())
        }
        Kind::Local => {
            let hub = LocalHub::new();
            let a = NodeBuilder::new("a").local(&hub, "a");
            let b = NodeBuilder::new("b").local(&hub, "b");
            (a.start().await.unwrap(), b.start().await.unwrap())
        }
    };
    (a, b, dir)
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
