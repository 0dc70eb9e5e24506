//! Process controls: child subreaper, parent-death signal.

use std::io;

/// Makes this process a child subreaper: orphans among its descendants are re-parented to it
/// instead of to init, so it can kill and reap them.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// For `Command::pre_exec`: asks for `sig` when the parent dies, then fails the spawn if the
/// parent (`expected_parent`, the spawner's pid before the fork) is already gone.
///
/// # Safety
/// Only async-signal-safe calls are made (prctl, getppid), as `pre_exec` requires.
pub unsafe fn parent_death_signal(sig: i32, expected_parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != expected_parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}
