//! Addresses and identifiers: [`HostAddr`], [`ProcId`], [`ActorId`].
//!
//! Every id renders as text and parses back to exactly the same value:
//!
//! ```text
//! quic!10.0.0.5:7700                 a host frontend (one UDP port)
//! quic!10.0.0.5:7700,worker-3        a proc on that host
//! quic!10.0.0.5:7700,worker-3.agent  an actor in that proc
//! unix!/run/procmesh/host.sock       a Unix socket address (host backends)
//! local!orchestrator                 an in-process address (tests, `demo`)
//! ```
//!
//! # Invariants
//! - **ID-1** `x.to_string().parse() == Ok(x)` for every valid id, and parsing accepts only what
//!   rendering can produce.
//! - **ID-2** Proc and actor names are 1..=64 characters of `[A-Za-z0-9_-]`; they therefore never
//!   contain the separators `,` and `.`, which is what makes parsing unambiguous even when a Unix
//!   path contains them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The reserved proc name of a host's own actors (the host agent among them).
pub const SERVICE_PROC: &str = "service";
/// The reserved proc name for clients on a host, created empty, filled only when first asked for.
pub const LOCAL_PROC: &str = "local";
/// Longest proc or actor name accepted (ID-2).
pub const MAX_NAME_LEN: usize = 64;

/// Why a piece of text is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The address has no `scheme!` prefix or names an unknown scheme.
    #[error("unknown address scheme in {0:?}: expected quic!, unix! or local!")]
    Scheme(String),
    /// `quic!` must be followed by `ip:port`.
    #[error("bad socket address in {text:?}: {reason}")]
    SocketAddr {
        /// The offending text.
        text: String,
        /// What the parser said.
        reason: String,
    },
    /// A name breaks ID-2.
    #[error("bad name {0:?}: use 1..=64 characters of A-Z a-z 0-9 _ -")]
    Name(String),
    /// A part of the id is missing (`,proc` or `.actor`).
    #[error("{what} missing in {text:?}")]
    Missing {
        /// Which part.
        what: &'static str,
        /// The offending text.
        text: String,
    },
    /// Unix paths must be absolute and non-empty; local names must be non-empty.
    #[error("bad address {0:?}")]
    Address(String),
}

/// Checks a proc or actor name against ID-2.
pub fn validate_name(name: &str) -> Result<(), IdError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(IdError::Name(name.to_owned()))
    }
}

/// Where a host (or any node of the mesh) is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostAddr {
    /// A QUIC frontend: one UDP socket address.
    Quic(SocketAddr),
    /// A Unix domain socket path (absolute).
    Unix(PathBuf),
    /// An in-process address, by name.
    Local(String),
}

impl HostAddr {
    /// A QUIC address. The IPv6 flow label is not part of an address's identity (it is not
    /// rendered, ID-1), so it is cleared here.
    pub fn quic(addr: SocketAddr) -> HostAddr {
        HostAddr::Quic(match addr {
            SocketAddr::V6(mut v6) => {
                v6.set_flowinfo(0);
                SocketAddr::V6(v6)
            }
            v4 => v4,
        })
    }

    /// The socket address of a QUIC address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            HostAddr::Quic(a) => Some(*a),
            _ => None,
        }
    }

    /// The proc `name` on this host.
    pub fn proc(&self, name: &str) -> Result<ProcId, IdError> {
        ProcId::new(self.clone(), name)
    }
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostAddr::Quic(a) => write!(f, "quic!{a}"),
            HostAddr::Unix(p) => write!(f, "unix!{}", p.display()),
            HostAddr::Local(n) => write!(f, "local!{n}"),
        }
    }
}

impl FromStr for HostAddr {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let (scheme, rest) = s
            .split_once('!')
            .ok_or_else(|| IdError::Scheme(s.to_owned()))?;
        match scheme {
            "quic" => {
                rest.parse::<SocketAddr>()
                    .map(HostAddr::quic)
                    .map_err(|e| IdError::SocketAddr {
                        text: s.to_owned(),
                        reason: e.to_string(),
                    })
            }
            "unix" => {
                // A path that does not render back identically (non-UTF-8 never gets here) or
                // that is relative is refused: ID-1.
                if rest.starts_with('/') && !rest.contains('\0') {
                    Ok(HostAddr::Unix(PathBuf::from(rest)))
                } else {
                    Err(IdError::Address(s.to_owned()))
                }
            }
            "local" => {
                // Local names follow ID-2 so that they, too, never contain separators.
                validate_name(rest).map_err(|_| IdError::Address(s.to_owned()))?;
                Ok(HostAddr::Local(rest.to_owned()))
            }
            _ => Err(IdError::Scheme(s.to_owned())),
        }
    }
}

/// A proc: a host address and a proc name on it.
///
/// Shared and rendered once: an action's record, every transition that names where it ran,
/// and every event sent to a client carry one, so a clone is a reference count and its text
/// form (what [`Display`](fmt::Display) and the wire show) is kept beside the parts.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcId(Arc<ProcParts>);

/// The parts of a [`ProcId`], compared in this order; `text` follows from the other two.
#[derive(PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ProcParts {
    addr: HostAddr,
    name: Box<str>,
    text: Box<str>,
}

impl ProcId {
    /// A proc id, checking the name (ID-2).
    pub fn new(addr: HostAddr, name: &str) -> Result<Self, IdError> {
        validate_name(name)?;
        let text = format!("{addr},{name}").into_boxed_str();
        Ok(ProcId(Arc::new(ProcParts {
            addr,
            name: name.into(),
            text,
        })))
    }

    /// The host this proc lives on.
    pub fn addr(&self) -> &HostAddr {
        &self.0.addr
    }

    /// The proc's name on its host.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Its text form, `addr,name`.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// Whether this is the host's reserved `service` proc.
    pub fn is_service(&self) -> bool {
        &*self.0.name == SERVICE_PROC
    }

    /// The actor `name` in this proc.
    pub fn actor(&self, name: &str) -> Result<ActorId, IdError> {
        ActorId::new(self.clone(), name)
    }

    /// Parses `text`, reusing an id parsed recently on this thread: a busy link decodes the
    /// same few procs over and over (every transition names one), so most arrivals cost a
    /// hash lookup instead of a parse and an allocation. The cache is bounded and only ever
    /// holds ids that parsed, so it answers exactly what parsing would.
    fn parse_recent(text: &str) -> Result<ProcId, IdError> {
        const RECENT_MAX: usize = 1024;
        thread_local! {
            static RECENT: RefCell<HashMap<Box<str>, ProcId>> = RefCell::new(HashMap::new());
        }
        RECENT.with(|recent| {
            if let Some(id) = recent.borrow().get(text) {
                return Ok(id.clone());
            }
            let id: ProcId = text.parse()?;
            let mut recent = recent.borrow_mut();
            if recent.len() >= RECENT_MAX {
                recent.clear();
            }
            recent.insert(text.into(), id.clone());
            Ok(id)
        })
    }
}

impl fmt::Debug for ProcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcId")
            .field("addr", &self.0.addr)
            .field("name", &self.0.name)
            .finish()
    }
}

impl fmt::Display for ProcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.text)
    }
}

impl FromStr for ProcId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        // ID-2: the name has no ',', so the last ',' separates it from the address.
        let (addr, name) = s.rsplit_once(',').ok_or_else(|| IdError::Missing {
            what: "proc name",
            text: s.to_owned(),
        })?;
        ProcId::new(addr.parse()?, name)
    }
}

impl Serialize for ProcId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ProcId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = ProcId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a ProcId in text form")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ProcId, E> {
                ProcId::parse_recent(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
    }
}

/// An actor: a proc and an actor name in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActorId {
    proc_id: ProcId,
    name: String,
}

impl ActorId {
    /// An actor id, checking the name (ID-2).
    pub fn new(proc_id: ProcId, name: &str) -> Result<Self, IdError> {
        validate_name(name)?;
        Ok(ActorId {
            proc_id,
            name: name.to_owned(),
        })
    }

    /// The proc the actor lives in.
    pub fn proc_id(&self) -> &ProcId {
        &self.proc_id
    }

    /// The host the actor lives on.
    pub fn addr(&self) -> &HostAddr {
        self.proc_id.addr()
    }

    /// The actor's name in its proc.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.proc_id, self.name)
    }
}

impl FromStr for ActorId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        // ID-2: the actor name has no '.', so the last '.' separates it from the proc.
        let (proc_id, name) = s.rsplit_once('.').ok_or_else(|| IdError::Missing {
            what: "actor name",
            text: s.to_owned(),
        })?;
        // Headers name the same few actors again and again: reuse their procs.
        ActorId::new(ProcId::parse_recent(proc_id)?, name)
    }
}

/// Ids travel on the wire as their text form: readable in captures and golden bytes, and
/// checked again on arrival (a peer cannot smuggle an invalid name past ID-2). [`ProcId`]
/// does the same by hand, from the text it keeps.
macro_rules! serde_as_text {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                // Parse straight from the decoder's buffer: no intermediate String.
                struct Text;
                impl serde::de::Visitor<'_> for Text {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a ", stringify!($t), " in text form"))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(Text)
            }
        }
    )*};
}
serde_as_text!(HostAddr, ActorId);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn renders_the_documented_forms() {
        let addr: HostAddr = "quic!10.0.0.5:7700".parse().unwrap();
        let actor = addr.proc("worker-3").unwrap().actor("agent").unwrap();
        assert_eq!(actor.to_string(), "quic!10.0.0.5:7700,worker-3.agent");
        assert_eq!(actor.proc_id().name(), "worker-3");
        assert_eq!(actor.name(), "agent");
        let v6: ActorId = "quic![::1]:7700,service.host".parse().unwrap();
        assert_eq!(v6.addr().socket_addr().unwrap().port(), 7700);
        // A Unix path may contain the separators; the names may not (ID-2).
        let unix: ActorId = "unix!/run/a.b,c/host.sock,p.x".parse().unwrap();
        assert_eq!(unix.addr(), &HostAddr::Unix("/run/a.b,c/host.sock".into()));
        assert_eq!(unix.proc_id().name(), "p");
    }

    #[test]
    fn proc_ids_decode_from_the_recent_cache_as_parsing_would() {
        let id: ProcId = "quic!10.0.0.5:7700,worker-3".parse().unwrap();
        assert_eq!(id.as_str(), "quic!10.0.0.5:7700,worker-3");
        assert_eq!(format!("{id:?}"), format!("{:?}", id.clone()));
        let bytes = rmp_serde::to_vec(&id).unwrap();
        let first: ProcId = rmp_serde::from_slice(&bytes).unwrap();
        let again: ProcId = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!((&first, &again), (&id, &id));
        assert!(
            Arc::ptr_eq(&first.0, &again.0),
            "the second decode reused the first"
        );
        // Bad text is refused every time, and never cached.
        let bad = rmp_serde::to_vec("quic!10.0.0.5:7700,bad name").unwrap();
        for _ in 0..2 {
            assert!(rmp_serde::from_slice::<ProcId>(&bad).is_err());
        }
        // Order and equality follow the parts (address, then name), as before.
        let a: ProcId = "local!a,z".parse().unwrap();
        let b: ProcId = "local!b,a".parse().unwrap();
        assert!(a < b && a != b);
    }

    #[test]
    fn refuses_bad_text() {
        for bad in [
            "",
            "quic!",
            "quic!10.0.0.5",
            "tcp!1.2.3.4:5",
            "unix!relative/path",
            "local!",
            "local!a.b",
            "quic!1.2.3.4:5,",
            "quic!1.2.3.4:5,bad name",
            "quic!1.2.3.4:5,p.",
        ] {
            assert!(bad.parse::<ActorId>().is_err(), "{bad:?} parsed as actor");
        }
        assert!(validate_name(&"x".repeat(65)).is_err());
        assert!(validate_name(&"x".repeat(64)).is_ok());
    }

    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-]{1,64}"
    }

    fn host_addr() -> impl Strategy<Value = HostAddr> {
        prop_oneof![
            any::<SocketAddr>().prop_map(HostAddr::quic),
            "/[a-z.,/_-]{0,30}".prop_map(|p| HostAddr::Unix(p.into())),
            name().prop_map(HostAddr::Local),
        ]
    }

    proptest! {
        // Attests ID-1, ID-2
        #[test]
        fn ids_round_trip_exactly(addr in host_addr(), p in name(), a in name()) {
            let id = ActorId::new(ProcId::new(addr.clone(), &p).unwrap(), &a).unwrap();
            let text = id.to_string();
            prop_assert_eq!(text.parse::<ActorId>().unwrap(), id.clone());
            prop_assert_eq!(id.proc_id().to_string().parse::<ProcId>().unwrap(), id.proc_id().clone());
            prop_assert_eq!(addr.to_string().parse::<HostAddr>().unwrap(), addr);
            let bytes = rmp_serde::to_vec_named(&id).unwrap();
            prop_assert_eq!(rmp_serde::from_slice::<ActorId>(&bytes).unwrap(), id);
        }
    }
}
