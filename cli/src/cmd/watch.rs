//! `procmesh watch --queue Q`: live progress of a queue until it is complete. A progress bar on
//! stderr (redrawn in place on a terminal, a line every few seconds otherwise); with `--json`,
//! each event as a JSON line on stdout. Exits 0 if every action completed, 1 otherwise.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use procmesh_protocol::messages::orchestrator::{QueueRef, QueueStatus, StateCounts};
use procmesh_protocol::ClientEvent;

use super::common::{parse_duration, parse_queue, print_json, runtime, ClientArgs};

/// Exit codes, for `procmesh watch --help`.
const EXIT_HELP: &str = "\
Exit codes:
  0    every action of the queue completed
  1    the queue is complete but an action failed, was abandoned or cancelled; or an error
  2    --timeout passed before the queue was complete (or a usage error)
  130  interrupted (Ctrl-C)";

/// Flags of `procmesh watch`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_HELP)]
pub struct WatchArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The queue: a 24-hex token or an integer id (loopback only).
    #[arg(long, short = 'q', env = "PROCMESH_QUEUE", value_parser = parse_queue)]
    pub queue: QueueRef,
    /// Give up after this long, e.g. 1h (exit 2).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Re-read the status this often while events arrive…
const BUSY_RECHECK: Duration = Duration::from_millis(250);
/// …and this often when none do.
const IDLE_RECHECK: Duration = Duration::from_secs(2);
/// Progress lines when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Exit code when `--timeout` passes.
pub const EXIT_TIMEOUT: u8 = 2;

pub fn run(args: WatchArgs) -> anyhow::Result<u8> {
    runtime()?.block_on(watch(args))
}

async fn watch(args: WatchArgs) -> anyhow::Result<u8> {
    let client = args.client.connect().await?;
    let outcome = watch_on(&client, &args).await;
    client.close().await;
    outcome
}

async fn watch_on(client: &procmesh_client::Client, args: &WatchArgs) -> anyhow::Result<u8> {
    let queue = client.queue(args.queue).await?;
    // Subscribe first, then read: nothing between is missed.
    let mut events = queue.watch().await?;
    let mut status = queue.status().await?;
    let json = args.client.json;
    let mut bar = Progress::new(!args.quiet, std::io::stderr().is_terminal(), &status);
    bar.draw(&status);
    let deadline = args.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut dirty = false;
    let mut last_read = tokio::time::Instant::now();
    let mut open = true;
    while !status.is_complete {
        let recheck = last_read + if dirty { BUSY_RECHECK } else { IDLE_RECHECK };
        let wake = deadline.map_or(recheck, |d| d.min(recheck));
        tokio::select! {
            event = events.next(), if open => match event {
                Some(event) => {
                    if json {
                        print_json(&event)?;
                    }
                    match event {
                        ClientEvent::QueueComplete { status: done, .. } => status = done,
                        ClientEvent::Ended { reason, .. } => {
                            tracing::warn!(%reason, "subscription ended; polling");
                            open = false;
                        }
                        ClientEvent::Lagged { .. }
                        | ClientEvent::Transition { .. }
                        | ClientEvent::Batch { .. } => dirty = true,
                    }
                }
                None => open = false,
            },
            _ = tokio::time::sleep_until(wake) => {
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    bar.finish(&status);
                    eprintln!("procmesh: the queue is not complete after {:?}", args.timeout.unwrap_or_default());
                    return Ok(EXIT_TIMEOUT);
                }
                match queue.status().await {
                    Ok(now) => status = now,
                    // An orchestrator restart: keep the last status; the watch resumes by itself.
                    Err(error) if error.is_transient() => {
                        tracing::debug!(%error, "queue status not read; trying again");
                    }
                    Err(error) => return Err(error.into()),
                }
                last_read = tokio::time::Instant::now();
                dirty = false;
                bar.draw(&status);
            }
            _ = tokio::signal::ctrl_c() => {
                bar.finish(&status);
                return Ok(130);
            }
        }
    }
    bar.finish(&status);
    if open {
        let _ = events.close().await;
    }
    if json {
        print_json(&serde_json::json!({ "complete": status }))?;
    } else {
        println!("{}", summary(&status.counts));
    }
    Ok(if all_completed(&status.counts) { 0 } else { 1 })
}

/// Whether every action of the queue completed.
pub fn all_completed(counts: &StateCounts) -> bool {
    counts.completed == counts.total()
}

/// `completed 40  failed 5  cancelled 0  running 8  pending 47`.
pub fn summary(c: &StateCounts) -> String {
    format!(
        "completed {}  failed {}  cancelled {}  running {}  pending {}",
        c.completed,
        c.failed + c.abandoned,
        c.cancelled,
        c.submitting + c.running,
        c.new + c.pending
    )
}

/// The progress bar, e.g. `[#######.............]  45/100  completed 40 … 12.3/s`.
pub fn render(counts: &StateCounts, rate: Option<f64>, width: usize) -> String {
    let total = counts.total();
    let done = counts.terminal();
    let filled = if total == 0 {
        0
    } else {
        ((done as u128 * width as u128) / total as u128) as usize
    };
    let mut line = format!(
        "[{}{}] {done}/{total}  {}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        summary(counts)
    );
    if let Some(rate) = rate {
        line.push_str(&format!("  {rate:.1}/s"));
        let left = total.saturating_sub(done);
        if rate > 0.0 && left > 0 {
            line.push_str(&format!("  eta {}s", (left as f64 / rate).ceil() as u64));
        }
    }
    line
}

struct Progress {
    enabled: bool,
    tty: bool,
    start: Instant,
    start_done: u64,
    last_log: Option<Instant>,
    last_line: String,
    drawn: bool,
}

impl Progress {
    fn new(enabled: bool, tty: bool, status: &QueueStatus) -> Progress {
        Progress {
            enabled,
            tty,
            start: Instant::now(),
            start_done: status.counts.terminal(),
            last_log: None,
            last_line: String::new(),
            drawn: false,
        }
    }

    fn rate(&self, status: &QueueStatus) -> Option<f64> {
        let elapsed = self.start.elapsed().as_secs_f64();
        (elapsed >= 1.0)
            .then(|| status.counts.terminal().saturating_sub(self.start_done) as f64 / elapsed)
    }

    fn draw(&mut self, status: &QueueStatus) {
        if !self.enabled {
            return;
        }
        let line = render(&status.counts, self.rate(status), 30);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
            self.drawn = true;
        } else if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) && line != self.last_line {
            let _ = writeln!(err, "{line}");
            self.last_log = Some(Instant::now());
            self.last_line = line;
        }
    }

    fn finish(&mut self, status: &QueueStatus) {
        if !self.enabled {
            return;
        }
        self.last_log = None;
        self.draw(status);
        if self.drawn {
            let _ = writeln!(std::io::stderr());
        }
        self.enabled = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_counts_and_rate() {
        let counts = StateCounts {
            pending: 4,
            running: 2,
            completed: 3,
            failed: 1,
            ..StateCounts::default()
        };
        let line = render(&counts, Some(2.0), 10);
        assert!(line.starts_with("[####......] 4/10"), "{line}");
        assert!(
            line.contains("completed 3  failed 1  cancelled 0  running 2  pending 4"),
            "{line}"
        );
        assert!(line.contains("2.0/s  eta 3s"), "{line}");
        let empty = render(&StateCounts::default(), None, 4);
        assert!(empty.starts_with("[....] 0/0"), "{empty}");
        assert!(!all_completed(&counts));
        assert!(all_completed(&StateCounts {
            completed: 2,
            ..StateCounts::default()
        }));
    }
}
