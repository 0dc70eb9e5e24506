//! Errors of the runner: [`RunnerError`] (starting it) and [`PrepareError`] (why an attempt
//! could not be prepared; its text becomes the `reason` of the attempt's `Failed` transition).

use std::io;
use std::path::{Path, PathBuf};

use procmesh_protocol::cas::BlobHash;
use procmesh_protocol::spec::{SpecError, WorkerId};

/// Why [`Runner::start`](super::Runner::start) failed.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// `start` was called outside a tokio runtime (the runner spawns its tasks on it).
    #[error("the runner must be started inside a tokio runtime")]
    NoRuntime,
    /// A directory of the runner could not be created, wiped or resolved.
    #[error("{}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Why an attempt could not be prepared (or its outputs not collected). The text is the reason
/// reported with `Failed`: each variant names what it is about (a worker id, a blob hash, a
/// path) so an operator can act on it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    /// The resolver could not provide a worker descriptor or blobs.
    #[error("{what}: {message}")]
    Resolver {
        /// What was asked for.
        what: String,
        /// What the resolver said.
        message: String,
    },
    /// The resolver returned a descriptor whose id is not the one asked for.
    #[error("the resolver returned worker {got} when asked for {asked}")]
    WorkerIdMismatch {
        /// The id asked for.
        asked: WorkerId,
        /// The id of the descriptor returned.
        got: WorkerId,
    },
    /// The worker descriptor breaks SPEC-1 or SPEC-3.
    #[error("invalid worker {id}: {source}")]
    InvalidWorker {
        /// The worker.
        id: WorkerId,
        /// What is wrong.
        source: SpecError,
    },
    /// A blob is not in the store even after the resolver was asked for it (PA-6).
    #[error("blob {0} is missing from the store")]
    MissingBlob(BlobHash),
    /// A blob's content or size is not what the descriptor or action says (PA-6).
    #[error("blob {hash} refused: {reason}")]
    BlobMismatch {
        /// The blob, as named by the descriptor or action.
        hash: BlobHash,
        /// What was wrong.
        reason: String,
    },
    /// A path may not be used: it would leave its root, passes through a symbolic link, or
    /// collides with something already there (PA-5).
    #[error("refused path {path:?}: {reason}")]
    UnsafePath {
        /// The path, relative to its root (cut to 200 characters).
        path: String,
        /// Why.
        reason: String,
    },
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl PrepareError {
    /// An [`UnsafePath`](Self::UnsafePath) error.
    pub(crate) fn unsafe_path(path: &str, reason: impl Into<String>) -> PrepareError {
        PrepareError::UnsafePath {
            path: path.chars().take(200).collect(),
            reason: reason.into(),
        }
    }

    /// A closure turning an OS error about `path` into [`Io`](Self::Io).
    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> PrepareError + '_ {
        move |source| PrepareError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
