//! The runner with real processes: shell-script workers shipped as worker files through a blob
//! store, sandboxes on disk, signals, timeouts, `/proc` scans. Every wait is for a reported
//! transition or a condition, bounded.

mod utils;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::ready;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::time::{Duration, Instant};

use procmesh_proc_agent::runner::Executor;
use procmesh_protocol::action::{ActionState, AttemptRef, ExitStatus};
use procmesh_protocol::cas::BlobHash;
use procmesh_protocol::messages::agent::{ActionSpec, AgentError, Capacity};
use procmesh_protocol::spec::{ActionDef, OutputFile, PathError, SpecError, WorkerDescriptor};
use utils::{check_sequence, entries, eventually, marker, processes_with_marker, Harness, PATH};

const SHORT: Duration = Duration::from_secs(10);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn reason(t: &procmesh_protocol::action::Transition) -> String {
    t.detail.reason.clone().unwrap_or_default()
}

// Attests PA-1, PA-2, PA-6, PA-7, PA-9
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_actions_transform_their_inputs() {
    let mut h = Harness::new(|c| c.max_actions = 4).await;
    let worker = h
        .script_worker("tr 'a-z' 'A-Z' < in.txt > Outputs/out.txt && echo done")
        .await;
    let mut expected: HashMap<AttemptRef, (BlobHash, u64)> = HashMap::new();
    let mut in_flight = VecDeque::new();
    let (mut next, mut done) = (0, 0);
    while done < 100 {
        while next < 100 && h.runner.capacity().free > 0 {
            let content = format!("item {next}: hello, world\n");
            let upper = content.to_uppercase();
            let mut action = ActionDef::new(worker);
            action
                .inputs
                .push(h.input("in.txt", content.as_bytes()).await);
            let attempt = h.submit(action).expect("a free slot");
            expected.insert(
                attempt,
                (BlobHash::of(upper.as_bytes()), upper.len() as u64),
            );
            in_flight.push_back(attempt);
            next += 1;
        }
        let attempt = in_flight.pop_front().expect("something in flight");
        let all = h.wait_final(attempt).await;
        check_sequence(&all);
        let last = all.last().unwrap();
        assert_eq!(last.state, ActionState::Completed, "{last:?}");
        assert_eq!(all.len(), 2, "Running, Completed");
        let (hash, size) = expected[&attempt];
        assert_eq!(
            last.detail.outputs,
            vec![OutputFile {
                path: "out.txt".into(),
                hash,
                size
            }]
        );
        assert!(h.store.contains(&hash));
        assert_eq!(text(&last.detail.stdout_tail), "done\n");
        assert_eq!(last.detail.exit, Some(ExitStatus::Code(0)));
        assert!(last.detail.reason.is_none(), "{last:?}");
        done += 1;
    }
    // Resolved once, materialised once, linked a hundred times.
    assert_eq!(
        h.resolver
            .worker_calls
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(entries(&h.workers_dir()), vec![worker.to_string()]);
    let sandboxes = h.sandboxes();
    assert!(
        eventually(Duration::from_secs(30), || ready({
            entries(&sandboxes).is_empty()
        }))
        .await,
        "every sandbox deleted: not true within {:?}",
        Duration::from_secs(30)
    );
}

// Attests PA-2
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_action_reports_its_exit_code_and_stderr() {
    let mut h = Harness::new(|_| {}).await;
    let worker = h
        .script_worker("echo partial > Outputs/log.txt\necho 'something broke' >&2\nexit 3")
        .await;
    let last = h.run(ActionDef::new(worker)).await;
    assert_eq!(last.state, ActionState::Failed);
    assert_eq!(last.detail.exit, Some(ExitStatus::Code(3)));
    assert_eq!(text(&last.detail.stderr_tail), "something broke\n");
    assert!(reason(&last).contains("exited with code 3"), "{last:?}");
    // The outputs of a run that ended by itself are kept, failed or not.
    assert_eq!(last.detail.outputs.len(), 1);
    assert_eq!(last.detail.outputs[0].hash, BlobHash::of(b"partial\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_noop_executor_completes_without_a_worker_a_sandbox_or_a_process() {
    let mut h = Harness::new(|c| c.executor = Executor::Noop).await;
    // A worker nobody can resolve: the no-op executor never asks for it.
    let worker = procmesh_protocol::spec::WorkerId::from_bytes([7; 32]);
    let attempt = h.submit(ActionDef::new(worker)).unwrap();
    let all = h.wait_final(attempt).await;
    let states: Vec<_> = all.iter().map(|t| t.state).collect();
    assert_eq!(states, [ActionState::Running, ActionState::Completed]);
    assert_eq!(all[1].detail.exit, Some(ExitStatus::Code(0)));
    assert!(entries(&h.sandboxes()).is_empty());
    assert_eq!(h.runner.capacity().free, h.runner.capacity().max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_killed_by_a_signal_reports_it() {
    let mut h = Harness::new(|_| {}).await;
    let worker = h.script_worker("echo dying >&2\nkill -KILL $$").await;
    let last = h.run(ActionDef::new(worker)).await;
    assert_eq!(last.state, ActionState::Failed);
    assert_eq!(last.detail.exit, Some(ExitStatus::Signal(9)));
    assert!(reason(&last).contains("SIGKILL"), "{last:?}");
    assert_eq!(text(&last.detail.stderr_tail), "dying\n");
}

// Attests PA-1, PA-2
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_attempt_still_ends_failed_and_frees_its_slot() {
    let mut h = Harness::new(|c| c.max_actions = 1).await;
    let worker = h.script_worker("exit 0").await;
    h.resolver.panic_for(worker);
    let last = h.run(ActionDef::new(worker)).await;
    assert_eq!(last.state, ActionState::Failed);
    assert!(reason(&last).contains("internal error"), "{last:?}");
    assert_eq!(h.runner.capacity(), Capacity { max: 1, free: 1 });
    assert!(h.runner.status().is_empty());
}

// Attests PA-11
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_action_times_out() {
    let mut h = Harness::new(|c| c.cancel_grace = Duration::from_millis(200)).await;
    let worker = h.script_worker("sleep 1000").await;
    let mut action = ActionDef::new(worker);
    action.timeout_ms = Some(300);
    let start = Instant::now();
    let last = h.run(action).await;
    assert_eq!(last.state, ActionState::Failed);
    assert!(
        reason(&last).starts_with("timed out after 300 ms"),
        "{last:?}"
    );
    assert!(matches!(last.detail.exit, Some(ExitStatus::Signal(_))));
    assert!(start.elapsed() < Duration::from_secs(20));
}

// Attests PA-3, PA-4
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_action_ends_cancelled_and_its_process_tree_is_gone() {
    let mut h = Harness::new(|c| c.cancel_grace = Duration::from_millis(300)).await;
    // Ignores SIGTERM (and so do its children): only the SIGKILL after the grace ends it.
    let worker = h
        .script_worker("trap '' TERM\nsleep 1000 &\nsleep 1000 &\nwait")
        .await;
    let m = marker("cancel");
    let mut action = ActionDef::new(worker);
    action.env.insert("PM_TEST_MARKER".into(), m.clone());
    let attempt = h.submit(action).unwrap();
    h.wait_running(attempt).await;
    assert!(
        eventually(SHORT, || ready(processes_with_marker(&m).len() >= 3)).await,
        "the script and its two sleeps run: not true within {:?}",
        SHORT
    );
    assert!(h.runner.cancel(attempt, "no longer needed".into()));
    let all = h.wait_final(attempt).await;
    check_sequence(&all);
    let last = all.last().unwrap();
    assert_eq!(last.state, ActionState::Cancelled);
    assert_eq!(reason(last), "no longer needed");
    assert_eq!(last.detail.exit, Some(ExitStatus::Signal(9)));
    assert!(
        eventually(SHORT, || ready(processes_with_marker(&m).is_empty())).await,
        "no process of the action is left: not true within {:?}",
        SHORT
    );
    // It is not held any more.
    assert!(!h.runner.cancel(attempt, "again".into()));
}

// Attests PA-3
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_action_that_exits_zero_is_still_cancelled() {
    let mut h = Harness::new(|_| {}).await;
    let worker = h
        .script_worker("trap 'echo bye > Outputs/bye; exit 0' TERM\nsleep 1000 &\nwait")
        .await;
    let m = marker("exit0");
    let mut action = ActionDef::new(worker);
    action.env.insert("PM_TEST_MARKER".into(), m.clone());
    let attempt = h.submit(action).unwrap();
    h.wait_running(attempt).await;
    assert!(
        eventually(SHORT, || ready(processes_with_marker(&m).len() >= 2)).await,
        "the trap is set and the sleep runs: not true within {:?}",
        SHORT
    );
    assert!(h.runner.cancel(attempt, String::new()));
    let all = h.wait_final(attempt).await;
    check_sequence(&all);
    let last = all.last().unwrap();
    assert_eq!(last.state, ActionState::Cancelled, "{last:?}");
    assert_eq!(last.detail.exit, Some(ExitStatus::Code(0)));
    assert_eq!(reason(last), "cancelled");
    assert!(last.detail.outputs.is_empty());
}

// Attests PA-1, PA-3
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_preparation_ends_cancelled() {
    let mut h = Harness::new(|c| c.max_actions = 2).await;
    let worker = h.script_worker("exit 0").await;
    h.resolver.hold(true);
    let attempt = h.submit(ActionDef::new(worker)).unwrap();
    // Being prepared counts as running.
    assert_eq!(h.runner.capacity(), Capacity { max: 2, free: 1 });
    let status = h.runner.status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].action, attempt);
    assert_eq!(status[0].state, ActionState::Submitting);
    let resolver = h.resolver.clone();
    assert!(
        eventually(SHORT, || ready({
            resolver
                .worker_calls
                .load(std::sync::atomic::Ordering::SeqCst)
                == 1
        }))
        .await,
        "the worker is being resolved: not true within {:?}",
        SHORT
    );
    assert!(h.runner.cancel(attempt, "changed my mind".into()));
    let all = h.wait_final(attempt).await;
    check_sequence(&all);
    let states: Vec<_> = all.iter().map(|t| t.state).collect();
    assert_eq!(states, [ActionState::Cancelled]);
    assert_eq!(reason(all.last().unwrap()), "changed my mind");
    assert_eq!(all.last().unwrap().detail.exit, None);
    assert_eq!(h.runner.capacity(), Capacity { max: 2, free: 2 });
    h.resolver.hold(false);
}

// Attests PA-1
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_capacity_submissions_are_refused() {
    let mut h = Harness::new(|c| c.max_actions = 2).await;
    let worker = h.script_worker("sleep 1000").await;
    h.resolver.hold(true);
    let a = h.submit(ActionDef::new(worker)).unwrap();
    let b = h.submit(ActionDef::new(worker)).unwrap();
    assert_eq!(h.runner.capacity(), Capacity { max: 2, free: 0 });
    assert_eq!(
        h.submit(ActionDef::new(worker)),
        Err(AgentError::NoCapacity { max: 2 })
    );
    let dup = ActionSpec {
        lsn: a.lsn,
        attempt: a.attempt,
        priority: 0,
        queue: 0,
        action: ActionDef::new(worker),
    };
    assert_eq!(
        h.runner.submit(dup, h.report_to.clone()),
        Err(AgentError::Duplicate(a))
    );
    h.resolver.hold(false);
    h.wait_running(a).await;
    h.wait_running(b).await;
    assert_eq!(
        h.submit(ActionDef::new(worker)),
        Err(AgentError::NoCapacity { max: 2 })
    );
    assert!(h.runner.cancel(a, "make room".into()));
    h.wait_final(a).await;
    // The slot was freed with the final report: a submission right after it is accepted.
    let c = h.submit(ActionDef::new(worker)).expect("the freed slot");
    for attempt in [b, c] {
        assert!(h.runner.cancel(attempt, "done".into()));
        let all = h.wait_final(attempt).await;
        assert_eq!(all.last().unwrap().state, ActionState::Cancelled);
    }
    assert_eq!(h.runner.capacity(), Capacity { max: 2, free: 2 });
    assert!(h.runner.status().is_empty());
}

/// Every file or directory named `name` anywhere under `dir`.
fn find_named(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_name() == name {
                found.push(e.path());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    found
}

// Attests PA-5
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_in_a_worker_descriptor_is_refused() {
    let mut h = Harness::new(|_| {}).await;
    let name = marker("escape");
    let absolute = std::env::temp_dir().join(&name);
    let tool = h.file("bin/tool", b"#!/bin/sh\nexit 0\n", true).await;
    let bad_paths = [
        format!("../{name}"),
        format!("bin/../../{name}"),
        absolute.display().to_string(),
    ];
    for bad in &bad_paths {
        let payload = h.file(bad, b"escaped", false).await;
        let id = h.resolver.add(WorkerDescriptor {
            executable: "bin/tool".into(),
            files: vec![tool.clone(), payload],
            directories: vec![],
            env: BTreeMap::new(),
            host_program: None,
        });
        let last = h.run(ActionDef::new(id)).await;
        assert_eq!(last.state, ActionState::Failed);
        let why = reason(&last);
        assert!(why.contains(&format!("invalid worker {id}")), "{why}");
        assert!(
            why.contains("leaves the sandbox") || why.contains("absolute path"),
            "{why}"
        );
        assert!(why.contains(bad.as_str()), "{why}");
    }
    // A directory can be just as bad.
    let id = h.resolver.add(WorkerDescriptor {
        executable: "bin/tool".into(),
        files: vec![tool.clone()],
        directories: vec![format!("../{name}")],
        env: BTreeMap::new(),
        host_program: None,
    });
    let last = h.run(ActionDef::new(id)).await;
    assert!(reason(&last).contains("leaves the sandbox"), "{last:?}");

    // Nothing was written anywhere: not near the sandboxes, not in the cache, not at the
    // absolute path.
    assert!(find_named(h.root(), &name).is_empty());
    assert!(!absolute.exists());
    assert!(entries(&h.workers_dir()).is_empty());
}

// Attests PA-5
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_in_an_action_input_is_refused() {
    let mut h = Harness::new(|_| {}).await;
    let worker = h.script_worker("exit 0").await;
    let name = marker("escape");
    let cases = [
        (format!("../{name}"), "leaves the sandbox"),
        (format!("in/../../{name}"), "leaves the sandbox"),
        (format!("/tmp/{name}"), "absolute path"),
        (format!("Outputs/{name}"), "reserved Outputs/"),
    ];
    for (path, why) in &cases {
        let mut action = ActionDef::new(worker);
        action.inputs.push(h.input(path, b"escaped").await);
        let err = h.submit(action).unwrap_err();
        assert!(
            matches!(err, AgentError::InvalidAction(_)),
            "{path}: {err:?}"
        );
        assert!(err.to_string().contains(why), "{path}: {err}");
    }
    let mut action = ActionDef::new(worker);
    action
        .inputs
        .push(h.input(&format!("../{name}"), b"x").await);
    assert_eq!(
        h.submit(action),
        Err(AgentError::InvalidAction(SpecError::Path {
            path: format!("../{name}"),
            reason: PathError::ParentDir
        }))
    );
    // Refused before anything: no slot, no report, no sandbox, nothing written.
    assert!(h.runner.status().is_empty());
    assert!(entries(&h.sandboxes()).is_empty());
    assert!(find_named(h.root(), &name).is_empty());
    assert!(!std::path::Path::new(&format!("/tmp/{name}")).exists());
}

// Attests PA-5
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_escape_through_the_worker_cache_is_refused() {
    let mut h = Harness::new(|_| {}).await;
    let worker = h.script_worker("echo hi > Outputs/x").await;
    // A damaged (or hostile) cache entry whose bin/ leads outside.
    let outside = h.root().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("tool"), b"#!/bin/sh\necho pwned\n").unwrap();
    let entry = h.workers_dir().join(worker.to_string());
    std::fs::create_dir_all(&entry).unwrap();
    symlink(&outside, entry.join("bin")).unwrap();

    let last = h.run(ActionDef::new(worker)).await;
    assert_eq!(last.state, ActionState::Failed);
    assert!(reason(&last).contains("symbolic link"), "{last:?}");
    assert!(reason(&last).contains("bin/tool"), "{last:?}");
    assert_eq!(entries(&outside), vec!["tool".to_owned()]);
    assert_eq!(
        std::fs::read(outside.join("tool")).unwrap(),
        b"#!/bin/sh\necho pwned\n"
    );

    // The same for a cache entry that is itself a link.
    let worker2 = h.script_worker("echo other").await;
    symlink(&outside, h.workers_dir().join(worker2.to_string())).unwrap();
    let last = h.run(ActionDef::new(worker2)).await;
    assert!(reason(&last).contains("symbolic link"), "{last:?}");
    assert_eq!(entries(&outside), vec!["tool".to_owned()]);
}

// Attests PA-7
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_never_follow_symlinks() {
    let mut h = Harness::new(|_| {}).await;
    let secret = h.root().join("secret.txt");
    std::fs::write(&secret, b"top secret").unwrap();
    let worker = h
        .script_worker(&format!(
            "ln -s {} Outputs/leak\nln -s / Outputs/rootdir\necho real > Outputs/real.txt",
            secret.display()
        ))
        .await;
    let last = h.run(ActionDef::new(worker)).await;
    assert_eq!(last.state, ActionState::Completed, "{last:?}");
    let paths: Vec<&str> = last
        .detail
        .outputs
        .iter()
        .map(|o| o.path.as_str())
        .collect();
    assert_eq!(paths, ["real.txt"]);
    let why = reason(&last);
    assert!(why.contains("leak (symbolic link)"), "{why}");
    assert!(why.contains("rootdir (symbolic link)"), "{why}");
    assert!(!h.store.contains(&BlobHash::of(b"top secret")));

    // Outputs/ itself replaced by a link to a directory holding a secret.
    let worker = h
        .script_worker(&format!(
            "rm -r Outputs\nln -s {} Outputs",
            h.root().display()
        ))
        .await;
    let last = h.run(ActionDef::new(worker)).await;
    assert_eq!(last.state, ActionState::Completed, "{last:?}");
    assert!(last.detail.outputs.is_empty(), "{last:?}");
    assert!(
        reason(&last).contains("Outputs (symbolic link)"),
        "{last:?}"
    );
    assert!(!h.store.contains(&BlobHash::of(b"top secret")));
}

// Attests PA-6
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_blobs_are_refused_naming_the_hash() {
    let mut h = Harness::new(|_| {}).await;
    let good = b"#!/bin/sh\nexit 0\n";
    let other = b"#!/bin/sh\nexit 1\n"; // same length
    let descriptor = |hash: BlobHash, size: u64| WorkerDescriptor {
        executable: "bin/tool".into(),
        files: vec![procmesh_protocol::spec::WorkerFile {
            path: "bin/tool".into(),
            hash,
            size,
            executable: true,
        }],
        directories: vec![],
        env: BTreeMap::new(),
        host_program: None,
    };

    // Wrong hash: the store's file named H holds other bytes of the same size.
    let h_other = BlobHash::of(other);
    std::fs::write(h.store.path(&h_other), good).unwrap();
    let id = h.resolver.add(descriptor(h_other, other.len() as u64));
    let last = h.run(ActionDef::new(id)).await;
    assert_eq!(last.state, ActionState::Failed);
    let why = reason(&last);
    assert!(why.contains(&format!("blob {h_other} refused")), "{why}");
    assert!(why.contains(&BlobHash::of(good).to_string()), "{why}");

    // Wrong size.
    let h_good = h.store.put_bytes(good).await.unwrap();
    let id = h.resolver.add(descriptor(h_good, good.len() as u64 + 1));
    let why = reason(&h.run(ActionDef::new(id)).await);
    assert!(why.contains(&format!("blob {h_good} refused")), "{why}");
    assert!(why.contains("bytes"), "{why}");

    // Missing, although the resolver claimed to have fetched it.
    let h_missing = BlobHash::of(b"never stored");
    let id = h.resolver.add(descriptor(h_missing, 12));
    let why = reason(&h.run(ActionDef::new(id)).await);
    assert!(
        why.contains(&format!("blob {h_missing} is missing")),
        "{why}"
    );

    // Unobtainable: the resolver says so.
    let h_lost = BlobHash::of(b"lost everywhere");
    h.resolver.unobtainable(h_lost);
    let id = h.resolver.add(descriptor(h_lost, 15));
    let why = reason(&h.run(ActionDef::new(id)).await);
    assert!(why.contains(&h_lost.to_string()), "{why}");

    // Inputs: wrong size, missing.
    let worker = h.script_worker("exit 0").await;
    let mut action = ActionDef::new(worker);
    let mut input = h.input("in.txt", b"12345").await;
    input.size = 6;
    let h_in = input.hash;
    action.inputs.push(input);
    let why = reason(&h.run(action).await);
    assert!(why.contains(&format!("blob {h_in} refused")), "{why}");
    let mut action = ActionDef::new(worker);
    let h_gone = BlobHash::of(b"no such input");
    action.inputs.push(procmesh_protocol::spec::InputFile {
        path: "in.txt".into(),
        hash: h_gone,
        size: 13,
    });
    let why = reason(&h.run(action).await);
    assert!(why.contains(&format!("blob {h_gone} is missing")), "{why}");

    // No cache entry and no temporary directory was left by the refused workers.
    assert_eq!(entries(&h.workers_dir()), vec![worker.to_string()]);
}

// Attests PA-9
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_are_deleted_and_shutdown_deletes_all() {
    // A read-only leftover of an earlier run is wiped at start.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("proc/sandboxes/7-1/ro");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("f"), b"old").unwrap();
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o555)).unwrap();
    let mut h = Harness::in_dir(dir, |c| c.max_actions = 3).await;
    assert!(entries(&h.sandboxes()).is_empty());

    // After the end, deleted in the background, whatever the action made read-only.
    let worker = h
        .script_worker(
            "test ! -e ro\nmkdir -p ro/deep && echo x > ro/deep/f && chmod -R a-w ro\necho ok > Outputs/o",
        )
        .await;
    let spec = h.spec(ActionDef::new(worker));
    // The same attempt twice in a row: the second gets a fresh sandbox (`test ! -e ro`).
    for _ in 0..2 {
        let attempt = h.runner.submit(spec.clone(), h.report_to.clone()).unwrap();
        let all = h.wait_final(attempt).await;
        assert_eq!(all.last().unwrap().state, ActionState::Completed, "{all:?}");
        h.forget(attempt);
    }
    let sandboxes = h.sandboxes();
    let runner = h.runner.clone();
    assert!(
        eventually(SHORT, || ready({
            entries(&sandboxes).is_empty() && runner.pending_cleanups() == 0
        }))
        .await,
        "the sandboxes are deleted: not true within {:?}",
        SHORT
    );

    // Shutdown cancels what runs and deletes every sandbox before it returns.
    let long = h.script_worker("sleep 1000").await;
    let a = h.submit(ActionDef::new(long)).unwrap();
    let b = h.submit(ActionDef::new(long)).unwrap();
    h.wait_running(a).await;
    h.wait_running(b).await;
    assert_eq!(entries(&h.sandboxes()).len(), 2);
    h.runner.shutdown(Duration::from_millis(300)).await;
    assert!(entries(&h.sandboxes()).is_empty());
    // Attests PA-3b: what a shutdown ends is abandoned (retried elsewhere), not cancelled.
    for attempt in [a, b] {
        let all = h.transitions(attempt);
        assert_eq!(all.last().unwrap().state, ActionState::Abandoned, "{all:?}");
        assert_eq!(
            reason(all.last().unwrap()),
            "the proc agent is shutting down"
        );
    }
    assert_eq!(h.submit(ActionDef::new(long)), Err(AgentError::Stopping));
    assert_eq!(h.runner.capacity().free, 0);
}

// Attests PA-6
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sibling_procs_share_one_worker_cache() {
    let mut h = Harness::new(|c| c.max_actions = 8).await;
    let worker = h.script_worker("echo $1 > Outputs/n").await;
    // The first actions of both procs materialise the same worker at the same time.
    h.resolver.hold(true);
    let (sibling, mut sibling_reports) = h.sibling("worker-2");
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..4 {
        let mut action = ActionDef::new(worker);
        action.args.push(i.to_string());
        ours.push(h.submit(action.clone()).unwrap());
        let spec = h.spec(action);
        theirs.push(sibling.submit(spec, h.report_to.clone()).unwrap());
    }
    h.resolver.hold(false);
    for attempt in ours {
        let all = h.wait_final(attempt).await;
        assert_eq!(all.last().unwrap().state, ActionState::Completed, "{all:?}");
    }
    let mut done = 0;
    while done < theirs.len() {
        let report = tokio::time::timeout(utils::FINAL_TIMEOUT, sibling_reports.recv())
            .await
            .expect("a report in time")
            .expect("the channel is open");
        if report.transition.state.is_terminal() {
            assert_eq!(
                report.transition.state,
                ActionState::Completed,
                "{report:?}"
            );
            assert_eq!(
                report.transition.detail.location.as_ref().unwrap().name(),
                "worker-2"
            );
            done += 1;
        }
    }
    // One cache entry, no temporary directory left by the loser of the race.
    assert_eq!(entries(&h.workers_dir()), vec![worker.to_string()]);
    sibling.shutdown(Duration::from_millis(100)).await;
}

// Attests PA-6
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_files_are_linked_on_one_file_system_and_copied_across() {
    let script = "stat -c %h bin/tool > Outputs/links\nstat -c %a bin/tool > Outputs/mode";
    let read = |h: &Harness, t: &procmesh_protocol::action::Transition, name: &str| {
        let out = t.detail.outputs.iter().find(|o| o.path == name).unwrap();
        text(&std::fs::read(h.store.path(&out.hash)).unwrap())
            .trim()
            .to_owned()
    };
    // Same file system: a hard link into the read-only cache.
    let mut h = Harness::new(|_| {}).await;
    let worker = h.script_worker(script).await;
    let last = h.run(ActionDef::new(worker)).await;
    assert_eq!(last.state, ActionState::Completed, "{last:?}");
    assert_eq!(read(&h, &last, "links"), "2");
    assert_eq!(read(&h, &last, "mode"), "555");

    // The cache on another file system (tmpfs): a copy, verified all the same.
    let shm = std::path::Path::new("/dev/shm");
    let tmp = tempfile::tempdir().unwrap();
    use std::os::unix::fs::MetadataExt;
    let other_fs = shm.is_dir()
        && std::fs::metadata(shm).unwrap().dev() != std::fs::metadata(tmp.path()).unwrap().dev();
    if !other_fs {
        eprintln!("no second file system at /dev/shm: copy path not exercised");
        return;
    }
    let cache = tempfile::tempdir_in(shm).unwrap();
    let mut h = Harness::with_workers_dir(tmp, cache.path().join("workers"), |_| {}).await;
    let worker = h.script_worker(script).await;
    let last = h.run(ActionDef::new(worker)).await;
    assert_eq!(last.state, ActionState::Completed, "{last:?}");
    assert_eq!(read(&h, &last, "links"), "1");
    assert_eq!(read(&h, &last, "mode"), "555");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_time_and_peak_memory_are_reported() {
    let mut h = Harness::new(|_| {}).await;
    // About 0.3 s of CPU in dash, wherever the scheduler puts it.
    let worker = h
        .script_worker("i=0\nwhile [ $i -lt 300000 ]; do i=$((i+1)); done")
        .await;
    let last = h.run(ActionDef::new(worker)).await;
    assert_eq!(last.state, ActionState::Completed);
    let cpu = last.detail.cpu_ms.unwrap();
    assert!(cpu > 50, "cpu_ms {cpu}");
    let peak = last.detail.peak_memory_bytes.unwrap();
    assert!(peak > 100 * 1024, "peak {peak}");
}

// Attests PA-8
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tails_are_the_last_bytes() {
    let mut h = Harness::new(|c| c.tail_bytes = 1024).await;
    let worker = h
        .script_worker(
            "i=0\nwhile [ $i -lt 5000 ]; do echo \"line $i\"; echo \"err $i\" >&2; i=$((i+1)); done",
        )
        .await;
    let last = h.run(ActionDef::new(worker)).await;
    let out: String = (0..5000).map(|i| format!("line {i}\n")).collect();
    let err: String = (0..5000).map(|i| format!("err {i}\n")).collect();
    assert_eq!(last.detail.stdout_tail, &out.as_bytes()[out.len() - 1024..]);
    assert_eq!(last.detail.stderr_tail, &err.as_bytes()[err.len() - 1024..]);
}

// Attests PA-10
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_is_the_workers_overlaid_with_the_actions() {
    let mut h = Harness::new(|_| {}).await;
    let tool = h
        .file(
            "bin/tool",
            b"#!/bin/sh\necho \"A=$A B=$B C=$C HOME=${HOME-unset} ARG=$1 N=$PROCMESH_LSN#$PROCMESH_ATTEMPT\" > Outputs/env\npwd > Outputs/pwd\nreadlink /proc/$$/fd/0 > Outputs/stdin\n",
            true,
        )
        .await;
    let worker = h.resolver.add(WorkerDescriptor {
        executable: "bin/tool".into(),
        files: vec![tool],
        directories: vec!["cache/empty".into()],
        env: BTreeMap::from([
            ("PATH".into(), PATH.into()),
            ("A".into(), "worker".into()),
            ("B".into(), "worker".into()),
        ]),
        host_program: None,
    });
    let mut action = ActionDef::new(worker);
    action.env.insert("B".into(), "action".into());
    action.env.insert("C".into(), "action".into());
    action.args.push("first arg".into());
    let last = h.run(action).await;
    assert_eq!(last.state, ActionState::Completed, "{last:?}");
    let read = |name: &str| {
        let out = last.detail.outputs.iter().find(|o| o.path == name).unwrap();
        text(&std::fs::read(h.store.path(&out.hash)).unwrap())
    };
    assert_eq!(
        read("env"),
        format!(
            "A=worker B=action C=action HOME={} ARG=first arg N=1#1\n",
            h.sandboxes().join("1-1").display()
        )
    );
    let pwd = read("pwd");
    assert!(pwd.trim_end().ends_with("/proc/sandboxes/1-1"), "{pwd}");
    assert_eq!(read("stdin"), "/dev/null\n");
}
