//! [`InProcessManager`]: procs as tasks of this process, for tests and `procmesh demo`. The
//! host crate does not know the proc agent; the composer injects a [`ProcFactory`] that starts
//! one from the same bootstrap values an OS child would read from its environment.
//!
//! The mapping onto OS semantics:
//!
//! | OS child                       | in-process proc                                      |
//! |--------------------------------|------------------------------------------------------|
//! | exits with a status            | the factory's future resolves with an [`ExitStatus`] |
//! | SIGTERM                        | its [`StopSignal`] fires (it may ignore it)          |
//! | SIGKILL                        | its task is aborted: ends with signal 9              |
//! | panics / aborts                | its task panics: ends with signal 6 (SIGABRT)        |
//! | pid in `ProcReady`             | this process's pid                                   |

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use procmesh_protocol::messages::HostError;
use procmesh_protocol::ExitStatus;
use procmesh_transport::remote::BoxFuture;
use procmesh_transport::LocalHub;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::Instrument;

use super::{Launch, ProcControl, ProcManager};

/// Starts one in-process proc; the returned future is the proc's whole life.
pub type ProcFactory = Arc<dyn Fn(InProcessLaunch) -> BoxFuture<'static, ExitStatus> + Send + Sync>;

/// What an in-process proc is started with.
#[derive(Debug)]
pub struct InProcessLaunch {
    /// The bootstrap values (those an OS child reads from [`Launch::env`]).
    pub launch: Launch,
    /// The hub the host's backend is on (`launch.bootstrap.backend` is `local!<host's name>` on it).
    pub hub: LocalHub,
    /// A name on the hub no other node uses, for the proc's own node.
    pub local_name: String,
    /// Fires when the host asks the proc to stop (its SIGTERM).
    pub stop: StopSignal,
}

/// The in-process stand-in for SIGTERM.
#[derive(Debug, Clone)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Whether the host asked the proc to stop.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the host asks the proc to stop (never, if it never does).
    pub async fn requested(&mut self) {
        if self.0.wait_for(|stop| *stop).await.is_err() {
            // The host dropped the proc's control: it will never ask.
            std::future::pending::<()>().await;
        }
    }
}

/// Starts procs as tasks of this process.
pub struct InProcessManager {
    hub: LocalHub,
    factory: ProcFactory,
    next: AtomicU64,
}

impl std::fmt::Debug for InProcessManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessManager")
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

impl InProcessManager {
    /// A manager on a fresh hub, starting procs with `factory`.
    pub fn new<F, Fut>(factory: F) -> Self
    where
        F: Fn(InProcessLaunch) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ExitStatus> + Send + 'static,
    {
        Self::with_hub(LocalHub::new(), factory)
    }

    /// A manager on `hub` (the host joins it too), starting procs with `factory`.
    pub fn with_hub<F, Fut>(hub: LocalHub, factory: F) -> Self
    where
        F: Fn(InProcessLaunch) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ExitStatus> + Send + 'static,
    {
        let factory: ProcFactory = Arc::new(move |launch| Box::pin(factory(launch)));
        InProcessManager {
            hub,
            factory,
            next: AtomicU64::new(1),
        }
    }

    /// The hub procs and host meet on.
    pub fn hub(&self) -> &LocalHub {
        &self.hub
    }
}

impl ProcManager for InProcessManager {
    fn kind(&self) -> &'static str {
        "in-process"
    }

    fn local_hub(&self) -> Option<LocalHub> {
        Some(self.hub.clone())
    }

    fn launch(&self, launch: Launch) -> BoxFuture<'_, Result<Arc<dyn ProcControl>, HostError>> {
        Box::pin(async move {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let (stop_tx, stop_rx) = watch::channel(false);
            let (exit_tx, exit_rx) = watch::channel(None);
            let start = InProcessLaunch {
                local_name: format!("proc-{}-{n}", std::process::id()),
                hub: self.hub.clone(),
                stop: StopSignal(stop_rx),
                launch,
            };
            let name = start.launch.name().to_owned();
            let life = (self.factory)(start);
            let task = tokio::spawn(life.instrument(tracing::info_span!("proc", %name)));
            let abort = task.abort_handle();
            tokio::spawn(async move {
                let status = match task.await {
                    Ok(status) => status,
                    Err(e) if e.is_cancelled() => ExitStatus::Signal(libc::SIGKILL),
                    Err(_) => ExitStatus::Signal(libc::SIGABRT),
                };
                exit_tx.send_replace(Some(status));
            });
            let control: Arc<dyn ProcControl> = Arc::new(InProcessControl {
                abort,
                stop: stop_tx,
                exit: exit_rx,
            });
            Ok(control)
        })
    }
}

struct InProcessControl {
    abort: AbortHandle,
    stop: watch::Sender<bool>,
    exit: watch::Receiver<Option<ExitStatus>>,
}

impl ProcControl for InProcessControl {
    fn pid(&self) -> Option<u32> {
        None
    }

    fn ready_pid(&self) -> u32 {
        std::process::id()
    }

    fn terminate(&self) -> Result<(), HostError> {
        self.stop.send_replace(true);
        Ok(())
    }

    fn kill(&self) -> Result<(), HostError> {
        self.abort.abort();
        Ok(())
    }

    fn wait(&self) -> BoxFuture<'static, ExitStatus> {
        super::wait_exit(&self.exit)
    }
}
