//! The dashboard in a real browser: a mesh (orchestrator and host as OS processes) runs a
//! workload while headless Chromium (Debian's `chromium`) loads the orchestrator's admin page;
//! the counts read from the rendered DOM (`--dump-dom`) move to completion, and a screenshot is
//! saved (`target/tmp/dashboard.png`; also to `$PROCMESH_SCREENSHOT` when set). Skipped, with a
//! message, only where no `chromium` is installed and `CI` is unset.
//!
//! Each Chromium run is bounded twice: `--timeout` stops the page after 10 s of real time
//! (headless Chromium 156 now and then never ends its virtual-time budget while an event stream
//! reconnects), and a run still alive after 30 s is killed with its renderers and tried again.

mod utils;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procmesh_protocol::messages::orchestrator::{QueueConfig, SubmitAction};
use procmesh_protocol::spec::ActionDef;
use procmesh_protocol::ActorId;
use utils::{start_mesh_host, start_procmesh_admin, Certs};

const ACTIONS: u64 = 200;

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Runs headless Chromium on `url` with `extra` flags, each run bounded by `limit`, in a fresh
/// profile under `profiles`; its stdout. A run that does not finish in time is killed and tried
/// again (headless Chromium now and then stalls on a loaded machine), at most three times.
fn browse(chromium: &Path, profiles: &Path, url: &str, extra: &[&str], limit: Duration) -> String {
    for attempt in 1..=3 {
        let profile = tempfile::tempdir_in(profiles).expect("a chromium profile");
        match browse_once(chromium, profile.path(), url, extra, limit) {
            Some(out) => return out,
            None => {
                let log =
                    std::fs::read_to_string(profile.path().join("stderr.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!(
                    "chromium run {attempt} did not finish within {limit:?}; killed. Its stderr \
                     ended with:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
    panic!("chromium did not finish within {limit:?}, three times");
}

fn browse_once(
    chromium: &Path,
    profile: &Path,
    url: &str,
    extra: &[&str],
    limit: Duration,
) -> Option<String> {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            // A stop after 10 s of real time, whatever virtual time does: the page is dumped
            // (or shot) as it is then.
            "--timeout=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(profile.join("stderr.log")).expect("a log file"))
        .process_group(0)
        .spawn()
        .expect("chromium starts");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            // Chromium's renderers share its process group (and the stdout pipe): all go.
            // SAFETY: kill(2) on a process group this test created.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            let _ = reader.join();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(reader.join().unwrap())
}

/// The `data-value` of the element with `id` in a dumped DOM.
fn value_of(dom: &str, id: &str) -> Option<u64> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let tag_end = at + dom[at..].find('>')?;
    let tag = &dom[..tag_end];
    let tag = &tag[tag.rfind('<')?..];
    let v = tag.split("data-value=\"").nth(1)?.split('"').next()?;
    v.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_workload_move_to_completion() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed (.ci/run installs Debian's chromium)"
        );
        eprintln!("skipped: no chromium here (apt-get install chromium)");
        return;
    };
    procmesh_transport::install_crypto_provider();
    let began = Instant::now();
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("orchestrator");
    let tls = certs.orchestrator_dir();
    let (_orchestrator, id, admin) = start_procmesh_admin(
        "orchestrator",
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-dir",
            tls.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--heartbeat-interval-ms",
            "200",
            "--lost-after-ms",
            "3000",
        ],
    );
    let admin = admin.expect("admin address");
    let id: ActorId = id.parse().unwrap();
    let (_host, _, _) = start_mesh_host(
        &certs,
        "127.0.0.1:0",
        &dir.path().join("host"),
        &id,
        (2, 2),
        &["--isolation", "none", "--label", "zone=test-1"],
    );
    let client = utils::connect_client(&certs, &id, &dir.path().join("client-cache")).await;
    let worker = utils::shell_worker(&client, "sleep 0.15").await;
    let queue_config = QueueConfig {
        name: "dashboard-test".into(),
        ..QueueConfig::default()
    };
    let queue = client.create_queue(queue_config).await.unwrap();
    let actions = (0..ACTIONS)
        .map(|_| SubmitAction {
            action: ActionDef::new(worker),
            priority: None,
            idempotency_key: None,
        })
        .collect();
    queue.submit(actions).await.unwrap();

    // Each event stream ends after 2 s: headless Chromium's virtual time waits for open
    // requests, so the page dumps after its first stream, with what it was pushed.
    let url = format!("http://{admin}/?stream_s=2");
    let profile = dir.path().join("chromium");
    std::fs::create_dir_all(&profile).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let dump_args = ["--dump-dom", "--virtual-time-budget=1500"];
    loop {
        let dom = tokio::task::block_in_place(|| {
            browse(
                &chromium,
                &profile,
                &url,
                &dump_args,
                Duration::from_secs(30),
            )
        });
        let submitted = value_of(&dom, "total-submitted");
        let finished = value_of(&dom, "total-finished");
        let completed = value_of(&dom, "count-completed");
        seen.push((submitted, finished, completed));
        let pushes = dom
            .split("data-pushes=\"")
            .nth(1)
            .and_then(|v| v.split('"').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(pushes > 0, "the page received no pushed summary: {dom}");
        if finished == Some(ACTIONS) {
            assert_eq!(completed, Some(ACTIONS), "{dom}");
            assert!(dom.contains("dashboard-test"), "the queue is listed");
            assert!(
                dom.contains("zone=test-1"),
                "the host is listed with its labels"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {ACTIONS} finished actions; it showed {seen:?}"
        );
    }
    let finished: Vec<u64> = seen.iter().filter_map(|s| s.1).collect();
    assert!(
        finished.windows(2).all(|w| w[0] <= w[1]),
        "the counts went back: {seen:?}"
    );
    assert!(
        finished.first().is_some_and(|&f| f < ACTIONS),
        "the page never showed the run in progress: {seen:?}"
    );
    assert!(seen.iter().all(|s| s.0 == Some(ACTIONS)), "{seen:?}");

    // The screenshot of the finished run.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    tokio::task::block_in_place(|| {
        browse(
            &chromium,
            &profile,
            &url,
            &[
                &format!("--screenshot={}", shot.display()),
                "--window-size=1280,1500",
                "--virtual-time-budget=3000",
            ],
            Duration::from_secs(30),
        )
    });
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    if let Some(copy) = std::env::var_os("PROCMESH_SCREENSHOT") {
        std::fs::copy(&shot, copy).unwrap();
    }
    eprintln!(
        "dashboard test: {} page loads {:?}, {} s in all, screenshot {}",
        seen.len(),
        seen,
        began.elapsed().as_secs(),
        shot.display()
    );
    client.close().await;
}
