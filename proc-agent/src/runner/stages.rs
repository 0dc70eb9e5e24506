//! Where an attempt's time goes (`PROCMESH_STAGE_LOG`): microseconds per stage of
//! [`STAGES`](super::STAGES), one JSON line per finished attempt. Nothing is measured unless
//! the log is configured.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use procmesh_protocol::action::AttemptRef;

/// The clock of one attempt: each mark closes the stage that ran since the previous one.
#[derive(Debug)]
pub(crate) struct Stages {
    last: Option<Instant>,
    us: Vec<(&'static str, u64)>,
}

fn micros(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_micros()).unwrap_or(u64::MAX)
}

impl Stages {
    /// A clock started now if `on`, else one that measures nothing.
    pub(crate) fn new(on: bool) -> Stages {
        Stages {
            last: on.then(Instant::now),
            us: Vec::new(),
        }
    }

    /// Closes `stage`: the time since the previous mark.
    pub(crate) fn mark(&mut self, stage: &'static str) {
        if let Some(last) = self.last {
            let now = Instant::now();
            self.us.push((stage, micros(last, now)));
            self.last = Some(now);
        }
    }

    /// Closes `first` at `at` and `second` now; only `first` (now) without `at`.
    pub(crate) fn mark_split(
        &mut self,
        first: &'static str,
        at: Option<Instant>,
        second: &'static str,
    ) {
        match (self.last, at) {
            (Some(last), Some(at)) => {
                let now = Instant::now();
                self.us.push((first, micros(last, at)));
                self.us.push((second, micros(at, now)));
                self.last = Some(now);
            }
            _ => self.mark(first),
        }
    }
}

/// The stage log: a file lines are appended to.
#[derive(Debug)]
pub(crate) struct StageLog(Mutex<File>);

impl StageLog {
    /// Opens (creates) `path` for appending.
    pub(crate) fn open(path: &Path) -> std::io::Result<StageLog> {
        let file = File::options().create(true).append(true).open(path)?;
        Ok(StageLog(Mutex::new(file)))
    }

    /// Appends the line of `attempt`; a failed write is logged once per attempt, not fatal.
    pub(crate) fn write(&self, attempt: AttemptRef, stages: &Stages) {
        if stages.us.is_empty() {
            return;
        }
        let us: serde_json::Map<String, serde_json::Value> = stages
            .us
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).into()))
            .collect();
        let line = serde_json::json!({
            "lsn": attempt.lsn.0,
            "attempt": attempt.attempt.get(),
            "stages_us": us,
        });
        let mut file = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(error) = writeln!(file, "{line}") {
            tracing::warn!(%error, "cannot write the stage log");
        }
    }
}
