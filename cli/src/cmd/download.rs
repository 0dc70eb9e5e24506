//! `procmesh result --all --download DIR`: every finished action's outputs, into
//! `DIR/<lsn>/<path>`, fetched in parallel, skipping files already there.
//!
//! A file counts as already there when a regular file of the output's size and BLAKE3 hash is
//! at its place; anything else at that place is replaced. Paths come from remote runners: they
//! are validated, and nothing is written through a symbolic link ([`Client::download`]). A
//! failed file is named and the others go on; the command then fails, saying how many.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use procmesh_client::Client;
use procmesh_protocol::messages::orchestrator::ActionResult;
use procmesh_protocol::spec::{validate_path, OutputFile};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Files fetched at once.
pub const PARALLEL: usize = 8;

/// What a bulk download did.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Results looked at.
    pub actions: u64,
    /// Output files they name.
    pub files: u64,
    /// Files fetched and written.
    pub downloaded: u64,
    /// Files already there (same size and hash), left alone.
    pub skipped: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Files that could not be written, each with why.
    pub failed: Vec<String>,
    /// Wall time, in milliseconds.
    pub elapsed_ms: u64,
}

/// How one file went.
enum Done {
    Downloaded(u64),
    Skipped,
    Failed(String),
}

/// Downloads the outputs of `results` into `dir/<lsn>/…`, at most [`PARALLEL`] at once, with a
/// progress line on stderr when `progress` (redrawn in place on a terminal).
pub async fn download_all(
    client: &Client,
    results: Vec<ActionResult>,
    dir: &Path,
    progress: bool,
) -> Summary {
    let began = Instant::now();
    let mut summary = Summary {
        actions: results.len() as u64,
        ..Summary::default()
    };
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut jobs = JoinSet::new();
    for result in results {
        let result = Arc::new(result);
        let dest_dir = dir.join(result.record.lsn().0.to_string());
        for index in 0..result.outputs.len() {
            summary.files += 1;
            let (client, result, dest_dir) = (client.clone(), result.clone(), dest_dir.clone());
            let permits = permits.clone();
            jobs.spawn(async move {
                let _permit = permits.acquire_owned().await;
                one(&client, &result, &result.outputs[index], &dest_dir).await
            });
        }
    }
    let mut bar = Bar::new(progress, summary.files);
    while let Some(joined) = jobs.join_next().await {
        match joined {
            Ok(Done::Downloaded(bytes)) => {
                summary.downloaded += 1;
                summary.bytes += bytes;
            }
            Ok(Done::Skipped) => summary.skipped += 1,
            Ok(Done::Failed(why)) => summary.failed.push(why),
            Err(e) => summary.failed.push(format!("a download task failed: {e}")),
        }
        bar.show(&summary);
    }
    bar.finish(&summary);
    summary.failed.sort();
    summary.elapsed_ms = began.elapsed().as_millis() as u64;
    summary
}

/// One output of one result.
async fn one(client: &Client, result: &ActionResult, output: &OutputFile, dest_dir: &Path) -> Done {
    let lsn = result.record.lsn();
    let named = || format!("{lsn}/{}", output.path);
    if let Err(reason) = validate_path(&output.path) {
        return Done::Failed(format!("{}: bad path: {reason}", named()));
    }
    // `DIR/<lsn>` is ours to make: a link there (planted, or left by anything else) is refused
    // like any link below it (Client::download checks those).
    if let Ok(meta) = tokio::fs::symlink_metadata(dest_dir).await {
        if !meta.is_dir() {
            let what = if meta.file_type().is_symlink() {
                "a symbolic link"
            } else {
                "not a directory"
            };
            return Done::Failed(format!(
                "{}: {} is {what}: refusing to write an output through it",
                named(),
                dest_dir.display()
            ));
        }
    }
    if already_there(&dest_dir.join(&output.path), output).await {
        return Done::Skipped;
    }
    match client.download(result, output, dest_dir).await {
        Ok(_) => Done::Downloaded(output.size),
        Err(e) => Done::Failed(format!("{}: {e}", named())),
    }
}

/// Whether `dest` is a regular file (not a link) of `output`'s size and hash.
async fn already_there(dest: &PathBuf, output: &OutputFile) -> bool {
    let Ok(meta) = tokio::fs::symlink_metadata(dest).await else {
        return false;
    };
    if !meta.file_type().is_file() || meta.len() != output.size {
        return false;
    }
    matches!(
        procmesh_transport::blob::hash_file(dest).await,
        Ok((hash, _)) if hash == output.hash
    )
}

/// The progress line: `downloading 120/420 files (3 skipped), 12.5 MB`.
struct Bar {
    on: bool,
    tty: bool,
    total: u64,
    last: Option<Instant>,
    last_decile: u64,
}

impl Bar {
    fn new(on: bool, total: u64) -> Bar {
        Bar {
            on: on && total > 0,
            tty: std::io::stderr().is_terminal(),
            total,
            last: None,
            last_decile: 0,
        }
    }

    fn line(&self, s: &Summary) -> String {
        let done = s.downloaded + s.skipped + s.failed.len() as u64;
        let width = 24u64;
        let filled = (done * width).checked_div(self.total).unwrap_or(width);
        format!(
            "[{}{}] {done}/{} files, {} downloaded ({}), {} skipped, {} failed",
            "#".repeat(filled as usize),
            "-".repeat((width - filled) as usize),
            self.total,
            s.downloaded,
            human_bytes(s.bytes),
            s.skipped,
            s.failed.len()
        )
    }

    /// Redrawn at most every 100 ms on a terminal; elsewhere one line per tenth done.
    fn show(&mut self, s: &Summary) {
        if !self.on {
            return;
        }
        let done = s.downloaded + s.skipped + s.failed.len() as u64;
        if self.tty {
            if self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
                && done < self.total
            {
                return;
            }
            self.last = Some(Instant::now());
            eprint!("\r{}", self.line(s));
            let _ = std::io::stderr().flush();
        } else {
            let decile = done * 10 / self.total;
            if decile > self.last_decile {
                self.last_decile = decile;
                eprintln!("{}", self.line(s));
            }
        }
    }

    fn finish(&self, _s: &Summary) {
        if self.on && self.tty {
            eprintln!();
        }
    }
}

/// `12.5 MB`, `830 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_a_human_wrote_them() {
        assert_eq!(human_bytes(830), "830 B");
        assert_eq!(human_bytes(12_500_000), "12.5 MB");
        assert_eq!(human_bytes(1_000), "1.0 kB");
    }

    #[test]
    fn the_bar_fills_with_what_is_done() {
        let bar = Bar::new(true, 4);
        let s = Summary {
            downloaded: 1,
            skipped: 1,
            bytes: 2_000,
            ..Summary::default()
        };
        let line = bar.line(&s);
        assert!(
            line.starts_with("[############------------] 2/4 files"),
            "{line}"
        );
        assert!(
            line.contains("1 downloaded (2.0 kB), 1 skipped, 0 failed"),
            "{line}"
        );
    }
}
