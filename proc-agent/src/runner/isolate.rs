//! Isolation of an action's process tree (issue 10): what the host decided at its start
//! ([`ActionIsolation`]), carried out per attempt — its own cgroup with limits, and in
//! `namespaces` mode the sandbox launcher of `procmesh-sys` with the root assembled here.
//!
//! ```text
//! namespaces:  runner ─posix_spawn─▶ /proc/self/exe __procmesh-sandbox (joins the cgroup)
//!                  ─clone(user,mnt,pid,ipc,uts[,net])─▶ init ─fork─▶ action as uid 1000
//!   /            tmpfs, read-only        /usr /bin /lib /lib64   host, read-only
//!   /etc         passwd group hosts [resolv.conf], ld.so.cache (read-only)
//!   /sandbox     the sandbox directory, read-only: worker files and inputs
//!   /sandbox/Outputs   writable, owned by the action's user
//!   /tmp         private tmpfs          /proc  the action's own      /dev  null zero full …
//!   <root>       every allowed host-program root outside the system directories, read-only
//! none:        runner ─posix_spawn─▶ action (as the proc agent's user), moved into its cgroup
//!              right after the spawn; inputs and worker files are copies verified by hash
//! ```
//!
//! # Invariants
//! - **ISO-1** An action's processes are all in its own cgroup (in `namespaces` mode from their
//!   first instruction: the launcher joins it before it clones); after the attempt the cgroup
//!   is killed and removed, so nothing it started outlives it.
//! - **ISO-2** In `namespaces` mode nothing of the host is writable by an action but its
//!   `Outputs/` and its private `/tmp`, and nothing of the host is visible but the read-only
//!   system directories, the minimal `/etc` and allowed host-program roots: not the state
//!   directory, not the TLS key, not another action's sandbox.
//! - **ISO-3** Store objects and cached worker files are never writable by an action: read-only
//!   binds in `namespaces` mode; copies verified against their hash in `none` mode.
//! - **ISO-4** A host program runs only if its canonical path (symbolic links followed) lies
//!   under a canonical allowed root; the result names the canonical path and its hash.
//! - **ISO-5** The environment is documented and exact: `PATH`, `HOME`, `TMPDIR`, the worker's
//!   and the action's variables (the action's win), `PROCMESH_LSN`, `PROCMESH_ATTEMPT`, and
//!   `TRACEPARENT` when the submission carried one.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use procmesh_protocol::cas::{BlobHash, BlobHasher};
use procmesh_protocol::messages::host::{ActionIsolation, IsolationMode};
use procmesh_protocol::spec::ResourceHints;
use procmesh_sys::cgroup::{ActionCgroup, CgroupError, CgroupLimits, Cgroups};
use procmesh_sys::sandbox::{
    ActionLaunch, Bind, IdMap, NetnsLease, NetnsPool, SandboxSpec, Slot, SlotSpec,
};

use super::slots::Slots;
use tracing::{info, warn};

/// Where the sandbox directory appears inside the action's root.
pub(crate) const SANDBOX_MOUNT: &str = "/sandbox";
/// The action's uid and gid inside its user namespace.
pub(crate) const INSIDE_ID: u32 = 1000;
/// The `PATH` an action gets unless its worker or itself sets one.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The system directories bound read-only into every sandbox.
const SYSTEM_DIRS: [&str; 4] = ["/usr", "/bin", "/lib", "/lib64"];

/// The per-proc side of a host's isolation settings.
pub(crate) struct Isolator {
    settings: ActionIsolation,
    cgroups: Option<Cgroups>,
    pool: Option<NetnsPool>,
    root: bool,
    roots_dir: PathBuf,
    exe: PathBuf,
    proc_name: String,
    /// The warm slots (PA-12).
    pub(crate) slots: Slots,
}

impl std::fmt::Debug for Isolator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Isolator")
            .field("mode", &self.settings.mode)
            .field("cgroup", &self.settings.cgroup)
            .field("pool", &self.pool.is_some())
            .finish()
    }
}

/// Most network namespaces prepared when a proc starts. Each costs the kernel real work to
/// make and, when the proc ends, to tear down (in a kernel worker, after the proc is gone):
/// a proc of 2,048 slots once spent seconds of both, competing with the next proc's actions.
pub(crate) const PREPARED_NETNS_MAX: usize = 64;

impl Isolator {
    /// Opens the host's base cgroup and, when running as root in `namespaces` mode, prepares a
    /// pool of network namespaces: one per slot, at most [`PREPARED_NETNS_MAX`] (a slot
    /// beyond them makes its own when it starts). What is not available is logged and left
    /// off.
    pub(crate) fn new(
        settings: ActionIsolation,
        work_dir: &Path,
        slots: u32,
        proc_name: &str,
    ) -> io::Result<Isolator> {
        let cgroups = match &settings.cgroup_name {
            Some(name) => match Cgroups::detect(name) {
                Ok(cgroups) => Some(cgroups),
                Err(error) => {
                    warn!(%error, "the host's cgroup is not usable here: actions run without limits");
                    None
                }
            },
            None => None,
        };
        let root = nix::unistd::geteuid().is_root();
        let pool = if settings.mode == IsolationMode::Namespaces && root {
            match NetnsPool::new((slots as usize).min(PREPARED_NETNS_MAX)) {
                Ok(pool) => Some(pool),
                Err(error) => {
                    warn!(%error, "no network namespace pool: each action creates its own");
                    None
                }
            }
        } else {
            None
        };
        let roots_dir = work_dir.join("roots");
        super::cleanup::remove_tree(&roots_dir)?;
        std::fs::create_dir_all(&roots_dir)?;
        let roots_dir = roots_dir.canonicalize()?;
        info!(mode = %settings.mode, cgroup = ?settings.cgroup, pool = pool.is_some(), "action isolation");
        Ok(Isolator {
            settings,
            cgroups,
            pool,
            root,
            roots_dir,
            exe: PathBuf::from("/proc/self/exe"),
            proc_name: proc_name.to_owned(),
            slots: Slots::default(),
        })
    }

    /// This proc's name, e.g. `worker-3` (slot cgroups are named after it).
    pub(crate) fn proc_name(&self) -> &str {
        &self.proc_name
    }

    /// Whether actions run in warm slots' sandboxes (PA-12): `namespaces` mode, and the zygote
    /// that starts wardens serves this process; else each action builds its own sandbox.
    pub(crate) fn warm_sandboxes(&self) -> bool {
        self.settings.mode == IsolationMode::Namespaces && Slot::available()
    }

    /// A slot's cgroup `name` (no limits yet); `None` when the host has no usable cgroups. One
    /// an earlier life of this proc left (it was killed with its slots) is killed and replaced.
    pub(crate) fn create_cgroup(&self, name: &str) -> Result<Option<ActionCgroup>, CgroupError> {
        self.cgroups
            .as_ref()
            .map(|c| c.create_fresh(name, &CgroupLimits::default()))
            .transpose()
    }

    /// The cgroup limits of an action with `hints`: its cores and memory, else the host's
    /// defaults; unset ones are unlimited.
    pub(crate) fn limits(&self, hints: &ResourceHints) -> CgroupLimits {
        CgroupLimits {
            cpu_millicores: hints.cores.map(|c| u64::from(c.max(1)) * 1000),
            memory_bytes: self.memory_limit(hints),
            pids: self.settings.pids,
        }
    }

    /// The mode.
    pub(crate) fn mode(&self) -> IsolationMode {
        self.settings.mode
    }

    /// Whether worker files and inputs may be hard links into the cache and the store (only
    /// when the action cannot write them: read-only binds).
    pub(crate) fn shares_files(&self) -> bool {
        self.settings.mode == IsolationMode::Namespaces
    }

    /// The memory limit an action with `hints` gets.
    pub(crate) fn memory_limit(&self, hints: &ResourceHints) -> Option<u64> {
        hints.memory_bytes.or(self.settings.memory_bytes)
    }

    /// A network namespace from the pool, if any is free.
    pub(crate) fn netns(&self) -> Option<NetnsLease> {
        self.pool.as_ref().and_then(NetnsPool::acquire)
    }

    /// The executable the launcher is (this binary).
    pub(crate) fn exe(&self) -> &Path {
        &self.exe
    }

    /// An empty directory for the root of the attempt `name`.
    pub(crate) fn new_root(&self, name: &str) -> io::Result<PathBuf> {
        let dir = self.roots_dir.join(name);
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir(&dir)?;
        Ok(dir)
    }

    /// Makes `Outputs/` writable by the action's user (when the proc agent is root, the action
    /// runs as another user).
    pub(crate) fn prepare_outputs(&self, outputs: &Path) -> io::Result<()> {
        if self.settings.mode == IsolationMode::Namespaces && self.root {
            std::os::unix::fs::chown(outputs, Some(self.settings.uid), Some(self.settings.gid))?;
        }
        Ok(())
    }

    /// The launcher's spec for one attempt (each action builds its own sandbox).
    pub(crate) fn spec(&self, launch: Launch<'_>) -> SandboxSpec {
        let base = self.slot_spec(launch.root);
        let mut binds = action_binds(launch.sandbox);
        binds.extend(base.binds);
        SandboxSpec {
            program: launch.program.clone(),
            args: argv(&launch.program, launch.args),
            env: launch.env.into_iter().collect(),
            cwd: PathBuf::from(SANDBOX_MOUNT),
            root: base.root,
            system_dirs: base.system_dirs,
            etc_files: base.etc_files,
            etc_binds: base.etc_binds,
            binds,
            tmp_bytes: base.tmp_bytes,
            uid: base.uid,
            gid: base.gid,
            hostname: base.hostname,
            cgroup_procs: launch
                .cgroup
                .map(ActionCgroup::procs_files)
                .unwrap_or_default(),
            seccomp: base.seccomp,
            parent_pid: std::process::id(),
        }
    }

    /// What every action of a warm slot shares, its base root on `root` (PA-12).
    pub(crate) fn slot_spec(&self, root: &Path) -> SlotSpec {
        let mut binds = Vec::new();
        for root in &self.settings.host_programs {
            if !SYSTEM_DIRS.iter().any(|d| root.starts_with(d)) {
                binds.push(Bind {
                    source: root.clone(),
                    target: root.clone(),
                    writable: false,
                });
            }
        }
        let mut etc_files = vec![
            (
                "passwd".to_owned(),
                format!(
                    "root:x:0:0:root:/root:/bin/sh\nprocmesh:x:{INSIDE_ID}:{INSIDE_ID}:procmesh action:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
                ),
            ),
            (
                "group".to_owned(),
                format!("root:x:0:\nprocmesh:x:{INSIDE_ID}:\nnogroup:x:65534:\n"),
            ),
            (
                "hosts".to_owned(),
                "127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost\n".to_owned(),
            ),
        ];
        if let Some(resolv) = &self.settings.resolv_conf {
            etc_files.push(("resolv.conf".to_owned(), resolv.clone()));
        }
        let (outside_uid, outside_gid) = if self.root {
            (Some(self.settings.uid), Some(self.settings.gid))
        } else {
            (None, None)
        };
        SlotSpec {
            root: root.to_path_buf(),
            system_dirs: SYSTEM_DIRS.iter().map(PathBuf::from).collect(),
            etc_files,
            etc_binds: vec!["ld.so.cache".to_owned(), "alternatives".to_owned()],
            binds,
            mount_points: vec![PathBuf::from(SANDBOX_MOUNT)],
            tmp_bytes: self.settings.tmp_bytes,
            uid: IdMap {
                inside: INSIDE_ID,
                outside: outside_uid,
            },
            gid: IdMap {
                inside: INSIDE_ID,
                outside: outside_gid,
            },
            hostname: "sandbox".to_owned(),
            seccomp: self.settings.seccomp,
            parent_pid: std::process::id(),
        }
    }

    /// One attempt in a warm slot: `program` with `args` and exactly `env`, its sandbox
    /// directory at `/sandbox` (read-only) with `Outputs/` writable, working there.
    pub(crate) fn launch(
        &self,
        program: PathBuf,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        sandbox: &Path,
    ) -> ActionLaunch {
        ActionLaunch {
            args: argv(&program, args),
            program,
            env: env.into_iter().collect(),
            cwd: PathBuf::from(SANDBOX_MOUNT),
            binds: action_binds(sandbox),
        }
    }

    /// The canonical roots host programs may come from.
    pub(crate) fn host_programs(&self) -> &[PathBuf] {
        &self.settings.host_programs
    }

    /// Removes the (empty) root directory of the attempt `name` once its launcher is gone.
    pub(crate) fn release_root(&self, name: &str) {
        let dir = self.roots_dir.join(name);
        if let Err(error) = std::fs::remove_dir(&dir) {
            if error.kind() != io::ErrorKind::NotFound {
                warn!(%error, dir = %dir.display(), "could not remove an action's root directory");
            }
        }
    }
}

/// `argv`: the program first, as a shell would pass it, then `args`.
fn argv(program: &Path, args: Vec<String>) -> Vec<String> {
    std::iter::once(program.display().to_string())
        .chain(args)
        .collect()
}

/// The binds of one attempt's own: its sandbox directory read-only, its `Outputs/` writable.
fn action_binds(sandbox: &Path) -> Vec<Bind> {
    vec![
        Bind {
            source: sandbox.to_path_buf(),
            target: PathBuf::from(SANDBOX_MOUNT),
            writable: false,
        },
        Bind {
            source: sandbox.join(procmesh_protocol::spec::OUTPUTS_DIR),
            target: Path::new(SANDBOX_MOUNT).join(procmesh_protocol::spec::OUTPUTS_DIR),
            writable: true,
        },
    ]
}

/// What [`Isolator::spec`] needs of one attempt.
pub(crate) struct Launch<'a> {
    /// The program as the action sees it.
    pub(crate) program: PathBuf,
    /// Its arguments.
    pub(crate) args: Vec<String>,
    /// Its whole environment.
    pub(crate) env: BTreeMap<String, String>,
    /// The sandbox directory on the host.
    pub(crate) sandbox: &'a Path,
    /// The empty root directory on the host.
    pub(crate) root: &'a Path,
    /// The action's cgroup.
    pub(crate) cgroup: Option<&'a ActionCgroup>,
}

/// ISO-4: `path` canonicalised (every symbolic link followed) must be a regular executable
/// file under one of `roots` (themselves canonical); returns it and its BLAKE3 hash.
pub(crate) fn resolve_host_program(
    path: &str,
    roots: &[PathBuf],
) -> Result<(PathBuf, BlobHash), String> {
    if roots.is_empty() {
        return Err(format!(
            "host program {path}: this host allows no host programs (allowed_host_programs is empty)"
        ));
    }
    let canonical = std::fs::canonicalize(path).map_err(|e| format!("host program {path}: {e}"))?;
    let Some(root) = roots.iter().find(|root| canonical.starts_with(root)) else {
        return Err(format!(
            "host program {path} resolves to {} which is under none of the allowed roots ({})",
            canonical.display(),
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let meta = std::fs::metadata(&canonical).map_err(|e| format!("host program {path}: {e}"))?;
    use std::os::unix::fs::PermissionsExt as _;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "host program {path} ({}) is not an executable regular file",
            canonical.display()
        ));
    }
    let hash = hash_file(&canonical).map_err(|e| format!("host program {path}: {e}"))?;
    tracing::debug!(program = %canonical.display(), root = %root.display(), %hash, "host program allowed");
    Ok((canonical, hash))
}

/// The BLAKE3 hash of the file at `path`.
pub(crate) fn hash_file(path: &Path) -> io::Result<BlobHash> {
    let mut hasher = BlobHasher::new();
    io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hasher.finalize())
}

/// The environment of an action (ISO-5, PA-10): defaults, then the worker's, then the
/// action's, then the runner's own variables.
pub(crate) fn environment(
    defaults: [(&str, String); 3],
    worker: &BTreeMap<String, String>,
    action: &BTreeMap<String, String>,
    numbers: [(&str, String); 2],
    traceparent: Option<&str>,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = defaults
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    env.extend(worker.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(action.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (k, v) in numbers {
        env.insert(k.to_owned(), v);
    }
    if let Some(tp) = traceparent {
        env.insert("TRACEPARENT".to_owned(), tp.to_owned());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    // Attests ISO-4
    #[test]
    fn host_programs_must_resolve_under_an_allowed_root() {
        let tmp = tempfile::tempdir().unwrap();
        let allowed = tmp.path().join("allowed");
        let other = tmp.path().join("other");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let tool = allowed.join("tool");
        std::fs::write(&tool, b"#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let outside = other.join("evil");
        std::fs::write(&outside, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A link inside the allowed root pointing out of it is refused: the target counts.
        std::os::unix::fs::symlink(&outside, allowed.join("link")).unwrap();
        let plain = allowed.join("data");
        std::fs::write(&plain, b"x").unwrap();
        let roots = vec![allowed.canonicalize().unwrap()];

        let (path, hash) = resolve_host_program(tool.to_str().unwrap(), &roots).unwrap();
        assert_eq!(path, tool.canonicalize().unwrap());
        assert_eq!(hash, BlobHash::of(b"#!/bin/sh\n"));
        let err = resolve_host_program(allowed.join("link").to_str().unwrap(), &roots).unwrap_err();
        assert!(err.contains("under none of the allowed roots"), "{err}");
        let err = resolve_host_program(outside.to_str().unwrap(), &roots).unwrap_err();
        assert!(err.contains("under none"), "{err}");
        let err = resolve_host_program(plain.to_str().unwrap(), &roots).unwrap_err();
        assert!(err.contains("not an executable"), "{err}");
        let err = resolve_host_program(tool.to_str().unwrap(), &[]).unwrap_err();
        assert!(err.contains("allows no host programs"), "{err}");
        let err =
            resolve_host_program(allowed.join("missing").to_str().unwrap(), &roots).unwrap_err();
        assert!(err.contains("No such file"), "{err}");
    }

    // Attests ISO-5
    #[test]
    fn the_environment_is_layered() {
        let worker = BTreeMap::from([
            ("A".to_owned(), "w".to_owned()),
            ("PATH".to_owned(), "/w".to_owned()),
        ]);
        let action = BTreeMap::from([
            ("A".to_owned(), "a".to_owned()),
            ("PROCMESH_LSN".to_owned(), "9".to_owned()),
        ]);
        let env = environment(
            [
                ("PATH", DEFAULT_PATH.into()),
                ("HOME", "/tmp".into()),
                ("TMPDIR", "/tmp".into()),
            ],
            &worker,
            &action,
            [
                ("PROCMESH_LSN", "7".into()),
                ("PROCMESH_ATTEMPT", "1".into()),
            ],
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        assert_eq!(env["PATH"], "/w");
        assert_eq!(env["A"], "a");
        assert_eq!(env["HOME"], "/tmp");
        assert_eq!(
            env["PROCMESH_LSN"], "7",
            "the runner's numbers cannot be overridden"
        );
        assert!(env["TRACEPARENT"].starts_with("00-"));
        assert_eq!(env.len(), 7);
    }
}
