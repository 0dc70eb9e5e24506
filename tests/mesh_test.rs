//! The whole mesh as separate OS processes on separate addresses: `procmesh orchestrator`,
//! `procmesh host`s with OS proc agents, and a client (the client library in this process, or
//! the CLI in a network namespace). Every wait is bounded.

mod utils;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use procmesh_client::{Client, ClientConfig, Queue, WorkerBuilder};
use procmesh_protocol::action::ActionState;
use procmesh_protocol::cas::BlobHash;
use procmesh_protocol::messages::client::ClientEvent;
use procmesh_protocol::messages::orchestrator::{QueueConfig, SubmitAction};
use procmesh_protocol::spec::{ActionDef, WorkerId};
use procmesh_protocol::{ActorId, HostAddr, Lsn};
use utils::{
    processes_with, procmesh_bin, start_mesh_host, start_orchestrator, wait_until, Certs, Proc,
};

/// An orchestrator process, its hosts, and what they share.
struct Mesh {
    certs: Certs,
    dir: tempfile::TempDir,
    orchestrator: (Proc, ActorId),
    hosts: Vec<(Proc, HostAddr)>,
}

impl Mesh {
    /// An orchestrator on `ip` that declares hosts lost after 1.5 s of silence.
    fn start(ip: &str) -> Mesh {
        let certs = Certs::new();
        let dir = tempfile::tempdir().unwrap();
        let orchestrator = start_orchestrator(
            &certs,
            &format!("{ip}:0"),
            &dir.path().join("orchestrator"),
            &["--heartbeat-interval-ms", "200", "--lost-after-ms", "1500"],
        );
        Mesh {
            certs,
            dir,
            orchestrator,
            hosts: Vec::new(),
        }
    }

    fn id(&self) -> &ActorId {
        &self.orchestrator.1
    }

    /// A host on `ip` with `procs` proc agents of `slots` each, isolating actions by default
    /// (`namespaces`).
    fn add_host(&mut self, ip: &str, procs: u32, slots: u32) -> HostAddr {
        self.add_host_with(ip, procs, slots, &[])
    }

    /// [`add_host`](Self::add_host) with `extra` flags.
    fn add_host_with(&mut self, ip: &str, procs: u32, slots: u32, extra: &[&str]) -> HostAddr {
        let state = self.dir.path().join(format!("host-{}", self.hosts.len()));
        let (proc, addr, _) = start_mesh_host(
            &self.certs,
            &format!("{ip}:0"),
            &state,
            self.id(),
            (procs, slots),
            extra,
        );
        self.hosts.push((proc, addr.clone()));
        addr
    }

    async fn client(&self) -> Client {
        let mut config = ClientConfig::new(self.id().clone(), self.certs.client.clone());
        config.bind = Some("127.0.0.1:0".parse().unwrap());
        config.cache_dir = Some(self.dir.path().join(format!(
            "client-cache-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        )));
        Client::connect(config).await.expect("client connects")
    }

    /// Waits until the orchestrator knows `slots` free slots over every host.
    async fn wait_capacity(&self, client: &Client, slots: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let hosts = client.hosts().await.unwrap();
            let known: u64 = hosts
                .iter()
                .filter(|h| h.state == procmesh_protocol::messages::orchestrator::HostState::Alive)
                .flat_map(|h| &h.procs)
                .map(|p| u64::from(p.capacity.max))
                .sum();
            if known >= slots {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the orchestrator knows {known} slots, not {slots}, after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn script(client: &Client, body: &str) -> WorkerId {
    client
        .register_worker(
            &WorkerBuilder::new()
                .bytes("run.sh", format!("#!/bin/sh\n{body}\n").into_bytes(), true)
                .executable("run.sh")
                .env("PATH", "/usr/bin:/bin"),
        )
        .await
        .expect("worker registered")
}

fn action(worker: WorkerId, args: &[&str]) -> SubmitAction {
    let mut action = ActionDef::new(worker);
    action.args = args.iter().map(|a| (*a).to_owned()).collect();
    SubmitAction {
        action,
        priority: None,
        idempotency_key: None,
    }
}

async fn complete(queue: &Queue, within: Duration) {
    let status = queue
        .wait_complete(Some(within))
        .await
        .expect("the queue completes in time");
    assert!(status.is_complete, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_actions_with_inputs_complete_over_two_hosts() {
    let mut mesh = Mesh::start("127.0.0.1");
    let a = mesh.add_host("127.0.0.2", 2, 2);
    let b = mesh.add_host("127.0.0.3", 2, 2);
    let client = mesh.client().await;
    mesh.wait_capacity(&client, 8).await;
    let worker = script(
        &client,
        "tr a-z A-Z < in.txt > Outputs/upper.txt\nwc -c < in.txt | tr -d ' ' > Outputs/count.txt",
    )
    .await;

    let inputs_dir = mesh.dir.path().join("inputs");
    std::fs::create_dir_all(&inputs_dir).unwrap();
    let files: Vec<(String, PathBuf)> = (0..500)
        .map(|i| {
            let path = inputs_dir.join(format!("{i}.txt"));
            std::fs::write(&path, format!("item number {i}\n")).unwrap();
            ("in.txt".to_owned(), path)
        })
        .collect();
    let inputs = client.upload_inputs(&files).await.unwrap();
    let queue = client.create_queue(QueueConfig::default()).await.unwrap();
    let actions = inputs
        .into_iter()
        .map(|input| {
            let mut a = action(worker, &[]);
            a.action.inputs.push(input);
            a
        })
        .collect();
    let lsns = queue.submit(actions).await.unwrap();
    assert_eq!(lsns.len(), 500);
    complete(&queue, Duration::from_secs(180)).await;

    let results = queue.all_results().await.unwrap();
    assert_eq!(results.len(), 500);
    let mut per_host: BTreeMap<HostAddr, usize> = BTreeMap::new();
    for (i, lsn) in lsns.iter().enumerate() {
        let r = results.iter().find(|r| r.record.lsn() == *lsn).unwrap();
        assert_eq!(r.record.state(), ActionState::Completed, "{r:?}");
        let text = format!("item number {i}\n");
        let upper = r.outputs.iter().find(|o| o.path == "upper.txt").unwrap();
        assert_eq!(upper.hash, BlobHash::of(text.to_uppercase().as_bytes()));
        let count = r.outputs.iter().find(|o| o.path == "count.txt").unwrap();
        assert_eq!(
            count.hash,
            BlobHash::of(format!("{}\n", text.len()).as_bytes())
        );
        *per_host
            .entry(r.record.location().unwrap().addr().clone())
            .or_default() += 1;
    }
    // Both hosts did a real share of the work.
    for host in [&a, &b] {
        let n = per_host.get(host).copied().unwrap_or(0);
        assert!(n >= 50, "host {host} ran {n} of 500: {per_host:?}");
    }
    // An output downloads from where it was made, intact.
    let r = &results[0];
    let out = mesh.dir.path().join("download");
    let path = client.download(r, &r.outputs[0], &out).await.unwrap();
    assert_eq!(
        BlobHash::of(&std::fs::read(path).unwrap()),
        r.outputs[0].hash
    );
    assert_eq!(
        queue.retire(lsns.clone()).await.unwrap(),
        500,
        "every result retires"
    );
    assert_eq!(queue.status().await.unwrap().counts.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_high_priority_action_runs_before_queued_low_ones() {
    let mut mesh = Mesh::start("127.0.0.1");
    mesh.add_host("127.0.0.4", 1, 1);
    let client = mesh.client().await;
    mesh.wait_capacity(&client, 1).await;
    let worker = script(&client, "sleep \"$1\"").await;
    let queue = client.create_queue(QueueConfig::default()).await.unwrap();
    // Occupy the only slot, then queue low-priority work behind it.
    let blocker = queue.submit(vec![action(worker, &["1"])]).await.unwrap()[0];
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue.action(blocker).await.unwrap().record.state() != ActionState::Running {
        assert!(Instant::now() < deadline, "the blocker never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let low = queue
        .submit((0..4).map(|_| action(worker, &["0"])).collect())
        .await
        .unwrap();
    let mut high = action(worker, &["0"]);
    high.priority = Some(10);
    let high = queue.submit(vec![high]).await.unwrap()[0];
    complete(&queue, Duration::from_secs(60)).await;

    let started = |lsn: Lsn| {
        let queue = queue.clone();
        async move {
            queue
                .action(lsn)
                .await
                .unwrap()
                .record
                .entered(ActionState::Submitting)
                .unwrap()
        }
    };
    let high_at = started(high).await;
    for lsn in low {
        let low_at = started(lsn).await;
        assert!(
            high_at <= low_at,
            "high-priority {high} was placed at {high_at:?}, after low {lsn} at {low_at:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_up_to_the_queue_limit() {
    let mut mesh = Mesh::start("127.0.0.1");
    mesh.add_host("127.0.0.5", 1, 2);
    let client = mesh.client().await;
    mesh.wait_capacity(&client, 2).await;
    // Fails on attempts 1 and 2, succeeds on the third.
    let worker = script(
        &client,
        "if [ \"$PROCMESH_ATTEMPT\" -le 2 ]; then echo \"no luck $PROCMESH_ATTEMPT\" >&2; exit 1; fi\necho ok",
    )
    .await;
    for (limit, state, attempts) in [(3, ActionState::Completed, 3), (1, ActionState::Failed, 2)] {
        let queue = client
            .create_queue(QueueConfig {
                retry_limit: limit,
                ..QueueConfig::default()
            })
            .await
            .unwrap();
        let lsn = queue.submit(vec![action(worker, &[])]).await.unwrap()[0];
        complete(&queue, Duration::from_secs(60)).await;
        let r = queue.result(lsn).await.unwrap().expect("a result");
        assert_eq!(r.record.state(), state, "limit {limit}: {r:?}");
        assert_eq!(r.record.attempt().get(), attempts, "limit {limit}");
        if state == ActionState::Failed {
            assert_eq!(String::from_utf8_lossy(&r.stderr_tail), "no luck 2\n");
        } else {
            assert_eq!(String::from_utf8_lossy(&r.stdout_tail), "ok\n");
        }
    }
}

/// The pid written by an action into `file`, once it is there.
fn read_pid(file: &Path, within: Duration) -> u32 {
    let mut pid = None;
    assert!(
        wait_until(within, || {
            pid = std::fs::read_to_string(file)
                .ok()
                .and_then(|t| t.trim().parse().ok());
            pid.is_some()
        }),
        "no pid in {} within {within:?}",
        file.display()
    );
    pid.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_proc_agent_abandons_its_action_which_completes_on_retry() {
    let mut mesh = Mesh::start("127.0.0.1");
    // The action tells the test its agent's pid through a file on the host: no namespaces.
    mesh.add_host_with("127.0.0.6", 2, 1, &["--isolation", "none"]);
    let client = mesh.client().await;
    mesh.wait_capacity(&client, 2).await;
    let marker = mesh.dir.path().join("agent.pid");
    // The first attempt records its parent (the proc agent) and hangs; a retry succeeds.
    let worker = script(
        &client,
        "if [ \"$PROCMESH_ATTEMPT\" = 1 ]; then echo $PPID > \"$1\"; sleep 120; fi\necho done",
    )
    .await;
    let queue = client.create_queue(QueueConfig::default()).await.unwrap();
    let mut watch = queue.watch().await.unwrap();
    let lsn = queue
        .submit(vec![action(worker, &[marker.to_str().unwrap()])])
        .await
        .unwrap()[0];
    let agent = read_pid(&marker, Duration::from_secs(30));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    complete(&queue, Duration::from_secs(60)).await;
    let r = queue.result(lsn).await.unwrap().unwrap();
    assert_eq!(r.record.state(), ActionState::Completed, "{r:?}");
    assert_eq!(r.record.attempt().get(), 2);
    // The stream showed the abandonment before the retry.
    let mut states = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !states.contains(&ActionState::Completed) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, watch.next()).await {
            Ok(Some(ClientEvent::Transition { transition, .. })) => states.push(transition.state),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let abandoned = states.iter().position(|s| *s == ActionState::Abandoned);
    let completed = states.iter().position(|s| *s == ActionState::Completed);
    assert!(
        matches!((abandoned, completed), (Some(a), Some(c)) if a < c),
        "events: {states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_with_sigkill_is_lost_and_its_actions_complete_elsewhere() {
    let mut mesh = Mesh::start("127.0.0.1");
    let doomed = mesh.add_host("127.0.0.7", 1, 2);
    let client = mesh.client().await;
    mesh.wait_capacity(&client, 2).await;
    let worker = script(&client, "sleep \"$1\"; echo slept").await;
    let queue = client.create_queue(QueueConfig::default()).await.unwrap();
    let lsns = queue
        .submit((0..2).map(|_| action(worker, &["2"])).collect())
        .await
        .unwrap();
    // Both run on the only host; then it dies, and a survivor joins.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = queue.status().await.unwrap();
        if status.counts.running == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not running: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut host, _) = mesh.hosts.remove(0);
    host.0.kill().unwrap();
    let _ = host.0.wait();
    let survivor = mesh.add_host("127.0.0.8", 1, 2);
    complete(&queue, Duration::from_secs(60)).await;
    for lsn in lsns {
        let r = queue.result(lsn).await.unwrap().unwrap();
        assert_eq!(r.record.state(), ActionState::Completed, "{r:?}");
        assert_eq!(r.record.location().unwrap().addr(), &survivor);
        assert!(r.record.attempt().get() >= 2);
    }
    let hosts = client.hosts().await.unwrap();
    let lost = hosts.iter().find(|h| h.info.addr == doomed).unwrap();
    assert_eq!(
        lost.state,
        procmesh_protocol::messages::orchestrator::HostState::Lost
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queue_stops_its_running_processes() {
    let mut mesh = Mesh::start("127.0.0.1");
    mesh.add_host("127.0.0.9", 2, 2);
    let client = mesh.client().await;
    mesh.wait_capacity(&client, 4).await;
    let marker = format!("pm-cancel-{}", std::process::id());
    // The shell (its command line carries the marker) waits for `sleep`.
    let worker = script(&client, "sleep 300\necho \"$1\"").await;
    let queue = client.create_queue(QueueConfig::default()).await.unwrap();
    // Four run (one per slot), two wait.
    queue
        .submit((0..6).map(|_| action(worker, &[&marker])).collect())
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || processes_with(&marker).len()
            == 4),
        "running: {:?}",
        processes_with(&marker)
    );
    let count = queue.cancel().await.unwrap();
    assert_eq!(count, 6);
    complete(&queue, Duration::from_secs(30)).await;
    let status = queue.status().await.unwrap();
    assert_eq!(status.counts.cancelled, 6, "{status:?}");
    assert!(status.cancelled);
    assert!(
        wait_until(Duration::from_secs(15), || processes_with(&marker)
            .is_empty()),
        "still running: {:?}",
        processes_with(&marker)
    );
    // A cancelled queue takes nothing more.
    let err = queue
        .submit(vec![action(worker, &["x"])])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "queue_cancelled", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_submits_once() {
    let mesh = Mesh::start("127.0.0.1");
    let client = mesh.client().await;
    let worker = script(&client, "true").await;
    let queue = client.create_queue(QueueConfig::default()).await.unwrap();
    let mut keyed = action(worker, &[]);
    keyed.idempotency_key = Some("build-42".into());
    let first = queue.submit(vec![keyed.clone()]).await.unwrap();
    let again = queue.submit(vec![keyed]).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(queue.status().await.unwrap().counts.total(), 1);
    // Bad input changes nothing.
    let unknown = action(WorkerId::from_bytes([9; 32]), &[]);
    let err = queue.submit(vec![unknown]).await.unwrap_err();
    assert_eq!(err.code(), "unknown_worker", "{err}");
    assert_eq!(queue.status().await.unwrap().counts.total(), 1);
}

/// A network namespace joined to this one by a veth pair: a test host with its own,
/// non-loopback address. Removed when dropped.
struct NetNs {
    name: String,
    outer: String,
    pub inner_ip: String,
    pub outer_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    fn new() -> Result<NetNs, String> {
        let n = std::process::id() % 250 + 1;
        let ns = NetNs {
            name: format!("pmtest-{}", std::process::id()),
            outer: format!("pmo{n}"),
            inner_ip: format!("10.213.{n}.2"),
            outer_ip: format!("10.213.{n}.1"),
        };
        let inner = format!("pmi{n}");
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link", "add", &ns.outer, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.outer_ip),
            "dev",
            &ns.outer,
        ])?;
        ip(&["link", "set", &ns.outer, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{}/30", ns.inner_ip), "dev", &inner])?;
        inside(&["link", "set", &inner, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `procmesh` with `args` inside the namespace.
    fn procmesh(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(procmesh_bin())
            .args(args)
            .output()
            .expect("run procmesh in the namespace")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.outer]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_client_needs_the_token_not_the_integer_id() {
    let ns = NetNs::new().expect(
        "this test needs root and iproute2 to make a network namespace (a non-loopback client)",
    );
    let mesh = Mesh::start(&ns.outer_ip);
    // A loopback client (this process) may use ids; make a queue to name.
    let queue = {
        let mut config = ClientConfig::new(mesh.id().clone(), mesh.certs.client.clone());
        config.bind = Some(format!("{}:0", ns.outer_ip).parse().unwrap());
        config.cache_dir = Some(mesh.dir.path().join("cache-local"));
        let client = Client::connect(config).await.unwrap();
        let queue = client.create_queue(QueueConfig::default()).await.unwrap();
        (queue.id().unwrap(), queue.token().unwrap())
    };
    let client_dir = mesh.certs.dir.path().join("client");
    let cache = mesh.dir.path().join("cache-remote");
    let common = [
        "--orchestrator".to_owned(),
        mesh.id().to_string(),
        "--tls-dir".to_owned(),
        client_dir.to_str().unwrap().to_owned(),
        "--cache-dir".to_owned(),
        cache.to_str().unwrap().to_owned(),
        "--json".to_owned(),
    ];
    let run = |queue_ref: String| {
        let mut args = vec![
            "queue".to_owned(),
            "status".to_owned(),
            "-q".to_owned(),
            queue_ref,
        ];
        args.extend(common.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ns.procmesh(&args)
    };
    let by_id = run(queue.0.to_string());
    let stderr = String::from_utf8_lossy(&by_id.stderr);
    assert!(
        !by_id.status.success(),
        "an id from {} was accepted",
        ns.inner_ip
    );
    assert!(
        stderr.contains("loopback") || stderr.contains("forbidden"),
        "{stderr}"
    );
    let by_token = run(queue.1.to_string());
    assert!(
        by_token.status.success(),
        "the token was refused: {}",
        String::from_utf8_lossy(&by_token.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&by_token.stdout).unwrap();
    assert_eq!(status["id"], queue.0, "{status}");
}

#[test]
fn the_demo_runs_to_completion() {
    let out = Command::new(procmesh_bin())
        .args(["demo", "--actions", "120", "--json"])
        .output()
        .expect("run procmesh demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["completed"], 120, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(summary["retries"].as_u64().unwrap() >= 10, "{summary}");
    assert!(summary["wrong"].as_array().unwrap().is_empty(), "{summary}");
    let per_proc = summary["per_proc"].as_object().unwrap();
    assert_eq!(per_proc.len(), 2, "{summary}");
}

/// `procmesh hosts` for the mesh `orchestrator`: its stdout.
fn hosts_cli(certs: &Certs, orchestrator: &ActorId) -> String {
    let out = Command::new(procmesh_bin())
        .args(["hosts", "--orchestrator", &orchestrator.to_string()])
        .args(["--bind", "127.0.0.1:0", "--tls-dir"])
        .arg(certs.tls_dir(procmesh_transport::Role::Client))
        .output()
        .expect("procmesh hosts runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// Attests HST-25, HST-26 end to end: what the host announces, what the scheduler places and
// what `procmesh hosts` shows agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_capacity_is_shared_by_its_procs_and_bounds_what_runs() {
    let mesh = Mesh::start("127.0.0.1");
    let state = mesh.dir.path().join("host-capacity");
    let (tls, node, id) = (
        mesh.certs.host_dir(),
        utils::node_name(&state),
        mesh.id().to_string(),
    );
    let common = [
        "--listen",
        "127.0.0.1:0",
        "--tls-dir",
        tls.to_str().unwrap(),
        "--node-name",
        &node,
        "--state-dir",
        state.to_str().unwrap(),
        "--orchestrator",
        &id,
        "--isolation",
        "none",
        "--procs",
        "2",
    ];
    // More slots than the capacity: refused before anything starts, saying why.
    let refused = Command::new(procmesh_bin())
        .arg("host")
        .args(common)
        .args(["--max-actions", "2", "--capacity", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(
            "error: 2 procs × --max-actions 2 = 4 slots, more than the host's capacity 3"
        ),
        "{stderr}"
    );

    // Two procs sharing a capacity of 3: 2 + 1 slots, and never more than 3 running.
    let (_host, _) = utils::start_procmesh("host", &[&common[..], &["--capacity", "3"]].concat());
    let client = mesh.client().await;
    mesh.wait_capacity(&client, 3).await;
    let hosts = client.hosts().await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].info.capacity, 3);
    let mut slots: Vec<u32> = hosts[0].procs.iter().map(|p| p.capacity.max).collect();
    slots.sort();
    assert_eq!(slots, vec![1, 2]);

    let worker = script(&client, "sleep 3").await;
    let queue = client.create_queue(QueueConfig::default()).await.unwrap();
    queue
        .submit((0..6).map(|_| action(worker, &[])).collect())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let text = tokio::task::block_in_place(|| hosts_cli(&mesh.certs, mesh.id()));
        if text.contains("slots 2 used, 0 free of 2") && text.contains("slots 1 used, 0 free of 1")
        {
            break text;
        }
        assert!(Instant::now() < deadline, "never all 3 slots used: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let host_line = shown.lines().nth(1).expect("a host line");
    let columns: Vec<&str> = host_line.split_whitespace().collect();
    // address node state capacity procs used free …
    assert_eq!(&columns[3..7], ["3", "2", "3", "0"], "{shown}");
    let hosts = client.hosts().await.unwrap();
    assert!(hosts[0].placed.iter().sum::<u64>() <= 3, "{hosts:?}");
    complete(&queue, Duration::from_secs(60)).await;
    client.close().await;
}
