//! `AgentService`: what agents send (registration, heartbeats, spans).

use crate::convert::span_from_wire;
use crate::{now_unix_nano, store_status};
use coral_client::v1::{self, agent_service_server::AgentService};
use coral_store::{AgentRecord, Store};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct IngestService {
    store: Arc<dyn Store>,
}

impl IngestService {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

fn require_agent_id(agent_id: &str) -> Result<(), Status> {
    if agent_id.is_empty() {
        return Err(Status::invalid_argument("agent_id must be set"));
    }
    Ok(())
}

#[tonic::async_trait]
impl AgentService for IngestService {
    async fn register_agent(
        &self,
        request: Request<v1::RegisterAgentRequest>,
    ) -> Result<Response<v1::RegisterAgentResponse>, Status> {
        let req = request.into_inner();
        require_agent_id(&req.agent_id)?;
        let now = now_unix_nano();
        let agent = AgentRecord {
            agent_id: req.agent_id,
            node: req.node,
            version: req.version,
            registered_unix_nano: now,
            last_heartbeat_unix_nano: now,
            counters: serde_json::json!({}),
        };
        self.store
            .register_agent(&agent)
            .await
            .map_err(store_status)?;
        tracing::info!(agent = %agent.agent_id, node = %agent.node, "agent registered");
        Ok(Response::new(v1::RegisterAgentResponse {}))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        require_agent_id(&req.agent_id)?;
        let c = req.counters.unwrap_or_default();
        let counters = serde_json::json!({
            "spans_received": c.spans_received,
            "spans_forwarded": c.spans_forwarded,
            "spans_dropped": c.spans_dropped,
            "spans_rejected": c.spans_rejected,
            "spans_buffered": c.spans_buffered,
        });
        self.store
            .heartbeat(&req.agent_id, now_unix_nano(), &counters)
            .await
            .map_err(store_status)?;
        Ok(Response::new(v1::HeartbeatResponse {}))
    }

    async fn ingest_spans(
        &self,
        request: Request<v1::IngestSpansRequest>,
    ) -> Result<Response<v1::IngestSpansResponse>, Status> {
        let req = request.into_inner();
        let mut records = Vec::with_capacity(req.spans.len());
        let mut rejected = 0u64;
        let mut error_message = String::new();
        for (i, span) in req.spans.into_iter().enumerate() {
            match span_from_wire(span) {
                Ok(record) => records.push(record),
                Err(reason) => {
                    if rejected == 0 {
                        error_message = format!("span {i}: {reason}");
                    }
                    rejected += 1;
                }
            }
        }
        if rejected > 0 {
            tracing::warn!(agent = %req.agent_id, rejected, first = %error_message, "rejected invalid spans");
        }
        self.store
            .insert_spans(&records)
            .await
            .map_err(store_status)?;
        Ok(Response::new(v1::IngestSpansResponse {
            accepted: records.len() as u64,
            rejected,
            error_message,
        }))
    }
}
