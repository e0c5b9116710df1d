//! `ProfileService`: on-demand CPU profiles of a service, per-request profiles, and
//! trace-profile triggers (see [`crate::trigger`]).

use crate::convert::{profile_to_wire, trace_profile_to_wire};
use crate::query::{duration_ns, parse_trace_id, require_service};
use crate::trigger::{
    list_limit, new_trigger, resolve_trigger_id, trigger_status, trigger_to_wire,
};
use crate::{now_unix_nano, store_status};
use coral_analysis::profile::Profile;
use coral_client::v1::{self, profile_service_server};
use coral_store::{ProfileSession, SessionResult, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub const DEFAULT_FREQUENCY_HZ: u32 = 99;
/// Above this, sampling itself starts to cost the profiled service noticeably.
pub const MAX_FREQUENCY_HZ: u32 = 1000;
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
const MIN_DURATION: Duration = Duration::from_secs(1);
const MAX_DURATION: Duration = Duration::from_secs(600);
/// How long after a session ends the colony waits for agents to report.
const REPORT_GRACE: Duration = Duration::from_secs(5);
/// Agents whose last heartbeat is older than this are not waited for.
const LIVE_AGENT_WINDOW: Duration = Duration::from_secs(30);
/// Fewer samples than this and a profile says little.
pub const WEAK_EVIDENCE_SAMPLES: u64 = 10;

pub struct ProfileService {
    store: Arc<dyn Store>,
}

impl ProfileService {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// A trigger on the wire with the requests it collected.
    async fn with_collected(
        &self,
        trigger: coral_store::TraceProfileTrigger,
    ) -> Result<Response<v1::TraceProfileTrigger>, Status> {
        let collected = self
            .store
            .trigger_requests(trigger.trigger_id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(trigger_to_wire(&trigger, &collected)))
    }

    /// Waits until every live agent has answered the session, or the grace has run out.
    async fn collect_results(
        &self,
        session: &ProfileSession,
    ) -> Result<Vec<SessionResult>, Status> {
        let deadline = tokio::time::Instant::now() + REPORT_GRACE;
        loop {
            let results = self
                .store
                .session_results(session.session_id)
                .await
                .map_err(store_status)?;
            let live_since = now_unix_nano() - LIVE_AGENT_WINDOW.as_nanos() as i64;
            let agents = self.store.list_agents().await.map_err(store_status)?;
            let all_answered = agents
                .iter()
                .filter(|a| a.last_heartbeat_unix_nano >= live_since)
                .all(|a| results.iter().any(|r| r.agent_id == a.agent_id));
            if all_answered || tokio::time::Instant::now() >= deadline {
                return Ok(results);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tonic::async_trait]
impl profile_service_server::ProfileService for ProfileService {
    async fn profile_cpu(
        &self,
        request: Request<v1::ProfileCpuRequest>,
    ) -> Result<Response<v1::ProfileCpuResponse>, Status> {
        let req = request.into_inner();
        require_service(self.store.as_ref(), &req.service).await?;
        let frequency_hz = match req.frequency_hz {
            0 => DEFAULT_FREQUENCY_HZ,
            f if f > MAX_FREQUENCY_HZ => {
                return Err(Status::invalid_argument(format!(
                    "frequency {f} Hz is too high: at most {MAX_FREQUENCY_HZ} Hz (99 is the usual)"
                )));
            }
            f => f,
        };
        let duration = match &req.duration {
            Some(d) => Duration::from_nanos(duration_ns(d, "duration")? as u64),
            None => DEFAULT_DURATION,
        };
        if !(MIN_DURATION..=MAX_DURATION).contains(&duration) {
            return Err(Status::invalid_argument(format!(
                "duration must be between {}s and {}s",
                MIN_DURATION.as_secs(),
                MAX_DURATION.as_secs()
            )));
        }
        let session = ProfileSession {
            session_id: uuid::Uuid::new_v4(),
            service: req.service,
            frequency_hz,
            created_unix_nano: now_unix_nano(),
            duration_ns: duration.as_nanos() as i64,
        };
        self.store
            .create_profile_session(&session)
            .await
            .map_err(store_status)?;
        tokio::time::sleep(duration).await;
        let results = self.collect_results(&session).await?;

        let mut merged = Profile::new();
        let mut agents = Vec::new();
        let mut warnings = Vec::new();
        for r in &results {
            if r.processes > 0 {
                merged.merge(&r.profile);
            }
            if let Some(error) = &r.error {
                warnings.push(format!("agent on {}: {error}", r.node));
            }
            if r.processes > 0 || r.error.is_some() {
                agents.push(v1::AgentProfileResult {
                    node: r.node.clone(),
                    processes: r.processes,
                    samples: r.profile.total_samples(),
                    error: r.error.clone().unwrap_or_default(),
                });
            }
        }
        if !results.iter().any(|r| r.processes > 0) && warnings.is_empty() {
            warnings.push(format!(
                "no agent hosts a process of {}: agents find a service's processes from the \
                 process.pid resource attribute of its spans",
                session.service
            ));
        } else if merged.total_samples() < WEAK_EVIDENCE_SAMPLES {
            warnings.push(format!(
                "only {} samples: the service used little CPU; profile longer or at a higher frequency",
                merged.total_samples()
            ));
        }
        Ok(Response::new(v1::ProfileCpuResponse {
            session_id: session.session_id.to_string(),
            profile: Some(profile_to_wire(&merged)),
            agents,
            warnings,
            frequency_hz,
            duration_ns: session.duration_ns,
        }))
    }

    async fn get_trace_profile(
        &self,
        request: Request<v1::GetTraceProfileRequest>,
    ) -> Result<Response<v1::GetTraceProfileResponse>, Status> {
        let req = request.into_inner();
        let trace_id = parse_trace_id(&req.trace_id)?;
        let profiles = self
            .store
            .trace_profiles(&trace_id)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => Status::not_found(format!(
                    "no profile of trace {trace_id}: requests are profiled only while a profile \
                 or trigger of their service is running (coral profile cpu --service S)"
                )),
                e => store_status(e),
            })?;
        let mut selected: Vec<_> = profiles
            .iter()
            .filter(|p| req.service.is_empty() || p.service == req.service)
            .map(trace_profile_to_wire)
            .collect();
        let truncated = bound_trace_profiles(&mut selected);
        if selected.is_empty() {
            let mut services: Vec<_> = profiles.iter().map(|p| p.service.as_str()).collect();
            services.dedup();
            return Err(Status::not_found(format!(
                "trace {trace_id} has no profile of service {:?}; it has profiles of: {}",
                req.service,
                services.join(", ")
            )));
        }
        Ok(Response::new(v1::GetTraceProfileResponse {
            profiles: selected,
            truncated,
        }))
    }

    async fn start_trace_profile_trigger(
        &self,
        request: Request<v1::StartTraceProfileTriggerRequest>,
    ) -> Result<Response<v1::StartTraceProfileTriggerResponse>, Status> {
        let req = request.into_inner();
        let trigger = new_trigger(&req, now_unix_nano())?;
        require_service(self.store.as_ref(), &trigger.service).await?;
        let active = self
            .store
            .active_triggers(trigger.created_unix_nano)
            .await
            .map_err(store_status)?;
        crate::trigger::check_active_trigger_count(&trigger.service, &active)?;
        self.store
            .create_trigger(&trigger)
            .await
            .map_err(store_status)?;
        tracing::info!(
            trigger = %trigger.trigger_id,
            service = %trigger.service,
            max_requests = trigger.max_requests,
            frequency_hz = trigger.frequency_hz,
            "trace-profile trigger started"
        );
        crate::metrics::with_current(|m| {
            m.add_trigger_event(crate::metrics::TriggerEvent::Started, 1)
        });
        Ok(Response::new(v1::StartTraceProfileTriggerResponse {
            trigger_id: trigger.trigger_id.to_string(),
            status: trigger.status.to_string(),
            trigger: Some(trigger_to_wire(&trigger, &[])),
        }))
    }

    async fn get_trace_profile_trigger(
        &self,
        request: Request<v1::GetTraceProfileTriggerRequest>,
    ) -> Result<Response<v1::TraceProfileTrigger>, Status> {
        let id = resolve_trigger_id(self.store.as_ref(), &request.into_inner().trigger_id).await?;
        let trigger = self.store.trigger(id).await.map_err(trigger_status)?;
        self.with_collected(trigger).await
    }

    async fn list_trace_profile_triggers(
        &self,
        request: Request<v1::ListTraceProfileTriggersRequest>,
    ) -> Result<Response<v1::ListTraceProfileTriggersResponse>, Status> {
        let req = request.into_inner();
        let service = Some(req.service.trim()).filter(|s| !s.is_empty());
        if let Some(service) = service {
            require_service(self.store.as_ref(), service).await?;
        }
        let triggers = self
            .store
            .list_triggers(service, req.all, list_limit(req.limit))
            .await
            .map_err(store_status)?;
        Ok(Response::new(v1::ListTraceProfileTriggersResponse {
            triggers: triggers.iter().map(|t| trigger_to_wire(t, &[])).collect(),
        }))
    }

    async fn cancel_trace_profile_trigger(
        &self,
        request: Request<v1::CancelTraceProfileTriggerRequest>,
    ) -> Result<Response<v1::TraceProfileTrigger>, Status> {
        let id = resolve_trigger_id(self.store.as_ref(), &request.into_inner().trigger_id).await?;
        let now = now_unix_nano();
        let trigger = self
            .store
            .cancel_trigger(id, now)
            .await
            .map_err(trigger_status)?;
        // Ended by this call, not before (PostgreSQL keeps microseconds).
        if trigger.status == coral_store::TriggerStatus::Cancelled
            && trigger.ended_unix_nano >= Some(now / 1000 * 1000)
        {
            crate::metrics::with_current(|m| {
                m.add_trigger_event(crate::metrics::TriggerEvent::Cancelled, 1)
            });
        }
        tracing::info!(trigger = %id, status = %trigger.status, "trace-profile trigger cancel asked");
        self.with_collected(trigger).await
    }

    async fn compare_trace_profiles(
        &self,
        request: Request<v1::CompareTraceProfilesRequest>,
    ) -> Result<Response<v1::CompareTraceProfilesResponse>, Status> {
        crate::compare::compare_trace_profiles(self.store.as_ref(), request.into_inner())
            .await
            .map(Response::new)
    }
}

/// Keeps the first profiles that fit one answer (by count and encoded size; the first
/// always, so that a single huge profile is still served); true if any were left out.
fn bound_trace_profiles(profiles: &mut Vec<v1::TraceProfile>) -> bool {
    use coral_client::limits::{MAX_PROFILES_PER_TRACE_RESPONSE, MAX_TRACE_PROFILE_RESPONSE_BYTES};
    use prost::Message;
    let mut bytes = 0;
    let fits = profiles
        .iter()
        .take(MAX_PROFILES_PER_TRACE_RESPONSE)
        .take_while(|p| {
            bytes += p.encoded_len();
            bytes <= MAX_TRACE_PROFILE_RESPONSE_BYTES
        })
        .count()
        .max(1);
    let truncated = profiles.len() > fits;
    profiles.truncate(fits);
    truncated
}

#[cfg(test)]
mod bound_tests {
    use super::*;
    use coral_client::limits::{MAX_PROFILES_PER_TRACE_RESPONSE, MAX_TRACE_PROFILE_RESPONSE_BYTES};

    fn named(n: usize, name_bytes: usize) -> Vec<v1::TraceProfile> {
        (0..n)
            .map(|i| v1::TraceProfile {
                span_id: (i as u64).to_be_bytes().to_vec(),
                span_name: "x".repeat(name_bytes),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn answers_are_bounded_by_count_and_size() {
        let mut few = named(3, 10);
        assert!(!bound_trace_profiles(&mut few));
        assert_eq!(few.len(), 3);

        let mut many = named(MAX_PROFILES_PER_TRACE_RESPONSE + 5, 10);
        assert!(bound_trace_profiles(&mut many));
        assert_eq!(many.len(), MAX_PROFILES_PER_TRACE_RESPONSE);
        assert_eq!(many[0].span_id, 0u64.to_be_bytes(), "the earliest kept");

        let mut big = named(10, MAX_TRACE_PROFILE_RESPONSE_BYTES / 4);
        assert!(bound_trace_profiles(&mut big));
        assert_eq!(big.len(), 3);

        let mut huge = named(2, MAX_TRACE_PROFILE_RESPONSE_BYTES + 1);
        assert!(bound_trace_profiles(&mut huge));
        assert_eq!(huge.len(), 1, "one profile is always served");
    }
}
