//! Shared test helpers: proptest strategies for every wire type, and a round-trip check.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use procmesh_protocol::messages::agent::{AgentError, AgentStatus, Capacity, RunningAction};
use procmesh_protocol::messages::host::{
    BulkFailure, BulkOutcome, HostError, HostInfo, HostStatus, ProcConfig, ProcInfo, ProcReady,
    ProcStatus, SpawnSpec, SystemInfo,
};
use procmesh_protocol::messages::orchestrator::{
    ActionResult, ActionView, EventFilter, Heartbeat, HostState, HostView, OrchestratorError,
    ProcCapacity, QueueConfig, QueueRef, QueueStatus, QueueToken, StateCounts, SubmitAction,
    SubscriptionTarget, UpdateOutcome,
};
use procmesh_protocol::messages::ActionSpec;
use procmesh_protocol::spec::{InputFile, OutputFile, ResourceHints, WorkerFile};
use procmesh_protocol::*;

/// Encodes `value` as a frame, decodes it, and checks both the value and the re-encoded bytes
/// (WIRE-1).
pub fn assert_round_trip<T>(value: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let codec = FrameCodec::default();
    let mut bytes = Vec::new();
    codec.encode(value, &mut bytes).unwrap();
    let (decoded, used) = codec.decode::<T>(&bytes).unwrap();
    prop_assert_eq!(used, bytes.len());
    prop_assert_eq!(&decoded, value);
    let mut again = Vec::new();
    codec.encode(&decoded, &mut again).unwrap();
    prop_assert_eq!(again, bytes);
    Ok(())
}

pub fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,12}"
}

pub fn text() -> impl Strategy<Value = String> {
    "\\PC{0,16}"
}

fn map() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(name(), text(), 0..3)
}

/// Socket addresses that render back exactly: no IPv6 flow info or scope id (the text form
/// cannot carry flow info).
pub fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))),
        (any::<u128>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            0,
            0
        ))),
    ]
}

pub fn host_addr() -> impl Strategy<Value = HostAddr> {
    prop_oneof![
        socket_addr().prop_map(HostAddr::Quic),
        "/[a-z.,/_-]{0,20}".prop_map(|p| HostAddr::Unix(p.into())),
        name().prop_map(HostAddr::Local),
    ]
}

pub fn proc_id() -> impl Strategy<Value = ProcId> {
    (host_addr(), name()).prop_map(|(addr, name)| ProcId::new(addr, &name).unwrap())
}

pub fn actor_id() -> impl Strategy<Value = ActorId> {
    (proc_id(), name()).prop_map(|(p, name)| p.actor(&name).unwrap())
}

pub fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

pub fn attempt() -> impl Strategy<Value = Attempt> {
    (1u32..).prop_map(|n| Attempt::new(n).unwrap())
}

pub fn timestamp() -> impl Strategy<Value = Timestamp> {
    any::<u64>().prop_map(Timestamp)
}

pub fn state() -> impl Strategy<Value = ActionState> {
    proptest::sample::select(ActionState::ALL.to_vec())
}

pub fn exit_status() -> impl Strategy<Value = ExitStatus> {
    prop_oneof![
        any::<i32>().prop_map(ExitStatus::Code),
        any::<i32>().prop_map(ExitStatus::Signal),
    ]
}

pub fn attempt_ref() -> impl Strategy<Value = AttemptRef> {
    (lsn(), attempt()).prop_map(|(lsn, attempt)| AttemptRef { lsn, attempt })
}

pub fn blob_hash() -> impl Strategy<Value = BlobHash> {
    any::<[u8; 32]>().prop_map(BlobHash::from_bytes)
}

pub fn worker_id() -> impl Strategy<Value = WorkerId> {
    any::<[u8; 32]>().prop_map(WorkerId::from_bytes)
}

pub fn output_file() -> impl Strategy<Value = OutputFile> {
    (text(), blob_hash(), any::<u64>()).prop_map(|(path, hash, size)| OutputFile {
        path,
        hash,
        size,
    })
}

pub fn input_file() -> impl Strategy<Value = InputFile> {
    (text(), blob_hash(), any::<u64>()).prop_map(|(path, hash, size)| InputFile {
        path,
        hash,
        size,
    })
}

pub fn worker_descriptor() -> impl Strategy<Value = WorkerDescriptor> {
    let file = (text(), blob_hash(), any::<u64>(), any::<bool>()).prop_map(
        |(path, hash, size, executable)| WorkerFile {
            path,
            hash,
            size,
            executable,
        },
    );
    (text(), vec(file, 0..3), vec(text(), 0..2), map()).prop_map(
        |(executable, files, directories, env)| WorkerDescriptor {
            executable,
            files,
            directories,
            env,
            host_program: None,
        },
    )
}

pub fn transition_detail() -> impl Strategy<Value = TransitionDetail> {
    (
        option::of(proc_id()),
        option::of(exit_status()),
        option::of(text()),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        vec(output_file(), 0..2),
        vec(any::<u8>(), 0..8),
        vec(any::<u8>(), 0..8),
    )
        .prop_map(
            |(
                location,
                exit,
                reason,
                cpu_ms,
                peak_memory_bytes,
                outputs,
                stdout_tail,
                stderr_tail,
            )| {
                TransitionDetail {
                    location,
                    exit,
                    reason,
                    cpu_ms,
                    peak_memory_bytes,
                    outputs,
                    stdout_tail,
                    stderr_tail,
                    ran: (cpu_ms.unwrap_or(0) % 3 == 0).then(|| {
                        Box::new(procmesh_protocol::RanProgram {
                            executable: "/sandbox/bin/tool".into(),
                            blake3: procmesh_protocol::BlobHash::of(b"tool"),
                            pid: 42,
                            start_time: 7,
                        })
                    }),
                }
            },
        )
}

pub fn transition() -> impl Strategy<Value = Transition> {
    (lsn(), attempt(), state(), timestamp(), transition_detail()).prop_map(
        |(lsn, attempt, state, at, detail)| {
            Transition::new(lsn, attempt, state, at).with_detail(detail)
        },
    )
}

/// A record driven through random transitions and retries of its own LSN.
pub fn action_record() -> impl Strategy<Value = ActionRecord> {
    (
        lsn(),
        1u64..1_000,
        vec(
            (state(), 1u64..1_000, transition_detail(), any::<bool>()),
            0..6,
        ),
    )
        .prop_map(|(lsn, start, steps)| {
            let mut record = ActionRecord::new(lsn, Timestamp(start));
            for (state, at, detail, retry) in steps {
                if retry {
                    let _ = record.retry(Timestamp(at));
                } else {
                    let t = record
                        .transition_to(state, Timestamp(at))
                        .with_detail(detail);
                    let _ = record.apply(&t);
                }
            }
            record
        })
}

pub fn action_def() -> impl Strategy<Value = ActionDef> {
    let resources = (
        option::of(any::<u32>()),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        map(),
    )
        .prop_map(
            |(cores, memory_bytes, disk_bytes, host_labels)| ResourceHints {
                cores,
                memory_bytes,
                disk_bytes,
                host_labels,
            },
        );
    (
        worker_id(),
        vec(text(), 0..3),
        map(),
        vec(input_file(), 0..3),
        option::of(any::<u64>()),
        resources,
    )
        .prop_map(
            |(worker, args, env, inputs, timeout_ms, resources)| ActionDef {
                worker,
                args,
                env,
                inputs,
                timeout_ms,
                resources,
                traceparent: None,
            },
        )
}

pub fn action_spec() -> impl Strategy<Value = ActionSpec> {
    (lsn(), attempt(), any::<i32>(), action_def()).prop_map(|(lsn, attempt, priority, action)| {
        ActionSpec {
            lsn,
            attempt,
            priority,
            queue: 0,
            action,
        }
    })
}

pub fn spec_error() -> impl Strategy<Value = SpecError> {
    let path_error = proptest::sample::select(vec![
        PathError::Empty,
        PathError::Absolute,
        PathError::ParentDir,
        PathError::NotNormal,
        PathError::Nul,
        PathError::TooLong,
    ]);
    prop_oneof![
        (text(), path_error).prop_map(|(path, reason)| SpecError::Path { path, reason }),
        text().prop_map(SpecError::DuplicatePath),
        text().prop_map(SpecError::MissingExecutable),
        text().prop_map(SpecError::NotExecutable),
        text().prop_map(SpecError::EnvName),
        text().prop_map(SpecError::Nul),
        text().prop_map(SpecError::Reserved),
    ]
}

// ---- host ----

pub fn system_info() -> impl Strategy<Value = SystemInfo> {
    (any::<u32>(), any::<u64>(), text(), text(), text()).prop_map(
        |(cores, memory_bytes, os, hostname, arch)| SystemInfo {
            cores,
            memory_bytes,
            os,
            hostname,
            arch,
        },
    )
}

pub fn host_info() -> impl Strategy<Value = HostInfo> {
    (host_addr(), any::<u32>(), map(), system_info(), text()).prop_map(
        |(addr, capacity, labels, system, version)| HostInfo {
            addr,
            capacity,
            labels,
            system,
            version,
            node: String::new(),
            node_secret: None,
            isolation: None,
        },
    )
}

pub fn host_request() -> impl Strategy<Value = HostRequest> {
    let config = (
        option::of(any::<u32>()),
        map(),
        vec(text(), 0..3),
        option::of(any::<u64>()),
        map(),
    )
        .prop_map(
            |(max_actions, env, args, ready_timeout_ms, labels)| ProcConfig {
                max_actions,
                env,
                args,
                ready_timeout_ms,
                labels,
            },
        );
    prop_oneof![
        (name(), config).prop_map(|(name, config)| HostRequest::Spawn(SpawnSpec { name, config })),
        (name(), any::<u64>(), text()).prop_map(|(name, grace_ms, reason)| {
            HostRequest::Terminate {
                name,
                grace_ms,
                reason,
            }
        }),
        name().prop_map(|name| HostRequest::Kill { name }),
        (any::<u64>(), text(), any::<u32>()).prop_map(|(grace_ms, reason, max_concurrent)| {
            HostRequest::TerminateAll {
                grace_ms,
                reason,
                max_concurrent,
            }
        }),
        Just(HostRequest::ListProcs),
        Just(HostRequest::Status),
    ]
}

pub fn host_error() -> impl Strategy<Value = HostError> {
    prop_oneof![
        (text(), text()).prop_map(|(name, reason)| HostError::BadName { name, reason }),
        text().prop_map(HostError::ReservedName),
        text().prop_map(HostError::NameInUse),
        text().prop_map(HostError::UnknownProc),
        (text(), text()).prop_map(|(path, reason)| HostError::NotAllowed { path, reason }),
        (text(), text()).prop_map(|(name, reason)| HostError::Launch { name, reason }),
        (text(), any::<u64>())
            .prop_map(|(name, timeout_ms)| HostError::ReadyTimeout { name, timeout_ms }),
        (text(), exit_status()).prop_map(|(name, status)| HostError::ExitedEarly { name, status }),
        text().prop_map(HostError::ChannelLost),
        text().prop_map(HostError::MissingAddress),
        text().prop_map(HostError::MissingAgent),
        text().prop_map(HostError::UnexpectedProc),
        Just(HostError::ShuttingDown),
        text().prop_map(HostError::Internal),
    ]
}

fn proc_info() -> impl Strategy<Value = ProcInfo> {
    let status = prop_oneof![
        Just(ProcStatus::Starting),
        Just(ProcStatus::Ready),
        Just(ProcStatus::Terminating),
        exit_status().prop_map(ProcStatus::Exited),
    ];
    (
        proc_id(),
        status,
        option::of(actor_id()),
        option::of(any::<u32>()),
        timestamp(),
        map(),
    )
        .prop_map(
            |(proc_id, status, agent, pid, started_at, labels)| ProcInfo {
                proc_id,
                status,
                agent,
                pid,
                started_at,
                labels,
            },
        )
}

pub fn host_result() -> impl Strategy<Value = Result<HostReply, HostError>> {
    let failure = (name(), host_error()).prop_map(|(name, error)| BulkFailure { name, error });
    let reply = prop_oneof![
        proc_info().prop_map(HostReply::Spawned),
        (name(), exit_status()).prop_map(|(name, status)| HostReply::Terminated { name, status }),
        (any::<u32>(), any::<u32>(), vec(failure, 0..2)).prop_map(|(attempted, ok, failed)| {
            HostReply::TerminatedAll(BulkOutcome {
                attempted,
                ok,
                failed,
            })
        }),
        vec(proc_info(), 0..3).prop_map(HostReply::Procs),
        (
            host_info(),
            any::<u32>(),
            any::<u32>(),
            timestamp(),
            any::<bool>()
        )
            .prop_map(|(info, procs, ready, started_at, shutting_down)| {
                HostReply::Status(Box::new(HostStatus {
                    info,
                    procs,
                    ready,
                    started_at,
                    shutting_down,
                }))
            }),
    ];
    prop_oneof![reply.prop_map(Ok), host_error().prop_map(Err)]
}

pub fn proc_ready() -> impl Strategy<Value = ProcReady> {
    (proc_id(), host_addr(), actor_id(), any::<u32>()).prop_map(|(proc_id, addr, agent, pid)| {
        ProcReady {
            proc_id,
            addr,
            agent,
            pid,
        }
    })
}

// ---- agent ----

pub fn agent_request() -> impl Strategy<Value = AgentRequest> {
    prop_oneof![
        (action_spec(), actor_id())
            .prop_map(|(action, report_to)| AgentRequest::Submit { action, report_to }),
        (lsn(), attempt(), text()).prop_map(|(lsn, attempt, reason)| AgentRequest::Cancel {
            lsn,
            attempt,
            reason
        }),
        Just(AgentRequest::Capacity),
        Just(AgentRequest::Status),
        text().prop_map(|reason| AgentRequest::Stop { reason }),
        (vec(action_spec(), 0..3), actor_id())
            .prop_map(|(actions, report_to)| AgentRequest::SubmitBatch { actions, report_to }),
    ]
}

fn capacity() -> impl Strategy<Value = Capacity> {
    (any::<u32>(), any::<u32>()).prop_map(|(max, free)| Capacity { max, free })
}

pub fn agent_result() -> impl Strategy<Value = Result<AgentReply, AgentError>> {
    let running =
        (attempt_ref(), state(), timestamp()).prop_map(|(action, state, since)| RunningAction {
            action,
            state,
            since,
        });
    let reply = prop_oneof![
        attempt_ref().prop_map(AgentReply::Accepted),
        any::<bool>().prop_map(|found| AgentReply::Cancelling { found }),
        capacity().prop_map(AgentReply::Capacity),
        (proc_id(), capacity(), vec(running, 0..3), any::<bool>()).prop_map(
            |(proc_id, capacity, actions, stopping)| AgentReply::Status(AgentStatus {
                proc_id,
                capacity,
                actions,
                stopping,
            })
        ),
        any::<u32>().prop_map(|running| AgentReply::Stopping { running }),
        vec(
            prop_oneof![
                attempt_ref().prop_map(Ok),
                any::<u32>().prop_map(|max| Err(AgentError::NoCapacity { max })),
            ],
            0..3
        )
        .prop_map(AgentReply::Batch),
    ];
    let error = prop_oneof![
        any::<u32>().prop_map(|max| AgentError::NoCapacity { max }),
        attempt_ref().prop_map(AgentError::Duplicate),
        spec_error().prop_map(AgentError::InvalidAction),
        worker_id().prop_map(AgentError::UnknownWorker),
        Just(AgentError::Stopping),
        text().prop_map(AgentError::Internal),
    ];
    prop_oneof![reply.prop_map(Ok), error.prop_map(Err)]
}

// ---- orchestrator ----

pub fn queue_ref() -> impl Strategy<Value = QueueRef> {
    prop_oneof![
        any::<u64>().prop_map(QueueRef::Id),
        any::<[u8; 12]>().prop_map(|b| QueueRef::Token(QueueToken::from_bytes(b))),
    ]
}

fn proc_capacity() -> impl Strategy<Value = ProcCapacity> {
    (actor_id(), capacity()).prop_map(|(agent, capacity)| ProcCapacity {
        agent,
        capacity,
        restarts: 0,
    })
}

pub fn orchestrator_request() -> impl Strategy<Value = OrchestratorRequest> {
    use OrchestratorRequest as R;
    let submit = (action_def(), option::of(any::<i32>()), option::of(text())).prop_map(
        |(action, priority, idempotency_key)| SubmitAction {
            action,
            priority,
            idempotency_key,
        },
    );
    let target = prop_oneof![
        queue_ref().prop_map(SubscriptionTarget::Queue),
        (queue_ref(), lsn()).prop_map(|(queue, lsn)| SubscriptionTarget::Action { queue, lsn }),
    ];
    prop_oneof![
        host_info().prop_map(R::RegisterHost),
        (
            host_addr(),
            vec(proc_capacity(), 0..3),
            vec(attempt_ref(), 0..3)
        )
            .prop_map(|(addr, procs, running)| R::Heartbeat(Heartbeat {
                addr,
                procs,
                running
            })),
        (proc_id(), option::of(exit_status()), text()).prop_map(|(proc_id, status, reason)| {
            R::ProcLost {
                proc_id,
                status,
                reason,
            }
        }),
        transition().prop_map(R::ActionUpdate),
        vec(transition(), 0..3).prop_map(R::ActionUpdates),
        worker_id().prop_map(R::GetWorker),
        (any::<u32>(), any::<i32>(), text()).prop_map(|(retry_limit, default_priority, name)| {
            R::CreateQueue(QueueConfig {
                retry_limit,
                default_priority,
                name,
            })
        }),
        queue_ref().prop_map(R::QueueStatus),
        (queue_ref(), option::of(lsn()), option::of(any::<u32>())).prop_map(
            |(queue, after, limit)| R::ListResults {
                queue,
                after,
                limit
            }
        ),
        (queue_ref(), vec(lsn(), 0..3)).prop_map(|(queue, lsns)| R::Retire { queue, lsns }),
        queue_ref().prop_map(R::Drain),
        queue_ref().prop_map(R::CancelQueue),
        (queue_ref(), lsn()).prop_map(|(queue, lsn)| R::CancelAction { queue, lsn }),
        (queue_ref(), lsn()).prop_map(|(queue, lsn)| R::Reschedule { queue, lsn }),
        (queue_ref(), lsn(), any::<i32>()).prop_map(|(queue, lsn, priority)| R::SetPriority {
            queue,
            lsn,
            priority
        }),
        (queue_ref(), lsn()).prop_map(|(queue, lsn)| R::GetAction { queue, lsn }),
        worker_descriptor().prop_map(R::RegisterWorker),
        vec(blob_hash(), 0..3).prop_map(R::MissingBlobs),
        (queue_ref(), vec(submit, 0..3)).prop_map(|(queue, actions)| R::Submit { queue, actions }),
        (
            target,
            actor_id(),
            option::of(any::<u64>()),
            prop_oneof![
                Just(EventFilter::All),
                Just(EventFilter::Finals),
                Just(EventFilter::Completion)
            ]
        )
            .prop_map(|(target, subscriber, from, events)| R::Subscribe {
                target,
                subscriber,
                from,
                events,
            }),
        any::<u64>().prop_map(|subscription| R::Unsubscribe { subscription }),
        any::<u64>().prop_map(|subscription| R::CheckSubscription { subscription }),
        Just(R::ListHosts),
    ]
}

pub fn state_counts() -> impl Strategy<Value = StateCounts> {
    any::<[u64; 8]>().prop_map(|c| StateCounts {
        new: c[0],
        pending: c[1],
        submitting: c[2],
        running: c[3],
        completed: c[4],
        failed: c[5],
        abandoned: c[6],
        cancelled: c[7],
    })
}

pub fn queue_status() -> impl Strategy<Value = QueueStatus> {
    (any::<u64>(), text(), state_counts(), any::<[bool; 3]>()).prop_map(
        |(id, name, counts, [draining, cancelled, is_complete])| QueueStatus {
            id,
            name,
            counts,
            draining,
            cancelled,
            is_complete,
        },
    )
}

fn ignored() -> impl Strategy<Value = Ignored> {
    prop_oneof![
        (lsn(), lsn()).prop_map(|(record, got)| Ignored::OtherLsn { record, got }),
        (attempt(), attempt()).prop_map(|(current, got)| Ignored::Stale { current, got }),
        (attempt(), attempt()).prop_map(|(current, got)| Ignored::FutureAttempt { current, got }),
        (state(), state()).prop_map(|(state, got)| Ignored::Finished { state, got }),
        (state(), state()).prop_map(|(state, got)| Ignored::NotForward { state, got }),
    ]
}

pub fn orchestrator_result() -> impl Strategy<Value = Result<OrchestratorReply, OrchestratorError>>
{
    use OrchestratorReply as R;
    let outcome = prop_oneof![
        (state(), state(), timestamp())
            .prop_map(|(from, to, at)| UpdateOutcome::Applied(Applied { from, to, at })),
        ignored().prop_map(UpdateOutcome::Ignored),
    ];
    let result = (
        action_record(),
        vec(output_file(), 0..2),
        vec(any::<u8>(), 0..8),
        vec(any::<u8>(), 0..8),
    )
        .prop_map(|(record, outputs, stdout_tail, stderr_tail)| ActionResult {
            record,
            outputs,
            stdout_tail,
            stderr_tail,
            tickets: Vec::new(),
        });
    let host_view = (
        host_info(),
        any::<bool>(),
        timestamp(),
        vec(proc_capacity(), 0..2),
        any::<u64>(),
        vec(any::<u64>(), 0..2),
    )
        .prop_map(
            |(info, alive, last_heartbeat, procs, running, placed)| HostView {
                info,
                state: if alive {
                    HostState::Alive
                } else {
                    HostState::Lost
                },
                last_heartbeat,
                procs,
                running,
                placed,
            },
        );
    let reply = prop_oneof![
        Just(R::Ack),
        (any::<u64>(), any::<u64>()).prop_map(|(heartbeat_interval_ms, lost_after_ms)| {
            R::HostRegistered {
                heartbeat_interval_ms,
                lost_after_ms,
                ticket_key: None,
            }
        }),
        vec(attempt_ref(), 0..3).prop_map(|orphans| R::HeartbeatAck { orphans }),
        outcome.prop_map(R::Updated),
        worker_descriptor().prop_map(R::Worker),
        (any::<u64>(), any::<[u8; 12]>()).prop_map(|(id, token)| R::QueueCreated {
            id,
            token: QueueToken::from_bytes(token)
        }),
        queue_status().prop_map(R::QueueStatus),
        vec(result, 0..2).prop_map(R::Results),
        any::<u64>().prop_map(|count| R::Retired { count }),
        any::<u64>().prop_map(|count| R::Cancelled { count }),
        attempt().prop_map(|attempt| R::Rescheduled { attempt }),
        (any::<u64>(), any::<i32>(), action_record()).prop_map(|(queue, priority, record)| {
            R::Action(ActionView {
                queue,
                priority,
                record,
            })
        }),
        (worker_id(), vec(blob_hash(), 0..3))
            .prop_map(|(id, missing)| R::WorkerRegistered { id, missing }),
        vec(blob_hash(), 0..3).prop_map(R::MissingBlobs),
        vec(lsn(), 0..4).prop_map(|lsns| R::Submitted { lsns }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(subscription, next)| R::Subscribed { subscription, next }),
        vec(host_view, 0..2).prop_map(R::Hosts),
    ];
    let retry_error = prop_oneof![
        (lsn(), state()).prop_map(|(lsn, state)| RetryError::NotRetryable { lsn, state }),
        lsn().prop_map(|lsn| RetryError::AttemptsExhausted { lsn }),
    ];
    let error = prop_oneof![
        text().prop_map(OrchestratorError::UnknownQueue),
        Just(OrchestratorError::Forbidden),
        any::<u64>().prop_map(OrchestratorError::QueueDraining),
        any::<u64>().prop_map(OrchestratorError::QueueCancelled),
        lsn().prop_map(OrchestratorError::UnknownAction),
        retry_error.prop_map(OrchestratorError::Retry),
        (lsn(), state()).prop_map(|(lsn, state)| OrchestratorError::NotPending { lsn, state }),
        host_addr().prop_map(OrchestratorError::UnknownHost),
        worker_id().prop_map(OrchestratorError::UnknownWorker),
        vec(blob_hash(), 0..3).prop_map(OrchestratorError::MissingBlobs),
        spec_error().prop_map(OrchestratorError::InvalidWorker),
        (any::<u32>(), spec_error())
            .prop_map(|(index, error)| OrchestratorError::InvalidAction { index, error }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(len, max)| OrchestratorError::BatchTooLarge { len, max }),
        any::<u64>().prop_map(OrchestratorError::UnknownSubscription),
        (any::<u64>(), any::<u64>())
            .prop_map(|(len, max)| OrchestratorError::KeyTooLong { len, max }),
        text().prop_map(OrchestratorError::Journal),
        Just(OrchestratorError::ShuttingDown),
        text().prop_map(OrchestratorError::Internal),
    ];
    prop_oneof![reply.prop_map(Ok), error.prop_map(Err)]
}

// ---- client ----

pub fn client_event() -> impl Strategy<Value = ClientEvent> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), transition(), any::<u64>()).prop_map(
            |(subscription, queue, transition, seq)| ClientEvent::Transition {
                subscription,
                queue,
                transition,
                seq,
            }
        ),
        (any::<u64>(), queue_status()).prop_map(|(subscription, status)| {
            ClientEvent::QueueComplete {
                subscription,
                status,
            }
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(subscription, missed)| ClientEvent::Lagged {
            subscription,
            missed
        }),
        (any::<u64>(), text()).prop_map(|(subscription, reason)| ClientEvent::Ended {
            subscription,
            reason
        }),
        (any::<u64>(), any::<u64>(), vec(transition(), 0..3)).prop_map(
            |(subscription, queue, transitions)| ClientEvent::Batch {
                subscription,
                events: transitions
                    .into_iter()
                    .enumerate()
                    .map(|(i, transition)| ClientEvent::Transition {
                        subscription,
                        queue,
                        transition,
                        seq: i as u64 + 1,
                    })
                    .collect(),
            }
        ),
    ]
}

// ---- envelope ----

pub fn envelope() -> impl Strategy<Value = Envelope> {
    let bytes = || vec(any::<u8>(), 0..32);
    let remote_error = prop_oneof![
        text().prop_map(RemoteError::Undeliverable),
        text().prop_map(RemoteError::BadMessage),
        text().prop_map(RemoteError::Handler),
        text().prop_map(RemoteError::ActorStopped),
    ];
    let body = prop_oneof![
        bytes().prop_map(|message| Body::Tell { message }),
        (any::<u64>(), bytes()).prop_map(|(id, message)| Body::Ask { id, message }),
        (any::<u64>(), bytes()).prop_map(|(id, p)| Body::Reply {
            id,
            result: Ok(Payload(p))
        }),
        (any::<u64>(), remote_error).prop_map(|(id, e)| Body::Reply { id, result: Err(e) }),
        (actor_id(), option::of(any::<u64>()), text()).prop_map(|(dest, ask_id, reason)| {
            Body::Undeliverable(Undeliverable {
                dest,
                ask_id,
                reason,
            })
        }),
    ];
    let trace = (text(), text()).prop_map(|(traceparent, tracestate)| TraceContext {
        traceparent,
        tracestate,
    });
    (actor_id(), actor_id(), body, option::of(trace)).prop_map(|(dest, sender, body, trace)| {
        Envelope {
            dest,
            sender,
            body,
            trace,
        }
    })
}
