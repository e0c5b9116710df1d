//! Wire spans (`coral_client::v1::Span`) to domain records and back.

use coral_analysis::profile::ProfileType;
pub use coral_client::profile::{profile_from_wire, profile_to_wire};
use coral_client::{limits, v1};
use coral_store::{Precision, SpanId, SpanRecord, TraceId, TraceProfileRecord};

/// Validates and converts one wire span; the error says what is wrong with it.
pub fn span_from_wire(span: v1::Span) -> Result<SpanRecord, String> {
    let trace_id = TraceId::from_bytes(&span.trace_id).ok_or_else(|| {
        format!(
            "trace_id must be 16 bytes, not all zero (got {} bytes)",
            span.trace_id.len()
        )
    })?;
    let span_id = SpanId::from_bytes(&span.span_id).ok_or_else(|| {
        format!(
            "span_id must be 8 bytes, not all zero (got {} bytes)",
            span.span_id.len()
        )
    })?;
    let parent_span_id = match span.parent_span_id.len() {
        0 => None,
        _ => Some(SpanId::from_bytes(&span.parent_span_id).ok_or_else(|| {
            format!(
                "parent_span_id must be empty or 8 bytes (got {} bytes)",
                span.parent_span_id.len()
            )
        })?),
    };
    if span.duration_ns < 0 {
        return Err(format!(
            "duration must not be negative (got {}ns)",
            span.duration_ns
        ));
    }
    if span.start_time_unix_nano <= 0 {
        return Err("start time must be set".into());
    }
    if span.service.is_empty() {
        return Err("service must be set".into());
    }
    check_span_sizes(&span)?;
    let attributes = if span.attributes_json.is_empty() {
        serde_json::Map::new()
    } else {
        match serde_json::from_str(&span.attributes_json) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => return Err("attributes_json must be a JSON object".into()),
        }
    };
    Ok(SpanRecord {
        trace_id,
        span_id,
        parent_span_id,
        service: span.service,
        name: span.name,
        kind: span.kind,
        start_unix_nano: span.start_time_unix_nano,
        duration_ns: span.duration_ns,
        status_code: span.status_code,
        status_message: span.status_message,
        http_status: span.http_status,
        url: span.url,
        route: span.route,
        pid: span.pid,
        thread_id: span.thread_id,
        node: span.node,
        attributes,
    })
}

pub fn span_to_wire(span: SpanRecord) -> v1::Span {
    v1::Span {
        trace_id: span.trace_id.0.to_vec(),
        span_id: span.span_id.0.to_vec(),
        parent_span_id: span
            .parent_span_id
            .map(|p| p.0.to_vec())
            .unwrap_or_default(),
        service: span.service,
        name: span.name,
        kind: span.kind,
        start_time_unix_nano: span.start_unix_nano,
        duration_ns: span.duration_ns,
        status_code: span.status_code,
        status_message: span.status_message,
        http_status: span.http_status,
        url: span.url,
        route: span.route,
        pid: span.pid,
        thread_id: span.thread_id,
        node: span.node,
        // Not stored: only the agent uses them, to find the process on its node.
        container_id: None,
        k8s_pod_uid: None,
        attributes_json: if span.attributes.is_empty() {
            String::new()
        } else {
            serde_json::Value::Object(span.attributes).to_string()
        },
    }
}

/// Refuses a span over the size limits of [`limits`]. Coral agents cut spans to them
/// before sending (see `coral_agent::otlp::limit_span`), so only another client meets
/// this; it learns which field and by how much.
fn check_span_sizes(span: &v1::Span) -> Result<(), String> {
    let fields = [
        (
            "service",
            span.service.len(),
            limits::MAX_SERVICE_NAME_BYTES,
        ),
        ("name", span.name.len(), limits::MAX_SPAN_NAME_BYTES),
        (
            "status_message",
            span.status_message.len(),
            limits::MAX_STATUS_MESSAGE_BYTES,
        ),
        (
            "url",
            span.url.as_ref().map_or(0, String::len),
            limits::MAX_URL_BYTES,
        ),
        (
            "route",
            span.route.as_ref().map_or(0, String::len),
            limits::MAX_URL_BYTES,
        ),
        (
            "attributes_json",
            span.attributes_json.len(),
            limits::MAX_ATTRIBUTES_JSON_BYTES,
        ),
    ];
    for (what, len, max) in fields {
        if len > max {
            return Err(format!(
                "{}: cut it before sending (Coral agents do)",
                limits::too_long(what, len, max)
            ));
        }
    }
    Ok(())
}

/// Refuses a profile over the size limits of [`limits`] (stacks, frames, stack depth)
/// and cuts over-long frame names, before it is converted and stored.
pub fn check_profile_size(profile: &mut v1::Profile) -> Result<(), String> {
    let (stacks, frames) = (profile.stacks.len(), profile.frames.len());
    if stacks > limits::MAX_STACKS_PER_PROFILE {
        return Err(format!(
            "the profile has {stacks} stacks; the limit is {}",
            limits::MAX_STACKS_PER_PROFILE
        ));
    }
    if frames > limits::MAX_FRAMES_PER_PROFILE {
        return Err(format!(
            "the profile has {frames} frames; the limit is {}",
            limits::MAX_FRAMES_PER_PROFILE
        ));
    }
    if let Some(deep) = profile
        .stacks
        .iter()
        .map(|s| s.frame_ids.len())
        .find(|&n| n > limits::MAX_FRAMES_PER_STACK)
    {
        return Err(format!(
            "a stack has {deep} frames; the limit is {}",
            limits::MAX_FRAMES_PER_STACK
        ));
    }
    for frame in &mut profile.frames {
        limits::truncate(&mut frame.function, limits::MAX_FRAME_NAME_BYTES);
        limits::truncate(&mut frame.module, limits::MAX_FRAME_NAME_BYTES);
    }
    Ok(())
}

/// Validates and converts one wire trace profile.
pub fn trace_profile_from_wire(p: v1::TraceProfile) -> Result<TraceProfileRecord, String> {
    let trace_id = TraceId::from_bytes(&p.trace_id)
        .ok_or_else(|| format!("trace_id must be 16 bytes (got {})", p.trace_id.len()))?;
    let span_id = SpanId::from_bytes(&p.span_id)
        .ok_or_else(|| format!("span_id must be 8 bytes (got {})", p.span_id.len()))?;
    let precision = Precision::parse(&p.precision)
        .ok_or_else(|| format!("precision must be thread or process, not {:?}", p.precision))?;
    if p.frequency_hz == 0 {
        return Err("frequency_hz must be set".into());
    }
    if p.service.is_empty() {
        return Err("service must be set".into());
    }
    let source = p.source.parse()?;
    let profile = {
        let mut profile = p.profile.unwrap_or_default();
        check_profile_size(&mut profile)?;
        profile_from_wire(profile)?
    };
    let profile_types = collected_types(&p.profile_types, precision, &profile)?;
    // A truncated stack is one of the profile's CPU samples (not a wait or a memory
    // record, which readers do not count as samples): more is an agent's miscount,
    // kept to the profile's CPU samples so the share stays a share.
    let truncated_samples = p
        .truncated_samples
        .min(u32::try_from(profile.count(ProfileType::Cpu)).unwrap_or(u32::MAX));
    Ok(TraceProfileRecord {
        trace_id,
        span_id,
        service: p.service,
        span_name: p.span_name,
        start_unix_nano: p.start_time_unix_nano,
        duration_ns: p.duration_ns.max(0),
        node: p.node,
        pid: p.pid,
        thread_id: p.thread_id,
        precision,
        frequency_hz: p.frequency_hz,
        concurrent_requests: p.concurrent_requests,
        truncated_samples,
        lost_samples: p.lost_samples,
        source,
        profile,
        profile_types,
    })
}

/// The profile types a wire profile says it has, in [`ProfileType`]'s order: `cpu`
/// when none is listed (agents before off-CPU recording). Off-CPU time must be listed,
/// belongs to thread precision only (a process's idle threads would fill it), and is
/// the only type with off-CPU stacks. Memory must be listed to have memory stacks, at
/// either precision (at process precision it is the process's, as CPU samples are).
fn collected_types(
    names: &[String],
    precision: Precision,
    profile: &coral_analysis::Profile,
) -> Result<Vec<ProfileType>, String> {
    let mut types = vec![ProfileType::Cpu];
    for name in names {
        match name.parse::<ProfileType>().map_err(|e| e.to_string())? {
            ProfileType::Wall => return Err("profile_types: wall is not a collected type".into()),
            ty if !types.contains(&ty) => types.push(ty),
            _ => {}
        }
    }
    let off_cpu = types.contains(&ProfileType::Offcpu);
    if off_cpu && precision != Precision::Thread {
        return Err("off-CPU time needs thread precision (a span with a thread.id)".into());
    }
    if !off_cpu && profile.stacks.iter().any(|s| s.off_cpu_ns > 0) {
        return Err("the profile has off-CPU stacks but profile_types does not list offcpu".into());
    }
    if !types.contains(&ProfileType::Memory) && profile.stacks.iter().any(|s| s.memory_bytes > 0) {
        return Err("the profile has memory stacks but profile_types does not list memory".into());
    }
    types.sort_unstable();
    Ok(types)
}

pub fn trace_profile_to_wire(p: &TraceProfileRecord) -> v1::TraceProfile {
    v1::TraceProfile {
        trace_id: p.trace_id.0.to_vec(),
        span_id: p.span_id.0.to_vec(),
        service: p.service.clone(),
        span_name: p.span_name.clone(),
        start_time_unix_nano: p.start_unix_nano,
        duration_ns: p.duration_ns,
        node: p.node.clone(),
        pid: p.pid,
        thread_id: p.thread_id,
        precision: p.precision.as_str().to_string(),
        frequency_hz: p.frequency_hz,
        concurrent_requests: p.concurrent_requests,
        source: p.source.to_string(),
        profile: Some(profile_to_wire(&p.profile)),
        truncated_samples: p.truncated_samples,
        lost_samples: p.lost_samples,
        profile_types: p.profile_types.iter().map(ToString::to_string).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> v1::Span {
        v1::Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            service: "svc".into(),
            name: "GET /".into(),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            duration_ns: 5,
            http_status: Some(200),
            attributes_json: r#"{"k":"v"}"#.into(),
            ..Default::default()
        }
    }

    #[test]
    fn round_trips() {
        let record = span_from_wire(wire()).unwrap();
        assert_eq!(record.attributes["k"], "v");
        assert_eq!(span_to_wire(record), wire());
    }

    #[test]
    fn profiles_round_trip_and_bad_indices_are_refused() {
        use coral_analysis::profile::{Frame, Profile};
        let mut profile = Profile::new();
        profile.add(
            &[Frame::user("main", "svc"), Frame::kernel("schedule")],
            3,
            99,
        );
        let wire = profile_to_wire(&profile);
        assert!(wire.frames[1].kernel);
        assert_eq!(profile_from_wire(wire.clone()).unwrap(), profile);
        let mut bad = wire;
        bad.stacks[0].frame_ids.push(9);
        assert!(profile_from_wire(bad).unwrap_err().contains("frame 9"));
    }

    #[test]
    fn rejects_with_reasons() {
        type Mutation = fn(&mut v1::Span);
        let cases: [(Mutation, &str); 6] = [
            (|s| s.trace_id = vec![1; 5], "trace_id must be 16 bytes"),
            (|s| s.span_id = vec![0; 8], "span_id must be 8 bytes"),
            (|s| s.parent_span_id = vec![1; 3], "parent_span_id"),
            (|s| s.duration_ns = -1, "negative"),
            (|s| s.service.clear(), "service"),
            (|s| s.attributes_json = "[1]".into(), "JSON object"),
        ];
        for (mutate, expected) in cases {
            let mut span = wire();
            mutate(&mut span);
            let err = span_from_wire(span).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn spans_over_the_size_limits_are_refused_naming_the_limit() {
        type Mutation = fn(&mut v1::Span);
        let cases: [(Mutation, &str); 5] = [
            (
                |s| s.name = "n".repeat(2000),
                "name is 2000 bytes; the limit is 1024",
            ),
            (
                |s| s.service = "s".repeat(300),
                "service is 300 bytes; the limit is 256",
            ),
            (
                |s| s.url = Some("/".repeat(9000)),
                "url is 9000 bytes; the limit is 8192",
            ),
            (
                |s| s.status_message = "m".repeat(5000),
                "status_message is 5000 bytes; the limit is 4096",
            ),
            (
                |s| s.attributes_json = format!(r#"{{"k":"{}"}}"#, "v".repeat(70_000)),
                "attributes_json is 70008 bytes; the limit is 65536",
            ),
        ];
        for (mutate, expected) in cases {
            let mut span = wire();
            mutate(&mut span);
            let err = span_from_wire(span).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        // At the limits exactly: kept.
        let mut span = wire();
        span.name = "n".repeat(limits::MAX_SPAN_NAME_BYTES);
        span.url = Some("/".repeat(limits::MAX_URL_BYTES));
        assert!(span_from_wire(span).is_ok());
    }

    #[test]
    fn profiles_over_the_size_limits_are_refused_and_long_names_cut() {
        let frame = |name: String| v1::Frame {
            function: name,
            module: "m".into(),
            ..Default::default()
        };
        let stack = |frame_ids: Vec<u32>| v1::Stack {
            frame_ids,
            samples: 1,
            cpu_ns: 1,
            ..Default::default()
        };
        let mut deep = v1::Profile {
            frames: vec![frame("f".into())],
            stacks: vec![stack(vec![0; limits::MAX_FRAMES_PER_STACK + 1])],
        };
        let err = check_profile_size(&mut deep).unwrap_err();
        assert_eq!(err, "a stack has 1025 frames; the limit is 1024");

        let mut wide = v1::Profile {
            frames: vec![frame("f".into())],
            stacks: vec![stack(vec![0]); limits::MAX_STACKS_PER_PROFILE + 1],
        };
        let err = check_profile_size(&mut wide).unwrap_err();
        assert_eq!(err, "the profile has 100001 stacks; the limit is 100000");

        let mut long = v1::Profile {
            frames: vec![frame("x".repeat(10_000))],
            stacks: vec![stack(vec![0])],
        };
        check_profile_size(&mut long).unwrap();
        assert_eq!(long.frames[0].function.len(), limits::MAX_FRAME_NAME_BYTES);
        assert!(long.frames[0].function.ends_with(limits::TRUNCATION_MARKER));
    }

    #[test]
    fn sample_losses_round_trip_and_truncated_is_at_most_the_samples() {
        use coral_analysis::profile::{Frame, Profile};
        let mut profile = Profile::new();
        profile.add(&[Frame::user("main", "svc")], 10, 100);
        let wire = v1::TraceProfile {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            service: "svc".into(),
            precision: "thread".into(),
            frequency_hz: 100,
            source: format!("session:{}", uuid::Uuid::nil()),
            profile: Some(profile_to_wire(&profile)),
            truncated_samples: 4,
            lost_samples: 5_000_000_000,
            profile_types: vec!["cpu".into()],
            ..Default::default()
        };
        let record = trace_profile_from_wire(wire.clone()).unwrap();
        assert_eq!(
            (record.truncated_samples, record.lost_samples),
            (4, 5_000_000_000)
        );
        assert_eq!(trace_profile_to_wire(&record), wire);

        let miscounted = v1::TraceProfile {
            truncated_samples: 11,
            ..wire
        };
        let record = trace_profile_from_wire(miscounted).unwrap();
        assert_eq!(record.truncated_samples, 10);
    }

    #[test]
    fn off_cpu_time_is_listed_and_of_thread_precision_only() {
        use coral_analysis::profile::{Frame, Profile, WaitCause};
        let mut profile = Profile::new();
        profile.add(&[Frame::user("main", "svc")], 3, 100);
        profile.add_off_cpu(
            &[Frame::user("main", "svc")],
            WaitCause::Lock,
            2,
            900_000_000,
        );
        let wire = v1::TraceProfile {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            service: "svc".into(),
            precision: "thread".into(),
            frequency_hz: 100,
            source: format!("session:{}", uuid::Uuid::nil()),
            profile: Some(profile_to_wire(&profile)),
            profile_types: vec!["cpu".into(), "offcpu".into()],
            ..Default::default()
        };
        let record = trace_profile_from_wire(wire.clone()).unwrap();
        assert_eq!(
            record.profile_types,
            [ProfileType::Cpu, ProfileType::Offcpu]
        );
        assert_eq!(record.profile.breakdown().lock_ns, 900_000_000);
        assert_eq!(trace_profile_to_wire(&record), wire);

        for (bad, message) in [
            (
                v1::TraceProfile {
                    precision: "process".into(),
                    ..wire.clone()
                },
                "needs thread precision",
            ),
            (
                v1::TraceProfile {
                    profile_types: vec!["cpu".into()],
                    ..wire.clone()
                },
                "does not list offcpu",
            ),
            (
                v1::TraceProfile {
                    profile_types: vec!["gpu".into()],
                    ..wire.clone()
                },
                "unknown profile type",
            ),
        ] {
            let error = trace_profile_from_wire(bad).unwrap_err();
            assert!(error.contains(message), "{error}");
        }
    }

    #[test]
    fn memory_is_listed_and_of_either_precision() {
        use coral_analysis::profile::{Frame, Profile, page_frame};
        let main = Frame::user("main", "svc");
        let mut profile = Profile::new();
        profile.add(std::slice::from_ref(&main), 3, 100);
        profile.add_memory(std::slice::from_ref(&main), 4096, 3, 3 << 16);
        profile.add_memory(std::slice::from_ref(&main), 2 << 20, 1, 2 << 20);
        let wire = v1::TraceProfile {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            service: "svc".into(),
            precision: "thread".into(),
            frequency_hz: 100,
            source: format!("session:{}", uuid::Uuid::nil()),
            profile: Some(profile_to_wire(&profile)),
            profile_types: vec!["cpu".into(), "memory".into()],
            ..Default::default()
        };
        let pages: Vec<bool> = wire
            .profile
            .as_ref()
            .unwrap()
            .frames
            .iter()
            .map(|f| f.page)
            .collect();
        assert_eq!(pages, [false, true, true], "page frames travel as such");
        let record = trace_profile_from_wire(wire.clone()).unwrap();
        assert_eq!(
            record.profile_types,
            [ProfileType::Cpu, ProfileType::Memory]
        );
        assert_eq!(record.profile.frames[2], page_frame(2 << 20));
        assert_eq!(
            record.profile.memory_breakdown().resident_bytes,
            (3 << 16) + (2 << 20)
        );
        assert_eq!(record.profile.memory_breakdown().huge_page_bytes, 2 << 20);
        assert_eq!(record.samples(), 3, "memory records are not CPU samples");
        assert_eq!(trace_profile_to_wire(&record), wire);
        let miscounted = v1::TraceProfile {
            truncated_samples: 7,
            ..wire.clone()
        };
        assert_eq!(
            trace_profile_from_wire(miscounted)
                .unwrap()
                .truncated_samples,
            3,
            "at most the CPU samples, not the memory records"
        );

        let process = v1::TraceProfile {
            precision: "process".into(),
            thread_id: None,
            // Listed in any order, stored in the types' order.
            profile_types: vec!["memory".into(), "cpu".into()],
            ..wire.clone()
        };
        let record = trace_profile_from_wire(process).unwrap();
        assert_eq!(record.precision, Precision::Process);
        assert_eq!(
            record.profile_types,
            [ProfileType::Cpu, ProfileType::Memory]
        );
        assert_eq!(
            record.profile.total(ProfileType::Memory),
            (3 << 16) + (2 << 20)
        );

        for (bad, message) in [
            (
                v1::TraceProfile {
                    profile_types: vec!["cpu".into()],
                    ..wire.clone()
                },
                "does not list memory",
            ),
            (
                v1::TraceProfile {
                    profile_types: vec!["memory".into(), "wall".into()],
                    ..wire.clone()
                },
                "wall is not a collected type",
            ),
        ] {
            let error = trace_profile_from_wire(bad).unwrap_err();
            assert!(error.contains(message), "{error}");
        }
    }
}
