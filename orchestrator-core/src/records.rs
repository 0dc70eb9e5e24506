//! What the [`Book`](crate::sched::Book) does not hold: queue tokens, worker descriptors, the
//! [`ActionDef`] of every unretired action, and what finished actions produced (outputs,
//! stdout/stderr tails).
//!
//! ```text
//!  tokens    HashMap<QueueToken, u64>       token → queue id (the capability, ORC-15)
//!  workers   HashMap<WorkerId, Descriptor>  registered workers
//!  actions   HashMap<Lsn, Slot>             one entry per unretired action (ORC-19):
//!                                           Box<ActionDef> + Option<Box<ResultDetail>>
//! ```
//!
//! Lookups only: nothing iterates these maps to make a decision, so their hash order never
//! reaches a replay (ORC-26).

use std::collections::HashMap;

use procmesh_protocol::messages::orchestrator::QueueToken;
use procmesh_protocol::spec::{ActionDef, OutputFile, WorkerDescriptor, WorkerId};
use procmesh_protocol::Lsn;
use serde::{Deserialize, Serialize};

/// What a finished action produced beside its record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultDetail {
    /// Output files, in the CAS.
    pub outputs: Vec<OutputFile>,
    /// The bounded tail of its stdout.
    #[serde(default, with = "serde_bytes")]
    pub stdout_tail: Vec<u8>,
    /// The bounded tail of its stderr.
    #[serde(default, with = "serde_bytes")]
    pub stderr_tail: Vec<u8>,
}

impl ResultDetail {
    /// Whether there is nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty() && self.stdout_tail.is_empty() && self.stderr_tail.is_empty()
    }
}

/// One action: 16 bytes beside its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Slot {
    def: Box<ActionDef>,
    result: Option<Box<ResultDetail>>,
}

/// Tokens, workers, definitions and results.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Records {
    tokens: HashMap<QueueToken, u64>,
    workers: HashMap<WorkerId, WorkerDescriptor>,
    actions: HashMap<Lsn, Slot>,
}

impl Records {
    /// Records a queue's token.
    pub fn put_queue(&mut self, id: u64, token: QueueToken) {
        self.tokens.insert(token, id);
    }

    /// The queue a token opens.
    pub fn queue_by_token(&self, token: &QueueToken) -> Option<u64> {
        self.tokens.get(token).copied()
    }

    /// Records a (valid) worker descriptor under its id; registering it again is harmless.
    pub fn put_worker(&mut self, descriptor: WorkerDescriptor) -> WorkerId {
        let id = descriptor.id();
        self.workers.entry(id).or_insert(descriptor);
        id
    }

    /// A worker's descriptor.
    pub fn worker(&self, id: &WorkerId) -> Option<&WorkerDescriptor> {
        self.workers.get(id)
    }

    /// Records the definitions of newly accepted actions.
    pub fn put_actions(&mut self, actions: Vec<(Lsn, ActionDef)>) {
        self.actions.reserve(actions.len());
        for (lsn, def) in actions {
            self.actions.insert(
                lsn,
                Slot {
                    def: Box::new(def),
                    result: None,
                },
            );
        }
    }

    /// An unretired action's definition.
    pub fn action(&self, lsn: Lsn) -> Option<&ActionDef> {
        self.actions.get(&lsn).map(|slot| &*slot.def)
    }

    /// Records what a finished action produced (replacing an earlier attempt's).
    pub fn put_result(&mut self, lsn: Lsn, detail: ResultDetail) {
        if let Some(slot) = self.actions.get_mut(&lsn) {
            slot.result = (!detail.is_empty()).then(|| Box::new(detail));
        }
    }

    /// What a finished action produced, if anything.
    pub fn result(&self, lsn: Lsn) -> Option<&ResultDetail> {
        self.actions.get(&lsn)?.result.as_deref()
    }

    /// Forgets retired actions.
    pub fn remove(&mut self, lsns: &[Lsn]) {
        for lsn in lsns {
            self.actions.remove(lsn);
        }
    }

    /// How many actions it holds.
    pub fn action_count(&self) -> usize {
        self.actions.len()
    }
}

#[cfg(test)]
mod tests {
    use procmesh_protocol::BlobHash;

    use super::*;

    fn def() -> ActionDef {
        ActionDef::new(WorkerId::from_bytes([7; 32]))
    }

    #[test]
    fn actions_results_and_removal() {
        let mut records = Records::default();
        records.put_actions(vec![(Lsn(1), def()), (Lsn(2), def())]);
        assert_eq!(records.action(Lsn(1)), Some(&def()));
        assert_eq!(records.result(Lsn(1)), None);
        let detail = ResultDetail {
            outputs: vec![OutputFile {
                path: "out".into(),
                hash: BlobHash::of(b"x"),
                size: 1,
            }],
            stdout_tail: b"hi".to_vec(),
            stderr_tail: Vec::new(),
        };
        records.put_result(Lsn(1), detail.clone());
        assert_eq!(records.result(Lsn(1)), Some(&detail));
        // A result for an unknown action is not kept.
        records.put_result(Lsn(9), detail);
        assert_eq!(records.result(Lsn(9)), None);
        records.remove(&[Lsn(1)]);
        assert_eq!(records.action(Lsn(1)), None);
        assert_eq!(records.action_count(), 1);
    }

    #[test]
    fn slots_stay_small() {
        // ORC-19: one pointer pair per action beside the key.
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }
}
