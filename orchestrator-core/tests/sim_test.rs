//! Seeded simulation of the orchestrator core with fake hosts, proc agents and a client, under
//! message loss and delay, proc and host crashes and orchestrator restarts (see `sim/mod.rs`).
//! `PROCMESH_SIM_SEEDS=N` runs N seeds (default 500); `PROCMESH_SIM_SEED=S` runs seed S alone.

mod sim;
mod utils;

use std::time::Instant;

use sim::Sim;

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("PROCMESH_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n: u64 = std::env::var("PROCMESH_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    (0..n).collect()
}

// Attests ORC-12, ORC-26, ORC-28
#[test]
fn no_accepted_action_is_lost_under_faults() {
    let started = Instant::now();
    let mut total = sim::Stats::default();
    let seeds = seeds();
    for &seed in &seeds {
        let mut sim = Sim::new(seed);
        let stats = match sim.run() {
            Ok(stats) => stats,
            Err(error) => panic!(
                "seed {seed} failed (replay with PROCMESH_SIM_SEED={seed}): {error}\n{:?}",
                sim.stats
            ),
        };
        total.events += stats.events;
        total.inputs += stats.inputs;
        total.journal += stats.journal;
        total.restarts += stats.restarts;
        total.host_crashes += stats.host_crashes;
        total.proc_crashes += stats.proc_crashes;
        total.dropped += stats.dropped;
        total.completed += stats.completed;
        total.end_ms += stats.end_ms;
        total.silent_abandons += stats.silent_abandons;
        total.running_abandoned += stats.running_abandoned;
        total.refused += stats.refused;
    }
    eprintln!(
        "{} seeds in {:?}: {total:?}",
        seeds.len(),
        started.elapsed()
    );
}
