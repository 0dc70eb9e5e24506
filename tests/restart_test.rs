//! The orchestrator's durability, with real processes and real files: a journal that cannot be
//! read stops start-up and is left untouched (ORC-31), and `kill -9` of the orchestrator in the
//! middle of a run loses nothing (ORC-26, ORC-27, ORC-28, ORC-30). Every wait is bounded.

mod utils;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procmesh_client::{Client, ClientConfig, Queue, WorkerBuilder};
use procmesh_protocol::action::ActionState;
use procmesh_protocol::messages::client::ClientEvent;
use procmesh_protocol::messages::orchestrator::{
    HostState, QueueConfig, QueueStatus, SubmitAction,
};
use procmesh_protocol::spec::{ActionDef, WorkerId};
use procmesh_protocol::{ActorId, Lsn};
use utils::{node_name, procmesh_bin, start_procmesh, Certs, Proc};

fn orchestrator_args(certs: &Certs, state: &Path, listen: &str) -> Vec<String> {
    [
        "--listen",
        listen,
        "--tls-dir",
        certs.orchestrator_dir().to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--heartbeat-interval-ms",
        "250",
        "--lost-after-ms",
        "3000",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn start_orchestrator(certs: &Certs, state: &Path, listen: &str) -> (Proc, ActorId) {
    let args = orchestrator_args(certs, state, listen);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (proc, ready) = start_procmesh("orchestrator", &args);
    (proc, ready.parse().expect("orchestrator actor id"))
}

/// Starts `procmesh orchestrator` on `state`, whose journal cannot be read: it must exit
/// non-zero, say which file, serve nothing, and leave the file as it was.
fn assert_refused(certs: &Certs, state: &Path, case: &str) {
    let journal = state.join("journal.redb");
    let before = std::fs::read(&journal).unwrap();
    let args = orchestrator_args(certs, state, "127.0.0.1:0");
    let out = Command::new(procmesh_bin())
        .arg("orchestrator")
        .args(&args)
        .args(["--admin-listen", "off"])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .expect("procmesh runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{case}: started on a bad journal");
    assert!(
        stderr.contains(journal.to_str().unwrap()),
        "{case}: the error names the file: {stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ready"),
        "{case}: it must not serve"
    );
    assert_eq!(
        std::fs::read(&journal).unwrap(),
        before,
        "{case}: the file was changed"
    );
}

// Attests ORC-31, JNL-2
#[test]
fn a_journal_that_cannot_be_read_stops_start_up_and_is_left_untouched() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage",
            b"this is not a journal at all, just words".repeat(300),
        ),
        ("empty", Vec::new()),
    ];
    for (name, bytes) in cases {
        let state = dir.path().join(name);
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("journal.redb"), &bytes).unwrap();
        assert_refused(&certs, &state, name);
    }
    // A truncated real journal: make one, stop the orchestrator cleanly, cut it in half.
    let state = dir.path().join("truncated");
    let (mut proc, _) = start_orchestrator(&certs, &state, "127.0.0.1:0");
    let pid = nix::unistd::Pid::from_raw(proc.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let _ = proc.0.wait();
    let journal = state.join("journal.redb");
    let whole = std::fs::read(&journal).unwrap();
    std::fs::write(&journal, &whole[..whole.len() / 2]).unwrap();
    assert_refused(&certs, &state, "truncated");
}

/// A host whose actions log their executions into a file of the test: they run without
/// namespaces (`--isolation none`; isolation has its own tests, `isolation_test`).
fn host(certs: &Certs, state: PathBuf, ip: &str, orchestrator: &ActorId) -> Proc {
    let (proc, _) = start_procmesh(
        "host",
        &[
            "--listen",
            &format!("{ip}:0"),
            "--tls-dir",
            certs.host_dir().to_str().unwrap(),
            "--node-name",
            &node_name(&state),
            "--state-dir",
            state.to_str().unwrap(),
            "--orchestrator",
            &orchestrator.to_string(),
            "--procs",
            "2",
            "--max-actions",
            "2",
            "--capacity",
            "4",
            "--isolation",
            "none",
        ],
    );
    proc
}

/// Retries `f` (a request the orchestrator may be down for) until it succeeds or 60 s pass.
async fn retrying<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, procmesh_client::ClientError>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "{what} kept failing for 60 s: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn status(queue: &Queue) -> QueueStatus {
    retrying("status", || queue.status()).await
}

/// A small deterministic random source (the test prints its seed).
fn next(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// Attests ORC-26, ORC-27, ORC-28, ORC-30
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_orchestrator_three_times_under_load_loses_nothing() {
    const ACTIONS: usize = 2_000;
    let began = Instant::now();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("restart test seed {seed}");
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("orchestrator");
    let (orch, id) = start_orchestrator(&certs, &state, "127.0.0.1:0");
    let listen = id.addr().to_string();
    let listen = listen.trim_start_matches("quic!").to_owned();
    let mut orch = Some(orch);
    let _hosts = [
        host(&certs, dir.path().join("host-a"), "127.0.0.2", &id),
        host(&certs, dir.path().join("host-b"), "127.0.0.3", &id),
    ];

    let mut config = ClientConfig::new(id.clone(), certs.client.clone());
    config.bind = Some("127.0.0.1:0".parse().unwrap());
    config.cache_dir = Some(dir.path().join("client-cache"));
    config.timeout = Duration::from_secs(3);
    let client = Client::connect(config).await.expect("client connects");
    // Both hosts' four procs of two slots each are known.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hosts = client.hosts().await.unwrap();
        let slots: u32 = hosts
            .iter()
            .filter(|h| h.state == HostState::Alive)
            .flat_map(|h| &h.procs)
            .map(|p| p.capacity.max)
            .sum();
        if slots >= 8 {
            break;
        }
        assert!(Instant::now() < deadline, "only {slots} slots after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let executions = dir.path().join("executions.log");
    let worker: WorkerId = client
        .register_worker(
            &WorkerBuilder::new()
                .bytes(
                    "run.sh",
                    format!(
                        "#!/bin/sh\necho \"$PROCMESH_LSN $PROCMESH_ATTEMPT\" >> {}\nsleep 0.05\n",
                        executions.display()
                    )
                    .into_bytes(),
                    true,
                )
                .executable("run.sh")
                .env("PATH", "/usr/bin:/bin"),
        )
        .await
        .unwrap();
    let queue = client
        .create_queue(QueueConfig {
            // Each restart may abandon attempts; they must be retried, not failed.
            retry_limit: 20,
            ..QueueConfig::default()
        })
        .await
        .unwrap();

    // A watch that runs across the restarts: it must see every transition once (ORC-32).
    let mut watch = queue.watch().await.unwrap();
    let watcher = tokio::spawn(async move {
        let mut seen: Vec<(u64, Lsn, u32, ActionState)> = Vec::new();
        let mut lagged = 0u64;
        let mut completed = 0usize;
        while completed < ACTIONS {
            let event = tokio::time::timeout(Duration::from_secs(60), watch.next())
                .await
                .expect("the watch keeps delivering")
                .expect("the watch stays open");
            match event {
                ClientEvent::Transition {
                    seq, transition, ..
                } => {
                    if transition.state == ActionState::Completed {
                        completed += 1;
                    }
                    seen.push((
                        seq,
                        transition.lsn,
                        transition.attempt.get(),
                        transition.state,
                    ));
                }
                ClientEvent::Lagged { missed, .. } => lagged += missed,
                _ => {}
            }
        }
        (seen, lagged)
    });

    // Submit in batches with idempotency keys; a batch whose answer was lost in a crash is sent
    // again with the same keys.
    let submitter = {
        let queue = queue.clone();
        tokio::spawn(async move {
            let mut lsns: BTreeMap<usize, Lsn> = BTreeMap::new();
            for batch in 0..ACTIONS / 100 {
                let actions: Vec<SubmitAction> = (batch * 100..(batch + 1) * 100)
                    .map(|i| SubmitAction {
                        action: ActionDef::new(worker),
                        priority: None,
                        idempotency_key: Some(format!("action-{i}")),
                    })
                    .collect();
                let got = retrying("submit", || queue.submit(actions.clone())).await;
                for (k, lsn) in got.into_iter().enumerate() {
                    lsns.insert(batch * 100 + k, lsn);
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            lsns
        })
    };

    // Three kill -9s at random points of the run, each followed by a restart on the same
    // address and state directory.
    for round in 0..3 {
        let wait = 700 + next(&mut seed) % 2_000;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        drop(orch.take()); // SIGKILL and reap
        let down = 100 + next(&mut seed) % 600;
        tokio::time::sleep(Duration::from_millis(down)).await;
        let restarted = Instant::now();
        let (proc, again) = start_orchestrator(&certs, &state, &listen);
        assert_eq!(again, id, "the orchestrator is back at the same address");
        eprintln!(
            "round {round}: killed after {wait} ms, down {down} ms, ready again in {} ms",
            restarted.elapsed().as_millis()
        );
        orch = Some(proc);
    }

    let lsns = tokio::time::timeout(Duration::from_secs(120), submitter)
        .await
        .expect("every submission is answered")
        .unwrap();
    assert_eq!(lsns.len(), ACTIONS);
    let distinct: BTreeSet<Lsn> = lsns.values().copied().collect();
    assert_eq!(
        distinct.len(),
        ACTIONS,
        "each idempotency key got its own LSN, once"
    );

    let deadline = Instant::now() + Duration::from_secs(240);
    let final_status = loop {
        let s = status(&queue).await;
        if s.is_complete && s.counts.total() as usize == ACTIONS {
            break s;
        }
        assert!(Instant::now() < deadline, "not complete after 240 s: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let results = retrying("results", || queue.all_results()).await;
    assert_eq!(results.len(), ACTIONS, "one terminal record per action");
    let mut attempts: BTreeMap<Lsn, u32> = BTreeMap::new();
    for r in &results {
        assert_eq!(
            r.record.state(),
            ActionState::Completed,
            "every action completed: {r:?}"
        );
        assert!(
            attempts
                .insert(r.record.lsn(), r.record.attempt().get())
                .is_none(),
            "a second record for {}",
            r.record.lsn()
        );
    }
    assert_eq!(
        attempts.keys().copied().collect::<BTreeSet<_>>(),
        distinct,
        "the results are exactly the accepted actions"
    );
    // Executions: each attempt ran at most once, no attempt beyond the final one ran, and the
    // final attempt of each action ran.
    let text = std::fs::read_to_string(&executions).unwrap();
    let mut ran: BTreeMap<(u64, u32), u32> = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let lsn: u64 = parts.next().unwrap().parse().unwrap();
        let attempt: u32 = parts.next().unwrap().parse().unwrap();
        *ran.entry((lsn, attempt)).or_default() += 1;
    }
    let twice: Vec<_> = ran.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "attempts that ran twice: {twice:?}");
    for (lsn, last) in &attempts {
        assert!(
            ran.contains_key(&(lsn.0, *last)),
            "the final attempt {last} of {lsn} never ran"
        );
        let beyond = ran.keys().filter(|(l, a)| *l == lsn.0 && a > last).count();
        assert_eq!(beyond, 0, "{lsn} ran attempts after its final one");
    }
    // The watch saw every transition once, in index order, without a gap.
    let (seen, lagged) = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .expect("the watch saw every completion")
        .unwrap();
    assert_eq!(lagged, 0, "the watch lagged");
    for pair in seen.windows(2) {
        assert_eq!(
            pair[1].0,
            pair[0].0 + 1,
            "indices {} then {}",
            pair[0].0,
            pair[1].0
        );
    }
    let mut per_action: BTreeMap<(Lsn, u32, &'static str), usize> = BTreeMap::new();
    for (_, lsn, attempt, state) in &seen {
        *per_action
            .entry((*lsn, *attempt, state.as_str()))
            .or_default() += 1;
    }
    let repeated: Vec<_> = per_action.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "transitions seen twice: {repeated:?}");
    for (lsn, last) in &attempts {
        assert_eq!(
            per_action.get(&(*lsn, *last, ActionState::Completed.as_str())),
            Some(&1),
            "the watch saw {lsn} complete once"
        );
    }
    let retried = attempts.values().filter(|a| **a > 1).count();
    let executions_total: u32 = ran.values().sum();
    eprintln!(
        "restart test: {ACTIONS} actions, {} executions, {retried} retried, {} transitions \
         watched, counts {:?}, {} s",
        executions_total,
        seen.len(),
        final_status.counts,
        began.elapsed().as_secs()
    );
}
