//! The zygote: a copy of the process forked before any thread exists, which starts sandbox
//! helpers by `clone(CLONE_PARENT)` instead of the runner exec'ing the binary for each action.
//! The helper is then a child of the runner (who reaps it), with the same code as an exec'd one.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};

use super::wire;

static ZYGOTE: OnceLock<Mutex<UnixStream>> = OnceLock::new();

/// Forks the zygote. Call before any thread exists (first thing after argument parsing).
pub fn start_zygote() -> io::Result<()> {
    let (ours, theirs) = UnixStream::pair()?;
    // SAFETY: no other thread exists yet (the caller's contract), so fork is safe.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        drop(ours);
        serve(theirs)
    }
    drop(theirs);
    crate::child::tracked()
        .lock()
        .expect("tracked lock")
        .insert(pid as u32);
    let _ = ZYGOTE.set(Mutex::new(ours));
    Ok(())
}

/// Whether a zygote serves this process.
pub(crate) fn available() -> bool {
    ZYGOTE.get().is_some()
}

/// Asks the zygote for a helper with `ctl` as stdin and `out`/`err` as stdout/stderr; its pid.
/// Blocking; the caller holds the spawn phase (SYS-3) until the pid is tracked.
pub(crate) fn start_helper(ctl: OwnedFd, out: OwnedFd, err: OwnedFd) -> io::Result<u32> {
    let sock = ZYGOTE
        .get()
        .ok_or_else(|| io::Error::other("no zygote"))?
        .lock()
        .map_err(|_| io::Error::other("zygote lock poisoned"))?;
    for fd in [&ctl, &out, &err] {
        wire::send_frame(sock.as_raw_fd(), b"fd", Some(fd.as_raw_fd()))?;
    }
    let (reply, _) = wire::recv_frame(sock.as_raw_fd(), 64)?;
    let text = String::from_utf8_lossy(&reply);
    text.strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::other(format!("zygote: {text}")))
}

fn serve(sock: UnixStream) -> ! {
    // SAFETY: plain prctl in this single-threaded child.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    loop {
        let mut fds = Vec::with_capacity(3);
        for _ in 0..3 {
            match wire::recv_frame(sock.as_raw_fd(), 16) {
                Ok((_, Some(fd))) => fds.push(fd),
                // The runner is gone (EOF) or broke the protocol: nothing more to serve.
                _ => std::process::exit(0),
            }
        }
        let reply = match clone_helper(&fds) {
            Ok(pid) => format!("pid {pid}"),
            Err(e) => format!("clone failed: {e}"),
        };
        drop(fds);
        if wire::send_frame(sock.as_raw_fd(), reply.as_bytes(), None).is_err() {
            std::process::exit(0);
        }
    }
}

fn clone_helper(fds: &[OwnedFd]) -> io::Result<libc::pid_t> {
    // SAFETY: a fork-like clone of this single-threaded process; the child only dups fds and
    // runs the helper, which is written for a fresh single-threaded process.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: dup2 onto the standard fds, then a new process group, as the exec'd helper
        // gets from its spawn.
        unsafe {
            for (fd, to) in fds.iter().zip(0..3) {
                libc::dup2(fd.as_raw_fd(), to);
            }
            libc::setpgid(0, 0);
        }
        // SAFETY: the originals are not needed once duplicated (and must not reach the action).
        for fd in fds {
            if fd.as_raw_fd() > 2 {
                unsafe { libc::close(fd.as_raw_fd()) };
            }
        }
        super::helper::main()
    }
    Ok(pid as libc::pid_t)
}
