//! [`ClientConfig`]: where the orchestrator is, who the client is, where it caches blobs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use procmesh_protocol::ActorId;
use procmesh_transport::TlsIdentity;

use crate::error::ClientError;

/// How long a request waits for its answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What [`Client::connect`](crate::Client::connect) needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The orchestrator's service actor, e.g. `quic!10.0.0.1:7600,service.orchestrator`.
    pub orchestrator: ActorId,
    /// The client's mTLS identity (mesh CA, client certificate, key).
    pub identity: TlsIdentity,
    /// Where the client's QUIC node binds. `None`: the local address the OS routes to the
    /// orchestrator from, port 0 (so the orchestrator can reach the client back for events).
    pub bind: Option<SocketAddr>,
    /// The blob cache downloads land in. `None`: `$XDG_CACHE_HOME/procmesh/blobs`, else
    /// `~/.cache/procmesh/blobs`, else a directory under the system temp dir.
    pub cache_dir: Option<PathBuf>,
    /// How long each request waits for its answer.
    pub timeout: Duration,
}

impl ClientConfig {
    /// A configuration with defaults for everything but the orchestrator and the identity.
    pub fn new(orchestrator: ActorId, identity: TlsIdentity) -> ClientConfig {
        ClientConfig {
            orchestrator,
            identity,
            bind: None,
            cache_dir: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A configuration whose identity is loaded from `tls_dir` (`ca.pem`, `cert.pem`,
    /// `key.pem`, as `procmesh certs issue` writes them).
    pub fn from_tls_dir(
        orchestrator: ActorId,
        tls_dir: &Path,
    ) -> Result<ClientConfig, ClientError> {
        Ok(ClientConfig::new(orchestrator, TlsIdentity::load(tls_dir)?))
    }

    /// The address to bind: the configured one, or the local address the OS would use to
    /// reach `orchestrator`, port 0.
    pub fn bind_addr(&self) -> Result<SocketAddr, ClientError> {
        if let Some(bind) = self.bind {
            return Ok(bind);
        }
        let target = self.orchestrator.addr().socket_addr().ok_or_else(|| {
            ClientError::Config(format!(
                "the orchestrator {} is not a QUIC address",
                self.orchestrator
            ))
        })?;
        Ok(SocketAddr::new(route_source(target), 0))
    }

    /// The blob cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        if let Some(dir) = &self.cache_dir {
            return dir.clone();
        }
        let xdg = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty());
        let home = std::env::var_os("HOME").filter(|v| !v.is_empty());
        match (xdg, home) {
            (Some(xdg), _) => PathBuf::from(xdg).join("procmesh").join("blobs"),
            (None, Some(home)) => PathBuf::from(home).join(".cache/procmesh/blobs"),
            (None, None) => std::env::temp_dir().join("procmesh-client-blobs"),
        }
    }
}

/// The local IP the OS routes to `target` from (a connected UDP socket sends nothing), or the
/// unspecified address of its family when that cannot be found.
fn route_source(target: SocketAddr) -> IpAddr {
    let unspecified = match target {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    UdpSocket::bind(SocketAddr::new(unspecified, 0))
        .and_then(|socket| {
            socket.connect(target)?;
            socket.local_addr()
        })
        .map(|local| local.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_next_to_the_orchestrator() {
        let ca = procmesh_transport::MeshCa::generate("t", Duration::from_secs(60)).unwrap();
        let identity = ca
            .issue(
                procmesh_transport::Role::Client,
                "c",
                &[],
                Duration::from_secs(60),
            )
            .unwrap();
        let orchestrator: ActorId = "quic!127.0.0.1:7600,service.orchestrator".parse().unwrap();
        let mut config = ClientConfig::new(orchestrator, identity);
        assert_eq!(config.timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            config.bind_addr().unwrap(),
            "127.0.0.1:0".parse::<SocketAddr>().unwrap()
        );
        config.bind = Some("0.0.0.0:9000".parse().unwrap());
        assert_eq!(config.bind_addr().unwrap().port(), 9000);
        config.cache_dir = Some("/tmp/x".into());
        assert_eq!(config.cache_dir(), PathBuf::from("/tmp/x"));

        config.bind = None;
        config.orchestrator = "unix!/run/pm.sock,service.orchestrator".parse().unwrap();
        assert_eq!(config.bind_addr().unwrap_err().code(), "config");
    }
}
