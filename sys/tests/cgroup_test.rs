//! Per-action cgroups: v1 against this machine's real hierarchies (skipped, with a note, where
//! `/sys/fs/cgroup/pids` is not a v1 mount), v2 against a v2-shaped tree of plain files in a
//! tempdir (the kernel would create the control files on mkdir; the tests write them where the
//! kernel would, since the production code never creates them — CG-1).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use procmesh_sys::cgroup::{
    ActionCgroup, CgroupError, CgroupLimits, CgroupVersion, Cgroups, V1Dirs,
};

const MIB: u64 = 1024 * 1024;
const SIGKILL: i32 = 9;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Removes the test's base (killing whatever is left under it) even when the test fails.
struct Base {
    cg: Cgroups,
}

impl Drop for Base {
    fn drop(&mut self) {
        if let Err(error) = self.cg.remove_base() {
            eprintln!("cleanup of {} failed: {error}", self.cg.describe());
        }
    }
}

fn unique(test: &str) -> String {
    format!("procmesh-test-{}-{test}", std::process::id())
}

/// The v1 parent dirs (this process's cgroup in each hierarchy), or `None` with a printed note
/// when `/sys/fs/cgroup/pids` is not a v1 mount.
fn v1_dirs(test: &str) -> Option<V1Dirs> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let is_v1 = mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup/pids") && l.contains(" - cgroup "));
    if !is_v1 {
        eprintln!("SKIPPED {test}: /sys/fs/cgroup/pids is not a cgroup v1 mount");
        return None;
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let dir = |controller: &str| {
        let path = own
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, c, p) = (parts.next()?, parts.next()?, parts.next()?);
                c.split(',').any(|c| c == controller).then_some(p)
            })
            .next()
            .unwrap_or("/");
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(path.trim_start_matches('/'))
    };
    Some(V1Dirs {
        pids: dir("pids"),
        memory: dir("memory"),
        cpu: dir("cpu"),
        cpuacct: dir("cpuacct"),
        freezer: dir("freezer"),
    })
}

fn v1_base(test: &str) -> Option<Base> {
    let dirs = v1_dirs(test)?;
    let cg = Cgroups::v1_at(&dirs, &unique(test)).expect("open v1 base");
    assert_eq!(cg.version(), CgroupVersion::V1);
    Some(Base { cg })
}

/// Starts `argv` already inside the cgroup: a shell writes its own pid into every procs file
/// and then execs, as the sandbox helper does before it forks.
fn spawn_in_files(procs: &[PathBuf], argv: &[&str]) -> Child {
    let files: Vec<String> = procs.iter().map(|p| p.display().to_string()).collect();
    Command::new("sh")
        .arg("-c")
        .arg(r#"IFS=:; for f in $CG_PROCS; do echo $$ > "$f" || exit 99; done; unset IFS; exec "$@""#)
        .arg("sh")
        .args(argv)
        .env("CG_PROCS", files.join(":"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh")
}

fn spawn_in(cg: &ActionCgroup, argv: &[&str]) -> Child {
    spawn_in_files(&cg.procs_files(), argv)
}

/// Polls `f` every 10 ms for at most `within`.
fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Reaps `child`, killing it if it has not exited within `within`.
fn reap(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_owned()
}

fn dir_with_file(cg: &ActionCgroup, file: &str) -> PathBuf {
    cg.dirs()
        .into_iter()
        .find(|d| d.join(file).exists())
        .unwrap_or_else(|| panic!("no hierarchy of {} has {file}", cg.name()))
}

// ---------------------------------------------------------------------------------------------
// v1, real hierarchies

#[test]
fn v1_limits_are_written_and_add_and_remove_work() {
    let Some(base) = v1_base("limits") else {
        return;
    };
    let limits = CgroupLimits {
        cpu_millicores: Some(500),
        memory_bytes: Some(64 * MIB),
        pids: Some(16),
    };
    let cg = base.cg.create("a1", &limits).expect("create");
    assert_eq!(
        read(&dir_with_file(&cg, "cpu.cfs_quota_us").join("cpu.cfs_quota_us")),
        "50000"
    );
    assert_eq!(
        read(&dir_with_file(&cg, "cpu.cfs_period_us").join("cpu.cfs_period_us")),
        "100000"
    );
    let memory = dir_with_file(&cg, "memory.limit_in_bytes");
    assert_eq!(
        read(&memory.join("memory.limit_in_bytes")),
        (64 * MIB).to_string()
    );
    // Attests CG-3: the limit also covers swap.
    if memory.join("memory.memsw.limit_in_bytes").exists() {
        assert_eq!(
            read(&memory.join("memory.memsw.limit_in_bytes")),
            (64 * MIB).to_string()
        );
    }
    assert_eq!(read(&dir_with_file(&cg, "pids.max").join("pids.max")), "16");
    let procs = cg.procs_files();
    assert_eq!(procs.len(), 5, "{procs:?}");
    assert!(procs.iter().all(|p| p.exists()), "{procs:?}");

    assert!(matches!(
        base.cg.create("a1", &CgroupLimits::default()),
        Err(CgroupError::Exists { .. })
    ));
    for bad in ["", ".", "..", "x/y", "../a1"] {
        assert!(
            matches!(
                base.cg.create(bad, &CgroupLimits::default()),
                Err(CgroupError::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(cg.add(0), Err(CgroupError::InvalidPid { .. })));

    let mut sleep = Command::new("sleep").arg("30").spawn().expect("sleep");
    cg.add(sleep.id()).expect("add");
    assert!(cg.pids().contains(&sleep.id()), "{:?}", cg.pids());

    cg.remove().expect("remove");
    reap(&mut sleep, Duration::from_secs(5));
    assert!(!alive(sleep.id()));
    assert!(cg.dirs().iter().all(|d| !d.exists()));
    // Attests CG-6: idempotent.
    cg.remove().expect("remove again");
    assert!(cg.pids().is_empty());
}

#[test]
fn v1_kill_all_leaves_nothing_after_a_double_fork() {
    // Attests CG-4.
    let Some(base) = v1_base("doublefork") else {
        return;
    };
    let cg = base
        .cg
        .create("tree", &CgroupLimits::default())
        .expect("create");
    let mut child = spawn_in(&cg, &["sh", "-c", "setsid sh -c 'sleep 300 &'; sleep 300"]);
    let sleeps = || {
        cg.pids()
            .into_iter()
            .filter(|&p| comm(p) == "sleep")
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(5), || sleeps() == 2),
        "tree did not start: {:?}",
        cg.pids()
    );
    let pids = cg.pids();
    assert!(pids.len() >= 3, "{pids:?}");
    cg.kill_all().expect("kill_all");
    reap(&mut child, Duration::from_secs(5));
    let alive_now: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert!(alive_now.is_empty(), "survivors {alive_now:?} of {pids:?}");
    assert!(cg.pids().is_empty());
    // Nothing to kill is fine.
    cg.kill_all().expect("kill_all on an empty cgroup");
    cg.remove().expect("remove");
}

#[test]
fn v1_pids_limit_stops_a_fork_loop() {
    let Some(base) = v1_base("pidsmax") else {
        return;
    };
    let limits = CgroupLimits {
        pids: Some(8),
        ..CgroupLimits::default()
    };
    let cg = base.cg.create("forks", &limits).expect("create");
    let script = "
import os, time
ok = fail = 0
kids = []
for _ in range(50):
    try:
        pid = os.fork()
    except OSError:
        fail += 1
        continue
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
    ok += 1
print(ok, fail, flush=True)
for k in kids:
    os.kill(k, 9)
";
    let mut child = spawn_in(&cg, &["python3", "-c", script]);
    let status = reap(&mut child, Duration::from_secs(20));
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    assert!(status.success(), "{status:?} {out:?}");
    let counts: Vec<u32> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [ok, fail] = counts[..] else {
        panic!("unexpected output {out:?}")
    };
    assert!(ok <= 7 && fail >= 43, "forked {ok}, refused {fail}");
    cg.remove().expect("remove");
}

#[test]
fn v1_memory_limit_oom_kills_and_is_reported() {
    let Some(base) = v1_base("oom") else { return };
    let limits = CgroupLimits {
        memory_bytes: Some(32 * MIB),
        ..CgroupLimits::default()
    };
    let cg = base.cg.create("hog", &limits).expect("create");
    let mut child = spawn_in(
        &cg,
        &["python3", "-c", "b = b'x' * (200 << 20); print(len(b))"],
    );
    let status = reap(&mut child, Duration::from_secs(30));
    assert_eq!(status.signal(), Some(SIGKILL), "{status:?}");
    let stats = cg.stats();
    eprintln!("after the OOM kill: {stats:?}");
    assert!(stats.oom_kills > 0, "{stats:?}");
    let peak = stats.peak_memory_bytes.expect("peak memory");
    assert!(peak > 16 * MIB && peak <= 33 * MIB, "peak {peak}");
    cg.remove().expect("remove");
}

#[test]
fn v1_cpu_time_grows_for_a_busy_process() {
    let Some(base) = v1_base("cpu") else { return };
    let cg = base
        .cg
        .create("busy", &CgroupLimits::default())
        .expect("create");
    assert_eq!(cg.stats().cpu_ms, Some(0));
    let mut child = spawn_in(&cg, &["sh", "-c", "while :; do :; done"]);
    assert!(
        wait_for(Duration::from_secs(10), || cg.stats().cpu_ms.unwrap_or(0)
            >= 200),
        "{:?}",
        cg.stats()
    );
    cg.remove().expect("remove");
    reap(&mut child, Duration::from_secs(5));
}

#[test]
fn v1_kill_leftovers_removes_a_previous_life_nested_too() {
    // Attests CG-6.
    let Some(dirs) = v1_dirs("leftovers") else {
        return;
    };
    let name = unique("leftovers");
    let base = Base {
        cg: Cgroups::v1_at(&dirs, &name).expect("open v1 base"),
    };
    let (mut children, mut pids) = (Vec::new(), Vec::new());
    {
        // The previous life: two actions, one with a nested cgroup, all with processes.
        let life = Cgroups::v1_at(&dirs, &name).expect("open again");
        let a = life.create("old-a", &CgroupLimits::default()).expect("a");
        let b = life.create("old-b", &CgroupLimits::default()).expect("b");
        let inner: Vec<PathBuf> = b.dirs().iter().map(|d| d.join("inner")).collect();
        for dir in &inner {
            std::fs::create_dir(dir).expect("nested mkdir");
        }
        let inner_procs: Vec<PathBuf> = inner.iter().map(|d| d.join("cgroup.procs")).collect();
        children.push(spawn_in(&a, &["sleep", "300"]));
        children.push(spawn_in_files(&inner_procs, &["sleep", "300"]));
        assert!(wait_for(Duration::from_secs(5), || a.pids().len() == 1
            && b.pids().len() == 1));
        pids.extend(a.pids());
        pids.extend(b.pids());
    }
    let removed = base.cg.kill_leftovers().expect("kill_leftovers");
    assert_eq!(removed, 3, "old-a, old-b, old-b/inner");
    for child in &mut children {
        reap(child, Duration::from_secs(5));
    }
    assert!(pids.iter().all(|&p| !alive(p)), "{pids:?}");
    for dir in base.cg.base_dirs() {
        let left: Vec<_> = std::fs::read_dir(&dir)
            .expect("base")
            .filter_map(Result::ok)
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    assert_eq!(base.cg.kill_leftovers().expect("again"), 0);
}

#[test]
fn detect_finds_v1_here_and_describes_it() {
    // With pids on a v1 hierarchy no cgroup2 mount can offer it, so detect must pick v1
    // (here the unified mount offers only what v1 does not mount, e.g. hugetlb).
    if v1_dirs("detect").is_none() {
        return;
    }
    let base = Base {
        cg: Cgroups::detect(&unique("detect")).expect("detect"),
    };
    assert_eq!(base.cg.version(), CgroupVersion::V1);
    let text = base.cg.describe();
    eprintln!("detected: {text}");
    assert!(
        text.starts_with("v1 (pids, memory, cpu, cpuacct, freezer) under "),
        "{text}"
    );
    assert!(text.contains("/sys/fs/cgroup/"), "{text}");
    let json = serde_json::to_string(&base.cg).expect("to json");
    let back: Cgroups = serde_json::from_str(&json).expect("from json");
    assert_eq!(back, base.cg);
    assert!(matches!(
        Cgroups::detect("a/b"),
        Err(CgroupError::InvalidName { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// v2, a fake tree

/// Writes what the kernel shows in a fresh cgroup directory with cpu, memory and pids.
fn fake_cgroup(dir: &Path, procs: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (file, content) in [
        ("cgroup.controllers", "cpu memory pids\n"),
        ("cgroup.subtree_control", ""),
        ("cgroup.procs", procs),
    ] {
        std::fs::write(dir.join(file), content).expect("write fake file");
    }
}

/// The control files of a fresh action cgroup, with some accounting.
fn fake_action(dir: &Path) {
    for (file, content) in [
        ("cgroup.procs", ""),
        ("cgroup.kill", ""),
        ("cgroup.events", "populated 0\nfrozen 0\n"),
        ("cpu.max", "max 100000\n"),
        ("memory.max", "max\n"),
        ("memory.swap.max", "max\n"),
        ("pids.max", "max\n"),
        (
            "cpu.stat",
            "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n",
        ),
        ("memory.peak", "4096\n"),
        (
            "memory.events",
            "low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\noom_group_kill 0\n",
        ),
    ] {
        std::fs::write(dir.join(file), content).expect("write fake file");
    }
}

const ENABLED: &str = "+cpu +memory +pids";

#[test]
fn v2_enables_controllers_down_to_the_base() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    fake_cgroup(root, "1\n");
    fake_cgroup(&root.join("a"), "");
    fake_cgroup(&root.join("a/b"), "");
    fake_cgroup(&root.join("a/b/base"), "");
    let cg = Cgroups::v2_in(root, Path::new("/a/b"), "base").expect("v2 base");
    assert_eq!(cg.version(), CgroupVersion::V2);
    assert_eq!(cg.base_dirs(), vec![root.join("a/b/base")]);
    for dir in ["", "a", "a/b", "a/b/base"] {
        assert_eq!(
            read(&root.join(dir).join("cgroup.subtree_control")),
            ENABLED,
            "{dir:?}"
        );
    }
    assert!(
        cg.describe().starts_with("v2 (cpu, memory, pids) under "),
        "{}",
        cg.describe()
    );
    // Already enabled: nothing is written again (a delegated tree's ancestors are read-only).
    std::fs::write(
        root.join("a/cgroup.subtree_control"),
        "cpu memory pids io\n",
    )
    .expect("w");
    Cgroups::v2_in(root, Path::new("/a/b"), "base").expect("reopen");
    assert_eq!(
        read(&root.join("a/cgroup.subtree_control")),
        "cpu memory pids io"
    );
}

#[test]
fn v2_falls_back_to_the_mount_root_when_the_own_cgroup_has_processes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    fake_cgroup(root, "");
    fake_cgroup(&root.join("svc"), "4242\n");
    fake_cgroup(&root.join("base"), "");
    let cg = Cgroups::v2_in(root, Path::new("/svc"), "base").expect("v2 base");
    assert_eq!(cg.base_dirs(), vec![root.join("base")]);
    assert_eq!(read(&root.join("svc/cgroup.subtree_control")), "");
    assert_eq!(read(&root.join("base/cgroup.subtree_control")), ENABLED);
}

#[test]
fn v2_refuses_a_mount_without_the_controllers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fake_cgroup(tmp.path(), "");
    std::fs::write(tmp.path().join("cgroup.controllers"), "cpu io\n").expect("w");
    match Cgroups::v2_at(tmp.path(), "base") {
        Err(CgroupError::Unsupported { missing }) => {
            assert!(missing.contains("memory, pids"), "{missing}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn v2_limits_accounting_and_kill_use_the_v2_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    fake_cgroup(root, "");
    fake_cgroup(&root.join("base"), "");
    let cg = Cgroups::v2_at(root, "base").expect("v2 base");
    let action = cg.create("act", &CgroupLimits::default()).expect("create");
    let dir = root.join("base/act");
    assert_eq!(action.dirs(), vec![dir.clone()]);
    // The kernel creates these on mkdir.
    fake_action(&dir);
    action
        .set_limits(&CgroupLimits {
            cpu_millicores: Some(1500),
            memory_bytes: Some(32 * MIB),
            pids: Some(8),
        })
        .expect("set_limits");
    assert_eq!(read(&dir.join("cpu.max")), "150000 100000");
    assert_eq!(read(&dir.join("memory.max")), (32 * MIB).to_string());
    // Attests CG-3.
    assert_eq!(read(&dir.join("memory.swap.max")), "0");
    assert_eq!(read(&dir.join("pids.max")), "8");
    assert_eq!(action.procs_files(), vec![dir.join("cgroup.procs")]);
    let stats = action.stats();
    assert_eq!(stats.cpu_ms, Some(1234));
    assert_eq!(stats.peak_memory_bytes, Some(4096));
    assert_eq!(stats.oom_kills, 2);
    action.kill_all().expect("kill_all");
    assert_eq!(read(&dir.join("cgroup.kill")), "1");
    assert!(action.pids().is_empty());
}

#[test]
fn v2_create_never_makes_control_files() {
    // Attests CG-1: on a bare directory (no kernel to create cpu.max) create fails, naming the
    // file, creates no file and leaves no directory behind.
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    fake_cgroup(root, "");
    fake_cgroup(&root.join("base"), "");
    let cg = Cgroups::v2_at(root, "base").expect("v2 base");
    let limits = CgroupLimits {
        memory_bytes: Some(MIB),
        ..CgroupLimits::default()
    };
    match cg.create("bare", &limits) {
        Err(CgroupError::Io { path, .. }) => assert!(path.ends_with("bare/memory.max"), "{path:?}"),
        other => panic!("{other:?}"),
    }
    assert!(!root.join("base/bare").exists());
    assert!(matches!(
        cg.create(
            "x",
            &CgroupLimits {
                pids: Some(0),
                ..CgroupLimits::default()
            }
        ),
        Err(CgroupError::InvalidLimit { what: "pids", .. })
    ));
    assert!(!root.join("base/x").exists());
}

// Attests CG-9
#[test]
fn v1_a_reused_cgroup_gives_each_action_its_own_limits_and_figures() {
    let Some(base) = v1_base("reuse") else { return };
    let cg = base
        .cg
        .create("slot", &CgroupLimits::default())
        .expect("create");
    let limited = CgroupLimits {
        cpu_millicores: Some(500),
        memory_bytes: Some(32 * MIB),
        pids: Some(16),
    };
    cg.set_limits_exactly(&limited).expect("limits");
    let meter = cg.meter();
    let mut hog = spawn_in(
        &cg,
        &["python3", "-c", "b = b'x' * (200 << 20); print(len(b))"],
    );
    assert_eq!(
        reap(&mut hog, Duration::from_secs(30)).signal(),
        Some(SIGKILL)
    );
    let first = cg.since(meter);
    assert!(first.oom_kills > 0, "{first:?}");
    assert!(cg.is_empty());

    // The next action: no limit left over, no OOM kill and no peak of the first.
    cg.set_limits_exactly(&CgroupLimits::default())
        .expect("limits");
    assert_eq!(
        read(&dir_with_file(&cg, "cpu.cfs_quota_us").join("cpu.cfs_quota_us")),
        "-1"
    );
    assert_eq!(
        read(&dir_with_file(&cg, "pids.max").join("pids.max")),
        "max"
    );
    let memory = dir_with_file(&cg, "memory.limit_in_bytes");
    assert!(
        read(&memory.join("memory.limit_in_bytes"))
            .parse::<u64>()
            .unwrap()
            > 1 << 40,
        "the memory limit is gone"
    );
    let meter = cg.meter();
    let mut small = spawn_in(&cg, &["python3", "-c", "b = b'x' * (8 << 20)"]);
    assert!(reap(&mut small, Duration::from_secs(30)).success());
    let second = cg.since(meter);
    assert_eq!(second.oom_kills, 0, "{second:?}");
    let peak = second.peak_memory_bytes.expect("a peak");
    assert!(peak < 32 * MIB, "the first action's peak leaked: {peak}");
    assert!(second.cpu_ms.is_some());
    cg.remove().expect("remove");
}

// Attests CG-9
#[test]
fn v2_a_reused_cgroup_writes_every_limit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    fake_cgroup(root, "");
    fake_cgroup(&root.join("base"), "");
    let cg = Cgroups::v2_at(root, "base").expect("v2 base");
    let action = cg.create("slot", &CgroupLimits::default()).expect("create");
    let dir = root.join("base/slot");
    fake_action(&dir);
    action
        .set_limits_exactly(&CgroupLimits {
            cpu_millicores: Some(1500),
            memory_bytes: Some(32 * MIB),
            pids: Some(8),
        })
        .expect("limits");
    assert_eq!(read(&dir.join("memory.max")), (32 * MIB).to_string());
    action
        .set_limits_exactly(&CgroupLimits::default())
        .expect("limits");
    assert_eq!(read(&dir.join("cpu.max")), "max 100000");
    assert_eq!(read(&dir.join("memory.max")), "max");
    assert_eq!(read(&dir.join("pids.max")), "max");
    // Figures are deltas from the meter.
    let meter = action.meter();
    std::fs::write(
        dir.join("cpu.stat"),
        "usage_usec 2234567\nuser_usec 2000000\nsystem_usec 234567\n",
    )
    .unwrap();
    let stats = action.since(meter);
    assert_eq!(stats.cpu_ms, Some(1000));
    assert_eq!(stats.oom_kills, 0);
}

// Attests CG-8 for spawn_joined
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_spawn_joined_starts_in_the_cgroup_without_a_fork() {
    use tokio::io::AsyncReadExt as _;
    let Some(base) = v1_base("joined") else {
        return;
    };
    let cg = base
        .cg
        .create("j", &CgroupLimits::default())
        .expect("create");
    let dir = tempfile::tempdir().expect("tempdir");
    let env = std::collections::BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]);
    let argv = [
        "sh".to_owned(),
        "-c".to_owned(),
        "echo $GREETING; pwd; grep -c procmesh-test /proc/self/cgroup; exit 3".to_owned(),
    ];
    let procs = cg.open_procs().expect("open cgroup.procs");
    let what = procmesh_sys::Joined {
        program: Path::new("/bin/sh"),
        argv: &argv,
        env: &env,
        cwd: dir.path(),
        cgroup_procs: &procs,
    };
    let (child, pipes) =
        procmesh_sys::spawn_joined(&what, procmesh_sys::Reap::KillGroupFirst).expect("spawn");
    let mut out = String::new();
    pipes
        .stdout
        .expect("stdout")
        .read_to_string(&mut out)
        .await
        .expect("read");
    let info = child.wait().await;
    assert_eq!(info.status, procmesh_protocol::ExitStatus::Code(3));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hi");
    assert_eq!(Path::new(lines[1]), dir.path().canonicalize().unwrap());
    // In every v1 hierarchy of the action's cgroup (pids, memory, cpu, cpuacct, freezer).
    assert!(lines[2].parse::<u32>().unwrap() >= 4, "{out}");

    // A program that cannot be executed is an error of the spawn, not an exit.
    let what = procmesh_sys::Joined {
        program: Path::new("/nonexistent/program"),
        ..what
    };
    let err = procmesh_sys::spawn_joined(&what, procmesh_sys::Reap::KillGroupFirst)
        .expect_err("no such program");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    cg.remove().expect("remove");
}

// Attests CG-6 for a name an earlier life left
#[test]
fn v1_create_fresh_replaces_a_leftover_of_the_same_name() {
    let Some(base) = v1_base("fresh") else { return };
    let old = base
        .cg
        .create("proc-1-slot-0", &CgroupLimits::default())
        .expect("create");
    let mut sleep = spawn_in(&old, &["sleep", "30"]);
    assert!(wait_for(Duration::from_secs(5), || !old.is_empty()));
    let new = base
        .cg
        .create_fresh("proc-1-slot-0", &CgroupLimits::default())
        .expect("create_fresh");
    reap(&mut sleep, Duration::from_secs(5));
    assert!(!alive(sleep.id()), "the leftover's process was killed");
    assert!(new.is_empty());
    assert!(new.dirs().iter().all(|d| d.is_dir()));
    new.remove().expect("remove");
}
