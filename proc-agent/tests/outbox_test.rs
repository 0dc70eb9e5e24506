//! The report pump against a fake orchestrator on an in-process link: transitions survive
//! lost replies, an absent or restarting orchestrator, and refusals, in order (PA-AG-3..5).

mod utils;

use std::collections::{HashMap, HashSet};
use std::future::ready;
use std::time::{Duration, Instant};

use procmesh_proc_agent::outbox::{PumpConfig, ReportPump};
use procmesh_proc_agent::runner::Report;
use procmesh_protocol::action::{ActionState, Attempt, AttemptRef, Lsn, Timestamp, Transition};
use procmesh_protocol::ids::{ActorId, HostAddr};
use procmesh_protocol::messages::orchestrator::OrchestratorError;
use procmesh_transport::{LocalHub, Node, NodeBuilder};
use tokio::sync::mpsc;
use utils::eventually;
use utils::orchestrator::{agent_node, fake, fake_on, orchestrator_id, Script};

/// Short timeouts and backoffs, so a lost message costs milliseconds.
fn config() -> PumpConfig {
    PumpConfig {
        ask_timeout: Duration::from_millis(150),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        ..PumpConfig::default()
    }
}

/// Longest wait for everything to be acknowledged.
const FLUSH: Duration = Duration::from_secs(10);

fn transition(lsn: u64, attempt: u32, state: ActionState) -> Transition {
    let attempt = Attempt::new(attempt).expect("attempt");
    Transition::new(Lsn(lsn), attempt, state, Timestamp(lsn))
}

/// `Running` then `Completed` for actions `lsns`, all Running first.
fn running_then_completed(lsns: std::ops::Range<u64>) -> Vec<Transition> {
    let running = lsns.clone().map(|l| transition(l, 1, ActionState::Running));
    let done = lsns.map(|l| transition(l, 1, ActionState::Completed));
    running.chain(done).collect()
}

struct Agent {
    pump: ReportPump,
    reports: mpsc::UnboundedSender<Report>,
    _node: Node,
}

impl Agent {
    async fn start(hub: &LocalHub, config: PumpConfig) -> Agent {
        Agent::on(agent_node(hub).await, config)
    }

    fn on(node: Node, config: PumpConfig) -> Agent {
        let (reports, rx) = mpsc::unbounded_channel();
        let pump = ReportPump::spawn(node.clone(), rx, config);
        Agent {
            pump,
            reports,
            _node: node,
        }
    }

    fn report(&self, transitions: &[Transition]) {
        self.report_to(&orchestrator_id(), transitions)
    }

    fn report_to(&self, to: &ActorId, transitions: &[Transition]) {
        for t in transitions {
            let report = Report {
                report_to: to.clone(),
                transition: t.clone(),
            };
            self.reports.send(report).expect("pump running");
        }
    }

    async fn flushed(&self) {
        assert!(
            self.pump.flush(FLUSH).await,
            "{} transitions still unacknowledged after {FLUSH:?}",
            self.pump.unacknowledged()
        );
        assert_eq!(self.pump.unacknowledged(), 0);
    }
}

/// The first arrival of each transition, in arrival order (repeats after a lost reply dropped).
fn first_arrivals(seen: &[Transition]) -> Vec<Transition> {
    let mut once = HashSet::new();
    seen.iter()
        .filter(|t| once.insert((t.lsn, t.attempt, t.state)))
        .cloned()
        .collect()
}

// Attests PA-AG-3, PA-AG-4
#[tokio::test]
async fn lost_replies_are_resent_until_answered() {
    let hub = LocalHub::new();
    // The first 3 messages arrive, but their replies never come.
    let fake = fake(
        &hub,
        Box::new(|n| if n < 3 { Script::Silent } else { Script::Ack }),
    )
    .await;
    let agent = Agent::start(&hub, config()).await;
    let sent = running_then_completed(1..11);
    agent.report(&sent[..10]);
    tokio::task::yield_now().await;
    agent.report(&sent[10..]);
    agent.flushed().await;

    let seen = fake.transitions();
    assert_eq!(first_arrivals(&seen), sent, "every transition, in order");
    assert!(seen.len() > sent.len(), "the unanswered ones came again");
    assert!(fake.messages() >= 4);
    let acked = fake.seen.lock().unwrap().acknowledged.clone();
    for t in sent.iter().filter(|t| t.state.is_terminal()) {
        assert!(acked.contains(t), "terminal {t:?} never acknowledged");
    }
}

// Attests PA-AG-3, PA-AG-4
#[tokio::test]
async fn shutting_down_answers_keep_the_reports() {
    let hub = LocalHub::new();
    // `ShuttingDown` = not applied (and not recorded by the fake): they must come again.
    let fake = fake(
        &hub,
        Box::new(|n| match n {
            0..3 => Script::Refuse(OrchestratorError::ShuttingDown),
            _ => Script::Ack,
        }),
    )
    .await;
    let agent = Agent::start(&hub, config()).await;
    let sent = running_then_completed(1..6);
    agent.report(&sent);
    agent.flushed().await;
    assert_eq!(fake.transitions(), sent, "each exactly once, in order");
    assert!(fake.messages() >= 4);
}

// Attests PA-AG-4
#[tokio::test]
async fn reports_wait_for_an_absent_orchestrator_then_follow_it_across_a_restart() {
    // Unix sockets: a node that goes away takes its connections with it.
    let dir = tempfile::tempdir().expect("tempdir");
    let orc_socket = dir.path().join("orc.sock");
    let orc_node = || NodeBuilder::new("service").unix(&orc_socket);
    let orc = HostAddr::Unix(orc_socket.clone())
        .proc("service")
        .and_then(|p| p.actor("orchestrator"))
        .expect("id");
    let node = NodeBuilder::new("worker-1")
        .unix(dir.path().join("agent.sock"))
        .start()
        .await
        .expect("agent node");
    let agent = Agent::on(node, config());
    let sent = running_then_completed(1..21);
    agent.report_to(&orc, &sent[..20]);
    assert!(
        eventually(Duration::from_secs(2), || ready({
            agent.pump.unacknowledged() == 20
        }))
        .await,
        "reports queued: not true within {:?}",
        Duration::from_secs(2)
    );
    // Nobody at the address for a while (the subject of the test, not a wait for an event):
    // several sends fail and back off meanwhile; more reports queue behind them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.report_to(&orc, &sent[20..30]);
    assert!(!agent.pump.flush(Duration::from_millis(50)).await);

    let first = fake_on(orc_node(), Box::new(|_| Script::Ack)).await;
    assert_eq!(first.id, orc);
    agent.flushed().await;
    assert_eq!(first_arrivals(&first.transitions()), sent[..30]);

    // It goes away; what is reported meanwhile reaches its successor on the same id.
    first.stop().await;
    drop(first);
    let _ = std::fs::remove_file(&orc_socket);
    agent.report_to(&orc, &sent[30..]);
    assert!(
        eventually(Duration::from_secs(2), || ready({
            agent.pump.unacknowledged() == 10
        }))
        .await,
        "sends failing: not true within {:?}",
        Duration::from_secs(2)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(agent.pump.unacknowledged(), 10);
    let second = fake_on(orc_node(), Box::new(|_| Script::Ack)).await;
    agent.flushed().await;
    assert_eq!(first_arrivals(&second.transitions()), sent[30..]);
}

// Attests PA-AG-3
#[tokio::test]
async fn judged_reports_are_dropped_not_resent() {
    let hub = LocalHub::new();
    let fake = fake(
        &hub,
        Box::new(|_| Script::Judge(OrchestratorError::UnknownAction(Lsn(1)))),
    )
    .await;
    let agent = Agent::start(&hub, config()).await;
    let sent = running_then_completed(1..51);
    for chunk in sent.chunks(7) {
        agent.report(chunk);
        tokio::task::yield_now().await;
    }
    agent.flushed().await;
    assert!(fake.messages() > 1);
    assert_eq!(fake.transitions(), sent, "each sent exactly once");
}

// Attests PA-AG-1, PA-AG-3, PA-AG-4
#[tokio::test]
async fn order_holds_under_load_when_every_seventh_message_fails() {
    use ActionState::*;
    let hub = LocalHub::new();
    // Every 7th message: alternately refused with `ShuttingDown`, or its reply lost.
    let fake = fake(
        &hub,
        Box::new(|n| match (n % 7, n / 7 % 2) {
            (6, 0) => Script::Refuse(OrchestratorError::ShuttingDown),
            (6, _) => Script::Silent,
            _ => Script::Ack,
        }),
    )
    .await;
    let agent = Agent::start(&hub, config()).await;
    // 1,000 actions, two attempts each (the first fails, the second completes, or is still
    // running for every fourth action): 5,750 transitions over 2,000 attempts, interleaved
    // across attempts in waves of 50 actions.
    let mut sent = Vec::new();
    for wave in 0..20u64 {
        let lsns = wave * 50..wave * 50 + 50;
        for (attempt, states) in [
            (1, &[Submitting, Running, Failed][..]),
            (2, &[Submitting, Running, Completed][..]),
        ] {
            for state in states {
                for lsn in lsns.clone() {
                    if attempt == 2 && *state == Completed && lsn % 4 == 0 {
                        continue;
                    }
                    sent.push(transition(lsn, attempt, *state));
                }
            }
        }
    }
    assert_eq!(sent.len(), 5_750);
    for chunk in sent.chunks(97) {
        agent.report(chunk);
        tokio::task::yield_now().await;
    }
    agent.flushed().await;

    let seen = fake.transitions();
    let arrivals = first_arrivals(&seen);
    assert_eq!(arrivals.len(), sent.len(), "no transition lost");
    let mut per_attempt: HashMap<AttemptRef, Vec<ActionState>> = HashMap::new();
    for t in &arrivals {
        per_attempt
            .entry(t.attempt_ref())
            .or_default()
            .push(t.state);
    }
    assert_eq!(per_attempt.len(), 2_000);
    for (attempt, states) in &per_attempt {
        match states.as_slice() {
            [Submitting, Running, Failed | Completed] | [Submitting, Running] => {}
            other => panic!("{attempt:?} arrived as {other:?}"),
        }
    }
    assert_eq!(arrivals, sent, "first arrivals in report order");
    let acked: HashSet<_> = fake
        .seen
        .lock()
        .unwrap()
        .acknowledged
        .iter()
        .map(|t| (t.lsn, t.attempt, t.state))
        .collect();
    for t in sent.iter().filter(|t| t.state.is_terminal()) {
        assert!(
            acked.contains(&(t.lsn, t.attempt, t.state)),
            "terminal {t:?} never acknowledged"
        );
    }
    assert!(fake.messages() >= 7, "some messages failed");
}

/// Not a benchmark (debug or release, a shared machine): a floor that catches a pump sending
/// one transition per round trip, and the rate for the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_keeps_throughput() {
    let hub = LocalHub::new();
    let fake = fake(&hub, Box::new(|_| Script::Ack)).await;
    let agent = Agent::start(&hub, PumpConfig::default()).await;
    let n = 100_000u64;
    let sent: Vec<Transition> = (0..n)
        .map(|l| transition(l, 1, ActionState::Completed))
        .collect();
    let started = Instant::now();
    for chunk in sent.chunks(64) {
        agent.report(chunk);
        tokio::task::yield_now().await;
    }
    agent.flushed().await;
    let elapsed = started.elapsed();
    let messages = fake.messages();
    eprintln!(
        "{n} transitions in {elapsed:?} ({:.0}/s), {messages} messages",
        n as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(fake.transitions().len() as u64, n);
    assert!(
        (messages as u64) < n / 4,
        "{messages} messages for {n} transitions"
    );
}
