//! `procmesh orchestrator`: the fleet's orchestrator. Configuration comes from a TOML file, then
//! the environment, then flags (each overriding the one before). Once it listens it prints one
//! line, `ready <actor id>` (or a JSON object with `--json`), and serves until SIGTERM or SIGINT,
//! when it ends every subscription and exits.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use procmesh_orchestrator::{AdminSlot, Orchestrator, OrchestratorConfig};
use procmesh_protocol::HostAddr;
use procmesh_transport::TlsIdentity;

/// Flags of `procmesh orchestrator`; each also reads an environment variable.
#[derive(Debug, clap::Args)]
pub struct OrchestratorArgs {
    /// TOML configuration file (fields of OrchestratorConfig).
    #[arg(long, env = "PROCMESH_ORCHESTRATOR_CONFIG")]
    config: Option<PathBuf>,
    /// QUIC frontend bind address, e.g. 0.0.0.0:7600.
    #[arg(long, env = "PROCMESH_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address hosts and clients reach the orchestrator at, e.g. quic!10.0.0.1:7600.
    #[arg(long, env = "PROCMESH_ADVERTISE")]
    advertise: Option<HostAddr>,
    /// Directory with ca.pem, cert.pem, key.pem (from `procmesh certs`).
    #[arg(long, env = "PROCMESH_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// State directory (the blob store lives in its blobs/).
    #[arg(long, env = "PROCMESH_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// How often hosts heartbeat, in milliseconds.
    #[arg(long, env = "PROCMESH_HEARTBEAT_INTERVAL_MS")]
    heartbeat_interval_ms: Option<u64>,
    /// Silence after which a host is declared lost, in milliseconds.
    #[arg(long, env = "PROCMESH_LOST_AFTER_MS")]
    lost_after_ms: Option<u64>,
    /// When a journal commit is durable: fsync (default) or none (a machine crash may lose the
    /// last commits; a process crash loses nothing).
    #[arg(long, env = "PROCMESH_DURABILITY")]
    durability: Option<procmesh_orchestrator::Durability>,
    /// Keep the state in memory only: a restart forgets every queue (benchmarks).
    #[arg(long)]
    no_journal: bool,
    /// File of revoked certificate serials (one hex serial per line), re-read when it changes.
    #[arg(long, env = "PROCMESH_REVOKED")]
    revoked: Option<PathBuf>,
    #[command(flatten)]
    admin: super::admin::AdminArgs,
    /// Print the ready line as JSON.
    #[arg(long)]
    json: bool,
}

/// Parses an orchestrator configuration file's text; unknown fields are an error naming them.
fn parse_config(text: &str) -> anyhow::Result<OrchestratorConfig> {
    Ok(toml::from_str::<OrchestratorConfig>(text)?)
}

impl OrchestratorArgs {
    /// The configuration: file < environment < flags (clap folds environment into flags),
    /// validated.
    pub fn config(&self) -> anyhow::Result<OrchestratorConfig> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                parse_config(&text).with_context(|| {
                    format!("bad orchestrator configuration in {}", path.display())
                })?
            }
            None => OrchestratorConfig::default(),
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
        if let Some(v) = self.heartbeat_interval_ms {
            config.heartbeat_interval_ms = v;
        }
        if let Some(v) = self.lost_after_ms {
            config.lost_after_ms = v;
        }
        if let Some(v) = self.durability {
            config.durability = v;
        }
        if self.no_journal {
            config.journal = false;
        }
        if let Some(v) = &self.revoked {
            config.revoked = Some(v.clone());
        }
        if let Some(v) = &self.admin.admin_listen {
            config.admin_listen = v.clone();
        }
        if let Some(v) = &self.admin.admin_token_file {
            config.admin_token_file = Some(v.clone());
        }
        config
            .validate()
            .context("bad orchestrator configuration")?;
        Ok(config)
    }
}

/// Loads the TLS identity named by the configuration.
fn identity(config: &OrchestratorConfig) -> anyhow::Result<TlsIdentity> {
    let dir = config
        .tls_dir
        .as_ref()
        .context("no TLS identity: pass --tls-dir (create one with `procmesh certs`)")?;
    let identity = TlsIdentity::load(dir).with_context(|| {
        format!(
            "cannot load the TLS identity in {} (create one with `procmesh certs`)",
            dir.display()
        )
    })?;
    let role = identity
        .identity()
        .with_context(|| format!("the certificate in {}", dir.display()))?
        .role;
    anyhow::ensure!(
        role == procmesh_transport::Role::Orchestrator,
        "the certificate in {} is a {role} certificate; the orchestrator needs one issued with \
         `procmesh certs issue --role orchestrator`",
        dir.display()
    );
    Ok(identity)
}

/// Runs `procmesh orchestrator` until SIGTERM or SIGINT.
pub fn run(args: OrchestratorArgs) -> anyhow::Result<()> {
    // Before any thread (see notify::take_socket).
    crate::notify::take_socket();
    let config = args.config()?;
    let identity = identity(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("orchestrator")
        .build()?;
    runtime.block_on(serve(args.json, config, identity))
}

async fn serve(
    json: bool,
    config: OrchestratorConfig,
    identity: TlsIdentity,
) -> anyhow::Result<()> {
    procmesh_transport::install_crypto_provider();
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before the ready line, so a supervisor's signal right after it is not lost.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let listen = config.listen;
    // The admin listener comes first: /readyz says 503 while the journal is recovered.
    let slot = AdminSlot::new();
    let admin = super::admin::start(
        &config.admin_listen,
        config.admin_token_file.as_deref(),
        slot.router(),
        slot.refused_counter(),
    )
    .await?;
    let orchestrator = Orchestrator::start_with_admin(config, identity, &slot)
        .await
        .with_context(|| format!("starting the orchestrator on {listen}"))?;
    let recovered = orchestrator.recovered();
    let admin_addr = admin.as_ref().map(|a| a.addr().to_string());
    if json {
        let line = serde_json::json!({
            "ready": orchestrator.actor_id().to_string(),
            "addr": orchestrator.addr().to_string(),
            "admin": admin_addr,
            "recovered": {
                "snapshot": recovered.snapshot,
                "records": recovered.records,
                "actions": recovered.actions,
            },
        });
        println!("{line}");
    } else {
        if let Some(addr) = &admin_addr {
            println!("admin http://{addr}/");
        }
        println!("ready {}", orchestrator.actor_id());
    }
    {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
    // After the ready line: systemd (Type=notify) starts dependants only now.
    crate::notify::notify_or_warn(&format!(
        "READY=1\nSTATUS=ready {}",
        orchestrator.actor_id()
    ));
    tracing::info!(actor = %orchestrator.actor_id(), "orchestrator ready");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = orchestrator.stopped() => {
            // ORC-30: only a failed journal stops the actor on its own.
            orchestrator.shutdown().await;
            anyhow::bail!("the orchestrator stopped: its journal cannot commit (see the log)");
        }
    }
    crate::notify::notify_or_warn("STOPPING=1\nSTATUS=stopping");
    tracing::info!("stopping");
    orchestrator.shutdown().await;
    if let Some(admin) = admin {
        admin.shutdown().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_configuration_parses_and_validates() {
        let config = parse_config(include_str!("../../../deploy/orchestrator.toml")).unwrap();
        assert_eq!(config.listen.port(), 7600);
        assert_eq!(config.lost_after_ms, 5000);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_a_clear_error() {
        let err = parse_config("lisen = \"0.0.0.0:7600\"").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("lisen"), "{text}");
        assert!(text.contains("unknown field"), "{text}");
    }

    #[test]
    fn a_configuration_file_parses_and_flags_win() {
        let config = parse_config(
            "listen = \"0.0.0.0:7600\"\nadvertise = \"quic!10.0.0.1:7600\"\nlost_after_ms = 9000\n",
        )
        .unwrap();
        assert_eq!(config.listen.port(), 7600);
        assert_eq!(config.lost_after_ms, 9_000);
        assert_eq!(
            config.heartbeat_interval_ms, 1_000,
            "defaults fill the rest"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orchestrator.toml");
        std::fs::write(&path, "heartbeat_interval_ms = 200\nlost_after_ms = 1000\n").unwrap();
        let args = OrchestratorArgs {
            config: Some(path),
            listen: None,
            advertise: None,
            tls_dir: None,
            state_dir: None,
            heartbeat_interval_ms: None,
            lost_after_ms: Some(150),
            durability: None,
            no_journal: false,
            revoked: None,
            admin: Default::default(),
            json: false,
        };
        let err = format!("{:#}", args.config().unwrap_err());
        assert!(err.contains("lost_after_ms (150)"), "{err}");
    }

    #[test]
    fn a_missing_identity_says_how_to_make_one() {
        let err = identity(&OrchestratorConfig::default()).unwrap_err();
        assert!(format!("{err:#}").contains("procmesh certs"), "{err:#}");
        let config = OrchestratorConfig {
            tls_dir: Some(PathBuf::from("/nonexistent/tls")),
            ..OrchestratorConfig::default()
        };
        let err = identity(&config).unwrap_err();
        assert!(format!("{err:#}").contains("procmesh certs"), "{err:#}");
    }
}
