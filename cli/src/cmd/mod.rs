//! The operator-facing subcommands.
//!
//! - `demo` — the whole system on this machine with a sample workload.
//! - `host` — the per-machine agent.
//! - `orchestrator` — queues, scheduling, retries, results, events.
//! - `node` — what both nodes share: common flags, settings layering, signals, readiness;
//!   `admin` — the admin HTTP listener flags and start.
//! - `certs` — a mesh CA and identities signed by it.
//! - `probe` — one GET of an admin endpoint, for health checks in images without curl.
//! - `common` — what every client command shares: settings, connecting, argument parsers.
//! - `exec`, `submit`, `watch`, `queue` (also `hosts`, `result`), `explain` — client commands;
//!   `download` — `result --all --download`, in parallel.

pub mod admin;
pub mod certs;
pub mod common;
pub mod demo;
pub mod download;
pub mod exec;
pub mod explain;
pub mod host;
pub mod node;
pub mod orchestrator;
pub mod probe;
pub mod queue;
pub mod submit;
pub mod watch;
