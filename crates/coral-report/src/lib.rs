//! Coral's answers as programs read them: serde views built from the wire types
//! (`coral_client::v1`), shared by `coral … --format json` and the structured content
//! of the MCP tools, so that both speak one vocabulary.
//!
//! The vocabulary:
//! - ids in lowercase hex (`trace_id`, `span_id`), trigger and session ids as UUIDs;
//! - quantities carry their unit in the name: `duration_ns`, `cpu_ns`, `frequency_hz`,
//!   `mean_ms`, `since_ns`; a value that depends on the profile type (CPU, off-CPU or
//!   wall-clock time, or memory made resident) sits beside a `profile_type` field that
//!   says which, and is named by its unit: `total_ns`, `mean_ms` for the times,
//!   `total_bytes`, `mean_bytes` for `memory` (whose views also say `"unit": "bytes"`);
//! - a point in time is two fields: `<name>` (RFC 3339, UTC, milliseconds, e.g.
//!   `2023-11-14T22:13:20.123Z`) and `<name>_unix_nano`;
//! - an absent value is `null`, never an empty string and never a missing key;
//! - where a profile was collected (`source`) is `{"kind": "session" | "trigger" |
//!   "baseline", "id": UUID}`.
//!
//! The text renderings (tables, summaries) stay with each front end; this crate only
//! decides what the facts are called.

mod profile;
mod timestamp;
mod trigger;

pub use profile::{
    AgentProfileView, BreakdownView, HotspotValuesView, HotspotView, MemoryView, MergedProfileView,
    ProfileCpuView, RequestProfileView, RequestProfileWithStacks, SourceView, TotalView,
    TraceProfileView, WaitsView,
};
pub use timestamp::rfc3339;
pub use trigger::{CollectedView, TriggerView};

use coral_analysis::profile::ProfileType;
use coral_client::v1;
use serde::Serialize;

/// OTLP span kinds by their number.
const KINDS: [&str; 6] = [
    "unspecified",
    "internal",
    "server",
    "client",
    "producer",
    "consumer",
];

/// OTLP span status codes by their number.
const STATUSES: [&str; 3] = ["unset", "ok", "error"];

/// The word for an OTLP enum value: `words[code]`, or `words[0]` (its unspecified
/// value) for a code out of range.
fn word(words: &[&'static str], code: i32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|i| words.get(i))
        .copied()
        .unwrap_or(words[0])
}

/// An OTLP status code as a word: `unset`, `ok` or `error`.
pub fn span_status(code: i32) -> &'static str {
    word(&STATUSES, code)
}

/// A request's status as the CLI's tables and the MCP tools' text show it: `503`,
/// `error`, `503 error`, or `-`; `span_status` as [`span_status`] names it.
pub fn request_status(http_status: Option<i32>, span_status: &str) -> String {
    match (http_status, span_status == "error") {
        (Some(code), true) => format!("{code} error"),
        (Some(code), false) => code.to_string(),
        (None, true) => "error".into(),
        (None, false) => "-".into(),
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// A JSON object sent as text (attributes, counters); `{}` when it does not parse.
fn json_object(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::json!({}))
}

/// A service that has sent spans.
#[derive(Serialize, Debug, Clone)]
pub struct ServiceView {
    pub name: String,
    pub first_seen: String,
    pub first_seen_unix_nano: i64,
    pub last_seen: String,
    pub last_seen_unix_nano: i64,
}

impl From<&v1::ServiceInfo> for ServiceView {
    fn from(s: &v1::ServiceInfo) -> Self {
        Self {
            name: s.name.clone(),
            first_seen: rfc3339(s.first_seen_unix_nano),
            first_seen_unix_nano: s.first_seen_unix_nano,
            last_seen: rfc3339(s.last_seen_unix_nano),
            last_seen_unix_nano: s.last_seen_unix_nano,
        }
    }
}

/// One span (a request, or a span of a trace).
#[derive(Serialize, Debug, Clone)]
pub struct SpanView {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub service: String,
    pub name: String,
    /// `internal`, `server`, `client`, `producer`, `consumer` or `unspecified`.
    pub kind: &'static str,
    pub start: String,
    pub start_unix_nano: i64,
    pub duration_ns: i64,
    /// The span status: `unset`, `ok` or `error`.
    pub status: &'static str,
    pub status_message: Option<String>,
    pub http_status: Option<i32>,
    pub url: Option<String>,
    pub route: Option<String>,
    pub pid: Option<i64>,
    pub thread_id: Option<i64>,
    pub node: Option<String>,
    /// The remaining attributes, as one object.
    pub attributes: serde_json::Value,
}

impl From<&v1::Span> for SpanView {
    fn from(s: &v1::Span) -> Self {
        Self {
            trace_id: hex::encode(&s.trace_id),
            span_id: hex::encode(&s.span_id),
            parent_span_id: (!s.parent_span_id.is_empty()).then(|| hex::encode(&s.parent_span_id)),
            service: s.service.clone(),
            name: s.name.clone(),
            kind: word(&KINDS, s.kind),
            start: rfc3339(s.start_time_unix_nano),
            start_unix_nano: s.start_time_unix_nano,
            duration_ns: s.duration_ns,
            status: span_status(s.status_code),
            status_message: non_empty(&s.status_message),
            http_status: s.http_status,
            url: s.url.clone(),
            route: s.route.clone(),
            pid: s.pid,
            thread_id: s.thread_id,
            node: non_empty(&s.node),
            attributes: json_object(&s.attributes_json),
        }
    }
}

/// A node agent that registered.
#[derive(Serialize, Debug, Clone)]
pub struct AgentView {
    pub agent_id: String,
    pub node: String,
    pub version: String,
    pub registered: String,
    pub registered_unix_nano: i64,
    pub last_heartbeat: String,
    pub last_heartbeat_unix_nano: i64,
    /// The agent's counters (`spans_received`, `spans_dropped`, …).
    pub counters: serde_json::Value,
}

impl From<&v1::AgentInfo> for AgentView {
    fn from(a: &v1::AgentInfo) -> Self {
        Self {
            agent_id: a.agent_id.clone(),
            node: a.node.clone(),
            version: a.version.clone(),
            registered: rfc3339(a.registered_unix_nano),
            registered_unix_nano: a.registered_unix_nano,
            last_heartbeat: rfc3339(a.last_heartbeat_unix_nano),
            last_heartbeat_unix_nano: a.last_heartbeat_unix_nano,
            counters: json_object(&a.counters_json),
        }
    }
}

/// One cohort of a comparison.
#[derive(Serialize, Debug, Clone)]
pub struct CohortView {
    /// The cohort's filter, as the user wrote it.
    pub filter: String,
    /// Profiled requests that match the filter.
    pub requests: u32,
    /// Those with some value of the compared type: the units of the significance tests.
    pub requests_with_samples: u32,
    /// CPU samples, waits, or memory records.
    pub samples: i32,
    /// Mean value of the compared type per request (all requests of the cohort):
    /// `mean_ms`, or `mean_bytes` for memory.
    #[serde(flatten)]
    pub mean: CohortMeanView,
}

/// A cohort's mean per request, named by the unit of the compared type.
#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
#[serde(untagged)]
pub enum CohortMeanView {
    Time { mean_ms: f64 },
    Bytes { mean_bytes: f64 },
}

impl CohortMeanView {
    /// From the wire's value (`*_cpu_ms`, which holds bytes for `memory`).
    fn new(value: f64, ty: ProfileType) -> Self {
        if ty.is_bytes() {
            CohortMeanView::Bytes { mean_bytes: value }
        } else {
            CohortMeanView::Time { mean_ms: value }
        }
    }
}

/// A function's mean per request in each cohort, inclusive then self, named by the
/// unit of the compared type.
#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
#[serde(untagged)]
pub enum PerRequestView {
    Time {
        a_ms_per_request: f64,
        b_ms_per_request: f64,
        a_self_ms_per_request: f64,
        b_self_ms_per_request: f64,
    },
    Bytes {
        a_bytes_per_request: f64,
        b_bytes_per_request: f64,
        a_self_bytes_per_request: f64,
        b_self_bytes_per_request: f64,
    },
}

impl PerRequestView {
    /// From the wire's values (`*_cpu_ms*`, which hold bytes for `memory`).
    fn new(h: &v1::DifferentialHotspot, ty: ProfileType) -> Self {
        let (a, b, a_self, b_self) = (
            h.cohort_a_cpu_ms_per_request,
            h.cohort_b_cpu_ms_per_request,
            h.cohort_a_self_cpu_ms,
            h.cohort_b_self_cpu_ms,
        );
        if ty.is_bytes() {
            PerRequestView::Bytes {
                a_bytes_per_request: a,
                b_bytes_per_request: b,
                a_self_bytes_per_request: a_self,
                b_self_bytes_per_request: b_self,
            }
        } else {
            PerRequestView::Time {
                a_ms_per_request: a,
                b_ms_per_request: b,
                a_self_ms_per_request: a_self,
                b_self_ms_per_request: b_self,
            }
        }
    }
}

/// One function compared between the cohorts.
#[derive(Serialize, Debug, Clone)]
pub struct FunctionDiffView {
    pub function: String,
    pub module: String,
    /// Percentage points of the requests' value of the compared type in the function
    /// (inclusive), + hotter in A.
    pub delta_pp: f32,
    pub self_delta_pp: f32,
    /// Mean value per request in the function (inclusive), then self:
    /// `a_ms_per_request`, … for times, `a_bytes_per_request`, … for memory.
    #[serde(flatten)]
    pub per_request: PerRequestView,
    pub p_value: f64,
    pub q_value: f64,
    pub effect_size: f64,
    /// `high`, `medium`, `low` or `none`.
    pub significance: String,
    /// `"a"` or `"b"` when the function appears in one cohort only.
    pub only_in: Option<String>,
}

/// A cohort comparison.
#[derive(Serialize, Debug, Clone)]
pub struct ComparisonView {
    pub service: String,
    /// Requests that started this far back.
    pub since_ns: i64,
    /// What the values measure: `cpu`, `offcpu`, `wall` or `memory`.
    pub profile_type: String,
    /// The same in words: "CPU time", "off-CPU time", "wall-clock time", "memory made
    /// resident".
    pub measure: String,
    /// The unit of the per-request values: `ms`, or `bytes` for `memory`.
    pub unit: &'static str,
    pub cohort_a: CohortView,
    pub cohort_b: CohortView,
    pub functions: Vec<FunctionDiffView>,
    pub verdict: Option<String>,
    pub warnings: Vec<String>,
}

impl ComparisonView {
    pub fn new(
        service: &str,
        since_ns: i64,
        cohort_a: &str,
        cohort_b: &str,
        r: &v1::CompareTraceProfilesResponse,
    ) -> Self {
        let profile_type: ProfileType = r.profile_type.parse().unwrap_or(ProfileType::Cpu);
        Self {
            service: service.to_string(),
            since_ns,
            profile_type: profile_type.to_string(),
            measure: profile_type.measure().to_string(),
            unit: if profile_type.is_bytes() {
                "bytes"
            } else {
                "ms"
            },
            cohort_a: CohortView {
                filter: cohort_a.to_string(),
                requests: r.cohort_a_requests,
                requests_with_samples: r.cohort_a_requests_with_samples,
                samples: r.cohort_a_sample_count,
                mean: CohortMeanView::new(r.cohort_a_mean_cpu_ms, profile_type),
            },
            cohort_b: CohortView {
                filter: cohort_b.to_string(),
                requests: r.cohort_b_requests,
                requests_with_samples: r.cohort_b_requests_with_samples,
                samples: r.cohort_b_sample_count,
                mean: CohortMeanView::new(r.cohort_b_mean_cpu_ms, profile_type),
            },
            functions: r
                .hotspots
                .iter()
                .map(|h| FunctionDiffView {
                    function: h.function.clone(),
                    module: h.module.clone(),
                    delta_pp: h.delta_percentage,
                    self_delta_pp: h.self_delta_percentage,
                    per_request: PerRequestView::new(h, profile_type),
                    p_value: h.p_value,
                    q_value: h.q_value,
                    effect_size: h.effect_size,
                    significance: h.significance.clone(),
                    only_in: non_empty(&h.only_in),
                })
                .collect(),
            verdict: non_empty(&r.verdict),
            warnings: r.warnings.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_values_are_null_not_empty_or_missing() {
        let span = SpanView::from(&v1::Span {
            trace_id: vec![0xab; 16],
            span_id: vec![1; 8],
            ..Default::default()
        });
        let json = serde_json::to_value(&span).unwrap();
        for key in [
            "parent_span_id",
            "status_message",
            "http_status",
            "url",
            "route",
            "pid",
            "thread_id",
            "node",
        ] {
            assert_eq!(json[key], serde_json::Value::Null, "{key}: {json}");
        }
        assert_eq!(json["start"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["start_unix_nano"], 0);
        let comparison = ComparisonView::new(
            "s",
            3_600_000_000_000,
            "a",
            "b",
            &v1::CompareTraceProfilesResponse {
                hotspots: vec![v1::DifferentialHotspot::default()],
                ..Default::default()
            },
        );
        let json = serde_json::to_value(&comparison).unwrap();
        assert_eq!(json["verdict"], serde_json::Value::Null);
        assert_eq!(json["functions"][0]["only_in"], serde_json::Value::Null);
        assert_eq!(json["cohort_a"]["requests_with_samples"], 0);
    }

    #[test]
    fn a_memory_comparison_names_its_values_in_bytes() {
        let r = v1::CompareTraceProfilesResponse {
            profile_type: "memory".into(),
            cohort_a_mean_cpu_ms: 314_572_800.0,
            hotspots: vec![v1::DifferentialHotspot {
                function: "grab_block".into(),
                cohort_a_cpu_ms_per_request: 314_572_800.0,
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = serde_json::to_value(ComparisonView::new("s", 0, "a", "b", &r)).unwrap();
        assert_eq!(json["unit"], "bytes");
        assert_eq!(json["measure"], "memory made resident");
        assert_eq!(json["cohort_a"]["mean_bytes"], 314_572_800.0);
        assert_eq!(json["functions"][0]["a_bytes_per_request"], 314_572_800.0);
        let text = json.to_string();
        assert!(!text.contains("_ms"), "{text}");

        // A time comparison keeps its names, and has no unit key.
        let cpu = ComparisonView::new(
            "s",
            0,
            "a",
            "b",
            &v1::CompareTraceProfilesResponse {
                hotspots: vec![v1::DifferentialHotspot::default()],
                ..Default::default()
            },
        );
        let json = serde_json::to_value(cpu).unwrap();
        assert_eq!(json["unit"], "ms", "{json}");
        assert_eq!(json["cohort_a"]["mean_ms"], 0.0);
        assert_eq!(json["functions"][0]["b_self_ms_per_request"], 0.0);
    }

    #[test]
    fn a_request_status_reads_the_same_everywhere() {
        assert_eq!(request_status(Some(503), "error"), "503 error");
        assert_eq!(request_status(Some(200), "unset"), "200");
        assert_eq!(request_status(None, "error"), "error");
        assert_eq!(request_status(None, "ok"), "-");
    }
}
