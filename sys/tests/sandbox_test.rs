//! The namespace sandbox with real processes: this test binary is its own sandbox helper
//! (`harness = false`: `main` calls `run_helper_if_asked` first, before any thread exists).
//! Needs root (it maps the action to an unprivileged outside uid) and user namespaces; skips
//! with a reason otherwise. `sandbox_test <filter>` runs the tests whose name contains it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use procmesh_protocol::ExitStatus;
use procmesh_sys::sandbox::{self, Bind, IdMap, NetnsLease, NetnsPool, SandboxSpec, SpawnError};
use procmesh_sys::ProcessIdentity;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

const OUTSIDE_ID: u32 = 60000;
const LIMIT: Duration = Duration::from_secs(30);

mod harness;

use harness::{processes_with, Outcome};

fn main() {
    sandbox::run_helper_if_asked();
    if std::env::args().nth(1).as_deref() == Some(UNPRIVILEGED_CHILD) {
        unprivileged_child();
    }
    if let Err(reason) = sandbox::probe() {
        eprintln!("sandbox_test: skipped: {reason}");
        return;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("sandbox_test: skipped: needs root to map the action to uid {OUTSIDE_ID}");
        return;
    }
    let tests: &[(&str, harness::Test)] = tests![
        probe_succeeds,
        runs_as_the_mapped_user_without_capabilities,
        the_host_is_invisible,
        sees_only_its_own_pids,
        has_only_lo_and_no_way_out,
        read_only_binds_refuse_writes_writable_ones_accept_them,
        a_missing_bind_source_is_a_setup_failure,
        exit_codes_and_signals_are_mirrored,
        sigterm_to_the_group_reaches_a_trap_once,
        nothing_outlives_the_main_process,
        the_tree_joins_the_cgroup,
        seccomp_refuses_new_namespaces,
        a_pooled_netns_works,
        an_unprivileged_runner_maps_its_own_ids,
        figures,
    ];
    harness::run(tests);
}

/// A sandbox directory the way the runner lays one out, plus an empty root and a host secret.
struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
    sandbox: PathBuf,
    outputs: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let sandbox = dir.path().join("sandbox");
    let outputs = sandbox.join("Outputs");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir_all(&outputs).unwrap();
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, PermissionsExt::from_mode(m)).unwrap();
    mode(&sandbox, 0o755);
    mode(&outputs, 0o755);
    std::os::unix::fs::chown(&outputs, Some(OUTSIDE_ID), Some(OUTSIDE_ID)).unwrap();
    std::fs::write(sandbox.join("data.txt"), "data\n").unwrap();
    mode(&sandbox.join("data.txt"), 0o644);
    // Owned by the action's outside uid: only the read-only bind stops it from writing.
    std::os::unix::fs::chown(&sandbox, Some(OUTSIDE_ID), Some(OUTSIDE_ID)).unwrap();
    std::os::unix::fs::chown(sandbox.join("data.txt"), Some(OUTSIDE_ID), None).unwrap();
    std::fs::write(sandbox.join("secret.txt"), "inner secret\n").unwrap();
    mode(&sandbox.join("secret.txt"), 0o600);
    std::fs::write(dir.path().join("secret.txt"), "host secret\n").unwrap();
    mode(&dir.path().join("secret.txt"), 0o600);
    Fixture {
        dir,
        root,
        sandbox,
        outputs,
    }
}

fn spec(f: &Fixture, script: &str) -> SandboxSpec {
    let ids = IdMap {
        inside: 1000,
        outside: Some(OUTSIDE_ID),
    };
    SandboxSpec {
        program: "/bin/sh".into(),
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("HOME".into(), "/tmp".into()),
        ],
        cwd: "/sandbox".into(),
        root: f.root.clone(),
        etc_files: vec![
            (
                "passwd".into(),
                "root:x:0:0::/:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n".into(),
            ),
            ("group".into(), "root:x:0:\nuser:x:1000:\n".into()),
            ("hosts".into(), "127.0.0.1 localhost\n".into()),
        ],
        etc_binds: vec!["ld.so.cache".into()],
        binds: vec![
            Bind {
                source: f.sandbox.clone(),
                target: "/sandbox".into(),
                writable: false,
            },
            Bind {
                source: f.outputs.clone(),
                target: "/sandbox/Outputs".into(),
                writable: true,
            },
        ],
        tmp_bytes: 16 << 20,
        uid: ids,
        gid: ids,
        hostname: "pm-sandbox".into(),
        ..SandboxSpec::default()
    }
}

async fn run_in(spec: &SandboxSpec, netns: Option<&NetnsLease>) -> Outcome {
    let exe = Path::new("/proc/self/exe");
    harness::outcome(sandbox::spawn(exe, spec, netns).await.expect("spawn")).await
}

async fn run(spec: &SandboxSpec) -> Outcome {
    run_in(spec, None).await
}

/// Runs `script` and expects exit 0; its stdout.
async fn ok(f: &Fixture, script: &str) -> String {
    let o = run(&spec(f, script)).await;
    assert_eq!(
        o.status,
        ExitStatus::Code(0),
        "stdout {:?} stderr {:?}",
        o.stdout,
        o.stderr
    );
    o.stdout
}

async fn probe_succeeds() {
    sandbox::probe().unwrap();
}

// Attests SBX-2
async fn runs_as_the_mapped_user_without_capabilities() {
    let f = fixture();
    let out = ok(
        &f,
        "id -u; id -g; hostname; grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status",
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..3], ["1000", "1000", "pm-sandbox"], "{out}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            out.contains(&format!("{cap}:\t0000000000000000")),
            "{cap}: {out}"
        );
    }
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
}

// Attests SBX-3
async fn the_host_is_invisible() {
    let f = fixture();
    let host_dir = f.dir.path().display().to_string();
    let script = format!(
        "ls -a /; test ! -e /root && echo no-root; test ! -e {host_dir} && echo no-tempdir; \
         cat /sandbox/secret.txt 2>/dev/null || echo no-secret; cat /sandbox/data.txt; \
         ls -a /dev; readlink /bin"
    );
    let out = ok(&f, &script).await;
    let mut top: Vec<&str> = out.lines().take_while(|l| *l != "no-root").collect();
    top.sort();
    let mut want = vec![
        ".", "..", "bin", "dev", "etc", "lib", "proc", "sandbox", "tmp", "usr",
    ];
    if Path::new("/lib64").exists() {
        want.push("lib64");
        want.sort();
    }
    assert_eq!(top, want, "{out}");
    for line in [
        "no-root",
        "no-tempdir",
        "no-secret",
        "data",
        "shm",
        "null",
        "urandom",
    ] {
        assert!(out.lines().any(|l| l == line), "{line}: {out}");
    }
    assert!(!out.contains("inner secret"), "{out}");
    assert_eq!(
        out.lines().last(),
        std::fs::read_link("/bin")
            .ok()
            .as_deref()
            .and_then(Path::to_str)
    );
}

async fn sees_only_its_own_pids() {
    let f = fixture();
    let out = ok(&f, "echo $$; ls /proc | grep -c '^[0-9]'").await;
    let lines: Vec<&str> = out.lines().collect();
    // E is 1, the action 2; ls and grep are the rest.
    assert_eq!(lines[0], "2", "{out}");
    let count: u32 = lines[1].parse().unwrap();
    assert!(count <= 5, "{out}");
}

// Attests SBX-3 (no network)
async fn has_only_lo_and_no_way_out() {
    let f = fixture();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let (tp, up) = (
        tcp.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    let script = format!(
        "echo ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ,); \
         bash -c 'echo hi > /dev/tcp/127.0.0.1/{tp}' 2>&1 && echo tcp-connected; \
         bash -c 'echo hi > /dev/udp/127.0.0.1/{up}' 2>&1; \
         bash -c 'echo hi > /dev/tcp/10.255.255.1/{tp}' 2>&1 && echo tcp-out; true"
    );
    let out = ok(&f, &script).await;
    assert_eq!(out.lines().next(), Some("ifaces=lo,"), "{out}");
    assert!(
        !out.contains("tcp-connected") && !out.contains("tcp-out"),
        "{out}"
    );
    // lo is up: refused, not unreachable; anywhere else is unreachable.
    assert!(out.contains("Connection refused"), "{out}");
    assert!(out.contains("Network is unreachable"), "{out}");
    // The action has exited: anything it sent over the host's loopback would be queued by now.
    assert_eq!(
        tcp.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        udp.recv(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
}

// Attests SBX-3 (read-only)
async fn read_only_binds_refuse_writes_writable_ones_accept_them() {
    let f = fixture();
    let script = "for p in /sandbox/data.txt /sandbox/new /usr/x /etc/passwd /etc/x /x /dev/x /proc/x; do \
                    (echo no > $p) 2>/dev/null && echo wrote-$p; done; \
                  echo out > /sandbox/Outputs/out.txt && echo tmp > /tmp/t && echo shm > /dev/shm/s \
                  && echo > /dev/null && echo writable-ok; \
                  touch /sandbox/data.txt 2>&1; touch /usr/x 2>&1; true";
    let out = ok(&f, script).await;
    assert!(!out.contains("wrote-"), "{out}");
    assert!(out.contains("writable-ok"), "{out}");
    assert_eq!(out.matches("Read-only file system").count(), 2, "{out}");
    let written = f.outputs.join("out.txt");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "out\n");
    assert_eq!(std::fs::metadata(&written).unwrap().uid(), OUTSIDE_ID);
    assert_eq!(
        std::fs::read_to_string(f.sandbox.join("data.txt")).unwrap(),
        "data\n"
    );
}

// Attests SBX-1
async fn a_missing_bind_source_is_a_setup_failure() {
    let f = fixture();
    let missing = f.dir.path().join("missing");
    let mut s = spec(&f, "echo ran");
    s.binds.push(Bind {
        source: missing.clone(),
        target: "/x".into(),
        writable: false,
    });
    let exe = Path::new("/proc/self/exe");
    match sandbox::spawn(exe, &s, None).await {
        Err(SpawnError::Setup(reason)) => {
            assert!(reason.contains(&missing.display().to_string()), "{reason}");
            assert!(reason.contains("No such file"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // A mount target never follows a symlink (here one inside the read-only bind).
    std::os::unix::fs::symlink("/etc", f.sandbox.join("link")).unwrap();
    let mut s = spec(&f, "echo ran");
    s.binds[1].target = "/sandbox/link/Outputs".into();
    match sandbox::spawn(exe, &s, None).await {
        Err(SpawnError::Setup(reason)) => {
            assert!(reason.contains("-> /sandbox/link/Outputs"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let mut s = spec(&f, "echo ran");
    s.cwd = "/nowhere".into();
    match sandbox::spawn(exe, &s, None).await {
        Err(SpawnError::Setup(reason)) => assert!(reason.contains("cwd /nowhere"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let mut s = spec(&f, "echo ran");
    s.program = "/sandbox/nope".into();
    match sandbox::spawn(exe, &s, None).await {
        Err(SpawnError::Setup(reason)) => {
            assert!(reason.contains("exec /sandbox/nope"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

// Attests SBX-5
async fn exit_codes_and_signals_are_mirrored() {
    let f = fixture();
    assert_eq!(run(&spec(&f, "exit 42")).await.status, ExitStatus::Code(42));
    let o = run(&spec(&f, "kill -USR1 $$")).await;
    assert_eq!(o.status, ExitStatus::Signal(libc::SIGUSR1), "{}", o.stderr);
    let o = run(&spec(&f, "kill -KILL $$")).await;
    assert_eq!(o.status, ExitStatus::Signal(libc::SIGKILL));
}

// Attests SBX-6
async fn sigterm_to_the_group_reaches_a_trap_once() {
    let f = fixture();
    let s = spec(
        &f,
        "n=0; trap 'n=$((n+1))' TERM; echo ready; \
         i=0; while [ $i -lt 300 ] && [ $n -eq 0 ]; do sleep 0.1; i=$((i+1)); done; \
         sleep 0.3; echo traps=$n; exit 7",
    );
    let sbx = sandbox::spawn(Path::new("/proc/self/exe"), &s, None)
        .await
        .expect("spawn");
    // The reported pid is the action itself: uid, pid 2 inside, same start time.
    let status = std::fs::read_to_string(format!("/proc/{}/status", sbx.started.pid)).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains(&OUTSIDE_ID.to_string())),
        "{status}"
    );
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.ends_with("\t2"), "{nspid}");
    let id = ProcessIdentity::of(sbx.started.pid).unwrap();
    assert_eq!(id.start_time, sbx.started.start_time);

    let mut out = tokio::io::BufReader::new(sbx.pipes.stdout.unwrap());
    let mut line = String::new();
    tokio::time::timeout(LIMIT, out.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, "ready\n");
    assert!(sbx
        .child
        .signal_group(nix::sys::signal::Signal::SIGTERM)
        .unwrap());
    let mut rest = String::new();
    tokio::time::timeout(LIMIT, out.read_to_string(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let info = tokio::time::timeout(LIMIT, sbx.child.wait()).await.unwrap();
    assert_eq!(info.status, ExitStatus::Code(7), "{rest}");
    assert_eq!(rest, "traps=1\n");
}

// Attests SBX-4
async fn nothing_outlives_the_main_process() {
    let f = fixture();
    let marker = format!("procmesh-marker-{}", std::process::id());
    // The search pattern must not match its own grep: bracket one letter.
    let pattern = marker.replacen("marker", "marke[r]", 1);
    let script = format!(
        "setsid sh -c \"nohup sh -c 'sleep 300; : {marker}' >/dev/null 2>&1 &\"; \
         i=0; while [ $i -lt 100 ]; do \
           grep -l '{pattern}' /proc/[0-9]*/cmdline >/dev/null 2>&1 && echo seen && exit 0; \
           sleep 0.05; i=$((i+1)); done; exit 1"
    );
    let o = run(&spec(&f, &script)).await;
    assert_eq!(o.status, ExitStatus::Code(0), "{} {}", o.stdout, o.stderr);
    assert_eq!(o.stdout, "seen\n");
    // H was reaped only after the namespace's last process died.
    assert_eq!(processes_with(&marker), Vec::<u32>::new());
}

// Attests SBX-7
async fn the_tree_joins_the_cgroup() {
    let f = fixture();
    let mut s = spec(&f, "echo ran");
    s.cgroup_procs = vec![f.dir.path().join("no-cgroup/cgroup.procs")];
    match sandbox::spawn(Path::new("/proc/self/exe"), &s, None).await {
        Err(SpawnError::Setup(reason)) => assert!(reason.contains("no-cgroup"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let base = [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.join("cgroup.procs").exists());
    let Some(base) = base else {
        eprintln!("  no writable cgroup hierarchy: only the failure case ran");
        return;
    };
    let name = format!("procmesh-sbx-test-{}", std::process::id());
    let cg = base.join(&name);
    if std::fs::create_dir(&cg).is_err() {
        eprintln!(
            "  cannot create {}: only the failure case ran",
            cg.display()
        );
        return;
    }
    let mut s = spec(&f, "cat /proc/self/cgroup");
    s.cgroup_procs = vec![cg.join("cgroup.procs")];
    let o = run(&s).await;
    let _ = std::fs::remove_dir(&cg);
    assert_eq!(o.status, ExitStatus::Code(0), "{}", o.stderr);
    assert!(o.stdout.contains(&name), "{}", o.stdout);
}

async fn seccomp_refuses_new_namespaces() {
    let f = fixture();
    let out = ok(
        &f,
        "unshare -r true 2>&1 || echo refused; unshare -n true 2>&1 || echo refused",
    )
    .await;
    assert_eq!(out.matches("refused").count(), 2, "{out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    // Without the filter, the kernel still refuses (no capabilities), just for other reasons.
    let mut s = spec(&f, "unshare -n true 2>/dev/null || echo refused");
    s.seccomp = false;
    let o = run(&s).await;
    assert_eq!(o.stdout, "refused\n");
}

// Attests SBX-8
async fn a_pooled_netns_works() {
    let f = fixture();
    let pool = NetnsPool::new(1).unwrap();
    let lease = pool.acquire().unwrap();
    assert!(pool.acquire().is_none());
    let script = "echo ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ,); \
                  bash -c 'echo hi > /dev/tcp/127.0.0.1/1' 2>&1; true";
    let o = run_in(&spec(&f, script), Some(&lease)).await;
    assert_eq!(o.status, ExitStatus::Code(0), "{}", o.stderr);
    assert_eq!(o.stdout.lines().next(), Some("ifaces=lo,"), "{}", o.stdout);
    assert!(o.stdout.contains("Connection refused"), "{}", o.stdout);
    drop(lease);
    assert_eq!(pool.available(), 1);
}

const UNPRIVILEGED_CHILD: &str = "--unprivileged-child";
const NOBODY: u32 = 65534;

/// The unprivileged case (`outside: None`): this binary re-run as nobody, its own runner.
async fn an_unprivileged_runner_maps_its_own_ids() {
    let out = tokio::task::spawn_blocking(|| {
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.arg(UNPRIVILEGED_CHILD).env("TMPDIR", "/tmp");
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(NOBODY, NOBODY, NOBODY) != 0
                    || libc::setresuid(NOBODY, NOBODY, NOBODY) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout} {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "1000", "{stdout}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["1000", "65534", "1"]
    );
    assert_eq!(lines[2], "deny", "{stdout}");
    assert_eq!(lines[3], "CapEff:\t0000000000000000", "{stdout}");
    assert_eq!(lines[4], "written", "{stdout}");
}

/// Runs as nobody: one sandbox with the helper's own ids, its output on stdout.
fn unprivileged_child() -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, sbx) = (dir.path().join("root"), dir.path().join("sandbox"));
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(&sbx).unwrap();
        let ids = IdMap {
            inside: 1000,
            outside: None,
        };
        let script = "id -u; cat /proc/self/uid_map /proc/self/setgroups; \
                      grep CapEff /proc/self/status; echo x > /out/x && echo written";
        let spec = SandboxSpec {
            program: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            root,
            binds: vec![Bind {
                source: sbx,
                target: "/out".into(),
                writable: true,
            }],
            uid: ids,
            gid: ids,
            ..SandboxSpec::default()
        };
        let o = run(&spec).await;
        print!("{}", o.stdout);
        eprint!("{}", o.stderr);
        i32::from(o.status != ExitStatus::Code(0))
    });
    std::process::exit(code)
}

/// Prints costs; asserts nothing about time.
async fn figures() {
    const N: u32 = 10;
    let f = fixture();
    let mut s = spec(&f, "");
    s.program = "/bin/true".into();
    s.args = vec!["true".into()];
    let _ = run(&s).await; // warm the page cache
    let t = Instant::now();
    for _ in 0..N {
        assert_eq!(run(&s).await.status, ExitStatus::Code(0));
    }
    let fresh = t.elapsed() / N;

    let t = Instant::now();
    let pool = NetnsPool::new(N as usize).unwrap();
    let create = t.elapsed() / N;
    let t = Instant::now();
    for _ in 0..N {
        let lease = pool.acquire().unwrap();
        assert_eq!(run_in(&s, Some(&lease)).await.status, ExitStatus::Code(0));
    }
    let pooled = t.elapsed() / N;

    let t = Instant::now();
    for _ in 0..N {
        let mut cmd = std::process::Command::new("/bin/true");
        assert!(cmd.status().unwrap().success());
    }
    let plain = t.elapsed() / N;
    println!(
        "  figures: sandboxed /bin/true {fresh:?} (fresh netns), {pooled:?} (pooled netns); \
         netns creation {create:?} each; plain /bin/true {plain:?}"
    );
}
