//! # procmesh-proc-agent
//!
//! The child process a host spawns for each proc: its agent actor, and the runner that executes
//! actions in sandbox directories. It is not the host (which spawns and supervises procs) and
//! not the orchestrator (which decides what runs where); it answers their messages.
//!
//! ```text
//!  host ══unix══▶ proc agent (Node: proc id = host frontend + name)
//!                   ├─ `agent` actor  ── AgentRequest ──▶ Runner ──▶ sandboxes, action processes
//!                   └─ report pump    ── Transition  ──▶ orchestrator (via the host),
//!                      (outbox)          kept until answered, re-sent with backoff
//! ```
//!
//! # Layout
//! - [`bootstrap`] — environment → node, runner, agent, `ProcReady` callback, serve until stopped.
//! - [`agent`] — the agent actor, the mesh resolver (`PA-AG-n`).
//! - [`outbox`] — the report pump: transitions kept until the orchestrator answered them,
//!   re-sent in order, bounded (`PA-AG-3..5`).
//! - [`runner`] — workers, sandboxes, execution, outputs, cancellation, cleanup (`PA-n`).
#![deny(missing_docs)]

pub mod agent;
pub mod bootstrap;
pub mod outbox;
pub mod runner;

pub use bootstrap::{from_env, run, Bootstrap, BootstrapError};
