//! Running an action's process: spawn (std's posix_spawn path, no `pre_exec`; directly, or
//! through the namespace sandbox launcher), bounded stdout/stderr tails, the timeout,
//! cancellation, and the exit with its resource figures.
//!
//! ```text
//! spawn (own process group) ─▶ started() ─▶ loop { read stdout | read stderr | exit
//!                                                  | cancel | timeout | SIGKILL deadline }
//! stop (cancel or timeout):  SIGTERM to the group ─▶ grace ─▶ SIGKILL to the group
//! exit:                      the group is SIGKILLed before the leader is reaped (Reap::KillGroupFirst)
//!                            ─▶ pipes drained until EOF, at most DRAIN
//! ```
//!
//! Every signal goes through [`Child::signal_group`], which refuses once the leader is reaped,
//! so a cancel racing with the exit never signals a reused pid or process group (PA-4).

use std::io;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use procmesh_sys::{Child, ExitInfo, Reap};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, warn};

/// How long the pipes are still read after the process exited: the group is killed at the exit,
/// so EOF comes at once unless a process escaped the group (`setsid`) and holds them open.
pub(crate) const DRAIN: Duration = Duration::from_secs(2);
/// How often a spawn failing with ETXTBSY is tried (a concurrent fork may briefly hold a
/// just-written executable open for writing).
const SPAWN_TRIES: u32 = 5;

/// A request to stop an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CancelRequest {
    /// Why, for the action's record.
    pub(crate) reason: String,
    /// The state the attempt ends in: `Cancelled` when the orchestrator asked (a client
    /// cancelled it), `Abandoned` when the proc agent itself stops (PA-3b: the work was lost with
    /// the proc, and is retried).
    pub(crate) ends_as: procmesh_protocol::ActionState,
    /// SIGTERM to SIGKILL.
    pub(crate) grace: Duration,
}

/// Why the process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// By itself.
    Exited,
    /// It ran past its timeout and was stopped.
    TimedOut(Duration),
    /// It was cancelled.
    Cancelled(CancelRequest),
}

/// How an action's process is started.
pub(crate) enum Start {
    /// The command itself, in its own process group.
    Plain(Command),
    /// Through the sandbox launcher (`exe`), which mirrors the action's exit.
    Sandboxed {
        /// The launcher binary.
        exe: std::path::PathBuf,
        /// What it sets up and runs.
        spec: Box<procmesh_sys::sandbox::SandboxSpec>,
        /// A network namespace from the pool, if any.
        netns: Option<procmesh_sys::sandbox::NetnsLease>,
    },
    /// The program in its cgroups from its first instruction, without a fork of the agent
    /// (`procmesh_sys::spawn_joined`).
    Joined(Box<Joined>),
    /// In a warm slot's sandbox (PA-12).
    Warm {
        /// The slot.
        slot: std::sync::Arc<procmesh_sys::sandbox::Slot>,
        /// What runs in it.
        launch: Box<procmesh_sys::sandbox::ActionLaunch>,
    },
}

/// A plain process started in its cgroups.
#[derive(Debug)]
pub(crate) struct Joined {
    /// The program.
    pub(crate) program: std::path::PathBuf,
    /// `argv`, `argv[0]` included.
    pub(crate) argv: Vec<String>,
    /// Exactly its environment.
    pub(crate) env: std::collections::BTreeMap<String, String>,
    /// Its working directory.
    pub(crate) cwd: std::path::PathBuf,
    /// The `cgroup.procs` files it joins before it execs, open for writing.
    pub(crate) cgroup_procs: Vec<std::os::fd::OwnedFd>,
}

/// Why a process did not start.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The program (or the launcher) could not be started.
    Io(io::Error),
    /// The sandbox could not be set up: an infrastructure failure, with the launcher's reason.
    Setup(String),
    /// The warm slot failed (its warden gone or broken): an infrastructure failure, and the
    /// slot is not reused.
    Slot(String),
}

/// What a finished process left.
#[derive(Debug)]
pub(crate) struct Finished {
    /// The action's process: pid (in the host's pid namespace) and start time.
    pub(crate) identity: procmesh_sys::ProcessIdentity,
    /// The network namespace lease, given back once the caller emptied the cgroup.
    pub(crate) netns: Option<procmesh_sys::sandbox::NetnsLease>,
    /// Why it ended.
    pub(crate) ending: Ending,
    /// Its exit and resource figures.
    pub(crate) exit: ExitInfo,
    /// The last bytes of its stdout.
    pub(crate) stdout_tail: Vec<u8>,
    /// The last bytes of its stderr.
    pub(crate) stderr_tail: Vec<u8>,
    /// In a warm slot whose init reported the action's end before it exited: that init, still
    /// tearing its namespaces down. The slot may be reused only once it was reaped.
    pub(crate) exiting: Option<Child>,
}

/// The last `cap` bytes of a stream, kept in at most `2 * cap` bytes (PA-8).
#[derive(Debug)]
pub(crate) struct Tail {
    buf: Vec<u8>,
    cap: usize,
}

impl Tail {
    /// An empty tail keeping `cap` bytes.
    pub(crate) fn new(cap: usize) -> Tail {
        Tail {
            buf: Vec::new(),
            cap,
        }
    }

    /// Appends `data`, forgetting what falls out of the window.
    pub(crate) fn push(&mut self, data: &[u8]) {
        if self.cap == 0 {
            return;
        }
        if data.len() >= self.cap {
            self.buf.clear();
            self.buf.extend_from_slice(&data[data.len() - self.cap..]);
            return;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() > 2 * self.cap {
            let cut = self.buf.len() - self.cap;
            self.buf.drain(..cut);
        }
    }

    /// The last `cap` bytes.
    pub(crate) fn into_bytes(mut self) -> Vec<u8> {
        if self.buf.len() > self.cap {
            let cut = self.buf.len() - self.cap;
            self.buf.drain(..cut);
        }
        self.buf
    }
}

/// Spawns `cmd` in its own process group, retrying ETXTBSY a few times.
async fn spawn(cmd: &mut Command) -> io::Result<(Child, procmesh_sys::Pipes)> {
    retry_busy(|| Child::spawn(cmd, Reap::KillGroupFirst)).await
}

/// Runs `spawn` again while it fails with ETXTBSY, a few times.
async fn retry_busy(
    mut spawn: impl FnMut() -> io::Result<(Child, procmesh_sys::Pipes)>,
) -> io::Result<(Child, procmesh_sys::Pipes)> {
    let mut tries = 0;
    loop {
        tries += 1;
        match spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < SPAWN_TRIES => {
                debug!(tries, "executable busy, spawning again");
                tokio::time::sleep(Duration::from_millis(10 * u64::from(tries))).await;
            }
            other => return other,
        }
    }
}

/// Sends SIGTERM to the group and returns when to SIGKILL it, or `None` if nothing is left to
/// signal (the leader was reaped) or the grace is zero (SIGKILL sent at once).
fn terminate(child: &Child, grace: Duration) -> Option<Instant> {
    if grace.is_zero() {
        kill(child);
        return None;
    }
    match child.signal_group(Signal::SIGTERM) {
        Ok(true) => Some(Instant::now() + grace),
        Ok(false) => None,
        Err(error) => {
            warn!(%error, pid = child.pid(), "SIGTERM to the action's group failed; sending SIGKILL");
            kill(child);
            None
        }
    }
}

fn kill(child: &Child) {
    if let Err(error) = child.signal_group(Signal::SIGKILL) {
        warn!(%error, pid = child.pid(), "SIGKILL to the action's group failed");
    }
}

/// Runs `cmd` to its end. `started` is called right after the spawn with the pid. A cancel
/// request already present in `cancel` stops the process at once; the `timeout` (from the
/// spawn) stops it with `grace` between SIGTERM and SIGKILL. An error means it could not be
/// started.
pub(crate) async fn execute(
    start: Start,
    tail_bytes: usize,
    timeout: Option<Duration>,
    grace: Duration,
    cancel: &mut watch::Receiver<Option<CancelRequest>>,
    started: impl FnOnce(u32),
) -> Result<Finished, StartError> {
    let (child, pipes, identity, netns, verdict) = match start {
        Start::Plain(mut cmd) => {
            let (child, pipes) = spawn(&mut cmd).await.map_err(StartError::Io)?;
            let identity = *child.identity();
            (child, pipes, identity, None, None)
        }
        Start::Joined(what) => {
            let joined = procmesh_sys::Joined {
                program: &what.program,
                argv: &what.argv,
                env: &what.env,
                cwd: &what.cwd,
                cgroup_procs: &what.cgroup_procs,
            };
            let (child, pipes) =
                retry_busy(|| procmesh_sys::spawn_joined(&joined, Reap::KillGroupFirst))
                    .await
                    .map_err(StartError::Io)?;
            let identity = *child.identity();
            (child, pipes, identity, None, None)
        }
        Start::Warm { slot, launch } => {
            // Whatever goes wrong here is the slot's (the host's) fault, not the action's.
            let sandboxed = slot.launch(&launch).await.map_err(|e| match e {
                procmesh_sys::sandbox::SpawnError::Start(e) => {
                    StartError::Slot(format!("the warm slot: {e}"))
                }
                procmesh_sys::sandbox::SpawnError::Setup(reason) => StartError::Setup(reason),
            })?;
            let identity = procmesh_sys::ProcessIdentity {
                pid: sandboxed.started.pid,
                start_time: sandboxed.started.start_time,
            };
            (
                sandboxed.child,
                sandboxed.pipes,
                identity,
                None,
                sandboxed.verdict,
            )
        }
        Start::Sandboxed { exe, spec, netns } => {
            let sandboxed = procmesh_sys::sandbox::spawn(&exe, &spec, netns.as_ref())
                .await
                .map_err(|e| match e {
                    procmesh_sys::sandbox::SpawnError::Start(e) => StartError::Io(e),
                    procmesh_sys::sandbox::SpawnError::Setup(reason) => StartError::Setup(reason),
                })?;
            let identity = procmesh_sys::ProcessIdentity {
                pid: sandboxed.started.pid,
                start_time: sandboxed.started.start_time,
            };
            (sandboxed.child, sandboxed.pipes, identity, netns, None)
        }
    };
    started(identity.pid);
    let start = Instant::now();

    let mut stdout = pipes.stdout;
    let mut stderr = pipes.stderr;
    let (mut out_tail, mut err_tail) = (Tail::new(tail_bytes), Tail::new(tail_bytes));
    let (mut out_buf, mut err_buf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);

    let mut ending = Ending::Exited;
    let mut kill_at: Option<Instant> = None;
    let deadline = timeout.map(|t| start + t);
    let mut stopping = false;
    let mut cancel_open = true;
    let mut exit: Option<ExitInfo> = None;
    let mut drain_until = Instant::now();

    // A cancel that arrived before the spawn.
    if let Some(request) = cancel.borrow_and_update().clone() {
        stopping = true;
        kill_at = terminate(&child, request.grace);
        ending = Ending::Cancelled(request);
    }

    let wait = child.wait();
    tokio::pin!(wait);
    // In a warm slot, A reports F's end before its namespaces are torn down: the attempt ends
    // there, and A is reaped after (the slot waits for it, not the report).
    let mut verdict = verdict;
    let mut reported_open = verdict.is_some();
    let mut early = false;
    loop {
        if exit.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        tokio::select! {
            info = &mut wait, if exit.is_none() => {
                exit = Some(info);
                drain_until = Instant::now() + DRAIN;
            }
            info = async { verdict.as_mut().expect("guarded").recv().await },
                if reported_open && exit.is_none() => {
                reported_open = false;
                if let Some(info) = info {
                    exit = Some(info);
                    early = true;
                    drain_until = Instant::now() + DRAIN;
                }
            }
            read = async { stdout.as_mut().expect("guarded").read(&mut out_buf).await },
                if stdout.is_some() => match read {
                    Ok(n) if n > 0 => out_tail.push(&out_buf[..n]),
                    _ => stdout = None,
                },
            read = async { stderr.as_mut().expect("guarded").read(&mut err_buf).await },
                if stderr.is_some() => match read {
                    Ok(n) if n > 0 => err_tail.push(&err_buf[..n]),
                    _ => stderr = None,
                },
            changed = cancel.changed(), if cancel_open && exit.is_none() => match changed {
                Ok(()) => {
                    let request = cancel.borrow_and_update().clone();
                    if let Some(request) = request {
                        // PA-3: a cancel wins over a timeout already being enforced.
                        if !matches!(ending, Ending::Cancelled(_)) {
                            if !stopping {
                                kill_at = terminate(&child, request.grace);
                            }
                            stopping = true;
                            ending = Ending::Cancelled(request);
                        }
                    }
                }
                Err(_) => cancel_open = false,
            },
            () = sleep_until(deadline.unwrap_or(start)), if deadline.is_some() && !stopping && exit.is_none() => {
                stopping = true;
                let after = timeout.unwrap_or_default();
                debug!(after_ms = after.as_millis() as u64, "timed out");
                ending = Ending::TimedOut(after);
                kill_at = terminate(&child, grace);
            }
            () = sleep_until(kill_at.unwrap_or(start)), if kill_at.is_some() && exit.is_none() => {
                debug!("grace period over: SIGKILL");
                kill_at = None;
                kill(&child);
            }
            () = sleep_until(drain_until), if exit.is_some() => {
                warn!(pid = child.pid(), "the action's pipes stayed open after it exited (a process escaped its group?)");
                break;
            }
        }
    }
    let exit = match exit {
        Some(exit) => exit,
        None => wait.await,
    };
    // A exited first (it was killed, or reported just as it died): F's status if A wrote it.
    let exit = match verdict {
        Some(verdict) if !early => verdict.resolve(exit).await,
        _ => exit,
    };
    Ok(Finished {
        identity,
        netns,
        ending,
        exit,
        stdout_tail: out_tail.into_bytes(),
        stderr_tail: err_tail.into_bytes(),
        exiting: early.then(|| child.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Attests PA-8
    #[test]
    fn tails_keep_the_last_bytes() {
        let all: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in [1, 7, 100, 1000, 5000] {
            let mut tail = Tail::new(1024);
            for piece in all.chunks(chunk) {
                tail.push(piece);
                assert!(tail.buf.len() <= 2 * 1024);
            }
            assert_eq!(tail.into_bytes(), &all[all.len() - 1024..], "chunk {chunk}");
        }
        let mut short = Tail::new(1024);
        short.push(b"abc");
        assert_eq!(short.into_bytes(), b"abc");
        let mut none = Tail::new(0);
        none.push(b"abc");
        assert!(none.into_bytes().is_empty());
    }
}
