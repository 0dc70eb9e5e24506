//! A peer killed with SIGKILL and restarted on the same address with the same identity is
//! reachable again at once, both ways: real OS processes, real QUIC on 127.0.0.1.

mod utils;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use kameo::actor::Spawn;
use procmesh_protocol::ActorId;
use procmesh_transport::{NodeBuilder, Role, TlsIdentity};
use utils::{identity, loopback, Recorder, TestMsg};

const T: Duration = Duration::from_secs(10);
const CHILD_IDENTITY: &str = "PROCMESH_TEST_RESTART_IDENTITY";
const CHILD_BIND: &str = "PROCMESH_TEST_RESTART_BIND";
const CHILD_PING: &str = "PROCMESH_TEST_RESTART_PING";
/// How fast a restarted peer must be usable again (the idle timeout is 30 s).
const RECOVERY: Duration = Duration::from_secs(2);

/// Runs only as a child of the tests below (ignored otherwise): binds `CHILD_BIND` (or an
/// ephemeral port), serves a `Recorder` named `rec`, asks `CHILD_PING` (if set) `Ping(1)` and
/// prints the answer, then waits for its stdin to close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process entry point, started by the restart tests"]
async fn child_restartable_peer() {
    let dir = std::env::var(CHILD_IDENTITY).expect("started by a parent test");
    let id = TlsIdentity::load(Path::new(&dir)).unwrap();
    let bind = std::env::var(CHILD_BIND).map_or_else(|_| loopback(), |a| a.parse().unwrap());
    let node = NodeBuilder::new("child")
        .quic(bind, id)
        .start()
        .await
        .unwrap();
    let actor = node
        .expose("rec", Recorder::spawn(Recorder::default()))
        .unwrap();
    println!("READY {actor}");
    if let Ok(target) = std::env::var(CHILD_PING) {
        let target: ActorId = target.parse().unwrap();
        let started = Instant::now();
        match node
            .remote_ref::<TestMsg>(target)
            .ask(TestMsg::Ping(1), T)
            .await
        {
            Ok(n) => println!("PINGED {n} {}", started.elapsed().as_millis()),
            Err(e) => println!("PINGFAIL {e}"),
        }
    }
    std::io::stdout().flush().unwrap();
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {}
    })
    .await
    .unwrap();
}

/// A child peer; SIGKILLed when dropped.
struct Peer {
    child: Child,
    lines: Option<std::io::Lines<BufReader<ChildStdout>>>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    fn start(identity_dir: &Path, bind: Option<&str>, ping: Option<&ActorId>) -> Peer {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "child_restartable_peer",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_IDENTITY, identity_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
        if let Some(bind) = bind {
            cmd.env(CHILD_BIND, bind);
        }
        if let Some(ping) = ping {
            cmd.env(CHILD_PING, ping.to_string());
        }
        let mut child = cmd.spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Peer {
            child,
            lines: Some(lines),
        }
    }

    /// The rest of the first stdout line starting with `prefix` (bounded by the child's life).
    async fn line(&mut self, prefix: &'static str) -> String {
        let mut lines = self.lines.take().unwrap();
        let (found, lines) = tokio::time::timeout(
            T,
            tokio::task::spawn_blocking(move || {
                for line in lines.by_ref() {
                    if let Some(rest) = line.unwrap().strip_prefix(prefix) {
                        return (rest.to_owned(), lines);
                    }
                }
                panic!("child exited before printing {prefix:?}");
            }),
        )
        .await
        .expect("child answers in time")
        .unwrap();
        self.lines = Some(lines);
        found
    }

    /// SIGKILL: no goodbye on any connection.
    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn child_identity() -> (TlsIdentity, tempfile::TempDir) {
    let (ca, ours) = identity();
    let dir = tempfile::tempdir().unwrap();
    ca.issue(Role::Host, "child", &[], T * 100)
        .unwrap()
        .save(dir.path())
        .unwrap();
    (ours, dir)
}

// Attests QUIC-5, LNK-5
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_restarted_on_its_address_answers_again_at_once() {
    let (ours, dir) = child_identity();
    let node = NodeBuilder::new("a")
        .quic(loopback(), ours)
        .start()
        .await
        .unwrap();

    let mut b = Peer::start(dir.path(), None, None);
    let actor: ActorId = b.line("READY ").await.parse().unwrap();
    let rec = node.remote_ref::<TestMsg>(actor.clone());
    // We dial B; the connection is ours.
    assert_eq!(rec.ask(TestMsg::Ping(1), T).await.unwrap(), 2);

    b.kill9();
    let bind = actor.addr().socket_addr().unwrap().to_string();
    let mut b2 = Peer::start(dir.path(), Some(&bind), None);
    assert_eq!(b2.line("READY ").await.parse::<ActorId>().unwrap(), actor);

    // The first ask goes out on the dead process's connection: B' answers it with a stateless
    // reset signed with the key of B's identity, so the connection and the ask fail at once
    // (LNK-5) instead of after the 30 s idle timeout; the next ask dials B'.
    let started = Instant::now();
    let mut attempts = 0;
    let answer = loop {
        attempts += 1;
        match rec.ask(TestMsg::Ping(41), RECOVERY).await {
            Ok(n) => break n,
            Err(e) => {
                assert!(e.is_undeliverable(), "attempt {attempts}: {e}");
                assert!(
                    started.elapsed() < RECOVERY,
                    "not back within {RECOVERY:?}: {e}"
                );
            }
        }
    };
    let took = started.elapsed();
    eprintln!("restarted peer answered after {took:?} ({attempts} attempts)");
    assert_eq!(answer, 42);
    assert!(took < RECOVERY, "took {took:?}");
    // And it keeps answering on the new connection.
    assert_eq!(rec.ask(TestMsg::Count, T).await.unwrap(), 0);
}

// Attests QUIC-4, LNK-4
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_that_dials_us_gets_its_replies_on_the_new_connection() {
    let (ours, dir) = child_identity();
    let node = NodeBuilder::new("a")
        .quic(loopback(), ours)
        .start()
        .await
        .unwrap();
    let ours = node
        .expose("rec", Recorder::spawn(Recorder::default()))
        .unwrap();

    // B dials us (its ask), and we talk back over the connection it opened.
    let mut b = Peer::start(dir.path(), None, Some(&ours));
    let actor: ActorId = b.line("READY ").await.parse().unwrap();
    assert!(b.line("PINGED ").await.starts_with("2 "));
    let rec = node.remote_ref::<TestMsg>(actor.clone());
    assert_eq!(rec.ask(TestMsg::Ping(1), T).await.unwrap(), 2);

    b.kill9();
    let bind = actor.addr().socket_addr().unwrap().to_string();
    let started = Instant::now();
    let mut b2 = Peer::start(dir.path(), Some(&bind), Some(&ours));
    b2.line("READY ").await;
    // B' dials us anew: its connection replaces the dead one, so our reply reaches it.
    let pinged = b2.line("PINGED ").await;
    let ms: u64 = pinged.split(' ').nth(1).unwrap().parse().unwrap();
    eprintln!("restarted peer got its first reply after {ms} ms");
    assert!(pinged.starts_with("2 "), "{pinged}");
    assert!(Duration::from_millis(ms) < RECOVERY, "reply took {ms} ms");
    // Our own asks to B' go over the live connection too, first time.
    assert_eq!(rec.ask(TestMsg::Ping(7), RECOVERY).await.unwrap(), 8);
    eprintln!("both ways up after {:?}", started.elapsed());
}

// Attests LNK-4 (the simultaneous-dial rule): two nodes dialling each other at once both keep
// working, in order, on the links they dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_dialling_each_other_at_once_both_get_through() {
    for _ in 0..5 {
        let (_, id) = identity();
        let a = NodeBuilder::new("a")
            .quic(loopback(), id.clone())
            .start()
            .await
            .unwrap();
        let b = NodeBuilder::new("b")
            .quic(loopback(), id)
            .start()
            .await
            .unwrap();
        let rec_a = a
            .expose("rec", Recorder::spawn(Recorder::default()))
            .unwrap();
        let rec_b = b
            .expose("rec", Recorder::spawn(Recorder::default()))
            .unwrap();
        let to_b = a.remote_ref::<TestMsg>(rec_b);
        let to_a = b.remote_ref::<TestMsg>(rec_a);
        let (x, y) = tokio::join!(
            async {
                for i in 0..200 {
                    to_b.tell(TestMsg::Seq(i)).await.unwrap();
                }
                to_b.ask(TestMsg::Count, T).await
            },
            async {
                for i in 0..200 {
                    to_a.tell(TestMsg::Seq(i)).await.unwrap();
                }
                to_a.ask(TestMsg::Count, T).await
            }
        );
        assert_eq!((x.unwrap(), y.unwrap()), (200, 200));
        assert_eq!(to_b.ask(TestMsg::OrderViolations, T).await.unwrap(), 0);
        assert_eq!(to_a.ask(TestMsg::OrderViolations, T).await.unwrap(), 0);
        // And later traffic still flows both ways.
        assert_eq!(to_b.ask(TestMsg::Ping(1), T).await.unwrap(), 2);
        assert_eq!(to_a.ask(TestMsg::Ping(2), T).await.unwrap(), 3);
        a.shutdown(Duration::from_secs(1)).await;
        b.shutdown(Duration::from_secs(1)).await;
    }
}
