//! [`CgroupError`]: why a cgroup operation failed.

use std::io;
use std::path::PathBuf;

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No hierarchy offers what the limits need; `missing` says what is missing.
    #[error("no usable cgroup hierarchy: {missing}")]
    Unsupported {
        /// What is missing, e.g. "v1 hierarchies not mounted: freezer".
        missing: String,
    },
    /// Not allowed to manage cgroups here (not root and no delegation, or a read-only cgroup
    /// filesystem): the caller should run without limits and say so.
    #[error(
        "permission denied on {path}: {source} (cgroup limits need root or a delegated cgroup)"
    )]
    PermissionDenied {
        /// The file or directory that was refused.
        path: PathBuf,
        /// EACCES, EPERM or EROFS.
        #[source]
        source: io::Error,
    },
    /// A cgroup name that is not one safe path component (CG-2).
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A limit the kernel would refuse, or zero.
    #[error("invalid {what} limit {value}: {reason}")]
    InvalidLimit {
        /// "cpu_millicores", "memory_bytes" or "pids".
        what: &'static str,
        /// The value as given.
        value: u64,
        /// The accepted range.
        reason: &'static str,
    },
    /// Pid 0 (which would mean "the writer itself") given to [`ActionCgroup::add`].
    #[error("invalid pid {pid}")]
    InvalidPid {
        /// The pid as given.
        pid: u32,
    },
    /// [`Cgroups::create`] found the action cgroup already there.
    #[error("cgroup {path} already exists")]
    Exists {
        /// The existing directory.
        path: PathBuf,
    },
    /// v2: the controllers cannot be enabled for the base's children.
    #[error("cannot delegate cpu, memory and pids at {path}: {reason}")]
    NoDelegation {
        /// The cgroup whose `cgroup.subtree_control` could not be set.
        path: PathBuf,
        /// Why, e.g. the cgroup has processes of its own.
        reason: String,
    },
    /// A file could not be read, written, created or removed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted: "read", "write", "mkdir", "rmdir", "list".
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `/proc/self/mountinfo`, `/proc/self/cgroup` or a control file did not parse.
    #[error("malformed {path}: {detail}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What did not parse.
        detail: String,
    },
    /// Processes were still in the cgroup when the kill loop's bound ran out (CG-4).
    #[error("processes survived killing cgroup {path}: {pids:?}")]
    Survivors {
        /// The action cgroup (freezer hierarchy on v1).
        path: PathBuf,
        /// The pids still listed.
        pids: Vec<u32>,
    },
    /// `rmdir` kept failing with EBUSY.
    #[error("cgroup {path} stayed busy and could not be removed")]
    Busy {
        /// The directory.
        path: PathBuf,
    },
}
