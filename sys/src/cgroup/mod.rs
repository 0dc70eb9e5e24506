//! Per-action cgroups (v1 and v2): limits, whole-tree accounting, kill, leftovers.
//!
//! The host opens one base cgroup per hierarchy ([`Cgroups`]); every action gets a child of it
//! ([`ActionCgroup`]) with its CPU, memory and pids limits. The sandbox helper writes itself into
//! the child's `cgroup.procs` files ([`ActionCgroup::procs_files`]) before it forks, so the whole
//! action tree is accounted and killable from its first instruction.
//!
//! ```text
//!  v2 (one hierarchy)                        v1 (one hierarchy per controller mount)
//!  <mount>/                +cpu +memory +pids  /sys/fs/cgroup/{pids,memory,cpu,cpuacct,freezer}/
//!   └ <own cgroup>/ ─┐     in every               └ <own cgroup of that hierarchy>/
//!      └ <base>/     │     subtree_control           └ <base>/            (Cgroups)
//!         ├ <a1>/    │     on the way down              ├ <a1>/           (ActionCgroup)
//!         └ <a2>/    ┘                                  └ <a2>/
//!  (falls back to <mount>/<base> when the own cgroup holds processes: no internal processes)
//! ```
//!
//! # Layout
//! - `detect` — which hierarchy, from `/proc/self/mountinfo` and `/proc/self/cgroup`.
//! - `v1`, `v2` — base creation, limits and kill per version; `stats` — accounting.
//! - `files` — control files (CG-1), directories, pid lists, pidfd kills (CG-5).
//!
//! Not a policy: which limits an action gets, and when to kill it, belong to the caller.
//!
//! # Invariants
//! - **CG-1** Control files are opened for writing without `O_CREAT`: the production code never
//!   creates a regular file in a cgroup filesystem; a missing control file is an error naming
//!   it (or, where documented, means "feature absent").
//! - **CG-2** Names given to [`Cgroups::detect`], [`Cgroups::create`] and friends are one path
//!   component (no `/`, not `.` or `..`, no whitespace or control characters): nothing is
//!   created outside the base.
//! - **CG-3** A limit that is set is real: v2 sets `memory.swap.max` to 0 and v1 sets
//!   `memory.memsw.limit_in_bytes` equal to the memory limit where those files exist, and v1
//!   writes them in an order the kernel accepts (memsw never below the memory limit).
//! - **CG-4** [`ActionCgroup::kill_all`] leaves nothing running, not even after a double fork:
//!   v2 `cgroup.kill`, else freeze → SIGKILL → thaw until empty; every loop is bounded in
//!   rounds and time, and a survivor is an error naming its pids. It always thaws before
//!   returning.
//! - **CG-5** A signal never reaches a pid that was reused outside the cgroup: pids are
//!   signalled through pidfds opened first and kept only if the pid is still listed in the
//!   cgroup after the pidfd pins it.
//! - **CG-6** [`ActionCgroup::remove`] and [`Cgroups::kill_leftovers`] handle nested cgroups
//!   (deepest first) and are idempotent: a cgroup that is already gone is not an error.
//! - **CG-7** Reading accounting never fails: a missing or malformed file gives `None`.
//! - **CG-8** A process started with [`join_on_exec`] is in its cgroup before it execs.
//! - **CG-9** A cgroup reused by one action after another carries nothing over but reclaimable
//!   page cache: [`ActionCgroup::set_limits_exactly`] sets every limit (unset ones to
//!   unlimited), and [`ActionCgroup::meter`] / [`ActionCgroup::since`] give each action its own
//!   CPU time, OOM kills and peak memory (v1: `memory.max_usage_in_bytes` reset; v2:
//!   `memory.peak` reset through its own fd, kernel >= 6.12, else no peak).

mod detect;
mod error;
mod files;
mod join;
mod meter;
mod stats;
mod v1;
mod v2;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use error::CgroupError;
pub use join::join_on_exec;
pub use meter::Meter;
pub use stats::CgroupStats;

/// Which cgroup hierarchy the limits go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// Legacy: one hierarchy per controller (pids, memory, cpu, cpuacct, freezer).
    V1,
    /// Unified: one hierarchy, controllers enabled through `cgroup.subtree_control`.
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        })
    }
}

/// Limits for one action; `None` leaves that resource unlimited (a fresh cgroup's default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// CPU bandwidth in thousandths of a core (1000 = one core), 10 ..= 10^9; below 10 is
    /// raised to the kernel's minimum quota of 1 ms per 100 ms period.
    pub cpu_millicores: Option<u64>,
    /// Memory (and, where the kernel offers it, memory plus swap) in bytes, 1 ..= i64::MAX.
    pub memory_bytes: Option<u64>,
    /// Processes and threads, 1 ..= 4194304.
    pub pids: Option<u64>,
}

/// One hierarchy's directory and the controllers it carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Placement {
    controllers: Vec<String>,
    dir: PathBuf,
}

impl Placement {
    fn child(&self, name: &str) -> Placement {
        Placement {
            controllers: self.controllers.clone(),
            dir: self.dir.join(name),
        }
    }
}

/// The host's base cgroup in every hierarchy it uses. Serialisable, so the host can hand it to
/// its proc agents (e.g. as JSON in an environment variable).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cgroups {
    version: CgroupVersion,
    /// v2: exactly one; v1: one per distinct mount (a `cpu,cpuacct` mount appears once).
    bases: Vec<Placement>,
}

/// The v1 parent cgroup directories to create the base under, one per controller. Two
/// controllers may share a directory (a combined `cpu,cpuacct` mount).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V1Dirs {
    /// e.g. `/sys/fs/cgroup/pids`.
    pub pids: PathBuf,
    /// e.g. `/sys/fs/cgroup/memory/process_api/<hash>`.
    pub memory: PathBuf,
    /// e.g. `/sys/fs/cgroup/cpu`.
    pub cpu: PathBuf,
    /// e.g. `/sys/fs/cgroup/cpuacct`.
    pub cpuacct: PathBuf,
    /// e.g. `/sys/fs/cgroup/freezer`.
    pub freezer: PathBuf,
}

impl Cgroups {
    /// Detects the hierarchy from `/proc/self/mountinfo` and `/proc/self/cgroup`: v2 if a
    /// cgroup2 mount offers memory, pids and cpu in its `cgroup.controllers`, else v1 if the
    /// pids, memory, cpu, cpuacct and freezer hierarchies are mounted, else
    /// [`CgroupError::Unsupported`] saying what is missing. Then opens or creates the base
    /// `<this process's cgroup>/<name>` in each hierarchy (see [`Cgroups::v2_in`] for the v2
    /// fallback). Without root or delegation: [`CgroupError::PermissionDenied`].
    pub fn detect(name: &str) -> Result<Cgroups, CgroupError> {
        detect::detect(name)
    }

    /// v2: opens or creates `<mount_root>/<name>`, enabling `+cpu +memory +pids` in the
    /// `cgroup.subtree_control` of the mount root and of the base.
    pub fn v2_at(mount_root: &Path, name: &str) -> Result<Cgroups, CgroupError> {
        v2::open_base(mount_root, Path::new(""), name)
    }

    /// v2: opens or creates `<mount_root>/<own>/<name>` (`own` is this process's cgroup as in
    /// `/proc/self/cgroup`, relative to the mount), enabling `+cpu +memory +pids` in every
    /// `cgroup.subtree_control` on the way down. If `own` holds processes (it cannot delegate:
    /// the v2 "no internal processes" rule), falls back to `<mount_root>/<name>`.
    pub fn v2_in(mount_root: &Path, own: &Path, name: &str) -> Result<Cgroups, CgroupError> {
        v2::open_base(mount_root, own, name)
    }

    /// v1: opens or creates `<dir>/<name>` under each of `dirs`, checking that each carries
    /// its controller.
    pub fn v1_at(dirs: &V1Dirs, name: &str) -> Result<Cgroups, CgroupError> {
        v1::open_base(dirs, name)
    }

    /// Which hierarchy this is.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The base directories, one per hierarchy (v2: one).
    pub fn base_dirs(&self) -> Vec<PathBuf> {
        self.bases.iter().map(|b| b.dir.clone()).collect()
    }

    /// For logs, e.g. `v1 (pids, memory, cpu, cpuacct, freezer) under
    /// /sys/fs/cgroup/*/procmesh-x`.
    pub fn describe(&self) -> String {
        let controllers: Vec<&str> = self
            .bases
            .iter()
            .flat_map(|b| b.controllers.iter().map(String::as_str))
            .collect();
        let dirs: Vec<&Path> = self.bases.iter().map(|b| b.dir.as_path()).collect();
        format!(
            "{} ({}) under {}",
            self.version,
            controllers.join(", "),
            files::summarise_dirs(&dirs)
        )
    }

    /// Kills every process in every cgroup under the base (leftovers of a previous life of
    /// this host, nested ones too) and removes those cgroups, deepest first (CG-6). Returns
    /// how many cgroups it removed, counting each nested cgroup once (not once per
    /// hierarchy). Processes in the base itself are left alone. Tries every leftover and
    /// returns the first error.
    pub fn kill_leftovers(&self) -> Result<usize, CgroupError> {
        let mut names = BTreeSet::new();
        for base in &self.bases {
            for dir in files::subdirs(&base.dir)? {
                if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
                    names.insert(name.to_owned());
                }
            }
        }
        let mut removed = 0;
        let mut first_error = None;
        for name in names {
            let action = self.action(&name);
            let count = action.tree_size();
            match action.remove() {
                Ok(()) => removed += count,
                Err(error) => {
                    tracing::warn!(%error, cgroup = %name, "leftover cgroup not removed");
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(removed),
        }
    }

    /// A new child cgroup `<base>/<name>` in every hierarchy with these limits. An existing
    /// one is [`CgroupError::Exists`]; on any failure what was created is removed again.
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<ActionCgroup, CgroupError> {
        validate_name(name)?;
        check_limits(limits)?;
        let action = self.action(name);
        let mut made = Vec::new();
        for dir in action.dirs.iter().map(|p| &p.dir) {
            match files::mkdir_new(dir) {
                Ok(()) => made.push(dir.clone()),
                Err(error) => {
                    files::rmdir_all_quiet(&made);
                    return Err(error);
                }
            }
        }
        if let Err(error) = action.set_limits(limits) {
            files::rmdir_all_quiet(&made);
            return Err(error);
        }
        tracing::debug!(cgroup = %name, version = %self.version, "action cgroup created");
        Ok(action)
    }

    /// Like [`Cgroups::create`], but a cgroup `name` left by an earlier life (a crashed proc
    /// of the same name) is killed and removed first (CG-6), instead of being an error.
    pub fn create_fresh(
        &self,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<ActionCgroup, CgroupError> {
        match self.create(name, limits) {
            Err(CgroupError::Exists { .. }) => {
                tracing::info!(cgroup = %name, "removing a cgroup an earlier life left");
                self.action(name).remove()?;
                self.create(name, limits)
            }
            other => other,
        }
    }

    /// Removes the base itself after [`Cgroups::kill_leftovers`] (for uninstalling and tests).
    /// Idempotent.
    pub fn remove_base(&self) -> Result<(), CgroupError> {
        self.kill_leftovers()?;
        for base in &self.bases {
            files::rmdir_retry(&base.dir)?;
        }
        Ok(())
    }

    fn action(&self, name: &str) -> ActionCgroup {
        ActionCgroup {
            version: self.version,
            name: name.to_owned(),
            dirs: self.bases.iter().map(|b| b.child(name)).collect(),
        }
    }
}

/// One action's cgroup, in every hierarchy. Dropping it leaves the cgroup in place: call
/// [`ActionCgroup::remove`] (a crashed host's are found by [`Cgroups::kill_leftovers`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionCgroup {
    version: CgroupVersion,
    name: String,
    dirs: Vec<Placement>,
}

impl ActionCgroup {
    /// Its name under the base.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its directory in every hierarchy (v2: one).
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|p| p.dir.clone()).collect()
    }

    /// The files a process writes its own pid (`0` or its pid) into to join this cgroup in
    /// every hierarchy (v2: one `cgroup.procs`; v1: `cgroup.procs` of pids, memory, cpu,
    /// cpuacct and freezer). The sandbox helper writes itself into these before it forks, so
    /// the whole action tree is inside from its first instruction.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|p| p.dir.join(files::PROCS)).collect()
    }

    /// Moves process `pid` (all its threads) into this cgroup in every hierarchy, for the mode
    /// without the namespace sandbox. Only its future children follow it.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        if pid == 0 {
            return Err(CgroupError::InvalidPid { pid });
        }
        for file in self.procs_files() {
            files::write_existing(&file, &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in it now, in any hierarchy, nested cgroups included; sorted.
    pub fn pids(&self) -> Vec<u32> {
        let dirs: Vec<PathBuf> = self.dirs.iter().map(|p| p.dir.clone()).collect();
        files::pids_in_trees(&dirs)
    }

    /// Sets the limits that are `Some`; `None` leaves that resource as it is (unlimited in a
    /// fresh cgroup). Lowering a limit below current usage fails in the kernel.
    pub fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        check_limits(limits)?;
        match self.version {
            CgroupVersion::V1 => v1::set_limits(self, limits),
            CgroupVersion::V2 => v2::set_limits(self, limits),
        }
    }

    /// Whole-tree accounting: CPU (v2 `cpu.stat` usage_usec; v1 `cpuacct.usage`), peak memory
    /// (v2 `memory.peak`; v1 `memory.max_usage_in_bytes`) and OOM kills (v2 `memory.events`
    /// oom_kill; v1 `memory.oom_control` oom_kill, else 1 if `memory.failcnt` > 0 with the
    /// peak at the limit). Missing files give `None` (CG-7).
    pub fn stats(&self) -> CgroupStats {
        match self.version {
            CgroupVersion::V1 => stats::v1(self.dir_of("cpuacct"), self.dir_of("memory")),
            CgroupVersion::V2 => stats::v2(self.dir_of("memory")),
        }
    }

    /// Kills everything in it, so that nothing survives even a double fork (CG-4, CG-5): v2
    /// writes 1 to `cgroup.kill` (kernel >= 5.14), else freezes, SIGKILLs every pid and thaws;
    /// v1 does the same through `freezer.state`, repeating until no hierarchy lists a process,
    /// for at most 5 s. Survivors are [`CgroupError::Survivors`].
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        match self.version {
            CgroupVersion::V1 => v1::kill_all(self),
            CgroupVersion::V2 => v2::kill_all(self),
        }
    }

    /// [`ActionCgroup::kill_all`], then removes it (nested cgroups first) in every hierarchy,
    /// retrying EBUSY for a bounded time. Idempotent (CG-6).
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        for placement in &self.dirs {
            for dir in files::tree_post_order(&placement.dir) {
                files::rmdir_retry(&dir)?;
            }
        }
        tracing::debug!(cgroup = %self.name, "action cgroup removed");
        Ok(())
    }

    /// The directory of the hierarchy carrying `controller` (v2: the one directory).
    fn dir_of(&self, controller: &str) -> Option<&Path> {
        match self.version {
            CgroupVersion::V2 => self.dirs.first(),
            CgroupVersion::V1 => self
                .dirs
                .iter()
                .find(|p| p.controllers.iter().any(|c| c == controller)),
        }
        .map(|p| p.dir.as_path())
    }

    /// How many distinct cgroups (relative paths, over all hierarchies) it consists of now.
    fn tree_size(&self) -> usize {
        let mut rel = BTreeSet::new();
        for placement in &self.dirs {
            for dir in files::tree_post_order(&placement.dir) {
                if let Ok(r) = dir.strip_prefix(&placement.dir) {
                    rel.insert(r.to_path_buf());
                }
            }
        }
        rel.len()
    }
}

/// CG-2: one path component, nothing that could climb out or confuse a log line.
fn validate_name(name: &str) -> Result<(), CgroupError> {
    let bad = |reason| {
        Err(CgroupError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 200 {
        return bad("longer than 200 bytes");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not names");
    }
    if name.contains('/') {
        return bad("contains '/'");
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("contains whitespace or a control character");
    }
    Ok(())
}

const MAX_MILLICORES: u64 = 1_000_000_000;
const MAX_PIDS: u64 = 4_194_304;

fn check_limits(limits: &CgroupLimits) -> Result<(), CgroupError> {
    let check = |what, value: Option<u64>, max: u64, reason| match value {
        Some(v) if v == 0 || v > max => Err(CgroupError::InvalidLimit {
            what,
            value: v,
            reason,
        }),
        _ => Ok(()),
    };
    check(
        "cpu_millicores",
        limits.cpu_millicores,
        MAX_MILLICORES,
        "must be 1 ..= 10^9",
    )?;
    check(
        "memory_bytes",
        limits.memory_bytes,
        i64::MAX as u64,
        "must be 1 ..= i64::MAX",
    )?;
    check("pids", limits.pids, MAX_PIDS, "must be 1 ..= 4194304")
}

/// The CFS quota in microseconds per 100 ms period for `millicores` (at least the kernel's
/// 1 ms minimum).
fn cpu_quota_us(millicores: u64) -> u64 {
    (millicores * 100).max(1000)
}

/// The CFS period every limit uses, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_component() {
        for bad in ["", ".", "..", "a/b", "/a", "a b", "a\nb", "a\0b"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "action-17", "x.y", "..a", "p_1:2@h"] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
        assert!(validate_name(&"a".repeat(201)).is_err());
    }

    #[test]
    fn limits_are_range_checked() {
        let l = |c, m, p| CgroupLimits {
            cpu_millicores: c,
            memory_bytes: m,
            pids: p,
        };
        assert!(check_limits(&l(Some(0), None, None)).is_err());
        assert!(check_limits(&l(None, Some(0), None)).is_err());
        assert!(check_limits(&l(None, None, Some(0))).is_err());
        assert!(check_limits(&l(None, Some(u64::MAX), None)).is_err());
        assert!(check_limits(&l(None, None, Some(MAX_PIDS + 1))).is_err());
        assert!(check_limits(&l(Some(MAX_MILLICORES), Some(1), Some(MAX_PIDS))).is_ok());
        assert!(check_limits(&CgroupLimits::default()).is_ok());
        assert_eq!(cpu_quota_us(1), 1000);
        assert_eq!(cpu_quota_us(500), 50_000);
        assert_eq!(cpu_quota_us(2000), 200_000);
    }

    #[test]
    fn version_displays_and_serialises() {
        assert_eq!(CgroupVersion::V1.to_string(), "v1");
        assert_eq!(CgroupVersion::V2.to_string(), "v2");
        let cg = Cgroups {
            version: CgroupVersion::V2,
            bases: vec![Placement {
                controllers: vec!["cpu".into()],
                dir: "/sys/fs/cgroup/x".into(),
            }],
        };
        let json = serde_json::to_string(&cg).expect("serialise");
        assert!(json.contains("\"v2\""), "{json}");
        let back: Cgroups = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, cg);
    }
}
