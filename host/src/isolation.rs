//! How this host isolates actions, decided once at its start (issue 10, HST-23): the configured
//! mode checked against what the kernel allows, the cgroup hierarchy detected, leftovers of a
//! previous life killed, host-program roots canonicalised. What the machine cannot give is
//! degraded loudly — a warning naming what is off and why — never silently, never fatally.
//!
//! ```text
//! isolation = "namespaces" ─ probe a user namespace ─ fails ─▶ warn (sysctl / AppArmor) ─▶ none
//! isolation = "none"       ─────────────────────────────────▶ warn (explicit opt-out)
//! cgroups: detect v2 | v1 ─ base "procmesh-<hash of the state dir>" ─ kill leftovers
//!          no delegation / none mounted ─▶ warn: CPU, memory and pids limits are off
//! ```
//!
//! - **HST-23** Every proc of the host gets the same [`ActionIsolation`]; the host announces its
//!   [`IsolationSummary`] (mode, cgroup version, warnings) at registration, and at start it has
//!   killed and removed every action cgroup a previous life of the same state directory left.

use std::path::Path;

use procmesh_protocol::messages::host::{ActionIsolation, IsolationMode, IsolationSummary};
use procmesh_sys::cgroup::{CgroupError, Cgroups};
use tracing::{info, warn};

use crate::config::HostConfig;
use crate::host::StartError;

/// What [`decide`] settled on.
#[derive(Debug, Clone)]
pub(crate) struct Isolation {
    /// What every proc is told.
    pub settings: ActionIsolation,
    /// What the host announces.
    pub summary: IsolationSummary,
}

/// The base cgroup's name for the state directory `state`: stable across restarts of the same
/// host, distinct between hosts sharing a machine.
pub fn cgroup_name(state: &Path) -> String {
    let canonical = state.canonicalize().unwrap_or_else(|_| state.to_path_buf());
    let hash = procmesh_protocol::BlobHash::of(canonical.as_os_str().as_encoded_bytes());
    format!("procmesh-{}", &hash.to_string()[..12])
}

/// Decides the isolation of this host's actions (HST-23). `memory_bytes` is the machine's.
pub(crate) fn decide(config: &HostConfig, memory_bytes: u64) -> Result<Isolation, StartError> {
    let mut warnings = Vec::new();
    let mut mode = config.isolation;
    match mode {
        IsolationMode::None => {
            let text = "isolation = \"none\": actions run as the host's user in its namespaces, \
                        next to its state directory and key (an explicit opt-out)";
            warn!("{text}");
            warnings.push(text.to_owned());
        }
        IsolationMode::Namespaces => {
            if let Err(reason) = procmesh_sys::sandbox::probe() {
                let text = format!(
                    "namespaces are not available here ({reason}): actions run with isolation none"
                );
                warn!("{text}");
                warnings.push(text);
                mode = IsolationMode::None;
            }
        }
    }

    let name = cgroup_name(&config.state_dir);
    let cgroup = match Cgroups::detect(&name) {
        Ok(cgroups) => {
            match cgroups.kill_leftovers() {
                Ok(0) => {}
                Ok(n) => warn!(
                    cgroups = n,
                    "killed the actions a previous life of this host left"
                ),
                Err(error) => {
                    return Err(StartError::Isolation(format!(
                        "cannot clear the action cgroups a previous life left: {error}"
                    )))
                }
            }
            info!(cgroups = %cgroups.describe(), "action cgroups");
            Some(cgroups.version().to_string())
        }
        Err(error) => {
            let why = match &error {
                CgroupError::PermissionDenied { .. } | CgroupError::NoDelegation { .. } => {
                    "no cgroup delegation for this user"
                }
                _ => "no usable cgroup hierarchy",
            };
            let text = format!("{why} ({error}): CPU, memory and pids limits are off");
            warn!("{text}");
            warnings.push(text);
            None
        }
    };

    let mut host_programs = Vec::new();
    for root in &config.allowed_host_programs {
        let canonical = root.canonicalize().map_err(|e| {
            StartError::Isolation(format!("allowed_host_programs: {}: {e}", root.display()))
        })?;
        if !canonical.is_dir() {
            return Err(StartError::Isolation(format!(
                "allowed_host_programs: {} is not a directory",
                root.display()
            )));
        }
        host_programs.push(canonical);
    }
    let resolv_conf = match &config.sandbox_resolv_conf {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            StartError::Isolation(format!("sandbox_resolv_conf: {}: {e}", path.display()))
        })?),
        None => None,
    };
    let settings = ActionIsolation {
        mode,
        cgroup_name: cgroup.is_some().then_some(name),
        cgroup: cgroup.clone(),
        uid: config.action_uid,
        gid: config.action_gid,
        memory_bytes: Some(config.action_memory_bytes.unwrap_or(memory_bytes / 2)),
        pids: Some(config.action_pids),
        tmp_bytes: config.action_tmp_bytes,
        host_programs: host_programs.clone(),
        seccomp: config.seccomp,
        resolv_conf,
    };
    info!(mode = %mode, cgroup = cgroup.as_deref().unwrap_or("off"), host_programs = ?host_programs, "action isolation");
    Ok(Isolation {
        settings,
        summary: IsolationSummary {
            mode,
            cgroup,
            warnings,
        },
    })
}

/// Removes the host's base cgroup `name` at shutdown, once its procs are gone (what is still in
/// it is killed); a failure is logged: the next start clears it.
pub(crate) fn remove_base(name: &str) {
    match Cgroups::detect(name).and_then(|cgroups| cgroups.remove_base()) {
        Ok(()) => tracing::debug!(cgroup = name, "action cgroup base removed"),
        Err(error) => warn!(%error, cgroup = name, "could not remove the action cgroup base"),
    }
}

/// The canonical form of `roots`, for tests.
#[cfg(test)]
fn canonical(roots: &[std::path::PathBuf]) -> Vec<std::path::PathBuf> {
    roots.iter().filter_map(|r| r.canonicalize().ok()).collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn the_cgroup_name_follows_the_state_dir() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_name(a.path()), cgroup_name(a.path()));
        assert_ne!(cgroup_name(a.path()), cgroup_name(b.path()));
        assert!(cgroup_name(a.path()).starts_with("procmesh-"));
        assert_eq!(cgroup_name(a.path()).len(), "procmesh-".len() + 12);
    }

    #[test]
    fn bad_host_program_roots_are_refused_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let config = HostConfig {
            state_dir: tmp.path().to_path_buf(),
            isolation: IsolationMode::None,
            allowed_host_programs: vec![tmp.path().join("missing")],
            ..HostConfig::default()
        };
        let err = decide(&config, 1 << 30).unwrap_err();
        assert!(err.to_string().contains("allowed_host_programs"), "{err}");
        let config = HostConfig {
            allowed_host_programs: vec![PathBuf::from("/usr/bin")],
            ..config
        };
        let decided = decide(&config, 1 << 30).unwrap();
        assert_eq!(
            decided.settings.host_programs,
            canonical(&[PathBuf::from("/usr/bin")])
        );
        assert_eq!(decided.settings.mode, IsolationMode::None);
        assert!(decided.summary.warnings[0].contains("explicit opt-out"));
        assert_eq!(decided.settings.memory_bytes, Some(1 << 29));
        if let Some(name) = &decided.settings.cgroup_name {
            remove_base(name);
        }
    }
}
