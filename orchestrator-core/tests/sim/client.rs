//! The simulated client: queues, submissions with idempotency keys re-sent until answered,
//! and what its answers tell the checks.

use super::*;

impl Sim {
    // ---- the client -----------------------------------------------------------------------

    pub(super) fn queue_ref(&self, queue: usize) -> QueueRef {
        QueueRef::Token(self.client.queues[queue].0)
    }

    pub(super) fn client_send(&mut self, ask: Ask) {
        let worker = self.client.worker.expect("registered at setup");
        let message = match &ask {
            Ask::Submit { queue, keys } => R::Submit {
                queue: self.queue_ref(*queue),
                actions: keys
                    .iter()
                    .map(|k| action(worker, false, Some(k.clone())))
                    .collect(),
            },
            Ask::Cancel { queue, lsn } => R::CancelAction {
                queue: self.queue_ref(*queue),
                lsn: *lsn,
            },
            Ask::Results { queue } => R::ListResults {
                queue: self.queue_ref(*queue),
                after: None,
                limit: Some(8),
            },
            Ask::Retire { queue, lsns } => {
                self.client.retiring.extend(lsns.iter().copied());
                R::Retire {
                    queue: self.queue_ref(*queue),
                    lsns: lsns.clone(),
                }
            }
        };
        self.client.next_req += 1;
        let req = self.client.next_req;
        self.client.outstanding = Some((req, ask, self.now));
        self.send(request(message, client_id()), Dest::Client { req });
    }

    pub(super) fn client_timer(&mut self) {
        let wait = self.rng.range(200, 1_500);
        self.at(wait, Ev::ClientTimer);
        if let Some((_, ask, sent)) = &self.client.outstanding {
            if self.now - sent >= ASK_TIMEOUT {
                // No answer: ask again (submissions carry keys, so this is safe, ORC-9).
                let ask = ask.clone();
                self.client_send(ask);
            }
            return;
        }
        let queues = self.client.queues.len() as u64;
        let left = self.plan.actions - self.client.next_key.min(self.plan.actions);
        let roll = self.rng.below(100);
        if left > 0 && roll < 70 {
            let n = (self.rng.range(1, 6) as usize).min(left);
            // Round robin first, so that every queue gets actions; then at random.
            self.client.batches += 1;
            let queue = match self.client.batches - 1 {
                k if k < queues => k as usize,
                _ => self.rng.below(queues) as usize,
            };
            let keys = (0..n)
                .map(|i| format!("a{}", self.client.next_key + i))
                .collect();
            self.client.next_key += n;
            self.client_send(Ask::Submit { queue, keys });
        } else if roll < 78 && !self.client.accepted.is_empty() {
            let pick = self.rng.below(self.client.accepted.len() as u64) as usize;
            let Some((&lsn, _)) = self.client.accepted.iter().nth(pick) else {
                return;
            };
            let queue = self.queue_index(lsn);
            self.client_send(Ask::Cancel { queue, lsn });
        } else if roll < 90 {
            let queue = self.rng.below(queues) as usize;
            self.client_send(Ask::Results { queue });
        }
    }

    /// The queue (client index) an accepted action was submitted to.
    pub(super) fn queue_index(&self, lsn: Lsn) -> usize {
        let key = &self.client.accepted[&lsn];
        let n: usize = key[1..].parse().expect("a key the client made");
        self.client
            .submitted_to
            .get(&n)
            .copied()
            .unwrap_or_default()
    }

    pub(super) fn client_answer(&mut self, req: u64, answer: Answer) {
        let Some((id, ask, _)) = self.client.outstanding.clone() else {
            return;
        };
        if id != req {
            return;
        }
        self.client.outstanding = None;
        match (ask, answer) {
            (Ask::Submit { queue, keys }, Ok(OrchestratorReply::Submitted { lsns })) => {
                assert_eq!(lsns.len(), keys.len(), "one LSN per action");
                for (key, lsn) in keys.into_iter().zip(lsns) {
                    let n: usize = key[1..].parse().expect("a key the client made");
                    self.client.submitted_to.insert(n, queue);
                    if let Some(earlier) = self.client.keys.insert(key.clone(), lsn) {
                        assert_eq!(earlier, lsn, "ORC-9: key {key} got another LSN");
                    }
                    self.client.accepted.insert(lsn, key);
                }
            }
            (Ask::Submit { queue, keys }, other) => {
                panic!(
                    "seed {}: Submit to queue {queue} of {keys:?}: {other:?}",
                    self.seed
                )
            }
            (Ask::Results { queue }, Ok(OrchestratorReply::Results(results))) => {
                let lsns: Vec<Lsn> = results.iter().map(|r| r.record.lsn()).collect();
                if !lsns.is_empty() && self.rng.chance(60) {
                    self.client_send(Ask::Retire { queue, lsns });
                }
            }
            _ => {}
        }
    }
}
