//! What a client (or an operator) asks the orchestrator about its queues
//! ([`Audience::Client`]).
//!
//! [`Audience::Client`]: super::Audience::Client

use serde::{Deserialize, Serialize};

use super::ask;
use crate::messages::orchestrator::{
    ActionResult, ActionView, EventFilter, HostView, OrchestratorReply, QueueConfig, QueueRef,
    QueueStatus as Status, QueueToken, SubmitAction, SubscriptionTarget,
};
use crate::spec::{WorkerDescriptor, WorkerId};
use crate::{ActorId, Attempt, BlobHash, Lsn};

/// Creates a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateQueue {
    /// Its settings.
    pub config: QueueConfig,
}

/// A created queue: its id (loopback only) and its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    /// The integer id.
    pub id: u64,
    /// The unguessable token.
    pub token: QueueToken,
}

ask!(Client, CreateQueue { config } = CreateQueue { 0 }, Created, |r| match r {
    OrchestratorReply::QueueCreated { id, token } => Ok(Created { id, token }),
    other => Err(other),
});

/// A queue's counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// The queue.
    pub queue: QueueRef,
}

ask!(Client, QueueStatus { queue } = QueueStatus { 0 }, Status, |r| match r {
    OrchestratorReply::QueueStatus(status) => Ok(status),
    other => Err(other),
});

/// Finished results not yet retired, in LSN order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResults {
    /// The queue.
    pub queue: QueueRef,
    /// Only results after this LSN.
    pub after: Option<Lsn>,
    /// At most this many.
    pub limit: Option<u32>,
}

ask!(
    Client,
    ListResults {
        queue,
        after,
        limit
    } = ListResults {
        queue,
        after,
        limit
    },
    Vec<ActionResult>,
    |r| match r {
        OrchestratorReply::Results(results) => Ok(results),
        other => Err(other),
    }
);

/// Forgets finished actions; answers how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retire {
    /// The queue.
    pub queue: QueueRef,
    /// The actions.
    pub lsns: Vec<Lsn>,
}

ask!(
    Client,
    Retire { queue, lsns } = Retire { queue, lsns },
    u64,
    |r| match r {
        OrchestratorReply::Retired { count } => Ok(count),
        other => Err(other),
    }
);

/// No new actions; finish the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// The queue.
    pub queue: QueueRef,
}

ask!(Client, Drain { queue } = Drain { 0 }, (), |r| match r {
    OrchestratorReply::Ack => Ok(()),
    other => Err(other),
});

/// Cancels every pending and running action; answers how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelQueue {
    /// The queue.
    pub queue: QueueRef,
}

ask!(Client, CancelQueue { queue } = CancelQueue { 0 }, u64, |r| match r {
    OrchestratorReply::Cancelled { count } => Ok(count),
    other => Err(other),
});

/// Cancels one action; answers how many (0 or 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelAction {
    /// The queue.
    pub queue: QueueRef,
    /// The action.
    pub lsn: Lsn,
}

ask!(
    Client,
    CancelAction { queue, lsn } = CancelAction { queue, lsn },
    u64,
    |r| match r {
        OrchestratorReply::Cancelled { count } => Ok(count),
        other => Err(other),
    }
);

/// Runs a failed or abandoned action again; answers its new attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reschedule {
    /// The queue.
    pub queue: QueueRef,
    /// The action.
    pub lsn: Lsn,
}

ask!(
    Client,
    Reschedule { queue, lsn } = Reschedule { queue, lsn },
    Attempt,
    |r| match r {
        OrchestratorReply::Rescheduled { attempt } => Ok(attempt),
        other => Err(other),
    }
);

/// Changes a pending action's priority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPriority {
    /// The queue.
    pub queue: QueueRef,
    /// The action.
    pub lsn: Lsn,
    /// Its new priority.
    pub priority: i32,
}

ask!(
    Client,
    SetPriority {
        queue,
        lsn,
        priority
    } = SetPriority {
        queue,
        lsn,
        priority
    },
    (),
    |r| match r {
        OrchestratorReply::Ack => Ok(()),
        other => Err(other),
    }
);

/// One action's lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetAction {
    /// The queue.
    pub queue: QueueRef,
    /// The action.
    pub lsn: Lsn,
}

ask!(
    Client,
    GetAction { queue, lsn } = GetAction { queue, lsn },
    ActionView,
    |r| match r {
        OrchestratorReply::Action(view) => Ok(view),
        other => Err(other),
    }
);

/// Registers a worker; answers its id and the blobs still missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterWorker {
    /// The descriptor.
    pub descriptor: WorkerDescriptor,
}

ask!(Client, RegisterWorker { descriptor } = RegisterWorker { 0 }, (WorkerId, Vec<BlobHash>), |r| match r {
    OrchestratorReply::WorkerRegistered { id, missing } => Ok((id, missing)),
    other => Err(other),
});

/// Which of these blobs the orchestrator still needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingBlobs {
    /// The blobs.
    pub hashes: Vec<BlobHash>,
}

ask!(Client, MissingBlobs { hashes } = MissingBlobs { 0 }, Vec<BlobHash>, |r| match r {
    OrchestratorReply::MissingBlobs(missing) => Ok(missing),
    other => Err(other),
});

/// Submits actions; answers their LSNs, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submit {
    /// The queue.
    pub queue: QueueRef,
    /// The actions.
    pub actions: Vec<SubmitAction>,
}

ask!(
    Client,
    Submit { queue, actions } = Submit { queue, actions },
    Vec<Lsn>,
    |r| match r {
        OrchestratorReply::Submitted { lsns } => Ok(lsns),
        other => Err(other),
    }
);

/// Follows a queue or an action; answers the subscription and the next event index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// What to follow.
    pub target: SubscriptionTarget,
    /// Who receives the events.
    pub subscriber: ActorId,
    /// Resume from this event index.
    pub from: Option<u64>,
    /// Which transitions it wants.
    pub events: EventFilter,
}

/// A subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// Its id.
    pub subscription: u64,
    /// The index of the next event it will receive.
    pub next: u64,
}

ask!(
    Client,
    Subscribe {
        target,
        subscriber,
        from,
        events
    } = Subscribe {
        target,
        subscriber,
        from,
        events
    },
    Subscribed,
    |r| match r {
        OrchestratorReply::Subscribed { subscription, next } =>
            Ok(Subscribed { subscription, next }),
        other => Err(other),
    }
);

/// Ends a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribe {
    /// The subscription.
    pub subscription: u64,
}

ask!(
    Client,
    Unsubscribe { subscription } = Unsubscribe { subscription },
    (),
    |r| match r {
        OrchestratorReply::Ack => Ok(()),
        other => Err(other),
    }
);

/// Whether a subscription is still alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSubscription {
    /// The subscription.
    pub subscription: u64,
}

ask!(
    Client,
    CheckSubscription { subscription } = CheckSubscription { subscription },
    (),
    |r| match r {
        OrchestratorReply::Ack => Ok(()),
        other => Err(other),
    }
);

/// Every host the orchestrator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListHosts;

impl super::Ask for ListHosts {
    type Reply = Vec<HostView>;
    const AUDIENCE: super::Audience = super::Audience::Client;
    const KIND: &'static str = "ListHosts";

    fn request(self) -> crate::messages::orchestrator::OrchestratorRequest {
        crate::messages::orchestrator::OrchestratorRequest::ListHosts
    }

    fn from_request(request: crate::messages::orchestrator::OrchestratorRequest) -> Option<Self> {
        matches!(
            request,
            crate::messages::orchestrator::OrchestratorRequest::ListHosts
        )
        .then_some(ListHosts)
    }

    fn reply(r: OrchestratorReply) -> Result<Vec<HostView>, OrchestratorReply> {
        match r {
            OrchestratorReply::Hosts(hosts) => Ok(hosts),
            other => Err(other),
        }
    }
}

/// Why an action is (not) running, and the story of its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explain {
    /// The queue.
    pub queue: QueueRef,
    /// The action (an action of another queue is unknown).
    pub lsn: Lsn,
}

ask!(
    Client,
    Explain { queue, lsn } = Explain { queue, lsn },
    crate::messages::orchestrator::Explanation,
    |r| match r {
        OrchestratorReply::Explained(explanation) => Ok(*explanation),
        other => Err(other),
    }
);
