//! systemd readiness notification (`sd_notify`) without a crate: one datagram to the Unix
//! socket named by `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket), e.g.
//! `READY=1\nSTATUS=ready quic!…` once a node prints `ready`, `STOPPING=1` when it stops.
//!
//! The long-running nodes call [`take_socket`] first thing in their synchronous entry point:
//! it keeps the socket for this process and removes the variable from the environment, so the
//! processes a host starts (proc agents, which inherit its environment) never see it — with
//! `NotifyAccess=main` systemd would ignore their messages anyway, but an inherited variable
//! would invite any child that speaks sd_notify to try.

use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;

/// The variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// The socket [`take_socket`] took from the environment (`None` inside: there was none).
static SOCKET: OnceLock<Option<String>> = OnceLock::new();

/// Reads `$NOTIFY_SOCKET`, keeps it for [`notify`] and removes it from the environment; later
/// calls return the kept value. Call it before any thread exists: `remove_var` races with a
/// concurrent `getenv` of another thread. The node commands call it at the start of their
/// `run`, which `main` reaches single-threaded (the sandbox helper check, argument parsing,
/// the tracing subscriber — whose OTLP exporter thread starts only with a finished `attempt`
/// span, which nodes never have — and the crypto provider start no thread); the tokio runtime
/// is built after it. Should another thread exist anyway, the variable is left in place.
pub fn take_socket() -> Option<String> {
    SOCKET
        .get_or_init(|| {
            let value = std::env::var(NOTIFY_SOCKET_ENV)
                .ok()
                .filter(|v| !v.is_empty());
            if value.is_some() {
                if single_threaded() {
                    std::env::remove_var(NOTIFY_SOCKET_ENV);
                } else {
                    tracing::warn!(
                        "other threads exist: {NOTIFY_SOCKET_ENV} stays in the environment"
                    );
                }
            }
            value
        })
        .clone()
}

/// Whether this process has exactly one thread (`/proc/self/task`); false if unknown.
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1)
}

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to the service manager: the
/// socket [`take_socket`] kept, else `$NOTIFY_SOCKET`. `Ok(false)` when there is none (not
/// run by systemd, or not as `Type=notify`); `Ok(true)` once the datagram is sent.
pub fn notify(state: &str) -> io::Result<bool> {
    match SOCKET.get() {
        Some(kept) => send(kept.as_deref(), state),
        None => send(std::env::var(NOTIFY_SOCKET_ENV).ok().as_deref(), state),
    }
}

/// Sends `state` as one datagram to `socket`: a path, or `@name` for an abstract socket.
fn send(socket: Option<&str>, state: &str) -> io::Result<bool> {
    let Some(socket) = socket.filter(|s| !s.is_empty()) else {
        return Ok(false);
    };
    let addr = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sent = UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("{NOTIFY_SOCKET_ENV}: sent {sent} of {} bytes", state.len()),
        ));
    }
    Ok(true)
}

/// [`notify`], a failure logged as a warning: readiness reporting is never fatal.
pub fn notify_or_warn(state: &str) {
    if let Err(error) = notify(state) {
        tracing::warn!(%error, state, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notify_sends_one_datagram_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let state = "READY=1\nSTATUS=ready quic!127.0.0.1:7600";
        assert!(send(Some(path.to_str().unwrap()), state).unwrap());
        assert_eq!(receive(&socket), state);
        assert!(send(Some(path.to_str().unwrap()), "STOPPING=1").unwrap());
        assert_eq!(receive(&socket), "STOPPING=1");
    }

    #[test]
    fn notify_sends_to_an_abstract_socket() {
        let name = format!("procmesh-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        assert!(send(Some(&format!("@{name}")), "READY=1\nSTATUS=x").unwrap());
        assert_eq!(receive(&socket), "READY=1\nSTATUS=x");
    }

    #[test]
    fn notify_without_a_socket_sends_nothing() {
        assert!(!send(None, "READY=1").unwrap());
        assert!(!send(Some(""), "READY=1").unwrap());
    }

    #[test]
    fn notify_to_a_missing_socket_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody.sock");
        assert!(send(Some(path.to_str().unwrap()), "READY=1").is_err());
    }
}
