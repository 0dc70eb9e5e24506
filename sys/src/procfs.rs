//! Reading `/proc`: a process's identity (pid + start time), parent, state, children.

use std::io;

/// A process as it can be recognised later: its pid and its start time (clock ticks since
/// boot, field 22 of `/proc/<pid>/stat`). A reused pid has another start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessIdentity {
    /// The pid.
    pub pid: u32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

struct Stat {
    state: char,
    ppid: u32,
    start_time: u64,
}

fn stat(pid: u32) -> io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| io::Error::other(format!("unreadable /proc/{pid}/stat")))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let bad = || io::Error::other(format!("unreadable /proc/{pid}/stat"));
    // Field 3 (state) is fields[0]; field 4 (ppid) fields[1]; field 22 (starttime) fields[19].
    Ok(Stat {
        state: fields
            .first()
            .and_then(|s| s.chars().next())
            .ok_or_else(bad)?,
        ppid: fields.get(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?,
        start_time: fields
            .get(19)
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?,
    })
}

impl ProcessIdentity {
    /// The identity of the live (or zombie) process `pid`.
    pub fn of(pid: u32) -> io::Result<ProcessIdentity> {
        Ok(ProcessIdentity {
            pid,
            start_time: stat(pid)?.start_time,
        })
    }

    /// Whether `pid` is still this very process: present, not a zombie, same start time.
    pub fn is_alive(&self) -> bool {
        stat(self.pid).is_ok_and(|s| s.start_time == self.start_time && s.state != 'Z')
    }
}

/// The parent of `pid`.
pub fn parent_pid(pid: u32) -> io::Result<u32> {
    Ok(stat(pid)?.ppid)
}

/// Whether `pid` has exited but not been reaped.
pub fn is_zombie(pid: u32) -> bool {
    stat(pid).is_ok_and(|s| s.state == 'Z')
}

/// Every process whose parent is `ppid` (zombies included), by scanning `/proc`.
pub fn children_of(ppid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_ok_and(|s| s.ppid == ppid))
        .collect()
}

/// Every descendant of `pid` (children, their children, …).
pub fn descendants_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    // Bounded: a process tree cannot hold more processes than pid_max.
    while let Some(p) = frontier.pop() {
        for child in children_of(p) {
            if !out.contains(&child) && out.len() < 1 << 22 {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}
