//! # procmesh-admin
//!
//! The admin HTTP listener every procmesh node runs beside its QUIC frontend: health and
//! readiness for supervisors and load balancers, Prometheus metrics, and the JSON API and
//! dashboard the orchestrator mounts on it. This crate owns what is common to every node — the
//! listen setting, the access check, the exposition of a metrics registry, the health bodies —
//! and nothing about what a node serves.
//!
//! ```text
//!  TCP listener (http/1.1) ─▶ access guard ─▶ the node's router
//!                              │ peer on loopback: served
//!                              │ else: `Authorization: Bearer <token>` must match, or 401
//!                              └ every refusal logged and counted (admin_refused_total)
//! ```
//!
//! # Invariants
//! - **ADM-1** Loopback only by default: a listener on a non-loopback address starts only with
//!   a bearer token (from a file, at least [`MIN_TOKEN_LEN`] characters); [`serve`] refuses to
//!   bind otherwise.
//! - **ADM-2** A request from a non-loopback peer is served only with the exact token
//!   (compared in constant time); anything else gets `401` with a JSON body, is logged with the
//!   peer's address, and is counted. Loopback peers need no token: whoever can reach loopback
//!   already runs on the node.
//! - **ADM-3** `/healthz` answers 200 while the process serves; `/readyz` answers 200 only when
//!   the node says it is ready and 503 otherwise, both with a JSON body saying why.
//!
//! # Decisions
//! - Tokens, not client certificates: the admin listener speaks plain HTTP/1.1 so that curl,
//!   Prometheus and a browser work without the mesh's CA; a non-loopback listener must then be
//!   on a network the operator trusts to carry a bearer token (or behind a TLS proxy).
//! - Metrics are exposed in the OpenMetrics text format by `prometheus-client` (the Prometheus
//!   project's Rust client): Prometheus scrapes it natively.
#![deny(missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The shortest bearer token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A non-loopback listener without a token (ADM-1).
    #[error(
        "the admin listener {0} is not on loopback: give it a bearer token (admin_token_file / --admin-token-file)"
    )]
    TokenRequired(SocketAddr),
    /// The token file could not be read or holds no usable token.
    #[error("admin token file {path}: {reason}")]
    Token {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The address could not be bound.
    #[error("admin listener {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A listen setting that is neither an address nor `off`.
    #[error("admin listen address {0:?}: expected HOST:PORT or \"off\"")]
    BadListen(String),
}

/// Parses an admin listen setting: `HOST:PORT`, or `off` (no admin listener).
pub fn parse_listen(text: &str) -> Result<Option<SocketAddr>, AdminError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| AdminError::BadListen(text.to_owned()))
}

/// Reads a bearer token from `path`: its first line, trimmed, at least [`MIN_TOKEN_LEN`]
/// characters of visible ASCII. A file others may read is refused.
pub fn load_token(path: &Path) -> Result<String, AdminError> {
    use std::os::unix::fs::MetadataExt;
    let fail = |reason: String| AdminError::Token {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.mode() & 0o007 != 0 {
        return Err(fail(
            "it is readable by every user; chmod 600 (or 640) it".into(),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.len() < MIN_TOKEN_LEN {
        return Err(fail(format!(
            "the token must be at least {MIN_TOKEN_LEN} characters"
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(fail("the token must be visible ASCII".into()));
    }
    Ok(token)
}

/// How a node's admin listener is set up.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The bearer token non-loopback peers must present (ADM-2).
    pub token: Option<String>,
}

/// What the access guard needs.
#[derive(Clone)]
struct Access {
    token: Option<Arc<[u8]>>,
    refused: Counter,
}

/// A running admin listener. Dropping it leaves it running; [`shutdown`](Self::shutdown) stops
/// it.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// The address it listens on (with the port the OS chose for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits (bounded) for open requests to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), &mut self.task).await;
        self.task.abort();
    }
}

/// Serves `router` on `config.listen` behind the access guard (ADM-1, ADM-2); refusals are
/// counted in `refused`.
pub async fn serve(
    config: &AdminConfig,
    router: Router,
    refused: Counter,
) -> Result<AdminServer, AdminError> {
    if !config.listen.ip().is_loopback() && config.token.is_none() {
        return Err(AdminError::TokenRequired(config.listen));
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| AdminError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| AdminError::Bind {
        addr: config.listen,
        source,
    })?;
    let access = Access {
        token: config.token.as_deref().map(|t| Arc::from(t.as_bytes())),
        refused,
    };
    let app = router
        .layer(middleware::from_fn_with_state(access, guard))
        .into_make_service_with_connect_info::<SocketAddr>();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the admin listener stopped");
        }
    });
    tracing::info!(%addr, "admin listener ready");
    Ok(AdminServer {
        addr,
        stop: Some(stop),
        task,
    })
}

/// ADM-2: loopback peers pass; others need the bearer token.
async fn guard(
    State(access): State<Access>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if peer.ip().is_loopback() || peer.ip().to_canonical().is_loopback() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = match (&access.token, presented) {
        (Some(token), Some(presented)) => constant_time_eq(token, presented.as_bytes()),
        _ => false,
    };
    if ok {
        return next.run(request).await;
    }
    access.refused.inc();
    let why = if presented.is_some() {
        "wrong bearer token"
    } else {
        "no bearer token"
    };
    tracing::warn!(%peer, path = %request.uri().path(), reason = why, "admin request refused");
    let mut response = (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({
            "error": "unauthorized",
            "reason": format!("{why}: requests from outside loopback need `Authorization: Bearer <token>`"),
        })),
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"procmesh admin\""),
    );
    response
}

/// Compares without an early exit on the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The OpenMetrics text exposition of `registry`.
pub fn metrics_response(registry: &Registry) -> Response {
    let mut body = String::with_capacity(16 * 1024);
    if let Err(error) = prometheus_client::encoding::text::encode(&mut body, registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {error}"),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// A health or readiness answer (ADM-3): 200 when `ok`, 503 otherwise, with `body` (a JSON
/// object) and `"status": "ok" | "unavailable"` in it.
pub fn health_response(ok: bool, mut body: serde_json::Value) -> Response {
    if let Some(map) = body.as_object_mut() {
        map.insert(
            "status".into(),
            serde_json::Value::from(if ok { "ok" } else { "unavailable" }),
        );
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// A JSON error answer: `{"error": code, "reason": …}` with `status`.
pub fn error_response(status: StatusCode, code: &str, reason: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": code, "reason": reason.into() })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_settings_parse() {
        assert_eq!(parse_listen("off").unwrap(), None);
        assert_eq!(
            parse_listen("127.0.0.1:7601").unwrap(),
            Some("127.0.0.1:7601".parse().unwrap())
        );
        assert!(parse_listen("localhost").is_err());
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn token_files_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("procmesh-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "short\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_token(&path).is_err(), "too short");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        assert_eq!(load_token(&path).unwrap(), "0123456789abcdef0123");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_token(&path).is_err(), "world-readable");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // Attests ADM-1
    #[tokio::test]
    async fn a_public_listener_needs_a_token() {
        let config = AdminConfig {
            listen: "0.0.0.0:0".parse().unwrap(),
            token: None,
        };
        let err = serve(&config, Router::new(), Counter::default())
            .await
            .unwrap_err();
        assert!(matches!(err, AdminError::TokenRequired(_)), "{err}");
    }

    /// A local address that is not loopback, if this machine has one.
    fn non_loopback_ip() -> Option<std::net::IpAddr> {
        let out = std::process::Command::new("ip")
            .args(["-4", "-o", "addr", "show", "scope", "global"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let word = text
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)?;
        word.split('/').next()?.parse().ok()
    }

    /// One GET over a fresh connection from `from`; the status code and the body.
    async fn get(
        from: std::net::IpAddr,
        to: SocketAddr,
        path: &str,
        token: Option<&str>,
    ) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let mut stream = socket.connect(to).await.unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_string(&mut response),
        )
        .await
        .unwrap()
        .unwrap();
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, response)
    }

    // Attests ADM-2
    #[tokio::test]
    async fn outside_loopback_the_token_is_required() {
        let Some(ip) = non_loopback_ip() else {
            eprintln!("skipped: this machine has no non-loopback IPv4 address");
            return;
        };
        let token = "0123456789abcdef0123".to_owned();
        let config = AdminConfig {
            listen: "0.0.0.0:0".parse().unwrap(),
            token: Some(token.clone()),
        };
        let router = Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        let refused = Counter::default();
        let server = serve(&config, router, refused.clone()).await.unwrap();
        let at = SocketAddr::new(ip, server.addr().port());
        let (code, body) = get(ip, at, "/healthz", None).await;
        assert_eq!(code, 401, "{body}");
        assert!(body.contains("unauthorized"), "{body}");
        let (code, _) = get(ip, at, "/healthz", Some("0123456789abcdef0124")).await;
        assert_eq!(code, 401);
        assert_eq!(refused.get(), 2);
        let (code, body) = get(ip, at, "/healthz", Some(&token)).await;
        assert_eq!(code, 200, "{body}");
        let local = SocketAddr::new("127.0.0.1".parse().unwrap(), server.addr().port());
        let (code, _) = get("127.0.0.1".parse().unwrap(), local, "/healthz", None).await;
        assert_eq!(code, 200, "loopback needs no token");
        assert_eq!(refused.get(), 2);
        server.shutdown().await;
    }
}
