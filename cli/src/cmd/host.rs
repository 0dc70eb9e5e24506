//! `procmesh host`: the per-machine agent. Configuration comes from a TOML file, then the
//! environment, then flags (each overriding the one before). Once the frontend listens, the
//! requested procs are ready and — with an orchestrator — the orchestrator has acknowledged a
//! heartbeat offering them (HST-24), it prints `admin http://<addr>/` (unless `--admin-listen
//! off`) and one line `ready <frontend address>` (or a JSON object with `--json`), and serves
//! until SIGTERM or SIGINT. SIGTERM drains first: no new work, running actions finish within
//! `drain_grace_ms` (HST-27); then, as on SIGINT, it stops its procs and exits. Signals are
//! handled from the start: one that arrives before `ready` stops the host as well.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use procmesh_host::{Host, HostConfig, OsProcManager};
use procmesh_protocol::messages::host::{ProcConfig, SpawnSpec};
use procmesh_protocol::{ActorId, HostAddr};

/// Flags of `procmesh host`; each also reads an environment variable.
#[derive(Debug, clap::Args)]
pub struct HostArgs {
    /// TOML configuration file (fields of HostConfig; see deploy/host.toml).
    #[arg(long, env = "PROCMESH_HOST_CONFIG")]
    config: Option<PathBuf>,
    /// QUIC frontend bind address, e.g. 0.0.0.0:7700.
    #[arg(long, env = "PROCMESH_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address other nodes reach this host at, e.g. quic!10.0.0.5:7700.
    #[arg(long, env = "PROCMESH_ADVERTISE")]
    advertise: Option<HostAddr>,
    /// Directory with ca.pem, cert.pem, key.pem (from `procmesh certs`).
    #[arg(long, env = "PROCMESH_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// State directory (backend socket, blob store, worker cache, proc work dirs).
    #[arg(long, env = "PROCMESH_STATE_DIR")]
    state_dir: Option<PathBuf>,
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
    /// File of revoked certificate serials (one hex serial per line), re-read when it changes.
    #[arg(long, env = "PROCMESH_REVOKED")]
    revoked: Option<PathBuf>,
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
    #[command(flatten)]
    admin: super::admin::AdminArgs,
    /// Print the ready line as JSON.
    #[arg(long)]
    json: bool,
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
    /// The configuration: file < environment < flags (clap folds environment into flags).
    pub fn config(&self) -> anyhow::Result<HostConfig> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str::<HostConfig>(&text)
                    .with_context(|| format!("bad host configuration in {}", path.display()))?
            }
            None => HostConfig::default(),
        };
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = &self.advertise {
            config.advertise = Some(v.clone());
        }
        if let Some(v) = &self.tls_dir {
            config.tls_dir = Some(v.clone());
        }
        if let Some(v) = &self.state_dir {
            config.state_dir = v.clone();
        }
        // Procs get addresses inside the state directory: they must not depend on our cwd.
        config.state_dir = std::path::absolute(&config.state_dir)
            .with_context(|| format!("state directory {}", config.state_dir.display()))?;
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
        if let Some(v) = &self.revoked {
            config.revoked = Some(v.clone());
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
        if let Some(v) = &self.admin.admin_listen {
            config.admin_listen = v.clone();
        }
        if let Some(v) = &self.admin.admin_token_file {
            config.admin_token_file = Some(v.clone());
        }
        anyhow::ensure!(
            config.tls_dir.is_some(),
            "no TLS identity: pass --tls-dir (create one with `procmesh certs`)"
        );
        Ok(config)
    }
}

pub fn run(args: HostArgs) -> anyhow::Result<()> {
    // Before any thread (see notify::take_socket): the proc agents must not inherit it.
    crate::notify::take_socket();
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("host")
        .build()?;
    runtime.block_on(serve(args, config, plan.per_proc))
}

async fn serve(args: HostArgs, config: HostConfig, slots: Vec<u32>) -> anyhow::Result<()> {
    // Before anything starts, so that a supervisor's signal is never lost.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
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
    // has acknowledged a heartbeat offering them.
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
            _ = term.recv() => return stop(&host, grace, admin).await,
            _ = int.recv() => return stop(&host, grace, admin).await,
        }
    }
    let admin_addr = admin.as_ref().map(|a| a.addr().to_string());
    if args.json {
        let line = serde_json::json!({
            "ready": host.addr().to_string(),
            "procs": procs,
            "admin": admin_addr,
        });
        println!("{line}");
    } else {
        if let Some(addr) = &admin_addr {
            println!("admin http://{addr}/");
        }
        println!("ready {}", host.addr());
    }
    {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
    // After the ready line: systemd (Type=notify) starts dependants only now.
    crate::notify::notify_or_warn(&format!("READY=1\nSTATUS=ready {}", host.addr()));
    tracing::info!(addr = %host.addr(), procs = procs.len(), "host ready");

    // SIGTERM (a supervisor stopping the node) drains first (HST-27); SIGINT (an operator's
    // Ctrl-C) and a second signal during the drain stop at once.
    let drain = tokio::select! {
        _ = term.recv() => true,
        _ = int.recv() => false,
    };
    if drain && !drain_grace.is_zero() {
        crate::notify::notify_or_warn("STOPPING=1\nSTATUS=draining");
        tracing::info!(grace = ?drain_grace, "draining: no new work, letting running actions finish");
        tokio::select! {
            outcome = host.drain(drain_grace) => {
                if outcome.still_running > 0 {
                    tracing::warn!(?outcome, "drain grace over: cancelling what still runs");
                }
            }
            _ = term.recv() => tracing::warn!("second SIGTERM: stopping without waiting"),
            _ = int.recv() => tracing::warn!("SIGINT: stopping without waiting"),
        }
    }
    stop(&host, grace, admin).await
}

/// Stops the procs, then the admin listener.
async fn stop(
    host: &Host,
    grace: std::time::Duration,
    admin: Option<procmesh_admin::AdminServer>,
) -> anyhow::Result<()> {
    crate::notify::notify_or_warn("STOPPING=1\nSTATUS=stopping");
    tracing::info!("stopping: terminating procs");
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
        let config: HostConfig = toml::from_str(include_str!("../../../deploy/host.toml")).unwrap();
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
