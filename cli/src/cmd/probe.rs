//! `procmesh probe ADDR [PATH]`: one HTTP GET of a node's admin endpoint, exit 0 on a 2xx
//! answer. For health checks where the image has nothing but the `procmesh` binary (no curl):
//! `procmesh probe 127.0.0.1:7601 /readyz`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context as _;

/// Flags of `procmesh probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The admin listener, e.g. 127.0.0.1:7601.
    pub addr: SocketAddr,
    /// The path to GET.
    #[arg(default_value = "/readyz")]
    pub path: String,
    /// Bearer token file, for a listener reached from outside its loopback.
    #[arg(long, env = "PROCMESH_ADMIN_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

/// Exit codes: 0 the endpoint answered 2xx; 1 anything else (the status or error is printed).
pub fn run(args: ProbeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.path.starts_with('/') && !args.path.contains([' ', '\r', '\n']),
        "the path must start with / and hold no spaces: {:?}",
        args.path
    );
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let stream = TcpStream::connect_timeout(&args.addr, timeout)
        .with_context(|| format!("connecting to {}", args.addr))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n{auth}User-Agent: procmesh-probe\r\nConnection: close\r\n\r\n",
        args.path, args.addr
    );
    (&stream)
        .write_all(request.as_bytes())
        .context("sending the request")?;
    let mut reader = BufReader::new((&stream).take(64 * 1024));
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .context("reading the answer")?;
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("not an HTTP answer: {:?}", status.trim_end()))?;
    // The body (a JSON object on the admin endpoints) says why a node is not ready.
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    let body = rest.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    anyhow::ensure!(
        (200..300).contains(&code),
        "{}{} answered {code}: {body}",
        args.addr,
        args.path
    );
    println!("{code} {body}");
    Ok(())
}
