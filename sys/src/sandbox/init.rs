//! E, the sandbox's init (pid 1 of the new pid namespace), and F, the action before `execve`.
//!
//! E is a fork-like raw clone of the single-threaded helper, so it may allocate; it never
//! returns into the helper's code: [`main`] ends in `_exit`. Because the raw clone leaves
//! glibc's cached thread id stale, E avoids `raise`/`abort`; F is forked with libc's `fork`.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::panic::AssertUnwindSafe;

use super::helper::{check, os_err, pipe, wait_for};
use super::{mounts, netns, seccomp, IdMap, SandboxSpec};

/// The signals E forwards to every process in the namespace (SBX-6).
const FORWARDED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

extern "C" fn noop(_: libc::c_int) {}

/// E's entry point; never returns. Waits for H's go (the id maps are written), then builds the
/// whole sandbox and runs the action.
pub(super) fn main(spec: &SandboxSpec, fresh_net: bool, go: File, up: File) -> ! {
    serve(
        true,
        || {
            setup(spec, fresh_net)?;
            Launch::of(spec)
        },
        go,
        up,
    )
}

/// Acts as the init of a fresh pid namespace for one action, and never returns: blocks the
/// forwarded signals, waits for the go if `wait_go`, runs `setup` (which returns what F
/// execs), forks F, reports `S` + F's pid (or `F` + why not) on `up`, waits for the ack on
/// `go`, reaps until F exits and reports `W` + its wait status.
pub(super) fn serve(
    wait_go: bool,
    setup: impl FnOnce() -> Result<Launch, String>,
    go: File,
    up: File,
) -> ! {
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| run(wait_go, setup, go, up)));
    // SAFETY: _exit ends this process without running the helper's destructors.
    unsafe { libc::_exit(i32::from(r.is_err())) }
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain old data initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a local set.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

fn run(wait_go: bool, setup: impl FnOnce() -> Result<Launch, String>, mut go: File, mut up: File) {
    let mut watched = FORWARDED.to_vec();
    watched.push(libc::SIGCHLD);
    let set = signal_set(&watched);
    // SAFETY: prctl, sigaction, sigprocmask and umask on this single-threaded process.
    unsafe {
        // SBX-4: the namespace dies with H (E's parent is outside, so getppid says 0; if H is
        // already gone, the read of `go` below sees EOF).
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        // SBX-6: pid 1 drops signals it has no handler for, even from the parent namespace.
        for &s in &watched {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = noop as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(s, &act, std::ptr::null_mut());
        }
        // Blocked, then taken with sigwaitinfo: none is lost while E is busy.
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::umask(0);
    }
    let mut byte = [0u8; 1];
    if wait_go && (go.read_exact(&mut byte).is_err() || byte[0] != b'G') {
        return;
    }
    let failed = |up: &mut File, reason: String| {
        let mut msg = vec![b'F'];
        msg.extend_from_slice(&(reason.len() as u32).to_le_bytes());
        msg.extend_from_slice(reason.as_bytes());
        let _ = up.write_all(&msg);
    };
    let launch = match setup() {
        Ok(launch) => launch,
        Err(reason) => return failed(&mut up, reason),
    };
    let (mut err_r, err_w) = match pipe() {
        Ok(p) => p,
        Err(reason) => return failed(&mut up, reason),
    };
    let f = match spawn_action(&launch, &err_w) {
        Ok(f) => f,
        Err(reason) => return failed(&mut up, reason),
    };
    drop(err_w);
    // SBX-1: EOF with nothing read means execve succeeded (the pipe is close-on-exec).
    let mut reason = String::new();
    let _ = err_r.read_to_string(&mut reason);
    if !reason.is_empty() {
        wait_for(f);
        return failed(&mut up, reason);
    }
    // The action's stdout and stderr end with the action's processes, not with this init:
    // an exiting process releases its files only after its namespaces are torn down.
    // SAFETY: closes fds this process owns and no longer writes to.
    unsafe {
        libc::close(1);
        libc::close(2);
    }
    let mut msg = vec![b'S'];
    msg.extend_from_slice(&f.to_le_bytes());
    if up.write_all(&msg).is_err() || go.read_exact(&mut byte).is_err() {
        return; // H is gone; so is the namespace once E exits.
    }
    let (status, usage) = reap(f, &set);
    // 'W', F's wait status, then its CPU milliseconds and peak RSS bytes (F and what F reaped),
    // so the runner can finish the attempt before this namespace is torn down.
    let mut msg = vec![b'W'];
    msg.extend_from_slice(&status.to_le_bytes());
    let (cpu_ms, peak_rss_bytes) = crate::child::usage_figures(&usage);
    msg.extend_from_slice(&cpu_ms.to_le_bytes());
    msg.extend_from_slice(&peak_rss_bytes.to_le_bytes());
    let _ = up.write_all(&msg);
    // Returning exits E; the kernel kills what is left in the namespace (SBX-4).
}

/// Acts as init until F exits: reaps every child, forwards signals (SBX-6). F's wait status
/// and resource usage.
fn reap(f: libc::pid_t, set: &libc::sigset_t) -> (libc::c_int, libc::rusage) {
    loop {
        loop {
            let mut status = 0;
            // SAFETY: all-zero is a valid rusage.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointers to locals.
            let r = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut usage) };
            if r <= 0 {
                break;
            }
            if r == f {
                return (status, usage);
            }
        }
        // SAFETY: valid set; a null siginfo is allowed.
        let sig = unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) };
        if FORWARDED.contains(&sig) {
            // SAFETY: kill(-1) signals every process of this namespace but E itself.
            unsafe { libc::kill(-1, sig) };
        }
    }
}

/// Everything E does between the go and the fork of F.
fn setup(spec: &SandboxSpec, fresh_net: bool) -> Result<(), String> {
    let prepared = mounts::prepare(spec)?;
    become_inside((spec.uid, spec.gid))?;
    mounts::build(spec, prepared)?;
    enter(&spec.cwd, &spec.hostname)?;
    if fresh_net {
        netns::lo_up().map_err(|e| format!("bringing lo up: {e}"))?;
    }
    Ok(())
}

/// Moves into the working directory `cwd` and names the (new) uts namespace `hostname`.
pub(super) fn enter(cwd: &std::path::Path, hostname: &str) -> Result<(), String> {
    let c = CString::new(cwd.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: valid C string.
    check(
        unsafe { libc::chdir(c.as_ptr()) }.into(),
        format_args!("cwd {}", cwd.display()),
    )?;
    let name = hostname.as_bytes();
    // SAFETY: pointer and length of a live slice.
    check(
        unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }.into(),
        format_args!("hostname {hostname:?}"),
    )?;
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

fn capget() -> Result<[CapData; 2], String> {
    let mut head = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: v3 header and two data structs, as the kernel expects.
    check(
        unsafe { libc::syscall(libc::SYS_capget, &mut head, data.as_mut_ptr()) },
        "capget",
    )?;
    Ok(data)
}

fn capset(data: [CapData; 2]) -> Result<(), String> {
    let mut head = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: v3 header and two data structs, as the kernel expects.
    check(
        unsafe { libc::syscall(libc::SYS_capset, &mut head, data.as_ptr()) },
        "capset",
    )?;
    Ok(())
}

/// Raw system calls, not libc's wrappers: those would try to reach every thread of the
/// process, and F shares its memory with its parent.
fn set_ids(u: u32, g: u32) -> Result<(), String> {
    // SAFETY: plain syscalls.
    check(
        unsafe { libc::syscall(libc::SYS_setresgid, g, g, g) },
        format_args!("setresgid({g})"),
    )?;
    // SAFETY: plain syscalls.
    check(
        unsafe { libc::syscall(libc::SYS_setresuid, u, u, u) },
        format_args!("setresuid({u})"),
    )?;
    Ok(())
}

/// E takes the inside ids, keeping its capabilities: files it creates in the new tmpfs need a
/// mapped owner, host paths were opened before (mounts::prepare).
pub(super) fn become_inside(spec_ids: (IdMap, IdMap)) -> Result<(), String> {
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1 as libc::c_ulong, 0, 0, 0) }.into(),
        "keepcaps",
    )?;
    set_ids(spec_ids.0.inside, spec_ids.1.inside)?;
    let mut caps = capget()?;
    for c in &mut caps {
        c.effective = c.permitted;
    }
    capset(caps)
}

/// What F needs, prepared before it starts (F allocates nothing): what to execve, the
/// identity to take, the signals to reset, the seccomp program.
pub(super) struct Launch {
    program: CString,
    /// Owns what `argv` and `envp` point into.
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    uid: IdMap,
    gid: IdMap,
    seccomp: Option<Vec<libc::sock_filter>>,
    /// Whether F empties the bounding and ambient capability sets itself (a slot's warden
    /// did it once for all its actions: SBX-10).
    drop_bounding: bool,
    /// Every signal whose disposition F sets back to the default.
    reset_signals: Vec<libc::c_int>,
}

impl Launch {
    /// F's launch for the one-shot `spec`.
    fn of(spec: &SandboxSpec) -> Result<Launch, String> {
        Launch::new(
            &spec.program,
            &spec.args,
            &spec.env,
            (spec.uid, spec.gid),
            spec.seccomp,
        )
    }

    /// `program` with `argv` (`argv[0]` included) and exactly `env`, run as `ids` (uid, gid),
    /// under the seccomp deny-list if `seccomp`.
    pub(super) fn new(
        program: &std::path::Path,
        args: &[String],
        env: &[(String, String)],
        ids: (IdMap, IdMap),
        seccomp: bool,
    ) -> Result<Launch, String> {
        let c = |s: &[u8]| CString::new(s).map_err(|_| format!("NUL byte in {s:?}"));
        let args: Vec<CString> = args
            .iter()
            .map(|a| c(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let env: Vec<CString> = env
            .iter()
            .map(|(k, v)| c(format!("{k}={v}").as_bytes()))
            .collect::<Result<_, _>>()?;
        let pointers = |strings: &[CString]| {
            let mut v: Vec<*const libc::c_char> = strings.iter().map(|a| a.as_ptr()).collect();
            v.push(std::ptr::null());
            v
        };
        let (argv, envp) = (pointers(&args), pointers(&env));
        let mut strings = args;
        strings.extend(env);
        Ok(Launch {
            program: c(program.as_os_str().as_bytes())?,
            _strings: strings,
            argv,
            envp,
            uid: ids.0,
            gid: ids.1,
            seccomp: seccomp.then(seccomp::program),
            drop_bounding: true,
            reset_signals: changed_signals(),
        })
    }

    /// F leaves the bounding and ambient sets alone: they are empty already (SBX-10).
    pub(super) fn bounding_dropped(mut self) -> Launch {
        self.drop_bounding = false;
        self
    }
}

/// The signals whose disposition is not the default in this process (F resets them).
fn changed_signals() -> Vec<libc::c_int> {
    (1..=libc::SIGRTMAX())
        .filter(|&sig| sig != libc::SIGKILL && sig != libc::SIGSTOP)
        .filter(|&sig| {
            // SAFETY: sigaction with a null new action only reads the current one.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            let r = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
            r != 0 || old.sa_sigaction != libc::SIG_DFL
        })
        .collect()
}

/// SBX-2: empties the bounding set (needs CAP_SETPCAP), up to the kernel's last capability,
/// and the ambient set.
pub(super) fn drop_bounding_set() -> Result<(), String> {
    // SAFETY: prctl with integer arguments.
    unsafe {
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                    break;
                }
                return Err(os_err(format_args!("dropping capability {cap}")));
            }
        }
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
            .into(),
            "clearing ambient capabilities",
        )?;
    }
    Ok(())
}

/// The stack F runs on until it execs.
const F_STACK: usize = 256 * 1024;

/// What F's entry point is handed.
struct ForF<'a> {
    launch: &'a Launch,
    err: libc::c_int,
}

/// Starts F with `clone(CLONE_VM | CLONE_VFORK)` on a stack of its own: F shares this
/// process's memory until it execs (nothing is copied for it, nothing torn down at its exec),
/// and this process waits meanwhile. F only makes system calls and, on failure, writes its
/// reason to `err` and `_exit`s. F's pid.
fn spawn_action(launch: &Launch, err: &File) -> Result<libc::pid_t, String> {
    // Not zeroed: F touches (and so faults in) only the pages it uses.
    let mut stack: Vec<u8> = Vec::with_capacity(F_STACK);
    // The stack grows down: its top, 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + F_STACK) & !15;
    let arg = ForF {
        launch,
        err: err.as_raw_fd(),
    };
    // SAFETY: `action` runs on `stack`, which outlives F's use of it (CLONE_VFORK: this call
    // returns only once F has exec'd or exited); `arg` lives on this frame for as long.
    let f = unsafe {
        libc::clone(
            action,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &arg as *const ForF<'_> as *mut libc::c_void,
        )
    };
    drop(stack);
    check(f.into(), "starting the action").map(|f| f as libc::pid_t)
}

/// F: drops everything (SBX-2) and execs the action; on failure writes why to `err` and exits.
extern "C" fn action(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `spawn_action` passes a live ForF and waits until F execs or exits.
    let ForF { launch, err } = unsafe { &*(arg as *const ForF<'_>) };
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| drop_and_exec(launch)));
    let reason = match r {
        Ok(Err(reason)) => reason,
        _ => "the action's setup panicked".into(),
    };
    // SAFETY: writes a live buffer to the error pipe, then ends F without running any of
    // this process's destructors (F shares its memory).
    unsafe {
        libc::write(*err, reason.as_ptr().cast(), reason.len());
        libc::_exit(127)
    }
}

fn drop_and_exec(launch: &Launch) -> Result<(), String> {
    // SAFETY: plain syscalls on this single-threaded child; every pointer is to a live local.
    unsafe {
        for &sig in &launch.reset_signals {
            libc::signal(sig, libc::SIG_DFL);
        }
        let none = signal_set(&[]);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // SBX-6: out of H's process group, so the group's signals reach it once, through E.
        check(libc::setsid().into(), "setsid")?;
        if launch.gid.outside.is_some() {
            check(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                "setgroups([])",
            )?;
        }
        if launch.drop_bounding {
            drop_bounding_set()?;
        }
        set_ids(launch.uid.inside, launch.gid.inside)?;
        capset([CapData::default(); 2])?;
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0).into(),
            "no_new_privs",
        )?;
        // Nothing but stdin/stdout/stderr crosses into the action (the error pipe is
        // close-on-exec).
        libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int);
        if let Some(filter) = &launch.seccomp {
            seccomp::install(filter)?;
        }
        libc::execve(
            launch.program.as_ptr(),
            launch.argv.as_ptr(),
            launch.envp.as_ptr(),
        );
    }
    Err(os_err(format_args!(
        "exec {}",
        launch.program.to_string_lossy()
    )))
}
