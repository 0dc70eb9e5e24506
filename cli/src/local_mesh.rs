//! A whole mesh inside this process, on loopback: an ephemeral CA, an orchestrator, one host
//! with OS-process proc agents, and a connected client — what `procmesh demo` runs and
//! `procmesh bench mesh` measures.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use procmesh_client::{Client, ClientConfig};
use procmesh_host::{Host, HostConfig, OsProcManager};
use procmesh_orchestrator::{Orchestrator, OrchestratorConfig};
use procmesh_protocol::messages::host::{ProcConfig, SpawnSpec};
use procmesh_transport::{MeshCa, Role, TlsIdentity};

/// An ephemeral mesh CA's identities, one of each role, saved under
/// `<dir>/certs/{orchestrator,host,client,operator}`.
pub struct Identities {
    pub orchestrator: TlsIdentity,
    /// A per-node host certificate naming node `host-1`.
    pub host: TlsIdentity,
    pub client: TlsIdentity,
    pub dir: PathBuf,
}

impl Identities {
    /// A fresh CA named `mesh`, valid for `valid`, and one identity of each role.
    pub fn generate(dir: &Path, mesh: &str, valid: Duration) -> anyhow::Result<Identities> {
        let ca = MeshCa::generate(mesh, valid).context("creating the mesh CA")?;
        let orchestrator = ca.issue(Role::Orchestrator, "orchestrator", &[], valid)?;
        let host = ca.issue(Role::Host, "host-1", &[], valid)?;
        let client = ca.issue(Role::Client, "", &[], valid)?;
        let operator = ca.issue(Role::Operator, "", &[], valid)?;
        // The CA's key is not kept: an ephemeral mesh issues nothing more.
        let dir = dir.join("certs");
        orchestrator.save(&dir.join("orchestrator"))?;
        host.save(&dir.join("host"))?;
        client.save(&dir.join("client"))?;
        operator.save(&dir.join("operator"))?;
        Ok(Identities {
            orchestrator,
            host,
            client,
            dir,
        })
    }

    /// Where the orchestrator identity is saved (a `--tls-dir`).
    pub fn orchestrator_dir(&self) -> PathBuf {
        self.dir.join("orchestrator")
    }

    /// Where the operator identity is saved (a `--tls-dir`).
    pub fn operator_dir(&self) -> PathBuf {
        self.dir.join("operator")
    }

    /// Where the client identity is saved (a `--tls-dir`).
    pub fn client_dir(&self) -> PathBuf {
        self.dir.join("client")
    }
}

/// The procs the host starts.
pub struct Procs<'a> {
    /// How many, named `proc-1` … `proc-N`.
    pub count: u32,
    /// Actions each runs at once; `None`: an even share of the logical CPUs, at least one
    /// (HST-26).
    pub max_actions: Option<u32>,
    /// Extra environment of each proc agent.
    pub env: &'a [(&'a str, &'a str)],
}

/// An orchestrator, one host with its procs, and a client, all in this process.
pub struct LocalMesh {
    pub orchestrator: Orchestrator,
    pub host: Host,
    pub client: Client,
}

impl LocalMesh {
    /// Starts everything with state under `dir` and waits (at most 20 s) until the
    /// orchestrator has heard every proc, so work submitted next is placed at once.
    pub async fn start(
        dir: &Path,
        ids: &Identities,
        procs: Procs<'_>,
    ) -> anyhow::Result<LocalMesh> {
        Self::start_with(dir, ids, procs, |_, _| {}).await
    }

    /// [`start`](Self::start) with the orchestrator's and the host's configurations adjusted by
    /// `tune` (e.g. the orchestrator's journal and durability, the host's isolation).
    pub async fn start_with(
        dir: &Path,
        ids: &Identities,
        procs: Procs<'_>,
        tune: impl FnOnce(&mut OrchestratorConfig, &mut HostConfig),
    ) -> anyhow::Result<LocalMesh> {
        let mut config = OrchestratorConfig {
            heartbeat_interval_ms: 500,
            lost_after_ms: 10_000,
            ..OrchestratorConfig::ephemeral(dir.join("orchestrator"))
        };
        // Slots as `procmesh host` plans them (HST-26); an explicit per-proc maximum sizes the
        // host's capacity to fit, and every proc gets a slot even on a machine with fewer CPUs.
        let cpus = procmesh_host::system::logical_cpus();
        let capacity = match procs.max_actions {
            Some(m) => m.saturating_mul(procs.count),
            None => cpus.max(procs.count),
        };
        let plan = procmesh_host::slots::plan(Some(capacity), procs.count, procs.max_actions, cpus)
            .map_err(anyhow::Error::msg)?;
        // Isolation as `procmesh host` defaults it: namespaces where the kernel allows them.
        let mut host_config = HostConfig {
            heartbeat_interval_ms: 500,
            capacity: Some(plan.capacity),
            ..HostConfig::ephemeral(dir.join("host"), ids.host.clone())
        };
        tune(&mut config, &mut host_config);
        let orchestrator = Orchestrator::start(config, ids.orchestrator.clone())
            .await
            .context("starting the orchestrator")?;
        host_config.orchestrator = Some(orchestrator.actor_id());
        // The proc agents are this binary, re-executed as `procmesh proc-agent`.
        let host = Host::start(
            host_config,
            Arc::new(OsProcManager::new(None, None).context("proc manager")?),
        )
        .await
        .context("starting the host")?;
        let env: std::collections::BTreeMap<String, String> = procs
            .env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        for (i, slots) in (1..).zip(plan.per_proc) {
            host.spawn(SpawnSpec {
                name: format!("proc-{i}"),
                config: ProcConfig {
                    max_actions: Some(slots),
                    env: env.clone(),
                    ..ProcConfig::default()
                },
            })
            .await
            .with_context(|| format!("starting proc-{i}"))?;
        }
        let mut config = ClientConfig::new(orchestrator.actor_id(), ids.client.clone());
        config.cache_dir = Some(dir.join("client-cache"));
        let client = Client::connect(config)
            .await
            .context("connecting to the orchestrator")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let hosts = client.hosts().await?;
            if hosts.iter().flat_map(|h| &h.procs).count() >= procs.count as usize {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the host's procs did not reach the orchestrator within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(LocalMesh {
            orchestrator,
            host,
            client,
        })
    }

    /// Closes the client, stops the procs and the host, then the orchestrator.
    pub async fn stop(self) {
        self.client.close().await;
        let grace = Duration::from_secs(5);
        self.host.shutdown(grace).await;
        self.orchestrator.shutdown().await;
    }
}
