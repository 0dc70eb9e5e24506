//! The state the [`Book`](procmesh_protocol::sched::Book) does not hold, behind the [`Store`]
//! trait: queue tokens, worker descriptors, the [`ActionDef`] of every unretired action, and
//! what finished actions produced (outputs, stdout/stderr tails).
//!
//! [`MemoryStore`] keeps it in memory. A durable journal implementing the same trait (and
//! journaling the book's transitions, so that a restart rebuilds queues and actions) is a
//! later issue; until then an orchestrator restart forgets every queue.
//!
//! ```text
//!  tokens    HashMap<QueueToken, u64>       token → queue id (the capability, ORC-15)
//!  workers   HashMap<WorkerId, Descriptor>  registered workers
//!  actions   HashMap<Lsn, Slot>             one entry per unretired action (ORC-19):
//!                                           Box<ActionDef> + Option<Box<ResultDetail>>
//! ```

use std::collections::HashMap;

use procmesh_protocol::messages::orchestrator::QueueToken;
use procmesh_protocol::spec::{ActionDef, OutputFile, WorkerDescriptor, WorkerId};
use procmesh_protocol::Lsn;

/// What a finished action produced beside its record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultDetail {
    /// Output files, in the CAS.
    pub outputs: Vec<OutputFile>,
    /// The bounded tail of its stdout.
    pub stdout_tail: Vec<u8>,
    /// The bounded tail of its stderr.
    pub stderr_tail: Vec<u8>,
}

impl ResultDetail {
    /// Whether there is nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty() && self.stdout_tail.is_empty() && self.stderr_tail.is_empty()
    }
}

/// Why the store could not record a change; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store error: {0}")]
pub struct StoreError(pub String);

/// The orchestrator's state beside the book. Every write is all or nothing.
pub trait Store: Send + 'static {
    /// Records a queue's token.
    fn put_queue(&mut self, id: u64, token: QueueToken) -> Result<(), StoreError>;
    /// The queue a token opens.
    fn queue_by_token(&self, token: &QueueToken) -> Option<u64>;
    /// Whether a token is already taken.
    fn has_token(&self, token: &QueueToken) -> bool {
        self.queue_by_token(token).is_some()
    }
    /// Records a (valid) worker descriptor under its id; registering it again is harmless.
    fn put_worker(&mut self, descriptor: WorkerDescriptor) -> Result<WorkerId, StoreError>;
    /// A worker's descriptor.
    fn worker(&self, id: &WorkerId) -> Option<&WorkerDescriptor>;
    /// Records the definitions of newly accepted actions.
    fn put_actions(&mut self, actions: Vec<(Lsn, ActionDef)>) -> Result<(), StoreError>;
    /// An unretired action's definition.
    fn action(&self, lsn: Lsn) -> Option<&ActionDef>;
    /// Records what a finished action produced (replacing an earlier attempt's).
    fn put_result(&mut self, lsn: Lsn, detail: ResultDetail) -> Result<(), StoreError>;
    /// What a finished action produced, if anything.
    fn result(&self, lsn: Lsn) -> Option<&ResultDetail>;
    /// Forgets retired actions.
    fn remove(&mut self, lsns: &[Lsn]) -> Result<(), StoreError>;
    /// How many actions it holds.
    fn action_count(&self) -> usize;
}

/// One action: 16 bytes beside its key.
#[derive(Debug)]
struct Slot {
    def: Box<ActionDef>,
    result: Option<Box<ResultDetail>>,
}

/// A [`Store`] in memory: lost on restart.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tokens: HashMap<QueueToken, u64>,
    workers: HashMap<WorkerId, WorkerDescriptor>,
    actions: HashMap<Lsn, Slot>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl Store for MemoryStore {
    fn put_queue(&mut self, id: u64, token: QueueToken) -> Result<(), StoreError> {
        self.tokens.insert(token, id);
        Ok(())
    }

    fn queue_by_token(&self, token: &QueueToken) -> Option<u64> {
        self.tokens.get(token).copied()
    }

    fn put_worker(&mut self, descriptor: WorkerDescriptor) -> Result<WorkerId, StoreError> {
        let id = descriptor.id();
        self.workers.entry(id).or_insert(descriptor);
        Ok(id)
    }

    fn worker(&self, id: &WorkerId) -> Option<&WorkerDescriptor> {
        self.workers.get(id)
    }

    fn put_actions(&mut self, actions: Vec<(Lsn, ActionDef)>) -> Result<(), StoreError> {
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
        Ok(())
    }

    fn action(&self, lsn: Lsn) -> Option<&ActionDef> {
        self.actions.get(&lsn).map(|slot| &*slot.def)
    }

    fn put_result(&mut self, lsn: Lsn, detail: ResultDetail) -> Result<(), StoreError> {
        if let Some(slot) = self.actions.get_mut(&lsn) {
            slot.result = (!detail.is_empty()).then(|| Box::new(detail));
        }
        Ok(())
    }

    fn result(&self, lsn: Lsn) -> Option<&ResultDetail> {
        self.actions.get(&lsn)?.result.as_deref()
    }

    fn remove(&mut self, lsns: &[Lsn]) -> Result<(), StoreError> {
        for lsn in lsns {
            self.actions.remove(lsn);
        }
        Ok(())
    }

    fn action_count(&self) -> usize {
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
        let mut store = MemoryStore::new();
        store
            .put_actions(vec![(Lsn(1), def()), (Lsn(2), def())])
            .unwrap();
        assert_eq!(store.action(Lsn(1)), Some(&def()));
        assert_eq!(store.result(Lsn(1)), None);
        let detail = ResultDetail {
            outputs: vec![OutputFile {
                path: "out".into(),
                hash: BlobHash::of(b"x"),
                size: 1,
            }],
            stdout_tail: b"hi".to_vec(),
            stderr_tail: Vec::new(),
        };
        store.put_result(Lsn(1), detail.clone()).unwrap();
        assert_eq!(store.result(Lsn(1)), Some(&detail));
        // A result for an unknown action is not kept.
        store.put_result(Lsn(9), detail).unwrap();
        assert_eq!(store.result(Lsn(9)), None);
        store.remove(&[Lsn(1)]).unwrap();
        assert_eq!(store.action(Lsn(1)), None);
        assert_eq!(store.action_count(), 1);
    }

    #[test]
    fn slots_stay_small() {
        // ORC-19: one pointer pair per action beside the key.
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }
}
