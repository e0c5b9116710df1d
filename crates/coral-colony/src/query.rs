//! `QueryService`: what people and assistants ask.

use crate::convert::{span_to_wire, trace_profile_to_wire};
use crate::{now_unix_nano, store_status};
use coral_analysis::StatusPattern;
use coral_client::v1::{self, query_service_server};
use coral_store::{RequestQuery, Store, StoreError, TraceId};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Used when a query gives no `since`.
const DEFAULT_SINCE: Duration = Duration::from_secs(3600);
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 1000;
const DEFAULT_SLOWEST: u32 = 3;
const MAX_SLOWEST: u32 = 20;
/// Services a summary of every service covers at most (by name).
const MAX_SUMMARY_SERVICES: usize = 50;

pub struct QueryService {
    store: Arc<dyn Store>,
}

impl QueryService {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

/// `NotFound` that names the services that do exist, so the caller can fix a typo.
pub(crate) async fn require_service(store: &dyn Store, name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("service must be set"));
    }
    match store.service(name).await {
        Ok(_) => Ok(()),
        Err(StoreError::NotFound(_)) => {
            let known = store.list_services().await.map_err(store_status)?;
            let names: Vec<_> = known.iter().map(|s| s.name.as_str()).collect();
            Err(Status::not_found(if names.is_empty() {
                format!("unknown service {name:?}: no service has sent spans yet")
            } else {
                format!(
                    "unknown service {name:?}; known services: {}",
                    names.join(", ")
                )
            }))
        }
        Err(e) => Err(store_status(e)),
    }
}

/// A protobuf Duration as nanoseconds; `field` names it in the error.
pub(crate) fn duration_ns(d: &prost_types::Duration, field: &str) -> Result<i64, Status> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(Status::invalid_argument(format!(
            "{field} must not be negative"
        )));
    }
    d.seconds
        .checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(i64::from(d.nanos)))
        .ok_or_else(|| Status::invalid_argument(format!("{field} is too large")))
}

pub(crate) fn parse_trace_id(s: &str) -> Result<TraceId, Status> {
    s.parse()
        .map_err(|e: coral_store::IdError| Status::invalid_argument(e.to_string()))
}

impl QueryService {
    async fn service_summary(
        &self,
        service: String,
        since_unix_nano: i64,
        slowest: u32,
    ) -> Result<v1::ServiceSummary, Status> {
        let s = self
            .store
            .request_summary(&service, since_unix_nano, slowest)
            .await
            .map_err(store_status)?;
        let requests_per_second = rate_per_second(&s);
        let mut out = Vec::with_capacity(s.slowest.len());
        for span in s.slowest {
            // A missing profile is the common case (only triggers and sessions
            // profile requests), not an error.
            let profile = match self.store.trace_profiles(&span.trace_id).await {
                Ok(profiles) => profiles
                    .iter()
                    .find(|p| p.span_id == span.span_id)
                    .map(trace_profile_to_wire),
                Err(StoreError::NotFound(_)) => None,
                Err(e) => return Err(store_status(e)),
            };
            out.push(v1::SlowRequest {
                span: Some(span_to_wire(span)),
                profile,
            });
        }
        let p = |i: usize| s.percentiles_ns.get(i).copied().unwrap_or(0);
        Ok(v1::ServiceSummary {
            service,
            requests: s.requests,
            errors: s.errors,
            requests_per_second,
            error_rate: if s.requests == 0 {
                0.0
            } else {
                s.errors as f64 / s.requests as f64
            },
            p50_ns: p(0),
            p95_ns: p(1),
            p99_ns: p(2),
            slowest: out,
            first_start_unix_nano: s.first_start_unix_nano.unwrap_or(0),
            last_start_unix_nano: s.last_start_unix_nano.unwrap_or(0),
        })
    }
}

/// Requests per second over the time the data covers: (n - 1) arrivals between the
/// first request and the last. Dividing by the whole window instead would give a
/// rate that depends on the window asked for (6 minutes of traffic over `45d`: 0/s).
fn rate_per_second(s: &coral_store::RequestSummary) -> f64 {
    match (s.first_start_unix_nano, s.last_start_unix_nano) {
        (Some(first), Some(last)) if last > first && s.requests > 1 => {
            (s.requests - 1) as f64 / ((last - first) as f64 / 1e9)
        }
        _ => 0.0,
    }
}

#[tonic::async_trait]
impl query_service_server::QueryService for QueryService {
    async fn get_service_summary(
        &self,
        request: Request<v1::GetServiceSummaryRequest>,
    ) -> Result<Response<v1::GetServiceSummaryResponse>, Status> {
        let req = request.into_inner();
        let since_ns = match &req.since {
            Some(d) => duration_ns(d, "since")?,
            None => DEFAULT_SINCE.as_nanos() as i64,
        };
        if since_ns == 0 {
            return Err(Status::invalid_argument("since must be longer than 0"));
        }
        let slowest = match req.slowest {
            None => DEFAULT_SLOWEST,
            Some(n) if n > MAX_SLOWEST => {
                return Err(Status::invalid_argument(format!(
                    "slowest {n} is too large: at most {MAX_SLOWEST}"
                )));
            }
            Some(n) => n,
        };
        let service = req.service.trim();
        let (names, truncated) = if service.is_empty() {
            let all = self.store.list_services().await.map_err(store_status)?;
            let truncated = all.len() > MAX_SUMMARY_SERVICES;
            let names = all.into_iter().take(MAX_SUMMARY_SERVICES).map(|s| s.name);
            (names.collect(), truncated)
        } else {
            require_service(self.store.as_ref(), service).await?;
            (vec![service.to_string()], false)
        };
        let since_unix_nano = now_unix_nano().saturating_sub(since_ns);
        let mut services = Vec::with_capacity(names.len());
        for name in names {
            services.push(self.service_summary(name, since_unix_nano, slowest).await?);
        }
        Ok(Response::new(v1::GetServiceSummaryResponse {
            services,
            since_unix_nano,
            truncated,
        }))
    }

    async fn list_services(
        &self,
        _request: Request<v1::ListServicesRequest>,
    ) -> Result<Response<v1::ListServicesResponse>, Status> {
        let services = self.store.list_services().await.map_err(store_status)?;
        Ok(Response::new(v1::ListServicesResponse {
            services: services
                .into_iter()
                .map(|s| v1::ServiceInfo {
                    name: s.name,
                    first_seen_unix_nano: s.first_seen_unix_nano,
                    last_seen_unix_nano: s.last_seen_unix_nano,
                })
                .collect(),
        }))
    }

    async fn query_traces(
        &self,
        request: Request<v1::QueryTracesRequest>,
    ) -> Result<Response<v1::QueryTracesResponse>, Status> {
        let req = request.into_inner();
        require_service(self.store.as_ref(), &req.service).await?;
        let since_ns = match &req.since {
            Some(d) => duration_ns(d, "since")?,
            None => DEFAULT_SINCE.as_nanos() as i64,
        };
        let min_duration_ns = req
            .min_duration
            .as_ref()
            .map(|d| duration_ns(d, "min_duration"))
            .transpose()?;
        let status = match req.status_code_pattern.trim() {
            "" => None,
            p => {
                Some(StatusPattern::parse(p).map_err(|e| Status::invalid_argument(e.to_string()))?)
            }
        };
        let limit = match req.limit {
            0 => DEFAULT_LIMIT,
            n if n > MAX_LIMIT => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} is too large: at most {MAX_LIMIT}"
                )));
            }
            n => n,
        };
        let query = RequestQuery {
            service: req.service,
            since_unix_nano: now_unix_nano().saturating_sub(since_ns),
            min_duration_ns,
            status,
            limit,
            profiled: req.profiled,
        };
        let requests = self
            .store
            .query_requests(&query)
            .await
            .map_err(store_status)?;
        let (spans, profile_sources) = requests
            .into_iter()
            .map(|r| {
                let source = r.profile_source.map(|s| s.to_string()).unwrap_or_default();
                (span_to_wire(r.span), source)
            })
            .unzip();
        Ok(Response::new(v1::QueryTracesResponse {
            spans,
            profile_sources,
        }))
    }

    async fn get_trace(
        &self,
        request: Request<v1::GetTraceRequest>,
    ) -> Result<Response<v1::GetTraceResponse>, Status> {
        let req = request.into_inner();
        let trace_id = parse_trace_id(&req.trace_id)?;
        let spans = self.store.get_trace(&trace_id).await.map_err(|e| match e {
            StoreError::NotFound(_) => Status::not_found(format!(
                "trace {trace_id} not found: no span of it has arrived \
                 (spans reach the colony a few seconds after the request ends)"
            )),
            e => store_status(e),
        })?;
        let truncated = spans.len() > coral_store::MAX_TRACE_SPANS;
        Ok(Response::new(v1::GetTraceResponse {
            spans: spans
                .into_iter()
                .take(coral_store::MAX_TRACE_SPANS)
                .map(span_to_wire)
                .collect(),
            truncated,
        }))
    }

    async fn list_agents(
        &self,
        _request: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        let agents = self.store.list_agents().await.map_err(store_status)?;
        Ok(Response::new(v1::ListAgentsResponse {
            agents: agents
                .into_iter()
                .map(|a| v1::AgentInfo {
                    agent_id: a.agent_id,
                    node: a.node,
                    version: a.version,
                    registered_unix_nano: a.registered_unix_nano,
                    last_heartbeat_unix_nano: a.last_heartbeat_unix_nano,
                    counters_json: a.counters.to_string(),
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod rate_tests {
    use super::rate_per_second;

    fn summary(
        requests: u64,
        first: Option<i64>,
        last: Option<i64>,
    ) -> coral_store::RequestSummary {
        coral_store::RequestSummary {
            requests,
            errors: 0,
            percentiles_ns: vec![],
            slowest: vec![],
            first_start_unix_nano: first,
            last_start_unix_nano: last,
        }
    }

    #[test]
    fn the_rate_is_over_the_time_the_requests_cover_not_the_window() {
        // 13 requests a second for 6.5 minutes: whatever window was asked for.
        let n = 13 * 390 + 1;
        let s = summary(
            n,
            Some(1_000_000_000),
            Some(1_000_000_000 + 390_000_000_000),
        );
        assert!(
            (rate_per_second(&s) - 13.0).abs() < 1e-9,
            "{}",
            rate_per_second(&s)
        );
        assert_eq!(rate_per_second(&summary(1, Some(5), Some(5))), 0.0);
        assert_eq!(rate_per_second(&summary(0, None, None)), 0.0);
    }
}
