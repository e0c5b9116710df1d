//! Resource limits on inputs (coral_client::limits; the table in docs/reliability.md):
//! oversized span fields are cut with a marker and counted, oversized calls and too
//! many active triggers are refused with a message naming the limit.

use crate::cli::coral;
use crate::harness::{Backend, Sampling, Stack, otlp_request, otlp_string};
use crate::ingest::{Transport, send_request};
use crate::metrics::scrape;
use coral_client::{limits, v1};
use coral_sampler::FakeSampler;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::Arc;

async fn stack() -> Stack {
    Stack::start_with(
        Backend::Sqlite,
        Sampling::Fake(Arc::new(FakeSampler::new())),
    )
    .await
}

/// A span with a 5,000-byte name, a 20 KB URL, a 10 KB attribute and 200 attributes in
/// all is stored, cut to the limits with the marker, and the agent counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_span_fields_are_cut_with_a_marker_and_counted() {
    let stack = stack().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let trace_id = vec![0x1e; 16];
    let mut attributes = vec![
        otlp_string("url.path", format!("/{}", "p".repeat(20_000))),
        otlp_string("db.statement", "s".repeat(10_000)),
    ];
    attributes.extend((0..198).map(|i| otlp_string(&format!("a{i:03}"), "v")));
    let request = otlp_request(
        Some("big-svc"),
        vec![Span {
            trace_id: trace_id.clone(),
            span_id: vec![1; 8],
            name: "n".repeat(5000),
            kind: 2,
            start_time_unix_nano: now,
            end_time_unix_nano: now + 1_000_000,
            attributes,
            ..Default::default()
        }],
    );
    let resp = stack.export(request).await.unwrap();
    assert!(
        resp.partial_success.is_none_or(|p| p.rejected_spans == 0),
        "an oversized span must be kept, not refused"
    );
    let spans = stack.wait_for_trace(&hex::encode(&trace_id), 1).await;
    let span = &spans[0];
    let marker = limits::TRUNCATION_MARKER;
    assert_eq!(span.name.len(), limits::MAX_SPAN_NAME_BYTES);
    assert!(span.name.ends_with(marker), "{}", span.name);
    let url = span.url.as_deref().expect("url kept");
    assert_eq!(url.len(), limits::MAX_URL_BYTES);
    assert!(url.ends_with(marker));
    let attributes: serde_json::Value = serde_json::from_str(&span.attributes_json).unwrap();
    let statement = attributes["db.statement"].as_str().unwrap();
    assert_eq!(statement.len(), limits::MAX_ATTRIBUTE_VALUE_BYTES);
    assert!(statement.ends_with(marker));
    // 199 attributes after url.path became the URL: 128 kept, 71 dropped and counted.
    assert_eq!(attributes[limits::DROPPED_ATTRIBUTES_KEY], 71);
    let metrics = scrape(stack.agents[0].metrics).await;
    assert_eq!(metrics.sum("coral_agent_spans_truncated_total", &[]), 1.0);
    assert_eq!(metrics.sum("coral_agent_spans_rejected_total", &[]), 0.0);
}

/// `IngestSpans` and `IngestTraceProfiles` calls over the per-call counts are refused
/// with `INVALID_ARGUMENT` naming the limit, and the colony counts the spans refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colony_refuses_ingest_calls_over_the_count_limits() {
    let stack = stack().await;
    let mut agent = coral_client::agent_client(coral_client::connect(&stack.colony).await.unwrap());
    let span = |i: usize| v1::Span {
        trace_id: {
            let mut id = vec![0x2e; 8];
            id.extend_from_slice(&(i as u64 + 1).to_be_bytes());
            id
        },
        span_id: vec![1; 8],
        service: "flood".into(),
        name: "x".into(),
        start_time_unix_nano: 1_700_000_000_000_000_000,
        ..Default::default()
    };
    let n = limits::MAX_SPANS_PER_INGEST + 1;
    let status = agent
        .ingest_spans(v1::IngestSpansRequest {
            agent_id: "flood-agent".into(),
            spans: (0..n).map(span).collect(),
        })
        .await
        .expect_err("a call over the span limit is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "the request has 50001 spans; the limit is 50000: send smaller batches (agents: \
         --batch-size)"
    );
    let profile = v1::TraceProfile {
        trace_id: vec![3; 16],
        span_id: vec![3; 8],
        service: "flood".into(),
        precision: "thread".into(),
        frequency_hz: 99,
        source: format!("session:{}", uuid::Uuid::new_v4()),
        ..Default::default()
    };
    let status = agent
        .ingest_trace_profiles(v1::IngestTraceProfilesRequest {
            agent_id: "flood-agent".into(),
            profiles: vec![profile; limits::MAX_PROFILES_PER_INGEST + 1],
        })
        .await
        .expect_err("a call over the profile limit is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("has 10001 profiles; the limit is 10000"),
        "{}",
        status.message()
    );
    // A call at the limit is taken.
    let ok = agent
        .ingest_spans(v1::IngestSpansRequest {
            agent_id: "flood-agent".into(),
            spans: (0..limits::MAX_SPANS_PER_INGEST).map(span).collect(),
        })
        .await
        .expect("a call at the limit is accepted")
        .into_inner();
    assert_eq!(ok.accepted, limits::MAX_SPANS_PER_INGEST as u64);
    let metrics = scrape(stack.colony_metrics).await;
    assert_eq!(
        metrics.sum(
            "coral_colony_spans_ingested_total",
            &[("result", "rejected")]
        ),
        n as f64
    );
}

/// The eleventh active trigger of a service is refused (RESOURCE_EXHAUSTED, with how
/// to free one); cancelling one makes room; other services are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_triggers_per_service_are_bounded() {
    let stack = stack().await;
    for service in ["busy-svc", "other-svc"] {
        let trace_id = send_request(&stack, service, &[Transport::Grpc]).await;
        stack.wait_for_trace(&trace_id, 2).await;
    }
    let mut profile = stack.profile().await;
    let start = |service: &str| v1::StartTraceProfileTriggerRequest {
        service_id: service.into(),
        min_duration_ms: 1000,
        ..Default::default()
    };
    let mut ids = Vec::new();
    for _ in 0..limits::MAX_ACTIVE_TRIGGERS_PER_SERVICE {
        let r = profile
            .start_trace_profile_trigger(start("busy-svc"))
            .await
            .expect("a trigger within the limit starts")
            .into_inner();
        ids.push(r.trigger_id);
    }
    let status = profile
        .start_trace_profile_trigger(start("busy-svc"))
        .await
        .expect_err("the trigger over the limit is refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status
            .message()
            .contains("service busy-svc has 10 active triggers; the limit is 10: cancel one"),
        "{}",
        status.message()
    );
    // The CLI shows the colony's message as it is.
    let colony = stack.colony.clone();
    let cli = tokio::task::spawn_blocking(move || {
        coral(
            Some(&colony),
            &[
                "profile",
                "trace-trigger",
                "--service",
                "busy-svc",
                "--min-duration",
                "1s",
            ],
        )
    })
    .await
    .unwrap();
    assert!(!cli.ok);
    assert!(
        cli.stderr.contains("the limit is 10: cancel one"),
        "{}",
        cli.stderr
    );
    // Another service has its own allowance.
    profile
        .start_trace_profile_trigger(start("other-svc"))
        .await
        .expect("another service's trigger starts");
    // Cancelling one makes room.
    profile
        .cancel_trace_profile_trigger(v1::CancelTraceProfileTriggerRequest {
            trigger_id: ids[0].clone(),
        })
        .await
        .unwrap();
    profile
        .start_trace_profile_trigger(start("busy-svc"))
        .await
        .expect("a trigger starts once one was cancelled");
}

/// A trace longer than `MAX_TRACE_SPANS` comes back as its first spans, marked
/// truncated, and the CLI says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_trace_returns_at_most_the_span_limit() {
    let stack = stack().await;
    let mut agent = coral_client::agent_client(coral_client::connect(&stack.colony).await.unwrap());
    let trace_id = vec![0x3e; 16];
    let start = 1_700_000_000_000_000_000i64;
    let n = coral_store::MAX_TRACE_SPANS + 1;
    let spans = (0..n)
        .map(|i| v1::Span {
            trace_id: trace_id.clone(),
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            service: "long-trace".into(),
            name: format!("step {i}"),
            start_time_unix_nano: start + i as i64,
            ..Default::default()
        })
        .collect();
    let r = agent
        .ingest_spans(v1::IngestSpansRequest {
            agent_id: "a".into(),
            spans,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, n as u64);
    let mut query = stack.query().await;
    let trace = query
        .get_trace(v1::GetTraceRequest {
            trace_id: hex::encode(&trace_id),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(trace.truncated);
    assert_eq!(trace.spans.len(), coral_store::MAX_TRACE_SPANS);
    assert_eq!(trace.spans[0].name, "step 0", "the earliest spans are kept");
    assert_eq!(
        trace.spans.last().unwrap().name,
        format!("step {}", coral_store::MAX_TRACE_SPANS - 1)
    );
    let colony = stack.colony.clone();
    let cli = tokio::task::spawn_blocking(move || {
        coral(
            Some(&colony),
            &["query", "trace", &hex::encode(&trace_id), "-o", "json"],
        )
    })
    .await
    .unwrap();
    assert!(cli.ok, "{}", cli.stderr);
    assert!(
        cli.stderr
            .contains("the trace has more than 10000 spans; these are the first 10000"),
        "{}",
        cli.stderr
    );
}
