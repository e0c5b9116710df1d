//! OTLP/HTTP receiver against a real HTTP client.

use super::{FakeColony, TestAgent, span_ids, test_config};
use crate::otlp::tests::{kv, request, span, string};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use reqwest::StatusCode;
use serde_json::Value as Json;
use std::io::Write;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// The official OTLP JSON example (opentelemetry-proto `examples/trace.json`), by hand.
const OFFICIAL_EXAMPLE: &str = r#"{
  "resourceSpans": [
    {
      "resource": {
        "attributes": [
          { "key": "service.name", "value": { "stringValue": "my.service" } }
        ]
      },
      "scopeSpans": [
        {
          "scope": {
            "name": "my.library",
            "version": "1.0.0",
            "attributes": [
              { "key": "my.scope.attribute", "value": { "stringValue": "some scope attribute" } }
            ]
          },
          "spans": [
            {
              "traceId": "5B8EFFF798038103D269B633813FC60C",
              "spanId": "EEE19B7EC3C1B174",
              "parentSpanId": "EEE19B7EC3C1B173",
              "name": "I'm a server span",
              "startTimeUnixNano": "1544712660000000000",
              "endTimeUnixNano": "1544712661000000000",
              "kind": 2,
              "attributes": [
                { "key": "my.span.attr", "value": { "stringValue": "some value" } }
              ]
            }
          ]
        }
      ]
    }
  ]
}"#;

async fn post(
    url: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Option<String>, Vec<u8>) {
    let mut request = reqwest::Client::new().post(url).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.expect("the agent answers");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.bytes().await.unwrap().to_vec();
    (status, content_type, body)
}

fn protobuf_request(n: u8) -> Vec<u8> {
    request(
        vec![kv("service.name", string("checkout"))],
        (1..=n).map(span).collect(),
    )
    .encode_to_vec()
}

/// The message of a `google.rpc.Status` error body (field 2), protobuf-encoded.
fn rpc_status_message(body: &[u8]) -> String {
    #[derive(Clone, PartialEq, Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    RpcStatus::decode(body)
        .expect("a google.rpc.Status")
        .message
}

#[tokio::test]
async fn protobuf_body_is_accepted_and_forwarded() {
    let colony = FakeColony::start().await;
    let agent = TestAgent::start(test_config(&colony.url())).await;

    let (status, content_type, body) =
        post(&agent.traces_url(), Some(PROTOBUF), protobuf_request(3)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some(PROTOBUF));
    let response = ExportTraceServiceResponse::decode(body.as_slice()).unwrap();
    assert_eq!(response.partial_success, None);

    colony.wait_for_spans(3).await;
    colony.with(|c| {
        assert_eq!(span_ids(&c.spans).len(), 3);
        assert!(c.spans.iter().all(|s| s.service == "checkout"));
        assert!(c.spans.iter().all(|s| s.node == "test-node"));
    });
    let stats = agent.stats.clone();
    agent.stop().await.unwrap();
    let counters = stats.snapshot();
    assert_eq!(
        (
            counters.spans_received,
            counters.spans_forwarded,
            counters.spans_buffered
        ),
        (3, 3, 0)
    );
}

#[tokio::test]
async fn json_body_like_the_official_example_is_accepted() {
    let colony = FakeColony::start().await;
    let agent = TestAgent::start(test_config(&colony.url())).await;

    let (status, content_type, body) = post(
        &agent.traces_url(),
        Some("application/json; charset=utf-8"),
        OFFICIAL_EXAMPLE.into(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type.as_deref(), Some(JSON));
    assert_eq!(
        serde_json::from_slice::<Json>(&body).unwrap(),
        serde_json::json!({})
    );

    colony.wait_for_spans(1).await;
    let span = colony.with(|c| c.spans[0].clone());
    assert_eq!(
        hex::encode(&span.trace_id),
        "5b8efff798038103d269b633813fc60c"
    );
    assert_eq!(hex::encode(&span.span_id), "eee19b7ec3c1b174");
    assert_eq!(hex::encode(&span.parent_span_id), "eee19b7ec3c1b173");
    assert_eq!(span.service, "my.service");
    assert_eq!(span.name, "I'm a server span");
    assert_eq!(span.kind, 2);
    assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
    assert_eq!(span.duration_ns, 1_000_000_000);
    assert_eq!(
        serde_json::from_str::<Json>(&span.attributes_json).unwrap(),
        serde_json::json!({"my.span.attr": "some value"})
    );
}

/// OTLP JSON variations receivers must accept: int64 as numbers as well as strings,
/// lowercase ids, unknown fields, a status, every AnyValue kind.
#[test]
fn otlp_json_variants_decode() {
    let json = r#"{
      "resourceSpans": [{
        "resource": {"attributes": [
          {"key": "service.name", "value": {"stringValue": "svc"}},
          {"key": "process.pid", "value": {"intValue": 1234}}
        ]},
        "futureField": {"ignored": true},
        "scopeSpans": [{
          "spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174",
            "parentSpanId": "",
            "name": "numbers",
            "startTimeUnixNano": 1544712660000000000,
            "endTimeUnixNano": "1544712660500000000",
            "kind": 3,
            "status": {"code": 2, "message": "failed"},
            "unknownSpanField": 1,
            "attributes": [
              {"key": "http.response.status_code", "value": {"intValue": "503"}},
              {"key": "thread.id", "value": {"intValue": 42}},
              {"key": "d", "value": {"doubleValue": 1.5}},
              {"key": "b", "value": {"boolValue": true}},
              {"key": "bytes", "value": {"bytesValue": "3q0="}},
              {"key": "arr", "value": {"arrayValue": {"values": [{"intValue": "1"}, {"stringValue": "x"}]}}},
              {"key": "kv", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"boolValue": false}}]}}},
              {"key": "empty", "value": {}}
            ]
          }]
        }]
      }]
    }"#;
    let request: ExportTraceServiceRequest = serde_json::from_str(json).expect("OTLP JSON decodes");
    let out = crate::otlp::convert(request, "n");
    assert!(out.rejections.is_empty(), "{:?}", out.rejections);
    let span = &out.spans[0];
    assert_eq!(span.pid, Some(1234));
    assert_eq!(span.duration_ns, 500_000_000);
    assert_eq!(
        (span.status_code, span.status_message.as_str()),
        (2, "failed")
    );
    assert_eq!(span.http_status, Some(503));
    assert_eq!(span.thread_id, Some(42));
    assert!(span.parent_span_id.is_empty());
    assert_eq!(
        serde_json::from_str::<Json>(&span.attributes_json).unwrap(),
        serde_json::json!({
            "d": 1.5, "b": true, "bytes": "dead", "arr": [1, "x"], "kv": {"k": false}, "empty": null
        })
    );
}

#[tokio::test]
async fn json_partial_success_reports_rejected_spans() {
    let colony = FakeColony::start().await;
    let agent = TestAgent::start(test_config(&colony.url())).await;
    let mut bad = span(2);
    bad.trace_id = vec![1; 5];
    let request = request(vec![], vec![span(1), bad]);
    let body = serde_json::to_vec(&request).unwrap();

    let (status, _, body) = post(&agent.traces_url(), Some(JSON), body).await;
    assert_eq!(status, StatusCode::OK);
    let body: Json = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["partialSuccess"]["rejectedSpans"], "1");
    let message = body["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("trace_id must be 16 bytes, got 5"),
        "{message}"
    );
    colony.wait_for_spans(1).await;
    assert_eq!(agent.counters().spans_rejected, 1);
}

#[tokio::test]
async fn gzip_bodies_are_accepted() {
    let colony = FakeColony::start().await;
    let agent = TestAgent::start(test_config(&colony.url())).await;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&protobuf_request(2)).unwrap();
    let response = reqwest::Client::new()
        .post(agent.traces_url())
        .header("content-type", PROTOBUF)
        .header("content-encoding", "gzip")
        .body(encoder.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    colony.wait_for_spans(2).await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_agent_keeps_serving() {
    let colony = FakeColony::start().await;
    let mut config = test_config(&colony.url());
    config.max_request_bytes = 4096;
    let agent = TestAgent::start(config).await;
    let url = agent.traces_url();

    // Wrong or missing content type: 415, naming the accepted types.
    for content_type in [Some("text/plain"), None] {
        let (status, ct, body) = post(&url, content_type, protobuf_request(1)).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(ct.as_deref(), Some("text/plain; charset=utf-8"));
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.contains("application/x-protobuf") && text.contains("application/json"),
            "{text}"
        );
    }

    // Garbage protobuf: 400, with a google.rpc.Status saying why.
    let (status, ct, body) = post(&url, Some(PROTOBUF), b"\xff\xff\xff garbage".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(ct.as_deref(), Some(PROTOBUF));
    assert!(
        rpc_status_message(&body).contains("cannot decode"),
        "{body:?}"
    );

    // Truncated protobuf: 400.
    let mut truncated = protobuf_request(3);
    truncated.truncate(truncated.len() - 7);
    let (status, _, _) = post(&url, Some(PROTOBUF), truncated).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Garbage JSON: 400 with a JSON Status naming the position.
    let (status, ct, body) = post(&url, Some(JSON), b"{\"resourceSpans\": [".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(ct.as_deref(), Some(JSON));
    let body: Json = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], 3);
    assert!(
        body["message"].as_str().unwrap().contains("line 1"),
        "{body}"
    );

    // Bad gzip: 400. Unsupported encoding: 415.
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", PROTOBUF)
        .header("content-encoding", "gzip")
        .body("not gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", PROTOBUF)
        .header("content-encoding", "br")
        .body(protobuf_request(1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Over the limit: by Content-Length, ...
    let big = request(
        vec![kv("service.name", string(&"x".repeat(5000)))],
        vec![span(1)],
    )
    .encode_to_vec();
    let (status, _, body) = post(&url, Some(PROTOBUF), big.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(rpc_status_message(&body).contains("4096 bytes"));
    // ... once decompressed, ...
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&big).unwrap();
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", PROTOBUF)
        .header("content-encoding", "gzip")
        .body(encoder.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // ... and without a Content-Length (chunked).
    assert_eq!(chunked_post(agent.http, &big).await, 413);

    // Wrong path and method, health.
    let client = reqwest::Client::new();
    let health = client
        .get(format!("http://{}/healthz", agent.http))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let get = client.get(&url).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(get.text().await.unwrap().contains("POST /v1/traces"));
    let metrics = client
        .post(format!("http://{}/v1/metrics", agent.http))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::NOT_FOUND);

    // Still serving.
    let (status, _, _) = post(&url, Some(PROTOBUF), protobuf_request(2)).await;
    assert_eq!(status, StatusCode::OK);
    colony.wait_for_spans(2).await;
    assert_eq!(agent.counters().spans_received, 2);
}

/// Posts `body` with `Transfer-Encoding: chunked` over a raw connection; returns the
/// status code.
async fn chunked_post(addr: std::net::SocketAddr, body: &[u8]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {PROTOBUF}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    // The agent may answer and close before reading everything.
    let _ = stream.write_all(&request).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}
