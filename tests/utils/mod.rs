//! Shared helpers of the cross-crate integration tests: certificates, the `procmesh` binary,
//! a host agent in its own OS process, a stand-in orchestrator actor, shell-script workers, and
//! `/proc` scans. Every wait is bounded.
#![allow(dead_code)]

pub mod admin;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use procmesh_protocol::{ActorId, HostAddr};
use procmesh_transport::{MeshCa, Role, TlsIdentity};

/// The `procmesh` binary under test.
pub fn procmesh_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_procmesh"))
}

/// A mesh CA with one identity of each role saved under a temporary directory: the
/// orchestrator's, a fleet-wide host certificate naming no node (hosts prove their node by
/// their node secret, and are told their name with `--node-name`), a client's and an
/// operator's.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub ca: MeshCa,
    pub orchestrator: TlsIdentity,
    pub host: TlsIdentity,
    pub client: TlsIdentity,
    pub operator: TlsIdentity,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa::generate("test", Duration::from_secs(3600)).unwrap();
        let issue = |role, name: &str| {
            let id = ca
                .issue(role, name, &[], Duration::from_secs(3600))
                .unwrap();
            id.save(&dir.path().join(role.as_str())).unwrap();
            id
        };
        let orchestrator = issue(Role::Orchestrator, "orchestrator");
        let host = issue(Role::Host, "");
        let client = issue(Role::Client, "");
        let operator = issue(Role::Operator, "");
        Certs {
            dir,
            ca,
            orchestrator,
            host,
            client,
            operator,
        }
    }

    /// The `--tls-dir` of a role.
    pub fn tls_dir(&self, role: Role) -> PathBuf {
        self.dir.path().join(role.as_str())
    }

    /// The orchestrator's `--tls-dir`.
    pub fn orchestrator_dir(&self) -> PathBuf {
        self.tls_dir(Role::Orchestrator)
    }

    /// The hosts' (shared) `--tls-dir`.
    pub fn host_dir(&self) -> PathBuf {
        self.tls_dir(Role::Host)
    }
}

/// A host's node name in these tests: its state directory's name (a restarted host keeps
/// both, and with them its node secret).
pub fn node_name(state: &Path) -> String {
    state
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "host".into())
}

/// `procmesh orchestrator` on `listen` with the orchestrator identity of `certs`, its state in
/// `state`, and `extra` flags; its process and actor id.
pub fn start_orchestrator(
    certs: &Certs,
    listen: &str,
    state: &Path,
    extra: &[&str],
) -> (Proc, ActorId) {
    let tls = certs.orchestrator_dir();
    let mut args = vec![
        "--listen",
        listen,
        "--tls-dir",
        tls.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (proc, ready) = start_procmesh("orchestrator", &args);
    (proc, ready.parse().expect("orchestrator actor id"))
}

/// `procmesh host` on `listen` with the fleet's host certificate (its node named after its
/// state directory), registering with `orchestrator`, with `procs` proc agents of `slots` each
/// and `extra` flags; its process, frontend address and admin listener address.
pub fn start_mesh_host(
    certs: &Certs,
    listen: &str,
    state: &Path,
    orchestrator: &ActorId,
    (procs, slots): (u32, u32),
    extra: &[&str],
) -> (Proc, HostAddr, String) {
    let (tls, node, orchestrator) = (certs.host_dir(), node_name(state), orchestrator.to_string());
    let capacity = (procs * slots).to_string();
    let (procs, slots) = (procs.to_string(), slots.to_string());
    let mut args = vec![
        "--listen",
        listen,
        "--tls-dir",
        tls.to_str().unwrap(),
        "--node-name",
        &node,
        "--state-dir",
        state.to_str().unwrap(),
        "--orchestrator",
        &orchestrator,
        "--procs",
        &procs,
        "--max-actions",
        &slots,
        "--capacity",
        &capacity,
    ];
    args.extend_from_slice(extra);
    let (proc, ready, admin) = start_procmesh_admin("host", &args);
    let admin = admin.expect("the host prints its admin address");
    (proc, ready.parse().expect("host address"), admin)
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
/// returns the process and `<what>`. Its stderr is passed through, and the last lines of it
/// are in the panic message if it never gets ready (an early exit names its status).
pub fn start_procmesh(command: &str, args: &[&str]) -> (Proc, String) {
    let (proc, ready, _) = start_procmesh_admin(command, args);
    (proc, ready)
}

/// [`start_procmesh`], also returning the address of its admin listener (`admin http://ADDR/`).
/// A node started without `--admin-listen` gets one on a free loopback port, so that tests on
/// one machine never race for the default ports.
pub fn start_procmesh_admin(command: &str, args: &[&str]) -> (Proc, String, Option<String>) {
    let node = matches!(command, "host" | "orchestrator");
    let extra: &[&str] = if node && !args.contains(&"--admin-listen") {
        &["--admin-listen", "127.0.0.1:0"]
    } else {
        &[]
    };
    let mut child = Command::new(procmesh_bin())
        .arg(command)
        .args(args)
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start procmesh host");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let last = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let kept = last.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() == 40 {
                kept.pop_front();
            }
            kept.push_back(line);
        }
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut admin = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("admin http://") {
                admin = Some(url.trim().trim_end_matches('/').to_owned());
            }
            if let Some(addr) = line.strip_prefix("ready ") {
                let _ = tx.send((addr.trim().to_owned(), admin.take()));
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(30));
    let mut proc = Proc(child);
    match ready {
        Ok((ready, admin)) => (proc, ready, admin),
        Err(_) => {
            // Give an exiting process a moment, then say how it ended and what it printed.
            std::thread::sleep(Duration::from_millis(200));
            let status = proc.0.try_wait();
            let lines: Vec<String> = last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect();
            panic!(
                "procmesh {command} did not print its ready line within 30 s (status: {status:?}); its last stderr lines:\n{}",
                lines.join("\n")
            )
        }
    }
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

#[allow(unused_imports)]
pub use procmesh_testkit::wait_until;

#[allow(unused_imports)]
pub use procmesh_testkit::{script_worker, FakeOrchestrator, Seen};

/// The orchestrator-side actor id the stand-in is exposed as on `node`.
pub fn orchestrator_id(node: &procmesh_transport::Node) -> ActorId {
    node.actor_id("orchestrator").unwrap()
}

/// Where the `procmesh` binary lives (for the host's allow-list).
pub fn bin_dir() -> PathBuf {
    procmesh_bin().parent().map(Path::to_path_buf).unwrap()
}

/// A client of the mesh orchestrator `orchestrator` with the test client identity, bound to
/// loopback, caching blobs in `cache_dir`.
pub async fn connect_client(
    certs: &Certs,
    orchestrator: &ActorId,
    cache_dir: &Path,
) -> procmesh_client::Client {
    let mut config = procmesh_client::ClientConfig::new(orchestrator.clone(), certs.client.clone());
    config.bind = Some("127.0.0.1:0".parse().unwrap());
    config.cache_dir = Some(cache_dir.to_path_buf());
    procmesh_client::Client::connect(config)
        .await
        .expect("client connects")
}

/// Registers a worker running `body` as a `/bin/sh` script (`run.sh`, `PATH=/usr/bin:/bin`).
pub async fn shell_worker(
    client: &procmesh_client::Client,
    body: &str,
) -> procmesh_protocol::spec::WorkerId {
    client
        .register_worker(
            &procmesh_client::WorkerBuilder::new()
                .bytes("run.sh", format!("#!/bin/sh\n{body}\n").into_bytes(), true)
                .executable("run.sh")
                .env("PATH", "/usr/bin:/bin"),
        )
        .await
        .expect("worker registered")
}

/// An orchestrator on loopback with its state in `state`, heartbeats every 200 ms and hosts
/// lost after 3 s of silence: what a single-host mesh test wants.
pub fn start_quick_orchestrator(certs: &Certs, state: &Path) -> (Proc, ActorId) {
    start_orchestrator(
        certs,
        "127.0.0.1:0",
        state,
        &["--heartbeat-interval-ms", "200", "--lost-after-ms", "3000"],
    )
}
