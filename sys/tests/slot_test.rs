//! Warm slots (SBX-10) with real processes: this test binary is its own sandbox helper and
//! starts the zygote before any thread (`harness = false`). Needs root and user namespaces;
//! skips with a reason otherwise. `slot_test <filter>` runs the tests whose name contains it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use procmesh_protocol::ExitStatus;
use procmesh_sys::sandbox::{self, ActionLaunch, Bind, IdMap, Slot, SlotSpec, SpawnError};

const OUTSIDE_ID: u32 = 60001;

mod harness;

use harness::{processes_with, Outcome};

fn main() {
    sandbox::run_helper_if_asked();
    if let Err(reason) = sandbox::probe() {
        eprintln!("slot_test: skipped: {reason}");
        return;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("slot_test: skipped: needs root to map actions to uid {OUTSIDE_ID}");
        return;
    }
    sandbox::start_zygote().expect("zygote");
    let tests: &[(&str, harness::Test)] = tests![
        a_slot_runs_actions_and_mirrors_their_ends,
        an_action_sees_nothing_of_the_one_before_it,
        the_host_and_other_sandboxes_are_invisible,
        a_setup_failure_leaves_the_slot_serving,
        a_slot_that_cannot_be_built_says_why,
        figures,
    ];
    harness::run(tests);
}

/// A slot's directories: the base root's mount point and one sandbox per action.
struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(dir.path().join("secret.txt"), "host secret\n").unwrap();
    Fixture { dir, root }
}

impl Fixture {
    /// A fresh sandbox directory `name` with a writable `Outputs/`, laid out as the runner's.
    fn sandbox(&self, name: &str) -> PathBuf {
        let sandbox = self.dir.path().join(name);
        let outputs = sandbox.join("Outputs");
        std::fs::create_dir_all(&outputs).unwrap();
        std::fs::set_permissions(&sandbox, PermissionsExt::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&outputs, Some(OUTSIDE_ID), Some(OUTSIDE_ID)).unwrap();
        std::fs::write(sandbox.join("name.txt"), format!("{name}\n")).unwrap();
        sandbox
    }

    fn spec(&self) -> SlotSpec {
        let ids = IdMap {
            inside: 1000,
            outside: Some(OUTSIDE_ID),
        };
        SlotSpec {
            root: self.root.clone(),
            system_dirs: ["/usr", "/bin", "/lib", "/lib64"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            etc_files: vec![
                (
                    "passwd".into(),
                    "root:x:0:0::/:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n".into(),
                ),
                ("group".into(), "root:x:0:\nuser:x:1000:\n".into()),
            ],
            etc_binds: vec!["ld.so.cache".into()],
            binds: Vec::new(),
            mount_points: vec!["/sandbox".into()],
            tmp_bytes: 16 << 20,
            uid: ids,
            gid: ids,
            hostname: "pm-slot".into(),
            seccomp: true,
            parent_pid: 0,
        }
    }
}

fn launch(sandbox: &Path, script: &str, env: &[(&str, &str)]) -> ActionLaunch {
    ActionLaunch {
        program: "/bin/sh".into(),
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain([("PATH".to_owned(), "/usr/bin:/bin".to_owned())])
            .collect(),
        cwd: "/sandbox".into(),
        binds: vec![
            Bind {
                source: sandbox.to_path_buf(),
                target: "/sandbox".into(),
                writable: false,
            },
            Bind {
                source: sandbox.join("Outputs"),
                target: "/sandbox/Outputs".into(),
                writable: true,
            },
        ],
    }
}

async fn run(slot: &Slot, launch: &ActionLaunch) -> Outcome {
    let sbx = slot.launch(launch).await.expect("launch");
    assert!(sbx.verdict.is_some(), "a slot's action reports its verdict");
    harness::outcome(sbx).await
}

async fn ok(slot: &Slot, launch: &ActionLaunch) -> String {
    let o = run(slot, launch).await;
    assert_eq!(
        o.status,
        ExitStatus::Code(0),
        "stdout {:?} stderr {:?}",
        o.stdout,
        o.stderr
    );
    o.stdout
}

// Attests SBX-10, SBX-5
async fn a_slot_runs_actions_and_mirrors_their_ends() {
    let f = fixture();
    let slot = Slot::start(&f.spec(), None, Vec::new())
        .await
        .expect("slot");
    let one = f.sandbox("one");
    for i in 0..5 {
        let out = ok(
            &slot,
            &launch(&one, &format!("echo run {i}; cat name.txt"), &[]),
        )
        .await;
        assert_eq!(out, format!("run {i}\none\n"));
    }
    let o = run(&slot, &launch(&one, "echo oops >&2; exit 7", &[])).await;
    assert_eq!(o.status, ExitStatus::Code(7));
    assert_eq!(o.stderr, "oops\n");
    let o = run(&slot, &launch(&one, "kill -TERM $$", &[])).await;
    assert_eq!(o.status, ExitStatus::Signal(libc::SIGTERM));
    let id = ok(
        &slot,
        &launch(&one, "id -u; id -g; grep CapEff /proc/self/status", &[]),
    )
    .await;
    assert_eq!(id, "1000\n1000\nCapEff:\t0000000000000000\n");
    assert!(slot.is_alive());
}

// Attests SBX-10
async fn an_action_sees_nothing_of_the_one_before_it() {
    let f = fixture();
    let slot = Slot::start(&f.spec(), None, Vec::new())
        .await
        .expect("slot");
    let marker = format!("procmesh-slot-marker-{}", std::process::id());
    let first = f.sandbox("first");
    let script = format!(
        "echo t > /tmp/left; echo s > /dev/shm/left; echo o > Outputs/left; \
         ulimit -n 64; export LEFT=1; cd /tmp; \
         setsid sh -c \"nohup sh -c 'sleep 300; : {marker}' >/dev/null 2>&1 &\"; \
         i=0; while [ $i -lt 100 ]; do \
           [ \"$(grep -l '{marker}' /proc/[0-9]*/cmdline 2>/dev/null | wc -l)\" -gt 0 ] && exit 0; \
           sleep 0.05; i=$((i+1)); done; exit 1"
    );
    ok(&slot, &launch(&first, &script, &[("FIRST", "yes")])).await;
    // The first action's double-forked sleep died with its pid namespace.
    assert_eq!(processes_with(&marker), Vec::<u32>::new());
    assert_eq!(
        std::fs::read_to_string(first.join("Outputs/left")).unwrap(),
        "o\n"
    );

    let second = f.sandbox("second");
    let check = "ls -A /tmp /dev/shm Outputs; echo env=${FIRST:-}${LEFT:-}; pwd; \
                 ulimit -n; hostname; cat name.txt; echo pid $$";
    let out = ok(&slot, &launch(&second, check, &[])).await;
    let limit = ok(&slot, &launch(&second, "ulimit -n", &[])).await;
    assert_ne!(limit.trim(), "64");
    assert_eq!(
        out,
        format!("/dev/shm:\n\n/tmp:\n\nOutputs:\nenv=\n/sandbox\n{limit}pm-slot\nsecond\npid 2\n"),
        "the second action saw something of the first"
    );
}

// Attests SBX-3 in a slot
async fn the_host_and_other_sandboxes_are_invisible() {
    let f = fixture();
    let slot = Slot::start(&f.spec(), None, Vec::new())
        .await
        .expect("slot");
    let a = f.sandbox("a");
    let b = f.sandbox("b");
    let host = f.dir.path().display().to_string();
    let script = format!(
        "ls / | tr '\\n' ' '; echo; cat {host}/secret.txt 2>&1 | head -c 0; \
         [ -e {host} ] && echo sees-host; [ -e {} ] && echo sees-b; \
         touch /sandbox/x 2>/dev/null && echo wrote-sandbox; \
         touch /usr/x 2>/dev/null && echo wrote-usr; echo done",
        b.display()
    );
    let out = ok(&slot, &launch(&a, &script, &[])).await;
    assert_eq!(
        out, "bin dev etc lib lib64 proc sandbox tmp usr \ndone\n",
        "{out}"
    );
}

// Attests SBX-1, SBX-10
async fn a_setup_failure_leaves_the_slot_serving() {
    let f = fixture();
    let slot = Slot::start(&f.spec(), None, Vec::new())
        .await
        .expect("slot");
    let gone = f.dir.path().join("gone");
    match slot.launch(&launch(&gone, "echo never", &[])).await {
        Err(SpawnError::Setup(reason)) => {
            assert!(reason.contains(&gone.display().to_string()), "{reason}")
        }
        other => panic!("expected a setup failure, got {other:?}"),
    }
    let one = f.sandbox("one");
    assert_eq!(ok(&slot, &launch(&one, "echo fine", &[])).await, "fine\n");
}

// Attests SBX-1 for a slot
async fn a_slot_that_cannot_be_built_says_why() {
    let f = fixture();
    let mut spec = f.spec();
    spec.binds.push(Bind {
        source: f.dir.path().join("missing"),
        target: "/opt/tools".into(),
        writable: false,
    });
    match Slot::start(&spec, None, Vec::new()).await {
        Err(SpawnError::Setup(reason)) => assert!(reason.contains("missing"), "{reason}"),
        other => panic!("expected a setup failure, got {other:?}"),
    }
}

/// Prints what a launch in a warm slot costs beside starting the slot (not an assertion:
/// `procmesh bench runner` has the figures that count).
async fn figures() {
    let f = fixture();
    let t = std::time::Instant::now();
    let slot = Slot::start(&f.spec(), None, Vec::new())
        .await
        .expect("slot");
    let start = t.elapsed();
    let one = f.sandbox("one");
    let mut l = launch(&one, "", &[]);
    l.program = "/bin/true".into();
    l.args = vec!["true".into()];
    let mut samples = Vec::new();
    for _ in 0..50 {
        let t = std::time::Instant::now();
        let o = run(&slot, &l).await;
        assert_eq!(o.status, ExitStatus::Code(0));
        samples.push(t.elapsed());
    }
    samples.sort();
    println!(
        "  figures: slot start {start:?}; /bin/true in the slot {:?} (median of 50)",
        samples[25]
    );
}
