//! What the `otlp_protobuf` and `otlp_json` fuzz targets (`fuzz/`) check, on stable
//! and over seeded mutations of valid bodies: decoding a body as the OTLP/HTTP
//! receiver does ([`decode_body`]) and converting it never panics, the conversion
//! accounts for every span, and the spans it keeps are well formed.

use crate::AgentConfig;
use crate::otlp::convert;
use crate::otlp::tests::{kv, request, span, string};
use crate::receiver::http::{BodyError, Encoding, decode_body};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValueList};
use opentelemetry_proto::tonic::trace::v1::Status;
use prost::Message;
use std::io::Write;

/// The fuzz targets' JSON seeds.
const JSON_SEEDS: [&str; 4] = [
    include_str!("../../../../fuzz/seeds/otlp_json/official_example.json"),
    include_str!("../../../../fuzz/seeds/otlp_json/variants.json"),
    include_str!("../../../../fuzz/seeds/otlp_json/fix_ups.json"),
    include_str!("../../../../fuzz/seeds/otlp_json/rejected.json"),
];

/// Valid and invalid requests with every kind of attribute value: the protobuf
/// seeds (`fuzz/seeds/otlp_protobuf/` holds them encoded, written by
/// `write_protobuf_fuzz_seeds`).
fn seed_requests() -> Vec<ExportTraceServiceRequest> {
    let mut rich = span(1);
    rich.parent_span_id = vec![9; 8];
    rich.status = Some(Status {
        code: 2,
        message: "boom".into(),
    });
    rich.attributes = vec![
        kv("http.response.status_code", Value::IntValue(503)),
        kv("http.status_code", string("500")),
        kv("url.path", string("/checkout")),
        kv("http.target", string("/checkout?x=1")),
        kv("http.route", string("/checkout/{id}")),
        kv("thread.id", Value::IntValue(42)),
        kv("d", Value::DoubleValue(f64::NAN)),
        kv("b", Value::BytesValue(vec![0xde, 0xad])),
        kv(
            "arr",
            Value::ArrayValue(ArrayValue {
                values: vec![AnyValue {
                    value: Some(Value::KvlistValue(KeyValueList {
                        values: vec![kv("inner", Value::BoolValue(false))],
                    })),
                }],
            }),
        ),
    ];
    let mut zero_trace = span(2);
    zero_trace.trace_id = vec![0; 16];
    let mut backwards = span(3);
    backwards.end_time_unix_nano = backwards.start_time_unix_nano - 1;
    let mut short_parent = span(4);
    short_parent.parent_span_id = vec![1; 3];
    let resource = vec![
        kv("service.name", string("checkout")),
        kv("process.pid", string(" 1234 ")),
        kv("container.id", string("abc")),
        kv("k8s.pod.uid", string("pod")),
    ];
    vec![
        request(resource.clone(), vec![rich]),
        request(
            vec![kv("process.executable.name", string("java"))],
            vec![span(5), zero_trace, backwards, short_parent, span(6)],
        ),
        request(resource, vec![span(7); 3]),
    ]
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(body).unwrap();
    encoder.finish().unwrap()
}

/// The fuzz targets' property (`fuzz/fuzz_targets/otlp_check.rs`).
fn check(request: ExportTraceServiceRequest) {
    let total: usize = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    let conversion = convert(request, "node");
    assert_eq!(conversion.received(), total);
    assert_eq!(
        conversion.error_message().is_empty(),
        conversion.rejections.is_empty()
    );
    for span in &conversion.spans {
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.span_id.len(), 8);
        assert!(span.parent_span_id.is_empty() || span.parent_span_id.len() == 8);
        assert!(span.start_time_unix_nano > 0 && span.duration_ns >= 0);
        assert_eq!(span.node, "node");
        let attributes: serde_json::Value = serde_json::from_str(&span.attributes_json)
            .unwrap_or_else(|e| panic!("{:?}: {e}", span.attributes_json));
        assert!(attributes.is_object(), "{}", span.attributes_json);
        // Within the size limits, so the colony takes it.
        assert!(!crate::otlp::limit_span(&mut span.clone()), "{span:?}");
        assert!(span.service.len() <= coral_client::limits::MAX_SERVICE_NAME_BYTES);
        assert!(span.attributes_json.len() <= coral_client::limits::MAX_ATTRIBUTES_JSON_BYTES);
    }
}

/// Bytes to splice into JSON bodies: the structure and the forms the decoder fixes up.
const JSON_PIECES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "0",
    "-1",
    "1e999",
    "\"NaN\"",
    "\"\"",
    "\\u0000",
    "é",
    "{\"values\":[]}",
    "\"arrayValue\":{}",
    "\"kvlistValue\":{}",
    "\"doubleValue\":\"Infinity\"",
    "\"bytesValue\":\"-_\"",
    "\"kind\":\"SPAN_KIND_SERVER\"",
    "\"code\":\"STATUS_CODE_OK\"",
    "\"intValue\":\"9223372036854775808\"",
    "\"startTimeUnixNano\":\"18446744073709551615\"",
];

/// One to three random edits: delete, insert random or known bytes, copy a run
/// from elsewhere in the body, overwrite a byte, truncate.
fn mutate(rng: &mut fastrand::Rng, body: &[u8], pieces: &[&str]) -> Vec<u8> {
    let mut out = body.to_vec();
    for _ in 0..rng.usize(1..4) {
        let at = rng.usize(0..=out.len());
        match rng.u8(0..6) {
            0 if !out.is_empty() => {
                let end = (at + rng.usize(1..8)).min(out.len());
                out.drain(at.min(end)..end);
            }
            1 => {
                let piece = pieces[rng.usize(0..pieces.len())];
                out.splice(at..at, piece.bytes());
            }
            2 if !out.is_empty() => {
                let from = rng.usize(0..out.len());
                let end = (from + rng.usize(1..40)).min(out.len());
                let copy = out[from..end].to_vec();
                out.splice(at..at, copy);
            }
            3 if at < out.len() => out[at] = rng.u8(..),
            4 => out.truncate(at),
            _ => {
                let random: Vec<u8> = (0..rng.usize(1..5)).map(|_| rng.u8(..)).collect();
                out.splice(at..at, random);
            }
        }
    }
    out
}

#[test]
fn mutated_protobuf_bodies_decode_and_convert_cleanly() {
    let limit = AgentConfig::DEFAULT_MAX_REQUEST_BYTES;
    let seeds: Vec<Vec<u8>> = seed_requests().iter().map(Message::encode_to_vec).collect();
    for seed in &seeds {
        let request = decode_body(Bytes::from(seed.clone()), Encoding::Protobuf, false, limit);
        check(request.expect("a seed decodes"));
        let zipped = decode_body(Bytes::from(gzip(seed)), Encoding::Protobuf, true, limit);
        check(zipped.expect("a gzipped seed decodes"));
    }
    let mut rng = fastrand::Rng::with_seed(0x0f7e_b0d5);
    let (mut decoded, mut refused) = (0, 0);
    for i in 0..4000 {
        let seed = &seeds[rng.usize(0..seeds.len())];
        let body = mutate(&mut rng, seed, &["\u{0}", "\u{ff}"]);
        // One body in eight gzipped after the mutation, one in eight read as gzip
        // though it is not.
        let (body, gzip_flag) = match i % 8 {
            0 => (gzip(&body), true),
            4 => (body, true),
            _ => (body, false),
        };
        match decode_body(Bytes::from(body), Encoding::Protobuf, gzip_flag, limit) {
            Ok(request) => {
                decoded += 1;
                check(request);
            }
            Err(BodyError::Invalid(message)) => {
                refused += 1;
                assert!(message.starts_with("cannot "), "{message}");
            }
            Err(BodyError::TooLarge) => panic!("no mutation makes a body this large"),
        }
    }
    assert!(
        // Most mutations break the protobuf framing: about 3% still decode.
        decoded > 100 && refused > 1000,
        "{decoded} decoded, {refused} refused"
    );
}

#[test]
fn mutated_json_bodies_decode_and_convert_cleanly() {
    let limit = AgentConfig::DEFAULT_MAX_REQUEST_BYTES;
    for seed in JSON_SEEDS {
        let request = decode_body(Bytes::from(seed), Encoding::Json, false, limit);
        check(request.unwrap_or_else(|e| panic!("a seed decodes: {e:?}")));
    }
    let mut rng = fastrand::Rng::with_seed(0x0f7e_15a1);
    let (mut decoded, mut refused) = (0, 0);
    for _ in 0..4000 {
        let seed = JSON_SEEDS[rng.usize(0..JSON_SEEDS.len())];
        let body = mutate(&mut rng, seed.as_bytes(), JSON_PIECES);
        match decode_body(Bytes::from(body), Encoding::Json, false, limit) {
            Ok(request) => {
                decoded += 1;
                check(request);
            }
            Err(BodyError::Invalid(message)) => {
                refused += 1;
                assert!(message.starts_with("cannot decode"), "{message}");
            }
            Err(BodyError::TooLarge) => panic!("JSON is never too large here"),
        }
    }
    assert!(
        decoded > 200 && refused > 200,
        "{decoded} decoded, {refused} refused"
    );
}

/// Writes the protobuf seeds of the `otlp_protobuf` fuzz target (a first byte of
/// flags, 0: not gzipped, then the body): `cargo test -p coral-agent --
/// --ignored write_protobuf_fuzz_seeds`.
#[test]
#[ignore = "writes fuzz/seeds/otlp_protobuf/; run by hand when the seeds change"]
fn write_protobuf_fuzz_seeds() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/otlp_protobuf");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, request) in seed_requests().iter().enumerate() {
        let body = request.encode_to_vec();
        let mut plain = vec![0u8];
        plain.extend_from_slice(&body);
        std::fs::write(dir.join(format!("request{i}.bin")), plain).unwrap();
        let mut zipped = vec![1u8];
        zipped.extend_from_slice(&gzip(&body));
        std::fs::write(dir.join(format!("request{i}.gz.bin")), zipped).unwrap();
    }
}
