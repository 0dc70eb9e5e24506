//! Remote actors over kameo: expose a local kameo actor under a name, and talk to any actor in
//! the mesh through a typed [`RemoteRef`].
//!
//! An exposed actor handles [`Request<M>`] for its message enum `M` (a
//! [`RemoteMessage`]); the request carries the message, the sender's [`ActorId`], and where it
//! came from ([`PeerInfo`], `None` for a local call). The same `RemoteRef<M>` API serves a local
//! actor (no serialisation: the typed handler is called directly) and a remote one (encoded,
//! routed, decoded by the receiving node's handler).
//!
//! ```ignore
//! node.expose("echo", actor_ref.clone());              // ActorRef<A>: Message<Request<Ping>>
//! let echo = node.remote_ref::<Ping>(remote_actor_id);
//! echo.tell(Ping(1)).await?;
//! let pong = echo.ask(Ping(2), Duration::from_secs(1)).await?;
//! ```
//!
//! Mailboxes: the router awaits space in a bounded kameo mailbox (backpressure towards the
//! sender). An actor that asks remote actors while handling a message should be spawned with an
//! unbounded mailbox, so that its own inbound stream is never stalled behind it.

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kameo::actor::ActorRef;
use kameo::error::SendError;
use kameo::message::Message;
use kameo::{Actor, Reply};
use procmesh_protocol::codec::{decode_body, encode_body};
use procmesh_protocol::messages::RemoteMessage;
use procmesh_protocol::{ActorId, Body, Envelope, Payload, RemoteError, TraceContext};

use crate::node::{Entry, Node, PeerInfo};

/// The kameo reply type of a handler whose wire reply is `R`. kameo splits a `Result` reply
/// into its own success and failure paths (a failure of a `tell` even stops the actor); a
/// protocol reply such as `Result<HostReply, HostError>` is an answer, not a failure, so it
/// travels whole inside an infallible `Ok`.
pub type WireReply<R> = Result<R, std::convert::Infallible>;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A reply still to come.
pub type PendingReply<R> = BoxFuture<'static, Result<R, RemoteError>>;

/// An enqueued ask: first the enqueueing (which may fail), then the reply.
pub type Enqueued<'a, R> = BoxFuture<'a, Result<PendingReply<R>, RemoteError>>;

/// What an exposed actor receives: the message, and who sent it from where.
#[derive(Debug, Clone)]
pub struct Request<M> {
    /// The message.
    pub message: M,
    /// The sending actor; replies to asks go back to it automatically.
    pub from: ActorId,
    /// The link it arrived on; `None` when sent from this process.
    pub peer: Option<Arc<PeerInfo>>,
    /// The W3C trace context it carried.
    pub trace: Option<TraceContext>,
}

impl<M> Request<M> {
    /// Whether the request came from this machine (this process, a Unix or in-process peer, or
    /// a QUIC peer on a loopback address).
    pub fn is_loopback(&self) -> bool {
        self.peer.as_ref().is_none_or(|p| p.is_loopback())
    }

    /// The verified certificate identity of the peer it came over (QUIC only).
    pub fn identity(&self) -> Option<&crate::tls::PeerIdentity> {
        self.peer.as_ref().and_then(|p| p.identity.as_deref())
    }
}

pub(crate) struct CallContext {
    pub from: ActorId,
    pub peer: Option<Arc<PeerInfo>>,
    pub trace: Option<TraceContext>,
}

/// Typed delivery of `M` into something that handles it (a kameo actor).
pub trait Handler<M: RemoteMessage>: Send + Sync + 'static {
    /// Delivers a one-way message, waiting for mailbox space.
    fn tell(&self, req: Request<M>) -> BoxFuture<'_, Result<(), RemoteError>>;
    /// Enqueues a request; the inner future resolves to the reply.
    fn ask(&self, req: Request<M>) -> Enqueued<'_, M::Reply>;
}

fn send_error<T, E: std::fmt::Debug>(e: SendError<T, E>) -> RemoteError {
    match e {
        SendError::HandlerError(e) => RemoteError::Handler(format!("{e:?}")),
        SendError::ActorNotRunning(_) | SendError::ActorStopped => {
            RemoteError::ActorStopped("the actor is not running".into())
        }
        SendError::ActorRestarting(_) => {
            RemoteError::ActorStopped("the actor is restarting".into())
        }
        SendError::MailboxFull(_) => RemoteError::Undeliverable("mailbox full".into()),
        SendError::Timeout(_) => RemoteError::Undeliverable("mailbox timeout".into()),
    }
}

impl<A, M> Handler<M> for ActorRef<A>
where
    M: RemoteMessage + Sync,
    A: Actor + Message<Request<M>>,
    <A as Message<Request<M>>>::Reply: Reply<Ok = M::Reply>,
{
    fn tell(&self, req: Request<M>) -> BoxFuture<'_, Result<(), RemoteError>> {
        Box::pin(async move { ActorRef::tell(self, req).send().await.map_err(send_error) })
    }

    fn ask(&self, req: Request<M>) -> Enqueued<'_, M::Reply> {
        Box::pin(async move {
            let pending = ActorRef::ask(self, req)
                .enqueue()
                .await
                .map_err(send_error)?;
            let reply: PendingReply<M::Reply> =
                Box::pin(async move { pending.await.map_err(send_error) });
            Ok(reply)
        })
    }
}

/// Byte-level delivery: decodes the message, calls the typed handler, encodes the reply.
pub(crate) trait ErasedHandler: Send + Sync {
    fn tell<'a>(
        &'a self,
        message: &'a [u8],
        ctx: CallContext,
    ) -> BoxFuture<'a, Result<(), RemoteError>>;
    fn ask<'a>(&'a self, message: &'a [u8], ctx: CallContext) -> Enqueued<'a, Payload>;
}

struct Erased<M: RemoteMessage>(Arc<dyn Handler<M>>);

fn decode<M: RemoteMessage>(message: &[u8], ctx: CallContext) -> Result<Request<M>, RemoteError> {
    let message = decode_body::<M>(message).map_err(|e| {
        RemoteError::BadMessage(format!("expected {}: {e}", std::any::type_name::<M>()))
    })?;
    Ok(Request {
        message,
        from: ctx.from,
        peer: ctx.peer,
        trace: ctx.trace,
    })
}

impl<M: RemoteMessage> ErasedHandler for Erased<M> {
    fn tell<'a>(
        &'a self,
        message: &'a [u8],
        ctx: CallContext,
    ) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(async move { self.0.tell(decode(message, ctx)?).await })
    }

    fn ask<'a>(&'a self, message: &'a [u8], ctx: CallContext) -> Enqueued<'a, Payload> {
        Box::pin(async move {
            let reply = self.0.ask(decode(message, ctx)?).await?;
            let encoded: PendingReply<Payload> = Box::pin(async move {
                let reply = reply.await?;
                encode_body(&reply)
                    .map(Payload)
                    .map_err(|e| RemoteError::Handler(format!("cannot encode reply: {e}")))
            });
            Ok(encoded)
        })
    }
}

/// Why a tell or ask failed on the sending side.
#[derive(Debug, thiserror::Error)]
pub enum SendFailure {
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The reply could not be decoded.
    #[error("cannot decode reply: {0}")]
    Decode(String),
    /// No reply within the timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The receiver (or the mesh on the way) answered with an error.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl SendFailure {
    /// Whether the message never reached a handler.
    pub fn is_undeliverable(&self) -> bool {
        matches!(self, SendFailure::Remote(RemoteError::Undeliverable(_)))
    }
}

impl Node {
    /// Exposes a kameo actor (or any [`Handler`]) under `name` in this node's proc, replacing
    /// any actor of that name. Returns its id.
    pub fn expose<M, H>(
        &self,
        name: &str,
        handler: H,
    ) -> Result<ActorId, procmesh_protocol::IdError>
    where
        M: RemoteMessage,
        H: Handler<M>,
    {
        let id = self.actor_id(name)?;
        let typed: Arc<dyn Handler<M>> = Arc::new(handler);
        let entry = Entry {
            erased: Arc::new(Erased(typed.clone())),
            typed: Arc::new(typed) as Arc<dyn Any + Send + Sync>,
        };
        self.inner.actors.insert(name.to_owned(), entry);
        Ok(id)
    }

    /// Stops exposing `name`; later messages to it bounce as undeliverable.
    pub fn unexpose(&self, name: &str) -> bool {
        self.inner.actors.remove(name).is_some()
    }

    /// A typed reference to the actor `dest`, anywhere in the mesh, sending as this node's
    /// `client` actor (replies come back to this node whatever the sender name).
    pub fn remote_ref<M: RemoteMessage>(&self, dest: ActorId) -> RemoteRef<M> {
        let sender = self
            .actor_id("client")
            .expect("'client' is a valid actor name");
        RemoteRef {
            node: self.clone(),
            dest,
            sender,
            trace: None,
            _message: PhantomData,
        }
    }
}

/// A typed reference to an actor anywhere in the mesh: same API local or remote.
pub struct RemoteRef<M> {
    node: Node,
    dest: ActorId,
    sender: ActorId,
    trace: Option<TraceContext>,
    _message: PhantomData<fn(M)>,
}

impl<M> Clone for RemoteRef<M> {
    fn clone(&self) -> Self {
        RemoteRef {
            node: self.node.clone(),
            dest: self.dest.clone(),
            sender: self.sender.clone(),
            trace: self.trace.clone(),
            _message: PhantomData,
        }
    }
}

impl<M> std::fmt::Debug for RemoteRef<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRef")
            .field("dest", &self.dest)
            .field("message", &std::any::type_name::<M>())
            .finish()
    }
}

impl<M: RemoteMessage> RemoteRef<M> {
    /// The actor this refers to.
    pub fn id(&self) -> &ActorId {
        &self.dest
    }

    /// The same reference, sending as `sender` (an actor of this node's proc).
    pub fn with_sender(mut self, sender: ActorId) -> Self {
        self.sender = sender;
        self
    }

    /// The same reference, attaching a W3C trace context to every message.
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    fn local_handler(&self) -> Option<Arc<dyn Handler<M>>> {
        if self.dest.proc_id() != self.node.proc_id() {
            return None;
        }
        let entry = self.node.inner.actors.get(self.dest.name())?;
        entry.typed.downcast_ref::<Arc<dyn Handler<M>>>().cloned()
    }

    fn request(&self, message: M) -> Request<M> {
        Request {
            message,
            from: self.sender.clone(),
            peer: None,
            trace: self.trace.clone(),
        }
    }

    fn envelope(&self, body: Body) -> Envelope {
        Envelope {
            dest: self.dest.clone(),
            sender: self.sender.clone(),
            body,
            trace: self.trace.clone(),
        }
    }

    /// Sends a one-way message. `Ok` means it was handed to the mesh (or, for a local actor, to
    /// its mailbox); if it later proves undeliverable, a notice comes back to this node
    /// ([`Node::undeliverable`]).
    pub async fn tell(&self, message: M) -> Result<(), SendFailure> {
        if let Some(handler) = self.local_handler() {
            return Ok(handler.tell(self.request(message)).await?);
        }
        let message = encode_body(&message).map_err(|e| SendFailure::Encode(e.to_string()))?;
        self.node.route(self.envelope(Body::Tell { message })).await;
        Ok(())
    }

    /// Sends a request and waits up to `timeout` for the reply.
    pub async fn ask(&self, message: M, timeout: Duration) -> Result<M::Reply, SendFailure> {
        if let Some(handler) = self.local_handler() {
            let call = async {
                let reply = handler.ask(self.request(message)).await?;
                reply.await
            };
            return match tokio::time::timeout(timeout, call).await {
                Ok(reply) => Ok(reply?),
                Err(_) => Err(SendFailure::Timeout(timeout)),
            };
        }
        let message = encode_body(&message).map_err(|e| SendFailure::Encode(e.to_string()))?;
        let inner = &self.node.inner;
        let (id, rx) = inner.new_ask();
        self.node
            .route(self.envelope(Body::Ask { id, message }))
            .await;
        let result = tokio::time::timeout(timeout, rx).await;
        inner.pending.remove(&id);
        match result {
            Ok(Ok(Ok(payload))) => {
                decode_body(&payload.0).map_err(|e| SendFailure::Decode(e.to_string()))
            }
            Ok(Ok(Err(remote))) => Err(remote.into()),
            Ok(Err(_)) => Err(RemoteError::Undeliverable("node shut down".into()).into()),
            Err(_) => {
                // QUIC-5: a peer that stays silent may be gone; check its connection.
                inner.suspect(self.dest.addr());
                Err(SendFailure::Timeout(timeout))
            }
        }
    }
}
