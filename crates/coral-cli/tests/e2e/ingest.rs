//! Spans from real OpenTelemetry SDKs (gRPC, HTTP/protobuf, HTTP/JSON) through the
//! agent into the colony, on both stores; bad input refused without losing good input.

use crate::harness::{Backend, Stack, produce};
use coral_client::v1;
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::time::Duration;

/// The `process.pid` of the test requests: above Linux's largest pid (2^22), so no
/// agent ever finds the process running.
pub const NO_SUCH_PID: i64 = 999_999_999;

#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

fn exporter(stack: &Stack, transport: Transport) -> SpanExporter {
    match transport {
        Transport::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{}", stack.otlp_grpc))
            .build(),
        Transport::HttpProtobuf | Transport::HttpJson => SpanExporter::builder()
            .with_http()
            .with_protocol(match transport {
                Transport::HttpJson => Protocol::HttpJson,
                _ => Protocol::HttpBinary,
            })
            .with_endpoint(format!("http://{}/v1/traces", stack.otlp_http))
            .build(),
    }
    .expect("build OTLP exporter")
}

/// One request (a server span with HTTP attributes and a child span) from an SDK
/// exporting through every given transport; returns its trace id.
pub async fn send_request(stack: &Stack, service: &str, transports: &[Transport]) -> String {
    let mut builder = SdkTracerProvider::builder().with_resource(
        Resource::builder()
            .with_service_name(service.to_string())
            .with_attribute(KeyValue::new("process.pid", NO_SUCH_PID))
            .build(),
    );
    for &t in transports {
        builder = builder.with_simple_exporter(exporter(stack, t));
    }
    let provider = builder.build();
    produce(move || {
        let tracer = provider.tracer("coral-e2e");
        let span = tracer
            .span_builder("POST /checkout")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.response.status_code", 503i64),
                KeyValue::new("http.route", "/checkout"),
                KeyValue::new("url.path", "/checkout"),
                KeyValue::new("thread.id", 77i64),
                KeyValue::new("customer.tier", "gold"),
            ])
            .start(&tracer);
        let trace_id = span.span_context().trace_id().to_string();
        let cx = Context::current_with_span(span);
        let mut child = tracer.start_with_context("validate_signature", &cx);
        std::thread::sleep(Duration::from_millis(5));
        child.end();
        cx.span().end();
        provider.shutdown().expect("flush spans");
        trace_id
    })
    .await
}

fn assert_request_fields(spans: &[v1::Span], service: &str) {
    let root = spans
        .iter()
        .find(|s| s.parent_span_id.is_empty())
        .expect("root span");
    assert_eq!(root.service, service);
    assert_eq!(root.name, "POST /checkout");
    assert_eq!(root.kind, 2, "server");
    assert_eq!(root.http_status, Some(503));
    assert_eq!(root.route.as_deref(), Some("/checkout"));
    assert_eq!(root.url.as_deref(), Some("/checkout"));
    assert_eq!(root.pid, Some(NO_SUCH_PID));
    assert_eq!(root.thread_id, Some(77));
    assert_eq!(root.node, "test-node");
    let attributes: serde_json::Value = serde_json::from_str(&root.attributes_json).unwrap();
    assert_eq!(attributes["customer.tier"], "gold");
    assert!(
        attributes.get("http.route").is_none(),
        "extracted fields are not repeated"
    );
    let child = spans
        .iter()
        .find(|s| s.name == "validate_signature")
        .expect("child span");
    assert_eq!(child.parent_span_id, root.span_id);
    assert!(child.duration_ns >= 5_000_000, "{}", child.duration_ns);
    assert!(child.start_time_unix_nano >= root.start_time_unix_nano);
}

async fn round_trip(backend: Backend) {
    let stack = Stack::start(backend).await;
    for (transport, service) in [
        (Transport::Grpc, "svc-grpc"),
        (Transport::HttpProtobuf, "svc-http-protobuf"),
        (Transport::HttpJson, "svc-http-json"),
    ] {
        let trace_id = send_request(&stack, service, &[transport]).await;
        let spans = stack.wait_for_trace(&trace_id, 2).await;
        assert_eq!(spans.len(), 2, "{transport:?}");
        assert_request_fields(&spans, service);
    }
    // The same spans exported over gRPC and HTTP at once are stored once.
    let trace_id = send_request(
        &stack,
        "svc-both",
        &[Transport::Grpc, Transport::HttpProtobuf],
    )
    .await;
    stack.wait_for_trace(&trace_id, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stack.wait_for_trace(&trace_id, 2).await.len(),
        2,
        "duplicates stored once"
    );

    let mut query = stack.query().await;
    let resp = query
        .query_traces(v1::QueryTracesRequest {
            service: "svc-grpc".into(),
            status_code_pattern: "5xx".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.spans.len(),
        1,
        "one request, its child is not a request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_sdk_spans_round_trip_on_sqlite() {
    round_trip(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: run `cargo xtask test`, which provides one"]
async fn otel_sdk_spans_round_trip_on_postgres() {
    round_trip(Backend::Postgres).await;
}

/// An OTLP/gRPC batch with invalid spans: those are refused with reasons, the valid
/// one is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_spans_are_refused_and_valid_ones_kept() {
    use opentelemetry_proto::tonic::trace::v1::Span;

    let stack = Stack::start(Backend::Sqlite).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let span = |trace_id: Vec<u8>, span_id: Vec<u8>, start: u64, end: u64| Span {
        trace_id,
        span_id,
        name: "GET /".into(),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        ..Default::default()
    };
    let good_trace = vec![7u8; 16];
    let request = crate::harness::otlp_request(
        Some("mixed"),
        vec![
            span(vec![1; 5], vec![1; 8], now, now + 1), // short trace id
            span(vec![2; 16], vec![], now, now + 1),    // missing span id
            span(vec![3; 16], vec![3; 8], now, now - 1_000), // negative duration
            span(good_trace.clone(), vec![4; 8], now, now + 1_000_000),
        ],
    );
    let resp = stack.export(request).await.expect("partial success is OK");
    let partial = resp.partial_success.expect("partial success reported");
    assert_eq!(partial.rejected_spans, 3);
    assert!(!partial.error_message.is_empty());
    let spans = stack.wait_for_trace(&hex::encode(good_trace), 1).await;
    assert_eq!(spans[0].service, "mixed");
}

/// The colony's own API refuses bad requests with the right code and a message that
/// says what to fix, and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colony_refuses_bad_queries_and_keeps_serving() {
    let stack = Stack::start(Backend::Sqlite).await;
    let trace_id = send_request(&stack, "known-svc", &[Transport::Grpc]).await;
    stack.wait_for_trace(&trace_id, 2).await;
    let mut q = stack.query().await;
    let code_and_message = |r: Result<tonic::Response<_>, tonic::Status>| {
        let status = r
            .map(|_: tonic::Response<v1::QueryTracesResponse>| ())
            .unwrap_err();
        (status.code(), status.message().to_string())
    };

    let bad_id = q
        .get_trace(v1::GetTraceRequest {
            trace_id: "xyz".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), tonic::Code::InvalidArgument);
    assert!(
        bad_id.message().contains("32 hex digits"),
        "{}",
        bad_id.message()
    );

    let unknown = q
        .get_trace(v1::GetTraceRequest {
            trace_id: "ab".repeat(16),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let base = v1::QueryTracesRequest {
        service: "known-svc".into(),
        ..Default::default()
    };
    let (code, msg) = code_and_message(
        q.query_traces(v1::QueryTracesRequest {
            service: "nope".into(),
            ..base.clone()
        })
        .await,
    );
    assert_eq!(code, tonic::Code::NotFound);
    assert!(msg.contains("known services: known-svc"), "{msg}");
    let (code, msg) = code_and_message(
        q.query_traces(v1::QueryTracesRequest {
            status_code_pattern: "6xx".into(),
            ..base.clone()
        })
        .await,
    );
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.contains("5xx"), "{msg}");
    let (code, _) = code_and_message(
        q.query_traces(v1::QueryTracesRequest {
            limit: 1_000_000,
            ..base.clone()
        })
        .await,
    );
    assert_eq!(code, tonic::Code::InvalidArgument);

    let ingest = coral_client::agent_client(coral_client::connect(&stack.colony).await.unwrap())
        .ingest_spans(v1::IngestSpansRequest {
            agent_id: "raw".into(),
            spans: vec![v1::Span {
                trace_id: vec![1; 16],
                span_id: vec![1; 8],
                service: "raw".into(),
                start_time_unix_nano: 1,
                duration_ns: -5,
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ingest.accepted, ingest.rejected), (0, 1));
    assert!(
        ingest.error_message.contains("negative"),
        "{}",
        ingest.error_message
    );

    // Still serving.
    let ok = q.query_traces(base).await.unwrap().into_inner();
    assert_eq!(ok.spans.len(), 1);
}

/// A colony stops gracefully even while an agent holds its command stream open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colony_stops_while_an_agent_watches_commands() {
    let dir = tempfile::tempdir().unwrap();
    let store = coral_colony::open_store(&coral_colony::StoreConfig::Embedded {
        data_dir: dir.path().to_path_buf(),
    })
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(coral_colony::serve(listener, store, async {
        let _ = stopped.await;
    }));
    let mut agent = coral_client::agent_client(coral_client::connect(&addr).await.unwrap());
    let mut commands = agent
        .watch_commands(v1::WatchCommandsRequest {
            agent_id: "watcher".into(),
        })
        .await
        .unwrap()
        .into_inner();
    stop.send(()).unwrap();
    let finished = tokio::time::timeout(Duration::from_secs(30), server).await;
    assert!(
        finished.is_ok(),
        "the colony did not stop while a command stream was open"
    );
    // The stream may still hold what was sent first (the set of active triggers);
    // then it ends.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = commands.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ended");
}
