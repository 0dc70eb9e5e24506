//! `procmesh bench <suite>`: benchmarks that print a readable table and then one JSON line,
//! every figure beside a raw baseline measured in the same run on the same machine.

mod transport;

use std::time::Duration;

use clap::Subcommand;

/// A benchmark suite.
#[derive(Debug, Subcommand)]
pub enum Suite {
    /// Remote-actor ask RTT and tell throughput over QUIC and Unix, beside raw quinn and raw
    /// Unix sockets.
    Transport {
        /// Seconds spent on each measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
}

pub fn run(suite: Suite) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match suite {
        Suite::Transport { seconds } => {
            anyhow::ensure!(
                seconds > 0.0 && seconds <= 10.0,
                "--seconds must be in (0, 10], got {seconds}"
            );
            runtime.block_on(transport::run(Duration::from_secs_f64(seconds)))
        }
    }
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
    for r in rows {
        println!(
            "{:<34} {:>14.1} {:>14.1} {:<9} {:>7.3}  {}",
            r.what, r.ours, r.raw, r.unit, r.ratio, r.goal
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
