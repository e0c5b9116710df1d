//! `CompareTraceProfiles`: two cohorts of a service's profiled requests, selected by
//! filters the store compiles to parameterised SQL, compared function by function
//! (`coral_analysis::compare`: Mann–Whitney U per function, requests as the unit,
//! Benjamini–Hochberg across functions).

use crate::query::{duration_ns, require_service};
use crate::{now_unix_nano, store_status};
use coral_analysis::compare::{self, CompareOptions, Comparison, Significance};
use coral_analysis::filter::{self, Filter};
use coral_analysis::profile::{Profile, ProfileType, ProfileTypeError};
use coral_client::v1;
use coral_store::{Store, TraceProfileRecord};
use std::time::Duration;
use tonic::Status;

const DEFAULT_RANGE: Duration = Duration::from_secs(3600);
const MAX_RANGE: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_TOP: u32 = 10;
/// Requests per cohort at most; the newest are compared.
pub const MAX_COHORT_REQUESTS: u32 = 5000;

fn parse_filter(which: &str, text: &str) -> Result<Filter, Status> {
    if text.trim().is_empty() {
        return Err(Status::invalid_argument(format!(
            "the {which} filter is empty: write e.g. \"duration > 1s\" or \"status = 5xx\""
        )));
    }
    filter::parse(text).map_err(|e| Status::invalid_argument(format!("{which} filter: {e}")))
}

async fn cohort(
    store: &dyn Store,
    service: &str,
    since: i64,
    filter: &Filter,
    which: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<TraceProfileRecord>, Status> {
    let (profiles, truncated) = store
        .cohort_profiles(service, since, filter, MAX_COHORT_REQUESTS)
        .await
        .map_err(store_status)?;
    if truncated {
        warnings.push(format!(
            "more than {MAX_COHORT_REQUESTS} requests match cohort {which}: the newest \
             {MAX_COHORT_REQUESTS} were compared; narrow --since or the filter"
        ));
    }
    Ok(profiles)
}

/// Why a cohort is empty, as a refusal: a comparison with an empty side has no rows
/// worth showing. Either the service has no profiled request in the window at all, or
/// it has some and the filter matched none of them.
async fn empty_cohort(
    store: &dyn Store,
    service: &str,
    since: i64,
    range: Duration,
    filter: &Filter,
    which: &str,
) -> Status {
    let window = coral_analysis::format_duration_ns(range.as_nanos() as i64);
    let everything = filter::parse("duration >= 0ns").expect("a valid filter");
    let any = match store.cohort_profiles(service, since, &everything, 1).await {
        Ok((profiles, _)) => !profiles.is_empty(),
        Err(e) => return store_status(e),
    };
    Status::failed_precondition(if any {
        format!(
            "cohort {which} ({filter}) matched none of the profiled requests of {service} in \
             the last {window}: widen the filter or the time range, or list the profiled \
             requests to see what they look like"
        )
    } else {
        format!(
            "{service} has no profiled request in the last {window}, so cohort {which} \
             ({filter}) is empty: requests get profiles only while a trace-profile trigger \
             (with its baseline) or a profiling session of the service runs; start one, or \
             widen the time range"
        )
    })
}

pub(crate) async fn compare_trace_profiles(
    store: &dyn Store,
    req: v1::CompareTraceProfilesRequest,
) -> Result<v1::CompareTraceProfilesResponse, Status> {
    let service = req.service_id.trim();
    let filter_a = parse_filter("cohort A", &req.cohort_a_filter)?;
    let filter_b = parse_filter("cohort B", &req.cohort_b_filter)?;
    let range = match &req.time_range {
        None => DEFAULT_RANGE,
        Some(d) => Duration::from_nanos(duration_ns(d, "time_range")? as u64),
    };
    if range.is_zero() || range > MAX_RANGE {
        return Err(Status::invalid_argument(format!(
            "time_range must be more than 0 and at most {} days (1h is the usual)",
            MAX_RANGE.as_secs() / 86_400
        )));
    }
    let min_significance: Significance = match req.min_significance.trim() {
        "" => Significance::None,
        s => s.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "min_significance {s:?} is not one of none, low, medium, high"
            ))
        })?,
    };
    let profile_type = parse_profile_type(&req.profile_type)?;
    let top = match req.top {
        0 => DEFAULT_TOP,
        n => n.min(1000),
    };
    require_service(store, service).await?;

    let since = now_unix_nano().saturating_sub(range.as_nanos() as i64);
    let mut warnings = Vec::new();
    let records_a = cohort(store, service, since, &filter_a, "A", &mut warnings).await?;
    if records_a.is_empty() {
        return Err(empty_cohort(store, service, since, range, &filter_a, "A").await);
    }
    let records_b = cohort(store, service, since, &filter_b, "B", &mut warnings).await?;
    if records_b.is_empty() {
        return Err(empty_cohort(store, service, since, range, &filter_b, "B").await);
    }
    let a = with_off_cpu(&records_a, profile_type, "A", &mut warnings)?;
    let b = with_off_cpu(&records_b, profile_type, "B", &mut warnings)?;
    let options = CompareOptions {
        top: top as usize,
        min_significance,
        profile_type,
        ..CompareOptions::default()
    };
    let comparison = compare::compare(&a, &b, &options);
    let differential_folded = if req.differential {
        compare::differential_folded(&a, &b, profile_type)
    } else {
        String::new()
    };
    warnings.extend(comparison.warnings.iter().cloned());
    Ok(to_wire(
        comparison,
        profile_type,
        warnings,
        differential_folded,
    ))
}

/// The profile type a comparison asks for (`cpu` when unset).
fn parse_profile_type(text: &str) -> Result<ProfileType, Status> {
    match text.trim() {
        "" => Ok(ProfileType::Cpu),
        "memory" => Err(Status::invalid_argument(
            "profile_type memory: memory profiles are not collected yet; compare cpu, offcpu \
             or wall",
        )),
        s => s
            .parse()
            .map_err(|e: ProfileTypeError| Status::invalid_argument(e.to_string())),
    }
}

/// A cohort's profiles for `ty`: all of them for `cpu`; for `offcpu` and `wall` those
/// that recorded off-CPU time (thread precision, a trigger collecting `offcpu`), with a
/// warning for the others, and an error when none did.
fn with_off_cpu<'a>(
    records: &'a [TraceProfileRecord],
    ty: ProfileType,
    which: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<&'a Profile>, Status> {
    if !ty.needs_off_cpu() {
        return Ok(records.iter().map(|r| &r.profile).collect());
    }
    let kept: Vec<&Profile> = records
        .iter()
        .filter(|r| r.profile_types.contains(&ProfileType::Offcpu))
        .map(|r| &r.profile)
        .collect();
    let left_out = records.len() - kept.len();
    if kept.is_empty() {
        return Err(Status::failed_precondition(format!(
            "none of cohort {which}'s {} requests recorded off-CPU time, which a {ty} \
             comparison needs: off-CPU time is recorded by triggers collecting offcpu (the \
             default) for spans with a thread.id (thread precision); compare with \
             --type cpu, or collect again",
            records.len()
        )));
    }
    if left_out > 0 {
        warnings.push(format!(
            "{left_out} of cohort {which}'s {} requests recorded no off-CPU time (process \
             precision, or collected CPU only) and are left out of this {ty} comparison",
            records.len()
        ));
    }
    Ok(kept)
}

fn to_wire(
    c: Comparison,
    profile_type: ProfileType,
    warnings: Vec<String>,
    differential_folded: String,
) -> v1::CompareTraceProfilesResponse {
    let samples = |n: u64| i32::try_from(n).unwrap_or(i32::MAX);
    v1::CompareTraceProfilesResponse {
        hotspots: c
            .functions
            .iter()
            .map(|f| v1::DifferentialHotspot {
                function: f.function.clone(),
                delta_percentage: f.delta_pp as f32,
                cohort_a_cpu_ms: f.a_ms.round() as i64,
                cohort_b_cpu_ms: f.b_ms.round() as i64,
                significance: f.significance.to_string(),
                module: f.module.clone(),
                self_delta_percentage: f.self_delta_pp as f32,
                cohort_a_cpu_ms_per_request: f.a_ms,
                cohort_b_cpu_ms_per_request: f.b_ms,
                cohort_a_self_cpu_ms: f.a_self_ms,
                cohort_b_self_cpu_ms: f.b_self_ms,
                p_value: f.p_value,
                q_value: f.q_value,
                effect_size: f.effect_size,
                only_in: match f.only_in {
                    Some(compare::Cohort::A) => "a".into(),
                    Some(compare::Cohort::B) => "b".into(),
                    None => String::new(),
                },
            })
            .collect(),
        cohort_a_sample_count: samples(c.a.samples),
        cohort_b_sample_count: samples(c.b.samples),
        cohort_a_requests: c.a.requests as u32,
        cohort_b_requests: c.b.requests as u32,
        cohort_a_requests_with_samples: c.a.requests_with_value as u32,
        cohort_b_requests_with_samples: c.b.requests_with_value as u32,
        cohort_a_mean_cpu_ms: c.a.mean_ms,
        cohort_b_mean_cpu_ms: c.b.mean_ms,
        verdict: c.verdict.unwrap_or_default(),
        warnings,
        differential_folded,
        profile_type: profile_type.to_string(),
    }
}
