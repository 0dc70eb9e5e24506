//! The `service.orchestrator` actor: one kameo actor owns the [`Book`], the [`Store`], the host
//! [`Registry`] and the [`Subscriptions`], answers every [`OrchestratorRequest`], and carries out
//! what the book decides. It never waits on the network inside a handler (ORC-21): submissions
//! and stop orders to proc agents run in spawned tasks that report failures back to the actor
//! as private messages ([`Internal`]).
//!
//! ```text
//!  clients ── CreateQueue / Submit / Cancel… ─┐
//!  hosts   ── RegisterHost / Heartbeat / ProcLost ─┤           ┌─▶ spawned ask: AgentRequest::Submit
//!  agents  ── ActionUpdate / GetWorker ───────┼─▶ Service ─┼─▶ spawned ask: AgentRequest::Cancel
//!  tick    ── Internal::Tick (silent hosts) ──┤   (Book)   └─▶ Subscriptions ─▶ ClientEvents
//!  tasks   ── Internal::SubmitFailed / StopFailed ─┘
//! ```
//!
//! Request handlers live here; placement and stop orders in [`crate::dispatch`].

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kameo::actor::{ActorRef, WeakActorRef};
use kameo::error::Infallible;
use kameo::message::{Context, Message};
use kameo::Actor;
use procmesh_protocol::messages::orchestrator::{
    ActionResult, OrchestratorError, OrchestratorReply, OrchestratorRequest, QueueConfig, QueueRef,
    QueueToken, SubmitAction, SubscriptionTarget, UpdateOutcome, QUEUE_TOKEN_LEN,
};
use procmesh_protocol::sched::{ApplyError, Book, BookLimits, CancelOutcome, NewAction, Update};
use procmesh_protocol::spec::{WorkerDescriptor, WorkerId};
use procmesh_protocol::{
    ActionState, ActorId, Attempt, AttemptRef, BlobHash, Lsn, ProcId, Timestamp, Transition,
    TransitionDetail,
};
use procmesh_transport::{BlobStore, Node, Request, WireReply};

use crate::config::OrchestratorConfig;
use crate::events::Subscriptions;
use crate::registry::Registry;
use crate::store::{ResultDetail, Store, StoreError};

pub(crate) use procmesh_transport::now;

/// What the actor is started with.
pub(crate) struct ServiceArgs {
    pub config: OrchestratorConfig,
    pub node: Node,
    pub me: ActorId,
    pub blobs: Arc<BlobStore>,
    pub store: Box<dyn Store>,
}

/// The orchestrator actor.
pub(crate) struct Service {
    pub(crate) config: OrchestratorConfig,
    pub(crate) node: Node,
    /// This actor's id: the `report_to` of every submission.
    pub(crate) me: ActorId,
    pub(crate) myself: WeakActorRef<Service>,
    pub(crate) blobs: Arc<BlobStore>,
    pub(crate) book: Book,
    pub(crate) store: Box<dyn Store>,
    pub(crate) registry: Registry,
    pub(crate) subs: Subscriptions,
    /// A dispatch pass is queued in the mailbox (ORC-22).
    pub(crate) dispatch_queued: bool,
    pub(crate) shutting_down: bool,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Actor for Service {
    type Args = ServiceArgs;
    type Error = Infallible;

    async fn on_start(args: ServiceArgs, actor_ref: ActorRef<Self>) -> Result<Self, Infallible> {
        let weak = actor_ref.downgrade();
        let on_gone = {
            let weak = weak.clone();
            Arc::new(move |subscription: u64| {
                if let Some(me) = weak.upgrade() {
                    let _ = me.tell(Internal::SubscriptionGone(subscription)).try_send();
                }
            })
        };
        let subs = Subscriptions::new(
            args.node.clone(),
            args.config.subscriber_buffer as usize,
            on_gone,
        );
        Ok(Service {
            config: args.config,
            node: args.node,
            me: args.me,
            myself: weak,
            blobs: args.blobs,
            book: Book::new(BookLimits::default()),
            store: args.store,
            registry: Registry::default(),
            subs,
            dispatch_queued: false,
            shutting_down: false,
        })
    }
}

/// The actor's own messages: from itself, its tick, and the tasks it spawned.
#[derive(Debug)]
pub(crate) enum Internal {
    /// Run a scheduling pass (ORC-22).
    Dispatch,
    /// Look for silent hosts.
    Tick,
    /// A proc agent refused a submission or could not be reached (ORC-17).
    SubmitFailed {
        /// The attempt.
        attempt: AttemptRef,
        /// Where it was placed.
        proc: ProcId,
        /// Why.
        reason: String,
    },
    /// A stop order did not reach an agent running the attempt.
    StopFailed {
        /// The attempt.
        attempt: AttemptRef,
        /// Why.
        reason: String,
    },
    /// A subscription's sender task could not hand an event over.
    SubscriptionGone(u64),
    /// A message to this actor could not be delivered (a bounce notice of the node).
    Undeliverable(ActorId),
}

impl Message<Internal> for Service {
    type Reply = ();

    async fn handle(&mut self, msg: Internal, _ctx: &mut Context<Self, Self::Reply>) {
        if self.shutting_down {
            return;
        }
        let now = now();
        match msg {
            Internal::Dispatch => self.dispatch(now),
            Internal::Tick => self.tick(now),
            Internal::SubmitFailed {
                attempt,
                proc,
                reason,
            } => self.submit_failed(attempt, proc, reason, now),
            Internal::StopFailed { attempt, reason } => self.stop_failed(attempt, reason, now),
            Internal::SubscriptionGone(id) => {
                self.subs.unsubscribe(id);
            }
            Internal::Undeliverable(dest) => {
                let dropped = self.subs.drop_subscriber(&dest);
                if dropped > 0 {
                    tracing::info!(subscriber = %dest, dropped, "subscriber undeliverable");
                }
            }
        }
    }
}

/// Stop serving: tell every subscriber `Ended`, then stop the actor.
#[derive(Debug)]
pub(crate) struct Shutdown {
    /// How long subscribers may take to receive their last events.
    pub grace: Duration,
}

impl Message<Shutdown> for Service {
    type Reply = ();

    async fn handle(&mut self, msg: Shutdown, ctx: &mut Context<Self, Self::Reply>) {
        self.shutting_down = true;
        self.subs
            .end_all("the orchestrator is shutting down", msg.grace)
            .await;
        ctx.stop();
    }
}

/// Recount the book (ORC-8, ORC-12) and check the store against it (ORC-19).
#[derive(Debug)]
pub(crate) struct Audit;

impl Message<Audit> for Service {
    type Reply = WireReply<Result<(), String>>;

    async fn handle(&mut self, _: Audit, _ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        Ok(self.audit())
    }
}

impl Message<Request<OrchestratorRequest>> for Service {
    type Reply = WireReply<Result<OrchestratorReply, OrchestratorError>>;

    async fn handle(
        &mut self,
        req: Request<OrchestratorRequest>,
        _ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        if self.shutting_down {
            return Ok(Err(OrchestratorError::ShuttingDown));
        }
        let loopback = req.is_loopback();
        let result = self.handle_request(req.message, &req.from, loopback, now());
        if let Err(error) = &result {
            tracing::debug!(%error, code = error.code(), from = %req.from, "request refused");
        }
        Ok(result)
    }
}

pub(crate) type Answer = Result<OrchestratorReply, OrchestratorError>;

fn journal(e: StoreError) -> OrchestratorError {
    OrchestratorError::Journal(e.0)
}

/// Which queue `queue` names, for a request from loopback or not (ORC-15): an integer id only
/// from loopback, a token from anywhere; a wrong token or id is an unknown queue.
pub(crate) fn resolve_queue(
    book: &Book,
    store: &dyn Store,
    queue: QueueRef,
    loopback: bool,
) -> Result<u64, OrchestratorError> {
    match queue {
        QueueRef::Id(_) if !loopback => Err(OrchestratorError::Forbidden),
        QueueRef::Id(id) => book
            .queue(id)
            .map(|_| id)
            .map_err(|_| OrchestratorError::UnknownQueue(queue.to_string())),
        QueueRef::Token(token) => store
            .queue_by_token(&token)
            .ok_or_else(|| OrchestratorError::UnknownQueue(queue.to_string())),
    }
}

/// A fresh queue token from the operating system's CSPRNG.
fn draw_token() -> Result<QueueToken, OrchestratorError> {
    let mut bytes = [0u8; QUEUE_TOKEN_LEN];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| OrchestratorError::Internal(format!("no randomness for a token: {e}")))?;
    Ok(QueueToken::from_bytes(bytes))
}

impl Service {
    fn handle_request(
        &mut self,
        message: OrchestratorRequest,
        from: &ActorId,
        loopback: bool,
        now: Timestamp,
    ) -> Answer {
        use OrchestratorRequest as R;
        match message {
            R::RegisterHost(info) => Ok(self.register_host(info, now)),
            R::Heartbeat(heartbeat) => self.heartbeat(heartbeat, now),
            R::ProcLost {
                proc_id, reason, ..
            } => {
                self.proc_lost(&proc_id, &reason, now);
                Ok(OrchestratorReply::Ack)
            }
            R::ActionUpdate(t) => self.action_update(t, now),
            R::ActionUpdates(transitions) => {
                // Each on its own, in order: one refused (stale, unknown) does not hold up the
                // rest.
                for t in transitions {
                    if let Err(error) = self.action_update(t, now) {
                        tracing::debug!(%error, "update of a batch refused");
                    }
                }
                Ok(OrchestratorReply::Ack)
            }
            R::GetWorker(id) => self
                .store
                .worker(&id)
                .cloned()
                .map(OrchestratorReply::Worker)
                .ok_or(OrchestratorError::UnknownWorker(id)),
            R::CreateQueue(config) => self.create_queue(config),
            R::QueueStatus(queue) => {
                let id = self.queue(queue, loopback)?;
                Ok(OrchestratorReply::QueueStatus(self.book.status(id)?))
            }
            R::ListResults {
                queue,
                after,
                limit,
            } => {
                let id = self.queue(queue, loopback)?;
                Ok(OrchestratorReply::Results(self.results(id, after, limit)?))
            }
            R::Retire { queue, lsns } => {
                let id = self.queue(queue, loopback)?;
                self.retire(id, &lsns)
            }
            R::Drain(queue) => {
                let id = self.queue(queue, loopback)?;
                self.book.drain(id)?;
                let status = self.book.status(id)?;
                if status.is_complete {
                    self.subs.complete(&status);
                }
                Ok(OrchestratorReply::Ack)
            }
            R::CancelQueue(queue) => {
                let id = self.queue(queue, loopback)?;
                self.cancel_queue(id, now)
            }
            R::CancelAction { queue, lsn } => {
                let id = self.queue(queue, loopback)?;
                self.cancel_action(id, lsn, now)
            }
            R::Reschedule { queue, lsn } => {
                let id = self.queue(queue, loopback)?;
                let t = self.book.reschedule(id, lsn, now)?;
                self.subs.transition(id, &t);
                self.trigger_dispatch();
                Ok(OrchestratorReply::Rescheduled { attempt: t.attempt })
            }
            R::SetPriority {
                queue,
                lsn,
                priority,
            } => {
                let id = self.queue(queue, loopback)?;
                self.book.set_priority(id, lsn, priority)?;
                Ok(OrchestratorReply::Ack)
            }
            R::GetAction { queue, lsn } => {
                let id = self.queue(queue, loopback)?;
                Ok(OrchestratorReply::Action(
                    self.book.action_in(id, lsn)?.view(),
                ))
            }
            R::RegisterWorker(descriptor) => self.register_worker(descriptor),
            R::MissingBlobs(hashes) => Ok(OrchestratorReply::MissingBlobs(
                hashes
                    .into_iter()
                    .filter(|h| !self.blobs.contains(h))
                    .collect(),
            )),
            R::Submit { queue, actions } => {
                let id = self.queue(queue, loopback)?;
                self.submit(id, actions, now)
            }
            R::Subscribe { target, subscriber } => {
                let (queue, lsn) = match target {
                    SubscriptionTarget::Queue(queue) => (self.queue(queue, loopback)?, None),
                    SubscriptionTarget::Action { queue, lsn } => {
                        let id = self.queue(queue, loopback)?;
                        self.book.action_in(id, lsn)?;
                        (id, Some(lsn))
                    }
                };
                let subscription = self.subs.subscribe(queue, lsn, subscriber);
                Ok(OrchestratorReply::Subscribed { subscription })
            }
            R::Unsubscribe { subscription } => {
                // ORC-25: only the proc that subscribed may stop the subscription.
                if self.subs.owned_by(subscription, from.proc_id())
                    && self.subs.unsubscribe(subscription)
                {
                    Ok(OrchestratorReply::Ack)
                } else {
                    Err(OrchestratorError::UnknownSubscription(subscription))
                }
            }
            R::ListHosts => Ok(OrchestratorReply::Hosts(self.registry.views(&self.book))),
        }
    }

    fn queue(&self, queue: QueueRef, loopback: bool) -> Result<u64, OrchestratorError> {
        resolve_queue(&self.book, &*self.store, queue, loopback)
    }

    // ---- actions --------------------------------------------------------------------------

    fn action_update(&mut self, t: Transition, now: Timestamp) -> Answer {
        match self.book.apply(&t, now) {
            Ok(update) => {
                if update.finished {
                    let detail = ResultDetail {
                        outputs: t.detail.outputs.clone(),
                        stdout_tail: t.detail.stdout_tail.clone(),
                        stderr_tail: t.detail.stderr_tail.clone(),
                    };
                    self.store.put_result(t.lsn, detail).map_err(journal)?;
                }
                let applied = Transition {
                    at: update.applied.at,
                    ..t
                };
                self.publish(&update, &applied);
                Ok(OrchestratorReply::Updated(UpdateOutcome::Applied(
                    update.applied,
                )))
            }
            Err(ApplyError::Ignored(ignored)) => {
                if ignored.is_violation() {
                    tracing::warn!(%ignored, lsn = %t.lsn, attempt = %t.attempt, "update refused");
                } else {
                    tracing::debug!(%ignored, lsn = %t.lsn, attempt = %t.attempt, "update ignored");
                }
                Ok(OrchestratorReply::Updated(UpdateOutcome::Ignored(ignored)))
            }
            Err(ApplyError::UnknownAction(lsn)) => Err(OrchestratorError::UnknownAction(lsn)),
        }
    }

    /// Publishes an applied update: the transition, the retry's `Pending`, the queue's
    /// completion; and lets the dispatcher use what it freed.
    pub(crate) fn publish(&mut self, update: &Update, applied: &Transition) {
        self.subs.transition(update.queue, applied);
        if let Some(retry) = &update.retry {
            self.subs.transition(update.queue, retry);
        }
        if update.applied.to.is_terminal() {
            self.trigger_dispatch();
        }
        if update.finished && update.queue_complete && self.subs.follows(update.queue) {
            if let Ok(status) = self.book.status(update.queue) {
                self.subs.complete(&status);
            }
        }
    }

    /// Publishes updates the book made itself (losses, cancellations): their transitions carry
    /// `reason`.
    pub(crate) fn publish_updates(&mut self, updates: &[Update], reason: &str) {
        for update in updates {
            let t = Transition::new(
                update.lsn,
                update.attempt,
                update.applied.to,
                update.applied.at,
            )
            .with_detail(TransitionDetail {
                reason: Some(reason.to_owned()),
                ..TransitionDetail::default()
            });
            self.publish(update, &t);
        }
    }

    fn create_queue(&mut self, config: QueueConfig) -> Answer {
        let token = loop {
            let token = draw_token()?;
            if !self.store.has_token(&token) {
                break token;
            }
        };
        let name = config.name.clone();
        let id = self.book.create_queue(config);
        self.store.put_queue(id, token).map_err(journal)?;
        tracing::info!(queue = id, %name, "queue created");
        Ok(OrchestratorReply::QueueCreated { id, token })
    }

    fn results(
        &self,
        queue: u64,
        after: Option<Lsn>,
        limit: Option<u32>,
    ) -> Result<Vec<ActionResult>, OrchestratorError> {
        let page = self.config.result_page;
        let limit = limit.unwrap_or(page).min(page) as usize;
        let records = self.book.results(queue, after, limit)?;
        Ok(records
            .into_iter()
            .map(|record| {
                let detail = self.store.result(record.lsn());
                ActionResult {
                    record: record.clone(),
                    outputs: detail.map(|d| d.outputs.clone()).unwrap_or_default(),
                    stdout_tail: detail.map(|d| d.stdout_tail.clone()).unwrap_or_default(),
                    stderr_tail: detail.map(|d| d.stderr_tail.clone()).unwrap_or_default(),
                }
            })
            .collect())
    }

    fn retire(&mut self, queue: u64, lsns: &[Lsn]) -> Answer {
        let count = self.book.retire(queue, lsns)?;
        let gone: Vec<Lsn> = lsns
            .iter()
            .copied()
            .filter(|lsn| self.book.action(*lsn).is_none())
            .collect();
        self.store.remove(&gone).map_err(journal)?;
        Ok(OrchestratorReply::Retired { count })
    }

    fn cancel_queue(&mut self, queue: u64, now: Timestamp) -> Answer {
        let reason = "the queue was cancelled";
        let outcome = self.book.cancel_queue(queue, reason, now)?;
        let count = outcome.count();
        tracing::info!(
            queue,
            cancelled = outcome.cancelled.len(),
            stopping = outcome.stopping.len(),
            "queue cancelled"
        );
        self.publish_updates(&outcome.cancelled, reason);
        for order in outcome.stopping {
            self.stop(order, reason, now);
        }
        Ok(OrchestratorReply::Cancelled { count })
    }

    fn cancel_action(&mut self, queue: u64, lsn: Lsn, now: Timestamp) -> Answer {
        let reason = "the action was cancelled";
        let count = match self.book.cancel(queue, lsn, reason, now)? {
            CancelOutcome::Cancelled(update) => {
                self.publish_updates(&[update], reason);
                1
            }
            CancelOutcome::Stopping(order) => {
                self.stop(order, reason, now);
                1
            }
            CancelOutcome::AlreadyFinished(_) => 0,
        };
        Ok(OrchestratorReply::Cancelled { count })
    }

    // ---- workers and submission -----------------------------------------------------------

    fn register_worker(&mut self, descriptor: WorkerDescriptor) -> Answer {
        descriptor
            .validate()
            .map_err(OrchestratorError::InvalidWorker)?;
        let blobs = descriptor.blobs();
        let id = self.store.put_worker(descriptor).map_err(journal)?;
        let missing = blobs
            .into_iter()
            .filter(|h| !self.blobs.contains(h))
            .collect();
        Ok(OrchestratorReply::WorkerRegistered { id, missing })
    }

    /// Accepts a batch, all or nothing (ORC-23): every check runs before anything changes.
    fn submit(&mut self, queue: u64, actions: Vec<SubmitAction>, now: Timestamp) -> Answer {
        let max = self.config.max_submit_batch;
        if actions.len() > max as usize {
            return Err(OrchestratorError::BatchTooLarge {
                len: actions.len() as u64,
                max: u64::from(max),
            });
        }
        let mut workers: HashSet<WorkerId> = HashSet::new();
        let mut checked: HashSet<BlobHash> = HashSet::new();
        let mut missing: BTreeSet<BlobHash> = BTreeSet::new();
        for (index, submit) in actions.iter().enumerate() {
            let action = &submit.action;
            action
                .validate()
                .map_err(|error| OrchestratorError::InvalidAction {
                    index: index as u32,
                    error,
                })?;
            if workers.insert(action.worker) {
                let worker = self
                    .store
                    .worker(&action.worker)
                    .ok_or(OrchestratorError::UnknownWorker(action.worker))?;
                for hash in worker.blobs() {
                    if checked.insert(hash) && !self.blobs.contains(&hash) {
                        missing.insert(hash);
                    }
                }
            }
            for input in &action.inputs {
                if checked.insert(input.hash) && !self.blobs.contains(&input.hash) {
                    missing.insert(input.hash);
                }
            }
        }
        if !missing.is_empty() {
            return Err(OrchestratorError::MissingBlobs(
                missing.into_iter().collect(),
            ));
        }
        let new: Vec<NewAction> = actions.iter().map(NewAction::from).collect();
        let submitted = self.book.submit_batch(queue, new, now)?;
        let lsns: Vec<Lsn> = submitted.iter().map(|s| s.lsn).collect();
        let created: Vec<(Lsn, _)> = submitted
            .iter()
            .zip(actions)
            .filter(|(s, _)| s.created)
            .map(|(s, a)| (s.lsn, a.action))
            .collect();
        let fresh: Vec<Lsn> = created.iter().map(|(lsn, _)| *lsn).collect();
        self.store.put_actions(created).map_err(journal)?;
        if self.subs.follows(queue) {
            for lsn in fresh.iter().copied() {
                let at = self
                    .book
                    .action(lsn)
                    .and_then(|e| e.record.entered(ActionState::Pending))
                    .unwrap_or(now);
                let t = Transition::new(lsn, Attempt::FIRST, ActionState::Pending, at);
                self.subs.transition(queue, &t);
            }
        }
        if !fresh.is_empty() {
            tracing::debug!(queue, accepted = fresh.len(), "actions submitted");
            self.trigger_dispatch();
        }
        Ok(OrchestratorReply::Submitted { lsns })
    }

    // ---- checks ---------------------------------------------------------------------------

    fn audit(&self) -> Result<(), String> {
        self.book.audit()?;
        if self.store.action_count() != self.book.len() {
            return Err(format!(
                "the store holds {} actions, the book {}",
                self.store.action_count(),
                self.book.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use kameo::actor::Spawn;
    use procmesh_protocol::codec::{Hello, PROTOCOL_VERSION};
    use procmesh_protocol::HostAddr;
    use procmesh_transport::{LocalHub, NodeBuilder, PeerInfo, TransportKind};

    use super::*;
    use crate::store::MemoryStore;

    fn peer(remote: &str) -> Arc<PeerInfo> {
        Arc::new(PeerInfo {
            transport: TransportKind::Quic,
            hello: Hello {
                addr: HostAddr::Local("client".into()),
                name: "client".into(),
            },
            version: PROTOCOL_VERSION,
            remote: Some(remote.parse::<SocketAddr>().unwrap()),
        })
    }

    // Attests ORC-15
    #[tokio::test]
    async fn queue_ids_only_from_loopback_tokens_from_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let hub = LocalHub::new();
        let node = NodeBuilder::new("service")
            .local(&hub, "orch")
            .start()
            .await
            .unwrap();
        let args = ServiceArgs {
            config: OrchestratorConfig::default(),
            me: node.actor_id("orchestrator").unwrap(),
            node: node.clone(),
            blobs,
            store: Box::new(MemoryStore::new()),
        };
        let actor = Service::spawn_with_mailbox(args, kameo::mailbox::unbounded());
        let ask = |message: OrchestratorRequest, peer: Option<Arc<PeerInfo>>| {
            let actor = actor.clone();
            async move {
                let req = Request {
                    message,
                    from: HostAddr::Local("client".into())
                        .proc("local")
                        .unwrap()
                        .actor("client")
                        .unwrap(),
                    peer,
                    trace: None,
                };
                match actor.ask(req).await {
                    Ok(answer) => answer,
                    Err(e) => panic!("ask failed: {e}"),
                }
            }
        };
        let remote = Some(peer("10.1.2.3:5000"));
        let Ok(OrchestratorReply::QueueCreated { id, token }) = ask(
            OrchestratorRequest::CreateQueue(QueueConfig::default()),
            remote.clone(),
        )
        .await
        else {
            panic!("no queue");
        };
        assert_eq!(token.to_string().len(), 24);
        // A remote peer naming the integer id is refused, even for a queue that exists.
        let answer = ask(
            OrchestratorRequest::QueueStatus(QueueRef::Id(id)),
            remote.clone(),
        )
        .await;
        assert_eq!(answer, Err(OrchestratorError::Forbidden));
        // The same id from a loopback QUIC peer, or from this process, is fine.
        for peer in [Some(peer("127.0.0.1:5000")), None] {
            let answer = ask(OrchestratorRequest::QueueStatus(QueueRef::Id(id)), peer).await;
            assert!(
                matches!(answer, Ok(OrchestratorReply::QueueStatus(_))),
                "{answer:?}"
            );
        }
        // The token works remotely; a wrong token is an unknown queue and does not leak it.
        let answer = ask(
            OrchestratorRequest::QueueStatus(QueueRef::Token(token)),
            remote.clone(),
        )
        .await;
        assert!(matches!(answer, Ok(OrchestratorReply::QueueStatus(_))));
        let wrong = QueueToken::from_bytes([0; QUEUE_TOKEN_LEN]);
        let answer = ask(
            OrchestratorRequest::QueueStatus(QueueRef::Token(wrong)),
            remote.clone(),
        )
        .await;
        assert!(
            matches!(answer, Err(OrchestratorError::UnknownQueue(_))),
            "{answer:?}"
        );
        // Tokens differ between queues.
        let Ok(OrchestratorReply::QueueCreated { token: other, .. }) = ask(
            OrchestratorRequest::CreateQueue(QueueConfig::default()),
            None,
        )
        .await
        else {
            panic!("no queue");
        };
        assert_ne!(token, other);
        let _ = actor.stop_gracefully().await;
        node.shutdown(Duration::from_millis(100)).await;
    }
}
