//! The `service.orchestrator` actor: a thin shell around [`Core`] (STYLE §2, §11). It turns
//! every message into an [`Input`], journals the inputs that changed state, and carries out the
//! [`Effect`]s of each input only once that input is committed (ORC-30): replies, submissions and
//! stop orders to proc agents, events to subscribers, the next dispatch pass.
//!
//! ```text
//!  Request<OrchestratorRequest> ─┐                       changed ─▶ Log::push(record) ─▶ committer thread
//!  Internal::{Dispatch, Tick,    ├─▶ Core::handle ─▶ Outcome                               │ one redb
//!   SubmitFailed, StopFailed}   ─┘                       effects ─▶ held until ◀─ Committed(seq) transaction
//!                                                                   then: reply, SubmitBatch / Cancel
//!                                                                   (spawned asks), publish, dispatch
//! ```

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use kameo::actor::{ActorRef, WeakActorRef};
use kameo::error::Infallible;
use kameo::message::{Context, Message};
use kameo::reply::{DelegatedReply, ReplySender};
use kameo::Actor;
use procmesh_orchestrator_core::{Core, Effect, Env, Input, Outcome};
use procmesh_protocol::messages::agent::ActionSpec;
use procmesh_protocol::messages::orchestrator::{
    OrchestratorError, OrchestratorReply, OrchestratorRequest, QueueToken, UpdateOutcome,
    QUEUE_TOKEN_LEN,
};
use procmesh_protocol::{ActorId, AttemptRef, BlobHash, ProcId};
use procmesh_transport::{BlobStore, Node, Request, WireReply};

use crate::admin::view::Observer;
use crate::config::OrchestratorConfig;
use crate::durable::Log;
use crate::events::Subscriptions;
use crate::gate::Gate;

pub(crate) use procmesh_transport::now;

/// The wire reply of a request.
pub(crate) type Reply = WireReply<Result<OrchestratorReply, OrchestratorError>>;

/// What the actor is started with.
pub(crate) struct ServiceArgs {
    pub config: OrchestratorConfig,
    pub node: Node,
    pub me: ActorId,
    pub blobs: Arc<BlobStore>,
    pub core: Core,
    /// The journal's writer; `None` keeps the state in memory only.
    pub log: Option<Log>,
    /// What the transport checks before the actor (bindings, grants, tickets).
    pub gate: Arc<Gate>,
    /// Metrics and the admin view.
    pub observer: Observer,
}

/// Effects waiting for the commit of the input with sequence number `seq` (or an earlier one).
struct Held {
    seq: u64,
    reply: Option<ReplySender<Reply>>,
    outcome: Outcome,
}

/// The orchestrator actor.
pub(crate) struct Service {
    pub(crate) config: OrchestratorConfig,
    pub(crate) node: Node,
    /// This actor's id: the `report_to` of every submission.
    pub(crate) me: ActorId,
    pub(crate) myself: WeakActorRef<Service>,
    blobs: Arc<BlobStore>,
    core: Core,
    log: Option<Log>,
    /// Effects in input order, each waiting for its commit (ORC-30).
    held: VecDeque<Held>,
    /// The highest sequence number committed.
    committed: u64,
    pub(crate) subs: Subscriptions,
    /// A dispatch pass is queued in the mailbox (ORC-22).
    dispatch_queued: bool,
    shutting_down: bool,
    pub(crate) gate: Arc<Gate>,
    observer: Observer,
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
        let mut log = args.log;
        if let Some(log) = &mut log {
            log.start(weak.clone(), args.observer.metrics.clone());
        }
        let mut service = Service {
            config: args.config,
            node: args.node,
            me: args.me,
            myself: weak,
            blobs: args.blobs,
            core: args.core,
            log,
            held: VecDeque::new(),
            committed: 0,
            subs,
            dispatch_queued: false,
            shutting_down: false,
            gate: args.gate,
            observer: args.observer,
        };
        service.publish_bindings();
        service.trigger_dispatch();
        Ok(service)
    }
}

/// The actor's own messages: from itself, its tick, the journal and the tasks it spawned.
#[derive(Debug)]
pub(crate) enum Internal {
    /// Run a scheduling pass (ORC-22).
    Dispatch,
    /// Look for silent hosts.
    Tick,
    /// A proc agent refused a submission or could not be reached (ORC-17).
    SubmitFailed {
        attempt: AttemptRef,
        proc: ProcId,
        reason: String,
    },
    /// A stop order did not reach an agent running the attempt.
    StopFailed { attempt: AttemptRef, reason: String },
    /// The journal committed every input up to this sequence number.
    Committed(u64),
    /// The journal cannot commit: nothing more may leave (ORC-30).
    JournalFailed(String),
    /// A subscription's sender task could not hand an event over.
    SubscriptionGone(u64),
    /// A message to this actor could not be delivered (a bounce notice of the node).
    Undeliverable(ActorId),
    /// Rebuild the admin view and the gauges if anything changed.
    Refresh,
}

impl Message<Internal> for Service {
    type Reply = ();

    async fn handle(&mut self, msg: Internal, ctx: &mut Context<Self, Self::Reply>) {
        if self.shutting_down {
            return;
        }
        let input = match msg {
            Internal::Dispatch => {
                self.dispatch_queued = false;
                Input::Dispatch
            }
            Internal::Tick => Input::Tick,
            Internal::SubmitFailed {
                attempt,
                proc,
                reason,
            } => Input::SubmitFailed {
                attempt,
                proc,
                reason,
            },
            Internal::StopFailed { attempt, reason } => Input::StopFailed { attempt, reason },
            Internal::Committed(seq) => {
                self.committed = self.committed.max(seq);
                self.release();
                return;
            }
            Internal::JournalFailed(error) => {
                tracing::error!(%error, "the journal cannot commit; the orchestrator stops");
                self.fail_held(&error);
                self.shutting_down = true;
                ctx.stop();
                return;
            }
            Internal::SubscriptionGone(id) => {
                self.subs.unsubscribe(id);
                return;
            }
            Internal::Undeliverable(dest) => {
                let dropped = self.subs.drop_subscriber(&dest);
                if dropped > 0 {
                    tracing::info!(subscriber = %dest, dropped, "subscriber undeliverable");
                }
                return;
            }
            Internal::Refresh => {
                self.observer
                    .metrics
                    .forbidden_counts(&self.gate.refusals());
                self.observer
                    .metrics
                    .transport_refusals(&self.node.refusals());
                self.observer.refresh(
                    &self.core,
                    now(),
                    self.subs.dropped(),
                    self.subs.len(),
                    false,
                );
                return;
            }
        };
        self.feed(input, None);
    }
}

impl Message<Request<OrchestratorRequest>> for Service {
    type Reply = DelegatedReply<Reply>;

    async fn handle(
        &mut self,
        req: Request<OrchestratorRequest>,
        ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        let (delegated, sender) = ctx.reply_sender();
        if self.shutting_down {
            if let Some(sender) = sender {
                sender.send(Ok(Err(OrchestratorError::ShuttingDown)));
            }
            return delegated;
        }
        let loopback = req.is_loopback();
        let kind = req.message.kind();
        let peer = match crate::gate::peer_of(req.peer.as_deref()) {
            Ok(peer) => peer,
            Err(why) => {
                self.gate.refuse(kind);
                if let Some(sender) = sender {
                    sender.send(Ok(Err(OrchestratorError::NotPermitted(why))));
                }
                return delegated;
            }
        };
        let token = match &req.message {
            OrchestratorRequest::CreateQueue(_) => match draw_token() {
                Ok(token) => Some(token),
                Err(error) => {
                    if let Some(sender) = sender {
                        sender.send(Ok(Err(error)));
                    }
                    return delegated;
                }
            },
            _ => None,
        };
        let input = Input::Request(procmesh_orchestrator_core::Request {
            message: req.message,
            from: req.from,
            loopback,
            token,
            peer,
        });
        self.feed_request(input, kind, sender);
        delegated
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
        if let Some(log) = self.log.take() {
            // What was accepted is committed before the actor goes (ORC-30).
            match log.finish() {
                Ok(seq) => {
                    self.committed = self.committed.max(seq);
                    self.release();
                }
                Err(error) => self.fail_held(&error),
            }
        }
        self.subs
            .end_all("the orchestrator is shutting down", msg.grace)
            .await;
        ctx.stop();
    }
}

/// Recount the core (ORC-8, ORC-12, ORC-19).
#[derive(Debug)]
pub(crate) struct Audit;

impl Message<Audit> for Service {
    type Reply = WireReply<Result<(), String>>;

    async fn handle(&mut self, _: Audit, _ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        Ok(self.core.audit())
    }
}

/// One action for the admin API: its record and attempts, and with `explain` why it is (not)
/// running.
#[derive(Debug)]
pub(crate) struct AdminAsk {
    pub lsn: procmesh_protocol::Lsn,
    pub explain: bool,
}

impl Message<AdminAsk> for Service {
    type Reply = WireReply<Option<serde_json::Value>>;

    async fn handle(
        &mut self,
        msg: AdminAsk,
        _ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        Ok(crate::admin::view::action_json(
            &self.core,
            msg.lsn,
            msg.explain,
            now(),
        ))
    }
}

/// What the core may ask of the world while it handles an input.
struct ShellEnv<'a> {
    blobs: &'a BlobStore,
}

impl Env for ShellEnv<'_> {
    fn has_blob(&self, hash: &BlobHash) -> bool {
        self.blobs.contains(hash)
    }

    /// The shell follows every queue: its metrics and admin view count every transition.
    fn follows(&self, _queue: u64) -> bool {
        true
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
    /// Lets `proc`'s host fetch the worker files and inputs of `specs` (ORC-39).
    pub(crate) fn grant_blobs(&self, proc: &ProcId, specs: &[ActionSpec]) {
        let mut blobs = Vec::new();
        let mut workers = HashSet::new();
        for spec in specs {
            blobs.extend(spec.action.inputs.iter().map(|i| i.hash));
            if workers.insert(spec.worker()) {
                if let Some(worker) = self.core.records().worker(&spec.worker()) {
                    blobs.extend(worker.blobs());
                }
            }
        }
        self.gate.grant(proc.addr(), blobs);
    }

    /// The bound nodes, for the transport's admission check and dial list (ORC-38).
    fn publish_bindings(&self) {
        self.gate.rebind(self.core.node_bindings());
        for (_, addr, _) in self.core.node_bindings() {
            self.node.allow_dial(addr);
        }
    }

    /// [`feed`](Self::feed) for a client, host or agent request: counts and logs what its
    /// authority checks refused, and hands a registered host its ticket key.
    fn feed_request(
        &mut self,
        input: Input,
        kind: &'static str,
        reply: Option<ReplySender<Reply>>,
    ) {
        let register = matches!(
            &input,
            Input::Request(r) if matches!(r.message, OrchestratorRequest::RegisterHost(_))
        );
        let from = match &input {
            Input::Request(r) => Some(r.from.clone()),
            _ => None,
        };
        self.feed_with(input, reply, |gate, outcome| {
            if outcome.refused > 0 {
                for _ in 0..outcome.refused {
                    gate.refuse(kind);
                }
            }
            match &mut outcome.reply {
                Some(Err(OrchestratorError::NotPermitted(why))) => {
                    gate.refuse(kind);
                    tracing::warn!(request = kind, from = ?from, reason = %why, "forbidden");
                }
                Some(Ok(OrchestratorReply::HostRegistered { ticket_key, .. })) => {
                    if let Some(from) = &from {
                        *ticket_key = Some(hex::encode(gate.ticket_key(from.proc_id().addr())));
                    }
                }
                Some(Ok(OrchestratorReply::Results(results))) => gate.add_tickets(results),
                _ => {}
            }
        });
        if register {
            self.publish_bindings();
        }
    }

    /// Hands one input to the core; journals it if it changed state; holds its effects until
    /// that commit (ORC-30), or carries them out at once when nothing is waiting.
    fn feed(&mut self, input: Input, reply: Option<ReplySender<Reply>>) {
        self.feed_with(input, reply, |_, _| {});
    }

    /// [`feed`](Self::feed), with `adjust` applied to the outcome before it is held or carried
    /// out.
    fn feed_with(
        &mut self,
        input: Input,
        reply: Option<ReplySender<Reply>>,
        adjust: impl FnOnce(&Gate, &mut Outcome),
    ) {
        let now = now();
        let record = match &mut self.log {
            Some(log) if input.may_change_state() => match log.encode(now, &input) {
                Ok(record) => Some(record),
                Err(error) => {
                    tracing::error!(%error, "cannot encode an input for the journal");
                    if let Some(reply) = reply {
                        reply.send(Ok(Err(OrchestratorError::Journal(error))));
                    }
                    return;
                }
            },
            _ => None,
        };
        let env = ShellEnv { blobs: &self.blobs };
        let mut outcome = self.core.handle(input, now, &env);
        adjust(&self.gate, &mut outcome);
        match &outcome.reply {
            Some(Err(error)) => {
                tracing::debug!(%error, code = error.code(), "request refused");
                self.observer.metrics.refused(error.code());
            }
            Some(Ok(OrchestratorReply::Updated(UpdateOutcome::Ignored(ignored)))) => {
                self.observer.metrics.ignored(ignored.code());
            }
            _ => {}
        }
        self.observer
            .observe(&self.core, &outcome.effects, outcome.changed);
        let mut dispatch_again = false;
        outcome.effects.retain(|effect| match effect {
            // Nothing leaves the process here: the next pass is itself an input, journaled
            // after this one, whose own effects wait for its commit (ORC-30). Running it now
            // keeps passes flowing while a commit is in flight.
            Effect::DispatchAgain => {
                dispatch_again = true;
                false
            }
            _ => true,
        });
        if dispatch_again {
            self.trigger_dispatch();
        }
        let mut seq = self.held.back().map_or(self.committed, |h| h.seq);
        if let (Some(log), Some(record), true) = (&mut self.log, record, outcome.changed) {
            seq = log.push(record, &self.core);
        }
        if seq <= self.committed && self.held.is_empty() {
            self.carry_out(reply, outcome);
        } else {
            self.held.push_back(Held {
                seq,
                reply,
                outcome,
            });
        }
    }

    /// Carries out every held outcome whose input is committed, in order.
    fn release(&mut self) {
        while self.held.front().is_some_and(|h| h.seq <= self.committed) {
            if let Some(held) = self.held.pop_front() {
                self.carry_out(held.reply, held.outcome);
            }
        }
    }

    /// The journal failed: every held reply says so; no held effect leaves.
    fn fail_held(&mut self, error: &str) {
        for held in self.held.drain(..) {
            if let Some(reply) = held.reply {
                reply.send(Ok(Err(OrchestratorError::Journal(error.to_owned()))));
            }
        }
    }

    /// Asks for a dispatch pass; many triggers before it runs make one pass (ORC-22).
    pub(crate) fn trigger_dispatch(&mut self) {
        if self.dispatch_queued || self.shutting_down {
            return;
        }
        if let Some(me) = self.myself.upgrade() {
            // The mailbox is unbounded: this never waits and only fails once the actor stops.
            if me.tell(Internal::Dispatch).try_send().is_ok() {
                self.dispatch_queued = true;
            }
        }
    }
}
