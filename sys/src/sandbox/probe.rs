//! [`probe`]: can this kernel give us the sandbox's namespaces?

use std::ffi::CString;
use std::io;

/// Whether this kernel lets this process create the sandbox's namespaces (user, mount, pid,
/// ipc, uts, network) and map its own ids in the new user namespace. Safe to call from a
/// multi-threaded process: the probe child only makes raw syscalls, then `_exit`s. The error
/// names the sysctl or LSM setting that most likely refused it.
pub fn probe() -> Result<(), String> {
    // SAFETY: geteuid/getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // Everything the child touches is prepared before the clone: it must not allocate.
    let files = [
        (
            c"/proc/self/setgroups",
            CString::new("deny").expect("no NUL"),
        ),
        (
            c"/proc/self/uid_map",
            CString::new(format!("0 {uid} 1")).expect("no NUL"),
        ),
        (
            c"/proc/self/gid_map",
            CString::new(format!("0 {gid} 1")).expect("no NUL"),
        ),
    ];
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET
        | libc::SIGCHLD;
    // SAFETY: a fork-like raw clone; the child only calls open/write/close/_exit (async-signal
    // safe) on data prepared above, so it is sound even in a multi-threaded parent.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        for (i, (path, text)) in files.iter().enumerate() {
            // SAFETY: raw syscalls on prepared C strings.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                let bytes = text.as_bytes();
                let ok = fd >= 0 && libc::write(fd, bytes.as_ptr().cast(), bytes.len()) >= 0;
                if !ok {
                    libc::_exit(10 + i as libc::c_int);
                }
                libc::close(fd);
            }
        }
        // SAFETY: _exit ends the probe child.
        unsafe { libc::_exit(0) }
    }
    if pid < 0 {
        let e = io::Error::last_os_error();
        return Err(format!(
            "cannot create the sandbox namespaces: {e}{}",
            hints()
        ));
    }
    let status = super::helper::wait_for(pid as libc::pid_t);
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        return Ok(());
    }
    let step = match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
        Some(10) => "writing setgroups",
        Some(11) => "writing uid_map",
        Some(12) => "writing gid_map",
        _ => "the probe child",
    };
    Err(format!(
        "a new user namespace is unusable ({step} failed, status {status}){}",
        hints()
    ))
}

/// The settings that commonly forbid user namespaces, with their current values.
fn hints() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let mut out = Vec::new();
    if let Some(v) = read("/proc/sys/kernel/unprivileged_userns_clone") {
        if v == "0" {
            out.push("kernel.unprivileged_userns_clone = 0".to_string());
        }
    }
    if let Some(v) = read("/proc/sys/user/max_user_namespaces") {
        if v == "0" {
            out.push("user.max_user_namespaces = 0".to_string());
        }
    }
    if let Some(v) = read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") {
        if v != "0" {
            out.push(format!(
                "AppArmor restricts them (kernel.apparmor_restrict_unprivileged_userns = {v})"
            ));
        }
    }
    if out.is_empty() {
        "; check kernel.unprivileged_userns_clone, user.max_user_namespaces and \
         kernel.apparmor_restrict_unprivileged_userns, or a container's seccomp profile"
            .into()
    } else {
        format!("; {}", out.join(", "))
    }
}
