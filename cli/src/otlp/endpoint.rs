//! Where spans go, `http://host[:port][/path]`, and the one HTTP/1.1 POST that sends them.

use std::fmt;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

use anyhow::{bail, Context as _};

/// Connecting to the collector gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Each read and write of a request gives up after this.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Where spans are POSTed: parsed from `http://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host as written (brackets stripped from an IPv6 literal).
    pub(super) host: String,
    pub(super) port: u16,
    /// The request path, ending with `/v1/traces`.
    pub(super) path: String,
    /// The `Host` header: `host:port` as written.
    pub(super) authority: String,
}

impl Endpoint {
    /// Accepts `http://host[:port][/path]` only; the path gets `/v1/traces` appended unless
    /// it already ends with it.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let url = url.trim();
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("grpcs://") {
            bail!(
                "OTLP endpoint {url:?}: TLS export is not built into procmesh; \
                 use a local collector or agent over http:// (e.g. http://127.0.0.1:4318)"
            );
        }
        if !lower.starts_with("http://") {
            bail!("OTLP endpoint {url:?}: expected http://host:port[/path] (OTLP/HTTP, JSON)");
        }
        let rest = &url["http://".len()..];
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) || authority.contains(['@', '?', '#']) {
            bail!("OTLP endpoint {url:?}: expected http://host:port[/path], without user, query or fragment");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                bail!("OTLP endpoint {url:?}: unclosed [ in the host");
            };
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').with_context(|| {
                    format!("OTLP endpoint {url:?}: expected :port after the IPv6 host")
                })?),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            bail!("OTLP endpoint {url:?}: no host");
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .with_context(|| format!("OTLP endpoint {url:?}: bad port {p:?}"))?,
        };
        let path = if path.ends_with("/v1/traces") {
            path.to_string()
        } else {
            format!("{}/v1/traces", path.trim_end_matches('/'))
        };
        Ok(Self {
            host: host.to_string(),
            port,
            path,
            authority: authority.to_string(),
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// One HTTP/1.1 POST of `body`; `Ok` on a 2xx status line.
pub(super) fn post(endpoint: &Endpoint, body: &[u8]) -> anyhow::Result<()> {
    let addrs = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", endpoint.authority))?;
    let mut last_error = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => {
                last_error = Some(anyhow::Error::new(e).context(format!("connecting to {addr}")))
            }
        }
    }
    let Some(stream) = stream else {
        return Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("{} resolves to no address", endpoint.authority)));
    };
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         User-Agent: procmesh/{}\r\nConnection: close\r\n\r\n",
        endpoint.path,
        endpoint.authority,
        body.len(),
        env!("CARGO_PKG_VERSION"),
    );
    let mut writer = &stream;
    writer
        .write_all(head.as_bytes())
        .context("sending the request")?;
    writer.write_all(body).context("sending the request")?;
    writer.flush().context("sending the request")?;
    let mut line = String::new();
    BufReader::new((&stream).take(8192))
        .read_line(&mut line)
        .context("reading the response")?;
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("bad HTTP status line {:?}", line.trim_end()))?;
    if !(200..300).contains(&status) {
        bail!("the collector answered {}", line.trim_end());
    }
    Ok(())
}
