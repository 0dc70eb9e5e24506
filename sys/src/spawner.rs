//! One long-lived thread that forks children whose parent-death signal must outlive the
//! calling thread: `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, and tokio's
//! blocking threads come and go.

use std::io;
use std::os::fd::OwnedFd;
use std::process::Command;
use std::sync::mpsc;
use std::sync::OnceLock;

type Reply = tokio::sync::oneshot::Sender<io::Result<(std::process::Child, OwnedFd)>>;

fn thread() -> &'static mpsc::Sender<(Command, Reply)> {
    static SPAWNER: OnceLock<mpsc::Sender<(Command, Reply)>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, Reply)>();
        std::thread::Builder::new()
            .name("procmesh-spawner".into())
            .spawn(move || {
                // Lives as long as the process: the sender is in a static.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(crate::child::spawn_raw_for_spawner(&mut cmd));
                }
            })
            .expect("cannot start the spawner thread");
        tx
    })
}

/// Spawns `cmd` on the spawner thread.
pub(crate) async fn run(cmd: Command) -> io::Result<(std::process::Child, OwnedFd)> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    thread()
        .send((cmd, reply))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    rx.await
        .map_err(|_| io::Error::other("the spawner thread dropped a request"))?
}
