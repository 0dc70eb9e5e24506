//! The baselines every suite measures its figures against, in the same run: raw spawning of a
//! trivial binary, spawning after `unshare(2)`, and the Ray-free peer, bubblewrap.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{median, Row};

/// The trivial worker: a copy of `true`, run by path.
pub(super) fn trivial_binary() -> anyhow::Result<PathBuf> {
    ["/bin/true", "/usr/bin/true"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("no `true` binary for the trivial worker")
}

pub(super) fn raw_spawn_ready(bin: &Path, n: usize) -> anyhow::Result<f64> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let out = std::process::Command::new(bin).arg("--version").output()?;
        anyhow::ensure!(out.status.success(), "{} --version failed", bin.display());
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(&mut samples))
}

pub(super) fn raw_spawn_rate(
    worker: &Path,
    concurrency: usize,
    budget: Duration,
) -> anyhow::Result<f64> {
    let worker = worker.to_path_buf();
    spawn_rate(concurrency, budget, move || {
        std::process::Command::new(&worker)
    })
}

/// The naive isolated baseline: like [`raw_spawn_rate`], but each child calls
/// `unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID)` before it execs the
/// worker — fresh namespaces per action and nothing else (no root, no binds, no cgroup).
pub(super) fn naive_isolated_rate(
    worker: &Path,
    concurrency: usize,
    budget: Duration,
) -> anyhow::Result<f64> {
    use std::os::unix::process::CommandExt as _;
    let worker = worker.to_path_buf();
    spawn_rate(concurrency, budget, move || {
        let mut cmd = std::process::Command::new(&worker);
        // SAFETY: unshare(2) is a plain system call, async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                let flags = libc::CLONE_NEWUSER
                    | libc::CLONE_NEWNS
                    | libc::CLONE_NEWNET
                    | libc::CLONE_NEWPID;
                if libc::unshare(flags) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        cmd
    })
}

/// Where the bubblewrap peer is looked for (Debian's `bubblewrap`).
const BWRAP: &str = "/usr/bin/bwrap";

/// The bubblewrap peer's figure, or why there is none.
pub(super) enum Bwrap {
    /// Runs per second.
    PerS(f64),
    /// No `/usr/bin/bwrap` on this machine.
    NotInstalled,
    /// bwrap is installed but could not run the action here: why.
    Failed(String),
}

impl Bwrap {
    /// Runs per second, if measured.
    pub(super) fn per_s(&self) -> Option<f64> {
        match self {
            Bwrap::PerS(r) => Some(*r),
            _ => None,
        }
    }

    /// A table row of `ours` against bwrap with this `goal`; without a figure, the row says why.
    pub(super) fn row(&self, what: &'static str, ours: f64, goal: &'static str) -> Row {
        let raw = self.per_s().unwrap_or(f64::NAN);
        Row {
            what,
            ours,
            raw,
            unit: "1/s",
            ratio: ours / raw,
            goal: match self {
                Bwrap::PerS(_) => goal,
                Bwrap::NotInstalled => "bwrap not installed",
                Bwrap::Failed(_) => "bwrap failed (see below)",
            },
        }
    }

    /// Prints why bwrap failed, if it did.
    pub(super) fn print_failure(&self) {
        if let Bwrap::Failed(why) = self {
            println!("{why}");
        }
    }
}

/// The Ray-free peer: like [`raw_spawn_rate`], but each run is bubblewrap starting `worker` with
/// `--unshare-all --die-with-parent`, read-only system binds (`/usr`; `/bin`, `/lib`, `/lib64`
/// as the host has them: symbolic links into `usr/`, else read-only binds), its own `/proc`,
/// `/dev` and a `/tmp` tmpfs.
pub(super) fn bwrap_rate(worker: &Path, concurrency: usize, budget: Duration) -> Bwrap {
    if !Path::new(BWRAP).is_file() {
        return Bwrap::NotInstalled;
    }
    let args = bwrap_args(worker);
    // One run first, so that a bwrap that cannot work here says why at once.
    let probe = std::process::Command::new(BWRAP)
        .args(&args)
        .env_clear()
        .output();
    match probe {
        Err(e) => return Bwrap::Failed(format!("bwrap failed: {e}")),
        Ok(out) if !out.status.success() => {
            return Bwrap::Failed(format!(
                "bwrap failed: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Ok(_) => {}
    }
    let rate = spawn_rate(concurrency, budget, move || {
        let mut cmd = std::process::Command::new(BWRAP);
        cmd.args(&args);
        cmd
    });
    match rate {
        Ok(r) => Bwrap::PerS(r),
        Err(e) => Bwrap::Failed(format!("bwrap failed: {e:#}")),
    }
}

/// bwrap's arguments for running `worker` (see [`bwrap_rate`]).
fn bwrap_args(worker: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = ["--unshare-all", "--die-with-parent"]
        .iter()
        .chain(&["--ro-bind", "/usr", "/usr"])
        .map(Into::into)
        .collect();
    for dir in ["/bin", "/lib", "/lib64"] {
        match std::fs::read_link(dir) {
            Ok(target) => args.extend(["--symlink".into(), target.into(), dir.into()]),
            Err(_) if Path::new(dir).is_dir() => {
                args.extend(["--ro-bind".into(), dir.into(), dir.into()]);
            }
            Err(_) => {}
        }
    }
    args.extend(
        ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
            .iter()
            .map(Into::into),
    );
    args.push(worker.into());
    args
}

/// `concurrency` threads looping `Command::output()` of what `command` builds, for `budget`;
/// runs per second. Every child runs with an empty environment, as actions do (PA-10).
fn spawn_rate(
    concurrency: usize,
    budget: Duration,
    command: impl Fn() -> std::process::Command + Clone + Send + 'static,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + budget;
    let started = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let command = command.clone();
            std::thread::spawn(move || -> std::io::Result<u64> {
                let mut n = 0;
                while Instant::now() < deadline {
                    let mut cmd = command();
                    cmd.env_clear();
                    let out = cmd.output()?;
                    if !out.status.success() {
                        return Err(std::io::Error::other(format!(
                            "baseline run failed: {:?}: {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr).trim()
                        )));
                    }
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in threads {
        total += t
            .join()
            .map_err(|_| anyhow::anyhow!("baseline spawner panicked"))??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bwrap_runs_the_worker_last_with_read_only_system_binds() {
        let args = bwrap_args(Path::new("/bin/true"));
        let text: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            text[..5],
            [
                "--unshare-all",
                "--die-with-parent",
                "--ro-bind",
                "/usr",
                "/usr"
            ]
        );
        assert_eq!(text.last().unwrap(), "/bin/true");
        assert!(text.windows(2).any(|w| w == ["--tmpfs", "/tmp"]));
    }
}
