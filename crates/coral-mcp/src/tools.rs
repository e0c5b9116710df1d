//! One parameter struct per tool. Their doc comments become the JSON schema the model
//! reads; names, defaults and required fields follow RFD 080.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn default_since() -> String {
    "1h".to_string()
}

fn default_count() -> u32 {
    10
}

fn default_limit() -> u32 {
    20
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(inline)]
pub enum ProfileType {
    #[default]
    Cpu,
    Offcpu,
    Wall,
    Memory,
}

/// A profile type a trigger collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(inline)]
pub enum CollectedType {
    Cpu,
    Offcpu,
    Memory,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceProfileParams {
    /// The trace id: 32 hex digits, as coral_query_summary or coral_query_traces show it.
    pub trace_id: String,
    /// Which profile: "cpu" (where the request's thread ran on the CPU; collected for
    /// requests that ran while a trigger or profile of their service was active),
    /// "offcpu" (where it waited, by stack and cause: lock, disk, network, sleep,
    /// runqueue; recorded by triggers for thread-precision requests), "wall" (both on
    /// one time scale: where its wall-clock time went) or "memory" (the memory the
    /// request made resident, in bytes, by the stack that faulted; recorded by triggers
    /// collecting memory).
    #[serde(default)]
    pub profile_type: ProfileType,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceTriggerParams {
    /// The service, as coral_list_services names it.
    pub service: String,
    /// Profile requests that last at least this many milliseconds (0: any duration, then
    /// another criterion is needed: status_code or url).
    pub min_duration_ms: u32,
    /// How many matching requests to collect (1 to 1000).
    #[serde(default = "default_count")]
    #[schemars(range(min = 1, max = 1000))]
    pub count: u32,
    /// Only these HTTP statuses: "500", "5xx", "4xx,503", or "error" (span status ERROR).
    pub status_code: Option<String>,
    /// Only requests whose URL path (or route) matches this glob, e.g. "/checkout*".
    pub url: Option<String>,
    /// Samples per second (1 to 1000; default 99).
    #[schemars(range(min = 1, max = 1000))]
    pub frequency_hz: Option<u32>,
    /// Stop collecting after this long, e.g. "5m" (default 5m, at most 24h).
    pub timeout: Option<String>,
    /// What to record: "cpu" (always), "offcpu" (where each request's thread waited)
    /// and "memory" (the memory each request made resident, by stack). Default cpu and
    /// offcpu.
    #[serde(default)]
    pub profile_types: Vec<CollectedType>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompareParams {
    /// The service, as coral_list_services names it.
    pub service: String,
    /// Cohort A, usually the slow requests, e.g. "duration > 1s" or "status = 5xx".
    pub cohort_a_filter: String,
    /// Cohort B, usually the fast ones, e.g. "duration < 100ms".
    pub cohort_b_filter: String,
    /// Requests that started this far back, e.g. "15m", "1h", "2d" (at most 30d).
    #[serde(default = "default_since")]
    pub since: String,
    /// What to compare: "cpu" (CPU time, the default), "offcpu" (time waiting, by where
    /// and why), "wall" (both: use it when the slow requests mostly waited) or "memory"
    /// (memory made resident, in bytes: which code made the requests' memory grow).
    #[serde(default)]
    pub profile_type: ProfileType,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SummaryParams {
    /// One service, as coral_list_services names it; leave out for every service.
    pub service: Option<String>,
    /// How far back to look, e.g. "15m", "1h".
    #[serde(default = "default_since")]
    pub since: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracesParams {
    /// The service, as coral_list_services names it.
    pub service: String,
    /// How far back to look, e.g. "15m", "1h", "2d".
    #[serde(default = "default_since")]
    pub since: String,
    /// Only requests at least this many milliseconds long.
    pub min_duration_ms: Option<u32>,
    /// Only these HTTP statuses: "500", "5xx", "4xx,503", or "error".
    pub status_code: Option<String>,
    /// At most this many requests, newest first (1 to 100).
    #[serde(default = "default_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub limit: u32,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerIdParams {
    /// The trigger id (a UUID) that coral_profile_trace_trigger returned, or a unique
    /// prefix of it (at least 4 hex digits).
    pub trigger_id: String,
}
