//! The systemd integration of the nodes (deploy/systemd/): both unit files pass
//! `systemd-analyze verify` with no complaint naming them (and a misspelled directive in a copy
//! is caught, so the check is not vacuous); a real `procmesh orchestrator` and `procmesh host`
//! started with `$NOTIFY_SOCKET` send `READY=1` (with `STATUS=ready <what the ready line
//! says>`) only once their `ready` line is on stdout, `STOPPING=1` on SIGTERM, and exit 0; the
//! host's proc agents do not inherit `$NOTIFY_SOCKET`. Every wait is bounded.

mod utils;

use std::io::Read as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use utils::{node_name, procmesh_bin, start_orchestrator, Certs, Proc};

const UNITS: [&str; 2] = ["procmesh-orchestrator.service", "procmesh-host.service"];
const WAIT: Duration = Duration::from_secs(30);

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

/// `systemd-analyze verify --man=no <unit>`: its exit status and the output lines that name
/// the unit (other lines are about the machine's own units).
fn verify(unit: &Path) -> (bool, Vec<String>) {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .arg(unit)
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze");
    let name = unit.file_name().unwrap().to_str().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("systemd-analyze verify {name}: {:?}\n{text}", out.status);
    let lines = text
        .lines()
        .filter(|l| l.contains(name))
        .map(str::to_owned)
        .collect();
    (out.status.success(), lines)
}

fn has_systemd_analyze() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_unit_files_verify_and_a_typo_is_caught() {
    if !has_systemd_analyze() {
        println!("skipped: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for unit in UNITS {
        let text = std::fs::read_to_string(units_dir().join(unit)).unwrap();
        let exec = text
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .unwrap_or_else(|| panic!("{unit} has no ExecStart="));
        assert!(
            exec.starts_with("ExecStart=/usr/local/bin/procmesh "),
            "{unit}: {exec}"
        );
        assert!(
            text.contains("\nType=notify\n"),
            "{unit} is not Type=notify"
        );
        assert!(text.contains("\nNotifyAccess=main\n"), "{unit}");
        // verify checks that the binary exists: point it at the one under test.
        let text = text.replace(
            "ExecStart=/usr/local/bin/procmesh ",
            &format!("ExecStart={} ", procmesh_bin().display()),
        );
        let copy = dir.path().join(unit);
        std::fs::write(&copy, &text).unwrap();
        let (ok, complaints) = verify(&copy);
        assert!(
            ok && complaints.is_empty(),
            "{unit} does not verify cleanly: {complaints:#?}"
        );

        // The same check must fail a copy with a misspelled directive, which systemd only
        // warns about (exit status 0): the complaint names the file.
        let broken_name = unit.replace(".service", "-typo.service");
        let broken = dir.path().join(&broken_name);
        std::fs::write(
            &broken,
            text.replace("\nNotifyAccess=main\n", "\nNotifyAcess=main\n"),
        )
        .unwrap();
        let (_, complaints) = verify(&broken);
        assert!(
            complaints.iter().any(|l| l.contains("NotifyAcess")),
            "a misspelled directive in {broken_name} went unnoticed: {complaints:#?}"
        );
    }
}

/// A node process started with `$NOTIFY_SOCKET` = a socket this test bound; its stdout is
/// left unread (non-blocking) until the test looks at it. Killed when dropped.
struct Node {
    proc: Proc,
    stdout: ChildStdout,
    socket: UnixDatagram,
    name: &'static str,
}

impl Node {
    fn start(name: &'static str, args: &[&str], dir: &Path) -> Node {
        let path = dir.join(format!("{name}-notify.sock"));
        let socket = UnixDatagram::bind(&path).unwrap();
        let mut child = Command::new(procmesh_bin())
            .arg(name)
            .args(args)
            .env("NOTIFY_SOCKET", &path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start procmesh");
        let stdout = child.stdout.take().unwrap();
        let proc = Proc(child);
        // SAFETY: a plain fcntl on a descriptor we own.
        let fd = stdout.as_raw_fd();
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert!(flags >= 0);
        assert_eq!(
            unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) },
            0
        );
        Node {
            proc,
            stdout,
            socket,
            name,
        }
    }

    /// The next datagram, within `WAIT`; panics naming the process's status otherwise.
    fn next_datagram(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: no notification within {WAIT:?} (status: {:?})",
                self.name,
                self.proc.0.try_wait()
            );
            // Short slices, so that an early exit is reported without waiting it all out.
            let slice = left.min(Duration::from_millis(500));
            self.socket.set_read_timeout(Some(slice)).unwrap();
            match self.socket.recv(&mut buf) {
                Ok(n) => return String::from_utf8(buf[..n].to_vec()).unwrap(),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if let Ok(Some(status)) = self.proc.0.try_wait() {
                        panic!("{}: exited before notifying: {status}", self.name);
                    }
                }
                Err(e) => panic!("{}: recv: {e}", self.name),
            }
        }
    }

    /// What is on stdout right now (non-blocking: nothing more is waited for).
    fn stdout_now(&mut self) -> String {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.stdout.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{}: reading stdout: {e}", self.name),
            }
        }
        String::from_utf8(text).unwrap()
    }

    /// Waits for `READY=1`, then checks the `ready` line was already on stdout (the node
    /// writes it before it sends, so it is in the pipe by the time the datagram arrives) and
    /// that the datagram's status names what that line says. Returns the ready value.
    fn expect_ready(&mut self) -> String {
        let datagram = self.next_datagram();
        let out = self.stdout_now();
        assert!(
            datagram.lines().any(|l| l == "READY=1"),
            "{}: first notification is not READY=1: {datagram:?}",
            self.name
        );
        let ready = out
            .lines()
            .find_map(|l| l.strip_prefix("ready "))
            .unwrap_or_else(|| {
                panic!(
                    "{}: READY=1 came before the ready line (stdout so far: {out:?})",
                    self.name
                )
            })
            .trim()
            .to_owned();
        let status = format!("STATUS=ready {ready}");
        assert!(
            datagram.lines().any(|l| l == status),
            "{}: {datagram:?} does not say `STATUS=ready {ready}`",
            self.name
        );
        ready
    }

    /// SIGTERM: `STOPPING=1` arrives, then the process exits 0, both within `WAIT`.
    fn expect_clean_stop(&mut self) {
        let pid = self.proc.pid() as libc::pid_t;
        // SAFETY: kill(2) on our own child, which is not reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let datagram = self.next_datagram();
        assert!(
            datagram.lines().any(|l| l == "STOPPING=1"),
            "{}: after SIGTERM: {datagram:?}",
            self.name
        );
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.proc.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: still running {WAIT:?} after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{}: exited with {status}", self.name);
    }
}

#[test]
fn the_orchestrator_notifies_ready_after_its_ready_line_and_stopping_on_sigterm() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let tls = certs.orchestrator_dir();
    let state = dir.path().join("state");
    let mut node = Node::start(
        "orchestrator",
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-dir",
            tls.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--admin-listen",
            "off",
        ],
        dir.path(),
    );
    let ready = node.expect_ready();
    assert!(ready.contains("service.orchestrator"), "{ready}");
    node.expect_clean_stop();
}

/// Whether process `pid`'s environment holds `name` (None: unreadable, e.g. already gone).
fn environ_has(pid: u32, name: &str) -> Option<bool> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    Some(
        environ
            .split(|&b| b == 0)
            .any(|v| v.starts_with(prefix.as_bytes())),
    )
}

#[test]
fn the_host_notifies_ready_once_registered_and_its_procs_do_not_inherit_the_socket() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let (_orchestrator, orchestrator) = start_orchestrator(
        &certs,
        "127.0.0.1:0",
        &dir.path().join("orchestrator"),
        &["--heartbeat-interval-ms", "200"],
    );
    let (tls, state) = (certs.host_dir(), dir.path().join("host"));
    let (node, orchestrator) = (node_name(&state), orchestrator.to_string());
    let mut host = Node::start(
        "host",
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-dir",
            tls.to_str().unwrap(),
            "--node-name",
            &node,
            "--state-dir",
            state.to_str().unwrap(),
            "--orchestrator",
            &orchestrator,
            "--procs",
            "1",
            "--max-actions",
            "1",
            "--capacity",
            "1",
            "--admin-listen",
            "off",
        ],
        dir.path(),
    );
    host.expect_ready();
    let host_pid = host.proc.pid();
    // (The host's own /proc/<pid>/environ still shows the variable: it is the initial
    // environment block, which remove_var does not rewrite. Its children's is what it passed.)
    let children = utils::descendants(host_pid);
    let checked: Vec<u32> = children
        .iter()
        .copied()
        .filter(|&pid| match environ_has(pid, "NOTIFY_SOCKET") {
            Some(inherited) => {
                assert!(
                    !inherited,
                    "process {pid} under the host inherited NOTIFY_SOCKET"
                );
                true
            }
            None => false,
        })
        .collect();
    assert!(
        !checked.is_empty(),
        "no proc agent under the host to check (descendants: {children:?})"
    );
    host.expect_clean_stop();
}
