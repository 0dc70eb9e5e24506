//! The OS process manager with real children: a small shell script in an allow-listed temporary
//! directory stands in for the proc-agent binary (it never calls back; the real proc agent is
//! tested by the workspace's integration tests). Runs only child processes spawned through
//! `procmesh_sys::Child`: this test process becomes a child subreaper and reaps orphans.

mod utils;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use procmesh_host::{env, Host, HostConfig, OsProcManager, ProcHandle};
use procmesh_protocol::messages::{HostError, ProcConfig, ProcStatus, SpawnSpec};
use procmesh_protocol::{BlobHash, ExitStatus};
use procmesh_sys::ProcessIdentity;
use utils::{eventually, T};

/// `<script> proc-agent <mode> <out>`: writes its environment, working directory and pid next
/// to `<out>`, then behaves by `mode`.
const SCRIPT: &str = r#"#!/bin/sh
[ "$1" = proc-agent ] || exit 64
mode="$2"; out="$3"
env | grep '^PROCMESH_' > "$out.env"
pwd > "$out.cwd"
case "$mode" in
  ignore-term)
    trap '' TERM
    echo $$ > "$out.tmp"; mv "$out.tmp" "$out.pid"
    exec sleep 1000 ;;
  sleep)
    echo $$ > "$out.tmp"; mv "$out.tmp" "$out.pid"
    exec sleep 1000 ;;
  orphan)
    setsid sleep 1000 &
    echo $! > "$out.otmp"; mv "$out.otmp" "$out.orphan"
    echo $$ > "$out.tmp"; mv "$out.tmp" "$out.pid"
    exec sleep 1000 ;;
  exit)
    exit 5 ;;
esac
exit 65
"#;

struct OsHost {
    host: Host,
    dir: tempfile::TempDir,
    script: PathBuf,
}

fn write_script(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, SCRIPT).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

async fn os_host(binary: Option<PathBuf>) -> OsHost {
    let (_, identity) = utils::identity();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = write_script(&bin, "agent.sh");
    let mut config = HostConfig::ephemeral(dir.path().join("state"), identity);
    // Room for every proc of 3 slots these tests start (HST-25).
    config.capacity = Some(64);
    config.proc_binary = Some(binary.unwrap_or_else(|| script.clone()));
    config.allowed_dir = Some(bin);
    config.kill_wait_ms = 5_000;
    let manager = OsProcManager::from_config(&config).unwrap();
    let host = Host::start(config, Arc::new(manager)).await.unwrap();
    OsHost { host, dir, script }
}

impl OsHost {
    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spec(&self, name: &str, mode: &str, ready_timeout_ms: u64) -> SpawnSpec {
        SpawnSpec {
            name: name.to_owned(),
            config: ProcConfig {
                args: vec![mode.to_owned(), self.out(name).display().to_string()],
                ready_timeout_ms: Some(ready_timeout_ms),
                max_actions: Some(3),
                env: [("EXTRA_VAR".to_owned(), "x".to_owned())].into(),
                ..ProcConfig::default()
            },
        }
    }

    /// Starts a spawn in the background; returns it and the proc's handle once the script
    /// wrote its pid.
    async fn start(
        &self,
        name: &str,
        mode: &str,
        ready_timeout_ms: u64,
    ) -> (
        tokio::task::JoinHandle<Result<ProcHandle, HostError>>,
        ProcHandle,
        u32,
    ) {
        let host = self.host.clone();
        let spec = self.spec(name, mode, ready_timeout_ms);
        let spawn = tokio::spawn(async move { host.spawn(spec).await });
        let pid_file = PathBuf::from(format!("{}.pid", self.out(name).display()));
        assert!(
            eventually(T, || async { pid_file.exists() }).await,
            "{name} never wrote its pid"
        );
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let handle = self.host.proc(name).await.unwrap();
        (spawn, handle, pid)
    }
}

fn alive(identity: &ProcessIdentity) -> bool {
    identity.is_alive()
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                found.push(pid);
            }
        }
    }
    found
}

// Attests HST-5 (SIGKILL at the deadline), HST-9 (identity record), the bootstrap env contract
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_ignoring_sigterm_ends_with_sigkill_after_the_grace() {
    let h = os_host(None).await;
    let (spawn, handle, pid) = h.start("stubborn", "ignore-term", 0).await;

    // HST-9: pid, start time and executable hash of the very child.
    let record = handle.record().unwrap();
    assert_eq!(record.pid, pid);
    assert_eq!(handle.pid(), Some(pid));
    let identity = ProcessIdentity::of(pid).unwrap();
    assert_eq!(record.start_time, identity.start_time);
    assert_eq!(record.exe, h.script.canonicalize().unwrap());
    assert_eq!(
        record.exe_hash,
        BlobHash::of(&std::fs::read(&h.script).unwrap())
    );

    // The bootstrap environment and working directory.
    let env_text = std::fs::read_to_string(format!("{}.env", h.out("stubborn").display())).unwrap();
    let env: std::collections::BTreeMap<&str, &str> =
        env_text.lines().filter_map(|l| l.split_once('=')).collect();
    let paths = h.host.paths();
    let addr = h.host.addr();
    assert_eq!(env["PROCMESH_PROC_ID"], format!("{addr},stubborn"));
    assert_eq!(
        env["PROCMESH_BACKEND_ADDR"],
        format!("unix!{}", paths.socket.display())
    );
    assert_eq!(
        env["PROCMESH_CALLBACK"],
        format!("{addr},service.bootstrap")
    );
    assert_eq!(
        env[env::WORK_DIR],
        paths.proc_dir("stubborn").display().to_string()
    );
    assert_eq!(env[env::WORKERS_DIR], paths.workers.display().to_string());
    assert_eq!(env[env::BLOBS_DIR], paths.blobs.display().to_string());
    assert_eq!(env[env::MAX_ACTIONS], "3");
    let cwd = std::fs::read_to_string(format!("{}.cwd", h.out("stubborn").display())).unwrap();
    assert_eq!(cwd.trim(), paths.proc_dir("stubborn").display().to_string());

    let started = tokio::time::Instant::now();
    let status = handle
        .terminate(Duration::from_millis(500), "test")
        .await
        .unwrap();
    assert_eq!(status, ExitStatus::Signal(libc::SIGKILL));
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(!alive(&identity), "no process left");
    assert!(!procmesh_sys::procfs::children_of(std::process::id()).contains(&pid));
    assert_eq!(
        spawn.await.unwrap().unwrap_err(),
        HostError::ExitedEarly {
            name: "stubborn".into(),
            status
        }
    );
    assert!(!h.host.paths().proc_dir("stubborn").exists());
    h.host.shutdown(T).await;
}

// Attests HST-4 (an exit nobody asked for is seen by every waiter)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_from_outside_is_seen_by_wait() {
    let h = os_host(None).await;
    let (spawn, handle, pid) = h.start("victim", "sleep", 0).await;
    let waiter = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.wait().await })
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = handle.wait().await;
    assert_eq!(status, ExitStatus::Signal(libc::SIGKILL));
    assert_eq!(waiter.await.unwrap(), status);
    assert_eq!(handle.status(), ProcStatus::Exited(status));
    assert_eq!(handle.kill().await, Ok(status));
    assert_eq!(
        spawn.await.unwrap().unwrap_err(),
        HostError::ExitedEarly {
            name: "victim".into(),
            status
        }
    );
    assert!(h.host.procs().is_empty());
    // An early exit by itself.
    let err = h
        .host
        .spawn(h.spec("quitter", "exit", 5_000))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        HostError::ExitedEarly {
            name: "quitter".into(),
            status: ExitStatus::Code(5)
        }
    );
    h.host.shutdown(T).await;
}

// Attests HST-8
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_outside_the_allow_list_is_refused() {
    let elsewhere = tempfile::tempdir().unwrap();
    let outside = write_script(elsewhere.path(), "agent.sh");
    let h = os_host(Some(outside.clone())).await;
    let err = h.host.spawn(h.spec("w", "sleep", 1_000)).await.unwrap_err();
    let HostError::NotAllowed { path, reason } = &err else {
        panic!("{err}")
    };
    assert_eq!(*path, outside.canonicalize().unwrap().display().to_string());
    assert!(
        reason.contains("outside the allow-listed directory"),
        "{reason}"
    );
    assert!(h.host.procs().is_empty());
    assert!(processes_mentioning(&elsewhere.path().display().to_string()).is_empty());
    h.host.shutdown(T).await;

    // A symlink inside the allowed directory that leads out, and `..`, are resolved first.
    let h = os_host(None).await;
    let bin = h.script.parent().unwrap().to_owned();
    std::os::unix::fs::symlink(&outside, bin.join("link.sh")).unwrap();
    let sibling = h.dir.path().join("outside");
    std::fs::create_dir_all(&sibling).unwrap();
    write_script(&sibling, "agent.sh");
    let dotdot = bin.join("../outside/agent.sh");
    // A file that is not executable.
    let plain = bin.join("plain.sh");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    for binary in [bin.join("link.sh"), dotdot, plain, bin.join("missing")] {
        let manager = OsProcManager::new(Some(binary.clone()), Some(bin.clone())).unwrap();
        let err = manager.resolve().unwrap_err();
        assert_eq!(err.code(), "not_allowed", "{binary:?}: {err}");
    }
    assert_eq!(
        OsProcManager::new(Some(h.script.clone()), Some(bin.clone()))
            .unwrap()
            .resolve()
            .unwrap(),
        h.script.canonicalize().unwrap()
    );
    h.host.shutdown(T).await;
}

// Attests HST-2 (ReadyTimeout), HST-3, HST-9 (orphans)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_never_calls_back_times_out_and_leaves_nothing() {
    let h = os_host(None).await;
    let started = tokio::time::Instant::now();
    let err = h
        .host
        .spawn(h.spec("silent", "orphan", 400))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        HostError::ReadyTimeout {
            name: "silent".into(),
            timeout_ms: 400
        }
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    // When the spawn returns, the child and the orphan it left (in a session of its own, out
    // of the child's process group) are gone, and reaped.
    let read_pid = |ext: &str| -> u32 {
        std::fs::read_to_string(format!("{}.{ext}", h.out("silent").display()))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (pid, orphan) = (read_pid("pid"), read_pid("orphan"));
    for p in [pid, orphan] {
        let gone = match ProcessIdentity::of(p) {
            Ok(identity) => !identity.is_alive(),
            Err(_) => true,
        };
        assert!(gone, "pid {p} still alive");
        assert!(!procmesh_sys::procfs::children_of(std::process::id()).contains(&p));
    }
    let dir = h.dir.path().display().to_string();
    assert!(
        processes_mentioning(&dir).is_empty(),
        "processes left: {:?}",
        processes_mentioning(&dir)
    );
    assert!(h.host.procs().is_empty());
    h.host.shutdown(T).await;
}

// Attests HST-20
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_replaced_after_the_first_launch_or_with_another_hash_is_refused() {
    let h = os_host(None).await;
    // The first launch records the hash (the script exits at once: ExitedEarly).
    let first = h.host.spawn(h.spec("first", "exit", 5_000)).await;
    assert!(
        matches!(first, Err(HostError::ExitedEarly { .. })),
        "{first:?}"
    );
    // Replaced in place (new inode, same path): refused, nothing started.
    let tmp = h.script.with_extension("new");
    std::fs::write(&tmp, format!("{SCRIPT}\n# changed\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &h.script).unwrap();
    match h.host.spawn(h.spec("second", "sleep", 5_000)).await {
        Err(HostError::NotAllowed { reason, .. }) => assert!(reason.contains("hash"), "{reason}"),
        other => panic!("{:?}", other.map(|p| p.info())),
    }
    assert!(h.host.procs().is_empty());
    h.host.shutdown(T).await;

    // An allow-listed hash that is not the binary's: refused from the start.
    let (_, identity) = utils::identity();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = write_script(&bin, "agent.sh");
    let mut config = HostConfig::ephemeral(dir.path().join("state"), identity);
    // Room for every proc of 3 slots these tests start (HST-25).
    config.capacity = Some(64);
    config.proc_binary = Some(script);
    config.allowed_dir = Some(bin);
    config.proc_binary_blake3 = Some(BlobHash::of(b"another binary"));
    let manager = OsProcManager::from_config(&config).unwrap();
    let host = Host::start(config, Arc::new(manager)).await.unwrap();
    let refused = host.spawn(h.spec("third", "sleep", 5_000)).await;
    assert!(
        matches!(refused, Err(HostError::NotAllowed { .. })),
        "{:?}",
        refused.map(|p| p.info())
    );
    host.shutdown(T).await;
}
