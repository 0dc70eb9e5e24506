//! The compose fleet (`deploy/compose.yaml`) in real containers: the image is built FROM
//! scratch by `deploy/build-image.sh` from the static `procmesh` binary, then one orchestrator
//! and three hosts come up on a private network, and a client container submits 500 actions
//! (a static worker that sleeps 1 s). Mid-run:
//! (a) one host is `docker kill`ed: its work completes elsewhere;
//! (b) another is cut off the network for 30 s (`docker network disconnect`) and reconnected:
//!     it is declared lost, its work reruns elsewhere, and none of its stale attempts' results
//!     is accepted after it returns (the orchestrator counts them ignored);
//! (c) the orchestrator container restarts: the run still completes, every action terminal
//!     once, from the journal on its volume.
//! Everything (containers, network, volumes, image) is removed after, also on failure. Skipped
//! with a message only where no Docker engine answers.

mod utils;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use procmesh_client::{Client, ClientConfig, Queue};
use procmesh_protocol::messages::orchestrator::QueueRef;
use procmesh_protocol::{ActorId, Lsn};
use procmesh_transport::TlsIdentity;

const ACTIONS: u64 = 500;
const IMAGE: &str = "procmesh:container-test";
const ORCHESTRATOR: &str = "quic!172.28.0.10:7600,service.orchestrator";
const NETWORK_SUFFIX: &str = "_mesh";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    out
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The compose project of this test run; `down` (containers, network, volumes) and the image
/// removed when dropped, whatever happened.
struct Fleet {
    project: String,
}

impl Fleet {
    fn compose(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(repo()).env("PROCMESH_IMAGE", IMAGE).args([
            "-p",
            &self.project,
            "-f",
            "deploy/compose.yaml",
        ]);
        cmd
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    fn network(&self) -> String {
        format!("{}{NETWORK_SUFFIX}", self.project)
    }

    fn health(&self, service: &str) -> String {
        let out = run(Command::new("docker").args([
            "inspect",
            "-f",
            "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
            &self.container(service),
        ]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits until every service in `services` is healthy, bounded by `within`.
    fn wait_healthy(&self, services: &[&str], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let states: Vec<String> = services.iter().map(|s| self.health(s)).collect();
            if states.iter().all(|s| s == "healthy") {
                return;
            }
            if Instant::now() > deadline {
                let logs = run(self.compose().args(["logs", "--tail", "30"]));
                panic!(
                    "not healthy within {within:?}: {services:?} are {states:?}\n{}",
                    String::from_utf8_lossy(&logs.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = run(self
            .compose()
            .args(["down", "-v", "--remove-orphans", "--timeout", "5"]));
        let _ = run(Command::new("docker").args(["rmi", "-f", IMAGE]));
    }
}

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A statically linked `procmesh`: `$PROCMESH_STATIC_BIN` (`.ci/run` builds it once), else
/// the one under test if it is static; `None`: `deploy/build-image.sh` links one itself.
fn static_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PROCMESH_STATIC_BIN") {
        return Some(PathBuf::from(path));
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_procmesh"));
    is_static(&bin).then_some(bin)
}

/// Whether the ELF file at `path` has no program interpreter (`PT_INTERP`): nothing to load.
fn is_static(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let u16_at = |at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        at + 4 <= bytes.len() && u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) != 3
    })
}

/// The worker: a static C program that sleeps `argv[1]` ms and writes `Outputs/done.txt`.
fn sleeper(dir: &Path) -> PathBuf {
    let src = dir.join("sleeper.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stdlib.h>
#include <time.h>
int main(int argc, char **argv) {
    long ms = argc > 1 ? atol(argv[1]) : 100;
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0) {}
    FILE *f = fopen("Outputs/done.txt", "w");
    if (!f) return 2;
    fprintf(f, "slept %ld ms\n", ms);
    return fclose(f) == 0 ? 0 : 3;
}
"#,
    )
    .unwrap();
    let bin = dir.join("sleeper");
    ok(Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src));
    bin
}

/// Counts of the queue's actions by state, and how many are terminal.
async fn counts(queue: &Queue) -> (BTreeMap<String, u64>, u64) {
    let status = queue.status().await.expect("queue status");
    let c = &status.counts;
    let by: BTreeMap<String, u64> = [
        ("pending", c.pending),
        ("submitting", c.submitting),
        ("running", c.running),
        ("completed", c.completed),
        ("failed", c.failed),
        ("abandoned", c.abandoned),
        ("cancelled", c.cancelled),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    (by, c.completed + c.failed + c.cancelled + c.abandoned)
}

/// Retries `f` (the orchestrator may be restarting) for up to 60 s.
async fn retrying<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, procmesh_client::ClientError>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Waits until at least `n` actions are terminal, bounded by `within`.
async fn wait_terminal(queue: &Queue, n: u64, within: Duration) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + within;
    loop {
        let (by, terminal) = retrying("status", || async { Ok(counts(queue).await) }).await;
        if terminal >= n {
            return by;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} actions terminal within {within:?}: {by:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The orchestrator's `/metrics` (through the published admin port, with the fleet's admin
/// token): every series whose name starts with `prefix`, `name{labels}` → value.
fn metrics(token: &str, prefix: &str) -> BTreeMap<String, f64> {
    let text = ok(Command::new(env!("CARGO_BIN_EXE_procmesh")).args([
        "probe",
        "127.0.0.1:7601",
        "/metrics",
        "--token-file",
        token,
    ]));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| k.starts_with(prefix))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse::<f64>().ok()?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_fleet_survives_a_killed_host_a_partition_and_an_orchestrator_restart() {
    if !docker_answers() {
        eprintln!("skipped: no Docker engine answers (`docker info` failed)");
        return;
    }
    let binary = static_binary();
    procmesh_transport::install_crypto_provider();
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet {
        project: format!("pmtest{}", std::process::id()),
    };
    let mut build = Command::new(repo().join("deploy/build-image.sh"));
    build.arg(IMAGE);
    match &binary {
        Some(binary) => build.env("PROCMESH_STATIC_BIN", binary),
        // A release build of its own (minutes), in a target dir of its own: this test's
        // cargo holds the workspace's.
        None => build.env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("static-image"),
        ),
    };
    let built = ok(&mut build);
    eprintln!("{}", built.trim());
    ok(fleet.compose().args(["up", "-d"]));
    fleet.wait_healthy(
        &["orchestrator", "host-1", "host-2", "host-3"],
        Duration::from_secs(120),
    );
    let up = began.elapsed();

    // This test, on the Docker host, observes as a client with the fleet's client identity.
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    for sub in ["client", "admin-token"] {
        ok(Command::new("docker")
            .arg("cp")
            .arg(format!("{}:/certs/{sub}", fleet.container("certs")))
            .arg(certs.join(sub)));
    }
    let token_file = certs.join("admin-token");
    let token_file = token_file.to_str().unwrap();
    let orchestrator: ActorId = ORCHESTRATOR.parse().unwrap();
    let mut config = ClientConfig::new(
        orchestrator,
        TlsIdentity::load(&certs.join("client")).unwrap(),
    );
    config.cache_dir = Some(dir.path().join("cache"));
    let client = Client::connect(config).await.expect("client connects");
    let slots = retrying("hosts", || client.hosts()).await;
    assert_eq!(slots.len(), 3, "{slots:?}");

    // 500 actions from a client container.
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let worker = sleeper(&work);
    let submitted = ok(fleet
        .compose()
        .args(["run", "--rm", "-v"])
        .arg(format!("{}:/work:ro", work.display()))
        .args([
            "client",
            "submit",
            "--program",
            "/work/sleeper",
            "--count",
            &ACTIONS.to_string(),
            "--json",
            "--",
            "1000",
        ]));
    let submitted: serde_json::Value = serde_json::from_str(submitted.trim()).expect("JSON");
    assert_eq!(submitted["lsns"].as_array().unwrap().len() as u64, ACTIONS);
    let token = submitted["queue"]["token"].as_str().unwrap().to_owned();
    let queue = client
        .queue(QueueRef::Token(token.parse().unwrap()))
        .await
        .unwrap();
    assert!(worker.exists());

    // (a) A host killed mid-run.
    wait_terminal(&queue, 60, Duration::from_secs(120)).await;
    ok(Command::new("docker").args(["kill", &fleet.container("host-1")]));
    let killed_at = began.elapsed();

    // (b) Another cut off for 30 s, then back with its address.
    wait_terminal(&queue, 150, Duration::from_secs(120)).await;
    let host2_addr = "quic!172.28.0.12:7700";
    let mut on_host2: BTreeSet<(Lsn, u32)> = BTreeSet::new();
    for lsn in submitted["lsns"].as_array().unwrap() {
        let lsn = Lsn(lsn.as_u64().unwrap());
        let view = queue.action(lsn).await.unwrap();
        let placed_there = view
            .record
            .location()
            .is_some_and(|p| p.addr().to_string() == host2_addr);
        if placed_there && !view.record.is_terminal() {
            on_host2.insert((lsn, view.record.attempt().get()));
        }
    }
    let ignored_before = metrics(token_file, "procmesh_updates_ignored_total");
    ok(Command::new("docker").args([
        "network",
        "disconnect",
        &fleet.network(),
        &fleet.container("host-2"),
    ]));
    let cut_at = began.elapsed();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let lost = retrying("hosts", || client.hosts()).await;
    let host2 = lost
        .iter()
        .find(|h| h.info.addr.to_string() == host2_addr)
        .expect("host-2 known");
    assert_eq!(
        host2.state,
        procmesh_protocol::messages::orchestrator::HostState::Lost,
        "host-2 is declared lost while cut off"
    );
    ok(Command::new("docker").args([
        "network",
        "connect",
        "--ip",
        "172.28.0.12",
        &fleet.network(),
        &fleet.container("host-2"),
    ]));

    // (c) The orchestrator restarts mid-run; first, what it ignored of host-2's cut-off
    // attempts (its counters start again from zero after the restart).
    wait_terminal(&queue, 350, Duration::from_secs(180)).await;
    let submitted_total = metrics(token_file, "procmesh_actions_submitted_total");
    assert_eq!(
        submitted_total.values().sum::<f64>(),
        ACTIONS as f64,
        "the scrape works: {submitted_total:?}"
    );
    let ignored_after = metrics(token_file, "procmesh_updates_ignored_total");
    let ignored: BTreeMap<&String, f64> = ignored_after
        .iter()
        .map(|(k, v)| (k, v - ignored_before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    ok(Command::new("docker").args(["restart", "-t", "5", &fleet.container("orchestrator")]));
    let restarted_at = began.elapsed();

    let status = retrying("wait_complete", || {
        queue.wait_complete(Some(Duration::from_secs(240)))
    })
    .await;
    let done = began.elapsed();
    let (by, terminal) = counts(&queue).await;
    assert_eq!(terminal, ACTIONS, "every action terminal: {by:?}");
    assert_eq!(
        status.counts.completed, ACTIONS,
        "every action completed: {by:?}"
    );
    // Every action once: one result each, none from an attempt that was on host-2 when it was
    // cut off (those were rerun elsewhere, or again on host-2 as a later attempt).
    let results = queue.all_results().await.unwrap();
    let lsns: BTreeSet<Lsn> = results.iter().map(|r| r.record.lsn()).collect();
    assert_eq!(results.len() as u64, ACTIONS, "one result per action");
    assert_eq!(lsns.len() as u64, ACTIONS, "no action twice");
    let stale_accepted = results
        .iter()
        .filter(|r| on_host2.contains(&(r.record.lsn(), r.record.attempt().get())))
        .count();
    assert_eq!(
        stale_accepted, 0,
        "results of host-2's cut-off attempts were accepted"
    );
    let retried = results
        .iter()
        .filter(|r| r.record.attempt().get() > 1)
        .count();
    eprintln!(
        "container test: image {}; fleet up in {:.1} s; host-1 killed at {:.1} s, host-2 cut \
         at {:.1} s for 30 s ({} attempts on it), orchestrator restarted at {:.1} s; {} actions \
         complete at {:.1} s: lost 0, duplicated 0, stale results accepted {stale_accepted}, \
         reports ignored after the cut {:?}; {} actions needed more than one attempt",
        built.trim(),
        up.as_secs_f64(),
        killed_at.as_secs_f64(),
        cut_at.as_secs_f64(),
        on_host2.len(),
        restarted_at.as_secs_f64(),
        ACTIONS,
        done.as_secs_f64(),
        ignored,
        retried
    );
    client.close().await;
}
