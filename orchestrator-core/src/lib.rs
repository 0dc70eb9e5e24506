//! # procmesh-orchestrator-core
//!
//! The orchestrator's decisions, pure (the quinn-proto shape, STYLE §2 and §11): queues,
//! submission checks, scheduling and retries (the [`sched::Book`]), host registration, heartbeats
//! and loss, what to publish, and what to journal. No tokio, no sockets, no clock, no
//! randomness: time and drawn tokens come in as arguments, decisions go out as values. The
//! `procmesh-orchestrator` crate is a thin actor shell around it: it feeds [`Input`]s to
//! [`Core::handle`], journals the inputs that changed state, and carries out the [`Effect`]s once
//! they are committed. Only the orchestrator depends on this crate.
//!
//! ```text
//!  host    RegisterHost, Heartbeat, ProcLost ─┐
//!  agent   ActionUpdate(s), GetWorker ────────┤                     ┌─▶ reply
//!  client  CreateQueue, Submit, Subscribe … ──┼─▶ Core::handle(input, now, env) ─┼─▶ SubmitBatch / Cancel to agents
//!  shell   Dispatch, Tick, SubmitFailed, …  ──┘        │            ├─▶ Publish / QueueComplete
//!                                                      │            └─▶ DispatchAgain
//!                                       changed? ──▶ journal the input first (ORC-26)
//! ```
//!
//! # Layout
//! - [`sched`] — the [`Book`](sched::Book): pending order, placement, retries, queue
//!   bookkeeping (ORC-1 … ORC-14).
//! - [`input`] — [`Input`], [`Outcome`], [`Effect`], [`Env`], [`Logged`] (what is journaled).
//! - [`config`] — [`CoreConfig`], the settings decisions depend on.
//! - [`records`] — [`Records`]: tokens, workers, definitions, results.
//! - [`events`] — [`Events`]: every queue's recent transitions, numbered, for resuming
//!   subscribers.
//! - `registry` — hosts: registration, heartbeats, loss after a timeout, ready procs.
//! - `core` — [`Core`] and client requests.
//! - `hosts` — registration, heartbeats, silent attempts, lost procs, silent hosts.
//! - `dispatch` — scheduling passes, failed submissions, stop orders.
//!
//! # Invariants (continuing the book's ORC-1 … ORC-14)
//! - **ORC-15** Queue access: a queue named by its integer id is served only to a loopback
//!   requester (this process, Unix or in-process peers, QUIC peers on a loopback address);
//!   anyone else gets `Forbidden`, whether or not the queue exists. Tokens are 12 bytes from the
//!   OS CSPRNG, distinct per queue; a wrong token is `UnknownQueue` and never echoed whole.
//! - **ORC-16** Free capacity: a proc's free slots are its heartbeat's `max` minus the actions
//!   the book has placed on it (`Submitting` or `Running`), so consecutive passes between two
//!   heartbeats never overfill a proc.
//! - **ORC-17** A proc agent that refuses a submission or cannot be reached gets no placement
//!   until its host's next heartbeat; the attempt — if the book still has it `Submitting` on
//!   that proc — becomes `Abandoned` with the reason, which consumes a retry (ORC-6).
//! - **ORC-18** Hosts: a host silent for more than `lost_after_ms` is `Lost`, its placed actions
//!   `Abandoned` (then retried), and its heartbeats answered `UnknownHost` until it registers
//!   again; a host that registers while `Alive` has restarted, and its placed actions are
//!   abandoned likewise.
//! - **ORC-19** The store holds exactly one entry per unretired action of the book (its
//!   definition, and its result details once finished); retiring removes it.
//! - **ORC-20** Events: a subscriber never slows the orchestrator. Each subscription's events
//!   are delivered in the order applied; when its buffer is full, events are dropped and counted,
//!   and `Lagged { missed }` follows once the buffer has drained; an undeliverable subscriber
//!   loses its subscriptions; shutdown sends `Ended`.
//! - **ORC-21** The core never waits: asks to agents are effects the shell carries out in
//!   spawned tasks, whose failures come back as inputs.
//! - **ORC-22** Dispatch is coalesced: any number of triggers before a pass runs make one pass;
//!   a pass places at most `dispatch_batch` actions, and a full pass queues the next, so requests
//!   interleave with a large backlog and no action waits while capacity is free (ORC-3).
//! - **ORC-23** Submission is all or nothing: batch size, every action's validity, its worker
//!   and every blob (worker files and inputs) are checked before the book changes.
//! - **ORC-24** Cancelling a placed attempt sends `Cancel` to its agent; if no agent is known, it
//!   refuses, or does not hold the attempt, the orchestrator records `Cancelled` itself (a copy
//!   still running is then an orphan, stopped through the host's heartbeat).
//! - **ORC-25** A subscription is stopped only at the request of the proc that made it (its
//!   subscriber's proc); anyone else is told it is unknown, so ids cannot be probed or
//!   cancelled across clients.
//!
//! - **ORC-26** Replay: the state is a function of the inputs that changed it, in order, with
//!   their `now` ([`Logged`]). Every decision reads ordered collections or lookups only, and a
//!   replay's [`Env`] ([`Replay`]) answers the checks the original inputs passed, so replaying the
//!   journal rebuilds exactly the state at its last commit.
//! - **ORC-27** Recovery: after a replay, [`Input::Recovered`] gives every alive host a full
//!   `lost_after_ms` from the restart to heartbeat again; the attempts placed on it stay placed,
//!   to be confirmed by its heartbeats (ORC-28).
//! - **ORC-28** No silent attempt: an attempt placed on a host for at least one heartbeat
//!   interval (and at least one second) that is missing from two of its heartbeats at least
//!   that long apart is `Abandoned` (then retried, ORC-6). No action stays `Submitting` or `Running` while its host
//!   heartbeats without it.
//! - **ORC-29** Reports are idempotent: a transition applied again (same attempt, same or an
//!   earlier state) is ignored and changes nothing (ACT-1), so agents may re-send what was not
//!   acknowledged.
//! - **ORC-32** Event indices: every transition the core publishes for a queue gets the next
//!   index of that queue (from 1, dense, never reused — part of the state, so a restart keeps
//!   counting); the last `event_backlog` of them are kept, so `Subscribe { from }` replays
//!   exactly the ones from `from` on (or says how many are no longer kept) before going live.
//! - **ORC-33** Registration binds a node ([`authority`]): only a host certificate registers a
//!   host, only for the address its connection speaks for, as the node its certificate names
//!   (which the registration names too, with no secret) or — with a shared certificate — the node it claims *and* proves by the node secret it
//!   sends. The first registration of a name binds its secret; another secret for the name, or
//!   another node for a bound address, is `forbidden`. The secret is kept in the binding only,
//!   never in a view.
//! - **ORC-34** `Heartbeat` and `ProcLost` are served only to the host bound to the address
//!   they name (its certificate names the node, or its connection proves the node's secret).
//! - **ORC-35** A transition is applied only from the agent of the proc its attempt is placed
//!   on, over its host's connection; a forged one in a batch is skipped and counted, and
//!   skipped again when the journaled batch is replayed.
//! - **ORC-36** `GetWorker` is served only to a host with a placed action running that worker.
//! - **ORC-37** Client requests need a client or operator certificate. Every refusal of
//!   ORC-33..37 is `NotPermitted` (code `forbidden`), changes nothing and is not journaled;
//!   requests without a peer are this process's own (or a replay of checked inputs).
//!
//! # Decisions where the architecture is silent
//! - A refused or failed submission is `Abandoned` (not `Failed`): the work never ran.
//! - Dispatch uses the last heartbeat's procs; a proc missing from a heartbeat is simply not
//!   offered work — its placed actions are abandoned only on `ProcLost` or host loss.
//! - `QueueComplete` is published on every update that finishes the last live action (again
//!   after a reschedule completes), and on `Drain` of an already complete queue.
//! - `ListResults` returns at most `result_page` results whatever the client asks.
#![deny(missing_docs)]

pub mod authority;
pub mod config;
mod core;
mod dispatch;
pub mod events;
mod explain;
mod hosts;
pub mod input;
pub mod records;
mod registry;
pub mod sched;

pub use crate::core::Core;
pub use authority::{Peer, PeerRole};
pub use config::CoreConfig;
pub use events::{Backlog, Events};
pub use hosts::MIN_SILENCE_MS;
pub use input::{Answer, Effect, Env, Input, Logged, Outcome, Replay, Request};
pub use records::{Records, ResultDetail};

#[cfg(test)]
mod core_tests;
#[cfg(test)]
mod explain_tests;
