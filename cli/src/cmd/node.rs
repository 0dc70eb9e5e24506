//! What the two long-running nodes, `procmesh orchestrator` and `procmesh host`, share — one
//! path, so they cannot drift apart:
//!
//! - **the common flags** ([`NodeArgs`]): `--listen`, `--advertise`, `--tls-dir`,
//!   `--state-dir`, `--revoked`, `--admin-listen`, `--admin-token-file`, `--json`, each with
//!   the same `PROCMESH_*` variable on both;
//! - **the layering** ([`NodeArgs::settings`]): the role's TOML file (unknown fields refused,
//!   naming them) < the environment < flags (clap folds the environment into the flags); the
//!   state directory is made absolute (procs and the journal must not depend on the cwd);
//! - **the process** ([`run`]): the systemd socket taken before any thread exists, one
//!   multi-threaded runtime, and the signal handlers installed before anything else starts,
//!   so a supervisor's SIGTERM is never lost, not even one sent before `ready` ([`Signals`]);
//! - **readiness** ([`announce_ready`]): `admin http://<addr>/` and `ready <id>` on stdout (or
//!   one JSON object with `--json`), flushed, then `READY=1` to systemd; [`announce_stopping`]
//!   says `STOPPING=1` when a signal arrives.
//!
//! ```text
//!  node::run ── take $NOTIFY_SOCKET ─▶ runtime ─▶ Signals::install ─▶ serve(signals)
//!                                                                      │ start listeners…
//!                                                                      ├─▶ announce_ready
//!                                                                      └─▶ signals.next() ─▶ announce_stopping ─▶ stop
//! ```
//!
//! What differs stays with each role: its own flags, its configuration type (which names its
//! common fields through [`NodeSettings`]), what "ready" waits for, and how it stops (the
//! host drains on SIGTERM, HST-27).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use procmesh_protocol::HostAddr;
use serde::de::DeserializeOwned;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::admin::AdminArgs;

/// Flags both node commands take; each also reads its environment variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// QUIC frontend bind address, e.g. 0.0.0.0:7600 (orchestrator) or 0.0.0.0:7700 (host).
    #[arg(long, env = "PROCMESH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address other nodes and clients reach this node at, e.g. quic!10.0.0.5:7700; required
    /// when --listen is an unspecified address (0.0.0.0).
    #[arg(long, env = "PROCMESH_ADVERTISE")]
    pub advertise: Option<HostAddr>,
    /// Directory with ca.pem, cert.pem, key.pem (from `procmesh certs issue --role <this
    /// node's role>`).
    #[arg(long, env = "PROCMESH_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// State directory: the orchestrator's journal and blobs; a host's node secret, backend
    /// socket, blob store, worker cache and proc work dirs.
    #[arg(long, env = "PROCMESH_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// File of revoked certificate serials (one hex serial per line), re-read when it changes.
    #[arg(long, env = "PROCMESH_REVOKED")]
    pub revoked: Option<PathBuf>,
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Print the ready line as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The fields every node's configuration has, borrowed for the layering.
pub struct Common<'a> {
    pub listen: &'a mut SocketAddr,
    pub advertise: &'a mut Option<HostAddr>,
    pub tls_dir: &'a mut Option<PathBuf>,
    pub state_dir: &'a mut PathBuf,
    pub revoked: &'a mut Option<PathBuf>,
    pub admin_listen: &'a mut String,
    pub admin_token_file: &'a mut Option<PathBuf>,
}

/// A node's configuration type: read from TOML, defaulted, with the common fields.
pub trait NodeSettings: DeserializeOwned + Default {
    /// The role, for messages: `orchestrator` or `host`.
    const ROLE: &'static str;
    /// The common fields.
    fn common(&mut self) -> Common<'_>;
}

/// Implements [`NodeSettings`] for a configuration type whose common fields have the common
/// names.
macro_rules! node_settings {
    ($ty:ty, $role:literal) => {
        impl NodeSettings for $ty {
            const ROLE: &'static str = $role;
            fn common(&mut self) -> Common<'_> {
                Common {
                    listen: &mut self.listen,
                    advertise: &mut self.advertise,
                    tls_dir: &mut self.tls_dir,
                    state_dir: &mut self.state_dir,
                    revoked: &mut self.revoked,
                    admin_listen: &mut self.admin_listen,
                    admin_token_file: &mut self.admin_token_file,
                }
            }
        }
    };
}

node_settings!(procmesh_orchestrator::OrchestratorConfig, "orchestrator");
node_settings!(procmesh_host::HostConfig, "host");

/// Parses a node's configuration file's text; unknown fields are an error naming them.
pub fn parse_file<C: NodeSettings>(text: &str) -> anyhow::Result<C> {
    Ok(toml::from_str::<C>(text)?)
}

impl NodeArgs {
    /// The settings of a `C` node: the file at `file` (else the defaults) < the environment <
    /// flags, for the common fields; the caller layers its own flags on top and validates.
    pub fn settings<C: NodeSettings>(&self, file: Option<&Path>) -> anyhow::Result<C> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                parse_file::<C>(&text).with_context(|| {
                    format!("bad {} configuration in {}", C::ROLE, path.display())
                })?
            }
            None => C::default(),
        };
        let common = config.common();
        if let Some(v) = self.listen {
            *common.listen = v;
        }
        if let Some(v) = &self.advertise {
            *common.advertise = Some(v.clone());
        }
        if let Some(v) = &self.tls_dir {
            *common.tls_dir = Some(v.clone());
        }
        if let Some(v) = &self.state_dir {
            *common.state_dir = v.clone();
        }
        // Children (proc agents) and logs get paths inside the state directory: they must
        // not depend on the cwd the node was started from.
        *common.state_dir = std::path::absolute(&*common.state_dir)
            .with_context(|| format!("state directory {}", common.state_dir.display()))?;
        if let Some(v) = &self.revoked {
            *common.revoked = Some(v.clone());
        }
        if let Some(v) = &self.admin.admin_listen {
            *common.admin_listen = v.clone();
        }
        if let Some(v) = &self.admin.admin_token_file {
            *common.admin_token_file = Some(v.clone());
        }
        anyhow::ensure!(
            common.tls_dir.is_some(),
            "no TLS identity: pass --tls-dir (create one with `procmesh certs issue --role {}`)",
            C::ROLE
        );
        Ok(config)
    }
}

/// Runs a node: takes `$NOTIFY_SOCKET` (before any thread: see `notify::take_socket`), builds
/// the runtime (threads named `thread_name`), installs the signal handlers, then `serve`s.
pub fn run<F, Fut>(thread_name: &str, serve: F) -> anyhow::Result<()>
where
    F: FnOnce(Signals) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    crate::notify::take_socket();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(thread_name)
        .build()?;
    runtime.block_on(async move {
        procmesh_transport::install_crypto_provider();
        let signals = Signals::install().context("installing the signal handlers")?;
        serve(signals).await
    })
}

/// Which signal asked a node to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: a supervisor stops the node (a host drains first).
    Term,
    /// SIGINT: an operator's Ctrl-C; stop at once.
    Int,
}

/// SIGTERM and SIGINT, handled from the moment they are installed: a signal that arrives
/// while nobody waits is kept until the next [`Signals::next`].
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Installs the handlers (inside a runtime).
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal.
    pub async fn next(&mut self) -> Stop {
        tokio::select! {
            _ = self.term.recv() => Stop::Term,
            _ = self.int.recv() => Stop::Int,
        }
    }
}

/// Announces a ready node: `admin http://<admin>/` (when it has an admin listener) and
/// `ready <ready>` on stdout, or with `json` one object `{"ready", "admin", …fields}`; flushed,
/// then `READY=1` to systemd (Type=notify starts dependants only now) and a log line.
pub fn announce_ready(
    json: bool,
    ready: &str,
    admin: Option<SocketAddr>,
    fields: serde_json::Map<String, serde_json::Value>,
) {
    let admin = admin.map(|a| a.to_string());
    if json {
        let mut line = serde_json::Map::new();
        line.insert("ready".into(), ready.into());
        line.insert("admin".into(), admin.clone().into());
        line.extend(fields);
        println!("{}", serde_json::Value::Object(line));
    } else {
        if let Some(addr) = &admin {
            println!("admin http://{addr}/");
        }
        println!("ready {ready}");
    }
    {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
    crate::notify::notify_or_warn(&format!("READY=1\nSTATUS=ready {ready}"));
    tracing::info!(ready, admin, "ready");
}

/// Tells systemd the node is stopping (`what`: `stopping`, `draining`).
pub fn announce_stopping(what: &str) {
    crate::notify::notify_or_warn(&format!("STOPPING=1\nSTATUS={what}"));
    tracing::info!("{what}");
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use procmesh_host::HostConfig;
    use procmesh_orchestrator::OrchestratorConfig;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Args {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn args(argv: &[&str]) -> NodeArgs {
        Args::try_parse_from(std::iter::once("node").chain(argv.iter().copied()))
            .unwrap()
            .node
    }

    /// One file, then flags, through the same path for both roles: the file fills what the
    /// flags leave, flags win, the state directory comes back absolute.
    fn layer<C: NodeSettings>(file_text: &str) -> C {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, file_text).unwrap();
        let flags = args(&[
            "--listen",
            "127.0.0.1:9100",
            "--state-dir",
            "relative/state",
            "--admin-listen",
            "off",
        ]);
        flags.settings::<C>(Some(&path)).unwrap()
    }

    #[test]
    fn both_roles_layer_the_common_fields_the_same_way() {
        let file = "listen = \"0.0.0.0:7000\"\nadvertise = \"quic!10.0.0.9:7000\"\n\
                    tls_dir = \"/etc/procmesh/tls\"\nrevoked = \"/etc/procmesh/revoked\"\n";
        let mut orchestrator: OrchestratorConfig = layer(&format!(
            "{file}lost_after_ms = 9000\nheartbeat_interval_ms = 300\n"
        ));
        let mut host: HostConfig = layer(&format!("{file}respawn = false\n"));
        let cwd = std::env::current_dir().unwrap();
        for common in [orchestrator.common(), host.common()] {
            assert_eq!(common.listen.to_string(), "127.0.0.1:9100", "flags win");
            assert_eq!(
                common.advertise.as_ref().unwrap().to_string(),
                "quic!10.0.0.9:7000",
                "the file fills what flags leave"
            );
            assert_eq!(
                common.tls_dir.as_deref(),
                Some(Path::new("/etc/procmesh/tls"))
            );
            assert_eq!(
                common.revoked.as_deref(),
                Some(Path::new("/etc/procmesh/revoked"))
            );
            assert_eq!(*common.state_dir, cwd.join("relative/state"));
            assert_eq!(common.admin_listen.as_str(), "off");
        }
        // The role's own fields come from the same file.
        assert_eq!(orchestrator.lost_after_ms, 9000);
        assert!(!host.respawn);
    }

    #[test]
    fn errors_name_the_role_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "lisen = \"0.0.0.0:1\"\n").unwrap();
        let flags = args(&["--tls-dir", "/t"]);
        let err = format!(
            "{:#}",
            flags.settings::<HostConfig>(Some(&path)).unwrap_err()
        );
        assert!(err.contains("bad host configuration"), "{err}");
        assert!(err.contains("bad.toml") && err.contains("lisen"), "{err}");
        let err = format!(
            "{:#}",
            flags
                .settings::<OrchestratorConfig>(Some(&dir.path().join("missing.toml")))
                .unwrap_err()
        );
        assert!(err.contains("missing.toml"), "{err}");
        let err = format!(
            "{:#}",
            args(&[]).settings::<OrchestratorConfig>(None).unwrap_err()
        );
        assert!(
            err.contains("--tls-dir") && err.contains("--role orchestrator"),
            "{err}"
        );
    }

    #[test]
    fn signals_are_kept_until_asked_for() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut signals = Signals::install().unwrap();
            // Sent while nobody waits (as a supervisor's signal right after `ready`).
            nix::sys::signal::raise(nix::sys::signal::Signal::SIGINT).unwrap();
            let stop = tokio::time::timeout(std::time::Duration::from_secs(5), signals.next())
                .await
                .expect("the signal was kept");
            assert_eq!(stop, Stop::Int);
        });
    }
}
