//! Dev-only test doubles shared by the tests of every procmesh crate, so each double exists
//! once: a fake orchestrator actor, a fake host with a fake proc agent, shell-script workers,
//! and bounded waits.
//!
//! It is not a test framework and holds no test of its own; it depends only on `protocol`
//! and `transport` (never on `host`, `proc-agent`, `orchestrator` or `client`), so any
//! crate's tests can use it without a dependency cycle. It is never a dependency of a
//! shipped binary.
//!
//! # Layout
//! - [`wait`]: [`wait_until`] (blocking) and [`eventually`] (async): poll a condition until it
//!   holds or a bound passes. No bare sleeps in tests.
//! - [`orchestrator`]: [`FakeOrchestrator`], a stand-in orchestrator actor that records what
//!   it is sent and answers as configured (serve workers, register hosts, a per-message
//!   [`Script`] of ack / silence / errors).
//! - [`host`]: [`FakeHost`], a QUIC node whose one proc has a [`FakeAgent`] playing each
//!   attempt by a [`Plan`]; it registers and heartbeats like a real host.
//! - [`worker`]: [`ScriptWorker`] / [`script_worker`], a worker made of one shell script,
//!   stored in a blob store.
#![deny(missing_docs)]

pub mod host;
pub mod orchestrator;
pub mod wait;
pub mod worker;

pub use host::{always, FakeAgent, FakeHost, Outcome, Plan};
pub use orchestrator::{FakeOrchestrator, FakeOrchestratorBuilder, Script, Seen};
pub use wait::{eventually, wait_until};
pub use worker::{script_worker, ScriptWorker};
