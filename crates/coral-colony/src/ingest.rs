//! `AgentService`: what agents send (registration, heartbeats, spans).

use crate::convert::{
    check_profile_size, profile_from_wire, span_from_wire, trace_profile_from_wire,
};
use crate::trigger::trigger_command;
use crate::{now_unix_nano, store_status};
use coral_client::limits;
use coral_client::v1::{self, agent_service_server::AgentService};
use coral_store::{AgentRecord, SessionResult, Store};
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// How often a command stream looks for new work in the store. The store, not this
/// process, holds the work, so a command created on another colony replica reaches
/// agents connected here too.
const COMMAND_POLL_INTERVAL: Duration = Duration::from_millis(250);

type CommandStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::AgentCommand, Status>> + Send>>;

pub struct IngestService {
    store: Arc<dyn Store>,
    /// Turns true when the colony begins to stop.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl IngestService {
    pub fn new(store: Arc<dyn Store>, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { store, stopping }
    }
}

fn require_agent_id(agent_id: &str) -> Result<(), Status> {
    if agent_id.is_empty() {
        return Err(Status::invalid_argument("agent_id must be set"));
    }
    Ok(())
}

/// Sends each active session once, as it appears, and the set of active triggers
/// first and whenever it changes, until the agent goes away or the colony stops (the
/// agent then reconnects, to this colony or another replica).
async fn push_commands(
    store: Arc<dyn Store>,
    agent_id: String,
    tx: tokio::sync::mpsc::Sender<Result<v1::AgentCommand, Status>>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut sent = HashSet::new();
    let mut triggers_sent: Option<Vec<uuid::Uuid>> = None;
    loop {
        match store.active_triggers(now_unix_nano()).await {
            Ok(triggers) => {
                let ids: Vec<uuid::Uuid> = triggers.iter().map(|t| t.trigger_id).collect();
                if triggers_sent.as_ref() != Some(&ids) {
                    let command = v1::AgentCommand {
                        command: Some(v1::agent_command::Command::ActiveTriggers(
                            v1::ActiveTriggers {
                                triggers: triggers.iter().map(trigger_command).collect(),
                            },
                        )),
                    };
                    if tx.send(Ok(command)).await.is_err() {
                        return;
                    }
                    triggers_sent = Some(ids);
                }
            }
            Err(e) => tracing::warn!(agent = %agent_id, error = %e, "cannot read triggers"),
        }
        match store.active_profile_sessions(now_unix_nano()).await {
            Ok(sessions) => {
                for session in sessions {
                    if !sent.insert(session.session_id) {
                        continue;
                    }
                    let command = v1::AgentCommand {
                        command: Some(v1::agent_command::Command::ProfileSession(
                            v1::ProfileSessionCommand {
                                session_id: session.session_id.to_string(),
                                service: session.service,
                                frequency_hz: session.frequency_hz,
                                start_time_unix_nano: session.created_unix_nano,
                                duration_ns: session.duration_ns,
                            },
                        )),
                    };
                    if tx.send(Ok(command)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(agent = %agent_id, error = %e, "cannot read profiling sessions")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(COMMAND_POLL_INTERVAL) => {}
            () = tx.closed() => return,
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

#[tonic::async_trait]
impl AgentService for IngestService {
    type WatchCommandsStream = CommandStream;

    async fn watch_commands(
        &self,
        request: Request<v1::WatchCommandsRequest>,
    ) -> Result<Response<Self::WatchCommandsStream>, Status> {
        let agent_id = request.into_inner().agent_id;
        require_agent_id(&agent_id)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(push_commands(
            self.store.clone(),
            agent_id,
            tx,
            self.stopping.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_session(
        &self,
        request: Request<v1::ReportSessionRequest>,
    ) -> Result<Response<v1::ReportSessionResponse>, Status> {
        let req = request.into_inner();
        require_agent_id(&req.agent_id)?;
        let session_id = req
            .session_id
            .parse()
            .map_err(|_| Status::invalid_argument("session_id must be a UUID"))?;
        let mut profile = req.profile.unwrap_or_default();
        check_profile_size(&mut profile).map_err(Status::invalid_argument)?;
        let profile = profile_from_wire(profile).map_err(Status::invalid_argument)?;
        let result = SessionResult {
            session_id,
            agent_id: req.agent_id,
            node: req.node,
            processes: req.processes,
            profile,
            error: (!req.error.is_empty()).then_some(req.error),
        };
        self.store
            .put_session_result(&result)
            .await
            .map_err(store_status)?;
        Ok(Response::new(v1::ReportSessionResponse {}))
    }

    async fn ingest_trace_profiles(
        &self,
        request: Request<v1::IngestTraceProfilesRequest>,
    ) -> Result<Response<v1::IngestTraceProfilesResponse>, Status> {
        let req = request.into_inner();
        let max = limits::MAX_PROFILES_PER_INGEST;
        if req.profiles.len() > max {
            let n = req.profiles.len();
            crate::metrics::with_current(|m| m.add_profiles(0, 0, 0, n as u64));
            return Err(Status::invalid_argument(format!(
                "the request has {n} profiles; the limit is {max}: send smaller batches"
            )));
        }
        let mut records = Vec::with_capacity(req.profiles.len());
        let mut rejected = 0u64;
        let mut error_message = String::new();
        for (i, profile) in req.profiles.into_iter().enumerate() {
            match trace_profile_from_wire(profile) {
                Ok(record) => records.push(record),
                Err(reason) => {
                    if rejected == 0 {
                        error_message = format!("profile {i}: {reason}");
                    }
                    rejected += 1;
                }
            }
        }
        let inserted = self
            .store
            .insert_trace_profiles(&records)
            .await
            .map_err(store_status)?;
        let stored = inserted.new + inserted.over_limit;
        crate::metrics::with_current(|m| {
            m.add_profiles(
                inserted.new,
                inserted.over_limit,
                (records.len() as u64).saturating_sub(stored),
                rejected,
            );
            m.add_trigger_event(
                crate::metrics::TriggerEvent::Completed,
                inserted.completed_triggers,
            );
        });
        if inserted.over_limit > 0 {
            tracing::debug!(
                agent = %req.agent_id,
                over_limit = inserted.over_limit,
                "request profiles beyond their trigger's count not kept"
            );
        }
        Ok(Response::new(v1::IngestTraceProfilesResponse {
            accepted: records.len() as u64 - inserted.over_limit,
            rejected,
            error_message,
            over_limit: inserted.over_limit,
        }))
    }

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
        let max = limits::MAX_SPANS_PER_INGEST;
        if req.spans.len() > max {
            let n = req.spans.len();
            crate::metrics::with_current(|m| m.add_spans(0, 0, n as u64));
            return Err(Status::invalid_argument(format!(
                "the request has {n} spans; the limit is {max}: send smaller batches \
                 (agents: --batch-size)"
            )));
        }
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
        let new = self
            .store
            .insert_spans(&records)
            .await
            .map_err(store_status)?;
        let accepted = records.len() as u64;
        crate::metrics::with_current(|m| m.add_spans(new, accepted.saturating_sub(new), rejected));
        Ok(Response::new(v1::IngestSpansResponse {
            accepted: records.len() as u64,
            rejected,
            error_message,
        }))
    }
}
