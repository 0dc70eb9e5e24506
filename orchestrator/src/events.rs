//! Subscriptions: the transitions of a queue or of one action, told to a subscriber actor as
//! [`ClientEvent`]s.
//!
//! ```text
//!  Orchestrator ─ offer (try_send) ─▶ bounded channel ─▶ sender task ─ tell ─▶ subscriber
//!      full: count the event as missed            channel empty and missed > 0: Lagged{missed}
//!      closed / undeliverable: drop the subscription
//! ```
//!
//! The orchestrator never waits for a subscriber (ORC-20): each subscription has its own
//! bounded channel and sender task; when the channel is full the event is dropped and counted,
//! and the subscriber is told `Lagged { missed }` as soon as the channel has drained. Events of
//! one subscription keep the order in which the orchestrator applied them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use procmesh_orchestrator_core::Backlog;
use procmesh_protocol::messages::client::ClientEvent;
use procmesh_protocol::messages::orchestrator::{EventFilter, QueueStatus};
use procmesh_protocol::{ActorId, Lsn, Transition};
use procmesh_transport::{Node, RemoteRef};
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};
use tokio::task::JoinHandle;

/// Most replayed transitions in one `Batch` event.
const BACKLOG_BATCH: usize = 512;

/// Called with a subscription's id when its subscriber cannot be reached.
pub(crate) type OnGone = Arc<dyn Fn(u64) + Send + Sync>;

struct Sub {
    queue: u64,
    /// `Some` for a subscription to one action.
    lsn: Option<Lsn>,
    /// Which transitions it is told.
    events: EventFilter,
    subscriber: ActorId,
    tx: mpsc::Sender<ClientEvent>,
    missed: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// Every live subscription.
pub(crate) struct Subscriptions {
    node: Node,
    buffer: usize,
    next: u64,
    subs: BTreeMap<u64, Sub>,
    by_queue: HashMap<u64, BTreeSet<u64>>,
    on_gone: OnGone,
    /// Events dropped for every subscriber since the start (the metric).
    dropped: AtomicU64,
}

impl Subscriptions {
    /// No subscription yet; events travel through `node`, `buffer` per subscription.
    pub fn new(node: Node, buffer: usize, on_gone: OnGone) -> Subscriptions {
        Subscriptions {
            node,
            buffer: buffer.max(1),
            next: 0,
            subs: BTreeMap::new(),
            by_queue: HashMap::new(),
            on_gone,
            dropped: AtomicU64::new(0),
        }
    }

    /// Events dropped for lagging subscribers since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Live subscriptions.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Starts a subscription of `subscriber` to `queue` (or one action of it) and hands it
    /// `backlog` first (ORC-32): `Lagged` for what is no longer kept, then the kept
    /// transitions in batches; returns its id.
    pub fn subscribe(
        &mut self,
        queue: u64,
        lsn: Option<Lsn>,
        subscriber: ActorId,
        backlog: Backlog,
        events: EventFilter,
    ) -> u64 {
        self.next += 1;
        let id = self.next;
        let (tx, rx) = mpsc::channel(self.buffer);
        let missed = Arc::new(AtomicU64::new(0));
        let to = self.node.remote_ref::<ClientEvent>(subscriber.clone());
        let task = tokio::spawn(deliver(id, to, rx, missed.clone(), self.on_gone.clone()));
        self.subs.insert(
            id,
            Sub {
                queue,
                lsn,
                events,
                subscriber,
                tx,
                missed,
                task,
            },
        );
        self.by_queue.entry(queue).or_default().insert(id);
        let sub = &self.subs[&id];
        let mut ok = true;
        if backlog.missed > 0 {
            ok &= offer(
                &self.dropped,
                sub,
                ClientEvent::Lagged {
                    subscription: id,
                    missed: backlog.missed,
                },
            );
        }
        let filter = events;
        let mut events = backlog
            .events
            .into_iter()
            .filter(|(_, t)| filter.wants(t.state))
            .peekable();
        while ok && events.peek().is_some() {
            let chunk: Vec<ClientEvent> = events
                .by_ref()
                .take(BACKLOG_BATCH)
                .map(|(seq, transition)| ClientEvent::Transition {
                    subscription: id,
                    queue,
                    transition,
                    seq,
                })
                .collect();
            ok &= offer(
                &self.dropped,
                sub,
                ClientEvent::Batch {
                    subscription: id,
                    events: chunk,
                },
            );
        }
        if !ok {
            self.unsubscribe(id);
        }
        id
    }

    /// Ends a subscription; what it buffered is still delivered. `false` if unknown.
    /// Whether subscription `id` delivers to an actor of `proc` (the proc that subscribed).
    pub fn owned_by(&self, id: u64, proc: &procmesh_protocol::ProcId) -> bool {
        self.subs
            .get(&id)
            .is_some_and(|sub| sub.subscriber.proc_id() == proc)
    }

    pub fn unsubscribe(&mut self, id: u64) -> bool {
        let Some(sub) = self.subs.remove(&id) else {
            return false;
        };
        if let Some(set) = self.by_queue.get_mut(&sub.queue) {
            set.remove(&id);
            if set.is_empty() {
                self.by_queue.remove(&sub.queue);
            }
        }
        true
    }

    /// Ends every subscription of `subscriber` (it cannot be reached); returns how many.
    pub fn drop_subscriber(&mut self, subscriber: &ActorId) -> usize {
        let ids: Vec<u64> = self
            .subs
            .iter()
            .filter(|(_, s)| &s.subscriber == subscriber)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(sub) = self.subs.get(id) {
                sub.task.abort();
            }
            self.unsubscribe(*id);
        }
        ids.len()
    }

    /// Whether any subscription follows `queue`.
    #[cfg(test)]
    pub fn follows(&self, queue: u64) -> bool {
        self.by_queue.contains_key(&queue)
    }

    /// Offers a transition of an action of `queue`, its index `seq`, to its subscriptions.
    pub fn transition(&mut self, queue: u64, seq: u64, transition: &Transition) {
        let Some(ids) = self.by_queue.get(&queue) else {
            return;
        };
        let mut closed = Vec::new();
        for id in ids {
            let Some(sub) = self.subs.get(id) else {
                continue;
            };
            if sub.lsn.is_some_and(|lsn| lsn != transition.lsn)
                || !sub.events.wants(transition.state)
            {
                continue;
            }
            let event = ClientEvent::Transition {
                subscription: *id,
                queue,
                transition: transition.clone(),
                seq,
            };
            if !offer(&self.dropped, sub, event) {
                closed.push(*id);
            }
        }
        for id in closed {
            self.unsubscribe(id);
        }
    }

    /// Offers a queue's completion to the subscriptions following the whole queue.
    pub fn complete(&mut self, status: &QueueStatus) {
        let Some(ids) = self.by_queue.get(&status.id) else {
            return;
        };
        let mut closed = Vec::new();
        for id in ids {
            let Some(sub) = self.subs.get(id) else {
                continue;
            };
            if sub.lsn.is_some() {
                continue;
            }
            let event = ClientEvent::QueueComplete {
                subscription: *id,
                status: status.clone(),
            };
            if !offer(&self.dropped, sub, event) {
                closed.push(*id);
            }
        }
        for id in closed {
            self.unsubscribe(id);
        }
    }

    /// Ends every subscription with `Ended { reason }` and waits (up to `grace`) for what was
    /// buffered to be handed to the mesh.
    pub async fn end_all(&mut self, reason: &str, grace: Duration) {
        let subs = std::mem::take(&mut self.subs);
        self.by_queue.clear();
        let deadline = tokio::time::Instant::now() + grace;
        let mut tasks = Vec::with_capacity(subs.len());
        for (id, sub) in subs {
            let ended = ClientEvent::Ended {
                subscription: id,
                reason: reason.to_owned(),
            };
            let _ = tokio::time::timeout_at(deadline, sub.tx.send(ended)).await;
            drop(sub.tx);
            tasks.push(sub.task);
        }
        for task in tasks {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::debug!("a subscriber did not take its last events in time");
            }
        }
    }
}

/// Queues `event` without waiting; a full channel counts it as missed. `false` once the
/// sender task has ended.
fn offer(dropped: &AtomicU64, sub: &Sub, event: ClientEvent) -> bool {
    match sub.tx.try_send(event) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            sub.missed.fetch_add(1, Ordering::Relaxed);
            dropped.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

/// Most events told in one message.
const MAX_EVENT_BATCH: usize = 256;

/// One subscription's sender task: tells every event in order; tells `Lagged` once the channel
/// has drained after drops; stops at the first event that cannot be handed over.
async fn deliver(
    id: u64,
    to: RemoteRef<ClientEvent>,
    mut rx: mpsc::Receiver<ClientEvent>,
    missed: Arc<AtomicU64>,
    on_gone: OnGone,
) {
    loop {
        let event = match rx.try_recv() {
            Ok(event) => event,
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => match missed.swap(0, Ordering::Relaxed) {
                0 => match rx.recv().await {
                    Some(event) => event,
                    None => return,
                },
                n => ClientEvent::Lagged {
                    subscription: id,
                    missed: n,
                },
            },
        };
        // What piled up meanwhile goes along in one message (never a `Lagged`: that is only
        // made once the channel is empty). A batch already made (a replayed backlog) is
        // flattened into it: batches never nest.
        let mut more = Vec::new();
        flatten(event, &mut more);
        while more.len() < MAX_EVENT_BATCH {
            match rx.try_recv() {
                Ok(next) => flatten(next, &mut more),
                Err(_) => break,
            }
        }
        let event = if more.len() == 1 {
            more.pop().expect("one event")
        } else {
            ClientEvent::Batch {
                subscription: id,
                events: more,
            }
        };
        if let Err(error) = to.tell(event).await {
            tracing::info!(%error, subscriber = %to.id(), subscription = id, "subscriber gone");
            on_gone(id);
            return;
        }
    }
}

/// Appends `event` to `into`, unpacking a batch.
fn flatten(event: ClientEvent, into: &mut Vec<ClientEvent>) {
    match event {
        ClientEvent::Batch { events, .. } => into.extend(events),
        event => into.push(event),
    }
}

#[cfg(test)]
mod tests {
    use kameo::actor::Spawn;
    use kameo::message::{Context, Message};
    use kameo::Actor;
    use procmesh_protocol::{ActionState, Attempt};
    use procmesh_transport::{LocalHub, NodeBuilder, Request};

    use super::*;

    /// A subscriber that takes 5 ms per event, behind a one-slot mailbox.
    #[derive(Actor)]
    struct Slow(mpsc::UnboundedSender<ClientEvent>);

    impl Message<Request<ClientEvent>> for Slow {
        type Reply = ();

        async fn handle(&mut self, req: Request<ClientEvent>, _: &mut Context<Self, ()>) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            match req.message {
                ClientEvent::Batch { events, .. } => {
                    assert!(events.len() > 1, "a batch carries several events");
                    for event in events {
                        assert!(!matches!(event, ClientEvent::Batch { .. }), "never nested");
                        let _ = self.0.send(event);
                    }
                }
                event => {
                    let _ = self.0.send(event);
                }
            }
        }
    }

    /// The orchestrator's node on an in-process hub (kept alive beside it).
    async fn orchestrator_node() -> (LocalHub, Node) {
        let hub = LocalHub::new();
        let node = NodeBuilder::new("service")
            .local(&hub, "o")
            .start()
            .await
            .unwrap();
        (hub, node)
    }

    // Attests ORC-20
    #[tokio::test]
    async fn a_slow_subscriber_is_told_what_it_missed_in_order() {
        let (_hub, node) = orchestrator_node().await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let slow = Slow::spawn_with_mailbox(Slow(tx), kameo::mailbox::bounded(1));
        let subscriber = node.expose("slow", slow).unwrap();
        let mut subs = Subscriptions::new(node.clone(), 2, Arc::new(|_| {}));
        let id = subs.subscribe(7, None, subscriber, Backlog::default(), EventFilter::All);
        assert!(subs.follows(7) && !subs.follows(8));
        let total = 50u64;
        for n in 1..=total {
            let t = Transition::new(
                Lsn(n),
                Attempt::FIRST,
                ActionState::Pending,
                Default::default(),
            );
            subs.transition(7, n, &t);
            subs.transition(8, n, &t); // another queue: nobody follows it
        }
        let (mut delivered, mut missed, mut last) = (0u64, 0u64, 0u64);
        while delivered + missed < total {
            let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("events in time")
                .expect("subscriber alive");
            assert_eq!(event.subscription(), id);
            match event {
                ClientEvent::Transition {
                    transition, queue, ..
                } => {
                    assert_eq!(queue, 7);
                    assert!(transition.lsn.0 > last, "in order");
                    last = transition.lsn.0;
                    delivered += 1;
                }
                ClientEvent::Lagged { missed: n, .. } => missed += n,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(missed > 0, "a slow subscriber lags");
        assert_eq!(delivered + missed, total);
        subs.end_all("test over", Duration::from_secs(5)).await;
        let ended = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(ended, ClientEvent::Ended { .. }), "{ended:?}");
        assert!(!subs.follows(7));
    }

    // Attests ORC-20
    #[tokio::test]
    async fn filtered_subscriptions_are_told_only_what_they_asked_for() {
        let (_hub, node) = orchestrator_node().await;
        let mut subs = Subscriptions::new(node.clone(), 64, Arc::new(|_| {}));
        let t = |n: u64, state| Transition::new(Lsn(n), Attempt::FIRST, state, Default::default());
        let mut receivers = Vec::new();
        for (i, filter) in [
            EventFilter::All,
            EventFilter::Finals,
            EventFilter::Completion,
        ]
        .into_iter()
        .enumerate()
        {
            let (tx, rx) = mpsc::unbounded_channel();
            let sink = Slow::spawn_with_mailbox(Slow(tx), kameo::mailbox::unbounded());
            let subscriber = node.expose(&format!("s{i}"), sink).unwrap();
            // The backlog is filtered as the live events are.
            let backlog = Backlog {
                events: vec![
                    (1, t(1, ActionState::Running)),
                    (2, t(1, ActionState::Failed)),
                ],
                missed: 0,
                next: 3,
            };
            subs.subscribe(7, None, subscriber, backlog, filter);
            receivers.push(rx);
        }
        subs.transition(7, 3, &t(2, ActionState::Running));
        subs.transition(7, 4, &t(2, ActionState::Completed));
        let status = QueueStatus {
            id: 7,
            name: String::new(),
            counts: Default::default(),
            draining: false,
            cancelled: false,
            is_complete: true,
        };
        subs.complete(&status);
        let mut told = Vec::new();
        for rx in &mut receivers {
            let mut seqs = Vec::new();
            loop {
                let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .expect("events in time")
                    .expect("subscriber alive");
                match event {
                    ClientEvent::Transition { seq, .. } => seqs.push(seq),
                    ClientEvent::QueueComplete { .. } => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            told.push(seqs);
        }
        assert_eq!(told, [vec![1, 2, 3, 4], vec![2, 4], vec![]]);
        subs.end_all("test over", Duration::from_secs(5)).await;
    }

    // Attests ORC-32
    #[tokio::test]
    async fn a_resuming_subscriber_gets_what_it_missed_then_live_events() {
        let (_hub, node) = orchestrator_node().await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sink = Slow::spawn_with_mailbox(Slow(tx), kameo::mailbox::unbounded());
        let subscriber = node.expose("resumer", sink).unwrap();
        let mut subs = Subscriptions::new(node.clone(), 8, Arc::new(|_| {}));
        let t = |n: u64| {
            Transition::new(
                Lsn(n),
                Attempt::FIRST,
                ActionState::Pending,
                Default::default(),
            )
        };
        let backlog = Backlog {
            events: (10..=12).map(|seq| (seq, t(seq))).collect(),
            missed: 2,
            next: 13,
        };
        let id = subs.subscribe(7, None, subscriber, backlog, EventFilter::All);
        subs.transition(7, 13, &t(13));
        let mut seen = Vec::new();
        let mut lagged = 0;
        while seen.len() < 4 {
            let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("events in time")
                .expect("subscriber alive");
            assert_eq!(event.subscription(), id);
            match event {
                ClientEvent::Lagged { missed, .. } => {
                    assert!(seen.is_empty(), "the gap is told first");
                    lagged += missed;
                }
                ClientEvent::Transition {
                    seq, transition, ..
                } => {
                    assert_eq!(transition.lsn.0, seq);
                    seen.push(seq);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(lagged, 2);
        assert_eq!(seen, [10, 11, 12, 13], "replayed in order, then live");
    }
}
