//! `procmesh orchestrator`: the fleet's orchestrator. It runs as every node does (`node`): its
//! TOML file < the environment < flags, signals handled from the start. Once its journal is
//! recovered and it listens, it prints `admin http://<addr>/` (unless `--admin-listen off`) and
//! one line `ready <actor id>` (or a JSON object with `--json`), and serves until SIGTERM or
//! SIGINT, when it ends every subscription and exits. A signal during recovery is kept and
//! stops it once recovery is done.

use std::path::PathBuf;

use anyhow::Context as _;
use procmesh_orchestrator::{AdminSlot, Orchestrator, OrchestratorConfig};
use procmesh_transport::TlsIdentity;

use super::node::{self, NodeArgs, Signals};

/// Flags of `procmesh orchestrator`; each also reads an environment variable.
#[derive(Debug, clap::Args)]
pub struct OrchestratorArgs {
    /// TOML configuration file (fields of OrchestratorConfig; see deploy/orchestrator.toml).
    #[arg(long, env = "PROCMESH_ORCHESTRATOR_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
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
}

impl OrchestratorArgs {
    /// The configuration: file < environment < flags (the common part through
    /// [`NodeArgs::settings`]), validated.
    pub fn config(&self) -> anyhow::Result<OrchestratorConfig> {
        let mut config: OrchestratorConfig = self.node.settings(self.config.as_deref())?;
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
    let config = args.config()?;
    let identity = identity(&config)?;
    node::run("orchestrator", |signals| {
        serve(args.node.json, config, identity, signals)
    })
}

async fn serve(
    json: bool,
    config: OrchestratorConfig,
    identity: TlsIdentity,
    mut signals: Signals,
) -> anyhow::Result<()> {
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
    // A signal during recovery is kept (Signals) and stops the orchestrator once it serves:
    // recovery is not cut off halfway.
    let orchestrator = Orchestrator::start_with_admin(config, identity, &slot)
        .await
        .with_context(|| format!("starting the orchestrator on {listen}"))?;
    let recovered = orchestrator.recovered();
    let mut fields = serde_json::Map::new();
    fields.insert("addr".into(), orchestrator.addr().to_string().into());
    fields.insert(
        "recovered".into(),
        serde_json::json!({
            "snapshot": recovered.snapshot,
            "records": recovered.records,
            "actions": recovered.actions,
        }),
    );
    node::announce_ready(
        json,
        &orchestrator.actor_id().to_string(),
        admin.as_ref().map(|a| a.addr()),
        fields,
    );
    tokio::select! {
        _ = signals.next() => {}
        _ = orchestrator.stopped() => {
            // ORC-30: only a failed journal stops the actor on its own.
            orchestrator.shutdown().await;
            anyhow::bail!("the orchestrator stopped: its journal cannot commit (see the log)");
        }
    }
    node::announce_stopping("stopping");
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
        let config = node::parse_file::<OrchestratorConfig>(include_str!(
            "../../../deploy/orchestrator.toml"
        ))
        .unwrap();
        assert_eq!(config.listen.port(), 7600);
        assert_eq!(config.lost_after_ms, 5000);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_a_clear_error() {
        let err = node::parse_file::<OrchestratorConfig>("lisen = \"0.0.0.0:7600\"").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("lisen"), "{text}");
        assert!(text.contains("unknown field"), "{text}");
    }

    #[test]
    fn a_configuration_file_parses_and_flags_win() {
        let config = node::parse_file::<OrchestratorConfig>(
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
            node: NodeArgs {
                tls_dir: Some(PathBuf::from("/etc/procmesh/tls")),
                ..NodeArgs::default()
            },
            heartbeat_interval_ms: None,
            lost_after_ms: Some(150),
            durability: None,
            no_journal: false,
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
