//! `procmesh exec [--] PROGRAM ARGS…`: run one local program on the mesh as if it ran here.
//!
//! The program (found on `PATH` like a shell would) becomes a one-file worker; `--input` files
//! and directories become the action's inputs; a queue of one action is created, waited for,
//! and its stdout and stderr tails are printed to ours. Files the action left in `Outputs/`
//! are downloaded into `--output-dir`. The exit code is the program's (a signal `n` gives
//! `128 + n`); when it could not run at all, 125 and the reason on stderr. Ctrl-C cancels it.
//! With `--host-program PATH` nothing is shipped: the host runs its own `PATH` (from its
//! `allowed_host_programs`), and everything after `--` are its arguments.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use procmesh_client::{Client, Queue, WorkerBuilder};
use procmesh_protocol::messages::orchestrator::{ActionResult, QueueConfig, SubmitAction};
use procmesh_protocol::{ActionDef, ActionRecord, ActionState, ExitStatus, Lsn};

use super::common::{parse_duration, parse_key_value, print_json, runtime, tail_text, ClientArgs};

/// Exit code when the program could not be run (or ended without an exit status).
pub const EXIT_NOT_RUN: u8 = 125;

/// What an action sees, and the exit codes, for `procmesh exec --help`.
pub const ENVIRONMENT_HELP: &str = "\
The action's environment (exactly this, nothing of the host's):
  PATH=/usr/local/bin:/usr/bin:/bin, HOME=/tmp, TMPDIR=/tmp (isolation = none: HOME is the
  sandbox, TMPDIR the host's temporary directory), then the worker's variables, then the
  action's (--env wins), then PROCMESH_LSN (the action's number), PROCMESH_ATTEMPT (1, 2, ...)
  and TRACEPARENT (when $TRACEPARENT is set here, the W3C trace context of the submission).
It runs in /sandbox (its inputs, read-only) and leaves its results in /sandbox/Outputs; /tmp is
private. With isolation = namespaces (the hosts' default) it has no network, sees only its own
processes, runs as an unprivileged user, and is limited by its cgroup (--memory, --cores, and
the host's pids limit); a memory-limit kill ends it Failed with the reason \"oom\".

Exit codes:
  N      the action's own exit code (0 when it completed)
  128+S  the action was killed by signal S
  125    the action could not be run, or ended without an exit status
  130    interrupted (Ctrl-C); the action is cancelled
  1      an error of procmesh itself (printed as `error: ...`); 2 a usage error";

/// Flags of `procmesh exec`.
#[derive(Debug, clap::Args)]
#[command(after_help = ENVIRONMENT_HELP)]
pub struct ExecArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// W3C trace context for the action (it sees it as TRACEPARENT; its attempt's span
    /// carries the trace id).
    #[arg(long, env = "TRACEPARENT", value_parser = super::common::parse_traceparent)]
    pub traceparent: Option<String>,
    /// A local file or directory to ship as input, LOCAL[:PATH_IN_SANDBOX] (default: its file
    /// name); repeatable.
    #[arg(long = "input", short = 'i', value_parser = parse_input_arg)]
    pub inputs: Vec<InputArg>,
    /// Where to download the files the program leaves in Outputs/.
    #[arg(long, default_value = ".")]
    pub output_dir: PathBuf,
    /// Wall-clock limit of the program, e.g. 10m; at the limit it is cancelled.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// An environment variable for the program, KEY=VALUE; repeatable.
    #[arg(long = "env", short = 'e', value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// Only run on a host with this label, KEY=VALUE; repeatable.
    #[arg(long = "host-label", value_parser = parse_key_value)]
    pub host_labels: Vec<(String, String)>,
    /// Automatic retries if the run fails or its host is lost.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Run this executable of the host (e.g. /usr/bin/gcc) instead of shipping a program; the
    /// host must allow it (allowed_host_programs). Everything after -- is its arguments.
    #[arg(long, value_name = "PATH")]
    pub host_program: Option<String>,
    /// The memory the program needs (its cgroup limit), e.g. 512M or 2G.
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// The CPUs the program keeps busy (its cgroup CPU limit), e.g. 2.
    #[arg(long)]
    pub cores: Option<u32>,
    /// The program and its arguments (with --host-program: its arguments).
    #[arg(
        required_unless_present = "host_program",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    pub command: Vec<String>,
}

/// One `--input`: a local file or directory and where it goes in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputArg {
    pub local: PathBuf,
    pub sandbox: Option<String>,
}

pub fn parse_input_arg(text: &str) -> Result<InputArg, String> {
    if text.is_empty() {
        return Err("empty --input".into());
    }
    match text.rsplit_once(':') {
        Some((local, sandbox)) if !local.is_empty() && !sandbox.is_empty() => Ok(InputArg {
            local: PathBuf::from(local),
            sandbox: Some(sandbox.trim_end_matches('/').to_owned()),
        }),
        Some((_, _)) => Err(format!(
            "bad --input {text:?}: expected LOCAL[:PATH_IN_SANDBOX]"
        )),
        None => Ok(InputArg {
            local: PathBuf::from(text),
            sandbox: None,
        }),
    }
}

/// The files of the inputs: `(path in the sandbox, local file)`, directories walked.
pub fn expand_inputs(inputs: &[InputArg]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(&input.local)
            .with_context(|| format!("input {}", input.local.display()))?;
        let base = match &input.sandbox {
            Some(path) => path.clone(),
            None => input
                .local
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .with_context(|| {
                    format!(
                        "input {} has no file name: name it with LOCAL:PATH",
                        input.local.display()
                    )
                })?,
        };
        if meta.is_dir() {
            walk(&input.local, &base, &mut files)?;
        } else {
            files.push((base, input.local.clone()));
        }
    }
    Ok(files)
}

fn walk(dir: &Path, prefix: &str, files: &mut Vec<(String, PathBuf)>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let sandbox = format!("{prefix}/{name}");
        // Follows symlinks like a copy would.
        let meta = std::fs::metadata(&path).with_context(|| format!("input {}", path.display()))?;
        if meta.is_dir() {
            walk(&path, &sandbox, files)?;
        } else {
            files.push((sandbox, path));
        }
    }
    Ok(())
}

/// Finds `program` like a shell: a name with a `/` is a path, otherwise each `PATH` entry is
/// searched for an executable file.
pub fn resolve_program(
    program: &str,
    path_var: Option<&std::ffi::OsStr>,
) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        anyhow::ensure!(path.is_file(), "{program}: no such file");
        return Ok(path.canonicalize().unwrap_or(path));
    }
    let dirs = path_var.map(std::env::split_paths).into_iter().flatten();
    for dir in dirs {
        let candidate = dir.join(program);
        if is_exec(&candidate) {
            return Ok(candidate.canonicalize().unwrap_or(candidate));
        }
    }
    anyhow::bail!("{program}: command not found in PATH")
}

/// The exit code for a finished action, and why it did not run if it did not.
pub fn exit_code(record: &ActionRecord) -> (u8, Option<String>) {
    let reason = || {
        Some(
            record
                .last_error()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("the action ended {}", record.state())),
        )
    };
    match (record.state(), record.exit()) {
        (ActionState::Completed, None) => (0, None),
        (_, Some(ExitStatus::Signal(n))) => ((128 + n.clamp(0, 127)) as u8, reason()),
        (ActionState::Completed, Some(ExitStatus::Code(c))) => ((c & 0xff) as u8, None),
        (_, Some(ExitStatus::Code(c))) if c != 0 => ((c & 0xff) as u8, None),
        _ => (EXIT_NOT_RUN, reason()),
    }
}

pub fn run(args: ExecArgs) -> anyhow::Result<u8> {
    runtime()?.block_on(exec(args))
}

/// A size in bytes: a number with an optional K, M or G suffix (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("bad size {text:?}: expected e.g. 512M"))?;
    let shift = match unit {
        "" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "m" | "MiB" => 20,
        "G" | "g" | "GiB" => 30,
        _ => return Err(format!("bad size {text:?}: the unit is K, M or G")),
    };
    n.checked_mul(1 << shift)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("bad size {text:?}"))
}

async fn exec(args: ExecArgs) -> anyhow::Result<u8> {
    let (worker, program_path, program_args) = match &args.host_program {
        Some(path) => (
            WorkerBuilder::new().host_program(path.clone()),
            PathBuf::from(path),
            args.command.as_slice(),
        ),
        None => {
            let (program, program_args) = args.command.split_first().context("no program given")?;
            let path = resolve_program(program, std::env::var_os("PATH").as_deref())?;
            (WorkerBuilder::program(&path), path, program_args)
        }
    };
    let files = expand_inputs(&args.inputs)?;
    let client = args.client.connect().await?;
    let outcome = run_on(&client, &args, worker, &program_path, program_args, &files).await;
    client.close().await;
    outcome
}

async fn run_on(
    client: &Client,
    args: &ExecArgs,
    worker: WorkerBuilder,
    program: &Path,
    program_args: &[String],
    files: &[(String, PathBuf)],
) -> anyhow::Result<u8> {
    let worker = client
        .register_worker(&worker)
        .await
        .with_context(|| format!("shipping {}", program.display()))?;
    let inputs = client
        .upload_inputs(files)
        .await
        .context("uploading the inputs")?;
    let name = program
        .file_name()
        .map_or_else(|| "program".into(), |n| n.to_string_lossy().into_owned());
    let queue = client
        .create_queue(QueueConfig {
            retry_limit: args.retries,
            default_priority: 0,
            name: format!("exec {name}"),
        })
        .await?;
    let mut action = ActionDef::new(worker);
    action.args = program_args.to_vec();
    action.env = args.env.iter().cloned().collect();
    action.inputs = inputs;
    action.timeout_ms = args
        .timeout
        .map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64);
    action.resources.host_labels = args.host_labels.iter().cloned().collect();
    action.resources.memory_bytes = args.memory;
    action.resources.cores = args.cores;
    action.traceparent = args.traceparent.clone();
    let lsns = queue
        .submit(vec![SubmitAction {
            action,
            priority: None,
            idempotency_key: None,
        }])
        .await?;
    let lsn = *lsns.first().context("the orchestrator returned no LSN")?;
    // Nothing else goes into this queue.
    queue.drain().await?;
    tracing::info!(queue = ?queue.id(), %lsn, program = %program.display(), "submitted");

    tokio::select! {
        done = queue.wait_complete(None) => { done?; }
        _ = tokio::signal::ctrl_c() => {
            eprintln!("procmesh: interrupted; cancelling action {lsn}");
            queue.cancel().await?;
            let _ = queue.wait_complete(Some(Duration::from_secs(10))).await;
            return Ok(130);
        }
    }
    let result = queue
        .result(lsn)
        .await?
        .with_context(|| format!("action {lsn} finished but its result is gone"))?;
    let code = report(client, args, &queue, lsn, &result).await?;
    queue.retire(vec![lsn]).await?;
    Ok(code)
}

async fn report(
    client: &Client,
    args: &ExecArgs,
    queue: &Queue,
    lsn: Lsn,
    result: &ActionResult,
) -> anyhow::Result<u8> {
    let record = &result.record;
    let (code, reason) = exit_code(record);
    if !args.client.json {
        std::io::stdout().write_all(&result.stdout_tail)?;
        std::io::stdout().flush()?;
        std::io::stderr().write_all(&result.stderr_tail)?;
    }
    let mut downloaded = Vec::new();
    for output in &result.outputs {
        let path = client
            .download(result, output, &args.output_dir)
            .await
            .with_context(|| format!("downloading output {}", output.path))?;
        downloaded.push(path.display().to_string());
    }
    if args.client.json {
        let exec = record.execution();
        print_json(&serde_json::json!({
            "queue": queue.id(),
            "lsn": lsn,
            "state": record.state().as_str(),
            "attempt": record.attempt().get(),
            "exit": record.exit(),
            "exit_code": code,
            "error": reason,
            "location": record.location().map(ToString::to_string),
            "cpu_ms": exec.and_then(|e| e.cpu_ms),
            "peak_memory_bytes": exec.and_then(|e| e.peak_memory_bytes),
            "stdout": tail_text(&result.stdout_tail),
            "stderr": tail_text(&result.stderr_tail),
            "outputs": downloaded,
        }))?;
    } else if let Some(reason) = reason {
        eprintln!("procmesh: action {lsn} {}: {reason}", record.state());
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use procmesh_protocol::{Timestamp, Transition, TransitionDetail};

    #[test]
    fn inputs_parse() {
        assert_eq!(
            parse_input_arg("data.csv").unwrap(),
            InputArg {
                local: "data.csv".into(),
                sandbox: None
            }
        );
        assert_eq!(
            parse_input_arg("/tmp/a:b:in/a").unwrap(),
            InputArg {
                local: "/tmp/a:b".into(),
                sandbox: Some("in/a".into())
            }
        );
        assert!(parse_input_arg(":x").is_err());
        assert!(parse_input_arg("x:").is_err());
    }

    #[test]
    fn directories_are_walked() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("a"), b"a").unwrap();
        std::fs::write(data.join("sub/b"), b"b").unwrap();
        let file = dir.path().join("one.txt");
        std::fs::write(&file, b"1").unwrap();
        let files = expand_inputs(&[
            InputArg {
                local: data.clone(),
                sandbox: None,
            },
            InputArg {
                local: file.clone(),
                sandbox: Some("in/x".into()),
            },
            InputArg {
                local: file.clone(),
                sandbox: None,
            },
        ])
        .unwrap();
        let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["data/a", "data/sub/b", "in/x", "one.txt"]);
        assert!(expand_inputs(&[InputArg {
            local: dir.path().join("missing"),
            sandbox: None
        }])
        .is_err());
    }

    #[test]
    fn programs_are_found_like_a_shell_finds_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        let path_var =
            std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(
            resolve_program("tool", Some(&path_var)).unwrap(),
            tool.canonicalize().unwrap()
        );
        let err = resolve_program("plain", Some(&path_var)).unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
        assert!(resolve_program(tool.to_str().unwrap(), None).is_ok());
        assert!(resolve_program("./nope/x", None).is_err());
    }

    fn ended(state: ActionState, exit: Option<ExitStatus>, reason: Option<&str>) -> ActionRecord {
        let mut record = ActionRecord::new(Lsn(1), Timestamp::from_millis(1));
        let attempt = record.attempt();
        for (i, s) in [ActionState::Pending, ActionState::Running]
            .into_iter()
            .enumerate()
        {
            record
                .apply(&Transition::new(
                    Lsn(1),
                    attempt,
                    s,
                    Timestamp::from_millis(2 + i as u64),
                ))
                .unwrap();
        }
        let detail = TransitionDetail {
            exit,
            reason: reason.map(str::to_owned),
            ..TransitionDetail::default()
        };
        record
            .apply(
                &Transition::new(Lsn(1), attempt, state, Timestamp::from_millis(9))
                    .with_detail(detail),
            )
            .unwrap();
        record
    }

    #[test]
    fn exit_codes_follow_the_program() {
        use ActionState::*;
        assert_eq!(
            exit_code(&ended(Completed, Some(ExitStatus::Code(0)), None)),
            (0, None)
        );
        assert_eq!(exit_code(&ended(Completed, None, None)), (0, None));
        assert_eq!(
            exit_code(&ended(Failed, Some(ExitStatus::Code(3)), None)),
            (3, None)
        );
        let (code, reason) = exit_code(&ended(
            Failed,
            Some(ExitStatus::Signal(9)),
            Some("timed out"),
        ));
        assert_eq!(code, 137);
        assert_eq!(reason.as_deref(), Some("timed out"));
        let (code, reason) = exit_code(&ended(Failed, None, Some("exec format error")));
        assert_eq!(code, EXIT_NOT_RUN);
        assert_eq!(reason.as_deref(), Some("exec format error"));
        let (code, reason) = exit_code(&ended(Cancelled, None, None));
        assert_eq!(code, EXIT_NOT_RUN);
        assert!(reason.unwrap().contains("cancelled"));
    }
}
