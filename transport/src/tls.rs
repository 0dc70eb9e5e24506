//! Certificates and TLS configuration: one mesh CA, node and client certificates, mutual TLS.
//!
//! Identity follows the role model of Nomad and Consul: every certificate is signed by the
//! fleet's mesh CA and carries a role name as a subject alternative name — `node.procmesh` for
//! hosts and orchestrators, `client.procmesh` for clients and operators. A dialer verifies that
//! the peer is a *node of this mesh* (chain to the mesh CA, SAN `node.procmesh`), not that it
//! sits at one IP: addresses in a fleet move, the CA does not.
//!
//! # Identities: `spiffe://<mesh>/<role>[/<name>]`
//! Which role (and which node) a certificate's holder is, is written into the certificate as
//! one URI SAN in the SPIFFE form — `spiffe://<mesh>/<role>` or `spiffe://<mesh>/<role>/<name>`,
//! `<role>` one of `orchestrator`, `host`, `client`, `operator`, `<mesh>` the CA's mesh name and
//! `<name>` the node name (`[A-Za-z0-9._-]{1,63}`). A URI SAN rather than a DNS name because it
//! is the standard place for a workload identity (SPIFFE X.509-SVID): it is never taken for a
//! host name by a verifier, it keeps the DNS server name (`node.procmesh`) that dialers check
//! untouched, and it carries mesh, role and name in one structured value. The handshake yields
//! that verified identity ([`PeerIdentity`]: role, name, mesh, serial); a peer certificate
//! without exactly one valid procmesh SPIFFE URI of our mesh is refused at connection time.
//!
//! Which fleets use which node identity:
//! - **Per-node certificates** (`--role host --name h1`): fleets that provision each machine
//!   on its own (a configuration-management run, a PKI per machine). The name is in the
//!   certificate, so the orchestrator binds the host's address to that name, and a stolen
//!   certificate can speak only for its one node.
//! - **One shared host certificate** (`--role host`, no name) **plus a node secret**: fleets
//!   whose hosts are identical copies (an autoscaling group, a Kubernetes DaemonSet, Nomad-style
//!   clients sharing one client certificate). Each host draws a random secret at its first
//!   start and keeps it in its state directory; its hellos claim its node name with a proof of
//!   the secret bound to the connection ([`node_proof`](crate::node_proof)). The orchestrator
//!   binds the node's name and address to the secret of its first registration (persisted in
//!   its journal) and refuses any other peer speaking for that node.
//! - Orchestrator, client and operator certificates may carry a name (for logs and
//!   revocation) or not.
//!
//! # Invariants
//! - **TLS-1** Every listener requires a client certificate chaining to the mesh CA; a peer with
//!   no certificate or one from another CA never completes a handshake. Nothing is plaintext.
//! - **TLS-2** One process-wide crypto provider (ring) is installed before any config is built
//!   ([`install_crypto_provider`]), and every config names it explicitly as well.
//! - **TLS-3** The QUIC stateless-reset key is derived from the identity's private key
//!   ([`TlsIdentity::reset_key`]: BLAKE3 `derive_key("procmesh quic stateless reset v1", key
//!   DER)`, then BLAKE3 keyed hashing as the MAC), never drawn at random. A node restarted with
//!   the same identity therefore sends stateless resets its peers accept, and they drop their
//!   connection to the dead process at once instead of after the idle timeout (QUIC-5). The
//!   key is one-way from the private key and domain-separated, so it reveals nothing about it;
//!   a new identity (a new key) means a new reset key, as it should. (The endpoint must also
//!   not drop the dead process's connection ids as foreign before answering them: see the
//!   connection-id generator in `quic`.)
//! - **TLS-4** Every issued certificate carries exactly one identity URI SAN
//!   `spiffe://<mesh>/<role>[/<name>]`; only orchestrator and host certificates carry the node
//!   server name `node.procmesh` (clients and operators `client.procmesh`), so a client
//!   certificate can never serve as a node. Names outside `[A-Za-z0-9._-]{1,63}` are refused.
//! - **TLS-5** A peer certificate that does not yield exactly one valid identity of our mesh
//!   ([`PeerIdentity::from_cert_der`]) is refused right after the TLS handshake, both when we
//!   accept and when we dial; a dialled server must be an orchestrator or a host.
//! - **TLS-6** A peer whose certificate serial is in the node's [`Revocations`] is refused right
//!   after the TLS handshake, and when the revocation file changes every open connection of a
//!   now-revoked peer is closed (within about two seconds).

use std::fs;
use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// The SAN every node certificate carries, and the server name every dialer verifies.
pub const NODE_SERVER_NAME: &str = "node.procmesh";
/// The SAN every client certificate carries.
pub const CLIENT_NAME: &str = "client.procmesh";
/// ALPN protocol id of procmesh over QUIC.
pub const ALPN: &[u8] = b"procmesh/1";

/// File names used by [`TlsIdentity::save`] and [`TlsIdentity::load`].
pub const CA_CERT_FILE: &str = "ca.pem";
/// The certificate file of an identity.
pub const CERT_FILE: &str = "cert.pem";
/// The private key file of an identity.
pub const KEY_FILE: &str = "key.pem";

/// Errors building or loading certificates and TLS configs.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("tls config: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A PEM file holds no usable item.
    #[error("{what} in {path}: {reason}")]
    Pem {
        /// What was expected.
        what: &'static str,
        /// Where.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// quinn refused the rustls config (e.g. no TLS 1.3 suite).
    #[error("quic crypto: {0}")]
    Quic(String),
    /// A certificate's identity is missing or malformed, or a name is invalid (TLS-4, TLS-5).
    #[error("identity: {0}")]
    Identity(String),
    /// A revocation file has a malformed line.
    #[error("{path}:{line}: {reason}")]
    Revocations {
        /// The file.
        path: String,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

fn mesh_of_ca_pem(cert_pem: &str) -> Result<String, TlsError> {
    let bad = |reason: String| TlsError::Identity(format!("mesh CA certificate: {reason}"));
    let der = parse_certs(cert_pem).map_err(bad)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der[0].as_ref())
        .map_err(|e| bad(format!("unparsable: {e}")))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| bad("no common name".into()))?;
    let mesh = cn
        .strip_prefix(CA_CN_PREFIX)
        .ok_or_else(|| bad(format!("common name {cn:?} is not {CA_CN_PREFIX:?}<mesh>")))?;
    validate_identity_name("mesh name", mesh)?;
    Ok(mesh.to_owned())
}

static PROVIDER: Once = Once::new();

/// Installs ring as the process-wide rustls crypto provider (TLS-2). Idempotent; call it before
/// building any TLS config. A provider installed by someone else first is left in place.
pub fn install_crypto_provider() {
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn provider() -> Arc<CryptoProvider> {
    install_crypto_provider();
    Arc::new(rustls::crypto::ring::default_provider())
}

use crate::identity::{spiffe_uri, CA_CN_PREFIX};
pub use crate::identity::{validate_identity_name, PeerIdentity, Role, SPIFFE_SCHEME};

/// A mesh certificate authority: signs node and client certificates.
pub struct MeshCa {
    cert_pem: String,
    mesh: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa").finish_non_exhaustive()
    }
}

impl MeshCa {
    /// A new CA named `mesh` (`[A-Za-z0-9._-]{1,63}`), valid for `valid_for` from one hour ago
    /// (clock skew).
    pub fn generate(mesh: &str, valid_for: Duration) -> Result<MeshCa, TlsError> {
        validate_identity_name("mesh name", mesh)?;
        let mut params = CertificateParams::new(Vec::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{CA_CN_PREFIX}{mesh}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "procmesh");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, valid_for);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(MeshCa {
            cert_pem: cert.pem(),
            mesh: mesh.to_owned(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and private key (PEM). The mesh name comes from the
    /// certificate's common name (`procmesh mesh CA <mesh>`).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<MeshCa, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let mesh = mesh_of_ca_pem(cert_pem)?;
        Ok(MeshCa {
            cert_pem: cert_pem.to_owned(),
            mesh,
            issuer,
        })
    }

    /// The mesh name.
    pub fn mesh(&self) -> &str {
        &self.mesh
    }

    /// The CA certificate (PEM): every node and client trusts it.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PEM). Keep it off the fleet's nodes.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a certificate for `role`, named `name` (`""`: no node name, e.g. a fleet-wide
    /// shared host certificate), with extra SANs (DNS names or IPs) beside the role's server
    /// name and the identity URI `spiffe://<mesh>/<role>[/<name>]` (TLS-4). Both server and
    /// client auth are allowed: nodes dial each other.
    pub fn issue(
        &self,
        role: Role,
        name: &str,
        extra_sans: &[String],
        valid_for: Duration,
    ) -> Result<TlsIdentity, TlsError> {
        let name = (!name.is_empty()).then_some(name);
        if let Some(name) = name {
            validate_identity_name("node name", name)?;
        }
        let role_san = if role.is_node() {
            NODE_SERVER_NAME
        } else {
            CLIENT_NAME
        };
        let mut sans = vec![role_san.to_owned()];
        for san in extra_sans {
            if san.starts_with(SPIFFE_SCHEME) || san == NODE_SERVER_NAME || san == CLIENT_NAME {
                return Err(TlsError::Identity(format!(
                    "extra SAN {san:?} is reserved: the role decides it"
                )));
            }
            sans.push(san.clone());
        }
        let mut params = CertificateParams::new(sans)?;
        let uri = spiffe_uri(&self.mesh, role, name);
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(rcgen::string::Ia5String::try_from(
                uri.as_str(),
            )?));
        params
            .distinguished_name
            .push(DnType::CommonName, name.unwrap_or(role.as_str()));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "procmesh");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut params, valid_for);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(TlsIdentity {
            ca_cert_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn set_validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after =
        now + time::Duration::seconds(valid_for.as_secs().min(i64::MAX as u64) as i64);
}

/// What one node or client needs for mutual TLS: the mesh CA certificate, its own certificate
/// and its private key, all PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The mesh CA certificate.
    pub ca_cert_pem: String,
    /// This node's certificate.
    pub cert_pem: String,
    /// This node's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// The identity our own certificate names (TLS-4).
    pub fn identity(&self) -> Result<PeerIdentity, TlsError> {
        let chain = parse_certs(&self.cert_pem).map_err(|reason| TlsError::Pem {
            what: "certificate",
            path: "identity".into(),
            reason,
        })?;
        PeerIdentity::from_cert_der(chain[0].as_ref())
    }

    /// The mesh name of our CA certificate.
    pub fn mesh(&self) -> Result<String, TlsError> {
        mesh_of_ca_pem(&self.ca_cert_pem)
    }

    /// Writes `ca.pem`, `cert.pem` and `key.pem` (mode 0600) into `dir`, creating it.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| TlsError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        for (file, text) in [
            (CA_CERT_FILE, &self.ca_cert_pem),
            (CERT_FILE, &self.cert_pem),
            (KEY_FILE, &self.key_pem),
        ] {
            let path = dir.join(file);
            write_private(&path, text).map_err(io(&path))?;
        }
        Ok(())
    }

    /// Reads an identity saved by [`save`](Self::save), checking that each file parses.
    pub fn load(dir: &Path) -> Result<TlsIdentity, TlsError> {
        let read = |file: &str| {
            let path = dir.join(file);
            fs::read_to_string(&path).map_err(|source| TlsError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let identity = TlsIdentity {
            ca_cert_pem: read(CA_CERT_FILE)?,
            cert_pem: read(CERT_FILE)?,
            key_pem: read(KEY_FILE)?,
        };
        identity.parts(&dir.display().to_string())?;
        Ok(identity)
    }

    fn parts(&self, origin: &str) -> Result<Parts, TlsError> {
        let pem_err = |what: &'static str, reason: String| TlsError::Pem {
            what,
            path: origin.to_owned(),
            reason,
        };
        let ca = parse_certs(&self.ca_cert_pem).map_err(|r| pem_err("CA certificate", r))?;
        let chain = parse_certs(&self.cert_pem).map_err(|r| pem_err("certificate", r))?;
        let key = parse_key(&self.key_pem).map_err(|r| pem_err("private key", r))?;
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert)?;
        }
        Ok(Parts {
            roots: Arc::new(roots),
            chain,
            key,
        })
    }

    /// The rustls server config: TLS 1.3, client certificates required from the mesh CA (TLS-1).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let parts = self.parts("identity")?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            parts.roots,
            provider.clone(),
        )
        .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(parts.chain, parts.key)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// The rustls client config: TLS 1.3, trusting only the mesh CA, presenting our certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let parts = self.parts("identity")?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(parts.roots)
            .with_client_auth_cert(parts.chain, parts.key)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// The context string of the stateless-reset key derivation (TLS-3). Changing it changes every
/// node's reset key, so a rolling upgrade would miss resets from not-yet-upgraded peers: bump
/// the version suffix only on purpose.
const RESET_KEY_CONTEXT: &str = "procmesh quic stateless reset v1";

/// The MAC quinn signs stateless-reset tokens with: BLAKE3 in keyed mode over the connection
/// id, under a key derived from the node's private key (TLS-3).
struct ResetKey([u8; 32]);

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        signature_out.copy_from_slice(blake3::keyed_hash(&self.0, data).as_bytes());
    }

    fn signature_len(&self) -> usize {
        blake3::OUT_LEN
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        // blake3::Hash compares in constant time.
        let expected = blake3::keyed_hash(&self.0, data);
        let given: [u8; blake3::OUT_LEN] = signature
            .try_into()
            .map_err(|_| quinn::crypto::CryptoError)?;
        if expected == blake3::Hash::from(given) {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

impl TlsIdentity {
    /// The QUIC stateless-reset key of this identity (TLS-3): the same for every process that
    /// runs with this private key, so a restarted node's resets are honoured by its peers.
    pub fn reset_key(&self) -> Result<Arc<dyn quinn::crypto::HmacKey>, TlsError> {
        Ok(Arc::new(ResetKey(self.derive(RESET_KEY_CONTEXT)?)))
    }

    fn derive(&self, context: &str) -> Result<[u8; 32], TlsError> {
        let key = parse_key(&self.key_pem).map_err(|reason| TlsError::Pem {
            what: "private key",
            path: "identity".into(),
            reason,
        })?;
        Ok(blake3::derive_key(context, key.secret_der()))
    }
}

struct Parts {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn parse_certs(text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    Ok(certs)
}

fn parse_key(text: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| e.to_string())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

/// quinn crypto configs from an identity.
pub(crate) fn quic_configs(
    identity: &TlsIdentity,
) -> Result<
    (
        quinn::crypto::rustls::QuicServerConfig,
        quinn::crypto::rustls::QuicClientConfig,
    ),
    TlsError,
> {
    let server = quinn::crypto::rustls::QuicServerConfig::try_from(identity.server_config()?)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(identity.client_config()?)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok((server, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_files() {
        let ca = MeshCa::generate("test", Duration::from_secs(3600)).unwrap();
        let id = ca
            .issue(
                Role::Host,
                "host-a",
                &["127.0.0.1".into()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        id.save(dir.path()).unwrap();
        let loaded = TlsIdentity::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_pem, id.cert_pem);
        loaded.server_config().unwrap();
        loaded.client_config().unwrap();
        let again = MeshCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        again
            .issue(Role::Client, "c", &[], Duration::from_secs(60))
            .unwrap()
            .client_config()
            .unwrap();
    }

    // Attests TLS-3
    #[test]
    fn the_reset_key_follows_the_private_key() {
        let ca = MeshCa::generate("test", Duration::from_secs(3600)).unwrap();
        let a = ca
            .issue(Role::Host, "a", &[], Duration::from_secs(3600))
            .unwrap();
        let b = ca
            .issue(Role::Host, "b", &[], Duration::from_secs(3600))
            .unwrap();
        let token = |id: &TlsIdentity| {
            let key = id.reset_key().unwrap();
            let mut out = vec![0u8; key.signature_len()];
            key.sign(b"connection id", &mut out);
            key.verify(b"connection id", &out).unwrap();
            assert!(key.verify(b"another id", &out).is_err());
            out
        };
        // The same identity (a restarted process) signs the same tokens; another does not.
        assert_eq!(token(&a), token(&a.clone()));
        assert_ne!(token(&a), token(&b));
    }

    fn dns_sans(id: &TlsIdentity) -> Vec<String> {
        use x509_parser::extensions::GeneralName;
        let der = parse_certs(&id.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der[0].as_ref()).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        sans.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect()
    }

    // Attests TLS-4
    #[test]
    fn certificates_carry_one_identity_and_only_nodes_the_node_name() {
        let ca = MeshCa::generate("prod-eu", Duration::from_secs(3600)).unwrap();
        for role in Role::ALL {
            let named = ca
                .issue(
                    role,
                    "n-1.a_b",
                    &["h.example".into()],
                    Duration::from_secs(60),
                )
                .unwrap();
            let id = named.identity().unwrap();
            assert_eq!(id.role, role);
            assert_eq!(id.name.as_deref(), Some("n-1.a_b"));
            assert_eq!(id.mesh, "prod-eu");
            assert_eq!(id.uri(), format!("spiffe://prod-eu/{role}/n-1.a_b"));
            assert!(!id.serial.is_empty() && id.serial == id.serial.to_lowercase());
            let dns = dns_sans(&named);
            assert_eq!(
                dns.contains(&NODE_SERVER_NAME.to_owned()),
                role.is_node(),
                "{role}"
            );
            assert_eq!(
                dns.contains(&CLIENT_NAME.to_owned()),
                !role.is_node(),
                "{role}"
            );
            assert!(dns.contains(&"h.example".to_owned()));
            // No node name: a fleet-wide shared certificate.
            let shared = ca.issue(role, "", &[], Duration::from_secs(60)).unwrap();
            let id = shared.identity().unwrap();
            assert_eq!(id.name, None);
            assert_eq!(id.uri(), format!("spiffe://prod-eu/{role}"));
        }
        for bad in ["a/b", "with space", &"x".repeat(64), "ünï"] {
            let err = ca
                .issue(Role::Host, bad, &[], Duration::from_secs(60))
                .unwrap_err();
            assert!(err.to_string().contains("bad node name"), "{err}");
        }
        assert!(ca
            .issue(
                Role::Client,
                "c",
                &["node.procmesh".into()],
                Duration::from_secs(60)
            )
            .is_err());
        assert!(ca
            .issue(
                Role::Client,
                "c",
                &["spiffe://prod-eu/host/x".into()],
                Duration::from_secs(60)
            )
            .is_err());
        assert!(MeshCa::generate("bad mesh", Duration::from_secs(60)).is_err());
        // The mesh name survives a round trip through PEM.
        let again = MeshCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.mesh(), "prod-eu");
        let id = again
            .issue(Role::Host, "h", &[], Duration::from_secs(60))
            .unwrap();
        assert_eq!(id.mesh().unwrap(), "prod-eu");
        assert_eq!(id.identity().unwrap().mesh, "prod-eu");
        // Two certificates have two serials.
        assert_ne!(
            id.identity().unwrap().serial,
            again
                .issue(Role::Host, "h", &[], Duration::from_secs(60))
                .unwrap()
                .identity()
                .unwrap()
                .serial
        );
    }

    #[test]
    fn bad_pem_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = TlsIdentity::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
        let id = TlsIdentity {
            ca_cert_pem: "garbage".into(),
            cert_pem: String::new(),
            key_pem: String::new(),
        };
        assert!(id
            .server_config()
            .unwrap_err()
            .to_string()
            .contains("CA certificate"));
    }
}
