//! A subreaper adopts what its children leave behind, and `reap_orphans` kills and reaps it
//! while leaving tracked children alone. Its own test binary: subreaping is process-wide.

use std::process::{Command, Stdio};
use std::time::Duration;

use procmesh_sys::{prctl, procfs, reap_orphans, Child, Reap};

// Attests SYS-3
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_adopted_killed_and_reaped_tracked_children_are_not() {
    prctl::set_child_subreaper().unwrap();
    let me = std::process::id();
    // A tracked child that keeps running.
    let (keeper, _) = Child::spawn(
        Command::new("/bin/sh")
            .args(["-c", "sleep 30"])
            .stdin(Stdio::null()),
        Reap::Plain,
    )
    .unwrap();
    // A child that leaves a grandchild behind and exits.
    let (leaver, pipes) = Child::spawn(
        Command::new("/bin/sh")
            .args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
        Reap::Plain,
    )
    .unwrap();
    let mut out = String::new();
    use tokio::io::AsyncReadExt;
    pipes
        .stdout
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    let orphan: u32 = out.trim().parse().unwrap();
    leaver.wait().await;
    // Adopted by us, the subreaper (bounded wait for the kernel to re-parent it).
    let mut adopted = false;
    for _ in 0..200 {
        if procfs::parent_pid(orphan).ok() == Some(me) {
            adopted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(adopted, "orphan {orphan} was not re-parented to us");
    let reaped = reap_orphans();
    assert_eq!(reaped, vec![orphan]);
    assert!(
        procfs::parent_pid(orphan).ok() != Some(me),
        "orphan still ours"
    );
    // The tracked child is untouched.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", keeper.pid())).unwrap_or_default();
    assert!(
        keeper.identity().is_alive(),
        "{:?} {stat}",
        keeper.identity()
    );
    assert!(keeper.signal(nix::sys::signal::Signal::SIGKILL).unwrap());
    keeper.wait().await;
    assert!(!keeper.identity().is_alive());
}
