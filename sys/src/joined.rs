//! [`spawn_joined`]: a plain process started in its cgroups from its first instruction, without
//! copying the (large, multi-threaded) parent.
//!
//! ```text
//!  parent: prepare everything (C strings, pointer arrays, fds) ─ block every signal ─
//!    clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD) on a stack of its own ─ wait (vfork) ─
//!    restore the signal mask ─ read the child's errno, if any
//!  child:  signals back to their defaults ─ own process group ─ stdin /dev/null, stdout and
//!          stderr pipes ─ cwd ─ `0` into every cgroup.procs ─ the parent's mask ─ execve
//! ```
//!
//! The child shares the parent's memory until it execs: it allocates nothing, takes no lock
//! and makes only system calls (the shape of glibc's `posix_spawn`), so other threads of the
//! parent may run meanwhile. A `pre_exec` hook on `std::process::Command` would make std fork
//! the whole parent instead. CG-8 holds: the child writes itself into its cgroups before it
//! execs.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::child::{spawn_phase, tracked, Child, Pipes, Reap};

/// The stack the child runs on until it execs.
const STACK: usize = 64 * 1024;

/// What to start.
#[derive(Debug, Clone)]
pub struct Joined<'a> {
    /// The program, e.g. `/var/lib/procmesh/procs/p/sandboxes/7-1/bin/worker`.
    pub program: &'a Path,
    /// `argv`, `argv[0]` included.
    pub argv: &'a [String],
    /// Exactly its environment.
    pub env: &'a BTreeMap<String, String>,
    /// Its working directory.
    pub cwd: &'a Path,
    /// The `cgroup.procs` files it joins before it execs, open for writing
    /// ([`ActionCgroup::open_procs`](crate::cgroup::ActionCgroup::open_procs)).
    pub cgroup_procs: &'a [OwnedFd],
}

/// What the child reads: all prepared by the parent.
struct Plan {
    program: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: CString,
    null: libc::c_int,
    out: libc::c_int,
    err: libc::c_int,
    cgroups: Vec<libc::c_int>,
    mask: libc::sigset_t,
    /// 0, or the errno of the step that failed.
    errno: AtomicI32,
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `what` in its own process group with stdin `/dev/null` and piped stdout and stderr,
/// in its cgroups before it execs (CG-8), and supervises it like [`Child::spawn`]. Must run
/// inside a tokio runtime.
pub fn spawn_joined(what: &Joined<'_>, reap: Reap) -> io::Result<(Child, Pipes)> {
    let strings = |items: &mut dyn Iterator<Item = Vec<u8>>| -> io::Result<Vec<CString>> {
        items.map(|s| cstring(&s)).collect()
    };
    let args = strings(&mut what.argv.iter().map(|a| a.as_bytes().to_vec()))?;
    let env = strings(
        &mut what
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}").into_bytes()),
    )?;
    let pointers = |strings: &[CString]| {
        let mut v: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        v.push(std::ptr::null());
        v
    };
    let null: OwnedFd = std::fs::File::open("/dev/null")?.into();
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    // SAFETY: sigset_t is plain old data, filled by sigfillset.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a local set.
    unsafe { libc::sigfillset(&mut all) };
    let mut plan = Plan {
        program: cstring(what.program.as_os_str().as_bytes())?,
        argv: pointers(&args),
        envp: pointers(&env),
        cwd: cstring(what.cwd.as_os_str().as_bytes())?,
        null: null.as_raw_fd(),
        out: out_w.as_raw_fd(),
        err: err_w.as_raw_fd(),
        cgroups: what.cgroup_procs.iter().map(AsRawFd::as_raw_fd).collect(),
        // SAFETY: zeroed, then filled by pthread_sigmask below.
        mask: unsafe { std::mem::zeroed() },
        errno: AtomicI32::new(0),
    };
    // Not zeroed: the child faults in only the pages it uses.
    let mut stack: Vec<u8> = Vec::with_capacity(STACK);
    let top = (stack.as_mut_ptr() as usize + STACK) & !15;
    let mut pidfd: libc::c_int = -1;

    let pid = {
        // SYS-3: tracked before any orphan scan can see it.
        let _phase = spawn_phase().read().expect("spawn phase lock");
        // SAFETY: blocks every signal on this thread (the child starts with it and restores
        // the parent's mask right before it execs: no handler of ours runs in the child).
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut plan.mask) };
        // SAFETY: `child` runs on `stack` with `plan`, both alive until this call returns
        // (CLONE_VFORK: once the child has exec'd or exited); the pidfd lands in `pidfd`.
        let pid = unsafe {
            libc::clone(
                child,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
                &plan as *const Plan as *mut libc::c_void,
                &mut pidfd as *mut libc::c_int,
            )
        };
        let clone_error = io::Error::last_os_error();
        // SAFETY: restores this thread's mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &plan.mask, std::ptr::null_mut()) };
        if pid < 0 {
            return Err(clone_error);
        }
        tracked().lock().expect("tracked lock").insert(pid as u32);
        pid as u32
    };
    drop(stack);
    // SAFETY: CLONE_PIDFD stored a fresh pidfd for the child.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((out_w, err_w, null));
    let errno = plan.errno.load(Ordering::SeqCst);
    let pipes = Pipes::output(out_r, err_r)?;
    let (child, pipes) = Child::adopt_pidfd(pid, pidfd, reap, pipes);
    if errno != 0 {
        // It exited without exec'ing: its reaper reaps it.
        drop(child);
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok((child, pipes))
}

/// The child, on its own stack, sharing the parent's memory: system calls only.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `spawn_joined` passes a live Plan and waits until this child execs or exits.
    let plan = unsafe { &*(arg as *const Plan) };
    let fail = |plan: &Plan| -> ! {
        plan.errno.store(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
            Ordering::SeqCst,
        );
        // SAFETY: ends the child without running anything of the parent's.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: plain system calls on fds and buffers the parent keeps alive.
    unsafe {
        for sig in 1..libc::SIGRTMAX() + 1 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
            {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        if libc::setpgid(0, 0) != 0
            || libc::dup2(plan.null, 0) < 0
            || libc::dup2(plan.out, 1) < 0
            || libc::dup2(plan.err, 2) < 0
            || libc::chdir(plan.cwd.as_ptr()) != 0
        {
            fail(plan)
        }
        for &fd in &plan.cgroups {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(plan)
            }
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &plan.mask, std::ptr::null_mut());
        libc::execve(
            plan.program.as_ptr(),
            plan.argv.as_ptr(),
            plan.envp.as_ptr(),
        );
    }
    fail(plan)
}
