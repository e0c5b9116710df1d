//! Wire spans (`coral_client::v1::Span`) to domain records and back.

pub use coral_client::profile::{profile_from_wire, profile_to_wire};
use coral_client::v1;
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
        source: p.source.parse()?,
        profile: profile_from_wire(p.profile.unwrap_or_default())?,
    })
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
}
