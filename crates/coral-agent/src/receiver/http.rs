//! OTLP/HTTP: `POST /v1/traces` with an `ExportTraceServiceRequest` encoded as
//! protobuf (`application/x-protobuf`) or OTLP JSON (`application/json`), optionally
//! `Content-Encoding: gzip`; plus `GET /healthz`.
//!
//! The answer uses the request's encoding. Error bodies are a `google.rpc.Status`
//! (protobuf or JSON, as the OTLP specification asks, so that exporters can log the
//! message) when the request's encoding is known, and plain text otherwise:
//!
//! | status | when |
//! | --- | --- |
//! | 400 | the body cannot be read, decompressed or decoded |
//! | 413 | the body (compressed or not) is over `max_request_bytes`, or it has more spans than the whole buffer |
//! | 415 | the Content-Type or Content-Encoding is not supported |
//! | 503 + `Retry-After` | the buffer is full: retry later |
//! | 404 / 405 | another path (e.g. `/v1/metrics`) / another method |

use super::{Intake, Refusal};
use crate::AgentError;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use std::future::Future;
use std::io::Read;
use tokio::net::TcpListener;

/// The OTLP/HTTP path for traces.
pub const TRACES_PATH: &str = "/v1/traces";
/// Seconds a sender is asked to wait when the buffer is full.
pub const RETRY_AFTER_SECS: u32 = 2;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

#[derive(Debug, Clone)]
struct HttpState {
    intake: Intake,
    max_request_bytes: usize,
}

/// The OTLP/HTTP routes over an [`Intake`].
pub fn router(intake: Intake, max_request_bytes: usize) -> Router {
    let state = HttpState {
        intake,
        max_request_bytes,
    };
    Router::new()
        .route(TRACES_PATH, post(export).fallback(wrong_method))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(not_found)
        .with_state(state)
}

/// Serves OTLP/HTTP on `listener` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    intake: Intake,
    max_request_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::debug!("OTLP/HTTP receiver on {addr}");
    }
    // TCP_NODELAY: a multi-segment answer must not wait for the sender's delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(intake, max_request_bytes))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| AgentError::Listener {
            receiver: "OTLP/HTTP",
            source,
        })
}

/// The encoding of an OTLP/HTTP body (from its Content-Type).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// Why [`decode_body`] refused a body.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Decompressed, it is larger than the limit (HTTP 413).
    TooLarge,
    /// It cannot be decompressed or decoded (HTTP 400); the message says why.
    Invalid(String),
}

/// What the receiver does with a request body once it is read: gunzip it (at most
/// `limit` bytes) when `gzip`, then decode it as `encoding`. Public (hidden) for the
/// fuzz targets in `fuzz/`, which run exactly this on arbitrary bytes.
#[doc(hidden)]
pub fn decode_body(
    body: Bytes,
    encoding: Encoding,
    gzip: bool,
    limit: usize,
) -> Result<ExportTraceServiceRequest, BodyError> {
    let body = if gzip {
        match gunzip(&body, limit) {
            Ok(Some(body)) => Bytes::from(body),
            Ok(None) => return Err(BodyError::TooLarge),
            Err(err) => {
                return Err(BodyError::Invalid(format!(
                    "cannot decompress the gzip body: {err}"
                )));
            }
        }
    } else {
        body
    };
    match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body).map_err(|e| {
            BodyError::Invalid(format!(
                "cannot decode the body as a protobuf ExportTraceServiceRequest: {e}"
            ))
        }),
        Encoding::Json => crate::otlp::decode_json(&body).map_err(|e| {
            BodyError::Invalid(format!(
                "cannot decode the body as an OTLP JSON ExportTraceServiceRequest: {e}"
            ))
        }),
    }
}

/// `google.rpc.Status`, the error body OTLP/HTTP asks for.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

async fn export(State(state): State<HttpState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let encoding = match content_type(&parts.headers) {
        Ok(encoding) => encoding,
        Err(response) => return response,
    };
    let fail = |status, message: String| {
        tracing::debug!(%status, "refused an OTLP/HTTP request: {message}");
        failure(status, Some(encoding), message)
    };
    let gzip = match content_encoding(&parts.headers) {
        Ok(gzip) => gzip,
        Err(message) => return fail(StatusCode::UNSUPPORTED_MEDIA_TYPE, message),
    };
    let limit = state.max_request_bytes;
    let too_large = || {
        format!(
            "the request body is larger than the agent's limit of {limit} bytes; send \
             smaller batches (e.g. lower the exporter's max export batch size)"
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return fail(StatusCode::PAYLOAD_TOO_LARGE, too_large());
    }
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            return fail(StatusCode::PAYLOAD_TOO_LARGE, too_large());
        }
        Err(err) => {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {err}"),
            );
        }
    };
    let request = match decode_body(body, encoding, gzip, limit) {
        Ok(request) => request,
        Err(BodyError::TooLarge) => return fail(StatusCode::PAYLOAD_TOO_LARGE, too_large()),
        Err(BodyError::Invalid(message)) => return fail(StatusCode::BAD_REQUEST, message),
    };
    match state.intake.accept(request) {
        Ok(response) => success(encoding, &response),
        Err(refusal @ Refusal::BufferFull(_)) => {
            let mut response = failure(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(encoding),
                refusal.message(),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            response
        }
        Err(refusal @ Refusal::TooManySpans(_)) => {
            fail(StatusCode::PAYLOAD_TOO_LARGE, refusal.message())
        }
    }
}

/// The body encoding named by Content-Type (parameters such as charset ignored).
#[allow(clippy::result_large_err)]
fn content_type(headers: &HeaderMap) -> Result<Encoding, Response> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let media = value
        .as_deref()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match media.as_deref() {
        Some(PROTOBUF) | Some("application/protobuf") => Ok(Encoding::Protobuf),
        Some(JSON) => Ok(Encoding::Json),
        _ => {
            let got = match value {
                Some(v) => format!("Content-Type {v:?} is not supported"),
                None => "the request has no Content-Type".to_string(),
            };
            Err(failure(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
                format!(
                    "{got}: send OTLP traces as Content-Type {PROTOBUF} (protobuf) or {JSON} \
                     (OTLP JSON)"
                ),
            ))
        }
    }
}

/// Whether the body is gzip-compressed; an error names an unsupported encoding.
fn content_encoding(headers: &HeaderMap) -> Result<bool, String> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    let value = String::from_utf8_lossy(value.as_bytes());
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(false),
        "gzip" | "x-gzip" => Ok(true),
        _ => Err(format!(
            "Content-Encoding {value:?} is not supported: send the body uncompressed or gzip-compressed"
        )),
    }
}

/// Decompresses at most `limit` bytes; `Ok(None)` when the result would be larger.
fn gunzip(body: &[u8], limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    flate2::read::MultiGzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)?;
    Ok((out.len() <= limit).then_some(out))
}

fn success(encoding: Encoding, response: &ExportTraceServiceResponse) -> Response {
    match encoding {
        Encoding::Protobuf => {
            ([(header::CONTENT_TYPE, PROTOBUF)], response.encode_to_vec()).into_response()
        }
        Encoding::Json => {
            // proto3 JSON: int64 as a decimal string, an absent message left out.
            let body = match &response.partial_success {
                Some(partial) => serde_json::json!({
                    "partialSuccess": {
                        "rejectedSpans": partial.rejected_spans.to_string(),
                        "errorMessage": partial.error_message,
                    }
                }),
                None => serde_json::json!({}),
            };
            ([(header::CONTENT_TYPE, JSON)], body.to_string()).into_response()
        }
    }
}

/// An error answer: `google.rpc.Status` in the request's encoding, else plain text.
fn failure(status: StatusCode, encoding: Option<Encoding>, message: String) -> Response {
    let code = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => 3, // INVALID_ARGUMENT
        StatusCode::PAYLOAD_TOO_LARGE => 8,                                // RESOURCE_EXHAUSTED
        StatusCode::SERVICE_UNAVAILABLE => 14,                             // UNAVAILABLE
        StatusCode::NOT_FOUND => 5,                                        // NOT_FOUND
        _ => 2,                                                            // UNKNOWN
    };
    let (content_type, body) = match encoding {
        Some(Encoding::Protobuf) => (PROTOBUF, RpcStatus { code, message }.encode_to_vec()),
        Some(Encoding::Json) => (
            JSON,
            serde_json::json!({ "code": code, "message": message })
                .to_string()
                .into_bytes(),
        ),
        None => (
            "text/plain; charset=utf-8",
            format!("{message}\n").into_bytes(),
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, content_type)],
        Body::from(body),
    )
        .into_response()
}

async fn wrong_method() -> Response {
    failure(
        StatusCode::METHOD_NOT_ALLOWED,
        None,
        format!("use POST {TRACES_PATH} to send OTLP traces"),
    )
}

async fn not_found(request: Request) -> Response {
    failure(
        StatusCode::NOT_FOUND,
        None,
        format!(
            "no such endpoint {}: this agent receives OTLP traces at POST {TRACES_PATH} \
             (logs and metrics are not collected)",
            request.uri().path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn content_types_are_matched_loosely() {
        let ct = |v| content_type(&headers(&[("content-type", v)])).ok();
        assert_eq!(ct("application/x-protobuf"), Some(Encoding::Protobuf));
        assert_eq!(ct("Application/JSON; charset=utf-8"), Some(Encoding::Json));
        assert_eq!(ct("text/plain"), None);
        assert!(content_type(&HeaderMap::new()).is_err());
    }

    #[test]
    fn content_encodings() {
        let ce = |v| content_encoding(&headers(&[("content-encoding", v)]));
        assert_eq!(ce("gzip"), Ok(true));
        assert_eq!(ce("identity"), Ok(false));
        assert!(ce("br").unwrap_err().contains("\"br\" is not supported"));
        assert_eq!(content_encoding(&HeaderMap::new()), Ok(false));
    }

    #[test]
    fn gunzip_stops_at_the_limit() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&[7u8; 10_000]).unwrap();
        let compressed = encoder.finish().unwrap();
        assert_eq!(gunzip(&compressed, 10_000).unwrap().unwrap().len(), 10_000);
        assert_eq!(gunzip(&compressed, 9_999).unwrap(), None);
        assert!(gunzip(b"not gzip at all", 100).is_err());
    }
}
