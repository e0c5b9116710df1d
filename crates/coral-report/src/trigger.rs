//! Trace-profile triggers and the requests they collected.

use crate::{non_empty, rfc3339, span_status};
use coral_client::v1;
use serde::Serialize;

/// A request a trigger collected.
#[derive(Serialize, Debug, Clone)]
pub struct CollectedView {
    pub trace_id: String,
    pub span_id: String,
    pub span_name: String,
    pub start: String,
    pub start_unix_nano: i64,
    pub duration_ns: i64,
    pub http_status: Option<i32>,
    /// The span status: `unset`, `ok` or `error`.
    pub status: &'static str,
    pub node: Option<String>,
    /// CPU samples.
    pub samples: u64,
    /// `thread` or `process`.
    pub precision: String,
    /// On-CPU time (sampled).
    pub cpu_ns: u64,
    /// Time the request's thread waited (off the CPU); null when not recorded.
    pub off_cpu_ns: Option<u64>,
    /// Memory the request made resident (sampled); null when not recorded.
    pub memory_bytes: Option<u64>,
}

/// A trigger, with the requests it collected (empty in lists).
#[derive(Serialize, Debug, Clone)]
pub struct TriggerView {
    pub trigger_id: String,
    pub service: String,
    /// `active`, `completed`, `expired` or `cancelled`.
    pub status: String,
    /// The criteria in the cohort filter language (what `profile-compare` takes, and
    /// `not (…)` of it the baseline); null for a stored trigger whose criteria no
    /// longer parse.
    pub criteria: Option<String>,
    pub min_duration_ms: Option<i32>,
    pub max_duration_ms: Option<i32>,
    pub status_code_pattern: Option<String>,
    pub url_pattern: Option<String>,
    pub frequency_hz: u32,
    pub max_requests: u32,
    pub collected_requests: u32,
    pub baseline_requests: u32,
    pub baseline_collected: u32,
    /// What it collects: `cpu`, `offcpu`, `memory`.
    pub profile_types: Vec<String>,
    pub created: String,
    pub created_unix_nano: i64,
    pub expires: String,
    pub expires_unix_nano: i64,
    pub ended: Option<String>,
    pub ended_unix_nano: Option<i64>,
    pub collected: Vec<CollectedView>,
}

impl From<&v1::TraceProfileTrigger> for TriggerView {
    fn from(t: &v1::TraceProfileTrigger) -> Self {
        let ended = (t.ended_unix_nano > 0).then_some(t.ended_unix_nano);
        Self {
            trigger_id: t.trigger_id.clone(),
            service: t.service.clone(),
            status: t.status.clone(),
            criteria: coral_client::trigger::cohort_filter(t),
            min_duration_ms: (t.min_duration_ms > 0).then_some(t.min_duration_ms),
            max_duration_ms: (t.max_duration_ms > 0).then_some(t.max_duration_ms),
            status_code_pattern: non_empty(&t.status_code_pattern),
            url_pattern: non_empty(&t.url_pattern),
            frequency_hz: t.frequency_hz,
            max_requests: t.max_requests,
            collected_requests: t.collected_requests,
            baseline_requests: t.baseline_requests,
            baseline_collected: t.baseline_collected,
            profile_types: if t.profile_types.is_empty() {
                vec!["cpu".to_string()]
            } else {
                t.profile_types.clone()
            },
            created: rfc3339(t.created_unix_nano),
            created_unix_nano: t.created_unix_nano,
            expires: rfc3339(t.expires_unix_nano),
            expires_unix_nano: t.expires_unix_nano,
            ended: ended.map(rfc3339),
            ended_unix_nano: ended,
            collected: t
                .collected
                .iter()
                .map(|c| CollectedView {
                    trace_id: c.trace_id.clone(),
                    span_id: c.span_id.clone(),
                    span_name: c.span_name.clone(),
                    start: rfc3339(c.start_time_unix_nano),
                    start_unix_nano: c.start_time_unix_nano,
                    duration_ns: c.duration_ns,
                    http_status: c.http_status,
                    status: span_status(c.status_code),
                    node: non_empty(&c.node),
                    samples: c.samples,
                    precision: c.precision.clone(),
                    cpu_ns: c.cpu_ns,
                    off_cpu_ns: c.off_cpu_collected.then_some(c.off_cpu_ns),
                    memory_bytes: c.memory_collected.then_some(c.memory_bytes),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_criteria_are_a_cohort_filter_and_times_come_twice() {
        let t = v1::TraceProfileTrigger {
            min_duration_ms: 1000,
            status_code_pattern: "4xx,503".into(),
            created_unix_nano: 1_700_000_000_000_000_000,
            ..Default::default()
        };
        let json = serde_json::to_value(TriggerView::from(&t)).unwrap();
        let criteria = json["criteria"].as_str().unwrap();
        coral_analysis::filter::parse(criteria).unwrap();
        assert!(criteria.starts_with("duration >= 1s"), "{criteria}");
        assert_eq!(json["created"], "2023-11-14T22:13:20.000Z");
        assert_eq!(json["created_unix_nano"], 1_700_000_000_000_000_000i64);
        assert_eq!(json["ended"], serde_json::Value::Null);
        assert_eq!(json["ended_unix_nano"], serde_json::Value::Null);
        assert_eq!(json["url_pattern"], serde_json::Value::Null);
        assert_eq!(json["max_duration_ms"], serde_json::Value::Null);
    }
}
