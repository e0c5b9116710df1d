//! The tools: each calls the colony, then writes a compact text answer and the same
//! facts as JSON.

use crate::instructions::INSTRUCTIONS;
use crate::text::{ms, q_value, request_line};
use crate::tools::*;
use coral_analysis::profile::{self as model, write_text_summary};
use coral_analysis::{format_duration_ns, parse_duration};
use coral_client::Channel;
use coral_client::profile::{has_type, missing_type_reason, no_off_cpu_reason};
use coral_client::v1;
use coral_report::{ComparisonView, RequestProfileView, ServiceView, SpanView, TriggerView};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde_json::{Value, json};
use std::time::Duration;

/// How long `coral_profile_trace_trigger` waits for its requests before answering
/// with the trigger id (an assistant's call should not hang for the trigger's timeout).
const TRIGGER_WAIT: Duration = Duration::from_secs(60);
/// Slowest requests (with their profiles) a summary of one service shows.
const EXEMPLARS: u32 = 3;
const TOP: usize = 5;

/// The MCP server. Cheap to clone: one per HTTP session shares the colony channel.
#[derive(Clone)]
pub struct CoralMcp {
    colony: String,
    channel: Channel,
    trigger_wait: Duration,
    tool_router: ToolRouter<Self>,
}

impl std::fmt::Debug for CoralMcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoralMcp")
            .field("colony", &self.colony)
            .finish_non_exhaustive()
    }
}

/// A tool's answer: text for the model, JSON for programs.
struct Answer {
    text: String,
    data: Value,
}

/// A call the colony could not serve, with how to fix it.
type Outcome = Result<Answer, String>;

fn respond(outcome: Outcome) -> CallToolResult {
    match outcome {
        Ok(Answer { text, data }) => {
            let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
            result.structured_content = Some(data);
            result
        }
        Err(message) => CallToolResult::error(vec![ContentBlock::text(message)]),
    }
}

fn since(value: &str, field: &str) -> Result<prost_types::Duration, String> {
    let d = parse_duration(value).map_err(|e| {
        format!("{field} {value:?} is not a duration ({e}): write e.g. \"15m\", \"1h\" or \"2d\"")
    })?;
    Ok(prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

impl CoralMcp {
    /// A server for the colony at `colony` (connected on first use, so the server starts
    /// even while the colony is down, and tool errors say so).
    pub fn new(colony: &str) -> Result<Self, coral_client::ConnectError> {
        Self::with_security(colony, &coral_client::Security::default())
    }

    /// [`CoralMcp::new`] with TLS settings (`https://` addresses) and a colony token.
    pub fn with_security(
        colony: &str,
        security: &coral_client::Security,
    ) -> Result<Self, coral_client::ConnectError> {
        Ok(Self {
            colony: coral_client::normalize_addr(colony),
            channel: coral_client::connect_lazy_with(colony, security)?,
            trigger_wait: TRIGGER_WAIT,
            tool_router: Self::tool_router(),
        })
    }

    /// Caps how long `coral_profile_trace_trigger` waits before answering (default 60 s).
    pub fn with_trigger_wait(mut self, wait: Duration) -> Self {
        self.trigger_wait = wait;
        self
    }

    fn query(&self) -> coral_client::QueryServiceClient<Channel> {
        coral_client::query_client(self.channel.clone())
    }

    fn profile(&self) -> coral_client::ProfileServiceClient<Channel> {
        coral_client::profile_client(self.channel.clone())
    }

    /// The colony's refusal, with what the model should do next: the hint of `fix` for
    /// that kind of refusal (a hint about the service only when the service was not
    /// found). Hints name tools, never commands the assistant cannot run.
    fn refused(&self, status: tonic::Status, fix: Fix) -> String {
        use tonic::Code;
        if coral_client::is_database_unavailable(&status) {
            return format!(
                "the Coral colony cannot reach its database right now: {}. Try the same call \
                 again in a little while.",
                status.message()
            );
        }
        match status.code() {
            Code::Unavailable | Code::Unknown | Code::DeadlineExceeded => format!(
                "cannot reach the Coral colony at {}: {}. The colony may be down, or this MCP \
                 server is configured with the wrong colony address: tell the user.",
                self.colony,
                status.message()
            ),
            Code::NotFound => with_hint(status.message(), fix.not_found),
            Code::InvalidArgument => with_hint(status.message(), fix.invalid),
            Code::FailedPrecondition | Code::ResourceExhausted => status.message().to_string(),
            _ => format!("the colony failed: {}", status.message()),
        }
    }
}

fn with_hint(message: &str, hint: &str) -> String {
    if hint.is_empty() {
        message.to_string()
    } else {
        format!("{message}. {hint}")
    }
}

/// What the model can do when the colony refuses a call: when what it named was not
/// found, and when an argument was refused (the colony's message says which).
#[derive(Clone, Copy, Default)]
struct Fix {
    not_found: &'static str,
    invalid: &'static str,
}

const FIX_SERVICE: Fix = Fix {
    not_found: "Call coral_list_services for the service names.",
    invalid: "",
};
const FIX_TRIGGER: Fix = Fix {
    not_found: "Pass the trigger_id that coral_profile_trace_trigger returned (or a unique prefix of it).",
    invalid: "",
};

#[tool_router]
impl CoralMcp {
    #[tool(
        description = "List the services that have sent spans, with when they were last seen. \
                       Start here to learn the service names the other tools take."
    )]
    async fn coral_list_services(&self) -> CallToolResult {
        respond(self.list_services().await)
    }

    #[tool(
        description = "Request rate, error rate and p50/p95/p99 latency of a service (or of \
                       every service), its slowest traces, and for those the CPU profile's top \
                       functions when they were profiled."
    )]
    async fn coral_query_summary(
        &self,
        Parameters(p): Parameters<SummaryParams>,
    ) -> CallToolResult {
        respond(self.summary(p).await)
    }

    #[tool(
        description = "Recent requests of a service, newest first, optionally only slow or \
                       failed ones: trace id, duration, status, name."
    )]
    async fn coral_query_traces(&self, Parameters(p): Parameters<TracesParams>) -> CallToolResult {
        respond(self.traces(p).await)
    }

    #[tool(
        description = "Get CPU or memory profile for a specific distributed trace ID: per \
                       profiled span, samples, CPU time, attribution precision, top functions \
                       and warnings when the evidence is weak."
    )]
    async fn coral_query_trace_profile(
        &self,
        Parameters(p): Parameters<TraceProfileParams>,
    ) -> CallToolResult {
        respond(self.trace_profile(p).await)
    }

    #[tool(
        description = "Start high-frequency profiling for requests matching criteria: the next \
                       `count` requests of the service that match are profiled (plus a random \
                       baseline of the others, for comparison). Waits up to a minute and returns \
                       what was collected, or the trigger id to poll with coral_trigger_status."
    )]
    async fn coral_profile_trace_trigger(
        &self,
        Parameters(p): Parameters<TraceTriggerParams>,
    ) -> CallToolResult {
        respond(self.trace_trigger(p).await)
    }

    #[tool(
        description = "Progress of a trace-profile trigger: status, requests collected, and \
                       those requests."
    )]
    async fn coral_trigger_status(
        &self,
        Parameters(p): Parameters<TriggerIdParams>,
    ) -> CallToolResult {
        respond(self.trigger_status(p, false).await)
    }

    #[tool(description = "Stop a trace-profile trigger; what it collected is kept.")]
    async fn coral_cancel_trigger(
        &self,
        Parameters(p): Parameters<TriggerIdParams>,
    ) -> CallToolResult {
        respond(self.trigger_status(p, true).await)
    }

    #[tool(
        description = "Compare flame graphs between request cohorts to identify performance \
                       differences: the functions significantly hotter in cohort A than in B \
                       (delta in percentage points of request CPU, CPU ms per request, q-value, \
                       significance high/medium/low)."
    )]
    async fn coral_query_profile_compare(
        &self,
        Parameters(p): Parameters<CompareParams>,
    ) -> CallToolResult {
        respond(self.compare(p).await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for CoralMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("coral", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    /// Arguments that do not fit a tool's schema come back as a tool error with what
    /// serde refused (rmcp, as MCP asks, so the model can correct itself); the model
    /// also needs where to look.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        let call = ToolCallContext::new(self, request, context);
        let mut response = self.tool_router.call(call).await.map_err(|mut e| {
            if e.message == "tool not found" {
                e.message = format!("no tool {name:?}: tools/list names Coral's tools").into();
            }
            e
        })?;
        if let CallToolResponse::Complete(result) = &mut response
            && result.is_error == Some(true)
            && let Some(ContentBlock::Text(text)) = result.content.first_mut()
            && text.text.starts_with("failed to deserialize parameters")
        {
            text.text = format!(
                "{}; check the arguments against the inputSchema of {name} in tools/list",
                text.text
            );
        }
        Ok(response)
    }
}

impl CoralMcp {
    async fn list_services(&self) -> Outcome {
        let services = self
            .query()
            .list_services(v1::ListServicesRequest {})
            .await
            .map_err(|s| self.refused(s, Fix::default()))?
            .into_inner()
            .services;
        let now = now_unix_nano();
        let mut text = if services.is_empty() {
            "No service has sent spans yet: instrument it with OpenTelemetry and send OTLP to \
             a Coral agent."
                .to_string()
        } else {
            format!("{} service(s), last seen:\n", services.len())
        };
        for s in &services {
            text.push_str(&format!(
                "{}  {} ago\n",
                s.name,
                format_duration_ns((now - s.last_seen_unix_nano).max(0))
            ));
        }
        let data =
            json!({ "services": services.iter().map(ServiceView::from).collect::<Vec<_>>() });
        Ok(Answer { text, data })
    }

    async fn traces(&self, p: TracesParams) -> Outcome {
        if !(1..=100).contains(&p.limit) {
            return Err(format!("limit {} is out of range: use 1 to 100", p.limit));
        }
        let spans = self
            .query()
            .query_traces(v1::QueryTracesRequest {
                service: p.service.clone(),
                since: Some(since(&p.since, "since")?),
                min_duration: p.min_duration_ms.map(|ms| prost_types::Duration {
                    seconds: i64::from(ms / 1000),
                    nanos: (ms % 1000) as i32 * 1_000_000,
                }),
                status_code_pattern: p.status_code.unwrap_or_default(),
                limit: p.limit,
                profiled: false,
            })
            .await
            .map_err(|s| self.refused(s, FIX_SERVICE))?
            .into_inner()
            .spans;
        let mut text = format!(
            "{} request(s) of {} in the last {}, newest first (trace id, duration, status, name):\n",
            spans.len(),
            p.service,
            p.since
        );
        for s in &spans {
            text.push_str(&request_line(s));
            text.push('\n');
        }
        let data = json!({ "service": p.service, "requests": spans.iter().map(SpanView::from).collect::<Vec<_>>() });
        Ok(Answer { text, data })
    }

    async fn trace_profile(&self, p: TraceProfileParams) -> Outcome {
        let ty = model_type(p.profile_type);
        let profiles = self
            .profile()
            .get_trace_profile(v1::GetTraceProfileRequest {
                trace_id: p.trace_id.trim().to_string(),
                service: String::new(),
            })
            .await
            .map_err(|s| {
                self.refused(
                    s,
                    Fix {
                        not_found: "To profile this kind of request, start \
                                    coral_profile_trace_trigger for its service, then pick a \
                                    trace id from what it collects.",
                        invalid: "",
                    },
                )
            })?
            .into_inner();
        let (profiles, truncated) = (profiles.profiles, profiles.truncated);
        if let Some(first) = profiles.first()
            && !profiles.iter().any(|tp| has_type(tp, ty))
        {
            if ty == model::ProfileType::Memory {
                return Err(format!(
                    "no memory profile for this trace: {}. Call again with profile_type \
                     \"cpu\", or collect with coral_profile_trace_trigger with profile_types \
                     [\"cpu\", \"memory\"].",
                    missing_type_reason(first, ty)
                ));
            }
            return Err(format!(
                "no {ty} profile for this trace: its requests recorded no off-CPU time ({}). \
                 Call again with profile_type \"cpu\", or collect with \
                 coral_profile_trace_trigger (it records offcpu by default) on a service whose \
                 spans carry thread.id.",
                no_off_cpu_reason(first)
            ));
        }
        let mut text = format!(
            "{ty} profile ({}) of trace {}:\n",
            ty.measure(),
            p.trace_id.trim()
        );
        if truncated {
            text.push_str(&format!(
                "note: the trace has more request profiles; these are the first {} by start\n",
                profiles.len()
            ));
        }
        let mut spans = Vec::new();
        for tp in &profiles {
            let profile =
                coral_client::profile::profile_from_wire(tp.profile.clone().unwrap_or_default())
                    .map_err(|e| format!("the colony sent an invalid profile: {e}"))?;
            // The text says what the view says: its samples, CPU time and warnings.
            let view = RequestProfileView::new(tp, &profile, ty, TOP);
            text.push_str(&format!(
                "{} · {} · duration {} · on CPU {} · {} samples at {} Hz · {} precision\n",
                view.service,
                view.span_name,
                format_duration_ns(view.duration_ns),
                format_duration_ns(view.cpu_ns as i64),
                view.samples,
                view.frequency_hz,
                view.precision
            ));
            // A memory view opens with the memory made resident, the others with the time.
            match (&view.memory, ty) {
                (Some(memory), model::ProfileType::Memory) => text.push_str(&memory.summary),
                _ => text.push_str(&view.breakdown.summary),
            }
            text.push('\n');
            for w in &view.warnings {
                text.push_str(&format!("warning: {w}\n"));
            }
            if !has_type(tp, ty) {
                // A memory view's warnings already say why.
                if ty != model::ProfileType::Memory {
                    text.push_str(&format!("no {ty} profile: {}\n", no_off_cpu_reason(tp)));
                }
            } else if view.total.value() > 0 {
                let mut summary = Vec::new();
                write_text_summary(&profile, ty, TOP, &mut summary)
                    .map_err(|e| format!("cannot summarize the profile: {e}"))?;
                text.push_str(&String::from_utf8_lossy(&summary));
            }
            spans.push(view);
        }
        let data = json!({
            "trace_id": p.trace_id.trim(), "profile_type": ty,
            "unit": if ty.is_bytes() { "bytes" } else { "ns" },
            "truncated": truncated, "spans": spans,
        });
        Ok(Answer { text, data })
    }

    async fn trace_trigger(&self, p: TraceTriggerParams) -> Outcome {
        let timeout = match &p.timeout {
            Some(t) => Some(since(t, "timeout")?),
            None => None,
        };
        let int =
            |v: u32, field: &str| i32::try_from(v).map_err(|_| format!("{field} {v} is too large"));
        let started = self
            .profile()
            .start_trace_profile_trigger(v1::StartTraceProfileTriggerRequest {
                service_id: p.service.clone(),
                min_duration_ms: int(p.min_duration_ms, "min_duration_ms")?,
                status_code_pattern: p.status_code.unwrap_or_default(),
                frequency_hz: p.frequency_hz.map(|f| int(f, "frequency_hz")).transpose()?,
                max_requests: Some(int(p.count, "count")?),
                timeout,
                max_duration_ms: 0,
                url_pattern: p.url.unwrap_or_default(),
                baseline_requests: None,
                profile_types: p
                    .profile_types
                    .iter()
                    .map(|t| match t {
                        CollectedType::Cpu => "cpu".to_string(),
                        CollectedType::Offcpu => "offcpu".to_string(),
                        CollectedType::Memory => "memory".to_string(),
                    })
                    .collect(),
            })
            .await
            .map_err(|s| self.refused(s, FIX_SERVICE))?
            .into_inner();
        let trigger = started.trigger.unwrap_or_default();
        // Wait no longer than the trigger can run.
        let lifetime = Duration::from_nanos(
            (trigger.expires_unix_nano - trigger.created_unix_nano).max(0) as u64,
        );
        let deadline = tokio::time::Instant::now() + self.trigger_wait.min(lifetime);
        // The CLI's path: to the end, then the baseline, so a comparison can follow.
        let current = coral_client::trigger::follow(
            &mut self.profile(),
            &started.trigger_id,
            Some(deadline),
            |_| {},
        )
        .await
        .map_err(|s| self.refused(s, FIX_TRIGGER))?;
        Ok(trigger_answer(&current))
    }

    async fn trigger_status(&self, p: TriggerIdParams, cancel: bool) -> Outcome {
        // The colony checks it (a UUID or a unique prefix) and says what is wrong.
        let trigger_id = p.trigger_id.trim().to_string();
        // The full trigger, with the requests it collected.
        let before = self.get_trigger(trigger_id).await?;
        if !cancel {
            return Ok(trigger_answer(&before));
        }
        if !coral_client::trigger::is_active(&before) {
            let mut answer = trigger_answer(&before);
            answer.text.insert_str(
                0,
                &format!(
                    "Nothing to cancel: trigger {} had already ended ({}).\n",
                    before.trigger_id, before.status
                ),
            );
            answer.data["already_ended"] = json!(true);
            return Ok(answer);
        }
        // The colony answers a cancel with the trigger and what it collected.
        let after = self
            .profile()
            .cancel_trace_profile_trigger(v1::CancelTraceProfileTriggerRequest {
                trigger_id: before.trigger_id,
            })
            .await
            .map_err(|s| self.refused(s, FIX_TRIGGER))?
            .into_inner();
        let mut answer = trigger_answer(&after);
        answer.data["already_ended"] = json!(false);
        Ok(answer)
    }

    async fn get_trigger(&self, trigger_id: String) -> Result<v1::TraceProfileTrigger, String> {
        Ok(self
            .profile()
            .get_trace_profile_trigger(v1::GetTraceProfileTriggerRequest { trigger_id })
            .await
            .map_err(|s| self.refused(s, FIX_TRIGGER))?
            .into_inner())
    }

    async fn compare(&self, p: CompareParams) -> Outcome {
        let range = since(&p.since, "since")?;
        let ty = model_type(p.profile_type);
        let r = self
            .profile()
            .compare_trace_profiles(v1::CompareTraceProfilesRequest {
                service_id: p.service.clone(),
                cohort_a_filter: p.cohort_a_filter.clone(),
                cohort_b_filter: p.cohort_b_filter.clone(),
                time_range: Some(range),
                top: 10,
                min_significance: String::new(),
                differential: false,
                profile_type: ty.to_string(),
            })
            .await
            .map_err(|s| {
                self.refused(
                    s,
                    Fix {
                        not_found: FIX_SERVICE.not_found,
                        invalid: "Filters look like \"duration > 1s\", \"duration < 100ms\", \
                                  \"status = 5xx\", \"url ~ \\\"/checkout*\\\"\", joined with \
                                  and/or/not.",
                    },
                )
            })?
            .into_inner();
        let mut text = format!("{} in the last {}, {}\n", p.service, p.since, ty.measure());
        // Per-request values are milliseconds, or bytes for memory.
        let per_request = |v: f64| {
            if ty.is_bytes() {
                model::format_bytes(v.max(0.0).round() as u64)
            } else {
                ms(v)
            }
        };
        let observations = if ty.is_bytes() {
            "memory records"
        } else {
            "samples"
        };
        for (name, filter, requests, samples, cpu) in [
            (
                "A",
                &p.cohort_a_filter,
                r.cohort_a_requests,
                r.cohort_a_sample_count,
                r.cohort_a_mean_cpu_ms,
            ),
            (
                "B",
                &p.cohort_b_filter,
                r.cohort_b_requests,
                r.cohort_b_sample_count,
                r.cohort_b_mean_cpu_ms,
            ),
        ] {
            text.push_str(&format!(
                "cohort {name} ({filter}): {requests} requests, {samples} {observations}, {} {} per request\n",
                per_request(cpu),
                ty.measure()
            ));
        }
        if !r.hotspots.is_empty() {
            text.push_str(&format!(
                "functions (significant ones hotter in A first; delta: percentage points of \
                 request {0}, + hotter in A; {0} per request, inclusive):\n",
                ty.measure()
            ));
        }
        for (i, h) in r.hotspots.iter().enumerate() {
            let only = match h.only_in.as_str() {
                "a" => ", only in A",
                "b" => ", only in B",
                _ => "",
            };
            text.push_str(&format!(
                "{}. {} ({}) {:+.1}pp, A {}/req vs B {}/req, q {}, significance {}{only}\n",
                i + 1,
                h.function,
                h.module,
                h.delta_percentage,
                per_request(h.cohort_a_cpu_ms_per_request),
                per_request(h.cohort_b_cpu_ms_per_request),
                q_value(h.q_value),
                h.significance
            ));
        }
        if !r.verdict.is_empty() {
            text.push_str(&format!("verdict: {}\n", r.verdict));
        }
        for w in &r.warnings {
            text.push_str(&format!("warning: {w}\n"));
        }
        let data = to_json(&ComparisonView::new(
            &p.service,
            since_ns(&range),
            &p.cohort_a_filter,
            &p.cohort_b_filter,
            &r,
        ));
        Ok(Answer { text, data })
    }

    async fn summary(&self, p: SummaryParams) -> Outcome {
        let window = p.since.as_str();
        let range = since(window, "since")?;
        let single = p.service.is_some();
        let resp = self
            .query()
            .get_service_summary(v1::GetServiceSummaryRequest {
                service: p.service.unwrap_or_default(),
                since: Some(range),
                // Exemplars only for one service: a summary of all stays short.
                slowest: Some(if single { EXEMPLARS } else { 0 }),
            })
            .await
            .map_err(|s| self.refused(s, FIX_SERVICE))?
            .into_inner();
        let mut text = String::new();
        let mut out = Vec::new();
        for s in &resp.services {
            text.push_str(&format!(
                "{} (last {window}): {}\n",
                s.service,
                stats_line(s)
            ));
            let mut exemplars = Vec::new();
            for slow in &s.slowest {
                let Some(span) = &slow.span else { continue };
                text.push_str(&format!("slow: {}\n", request_line(span)));
                let mut e = to_json(&SpanView::from(span));
                e["profile"] = match &slow.profile {
                    Some(tp) => exemplar_profile(tp, &mut text),
                    None => Value::Null,
                };
                exemplars.push(e);
            }
            out.push(json!({
                "service": s.service,
                "stats": {
                    "requests": s.requests, "errors": s.errors,
                    "requests_per_second": s.requests_per_second, "error_rate": s.error_rate,
                    "first_start_unix_nano": (s.requests > 0).then_some(s.first_start_unix_nano),
                    "last_start_unix_nano": (s.requests > 0).then_some(s.last_start_unix_nano),
                    "p50_ns": s.p50_ns, "p95_ns": s.p95_ns, "p99_ns": s.p99_ns,
                },
                "slowest": exemplars,
            }));
        }
        if out.is_empty() {
            text.push_str("No service has sent spans yet.\n");
        } else if !single {
            if resp.truncated {
                text.push_str("(more services exist: ask for one by name)\n");
            }
            text.push_str("Call again with one service for its slowest traces and profiles.\n");
        }
        Ok(Answer {
            text,
            data: json!({
                "since_ns": since_ns(&range), "services": out, "truncated": resp.truncated,
            }),
        })
    }
}

/// A slow request's profile in one line, and as JSON; null when it cannot be read.
fn exemplar_profile(tp: &v1::TraceProfile, text: &mut String) -> Value {
    let Ok(profile) =
        coral_client::profile::profile_from_wire(tp.profile.clone().unwrap_or_default())
    else {
        return Value::Null;
    };
    let view = RequestProfileView::new(tp, &profile, model::ProfileType::Cpu, 3);
    // The view's hotspots start with the top 3 by self CPU time, in that order.
    text.push_str(&format!(
        "  profile: {}; {} samples, {} precision, top self: {}\n",
        view.breakdown.summary,
        view.samples,
        view.precision,
        view.hotspots
            .iter()
            .take(3)
            .map(|h| format!("{} {:.0}%", h.function, h.self_share * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    to_json(&view)
}

/// Rate, errors and percentiles on one line.
fn stats_line(s: &v1::ServiceSummary) -> String {
    if s.requests == 0 {
        return "no requests".to_string();
    }
    let covered_ns = s.last_start_unix_nano - s.first_start_unix_nano;
    let rate = if s.requests > 1 && covered_ns > 0 {
        format!(
            "{:.2}/s over the {} they span",
            s.requests_per_second,
            format_duration_ns(covered_ns)
        )
    } else {
        "rate unknown (one request)".to_string()
    };
    format!(
        "{} requests, {rate}, errors {:.1}% ({}), p50 {} p95 {} p99 {}",
        s.requests,
        s.error_rate * 100.0,
        s.errors,
        format_duration_ns(s.p50_ns),
        format_duration_ns(s.p95_ns),
        format_duration_ns(s.p99_ns),
    )
}

/// A `coral-report` view as structured content: the CLI's JSON vocabulary.
fn to_json(view: &impl serde::Serialize) -> Value {
    serde_json::to_value(view).unwrap_or(Value::Null)
}

fn since_ns(d: &prost_types::Duration) -> i64 {
    d.seconds.saturating_mul(1_000_000_000) + i64::from(d.nanos)
}

fn trigger_answer(t: &v1::TraceProfileTrigger) -> Answer {
    let mut text = format!(
        "trigger {} on {}: {}, {}/{} matching requests collected, baseline {}/{}\n",
        t.trigger_id,
        t.service,
        t.status,
        t.collected_requests,
        t.max_requests,
        t.baseline_collected,
        t.baseline_requests
    );
    for c in t.collected.iter().take(10) {
        let memory = if c.memory_collected {
            format!(", {} made resident", model::format_bytes(c.memory_bytes))
        } else {
            String::new()
        };
        text.push_str(&format!(
            "{} {} {} samples, {} precision{memory}\n",
            c.trace_id,
            format_duration_ns(c.duration_ns),
            c.samples,
            c.precision
        ));
    }
    if t.status == "active" {
        text.push_str(&format!(
            "Still collecting: call coral_trigger_status {{\"trigger_id\": \"{}\"}} later, or \
             coral_cancel_trigger to stop. Matching requests must happen for it to collect.\n",
            t.trigger_id
        ));
    } else if t.collected_requests > 0
        && let Some(filter) = coral_client::trigger::cohort_filter(t)
    {
        if t.baseline_collected == 0 {
            text.push_str(
                "No baseline arrived (no other request of the service was profiled whole \
                 while it ran): a comparison may find cohort B empty.\n",
            );
        }
        text.push_str(&format!(
            "Next: coral_query_profile_compare with cohort_a_filter {:?} and cohort_b_filter \
             {:?}; or coral_query_trace_profile for one trace id.\n",
            filter,
            format!("not ({filter})")
        ));
    }
    let data = to_json(&TriggerView::from(t));
    Answer { text, data }
}

fn now_unix_nano() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The profile model's type for a tool's `profile_type`.
fn model_type(ty: ProfileType) -> model::ProfileType {
    match ty {
        ProfileType::Cpu => model::ProfileType::Cpu,
        ProfileType::Offcpu => model::ProfileType::Offcpu,
        ProfileType::Wall => model::ProfileType::Wall,
        ProfileType::Memory => model::ProfileType::Memory,
    }
}
