//! `procmesh result --all --download DIR` on a real mesh (an orchestrator and a host as OS
//! processes): 200 finished actions with two outputs each (one in a subdirectory) land as
//! `DIR/<lsn>/<path>`, each file once with its content; a second run downloads nothing; a
//! changed file is fetched again; symbolic links planted in DIR (for an action's directory, or
//! a subdirectory of it) are refused and nothing is written through them.

mod utils;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use procmesh_protocol::messages::orchestrator::{QueueConfig, SubmitAction};
use procmesh_protocol::spec::ActionDef;
use procmesh_transport::Role;
use utils::{procmesh_bin, start_mesh_host, Certs};

const ACTIONS: u64 = 200;

/// `procmesh result -q TOKEN --all --download DIR --json`: its exit code and summary.
fn download(
    certs: &Certs,
    orchestrator: &str,
    token: &str,
    dir: &std::path::Path,
) -> (i32, serde_json::Value, String) {
    let out = Command::new(procmesh_bin())
        .args(["result", "-q", token, "--all", "--json", "--download"])
        .arg(dir)
        .args(["--orchestrator", orchestrator, "--bind", "127.0.0.1:0"])
        .arg("--tls-dir")
        .arg(certs.tls_dir(Role::Client))
        .output()
        .expect("procmesh result runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not a JSON summary ({e}): {stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), summary, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_output_is_downloaded_once_and_a_second_run_skips_them() {
    procmesh_transport::install_crypto_provider();
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let (_orchestrator, id) =
        utils::start_quick_orchestrator(&certs, &dir.path().join("orchestrator"));
    let (_host, _, _) = start_mesh_host(
        &certs,
        "127.0.0.1:0",
        &dir.path().join("host"),
        &id,
        (2, 4),
        &["--isolation", "none"],
    );
    let client = utils::connect_client(&certs, &id, &dir.path().join("client-cache")).await;
    let worker = utils::shell_worker(
        &client,
        "mkdir -p Outputs/sub\necho \"out $1\" > Outputs/a.txt\nseq 1 \"$1\" > Outputs/sub/b.txt",
    )
    .await;
    let queue = client.create_queue(QueueConfig::default()).await.unwrap();
    let token = queue.token().expect("a token").to_string();
    let actions = (0..ACTIONS)
        .map(|i| {
            let mut action = ActionDef::new(worker);
            action.args = vec![i.to_string()];
            SubmitAction {
                action,
                priority: None,
                idempotency_key: None,
            }
        })
        .collect();
    let lsns = queue.submit(actions).await.unwrap();
    let status = queue
        .wait_complete(Some(Duration::from_secs(180)))
        .await
        .expect("the queue completes");
    assert_eq!(status.counts.completed, ACTIONS, "{status:?}");

    let out = dir.path().join("out");
    let orchestrator = id.to_string();
    let (code, first, stderr) = download(&certs, &orchestrator, &token, &out);
    assert_eq!(code, 0, "{first}\n{stderr}");
    assert_eq!(first["actions"], ACTIONS, "{first}");
    assert_eq!(first["files"], 2 * ACTIONS, "{first}");
    assert_eq!(first["downloaded"], 2 * ACTIONS, "{first}");
    assert_eq!(first["skipped"], 0, "{first}");
    // Every file once, where it belongs, with what the action wrote; nothing else.
    let mut found = BTreeSet::new();
    for entry in walk(&out) {
        found.insert(entry.strip_prefix(&out).unwrap().display().to_string());
    }
    let mut expected = BTreeSet::new();
    for (i, lsn) in lsns.iter().enumerate() {
        let at = out.join(lsn.0.to_string());
        let a = std::fs::read_to_string(at.join("a.txt")).unwrap();
        assert_eq!(a, format!("out {i}\n"));
        let b = std::fs::read_to_string(at.join("sub/b.txt")).unwrap();
        assert_eq!(b.lines().count(), i, "lsn {lsn}");
        expected.insert(format!("{}/a.txt", lsn.0));
        expected.insert(format!("{}/sub/b.txt", lsn.0));
    }
    assert_eq!(found, expected, "no partial or stray files");

    // Again: everything is there already.
    let (code, second, stderr) = download(&certs, &orchestrator, &token, &out);
    assert_eq!(code, 0, "{second}\n{stderr}");
    assert_eq!(second["downloaded"], 0, "{second}");
    assert_eq!(second["skipped"], 2 * ACTIONS, "{second}");

    eprintln!(
        "download test: first run {} ms ({} files, {} bytes), second run {} ms (all skipped)",
        first["elapsed_ms"], first["downloaded"], first["bytes"], second["elapsed_ms"]
    );

    // A changed file is fetched again; a directory replaced by a symbolic link to elsewhere
    // is refused, and nothing lands where it points.
    let first_lsn = lsns[0].0.to_string();
    std::fs::write(out.join(&first_lsn).join("a.txt"), "tampered").unwrap();
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    let second_lsn = out.join(lsns[1].0.to_string());
    std::fs::remove_dir_all(&second_lsn).unwrap();
    std::os::unix::fs::symlink(&victim, &second_lsn).unwrap();
    // …and so is a link further down, in place of an action's subdirectory.
    let third_sub = out.join(lsns[2].0.to_string()).join("sub");
    std::fs::remove_dir_all(&third_sub).unwrap();
    std::os::unix::fs::symlink(&victim, &third_sub).unwrap();
    let (code, third, stderr) = download(&certs, &orchestrator, &token, &out);
    assert_eq!(code, 1, "three outputs refused: {third}\n{stderr}");
    assert_eq!(third["downloaded"], 1, "the tampered file: {third}");
    assert_eq!(third["skipped"], 2 * ACTIONS - 4, "{third}");
    let failed = third["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 3, "{third}");
    assert!(
        failed
            .iter()
            .all(|f| f.as_str().unwrap().contains("symbolic link")),
        "{third}"
    );
    assert!(
        stderr.contains("error: 3 of 400 files were not downloaded"),
        "{stderr}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        0,
        "nothing written through the link"
    );
    assert_eq!(
        std::fs::read_to_string(out.join(&first_lsn).join("a.txt")).unwrap(),
        "out 0\n"
    );
    client.close().await;
}

/// Every file under `dir` (not following links).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files
}
