//! OTLP/gRPC receiver against the real OTLP client from opentelemetry-proto.

use super::{FakeColony, TestAgent, span_ids, test_config};
use crate::otlp::tests::{kv, request, span, string};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tonic::codec::CompressionEncoding;

#[tokio::test]
async fn one_invalid_span_is_a_partial_success() {
    let colony = FakeColony::start().await;
    let agent = TestAgent::start(test_config(&colony.url())).await;
    let mut client = TraceServiceClient::connect(agent.grpc_url()).await.unwrap();

    let mut bad = span(2);
    bad.span_id = vec![0; 8];
    let batch = request(
        vec![kv("service.name", string("payments"))],
        vec![span(1), bad, span(3)],
    );
    let response = client.export(batch).await.unwrap().into_inner();
    let partial = response.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial
            .error_message
            .contains("span 1 of scope 0 of resource 0: span_id must not be all zeros"),
        "{}",
        partial.error_message
    );

    colony.wait_for_spans(2).await;
    let ids = colony.with(|c| span_ids(&c.spans));
    assert_eq!(ids, [hex::encode([1; 8]), hex::encode([3; 8])].into());
    let counters = agent.counters();
    assert_eq!((counters.spans_received, counters.spans_rejected), (3, 1));
}

#[tokio::test]
async fn gzip_requests_are_accepted() {
    let colony = FakeColony::start().await;
    let agent = TestAgent::start(test_config(&colony.url())).await;
    let mut client = TraceServiceClient::connect(agent.grpc_url())
        .await
        .unwrap()
        .send_compressed(CompressionEncoding::Gzip);
    let response = client
        .export(request(vec![], vec![span(1), span(2)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.partial_success, None);
    colony.wait_for_spans(2).await;
}

#[tokio::test]
async fn requests_over_the_size_limit_are_refused_and_serving_continues() {
    let colony = FakeColony::start().await;
    let mut config = test_config(&colony.url());
    config.max_request_bytes = 4096;
    let agent = TestAgent::start(config).await;
    let mut client = TraceServiceClient::connect(agent.grpc_url()).await.unwrap();

    let big = request(
        vec![kv("service.name", string(&"x".repeat(5000)))],
        vec![span(1)],
    );
    let status = client.export(big).await.expect_err("too large");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");

    client
        .export(request(vec![], vec![span(7)]))
        .await
        .expect("a normal request still works");
    colony.wait_for_spans(1).await;
}
