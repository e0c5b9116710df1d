//! The OTLP/HTTP receiver's JSON path on arbitrary bytes: the body decoded by the
//! agent's lenient OTLP JSON decoder exactly as `POST /v1/traces` does
//! (`receiver::http::decode_body`, which calls `otlp::decode_json`), then converted
//! to Coral spans. Nothing may panic, and the conversion must account for every span
//! and produce well-formed spans. (Gzip is covered by `otlp_protobuf`.)

#![no_main]

use coral_agent::AgentConfig;
use coral_agent::receiver::http::{Encoding, decode_body};
use libfuzzer_sys::fuzz_target;

#[path = "otlp_check.rs"]
mod otlp_check;

fuzz_target!(|data: &[u8]| {
    let body = bytes::Bytes::copy_from_slice(data);
    let limit = AgentConfig::DEFAULT_MAX_REQUEST_BYTES;
    if let Ok(request) = decode_body(body, Encoding::Json, false, limit) {
        otlp_check::check(request);
    }
});
