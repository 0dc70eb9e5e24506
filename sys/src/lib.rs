//! # procmesh-sys
//!
//! Linux process supervision shared by the host agent and the proc agent (which never depend
//! on each other): child handles on pidfds whose signals can never reach a reused pid,
//! resource usage of exited children, a long-lived spawner thread for parent-death signals,
//! child subreaping, and `/proc` inspection. Not a process manager: policies (grace periods,
//! who to kill when) belong to the callers.
//!
//! # Layout
//! - [`child`] — [`Child`]: spawn, signal, signal the group, wait (`SYS-n`).
//! - [`procfs`] — process identity (pid + start time), parents, children.
//! - [`prctl`] — subreaper, parent-death signal.
//! - [`cgroup`] — per-action cgroups (v1 and v2): limits, accounting, kill, leftovers.
//! - [`sandbox`] — the namespace sandbox launcher (user, mount, network, pid, ipc, uts).
//! - `spawner` — the long-lived spawner thread.
//! - [`joined`] — [`spawn_joined`]: a process in its cgroups before it execs, without copying
//!   the parent.
#![deny(missing_docs)]

pub mod cgroup;
pub mod child;
pub mod joined;
pub mod prctl;
pub mod procfs;
pub mod sandbox;
mod spawner;

pub use child::{Child, ExitInfo, Pipes, Reap};
pub use joined::{spawn_joined, Joined};
pub use procfs::ProcessIdentity;

/// SIGKILLs and reaps every child of this process that no [`Child`] tracks: orphans a
/// subreaper adopted from a dead descendant. Returns their pids. Use it only in a process whose
/// every child is spawned through [`Child`] (SYS-3).
pub fn reap_orphans() -> Vec<u32> {
    let _phase = child::spawn_phase().write().expect("spawn phase lock");
    let me = std::process::id();
    let orphans: Vec<u32> = {
        let tracked = child::tracked().lock().expect("tracked lock");
        procfs::children_of(me)
            .into_iter()
            .filter(|pid| !tracked.contains(pid))
            .collect()
    };
    for &pid in &orphans {
        // SAFETY: the pid is our child and unreaped (a zombie at worst), so it is still ours.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let mut status = 0;
        // Bounded: SIGKILL ends a process promptly; give up after ~2 s of polling.
        for _ in 0..200 {
            // SAFETY: valid pointer to a local.
            let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
            if r != 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    orphans
}
