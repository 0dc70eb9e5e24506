//! # procmesh-protocol
//!
//! The language every procmesh process speaks, and nothing else: ids, the envelope, the message
//! types of host, proc agent, orchestrator and client, the action state machine, and the frame
//! codec. The orchestrator's decisions (scheduling, retries, queue bookkeeping) are not here:
//! they live in `procmesh-orchestrator-core`, which only the orchestrator compiles. This crate is pure: no tokio, no sockets, no clock — time is always an argument — so
//! the hard logic is tested exhaustively and fast, and every driver (kameo actors in the other
//! crates) only feeds it events and applies its decisions.
//!
//! # Layout
//! - [`ids`] — `HostAddr`, `ProcId`, `ActorId` and their text forms (`ID-n`).
//! - [`envelope`] — the envelope every actor message travels in (`ENV-n`).
//! - [`codec`] — length-prefixed MessagePack frames and the handshake (`WIRE-n`).
//! - [`action`] — the action state machine: `ActionRecord`, `Transition`, retries, fencing
//!   (`ACT-n`).
//! - [`cas`] — `BlobHash`, the BLAKE3 name of every blob (`CAS-n`).
//! - [`spec`] — what to run: worker descriptors and ids, action definitions, path rules
//!   (`SPEC-n`).
//! - [`messages`] — the typed request, reply and event enums of host, proc agent, orchestrator
//!   and client, and the [`RemoteMessage`] trait (`MSG-n`).
#![deny(missing_docs)]

pub mod action;
pub mod cas;
pub mod codec;
pub mod envelope;
pub mod ids;
pub mod messages;
pub mod spec;

pub use action::{
    ActionRecord, ActionState, Applied, Attempt, AttemptRef, Execution, ExitStatus, Ignored, Lsn,
    RanProgram, RetryError, StateTimes, Timestamp, Transition, TransitionDetail,
};
pub use cas::{BlobHash, BlobHasher, DownloadTicket, HexError, TicketError};
pub use codec::{CodecError, FrameCodec, Hello, Version, PROTOCOL_VERSION};
pub use envelope::{Body, Envelope, Payload, RemoteError, TraceContext, Undeliverable};
pub use ids::{ActorId, HostAddr, IdError, ProcId, LOCAL_PROC, SERVICE_PROC};
pub use messages::{
    AgentReply, AgentRequest, ClientEvent, HostReply, HostRequest, OrchestratorReply,
    OrchestratorRequest, RemoteMessage,
};
pub use spec::{
    ActionDef, InputFile, OutputFile, PathError, ResourceHints, SpecError, WorkerDescriptor,
    WorkerFile, WorkerId,
};
