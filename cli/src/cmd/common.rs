//! What every client command shares: where the orchestrator is and who we are (TOML file <
//! environment < flags), connecting, queue arguments, durations, and output helpers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use procmesh_client::{Client, ClientConfig};
use procmesh_protocol::messages::orchestrator::QueueRef;
use procmesh_protocol::ActorId;
use serde::Deserialize;

/// The client settings file (`--config`, `PROCMESH_CLIENT_CONFIG`). Every field is optional;
/// the environment and flags override it.
///
/// ```toml
/// orchestrator = "quic!10.0.0.1:7600,service.orchestrator"
/// tls_dir = "/etc/procmesh/client"
/// cache_dir = "/var/cache/procmesh"
/// bind = "0.0.0.0:0"
/// timeout_ms = 30000
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// The orchestrator's service actor, e.g. `quic!10.0.0.1:7600,service.orchestrator`.
    #[serde(default)]
    pub orchestrator: Option<ActorId>,
    /// Directory with `ca.pem`, `cert.pem`, `key.pem`, e.g. `/etc/procmesh/client`.
    #[serde(default)]
    pub tls_dir: Option<PathBuf>,
    /// Blob cache for downloads, e.g. `/var/cache/procmesh`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Where the client's node binds, e.g. `0.0.0.0:0`.
    #[serde(default)]
    pub bind: Option<SocketAddr>,
    /// Per-request timeout in milliseconds, e.g. `30000`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Flags of every command that talks to an orchestrator.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// TOML client settings (orchestrator, tls_dir, cache_dir, bind, timeout_ms).
    #[arg(long, env = "PROCMESH_CLIENT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// The orchestrator's service actor, e.g. quic!10.0.0.1:7600,service.orchestrator.
    #[arg(long, env = "PROCMESH_ORCHESTRATOR", global = true)]
    pub orchestrator: Option<ActorId>,
    /// Directory with ca.pem, cert.pem, key.pem (from `procmesh certs issue --role client`).
    #[arg(long, env = "PROCMESH_TLS_DIR", global = true)]
    pub tls_dir: Option<PathBuf>,
    /// Blob cache directory for downloads.
    #[arg(long, env = "PROCMESH_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Local address of the client's QUIC node, e.g. 0.0.0.0:0.
    #[arg(long, env = "PROCMESH_BIND", global = true)]
    pub bind: Option<SocketAddr>,
    /// How long each request waits for an answer, e.g. 30s.
    #[arg(long = "request-timeout", env = "PROCMESH_REQUEST_TIMEOUT", value_parser = parse_duration, global = true)]
    pub request_timeout: Option<Duration>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The settings after file < environment < flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub orchestrator: ActorId,
    pub tls_dir: PathBuf,
    pub cache_dir: Option<PathBuf>,
    pub bind: Option<SocketAddr>,
    pub timeout: Duration,
}

impl ClientArgs {
    /// File < environment < flags (clap folds the environment into the flags).
    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        let file = match &self.config {
            Some(path) => read_client_file(path)?,
            None => ClientFile::default(),
        };
        let orchestrator = self
            .orchestrator
            .clone()
            .or(file.orchestrator)
            .context("no orchestrator: pass --orchestrator or set PROCMESH_ORCHESTRATOR (e.g. quic!10.0.0.1:7600,service.orchestrator)")?;
        let tls_dir = self
            .tls_dir
            .clone()
            .or(file.tls_dir)
            .context("no TLS identity: pass --tls-dir or set PROCMESH_TLS_DIR (create one with `procmesh certs issue --role client`)")?;
        let timeout = self
            .request_timeout
            .or(file.timeout_ms.map(Duration::from_millis))
            .unwrap_or(procmesh_client::DEFAULT_TIMEOUT);
        anyhow::ensure!(!timeout.is_zero(), "the request timeout must be positive");
        Ok(Resolved {
            orchestrator,
            tls_dir,
            cache_dir: self.cache_dir.clone().or(file.cache_dir),
            bind: self.bind.or(file.bind),
            timeout,
        })
    }

    /// Resolves the settings and connects.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let resolved = self.resolve()?;
        let mut config = ClientConfig::from_tls_dir(resolved.orchestrator, &resolved.tls_dir)
            .with_context(|| {
                format!(
                    "loading the TLS identity from {}",
                    resolved.tls_dir.display()
                )
            })?;
        config.bind = resolved.bind;
        config.cache_dir = resolved.cache_dir;
        config.timeout = resolved.timeout;
        Ok(Client::connect(config).await?)
    }
}

fn read_client_file(path: &Path) -> anyhow::Result<ClientFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("bad client configuration in {}", path.display()))
}

/// A queue argument: 24 hex characters are a token, an integer an id (loopback only).
pub fn parse_queue(text: &str) -> Result<QueueRef, String> {
    procmesh_client::parse_queue_ref(text)
}

/// A W3C `traceparent` (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`), checked.
pub fn parse_traceparent(text: &str) -> Result<String, String> {
    if procmesh_protocol::spec::is_traceparent(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"
        ))
    }
}

/// A duration: a number with a unit `ms`, `s`, `m` or `h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}: expected e.g. 500ms, 30s, 5m, 1h"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "bad duration unit {other:?} in {text:?}: use ms, s, m or h"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
        return Err(format!("duration {text:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A `KEY=VALUE` pair.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))?;
    if k.is_empty() {
        return Err(format!("empty key in {text:?}"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// A multi-threaded runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("procmesh-client")
        .build()?)
}

/// Prints `value` as one line of JSON.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Text for a byte tail: lossy UTF-8.
pub fn tail_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_client_settings_parse() {
        let file: ClientFile = toml::from_str(include_str!("../../../deploy/client.toml")).unwrap();
        assert_eq!(file.timeout_ms, Some(30_000));
        assert!(file.orchestrator.is_some() && file.tls_dir.is_some());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "s", "5 days", "-1s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn client_file_defaults_and_unknown_fields() {
        assert_eq!(
            toml::from_str::<ClientFile>("").unwrap(),
            ClientFile::default()
        );
        let file: ClientFile = toml::from_str(
            r#"
            orchestrator = "quic!10.0.0.1:7600,service.orchestrator"
            tls_dir = "/etc/procmesh/client"
            cache_dir = "/var/cache/procmesh"
            bind = "0.0.0.0:0"
            timeout_ms = 30000
            "#,
        )
        .unwrap();
        assert_eq!(file.timeout_ms, Some(30_000));
        assert_eq!(
            file.orchestrator.unwrap().to_string(),
            "quic!10.0.0.1:7600,service.orchestrator"
        );
        let err = toml::from_str::<ClientFile>("orchestrater = \"x\"").unwrap_err();
        assert!(err.to_string().contains("orchestrater"), "{err}");
        assert!(toml::from_str::<ClientFile>("orchestrator = \"nonsense\"").is_err());
    }

    fn args(
        orchestrator: Option<&str>,
        tls_dir: Option<&str>,
        config: Option<PathBuf>,
    ) -> ClientArgs {
        ClientArgs {
            config,
            orchestrator: orchestrator.map(|o| o.parse().unwrap()),
            tls_dir: tls_dir.map(PathBuf::from),
            cache_dir: None,
            bind: None,
            request_timeout: None,
            json: false,
        }
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(
            &path,
            "orchestrator = \"quic!10.0.0.1:7600,service.orchestrator\"\ntls_dir = \"/from/file\"\ntimeout_ms = 1500\n",
        )
        .unwrap();
        let from_file = args(None, None, Some(path.clone())).resolve().unwrap();
        assert_eq!(from_file.tls_dir, PathBuf::from("/from/file"));
        assert_eq!(from_file.timeout, Duration::from_millis(1500));
        let flags = args(
            Some("quic!127.0.0.1:1,service.orchestrator"),
            Some("/from/flag"),
            Some(path),
        )
        .resolve()
        .unwrap();
        assert_eq!(flags.tls_dir, PathBuf::from("/from/flag"));
        assert_eq!(
            flags.orchestrator.to_string(),
            "quic!127.0.0.1:1,service.orchestrator"
        );

        let err = args(None, Some("/x"), None).resolve().unwrap_err();
        assert!(err.to_string().contains("--orchestrator"), "{err}");
        let err = args(Some("quic!127.0.0.1:1,service.orchestrator"), None, None)
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("--tls-dir"), "{err}");
        let defaults = args(
            Some("quic!127.0.0.1:1,service.orchestrator"),
            Some("/t"),
            None,
        )
        .resolve()
        .unwrap();
        assert_eq!(defaults.timeout, procmesh_client::DEFAULT_TIMEOUT);
    }

    #[test]
    fn queues_and_pairs_parse() {
        assert_eq!(parse_queue("7"), Ok(QueueRef::Id(7)));
        assert!(matches!(
            parse_queue("00112233445566778899aabb"),
            Ok(QueueRef::Token(_))
        ));
        assert!(parse_queue("q7").is_err());
        assert_eq!(parse_key_value("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_key_value("A").is_err());
        assert!(parse_key_value("=x").is_err());
    }
}
