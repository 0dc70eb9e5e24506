//! The dashboard in a real browser: a mesh (orchestrator and host as OS processes) runs a
//! workload while headless Chromium (Debian's `chromium`) shows the orchestrator's admin page.
//! The test drives Chromium over the DevTools protocol on a pipe and reads the rendered DOM while
//! the page stays open: the counts the server pushes move to completion without a reload, a fresh
//! load shows the finished run with its queue and host, and a screenshot is saved
//! (`target/tmp/dashboard.png`; also to `$PROCMESH_SCREENSHOT` when set). Skipped, with a
//! message, only where no `chromium` is installed and `CI` is unset.
//!
//! No virtual time and no `--dump-dom`: a page with an open event stream kept those waiting
//! (headless Chromium 156 on a CI machine never finished a dump, three times in a row). Every
//! DevTools call is bounded, and so is the browser's start: one that does not show the page
//! within 30 s is killed with its renderers and started again, at most three times.

mod utils;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use procmesh_protocol::messages::orchestrator::{QueueConfig, SubmitAction};
use procmesh_protocol::spec::ActionDef;
use procmesh_protocol::ActorId;
use serde_json::{json, Value};
use utils::{start_mesh_host, start_procmesh_admin, Certs};

const ACTIONS: u64 = 200;

/// How long one DevTools call may take before the browser counts as stuck.
const CALL_LIMIT: Duration = Duration::from_secs(20);

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
/// it reads commands on fd 3 and writes replies and events on fd 4, each message ended by a
/// NUL byte), with one page attached. Dropping it kills the browser and its renderers, then
/// removes its profile.
struct Browser {
    child: Child,
    commands: std::fs::File,
    messages: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    profile: tempfile::TempDir,
}

/// `fd` duplicated above 4, so that moving the child's ends onto fds 3 and 4 cannot overwrite
/// one with the other.
fn above_four(fd: OwnedFd) -> OwnedFd {
    // SAFETY: fcntl on a descriptor this function owns; the new one is owned by the result.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    assert!(raw >= 0, "fcntl: {}", std::io::Error::last_os_error());
    unsafe { OwnedFd::from_raw_fd(raw) }
}

impl Browser {
    /// Starts Chromium with a fresh profile under `profiles` and opens `url` in a new page.
    fn open(chromium: &Path, profiles: &Path, url: &str) -> Result<Browser, String> {
        let profile = tempfile::tempdir_in(profiles).map_err(|e| e.to_string())?;
        let (their_commands, our_commands) = std::io::pipe().map_err(|e| e.to_string())?;
        let (our_messages, their_messages) = std::io::pipe().map_err(|e| e.to_string())?;
        let their_commands = above_four(their_commands.into());
        let their_messages = above_four(their_messages.into());
        let (commands_fd, messages_fd) = (their_commands.as_raw_fd(), their_messages.as_raw_fd());
        let mut command = Command::new(chromium);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(profile.path().join("stderr.log"))
                    .map_err(|e| e.to_string())?,
            )
            .process_group(0);
        // SAFETY: between fork and exec only dup2, which is async-signal-safe; both sources are
        // open in the child, distinct and above 4, and dup2 clears close-on-exec on 3 and 4.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(commands_fd, 3) < 0 || libc::dup2(messages_fd, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("chromium starts: {e}"))?;
        // Only the child holds its ends now: its exit ends the reader below.
        drop((their_commands, their_messages));
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(our_messages);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                let Ok(message) = serde_json::from_slice(&buf) else {
                    continue;
                };
                if tx.send(message).is_err() {
                    return;
                }
            }
        });
        let mut browser = Browser {
            child,
            commands: std::fs::File::from(OwnedFd::from(our_commands)),
            messages,
            next_id: 0,
            session: String::new(),
            profile,
        };
        let target = browser.call(false, "Target.createTarget", json!({ "url": url }))?;
        let target = target["targetId"].as_str().ok_or("no targetId")?.to_owned();
        let attached = browser.call(
            false,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        )?;
        browser.session = attached["sessionId"]
            .as_str()
            .ok_or("no sessionId")?
            .to_owned();
        Ok(browser)
    }

    /// One DevTools call (to the attached page when `on_page`), its result; events that arrive
    /// meanwhile are skipped.
    fn call(&mut self, on_page: bool, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if on_page {
            message["sessionId"] = self.session.clone().into();
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .map_err(|e| format!("{method}: {e}"))?;
        let deadline = Instant::now() + CALL_LIMIT;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or_else(|| format!("{method}: no reply within {CALL_LIMIT:?}"))?;
            let reply = self
                .messages
                .recv_timeout(left)
                .map_err(|e| format!("{method}: {e} (chromium gone or stuck)"))?;
            if reply["id"] != id {
                continue;
            }
            if let Some(error) = reply.get("error") {
                return Err(format!("{method}: {error}"));
            }
            return Ok(reply["result"].clone());
        }
    }

    /// The value of a JavaScript expression on the page.
    fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let result = self.call(
            true,
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(format!("{expression}: {exception}"));
        }
        Ok(result["result"]["value"].clone())
    }

    /// Polls `expression` every 200 ms until it is `true`, for at most `limit`.
    fn wait_for(&mut self, expression: &str, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while self.eval(expression)? != Value::Bool(true) {
            if Instant::now() > deadline {
                return Err(format!("{expression} not true within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// A PNG of the page rendered `width` × `height` CSS pixels.
    fn screenshot(&mut self, width: u32, height: u32) -> Result<Vec<u8>, String> {
        self.call(
            true,
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )?;
        let shot = self.call(true, "Page.captureScreenshot", json!({ "format": "png" }))?;
        let data = shot["data"].as_str().ok_or("no screenshot data")?;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| e.to_string())
    }

    /// The last lines of the browser's stderr, for a failure message.
    fn stderr_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.profile.path().join("stderr.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium's renderers share its process group: all go.
        // SAFETY: kill(2) on a process group this test created.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// True once the page has rendered a summary the server pushed (false while it has no body).
const PUSHED: &str = "Number(document.body?.dataset.pushes || 0) > 0";

/// The counts the page shows, and how many summaries it was pushed.
const SAMPLE: &str = r#"(() => {
  const value = (id) => Number(document.getElementById(id).dataset.value);
  return {
    submitted: value("total-submitted"),
    finished: value("total-finished"),
    completed: value("count-completed"),
    pushes: Number(document.body.dataset.pushes || 0),
  };
})()"#;

/// Chromium showing `url` with a pushed summary rendered; a start that does not get there
/// within 30 s is killed and tried again in a fresh profile, at most three times.
fn show(chromium: &Path, profiles: &Path, url: &str) -> Browser {
    for attempt in 1..=3 {
        let mut browser = match Browser::open(chromium, profiles, url) {
            Ok(browser) => browser,
            Err(error) => {
                eprintln!("chromium start {attempt} failed: {error}");
                continue;
            }
        };
        match browser.wait_for(PUSHED, Duration::from_secs(30)) {
            Ok(()) => return browser,
            Err(error) => eprintln!(
                "chromium start {attempt}: {error}; killed. Its stderr ended with:\n{}",
                browser.stderr_tail()
            ),
        }
    }
    panic!("chromium did not show {url}, three times");
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    submitted: u64,
    finished: u64,
    completed: u64,
    pushes: u64,
}

impl Sample {
    fn of(browser: &mut Browser) -> Sample {
        let v = browser
            .eval(SAMPLE)
            .unwrap_or_else(|e| panic!("{e}\n{}", browser.stderr_tail()));
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
        Sample {
            submitted: n("submitted"),
            finished: n("finished"),
            completed: n("completed"),
            pushes: n("pushes"),
        }
    }
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

    let url = format!("http://{admin}/");
    let profiles = dir.path().join("chromium");
    std::fs::create_dir_all(&profiles).unwrap();
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let seen = tokio::task::block_in_place(|| {
        // One page load, watched while the run goes on: the page changes only by pushes.
        let mut browser = show(&chromium, &profiles, &url);
        let mut seen = vec![Sample::of(&mut browser)];
        let deadline = Instant::now() + Duration::from_secs(90);
        while seen.last().unwrap().finished < ACTIONS {
            assert!(
                Instant::now() < deadline,
                "the page never showed {ACTIONS} finished actions; it showed {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
            let sample = Sample::of(&mut browser);
            if sample != *seen.last().unwrap() {
                seen.push(sample);
            }
        }

        // A fresh load shows the finished run, its queue and its host with the host's labels
        // (the mark tells the old document from the new one).
        browser.eval("window.before_reload = true").unwrap();
        browser
            .call(true, "Page.navigate", json!({ "url": url }))
            .unwrap();
        let finished = format!(
            "window.before_reload !== true && {PUSHED} && document.getElementById('total-finished').dataset.value === '{ACTIONS}' \
             && document.body.outerHTML.includes('dashboard-test') \
             && document.body.outerHTML.includes('zone=test-1')"
        );
        if let Err(error) = browser.wait_for(&finished, Duration::from_secs(20)) {
            let html = browser.eval("document.body.outerHTML").unwrap_or_default();
            panic!("a fresh load of the finished run: {error}\n{html}");
        }
        let reloaded = Sample::of(&mut browser);
        assert_eq!(reloaded.completed, ACTIONS, "{reloaded:?}");

        let png = browser
            .screenshot(1280, 1500)
            .unwrap_or_else(|e| panic!("{e}\n{}", browser.stderr_tail()));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(&shot, png).unwrap();
        seen
    });

    let (first, last) = (seen[0], *seen.last().unwrap());
    assert!(
        seen.windows(2).all(|w| w[0].finished <= w[1].finished),
        "the counts went back: {seen:?}"
    );
    assert!(
        first.finished < ACTIONS,
        "the page never showed the run in progress: {seen:?}"
    );
    assert!(
        last.pushes > first.pushes,
        "the counts moved without pushed summaries: {seen:?}"
    );
    assert_eq!(last.completed, ACTIONS, "{seen:?}");
    assert!(seen.iter().all(|s| s.submitted == ACTIONS), "{seen:?}");
    if let Some(copy) = std::env::var_os("PROCMESH_SCREENSHOT") {
        std::fs::copy(&shot, copy).unwrap();
    }
    eprintln!(
        "dashboard test: {} distinct samples of one page load ({} pushes), {} s in all, \
         screenshot {}",
        seen.len(),
        last.pushes,
        began.elapsed().as_secs(),
        shot.display()
    );
    client.close().await;
}
