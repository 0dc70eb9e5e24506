//! A cgroup reused by one action after another (a warm slot's, CG-9): exact limits per action,
//! and each action's own figures as deltas from a [`Meter`] taken before it started.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use super::files::{read_opt, write_raw};
use super::stats::{keyed, number};
use super::{ActionCgroup, CgroupError, CgroupLimits, CgroupStats, CgroupVersion};

/// Where one action's figures start in a reused cgroup.
#[derive(Debug)]
pub struct Meter {
    cpu_ms: Option<u64>,
    oom_kills: u64,
    /// v2: `memory.peak` opened for this action and reset through this fd (kernel >= 6.12);
    /// `None` where it cannot be reset (then the peak is not reported).
    peak: Option<File>,
    /// v1: whether `memory.max_usage_in_bytes` was reset.
    peak_reset: bool,
}

impl ActionCgroup {
    /// Sets every limit: those that are `None` become unlimited, so nothing an earlier action
    /// of the same cgroup had carries over (CG-9).
    pub fn set_limits_exactly(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        super::check_limits(limits)?;
        match self.version {
            CgroupVersion::V1 => super::v1::set_limits_exactly(self, limits),
            CgroupVersion::V2 => super::v2::set_limits_exactly(self, limits),
        }
    }

    /// Its `cgroup.procs` files (one per hierarchy), open for writing: a process that writes
    /// `0` into each joins the cgroup (the sandbox's init, `spawn_joined`'s child).
    pub fn open_procs(&self) -> Result<Vec<std::os::fd::OwnedFd>, CgroupError> {
        self.procs_files()
            .iter()
            .map(|f| {
                File::options()
                    .write(true)
                    .open(f)
                    .map(Into::into)
                    .map_err(|e| super::files::io_err("open", f, e))
            })
            .collect()
    }

    /// Whether no process is in it (nested cgroups included), from one counter where the
    /// kernel keeps one — v2 `cgroup.events` populated, v1 `pids.current` — instead of
    /// listing every hierarchy's processes.
    pub fn is_empty(&self) -> bool {
        let counted = match self.version {
            CgroupVersion::V2 => self.dir_of("memory").and_then(|d| {
                read_opt(&d.join("cgroup.events")).and_then(|s| keyed(&s, "populated"))
            }),
            CgroupVersion::V1 => self
                .dir_of("pids")
                .and_then(|d| read_opt(&d.join("pids.current")).and_then(|s| number(&s))),
        };
        match counted {
            Some(n) => n == 0,
            None => self.pids().is_empty(),
        }
    }

    /// Starts metering the next action: resets the peak-memory counter and notes the CPU and
    /// OOM counters. Call while the cgroup is empty (CG-9).
    pub fn meter(&self) -> Meter {
        let CgroupStats {
            cpu_ms, oom_kills, ..
        } = self.stats();
        let memory = self.dir_of("memory");
        match self.version {
            CgroupVersion::V1 => Meter {
                cpu_ms,
                oom_kills,
                peak: None,
                peak_reset: memory
                    .is_some_and(|d| write_raw(&d.join("memory.max_usage_in_bytes"), "0").is_ok()),
            },
            CgroupVersion::V2 => Meter {
                cpu_ms,
                oom_kills,
                peak: memory.and_then(|d| {
                    let mut f = File::options()
                        .read(true)
                        .write(true)
                        .open(d.join("memory.peak"))
                        .ok()?;
                    f.write_all(b"reset\n").ok()?;
                    Some(f)
                }),
                peak_reset: false,
            },
        }
    }

    /// The figures since `meter` (CG-7: never an error; a figure that cannot be told apart from
    /// earlier actions' is `None`).
    pub fn since(&self, meter: Meter) -> CgroupStats {
        let now = self.stats();
        let peak_memory_bytes = match (self.version, meter.peak) {
            (CgroupVersion::V2, Some(mut f)) => {
                let mut text = String::new();
                f.seek(SeekFrom::Start(0))
                    .ok()
                    .and_then(|_| f.read_to_string(&mut text).ok())
                    .and_then(|_| number(&text))
            }
            (CgroupVersion::V1, _) if meter.peak_reset => now.peak_memory_bytes,
            _ => None,
        };
        CgroupStats {
            cpu_ms: match (now.cpu_ms, meter.cpu_ms) {
                (Some(now), Some(then)) => Some(now.saturating_sub(then)),
                _ => None,
            },
            peak_memory_bytes,
            oom_kills: now.oom_kills.saturating_sub(meter.oom_kills),
        }
    }
}
