//! Who a certificate says its holder is: a [`Role`] and, for per-node certificates, a node
//! name, written as the URI SAN `spiffe://<mesh>/<role>[/<name>]` (see the `tls` module
//! docs for the scheme and TLS-4, TLS-5).

use crate::tls::TlsError;

/// The role a certificate names: what its holder may do in the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The orchestrator: schedules, dispatches, owns the journal. Listens and dials.
    Orchestrator,
    /// A host agent: runs procs for the orchestrator. Listens and dials.
    Host,
    /// A client: submits and follows work in its own queues. Dials only.
    Client,
    /// An operator: administers hosts (spawn, kill, list procs) besides what a client may do.
    Operator,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Orchestrator, Role::Host, Role::Client, Role::Operator];

    /// Its name in certificates and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Orchestrator => "orchestrator",
            Role::Host => "host",
            Role::Client => "client",
            Role::Operator => "operator",
        }
    }

    /// Whether holders listen and may be dialled (their certificate names the server name
    /// [`NODE_SERVER_NAME`]).
    pub const fn is_node(self) -> bool {
        matches!(self, Role::Orchestrator | Role::Host)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (orchestrator, host, client, operator)"))
    }
}

/// The URI scheme of identity SANs.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// The common name prefix of a mesh CA certificate; the mesh name follows.
pub(crate) const CA_CN_PREFIX: &str = "procmesh mesh CA ";

/// Checks a mesh or node name: `[A-Za-z0-9._-]{1,63}`.
pub fn validate_identity_name(what: &str, name: &str) -> Result<(), TlsError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TlsError::Identity(format!(
            "bad {what} {name:?}: use 1 to 63 of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// Who a certificate says its holder is (TLS-4, TLS-5): parsed from its one
/// `spiffe://<mesh>/<role>[/<name>]` URI SAN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The role.
    pub role: Role,
    /// The node name, if the certificate names one (a shared host certificate does not).
    pub name: Option<String>,
    /// The mesh (the CA's mesh name).
    pub mesh: String,
    /// The certificate's serial: lowercase hex of its DER integer bytes, as `procmesh certs`
    /// prints it and as revocation files list it.
    pub serial: String,
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.uri())?;
        write!(f, " (serial {})", self.serial)
    }
}

impl PeerIdentity {
    /// The identity URI: `spiffe://<mesh>/<role>[/<name>]`.
    pub fn uri(&self) -> String {
        spiffe_uri(&self.mesh, self.role, self.name.as_deref())
    }

    /// Parses the identity of a DER certificate: exactly one valid procmesh SPIFFE URI SAN.
    pub fn from_cert_der(der: &[u8]) -> Result<PeerIdentity, TlsError> {
        use x509_parser::extensions::GeneralName;
        let bad = |reason: String| TlsError::Identity(reason);
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| bad(format!("unparsable certificate: {e}")))?;
        let serial = hex::encode(cert.tbs_certificate.raw_serial());
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| bad(format!("bad subject alternative names: {e}")))?;
        let uris: Vec<&str> = sans
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|n| match n {
                GeneralName::URI(uri) if uri.starts_with(SPIFFE_SCHEME) => Some(*uri),
                _ => None,
            })
            .collect();
        let uri = match uris.as_slice() {
            [one] => *one,
            [] => {
                return Err(bad(format!(
                    "certificate {serial} names no procmesh identity"
                )))
            }
            _ => {
                return Err(bad(format!(
                    "certificate {serial} names {} identities",
                    uris.len()
                )))
            }
        };
        let (role, name, mesh) = parse_spiffe(uri)
            .map_err(|reason| bad(format!("certificate {serial}: identity {uri:?}: {reason}")))?;
        Ok(PeerIdentity {
            role,
            name,
            mesh,
            serial,
        })
    }
}

pub(crate) fn spiffe_uri(mesh: &str, role: Role, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{SPIFFE_SCHEME}{mesh}/{role}/{name}"),
        None => format!("{SPIFFE_SCHEME}{mesh}/{role}"),
    }
}

fn parse_spiffe(uri: &str) -> Result<(Role, Option<String>, String), String> {
    let rest = uri
        .strip_prefix(SPIFFE_SCHEME)
        .ok_or_else(|| "not a spiffe:// URI".to_owned())?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (mesh, role, name) = match parts.as_slice() {
        [mesh, role] => (*mesh, *role, None),
        [mesh, role, name] => (*mesh, *role, Some(*name)),
        _ => return Err("expected spiffe://<mesh>/<role>[/<name>]".into()),
    };
    validate_identity_name("mesh name", mesh).map_err(|e| e.to_string())?;
    let role: Role = role.parse()?;
    if let Some(name) = name {
        validate_identity_name("node name", name).map_err(|e| e.to_string())?;
    }
    Ok((role, name.map(str::to_owned), mesh.to_owned()))
}
