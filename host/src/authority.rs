//! Who may ask the host what: the one place the host decides whether a request's sender may
//! make it ([`decide`]), and the filter of a spawn's environment ([`check_spawn_env`]).
//!
//! A sender is classified by the link its request arrived on ([`Sender::of`]); the transport has
//! already checked that the envelope's sender belongs to that link (NODE-5), and the host's
//! admission that a backend link is the proc it claims to be (HST-18).
//!
//! | request | this process | orchestrator | operator | our proc (backend) | client | host |
//! |---|---|---|---|---|---|---|
//! | `Spawn`, `Terminate`, `Kill`, `TerminateAll`, `ListProcs`, `Status` | yes | yes | yes | no | no | no |
//! | `FetchBlobs` | yes | yes | no | yes | no | no |
//! | `ProcReady` | no | no | no | only the proc being bootstrapped, over its own backend link (HST-12) | no | no |
//!
//! "This process" is a request with no link (sent by code in the host's process) or over an
//! in-process link (the `local` proc, in-process procs of tests and `demo`). A QUIC peer's role
//! is the one its certificate names (TLS-4); a peer without one is refused everything.
//!
//! Everything refused is answered [`HostError::Forbidden`] with the reason, logged, counted by
//! request kind ([`Refusals`], reported by `Host::refusals`), and changes nothing.
//!
//! # Invariants
//! - **HST-16** A host request is carried out only if the table above allows its sender;
//!   otherwise it is refused `Forbidden` before anything is looked at or changed (the proc
//!   table is unchanged), and counted under its kind.
//! - **HST-19** A `Spawn` request's environment may only name variables the host's
//!   `spawn_env_allow` lists (exact names, or prefixes ending in `*`); `LD_*` and `PROCMESH_*`
//!   never: a refused name fails the spawn `Forbidden` naming it, and nothing is started.

use std::collections::BTreeMap;
use std::sync::Mutex;

use procmesh_protocol::messages::{HostError, HostRequest};
use procmesh_protocol::HostAddr;
use procmesh_transport::{PeerInfo, Role, TransportKind};

/// What a request asks, for authority and counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Spawn,
    Terminate,
    Kill,
    TerminateAll,
    ListProcs,
    FetchBlobs,
    Status,
    ProcReady,
    /// An envelope from a QUIC peer for one of the host's procs (HST-17).
    Relay,
}

impl Kind {
    pub(crate) fn of(request: &HostRequest) -> Kind {
        match request {
            HostRequest::Spawn(_) => Kind::Spawn,
            HostRequest::Terminate { .. } => Kind::Terminate,
            HostRequest::Kill { .. } => Kind::Kill,
            HostRequest::TerminateAll { .. } => Kind::TerminateAll,
            HostRequest::ListProcs => Kind::ListProcs,
            HostRequest::FetchBlobs { .. } => Kind::FetchBlobs,
            HostRequest::Status => Kind::Status,
        }
    }

    /// Its name in logs and in [`Refusals`].
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Kind::Spawn => "spawn",
            Kind::Terminate => "terminate",
            Kind::Kill => "kill",
            Kind::TerminateAll => "terminate_all",
            Kind::ListProcs => "list_procs",
            Kind::FetchBlobs => "fetch_blobs",
            Kind::Status => "status",
            Kind::ProcReady => "proc_ready",
            Kind::Relay => "relay",
        }
    }
}

/// Who sent a request, as far as the host can tell from its link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sender {
    /// Code in this process: no link, or an in-process link.
    ThisProcess,
    /// One of this host's procs, over its backend socket: the proc named.
    Proc(String),
    /// A peer over QUIC (or a Unix node at another address), with the role its certificate
    /// names, if any.
    Remote(Option<Role>),
}

impl Sender {
    /// Classifies the link a request came over; `ours` is the host's frontend address.
    pub(crate) fn of(peer: Option<&PeerInfo>, ours: &HostAddr) -> Sender {
        let Some(peer) = peer else {
            return Sender::ThisProcess;
        };
        match peer.transport {
            TransportKind::Local => Sender::ThisProcess,
            TransportKind::Unix if peer.hello.addr == *ours => {
                Sender::Proc(peer.hello.name.clone())
            }
            TransportKind::Unix | TransportKind::Quic => Sender::Remote(peer.role()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Sender::ThisProcess => "this process".into(),
            Sender::Proc(name) => format!("proc {name:?}"),
            Sender::Remote(Some(role)) => format!("a {role} certificate"),
            Sender::Remote(None) => "a peer without a certificate".into(),
        }
    }
}

/// HST-16: whether `sender` may make a request of `kind` (`ProcReady` is judged with its
/// content, by the bootstrap actor; here only its sender class).
pub(crate) fn decide(kind: Kind, sender: &Sender) -> Result<(), String> {
    use Kind::*;
    let admin = matches!(
        sender,
        Sender::ThisProcess | Sender::Remote(Some(Role::Orchestrator | Role::Operator))
    );
    let allowed = match kind {
        Spawn | Terminate | Kill | TerminateAll | ListProcs | Status => admin,
        FetchBlobs => matches!(
            sender,
            Sender::ThisProcess | Sender::Proc(_) | Sender::Remote(Some(Role::Orchestrator))
        ),
        // Only from a backend link; the bootstrap actor checks it is the proc's own.
        ProcReady => matches!(sender, Sender::Proc(_) | Sender::ThisProcess),
        Relay => matches!(sender, Sender::Remote(Some(Role::Orchestrator))),
    };
    if allowed {
        Ok(())
    } else {
        let who = match kind {
            Spawn | Terminate | Kill | TerminateAll | ListProcs | Status => {
                "the orchestrator or an operator"
            }
            FetchBlobs => "the orchestrator or this host's procs",
            ProcReady => "the proc being bootstrapped, over its backend link",
            Relay => "the orchestrator",
        };
        Err(format!(
            "{} may not be sent by {}: only by {who}",
            kind.as_str(),
            sender.describe()
        ))
    }
}

/// Refusals by request kind (HST-16, HST-17, HST-18).
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl Refusals {
    /// Counts and logs one refusal; returns the error to answer with.
    pub(crate) fn refuse(&self, kind: Kind, reason: String) -> HostError {
        *self
            .counts
            .lock()
            .expect("refusals lock")
            .entry(kind.as_str())
            .or_insert(0) += 1;
        tracing::warn!(kind = kind.as_str(), %reason, "refused");
        HostError::Forbidden(reason)
    }

    /// Counts one refusal of a link (`backend`) or a relay, without an answer.
    pub(crate) fn count(&self, what: &'static str) {
        *self
            .counts
            .lock()
            .expect("refusals lock")
            .entry(what)
            .or_insert(0) += 1;
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.counts.lock().expect("refusals lock").clone()
    }
}

/// HST-19: whether a `Spawn` request may set these environment variables.
pub(crate) fn check_spawn_env<'a>(
    names: impl IntoIterator<Item = &'a String>,
    allow: &[String],
) -> Result<(), HostError> {
    for name in names {
        let never = name.starts_with("LD_") || name.starts_with("PROCMESH_");
        let listed = allow.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => pattern == name,
        });
        if never || !listed {
            let why = if never {
                "LD_* and PROCMESH_* variables are never passed to a proc".to_owned()
            } else {
                "not in the host's spawn_env_allow".to_owned()
            };
            return Err(HostError::Forbidden(format!(
                "environment variable {name:?} may not be set by a spawn request: {why}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: [Kind; 6] = [
        Kind::Spawn,
        Kind::Terminate,
        Kind::Kill,
        Kind::TerminateAll,
        Kind::ListProcs,
        Kind::Status,
    ];

    // Attests HST-16 (the table)
    #[test]
    fn the_table_of_who_may_ask_what() {
        let this = Sender::ThisProcess;
        let proc = Sender::Proc("w-1".into());
        let role = |r| Sender::Remote(Some(r));
        let none = Sender::Remote(None);
        for kind in ADMIN {
            for ok in [&this, &role(Role::Orchestrator), &role(Role::Operator)] {
                assert_eq!(decide(kind, ok), Ok(()), "{kind:?} from {ok:?}");
            }
            for bad in [&proc, &role(Role::Client), &role(Role::Host), &none] {
                let err = decide(kind, bad).unwrap_err();
                assert!(err.contains(kind.as_str()), "{err}");
            }
        }
        for ok in [&this, &proc, &role(Role::Orchestrator)] {
            assert_eq!(decide(Kind::FetchBlobs, ok), Ok(()), "{ok:?}");
        }
        for bad in [
            &role(Role::Client),
            &role(Role::Host),
            &role(Role::Operator),
            &none,
        ] {
            assert!(decide(Kind::FetchBlobs, bad).is_err(), "{bad:?}");
        }
        assert_eq!(decide(Kind::ProcReady, &proc), Ok(()));
        for bad in [&role(Role::Orchestrator), &role(Role::Client), &none] {
            assert!(decide(Kind::ProcReady, bad).is_err(), "{bad:?}");
        }
        assert_eq!(decide(Kind::Relay, &role(Role::Orchestrator)), Ok(()));
        for bad in [
            &role(Role::Client),
            &role(Role::Host),
            &role(Role::Operator),
            &none,
        ] {
            assert!(decide(Kind::Relay, bad).is_err(), "{bad:?}");
        }
    }

    // Attests HST-16 (counted by kind)
    #[test]
    fn refusals_are_counted_by_kind() {
        let r = Refusals::default();
        let e = r.refuse(Kind::Spawn, "no".into());
        assert_eq!(e.code(), "forbidden");
        r.refuse(Kind::Spawn, "no".into());
        r.refuse(Kind::Kill, "no".into());
        let counts = r.snapshot();
        assert_eq!(counts["spawn"], 2);
        assert_eq!(counts["kill"], 1);
    }

    // Attests HST-19
    #[test]
    fn the_spawn_environment_is_filtered() {
        let allow = vec![
            "RUST_LOG".to_owned(),
            "MYAPP_*".to_owned(),
            "LD_*".to_owned(),
        ];
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            check_spawn_env(&names(&["RUST_LOG", "MYAPP_X", "MYAPP_"]), &allow),
            Ok(())
        );
        for bad in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "PROCMESH_EXECUTOR",
            "PATH",
            "RUST_LOGX",
        ] {
            match check_spawn_env(&names(&["RUST_LOG", bad]), &allow) {
                Err(HostError::Forbidden(reason)) => {
                    assert!(reason.contains(bad), "{reason}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        // Nothing is allowed by default.
        assert!(check_spawn_env(&names(&["RUST_LOG"]), &[]).is_err());
        assert_eq!(check_spawn_env(&names(&[]), &[]), Ok(()));
    }
}
