//! [`ClientError`]: everything a client call can fail with, each kind matchable.

use std::path::PathBuf;
use std::time::Duration;

use procmesh_protocol::messages::orchestrator::OrchestratorError;
use procmesh_protocol::{ActorId, BlobHash, PathError, SpecError};
use procmesh_transport::{BlobError, NodeError, SendFailure};

/// Why a client call failed. Each message is complete on its own (the lower layer's error is
/// part of it), so printing `{error}` says everything.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The orchestrator refused the request; nothing was changed. Its
    /// [`code`](OrchestratorError::code) is stable and matchable.
    #[error(transparent)]
    Orchestrator(#[from] OrchestratorError),
    /// The orchestrator could not be reached when connecting.
    #[error("cannot reach the orchestrator {orchestrator}: {error}")]
    Unreachable {
        /// The orchestrator's actor id.
        orchestrator: ActorId,
        /// What the transport said.
        error: SendFailure,
    },
    /// A request got no answer: the message was undeliverable, timed out, or the reply was bad.
    #[error("{request}: {error}")]
    Transport {
        /// The request, e.g. `QueueStatus`.
        request: &'static str,
        /// What the transport said.
        error: SendFailure,
    },
    /// The orchestrator answered with a reply that does not belong to the request.
    #[error("{request}: unexpected reply {reply}")]
    UnexpectedReply {
        /// The request.
        request: &'static str,
        /// The reply, abbreviated.
        reply: String,
    },
    /// The client's node could not start (bad TLS identity, bind failure).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The TLS identity could not be loaded.
    #[error(transparent)]
    Tls(#[from] procmesh_transport::tls::TlsError),
    /// The configuration is unusable.
    #[error("client configuration: {0}")]
    Config(String),
    /// A local file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// Uploading a local file's blob failed.
    #[error("uploading {}: {error}", path.display())]
    Upload {
        /// The local file (or a description of in-memory content).
        path: PathBuf,
        /// What went wrong.
        error: BlobError,
    },
    /// Downloading a blob failed from every place it was looked for.
    #[error("downloading blob {hash} for {path:?}: {error}")]
    Download {
        /// The blob.
        hash: BlobHash,
        /// The output path it belongs to.
        path: String,
        /// The last error.
        error: BlobError,
    },
    /// The orchestrator still lacks blobs after they were uploaded.
    #[error("the orchestrator still lacks {} blobs after upload", .0.len())]
    StillMissing(Vec<BlobHash>),
    /// A sandbox path is unusable (SPEC-1).
    #[error("bad sandbox path {path:?}: {reason}")]
    Path {
        /// The path.
        path: String,
        /// What is wrong with it.
        reason: PathError,
    },
    /// A worker or action is invalid (SPEC-3), found before anything was sent.
    #[error("invalid {what}: {error}")]
    Spec {
        /// `worker` or `action`.
        what: &'static str,
        /// What is wrong.
        error: SpecError,
    },
    /// The worker id the orchestrator computed differs from ours (a protocol mismatch).
    #[error("the orchestrator registered worker {theirs}, expected {ours}")]
    WorkerIdMismatch {
        /// Our id.
        ours: procmesh_protocol::WorkerId,
        /// The orchestrator's.
        theirs: procmesh_protocol::WorkerId,
    },
    /// A wait ran out of time.
    #[error("not done within {0:?}")]
    Timeout(Duration),
    /// A subscription ended before what was waited for happened.
    #[error("the subscription ended: {0}")]
    SubscriptionEnded(String),
}

impl ClientError {
    /// A stable, matchable code: the orchestrator's code for its refusals, otherwise one of
    /// `unreachable`, `transport`, `unexpected_reply`, `node`, `tls`, `config`, `io`, `upload`,
    /// `download`, `still_missing`, `bad_path`, the spec error's code, `worker_id_mismatch`,
    /// `timeout`, `subscription_ended`.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::Orchestrator(e) => e.code(),
            ClientError::Unreachable { .. } => "unreachable",
            ClientError::Transport { .. } => "transport",
            ClientError::UnexpectedReply { .. } => "unexpected_reply",
            ClientError::Node(_) => "node",
            ClientError::Tls(_) => "tls",
            ClientError::Config(_) => "config",
            ClientError::Io { .. } => "io",
            ClientError::Upload { .. } => "upload",
            ClientError::Download { .. } => "download",
            ClientError::StillMissing(_) => "still_missing",
            ClientError::Path { .. } => "bad_path",
            ClientError::Spec { error, .. } => error.code(),
            ClientError::WorkerIdMismatch { .. } => "worker_id_mismatch",
            ClientError::Timeout(_) => "timeout",
            ClientError::SubscriptionEnded(_) => "subscription_ended",
        }
    }

    /// Whether trying again later may succeed: the orchestrator could not be reached or did not
    /// answer in time, is shutting down (a restart), or could not journal the request.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. }
            | ClientError::Transport { .. }
            | ClientError::Timeout(_) => true,
            ClientError::Orchestrator(e) => matches!(
                e,
                OrchestratorError::ShuttingDown | OrchestratorError::Journal(_)
            ),
            _ => false,
        }
    }

    /// The orchestrator's refusal, if that is what this is.
    pub fn orchestrator_error(&self) -> Option<&OrchestratorError> {
        match self {
            ClientError::Orchestrator(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ClientError {
        let path = path.into();
        move |error| ClientError::Io { path, error }
    }
}
