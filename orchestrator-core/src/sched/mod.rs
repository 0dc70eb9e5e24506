//! The orchestrator's decisions, pure: which action runs next, on which proc, whether an ended
//! attempt is retried, and the bookkeeping of queues — no tokio, no I/O, no clock. The
//! orchestrator's actors feed a [`Book`] with requests, transitions and `now`, and carry out what
//! comes back ([`Dispatch`], [`StopOrder`], [`Update`]).
//!
//! ```text
//!  submit ──▶ Pending ──schedule──▶ Submitting ──▶ Running ──▶ Completed ──▶ results ──▶ retire
//!   (LSN,      │   ▲    (placement:    │ (driver sends        │            (final)
//!    key)      │   │     ORC-2..5)     │  ActionSpec)         ├──▶ Failed ─┐
//!              │   │                   │                      └──▶ Abandoned (proc/host lost)
//!              │   └──── retry: attempt + 1, while retries < retry_limit (ORC-6) ───┘
//!              └──▶ Cancelled (cancel, cancel_queue: ORC-10)
//! ```
//!
//! One cycle, as the driver steps it (virtual time in tests):
//! 1. [`Book::submit`] — a new action is `Pending` with the next LSN.
//! 2. [`Book::schedule`] with the procs' free capacity — places the head of the
//!    [`PendingIndex`], moves each placed action to `Submitting`, returns [`Dispatch`]es.
//! 3. The driver sends each dispatch to its proc; the proc's transitions come back through
//!    [`Book::apply`], which retries failed and abandoned attempts by the queue's limit.
//! 4. A lost proc or host: [`Book::proc_lost`] / [`Book::host_lost`] abandon (then retry) what
//!    was placed there.
//!
//! Scheduling is global: one [`PendingIndex`] over every queue, highest priority first, then LSN;
//! queues are not weighed against each other.
//!
//! # Layout
//! - [`pending`] — [`PendingIndex`], the dispatch order.
//! - [`placement`] — [`Placer`], [`apportion`]: which proc runs which action.
//! - [`retry`] — [`retry::decide`], [`retry::check_reschedule`].
//! - [`queue`] — [`QueueBook`], one queue's counts, membership, flags and idempotency keys.
//! - [`book`] — [`Book`], everything together.
//! - [`outcome`] — what a [`Book`] takes and gives back: [`NewAction`], [`Dispatch`], [`Update`],
//!   [`StopOrder`], [`BookError`], …
//!
//! # Invariants
//! - **ORC-1** Dispatch order: pending actions leave the [`PendingIndex`] (and are offered by
//!   [`Book::schedule`]) by priority, highest first, then by LSN, lowest first; a priority change
//!   re-orders the action at once; the index holds exactly the `Pending` actions, each once.
//! - **ORC-2** Capacity: placement never gives a proc more actions than its free slots, and a
//!   proc with no free slot gets none; an action requiring host labels goes only to a proc whose
//!   labels carry them all.
//! - **ORC-3** No action waits while capacity is free: of a batch of `n` actions without label
//!   requirements over procs with `F` free slots in total, exactly `min(n, F, max_batch)` are
//!   placed. With requirements, an action waits only when it fits nowhere beside the actions
//!   placed before it in dispatch order (within [`BookLimits::max_scan`]).
//! - **ORC-4** Highest priority first: the actions placed are the first ones of the batch in
//!   dispatch order (with requirements: an action is skipped only as ORC-3 says).
//! - **ORC-5** Proportional: each proc gets ⌊n·fᵢ/F⌋ or ⌈n·fᵢ/F⌉ of `n ≤ F` unconstrained
//!   actions (largest remainder, ties to the smaller proc id); deterministic.
//! - **ORC-6** Retries: `retry_limit` counts automatic retries, so an action gets at most
//!   `retry_limit + 1` attempts. A `Failed` or `Abandoned` attempt goes back to `Pending` as the
//!   next attempt iff it was retried fewer than `retry_limit` times and neither its queue nor the
//!   action is being cancelled; `Completed` and `Cancelled` never do.
//! - **ORC-7** A manual reschedule moves a `Failed` or `Abandoned` action back to `Pending`
//!   whatever the limit; any other state is refused with [`RetryError::NotRetryable`]
//!   (naming the state), as is any action of a cancelled queue, and nothing changes.
//! - **ORC-8** Counts: a queue's [`StateCounts`] always equal a recount of its unretired
//!   actions' states; the book's counts are their sum; every unretired action belongs to exactly
//!   one queue, in exactly one of its live (non-terminal) and finished (terminal) sets.
//! - **ORC-9** Idempotency: within a queue, submitting a key it remembers returns the LSN the key
//!   got first and creates nothing. Each queue remembers at most
//!   [`BookLimits::max_keys_per_queue`] keys, forgetting the oldest first; keys outlive
//!   retirement.
//! - **ORC-10** Drain and cancel: a draining queue refuses new actions (a remembered key still
//!   answers) and finishes the rest; a cancelled queue refuses new actions and reschedules and
//!   retries nothing. Cancelling moves unplaced actions to `Cancelled` at once and returns the
//!   placed ones as [`StopOrder`]s; whatever a placed one then ends with, it is not retried.
//! - **ORC-11** A queue is complete ([`QueueBook::is_complete`]) iff none of its unretired actions
//!   is in a non-terminal state, and it has accepted an action or is draining or cancelled.
//! - **ORC-12** No action lost: every unretired action is pending (in the index), placed (in the
//!   placed index under its proc, once [`Book::schedule`] placed it), or final (in its queue's
//!   results); a lost proc's or host's placed actions become `Abandoned` and are retried per
//!   ORC-6.
//! - **ORC-13** Memory: a pending action costs at most 512 bytes in total in a [`Book`] holding
//!   a million of them (record, index, queue membership; measured by a counting allocator in
//!   `tests/sched_test.rs`).
//! - **ORC-14** A transition the record refuses (stale, future, foreign, not forward, after the
//!   end: ACT-1 … ACT-7) or for an unknown action changes nothing in the book.
//!
//! [`RetryError::NotRetryable`]: procmesh_protocol::action::RetryError::NotRetryable
//! [`StateCounts`]: procmesh_protocol::messages::orchestrator::StateCounts

pub mod book;
pub mod outcome;
pub mod pending;
pub mod placement;
pub mod queue;
pub mod retry;
mod store;

pub use book::Book;
pub use outcome::{
    ActionEntry, ApplyError, BookError, BookLimits, CancelOutcome, Dispatch, NewAction,
    QueueCancel, StopOrder, Submitted, Update,
};
pub use pending::PendingIndex;
pub use placement::{
    apportion, place, place_constrained, satisfies, Assignment, Candidate, Labels, Offer, Placer,
    ProcFree,
};
pub use queue::{IdempotencyKeys, QueueBook};
pub use retry::{GiveUp, RetryDecision};
