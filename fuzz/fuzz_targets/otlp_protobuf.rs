//! The OTLP/HTTP receiver's protobuf path on arbitrary bytes: the body (gunzipped
//! when the first byte is odd) decoded as an `ExportTraceServiceRequest` exactly as
//! `POST /v1/traces` does (`receiver::http::decode_body`), then converted to Coral
//! spans (`otlp::convert`, which the gRPC receiver runs too). Nothing may panic, and
//! the conversion must account for every span and produce well-formed spans.

#![no_main]

use coral_agent::AgentConfig;
use coral_agent::receiver::http::{Encoding, decode_body};
use libfuzzer_sys::fuzz_target;

#[path = "otlp_check.rs"]
mod otlp_check;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let body = bytes::Bytes::copy_from_slice(body);
    let limit = AgentConfig::DEFAULT_MAX_REQUEST_BYTES;
    if let Ok(request) = decode_body(body, Encoding::Protobuf, flags & 1 == 1, limit) {
        otlp_check::check(request);
    }
});
