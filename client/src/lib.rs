//! # procmesh-client
//!
//! The Rust client library other services link to use a procmesh mesh: connect with mutual
//! TLS, create queues, register workers (sending only the blobs the orchestrator lacks),
//! submit actions, watch their transitions as a stream, fetch results and outputs, cancel,
//! reschedule, change priorities, list hosts.
//!
//! Not built yet: this crate is filled by the orchestrator issue. Planned layout:
//! - `connect` — a client `Node` over QUIC with a client certificate.
//! - `queue` — a queue handle: submit, status, results, retire, drain, cancel.
//! - `worker` — packaging local files into a worker descriptor and uploading missing blobs.
//! - `watch` — subscriptions as a `Stream` of transitions.
#![deny(missing_docs)]
