//! Joining a cgroup at exec time, for processes started without the sandbox launcher: the child
//! writes `0` ("myself") into each `cgroup.procs` between fork and exec, so it is in the cgroup
//! before its first instruction and nothing it forks can start outside (CG-8).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;

/// Makes `cmd`'s child join the cgroups whose `cgroup.procs` files are `procs_files` before it
/// execs (CG-8). The files are opened here, in the parent; the child only calls `write(2)` on
/// them, which is async-signal-safe. A failed write fails the spawn with that error.
pub fn join_on_exec(cmd: &mut Command, procs_files: &[PathBuf]) -> io::Result<()> {
    let files: Vec<File> = procs_files
        .iter()
        .map(|path| {
            OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        })
        .collect::<io::Result<_>>()?;
    // SAFETY: the hook only calls write(2) on file descriptors opened above (kept alive by the
    // closure), with a static buffer; no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || {
            for file in &files {
                let fd = file.as_raw_fd();
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}
