//! The one error type of the journal, [`JournalError`], and the parse error of
//! [`Durability`](super::Durability).

use std::path::{Path, PathBuf};

/// What went wrong opening, writing or closing a [`Journal`](super::Journal).
///
/// Every variant names the journal file; its `Display` starts with `journal <path>:` and then
/// says what was found, so an operator can act on the message alone. The variants an `open` can
/// return for a bad file (`Empty`, `NotJournal`, `Corrupt`, `Version`, `Gap`) mean the file was
/// left as it was (JNL-2); nothing is ever repaired or replaced silently.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The file could not be opened as a database: it is locked by another process (redb's
    /// `DatabaseAlreadyOpen`), needs an upgrade, or the storage failed.
    #[error("journal {}: cannot open: {source}", path.display())]
    Open {
        /// The journal file.
        path: PathBuf,
        /// What redb reported.
        source: redb::DatabaseError,
    },
    /// The file exists but is empty (0 bytes). An empty file is not a new journal: a journal is
    /// created under a temporary name and linked into place only once initialised (JNL-6), so an
    /// empty file at the journal's path was made by something else.
    #[error("journal {}: empty file (0 bytes), not a procmesh journal; remove it to start a new journal", path.display())]
    Empty {
        /// The journal file.
        path: PathBuf,
    },
    /// The file is not a procmesh journal: not a redb file at all, or a redb database without
    /// the journal's metadata table.
    #[error("journal {}: not a procmesh journal: {detail}", path.display())]
    NotJournal {
        /// The journal file.
        path: PathBuf,
        /// What was found instead (redb's error, or the missing table).
        detail: String,
    },
    /// The file is a journal but damaged: truncated, failed a checksum, made redb panic, or its
    /// metadata contradicts its tables.
    #[error("journal {}: corrupt: {detail}", path.display())]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The journal was written in another format version than this build reads.
    #[error("journal {}: format version {found}, this build reads only format version {expected}", path.display())]
    Version {
        /// The journal file.
        path: PathBuf,
        /// The version stored in the file.
        found: u64,
        /// The version this build writes and reads.
        expected: u64,
    },
    /// The record indices after the snapshot are not dense (JNL-1).
    #[error("journal {}: gap in record indices: expected record {expected}, found {}", path.display(), describe_found(*found))]
    Gap {
        /// The journal file.
        path: PathBuf,
        /// The index that should have come next.
        expected: u64,
        /// The index found instead, or `None` if the records ended early (the metadata says
        /// more were committed).
        found: Option<u64>,
    },
    /// A file-system operation around the database failed (metadata, creating, linking).
    #[error("journal {}: {op}: {source}", path.display())]
    Io {
        /// The journal file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A write transaction (append or snapshot) failed; none of it was committed. The journal
    /// refuses further writes (see [`JournalError::Poisoned`]).
    #[error("journal {}: commit failed: {source}", path.display())]
    Commit {
        /// The journal file.
        path: PathBuf,
        /// What redb reported.
        source: redb::Error,
    },
    /// An earlier commit failed. After a failed fsync the state of the file is not known, so
    /// the journal takes no more writes: the owner should stop and reopen it (which recovers what
    /// was committed).
    #[error("journal {}: an earlier commit failed; reopen the journal", path.display())]
    Poisoned {
        /// The journal file.
        path: PathBuf,
    },
    /// [`Journal::snapshot`](super::Journal::snapshot) was asked to cover records that do not
    /// exist yet, or fewer records than the current snapshot covers.
    #[error("journal {}: a snapshot cannot cover up to record {covers}: the last record is {last_index} and the current snapshot covers up to {current}", path.display())]
    Covers {
        /// The journal file.
        path: PathBuf,
        /// The `covers` asked for.
        covers: u64,
        /// The last record appended.
        last_index: u64,
        /// What the current snapshot covers (0 without a snapshot).
        current: u64,
    },
    /// Closing the database failed.
    #[error("journal {}: close failed: {source}", path.display())]
    Close {
        /// The journal file.
        path: PathBuf,
        /// What redb reported.
        source: redb::DatabaseError,
    },
}

fn describe_found(found: Option<u64>) -> String {
    match found {
        Some(index) => format!("record {index}"),
        None => "the end of the records".to_owned(),
    }
}

impl JournalError {
    /// The journal file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            JournalError::Open { path, .. }
            | JournalError::Empty { path }
            | JournalError::NotJournal { path, .. }
            | JournalError::Corrupt { path, .. }
            | JournalError::Version { path, .. }
            | JournalError::Gap { path, .. }
            | JournalError::Io { path, .. }
            | JournalError::Commit { path, .. }
            | JournalError::Poisoned { path }
            | JournalError::Covers { path, .. }
            | JournalError::Close { path, .. } => path,
        }
    }

    pub(crate) fn corrupt(path: &Path, detail: impl Into<String>) -> Self {
        JournalError::Corrupt {
            path: path.to_owned(),
            detail: detail.into(),
        }
    }

    pub(crate) fn not_journal(path: &Path, detail: impl Into<String>) -> Self {
        JournalError::NotJournal {
            path: path.to_owned(),
            detail: detail.into(),
        }
    }

    pub(crate) fn io(path: &Path, op: &'static str, source: std::io::Error) -> Self {
        JournalError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    }

    /// Classifies an error of redb's open: "not a redb file" and "damaged" get their own
    /// variants, everything else (lock held, I/O) is [`JournalError::Open`].
    pub(crate) fn from_open(path: &Path, error: redb::DatabaseError) -> Self {
        use redb::{DatabaseError, StorageError};
        match error {
            DatabaseError::Storage(StorageError::Io(io))
                if io.kind() == std::io::ErrorKind::InvalidData =>
            {
                JournalError::not_journal(path, io.to_string())
            }
            DatabaseError::Storage(StorageError::Corrupted(detail)) => {
                JournalError::corrupt(path, detail)
            }
            source => JournalError::Open {
                path: path.to_owned(),
                source,
            },
        }
    }
}

/// A string that is not a [`Durability`](super::Durability) name (`fsync` or `none`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown journal durability {0:?} (expected \"fsync\" or \"none\")")]
pub struct ParseDurabilityError(pub String);
