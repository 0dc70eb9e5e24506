//! `procmesh explain -q TOKEN --lsn N [--json]`: why an action is (not) running, and the story
//! of its attempts, read like `kubectl describe`:
//!
//! ```text
//! action 7  Pending  attempt 2 of at most 4  priority 0
//! Not running because:
//!   - all slots busy on every fitting proc: quic!10.0.0.5:7700,p1 2/2 (this queue: 5,6)
//!   - attempt 2 of at most 4; the previous one ended Abandoned (proc lost)
//! Attempts:
//!   #1  quic!10.0.0.5:7700,p1  started 1000  ended 1100  Abandoned  proc lost
//!   #2  -                      started -     ended -     Pending
//! ```
//!
//! Times are the orchestrator's milliseconds since the Unix epoch. There is no retry backoff in
//! procmesh (a retry is `Pending` at once), so no reason ever says "waiting for a backoff".

use procmesh_protocol::messages::orchestrator::{AttemptStory, Explanation};
use procmesh_protocol::{ActionState, Lsn};

use super::common::{print_json, runtime, ClientArgs};
use super::queue::QueueArg;

/// Flags of `procmesh explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub queue: QueueArg,
    /// The action.
    #[arg(long)]
    pub lsn: u64,
}

pub fn run(args: ExplainArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = args.client.connect().await?;
        let outcome = async {
            let queue = client.queue(args.queue.queue).await?;
            anyhow::Ok(queue.explain(Lsn(args.lsn)).await?)
        }
        .await;
        client.close().await;
        let explanation = outcome?;
        if args.client.json {
            print_json(&explanation)
        } else {
            print!("{}", render(&explanation));
            Ok(())
        }
    })
}

/// The text form.
pub fn render(e: &Explanation) -> String {
    let mut out = format!(
        "action {}  {}  attempt {} of at most {}  priority {}\n",
        e.lsn, e.state, e.attempt, e.max_attempts, e.priority
    );
    if !e.requires.is_empty() {
        let labels: Vec<String> = e.requires.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("requires  {}\n", labels.join(",")));
    }
    let heading = match e.state {
        ActionState::New | ActionState::Pending => "Not running because:",
        ActionState::Submitting | ActionState::Running => "Where:",
        _ => "Ended:",
    };
    out.push_str(heading);
    out.push('\n');
    for r in &e.reasons {
        out.push_str(&format!("  - {}\n", r.summary));
    }
    out.push_str("Attempts:\n");
    for a in &e.attempts {
        out.push_str(&format!("  {}\n", attempt_line(a)));
    }
    out
}

fn attempt_line(a: &AttemptStory) -> String {
    let time =
        |t: Option<procmesh_protocol::Timestamp>| t.map_or("-".to_owned(), |t| t.0.to_string());
    let mut line = format!(
        "#{:<3} {:<28} started {:<14} ended {:<14} {:<10}",
        a.attempt.get(),
        a.proc.as_ref().map_or("-".to_owned(), ToString::to_string),
        time(a.started.or(a.placed)),
        time(a.ended),
        a.state.as_str(),
    );
    if let Some(exit) = a.exit {
        line.push_str(&format!(" exit {exit}"));
    }
    if let Some(reason) = &a.reason {
        line.push_str(&format!(" {reason}"));
    }
    line.trim_end().to_owned()
}
