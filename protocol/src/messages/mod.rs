//! The typed messages of every actor: what the other crates put into envelope payloads.
//!
//! ```text
//!  client ──OrchestratorRequest──▶ orchestrator ──AgentRequest──▶ proc agent ─▶ runner
//!    ▲  (CreateQueue, Submit, …)     │ ▲ ▲   ▲                       │
//!    └────────── ClientEvent ────────┘ │ │   └─ OrchestratorRequest ─┘ (ActionUpdate, GetWorker)
//!                                      │ └──── OrchestratorRequest ── host agent (RegisterHost,
//!                                      │                                Heartbeat, ProcLost)
//!  operator / CLI ──HostRequest──▶ host agent ◀──ProcReady── proc being bootstrapped
//! ```
//!
//! Each request enum implements [`RemoteMessage`]; its reply is `Result<…Reply, …Error>`, the
//! error a serialisable enum with a stable `code()`. Each request variant documents the reply
//! variant that answers it. A one-way message ([`ClientEvent`]) has the reply `()`.
//!
//! # Compatibility
//! Messages are encoded as **named** MessagePack ([`encode_body`](crate::codec::encode_body)):
//! structs are maps from field name to value, enums are maps from variant name to content. They
//! are versioned by [`PROTOCOL_VERSION`](crate::codec::PROTOCOL_VERSION), which the handshake
//! carries:
//! - adding a field is a minor bump, and the new field **must** carry `#[serde(default)]` so that
//!   an older peer's message, which lacks it, still decodes;
//! - adding an enum variant is a minor bump too, but an older peer cannot decode the new variant:
//!   send it only to peers whose handshake announced a minor version that knows it;
//! - removing or renaming a field or variant, or changing a type, is a major bump.
//!
//! Golden-bytes tests (`tests/golden_test.rs`) pin one frame of every message kind.
//!
//! # Invariants
//! - **MSG-1** Every field that is not part of a message's first version carries
//!   `#[serde(default)]`; a message from a peer that omits such fields decodes with their
//!   defaults.
//! - **MSG-2** Every error that crosses the wire has a stable, documented `code()`.

pub mod agent;
pub mod client;
pub mod explain;
pub mod host;
pub mod orchestrator;
pub mod requests;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use agent::{
    ActionSpec, AgentError, AgentReply, AgentRequest, AgentStatus, Capacity, RunningAction,
};
pub use client::ClientEvent;
pub use host::{
    BulkFailure, BulkOutcome, HostError, HostInfo, HostReply, HostRequest, HostStatus, ProcConfig,
    ProcInfo, ProcReady, ProcStatus, SpawnSpec, SystemInfo,
};
pub use orchestrator::{
    ActionResult, ActionView, EventFilter, Heartbeat, HostState, HostView, OrchestratorError,
    OrchestratorReply, OrchestratorRequest, ProcCapacity, QueueConfig, QueueRef, QueueStatus,
    QueueToken, StateCounts, SubmitAction, SubscriptionTarget, UpdateOutcome,
};

/// A message that can be sent to a remote actor: its reply type is fixed.
pub trait RemoteMessage: Serialize + DeserializeOwned + Send + 'static {
    /// What an `ask` of this message answers.
    type Reply: Serialize + DeserializeOwned + Send + 'static;
}
