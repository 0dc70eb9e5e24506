//! Subscriptions as streams: a [`Watch`] exposes a small actor on the client's node under a name
//! of its own, subscribes it to a queue or an action, and hands the [`ClientEvent`]s it receives
//! out through [`Watch::next`] or as a [`futures_core::Stream`].
//!
//! The receiving actor never blocks the node's inbound link (which also carries the replies the
//! client waits for): events go into a bounded buffer, and when it is full they are counted and
//! reported as one [`ClientEvent::Lagged`], exactly as the orchestrator reports its own drops.
//! A consumer that sees `Lagged` re-reads the status.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use kameo::message::{Context, Message};
use kameo::Actor;
use procmesh_protocol::messages::orchestrator::OrchestratorRequest;
use procmesh_protocol::ClientEvent;
use procmesh_transport::{Request, WireReply};
use tokio::sync::mpsc;

use crate::Client;

/// Events buffered per watch before they are counted as lagged.
pub const WATCH_BUFFER: usize = 16 * 1024;

/// Receives the events of one subscription.
#[derive(Actor)]
pub(crate) struct EventSink {
    tx: mpsc::Sender<ClientEvent>,
    /// Events dropped since the buffer last had room.
    missed: u64,
    subscription: u64,
}

impl EventSink {
    pub(crate) fn new(tx: mpsc::Sender<ClientEvent>) -> EventSink {
        EventSink {
            tx,
            missed: 0,
            subscription: 0,
        }
    }

    fn offer(&mut self, event: ClientEvent) {
        if let ClientEvent::Batch { events, .. } = event {
            for event in events {
                self.offer(event);
            }
            return;
        }
        self.subscription = event.subscription();
        if self.missed > 0 {
            let lagged = ClientEvent::Lagged {
                subscription: self.subscription,
                missed: self.missed,
            };
            if self.tx.try_send(lagged).is_err() {
                self.missed += 1;
                return;
            }
            self.missed = 0;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(event) {
            self.missed += 1;
        }
    }
}

impl Message<Request<ClientEvent>> for EventSink {
    type Reply = WireReply<()>;

    async fn handle(
        &mut self,
        req: Request<ClientEvent>,
        _ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        self.offer(req.message);
        Ok(())
    }
}

/// The events of one subscription. Dropping it stops the subscription (in the background);
/// [`close`](Self::close) does so and waits for the orchestrator's answer.
#[derive(Debug)]
pub struct Watch {
    pub(crate) client: Client,
    pub(crate) name: String,
    pub(crate) subscription: u64,
    pub(crate) rx: mpsc::Receiver<ClientEvent>,
    pub(crate) closed: bool,
}

impl Watch {
    /// The subscription's id, named by each of its events.
    pub fn subscription(&self) -> u64 {
        self.subscription
    }

    /// The next event; `None` once the watch is closed.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }

    /// Stops the subscription and waits for the orchestrator to confirm.
    pub async fn close(mut self) -> Result<(), crate::ClientError> {
        self.closed = true;
        self.client.inner.node.unexpose(&self.name);
        self.client
            .ask(
                "Unsubscribe",
                OrchestratorRequest::Unsubscribe {
                    subscription: self.subscription,
                },
            )
            .await
            .map(drop)
    }
}

impl futures_core::Stream for Watch {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<ClientEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        self.client.inner.node.unexpose(&self.name);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let subscription = self.subscription;
        runtime.spawn(async move {
            let request = OrchestratorRequest::Unsubscribe { subscription };
            if let Err(error) = client.ask("Unsubscribe", request).await {
                tracing::debug!(%error, subscription, "unsubscribe failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(subscription: u64) -> ClientEvent {
        ClientEvent::Ended {
            subscription,
            reason: String::new(),
        }
    }

    #[test]
    fn a_full_buffer_turns_into_one_lagged_event() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut sink = EventSink::new(tx);
        for _ in 0..5 {
            sink.offer(ended(7));
        }
        assert_eq!(rx.try_recv().unwrap(), ended(7));
        assert_eq!(rx.try_recv().unwrap(), ended(7));
        assert!(rx.try_recv().is_err());
        sink.offer(ended(7));
        assert_eq!(
            rx.try_recv().unwrap(),
            ClientEvent::Lagged {
                subscription: 7,
                missed: 3
            }
        );
        assert_eq!(rx.try_recv().unwrap(), ended(7));
    }
}
