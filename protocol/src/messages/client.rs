//! Events the orchestrator pushes to subscribers ([`ClientEvent`]), as one-way messages.
//!
//! Events of one subscription arrive in the order the orchestrator applied them, each
//! transition with its index in its queue (`seq`), so a subscriber can resume after a
//! reconnect or an orchestrator restart exactly where it was (`Subscribe { from }`). A
//! subscriber that falls behind is told how many events it missed ([`ClientEvent::Lagged`])
//! rather than slowing the orchestrator down; it then resumes or re-reads the queue status.

use serde::{Deserialize, Serialize};

use super::orchestrator::QueueStatus;
use super::RemoteMessage;
use crate::action::Transition;

/// An event of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientEvent {
    /// An action of the followed queue (or the followed action) moved.
    Transition {
        /// The subscription.
        subscription: u64,
        /// The action's queue id.
        queue: u64,
        /// The transition as applied (its time raised by ACT-4 if needed). Replayed ones
        /// (after `Subscribe { from }`) carry no stdout/stderr tails: read those from the
        /// result.
        transition: Transition,
        /// Its index among the queue's transitions: from 1, one more for each, kept across
        /// restarts (0 from an orchestrator that does not number them).
        #[serde(default)]
        seq: u64,
    },
    /// Every action of the queue reached a final state.
    QueueComplete {
        /// The subscription.
        subscription: u64,
        /// The queue's final status.
        status: QueueStatus,
    },
    /// The subscriber fell behind and this many events were dropped.
    Lagged {
        /// The subscription.
        subscription: u64,
        /// How many events were dropped.
        missed: u64,
    },
    /// The subscription ended (the queue was retired, the orchestrator is shutting down).
    Ended {
        /// The subscription.
        subscription: u64,
        /// Why.
        reason: String,
    },
    /// Several events of the subscription, in order (what piled up while the previous message
    /// was in flight). Never nested.
    Batch {
        /// The subscription.
        subscription: u64,
        /// The events.
        events: Vec<ClientEvent>,
    },
}

impl ClientEvent {
    /// The subscription the event belongs to.
    pub fn subscription(&self) -> u64 {
        match self {
            ClientEvent::Transition { subscription, .. }
            | ClientEvent::QueueComplete { subscription, .. }
            | ClientEvent::Lagged { subscription, .. }
            | ClientEvent::Ended { subscription, .. }
            | ClientEvent::Batch { subscription, .. } => *subscription,
        }
    }
}

/// Events are told, never asked: the reply type is `()`.
impl RemoteMessage for ClientEvent {
    type Reply = ();
}
