//! Domain records: what the colony stores and answers with.

use crate::ids::{SpanId, TraceId};
use coral_analysis::StatusPattern;

/// OTLP `SPAN_KIND_SERVER`.
pub const SPAN_KIND_SERVER: i32 = 2;
/// OTLP `SPAN_KIND_CONSUMER`.
pub const SPAN_KIND_CONSUMER: i32 = 5;

/// One span, with the fields Coral queries on pulled out of its attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// Resource attribute `service.name`.
    pub service: String,
    pub name: String,
    /// OTLP SpanKind (0 unspecified .. 5 consumer).
    pub kind: i32,
    pub start_unix_nano: i64,
    /// Never negative.
    pub duration_ns: i64,
    /// OTLP StatusCode: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    /// `http.response.status_code`, or the older `http.status_code`.
    pub http_status: Option<i32>,
    /// `url.path`, or the older `http.target`.
    pub url: Option<String>,
    /// `http.route`.
    pub route: Option<String>,
    /// Resource attribute `process.pid`.
    pub pid: Option<i64>,
    /// Span attribute `thread.id`.
    pub thread_id: Option<i64>,
    /// The node of the agent that received the span.
    pub node: String,
    /// The span's remaining attributes.
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

impl SpanRecord {
    /// A request is where work enters a service: a server or consumer span, or a
    /// trace's root. Trace queries and (later) triggers work on requests.
    pub fn is_request(&self) -> bool {
        self.kind == SPAN_KIND_SERVER
            || self.kind == SPAN_KIND_CONSUMER
            || self.parent_span_id.is_none()
    }

    pub fn end_unix_nano(&self) -> i64 {
        self.start_unix_nano.saturating_add(self.duration_ns)
    }
}

/// A service that has sent spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    pub service_id: uuid::Uuid,
    pub name: String,
    pub first_seen_unix_nano: i64,
    pub last_seen_unix_nano: i64,
}

/// An agent that registered with the colony.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub agent_id: String,
    pub node: String,
    pub version: String,
    pub registered_unix_nano: i64,
    pub last_heartbeat_unix_nano: i64,
    pub counters: serde_json::Value,
}

/// Which requests of a service to list.
#[derive(Debug, Clone)]
pub struct RequestQuery {
    pub service: String,
    /// Only requests that started at or after this time.
    pub since_unix_nano: i64,
    /// Only requests at least this long.
    pub min_duration_ns: Option<i64>,
    /// Only requests whose status matches.
    pub status: Option<StatusPattern>,
    /// At most this many, newest first.
    pub limit: u32,
    /// Only requests with a stored profile (of a trigger, a baseline or a session).
    pub profiled: bool,
}

/// A request as [`crate::Store::query_requests`] lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedRequest {
    pub span: SpanRecord,
    /// What its stored profile was collected for; `None` if it has none.
    pub profile_source: Option<crate::ProfileSource>,
}

/// Latency percentiles a request summary gives, as fractions (nearest rank: the
/// smallest duration at or above that share of the requests, PostgreSQL's
/// `percentile_disc`).
pub const SUMMARY_PERCENTILES: [f64; 3] = [0.50, 0.95, 0.99];

/// A service's requests over a window, counted exactly (not sampled).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSummary {
    pub requests: u64,
    /// Requests whose OTel status is error or whose HTTP status is 5xx.
    pub errors: u64,
    /// One duration per [`SUMMARY_PERCENTILES`]; empty when there is no request.
    pub percentiles_ns: Vec<i64>,
    /// The slowest requests, longest first.
    pub slowest: Vec<SpanRecord>,
    /// Start of the first and of the last request in the window: the time the data
    /// covers, which a rate is computed over (the window may be mostly empty).
    pub first_start_unix_nano: Option<i64>,
    pub last_start_unix_nano: Option<i64>,
}

/// 0-based position of the nearest-rank percentile `q` among `n` sorted values
/// (`n` > 0): both backends select this row, so they agree exactly.
pub fn nearest_rank_offset(q: f64, n: u64) -> u64 {
    ((q * n as f64).ceil() as u64).clamp(1, n) - 1
}

#[cfg(test)]
mod tests {
    use super::nearest_rank_offset;

    #[test]
    fn nearest_rank_offsets() {
        assert_eq!(nearest_rank_offset(0.5, 100), 49);
        assert_eq!(nearest_rank_offset(0.99, 100), 98);
        assert_eq!(nearest_rank_offset(0.95, 30), 28);
        assert_eq!(nearest_rank_offset(0.99, 1), 0);
        assert_eq!(nearest_rank_offset(0.0, 5), 0);
    }
}
