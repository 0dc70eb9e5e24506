//! cgroup v2: one hierarchy; controllers are delegated down through `cgroup.subtree_control`,
//! and `cgroup.kill` (or `cgroup.freeze`) stops a tree for killing.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use super::files::{self, write_existing};
use super::{
    cpu_quota_us, validate_name, ActionCgroup, CgroupError, CgroupLimits, CgroupVersion, Cgroups,
    Placement, CPU_PERIOD_US,
};

/// The controllers every action cgroup gets.
const NEEDED: [&str; 3] = ["cpu", "memory", "pids"];

pub(super) fn open_base(mount_root: &Path, own: &Path, name: &str) -> Result<Cgroups, CgroupError> {
    validate_name(name)?;
    let own = relative(own)?;
    let available = words(&files::read(&mount_root.join("cgroup.controllers"))?);
    let missing: Vec<&str> = NEEDED
        .into_iter()
        .filter(|c| !available.iter().any(|a| a == c))
        .collect();
    if !missing.is_empty() {
        return Err(CgroupError::Unsupported {
            missing: format!(
                "cgroup2 mount {} does not offer {}",
                mount_root.display(),
                missing.join(", ")
            ),
        });
    }
    let base = if own.as_os_str().is_empty() {
        open_under(mount_root, &own, name)?
    } else if !files::read_pids(&mount_root.join(&own)).is_empty() {
        // No internal processes: a cgroup with processes cannot delegate to children.
        tracing::info!(own = %own.display(), "own cgroup has processes; base goes under the mount root");
        open_under(mount_root, Path::new(""), name)?
    } else {
        match open_under(mount_root, &own, name) {
            Err(CgroupError::NoDelegation { path, reason }) => {
                tracing::warn!(path = %path.display(), %reason, "cannot delegate below own cgroup; base goes under the mount root");
                open_under(mount_root, Path::new(""), name)?
            }
            other => other?,
        }
    };
    Ok(Cgroups {
        version: CgroupVersion::V2,
        bases: vec![Placement {
            controllers: NEEDED.iter().map(|c| (*c).to_owned()).collect(),
            dir: base,
        }],
    })
}

/// Enables the controllers from the mount root down to `<root>/<parent>`, then opens or
/// creates the base below it and enables them there too (for the actions).
fn open_under(root: &Path, parent: &Path, name: &str) -> Result<PathBuf, CgroupError> {
    let mut dir = root.to_path_buf();
    enable(&dir)?;
    for part in parent.components() {
        dir.push(part);
        enable(&dir)?;
    }
    let base = dir.join(name);
    let made = files::mkdir_or_open(&base)?;
    if let Err(error) = enable(&base) {
        if made {
            files::rmdir_all_quiet(std::slice::from_ref(&base));
        }
        return Err(error);
    }
    Ok(base)
}

/// Makes `dir`'s children get cpu, memory and pids: writes those missing from its
/// `cgroup.subtree_control` (nothing if all are there, so a delegated tree's root-owned
/// ancestors are only read).
fn enable(dir: &Path) -> Result<(), CgroupError> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = words(&files::read(&control)?);
    let missing: Vec<&str> = NEEDED
        .into_iter()
        .filter(|c| !enabled.iter().any(|e| e == c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let available = words(&files::read(&dir.join("cgroup.controllers"))?);
    let unavailable: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|c| !available.iter().any(|a| a == c))
        .collect();
    if !unavailable.is_empty() {
        return Err(CgroupError::NoDelegation {
            path: dir.to_path_buf(),
            reason: format!("its parent does not delegate {}", unavailable.join(", ")),
        });
    }
    let request: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
    match files::write_raw(&control, &request.join(" ")) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(CgroupError::NoDelegation {
            path: dir.to_path_buf(),
            reason: "it has processes of its own (no internal processes rule)".into(),
        }),
        Err(e) => Err(files::io_err("write", &control, e)),
    }
}

/// Controller names in a `cgroup.controllers` / `cgroup.subtree_control` file (a leading `+`
/// tolerated).
fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| w.trim_start_matches('+').to_owned())
        .collect()
}

/// `own` as a relative path of normal components (`/a/b` → `a/b`).
fn relative(own: &Path) -> Result<PathBuf, CgroupError> {
    let mut out = PathBuf::new();
    for part in own.components() {
        match part {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(CgroupError::Malformed {
                    path: own.to_path_buf(),
                    detail: "a cgroup path with '..'".into(),
                })
            }
        }
    }
    Ok(out)
}

pub(super) fn set_limits(cg: &ActionCgroup, limits: &CgroupLimits) -> Result<(), CgroupError> {
    let Some(dir) = cg.dir_of("memory") else {
        return Ok(());
    };
    if let Some(millicores) = limits.cpu_millicores {
        write_existing(
            &dir.join("cpu.max"),
            &format!("{} {CPU_PERIOD_US}", cpu_quota_us(millicores)),
        )?;
    }
    if let Some(bytes) = limits.memory_bytes {
        write_existing(&dir.join("memory.max"), &bytes.to_string())?;
        // CG-3: without this the limit only moves memory to swap.
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            write_existing(&swap, "0")?;
        }
    }
    if let Some(pids) = limits.pids {
        write_existing(&dir.join("pids.max"), &pids.to_string())?;
    }
    Ok(())
}

/// Every limit, `None` as unlimited (CG-9).
pub(super) fn set_limits_exactly(
    cg: &ActionCgroup,
    limits: &CgroupLimits,
) -> Result<(), CgroupError> {
    set_limits(cg, limits)?;
    let Some(dir) = cg.dir_of("memory") else {
        return Ok(());
    };
    if limits.cpu_millicores.is_none() {
        write_existing(&dir.join("cpu.max"), &format!("max {CPU_PERIOD_US}"))?;
    }
    if limits.memory_bytes.is_none() {
        write_existing(&dir.join("memory.max"), "max")?;
    }
    if limits.pids.is_none() {
        write_existing(&dir.join("pids.max"), "max")?;
    }
    Ok(())
}

const KILL_WITHIN: Duration = Duration::from_secs(5);
const KILL_ROUNDS: usize = 100;

/// CG-4: `cgroup.kill` when the kernel has it (it kills the whole subtree at once, forks
/// included); else freeze → SIGKILL → thaw until empty.
pub(super) fn kill_all(cg: &ActionCgroup) -> Result<(), CgroupError> {
    let trees = cg.dirs();
    let Some(dir) = trees.first().cloned() else {
        return Ok(());
    };
    if !dir.is_dir() {
        return Ok(());
    }
    let empty = || files::pids_in_trees(&trees).is_empty();
    let kill = dir.join("cgroup.kill");
    if kill.exists() {
        match files::write_raw(&kill, "1") {
            Ok(()) => {
                files::wait_until(KILL_WITHIN, Duration::from_millis(5), empty);
                return survivors(&dir, &trees);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(files::io_err("write", &kill, e)),
        }
    }
    let freeze = dir.join("cgroup.freeze");
    let start = Instant::now();
    let mut froze = false;
    let mut result = Ok(());
    for _ in 0..KILL_ROUNDS {
        if empty() || start.elapsed() >= KILL_WITHIN {
            break;
        }
        if let Err(error) = write_existing(&freeze, "1") {
            result = Err(error);
            break;
        }
        froze = true;
        files::wait_until(Duration::from_millis(500), Duration::from_millis(2), || {
            files::read_opt(&dir.join("cgroup.events"))
                .and_then(|s| super::stats::keyed(&s, "frozen"))
                == Some(1)
        });
        files::kill_listed(&trees);
        if let Err(error) = write_existing(&freeze, "0") {
            result = Err(error);
            break;
        }
        files::wait_until(Duration::from_millis(200), Duration::from_millis(5), empty);
    }
    if froze {
        // Always thaw on the way out, even after an error.
        let thawed = write_existing(&freeze, "0");
        if result.is_ok() {
            result = thawed;
        }
    }
    result?;
    survivors(&dir, &trees)
}

fn survivors(dir: &Path, trees: &[PathBuf]) -> Result<(), CgroupError> {
    let left = files::pids_in_trees(trees);
    if left.is_empty() {
        Ok(())
    } else {
        Err(CgroupError::Survivors {
            path: dir.to_path_buf(),
            pids: left,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_paths_are_relative_and_never_climb() {
        assert_eq!(relative(Path::new("/")).expect("root"), PathBuf::new());
        assert_eq!(
            relative(Path::new("/a/b")).expect("a/b"),
            PathBuf::from("a/b")
        );
        assert!(relative(Path::new("/a/../b")).is_err());
    }

    #[test]
    fn controller_words_tolerate_plus() {
        assert_eq!(words("cpu memory pids\n"), ["cpu", "memory", "pids"]);
        assert_eq!(words("+cpu +memory"), ["cpu", "memory"]);
        assert!(words("").is_empty());
    }
}
