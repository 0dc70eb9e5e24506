//! [`Queue`]: a handle on one queue — submit, status, results, retire, drain, cancel,
//! reschedule, priorities, events.

use std::time::Duration;

use procmesh_protocol::messages::orchestrator::{
    ActionResult, ActionView, EventFilter, Explanation, OrchestratorReply, QueueRef, QueueStatus,
    QueueToken, SubmitAction, SubscriptionTarget,
};
use procmesh_protocol::messages::requests::client as req;
use procmesh_protocol::{Attempt, ClientEvent, Lsn};
use tokio::time::Instant;

use crate::client::unexpected;
use crate::{Client, ClientError, Watch};

/// The largest batch one `Submit` carries; [`Queue::submit`] splits larger ones.
pub const MAX_SUBMIT_BATCH: usize = 10_000;

/// How often [`Queue::wait_complete`] re-reads the status when events have arrived.
const RECHECK: Duration = Duration::from_millis(500);
/// How often it re-reads the status when no event has arrived (events can be lost with a
/// connection).
const IDLE_RECHECK: Duration = Duration::from_secs(5);

/// A handle on one queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Queue {
    client: Client,
    queue: QueueRef,
    pub(crate) id: Option<u64>,
    token: Option<QueueToken>,
}

impl Queue {
    pub(crate) fn new(
        client: Client,
        queue: QueueRef,
        id: Option<u64>,
        token: Option<QueueToken>,
    ) -> Queue {
        Queue {
            client,
            queue,
            id,
            token,
        }
    }

    /// How requests name the queue.
    pub fn queue_ref(&self) -> QueueRef {
        self.queue
    }

    /// The queue's integer id, once known.
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// The queue's token (the capability for remote access), if this handle has it.
    pub fn token(&self) -> Option<QueueToken> {
        self.token
    }

    /// The client the handle uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Submits actions, in batches of at most [`MAX_SUBMIT_BATCH`]; returns one LSN per
    /// action, in order. Each batch is all or nothing: on an error, the batches before it
    /// were accepted (resubmitting with idempotency keys is safe).
    pub async fn submit(&self, actions: Vec<SubmitAction>) -> Result<Vec<Lsn>, ClientError> {
        let mut lsns = Vec::with_capacity(actions.len());
        let mut actions = actions.into_iter().peekable();
        while actions.peek().is_some() {
            let batch: Vec<SubmitAction> = actions.by_ref().take(MAX_SUBMIT_BATCH).collect();
            let len = batch.len();
            let got = self
                .client
                .call(req::Submit {
                    queue: self.queue,
                    actions: batch,
                })
                .await?;
            if got.len() != len {
                return Err(unexpected(
                    "Submit",
                    &OrchestratorReply::Submitted { lsns: got },
                ));
            }
            lsns.extend(got);
        }
        Ok(lsns)
    }

    /// The queue's counts.
    pub async fn status(&self) -> Result<QueueStatus, ClientError> {
        self.client
            .call(req::QueueStatus { queue: self.queue })
            .await
    }

    /// Finished results not yet retired, in LSN order: those after `after`, at most `limit`
    /// (`None`: the orchestrator's page size).
    pub async fn results(
        &self,
        after: Option<Lsn>,
        limit: Option<u32>,
    ) -> Result<Vec<ActionResult>, ClientError> {
        self.client
            .call(req::ListResults {
                queue: self.queue,
                after,
                limit,
            })
            .await
    }

    /// Every finished result not yet retired, paging through them.
    pub async fn all_results(&self) -> Result<Vec<ActionResult>, ClientError> {
        let mut all: Vec<ActionResult> = Vec::new();
        loop {
            let after = all.last().map(|r| r.record.lsn());
            let page = self.results(after, None).await?;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }

    /// The result of one finished action, if it is finished and not retired.
    pub async fn result(&self, lsn: Lsn) -> Result<Option<ActionResult>, ClientError> {
        let after = lsn.0.checked_sub(1).map(Lsn);
        let page = self.results(after, Some(1)).await?;
        Ok(page.into_iter().find(|r| r.record.lsn() == lsn))
    }

    /// Why one of this queue's actions is (not) running, and the story of its attempts (an
    /// action of another queue is unknown).
    pub async fn explain(&self, lsn: Lsn) -> Result<Explanation, ClientError> {
        self.client
            .call(req::Explain {
                queue: self.queue,
                lsn,
            })
            .await
    }

    /// Forgets finished results; returns how many were retired.
    pub async fn retire(&self, lsns: Vec<Lsn>) -> Result<u64, ClientError> {
        self.client
            .call(req::Retire {
                queue: self.queue,
                lsns,
            })
            .await
    }

    /// Accepts no new actions; the rest finish.
    pub async fn drain(&self) -> Result<(), ClientError> {
        self.client.call(req::Drain { queue: self.queue }).await
    }

    /// Cancels every pending and running action; returns how many.
    pub async fn cancel(&self) -> Result<u64, ClientError> {
        self.client
            .call(req::CancelQueue { queue: self.queue })
            .await
    }

    /// Cancels one action; returns how many were cancelled (0 if it had already ended).
    pub async fn cancel_action(&self, lsn: Lsn) -> Result<u64, ClientError> {
        self.client
            .call(req::CancelAction {
                queue: self.queue,
                lsn,
            })
            .await
    }

    /// Retries a failed or abandoned action now; returns its new attempt.
    pub async fn reschedule(&self, lsn: Lsn) -> Result<Attempt, ClientError> {
        self.client
            .call(req::Reschedule {
                queue: self.queue,
                lsn,
            })
            .await
    }

    /// Changes the priority of a pending action (higher runs first).
    pub async fn set_priority(&self, lsn: Lsn, priority: i32) -> Result<(), ClientError> {
        self.client
            .call(req::SetPriority {
                queue: self.queue,
                lsn,
                priority,
            })
            .await
    }

    /// One action's record.
    pub async fn action(&self, lsn: Lsn) -> Result<ActionView, ClientError> {
        self.client
            .call(req::GetAction {
                queue: self.queue,
                lsn,
            })
            .await
    }

    /// Follows every action of the queue, and its completion.
    pub async fn watch(&self) -> Result<Watch, ClientError> {
        self.client
            .subscribe(SubscriptionTarget::Queue(self.queue))
            .await
    }

    /// Follows one action of the queue.
    pub async fn watch_action(&self, lsn: Lsn) -> Result<Watch, ClientError> {
        self.client.action_watch(self.queue, lsn).await
    }

    /// The queue's status; while the orchestrator cannot be reached (a restart), the `last`
    /// one known, or — with none known — the first one it answers, until `deadline`.
    async fn status_across_restarts(
        &self,
        last: Option<QueueStatus>,
        deadline: Option<Instant>,
    ) -> Result<QueueStatus, ClientError> {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.status().await {
                Ok(status) => return Ok(status),
                Err(error) if error.is_transient() => {
                    tracing::debug!(%error, "queue status not read; the orchestrator may be restarting");
                    if let Some(last) = last {
                        return Ok(last);
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(error);
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Waits until every action of the queue has reached a final state and returns the final
    /// status; `None` waits without limit. Keeps waiting across an orchestrator restart: the
    /// watch resumes, and status reads that fail for a while are tried again. Subscribes first, then reads the status, so no
    /// completion is missed; re-reads it after a `Lagged` event and periodically, so lost
    /// events only delay the answer.
    pub async fn wait_complete(
        &self,
        timeout: Option<Duration>,
    ) -> Result<QueueStatus, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        // Only the completion: a transition would be a wake-up and nothing more.
        let completion = self.client.subscribe_filtered(
            SubscriptionTarget::Queue(self.queue),
            None,
            EventFilter::Completion,
        );
        let mut watch = match completion.await {
            Ok(watch) => Some(watch),
            // A subscription is an optimisation here: polling alone still finishes.
            Err(e @ ClientError::Orchestrator(_)) => return Err(e),
            Err(error) => {
                tracing::debug!(%error, "waiting without a subscription");
                None
            }
        };
        let mut status = self.status_across_restarts(None, deadline).await?;
        let mut dirty = false;
        let mut last_read = Instant::now();
        loop {
            if status.is_complete {
                if let Some(watch) = watch.take() {
                    let _ = watch.close().await;
                }
                return Ok(status);
            }
            let recheck_at = last_read + if dirty { RECHECK } else { IDLE_RECHECK };
            let sleep_until = match deadline {
                Some(d) if d < recheck_at => d,
                _ => recheck_at,
            };
            let event = async {
                match watch.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = event => match event {
                    Some(ClientEvent::QueueComplete { status: done, .. }) => status = done,
                    Some(ClientEvent::Lagged { .. }) => {
                        status = self.status_across_restarts(Some(status), deadline).await?;
                        last_read = Instant::now();
                        dirty = false;
                    }
                    // A watch unpacks batches; count one as progress all the same.
                    Some(ClientEvent::Transition { .. } | ClientEvent::Batch { .. }) => dirty = true,
                    Some(ClientEvent::Ended { reason, .. }) => {
                        watch = None;
                        status = self.status_across_restarts(Some(status), deadline).await?;
                        last_read = Instant::now();
                        if !status.is_complete {
                            return Err(ClientError::SubscriptionEnded(reason));
                        }
                    }
                    None => watch = None,
                },
                _ = tokio::time::sleep_until(sleep_until) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(ClientError::Timeout(timeout.unwrap_or_default()));
                    }
                    status = self.status_across_restarts(Some(status), deadline).await?;
                    last_read = Instant::now();
                    dirty = false;
                }
            }
        }
    }
}
