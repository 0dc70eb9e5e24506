//! Subscriptions as streams: a [`Watch`] exposes a small actor on the client's node under a name
//! of its own, subscribes it to a queue or an action, and hands the [`ClientEvent`]s it receives
//! out through [`Watch::next`] or as a [`futures_core::Stream`].
//!
//! The receiving actor never blocks the node's inbound link (which also carries the replies the
//! client waits for): events go into a bounded buffer, and when it is full they are counted and
//! reported as one [`ClientEvent::Lagged`], exactly as the orchestrator reports its own drops.
//! A consumer that sees `Lagged` re-reads the status. The watch resumes by itself after a
//! reconnect or an orchestrator restart, by the queue's transition indices ([`Watch`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use kameo::message::{Context, Message};
use kameo::Actor;
use procmesh_protocol::messages::orchestrator::{EventFilter, SubscriptionTarget};
use procmesh_protocol::messages::requests::client as req;
use procmesh_protocol::{ActorId, ClientEvent};
use procmesh_transport::{Request, WireReply};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{Client, ClientError};

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

/// A watch that heard nothing for this long asks whether its subscription still lives.
pub const PROBE_AFTER: Duration = Duration::from_secs(1);

/// Longest wait between two attempts to subscribe again.
const RESUBSCRIBE_MAX_WAIT: Duration = Duration::from_secs(2);

/// Subscribes `subscriber` to `target` (from index `from` of the queue's transitions);
/// returns the subscription and the index of the queue's next transition.
pub(crate) async fn subscribe(
    client: &Client,
    target: &SubscriptionTarget,
    subscriber: &ActorId,
    from: Option<u64>,
    events: EventFilter,
) -> Result<(u64, u64), ClientError> {
    let subscribed = client
        .call(req::Subscribe {
            target: *target,
            subscriber: subscriber.clone(),
            from,
            events,
        })
        .await?;
    Ok((subscribed.subscription, subscribed.next))
}

/// The events of one subscription, resumed across reconnects and orchestrator restarts: a
/// keeper task numbers what it has seen by the queue's transition index (`seq`), asks after
/// [`PROBE_AFTER`] of silence whether the subscription still lives, and when it does not (an
/// orchestrator restart ends every subscription; `Ended` says so on a clean stop) subscribes
/// again from the index after the last one seen — so no transition is missed or repeated
/// (ORC-32) as long as the orchestrator still keeps it; otherwise the watch yields `Lagged`.
/// Only a refusal (an unknown queue, say) ends the watch, with `Ended`.
///
/// Dropping it stops the subscription (in the background); [`close`](Self::close) does so and
/// waits for the orchestrator's answer.
#[derive(Debug)]
pub struct Watch {
    pub(crate) client: Client,
    pub(crate) name: String,
    pub(crate) subscription: Arc<AtomicU64>,
    pub(crate) rx: mpsc::Receiver<ClientEvent>,
    pub(crate) task: JoinHandle<()>,
    pub(crate) closed: bool,
}

impl Watch {
    pub(crate) fn start(
        client: Client,
        name: String,
        (target, events): (SubscriptionTarget, EventFilter),
        subscriber: ActorId,
        subscription: u64,
        next: u64,
        raw: mpsc::Receiver<ClientEvent>,
    ) -> Watch {
        let current = Arc::new(AtomicU64::new(subscription));
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let keeper = Keeper {
            client: client.clone(),
            target,
            events,
            subscriber,
            current: current.clone(),
            next,
            out: tx,
        };
        let task = tokio::spawn(keeper.run(raw));
        Watch {
            client,
            name,
            subscription: current,
            rx,
            task,
            closed: false,
        }
    }

    /// The current subscription's id (it changes when the watch resumes).
    pub fn subscription(&self) -> u64 {
        self.subscription.load(Ordering::Relaxed)
    }

    /// The next event; `None` once the watch is closed.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }

    /// Stops the subscription and waits for the orchestrator to confirm.
    pub async fn close(mut self) -> Result<(), crate::ClientError> {
        self.closed = true;
        self.task.abort();
        self.client.inner.node.unexpose(&self.name);
        self.client
            .call(req::Unsubscribe {
                subscription: self.subscription(),
            })
            .await
    }
}

/// The task behind a [`Watch`].
struct Keeper {
    client: Client,
    target: SubscriptionTarget,
    events: EventFilter,
    subscriber: ActorId,
    current: Arc<AtomicU64>,
    /// The index the next transition must have; earlier ones were seen.
    next: u64,
    out: mpsc::Sender<ClientEvent>,
}

impl Keeper {
    async fn run(mut self, mut raw: mpsc::Receiver<ClientEvent>) {
        loop {
            let event = match tokio::time::timeout(PROBE_AFTER, raw.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => return,
                Err(_) => {
                    if !self.still_live().await && !self.resubscribe().await {
                        return;
                    }
                    continue;
                }
            };
            if event.subscription() != self.current.load(Ordering::Relaxed) {
                continue; // from a subscription this watch has left
            }
            match event {
                ClientEvent::Transition { seq, .. } if seq != 0 && seq < self.next => continue,
                ClientEvent::Transition { seq, .. } if seq != 0 => {
                    self.next = seq + 1;
                    if self.out.send(event).await.is_err() {
                        return;
                    }
                }
                ClientEvent::Ended { ref reason, .. } => {
                    tracing::debug!(%reason, "subscription ended; resuming");
                    if !self.resubscribe().await {
                        let _ = self.out.send(event).await;
                        return;
                    }
                }
                other => {
                    if self.out.send(other).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    async fn still_live(&self) -> bool {
        let subscription = self.current.load(Ordering::Relaxed);
        match self
            .client
            .call(req::CheckSubscription { subscription })
            .await
        {
            Ok(_) => true,
            Err(error) => {
                tracing::debug!(%error, subscription, "subscription not confirmed");
                false
            }
        }
    }

    /// Subscribes again from the next index, until it works; `false` (after telling the
    /// consumer `Ended`) if the orchestrator refuses.
    async fn resubscribe(&mut self) -> bool {
        let mut wait = Duration::from_millis(100);
        loop {
            match subscribe(
                &self.client,
                &self.target,
                &self.subscriber,
                Some(self.next),
                self.events,
            )
            .await
            {
                Ok((subscription, _)) => {
                    let old = self.current.swap(subscription, Ordering::Relaxed);
                    tracing::debug!(old, subscription, from = self.next, "watch resumed");
                    let client = self.client.clone();
                    tokio::spawn(async move {
                        let _ = client.call(req::Unsubscribe { subscription: old }).await;
                    });
                    return true;
                }
                Err(error) if error.is_transient() => {
                    tracing::debug!(%error, "cannot resubscribe yet");
                    if self.out.is_closed() {
                        return false;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RESUBSCRIBE_MAX_WAIT);
                }
                Err(error) => {
                    let ended = ClientEvent::Ended {
                        subscription: self.current.load(Ordering::Relaxed),
                        reason: format!("cannot resume: {error}"),
                    };
                    let _ = self.out.send(ended).await;
                    return false;
                }
            }
        }
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
        self.task.abort();
        if self.closed {
            return;
        }
        self.client.inner.node.unexpose(&self.name);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let subscription = self.subscription();
        runtime.spawn(async move {
            if let Err(error) = client.call(req::Unsubscribe { subscription }).await {
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
