//! The namespace sandbox launcher: runs one action in its own user, mount, pid, ipc, uts and
//! network namespaces, as an unprivileged mapped user with no capabilities, in a root made of
//! read-only binds plus its writable binds and a private `/tmp`.
//!
//! ```text
//!  runner (multi-threaded, tokio)
//!    │ posix_spawn: `<exe> __procmesh-sandbox`, stdin = control socket, stdout/stderr = pipes
//!    ▼
//!  H  helper (single-threaded): reads the SandboxSpec (+ optional netns fd), joins the cgroups,
//!    │ [setns(netns)], clone(NEWUSER|NEWNS|NEWPID|NEWIPC|NEWUTS[|NEWNET]), writes the id maps
//!    ▼
//!  E  pid 1 of the new pid namespace: builds the root (mounts.rs), pivot_root, hostname, lo up,
//!    │ forks F, then reaps everything and forwards TERM/INT/HUP/QUIT to everything (kill -1)
//!    ▼
//!  F  drops every capability, no_new_privs, seccomp deny-list, execve(program) = the action
//! ```
//!
//! F is started with `clone(CLONE_VM | CLONE_VFORK)` on a stack of its own: it shares E's
//! memory until it execs, so nothing is copied for it and nothing torn down at its exec; it
//! allocates nothing and makes only raw system calls (init.rs).
//!
//! **Warm slots** ([`Slot`], SBX-10) keep the expensive, identical part per slot instead:
//!
//! ```text
//!  runner ─zygote─▶ H ─clone(PARENT|USER|NS[|NET])─▶ W  warden: base root on `root`, once
//!  runner ─launch─▶ W ─clone(PARENT|NS|PID|IPC|UTS)─▶ A  per action: joins the slot's
//!     cgroups, fresh /proc /tmp /dev/shm, the action's binds, pivot_root ─▶ F ─ the action
//! ```
//!
//! Messages: the runner → H: one frame (`u32` little-endian length + JSON [`SandboxSpec`]),
//! the netns fd as `SCM_RIGHTS` on it. H → the runner: one frame, `Started { pid, start_time }`
//! or `SetupFailed { reason }`. E ↔ H and F → E are private pipes.
//!
//! With a **zygote** ([`start_zygote`], forked by the proc agent before its runtime starts),
//! H is not exec'd: the zygote `clone(CLONE_PARENT)`s it with the control socket and the
//! runner's pipes as its standard fds, so H is still the runner's child (reaped and signalled
//! through its pidfd) but skips an exec of the whole binary per action (SBX-9).
//!
//! The binary that hosts the runner must call [`run_helper_if_asked`] first thing in `main`,
//! before it starts any thread (a tokio runtime included): H must be single-threaded, because E
//! is a plain copy of it that allocates.
//!
//! # Invariants
//! - **SBX-1** Nothing of the action runs before its namespaces, id maps, mounts, credentials
//!   and seccomp filter are in place: E waits for H's go (after the maps are written), F execs
//!   only after every step succeeded; any failure is a [`SpawnError::Setup`] naming what failed,
//!   and H then exits with [`SETUP_FAILED_EXIT`] without running the action.
//! - **SBX-2** The action holds no capability: the bounding and ambient sets are emptied and
//!   capset zeroes the rest before `execve`, under `PR_SET_NO_NEW_PRIVS`, so not even an
//!   inside uid of 0 or a setuid file gains any.
//! - **SBX-3** The action sees only what the spec binds: a fresh tmpfs root (read-only once
//!   built), the system dirs, `/etc` from the spec, a minimal `/dev`, its own `/proc`, `/tmp`
//!   and the binds; the host root is detached by `pivot_root`. Read-only binds are read-only
//!   recursively and nosuid/nodev; mount targets never traverse a symlink.
//! - **SBX-4** Nothing outlives the action's main process: E is the pid namespace's init, and
//!   when F exits E exits, so the kernel kills every process left in the namespace (double
//!   forks, `setsid`, `nohup`) before H can be reaped. E and H die with their parents
//!   (`PR_SET_PDEATHSIG(SIGKILL)`), so the namespace dies with the runner.
//! - **SBX-5** H mirrors the action: it exits with F's exit code or dies of F's terminating
//!   signal (without a core dump), so the runner's wait sees exactly what the action did.
//! - **SBX-6** A signal the runner sends to H's process group reaches the action exactly once:
//!   H ignores SIGTERM/SIGINT, F runs in its own session, and E (whose handlers make it
//!   signalable from the parent namespace) forwards TERM/INT/HUP/QUIT to every process in the
//!   namespace.
//! - **SBX-7** The whole tree is in the action's cgroups: H joins every `cgroup_procs` file
//!   before it clones, and a failed join fails the setup.
//! - **SBX-8** A pooled network namespace has only `lo` and is handed to one sandbox at a time;
//!   it goes back to the pool only when its [`NetnsLease`] drops, which the runner does once
//!   the action's cgroup is empty, so no process of one action shares it with the next. A warm
//!   slot holds its lease for its whole life and launches the next action only after the
//!   previous one's init (and so its whole pid namespace) is gone.
//! - **SBX-9** A zygote-started H is the same code with the same fds as an exec'd one, a child
//!   of the runner from its first instruction (tracked before any orphan scan can see it); the
//!   zygote itself is tracked, dies with the runner (parent-death signal, EOF on its socket),
//!   and hands the runner's fds to nothing but H.
//! - **SBX-10** A warm slot's action sees nothing of the actions before it: each gets its own
//!   pid, mount, ipc and uts namespaces (a copy of the slot's base root, read-only), a fresh
//!   `/proc`, `/tmp` and `/dev/shm`, only its own sandbox bound, the environment, working
//!   directory and hostname of its launch, and the rlimits of the warden; its init A is the
//!   runner's child (reaped and signalled like H) and reports the action's wait status on its
//!   status socket ([`Verdict`]), since a pid 1 cannot die of the action's signal. The warden
//!   keeps the runner's kernel uid, unmapped inside, so host paths resolve as they do for the
//!   runner, and empties the bounding and ambient capability sets once for all its actions.
//!
//! # Ids
//! `uid`/`gid` map one inside id to one outside id. With `outside: None` the helper's own
//! euid/egid is used and `setgroups` is denied (the unprivileged case). A root runner must give
//! an unprivileged `outside` id: with `None` the action would own host root's files.
//!
//! # Seccomp
//! Decision: a small deny-list (`seccomp.rs`), not an allow-list — actions are arbitrary worker
//! programs, and the namespaces already confine them; the list only removes kernel attack
//! surface an unprivileged process in a user namespace could otherwise reach (keys, bpf, perf,
//! userfaultfd, io_uring, module and kexec calls, mount APIs, new namespaces, ptrace and
//! cross-process memory). `clone3` gets `ENOSYS` so libc falls back to `clone`, whose flags the
//! filter can inspect. A foreign syscall architecture (x32, i386 on x86_64) kills the process.
//!
//! # Requirements
//! Linux ≥ 5.12 (`open_tree`, `move_mount`, `fsopen`, `mount_setattr`), user namespaces
//! allowed ([`probe`]); [`NetnsPool`] needs root.

mod helper;
mod init;
mod mounts;
mod netns;
mod probe;
mod seccomp;
mod slot;
mod warden;
mod wire;
mod zygote;

pub use slot::{Slot, Verdict};
pub use warden::ActionLaunch;
pub use zygote::start_zygote;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use netns::{NetnsLease, NetnsPool};
pub use probe::probe;

use crate::child::{Child, Pipes, Reap};

/// `argv[1]` that makes the binary act as the sandbox helper.
pub const HELPER_ARG: &str = "__procmesh-sandbox";

/// The helper's exit code when the sandbox could not be set up (the reason went to the runner).
pub const SETUP_FAILED_EXIT: i32 = 125;

/// How long [`spawn`] waits for the helper to report.
pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(30);

/// One inside id and the outside id it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// The id the action has inside, e.g. 1000.
    pub inside: u32,
    /// The host id it maps to; `None` = the helper's own euid/egid (unprivileged runners).
    pub outside: Option<u32>,
}

/// A host path bound into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// Host path (must exist).
    pub source: PathBuf,
    /// Absolute path inside, e.g. `/sandbox/Outputs`.
    pub target: PathBuf,
    /// Whether the action may write through it.
    pub writable: bool,
}

/// Everything the helper needs to build the sandbox and start the action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Absolute path of the program as seen inside, e.g. `/sandbox/bin/worker`.
    pub program: PathBuf,
    /// `argv`, `argv[0]` included.
    pub args: Vec<String>,
    /// Exactly the action's environment, nothing else.
    pub env: Vec<(String, String)>,
    /// Working directory inside, e.g. `/sandbox`.
    pub cwd: PathBuf,
    /// An existing, empty host directory the new root tmpfs is mounted on (in the sandbox's
    /// own mount namespace only).
    pub root: PathBuf,
    /// Host directories bound read-only at the same path; a host symlink (merged `/usr`) is
    /// recreated as the same symlink; missing ones are skipped.
    pub system_dirs: Vec<PathBuf>,
    /// Files written into the fresh `/etc`: (name, contents), e.g. `("passwd", "…")`.
    pub etc_files: Vec<(String, String)>,
    /// Names under the host `/etc` bound read-only when present, e.g. `ld.so.cache`.
    pub etc_binds: Vec<String>,
    /// Binds applied after the system ones, in order.
    pub binds: Vec<Bind>,
    /// Size of the private `/tmp` (and of `/dev/shm`), in bytes.
    pub tmp_bytes: u64,
    /// The action's uid.
    pub uid: IdMap,
    /// The action's gid.
    pub gid: IdMap,
    /// The sandbox's hostname.
    pub hostname: String,
    /// `cgroup.procs` files the helper joins before it clones (SBX-7).
    pub cgroup_procs: Vec<PathBuf>,
    /// Whether to install the seccomp deny-list.
    pub seccomp: bool,
    /// The runner's pid; [`spawn`] fills it in.
    #[serde(default)]
    pub parent_pid: u32,
}

impl Default for SandboxSpec {
    fn default() -> Self {
        SandboxSpec {
            program: PathBuf::new(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: PathBuf::from("/"),
            root: PathBuf::new(),
            system_dirs: ["/usr", "/bin", "/lib", "/lib64"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            etc_files: Vec::new(),
            etc_binds: Vec::new(),
            binds: Vec::new(),
            tmp_bytes: 64 << 20,
            uid: IdMap {
                inside: 1000,
                outside: None,
            },
            gid: IdMap {
                inside: 1000,
                outside: None,
            },
            hostname: "sandbox".into(),
            cgroup_procs: Vec::new(),
            seccomp: true,
            parent_pid: 0,
        }
    }
}

/// What every action of a warm slot shares, built once when the slot starts (SBX-10): the
/// same root as a [`SandboxSpec`]'s without the per-action parts (program, environment, the
/// action's own binds and working directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotSpec {
    /// An existing, empty host directory the slot's base root is mounted on (in the slot's
    /// own mount namespace only).
    pub root: PathBuf,
    /// As [`SandboxSpec::system_dirs`].
    pub system_dirs: Vec<PathBuf>,
    /// As [`SandboxSpec::etc_files`].
    pub etc_files: Vec<(String, String)>,
    /// As [`SandboxSpec::etc_binds`].
    pub etc_binds: Vec<String>,
    /// Binds every action of the slot gets (e.g. allowed host-program roots).
    pub binds: Vec<Bind>,
    /// Empty directories made in the base root for the actions' own binds, e.g. `/sandbox`.
    pub mount_points: Vec<PathBuf>,
    /// Size of each action's fresh `/tmp` (and `/dev/shm`), in bytes.
    pub tmp_bytes: u64,
    /// The actions' uid.
    pub uid: IdMap,
    /// The actions' gid.
    pub gid: IdMap,
    /// Each action's hostname (in its own uts namespace).
    pub hostname: String,
    /// Whether actions get the seccomp deny-list.
    pub seccomp: bool,
    /// The runner's pid; [`Slot::start`] fills it in.
    #[serde(default)]
    pub parent_pid: u32,
}

impl SlotSpec {
    /// The one-shot spec of the base root, for the mount code both paths share.
    fn base(&self) -> SandboxSpec {
        SandboxSpec {
            root: self.root.clone(),
            system_dirs: self.system_dirs.clone(),
            etc_files: self.etc_files.clone(),
            etc_binds: self.etc_binds.clone(),
            binds: self.binds.clone(),
            tmp_bytes: self.tmp_bytes,
            uid: self.uid,
            gid: self.gid,
            hostname: self.hostname.clone(),
            seccomp: self.seccomp,
            parent_pid: self.parent_pid,
            ..SandboxSpec::default()
        }
    }
}

/// What the runner asks of H: one action (the one-shot path), or a warm slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum HelperRequest {
    /// Set up and run one action; the frame may carry a network namespace fd.
    Action(SandboxSpec),
    /// Start a slot's warden; the frame carries the network namespace fd if `netns`, then
    /// the slot's `cgroup.procs` fds.
    Slot {
        /// The slot.
        spec: SlotSpec,
        /// Whether the first fd is a network namespace to join.
        netns: bool,
    },
}

/// The action as it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The action's pid in the runner's pid namespace.
    pub pid: u32,
    /// Its start time ([`ProcessIdentity`](crate::ProcessIdentity)), so a reused pid is never
    /// mistaken for it.
    pub start_time: u64,
}

/// A started sandbox.
#[derive(Debug)]
pub struct Sandboxed {
    /// The process the runner waits for and signals: the helper H, whose exit mirrors the
    /// action's (SBX-5), or in a warm slot the action's init A.
    pub child: Child,
    /// The action's stdout and stderr.
    pub pipes: Pipes,
    /// The action itself.
    pub started: Started,
    /// In a warm slot, how the action ended ([`Verdict::resolve`] the child's exit with it);
    /// `None` when the child's exit already mirrors the action's.
    pub verdict: Option<Verdict>,
}

/// Why [`spawn`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The helper could not be started, or it vanished or timed out before reporting.
    #[error("cannot start the sandbox helper: {0}")]
    Start(#[from] io::Error),
    /// The helper's reason why the sandbox could not be set up (SBX-1).
    #[error("sandbox setup failed: {0}")]
    Setup(String),
}

/// What H tells the runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Report {
    /// The action is running.
    Started(Started),
    /// The sandbox could not be set up.
    SetupFailed {
        /// What failed, e.g. `bind /missing -> /x: No such file or directory`.
        reason: String,
    },
    /// A slot's warden runs, with this pid.
    SlotReady {
        /// The warden's pid.
        pid: u32,
    },
}

/// If `argv[1]` is [`HELPER_ARG`], runs the sandbox helper and never returns; otherwise returns
/// at once. Call it first thing in `main`, before any thread exists.
pub fn run_helper_if_asked() {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(HELPER_ARG)) {
        helper::main()
    }
}

/// Starts `spec` in a sandbox through the helper binary `exe` (usually `/proc/self/exe`), in a
/// pooled network namespace if `netns` is given (else a fresh one with only `lo`), and waits
/// up to [`SPAWN_TIMEOUT`] for the action to start. Must run inside a tokio runtime.
pub async fn spawn(
    exe: &Path,
    spec: &SandboxSpec,
    netns: Option<&NetnsLease>,
) -> Result<Sandboxed, SpawnError> {
    let mut spec = spec.clone();
    spec.parent_pid = std::process::id();
    let body = serde_json::to_vec(&HelperRequest::Action(spec)).map_err(io::Error::other)?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let net_fd: Option<OwnedFd> = netns.map(|l| l.fd().try_clone_to_owned()).transpose()?;

    let (child, pipes) = if zygote::available() {
        let (out_r, out_w) = std::io::pipe()?;
        let (err_r, err_w) = std::io::pipe()?;
        let (ctl, out, err) = (
            OwnedFd::from(theirs),
            OwnedFd::from(out_w),
            OwnedFd::from(err_w),
        );
        let pid = tokio::task::spawn_blocking(move || {
            let _phase = crate::child::spawn_phase()
                .read()
                .expect("spawn phase lock");
            let pid = zygote::start_helper(ctl, out, err)?;
            crate::child::tracked()
                .lock()
                .expect("tracked lock")
                .insert(pid);
            io::Result::Ok(pid)
        })
        .await
        .map_err(io::Error::other)??;
        let pipes = Pipes::output(OwnedFd::from(out_r), OwnedFd::from(err_r))?;
        Child::adopt_pid(pid, Reap::KillGroupFirst, pipes)?
    } else {
        let mut cmd = Command::new(exe);
        cmd.arg(HELPER_ARG)
            .env_clear()
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        Child::spawn_on_long_lived_thread(cmd, Reap::KillGroupFirst).await?
    };
    // Until the action has started, a failure or a dropped future takes the helper down.
    let guard = KillOnDrop(Some(child.clone()));

    let talk = tokio::task::spawn_blocking(move || -> io::Result<Report> {
        ours.set_read_timeout(Some(SPAWN_TIMEOUT))?;
        ours.set_write_timeout(Some(SPAWN_TIMEOUT))?;
        wire::send_frame(
            ours.as_raw_fd(),
            &body,
            net_fd.as_ref().map(|f| f.as_raw_fd()),
        )?;
        let (reply, _) = wire::recv_frame(ours.as_raw_fd(), wire::MAX_REPORT)?;
        serde_json::from_slice(&reply).map_err(io::Error::other)
    });
    let report = match tokio::time::timeout(SPAWN_TIMEOUT, talk).await {
        Err(_) => {
            return Err(SpawnError::Start(io::Error::new(
                io::ErrorKind::TimedOut,
                "the sandbox helper did not report in time",
            )))
        }
        Ok(joined) => joined.map_err(io::Error::other)?,
    };
    match report {
        Ok(Report::Started(started)) => {
            guard.disarm();
            Ok(Sandboxed {
                child,
                pipes,
                started,
                verdict: None,
            })
        }
        Ok(Report::SetupFailed { reason }) => Err(SpawnError::Setup(reason)),
        Ok(Report::SlotReady { .. }) => Err(SpawnError::Start(io::Error::other(
            "the sandbox helper answered an action with a slot",
        ))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .map(|i| format!("{:?}", i.status))
                .unwrap_or_else(|_| "still running".into());
            Err(SpawnError::Start(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the sandbox helper exited before reporting ({status})"),
            )))
        }
        Err(e) => Err(SpawnError::Start(e)),
    }
}

/// SIGKILLs the helper's process group unless disarmed.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            let _ = child.signal_group(nix::sys::signal::Signal::SIGKILL);
        }
    }
}
