//! The uplink: buffering while the colony is away, the buffer bound, registration and
//! heartbeats, flushing at shutdown.

use super::{
    FakeColony, TestAgent, numbered_spans, span_ids, test_config, unused_addr, wait_for_counters,
};
use crate::otlp::tests::request;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use reqwest::StatusCode;
use std::time::Duration;

async fn post_protobuf(agent: &TestAgent, first: u32, n: u32) -> reqwest::Response {
    reqwest::Client::new()
        .post(agent.traces_url())
        .header("content-type", "application/x-protobuf")
        .body(request(vec![], numbered_spans(first, n)).encode_to_vec())
        .send()
        .await
        .expect("the agent answers")
}

#[tokio::test]
async fn spans_wait_for_a_colony_that_is_down_at_start() {
    let addr = unused_addr().await;
    let agent = TestAgent::start(test_config(&addr.to_string())).await;
    for i in 0..5 {
        let response = post_protobuf(&agent, i * 100, 100).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(agent.counters().spans_buffered, 500);

    let colony = FakeColony::start_on(addr).await;
    colony
        .wait_until("all 500 span ids", |c| span_ids(&c.spans).len() == 500)
        .await;
    colony
        .wait_until(
            "registration and a heartbeat with the final counters",
            |c| {
                c.registrations.iter().any(|r| {
                    r.agent_id == agent.agent_id && r.node == "test-node" && !r.version.is_empty()
                }) && c.heartbeats.iter().any(|h| {
                    h.counters
                        .is_some_and(|c| c.spans_forwarded == 500 && c.spans_buffered == 0)
                })
            },
        )
        .await;
    let counters = agent.counters();
    assert_eq!((counters.spans_received, counters.spans_dropped), (500, 0));
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_full_buffer_refuses_with_retryable_errors_and_counts_drops() {
    let mut config = test_config(&unused_addr().await.to_string());
    config.max_buffered_spans = 5;
    let agent = TestAgent::start(config).await;

    assert_eq!(post_protobuf(&agent, 0, 3).await.status(), StatusCode::OK);

    // HTTP: 503 with Retry-After.
    let response = post_protobuf(&agent, 3, 3).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "2");
    assert_eq!(agent.counters().spans_dropped, 3);

    // gRPC: UNAVAILABLE.
    let mut client = TraceServiceClient::connect(agent.grpc_url()).await.unwrap();
    let status = client
        .export(request(vec![], numbered_spans(6, 3)))
        .await
        .expect_err("buffer full");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("retry later"), "{status:?}");
    assert_eq!(agent.counters().spans_dropped, 6);

    // A request larger than the whole buffer: not retryable.
    let response = post_protobuf(&agent, 9, 6).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let status = client
        .export(request(vec![], numbered_spans(9, 6)))
        .await
        .expect_err("never fits");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("--max-buffered-spans"),
        "{status:?}"
    );

    // Two more spans still fit.
    assert_eq!(post_protobuf(&agent, 20, 2).await.status(), StatusCode::OK);

    // At shutdown the colony is still away: the buffered spans are given up, counted.
    let stats = agent.stats.clone();
    agent.stop().await.unwrap();
    let counters = stats.snapshot();
    assert_eq!(counters.spans_received, 3 + 3 + 3 + 6 + 6 + 2);
    assert_eq!(counters.spans_dropped, 3 + 3 + 6 + 6 + 5);
    assert_eq!((counters.spans_buffered, counters.spans_forwarded), (0, 0));
}

#[tokio::test]
async fn the_agent_registers_again_when_the_colony_forgets_it() {
    let colony = FakeColony::start().await;
    let agent = TestAgent::start(test_config(&colony.url())).await;
    colony
        .wait_until("a registration and a heartbeat", |c| {
            c.registrations.len() == 1 && !c.heartbeats.is_empty()
        })
        .await;
    colony.forget_agents();
    colony
        .wait_until("a second registration", |c| c.registrations.len() >= 2)
        .await;
    colony
        .wait_until("heartbeats after it", |c| c.known.contains(&agent.agent_id))
        .await;
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn spans_survive_a_colony_restart() {
    let colony = FakeColony::start().await;
    let addr = colony.addr;
    let agent = TestAgent::start(test_config(&colony.url())).await;
    assert_eq!(post_protobuf(&agent, 0, 10).await.status(), StatusCode::OK);
    colony.wait_for_spans(10).await;
    colony.stop().await;

    assert_eq!(post_protobuf(&agent, 10, 10).await.status(), StatusCode::OK);
    // Give the uplink time to notice the outage (not required for correctness).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let restarted = FakeColony::start_on(addr).await;
    restarted
        .wait_until("the 10 later spans", |c| {
            let ids = span_ids(&c.spans);
            (10..20u32).all(|i| ids.contains(&hex::encode([i.to_be_bytes(), [0xcc; 4]].concat())))
        })
        .await;
    restarted
        .wait_until("a registration with the new colony", |c| {
            c.registrations.iter().any(|r| r.agent_id == agent.agent_id)
        })
        .await;
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_flushes_the_buffer() {
    let colony = FakeColony::start().await;
    let mut config = test_config(&colony.url());
    config.flush_interval = Duration::from_secs(3600);
    config.batch_size = 1000;
    let agent = TestAgent::start(config).await;
    assert_eq!(post_protobuf(&agent, 0, 10).await.status(), StatusCode::OK);
    wait_for_counters(&agent, |c| c.spans_buffered == 10).await;

    agent.stop().await.unwrap();
    // serve() returned: the spans must be there already.
    assert_eq!(colony.with(|c| span_ids(&c.spans).len()), 10);
}

#[tokio::test]
async fn large_requests_are_split_into_batches() {
    let colony = FakeColony::start().await;
    let mut config = test_config(&colony.url());
    config.batch_size = 100;
    let agent = TestAgent::start(config).await;
    assert_eq!(
        post_protobuf(&agent, 0, 1050).await.status(),
        StatusCode::OK
    );
    colony
        .wait_until("1050 span ids", |c| span_ids(&c.spans).len() == 1050)
        .await;
    assert!(colony.with(|c| c.ingest_calls) >= 11);
    agent.stop().await.unwrap();
}

/// Not a pass/fail test: prints the agent's throughput into the fake colony.
/// `cargo test -p coral-agent --release -- --ignored throughput --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    const SENDERS: u32 = 4;
    const REQUESTS: u32 = 100;
    const SPANS: u32 = 512;
    let colony = FakeColony::start().await;
    let agent = TestAgent::start(test_config(&colony.url())).await;
    let url = agent.grpc_url();
    let start = std::time::Instant::now();
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let url = url.clone();
        senders.push(tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(url).await.unwrap();
            for r in 0..REQUESTS {
                let first = (sender * REQUESTS + r) * SPANS;
                let mut spans = numbered_spans(first, SPANS);
                for span in &mut spans {
                    span.attributes = vec![
                        crate::otlp::tests::kv(
                            "http.route",
                            crate::otlp::tests::string("/api/items/{id}"),
                        ),
                        crate::otlp::tests::kv(
                            "http.response.status_code",
                            opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(200),
                        ),
                        crate::otlp::tests::kv(
                            "thread.id",
                            opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(7),
                        ),
                        crate::otlp::tests::kv(
                            "net.peer.name",
                            crate::otlp::tests::string("db.internal"),
                        ),
                    ];
                }
                loop {
                    match client.export(request(vec![], spans.clone())).await {
                        Ok(_) => break,
                        Err(status) if status.code() == tonic::Code::Unavailable => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(status) => panic!("{status:?}"),
                    }
                }
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let total = (SENDERS * REQUESTS * SPANS) as usize;
    colony.wait_for_spans(total).await;
    let elapsed = start.elapsed();
    println!(
        "{total} spans in {elapsed:?}: {:.0} spans/s",
        total as f64 / elapsed.as_secs_f64()
    );
    agent.stop().await.unwrap();
}
