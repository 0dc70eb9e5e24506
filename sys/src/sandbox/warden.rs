//! W, a warm slot's warden, and A, the init of one action started by it (SBX-10).
//!
//! ```text
//!  H (helper) ─clone(PARENT|USER|NS[|NET])─▶ W   the runner's child; kuid of the runner, no
//!                                            │   mapped inside id, every capability in the
//!                                            │   slot's user namespace
//!     B (a fork of W, inside ids) builds the base root on `root` in W's mount namespace
//!  per action, on W's control socket:        │
//!     ActionLaunch + [stdout, stderr, status] ─clone(PARENT|NS|PID|IPC|UTS)─▶ A (pid 1)
//!  A: joins the slot's cgroups, fresh /proc /tmp /dev/shm, the action's binds, pivot_root,
//!     cwd, hostname ─fork─▶ F (setsid, ids, no caps, seccomp, execve) ─ the action
//! ```
//!
//! W keeps the runner's kernel uid (unmapped inside): host paths resolve as the runner's user
//! — in A too, which opens the action's sandbox directory — and nothing W or A creates lands
//! in a filesystem of the slot (B, which creates the base root's files, takes the inside ids).
//! A is the runner's child (`CLONE_PARENT`), so the runner reaps it and signals its group;
//! it speaks the same `S`/`A`/`W` protocol on its status socket as E does on its pipes
//! (`init::serve`), and exits once F has exited, taking its pid namespace down.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

use super::helper::{check, die_with_parent, pipe, raw_clone, wait_for};
use super::init::{self, Launch};
use super::{mounts, netns, wire, Bind, SlotSpec};

/// One action as the runner asks a warden for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionLaunch {
    /// Absolute path of the program as seen inside, e.g. `/sandbox/bin/worker`.
    pub program: std::path::PathBuf,
    /// `argv`, `argv[0]` included.
    pub args: Vec<String>,
    /// Exactly the action's environment, nothing else.
    pub env: Vec<(String, String)>,
    /// Working directory inside, e.g. `/sandbox`.
    pub cwd: std::path::PathBuf,
    /// The action's own binds (host sources, inside targets), in order; each target's parent
    /// must exist (a mount point of the slot, or inside an earlier bind).
    pub binds: Vec<Bind>,
}

/// The fds a launch frame carries, in order: the action's stdout and stderr (write ends), and
/// its status socket.
pub(super) const LAUNCH_FDS: usize = 3;

/// W's entry point (a clone of H): waits for H's go, builds the base root, reports `R` (ready)
/// or `F` + reason on `up`, then serves launches on `ctl` until it closes. Never returns.
pub(super) fn main(
    ctl: OwnedFd,
    spec: &SlotSpec,
    cgroup_procs: Vec<OwnedFd>,
    fresh_net: bool,
    mut go: File,
    mut up: File,
) -> ! {
    // SBX-4: the warden dies with the runner.
    die_with_parent();
    // SAFETY: plain signal calls on this single-threaded process.
    unsafe {
        // Out of H's group: nothing aimed at H or an action reaches the warden.
        libc::setpgid(0, 0);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let mut byte = [0u8; 1];
    if go.read_exact(&mut byte).is_err() || byte[0] != b'G' {
        // SAFETY: _exit ends this process without running H's destructors.
        unsafe { libc::_exit(1) }
    }
    drop(go);
    // SBX-2, once for every action: the bounding and ambient sets are inherited down to F's
    // exec, and neither W nor A ever execs.
    match init::drop_bounding_set().and_then(|()| prepare(spec, fresh_net)) {
        Ok(()) => {
            let _ = up.write_all(b"R");
        }
        Err(reason) => {
            let mut msg = vec![b'F'];
            msg.extend_from_slice(&(reason.len() as u32).to_le_bytes());
            msg.extend_from_slice(reason.as_bytes());
            let _ = up.write_all(&msg);
            // SAFETY: as above.
            unsafe { libc::_exit(1) }
        }
    }
    drop(up);
    serve(&ctl, spec, &cgroup_procs);
    // SAFETY: as above.
    unsafe { libc::_exit(0) }
}

/// The base root (by B, with the inside ids) and `lo` of a fresh network namespace.
fn prepare(spec: &SlotSpec, fresh_net: bool) -> Result<(), String> {
    let base = spec.base();
    let prepared = mounts::prepare(&base)?;
    let (mut err_r, err_w) = pipe()?;
    // SAFETY: W is single-threaded; B only builds and exits with _exit.
    let b = unsafe { libc::fork() };
    if b < 0 {
        return Err(super::helper::os_err("fork"));
    }
    if b == 0 {
        drop(err_r);
        let mut err_w = err_w;
        let r = init::become_inside((spec.uid, spec.gid))
            .and_then(|()| mounts::build_base(&base, prepared, &spec.mount_points));
        let code = match r {
            Ok(()) => 0,
            Err(reason) => {
                let _ = err_w.write_all(reason.as_bytes());
                1
            }
        };
        // SAFETY: ends B without running W's destructors.
        unsafe { libc::_exit(code) }
    }
    drop(prepared);
    drop(err_w);
    let mut reason = String::new();
    let _ = err_r.read_to_string(&mut reason);
    let status = wait_for(b);
    if !reason.is_empty() {
        return Err(reason);
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(format!("building the slot's root failed (status {status})"));
    }
    if fresh_net {
        netns::lo_up().map_err(|e| format!("bringing lo up: {e}"))?;
    }
    Ok(())
}

/// Serves launches until the control socket closes or breaks.
fn serve(ctl: &OwnedFd, spec: &SlotSpec, cgroup_procs: &[OwnedFd]) {
    loop {
        let Ok((body, fds)) = wire::recv_frame_fds(ctl.as_raw_fd(), wire::MAX_SPEC) else {
            return;
        };
        let reply = match launch(ctl, spec, cgroup_procs, &body, fds) {
            Ok(pid) => format!("pid {pid}"),
            Err(reason) => format!("error {reason}"),
        };
        if wire::send_frame(ctl.as_raw_fd(), reply.as_bytes(), None).is_err() {
            return;
        }
    }
}

/// Clones A for one launch frame; A's pid (in the runner's pid namespace).
fn launch(
    ctl: &OwnedFd,
    spec: &SlotSpec,
    cgroup_procs: &[OwnedFd],
    body: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<libc::pid_t, String> {
    let launch: ActionLaunch =
        serde_json::from_slice(body).map_err(|e| format!("bad launch: {e}"))?;
    let Ok::<[OwnedFd; LAUNCH_FDS], _>([out, err, status]) = fds.try_into() else {
        return Err(format!("a launch carries {LAUNCH_FDS} fds"));
    };
    let flags = libc::CLONE_PARENT
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    // SAFETY: W is single-threaded; the child never returns from `action`.
    let a = unsafe { raw_clone(flags, "clone into the action's namespaces") }?;
    if a == 0 {
        // SAFETY: A does not use W's control socket.
        unsafe { libc::close(ctl.as_raw_fd()) };
        action(spec, &launch, cgroup_procs, out, err, status)
    }
    Ok(a)
}

/// A: the action's init. Never returns.
fn action(
    spec: &SlotSpec,
    launch: &ActionLaunch,
    cgroup_procs: &[OwnedFd],
    out: OwnedFd,
    err: OwnedFd,
    status: OwnedFd,
) -> ! {
    // SBX-4: the namespace dies with the runner (A's parent).
    die_with_parent();
    // SAFETY: plain calls on this single-threaded process and fds it owns.
    unsafe {
        libc::setpgid(0, 0);
        libc::dup2(out.as_raw_fd(), 1);
        libc::dup2(err.as_raw_fd(), 2);
    }
    drop((out, err));
    // SAFETY: the status socket is ours; the two Files share it (reads and writes).
    let up = unsafe { File::from_raw_fd(status.as_raw_fd()) };
    std::mem::forget(status);
    let go = match up.try_clone() {
        Ok(go) => go,
        // SAFETY: ends A.
        Err(_) => unsafe { libc::_exit(1) },
    };
    init::serve(
        false,
        || {
            // SBX-7: the whole tree is in the slot's cgroups before F exists.
            for fd in cgroup_procs {
                // SAFETY: writes a live buffer to an fd we hold.
                let n = unsafe { libc::write(fd.as_raw_fd(), b"0\n".as_ptr().cast(), 2) };
                check(n as libc::c_long, "joining the slot's cgroup")?;
            }
            mounts::enter_action(
                &spec.root,
                spec.tmp_bytes,
                (spec.uid.inside, spec.gid.inside),
                &launch.binds,
            )?;
            init::enter(&launch.cwd, &spec.hostname)?;
            Launch::new(
                &launch.program,
                &launch.args,
                &launch.env,
                (spec.uid, spec.gid),
                spec.seccomp,
            )
            .map(Launch::bounding_dropped)
        },
        go,
        up,
    )
}
