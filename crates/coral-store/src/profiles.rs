//! Profiling records: per-request (trace) profiles and on-demand profiling sessions.

use crate::ids::{SpanId, TraceId};
pub use coral_analysis::join::Precision;
use coral_analysis::profile::Profile;

/// The CPU profile of one request: the samples of one span, joined by thread or
/// process and time.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceProfileRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub service: String,
    pub span_name: String,
    pub start_unix_nano: i64,
    pub duration_ns: i64,
    /// The node of the agent that sampled it.
    pub node: String,
    pub pid: Option<i64>,
    pub thread_id: Option<i64>,
    pub precision: Precision,
    /// The sampling rate (samples of one thread per second of its CPU time).
    pub frequency_hz: u32,
    /// Other requests of the same process that overlapped this one in time (what a
    /// process-precision profile may have mixed in).
    pub concurrent_requests: u32,
    /// What asked for it: `session:<uuid>` for an on-demand profile; later issues add
    /// triggers.
    pub source: String,
    pub profile: Profile,
}

impl TraceProfileRecord {
    pub fn samples(&self) -> u64 {
        self.profile.total_samples()
    }
}

/// An on-demand profile of a service: every agent hosting it samples its processes for
/// `duration_ns` at `frequency_hz` from `created_unix_nano`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileSession {
    pub session_id: uuid::Uuid,
    pub service: String,
    pub frequency_hz: u32,
    pub created_unix_nano: i64,
    pub duration_ns: i64,
}

impl ProfileSession {
    pub fn ends_unix_nano(&self) -> i64 {
        self.created_unix_nano.saturating_add(self.duration_ns)
    }
}

/// One agent's answer to a [`ProfileSession`].
#[derive(Debug, Clone, PartialEq)]
pub struct SessionResult {
    pub session_id: uuid::Uuid,
    pub agent_id: String,
    pub node: String,
    /// Processes of the service the agent sampled; 0 means it does not host it.
    pub processes: u32,
    /// The profile of all those processes over the session.
    pub profile: Profile,
    /// Why the agent could not profile (missing capability, …), if it could not.
    pub error: Option<String>,
}
