//! The runner of the `harness = false` sandbox tests: each test binary is its own sandbox
//! helper, so its `main` must run before any thread exists, and then runs its tests here.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// One test: a name and the future it runs.
pub type Test = fn() -> Pin<Box<dyn Future<Output = ()>>>;

/// The tests `$name, …` as `(&str, Test)` pairs.
#[macro_export]
macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), || Box::pin($name()) as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>)),*]
    };
}

/// Runs every test whose name contains the first non-flag argument (all without one), each
/// bounded to 120 s, on a 2-thread runtime; prints a line per test and exits 1 if any failed.
pub fn run(tests: &[(&str, Test)]) {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut failed = Vec::new();
    for (name, test) in tests {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(120), test())
                    .await
                    .expect("test timed out")
            })
        }));
        println!(
            "test {name} ... {}",
            if ran.is_ok() { "ok" } else { "FAILED" }
        );
        if ran.is_err() {
            failed.push(*name);
        }
    }
    if !failed.is_empty() {
        eprintln!("failed: {failed:?}");
        std::process::exit(1);
    }
}

/// How a sandboxed action ended, with everything it wrote.
pub struct Outcome {
    /// Its exit (resolved through the verdict of a warm slot).
    pub status: procmesh_protocol::ExitStatus,
    /// All of its stdout.
    pub stdout: String,
    /// All of its stderr.
    pub stderr: String,
}

/// Reads `sbx`'s stdout and stderr to the end and waits for it, within 30 s.
pub async fn outcome(sbx: procmesh_sys::sandbox::Sandboxed) -> Outcome {
    use tokio::io::AsyncReadExt as _;
    let (mut out, mut err) = (sbx.pipes.stdout.unwrap(), sbx.pipes.stderr.unwrap());
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let all = async {
        let (a, b, info) = tokio::join!(
            out.read_to_string(&mut stdout),
            err.read_to_string(&mut stderr),
            sbx.child.wait()
        );
        a.unwrap();
        b.unwrap();
        info
    };
    let info = tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("action timed out");
    let info = match sbx.verdict {
        Some(verdict) => verdict.resolve(info).await,
        None => info,
    };
    Outcome {
        status: info.status,
        stdout,
        stderr,
    }
}

/// The pids whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            found.push(pid);
        }
    }
    found
}
