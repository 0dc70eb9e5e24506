//! `procmesh certs`: a mesh CA for a fleet, and orchestrator, host, client and operator
//! identities signed by it.
//!
//! ```text
//! procmesh certs init  --dir ca/                       → ca/ca.pem, ca/ca-key.pem (0600)
//! procmesh certs issue --ca-dir ca/ --role orchestrator --name orch --out orch/
//! procmesh certs issue --ca-dir ca/ --role host --out host-a/ [--name host-a] [--san 10.0.0.5]
//! procmesh certs issue --ca-dir ca/ --role client|operator --out me/ [--name alice]
//!                                                      → ca.pem, cert.pem, key.pem (0600)
//! procmesh certs bootstrap --dir certs/ [--owner 65532:65532]
//!       → certs/{ca,orchestrator,host,client,operator}/…, certs/admin-token   (a small fleet)
//! ```
//!
//! Existing files are never overwritten without `--force`. Keep `ca-key.pem` off the fleet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use procmesh_transport::tls::{CA_CERT_FILE, CERT_FILE, KEY_FILE};
use procmesh_transport::{MeshCa, Role, TlsIdentity};

use super::common::parse_duration;

/// The CA private key file written by `certs init`.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// `procmesh certs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a mesh CA: ca.pem (give it to every node and client) and ca-key.pem (keep it
    /// safe: whoever holds it can join the mesh).
    Init(InitArgs),
    /// Issue an identity signed by the mesh CA: its role, and (with --name) its node name, go
    /// into the certificate as spiffe://<mesh>/<role>[/<name>]. Prints the serial (for
    /// revocation).
    Issue(IssueArgs),
    /// Make, where missing, everything a small fleet needs in one directory: a CA (ca/), an
    /// orchestrator identity (orchestrator/), a fleet-wide host identity (host/), a client and
    /// an operator identity, and an admin token (admin-token). What exists is kept, so it can
    /// run at every start of a fleet (e.g. a one-shot container).
    Bootstrap(BootstrapArgs),
}

/// Flags of `procmesh certs bootstrap`.
#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// Directory to fill (created).
    #[arg(long)]
    pub dir: PathBuf,
    /// The mesh's name, shown in the CA certificate.
    #[arg(long, default_value = "procmesh")]
    pub mesh: String,
    /// The orchestrator's node name.
    #[arg(long, default_value = "orchestrator")]
    pub orchestrator_name: String,
    /// An extra subject alternative name of the orchestrator (DNS name or IP); repeatable.
    #[arg(long = "orchestrator-san")]
    pub orchestrator_sans: Vec<String>,
    /// Give what is written (but the CA's key) to this UID:GID, e.g. so that an orchestrator
    /// running unprivileged can read its key and the admin token.
    #[arg(long, value_parser = parse_owner)]
    pub owner: Option<(u32, u32)>,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `UID:GID`.
fn parse_owner(text: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not UID:GID"))?;
    let number = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{v:?} is not a numeric id"))
    };
    Ok((number(uid)?, number(gid)?))
}

/// Flags of `procmesh certs init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to write ca.pem and ca-key.pem into (created).
    #[arg(long)]
    pub dir: PathBuf,
    /// The mesh's name, shown in the CA certificate.
    #[arg(long, default_value = "procmesh")]
    pub mesh: String,
    /// How long the CA is valid, e.g. 87600h (ten years).
    #[arg(long, value_parser = parse_duration, default_value = "87600h")]
    pub valid_for: Duration,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The role of an issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// The orchestrator.
    Orchestrator,
    /// A host agent.
    Host,
    /// A client (CLI, library): its own queues only.
    Client,
    /// An operator: administers hosts, besides what a client may do.
    Operator,
}

/// Flags of `procmesh certs issue`.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// Directory holding ca.pem and ca-key.pem (from `certs init`).
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// What the certificate is for.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Directory to write ca.pem, cert.pem and key.pem into (created).
    #[arg(long)]
    pub out: PathBuf,
    /// The node name the certificate proves (1-63 of [A-Za-z0-9._-]). A host certificate
    /// without one is a fleet-wide certificate: each host then proves its node with the node
    /// secret it keeps in its state dir.
    #[arg(long)]
    pub name: Option<String>,
    /// An extra subject alternative name (DNS name or IP); repeatable.
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// How long the certificate is valid, e.g. 8760h.
    #[arg(long, value_parser = parse_duration, default_value = "8760h")]
    pub valid_for: Duration,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init(args) => {
            let written = init(&args)?;
            report(args.json, &written)
        }
        CertsCommand::Bootstrap(args) => {
            let written = bootstrap(&args)?;
            if written.is_empty() && !args.json {
                println!("{}: everything is there already", args.dir.display());
                return Ok(());
            }
            report(args.json, &written)
        }
        CertsCommand::Issue(args) => {
            let written = issue(&args)?;
            let identity = TlsIdentity::load(&args.out)?.identity()?;
            if args.json {
                let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
                super::common::print_json(&serde_json::json!({
                    "written": files,
                    "identity": identity.uri(),
                    "serial": identity.serial,
                }))
            } else {
                report(false, &written)?;
                println!("identity {} serial {}", identity.uri(), identity.serial);
                Ok(())
            }
        }
    }
}

/// Makes what is missing of a small fleet's identities (see [`CertsCommand::Bootstrap`]);
/// returns the files written.
pub fn bootstrap(args: &BootstrapArgs) -> anyhow::Result<Vec<PathBuf>> {
    let ca_dir = args.dir.join("ca");
    let mut written = Vec::new();
    if !ca_dir.join(CA_CERT_FILE).exists() {
        written.extend(init(&InitArgs {
            dir: ca_dir.clone(),
            mesh: args.mesh.clone(),
            valid_for: Duration::from_secs(87_600 * 3600),
            force: false,
            json: false,
        })?);
    }
    let identities: [(&str, RoleArg, Option<&str>, &[String]); 4] = [
        (
            "orchestrator",
            RoleArg::Orchestrator,
            Some(&args.orchestrator_name),
            &args.orchestrator_sans,
        ),
        ("host", RoleArg::Host, None, &[]),
        ("client", RoleArg::Client, None, &[]),
        ("operator", RoleArg::Operator, Some("operator"), &[]),
    ];
    let mut owned = Vec::new();
    for (dir, role, name, sans) in identities {
        let out = args.dir.join(dir);
        if out.join(CERT_FILE).exists() {
            continue;
        }
        let files = issue(&IssueArgs {
            ca_dir: ca_dir.clone(),
            role,
            out: out.clone(),
            name: name.map(str::to_owned),
            sans: sans.to_vec(),
            valid_for: Duration::from_secs(8_760 * 3600),
            force: false,
            json: false,
        })?;
        owned.push(out);
        owned.extend(files.iter().cloned());
        written.extend(files);
    }
    let token = args.dir.join("admin-token");
    if !token.exists() {
        let mut bytes = [0u8; 24];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| anyhow::anyhow!("drawing the admin token: {e}"))?;
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_file(&token, &format!("{text}\n"), 0o600)?;
        owned.push(token.clone());
        written.push(token);
    }
    if let Some((uid, gid)) = args.owner {
        for path in &owned {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to {uid}:{gid}", path.display()))?;
        }
    }
    Ok(written)
}

fn report(json: bool, written: &[PathBuf]) -> anyhow::Result<()> {
    if json {
        let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        super::common::print_json(&serde_json::json!({ "written": files }))
    } else {
        for path in written {
            println!("wrote {}", path.display());
        }
        Ok(())
    }
}

/// Refuses to overwrite any of `files` in `dir` unless `force`.
fn check_free(dir: &Path, files: &[&str], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    let existing: Vec<String> = files
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    anyhow::ensure!(
        existing.is_empty(),
        "refusing to overwrite {} (pass --force to replace)",
        existing.join(", ")
    );
    Ok(())
}

/// Creates the CA; returns the files written.
pub fn init(args: &InitArgs) -> anyhow::Result<Vec<PathBuf>> {
    check_free(&args.dir, &[CA_CERT_FILE, CA_KEY_FILE], args.force)?;
    let ca = MeshCa::generate(&args.mesh, args.valid_for).context("generating the mesh CA")?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let cert = args.dir.join(CA_CERT_FILE);
    let key = args.dir.join(CA_KEY_FILE);
    write_file(&cert, ca.cert_pem(), 0o644)?;
    write_file(&key, &ca.key_pem(), 0o600)?;
    Ok(vec![cert, key])
}

/// Issues an identity; returns the files written.
pub fn issue(args: &IssueArgs) -> anyhow::Result<Vec<PathBuf>> {
    check_free(&args.out, &[CA_CERT_FILE, CERT_FILE, KEY_FILE], args.force)?;
    let read = |file: &str| {
        let path = args.ca_dir.join(file);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (create a CA with `procmesh certs init --dir {}`)",
                path.display(),
                args.ca_dir.display()
            )
        })
    };
    let ca = MeshCa::from_pem(&read(CA_CERT_FILE)?, &read(CA_KEY_FILE)?)
        .with_context(|| format!("loading the mesh CA from {}", args.ca_dir.display()))?;
    let role = match args.role {
        RoleArg::Orchestrator => Role::Orchestrator,
        RoleArg::Host => Role::Host,
        RoleArg::Client => Role::Client,
        RoleArg::Operator => Role::Operator,
    };
    let name = args.name.as_deref().unwrap_or("");
    let identity = ca
        .issue(role, name, &args.sans, args.valid_for)
        .context("issuing the certificate")?;
    identity
        .save(&args.out)
        .with_context(|| format!("writing the identity into {}", args.out.display()))?;
    // Check what was written loads back as a usable identity.
    TlsIdentity::load(&args.out)?.client_config()?;
    Ok([CA_CERT_FILE, CERT_FILE, KEY_FILE]
        .iter()
        .map(|f| args.out.join(f))
        .collect())
}

fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its mode on open: set it.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init_args(dir: &Path) -> InitArgs {
        InitArgs {
            dir: dir.to_owned(),
            mesh: "test".into(),
            valid_for: Duration::from_secs(3600),
            force: false,
            json: false,
        }
    }

    fn issue_args(ca: &Path, out: &Path, role: RoleArg) -> IssueArgs {
        IssueArgs {
            ca_dir: ca.to_owned(),
            role,
            out: out.to_owned(),
            name: Some("x".into()),
            sans: vec!["127.0.0.1".into()],
            valid_for: Duration::from_secs(3600),
            force: false,
            json: false,
        }
    }

    #[test]
    fn bootstrap_makes_what_is_missing_and_keeps_what_is_there() {
        use std::os::unix::fs::PermissionsExt;
        procmesh_transport::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let args = BootstrapArgs {
            dir: dir.path().join("fleet"),
            mesh: "test".into(),
            orchestrator_name: "orch".into(),
            orchestrator_sans: vec!["10.0.0.1".into()],
            owner: None,
            json: false,
        };
        let written = bootstrap(&args).unwrap();
        assert_eq!(written.len(), 2 + 4 * 3 + 1, "{written:?}");
        for (sub, uri) in [
            ("orchestrator", "spiffe://test/orchestrator/orch"),
            ("host", "spiffe://test/host"),
            ("client", "spiffe://test/client"),
            ("operator", "spiffe://test/operator/operator"),
        ] {
            let identity = TlsIdentity::load(&args.dir.join(sub))
                .unwrap()
                .identity()
                .unwrap();
            assert_eq!(identity.uri(), uri);
        }
        let token = args.dir.join("admin-token");
        let text = std::fs::read_to_string(&token).unwrap();
        assert_eq!(text.trim().len(), 48);
        assert!(text.trim().bytes().all(|b| b.is_ascii_hexdigit()));
        let mode = std::fs::metadata(&token).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Again: nothing is replaced; a lost identity alone is made again, by the same CA.
        let before = std::fs::read(args.dir.join("host/cert.pem")).unwrap();
        assert!(bootstrap(&args).unwrap().is_empty());
        std::fs::remove_dir_all(args.dir.join("client")).unwrap();
        let again = bootstrap(&args).unwrap();
        assert_eq!(again.len(), 3, "{again:?}");
        assert_eq!(
            std::fs::read(args.dir.join("host/cert.pem")).unwrap(),
            before
        );
        assert_eq!(std::fs::read_to_string(&token).unwrap(), text);
        assert!(parse_owner("65532:65532").is_ok());
        assert!(parse_owner("procmesh").is_err());
        assert!(parse_owner("a:1").is_err());
    }

    #[test]
    fn init_issue_load_round_trip() {
        use std::os::unix::fs::PermissionsExt;
        procmesh_transport::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let written = init(&init_args(&ca_dir)).unwrap();
        assert_eq!(written.len(), 2);
        let mode = std::fs::metadata(ca_dir.join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        for role in [
            RoleArg::Orchestrator,
            RoleArg::Host,
            RoleArg::Client,
            RoleArg::Operator,
        ] {
            let out = dir.path().join(format!("{role:?}"));
            issue(&issue_args(&ca_dir, &out, role)).unwrap();
            let identity = TlsIdentity::load(&out).unwrap();
            identity.client_config().unwrap();
            identity.server_config().unwrap();
            assert_eq!(
                identity.ca_cert_pem,
                std::fs::read_to_string(ca_dir.join(CA_CERT_FILE)).unwrap()
            );
            let mode = std::fs::metadata(out.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn existing_files_need_force() {
        procmesh_transport::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        init(&init_args(&ca_dir)).unwrap();
        let before = std::fs::read_to_string(ca_dir.join(CA_KEY_FILE)).unwrap();
        let err = init(&init_args(&ca_dir)).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(
            std::fs::read_to_string(ca_dir.join(CA_KEY_FILE)).unwrap(),
            before
        );
        let mut forced = init_args(&ca_dir);
        forced.force = true;
        init(&forced).unwrap();
        assert_ne!(
            std::fs::read_to_string(ca_dir.join(CA_KEY_FILE)).unwrap(),
            before
        );

        let out = dir.path().join("node");
        issue(&issue_args(&ca_dir, &out, RoleArg::Host)).unwrap();
        let err = issue(&issue_args(&ca_dir, &out, RoleArg::Host)).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
    }

    #[test]
    fn issuing_without_a_ca_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue(&issue_args(
            &dir.path().join("none"),
            &dir.path().join("out"),
            RoleArg::Client,
        ))
        .unwrap_err();
        assert!(format!("{err:#}").contains("certs init"), "{err:#}");
    }
}
