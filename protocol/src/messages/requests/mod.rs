//! The orchestrator's requests by audience, each its own type typed with its reply.
//!
//! ```text
//!  host agent ──▶ host::{RegisterHost, Heartbeat, ProcLost}                 (Audience::Host)
//!  proc agent ──▶ agent::{ActionUpdate, ActionUpdates, GetWorker}           (Audience::Agent)
//!  client ─────▶ client::{CreateQueue, QueueStatus, …, ListHosts}           (Audience::Client)
//!                      │ Ask::request()                ▲ Ask::reply()
//!                      ▼                               │
//!               OrchestratorRequest ── the wire ──▶ OrchestratorReply
//! ```
//!
//! [`OrchestratorRequest`] stays the one enum on the wire (its bytes are pinned by the golden
//! tests), and every value of it belongs to exactly one [`Audience`]: the orchestrator checks
//! authority by audience first ([`OrchestratorRequest::audience`]), then by the request. A
//! sender uses the typed requests: [`Ask::reply`] turns the wire reply into the request's own
//! reply type, and any other reply variant is a protocol error in one place, not a `match` per
//! call.
//!
//! # Invariants
//! - **MSG-3** Every [`OrchestratorRequest`] has exactly one audience and one typed request;
//!   `T::from_request(t.request()) == t` for every typed request `t`.

pub mod agent;
pub mod client;
pub mod host;

use crate::messages::orchestrator::{OrchestratorReply, OrchestratorRequest};

/// Who sends a request to the orchestrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Audience {
    /// A host agent, about itself.
    Host,
    /// A proc agent (relayed by its host), about its attempts.
    Agent,
    /// A client (or an operator), about its queues.
    Client,
}

/// A typed request to the orchestrator.
pub trait Ask: Sized {
    /// What a successful answer carries.
    type Reply;
    /// Who sends it.
    const AUDIENCE: Audience;
    /// Its name, for logs and errors.
    const KIND: &'static str;
    /// The wire request.
    fn request(self) -> OrchestratorRequest;
    /// The typed request a wire request is, if it is one of this type.
    fn from_request(request: OrchestratorRequest) -> Option<Self>;
    /// The typed reply, or the wire reply back when it does not answer this request.
    fn reply(reply: OrchestratorReply) -> Result<Self::Reply, OrchestratorReply>;
}

impl OrchestratorRequest {
    /// Who sends this request (MSG-3).
    pub fn audience(&self) -> Audience {
        use OrchestratorRequest as R;
        match self {
            R::RegisterHost(_) | R::Heartbeat(_) | R::ProcLost { .. } => Audience::Host,
            R::ActionUpdate(_) | R::ActionUpdates(_) | R::GetWorker(_) => Audience::Agent,
            R::CreateQueue(_)
            | R::QueueStatus(_)
            | R::ListResults { .. }
            | R::Retire { .. }
            | R::Drain(_)
            | R::CancelQueue(_)
            | R::CancelAction { .. }
            | R::Reschedule { .. }
            | R::SetPriority { .. }
            | R::GetAction { .. }
            | R::RegisterWorker(_)
            | R::MissingBlobs(_)
            | R::Submit { .. }
            | R::Subscribe { .. }
            | R::Unsubscribe { .. }
            | R::CheckSubscription { .. }
            | R::ListHosts
            | R::Explain { .. } => Audience::Client,
        }
    }

    /// The request's name (its typed request's [`Ask::KIND`]).
    pub fn kind(&self) -> &'static str {
        use OrchestratorRequest as R;
        match self {
            R::RegisterHost(_) => host::RegisterHost::KIND,
            R::Heartbeat(_) => host::Heartbeat::KIND,
            R::ProcLost { .. } => host::ProcLost::KIND,
            R::ActionUpdate(_) => agent::ActionUpdate::KIND,
            R::ActionUpdates(_) => agent::ActionUpdates::KIND,
            R::GetWorker(_) => agent::GetWorker::KIND,
            R::CreateQueue(_) => client::CreateQueue::KIND,
            R::QueueStatus(_) => client::QueueStatus::KIND,
            R::ListResults { .. } => client::ListResults::KIND,
            R::Retire { .. } => client::Retire::KIND,
            R::Drain(_) => client::Drain::KIND,
            R::CancelQueue(_) => client::CancelQueue::KIND,
            R::CancelAction { .. } => client::CancelAction::KIND,
            R::Reschedule { .. } => client::Reschedule::KIND,
            R::SetPriority { .. } => client::SetPriority::KIND,
            R::GetAction { .. } => client::GetAction::KIND,
            R::RegisterWorker(_) => client::RegisterWorker::KIND,
            R::MissingBlobs(_) => client::MissingBlobs::KIND,
            R::Submit { .. } => client::Submit::KIND,
            R::Subscribe { .. } => client::Subscribe::KIND,
            R::Unsubscribe { .. } => client::Unsubscribe::KIND,
            R::CheckSubscription { .. } => client::CheckSubscription::KIND,
            R::ListHosts => client::ListHosts::KIND,
            R::Explain { .. } => client::Explain::KIND,
        }
    }
}

/// Implements [`Ask`] for a typed request: its audience and name, how it becomes the wire
/// request and back (`variant` and its fields), and which reply answers it.
macro_rules! ask {
    (
        $audience:ident, $ty:ident { $($field:ident),* } = $variant:ident { $($wire:tt),* },
        $reply:ty, |$r:ident| $convert:expr
    ) => {
        impl $crate::messages::requests::Ask for $ty {
            type Reply = $reply;
            const AUDIENCE: $crate::messages::requests::Audience =
                $crate::messages::requests::Audience::$audience;
            const KIND: &'static str = stringify!($variant);

            fn request(self) -> $crate::messages::orchestrator::OrchestratorRequest {
                let $ty { $($field),* } = self;
                $crate::messages::orchestrator::OrchestratorRequest::$variant { $($wire: $field),* }
            }

            fn from_request(
                request: $crate::messages::orchestrator::OrchestratorRequest,
            ) -> Option<Self> {
                match request {
                    $crate::messages::orchestrator::OrchestratorRequest::$variant {
                        $($wire: $field),*
                    } => Some($ty { $($field),* }),
                    _ => None,
                }
            }

            fn reply(
                $r: $crate::messages::orchestrator::OrchestratorReply,
            ) -> Result<$reply, $crate::messages::orchestrator::OrchestratorReply> {
                $convert
            }
        }
    };
}
pub(crate) use ask;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::orchestrator::{QueueConfig, QueueRef};
    use crate::Lsn;

    // Attests MSG-3
    #[test]
    fn typed_requests_round_trip_and_know_their_audience_and_reply() {
        let req = client::ListResults {
            queue: QueueRef::Id(3),
            after: Some(Lsn(2)),
            limit: None,
        };
        let wire = req.clone().request();
        assert_eq!(wire.audience(), Audience::Client);
        assert_eq!(wire.kind(), "ListResults");
        assert_eq!(client::ListResults::from_request(wire), Some(req));
        assert_eq!(
            client::ListResults::from_request(OrchestratorRequest::ListHosts),
            None
        );
        let created = OrchestratorReply::QueueCreated {
            id: 1,
            token: crate::messages::orchestrator::QueueToken::from_bytes([0; 12]),
        };
        assert!(client::CreateQueue::reply(created.clone()).is_ok());
        assert_eq!(client::ListHosts::reply(created.clone()), Err(created));
        let queue = client::CreateQueue {
            config: QueueConfig::default(),
        };
        assert_eq!(queue.request().audience(), Audience::Client);
        assert_eq!(
            OrchestratorRequest::ActionUpdates(Vec::new()).audience(),
            Audience::Agent
        );
        assert_eq!(
            OrchestratorRequest::Heartbeat(crate::messages::orchestrator::Heartbeat {
                addr: crate::HostAddr::Local("h".into()),
                procs: Vec::new(),
                running: Vec::new(),
            })
            .audience(),
            Audience::Host
        );
    }
}
