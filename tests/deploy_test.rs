//! The deployment files in deploy/k8s and deploy/nomad agree with the binary they run: every
//! YAML document and HCL file parses; every flag they pass exists in `procmesh <cmd> --help`;
//! the ports they declare are the ports the flags bind (QUIC on UDP, admin HTTP on TCP); the
//! probes and checks ask `/readyz` and `/healthz`, which are routes of the admin routers; the
//! state and TLS directories the flags name are the ones the volumes mount; the orchestrator's
//! state is on a claim (k8s) or a host volume (Nomad); hosts name their node after the
//! scheduler's node. No cluster is needed: this reads files and runs `--help`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize as _;
use serde_json::Value;

/// The admin router sources: the probe paths must be routes there.
const ORCHESTRATOR_ADMIN_SRC: &str = include_str!("../orchestrator/src/admin/mod.rs");
const HOST_ADMIN_SRC: &str = include_str!("../host/src/admin.rs");

fn deploy_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(sub)
}

/// The files in `dir` whose names end with `suffix`, sorted.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    out
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}

/// `procmesh <cmd> --help`.
fn help(cmd: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_procmesh"))
        .args([cmd, "--help"])
        .output()
        .expect("running procmesh --help");
    assert!(
        out.status.success(),
        "procmesh {cmd} --help failed: {out:?}"
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// A command line after its subcommand: `--flag=value`, `--flag value` or a bare `--flag`.
fn parse_flags(args: &[String], what: &str) -> BTreeMap<String, String> {
    let mut flags = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        assert!(
            arg.starts_with("--"),
            "{what}: argument {arg:?} is not a --flag"
        );
        if let Some((k, v)) = arg.split_once('=') {
            flags.insert(k.to_owned(), v.to_owned());
        } else if args.get(i + 1).is_some_and(|next| !next.starts_with("--")) {
            flags.insert(arg.clone(), args[i + 1].clone());
            i += 1;
        } else {
            flags.insert(arg.clone(), String::new());
        }
        i += 1;
    }
    flags
}

/// Every flag of `flags` appears in `procmesh <cmd> --help`.
fn assert_flags_exist(cmd: &str, flags: &BTreeMap<String, String>, what: &str) {
    let text = help(cmd);
    for flag in flags.keys() {
        let listed = text
            .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
            .any(|word| word == flag);
        assert!(
            listed,
            "{what}: flag {flag} is not in `procmesh {cmd} --help`"
        );
    }
}

/// The port of a `HOST:PORT` (or `quic!HOST:PORT[,…]`) address.
fn port_of(addr: &str, what: &str) -> u16 {
    let addr = addr.split(',').next().unwrap_or(addr);
    let addr = addr.rsplit('!').next().unwrap_or(addr);
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no port in {addr:?}"))
}

/// The host part of a `HOST:PORT` (or `quic!HOST:PORT[,…]`) address.
fn host_of(addr: &str) -> &str {
    let addr = addr.split(',').next().unwrap_or(addr);
    let addr = addr.rsplit('!').next().unwrap_or(addr);
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

fn is_loopback(addr: &str) -> bool {
    let host = host_of(addr);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn str_at<'a>(v: &'a Value, pointer: &str, what: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: {pointer} is missing or not a string"))
}

fn list_at<'a>(v: &'a Value, pointer: &str, what: &str) -> &'a Vec<Value> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{what}: {pointer} is missing or not a list"))
}

/// Mode bits of a YAML `defaultMode` as Kubernetes reads it: `0400` is octal there (YAML 1.1),
/// and this YAML 1.2 parser returns it as the string "0400"; a plain number is taken as is.
fn yaml_mode(v: &Value) -> Option<u64> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => return n.as_u64(),
        _ => return None,
    };
    u64::from_str_radix(text.trim_start_matches("0o"), 8).ok()
}

fn mode_denies_others(mode: u64) -> bool {
    mode & 0o007 == 0 && mode <= 0o777
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// A parsed YAML document and the file it came from.
struct Doc {
    file: String,
    value: Value,
}

fn k8s_docs() -> Vec<Doc> {
    let dir = deploy_dir("k8s");
    let paths = files(&dir, ".yaml");
    assert!(!paths.is_empty(), "no YAML files in {}", dir.display());
    let mut docs = Vec::new();
    for path in paths {
        let file = file_name(&path);
        let text = std::fs::read_to_string(&path).expect("reading a manifest");
        for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{file}: document {i} does not parse: {e}"));
            if value.is_null() {
                continue;
            }
            docs.push(Doc {
                file: file.clone(),
                value,
            });
        }
    }
    docs
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    docs.iter()
        .find(|d| {
            d.value["kind"] == kind && d.value.pointer("/metadata/name") == Some(&name.into())
        })
        .unwrap_or_else(|| panic!("deploy/k8s: no {kind} named {name}"))
}

/// The one container of a workload, its subcommand, its flags and its environment (literal
/// values, and `fieldRef` paths as `fieldRef:<path>`).
struct Container<'a> {
    what: String,
    value: &'a Value,
    pod: &'a Value,
    flags: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
}

impl<'a> Container<'a> {
    fn of(doc: &'a Doc, subcommand: &str) -> Container<'a> {
        let kind = doc.value["kind"].as_str().unwrap_or("?");
        let what = format!("{} {kind}", doc.file);
        let pod = doc
            .value
            .pointer("/spec/template/spec")
            .unwrap_or_else(|| panic!("{what}: no spec.template.spec"));
        let containers = list_at(pod, "/containers", &what);
        assert_eq!(
            containers.len(),
            1,
            "{what}: spec.template.spec.containers: one container"
        );
        let value = &containers[0];
        let what = format!("{what} container {}", str_at(value, "/name", &what));
        assert_eq!(
            str_at(value, "/image", &what),
            "procmesh:latest",
            "{what}: image"
        );
        let args: Vec<String> = list_at(value, "/args", &what)
            .iter()
            .map(|a| a.as_str().expect("args are strings").to_owned())
            .collect();
        assert_eq!(
            args.first().map(String::as_str),
            Some(subcommand),
            "{what}: args[0] is the subcommand"
        );
        let flags = parse_flags(&args[1..], &format!("{what} args"));
        let mut env = BTreeMap::new();
        for var in value["env"].as_array().into_iter().flatten() {
            let name = str_at(var, "/name", &what).to_owned();
            let v = match (
                var.get("value"),
                var.pointer("/valueFrom/fieldRef/fieldPath"),
            ) {
                (Some(v), _) => v.as_str().unwrap_or_default().to_owned(),
                (None, Some(path)) => format!("fieldRef:{}", path.as_str().unwrap_or_default()),
                (None, None) => "other".to_owned(),
            };
            env.insert(name, v);
        }
        Container {
            what,
            value,
            pod,
            flags,
            env,
        }
    }

    /// A setting given as `--flag` or as its environment variable.
    fn setting(&self, flag: &str, env: &str) -> String {
        self.flags
            .get(flag)
            .or_else(|| self.env.get(env))
            .unwrap_or_else(|| panic!("{}: neither {flag} nor {env} is set", self.what))
            .clone()
    }

    /// The container port named or numbered `port`: (number, protocol).
    fn port(&self, port: &Value) -> (u64, String) {
        let ports = list_at(self.value, "/ports", &self.what);
        let found = ports.iter().find(|p| match port {
            Value::String(name) => p["name"] == name.as_str(),
            Value::Number(_) => p["containerPort"] == *port,
            _ => false,
        });
        let p = found.unwrap_or_else(|| panic!("{}: no container port {port}", self.what));
        (
            p["containerPort"]
                .as_u64()
                .expect("containerPort is a number"),
            p["protocol"].as_str().unwrap_or("TCP").to_owned(),
        )
    }

    /// Asserts a container port `number`/`protocol` exists.
    fn assert_port(&self, number: u16, protocol: &str, flag: &str) {
        let ports = list_at(self.value, "/ports", &self.what);
        assert!(
            ports.iter().any(|p| p["containerPort"] == u64::from(number)
                && p["protocol"].as_str().unwrap_or("TCP") == protocol),
            "{}: ports has no {number}/{protocol}, the port {flag} binds",
            self.what
        );
    }

    /// The volume mounted at `mount_path` (its entry in the pod's volumes, or a claim template
    /// of the same name as `claim:<name>`).
    fn volume_at(&self, workload: &Value, mount_path: &str) -> Value {
        let mounts = list_at(self.value, "/volumeMounts", &self.what);
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == mount_path)
            .unwrap_or_else(|| panic!("{}: volumeMounts has no mountPath {mount_path}", self.what));
        let name = str_at(mount, "/name", &self.what);
        if let Some(v) = self.pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == name)
        {
            return v.clone();
        }
        let claim = workload["spec"]["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c.pointer("/metadata/name") == Some(&name.into()))
            .unwrap_or_else(|| {
                panic!(
                    "{}: volume {name} (at {mount_path}) is defined nowhere",
                    self.what
                )
            });
        serde_json::json!({ "name": name, "claim": claim })
    }

    /// The probe `which` (readinessProbe, livenessProbe): its httpGet.
    fn probe(&self, which: &str) -> &'a Value {
        self.value
            .get(which)
            .and_then(|p| p.get("httpGet"))
            .unwrap_or_else(|| panic!("{}: no {which}.httpGet", self.what))
    }
}

fn assert_routes(src: &str, which: &str) {
    for path in ["/readyz", "/healthz"] {
        assert!(
            src.contains(&format!(".route(\"{path}\"")),
            "{which}: the admin router has no route {path}, which the deploy probes ask"
        );
    }
}

#[test]
fn probe_paths_are_admin_routes() {
    assert_routes(ORCHESTRATOR_ADMIN_SRC, "orchestrator/src/admin/mod.rs");
    assert_routes(HOST_ADMIN_SRC, "host/src/admin.rs");
}

#[test]
fn every_k8s_document_is_well_formed() {
    let docs = k8s_docs();
    let files: Vec<&str> = docs.iter().map(|d| d.file.as_str()).collect();
    for expected in [
        "namespace.yaml",
        "orchestrator.yaml",
        "host-daemonset.yaml",
        "secrets.yaml",
    ] {
        assert!(
            files.contains(&expected),
            "deploy/k8s/{expected} is missing"
        );
    }
    for doc in &docs {
        let what = format!("{} {}", doc.file, doc.value["kind"]);
        str_at(&doc.value, "/apiVersion", &what);
        let kind = str_at(&doc.value, "/kind", &what);
        str_at(&doc.value, "/metadata/name", &what);
        if kind != "Namespace" {
            assert_eq!(
                str_at(&doc.value, "/metadata/namespace", &what),
                "procmesh",
                "{what}: metadata.namespace"
            );
        }
    }
    find(&docs, "Namespace", "procmesh");
}

/// A secret volume: names `secret`, has the keys, and its files are not readable by others.
fn assert_secret_volume(docs: &[Doc], volume: &Value, secret: &str, keys: &[&str], what: &str) {
    assert_eq!(
        volume.pointer("/secret/secretName"),
        Some(&secret.into()),
        "{what}: volume {} secret.secretName",
        volume["name"]
    );
    let mode = volume
        .pointer("/secret/defaultMode")
        .map_or(Some(0o644), yaml_mode)
        .unwrap_or_else(|| {
            panic!(
                "{what}: volume {} secret.defaultMode is not a mode",
                volume["name"]
            )
        });
    assert!(
        mode_denies_others(mode),
        "{what}: volume {} secret.defaultMode {mode:o} lets every user read it (procmesh refuses \
         a world-readable token file)",
        volume["name"]
    );
    let doc = find(docs, "Secret", secret);
    for key in keys {
        assert!(
            doc.value.pointer(&format!("/stringData/{key}")).is_some()
                || doc.value.pointer(&format!("/data/{key}")).is_some(),
            "{}: Secret {secret} has no key {key}",
            doc.file
        );
    }
}

#[test]
fn the_orchestrator_statefulset_matches_its_flags() {
    let docs = k8s_docs();
    let sts = find(&docs, "StatefulSet", "procmesh-orchestrator");
    let c = Container::of(sts, "orchestrator");
    let what = c.what.clone();
    assert_flags_exist("orchestrator", &c.flags, &format!("{what} args"));
    assert_eq!(
        sts.value["spec"]["replicas"], 1,
        "{what}: spec.replicas (one journal writer)"
    );

    // Ports: QUIC on UDP, admin on TCP.
    let listen = c.setting("--listen", "PROCMESH_LISTEN");
    let quic = port_of(&listen, &what);
    assert_eq!(quic, 7600, "{what}: --listen port");
    c.assert_port(quic, "UDP", "--listen");
    let admin_listen = c.setting("--admin-listen", "PROCMESH_ADMIN_LISTEN");
    let admin = port_of(&admin_listen, &what);
    assert_eq!(admin, 7601, "{what}: --admin-listen port");
    c.assert_port(admin, "TCP", "--admin-listen");

    // State on the claim, TLS and token from their Secrets.
    let state = c.setting("--state-dir", "PROCMESH_STATE_DIR");
    let volume = c.volume_at(&sts.value, &state);
    assert!(
        volume.get("claim").is_some(),
        "{what}: the state dir {state} is not on a volumeClaimTemplate (the journal must persist)"
    );
    let tls = c.setting("--tls-dir", "PROCMESH_TLS_DIR");
    let volume = c.volume_at(&sts.value, &tls);
    assert_secret_volume(
        &docs,
        &volume,
        "procmesh-orchestrator-tls",
        &["ca.pem", "cert.pem", "key.pem"],
        &what,
    );
    assert!(
        !is_loopback(&admin_listen),
        "{what}: --admin-listen is loopback, but the Service exposes the admin port"
    );
    let token_file = c.setting("--admin-token-file", "PROCMESH_ADMIN_TOKEN_FILE");
    let mounts = list_at(c.value, "/volumeMounts", &what);
    let mount = mounts
        .iter()
        .find(|m| m["mountPath"] == token_file.as_str())
        .unwrap_or_else(|| panic!("{what}: volumeMounts has no mountPath {token_file}"));
    let token_key = str_at(mount, "/subPath", &what);
    let volume = c.volume_at(&sts.value, &token_file);
    assert_secret_volume(&docs, &volume, "procmesh-admin-token", &[token_key], &what);
    let token_doc = find(&docs, "Secret", "procmesh-admin-token");
    let token = str_at(
        &token_doc.value,
        &format!("/stringData/{token_key}"),
        "secrets.yaml",
    );
    assert!(
        token.len() >= 16,
        "secrets.yaml: procmesh-admin-token is shorter than 16"
    );

    // Probes: `procmesh probe` inside the pod, on its loopback (no token), the admin port and
    // the real paths.
    help("probe");
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let command: Vec<&str> = list_at(c.value, &format!("/{probe}/exec/command"), &what)
            .iter()
            .map(|a| a.as_str().expect("command items are strings"))
            .collect();
        assert_eq!(
            command.get(..2),
            Some(&["/procmesh", "probe"][..]),
            "{what}: {probe}.exec.command must run `/procmesh probe`"
        );
        let addr = command.get(2).copied().unwrap_or_default();
        assert!(
            is_loopback(addr),
            "{what}: {probe}.exec.command must probe loopback, not {addr}"
        );
        assert_eq!(
            port_of(addr, &what),
            admin,
            "{what}: {probe}.exec.command port"
        );
        assert_eq!(
            command.get(3).copied(),
            Some(path),
            "{what}: {probe}.exec.command path"
        );
    }

    // The headless Service of the StatefulSet, and the Service hosts dial.
    let headless = find(
        &docs,
        "Service",
        str_at(&sts.value, "/spec/serviceName", &what),
    );
    assert_eq!(
        headless.value["spec"]["clusterIP"], "None",
        "{}: headless Service spec.clusterIP",
        headless.file
    );
    let svc = find(&docs, "Service", "procmesh-orchestrator");
    let svc_what = format!("{} Service procmesh-orchestrator", svc.file);
    for (number, protocol) in [(quic, "UDP"), (admin, "TCP")] {
        let port = list_at(&svc.value, "/spec/ports", &svc_what)
            .iter()
            .find(|p| p["port"] == u64::from(number))
            .unwrap_or_else(|| panic!("{svc_what}: spec.ports has no port {number}"));
        assert_eq!(
            port["protocol"], protocol,
            "{svc_what}: spec.ports {number} protocol"
        );
        assert_eq!(
            c.port(&port["targetPort"]),
            (u64::from(number), protocol.to_owned()),
            "{svc_what}: spec.ports {number} targetPort"
        );
    }
    for (key, v) in [
        ("/spec/selector", &svc.value),
        ("/spec/selector", &headless.value),
    ] {
        assert_eq!(
            v.pointer(key),
            sts.value.pointer("/spec/selector/matchLabels"),
            "{svc_what}: spec.selector must select the StatefulSet's pods"
        );
    }
    let cluster_ip = str_at(&svc.value, "/spec/clusterIP", &svc_what);
    let advertise = c.setting("--advertise", "PROCMESH_ADVERTISE");
    assert_eq!(
        advertise,
        format!("quic!{cluster_ip}:{quic}"),
        "{what}: --advertise must be the Service's fixed clusterIP (hosts dial it)"
    );
}

#[test]
fn the_host_daemonset_matches_its_flags() {
    let docs = k8s_docs();
    let ds = find(&docs, "DaemonSet", "procmesh-host");
    let c = Container::of(ds, "host");
    let what = c.what.clone();
    assert_flags_exist("host", &c.flags, &format!("{what} args"));
    assert_ne!(c.pod["hostPID"], true, "{what}: hostPID must stay false");

    let listen = c.setting("--listen", "PROCMESH_LISTEN");
    let quic = port_of(&listen, &what);
    assert_eq!(quic, 7700, "{what}: --listen port");
    c.assert_port(quic, "UDP", "--listen");
    let admin_listen = c.setting("--admin-listen", "PROCMESH_ADMIN_LISTEN");
    let admin = port_of(&admin_listen, &what);
    assert_eq!(admin, 7701, "{what}: --admin-listen port");
    c.assert_port(admin, "TCP", "--admin-listen");

    // The node's name and address come from the downward API.
    assert_eq!(
        c.env.get("PROCMESH_NODE_NAME").map(String::as_str),
        Some("fieldRef:spec.nodeName"),
        "{what}: env PROCMESH_NODE_NAME must come from spec.nodeName"
    );
    let advertise = c.setting("--advertise", "PROCMESH_ADVERTISE");
    assert_eq!(port_of(&advertise, &what), quic, "{what}: --advertise port");
    let ip_var = host_of(&advertise)
        .strip_prefix("$(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{what}: --advertise {advertise} must use an env var $(…)"));
    let source = c.env.get(ip_var).map(String::as_str);
    assert!(
        matches!(
            source,
            Some("fieldRef:status.hostIP" | "fieldRef:status.podIP")
        ),
        "{what}: env {ip_var} (in --advertise) must come from status.hostIP or status.podIP, \
         not {source:?}"
    );
    if c.pod["hostNetwork"] != true {
        let ports = list_at(c.value, "/ports", &what);
        assert!(
            ports
                .iter()
                .any(|p| p["hostPort"] == u64::from(quic) && p["protocol"] == "UDP"),
            "{what}: without hostNetwork the QUIC port needs hostPort {quic}/UDP"
        );
    }

    // Probes: real paths on the admin port; a loopback listener is reachable by the kubelet
    // only in the node's network namespace at 127.0.0.1.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = c.probe(probe);
        assert_eq!(get["path"], path, "{what}: {probe}.httpGet.path");
        assert_eq!(
            c.port(&get["port"]),
            (u64::from(admin), "TCP".to_owned()),
            "{what}: {probe}.httpGet.port"
        );
        if is_loopback(&admin_listen) {
            assert_eq!(
                c.pod["hostNetwork"], true,
                "{what}: a loopback admin listener is probed only with hostNetwork"
            );
            assert_eq!(
                get["host"],
                host_of(&admin_listen),
                "{what}: {probe}.httpGet.host must be the loopback listener"
            );
        } else {
            assert!(
                get.get("httpHeaders").is_some(),
                "{what}: {probe}: a public admin listener needs the bearer token"
            );
        }
    }

    // Per-node state on the node; the fleet-wide certificate from its Secret.
    let state = c.setting("--state-dir", "PROCMESH_STATE_DIR");
    let volume = c.volume_at(&ds.value, &state);
    assert!(
        volume.pointer("/hostPath/path").is_some(),
        "{what}: the state dir {state} must be a hostPath (the node secret must survive the pod)"
    );
    let tls = c.setting("--tls-dir", "PROCMESH_TLS_DIR");
    let volume = c.volume_at(&ds.value, &tls);
    assert_secret_volume(
        &docs,
        &volume,
        "procmesh-host-tls",
        &["ca.pem", "cert.pem", "key.pem"],
        &what,
    );

    // Hosts dial the orchestrator where it advertises itself.
    let sts = find(&docs, "StatefulSet", "procmesh-orchestrator");
    let orch = Container::of(sts, "orchestrator");
    let orchestrator = c.setting("--orchestrator", "PROCMESH_ORCHESTRATOR");
    assert_eq!(
        orchestrator,
        format!(
            "{},service.orchestrator",
            orch.setting("--advertise", "PROCMESH_ADVERTISE")
        ),
        "{what}: --orchestrator must be the orchestrator's --advertise address"
    );
}

// The Nomad jobs: the same checks, on HCL.
#[path = "deploy/nomad.rs"]
mod nomad;
