//! # procmesh-client
//!
//! The Rust client library other services link to use a procmesh mesh: connect with mutual
//! TLS, create queues, register workers (sending only the blobs the orchestrator lacks),
//! submit actions, watch their transitions as a stream, fetch results and outputs, cancel,
//! reschedule, change priorities, list hosts. It is not the orchestrator and knows no
//! scheduling: every decision is the orchestrator's; this crate speaks its protocol
//! (`procmesh_protocol::messages::orchestrator`) over a QUIC [`Node`](procmesh_transport::Node).
//!
//! ```text
//!  Client ── QUIC (client cert) ──▶ service.orchestrator      requests, blob pushes
//!    │  node "client-<random>"  ◀── ClientEvent tells ──────  to "watch-<n>" actors
//!    └── fetch_blob ──────────────▶ host that ran the action  outputs (then the orchestrator)
//! ```
//!
//! ```no_run
//! # async fn f() -> Result<(), procmesh_client::ClientError> {
//! use procmesh_client::{Client, ClientConfig, WorkerBuilder};
//! use procmesh_protocol::messages::orchestrator::{QueueConfig, SubmitAction};
//! use procmesh_protocol::ActionDef;
//!
//! let orchestrator = "quic!10.0.0.1:7600,service.orchestrator".parse().unwrap();
//! let config = ClientConfig::from_tls_dir(orchestrator, "/etc/procmesh/client".as_ref())?;
//! let client = Client::connect(config).await?;
//! let worker = client
//!     .register_worker(&WorkerBuilder::new().bytes("run.sh", b"#!/bin/sh\necho $1\n".to_vec(), true))
//!     .await?;
//! let queue = client.create_queue(QueueConfig::default()).await?;
//! let mut action = ActionDef::new(worker);
//! action.args.push("hello".into());
//! let lsns = queue
//!     .submit(vec![SubmitAction { action, priority: None, idempotency_key: None }])
//!     .await?;
//! let status = queue.wait_complete(None).await?;
//! for result in queue.all_results().await? {
//!     println!("{}: {:?}", result.record.lsn(), result.record.exit());
//! }
//! # let _ = (lsns, status); Ok(()) }
//! ```
//!
//! # Layout
//! - [`config`] — [`ClientConfig`]: orchestrator, identity, bind address, blob cache, timeout.
//! - [`client`] — [`Client`]: the node, requests, workers and inputs, downloads, subscriptions.
//! - [`queue`] — [`Queue`]: one queue's operations and [`Queue::wait_complete`].
//! - [`worker`] — [`WorkerBuilder`]: packaging local files and content into a worker.
//! - [`watch`] — [`Watch`]: a subscription's events as a stream.
//! - [`error`] — [`ClientError`], with stable codes.
#![deny(missing_docs)]

pub mod client;
pub mod config;
pub mod error;
pub mod queue;
pub mod watch;
pub mod worker;

pub use client::Client;
pub use config::{ClientConfig, DEFAULT_TIMEOUT};
pub use error::ClientError;
pub use procmesh_protocol::messages::orchestrator::EventFilter;
pub use queue::{Queue, MAX_SUBMIT_BATCH};
pub use watch::Watch;
pub use worker::{input_file, BlobSource, PreparedWorker, WorkerBuilder};

/// Parses how a user names a queue: 24 lowercase hex characters are a token, an integer is an
/// id (accepted from loopback only).
pub fn parse_queue_ref(
    text: &str,
) -> Result<procmesh_protocol::messages::orchestrator::QueueRef, String> {
    use procmesh_protocol::messages::orchestrator::{QueueRef, QueueToken, QUEUE_TOKEN_LEN};
    let text = text.trim();
    if text.len() == QUEUE_TOKEN_LEN * 2 {
        if let Ok(token) = text.parse::<QueueToken>() {
            return Ok(QueueRef::Token(token));
        }
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(id) = text.parse::<u64>() {
            return Ok(QueueRef::Id(id));
        }
    }
    Err(format!(
        "bad queue {text:?}: expected a 24-character lowercase hex token or an integer id"
    ))
}

#[cfg(test)]
mod tests {
    use procmesh_protocol::messages::orchestrator::{QueueRef, QueueToken};

    use super::parse_queue_ref;

    #[test]
    fn queue_refs_parse() {
        assert_eq!(parse_queue_ref("42"), Ok(QueueRef::Id(42)));
        let token = "0123456789abcdef01234567";
        assert_eq!(
            parse_queue_ref(token),
            Ok(QueueRef::Token(token.parse::<QueueToken>().unwrap()))
        );
        // 24 digits is a token, not an overflowing id.
        assert!(matches!(
            parse_queue_ref("012345678901234567890123"),
            Ok(QueueRef::Token(_))
        ));
        for bad in [
            "",
            "-1",
            "0x10",
            "0123456789ABCDEF01234567",
            "abc",
            "99999999999999999999",
        ] {
            assert!(parse_queue_ref(bad).is_err(), "{bad:?}");
        }
    }
}
