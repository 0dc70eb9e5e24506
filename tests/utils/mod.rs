//! Shared helpers of the cross-crate integration tests: certificates, the `procmesh` binary,
//! a host agent in its own OS process, a stand-in orchestrator actor, shell-script workers, and
//! `/proc` scans. Every wait is bounded.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kameo::message::{Context, Message};
use kameo::Actor;
use procmesh_protocol::action::{ActionState, Transition};
use procmesh_protocol::messages::orchestrator::{
    OrchestratorError, OrchestratorReply, OrchestratorRequest,
};
use procmesh_protocol::spec::{WorkerDescriptor, WorkerFile, WorkerId};
use procmesh_protocol::{ActorId, HostAddr};
use procmesh_transport::{BlobStore, MeshCa, Request, Role, TlsIdentity, WireReply};

/// The `procmesh` binary under test.
pub fn procmesh_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_procmesh"))
}

/// A mesh CA with node and client identities saved under a temporary directory.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub ca: MeshCa,
    pub node: TlsIdentity,
    pub client: TlsIdentity,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa::generate("test", Duration::from_secs(3600)).unwrap();
        let node = ca
            .issue(Role::Node, "node", &[], Duration::from_secs(3600))
            .unwrap();
        let client = ca
            .issue(Role::Client, "client", &[], Duration::from_secs(3600))
            .unwrap();
        node.save(&dir.path().join("node")).unwrap();
        client.save(&dir.path().join("client")).unwrap();
        Certs {
            dir,
            ca,
            node,
            client,
        }
    }

    pub fn node_dir(&self) -> PathBuf {
        self.dir.path().join("node")
    }
}

/// An OS process killed (SIGKILL) and reaped when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `procmesh host` with `args` and waits (bounded) for its `ready <addr>` line.
pub fn start_host(args: &[&str]) -> (Proc, HostAddr) {
    let (proc, addr) = start_procmesh("host", args);
    (proc, addr.parse().expect("host address"))
}

/// Starts `procmesh <command>` with `args` and waits (bounded) for its `ready <what>` line;
/// returns the process and `<what>`.
pub fn start_procmesh(command: &str, args: &[&str]) -> (Proc, String) {
    let mut child = Command::new(procmesh_bin())
        .arg(command)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start procmesh host");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("ready ") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let proc = Proc(child);
    let ready = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("procmesh {command} did not print its ready line within 30 s"));
    (proc, ready)
}

/// Every descendant of `pid` (scanning /proc).
pub fn descendants(pid: u32) -> Vec<u32> {
    procmesh_sys::procfs::descendants_of(pid)
}

/// Pids of live (non-zombie) processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && !procmesh_sys::procfs::is_zombie(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

/// Polls `check` every 20 ms until true or `within` passes.
pub fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A worker made of one `#!/bin/sh` script, stored in `store`.
pub async fn script_worker(store: &BlobStore, script: &str) -> WorkerDescriptor {
    let hash = store.put_bytes(script.as_bytes()).await.unwrap();
    WorkerDescriptor {
        executable: "run.sh".into(),
        files: vec![WorkerFile {
            path: "run.sh".into(),
            hash,
            size: script.len() as u64,
            executable: true,
        }],
        directories: Vec::new(),
        env: BTreeMap::new(),
    }
}

/// What the stand-in orchestrator saw.
#[derive(Default)]
pub struct Seen {
    pub transitions: Vec<Transition>,
    pub requests: Vec<String>,
}

/// A stand-in orchestrator: serves worker descriptors and records every request and transition.
#[derive(Actor)]
pub struct FakeOrchestrator {
    pub workers: BTreeMap<WorkerId, WorkerDescriptor>,
    pub seen: Arc<Mutex<Seen>>,
}

impl Message<Request<OrchestratorRequest>> for FakeOrchestrator {
    type Reply = WireReply<Result<OrchestratorReply, OrchestratorError>>;

    async fn handle(
        &mut self,
        req: Request<OrchestratorRequest>,
        _ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        let mut seen = self.seen.lock().unwrap();
        let kind = format!("{:?}", req.message);
        seen.requests
            .push(kind.split(['(', ' ', '{']).next().unwrap_or("").to_owned());
        Ok(match req.message {
            OrchestratorRequest::GetWorker(id) => match self.workers.get(&id) {
                Some(d) => Ok(OrchestratorReply::Worker(d.clone())),
                None => Err(OrchestratorError::UnknownWorker(id)),
            },
            OrchestratorRequest::ActionUpdate(t) => {
                seen.transitions.push(t);
                Ok(OrchestratorReply::Ack)
            }
            OrchestratorRequest::ActionUpdates(ts) => {
                seen.transitions.extend(ts);
                Ok(OrchestratorReply::Ack)
            }
            _ => Ok(OrchestratorReply::Ack),
        })
    }
}

impl Seen {
    /// The final transition of `lsn`, if it has ended.
    pub fn terminal(&self, lsn: u64) -> Option<&Transition> {
        self.transitions
            .iter()
            .find(|t| t.lsn.0 == lsn && t.state.is_terminal())
    }

    pub fn count_in(&self, state: ActionState) -> usize {
        self.transitions.iter().filter(|t| t.state == state).count()
    }
}

/// The orchestrator-side actor id the stand-in is exposed as on `node`.
pub fn orchestrator_id(node: &procmesh_transport::Node) -> ActorId {
    node.actor_id("orchestrator").unwrap()
}

/// Where the `procmesh` binary lives (for the host's allow-list).
pub fn bin_dir() -> PathBuf {
    procmesh_bin().parent().map(Path::to_path_buf).unwrap()
}
