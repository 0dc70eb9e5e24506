//! # procmesh-orchestrator
//!
//! The orchestrator: takes actions from clients into queues, dispatches them onto procs across
//! hosts by free capacity, follows every transition, retries what fails, cancels, keeps results
//! until they are retired, and streams events to subscribers. Its decisions — which proc gets
//! which pending action, whether a failure is retried, queue bookkeeping — are pure code in
//! `procmesh_protocol` that this crate's kameo actors only drive (STYLE §2).
//!
//! Not built yet: this crate is filled by the orchestrator issue. Planned layout:
//! - `registry` — hosts: registration, heartbeats, loss after a timeout (running → Abandoned).
//! - `queues` — create (id + 24-hex token), status, results, retire, drain, cancel.
//! - `dispatch` — the loop that places pending actions on procs and submits them.
//! - `store` — the state behind a trait (in memory first; a durable journal later).
//! - `events` — subscriptions to a queue or an action.
//! - `service` — the `service.orchestrator` actor answering `OrchestratorRequest`s.
#![deny(missing_docs)]
