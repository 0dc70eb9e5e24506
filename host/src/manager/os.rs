//! [`OsProcManager`]: each proc a child OS process running `<binary> proc-agent [args…]`.
//!
//! ```text
//! launch ─▶ canonical binary inside the allow-listed dir? (HST-8) ─▶ hash it (cached per
//!   path + mtime + size) ─▶ fork on the long-lived spawner thread:
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

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

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
    hashes: Mutex<HashMap<PathBuf, (SystemTime, u64, BlobHash)>>,
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
        })
    }

    /// A manager from the host's `proc_binary` and `allowed_dir`.
    pub fn from_config(config: &HostConfig) -> Result<Self, OsProcManagerError> {
        Self::new(config.proc_binary.clone(), config.allowed_dir.clone())
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

    /// The hash of `exe`, computed once per path, modification time and size.
    async fn exe_hash(&self, exe: &Path) -> std::io::Result<BlobHash> {
        let meta = tokio::fs::metadata(exe).await?;
        let key = (meta.modified()?, meta.len());
        if let Some((mtime, len, hash)) = self.hashes.lock().expect("hash cache").get(exe) {
            if (*mtime, *len) == key {
                return Ok(*hash);
            }
        }
        let (hash, _) = procmesh_transport::blob::hash_file(exe)
            .await
            .map_err(std::io::Error::other)?;
        self.hashes
            .lock()
            .expect("hash cache")
            .insert(exe.to_owned(), (key.0, key.1, hash));
        Ok(hash)
    }

    fn command(exe: &Path, launch: &Launch) -> Command {
        let mut cmd = Command::new(exe);
        cmd.arg(PROC_AGENT_ARG)
            .args(&launch.config.args)
            .envs(&launch.config.env)
            .envs(launch.env())
            .current_dir(&launch.bootstrap.work_dir)
            .stdin(Stdio::null())
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: parent_death_signal makes only async-signal-safe calls (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || procmesh_sys::prctl::parent_death_signal(libc::SIGTERM, parent));
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
            let exe_hash = self
                .exe_hash(&exe)
                .await
                .map_err(|e| launch_err(format!("cannot hash {}: {e}", exe.display())))?;
            let cmd = Self::command(&exe, &launch);
            let (child, _pipes) = Child::spawn_on_long_lived_thread(cmd, Reap::KillGroupFirst)
                .await
                .map_err(|e| launch_err(format!("{}: {e}", exe.display())))?;
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
