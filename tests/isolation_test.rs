//! Issue 10's attacks, replayed by actions on a real mesh — an orchestrator and a host as OS
//! processes on 127.0.0.1, the host as root in `namespaces` mode with this machine's cgroups —
//! and the limits, teardown, immutable inputs, setup failures and host programs around them.
//! Actions are `/bin/sh` scripts run as host programs (`--allow-host-programs /usr/bin`).

mod utils;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use procmesh_client::{Client, ClientConfig, WorkerBuilder};
use procmesh_protocol::messages::orchestrator::{ActionResult, QueueConfig, SubmitAction};
use procmesh_protocol::spec::{ActionDef, InputFile};
use procmesh_protocol::{ActionState, ActorId, HostAddr};
use utils::{processes_with, start_mesh_host, start_orchestrator, Certs, Proc};

const T: Duration = Duration::from_secs(60);

struct Mesh {
    certs: Certs,
    dir: tempfile::TempDir,
    orchestrator: ActorId,
    host: HostAddr,
    host_proc: Option<Proc>,
    _orch: Proc,
}

fn state(dir: &Path) -> PathBuf {
    dir.join("host-a")
}

fn host_flags(extra: &[&str]) -> Vec<String> {
    let mut flags: Vec<String> = ["--allow-host-programs", "/usr/bin", "--action-pids", "64"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    flags.extend(extra.iter().map(|s| s.to_string()));
    flags
}

fn start_mesh(extra: &[&str]) -> Mesh {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let (orch, orchestrator) = start_orchestrator(
        &certs,
        "127.0.0.1:0",
        &dir.path().join("orchestrator"),
        &["--heartbeat-interval-ms", "300"],
    );
    let flags = host_flags(extra);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (host_proc, host, _) = start_mesh_host(
        &certs,
        "127.0.0.1:0",
        &state(dir.path()),
        &orchestrator,
        (1, 2),
        &flags,
    );
    Mesh {
        certs,
        dir,
        orchestrator,
        host,
        host_proc: Some(host_proc),
        _orch: orch,
    }
}

impl Mesh {
    async fn client(&self, name: &str) -> Client {
        let mut config = ClientConfig::new(self.orchestrator.clone(), self.certs.client.clone());
        config.bind = Some("127.0.0.1:0".parse().unwrap());
        config.cache_dir = Some(self.dir.path().join(format!("cache-{name}")));
        Client::connect(config).await.expect("client connects")
    }

    fn state(&self) -> PathBuf {
        state(self.dir.path())
    }
}

/// Submits one action of `worker` with `args`, `inputs`, `memory` and `env` into a new queue
/// (no retries), which is then drained; the queue and the action's LSN.
async fn submit(
    client: &Client,
    worker: &WorkerBuilder,
    args: &[&str],
    inputs: Vec<InputFile>,
    memory: Option<u64>,
    env: &[(&str, String)],
) -> (procmesh_client::Queue, procmesh_protocol::Lsn) {
    let id = client.register_worker(worker).await.expect("worker");
    let queue = client
        .create_queue(QueueConfig {
            retry_limit: 0,
            default_priority: 0,
            name: "isolation".into(),
        })
        .await
        .unwrap();
    let mut action = ActionDef::new(id);
    action.args = args.iter().map(|s| s.to_string()).collect();
    action.inputs = inputs;
    action.resources.memory_bytes = memory;
    action.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    action.timeout_ms = Some(50_000);
    let lsns = queue
        .submit(vec![SubmitAction {
            action,
            priority: None,
            idempotency_key: None,
        }])
        .await
        .unwrap();
    queue.drain().await.unwrap();
    (queue, lsns[0])
}

/// [`submit`], run to its end; its result.
async fn run_action(
    client: &Client,
    worker: &WorkerBuilder,
    args: &[&str],
    inputs: Vec<InputFile>,
    memory: Option<u64>,
    env: &[(&str, String)],
) -> ActionResult {
    let (queue, lsn) = submit(client, worker, args, inputs, memory, env).await;
    queue.wait_complete(Some(T)).await.expect("the action ends");
    queue.result(lsn).await.unwrap().expect("a result")
}

/// `sh -c script` in the sandbox.
async fn sh(client: &Client, script: &str) -> ActionResult {
    run_action(
        client,
        &WorkerBuilder::new().host_program("/bin/sh"),
        &["-c", script],
        Vec::new(),
        None,
        &[],
    )
    .await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(result: &ActionResult) -> String {
    format!(
        "{} {:?}\n--- stdout\n{}--- stderr\n{}",
        result.record.state(),
        result.record.last_error(),
        text(&result.stdout_tail),
        text(&result.stderr_tail)
    )
}

/// Waits (bounded) until no live process has `marker` in its command line.
fn none_left(marker: &str, within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    loop {
        let left = processes_with(marker);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn skip_unless_root() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the isolation tests need root (CI runs as root)");
        return true;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_action_cannot_reach_the_host() {
    if skip_unless_root() {
        return;
    }
    let mesh = start_mesh(&[]);
    let client = mesh.client("a").await;
    let key = mesh.certs.host_dir().join("key.pem");
    let state = mesh.state();
    let host_pid = mesh.host_proc.as_ref().unwrap().pid();
    let marker = format!("/tmp/procmesh-escape-{}", std::process::id());
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let host_port = match &mesh.host {
        HostAddr::Quic(addr) => addr.port(),
        other => panic!("unexpected host address {other}"),
    };
    let script = format!(
        r#"
        echo "uid=$(id -u) gid=$(id -g)"
        grep -E '^(CapEff|NoNewPrivs)' /proc/self/status
        cat {key} 2>&1 | head -c 200; echo
        ls {state} 2>&1; echo
        echo escape > {marker} 2>&1; echo "tmp-write=$?"
        ls {marker}.absent-on-host 2>/dev/null
        touch {state}/escape 2>&1; echo "state-write=$?"
        touch /sandbox/escape 2>&1; echo "sandbox-write=$?"
        echo out > Outputs/ok; echo "outputs-write=$?"
        kill -0 {host_pid} 2>&1; echo "kill-host=$?"
        echo "pids=$(ls /proc | grep -c '^[0-9]')"
        echo "ifaces=$(ls /sys/class/net 2>/dev/null | tr '\n' ' ')$(python3 -c 'import socket; print(" ".join(n for _, n in socket.if_nameindex()))')"
        python3 - <<'EOF'
import socket
for port in ({tcp_port}, {host_port}):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        print("tcp-connected", port)
    except OSError as e:
        print("tcp-refused", port, e.errno)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in ({udp_port}, {host_port}):
    try:
        u.sendto(b"hello", ("127.0.0.1", port))
        print("udp-sent", port)
    except OSError as e:
        print("udp-refused", port, e.errno)
EOF
        "#,
        key = key.display(),
        state = state.display(),
        tcp_port = tcp.local_addr().unwrap().port(),
        udp_port = udp.local_addr().unwrap().port(),
    );
    let result = sh(&client, &script).await;
    let out = text(&result.stdout_tail);
    let all = describe(&result);
    assert_eq!(result.record.state(), ActionState::Completed, "{all}");
    // An unprivileged user without capabilities.
    assert!(out.contains("uid=1000 gid=1000"), "{all}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{all}");
    assert!(out.contains("NoNewPrivs:\t1"), "{all}");
    // The TLS key and the state directory are not there at all.
    assert!(!out.contains("PRIVATE KEY"), "the key leaked: {all}");
    assert!(out.contains("No such file"), "{all}");
    // Writes: only Outputs/ and the private /tmp.
    assert!(out.contains("tmp-write=0"), "{all}");
    assert!(!Path::new(&marker).exists(), "/tmp is private");
    assert!(!out.contains("state-write=0"), "{all}");
    assert!(!state.join("escape").exists());
    assert!(!out.contains("sandbox-write=0"), "{all}");
    assert!(out.contains("outputs-write=0"), "{all}");
    assert!(result.outputs.iter().any(|o| o.path == "ok"), "{all}");
    // Its own pid namespace: the host agent is not there; only a few processes are.
    assert!(!out.contains("kill-host=0"), "{all}");
    let pids: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("pids="))
        .and_then(|n| n.trim().parse().ok())
        .expect("pids line");
    assert!(pids <= 6, "{pids} processes visible: {all}");
    // No network but its own loopback: nothing reaches a listener of the host.
    let ifaces = out.lines().find(|l| l.starts_with("ifaces=")).unwrap_or("");
    assert_eq!(ifaces.trim(), "ifaces=lo", "{all}");
    assert!(!out.contains("tcp-connected"), "{all}");
    assert!(
        tcp.accept().is_err(),
        "a TCP connection reached the test's listener"
    );
    let mut buf = [0u8; 16];
    assert!(
        udp.recv_from(&mut buf).is_err(),
        "a datagram reached the test's socket"
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_and_nothing_outlives_its_action() {
    if skip_unless_root() {
        return;
    }
    let mesh = start_mesh(&[]);
    let client = mesh.client("a").await;

    // A bounded fork bomb stops at the pids limit (64); the host keeps answering.
    let bomb = sh(
        &client,
        "python3 -c '
import os
n = 0
for i in range(200):
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        os.execv(\"/bin/sleep\", [\"sleep\", \"30.101\"])
    n += 1
print(\"running=%d\" % n)
'",
    )
    .await;
    let all = describe(&bomb);
    let running: usize = text(&bomb.stdout_tail)
        .lines()
        .find_map(|l| l.strip_prefix("running="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(usize::MAX);
    assert!(
        running < 64,
        "{running} sleeps started under a pids limit of 64: {all}"
    );
    assert!(client.hosts().await.is_ok(), "the mesh still answers");
    assert!(
        none_left("30.101", Duration::from_secs(10)).is_empty(),
        "the bomb's processes outlived it"
    );

    // Memory: 400 MiB into a 64 MiB limit ends Failed with reason oom.
    let hog = run_action(
        &client,
        &WorkerBuilder::new().host_program("/bin/sh"),
        &["-c", "head -c 400000000 /dev/zero | tail > /dev/null"],
        Vec::new(),
        Some(64 << 20),
        &[],
    )
    .await;
    let all = describe(&hog);
    assert_eq!(hog.record.state(), ActionState::Failed, "{all}");
    assert!(
        hog.record
            .last_error()
            .is_some_and(|e| e.starts_with("oom")),
        "{all}"
    );
    let peak = hog
        .record
        .execution()
        .and_then(|e| e.peak_memory_bytes)
        .unwrap_or(0);
    assert!(peak > 32 << 20 && peak <= 80 << 20, "peak {peak}: {all}");

    // Double fork, setsid, nohup: all gone once the action ended.
    let escape = sh(
        &client,
        "setsid sleep 30.201 & nohup sleep 30.202 >/dev/null 2>&1 & (sh -c 'sleep 30.203 &' &); \
         sleep 0.2; echo forked",
    )
    .await;
    assert_eq!(
        escape.record.state(),
        ActionState::Completed,
        "{}",
        describe(&escape)
    );
    let left = none_left("30.20", Duration::from_secs(10));
    assert!(left.is_empty(), "processes outlived their action: {left:?}");
    client.close().await;
}

/// Client A's action rewrites its input and its executable in place with same-size bytes;
/// client B's later action of the same worker and input sees the genuine bytes.
async fn genuine_bytes_for_the_next_client(mesh: &Mesh, cache_attack: bool) {
    let a = mesh.client("a").await;
    let b = mesh.client("b").await;
    let dir = mesh.dir.path().join("inputs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("data.txt"), b"GENUINE-DATA\n").unwrap();
    let script = b"#!/bin/sh\necho \"script=genuine data=$(cat data.txt)\"\n[ -n \"$ATTACK\" ] && sh -c \"$ATTACK\"\nexit 0\n".to_vec();
    let worker = WorkerBuilder::new()
        .bytes("run.sh", script, true)
        .executable("run.sh");
    let inputs = a
        .upload_inputs(&[("data.txt".to_owned(), dir.join("data.txt"))])
        .await
        .unwrap();
    // The attack: same-size rewrites in place, of the sandbox's files and (in `none` mode,
    // where the action runs as the host's user) of the cache entry itself.
    let cache = mesh.state().join("workers");
    let attack = format!(
        "printf 'POISONED-DAT\\n' > data.txt; echo input=$?; \
         sed -i 's/genuine/poisond/' run.sh 2>/dev/null; printf 'exit 7 #' | dd of=run.sh conv=notrunc 2>/dev/null; echo exe=$?; {}",
        if cache_attack {
            format!(
                "for f in {}/*/run.sh; do printf 'exit 7 #' | dd of=$f conv=notrunc 2>/dev/null; done; echo cache=$?",
                cache.display()
            )
        } else {
            String::new()
        }
    );
    // The attacker and the victim run the same worker (same id, same cache entry) on the same
    // input; only the attacker's action carries the attack, in its own environment.
    let first = run_action(
        &a,
        &worker,
        &[],
        inputs.clone(),
        None,
        &[("ATTACK", attack)],
    )
    .await;
    assert!(
        text(&first.stdout_tail).contains("script=genuine data=GENUINE-DATA"),
        "{}",
        describe(&first)
    );
    let second = run_action(&b, &worker, &[], inputs, None, &[]).await;
    assert_eq!(
        second.record.state(),
        ActionState::Completed,
        "{}",
        describe(&second)
    );
    assert!(
        text(&second.stdout_tail).contains("script=genuine data=GENUINE-DATA"),
        "{}",
        describe(&second)
    );
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_inputs_and_executables_never_reach_another_client() {
    if skip_unless_root() {
        return;
    }
    let mesh = start_mesh(&[]);
    genuine_bytes_for_the_next_client(&mesh, false).await;
    let none = start_mesh(&["--isolation", "none"]);
    genuine_bytes_for_the_next_client(&none, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_host_and_proc_agent_leaves_no_action_once_restarted() {
    if skip_unless_root() {
        return;
    }
    for mode in ["namespaces", "none"] {
        let mut mesh = start_mesh(&["--isolation", mode]);
        let client = mesh.client("a").await;
        let _queue = submit(
            &client,
            &WorkerBuilder::new().host_program("/bin/sh"),
            &[
                "-c",
                "setsid sleep 300.301 & (sh -c 'sleep 300.302 &' &); sleep 300.303",
            ],
            Vec::new(),
            None,
            &[],
        )
        .await;
        let deadline = Instant::now() + T;
        while processes_with("300.30").len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            processes_with("300.30").len() >= 3,
            "{mode}: the action did not start"
        );
        // SIGKILL the host and its proc agent together.
        let host = mesh.host_proc.take().unwrap();
        let mut victims = vec![host.pid()];
        victims.extend(
            processes_with("proc-agent")
                .into_iter()
                .filter(|p| procmesh_sys::procfs::parent_pid(*p).ok() == Some(host.pid())),
        );
        for pid in &victims {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        drop(host);
        // The host comes back on the same state directory.
        let flags = host_flags(&["--isolation", mode]);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (restarted, _, _) = start_mesh_host(
            &mesh.certs,
            "127.0.0.1:0",
            &mesh.state(),
            &mesh.orchestrator,
            (1, 2),
            &flags,
        );
        mesh.host_proc = Some(restarted);
        let left = none_left("300.30", Duration::from_secs(10));
        assert!(
            left.is_empty(),
            "{mode}: action processes survived: {left:?}"
        );
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_failure_ends_the_attempt_with_its_reason() {
    if skip_unless_root() {
        return;
    }
    let tools = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/true", tools.path().join("true")).unwrap();
    let tools_dir = tools.path().to_str().unwrap().to_owned();
    let mesh = start_mesh(&["--allow-host-programs", &tools_dir]);
    // The bind source vanishes after the host started.
    drop(tools);
    let client = mesh.client("a").await;
    let result = sh(&client, "echo never").await;
    let all = describe(&result);
    assert_eq!(result.record.state(), ActionState::Abandoned, "{all}");
    let error = result.record.last_error().unwrap_or_default();
    assert!(error.contains("sandbox setup failed"), "{all}");
    assert!(
        error.contains(&tools_dir),
        "the reason names the missing source: {all}"
    );
    assert!(!text(&result.stdout_tail).contains("never"), "{all}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcc_from_the_allow_list_compiles_into_outputs() {
    if skip_unless_root() {
        return;
    }
    if !Path::new("/usr/bin/gcc").exists() {
        eprintln!("skipped: no /usr/bin/gcc here");
        return;
    }
    let mesh = start_mesh(&[]);
    let client = mesh.client("a").await;
    let src = mesh.dir.path().join("hello.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n",
    )
    .unwrap();
    let inputs = client
        .upload_inputs(&[("hello.c".to_owned(), src)])
        .await
        .unwrap();
    let result = run_action(
        &client,
        &WorkerBuilder::new().host_program("/usr/bin/gcc"),
        &["-o", "Outputs/hello", "hello.c"],
        inputs,
        None,
        &[],
    )
    .await;
    let all = describe(&result);
    assert_eq!(result.record.state(), ActionState::Completed, "{all}");
    let out = result
        .outputs
        .iter()
        .find(|o| o.path == "hello")
        .expect(&all);
    assert!(out.size > 1000, "{all}");
    // The result names what ran: the canonical gcc, its hash, its process.
    let ran = result
        .record
        .execution()
        .and_then(|e| e.ran.clone())
        .expect("the identity of what ran");
    let gcc = std::fs::canonicalize("/usr/bin/gcc").unwrap();
    assert_eq!(PathBuf::from(&ran.executable), gcc);
    assert_eq!(
        ran.blake3,
        procmesh_protocol::BlobHash::of(&std::fs::read(&gcc).unwrap())
    );
    assert!(ran.pid > 1 && ran.start_time > 0, "{ran:?}");
    client.close().await;
}
