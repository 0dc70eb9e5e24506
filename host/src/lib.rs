//! # procmesh-host
//!
//! The host agent: one per machine. It listens on **one** QUIC frontend address, starts proc
//! agents (child OS processes, or tasks in-process for tests), routes every message for
//! `ProcId(frontend, name)` to that proc's backend link, and drives each proc's whole life —
//! bootstrap, readiness, terminate, kill, exit, reaping — while registering and heartbeating
//! with the orchestrator.
//!
//! It is not the proc agent (that is `procmesh-proc-agent`, which this crate never depends on:
//! the composer injects an in-process proc through a factory, and an OS proc is a separate
//! binary reading the [`env`](mod@crate::env) variables), not the orchestrator, and not the transport.
//!
//! ```text
//!                        ┌──────────────────────── host ─────────────────────────┐
//!  peers ══QUIC══▶ frontend quic!A   service.host   service.bootstrap   blobs/    │
//!                        │  route by proc name                                   │
//!                        ├──▶ backend (unix!<state>/host.sock) ◀──▶ proc agent A,w1
//!                        └──▶ backend (unix!<state>/host.sock) ◀──▶ proc agent A,w2
//!                        └───────────────────────────────────────────────────────┘
//! ```
//!
//! # Layout
//! - [`config`] — [`HostConfig`] and the state directory's [`StatePaths`].
//! - [`host`] — [`Host`]: start, spawn, terminate, kill, bulk terminate, blobs, the `local`
//!   proc, shutdown (`HST-13`).
//! - `lifecycle` — the spawn driver (launch, readiness checks) and the exit monitor (`HST-2`,
//!   `HST-3`, `HST-6`).
//! - [`handle`] — [`ProcHandle`]: a proc's state machine, the stop sequence (`HST-4`, `HST-5`).
//! - [`manager`] — the [`ProcManager`] trait; [`OsProcManager`] (`HST-8`, `HST-9`) and
//!   [`InProcessManager`].
//! - `table` — the proc table and name rules (`HST-1`).
//! - `service` — the `service` proc's actors: `host`, `bootstrap` (`HST-12`).
//! - `blobs` — `FetchBlobs` with shared transfers (`HST-10`).
//! - `registration` — registration, heartbeats, lost procs (`HST-7`, `HST-11`).
//! - `respawn` — bringing back procs that exited unasked, with a bounded backoff (`HST-14`).
//! - `authority` — who may send which request (`HST-16`), the spawn environment filter
//!   (`HST-19`).
//! - `policy` — the node's admission of backend links (`HST-18`), relays into procs (`HST-17`)
//!   and blob streams (`HST-22`).
//! - `node_id` — the node's name and its kept node secret (`HST-21`).
//! - [`system`] — what the host says about its machine.
//! - [`env`](mod@crate::env) — the environment variables of a proc's bootstrap.
//!
//! # Invariants
//! Each is stated where it is kept: HST-1 (`table`), HST-2, HST-3, HST-6 (`lifecycle`),
//! HST-13 ([`host`]),
//! HST-4, HST-5 ([`handle`]), HST-7, HST-11 (`registration`), HST-8, HST-9 ([`manager`]'s OS
//! manager), HST-10 (`blobs`), HST-12 (`service`), HST-14 (`respawn`), HST-16, HST-19
//! (`authority`), HST-17, HST-18, HST-22 (`policy`), HST-20 ([`manager`]'s OS manager),
//! HST-21 (`node_id`).
#![deny(missing_docs)]

pub mod admin;
mod authority;
mod blobs;
pub mod config;
pub mod drain;
pub mod handle;
pub mod host;
pub mod isolation;
mod lifecycle;
pub mod manager;
mod node_id;
mod policy;
mod registration;
mod respawn;
mod service;
pub mod slots;
pub mod system;
mod table;

pub use config::{HostConfig, StatePaths};
pub use handle::{ProcHandle, ProcState, ReadyInfo};
pub use host::{Host, StartError};
pub use manager::{
    ChildRecord, InProcessLaunch, InProcessManager, Launch, OsProcManager, OsProcManagerError,
    ProcControl, ProcFactory, ProcManager, StopSignal,
};
pub use node_id::NodeSecretError;
pub use service::{BOOTSTRAP_ACTOR, HOST_ACTOR};
pub use table::check_spawn_name;

/// Environment variables of a proc's bootstrap, beside the protocol's `PROCMESH_PROC_ID`,
/// `PROCMESH_BACKEND_ADDR` and `PROCMESH_CALLBACK`
/// ([`procmesh_protocol::messages::host`]). The proc agent reads the same names;
/// [`Launch::env`] lists them all in the order the host sets them.
///
/// | variable | value |
/// |---|---|
/// | `PROCMESH_PROC_ID` | the proc's id, `<frontend>,<name>`, e.g. `quic!10.0.0.5:7700,w-1` |
/// | `PROCMESH_BACKEND_ADDR` | the host backend, e.g. `unix!/var/lib/procmesh/host.sock` |
/// | `PROCMESH_CALLBACK` | the bootstrap actor, `<frontend>,service.bootstrap` |
/// | [`WORK_DIR`](env::WORK_DIR) | the proc's own empty directory, `<state>/procs/<name>` |
/// | [`WORKERS_DIR`](env::WORKERS_DIR) | the shared worker cache, `<state>/workers` |
/// | [`BLOBS_DIR`](env::BLOBS_DIR) | the shared blob store, `<state>/blobs` |
/// | [`MAX_ACTIONS`](env::MAX_ACTIONS) | most actions at once; unset: logical CPUs |
/// | [`BOOTSTRAP_SECRET`](env::BOOTSTRAP_SECRET) | 64 hex: this proc's fresh secret, proven on its backend link (HST-18) |
/// | [`ORCHESTRATOR`](env::ORCHESTRATOR) | the orchestrator's actor, when the host has one |
///
/// A proc's node is built so that the host routes to it with no further setup: it names the
/// host's frontend as its address and sends everything through the backend,
/// `NodeBuilder::new(name).addr(frontend).default_route(backend)
/// .node_claim(name, Some(secret))` (+ `.local(hub, name)` for an in-process proc); its first message over the backend — its `ProcReady` to
/// `PROCMESH_CALLBACK` — installs the host's route to it. `ProcReady.addr` is an address the
/// proc listens at itself (the OS proc agent: `<work dir>/agent.sock`), `pid` its OS pid.
pub mod env {
    // The names live in the protocol, which the proc agent reads too.
    pub use procmesh_protocol::messages::host::{
        ENV_BACKEND_ADDR as BACKEND_ADDR, ENV_BLOBS_DIR as BLOBS_DIR,
        ENV_BOOTSTRAP_SECRET as BOOTSTRAP_SECRET, ENV_CALLBACK as CALLBACK,
        ENV_MAX_ACTIONS as MAX_ACTIONS, ENV_ORCHESTRATOR as ORCHESTRATOR, ENV_PROC_ID as PROC_ID,
        ENV_WORKERS_DIR as WORKERS_DIR, ENV_WORK_DIR as WORK_DIR,
    };
}
