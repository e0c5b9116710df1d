//! `QueryService`: what people and assistants ask.

use crate::convert::span_to_wire;
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

#[tonic::async_trait]
impl query_service_server::QueryService for QueryService {
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
        };
        let spans = self
            .store
            .query_requests(&query)
            .await
            .map_err(store_status)?;
        Ok(Response::new(v1::QueryTracesResponse {
            spans: spans.into_iter().map(span_to_wire).collect(),
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
        Ok(Response::new(v1::GetTraceResponse {
            spans: spans.into_iter().map(span_to_wire).collect(),
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
