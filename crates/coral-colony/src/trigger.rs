//! Trace-profile triggers (RFD 080 phase 1): creating, reading, cancelling them, the
//! set agents run, and the sweeper that expires them and applies retention.
//!
//! The store decides everything that must hold across colony replicas: which requests
//! a trigger collects (a conditional update per request, never more than
//! `max_requests`), and when it ends. The colony only validates, converts and sweeps.

use crate::query::duration_ns;
use crate::{now_unix_nano, store_status};
use coral_analysis::RequestCriteria;
use coral_analysis::profile::ProfileType;
use coral_client::{limits, v1};
use coral_store::{CollectedRequest, Store, StoreError, TraceProfileTrigger, TriggerStatus};
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

pub const DEFAULT_TRIGGER_FREQUENCY_HZ: u32 = 99;
pub const DEFAULT_MAX_REQUESTS: u32 = 10;
/// More requests than this per trigger is a load test, not a diagnosis.
pub const MAX_REQUESTS_LIMIT: u32 = 1000;
/// The baseline reservoir is this many times the trigger's count by default.
pub const DEFAULT_BASELINE_FACTOR: u32 = 5;
pub const MAX_BASELINE_REQUESTS: u32 = 1000;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Triggers listed when the request does not say how many.
const DEFAULT_LIST_LIMIT: u32 = 100;
/// Most triggers one `ListTraceProfileTriggers` call returns.
const MAX_LIST_LIMIT: u32 = 1000;

/// How often the sweeper expires triggers; agents also stop at expiry on their own.
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);
/// How often the sweeper deletes profiles past retention.
const RETENTION_SWEEP: Duration = Duration::from_secs(600);

/// Validates a `StartTraceProfileTrigger` request into a new active trigger.
pub(crate) fn new_trigger(
    req: &v1::StartTraceProfileTriggerRequest,
    now: i64,
) -> Result<TraceProfileTrigger, Status> {
    let invalid = |m: String| Err(Status::invalid_argument(m));
    if req.service_id.trim().is_empty() {
        return invalid("service_id must name the service to profile".into());
    }
    let ms = |value: i32, what: &str| -> Result<Option<u32>, Status> {
        match value {
            0 => Ok(None),
            v if v < 0 => Err(Status::invalid_argument(format!(
                "{what} must not be negative (got {v} ms); 0 means no bound"
            ))),
            v => Ok(Some(v as u32)),
        }
    };
    let min_duration_ms = ms(req.min_duration_ms, "min_duration_ms")?;
    let max_duration_ms = ms(req.max_duration_ms, "max_duration_ms")?;
    let status_code_pattern = Some(req.status_code_pattern.trim()).filter(|s| !s.is_empty());
    let url_pattern = Some(req.url_pattern.trim()).filter(|s| !s.is_empty());
    for (what, pattern) in [
        ("the status-code pattern", status_code_pattern),
        ("the URL pattern", url_pattern),
    ] {
        let max = limits::MAX_TRIGGER_PATTERN_BYTES;
        if let Some(p) = pattern.filter(|p| p.len() > max) {
            return invalid(format!(
                "{}: shorten it (a glob such as \"/api/*\" matches many URLs)",
                limits::too_long(what, p.len(), max)
            ));
        }
    }
    RequestCriteria::new(
        min_duration_ms.map(u64::from),
        max_duration_ms.map(u64::from),
        status_code_pattern,
        url_pattern,
    )
    .and_then(RequestCriteria::require_some)
    .map_err(|e| Status::invalid_argument(e.to_string()))?;

    let frequency_hz = match req.frequency_hz {
        None => DEFAULT_TRIGGER_FREQUENCY_HZ,
        Some(f) if (1..=crate::MAX_FREQUENCY_HZ as i32).contains(&f) => f as u32,
        Some(f) => {
            return invalid(format!(
                "frequency {f} Hz is out of range: 1..={} Hz (99 is the usual)",
                crate::MAX_FREQUENCY_HZ
            ));
        }
    };
    let max_requests = match req.max_requests {
        None => DEFAULT_MAX_REQUESTS,
        Some(n) if (1..=MAX_REQUESTS_LIMIT as i32).contains(&n) => n as u32,
        Some(n) => {
            return invalid(format!(
                "count {n} is out of range: collect 1..={MAX_REQUESTS_LIMIT} requests (10 is the usual)"
            ));
        }
    };
    let baseline_requests = match req.baseline_requests {
        None => (max_requests * DEFAULT_BASELINE_FACTOR).min(MAX_BASELINE_REQUESTS),
        Some(n) if (0..=MAX_BASELINE_REQUESTS as i32).contains(&n) => n as u32,
        Some(n) => {
            return invalid(format!(
                "baseline {n} is out of range: 0..={MAX_BASELINE_REQUESTS} requests"
            ));
        }
    };
    let timeout = match &req.timeout {
        None => DEFAULT_TIMEOUT,
        Some(d) => Duration::from_nanos(duration_ns(d, "timeout")? as u64),
    };
    let profile_types = collected_types(&req.profile_types)?;
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        return invalid(format!(
            "timeout must be more than 0 and at most {}h (5m is the usual)",
            MAX_TIMEOUT.as_secs() / 3600
        ));
    }
    Ok(TraceProfileTrigger {
        trigger_id: uuid::Uuid::new_v4(),
        service: req.service_id.trim().to_string(),
        created_unix_nano: now,
        expires_unix_nano: now.saturating_add(timeout.as_nanos() as i64),
        ended_unix_nano: None,
        status: TriggerStatus::Active,
        min_duration_ms,
        max_duration_ms,
        status_code_pattern: status_code_pattern.map(str::to_string),
        url_pattern: url_pattern.map(str::to_string),
        frequency_hz,
        max_requests,
        collected_requests: 0,
        trace_ids: Vec::new(),
        baseline_requests,
        baseline_collected: 0,
        profile_types,
    })
}

/// The profile types a trigger collects, in [`ProfileType`]'s order: `cpu` always
/// (the requests are sampled anyway), `offcpu` when asked for or when nothing is asked
/// for, `memory` when asked for (its page-fault probes cost the service something, so
/// never by default).
fn collected_types(names: &[String]) -> Result<Vec<ProfileType>, Status> {
    if names.is_empty() {
        return Ok(vec![ProfileType::Cpu, ProfileType::Offcpu]);
    }
    let mut types = vec![ProfileType::Cpu];
    for name in names {
        match name.trim().parse::<ProfileType>() {
            Ok(ProfileType::Wall) => {
                return Err(Status::invalid_argument(
                    "wall is not collected on its own: it is cpu and offcpu together \
                     (collect cpu,offcpu)",
                ));
            }
            Ok(ty) if !types.contains(&ty) => types.push(ty),
            Ok(_) => {}
            Err(e) => return Err(Status::invalid_argument(e.to_string())),
        }
    }
    types.sort_unstable();
    Ok(types)
}

fn type_names(types: &[ProfileType]) -> Vec<String> {
    types.iter().map(ToString::to_string).collect()
}

/// The trigger `id` names: a whole id, or a prefix of at least 4 hex digits that one
/// trigger's id starts with, as git takes a short commit id (hyphens optional).
/// `INVALID_ARGUMENT` for a malformed or ambiguous prefix, `NOT_FOUND` for none.
pub(crate) async fn resolve_trigger_id(store: &dyn Store, id: &str) -> Result<uuid::Uuid, Status> {
    match id.trim().parse() {
        Ok(whole) => Ok(whole),
        Err(_) => store.resolve_trigger_id(id).await.map_err(trigger_status),
    }
}

/// Maps a store failure, saying how to find a trigger that does not exist.
pub(crate) fn trigger_status(err: StoreError) -> Status {
    match err {
        StoreError::NotFound(what) => Status::not_found(format!("{what} not found")),
        StoreError::InvalidArgument(message) => Status::invalid_argument(message),
        e => store_status(e),
    }
}

pub(crate) fn trigger_to_wire(
    t: &TraceProfileTrigger,
    collected: &[CollectedRequest],
) -> v1::TraceProfileTrigger {
    v1::TraceProfileTrigger {
        trigger_id: t.trigger_id.to_string(),
        service: t.service.clone(),
        status: t.status.to_string(),
        created_unix_nano: t.created_unix_nano,
        expires_unix_nano: t.expires_unix_nano,
        ended_unix_nano: t.ended_unix_nano.unwrap_or(0),
        min_duration_ms: t.min_duration_ms.map_or(0, |v| v as i32),
        max_duration_ms: t.max_duration_ms.map_or(0, |v| v as i32),
        status_code_pattern: t.status_code_pattern.clone().unwrap_or_default(),
        url_pattern: t.url_pattern.clone().unwrap_or_default(),
        frequency_hz: t.frequency_hz,
        max_requests: t.max_requests,
        collected_requests: t.collected_requests,
        baseline_requests: t.baseline_requests,
        baseline_collected: t.baseline_collected,
        profile_types: type_names(&t.profile_types),
        collected: collected
            .iter()
            .map(|c| v1::CollectedRequest {
                trace_id: c.trace_id.to_string(),
                span_id: c.span_id.to_string(),
                span_name: c.span_name.clone(),
                start_time_unix_nano: c.start_unix_nano,
                duration_ns: c.duration_ns,
                http_status: c.http_status,
                status_code: c.status_code.unwrap_or(0),
                node: c.node.clone(),
                samples: c.samples,
                precision: c.precision.as_str().to_string(),
                cpu_ns: c.cpu_ns,
                off_cpu_ns: c.off_cpu_ns,
                off_cpu_collected: c.profile_types.contains(&ProfileType::Offcpu),
                memory_bytes: c.memory_bytes,
                memory_collected: c.profile_types.contains(&ProfileType::Memory),
            })
            .collect(),
    }
}

/// What an agent runs for an active trigger.
pub(crate) fn trigger_command(t: &TraceProfileTrigger) -> v1::TriggerCommand {
    let ns = |ms: Option<u32>| ms.map_or(0, |ms| i64::from(ms) * 1_000_000);
    v1::TriggerCommand {
        trigger_id: t.trigger_id.to_string(),
        service: t.service.clone(),
        min_duration_ns: ns(t.min_duration_ms),
        max_duration_ns: ns(t.max_duration_ms),
        status_code_pattern: t.status_code_pattern.clone().unwrap_or_default(),
        url_pattern: t.url_pattern.clone().unwrap_or_default(),
        frequency_hz: t.frequency_hz,
        expires_unix_nano: t.expires_unix_nano,
        baseline_requests: t.baseline_requests,
        off_cpu: t.profile_types.contains(&ProfileType::Offcpu),
        memory: t.profile_types.contains(&ProfileType::Memory),
    }
}

pub(crate) fn list_limit(limit: u32) -> u32 {
    match limit {
        0 => DEFAULT_LIST_LIMIT,
        n => n.min(MAX_LIST_LIMIT),
    }
}

/// Refuses a new trigger of a service that already has
/// [`limits::MAX_ACTIVE_TRIGGERS_PER_SERVICE`] active ones (`RESOURCE_EXHAUSTED`,
/// saying how to free one). Checked before the insert, not in it: two starts racing on
/// different replicas may each see room, so the bound can be passed by the number of
/// concurrent starts; it is a guard against runaway scripts, not a quota.
pub(crate) fn check_active_trigger_count(
    service: &str,
    active: &[TraceProfileTrigger],
) -> Result<(), Status> {
    let max = limits::MAX_ACTIVE_TRIGGERS_PER_SERVICE;
    let n = active.iter().filter(|t| t.service == service).count();
    if n >= max {
        return Err(Status::resource_exhausted(format!(
            "service {service} has {n} active triggers; the limit is {max}: cancel one \
             or wait for one to complete or expire"
        )));
    }
    Ok(())
}

/// Expires triggers every second, even with no agent connected, and deletes request
/// profiles older than `retention` every ten minutes. Runs until `stopping` turns true.
/// Every replica may run one: both updates are idempotent.
pub(crate) async fn sweep(
    store: Arc<dyn Store>,
    retention: Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    metrics: Arc<crate::ColonyMetrics>,
) {
    let mut expiry = tokio::time::interval(EXPIRY_SWEEP);
    let mut purge = tokio::time::interval(RETENTION_SWEEP);
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = expiry.tick() => {
                match store.expire_triggers(now_unix_nano()).await {
                    Ok(0) => {}
                    Ok(n) => {
                        metrics.add_trigger_event(crate::metrics::TriggerEvent::Expired, n);
                        tracing::info!(triggers = n, "triggers expired");
                    }
                    Err(e) => {
                        metrics.add_store_error();
                        tracing::warn!(error = %e, "cannot expire triggers");
                    }
                }
                match store.active_triggers(now_unix_nano()).await {
                    Ok(active) => metrics.set_triggers_active(active.len()),
                    Err(_) => metrics.add_store_error(),
                }
            }
            _ = purge.tick() => {
                let cutoff = now_unix_nano().saturating_sub(retention.as_nanos() as i64);
                match store.purge_profiles_before(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(profiles = n, "request profiles past retention deleted"),
                    Err(e) => {
                        metrics.add_store_error();
                        tracing::warn!(error = %e, "cannot apply profile retention");
                    }
                }
            }
            // The guard `wait_for` returns is not Send: drop it inside.
            () = async { let _ = stopping.wait_for(|stop| *stop).await; } => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> v1::StartTraceProfileTriggerRequest {
        v1::StartTraceProfileTriggerRequest {
            service_id: "payment-svc".into(),
            status_code_pattern: "5xx".into(),
            ..Default::default()
        }
    }

    #[test]
    fn ambiguous_trigger_ids_are_the_callers_to_fix() {
        let status = trigger_status(StoreError::InvalidArgument("ambiguous: 2 triggers".into()));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "ambiguous: 2 triggers");
        let status = trigger_status(StoreError::NotFound("trigger 0af7".into()));
        assert_eq!(status.code(), tonic::Code::NotFound);
    }

    #[test]
    fn defaults_follow_rfd_080() {
        let t = new_trigger(&request(), 1_000).unwrap();
        assert_eq!(t.frequency_hz, 99);
        assert_eq!(t.max_requests, 10);
        assert_eq!(t.baseline_requests, 50);
        assert_eq!(t.expires_unix_nano - t.created_unix_nano, 300_000_000_000);
        assert_eq!(t.status, TriggerStatus::Active);
        assert_eq!((t.min_duration_ms, t.max_duration_ms), (None, None));
        let command = trigger_command(&t);
        assert_eq!(command.service, "payment-svc");
        assert_eq!(command.baseline_requests, 50);
        assert_eq!(t.profile_types, [ProfileType::Cpu, ProfileType::Offcpu]);
        assert!(command.off_cpu, "off-CPU time is collected by default");
        assert!(!command.memory, "memory only when asked for");
    }

    #[test]
    fn triggers_collect_the_types_asked_for_and_cpu_always() {
        let with = |types: &[&str]| {
            new_trigger(
                &v1::StartTraceProfileTriggerRequest {
                    profile_types: types.iter().map(|t| t.to_string()).collect(),
                    ..request()
                },
                1_000,
            )
        };
        let cpu = with(&["cpu"]).unwrap();
        assert_eq!(cpu.profile_types, [ProfileType::Cpu]);
        assert!(!trigger_command(&cpu).off_cpu);
        assert!(!trigger_command(&cpu).memory);
        let memory = with(&["memory"]).unwrap();
        assert_eq!(
            memory.profile_types,
            [ProfileType::Cpu, ProfileType::Memory]
        );
        let command = trigger_command(&memory);
        assert!(command.memory && !command.off_cpu);
        let all = with(&["memory", "offcpu", " memory "]).unwrap();
        assert_eq!(
            all.profile_types,
            [ProfileType::Cpu, ProfileType::Offcpu, ProfileType::Memory]
        );
        let command = trigger_command(&all);
        assert!(command.memory && command.off_cpu);
        assert_eq!(
            with(&["offcpu"]).unwrap().profile_types,
            [ProfileType::Cpu, ProfileType::Offcpu]
        );
        assert_eq!(
            with(&["offcpu", "cpu", "offcpu"]).unwrap().profile_types,
            [ProfileType::Cpu, ProfileType::Offcpu]
        );
        for (types, message) in [
            (&["wall"][..], "cpu and offcpu together"),
            (&["memory", "wall"][..], "cpu and offcpu together"),
            (&["cpu", "gpu"][..], "unknown profile type `gpu`"),
        ] {
            let status = with(types).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().contains(message),
                "{types:?}: {}",
                status.message()
            );
        }
    }

    #[test]
    fn bad_requests_say_what_to_fix() {
        let cases: Vec<(v1::StartTraceProfileTriggerRequest, &str)> = vec![
            (
                v1::StartTraceProfileTriggerRequest::default(),
                "service_id must name",
            ),
            (
                v1::StartTraceProfileTriggerRequest {
                    min_duration_ms: 2000,
                    max_duration_ms: 1000,
                    ..request()
                },
                "above the maximum",
            ),
            (
                v1::StartTraceProfileTriggerRequest {
                    status_code_pattern: "6xx".into(),
                    ..request()
                },
                "status-code pattern",
            ),
            (
                v1::StartTraceProfileTriggerRequest {
                    frequency_hz: Some(0),
                    ..request()
                },
                "1..=1000 Hz",
            ),
            (
                v1::StartTraceProfileTriggerRequest {
                    url_pattern: format!("/{}", "a".repeat(2000)),
                    ..request()
                },
                "the URL pattern is 2001 bytes; the limit is 1024",
            ),
            (
                v1::StartTraceProfileTriggerRequest {
                    status_code_pattern: "5xx,".repeat(300),
                    ..request()
                },
                "the status-code pattern is 1200 bytes; the limit is 1024",
            ),
            (
                v1::StartTraceProfileTriggerRequest {
                    frequency_hz: Some(1001),
                    ..request()
                },
                "1..=1000 Hz",
            ),
            (
                v1::StartTraceProfileTriggerRequest {
                    max_requests: Some(0),
                    ..request()
                },
                "count 0",
            ),
            (
                v1::StartTraceProfileTriggerRequest {
                    timeout: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 0,
                    }),
                    ..request()
                },
                "timeout must be more than 0",
            ),
            (
                v1::StartTraceProfileTriggerRequest {
                    min_duration_ms: -1,
                    ..request()
                },
                "negative",
            ),
            (
                v1::StartTraceProfileTriggerRequest {
                    url_pattern: "/a b".into(),
                    ..request()
                },
                "URL pattern",
            ),
            (
                v1::StartTraceProfileTriggerRequest {
                    url_pattern: "checkout".into(),
                    ..request()
                },
                "can never match",
            ),
            (
                v1::StartTraceProfileTriggerRequest {
                    service_id: "payment-svc".into(),
                    ..Default::default()
                },
                "at least one criterion",
            ),
        ];
        for (req, want) in cases {
            let err = new_trigger(&req, 0).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().contains(want), "{want}: {}", err.message());
        }
    }
}
