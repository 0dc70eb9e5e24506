//! cgroup v1: one hierarchy per controller mount; the freezer stops a tree for killing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::files::{self, write_existing};
use super::{
    cpu_quota_us, validate_name, ActionCgroup, CgroupError, CgroupLimits, CgroupVersion, Cgroups,
    Placement, V1Dirs, CPU_PERIOD_US,
};

/// A file every non-root cgroup of the controller's hierarchy has: proof the controller is
/// mounted there.
fn marker(controller: &str) -> &'static str {
    match controller {
        "pids" => "pids.max",
        "memory" => "memory.limit_in_bytes",
        "cpu" => "cpu.cfs_quota_us",
        "cpuacct" => "cpuacct.usage",
        _ => "freezer.state",
    }
}

/// The controllers in the order `V1Dirs` lists them.
pub(super) const CONTROLLERS: [&str; 5] = ["pids", "memory", "cpu", "cpuacct", "freezer"];

pub(super) fn open_base(dirs: &V1Dirs, name: &str) -> Result<Cgroups, CgroupError> {
    validate_name(name)?;
    let parents = [
        &dirs.pids,
        &dirs.memory,
        &dirs.cpu,
        &dirs.cpuacct,
        &dirs.freezer,
    ];
    // A combined mount (cpu,cpuacct) gives two controllers one directory: create it once.
    let mut bases: Vec<Placement> = Vec::new();
    for (controller, parent) in CONTROLLERS.iter().zip(parents) {
        let dir = parent.join(name);
        match bases.iter_mut().find(|b| b.dir == dir) {
            Some(b) => b.controllers.push((*controller).to_owned()),
            None => bases.push(Placement {
                controllers: vec![(*controller).to_owned()],
                dir,
            }),
        }
    }
    let mut created: Vec<PathBuf> = Vec::new();
    for base in &bases {
        let made = match files::mkdir_or_open(&base.dir) {
            Ok(made) => made,
            Err(error) => {
                files::rmdir_all_quiet(&created);
                return Err(error);
            }
        };
        if made {
            created.push(base.dir.clone());
        }
        if let Some(c) = base
            .controllers
            .iter()
            .find(|c| !base.dir.join(marker(c)).exists())
        {
            files::rmdir_all_quiet(&created);
            return Err(CgroupError::Unsupported {
                missing: format!(
                    "no v1 {c} controller at {} ({} absent)",
                    base.dir.display(),
                    marker(c)
                ),
            });
        }
    }
    Ok(Cgroups {
        version: CgroupVersion::V1,
        bases,
    })
}

pub(super) fn set_limits(cg: &ActionCgroup, limits: &CgroupLimits) -> Result<(), CgroupError> {
    let dir = |c: &str| {
        cg.dir_of(c).ok_or_else(|| CgroupError::Unsupported {
            missing: format!("no v1 {c} hierarchy"),
        })
    };
    if let Some(millicores) = limits.cpu_millicores {
        let cpu = dir("cpu")?;
        // The period first: the quota is checked against it.
        write_existing(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        write_existing(
            &cpu.join("cpu.cfs_quota_us"),
            &cpu_quota_us(millicores).to_string(),
        )?;
    }
    if let Some(bytes) = limits.memory_bytes {
        set_memory(dir("memory")?, bytes)?;
    }
    if let Some(pids) = limits.pids {
        write_existing(&dir("pids")?.join("pids.max"), &pids.to_string())?;
    }
    Ok(())
}

/// Every limit, `None` as unlimited (CG-9).
pub(super) fn set_limits_exactly(
    cg: &ActionCgroup,
    limits: &CgroupLimits,
) -> Result<(), CgroupError> {
    set_limits(cg, limits)?;
    let dir = |c: &str| {
        cg.dir_of(c).ok_or_else(|| CgroupError::Unsupported {
            missing: format!("no v1 {c} hierarchy"),
        })
    };
    if limits.cpu_millicores.is_none() {
        write_existing(&dir("cpu")?.join("cpu.cfs_quota_us"), "-1")?;
    }
    if limits.memory_bytes.is_none() {
        // Raising: memsw first (CG-3).
        let memory = dir("memory")?;
        let memsw = memory.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write_existing(&memsw, "-1")?;
        }
        write_existing(&memory.join("memory.limit_in_bytes"), "-1")?;
    }
    if limits.pids.is_none() {
        write_existing(&dir("pids")?.join("pids.max"), "max")?;
    }
    Ok(())
}

/// CG-3: memory.memsw.limit_in_bytes may never be below memory.limit_in_bytes, so lowering
/// writes the memory limit first and raising writes memsw first.
fn set_memory(dir: &Path, bytes: u64) -> Result<(), CgroupError> {
    let limit = dir.join("memory.limit_in_bytes");
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    let value = bytes.to_string();
    if !memsw.exists() {
        return write_existing(&limit, &value);
    }
    let current_memsw = files::read_opt(&memsw)
        .and_then(|s| super::stats::number(&s))
        .unwrap_or(u64::MAX);
    if bytes > current_memsw {
        write_existing(&memsw, &value)?;
        write_existing(&limit, &value)
    } else {
        write_existing(&limit, &value)?;
        write_existing(&memsw, &value)
    }
}

/// The whole-kill bound (CG-4).
const KILL_WITHIN: Duration = Duration::from_secs(5);
const KILL_ROUNDS: usize = 100;

/// CG-4: FROZEN → SIGKILL every listed pid → THAWED, until no hierarchy lists a process.
/// Frozen processes cannot fork or exit, so the list is complete and cannot go stale; the
/// pending SIGKILLs take effect on thaw.
pub(super) fn kill_all(cg: &ActionCgroup) -> Result<(), CgroupError> {
    let trees = cg.dirs();
    let freezer = cg.dir_of("freezer").map(Path::to_path_buf);
    let start = Instant::now();
    let mut froze = false;
    let mut result = Ok(());
    for _ in 0..KILL_ROUNDS {
        if files::pids_in_trees(&trees).is_empty() {
            break;
        }
        if start.elapsed() >= KILL_WITHIN {
            break;
        }
        if let Some(freezer) = &freezer {
            match freeze(freezer) {
                Ok(()) => froze = true,
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        files::kill_listed(&trees);
        if let Some(freezer) = &freezer {
            if let Err(error) = thaw(freezer) {
                result = Err(error);
                break;
            }
        }
        files::wait_until(Duration::from_millis(200), Duration::from_millis(5), || {
            files::pids_in_trees(&trees).is_empty()
        });
    }
    if froze {
        if let Some(freezer) = &freezer {
            // Always thaw on the way out, even after an error.
            let thawed = thaw(freezer);
            if result.is_ok() {
                result = thawed;
            }
        }
    }
    result?;
    let left = files::pids_in_trees(&trees);
    if left.is_empty() {
        Ok(())
    } else {
        Err(CgroupError::Survivors {
            path: freezer
                .unwrap_or_else(|| cg.dirs.first().map(|p| p.dir.clone()).unwrap_or_default()),
            pids: left,
        })
    }
}

/// Writes FROZEN and waits (bounded) for FREEZING to become FROZEN. A freeze that does not
/// complete in time is not an error: the kill goes ahead and the loop repeats.
fn freeze(dir: &Path) -> Result<(), CgroupError> {
    let state = dir.join("freezer.state");
    match files::write_raw(&state, "FROZEN") {
        Ok(()) => {}
        // The cgroup went away meanwhile: nothing left to freeze.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(files::io_err("write", &state, e)),
    }
    files::wait_until(Duration::from_millis(500), Duration::from_millis(2), || {
        files::read_opt(&state).is_some_and(|s| s.trim() == "FROZEN")
    });
    Ok(())
}

fn thaw(dir: &Path) -> Result<(), CgroupError> {
    let state = dir.join("freezer.state");
    match files::write_raw(&state, "THAWED") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(files::io_err("write", &state, e)),
    }
}
