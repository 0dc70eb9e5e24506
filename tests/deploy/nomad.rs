//! The Nomad jobs in deploy/nomad agree with the binary they run (see the crate docs).

use super::*;

fn nomad_job(file: &str) -> Value {
    let path = deploy_dir("nomad").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    hcl::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{file} does not parse: {e}"))
}

/// Repeated blocks come as a list, a single one as an object: always a list.
fn blocks(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

/// The block labelled `label` among `v` (`{label: {...}}`, or a list of such).
fn labelled<'a>(v: &'a Value, label: &str, what: &str) -> &'a Value {
    blocks(v)
        .into_iter()
        .find_map(|b| b.get(label))
        .unwrap_or_else(|| panic!("{what}: no block labelled {label:?}"))
}

/// The job's (only) group and (only) task, checked against the flags they run.
struct NomadTask {
    what: String,
    group: Value,
    task: Value,
    flags: BTreeMap<String, String>,
}

fn nomad_task(file: &str, job_name: &str, kind: &str, subcommand: &str) -> NomadTask {
    let root = nomad_job(file);
    let job = labelled(&root["job"], job_name, file);
    assert_eq!(job["type"], kind, "{file}: job {job_name} type");
    let groups = &job["group"];
    let (group_name, group) = groups
        .as_object()
        .and_then(|g| g.iter().next())
        .unwrap_or_else(|| panic!("{file}: job {job_name} has no group"));
    let what = format!("{file} group {group_name}");
    let (task_name, task) = group["task"]
        .as_object()
        .and_then(|t| t.iter().next())
        .unwrap_or_else(|| panic!("{what}: no task"));
    let what = format!("{what} task {task_name}");
    assert_eq!(task["driver"], "docker", "{what}: driver");
    assert_eq!(
        task["config"]["image"], "procmesh:latest",
        "{what}: config.image"
    );
    let args: Vec<String> = list_at(&task["config"], "/args", &what)
        .iter()
        .map(|a| a.as_str().expect("args are strings").to_owned())
        .collect();
    assert_eq!(
        args.first().map(String::as_str),
        Some(subcommand),
        "{what}: config.args[0]"
    );
    let flags = parse_flags(&args[1..], &format!("{what} config.args"));
    assert_flags_exist(subcommand, &flags, &format!("{what} config.args"));
    NomadTask {
        what,
        group: group.clone(),
        task: task.clone(),
        flags,
    }
}

impl NomadTask {
    fn flag(&self, flag: &str) -> &str {
        self.flags
            .get(flag)
            .unwrap_or_else(|| panic!("{}: config.args has no {flag}", self.what))
    }

    /// The static port `label` of the group's network; equal to the port `flag` binds.
    fn assert_static_port(&self, label: &str, flag: &str, expected: u16) {
        let network = &self.group["network"];
        let port = labelled(&network["port"], label, &self.what);
        let bound = port_of(self.flag(flag), &self.what);
        assert_eq!(bound, expected, "{}: {flag} port", self.what);
        assert_eq!(
            port["static"],
            u64::from(bound),
            "{}: network.port.{label}.static must be the port {flag} binds",
            self.what
        );
    }

    /// The group's http checks on the admin port ask /readyz and /healthz.
    fn assert_checks(&self, admin_label: &str) {
        let mut paths = Vec::new();
        for service in blocks(&self.group["service"]) {
            for check in blocks(&service["check"]) {
                assert_eq!(
                    check["type"], "http",
                    "{}: service {} check type",
                    self.what, service["name"]
                );
                assert_eq!(
                    service["port"], admin_label,
                    "{}: service {} has http checks but is not on the admin port",
                    self.what, service["name"]
                );
                paths.push(check["path"].as_str().unwrap_or_default().to_owned());
            }
        }
        for path in ["/readyz", "/healthz"] {
            assert!(
                paths.iter().any(|p| p == path),
                "{}: no service check with path {path}",
                self.what
            );
        }
    }

    /// The state dir is a host volume's mount.
    fn assert_state_volume(&self) {
        let state = self.flag("--state-dir");
        let mounts = blocks(&self.task["volume_mount"]);
        let mount = mounts
            .iter()
            .find(|m| m["destination"] == state)
            .unwrap_or_else(|| {
                panic!(
                    "{}: no volume_mount with destination {state} (--state-dir)",
                    self.what
                )
            });
        let name = mount["volume"].as_str().expect("volume_mount.volume");
        let volume = labelled(&self.group["volume"], name, &self.what);
        assert_eq!(volume["type"], "host", "{}: volume {name} type", self.what);
        assert_ne!(
            volume["read_only"], true,
            "{}: volume {name} read_only",
            self.what
        );
    }

    /// TLS files and the token are rendered into the secrets dir (/secrets in docker) where the
    /// flags look for them, not readable by others.
    fn assert_secrets(&self) {
        let templates = blocks(&self.task["template"]);
        let rendered = |path: &str| {
            let dest = path
                .strip_prefix('/')
                .unwrap_or_else(|| panic!("{}: {path} is not absolute", self.what));
            let t = templates
                .iter()
                .find(|t| t["destination"] == dest)
                .unwrap_or_else(|| {
                    panic!(
                        "{}: no template renders {path} (destination {dest})",
                        self.what
                    )
                });
            let perms =
                u64::from_str_radix(t["perms"].as_str().unwrap_or("644"), 8).expect("octal perms");
            assert!(
                mode_denies_others(perms),
                "{}: template {dest} perms let others read it",
                self.what
            );
        };
        let tls = self.flag("--tls-dir");
        assert!(
            tls.starts_with("/secrets/"),
            "{}: --tls-dir {tls} must be in the task's secrets dir",
            self.what
        );
        for file in ["ca.pem", "cert.pem", "key.pem"] {
            rendered(&format!("{tls}/{file}"));
        }
        if !is_loopback(self.flag("--admin-listen")) {
            rendered(self.flag("--admin-token-file"));
        }
    }
}

#[test]
fn every_nomad_file_parses() {
    let dir = deploy_dir("nomad");
    let paths = files(&dir, ".hcl");
    assert!(
        paths.len() >= 2,
        "deploy/nomad: expected the host and orchestrator jobs"
    );
    for path in paths {
        let file = file_name(&path);
        let job = nomad_job(&file);
        assert!(job.get("job").is_some(), "{file}: no job block");
    }
}

#[test]
fn the_nomad_host_job_matches_its_flags() {
    let t = nomad_task("procmesh-host.nomad.hcl", "procmesh-host", "system", "host");
    t.assert_static_port("quic", "--listen", 7700);
    t.assert_static_port("admin", "--admin-listen", 7701);
    t.assert_checks("admin");
    t.assert_state_volume();
    t.assert_secrets();
    assert_eq!(
        t.task["env"]["PROCMESH_NODE_NAME"], "${node.unique.name}",
        "{}: env PROCMESH_NODE_NAME must be the Nomad node's name",
        t.what
    );
    assert!(
        t.flag("--advertise").contains("${NOMAD_IP_quic}"),
        "{}: --advertise must be the quic port's address",
        t.what
    );
    let orchestrator_env = blocks(&t.task["template"]).into_iter().any(|tpl| {
        tpl["env"] == true
            && tpl["data"]
                .as_str()
                .is_some_and(|d| d.contains("PROCMESH_ORCHESTRATOR=quic!"))
    });
    assert!(
        orchestrator_env,
        "{}: no env template setting PROCMESH_ORCHESTRATOR",
        t.what
    );
    assert_eq!(
        t.task["config"]["privileged"], true,
        "{}: config.privileged (namespaces isolation)",
        t.what
    );
}

#[test]
fn the_nomad_orchestrator_job_matches_its_flags() {
    let t = nomad_task(
        "procmesh-orchestrator.nomad.hcl",
        "procmesh-orchestrator",
        "service",
        "orchestrator",
    );
    assert_eq!(
        t.group["count"], 1,
        "{}: group count (one journal writer)",
        t.what
    );
    t.assert_static_port("quic", "--listen", 7600);
    t.assert_static_port("admin", "--admin-listen", 7601);
    t.assert_checks("admin");
    t.assert_state_volume();
    t.assert_secrets();
    assert_ne!(
        t.task["config"]["privileged"], true,
        "{}: the orchestrator needs no privileges",
        t.what
    );
    // The host job finds the orchestrator through the service on the quic port.
    let host = nomad_task("procmesh-host.nomad.hcl", "procmesh-host", "system", "host");
    let service = blocks(&t.group["service"])
        .into_iter()
        .find(|s| s["port"] == "quic")
        .unwrap_or_else(|| panic!("{}: no service on the quic port", t.what));
    let name = service["name"].as_str().expect("service name");
    let looked_up = blocks(&host.task["template"]).into_iter().any(|tpl| {
        tpl["data"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("nomadService \"{name}\"")))
    });
    assert!(
        looked_up,
        "{}: the host job does not look up service {name}",
        host.what
    );
}
