//! Profiling records: per-request (trace) profiles and on-demand profiling sessions.

use crate::ids::{SpanId, TraceId};
pub use coral_analysis::join::Precision;
use coral_analysis::profile::Profile;
pub use coral_analysis::profile::ProfileType;

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
    /// Samples whose user stack stops short of the thread's root (the unwinder could
    /// go no further): their stacks miss their outer frames.
    pub truncated_samples: u32,
    /// Samples taken in the request's window that never reached the agent (buffers
    /// full): at least this many are missing from `profile`.
    pub lost_samples: u64,
    /// What asked for it.
    pub source: ProfileSource,
    /// The types the agent collected for it (`cpu`, `offcpu`, `memory`), in
    /// [`ProfileType`]'s order, each once: an `offcpu` profile without off-CPU stacks
    /// had no waits (a `memory` one without memory stacks made nothing resident), one
    /// without the type says nothing about them.
    pub profile_types: Vec<ProfileType>,
    pub profile: Profile,
}

impl TraceProfileRecord {
    /// CPU samples (off-CPU stacks count waits and memory stacks memory records,
    /// which are not samples).
    pub fn samples(&self) -> u64 {
        self.profile.count(ProfileType::Cpu)
    }
}

/// What a request profile was collected for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProfileSource {
    /// An on-demand profiling session (`coral profile cpu`) that the request overlapped.
    Session(uuid::Uuid),
    /// A request that matched this trigger's criteria; counts towards its
    /// `max_requests`.
    Trigger(uuid::Uuid),
    /// A random request of the trigger's service that did not match: the baseline
    /// cohort; counts towards its `baseline_requests`.
    Baseline(uuid::Uuid),
}

impl ProfileSource {
    pub fn id(&self) -> uuid::Uuid {
        match *self {
            Self::Session(id) | Self::Trigger(id) | Self::Baseline(id) => id,
        }
    }
}

/// `session:<uuid>`, `trigger:<uuid>`, `baseline:<uuid>`: the stored and wire form.
impl std::fmt::Display for ProfileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Session(id) => write!(f, "session:{id}"),
            Self::Trigger(id) => write!(f, "trigger:{id}"),
            Self::Baseline(id) => write!(f, "baseline:{id}"),
        }
    }
}

impl std::str::FromStr for ProfileSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid profile source {s:?}: expected session:<uuid>, trigger:<uuid> or baseline:<uuid>"
            )
        };
        let (kind, id) = s.split_once(':').ok_or_else(bad)?;
        let id: uuid::Uuid = id.parse().map_err(|_| bad())?;
        match kind {
            "session" => Ok(Self::Session(id)),
            "trigger" => Ok(Self::Trigger(id)),
            "baseline" => Ok(Self::Baseline(id)),
            _ => Err(bad()),
        }
    }
}

/// What [`crate::Store::insert_trace_profiles`] did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InsertedProfiles {
    /// Profiles stored now (not stored before).
    pub new: u64,
    /// Profiles not kept: their trigger had collected `max_requests` (or its baseline
    /// was full), had ended and was purged, or does not exist.
    pub over_limit: u64,
    /// Triggers these profiles completed (each took its last slot).
    pub completed_triggers: u64,
}

/// What claiming a trigger slot for a new profile decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The profile is kept.
    Kept,
    /// Kept, and it took its trigger's last slot.
    Completed,
    /// Not kept (see [`InsertedProfiles::over_limit`]).
    Refused,
}

/// Where a trace-profile trigger is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerStatus {
    /// Agents sample the service and collect matching requests.
    Active,
    /// `max_requests` requests were collected.
    Completed,
    /// The timeout passed first.
    Expired,
    /// Someone cancelled it.
    Cancelled,
}

impl TriggerStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for TriggerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TriggerStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "active" => Self::Active,
            "completed" => Self::Completed,
            "expired" => Self::Expired,
            "cancelled" => Self::Cancelled,
            _ => return Err(format!("unknown trigger status {s:?}")),
        })
    }
}

/// A trace-profile trigger (RFD 080's `trace_profile_triggers` row): profile the next
/// `max_requests` requests of `service` that match every criterion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceProfileTrigger {
    pub trigger_id: uuid::Uuid,
    /// The service's name (the table keeps its `service_id`).
    pub service: String,
    pub created_unix_nano: i64,
    pub expires_unix_nano: i64,
    /// When it left `active`.
    pub ended_unix_nano: Option<i64>,
    pub status: TriggerStatus,
    pub min_duration_ms: Option<u32>,
    pub max_duration_ms: Option<u32>,
    pub status_code_pattern: Option<String>,
    pub url_pattern: Option<String>,
    pub frequency_hz: u32,
    pub max_requests: u32,
    pub collected_requests: u32,
    /// The traces collected, in collection order.
    pub trace_ids: Vec<TraceId>,
    /// Size of the baseline reservoir asked for.
    pub baseline_requests: u32,
    pub baseline_collected: u32,
    /// The types its agents collect (`cpu`, `offcpu`, `memory`), in [`ProfileType`]'s
    /// order, each once.
    pub profile_types: Vec<ProfileType>,
}

/// A request a trigger collected, as `trigger-status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedRequest {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub span_name: String,
    pub start_unix_nano: i64,
    pub duration_ns: i64,
    /// From the request's span, when the colony has it.
    pub http_status: Option<i32>,
    pub status_code: Option<i32>,
    pub node: String,
    pub samples: u64,
    pub precision: Precision,
    /// The profile's on-CPU time (its CPU stacks' total).
    pub cpu_ns: u64,
    /// The profile's off-CPU (waiting) time (its off-CPU stacks' total).
    pub off_cpu_ns: u64,
    /// The memory it made resident, in bytes (its memory stacks' total).
    pub memory_bytes: u64,
    /// The types collected for it.
    pub profile_types: Vec<ProfileType>,
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
