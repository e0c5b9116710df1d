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
    let a = collected_for(&records_a, profile_type, "A", &mut warnings)?;
    let b = collected_for(&records_b, profile_type, "B", &mut warnings)?;
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
        s => s
            .parse()
            .map_err(|e: ProfileTypeError| Status::invalid_argument(e.to_string())),
    }
}

/// A cohort's profiles for `ty`: all of them for `cpu`; for the others those that
/// collected what `ty` reads, with a warning for the rest, and an error when none did:
/// off-CPU time for `offcpu` and `wall` (thread precision, a trigger collecting
/// `offcpu`), memory for `memory` (a trigger collecting `memory`). A request that did
/// not collect it has no value, not a zero one, so it must not dilute its cohort.
fn collected_for<'a>(
    records: &'a [TraceProfileRecord],
    ty: ProfileType,
    which: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<&'a Profile>, Status> {
    // Exhaustive, so that a new type must say what it needs.
    let (needed, what, how) = match ty {
        ProfileType::Cpu => return Ok(records.iter().map(|r| &r.profile).collect()),
        ProfileType::Offcpu | ProfileType::Wall => (
            ProfileType::Offcpu,
            "off-CPU time",
            "off-CPU time is recorded by triggers collecting offcpu (the default) for spans \
             with a thread.id (thread precision)",
        ),
        ProfileType::Memory => (
            ProfileType::Memory,
            "memory",
            "memory is recorded by triggers collecting memory (trace-trigger --types \
             cpu,memory)",
        ),
    };
    let kept: Vec<&Profile> = records
        .iter()
        .filter(|r| r.profile_types.contains(&needed))
        .map(|r| &r.profile)
        .collect();
    let left_out = records.len() - kept.len();
    if kept.is_empty() {
        return Err(Status::failed_precondition(format!(
            "none of cohort {which}'s {} requests recorded {what}, which a {ty} comparison \
             needs: {how}; compare with --type cpu, or collect again",
            records.len()
        )));
    }
    if left_out > 0 {
        let why = match needed {
            ProfileType::Offcpu => "process precision, or collected without offcpu",
            _ => "collected without memory",
        };
        warnings.push(format!(
            "{left_out} of cohort {which}'s {} requests recorded no {what} ({why}) and are \
             left out of this {ty} comparison",
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
                cohort_a_cpu_ms: f.a_per_request.round() as i64,
                cohort_b_cpu_ms: f.b_per_request.round() as i64,
                significance: f.significance.to_string(),
                module: f.module.clone(),
                self_delta_percentage: f.self_delta_pp as f32,
                cohort_a_cpu_ms_per_request: f.a_per_request,
                cohort_b_cpu_ms_per_request: f.b_per_request,
                cohort_a_self_cpu_ms: f.a_self_per_request,
                cohort_b_self_cpu_ms: f.b_self_per_request,
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
        cohort_a_mean_cpu_ms: c.a.mean_per_request,
        cohort_b_mean_cpu_ms: c.b.mean_per_request,
        verdict: c.verdict.unwrap_or_default(),
        warnings,
        differential_folded,
        profile_type: profile_type.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coral_analysis::profile::Frame;
    use coral_store::{Precision, ProfileSource, SpanId, TraceId};

    fn record(n: u8, precision: Precision, types: &[ProfileType]) -> TraceProfileRecord {
        let mut profile = Profile::new();
        profile.add(&[Frame::user("main", "svc")], u64::from(n), 99);
        if types.contains(&ProfileType::Memory) {
            profile.add_memory(&[Frame::user("main", "svc")], 4096, 1, 65_536);
        }
        TraceProfileRecord {
            trace_id: TraceId([n; 16]),
            span_id: SpanId([n; 8]),
            service: "svc".into(),
            span_name: "GET /".into(),
            start_unix_nano: 0,
            duration_ns: 1,
            node: "n".into(),
            pid: Some(1),
            thread_id: (precision == Precision::Thread).then_some(2),
            precision,
            frequency_hz: 99,
            concurrent_requests: 0,
            truncated_samples: 0,
            lost_samples: 0,
            source: ProfileSource::Session(uuid::Uuid::nil()),
            profile_types: types.to_vec(),
            profile,
        }
    }

    /// Which of `records` a `ty` comparison keeps (by their trace byte), and its
    /// warnings, or the error's message.
    fn kept(
        records: &[TraceProfileRecord],
        ty: ProfileType,
    ) -> Result<(Vec<u8>, Vec<String>), String> {
        let mut warnings = Vec::new();
        let kept = collected_for(records, ty, "A", &mut warnings).map_err(|s| {
            assert_eq!(s.code(), tonic::Code::FailedPrecondition);
            s.message().to_string()
        })?;
        let ids = kept
            .iter()
            .map(|p| {
                let i = records
                    .iter()
                    .position(|r| std::ptr::eq(&r.profile, *p))
                    .unwrap();
                records[i].trace_id.0[0]
            })
            .collect();
        Ok((ids, warnings))
    }

    #[test]
    fn cohorts_keep_the_requests_that_collected_the_type() {
        use ProfileType::{Cpu, Memory, Offcpu, Wall};
        let records = [
            record(1, Precision::Thread, &[Cpu]),
            record(2, Precision::Thread, &[Cpu, Offcpu]),
            record(3, Precision::Process, &[Cpu, Memory]),
            record(4, Precision::Thread, &[Cpu, Offcpu, Memory]),
        ];
        assert_eq!(kept(&records, Cpu).unwrap(), (vec![1, 2, 3, 4], vec![]));
        for ty in [Offcpu, Wall] {
            let (ids, warnings) = kept(&records, ty).unwrap();
            assert_eq!(ids, [2, 4], "{ty}");
            assert_eq!(warnings.len(), 1);
            assert!(warnings[0].starts_with("2 of cohort A's 4 requests recorded no off-CPU time"));
        }
        let (ids, warnings) = kept(&records, Memory).unwrap();
        assert_eq!(ids, [3, 4], "memory at either precision");
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("2 of cohort A's 4 requests recorded no memory"),
            "{warnings:?}"
        );
        assert!(warnings[0].contains("memory comparison"), "{warnings:?}");

        let error = kept(&records[..2], Memory).unwrap_err();
        assert!(
            error.starts_with("none of cohort A's 2 requests recorded memory"),
            "{error}"
        );
        assert!(error.contains("collecting memory"), "{error}");
        let error = kept(&records[2..3], Offcpu).unwrap_err();
        assert!(error.contains("recorded off-CPU time"), "{error}");
    }

    #[test]
    fn memory_comparisons_are_asked_for_like_the_others() {
        assert_eq!(parse_profile_type("").unwrap(), ProfileType::Cpu);
        assert_eq!(parse_profile_type(" memory ").unwrap(), ProfileType::Memory);
        assert_eq!(parse_profile_type("wall").unwrap(), ProfileType::Wall);
        let status = parse_profile_type("heap").unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
