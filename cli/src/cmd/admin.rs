//! The admin listener flags every node command shares (`--admin-listen`,
//! `--admin-token-file`), and starting the listener with them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use procmesh_admin::{AdminConfig, AdminServer};

/// Flags of the admin HTTP listener (health, readiness, metrics; the API and dashboard on the
/// orchestrator).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AdminArgs {
    /// Admin HTTP listener, HOST:PORT or `off` (default: 127.0.0.1:7601 for the orchestrator,
    /// 127.0.0.1:7701 for a host). A non-loopback address needs --admin-token-file.
    #[arg(long, env = "PROCMESH_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// File whose first line is the bearer token admin requests from outside loopback must
    /// present.
    #[arg(long, env = "PROCMESH_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

/// Starts the admin listener at `listen` (`off`: none) serving `router`.
pub async fn start(
    listen: &str,
    token_file: Option<&Path>,
    router: axum::Router,
    refused: prometheus_client::metrics::counter::Counter,
) -> anyhow::Result<Option<AdminServer>> {
    let Some(addr) = procmesh_admin::parse_listen(listen)? else {
        return Ok(None);
    };
    let token = token_file.map(procmesh_admin::load_token).transpose()?;
    let config = AdminConfig {
        listen: addr,
        token,
    };
    let server = procmesh_admin::serve(&config, router, refused)
        .await
        .context("starting the admin listener (pass --admin-listen ADDR, or --admin-listen off)")?;
    Ok(Some(server))
}
