//! `procmesh host`: the per-machine agent. It runs as every node does (`node`): its TOML file <
//! the environment < flags, signals handled from the start. Once the frontend listens, the
//! requested procs are ready and — with an orchestrator — the orchestrator has acknowledged a
//! heartbeat offering them (HST-24), it prints `admin http://<addr>/` (unless `--admin-listen
//! off`) and one line `ready <frontend address>` (or a JSON object with `--json`), and serves
//! until SIGTERM or SIGINT. SIGTERM drains first: no new work, running actions finish within
//! `drain_grace_ms` (HST-27); then, as on SIGINT, it stops its procs and exits. Signals are
//! handled from the start: one that arrives before `ready` stops the host as well.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use procmesh_host::{Host, HostConfig, OsProcManager};
use procmesh_protocol::messages::host::{ProcConfig, SpawnSpec};
use procmesh_protocol::ActorId;

use super::node::{self, NodeArgs, Signals, Stop};

/// Flags of `procmesh host`; each also reads an environment variable.
#[derive(Debug, clap::Args)]
pub struct HostArgs {
    /// TOML configuration file (fields of HostConfig; see deploy/host.toml).
    #[arg(long, env = "PROCMESH_HOST_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
    /// Orchestrator service actor to register with, e.g. quic!10.0.0.1:7600,service.orchestrator.
    #[arg(long, env = "PROCMESH_ORCHESTRATOR")]
    orchestrator: Option<ActorId>,
    /// A label announced at registration, KEY=VALUE; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Most actions the host runs at once, across all its procs (default: logical CPUs). The
    /// procs it starts share it; their --max-actions may not add up to more.
    #[arg(long, env = "PROCMESH_CAPACITY")]
    capacity: Option<u32>,
    /// On SIGTERM, how long running actions may finish (no new work is taken) before the
    /// procs are terminated, in milliseconds; 0: no drain (default 30000).
    #[arg(long, env = "PROCMESH_DRAIN_GRACE_MS")]
    drain_grace_ms: Option<u64>,
    /// Proc agents to start at once, named proc-1 … proc-N.
    #[arg(long, env = "PROCMESH_PROCS", default_value_t = 0)]
    procs: u32,
    /// Most actions each started proc runs at once (default: an even share of --capacity).
    #[arg(long, env = "PROCMESH_MAX_ACTIONS")]
    max_actions: Option<u32>,
    /// This node's name, when its certificate names none (a fleet-wide host certificate);
    /// default: the machine's hostname. Bound to the node secret in the state dir at its
    /// first registration.
    #[arg(long, env = "PROCMESH_NODE_NAME")]
    node_name: Option<String>,
    /// How actions are isolated: namespaces (default) or none (an explicit opt-out).
    #[arg(long, env = "PROCMESH_ISOLATION")]
    isolation: Option<procmesh_protocol::messages::host::IsolationMode>,
    /// A directory whose executables workers may run as host programs (e.g. /usr/bin);
    /// repeatable.
    #[arg(long = "allow-host-programs", value_name = "DIR")]
    allowed_host_programs: Vec<PathBuf>,
    /// Most processes an action may have at once (its cgroup's pids limit).
    #[arg(long, env = "PROCMESH_ACTION_PIDS")]
    action_pids: Option<u64>,
    /// Memory limit of an action whose hints name none, e.g. 2G (default: half the machine).
    #[arg(long, env = "PROCMESH_ACTION_MEMORY", value_parser = crate::cmd::exec::parse_size)]
    action_memory: Option<u64>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))?;
    if k.is_empty() {
        return Err(format!("empty label key in {text:?}"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

impl HostArgs {
    /// The configuration: file < environment < flags (the common part through
    /// [`NodeArgs::settings`]).
    pub fn config(&self) -> anyhow::Result<HostConfig> {
        let mut config: HostConfig = self.node.settings(self.config.as_deref())?;
        if let Some(v) = &self.orchestrator {
            config.orchestrator = Some(v.clone());
        }
        if !self.labels.is_empty() {
            config.labels.extend(self.labels.iter().cloned());
        }
        if let Some(v) = self.capacity {
            config.capacity = Some(v);
        }
        if let Some(v) = self.drain_grace_ms {
            config.drain_grace_ms = v;
        }
        if let Some(v) = &self.node_name {
            config.node_name = Some(v.clone());
        }
        if let Some(v) = self.isolation {
            config.isolation = v;
        }
        if !self.allowed_host_programs.is_empty() {
            config
                .allowed_host_programs
                .extend(self.allowed_host_programs.iter().cloned());
        }
        if let Some(v) = self.action_pids {
            config.action_pids = v;
        }
        if let Some(v) = self.action_memory {
            config.action_memory_bytes = Some(v);
        }
        Ok(config)
    }
}

pub fn run(args: HostArgs) -> anyhow::Result<()> {
    let mut config = args.config()?;
    // HST-26: the starting procs share the capacity; too many slots is refused up front.
    let plan = procmesh_host::slots::plan(
        config.capacity,
        args.procs,
        args.max_actions,
        procmesh_host::system::logical_cpus(),
    )
    .map_err(anyhow::Error::msg)?;
    config.capacity = Some(plan.capacity);
    let json = args.node.json;
    node::run("host", |signals| {
        serve(json, config, plan.per_proc, signals)
    })
}

async fn serve(
    json: bool,
    config: HostConfig,
    slots: Vec<u32>,
    mut signals: Signals,
) -> anyhow::Result<()> {
    let manager = OsProcManager::new(config.proc_binary.clone(), config.allowed_dir.clone())
        .context("proc manager")?;
    let grace = config.terminate_grace();
    let drain_grace = config.drain_grace();
    let (admin_listen, admin_token) =
        (config.admin_listen.clone(), config.admin_token_file.clone());
    let host = Host::start(config, Arc::new(manager))
        .await
        .context("starting the host")?;
    // Before the procs: /readyz answers 503 until they are ready and the host is registered.
    let refused = prometheus_client::metrics::counter::Counter::default();
    let admin = super::admin::start(
        &admin_listen,
        admin_token.as_deref(),
        host.admin_router(refused.clone()),
        refused,
    )
    .await?;
    let mut procs = Vec::new();
    for (i, slots) in (1..).zip(slots) {
        let spec = SpawnSpec {
            name: format!("proc-{i}"),
            config: ProcConfig {
                max_actions: Some(slots),
                ..ProcConfig::default()
            },
        };
        let handle = host
            .spawn(spec)
            .await
            .with_context(|| format!("starting proc-{i}"))?;
        procs.push(handle.proc_id().to_string());
    }
    // HST-24: `ready` once every proc is ready and, with an orchestrator, the orchestrator
    // has acknowledged a heartbeat offering them. A signal before that stops the host.
    host.heartbeat_now();
    let began = std::time::Instant::now();
    let mut warned = began;
    loop {
        let readiness = host.readiness();
        if readiness.ready {
            break;
        }
        if warned.elapsed() >= std::time::Duration::from_secs(10) {
            warned = std::time::Instant::now();
            tracing::warn!(
                waited_s = began.elapsed().as_secs(),
                reasons = ?readiness.reasons,
                "not ready yet"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(25)) => {}
            stop = signals.next() => {
                tracing::info!(?stop, "stopped before ready");
                return shut_down(&host, grace, admin).await;
            }
        }
    }
    let mut fields = serde_json::Map::new();
    fields.insert("procs".into(), procs.into());
    let addr = host.addr().to_string();
    node::announce_ready(json, &addr, admin.as_ref().map(|a| a.addr()), fields);

    // SIGTERM (a supervisor stopping the node) drains first (HST-27); SIGINT (an operator's
    // Ctrl-C) and a second signal during the drain stop at once.
    if signals.next().await == Stop::Term && !drain_grace.is_zero() {
        node::announce_stopping("draining");
        tokio::select! {
            outcome = host.drain(drain_grace) => {
                if outcome.still_running > 0 {
                    tracing::warn!(?outcome, "drain grace over: cancelling what still runs");
                }
            }
            stop = signals.next() => tracing::warn!(?stop, "second signal: stopping without waiting"),
        }
    }
    shut_down(&host, grace, admin).await
}

/// Stops the procs, then the admin listener.
async fn shut_down(
    host: &Host,
    grace: std::time::Duration,
    admin: Option<procmesh_admin::AdminServer>,
) -> anyhow::Result<()> {
    node::announce_stopping("stopping");
    let outcome = host.shutdown(grace).await;
    if let Some(admin) = admin {
        admin.shutdown().await;
    }
    let failed: BTreeMap<_, _> = outcome
        .failed
        .iter()
        .map(|f| (f.name.clone(), f.error.to_string()))
        .collect();
    anyhow::ensure!(failed.is_empty(), "procs that did not stop: {failed:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_configuration_parses() {
        let config: HostConfig =
            node::parse_file(include_str!("../../../deploy/host.toml")).unwrap();
        assert_eq!(config.listen.port(), 7700);
        assert_eq!(config.labels.get("zone").map(String::as_str), Some("eu-1"));
    }

    #[test]
    fn unknown_fields_and_bad_labels_are_clear_errors() {
        let err = toml::from_str::<HostConfig>("lisen = \"0.0.0.0:1\"").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        assert!(parse_label("novalue").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_label("=v").is_err());
    }
}
