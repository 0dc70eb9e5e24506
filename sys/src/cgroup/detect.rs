//! Which hierarchy to use, from `/proc/self/mountinfo` and `/proc/self/cgroup`.

use std::path::{Path, PathBuf};

use super::files;
use super::{v1, CgroupError, Cgroups, V1Dirs};

const MOUNTINFO: &str = "/proc/self/mountinfo";
const PROC_CGROUP: &str = "/proc/self/cgroup";

/// One cgroup filesystem mount.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    /// The cgroup path mounted (field 4), `/` unless a subtree is bind-mounted.
    root: String,
    mountpoint: PathBuf,
    /// `cgroup` or `cgroup2`.
    fstype: String,
    /// Super options; for v1 they name the controllers.
    options: Vec<String>,
}

/// One line of `/proc/self/cgroup`: the controllers of a hierarchy (empty for v2) and this
/// process's cgroup in it.
#[derive(Debug, PartialEq, Eq)]
struct Membership {
    controllers: Vec<String>,
    path: String,
}

pub(super) fn detect(name: &str) -> Result<Cgroups, CgroupError> {
    let mounts = parse_mountinfo(&files::read(Path::new(MOUNTINFO))?);
    let own = parse_proc_cgroup(&files::read(Path::new(PROC_CGROUP))?)?;
    let mut notes = Vec::new();
    for mount in mounts.iter().filter(|m| m.fstype == "cgroup2") {
        let offered =
            files::read_opt(&mount.mountpoint.join("cgroup.controllers")).unwrap_or_default();
        let offered: Vec<&str> = offered.split_whitespace().collect();
        if ["cpu", "memory", "pids"]
            .iter()
            .all(|c| offered.contains(c))
        {
            let own_path = own
                .iter()
                .find(|m| m.controllers.is_empty())
                .map(|m| m.path.as_str())
                .unwrap_or("/");
            let rel = relative_to_mount(own_path, &mount.root);
            return Cgroups::v2_in(&mount.mountpoint, Path::new(&rel), name);
        }
        notes.push(format!(
            "cgroup2 at {} offers [{}] (needs cpu, memory, pids)",
            mount.mountpoint.display(),
            offered.join(" ")
        ));
    }
    let mut dirs = Vec::new();
    let mut missing = Vec::new();
    for controller in v1::CONTROLLERS {
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == controller));
        match mount {
            Some(mount) => {
                let own_path = own
                    .iter()
                    .find(|m| m.controllers.iter().any(|c| c == controller))
                    .map(|m| m.path.as_str())
                    .unwrap_or("/");
                dirs.push(
                    mount
                        .mountpoint
                        .join(relative_to_mount(own_path, &mount.root)),
                );
            }
            None => missing.push(controller),
        }
    }
    if let [pids, memory, cpu, cpuacct, freezer] = dirs.as_slice() {
        let dirs = V1Dirs {
            pids: pids.clone(),
            memory: memory.clone(),
            cpu: cpu.clone(),
            cpuacct: cpuacct.clone(),
            freezer: freezer.clone(),
        };
        return Cgroups::v1_at(&dirs, name);
    }
    if notes.is_empty() {
        notes.push("no cgroup2 mount".to_owned());
    }
    notes.push(format!(
        "v1 hierarchies not mounted: {}",
        missing.join(", ")
    ));
    Err(CgroupError::Unsupported {
        missing: notes.join("; "),
    })
}

/// This process's cgroup `path` as seen below a mount of cgroup `mount_root`, relative (no
/// leading `/`). A path outside the mounted subtree (not visible) maps to the mount itself.
fn relative_to_mount(path: &str, mount_root: &str) -> String {
    let root = mount_root.trim_end_matches('/');
    let rest = match path.strip_prefix(root) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => "",
    };
    rest.trim_start_matches('/').to_owned()
}

/// The cgroup mounts in `/proc/self/mountinfo`:
/// `id parent maj:min root mountpoint opts [optional...] - fstype source superopts`.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            let _source = right.next()?;
            let options = right.next().unwrap_or("");
            Some(Mount {
                root: unescape(left.get(3)?),
                mountpoint: PathBuf::from(unescape(left.get(4)?)),
                fstype: fstype.to_owned(),
                options: options.split(',').map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(b) = u8::try_from(value) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/proc/self/cgroup`: `id:controllers:path` per line (`0::path` for v2).
fn parse_proc_cgroup(text: &str) -> Result<Vec<Membership>, CgroupError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_id, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
                (Some(id), Some(c), Some(p)) => (id, c, p),
                _ => {
                    return Err(CgroupError::Malformed {
                        path: PROC_CGROUP.into(),
                        detail: format!("line {line:?}"),
                    })
                }
            };
            Ok(Membership {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                path: path.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
42 31 0:39 /docker/x /sys/fs/cgroup/a\\040b rw - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn mountinfo_yields_cgroup_mounts() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[0].mountpoint, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(mounts[0].options, ["rw", "cpu"]);
        assert_eq!(mounts[2].fstype, "cgroup2");
        assert_eq!(mounts[3].root, "/docker/x");
        assert_eq!(mounts[3].mountpoint, PathBuf::from("/sys/fs/cgroup/a b"));
        assert_eq!(mounts[3].options, ["rw", "cpu", "cpuacct"]);
    }

    #[test]
    fn proc_cgroup_parses() {
        let own =
            parse_proc_cgroup("4:memory:/process_api/h\n1:cpu,cpuacct:/\n0::/\n").expect("parse");
        assert_eq!(own[0].controllers, ["memory"]);
        assert_eq!(own[0].path, "/process_api/h");
        assert_eq!(own[1].controllers, ["cpu", "cpuacct"]);
        assert!(own[2].controllers.is_empty());
        assert!(parse_proc_cgroup("garbage\n").is_err());
        // A path may itself contain ':'.
        assert_eq!(parse_proc_cgroup("0::/a:b").expect("parse")[0].path, "/a:b");
    }

    #[test]
    fn own_path_is_relative_to_the_mount_root() {
        assert_eq!(relative_to_mount("/process_api/h", "/"), "process_api/h");
        assert_eq!(relative_to_mount("/", "/"), "");
        assert_eq!(relative_to_mount("/docker/x/y", "/docker/x"), "y");
        assert_eq!(relative_to_mount("/docker/x", "/docker/x"), "");
        assert_eq!(relative_to_mount("/docker/xy", "/docker/x"), "");
        assert_eq!(relative_to_mount("/other", "/docker/x"), "");
    }

    #[test]
    fn octal_escapes_are_undone() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("plain"), "plain");
        assert_eq!(unescape("end\\"), "end\\");
        assert_eq!(unescape("x\\04"), "x\\04");
    }
}
