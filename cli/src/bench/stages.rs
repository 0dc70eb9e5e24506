//! `procmesh bench runner --breakdown`: the proc agents' stage logs (`PROCMESH_STAGE_LOG`) read
//! into per-stage medians and printed as one table.

use std::path::Path;

use anyhow::Context as _;
use procmesh_proc_agent::runner::STAGES;

/// The per-stage medians of both runner phases; `None` where the phase's proc agent wrote no
/// stage log (or nothing after the warm-up).
pub(super) struct Breakdown {
    pub(super) none: Option<Stages>,
    pub(super) namespaces: Option<Stages>,
}

/// Median microseconds of each stage over the measured attempts of one runner phase, read from
/// the proc agent's stage log (`PROCMESH_STAGE_LOG`: one JSON line per finished attempt,
/// `{"lsn":7,"attempt":1,"stages_us":{"receive":12,...}}`).
pub(super) struct Stages {
    /// In the order of [`STAGES`]; only stages some attempt reported.
    medians: Vec<(&'static str, u64)>,
    /// The median of each attempt's sum over its stages.
    total: u64,
    /// Attempts counted.
    attempts: usize,
}

impl Stages {
    /// The stages of the attempts in the log at `path` with an LSN above `warm_up` (the
    /// warm-up's attempts are left out); `None` if the file is missing or has none.
    pub(super) fn read(path: &Path, warm_up: u64) -> anyhow::Result<Option<Stages>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut samples: Vec<Vec<u64>> = vec![Vec::new(); STAGES.len()];
        let mut totals = Vec::new();
        for line in text.lines() {
            // A line the agent was writing as it stopped, or of another shape: skipped.
            let Ok(line) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if line["lsn"].as_u64().is_none_or(|lsn| lsn <= warm_up) {
                continue;
            }
            let Some(stages) = line["stages_us"].as_object() else {
                continue;
            };
            let mut total = 0;
            for (i, stage) in STAGES.iter().enumerate() {
                if let Some(us) = stages.get(*stage).and_then(serde_json::Value::as_u64) {
                    samples[i].push(us);
                    total += us;
                }
            }
            totals.push(total);
        }
        if totals.is_empty() {
            return Ok(None);
        }
        let medians = STAGES
            .iter()
            .zip(&mut samples)
            .filter_map(|(stage, s)| median_u64(s).map(|m| (*stage, m)))
            .collect();
        Ok(Some(Stages {
            medians,
            attempts: totals.len(),
            total: median_u64(&mut totals).unwrap_or(0),
        }))
    }

    /// `{stage: median_us, ..., "total": median_us}`.
    pub(super) fn to_json(&self) -> serde_json::Value {
        let mut map: serde_json::Map<String, serde_json::Value> = self
            .medians
            .iter()
            .map(|(stage, us)| ((*stage).to_owned(), (*us).into()))
            .collect();
        map.insert("total".into(), self.total.into());
        map.into()
    }

    fn get(&self, stage: &str) -> Option<u64> {
        self.medians
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, us)| *us)
    }
}

/// The median of integer samples (sorted in place); `None` without samples.
fn median_u64(samples: &mut [u64]) -> Option<u64> {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied()
}

/// Prints the stage table: one row per stage, one column per isolation mode, and the total.
pub(super) fn print_stages(b: &Breakdown) {
    let modes = [("none", &b.none), ("namespaces", &b.namespaces)];
    if modes.iter().all(|(_, s)| s.is_none()) {
        println!("per-action stages: no stage log written");
        return;
    }
    println!("per-action stages (median µs)");
    println!("{:<10} {:>12} {:>12}", "stage", "none", "namespaces");
    let cell = |s: &Option<Stages>, f: &dyn Fn(&Stages) -> Option<u64>| {
        s.as_ref()
            .and_then(f)
            .map_or_else(|| "-".to_owned(), |us| us.to_string())
    };
    for stage in STAGES {
        println!(
            "{stage:<10} {:>12} {:>12}",
            cell(&b.none, &|s| s.get(stage)),
            cell(&b.namespaces, &|s| s.get(stage)),
        );
    }
    println!(
        "{:<10} {:>12} {:>12}",
        "total",
        cell(&b.none, &|s| Some(s.total)),
        cell(&b.namespaces, &|s| Some(s.total)),
    );
    println!(
        "{:<10} {:>12} {:>12}",
        "attempts",
        cell(&b.none, &|s| Some(s.attempts as u64)),
        cell(&b.namespaces, &|s| Some(s.attempts as u64)),
    );
    for (mode, s) in modes {
        if s.is_none() {
            println!("{mode}: no stage log written");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_log_medians_skip_the_warm_up_and_malformed_lines() {
        let dir = std::env::temp_dir().join(format!("procmesh-stages-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("stages.jsonl");
        assert!(
            Stages::read(&log, 0).unwrap().is_none(),
            "no file: no figures"
        );
        let lines = [
            // The warm-up's attempt (LSN ≤ 2): left out.
            r#"{"lsn":2,"attempt":1,"stages_us":{"receive":9000,"spawn":9000}}"#,
            r#"{"lsn":3,"attempt":1,"stages_us":{"receive":10,"spawn":100,"wait":5}}"#,
            r#"{"lsn":4,"attempt":1,"stages_us":{"receive":30,"spawn":300}}"#,
            "not json",
            r#"{"lsn":5,"attempt":1,"stages_us":{"receive":20,"spawn":200,"unknown":7}}"#,
            r#"{"lsn":6,"attempt":1,"stages_"#,
        ];
        std::fs::write(&log, lines.join("\n")).unwrap();
        let stages = Stages::read(&log, 2).unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(stages.attempts, 3);
        assert_eq!(
            stages.medians,
            vec![("receive", 20), ("spawn", 200), ("wait", 5)]
        );
        // Per-attempt totals 115, 330, 220 (unknown stages not counted).
        assert_eq!(stages.total, 220);
        assert_eq!(
            stages.to_json(),
            serde_json::json!({"receive": 20, "spawn": 200, "wait": 5, "total": 220})
        );
    }
}
