//! [`CoreConfig`]: the settings that change what the core decides. They are part of the
//! journal: a restart with other values journals a [`Input::Configure`](crate::Input) first, so
//! that a replay decides what the original run decided (ORC-26).

use serde::{Deserialize, Serialize};

/// The settings the core decides by (a subset of the orchestrator's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreConfig {
    /// How often hosts heartbeat, in milliseconds (told to each host when it registers).
    pub heartbeat_interval_ms: u64,
    /// A host silent for longer than this is lost.
    pub lost_after_ms: u64,
    /// Most actions one `Submit` may carry.
    pub max_submit_batch: u32,
    /// Most actions one dispatch pass places.
    pub dispatch_batch: u32,
    /// Most results one `ListResults` returns.
    pub result_page: u32,
    /// Transitions kept per queue for subscribers that resume (ORC-32).
    #[serde(default = "CoreConfig::default_event_backlog")]
    pub event_backlog: u32,
}

impl CoreConfig {
    /// The default of [`event_backlog`](Self::event_backlog): 16,384 transitions per queue.
    pub const DEFAULT_EVENT_BACKLOG: u32 = 16_384;

    fn default_event_backlog() -> u32 {
        Self::DEFAULT_EVENT_BACKLOG
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            heartbeat_interval_ms: 1_000,
            lost_after_ms: 5_000,
            max_submit_batch: 10_000,
            dispatch_batch: 1_024,
            result_page: 1_000,
            event_backlog: Self::DEFAULT_EVENT_BACKLOG,
        }
    }
}
