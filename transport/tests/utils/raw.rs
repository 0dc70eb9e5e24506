//! Raw peers for the transport's authority and limit tests: identities from one mesh CA, a
//! node serving a recorder, and quinn connections that speak the wire by hand (a handshake
//! with any major version, envelopes, a stream that just stops).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use kameo::actor::Spawn;
use procmesh_protocol::codec::{encode_body, FrameCodec, Hello};
use procmesh_protocol::{ActorId, Body, Envelope};
use procmesh_transport::{MeshCa, Node, NodeBuilder, Role, TlsIdentity};

use super::{loopback, Recorder, TestMsg};

/// How long a raw peer waits for anything.
pub const T: Duration = Duration::from_secs(10);
/// How long test certificates last.
pub const HOUR: Duration = Duration::from_secs(3600);

pub fn ca() -> MeshCa {
    MeshCa::generate("test", HOUR).unwrap()
}

pub fn issue(ca: &MeshCa, role: Role, name: &str) -> TlsIdentity {
    ca.issue(role, name, &[], HOUR).unwrap()
}

pub async fn quic_node(name: &str, id: TlsIdentity) -> Node {
    NodeBuilder::new(name)
        .quic(loopback(), id)
        .start()
        .await
        .unwrap()
}

/// A node named `name` on a loopback QUIC address, with a host certificate naming it.
pub fn host(ca: &MeshCa, name: &str) -> NodeBuilder {
    NodeBuilder::new(name).quic(loopback(), issue(ca, Role::Host, name))
}

/// A node exposing a recorder as `rec`; returns the node and the recorder's id.
pub async fn serving(builder: NodeBuilder) -> (Node, ActorId) {
    let node = builder.start().await.unwrap();
    let rec = node
        .expose("rec", Recorder::spawn(Recorder::default()))
        .unwrap();
    (node, rec)
}

/// Whether the recorder `rec` on `node` has counted `n` messages within [`T`]: a test sends
/// refused traffic, then an honest message, and once that is counted the rest was routed.
pub async fn counted(node: &Node, rec: &ActorId, n: u64) -> bool {
    let local = node.remote_ref::<TestMsg>(rec.clone());
    super::eventually(T, || async {
        local.ask(TestMsg::Count, T).await.unwrap() == n
    })
    .await
}

pub fn refused(node: &Node, code: &str) -> u64 {
    node.refusals().get(code).copied().unwrap_or(0)
}

/// A raw quinn client endpoint holding `id`.
pub fn raw_endpoint(id: &TlsIdentity) -> quinn::Endpoint {
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(id.client_config().unwrap()).unwrap();
    let mut endpoint = quinn::Endpoint::client(loopback()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

pub async fn raw_connect(endpoint: &quinn::Endpoint, to: SocketAddr) -> Option<quinn::Connection> {
    let connecting = endpoint.connect(to, "node.procmesh").ok()?;
    tokio::time::timeout(T, connecting).await.ok()?.ok()
}

/// A raw connection to `node` as `id`, with its endpoint (dropping that closes it).
pub async fn connected(id: &TlsIdentity, node: &Node) -> (quinn::Endpoint, quinn::Connection) {
    let endpoint = raw_endpoint(id);
    let conn = raw_connect(&endpoint, node.quic_addr().unwrap())
        .await
        .expect("a raw connection");
    (endpoint, conn)
}

/// A raw control stream: our handshake written (with `major` in the prefix), the answer read.
pub struct RawLink {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub buf: BytesMut,
    pub answer: Hello,
}

pub async fn raw_link(conn: &quinn::Connection, hello: &Hello, major: u16) -> RawLink {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let codec = FrameCodec::default();
    let mut out = Vec::new();
    codec.encode_handshake(hello, &mut out).unwrap();
    out[4..6].copy_from_slice(&major.to_be_bytes());
    send.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let answer = tokio::time::timeout(T, async {
        loop {
            // The answer is always of our major (1): read it as such.
            if let Ok((hello, _, used)) = codec.decode_handshake(&buf) {
                buf.advance(used);
                return hello;
            }
            let mut chunk = [0u8; 4096];
            let n = recv.read(&mut chunk).await.unwrap().expect("answer");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap();
    RawLink {
        send,
        recv,
        buf,
        answer,
    }
}

impl RawLink {
    pub async fn send(&mut self, env: &Envelope) {
        let mut out = Vec::new();
        FrameCodec::default().encode(env, &mut out).unwrap();
        self.send.write_all(&out).await.unwrap();
    }

    pub async fn next(&mut self) -> Envelope {
        let codec = FrameCodec::default();
        tokio::time::timeout(T, async {
            loop {
                if let Ok((env, used)) = codec.decode::<Envelope>(&self.buf) {
                    self.buf.advance(used);
                    return env;
                }
                let mut chunk = [0u8; 4096];
                let n = self.recv.read(&mut chunk).await.unwrap().expect("frame");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .unwrap()
    }
}

impl RawLink {
    /// Whether the node ends this stream (or its connection) within `T`.
    pub async fn ended(&mut self) -> bool {
        tokio::time::timeout(T, async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.recv.read(&mut chunk).await {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => return,
                }
            }
        })
        .await
        .is_ok()
    }
}

pub fn tell(dest: &ActorId, sender: &ActorId, msg: &TestMsg) -> Envelope {
    Envelope {
        dest: dest.clone(),
        sender: sender.clone(),
        body: Body::Tell {
            message: encode_body(msg).unwrap(),
        },
        trace: None,
    }
}
