//! H, the helper: the runner's binary re-executed with [`HELPER_ARG`](super::HELPER_ARG),
//! single-threaded. Reads the spec, joins the cgroups (SBX-7) and the pooled network namespace,
//! clones E into the new namespaces, writes E's id maps, relays E's reports to the runner and
//! finally mirrors the action's wait status (SBX-5).
//!
//! E ↔ H pipe messages (E → H): `S` + `i32` F's pid inside, `F` + `u32` length + reason,
//! `W` + `i32` F's wait status. H → E: `G` (maps written, go on), `A` (the runner knows F's pid;
//! E may start reaping).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{
    init, wire, HelperRequest, IdMap, Report, SandboxSpec, SlotSpec, Started, SETUP_FAILED_EXIT,
};
use crate::procfs::ProcessIdentity;

/// `"<what>: <errno text>"` for the last OS error.
pub(super) fn os_err(what: impl std::fmt::Display) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// `Err(os_err(what))` when a libc call returned a negative value.
pub(super) fn check(r: libc::c_long, what: impl std::fmt::Display) -> Result<libc::c_long, String> {
    if r < 0 {
        Err(os_err(what))
    } else {
        Ok(r)
    }
}

/// A close-on-exec pipe: (read end, write end).
pub(super) fn pipe() -> Result<(File, File), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }.into(),
        "pipe",
    )?;
    // SAFETY: both fds are fresh and owned by nobody else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Waits for `pid`, retrying on EINTR; the raw wait status.
pub(super) fn wait_for(pid: libc::pid_t) -> libc::c_int {
    let mut status = 0;
    loop {
        // SAFETY: valid pointer to a local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return status;
        }
    }
}

/// A fork-like raw `clone` with `flags` (namespaces, `CLONE_PARENT`; never `CLONE_VM`), the
/// child returning 0 on a copy of the caller's stack. `Ok(0)` in the child, the child's pid in
/// the caller.
///
/// # Safety
/// The caller is single-threaded, and the child never returns into code that assumes it is
/// the caller (it ends in `exec` or `_exit`).
pub(super) unsafe fn raw_clone(flags: libc::c_int, what: &str) -> Result<libc::pid_t, String> {
    // SAFETY: per the contract; a null stack makes the child run on a copy of this one.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    check(pid, what).map(|pid| pid as libc::pid_t)
}

/// SBX-4: the calling process is SIGKILLed when its parent (thread) dies.
pub(super) fn die_with_parent() {
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
}

/// The helper's entry point; never returns.
pub(super) fn main() -> ! {
    // SBX-4: the helper dies with the runner's spawner thread.
    die_with_parent();
    // SAFETY: plain signal calls on this single-threaded process.
    unsafe {
        // SBX-6: the group's SIGTERM/SIGINT is for the action; E forwards it.
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let ctl = match take_control_socket() {
        Ok(fd) => fd,
        Err(reason) => {
            eprintln!("procmesh sandbox helper: {reason}");
            std::process::exit(SETUP_FAILED_EXIT)
        }
    };
    let outcome = read_request(&ctl).and_then(|(request, fds)| match request {
        HelperRequest::Action(spec) => run(&ctl, &spec, fds.into_iter().next()).map(Some),
        HelperRequest::Slot { spec, netns } => {
            let mut fds = fds.into_iter();
            let netns = if netns { fds.next() } else { None };
            let pid = run_slot(&ctl, &spec, netns, fds.collect())?;
            let _ = report(&ctl, &Report::SlotReady { pid });
            Ok(None)
        }
    });
    match outcome {
        Ok(Some(status)) => mirror(status),
        Ok(None) => std::process::exit(0),
        Err(reason) => {
            let _ = report(&ctl, &Report::SetupFailed { reason });
            std::process::exit(SETUP_FAILED_EXIT)
        }
    }
}

/// Moves the control socket off stdin to a high close-on-exec fd; stdin becomes /dev/null.
fn take_control_socket() -> Result<OwnedFd, String> {
    // SAFETY: fcntl duplicates fd 0 into a fresh fd we then own.
    let fd = check(
        unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 100) }.into(),
        "moving the control socket",
    )?;
    // SAFETY: fresh fd from fcntl.
    let ctl = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    let null = File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?;
    // SAFETY: dup2 onto fd 0, which we no longer need.
    check(
        unsafe { libc::dup2(null.as_raw_fd(), 0) }.into(),
        "stdin from /dev/null",
    )?;
    Ok(ctl)
}

fn read_request(ctl: &OwnedFd) -> Result<(HelperRequest, Vec<OwnedFd>), String> {
    let (body, fds) = wire::recv_frame_fds(ctl.as_raw_fd(), wire::MAX_SPEC)
        .map_err(|e| format!("reading the sandbox spec: {e}"))?;
    let request = serde_json::from_slice(&body).map_err(|e| format!("bad sandbox spec: {e}"))?;
    Ok((request, fds))
}

/// H's checks before it clones anything: its runner is its parent, and it is single-threaded.
fn check_helper(parent_pid: u32) -> Result<(), String> {
    // SAFETY: getppid cannot fail.
    let parent = unsafe { libc::getppid() };
    if parent as u32 != parent_pid {
        return Err(format!("the runner (pid {parent_pid}) is gone"));
    }
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads != 1 {
        return Err(format!(
            "the helper has {threads} threads: run_helper_if_asked must run first in main"
        ));
    }
    Ok(())
}

/// Joins the lent network namespace, if any (before any new user namespace: joining needs
/// the host's privileges).
fn join_netns(netns: Option<OwnedFd>) -> Result<bool, String> {
    let fresh_net = netns.is_none();
    if let Some(fd) = netns {
        // SAFETY: setns on an fd we own; affects only this (single-threaded) process.
        check(
            unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) }.into(),
            "joining the network namespace",
        )?;
    }
    Ok(fresh_net)
}

/// Starts a slot's warden W (SBX-10) as the runner's child in new user and mount (and, unless
/// one is lent, network) namespaces, writes its id maps, and waits until its base root is
/// built; W's pid.
fn run_slot(
    ctl: &OwnedFd,
    spec: &SlotSpec,
    netns: Option<OwnedFd>,
    cgroup_procs: Vec<OwnedFd>,
) -> Result<u32, String> {
    check_helper(spec.parent_pid)?;
    let fresh_net = join_netns(netns)?;
    let ctl_w = ctl
        .try_clone()
        .map_err(|e| format!("the control socket: {e}"))?;
    let (go_r, mut go_w) = pipe()?;
    let (mut up_r, up_w) = pipe()?;
    let mut flags = libc::CLONE_PARENT | libc::CLONE_NEWUSER | libc::CLONE_NEWNS;
    if fresh_net {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: H is single-threaded; the child never returns from `warden::main`.
    let w = unsafe { raw_clone(flags, "clone into the slot's namespaces") }?;
    if w == 0 {
        drop(go_w);
        drop(up_r);
        // SAFETY: W serves on its own copy; closing H's is ours to do.
        unsafe { libc::close(ctl.as_raw_fd()) };
        super::warden::main(ctl_w, spec, cgroup_procs, fresh_net, go_r, up_w)
    }
    drop((go_r, up_w, ctl_w, cgroup_procs));
    // W is the runner's child (CLONE_PARENT): if it fails here, it is killed, and the runner
    // reaps it (it is not tracked yet: the next orphan scan does).
    let kill_w = |reason: String| {
        // SAFETY: W is an unreaped child of our parent, not yet known to anyone else.
        unsafe { libc::kill(w, libc::SIGKILL) };
        reason
    };
    write_maps(w, (spec.uid, spec.gid)).map_err(kill_w)?;
    go_w.write_all(b"G")
        .map_err(|err| kill_w(format!("starting the slot's warden: {err}")))?;
    let mut tag = [0u8; 1];
    match up_r.read_exact(&mut tag) {
        Ok(()) if tag[0] == b'R' => Ok(w as u32),
        Ok(()) if tag[0] == b'F' => Err(kill_w(read_reason(&mut up_r))),
        _ => Err(kill_w("the slot's warden died while it started".into())),
    }
}

fn report(ctl: &OwnedFd, report: &Report) -> io::Result<()> {
    let body = serde_json::to_vec(report).map_err(io::Error::other)?;
    wire::send_frame(ctl.as_raw_fd(), &body, None)
}

/// Sets up, runs the action, and returns its raw wait status.
fn run(ctl: &OwnedFd, spec: &SandboxSpec, netns: Option<OwnedFd>) -> Result<libc::c_int, String> {
    check_helper(spec.parent_pid)?;
    // SBX-7: the whole tree starts in the action's cgroups.
    let me = std::process::id();
    for procs in &spec.cgroup_procs {
        std::fs::write(procs, format!("{me}\n"))
            .map_err(|e| format!("joining cgroup {}: {e}", procs.display()))?;
    }
    let fresh_net = join_netns(netns)?;
    let (go_r, mut go_w) = pipe()?;
    let (mut up_r, up_w) = pipe()?;
    let mut flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    if fresh_net {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: H is single-threaded; the child never returns from `init::main`.
    let e = unsafe { raw_clone(flags, "clone into new namespaces") }?;
    if e == 0 {
        drop(go_w);
        drop(up_r);
        // SAFETY: E does not use the control socket; closing its copy is ours to do.
        unsafe { libc::close(ctl.as_raw_fd()) };
        init::main(spec, fresh_net, go_r, up_w)
    }
    drop(go_r);
    drop(up_w);
    let kill_e = |reason: String| {
        // SAFETY: E is our unreaped child.
        unsafe { libc::kill(e, libc::SIGKILL) };
        wait_for(e);
        reason
    };
    write_maps(e, (spec.uid, spec.gid)).map_err(kill_e)?;
    go_w.write_all(b"G")
        .map_err(|err| kill_e(format!("starting the sandbox init: {err}")))?;

    // Setup: E reports either F's pid inside or why it failed.
    let mut tag = [0u8; 1];
    if up_r.read_exact(&mut tag).is_err() {
        let status = wait_for(e);
        return Err(format!(
            "the sandbox init died during setup ({})",
            describe(status)
        ));
    }
    match tag[0] {
        b'S' => {}
        b'F' => {
            let reason = read_reason(&mut up_r);
            wait_for(e);
            return Err(reason);
        }
        other => return Err(kill_e(format!("bad message {other} from the sandbox init"))),
    }
    let inner_pid = read_i32(&mut up_r).map_err(|err| kill_e(format!("sandbox init: {err}")))?;
    let host_pid = find_action(e, inner_pid).map_err(kill_e)?;
    // F is unreaped until we ack, so the pid still names it.
    let identity = ProcessIdentity::of(host_pid).map_err(|err| kill_e(format!("{err}")))?;
    let started = Started {
        pid: host_pid,
        start_time: identity.start_time,
    };
    // A runner that no longer listens has killed us or will: carry on regardless.
    let _ = report(ctl, &Report::Started(started));
    let _ = go_w.write_all(b"A");

    // Running: E reports F's wait status once F exits (SBX-4).
    let status = match up_r.read_exact(&mut tag) {
        Ok(()) if tag[0] == b'W' => read_i32(&mut up_r).ok(),
        _ => None,
    };
    let e_status = wait_for(e);
    Ok(status.unwrap_or(e_status))
}

fn write_maps(e: libc::pid_t, (uid, gid): (IdMap, IdMap)) -> Result<(), String> {
    // SAFETY: geteuid/getegid cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let write = |file: &str, text: String| {
        let path = format!("/proc/{e}/{file}");
        std::fs::write(&path, &text).map_err(|err| format!("writing {path} ({text:?}): {err}"))
    };
    if gid.outside.is_none() {
        // Unprivileged: a gid map may only be written once setgroups is denied.
        write("setgroups", "deny".into())?;
    }
    let uid_out = uid.outside.unwrap_or(euid);
    let gid_out = gid.outside.unwrap_or(egid);
    write("uid_map", format!("{} {uid_out} 1\n", uid.inside))?;
    write("gid_map", format!("{} {gid_out} 1\n", gid.inside))
}

fn read_i32(r: &mut File) -> io::Result<i32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(i32::from_le_bytes(b))
}

fn read_reason(r: &mut File) -> String {
    let mut len = [0u8; 4];
    if r.read_exact(&mut len).is_err() {
        return "the sandbox init failed without a reason".into();
    }
    let mut buf = vec![0u8; (u32::from_le_bytes(len) as usize).min(64 << 10)];
    let _ = r.read_exact(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The host pid of E's child whose pid inside is `inner`.
pub(super) fn find_action(e: libc::pid_t, inner: i32) -> Result<u32, String> {
    let listed = std::fs::read_to_string(format!("/proc/{e}/task/{e}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_else(|_| crate::procfs::children_of(e as u32));
    for pid in listed {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let last = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|p| p.parse::<i32>().ok());
        if last == Some(inner) {
            return Ok(pid);
        }
    }
    Err(format!("cannot find the action (pid {inner} inside)"))
}

fn describe(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status}")
    }
}

/// Exits as the action did (SBX-5): its exit code, or death by its signal without a core.
fn mirror(status: libc::c_int) -> ! {
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status));
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: plain libc calls on locals; this process has nothing left to do.
        unsafe {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
        std::process::exit(128 + sig);
    }
    std::process::exit(128)
}
