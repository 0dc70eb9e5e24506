//! Warm slots, the runner's side (SBX-10): [`Slot::start`] builds a slot's namespaces and base
//! root once through a warden (`warden.rs`); [`Slot::launch`] runs one action in it, in fresh
//! pid, mount, ipc and uts namespaces with a fresh `/proc`, `/tmp` and `/dev/shm`.
//!
//! ```text
//!  runner ─zygote─▶ H ─clone─▶ W (warden, per slot)          once per slot
//!  runner ─launch frame + [stdout, stderr, status]─▶ W ─clone─▶ A ─fork─▶ F   per action
//!  runner ◀─"pid A"─ W          runner ◀─S/F, A▶, ◀─W─ A (status socket)
//! ```

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::helper::find_action;
use super::{
    wire, zygote, ActionLaunch, HelperRequest, KillOnDrop, NetnsLease, Report, Sandboxed, SlotSpec,
    SpawnError, Started, SPAWN_TIMEOUT,
};
use crate::child::{spawn_phase, tracked, Child, Pipes, Reap};
use crate::procfs::ProcessIdentity;
use crate::ExitInfo;

/// A warm slot: its warden, which holds the slot's namespaces and base root, and the network
/// namespace lent to it for its whole life (SBX-8). Dropping it ends the warden (its control
/// socket closes, and it is killed).
#[derive(Debug)]
pub struct Slot {
    warden: Child,
    ctl: Mutex<UnixStream>,
    _netns: Option<NetnsLease>,
}

impl Slot {
    /// Whether this process can start warm slots: they are cloned by the zygote
    /// ([`start_zygote`](super::start_zygote)), so that every process of a slot is the
    /// runner's child from its first instruction and tracked before an orphan scan can see it.
    pub fn available() -> bool {
        zygote::available()
    }

    /// Starts a slot: its user and mount namespaces (network too, unless `netns` lends one),
    /// the base root of `spec` on `spec.root`, and the cgroups whose `cgroup.procs` files
    /// `cgroup_procs` holds open for writing — every action of the slot joins them before it
    /// starts. Waits up to [`SPAWN_TIMEOUT`]. Must run inside a tokio runtime.
    pub async fn start(
        spec: &SlotSpec,
        netns: Option<NetnsLease>,
        cgroup_procs: Vec<OwnedFd>,
    ) -> Result<Slot, SpawnError> {
        if !Slot::available() {
            return Err(SpawnError::Start(io::Error::other(
                "warm slots need the sandbox zygote",
            )));
        }
        let mut spec = spec.clone();
        spec.parent_pid = std::process::id();
        let body = serde_json::to_vec(&HelperRequest::Slot {
            spec,
            netns: netns.is_some(),
        })
        .map_err(io::Error::other)?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        if let Some(lease) = &netns {
            fds.push(lease.fd().try_clone_to_owned()?);
        }
        fds.extend(cgroup_procs);
        if fds.len() > wire::MAX_FDS {
            return Err(SpawnError::Start(io::Error::other(
                "too many cgroup hierarchies for one slot",
            )));
        }
        let (ours, theirs) = UnixStream::pair()?;
        let started = tokio::task::spawn_blocking(move || -> Result<_, SpawnError> {
            // SYS-3: no orphan scan between H's clone and W's pid entering the tracked set.
            let _phase = spawn_phase().read().expect("spawn phase lock");
            let null = || -> io::Result<OwnedFd> {
                Ok(std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/null")?
                    .into())
            };
            let h = zygote::start_helper(OwnedFd::from(theirs), null()?, null()?)?;
            tracked().lock().expect("tracked lock").insert(h);
            ours.set_read_timeout(Some(SPAWN_TIMEOUT))?;
            ours.set_write_timeout(Some(SPAWN_TIMEOUT))?;
            let raw: Vec<_> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            let report = wire::send_frame_fds(ours.as_raw_fd(), &body, &raw)
                .and_then(|()| wire::recv_frame(ours.as_raw_fd(), wire::MAX_REPORT))
                .and_then(|(reply, _)| {
                    serde_json::from_slice::<Report>(&reply).map_err(io::Error::other)
                });
            let report = match report {
                Ok(Report::SlotReady { pid }) => {
                    tracked().lock().expect("tracked lock").insert(pid);
                    Ok(pid)
                }
                Ok(Report::SetupFailed { reason }) => Err(SpawnError::Setup(reason)),
                Ok(Report::Started(_)) => Err(SpawnError::Start(io::Error::other(
                    "the sandbox helper answered a slot with an action",
                ))),
                Err(e) => Err(SpawnError::Start(e)),
            };
            Ok((h, report, ours))
        })
        .await
        .map_err(io::Error::other)??;
        let (h, report, ours) = started;
        // H exits by itself once it reported; its reaper reaps it.
        let (helper, _) = Child::adopt_pid(h, Reap::Plain, Pipes::default())?;
        let w = match report {
            Ok(w) => w,
            Err(e) => {
                let _ = helper.signal(nix::sys::signal::Signal::SIGKILL);
                return Err(e);
            }
        };
        let (warden, _) = Child::adopt_pid(w, Reap::Plain, Pipes::default())?;
        ours.set_read_timeout(Some(SPAWN_TIMEOUT))?;
        ours.set_write_timeout(Some(SPAWN_TIMEOUT))?;
        Ok(Slot {
            warden,
            ctl: Mutex::new(ours),
            _netns: netns,
        })
    }

    /// Whether the warden still runs (a slot whose warden died cannot launch).
    pub fn is_alive(&self) -> bool {
        self.warden.try_wait().is_none()
    }

    /// The warden's pid.
    pub fn pid(&self) -> u32 {
        self.warden.pid()
    }

    /// Runs `launch` in this slot and waits (up to [`SPAWN_TIMEOUT`]) until the action runs.
    /// One launch at a time per slot, and the next only after the previous action's A has
    /// exited (its pid namespace gone): the caller's slot table sees to both.
    pub async fn launch(&self, launch: &ActionLaunch) -> Result<Sandboxed, SpawnError> {
        let body = serde_json::to_vec(launch).map_err(io::Error::other)?;
        let (out_r, out_w) = std::io::pipe()?;
        let (err_r, err_w) = std::io::pipe()?;
        let (status, theirs) = UnixStream::pair()?;
        let a = {
            // SYS-3: A is our child from its first instruction; tracked before any scan.
            let _phase = spawn_phase().read().expect("spawn phase lock");
            let ctl = self.ctl.lock().unwrap_or_else(|p| p.into_inner());
            let fds = [out_w.as_raw_fd(), err_w.as_raw_fd(), theirs.as_raw_fd()];
            wire::send_frame_fds(ctl.as_raw_fd(), &body, &fds)?;
            let (reply, _) = wire::recv_frame(ctl.as_raw_fd(), wire::MAX_REPORT)?;
            let reply = String::from_utf8_lossy(&reply);
            let pid: u32 = match reply.strip_prefix("pid ").and_then(|p| p.parse().ok()) {
                Some(pid) => pid,
                None => {
                    let reason = reply.strip_prefix("error ").unwrap_or(&reply);
                    return Err(SpawnError::Setup(reason.to_owned()));
                }
            };
            tracked().lock().expect("tracked lock").insert(pid);
            pid
        };
        drop((out_w, err_w, theirs));
        // A makes itself a group leader; doing it here too closes the window before it ran.
        // SAFETY: setpgid on our own unreaped child that never execs.
        unsafe { libc::setpgid(a as libc::pid_t, a as libc::pid_t) };
        let pipes = Pipes::output(OwnedFd::from(out_r), OwnedFd::from(err_r))?;
        let (child, pipes) = Child::adopt_pid(a, Reap::KillGroupFirst, pipes)?;
        // Until the action has started, a failure or a dropped future takes A down.
        let guard = KillOnDrop(Some(child.clone()));
        status.set_nonblocking(true)?;
        let mut status = tokio::net::UnixStream::from_std(status)?;
        let started = tokio::time::timeout(SPAWN_TIMEOUT, started(&mut status, a)).await;
        match started {
            Err(_) => Err(SpawnError::Start(io::Error::new(
                io::ErrorKind::TimedOut,
                "the action's init did not report in time",
            ))),
            Ok(Err(e)) => Err(e),
            Ok(Ok(started)) => {
                guard.disarm();
                Ok(Sandboxed {
                    child,
                    pipes,
                    started,
                    verdict: Some(Verdict::new(status)),
                })
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = self.warden.signal(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Reads A's `S` (F's pid inside) or `F` (why setup failed), acknowledges the start.
async fn started(status: &mut tokio::net::UnixStream, a: u32) -> Result<Started, SpawnError> {
    let tag = match status.read_u8().await {
        Ok(tag) => tag,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(SpawnError::Start(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the action's init exited before reporting",
            )))
        }
        Err(e) => return Err(SpawnError::Start(e)),
    };
    match tag {
        b'S' => {
            let inner = status.read_i32_le().await?;
            let pid = find_action(a as libc::pid_t, inner).map_err(SpawnError::Setup)?;
            let identity = ProcessIdentity::of(pid)?;
            status.write_all(b"A").await?;
            Ok(Started {
                pid,
                start_time: identity.start_time,
            })
        }
        b'F' => {
            let len = status.read_u32_le().await? as usize;
            let mut reason = vec![0u8; len.min(64 << 10)];
            status.read_exact(&mut reason).await?;
            Err(SpawnError::Setup(
                String::from_utf8_lossy(&reason).into_owned(),
            ))
        }
        other => Err(SpawnError::Start(io::Error::other(format!(
            "bad message {other} from the action's init"
        )))),
    }
}

/// How the action itself ended, as its init reported it: A is pid 1 of the action's pid
/// namespace and cannot die of the action's signal, so its own exit does not mirror F's
/// (SBX-5 holds through this instead).
#[derive(Debug)]
pub struct Verdict {
    status: tokio::net::UnixStream,
    /// A's report as read so far: `W`, F's wait status, CPU ms, peak RSS bytes.
    msg: [u8; VERDICT_LEN],
    got: usize,
}

/// The length of A's report on the status socket.
const VERDICT_LEN: usize = 21;

impl Verdict {
    fn new(status: tokio::net::UnixStream) -> Verdict {
        Verdict {
            status,
            msg: [0; VERDICT_LEN],
            got: 0,
        }
    }

    /// How the action ended, as A reported it when F exited: F's status, and its CPU time and
    /// peak RSS (F and what F reaped). `None` when A ended without reporting (it was killed, or
    /// the slot broke). A reports before its namespace is torn down, so this comes before A's
    /// own exit; the slot is reusable only once A was reaped. Cancel-safe: what was read is
    /// kept, and once complete the report is returned again.
    pub async fn recv(&mut self) -> Option<ExitInfo> {
        while self.got < VERDICT_LEN {
            match self.status.read(&mut self.msg[self.got..]).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.got += n,
            }
        }
        let msg = &self.msg;
        let u64_at = |i: usize| u64::from_le_bytes(msg[i..i + 8].try_into().expect("8 bytes"));
        (msg[0] == b'W').then(|| ExitInfo {
            status: crate::child::decode_status(i32::from_le_bytes([
                msg[1], msg[2], msg[3], msg[4],
            ])),
            cpu_ms: u64_at(5),
            peak_rss_bytes: u64_at(13),
        })
    }

    /// `info` (A's exit and rusage, which covers F and what A reaped) with F's exit status
    /// when A reported one; as it is when A died first (killed).
    pub async fn resolve(mut self, info: ExitInfo) -> ExitInfo {
        // A wrote it before it exited, and it has exited: the bytes are there or never come.
        match tokio::time::timeout(std::time::Duration::from_secs(1), self.recv()).await {
            Ok(Some(reported)) => ExitInfo {
                status: reported.status,
                ..info
            },
            _ => info,
        }
    }
}
