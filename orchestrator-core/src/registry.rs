//! Hosts as the orchestrator knows them: what each registered with, whether it is alive, its
//! ready procs (each proc's agent and capacity) from its last heartbeat, and the procs kept out
//! of placement until that host's next heartbeat because they refused a submission.
//!
//! ```text
//!  RegisterHost ─▶ Alive ─ Heartbeat (procs, running) ─▶ Alive (last seen = now)
//!                    │ silent past lost_after_ms (tick)
//!                    ▼
//!                  Lost ─ Heartbeat ─▶ UnknownHost ─▶ the host registers again ─▶ Alive
//! ```
//!
//! Pure bookkeeping: time is passed in. Every collection is ordered, so that a replay of the
//! journal makes the same decisions (ORC-26).

use std::collections::{BTreeMap, BTreeSet};

use procmesh_protocol::messages::host::HostInfo;
use procmesh_protocol::messages::orchestrator::{Heartbeat, HostState, HostView, ProcCapacity};
use serde::{Deserialize, Serialize};

use crate::authority::NodeGrant;
use crate::sched::{Book, Labels, ProcFree};
use procmesh_protocol::{ActorId, HostAddr, ProcId, Timestamp};

/// One host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct HostEntry {
    info: HostInfo,
    state: HostState,
    last_seen: Timestamp,
    procs: Vec<ProcCapacity>,
    /// Procs that refused a submission or could not be reached: no placement until the next
    /// heartbeat (ORC-17).
    sidelined: BTreeSet<ProcId>,
}

/// A node's binding (ORC-33): the address it last registered at, and the secret it proves,
/// when its certificate names no node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct NodeBinding {
    addr: HostAddr,
    #[serde(default)]
    secret: Option<[u8; 32]>,
}

/// A proc that may receive actions: its id, its maximum, its host's labels.
#[derive(Debug, Clone)]
pub(crate) struct ReadyProc {
    pub id: ProcId,
    pub max: u32,
    pub labels: Labels,
}

/// A host as `explain` sees it.
pub(crate) struct HostLook<'a> {
    pub alive: bool,
    pub labels: &'a Labels,
    pub procs: &'a [ProcCapacity],
    pub sidelined: &'a BTreeSet<ProcId>,
}

/// Every host that registered since the orchestrator started.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Registry {
    hosts: BTreeMap<HostAddr, HostEntry>,
    /// The agent of every proc a heartbeat named (kept after the proc leaves, so that a stop
    /// order still finds it).
    agents: BTreeMap<ProcId, ActorId>,
    /// Every node's binding, by name (ORC-33). Never shown: it holds secrets.
    #[serde(default)]
    nodes: BTreeMap<String, NodeBinding>,
}

impl Registry {
    /// A host registers (or registers again). Returns whether it was alive before: a host that
    /// registers while alive restarted, and the procs it had are gone (ORC-18).
    pub fn register(&mut self, mut info: HostInfo, node: NodeGrant, now: Timestamp) -> bool {
        let addr = info.addr.clone();
        // The secret is kept in the node's binding only, never in what views show.
        info.node_secret = None;
        info.node = node.name.clone();
        let binding = self.nodes.entry(node.name).or_insert(NodeBinding {
            addr: addr.clone(),
            secret: node.secret,
        });
        binding.addr = addr.clone();
        if node.secret.is_some() {
            binding.secret = node.secret;
        }
        let entry = HostEntry {
            info,
            state: HostState::Alive,
            last_seen: now,
            procs: Vec::new(),
            sidelined: BTreeSet::new(),
        };
        match self.hosts.insert(addr, entry) {
            Some(old) => old.state == HostState::Alive,
            None => false,
        }
    }

    /// A heartbeat: `false` if the host is unknown or was declared lost (it must register
    /// again). Procs whose agent lives on another address are ignored.
    pub fn heartbeat(&mut self, heartbeat: &Heartbeat, now: Timestamp) -> bool {
        let Some(entry) = self.hosts.get_mut(&heartbeat.addr) else {
            return false;
        };
        if entry.state != HostState::Alive {
            return false;
        }
        entry.last_seen = now;
        entry.sidelined.clear();
        entry.procs = heartbeat
            .procs
            .iter()
            .filter(|p| {
                let ours = p.agent.addr() == &heartbeat.addr;
                if !ours {
                    tracing::warn!(
                        host = %heartbeat.addr,
                        agent = %p.agent,
                        "heartbeat names an agent of another address; ignored"
                    );
                }
                ours
            })
            .cloned()
            .collect();
        entry.procs.sort_by(|a, b| a.agent.cmp(&b.agent));
        for p in &entry.procs {
            self.agents
                .insert(p.agent.proc_id().clone(), p.agent.clone());
        }
        true
    }

    /// Declares every alive host silent for more than `lost_after_ms` lost; returns them.
    pub fn expire(&mut self, now: Timestamp, lost_after_ms: u64) -> Vec<HostAddr> {
        let mut lost = Vec::new();
        for (addr, entry) in &mut self.hosts {
            if entry.state == HostState::Alive && now.millis_since(entry.last_seen) > lost_after_ms
            {
                entry.state = HostState::Lost;
                entry.procs.clear();
                entry.sidelined.clear();
                lost.push(addr.clone());
            }
        }
        lost
    }

    /// After a restart: every alive host gets a full `lost_after_ms` from `now` to heartbeat
    /// again, as if it had just been heard (ORC-27). Returns how many.
    pub fn recovered(&mut self, now: Timestamp) -> usize {
        let mut alive = 0;
        for entry in self.hosts.values_mut() {
            if entry.state == HostState::Alive {
                entry.last_seen = now;
                alive += 1;
            }
        }
        alive
    }

    /// A proc died: it leaves its host's list until a heartbeat names it again.
    pub fn proc_lost(&mut self, proc: &ProcId) {
        if let Some(entry) = self.hosts.get_mut(proc.addr()) {
            entry.procs.retain(|p| p.agent.proc_id() != proc);
        }
    }

    /// Keeps `proc` out of placement until its host's next heartbeat (ORC-17).
    pub fn sideline(&mut self, proc: &ProcId) {
        if let Some(entry) = self.hosts.get_mut(proc.addr()) {
            entry.sidelined.insert(proc.clone());
        }
    }

    /// The node the host at `addr` registered as; `None` when unknown, or registered before
    /// nodes were bound.
    pub fn node_at(&self, addr: &HostAddr) -> Option<&str> {
        self.hosts
            .get(addr)
            .map(|e| e.info.node.as_str())
            .filter(|n| !n.is_empty())
    }

    /// The secret node `name` is bound to, if it registered with one.
    pub fn node_secret(&self, name: &str) -> Option<[u8; 32]> {
        self.nodes.get(name).and_then(|b| b.secret)
    }

    /// Every bound node: name, address, secret (for the transport's admission check).
    pub fn bindings(&self) -> impl Iterator<Item = (&str, &HostAddr, Option<&[u8; 32]>)> + '_ {
        self.nodes
            .iter()
            .map(|(name, b)| (name.as_str(), &b.addr, b.secret.as_ref()))
    }

    /// The agent of `proc`, if a heartbeat ever named it.
    pub fn agent(&self, proc: &ProcId) -> Option<&ActorId> {
        self.agents.get(proc)
    }

    /// Every proc that may receive actions: of alive hosts, not sidelined, in (host, agent)
    /// order.
    pub fn ready_procs(&self) -> Vec<ReadyProc> {
        let mut procs = Vec::new();
        for entry in self.hosts.values() {
            if entry.state != HostState::Alive {
                continue;
            }
            for p in &entry.procs {
                let id = p.agent.proc_id();
                if entry.sidelined.contains(id) || p.capacity.max == 0 {
                    continue;
                }
                procs.push(ReadyProc {
                    id: id.clone(),
                    max: p.capacity.max,
                    labels: entry.info.labels.clone(),
                });
            }
        }
        procs
    }

    /// Every known host as `explain` looks at it: alive or not, its labels, its procs (last
    /// heartbeat) and which of them are sidelined (ORC-17).
    pub fn looks(&self) -> impl Iterator<Item = HostLook<'_>> + '_ {
        self.hosts.values().map(|entry| HostLook {
            alive: entry.state == HostState::Alive,
            labels: &entry.info.labels,
            procs: &entry.procs,
            sidelined: &entry.sidelined,
        })
    }

    /// Every known host, with how many actions `book` has placed on it.
    pub fn views(&self, book: &Book) -> Vec<HostView> {
        self.hosts
            .values()
            .map(|entry| {
                let placed: Vec<u64> = entry
                    .procs
                    .iter()
                    .map(|p| book.placed_on(p.agent.proc_id()).count() as u64)
                    .collect();
                HostView {
                    info: entry.info.clone(),
                    state: entry.state,
                    last_heartbeat: entry.last_seen,
                    procs: entry.procs.clone(),
                    running: placed.iter().sum(),
                    placed,
                }
            })
            .collect()
    }
}

/// The free slots of each ready proc: its maximum minus what `book` has placed on it (ORC-16).
pub(crate) fn free_slots<'a>(book: &Book, procs: &'a [ReadyProc]) -> Vec<ProcFree<'a>> {
    procs
        .iter()
        .filter_map(|p| {
            let placed = book.placed_on(&p.id).count();
            let free = (p.max as usize).saturating_sub(placed) as u32;
            (free > 0).then(|| ProcFree::new(&p.id, free).with_labels(&p.labels))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use procmesh_protocol::messages::agent::Capacity;
    use procmesh_protocol::messages::host::SystemInfo;

    use super::*;

    fn info(addr: &HostAddr) -> HostInfo {
        HostInfo {
            addr: addr.clone(),
            capacity: 2,
            labels: BTreeMap::new(),
            system: SystemInfo {
                cores: 2,
                memory_bytes: 1 << 30,
                os: "linux".into(),
                hostname: "h".into(),
                arch: "x86_64".into(),
            },
            version: "0.1.0".into(),
            node: String::new(),
            node_secret: None,
            isolation: None,
        }
    }

    fn grant() -> NodeGrant {
        NodeGrant {
            name: "a".into(),
            secret: None,
        }
    }

    fn beat(addr: &HostAddr, procs: &[&str]) -> Heartbeat {
        Heartbeat {
            addr: addr.clone(),
            procs: procs
                .iter()
                .map(|name| ProcCapacity {
                    agent: addr.proc(name).unwrap().actor("agent").unwrap(),
                    capacity: Capacity { max: 2, free: 2 },
                    restarts: 0,
                })
                .collect(),
            running: Vec::new(),
        }
    }

    #[test]
    fn lifecycle_of_a_host() {
        let a = HostAddr::Local("a".into());
        let mut reg = Registry::default();
        assert!(!reg.heartbeat(&beat(&a, &["p1"]), Timestamp(0)));
        assert!(!reg.register(info(&a), grant(), Timestamp(0)));
        assert!(reg.heartbeat(&beat(&a, &["p2", "p1"]), Timestamp(10)));
        let names: Vec<String> = reg
            .ready_procs()
            .iter()
            .map(|p| p.id.name().to_owned())
            .collect();
        assert_eq!(names, ["p1", "p2"]);

        let p1 = a.proc("p1").unwrap();
        reg.sideline(&p1);
        assert_eq!(reg.ready_procs().len(), 1);
        assert!(reg.heartbeat(&beat(&a, &["p1", "p2"]), Timestamp(20)));
        assert_eq!(reg.ready_procs().len(), 2, "a heartbeat ends the sideline");

        reg.proc_lost(&p1);
        assert_eq!(reg.ready_procs().len(), 1);
        assert!(reg.agent(&p1).is_some(), "stop orders still find the agent");

        assert!(reg.expire(Timestamp(100), 100).is_empty());
        assert_eq!(reg.expire(Timestamp(121), 100), vec![a.clone()]);
        assert!(reg.ready_procs().is_empty());
        assert!(
            !reg.heartbeat(&beat(&a, &["p1"]), Timestamp(130)),
            "lost: register again"
        );
        assert!(
            !reg.register(info(&a), grant(), Timestamp(140)),
            "it was lost, not alive"
        );
        assert!(
            reg.register(info(&a), grant(), Timestamp(150)),
            "a second registration while alive"
        );
    }
}
