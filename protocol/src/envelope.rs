//! The envelope: what every actor message travels in.
//!
//! An envelope names its destination and sender as [`ActorId`]s and carries one [`Body`]. The
//! message itself is an opaque MessagePack payload: routers (a host multiplexing its procs, say)
//! forward envelopes by destination without knowing the message types, and only the receiving
//! actor's typed handler decodes the payload.
//!
//! # Invariants
//! - **ENV-1** A `Reply` answers exactly one `Ask`, matched by `(sender of the ask, id)`; ids are
//!   unique per asking node.
//! - **ENV-2** A message that cannot be delivered comes back to its sender as `Undeliverable`
//!   (or, for an ask, as a `Reply` carrying [`RemoteError::Undeliverable`]); an `Undeliverable`
//!   that itself cannot be delivered is dropped and logged, never bounced again.

use serde::{Deserialize, Serialize};

use crate::ids::ActorId;

/// W3C trace context (<https://www.w3.org/TR/trace-context/>), carried as the two header values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// `traceparent`, e.g. `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
    pub traceparent: String,
    /// `tracestate`, possibly empty.
    #[serde(default)]
    pub tracestate: String,
}

/// One actor message between two actors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Who the message is for.
    pub dest: ActorId,
    /// Who sent it; replies and undeliverable notices go back here.
    pub sender: ActorId,
    /// What it is.
    pub body: Body,
    /// Optional distributed-trace context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// What an envelope carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A one-way message.
    Tell {
        /// The MessagePack-encoded message.
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    /// A request; the receiver answers with a `Reply` of the same id (ENV-1).
    Ask {
        /// Unique per asking node.
        id: u64,
        /// The MessagePack-encoded message.
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    /// The answer to an `Ask`.
    Reply {
        /// The id of the ask it answers.
        id: u64,
        /// The encoded reply, or why there is none.
        result: Result<Payload, RemoteError>,
    },
    /// A message that could not be delivered, returned to its sender (ENV-2).
    Undeliverable(Undeliverable),
}

/// An encoded message or reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// The notice sent back for a message that could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undeliverable {
    /// Where the message was going.
    pub dest: ActorId,
    /// The ask id, when the message was an ask.
    #[serde(default)]
    pub ask_id: Option<u64>,
    /// Why it was not delivered.
    pub reason: String,
}

/// Why an ask has no reply. Crosses the wire, so each variant has a stable [`code`](Self::code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteError {
    /// The message could not be delivered (unknown proc or actor, no route, link lost).
    #[error("undeliverable: {0}")]
    Undeliverable(String),
    /// The receiver could not decode the message (wrong type or version).
    #[error("bad message: {0}")]
    BadMessage(String),
    /// The handler answered with an error.
    #[error("handler error: {0}")]
    Handler(String),
    /// The actor stopped before answering.
    #[error("actor stopped: {0}")]
    ActorStopped(String),
}

impl RemoteError {
    /// A stable, matchable code for logs and clients.
    pub fn code(&self) -> &'static str {
        match self {
            RemoteError::Undeliverable(_) => "undeliverable",
            RemoteError::BadMessage(_) => "bad_message",
            RemoteError::Handler(_) => "handler",
            RemoteError::ActorStopped(_) => "actor_stopped",
        }
    }
}

impl Envelope {
    /// The envelope that tells the sender this one could not be delivered, or `None` when this
    /// one is itself a notice or a reply that has nobody left to tell (ENV-2).
    pub fn bounce(&self, reason: impl Into<String>) -> Option<Envelope> {
        let reason = reason.into();
        let body = match &self.body {
            Body::Tell { .. } => Body::Undeliverable(Undeliverable {
                dest: self.dest.clone(),
                ask_id: None,
                reason,
            }),
            Body::Ask { id, .. } => Body::Reply {
                id: *id,
                result: Err(RemoteError::Undeliverable(reason)),
            },
            Body::Reply { .. } | Body::Undeliverable(_) => return None,
        };
        Some(Envelope {
            dest: self.sender.clone(),
            sender: self.dest.clone(),
            body,
            trace: self.trace.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(s: &str) -> ActorId {
        s.parse().unwrap()
    }

    // Attests ENV-2
    #[test]
    fn bounce_returns_to_sender_once() {
        let tell = Envelope {
            dest: actor("local!a,p.x"),
            sender: actor("local!b,q.y"),
            body: Body::Tell {
                message: vec![1, 2],
            },
            trace: None,
        };
        let notice = tell.bounce("no actor x").unwrap();
        assert_eq!(notice.dest, tell.sender);
        assert!(matches!(
            &notice.body,
            Body::Undeliverable(Undeliverable { dest, ask_id: None, reason })
                if *dest == tell.dest && reason == "no actor x"
        ));
        assert!(notice.bounce("again").is_none());

        let ask = Envelope {
            body: Body::Ask {
                id: 7,
                message: vec![],
            },
            ..tell
        };
        let reply = ask.bounce("gone").unwrap();
        assert_eq!(
            reply.body,
            Body::Reply {
                id: 7,
                result: Err(RemoteError::Undeliverable("gone".into()))
            }
        );
        assert!(reply.bounce("again").is_none());
    }
}
