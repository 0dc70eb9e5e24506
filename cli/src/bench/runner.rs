//! `procmesh bench runner`: a host agent with real proc-agent children, beside raw process
//! spawning and bubblewrap measured in the same run.
//!
//! ```text
//! spawn→ready   Host::spawn(proc) until ProcReady          vs  fork/exec+wait `procmesh --version`
//! actions/s     bench (as orchestrator) → host → proc agent → runner → trivial worker, N at once,
//!               isolation none, then namespaces            vs  N threads looping Command::output()
//!                                                              of the same worker binary: plain,
//!                                                              after unshare(2), through bwrap
//! mux RTT       client ─ask─▶ host ─▶ proc agent           vs  client ─ask─▶ host service actor
//! ```
//! The raw baselines run before the host starts: a host reaps every child of its process.
//!
//! With `--breakdown`, each runner phase's proc agent writes its stage log
//! (`PROCMESH_STAGE_LOG`) and the suite prints the median microseconds of each stage of the
//! attempts after the warm-up.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kameo::actor::Spawn;
use kameo::message::{Context, Message};
use kameo::Actor;
use procmesh_host::{Host, HostConfig, OsProcManager};
use procmesh_protocol::action::{Applied, Attempt, Lsn};
use procmesh_protocol::messages::agent::{ActionSpec, AgentError, AgentReply, AgentRequest};
use procmesh_protocol::messages::host::{
    HostReply, HostRequest, IsolationMode, ProcConfig, SpawnSpec,
};
use procmesh_protocol::messages::orchestrator::{
    OrchestratorError, OrchestratorReply, OrchestratorRequest, UpdateOutcome,
};
use procmesh_protocol::spec::{ActionDef, WorkerDescriptor, WorkerFile, WorkerId};
use procmesh_protocol::{ActionState, Transition, SERVICE_PROC};
use procmesh_transport::{BlobStore, MeshCa, NodeBuilder, RemoteRef, Request, Role, WireReply};
use tokio::sync::Semaphore;

use procmesh_proc_agent::bootstrap::ENV_STAGE_LOG;

use super::baseline::{
    bwrap_rate, naive_isolated_rate, raw_spawn_rate, raw_spawn_ready, trivial_binary, Bwrap,
};
use super::stages::{print_stages, Breakdown, Stages};
use super::{median, print_table, Row};

const T: Duration = Duration::from_secs(30);

/// Stands in for the orchestrator: serves the worker, frees a slot per finished action.
#[derive(Actor)]
struct Sink {
    worker: WorkerDescriptor,
    slots: Arc<Semaphore>,
    failed: Arc<std::sync::atomic::AtomicU64>,
}

impl Sink {
    /// Frees an action's slot once it ends.
    fn record(&self, t: Transition) {
        if t.state.is_terminal() {
            if t.state != ActionState::Completed {
                self.failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(?t, "bench action did not complete");
            }
            self.slots.add_permits(1);
        }
    }
}

impl Message<Request<OrchestratorRequest>> for Sink {
    type Reply = WireReply<Result<OrchestratorReply, OrchestratorError>>;

    async fn handle(
        &mut self,
        req: Request<OrchestratorRequest>,
        _: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        Ok(match req.message {
            OrchestratorRequest::GetWorker(id) if id == self.worker.id() => {
                Ok(OrchestratorReply::Worker(self.worker.clone()))
            }
            OrchestratorRequest::GetWorker(id) => Err(OrchestratorError::UnknownWorker(id)),
            // Answered as the orchestrator answers, so the agent's outbox takes it as such (the
            // sink keeps no records: `from` is not known, and the agent reads only the outcome).
            OrchestratorRequest::ActionUpdate(t) => {
                let applied = Applied {
                    from: t.state,
                    to: t.state,
                    at: t.at,
                };
                self.record(t);
                Ok(OrchestratorReply::Updated(UpdateOutcome::Applied(applied)))
            }
            OrchestratorRequest::ActionUpdates(ts) => {
                ts.into_iter().for_each(|t| self.record(t));
                Ok(OrchestratorReply::Ack)
            }
            _ => Ok(OrchestratorReply::Ack),
        })
    }
}

pub async fn run(budget: Duration, concurrency: u32, breakdown: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let me = std::env::current_exe()?;
    // The host's state (sandboxes, worker cache, blobs) goes on tmpfs when there is one.
    let (dir, on) = super::scratch_dir("runner")?;
    let result = measure(&me, &dir, budget, concurrency, breakdown).await;
    let _ = std::fs::remove_dir_all(&dir);
    let f = result?;

    let rows = [
        Row {
            what: "proc spawn -> ready (median)",
            ours: f.spawn_ready_ms,
            raw: f.raw_spawn_ms,
            unit: "ms",
            ratio: f.spawn_ready_ms / f.raw_spawn_ms,
            goal: "(cost of bootstrap)",
        },
        Row {
            what: "runner actions/s (isolation none)",
            ours: f.runner_per_s,
            raw: f.raw_per_s,
            unit: "1/s",
            ratio: f.runner_per_s / f.raw_per_s,
            goal: ">= 0.8",
        },
        Row {
            what: "isolated runner actions/s vs raw",
            ours: f.isolated_per_s,
            raw: f.raw_per_s,
            unit: "1/s",
            ratio: f.isolated_per_s / f.raw_per_s,
            goal: ">= 0.7",
        },
        f.bwrap
            .row("isolated runner vs bwrap", f.isolated_per_s, ">= 3"),
        Row {
            what: "isolated vs naive unshare+exec",
            ours: f.isolated_per_s,
            raw: f.naive_per_s,
            unit: "1/s",
            ratio: f.isolated_per_s / f.naive_per_s,
            goal: ">= 1.5",
        },
        Row {
            what: "isolated vs non-isolated runner",
            ours: f.isolated_per_s,
            raw: f.runner_per_s,
            unit: "1/s",
            ratio: f.isolated_per_s / f.runner_per_s,
            goal: ">= 0.5",
        },
        Row {
            what: "ask RTT via host to proc (median)",
            ours: f.proc_rtt_us,
            raw: f.service_rtt_us,
            unit: "us",
            ratio: f.proc_rtt_us / f.service_rtt_us,
            goal: "<= 1.5",
        },
    ];
    print_table(
        &format!("procmesh bench runner (one host, OS proc agents, {concurrency} actions at once)"),
        &rows,
    );
    f.bwrap.print_failure();
    println!(
        "raw: Command::output() of `true` from {concurrency} threads; bwrap: the same through \
         `bwrap --unshare-all` with read-only system binds"
    );
    if let Some(stages) = &f.breakdown {
        println!();
        print_stages(stages);
    }
    println!("state directory on {on}");
    println!("elapsed {:.1}s", started.elapsed().as_secs_f64());
    let bwrap_per_s = f.bwrap.per_s();
    let mut json = serde_json::json!({
        "suite": "runner",
        "concurrency": concurrency,
        "spawn_ready_ms": f.spawn_ready_ms,
        "raw_spawn_ms": f.raw_spawn_ms,
        "runner_actions_per_s": f.runner_per_s,
        "raw_spawn_per_s": f.raw_per_s,
        "runner_ratio": f.runner_per_s / f.raw_per_s,
        "isolated_actions_per_s": f.isolated_per_s,
        "isolated_vs_raw": f.isolated_per_s / f.raw_per_s,
        "bwrap_per_s": bwrap_per_s,
        "isolated_vs_bwrap": bwrap_per_s.map(|b| f.isolated_per_s / b),
        "naive_isolated_per_s": f.naive_per_s,
        "isolated_ratio": f.isolated_per_s / f.naive_per_s,
        "isolated_vs_runner": f.isolated_per_s / f.runner_per_s,
        "proc_rtt_us": f.proc_rtt_us,
        "service_rtt_us": f.service_rtt_us,
        "mux_rtt_ratio": f.proc_rtt_us / f.service_rtt_us,
    });
    if let Some(stages) = &f.breakdown {
        json["breakdown"] = serde_json::json!({
            "none": stages.none.as_ref().map(Stages::to_json),
            "namespaces": stages.namespaces.as_ref().map(Stages::to_json),
        });
    }
    println!("{json}");
    Ok(())
}

struct Figures {
    spawn_ready_ms: f64,
    raw_spawn_ms: f64,
    runner_per_s: f64,
    raw_per_s: f64,
    proc_rtt_us: f64,
    service_rtt_us: f64,
    isolated_per_s: f64,
    naive_per_s: f64,
    bwrap: Bwrap,
    /// With `--breakdown`: each runner phase's stages.
    breakdown: Option<Breakdown>,
}

async fn measure(
    me: &Path,
    dir: &Path,
    budget: Duration,
    concurrency: u32,
    breakdown: bool,
) -> anyhow::Result<Figures> {
    // Raw baselines first, before any host reaps children in this process.
    let worker_bin = trivial_binary()?;
    let raw_spawn_ms = tokio::task::spawn_blocking({
        let me = me.to_path_buf();
        move || raw_spawn_ready(&me, 10)
    })
    .await??;
    let raw_per_s = tokio::task::spawn_blocking({
        let w = worker_bin.clone();
        move || raw_spawn_rate(&w, concurrency as usize, budget)
    })
    .await??;
    let naive_per_s = tokio::task::spawn_blocking({
        let w = worker_bin.clone();
        move || naive_isolated_rate(&w, concurrency as usize, budget)
    })
    .await??;
    let bwrap = tokio::task::spawn_blocking({
        let w = worker_bin.clone();
        move || bwrap_rate(&w, concurrency as usize, budget)
    })
    .await?;
    // With --breakdown, each phase's proc agent writes its stage log here.
    let stage_log = |mode: &str| breakdown.then(|| dir.join(format!("stages-{mode}.jsonl")));

    let ca = MeshCa::generate("bench", Duration::from_secs(3600))?;
    let node_id = ca.issue(Role::Host, "bench-host", &[], Duration::from_secs(3600))?;
    // The bench submits to the agent directly, as the orchestrator does: only an orchestrator
    // certificate reaches a proc agent (HST-17).
    let client_id = ca.issue(
        Role::Orchestrator,
        "bench-client",
        &[],
        Duration::from_secs(3600),
    )?;
    let manager = OsProcManager::new(None, None)?;
    // The non-isolated runner first (isolation = none: plain processes, still in cgroups).
    let mut config = HostConfig::ephemeral(dir.join("host"), node_id.clone());
    config.isolation = IsolationMode::None;
    // The runner proc below holds every slot; probes take one beside it (HST-25).
    config.capacity = Some(concurrency + 1);
    let host = Host::start(config, Arc::new(manager)).await?;

    // Spawn → ready, a few times.
    let mut samples = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        let handle = host
            .spawn(SpawnSpec {
                name: format!("probe-{i}"),
                config: ProcConfig {
                    max_actions: Some(1),
                    ..ProcConfig::default()
                },
            })
            .await?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
        handle.terminate(Duration::from_secs(5), "bench").await?;
    }
    let spawn_ready_ms = median(&mut samples);

    let none_log = stage_log("none");
    let none = runner_rate(
        &host,
        dir,
        &worker_bin,
        client_id.clone(),
        budget,
        concurrency,
        none_log.as_deref(),
    )
    .await?;
    let (agent, client) = (none.agent, none.client);
    // Mux RTT: the same small ask to the proc's agent and to the host's service actor.
    let host_actor: RemoteRef<HostRequest> =
        client.remote_ref(host.addr().proc(SERVICE_PROC)?.actor("host")?);
    let rtt = |proc: bool| {
        let agent = agent.clone();
        let host_actor = host_actor.clone();
        async move {
            let mut samples = Vec::new();
            let deadline = Instant::now() + budget / 2;
            let mut i = 0;
            while Instant::now() < deadline || i < 200 {
                let t = Instant::now();
                if proc {
                    let r = agent.ask(AgentRequest::Capacity, T).await?;
                    anyhow::ensure!(matches!(r, Ok(AgentReply::Capacity(_))), "{r:?}");
                } else {
                    let r = host_actor.ask(HostRequest::ListProcs, T).await?;
                    anyhow::ensure!(matches!(r, Ok(HostReply::Procs(_))), "{r:?}");
                }
                if i >= 100 {
                    samples.push(t.elapsed().as_secs_f64() * 1e6);
                }
                i += 1;
            }
            anyhow::Ok(median(&mut samples))
        }
    };
    let service_rtt_us = rtt(false).await?;
    let proc_rtt_us = rtt(true).await?;

    client.shutdown(Duration::from_millis(100)).await;
    // The proc agent has written every attempt's stage line once it is stopped.
    host.shutdown(Duration::from_secs(5)).await;

    // The isolated runner: the same load on a host in `namespaces` mode.
    let mut config = HostConfig::ephemeral(dir.join("host-isolated"), node_id);
    config.isolation = IsolationMode::Namespaces;
    config.capacity = Some(concurrency);
    let host = Host::start(config, Arc::new(OsProcManager::new(None, None)?)).await?;
    if let Some(summary) = host.info().isolation {
        if summary.mode != IsolationMode::Namespaces {
            eprintln!(
                "warning: the isolated runner phase runs with isolation {} (the kernel refused \
                 namespaces)",
                summary.mode
            );
        }
    }
    let namespaces_log = stage_log("namespaces");
    let isolated = runner_rate(
        &host,
        dir,
        &worker_bin,
        client_id,
        budget,
        concurrency,
        namespaces_log.as_deref(),
    )
    .await?;
    isolated.client.shutdown(Duration::from_millis(100)).await;
    host.shutdown(Duration::from_secs(5)).await;

    let breakdown = match (none_log, namespaces_log) {
        (Some(none_log), Some(namespaces_log)) => Some(Breakdown {
            none: Stages::read(&none_log, none.warm_up)?,
            namespaces: Stages::read(&namespaces_log, isolated.warm_up)?,
        }),
        _ => None,
    };
    Ok(Figures {
        isolated_per_s: isolated.per_s,
        naive_per_s,
        spawn_ready_ms,
        raw_spawn_ms,
        runner_per_s: none.per_s,
        raw_per_s,
        proc_rtt_us,
        service_rtt_us,
        bwrap,
        breakdown,
    })
}

/// What one runner phase measured.
struct RunnerRun {
    /// Accepted actions per second after the warm-up.
    per_s: f64,
    /// The last LSN of the warm-up.
    warm_up: u64,
    /// The proc's agent.
    agent: RemoteRef<AgentRequest>,
    /// The client node that drove it.
    client: procmesh_transport::Node,
}

/// Spawns a proc agent of `concurrency` slots on `host` (writing its stage log to `stage_log`,
/// if given) and keeps it full of trivial actions after a warm-up.
async fn runner_rate(
    host: &Host,
    dir: &Path,
    worker_bin: &Path,
    client_id: procmesh_transport::TlsIdentity,
    budget: Duration,
    concurrency: u32,
    stage_log: Option<&Path>,
) -> anyhow::Result<RunnerRun> {
    // Host::spawn is code in this process, not a request: its env is not filtered.
    let env = stage_log
        .map(|path| (ENV_STAGE_LOG.to_owned(), path.display().to_string()))
        .into_iter()
        .collect();
    let spec = SpawnSpec {
        name: "runner".into(),
        config: ProcConfig {
            max_actions: Some(concurrency),
            env,
            ..ProcConfig::default()
        },
    };
    let proc = host.spawn(spec).await?;
    let ready = proc.ready().await?;

    let store = BlobStore::open(
        dir.join(format!("client-blobs-{}", host.addr()).replace([':', '!', '/'], "-")),
    )?;
    let (hash, size) = store.put_file(worker_bin).await?;
    let worker = WorkerDescriptor {
        executable: "true".into(),
        files: vec![WorkerFile {
            path: "true".into(),
            hash,
            size,
            executable: true,
        }],
        directories: Vec::new(),
        env: BTreeMap::new(),
        host_program: None,
    };
    let worker_id: WorkerId = worker.id();
    let client = NodeBuilder::new("bench")
        .quic("127.0.0.1:0".parse()?, client_id)
        .blob_store(store)
        .start()
        .await?;
    let slots = Arc::new(Semaphore::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sink = Sink {
        worker,
        slots: slots.clone(),
        failed: failed.clone(),
    };
    let report_to = client.expose(
        "orchestrator",
        Sink::spawn_with_mailbox(sink, kameo::mailbox::unbounded()),
    )?;
    let agent: RemoteRef<AgentRequest> = client.remote_ref(ready.agent.clone());

    let load = Load {
        agent: agent.clone(),
        report_to,
        worker_id,
        slots: slots.clone(),
        concurrency,
    };
    // Warm-up: the worker is fetched and cached by the first actions.
    let mut lsn = 0u64;
    load.drive(&mut lsn, Duration::from_millis(500)).await?;
    let warm_up = lsn;
    let per_s = load.drive(&mut lsn, budget).await?;
    let failures = failed.load(std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(failures == 0, "{failures} bench actions did not complete");

    Ok(RunnerRun {
        per_s,
        warm_up,
        agent,
        client,
    })
}

/// Keeps a proc agent's runner full of trivial actions.
struct Load {
    agent: RemoteRef<AgentRequest>,
    report_to: procmesh_protocol::ActorId,
    worker_id: WorkerId,
    slots: Arc<Semaphore>,
    concurrency: u32,
}

impl Load {
    /// Submits for `limit`, never more than `concurrency` at once; returns accepted actions/s
    /// once every one has finished.
    async fn drive(&self, lsn: &mut u64, limit: Duration) -> anyhow::Result<f64> {
        self.slots.add_permits(self.concurrency as usize);
        let deadline = Instant::now() + limit;
        let t = Instant::now();
        let mut done = 0u64;
        while Instant::now() < deadline {
            self.slots.acquire().await?.forget();
            *lsn += 1;
            let spec = ActionSpec {
                lsn: Lsn(*lsn),
                attempt: Attempt::FIRST,
                priority: 0,
                queue: 0,
                action: ActionDef::new(self.worker_id),
            };
            let req = AgentRequest::Submit {
                action: spec,
                report_to: self.report_to.clone(),
            };
            match self.agent.ask(req, T).await? {
                Ok(AgentReply::Accepted(_)) => done += 1,
                // The final transition is sent just before the runner frees the slot: retry.
                Err(AgentError::NoCapacity { .. }) => self.slots.add_permits(1),
                other => anyhow::bail!("submit refused: {other:?}"),
            }
        }
        // Every action in flight ends (each returns its permit).
        let all = tokio::time::timeout(T, self.slots.acquire_many(self.concurrency)).await??;
        all.forget();
        Ok(done as f64 / t.elapsed().as_secs_f64())
    }
}
