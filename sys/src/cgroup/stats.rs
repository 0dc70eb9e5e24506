//! Whole-tree accounting read from control files (CG-7: never an error).

use std::path::Path;

use super::files::read_opt;

/// What an action's cgroup used, over its whole process tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// CPU time (user + system) in milliseconds; `None` if not readable.
    pub cpu_ms: Option<u64>,
    /// Peak memory in bytes; `None` if the kernel does not report it (v2 before 5.19).
    pub peak_memory_bytes: Option<u64>,
    /// How many processes the memory limit killed (v1 without an `oom_kill` count: 1 if the
    /// limit was hit and allocations failed, else 0).
    pub oom_kills: u64,
}

/// v2: `cpu.stat` usage_usec, `memory.peak`, `memory.events` oom_kill.
pub(super) fn v2(dir: Option<&Path>) -> CgroupStats {
    let Some(dir) = dir else {
        return CgroupStats::default();
    };
    let file = |name: &str| read_opt(&dir.join(name));
    CgroupStats {
        cpu_ms: file("cpu.stat")
            .and_then(|s| keyed(&s, "usage_usec"))
            .map(|us| us / 1000),
        peak_memory_bytes: file("memory.peak").and_then(|s| number(&s)),
        oom_kills: file("memory.events")
            .and_then(|s| keyed(&s, "oom_kill"))
            .unwrap_or(0),
    }
}

/// v1: `cpuacct.usage` (ns), `memory.max_usage_in_bytes`, `memory.oom_control` oom_kill, else
/// `memory.failcnt` > 0 with the peak at `memory.limit_in_bytes`.
pub(super) fn v1(cpuacct: Option<&Path>, memory: Option<&Path>) -> CgroupStats {
    let cpu_ms = cpuacct
        .and_then(|d| read_opt(&d.join("cpuacct.usage")))
        .and_then(|s| number(&s))
        .map(|ns| ns / 1_000_000);
    let Some(memory) = memory else {
        return CgroupStats {
            cpu_ms,
            ..CgroupStats::default()
        };
    };
    let file = |name: &str| read_opt(&memory.join(name)).and_then(|s| number(&s));
    let peak = file("memory.max_usage_in_bytes");
    let oom_kills =
        match read_opt(&memory.join("memory.oom_control")).and_then(|s| keyed(&s, "oom_kill")) {
            Some(n) => n,
            None => {
                let failed = file("memory.failcnt").unwrap_or(0) > 0;
                let at_limit = match (peak, file("memory.limit_in_bytes")) {
                    (Some(peak), Some(limit)) => peak >= limit,
                    _ => false,
                };
                u64::from(failed && at_limit)
            }
        };
    CgroupStats {
        cpu_ms,
        peak_memory_bytes: peak,
        oom_kills,
    }
}

/// The value of `key` in a flat-keyed file (`key value` per line).
pub(super) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(key))
            .then(|| words.next())
            .flatten()
            .and_then(|v| v.parse().ok())
    })
}

/// A file holding one number (`max` and junk are `None`).
pub(super) fn number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_parse() {
        let cpu = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n";
        assert_eq!(keyed(cpu, "usage_usec"), Some(123456));
        assert_eq!(keyed(cpu, "user_usec"), Some(100000));
        assert_eq!(keyed(cpu, "nr_periods"), None);
        let events = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(keyed(events, "oom_kill"), Some(2));
        assert_eq!(keyed("oom_kill x\n", "oom_kill"), None);
        assert_eq!(keyed("", "oom_kill"), None);
    }

    #[test]
    fn numbers_parse() {
        assert_eq!(number("42\n"), Some(42));
        assert_eq!(number("max\n"), None);
        assert_eq!(number(""), None);
    }

    #[test]
    fn missing_files_are_none() {
        // Attests CG-7.
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(v2(Some(dir.path())), CgroupStats::default());
        assert_eq!(
            v1(Some(dir.path()), Some(dir.path())),
            CgroupStats::default()
        );
        assert_eq!(v2(None), CgroupStats::default());
    }

    #[test]
    fn v1_falls_back_to_failcnt_at_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let put = |name: &str, v: &str| std::fs::write(dir.path().join(name), v).expect("write");
        put("memory.max_usage_in_bytes", "33554432\n");
        put("memory.limit_in_bytes", "33554432\n");
        put("memory.failcnt", "7\n");
        put("cpuacct.usage", "2500000000\n");
        let s = v1(Some(dir.path()), Some(dir.path()));
        assert_eq!(s.oom_kills, 1);
        assert_eq!(s.cpu_ms, Some(2500));
        assert_eq!(s.peak_memory_bytes, Some(33554432));
        put(
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        );
        assert_eq!(v1(None, Some(dir.path())).oom_kills, 3);
    }
}
