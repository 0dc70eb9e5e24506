//! `procmesh bench <suite>`: benchmarks that print a readable table and then one JSON line,
//! every figure beside a raw baseline measured in the same run on the same machine.

mod admin;
mod baseline;
mod mesh;
mod runner;
mod stages;
mod transport;

use std::time::Duration;

use clap::Subcommand;

/// A benchmark suite.
#[derive(Debug, Subcommand)]
pub enum Suite {
    /// The admin surface under load: `/metrics` scrape time with many pending actions beside a
    /// `/healthz` GET over the same listener, and the dashboard's page weight.
    Admin {
        /// Pending actions in the orchestrator while it is scraped.
        #[arg(long, default_value_t = 1_000_000)]
        pending: u64,
    },
    /// Remote-actor ask RTT and tell throughput over QUIC and Unix, beside raw quinn and raw
    /// Unix sockets.
    Transport {
        /// Seconds spent on each measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// Proc spawn-to-ready, runner throughput (isolation none and namespaces) and the host's mux
    /// hop, beside raw process spawning and bubblewrap.
    Runner {
        /// Seconds spent on each throughput measurement.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Actions run at once (and raw spawners); default: logical CPUs.
        #[arg(long)]
        concurrency: Option<u32>,
        /// Also print the median microseconds of each stage of an action (receive, slot,
        /// worker, inputs, sandbox, cgroup, spawn, wait, outputs, report, cleanup) in each
        /// isolation mode, from the proc agents' stage logs.
        #[arg(long)]
        breakdown: bool,
    },
    /// End-to-end actions/s through client, orchestrator, host and proc (isolation namespaces
    /// and none) beside raw spawning and bubblewrap;
    /// dispatch throughput with a no-op executor; orchestrator memory per pending action.
    Mesh {
        /// Seconds spent on the end-to-end and raw measurements.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Actions run at once (and raw spawners); default: logical CPUs.
        #[arg(long)]
        concurrency: Option<u32>,
        /// Actions of the no-op dispatch measurement.
        #[arg(long, default_value_t = 100_000)]
        noop_actions: u64,
        /// Pending actions of the memory measurement.
        #[arg(long, default_value_t = 1_000_000)]
        pending: u64,
    },
}

pub fn run(suite: Suite) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match suite {
        Suite::Admin { pending } => {
            anyhow::ensure!(
                (1..=10_000_000).contains(&pending),
                "--pending must be in 1..=10000000"
            );
            runtime.block_on(admin::run(pending))
        }
        Suite::Transport { seconds } => {
            anyhow::ensure!(
                seconds > 0.0 && seconds <= 10.0,
                "--seconds must be in (0, 10], got {seconds}"
            );
            runtime.block_on(transport::run(Duration::from_secs_f64(seconds)))
        }
        Suite::Runner {
            seconds,
            concurrency,
            breakdown,
        } => {
            anyhow::ensure!(
                seconds > 0.0 && seconds <= 20.0,
                "--seconds must be in (0, 20], got {seconds}"
            );
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
            let concurrency = concurrency.unwrap_or(cpus);
            anyhow::ensure!(
                (1..=256).contains(&concurrency),
                "--concurrency must be in 1..=256"
            );
            runtime.block_on(runner::run(
                Duration::from_secs_f64(seconds),
                concurrency,
                breakdown,
            ))
        }
        Suite::Mesh {
            seconds,
            concurrency,
            noop_actions,
            pending,
        } => {
            anyhow::ensure!(
                seconds > 0.0 && seconds <= 60.0,
                "--seconds must be in (0, 60], got {seconds}"
            );
            anyhow::ensure!(
                (1..=10_000_000).contains(&noop_actions) && (1..=10_000_000).contains(&pending),
                "--noop-actions and --pending must be in 1..=10000000"
            );
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
            let concurrency = concurrency.unwrap_or(cpus);
            anyhow::ensure!(
                (1..=256).contains(&concurrency),
                "--concurrency must be in 1..=256"
            );
            runtime.block_on(mesh::run(mesh::Options {
                seconds,
                concurrency,
                noop_actions,
                pending,
            }))
        }
    }
}

/// A fresh scratch directory for one suite's run, on tmpfs (`/dev/shm`) when there is one:
/// the benchmarks create and delete files per operation (sockets, sandboxes), and a disk's
/// directory operations are not what they measure. Returns the directory and what it is on.
pub fn scratch_dir(suite: &str) -> anyhow::Result<(std::path::PathBuf, &'static str)> {
    let (base, on) = match std::path::Path::new("/dev/shm") {
        shm if shm.is_dir() => (shm.to_path_buf(), "/dev/shm (tmpfs)"),
        _ => (std::env::temp_dir(), "the temporary directory"),
    };
    let dir = base.join(format!("procmesh-bench-{suite}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    Ok((dir, on))
}

/// One row of a results table.
pub struct Row {
    pub what: &'static str,
    pub ours: f64,
    pub raw: f64,
    pub unit: &'static str,
    pub ratio: f64,
    pub goal: &'static str,
}

/// Prints rows as an aligned table.
pub fn print_table(title: &str, rows: &[Row]) {
    println!("{title}");
    println!(
        "{:<34} {:>14} {:>14} {:<9} {:>7}  goal",
        "measurement", "procmesh", "raw", "unit", "ratio"
    );
    // A figure not measured (NaN) shows as `-`.
    let cell = |v: f64, width: usize, precision: usize| match v {
        v if v.is_nan() => format!("{:>width$}", "-"),
        v => format!("{v:>width$.precision$}"),
    };
    for r in rows {
        println!(
            "{:<34} {} {} {:<9} {}  {}",
            r.what,
            cell(r.ours, 14, 1),
            cell(r.raw, 14, 1),
            r.unit,
            cell(r.ratio, 7, 3),
            r.goal
        );
    }
}

/// Median of samples (sorted in place).
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    if samples.is_empty() {
        return f64::NAN;
    }
    samples[samples.len() / 2]
}
