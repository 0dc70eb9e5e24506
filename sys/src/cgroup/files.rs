//! Cgroup filesystem operations shared by v1 and v2: control files written without creating
//! them (CG-1), directories, process lists, and signalling listed pids through pidfds (CG-5).

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use super::CgroupError;

/// The file listing a cgroup's processes, and the one a process joins through.
pub(super) const PROCS: &str = "cgroup.procs";

/// Nested cgroups deeper than this, or more than `MAX_TREE` of them, are not walked.
const MAX_DEPTH: usize = 32;
const MAX_TREE: usize = 10_000;

/// Maps an I/O error to [`CgroupError`], permission problems to their own variant.
pub(super) fn io_err(op: &'static str, path: &Path, source: io::Error) -> CgroupError {
    match source.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            CgroupError::PermissionDenied {
                path: path.to_path_buf(),
                source,
            }
        }
        _ => CgroupError::Io {
            op,
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Reads a control file.
pub(super) fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|e| io_err("read", path, e))
}

/// Reads a control file; `None` if it cannot be read.
pub(super) fn read_opt(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Writes `content` to an existing control file in one write. CG-1: never `O_CREAT`.
pub(super) fn write_existing(path: &Path, content: &str) -> Result<(), CgroupError> {
    write_raw(path, content).map_err(|e| io_err("write", path, e))
}

/// [`write_existing`] keeping the raw error, for callers that branch on its kind.
pub(super) fn write_raw(path: &Path, content: &str) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(content.as_bytes())
}

/// Creates a new cgroup directory; an existing one is [`CgroupError::Exists`].
pub(super) fn mkdir_new(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(CgroupError::Exists {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(io_err("mkdir", dir, e)),
    }
}

/// Creates a cgroup directory unless it is there. Returns whether it created it.
pub(super) fn mkdir_or_open(dir: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) => Err(io_err("mkdir", dir, e)),
    }
}

/// Removes a cgroup directory, retrying EBUSY for up to ~2 s. Already gone is fine (CG-6).
pub(super) fn rmdir_retry(dir: &Path) -> Result<(), CgroupError> {
    for _ in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(io_err("rmdir", dir, e)),
        }
    }
    Err(CgroupError::Busy {
        path: dir.to_path_buf(),
    })
}

/// Best-effort removal of directories this call just created, newest first.
pub(super) fn rmdir_all_quiet(dirs: &[PathBuf]) {
    for dir in dirs.iter().rev() {
        if let Err(error) = std::fs::remove_dir(dir) {
            tracing::warn!(%error, dir = %dir.display(), "could not remove cgroup again");
        }
    }
}

/// The child cgroups (subdirectories) of `dir`; none if `dir` is gone.
pub(super) fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err("list", dir, e))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// `dir` and every cgroup nested in it, children before parents; empty if `dir` is gone.
/// Bounded in depth and count.
pub(super) fn tree_post_order(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        if depth < MAX_DEPTH && out.len() < MAX_TREE {
            for child in subdirs(dir).unwrap_or_default() {
                walk(&child, depth + 1, out);
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut out = Vec::new();
    if dir.is_dir() {
        walk(dir, 0, &mut out);
    }
    out
}

/// The pids in one cgroup's `cgroup.procs` (none if unreadable).
pub(super) fn read_pids(dir: &Path) -> Vec<u32> {
    read_opt(&dir.join(PROCS))
        .map(|s| parse_pids(&s))
        .unwrap_or_default()
}

fn parse_pids(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// Every pid in the trees rooted at `dirs`, sorted and deduplicated.
pub(super) fn pids_in_trees(dirs: &[PathBuf]) -> Vec<u32> {
    let mut pids = BTreeSet::new();
    for root in dirs {
        for dir in tree_post_order(root) {
            pids.extend(read_pids(&dir));
        }
    }
    pids.into_iter().collect()
}

/// SIGKILLs every process listed in the trees rooted at `dirs`. CG-5: each pid is pinned by a
/// pidfd first and signalled only if it is still listed afterwards, so a pid that exited and
/// was reused outside the cgroup is never hit. Returns how many were signalled.
pub(super) fn kill_listed(dirs: &[PathBuf]) -> usize {
    let listed = pids_in_trees(dirs);
    if listed.is_empty() {
        return 0;
    }
    let pinned: Vec<(u32, Option<OwnedFd>)> = listed
        .into_iter()
        .filter_map(|pid| match pidfd_open(pid) {
            Ok(fd) => Some((pid, Some(fd))),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => None,
            // No pidfds (kernel < 5.3): plain kill; the callers only get here with the cgroup
            // frozen or being killed, where the pid cannot exit and be reused.
            Err(_) => Some((pid, None)),
        })
        .collect();
    let still: BTreeSet<u32> = pids_in_trees(dirs).into_iter().collect();
    let mut signalled = 0;
    for (pid, fd) in pinned {
        if !still.contains(&pid) {
            continue;
        }
        let ok = match fd {
            Some(fd) => pidfd_kill(&fd),
            None => {
                // SAFETY: kill takes a pid and a signal number.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) == 0 }
            }
        };
        if ok {
            signalled += 1;
        }
    }
    signalled
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_kill(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal takes a pidfd, a signal, a null siginfo and flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

/// Polls `done` every `step` until it holds or `within` has passed; returns whether it held.
pub(super) fn wait_until(within: Duration, step: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(step);
    }
}

/// `a/x/n, a/y/n` → `a/*/n` when the directories differ in exactly one component, else the
/// list joined by ", ".
pub(super) fn summarise_dirs(dirs: &[&Path]) -> String {
    let list = || {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if dirs.len() < 2 {
        return list();
    }
    let split: Vec<Vec<Component<'_>>> = dirs.iter().map(|d| d.components().collect()).collect();
    let len = split[0].len();
    if split.iter().any(|c| c.len() != len) {
        return list();
    }
    let differing: Vec<usize> = (0..len)
        .filter(|&i| split.iter().any(|c| c[i] != split[0][i]))
        .collect();
    match differing.as_slice() {
        [i] => {
            let mut out = PathBuf::new();
            for (j, c) in split[0].iter().enumerate() {
                if j == *i {
                    out.push("*");
                } else {
                    out.push(c.as_os_str());
                }
            }
            out.display().to_string()
        }
        _ => list(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_parse_and_skip_junk() {
        assert_eq!(parse_pids("1\n22\n\nx\n333\n"), vec![1, 22, 333]);
        assert!(parse_pids("").is_empty());
    }

    #[test]
    fn dirs_summarise_to_a_star_when_one_component_differs() {
        let a = Path::new("/sys/fs/cgroup/pids/p");
        let b = Path::new("/sys/fs/cgroup/memory/p");
        assert_eq!(summarise_dirs(&[a, b]), "/sys/fs/cgroup/*/p");
        let c = Path::new("/sys/fs/cgroup/memory/x/p");
        assert_eq!(
            summarise_dirs(&[a, c]),
            "/sys/fs/cgroup/pids/p, /sys/fs/cgroup/memory/x/p"
        );
        assert_eq!(summarise_dirs(&[a]), "/sys/fs/cgroup/pids/p");
    }

    #[test]
    fn writes_never_create_files() {
        // Attests CG-1.
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("cpu.max");
        assert!(write_existing(&missing, "1").is_err());
        assert!(!missing.exists());
        std::fs::write(&missing, "max 100000\n").expect("seed");
        write_existing(&missing, "5000 100000").expect("write");
        assert_eq!(
            std::fs::read_to_string(&missing).expect("read"),
            "5000 100000"
        );
    }
}
