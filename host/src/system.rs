//! What the host tells the orchestrator about its machine ([`SystemInfo`]), read from `/proc`.

use std::path::Path;

use procmesh_protocol::messages::SystemInfo;

/// The machine this process runs on. Unreadable values are reported as 0 or empty rather than
/// failing: registration must not depend on them.
pub fn system_info() -> SystemInfo {
    let read = |path: &str| {
        std::fs::read_to_string(Path::new(path))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let os_type = read("/proc/sys/kernel/ostype").to_lowercase();
    let release = read("/proc/sys/kernel/osrelease");
    let os = match (os_type.is_empty(), release.is_empty()) {
        (false, false) => format!("{os_type} {release}"),
        (false, true) => os_type,
        _ => std::env::consts::OS.to_owned(),
    };
    SystemInfo {
        cores: logical_cpus(),
        memory_bytes: memory_bytes(&read("/proc/meminfo")),
        os,
        hostname: read("/proc/sys/kernel/hostname"),
        arch: std::env::consts::ARCH.to_owned(),
    }
}

/// Logical CPUs this process may use (at least 1).
pub fn logical_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes; 0 if absent.
fn memory_bytes(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            let mut parts = rest.split_whitespace();
            let value: u64 = parts.next()?.parse().ok()?;
            let unit = match parts.next() {
                Some("kB") | Some("KB") => 1024,
                None => 1,
                Some(_) => return None,
            };
            value.checked_mul(unit)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_parsed() {
        let text = "MemTotal:       16304208 kB\nMemFree:         1000 kB\n";
        assert_eq!(memory_bytes(text), 16_304_208 * 1024);
        assert_eq!(memory_bytes("MemFree: 1 kB"), 0);
        assert_eq!(memory_bytes("MemTotal: x kB"), 0);
    }

    #[test]
    fn this_machine_is_described() {
        let info = system_info();
        assert!(info.cores >= 1);
        assert!(info.memory_bytes > 0);
        assert!(info.os.starts_with("linux"), "{}", info.os);
        assert!(!info.arch.is_empty());
    }
}
