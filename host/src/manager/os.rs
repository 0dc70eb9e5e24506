//! [`OsProcManager`]: each proc a child OS process running `<binary> proc-agent [args…]`.
//!
//! ```text
//! launch ─▶ canonical binary inside the allow-listed dir? (HST-8)
//!   ─▶ open it O_RDONLY|O_CLOEXEC|O_NOFOLLOW; the fd is that path, a regular executable file
//!   ─▶ hash the fd's bytes (cached per device, inode, size, mtime, ctime of the fd's file)
//!   ─▶ the allow-listed hash (proc_binary_blake3), else the one recorded at the first launch?
//!   ─▶ fork on the long-lived spawner thread, exec /proc/self/fd/<fd> (HST-20):
//!     own process group, stdin /dev/null, stdout/stderr inherited, cwd = its work dir,
//!     env = inherited + ProcConfig.env + bootstrap vars (which win),
//!     pre_exec: PR_SET_PDEATHSIG(SIGTERM) — it hears of the host's death
//!   ─▶ pidfd-tracked Child (signals never reach a reused pid)
//! exit ─▶ SIGKILL what is left in its process group, reap it (wait4) ─▶ kill and reap the
//!   orphans it left (re-parented to the host, a child subreaper) ─▶ report the status
//! ```
//!
//! # Invariants
//! - **HST-8** The binary is run by its canonical path, and only if that path lies inside the
//!   canonical allow-listed directory and is an executable regular file; otherwise the spawn
//!   is refused [`HostError::NotAllowed`] and nothing is started.
//! - **HST-9** A child is known by pid, start time and executable hash ([`ChildRecord`]);
//!   it is signalled only through its pidfd, so never a reused pid; it is reaped by its reaper
//!   task and the orphans of its process tree are killed and reaped before its exit is
//!   reported: no zombie, no orphan.
//! - **HST-20** The proc-agent binary is executed from the file descriptor whose bytes were
//!   hashed (`/proc/self/fd/<n>`), never by its path again, and only if that hash is the
//!   allow-listed one (`proc_binary_blake3`) or, without one, the hash recorded at this
//!   manager's first launch; a binary replaced since is refused [`HostError::NotAllowed`] and
//!   nothing is started. (A script — `#!` — keeps the descriptor open across exec, for its
//!   interpreter to read.)

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;
use procmesh_protocol::cas::BlobHash;
use procmesh_protocol::messages::HostError;
use procmesh_protocol::ExitStatus;
use procmesh_sys::{Child, Reap};
use procmesh_transport::remote::BoxFuture;
use tokio::sync::watch;

use super::{ChildRecord, Launch, ProcControl, ProcManager};
use crate::config::HostConfig;

/// The first argument of every proc child: the `procmesh` subcommand that runs a proc agent.
pub const PROC_AGENT_ARG: &str = "proc-agent";

/// At most this many rounds of orphan reaping after one exit (each round may expose the
/// children of the orphans it killed).
const ORPHAN_ROUNDS: usize = 8;

/// Why an [`OsProcManager`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum OsProcManagerError {
    /// No binary was configured and the running executable cannot be found.
    #[error("cannot find the running executable: {0}")]
    CurrentExe(std::io::Error),
    /// The process could not become a child subreaper.
    #[error("cannot become a child subreaper: {0}")]
    Subreaper(std::io::Error),
}

/// Starts procs as child OS processes.
#[derive(Debug)]
pub struct OsProcManager {
    binary: PathBuf,
    allowed_dir: PathBuf,
    hashes: Mutex<HashMap<FileKey, BlobHash>>,
    /// The hash the binary must have (HST-20): allow-listed, or recorded at the first launch.
    pinned: Mutex<Option<BlobHash>>,
}

/// What identifies a file's content without reading it: device, inode, size, and the
/// modification and change times (any write changes the change time).
type FileKey = (u64, u64, u64, i64, i64, i64, i64);

/// The proc-agent binary, opened and verified (HST-20).
struct Verified {
    file: std::fs::File,
    hash: BlobHash,
    /// Starts with `#!`: its interpreter reads it through the descriptor after exec.
    script: bool,
}

impl OsProcManager {
    /// A manager running `binary` (default: the running executable), which must resolve inside
    /// `allowed_dir` (default: the running executable's directory). Makes this process a child
    /// subreaper, so that what a dead proc leaves behind comes back to the host to be reaped.
    pub fn new(
        binary: Option<PathBuf>,
        allowed_dir: Option<PathBuf>,
    ) -> Result<Self, OsProcManagerError> {
        let current = || std::env::current_exe().map_err(OsProcManagerError::CurrentExe);
        let binary = match binary {
            Some(binary) => binary,
            None => current()?,
        };
        let allowed_dir = match allowed_dir {
            Some(dir) => dir,
            None => {
                let exe = current()?;
                let exe = exe.canonicalize().unwrap_or(exe);
                exe.parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| "/".into())
            }
        };
        procmesh_sys::prctl::set_child_subreaper().map_err(OsProcManagerError::Subreaper)?;
        Ok(OsProcManager {
            binary,
            allowed_dir,
            hashes: Mutex::default(),
            pinned: Mutex::default(),
        })
    }

    /// Only runs a binary whose BLAKE3 hash is `hash` (HST-20); without this, the hash
    /// recorded at the first launch.
    pub fn with_hash(self, hash: BlobHash) -> Self {
        *self.pinned.lock().expect("pinned hash") = Some(hash);
        self
    }

    /// A manager from the host's `proc_binary`, `allowed_dir` and `proc_binary_blake3`.
    pub fn from_config(config: &HostConfig) -> Result<Self, OsProcManagerError> {
        let manager = Self::new(config.proc_binary.clone(), config.allowed_dir.clone())?;
        Ok(match config.proc_binary_blake3 {
            Some(hash) => manager.with_hash(hash),
            None => manager,
        })
    }

    /// The binary as configured.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// HST-8: the canonical path of the binary, if it is allowed.
    pub fn resolve(&self) -> Result<PathBuf, HostError> {
        let not_allowed = |path: &Path, reason: String| HostError::NotAllowed {
            path: path.display().to_string(),
            reason,
        };
        let allowed = self.allowed_dir.canonicalize().map_err(|e| {
            not_allowed(
                &self.allowed_dir,
                format!("the allow-listed directory: {e}"),
            )
        })?;
        let exe = self
            .binary
            .canonicalize()
            .map_err(|e| not_allowed(&self.binary, format!("cannot resolve it: {e}")))?;
        if !exe.starts_with(&allowed) {
            return Err(not_allowed(
                &exe,
                format!("outside the allow-listed directory {}", allowed.display()),
            ));
        }
        let meta = std::fs::metadata(&exe).map_err(|e| not_allowed(&exe, e.to_string()))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(not_allowed(&exe, "not an executable file".into()));
        }
        Ok(exe)
    }

    /// HST-20: opens `exe` (the canonical, allow-listed path), checks that the descriptor is
    /// that path's executable regular file, and hashes the descriptor's bytes.
    async fn open_verified(&self, exe: &Path) -> Result<Verified, HostError> {
        let not_allowed = |reason: String| HostError::NotAllowed {
            path: exe.display().to_string(),
            reason,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(exe)
            .map_err(|e| not_allowed(format!("cannot open it: {e}")))?;
        let meta = file.metadata().map_err(|e| not_allowed(e.to_string()))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(not_allowed("not an executable file".into()));
        }
        let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|e| not_allowed(format!("cannot see what was opened: {e}")))?;
        if opened != exe {
            return Err(not_allowed(format!(
                "it was replaced while being opened (now {})",
                opened.display()
            )));
        }
        let key: FileKey = (
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        );
        let cached = self.hashes.lock().expect("hash cache").get(&key).copied();
        let (file, hash) = match cached {
            Some(hash) => (file, hash),
            None => {
                let (file, hash) = tokio::task::spawn_blocking(move || {
                    let mut hasher = procmesh_protocol::cas::BlobHasher::new();
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut offset = 0u64;
                    loop {
                        let n = file.read_at(&mut buf, offset)?;
                        if n == 0 {
                            break;
                        }
                        hasher.update(&buf[..n]);
                        offset += n as u64;
                    }
                    Ok::<_, std::io::Error>((file, hasher.finalize()))
                })
                .await
                .map_err(|e| HostError::Internal(format!("hash task: {e}")))?
                .map_err(|e| not_allowed(format!("cannot read it: {e}")))?;
                self.hashes.lock().expect("hash cache").insert(key, hash);
                (file, hash)
            }
        };
        {
            let mut pinned = self.pinned.lock().expect("pinned hash");
            match *pinned {
                Some(expected) if expected != hash => {
                    return Err(not_allowed(format!(
                        "its hash {hash} is not the allow-listed {expected} (replaced since \
                         the host started? restart the host to accept a new binary)"
                    )));
                }
                Some(_) => {}
                None => *pinned = Some(hash),
            }
        }
        let mut head = [0u8; 2];
        let script = file.read_at(&mut head, 0).is_ok_and(|n| n == 2) && head == *b"#!";
        Ok(Verified { file, hash, script })
    }

    fn command(exe: &Path, verified: &Verified, launch: &Launch) -> Command {
        let fd = verified.file.as_raw_fd();
        // HST-20: the very file that was hashed, not its path.
        let mut cmd = Command::new(format!("/proc/self/fd/{fd}"));
        cmd.arg0(exe)
            .arg(PROC_AGENT_ARG)
            .args(&launch.config.args)
            .envs(&launch.config.env)
            .envs(launch.env())
            .current_dir(&launch.bootstrap.work_dir)
            .stdin(Stdio::null())
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        let script = verified.script;
        // SAFETY: the closure makes only async-signal-safe calls (prctl, getppid, fcntl).
        unsafe {
            cmd.pre_exec(move || {
                if script {
                    // Its interpreter opens /proc/self/fd/<fd> after exec: keep it open.
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                procmesh_sys::prctl::parent_death_signal(libc::SIGTERM, parent)
            });
        }
        cmd
    }
}

impl ProcManager for OsProcManager {
    fn kind(&self) -> &'static str {
        "os"
    }

    fn launch(&self, launch: Launch) -> BoxFuture<'_, Result<Arc<dyn ProcControl>, HostError>> {
        Box::pin(async move {
            let name = launch.name().to_owned();
            let launch_err = |reason: String| HostError::Launch {
                name: name.clone(),
                reason,
            };
            let exe = self.resolve()?;
            let verified = self.open_verified(&exe).await?;
            let exe_hash = verified.hash;
            let cmd = Self::command(&exe, &verified, &launch);
            let spawned = Child::spawn_on_long_lived_thread(cmd, Reap::KillGroupFirst).await;
            // The child has its own copy of the descriptor (or has exec'd it): ours goes.
            drop(verified);
            let (child, _pipes) =
                spawned.map_err(|e| launch_err(format!("{}: {e}", exe.display())))?;
            let record = ChildRecord {
                pid: child.pid(),
                start_time: child.identity().start_time,
                exe,
                exe_hash,
            };
            tracing::debug!(?record, "child started");
            let (exit_tx, exit_rx) = watch::channel(None);
            let reaped = child.clone();
            tokio::spawn(async move {
                let info = reaped.wait().await;
                // HST-9: what it left behind was re-parented to us; kill and reap it.
                let orphans = tokio::task::spawn_blocking(|| {
                    let mut all = Vec::new();
                    for _ in 0..ORPHAN_ROUNDS {
                        let round = procmesh_sys::reap_orphans();
                        if round.is_empty() {
                            break;
                        }
                        all.extend(round);
                    }
                    all
                })
                .await
                .unwrap_or_default();
                if !orphans.is_empty() {
                    tracing::info!(?orphans, "killed and reaped orphans of a proc");
                }
                exit_tx.send_replace(Some(info.status));
            });
            let control: Arc<dyn ProcControl> = Arc::new(OsControl {
                child,
                record,
                exit: exit_rx,
            });
            Ok(control)
        })
    }
}

struct OsControl {
    child: Child,
    record: ChildRecord,
    exit: watch::Receiver<Option<ExitStatus>>,
}

impl OsControl {
    fn signal(&self, sig: Signal) -> Result<(), HostError> {
        self.child.signal(sig).map(|_| ()).map_err(|e| {
            HostError::Internal(format!("cannot send {sig} to pid {}: {e}", self.record.pid))
        })
    }
}

impl ProcControl for OsControl {
    fn pid(&self) -> Option<u32> {
        Some(self.record.pid)
    }

    fn ready_pid(&self) -> u32 {
        self.record.pid
    }

    fn record(&self) -> Option<ChildRecord> {
        Some(self.record.clone())
    }

    fn terminate(&self) -> Result<(), HostError> {
        self.signal(Signal::SIGTERM)
    }

    fn kill(&self) -> Result<(), HostError> {
        self.signal(Signal::SIGKILL)
    }

    fn wait(&self) -> BoxFuture<'static, ExitStatus> {
        super::wait_exit(&self.exit)
    }
}
