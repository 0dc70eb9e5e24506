//! A proc's life as the host drives it: the spawn (launch, then wait for a good ready
//! callback), and the exit monitor (reap, release, announce).
//!
//! A spawn, step by step (HST-2, HST-3):
//!
//! ```text
//! reserve name (HST-1) ─▶ fresh procs/<name>/ ─▶ manager.launch ─▶ handle published, exit monitor
//!   ─▶ wait: ProcReady checked ─ ok ─▶ Ready, answer Ok to the proc, spawn resolves
//!            │ timeout / exit / failed check
//!            ▼
//!      not ready (its error) ─▶ kill, wait for the exit monitor (reaped, route and name gone)
//! ```
//!
//! # Invariants
//! - **HST-2** A spawn succeeds only once a `ProcReady` from the very proc arrived (its proc id,
//!   the child's pid), its agent is an actor of that proc that answers, and its backend route is
//!   up. Otherwise it fails with exactly one named error: `ReadyTimeout`, `ExitedEarly`,
//!   `ChannelLost` (the proc stopped answering, or its backend link went away),
//!   `MissingAddress` (no backend route under its name), `MissingAgent` (the agent is not in
//!   the proc or does not answer), `Launch` or `NotAllowed`.
//! - **HST-3** A failed spawn leaves nothing behind: by the time it returns, the child was
//!   killed and reaped (an in-process proc's task cancelled), and its route, name and work
//!   directory are gone.
//! - **HST-6** When a proc exits its route is removed and its work directory deleted *before*
//!   its name is released, and both before its handle reports `Exited`: once `wait()`
//!   returns, the name can be spawned again and nothing routes to the old proc.

use std::sync::Arc;
use std::time::Duration;

use procmesh_protocol::messages::{AgentRequest, HostError, ProcReady, SpawnSpec};
use procmesh_protocol::{ExitStatus, RemoteError};
use procmesh_transport::SendFailure;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::handle::{ProcHandle, ReadyInfo};
use crate::host::{now, HostInner};
use crate::manager::Launch;
use crate::table::{Callback, Reservation};
use procmesh_protocol::messages::host::{BootstrapSecret, ProcBootstrap};

/// How a ready callback was judged.
enum Check {
    /// Not from our child (wrong pid, wrong proc): refuse it, keep waiting (HST-12).
    Refuse(HostError),
    /// From our child, but it cannot work: the spawn fails with this (HST-2).
    Fail(HostError),
}

impl HostInner {
    /// A fresh, empty work directory for `name`.
    async fn fresh_work_dir(&self, name: &str) -> Result<std::path::PathBuf, HostError> {
        let dir = self.paths.proc_dir(name);
        let launch_err = |e: std::io::Error| HostError::Launch {
            name: name.to_owned(),
            reason: format!("work directory {}: {e}", dir.display()),
        };
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(launch_err(e)),
        }
        tokio::fs::create_dir_all(&dir).await.map_err(launch_err)?;
        Ok(dir)
    }

    async fn remove_work_dir(&self, name: &str) {
        let dir = self.paths.proc_dir(name);
        if let Err(error) = tokio::fs::remove_dir_all(&dir).await {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%error, dir = %dir.display(), "cannot remove a proc's work directory");
            }
        }
    }

    /// The spawn itself, in its own task (see [`Host::spawn`]).
    pub(crate) async fn drive_spawn(
        self: Arc<Self>,
        spec: SpawnSpec,
        reservation: Reservation,
    ) -> Result<ProcHandle, HostError> {
        let name = spec.name.clone();
        let Reservation {
            mut callbacks,
            handle: publish,
            secret,
            slots: _,
        } = reservation;
        let launched = async {
            let proc_id = self
                .node
                .addr()
                .proc(&name)
                .map_err(|e| HostError::BadName {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            let work_dir = self.fresh_work_dir(&name).await?;
            let launch = Launch {
                bootstrap: ProcBootstrap {
                    proc_id: proc_id.clone(),
                    backend: self.backend.clone(),
                    callback: self.bootstrap_actor(),
                    work_dir,
                    workers_dir: self.paths.workers.clone(),
                    blobs_dir: self.paths.blobs.clone(),
                    max_actions: spec.config.max_actions,
                    secret: Some(BootstrapSecret(secret)),
                    orchestrator: self.config.orchestrator.clone(),
                    isolation: self.isolation.as_ref().map(|i| i.settings.clone()),
                },
                config: spec.config.clone(),
            };
            let control = self.manager.launch(launch).await?;
            Ok::<_, HostError>((proc_id, control))
        }
        .await;
        let (proc_id, control) = match launched {
            Ok(launched) => launched,
            Err(error) => {
                // HST-3: nothing was started; free what was taken.
                tracing::warn!(%error, "launch failed");
                drop(publish);
                self.remove_work_dir(&name).await;
                self.table.release(&name, None);
                return Err(error);
            }
        };
        let handle = ProcHandle::new(
            proc_id,
            spec.config.labels.clone(),
            now(),
            control,
            self.node.clone(),
            self.timeouts(),
        );
        tracing::info!(pid = ?handle.pid(), "proc launched");
        publish.send_replace(Some(handle.clone()));
        self.spawn_exit_monitor(handle.clone());

        let timeout_ms = spec
            .config
            .ready_timeout_ms
            .unwrap_or(self.config.ready_timeout_ms);
        match self.await_ready(&handle, &mut callbacks, timeout_ms).await {
            Ok(()) => {
                tracing::info!("proc ready");
                Ok(handle)
            }
            Err(error) => {
                tracing::warn!(%error, "spawn failed");
                handle.set_not_ready(error.clone());
                drop(callbacks);
                // HST-3: kill and wait until it is reaped and its name released.
                if let Err(kill_error) = handle.kill().await {
                    tracing::error!(%kill_error, "a proc whose spawn failed outlived SIGKILL");
                }
                Err(error)
            }
        }
    }

    /// Waits for a good ready callback, the proc's exit, or the timeout (0: none).
    async fn await_ready(
        &self,
        handle: &ProcHandle,
        callbacks: &mut mpsc::UnboundedReceiver<Callback>,
        timeout_ms: u64,
    ) -> Result<(), HostError> {
        let name = handle.name().to_owned();
        let deadline = (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms));
        let mut state = handle.subscribe();
        loop {
            let timer = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let ended = async {
                state
                    .wait_for(|s| s.status.is_exited() || s.stop_requested)
                    .await
                    .map(|s| s.clone())
            };
            tokio::select! {
                biased;
                _ = ended => {
                    // Exited, or asked to stop while starting: either way it ends unready.
                    let status = handle.outcome().await?;
                    return Err(HostError::ExitedEarly { name, status });
                }
                callback = callbacks.recv() => {
                    let Some(Callback { ready, reply }) = callback else {
                        // The exit monitor released the name (HST-6): `Exited` follows.
                        let status = handle.outcome().await?;
                        return Err(HostError::ExitedEarly { name, status });
                    };
                    match self.check_ready(handle, &ready).await {
                        Ok(info) => {
                            if handle.set_ready(info) {
                                let _ = reply.send(Ok(()));
                                return Ok(());
                            }
                            let _ = reply.send(Err(HostError::UnexpectedProc(format!(
                                "{} is being stopped", ready.proc_id
                            ))));
                        }
                        Err(Check::Refuse(error)) => {
                            tracing::warn!(%error, "refused a ready callback");
                            let _ = reply.send(Err(error));
                        }
                        Err(Check::Fail(error)) => {
                            let _ = reply.send(Err(error.clone()));
                            // An exit explains more than its symptoms.
                            if let Some(status) = handle.state().exit_status() {
                                return Err(HostError::ExitedEarly { name, status });
                            }
                            return Err(error);
                        }
                    }
                }
                _ = timer => {
                    return Err(HostError::ReadyTimeout { name, timeout_ms });
                }
            }
        }
    }

    /// HST-2, HST-12: whether a ready callback is from our child and the proc can work.
    async fn check_ready(
        &self,
        handle: &ProcHandle,
        ready: &ProcReady,
    ) -> Result<ReadyInfo, Check> {
        let name = handle.name().to_owned();
        if ready.proc_id != *handle.proc_id() {
            return Err(Check::Refuse(HostError::UnexpectedProc(format!(
                "{} is not {}",
                ready.proc_id,
                handle.proc_id()
            ))));
        }
        let expected = handle.control().ready_pid();
        if ready.pid != expected {
            return Err(Check::Refuse(HostError::UnexpectedProc(format!(
                "{} reported pid {}, but the proc is pid {expected}",
                ready.proc_id, ready.pid
            ))));
        }
        if ready.agent.proc_id() != handle.proc_id() {
            return Err(Check::Fail(HostError::MissingAgent(name)));
        }
        let routed = || self.node.proc_routes().contains(&name);
        if !routed() {
            return Err(Check::Fail(HostError::MissingAddress(name)));
        }
        let agent = self.node.remote_ref::<AgentRequest>(ready.agent.clone());
        match agent
            .ask(AgentRequest::Capacity, self.config.agent_ask_timeout())
            .await
        {
            // Any answer, even a refusal, shows the agent is there.
            Ok(_) => {}
            Err(SendFailure::Timeout(_)) => return Err(Check::Fail(HostError::ChannelLost(name))),
            Err(SendFailure::Remote(RemoteError::Undeliverable(_))) if !routed() => {
                return Err(Check::Fail(HostError::ChannelLost(name)));
            }
            Err(error) => {
                tracing::warn!(%error, agent = %ready.agent, "the agent does not answer");
                return Err(Check::Fail(HostError::MissingAgent(name)));
            }
        }
        Ok(ReadyInfo {
            addr: ready.addr.clone(),
            agent: ready.agent.clone(),
            pid: ready.pid,
        })
    }

    fn spawn_exit_monitor(self: &Arc<Self>, handle: ProcHandle) {
        let inner = self.clone();
        let span = tracing::info_span!("proc", proc = %handle.proc_id());
        tokio::spawn(
            async move {
                let status = handle.control().wait().await;
                inner.proc_exited(&handle, status).await;
            }
            .instrument(span),
        );
    }

    /// HST-6, HST-7, HST-14: clean up after an exit, announce it, respawn a crashed proc.
    async fn proc_exited(self: &Arc<Self>, handle: &ProcHandle, status: ExitStatus) {
        let name = handle.name().to_owned();
        self.node.remove_proc_route(&name);
        self.remove_work_dir(&name).await;
        self.table.release(&name, Some(handle));
        let before = handle.state();
        handle.set_exited(status);
        let crashed = !before.stop_requested && before.ready.is_some();
        if crashed && !self.is_shutting_down() {
            tracing::warn!(%status, "proc exited without being asked");
            self.report_lost(
                handle.proc_id().clone(),
                status,
                format!("exited without being asked ({status})"),
            );
            self.schedule_respawn(&name);
        } else {
            tracing::info!(%status, "proc exited");
            // HST-14: stopped on purpose (a failed spawn's own kill is not: it never was
            // ready), it stays down.
            if before.stop_requested && before.ready.is_some() {
                self.respawns.forget(&name);
            }
        }
    }
}
