//! [`Child`]: a child process tracked by a pidfd.
//!
//! ```text
//!  spawn ─▶ pidfd_open (before anyone can reap) ─▶ reaper task: await pidfd readable (exited,
//!  still a zombie) ─▶ lock ─▶ [Reap::KillGroupFirst: SIGKILL the group] ─▶ wait4 (rusage) ─▶
//!  reaped = true ─▶ unlock ─▶ publish ExitInfo to every waiter
//! ```
//!
//! # Invariants
//! - **SYS-1** A signal never reaches a reused pid: `signal` goes through the pidfd, and
//!   `signal_group` runs under the same lock as reaping and only while the leader is unreaped
//!   (a zombie leader keeps its process group id from being reused).
//! - **SYS-2** Every tracked child is reaped exactly once, by its reaper task; `wait` returns the
//!   same `ExitInfo` to every caller.
//! - **SYS-3** A pid is in the tracked set from before any other thread can scan for orphans
//!   until after it is reaped, so [`reap_orphans`](crate::reap_orphans) never touches it.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use nix::sys::signal::Signal;
use procmesh_protocol::ExitStatus;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::procfs::ProcessIdentity;

/// How a child ended and what it used: rusage of `wait4`, i.e. the child and those of its
/// descendants it waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code or terminating signal.
    pub status: ExitStatus,
    /// User plus system CPU time, in milliseconds.
    pub cpu_ms: u64,
    /// Peak resident set size, in bytes.
    pub peak_rss_bytes: u64,
}

/// What to do when the child is seen to exit, before it is reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reap {
    /// Just reap it.
    Plain,
    /// SIGKILL its process group first (it must have been spawned with `process_group(0)`):
    /// whatever it left running in its group dies with it.
    KillGroupFirst,
}

/// The child's standard streams, ready for tokio.
#[derive(Debug, Default)]
pub struct Pipes {
    /// Its stdin, if piped.
    pub stdin: Option<tokio::process::ChildStdin>,
    /// Its stdout, if piped.
    pub stdout: Option<tokio::process::ChildStdout>,
    /// Its stderr, if piped.
    pub stderr: Option<tokio::process::ChildStderr>,
}

impl Pipes {
    /// The read ends of a child's stdout and stderr pipes, for tokio.
    pub fn output(stdout: OwnedFd, stderr: OwnedFd) -> io::Result<Pipes> {
        Ok(Pipes {
            stdin: None,
            stdout: Some(tokio::process::ChildStdout::from_std(
                std::process::ChildStdout::from(stdout),
            )?),
            stderr: Some(tokio::process::ChildStderr::from_std(
                std::process::ChildStderr::from(stderr),
            )?),
        })
    }
}

struct State {
    reaped: bool,
}

struct Inner {
    pid: u32,
    pidfd: OwnedFd,
    identity: ProcessIdentity,
    state: Mutex<State>,
    done: watch::Sender<Option<ExitInfo>>,
}

/// A child process tracked by a pidfd. Clones are handles to the same child.
#[derive(Clone)]
pub struct Child {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.inner.pid)
            .field("exit", &self.try_wait())
            .finish()
    }
}

/// Pids tracked by a `Child` (SYS-3). A pid leaves the set in the same critical section that
/// reaps it, so a reused pid is inserted only after its predecessor left.
pub(crate) fn tracked() -> &'static Mutex<HashSet<u32>> {
    static TRACKED: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    TRACKED.get_or_init(Default::default)
}

/// Spawners hold this shared, orphan scans exclusively: no scan runs between a spawn and the
/// insertion of its pid into [`tracked`] (SYS-3).
pub(crate) fn spawn_phase() -> &'static RwLock<()> {
    static PHASE: OnceLock<RwLock<()>> = OnceLock::new();
    PHASE.get_or_init(Default::default)
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// [`spawn_raw`] for the spawner thread.
pub(crate) fn spawn_raw_for_spawner(
    cmd: &mut Command,
) -> io::Result<(std::process::Child, OwnedFd)> {
    spawn_raw(cmd)
}

/// Spawns and opens the pidfd, registering the pid as tracked (SYS-3). Runs on any thread.
fn spawn_raw(cmd: &mut Command) -> io::Result<(std::process::Child, OwnedFd)> {
    let _phase = spawn_phase().read().expect("spawn phase lock");
    let child = cmd.spawn()?;
    // Nobody but our reaper reaps this child, so the pid still names it here.
    let pidfd = match pidfd_open(child.id()) {
        Ok(fd) => fd,
        Err(e) => {
            // Without a pidfd the child cannot be supervised safely: kill and reap it.
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    tracked().lock().expect("tracked lock").insert(child.id());
    Ok((child, pidfd))
}

struct BorrowedRaw(RawFd);
impl AsRawFd for BorrowedRaw {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Child {
    /// Spawns `cmd` on the calling thread, opens its pidfd at once, and starts reaping it in
    /// the background. Must run inside a tokio runtime. Do not use `tokio::process` in the same
    /// process: it reaps children its own way.
    pub fn spawn(cmd: &mut Command, reap: Reap) -> io::Result<(Child, Pipes)> {
        let (child, pidfd) = spawn_raw(cmd)?;
        Child::adopt(child, pidfd, reap)
    }

    /// Like [`spawn`](Self::spawn), but the fork happens on one long-lived dedicated thread, so
    /// that a parent-death signal set in `pre_exec` fires only when this whole process dies
    /// (`PR_SET_PDEATHSIG` follows the thread that forked).
    pub async fn spawn_on_long_lived_thread(
        cmd: Command,
        reap: Reap,
    ) -> io::Result<(Child, Pipes)> {
        let (child, pidfd) = crate::spawner::run(cmd).await?;
        Child::adopt(child, pidfd, reap)
    }

    fn adopt(
        mut child: std::process::Child,
        pidfd: OwnedFd,
        reap: Reap,
    ) -> io::Result<(Child, Pipes)> {
        let pid = child.id();
        let pipes = Pipes {
            stdin: child
                .stdin
                .take()
                .map(tokio::process::ChildStdin::from_std)
                .transpose()?,
            stdout: child
                .stdout
                .take()
                .map(tokio::process::ChildStdout::from_std)
                .transpose()?,
            stderr: child
                .stderr
                .take()
                .map(tokio::process::ChildStderr::from_std)
                .transpose()?,
        };
        // Dropping std's handle neither waits nor kills: the reaper owns the child now.
        drop(child);
        Ok((Child::supervise(pid, pidfd, reap), pipes))
    }

    /// Adopts a child of this process started by other means (the sandbox zygote's
    /// `CLONE_PARENT`): `pid` must be an unreaped child, already in the tracked set (SYS-3).
    pub(crate) fn adopt_pid(pid: u32, reap: Reap, pipes: Pipes) -> io::Result<(Child, Pipes)> {
        let pidfd = pidfd_open(pid)?;
        Ok((Child::supervise(pid, pidfd, reap), pipes))
    }

    /// Adopts the unreaped child `pid` whose `pidfd` the caller opened (`CLONE_PIDFD`),
    /// already in the tracked set (SYS-3).
    pub(crate) fn adopt_pidfd(
        pid: u32,
        pidfd: OwnedFd,
        reap: Reap,
        pipes: Pipes,
    ) -> (Child, Pipes) {
        (Child::supervise(pid, pidfd, reap), pipes)
    }

    /// The handle of the unreaped child `pid` with its `pidfd`, and its reaper task.
    fn supervise(pid: u32, pidfd: OwnedFd, reap: Reap) -> Child {
        let identity = ProcessIdentity::of(pid).unwrap_or(ProcessIdentity { pid, start_time: 0 });
        let (done, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            pid,
            pidfd,
            identity,
            state: Mutex::new(State { reaped: false }),
            done,
        });
        let task_inner = inner.clone();
        tokio::spawn(async move { reaper(task_inner, reap).await });
        Child { inner }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Pid and start time, taken at spawn.
    pub fn identity(&self) -> &ProcessIdentity {
        &self.inner.identity
    }

    /// Sends `sig` through the pidfd (SYS-1). `Ok(false)` if the child has already exited.
    pub fn signal(&self, sig: Signal) -> io::Result<bool> {
        let state = self.inner.state.lock().expect("child lock");
        if state.reaped {
            return Ok(false);
        }
        // SAFETY: the pidfd is open while `inner` lives; a null siginfo is allowed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.inner.pidfd.as_raw_fd(),
                sig as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        drop(state);
        delivered(r as libc::c_int)
    }

    /// Sends `sig` to the child's process group (spawned with `process_group(0)`), only while
    /// the leader is unreaped (SYS-1). `Ok(false)` if it was reaped or the group is empty.
    pub fn signal_group(&self, sig: Signal) -> io::Result<bool> {
        let state = self.inner.state.lock().expect("child lock");
        if state.reaped {
            return Ok(false);
        }
        // SAFETY: kill with a negative pid signals that process group.
        let r = unsafe { libc::kill(-(self.inner.pid as libc::pid_t), sig as libc::c_int) };
        drop(state);
        delivered(r)
    }

    /// Resolves once the child has exited and been reaped (SYS-2).
    pub async fn wait(&self) -> ExitInfo {
        let mut rx = self.inner.done.subscribe();
        loop {
            if let Some(info) = *rx.borrow_and_update() {
                return info;
            }
            if rx.changed().await.is_err() {
                // The reaper is gone without a result: cannot happen while `inner` lives.
                return ExitInfo {
                    status: ExitStatus::Signal(libc::SIGKILL),
                    cpu_ms: 0,
                    peak_rss_bytes: 0,
                };
            }
        }
    }

    /// The exit, if the child has been reaped.
    pub fn try_wait(&self) -> Option<ExitInfo> {
        *self.inner.done.borrow()
    }
}

/// A signal syscall's result: sent, nobody left to receive it (ESRCH), or an error.
fn delivered(r: libc::c_int) -> io::Result<bool> {
    if r == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        e => Err(e),
    }
}

pub(crate) fn decode_status(status: libc::c_int) -> ExitStatus {
    if libc::WIFEXITED(status) {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(-1)
    }
}

/// Reaps one child with `wait4`: `Ok(None)` if `nohang` and it has not exited yet.
fn wait4(pid: u32, nohang: bool) -> io::Result<Option<ExitInfo>> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if nohang { libc::WNOHANG } else { 0 };
    let r = loop {
        // SAFETY: valid pointers to locals.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, flags, &mut usage) };
        if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break r;
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if r == 0 {
        return Ok(None);
    }
    let (cpu_ms, peak_rss_bytes) = usage_figures(&usage);
    Ok(Some(ExitInfo {
        status: decode_status(status),
        cpu_ms,
        peak_rss_bytes,
    }))
}

/// User plus system CPU milliseconds and peak RSS bytes of a `wait4` rusage.
pub(crate) fn usage_figures(usage: &libc::rusage) -> (u64, u64) {
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    (
        ms(usage.ru_utime) + ms(usage.ru_stime),
        usage.ru_maxrss.max(0) as u64 * 1024,
    )
}

/// Kills the group if asked, reaps, and untracks, all in one critical section (SYS-1, SYS-3).
fn reap_now(inner: &Inner, reap: Reap, nohang: bool) -> io::Result<Option<ExitInfo>> {
    let mut state = inner.state.lock().expect("child lock");
    if reap == Reap::KillGroupFirst {
        // SYS-1: the leader is a zombie (or alive), so its group id is still its own.
        // SAFETY: kill with a negative pid signals that process group.
        unsafe { libc::kill(-(inner.pid as libc::pid_t), libc::SIGKILL) };
    }
    let mut tracked = tracked().lock().expect("tracked lock");
    let info = wait4(inner.pid, nohang)?;
    if info.is_some() {
        state.reaped = true;
        tracked.remove(&inner.pid);
    }
    Ok(info)
}

async fn reaper(inner: Arc<Inner>, reap: Reap) {
    // SAFETY: the pidfd stays open for as long as `inner` lives, which outlives this
    // registration (it is dropped at the end of the match below).
    let registered = unsafe {
        AsyncFd::register_with_interest(
            BorrowedRaw(inner.pidfd.as_raw_fd()),
            tokio::io::Interest::READABLE,
        )
    };
    let polled = match registered {
        // A pidfd becomes readable when the process exits (it is then a zombie).
        Ok(fd) => fd.readable().await.is_ok(),
        Err(error) => {
            tracing::warn!(%error, pid = inner.pid, "cannot poll pidfd; waiting on a thread");
            false
        }
    };
    let inline = if polled {
        reap_now(&inner, reap, true)
    } else {
        Ok(None)
    };
    let result = match inline {
        Ok(Some(info)) => Ok(info),
        _ => {
            let inner = inner.clone();
            tokio::task::spawn_blocking(move || reap_now(&inner, reap, false))
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .and_then(|r| r.ok_or_else(|| io::Error::other("wait4 returned nothing")))
        }
    };
    match result {
        Ok(info) => {
            inner.done.send_replace(Some(info));
        }
        Err(error) => tracing::error!(%error, pid = inner.pid, "reaping failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;
    use std::time::Duration;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]).stdin(Stdio::null());
        cmd
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exit_codes_signals_and_usage() {
        let (child, _) = Child::spawn(&mut sh("exit 7"), Reap::Plain).unwrap();
        assert_eq!(child.wait().await.status, ExitStatus::Code(7));
        // Every waiter sees the same exit (SYS-2). Attests SYS-2
        assert_eq!(child.clone().wait().await, child.try_wait().unwrap());

        let (child, _) = Child::spawn(&mut sh("kill -9 $$"), Reap::Plain).unwrap();
        assert_eq!(child.wait().await.status, ExitStatus::Signal(libc::SIGKILL));

        let burn = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done";
        let (child, _) = Child::spawn(&mut sh(burn), Reap::Plain).unwrap();
        let info = child.wait().await;
        assert!(info.cpu_ms > 10, "{info:?}");
        assert!(info.peak_rss_bytes > 100 * 1024, "{info:?}");
    }

    // Attests SYS-1
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signals_after_exit_are_refused() {
        let mut cmd = sh("sleep 30 & sleep 30; wait");
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let (child, _) = Child::spawn(&mut cmd, Reap::KillGroupFirst).unwrap();
        let pid = child.pid();
        assert!(child.identity().start_time > 0);
        // The whole group goes, not only the leader.
        assert!(child.signal_group(Signal::SIGTERM).unwrap());
        let info = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap();
        assert_eq!(info.status, ExitStatus::Signal(libc::SIGTERM));
        assert!(!child.signal(Signal::SIGKILL).unwrap());
        assert!(!child.signal_group(Signal::SIGKILL).unwrap());
        assert!(crate::procfs::children_of(std::process::id())
            .iter()
            .all(|&p| p != pid));
        assert!(!tracked().lock().unwrap().contains(&pid));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_long_lived_thread_spawns_with_a_parent_death_signal() {
        let mut cmd = sh("exit 3");
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: parent_death_signal only makes async-signal-safe calls.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || crate::prctl::parent_death_signal(libc::SIGTERM, parent));
        }
        let (child, _) = Child::spawn_on_long_lived_thread(cmd, Reap::Plain)
            .await
            .unwrap();
        assert_eq!(child.wait().await.status, ExitStatus::Code(3));
    }
}
