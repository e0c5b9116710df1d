//! OTLP to Coral: flattens an OTLP `ExportTraceServiceRequest` into Coral's wire spans
//! ([`coral_client::v1::Span`]), rejecting invalid spans one by one.
//!
//! Pure conversion, no I/O. For each span:
//!
//! * `trace_id` must be 16 bytes and `span_id` 8 bytes, neither all zeros;
//!   `parent_span_id` empty or 8 bytes (8 zero bytes, which some instrumentations send
//!   for a root, count as empty). `start_time_unix_nano` must be set and fit an `i64`;
//!   `end_time_unix_nano` must not be before it.
//! * `service` is the resource attribute `service.name`, else `unknown_service` (or
//!   `unknown_service:<process.executable.name>`, as the OTel SDKs do); `pid` is the
//!   resource attribute `process.pid` (an int, or a string holding one);
//!   `container_id` and `k8s_pod_uid` are the resource attributes `container.id` and
//!   `k8s.pod.uid` (non-empty strings), which tell the profiler in which pid namespace
//!   `pid` and `thread_id` are.
//! * From the span attributes: `thread_id` = `thread.id`; `http_status` =
//!   `http.response.status_code`, else `http.status_code` (int or numeric string);
//!   `url` = `url.path`, else `http.target`; `route` = `http.route`. An attribute whose
//!   value became one of those fields is removed; every other span attribute (including
//!   an unused fallback such as `http.target` next to `url.path`, or a value of the
//!   wrong type) goes into `attributes_json`, one JSON object: strings, bools, ints and
//!   doubles as themselves (non-finite doubles as the strings `NaN`, `Infinity`,
//!   `-Infinity`), arrays as arrays, kvlists as objects, bytes as hex strings, an
//!   empty value as `null`.
//! * Events, links and resource attributes other than the four above are not kept.
//! * Sizes are bounded ([`coral_client::limits`]): the service name, span name, URL,
//!   route, status message and attribute keys and values are cut with a
//!   `…[truncated]` marker, attributes beyond the count or the JSON size are dropped and
//!   counted in `coral.dropped_attributes`; [`Conversion::truncated`] counts the spans
//!   cut. An over-long `container.id` or `k8s.pod.uid` is ignored.
//!
//! [`decode_json`] reads OTLP JSON bodies, fixing up the proto3 JSON forms that
//! opentelemetry-proto's serde impls refuse.

use coral_client::limits;
use coral_client::v1;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use std::cell::Cell;
use std::fmt;

/// The service name used when a resource has no `service.name`.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Longest `container.id` or `k8s.pod.uid` taken (real ones are 64 and 36 bytes).
const MAX_ID_BYTES: usize = 256;

/// How many rejection reasons [`Conversion::error_message`] spells out.
const REASONS_IN_MESSAGE: usize = 3;

/// The result of converting one request: the valid spans and why the others were
/// refused.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Conversion {
    pub spans: Vec<v1::Span>,
    pub rejections: Vec<Rejection>,
    /// How many of `spans` were cut to the size limits (see [`limit_span`]).
    pub truncated: usize,
}

/// One refused span: where it was in the request and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Index in `resource_spans`.
    pub resource: usize,
    /// Index in that resource's `scope_spans`.
    pub scope: usize,
    /// Index in that scope's `spans`.
    pub span: usize,
    pub reason: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "span {} of scope {} of resource {}: {}",
            self.span, self.scope, self.resource, self.reason
        )
    }
}

impl Conversion {
    /// Every span of the request, valid or not.
    pub fn received(&self) -> usize {
        self.spans.len() + self.rejections.len()
    }

    /// For OTLP `partial_success.error_message`: empty when nothing was rejected, else
    /// how many spans were refused and the first few reasons.
    pub fn error_message(&self) -> String {
        if self.rejections.is_empty() {
            return String::new();
        }
        let mut message = format!(
            "rejected {} of {} spans: ",
            self.rejections.len(),
            self.received()
        );
        for (i, rejection) in self.rejections.iter().take(REASONS_IN_MESSAGE).enumerate() {
            if i > 0 {
                message.push_str("; ");
            }
            message.push_str(&rejection.to_string());
        }
        if self.rejections.len() > REASONS_IN_MESSAGE {
            message.push_str(&format!(
                "; and {} more",
                self.rejections.len() - REASONS_IN_MESSAGE
            ));
        }
        message
    }
}

/// Converts a whole request. Invalid spans are rejected individually; valid spans of
/// the same request are kept.
pub fn convert(request: ExportTraceServiceRequest, node: &str) -> Conversion {
    let total: usize = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    let mut out = Conversion {
        spans: Vec::with_capacity(total),
        rejections: Vec::new(),
        truncated: 0,
    };
    for (r, resource_spans) in request.resource_spans.into_iter().enumerate() {
        let resource = ResourceInfo::new(resource_spans.resource.as_ref());
        for (s, scope_spans) in resource_spans.scope_spans.into_iter().enumerate() {
            for (i, span) in scope_spans.spans.into_iter().enumerate() {
                match convert_span(span, &resource, node) {
                    Ok((span, truncated)) => {
                        out.truncated += usize::from(truncated);
                        out.spans.push(span);
                    }
                    Err(reason) => out.rejections.push(Rejection {
                        resource: r,
                        scope: s,
                        span: i,
                        reason,
                    }),
                }
            }
        }
    }
    out
}

/// Decodes an OTLP JSON `ExportTraceServiceRequest`.
///
/// opentelemetry-proto's serde support reads the usual OTLP JSON (the official
/// example, hex ids in either case, int64 as strings or numbers, unknown fields), but
/// refuses some encodings that proto3 JSON allows and real senders produce: an empty
/// `arrayValue`/`kvlistValue` written as `{}` (the Collector omits empty lists),
/// `doubleValue` as a string (`"NaN"`, `"Infinity"`, `"1.5"`), enum names
/// (`"SPAN_KIND_SERVER"`), `null` for a default value, and unpadded or URL-safe
/// base64 in `bytesValue`. When the direct decoding fails, the body is read as
/// generic JSON, those forms are rewritten, and decoding is tried again; if that
/// fails too, the first error (which has a line and column) is returned.
pub fn decode_json(body: &[u8]) -> Result<ExportTraceServiceRequest, serde_json::Error> {
    let error = match serde_json::from_slice(body) {
        Ok(request) => return Ok(request),
        Err(error) => error,
    };
    let Ok(mut tree) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Err(error);
    };
    normalize_json(&mut tree);
    serde_json::from_value(tree).map_err(|_| error)
}

/// Rewrites the proto3 JSON forms that opentelemetry-proto's serde impls refuse.
fn normalize_json(value: &mut serde_json::Value) {
    use serde_json::Value as J;
    match value {
        J::Array(items) => items.iter_mut().for_each(normalize_json),
        J::Object(map) => {
            map.retain(|_, v| !v.is_null());
            for (key, v) in map.iter_mut() {
                match (key.as_str(), &*v) {
                    ("kind", J::String(name)) => {
                        if let Some(kind) = span_kind(name) {
                            *v = J::from(kind);
                        }
                    }
                    ("code", J::String(name)) => {
                        if let Some(code) = status_code(name) {
                            *v = J::from(code);
                        }
                    }
                    ("arrayValue" | "kvlistValue", J::Object(list))
                        if !list.contains_key("values") =>
                    {
                        *v = serde_json::json!({ "values": [] });
                    }
                    ("bytesValue", J::String(b64)) => *v = J::String(standard_base64(b64)),
                    _ => {}
                }
                normalize_json(v);
            }
            // A double as a string: a number if it is one; NaN and the infinities,
            // which JSON numbers cannot hold, as the strings Coral stores them as.
            if let Some(J::String(text)) = map.get("doubleValue") {
                let replacement = match text
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                {
                    Some(number) => ("doubleValue", J::Number(number)),
                    None => ("stringValue", J::String(text.clone())),
                };
                map.remove("doubleValue");
                map.insert(replacement.0.to_string(), replacement.1);
            }
        }
        _ => {}
    }
}

fn span_kind(name: &str) -> Option<i32> {
    Some(match name {
        "SPAN_KIND_UNSPECIFIED" => 0,
        "SPAN_KIND_INTERNAL" => 1,
        "SPAN_KIND_SERVER" => 2,
        "SPAN_KIND_CLIENT" => 3,
        "SPAN_KIND_PRODUCER" => 4,
        "SPAN_KIND_CONSUMER" => 5,
        _ => return None,
    })
}

fn status_code(name: &str) -> Option<i32> {
    Some(match name {
        "STATUS_CODE_UNSET" => 0,
        "STATUS_CODE_OK" => 1,
        "STATUS_CODE_ERROR" => 2,
        _ => return None,
    })
}

/// URL-safe and/or unpadded base64 as the padded standard alphabet.
fn standard_base64(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !out.len().is_multiple_of(4) {
        out.push('=');
    }
    out
}

/// What every span of one resource shares.
struct ResourceInfo {
    service: String,
    /// `service` was cut to [`limits::MAX_SERVICE_NAME_BYTES`].
    service_truncated: bool,
    pid: Option<i64>,
    container_id: Option<String>,
    k8s_pod_uid: Option<String>,
}

impl ResourceInfo {
    fn new(resource: Option<&Resource>) -> Self {
        let attributes = resource.map(|r| r.attributes.as_slice()).unwrap_or(&[]);
        let mut service = None;
        let mut executable = None;
        let mut pid = None;
        let (mut container_id, mut k8s_pod_uid) = (None, None);
        for kv in attributes {
            match kv.key.as_str() {
                "service.name" => {
                    if let Some(name) = as_str(kv).filter(|n| !n.is_empty()) {
                        service = Some(name);
                    }
                }
                "process.executable.name" => {
                    executable = as_str(kv).filter(|n| !n.is_empty());
                }
                "process.pid" => pid = as_int(kv).or(pid),
                "container.id" => container_id = as_id(kv).or(container_id),
                "k8s.pod.uid" => k8s_pod_uid = as_id(kv).or(k8s_pod_uid),
                _ => {}
            }
        }
        let mut service = match (service, executable) {
            (Some(name), _) => name.to_string(),
            (None, Some(exe)) => format!("{UNKNOWN_SERVICE}:{exe}"),
            (None, None) => UNKNOWN_SERVICE.to_string(),
        };
        let service_truncated = limits::truncate(&mut service, limits::MAX_SERVICE_NAME_BYTES);
        // An id longer than any real one cannot name a container: ignored.
        let id = |id: Option<&str>| id.filter(|id| id.len() <= MAX_ID_BYTES).map(str::to_string);
        Self {
            service,
            service_truncated,
            pid,
            container_id: id(container_id),
            k8s_pod_uid: id(k8s_pod_uid),
        }
    }
}

fn value(kv: &KeyValue) -> Option<&Value> {
    kv.value.as_ref()?.value.as_ref()
}

fn as_str(kv: &KeyValue) -> Option<&str> {
    match value(kv)? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// A non-empty string, without surrounding whitespace.
fn as_id(kv: &KeyValue) -> Option<&str> {
    as_str(kv).map(str::trim).filter(|s| !s.is_empty())
}

/// An int, or a string holding one.
fn as_int(kv: &KeyValue) -> Option<i64> {
    match value(kv)? {
        Value::IntValue(i) => Some(*i),
        Value::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn check_id(id: &[u8], len: usize, what: &str) -> Result<(), String> {
    if id.len() != len {
        return Err(format!("{what} must be {len} bytes, got {}", id.len()));
    }
    if id.iter().all(|b| *b == 0) {
        return Err(format!("{what} must not be all zeros"));
    }
    Ok(())
}

/// Indices of the span attributes that became fields.
#[derive(Default)]
struct Picks {
    thread_id: Option<(usize, i64)>,
    status: Option<(usize, i32)>,
    legacy_status: Option<(usize, i32)>,
    url_path: Option<usize>,
    http_target: Option<usize>,
    route: Option<usize>,
}

impl Picks {
    fn find(attributes: &[KeyValue]) -> Self {
        let mut picks = Self::default();
        let status = |kv: &KeyValue| as_int(kv).and_then(|v| i32::try_from(v).ok());
        for (i, kv) in attributes.iter().enumerate() {
            match kv.key.as_str() {
                "thread.id" => {
                    if let Some(tid) = as_int(kv) {
                        picks.thread_id = Some((i, tid));
                    }
                }
                "http.response.status_code" => {
                    if let Some(code) = status(kv) {
                        picks.status = Some((i, code));
                    }
                }
                "http.status_code" => {
                    if let Some(code) = status(kv) {
                        picks.legacy_status = Some((i, code));
                    }
                }
                "url.path" if as_str(kv).is_some() => picks.url_path = Some(i),
                "http.target" if as_str(kv).is_some() => picks.http_target = Some(i),
                "http.route" if as_str(kv).is_some() => picks.route = Some(i),
                _ => {}
            }
        }
        picks
    }
}

fn take_string(attributes: &mut [KeyValue], index: usize) -> Option<String> {
    match attributes[index].value.as_mut()?.value.as_mut()? {
        Value::StringValue(s) => Some(std::mem::take(s)),
        _ => None,
    }
}

/// A span and whether it was cut to the size limits.
fn convert_span(
    mut span: OtlpSpan,
    resource: &ResourceInfo,
    node: &str,
) -> Result<(v1::Span, bool), String> {
    check_id(&span.trace_id, 16, "trace_id")?;
    check_id(&span.span_id, 8, "span_id")?;
    match span.parent_span_id.len() {
        0 => {}
        8 if span.parent_span_id.iter().all(|b| *b == 0) => span.parent_span_id.clear(),
        8 => {}
        n => return Err(format!("parent_span_id must be empty or 8 bytes, got {n}")),
    }
    let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
    if start == 0 {
        return Err("start_time_unix_nano must be set".into());
    }
    let start_time_unix_nano = i64::try_from(start)
        .map_err(|_| format!("start_time_unix_nano {start} is out of range"))?;
    if end < start {
        return Err(format!(
            "end_time_unix_nano {end} is before start_time_unix_nano {start} (negative duration)"
        ));
    }
    let duration_ns = i64::try_from(end - start)
        .map_err(|_| format!("end_time_unix_nano {end} is out of range"))?;

    let picks = Picks::find(&span.attributes);
    let mut used = [None; 5];
    let thread_id = picks.thread_id.map(|(i, tid)| {
        used[0] = Some(i);
        tid
    });
    let http_status = picks.status.or(picks.legacy_status).map(|(i, code)| {
        used[1] = Some(i);
        code
    });
    let url = picks.url_path.or(picks.http_target).and_then(|i| {
        used[2] = Some(i);
        take_string(&mut span.attributes, i)
    });
    let route = picks.route.and_then(|i| {
        used[3] = Some(i);
        take_string(&mut span.attributes, i)
    });
    let (attributes_json, attributes_cut) = attributes_json(&span.attributes, &used)
        .map_err(|e| format!("cannot encode the attributes as JSON: {e}"))?;

    let (status_code, status_message) =
        span.status.map(|s| (s.code, s.message)).unwrap_or_default();
    let mut span = v1::Span {
        trace_id: span.trace_id,
        span_id: span.span_id,
        parent_span_id: span.parent_span_id,
        service: resource.service.clone(),
        name: span.name,
        kind: span.kind,
        start_time_unix_nano,
        duration_ns,
        status_code,
        status_message,
        http_status,
        url,
        route,
        pid: resource.pid,
        thread_id,
        node: node.to_string(),
        container_id: resource.container_id.clone(),
        k8s_pod_uid: resource.k8s_pod_uid.clone(),
        attributes_json,
    };
    let truncated = limit_span(&mut span) | attributes_cut | resource.service_truncated;
    Ok((span, truncated))
}

/// Cuts the span's text fields to their limits ([`coral_client::limits`]), marking each
/// cut with [`limits::TRUNCATION_MARKER`]; true if anything was cut.
///
/// Truncated rather than refused: a span whose URL or SQL attribute is too long is
/// still a request that happened, with a duration and a status that queries, triggers
/// and profiles need; refusing it would hide exactly the unusual requests someone is
/// looking for. The marker says the value is not whole.
pub fn limit_span(span: &mut v1::Span) -> bool {
    let mut cut = limits::truncate(&mut span.name, limits::MAX_SPAN_NAME_BYTES);
    cut |= limits::truncate(&mut span.status_message, limits::MAX_STATUS_MESSAGE_BYTES);
    for text in [span.url.as_mut(), span.route.as_mut()]
        .into_iter()
        .flatten()
    {
        cut |= limits::truncate(text, limits::MAX_URL_BYTES);
    }
    cut
}

/// The span attributes not picked as fields as one JSON object, within the attribute
/// limits; true if any attribute was cut or dropped. Attributes beyond
/// [`limits::MAX_ATTRIBUTES_PER_SPAN`], or that do not fit in
/// [`limits::MAX_ATTRIBUTES_JSON_BYTES`], are dropped and counted in
/// [`limits::DROPPED_ATTRIBUTES_KEY`]; long strings are cut.
fn attributes_json(
    attributes: &[KeyValue],
    skip: &[Option<usize>],
) -> Result<(String, bool), serde_json::Error> {
    let limiter = Limiter::default();
    let json = serde_json::to_string(&JsonAttributes {
        attributes,
        skip,
        limiter: &limiter,
        top: true,
    })?;
    if json.len() <= limits::MAX_ATTRIBUTES_JSON_BYTES {
        return Ok((json, limiter.changed()));
    }
    // Rare: too big as a whole. Keep the attributes, in order, that fit.
    let limiter = Limiter::default();
    let room_for_count = limits::DROPPED_ATTRIBUTES_KEY.len() + 32;
    let mut size = 2 + room_for_count;
    let mut out = String::from("{");
    let mut kept = 0;
    for (i, kv) in attributes.iter().enumerate() {
        if skip.contains(&Some(i)) {
            continue;
        }
        if kept == limits::MAX_ATTRIBUTES_PER_SPAN {
            limiter.drop_one();
            continue;
        }
        let key = serde_json::to_string(&LimitedStr(&kv.key, &limiter))?;
        let value = serde_json::to_string(&JsonValue(kv.value.as_ref(), &limiter))?;
        if size + key.len() + value.len() + 2 > limits::MAX_ATTRIBUTES_JSON_BYTES {
            limiter.drop_one();
            continue;
        }
        if kept > 0 {
            out.push(',');
        }
        size += key.len() + value.len() + 2;
        out.push_str(&key);
        out.push(':');
        out.push_str(&value);
        kept += 1;
    }
    let dropped = limiter.dropped.get();
    if dropped > 0 {
        if kept > 0 {
            out.push(',');
        }
        out.push_str(&format!("\"{}\":{dropped}", limits::DROPPED_ATTRIBUTES_KEY));
    }
    out.push('}');
    Ok((out, true))
}

/// What the attribute limits cut while serializing.
#[derive(Default)]
struct Limiter {
    dropped: Cell<usize>,
    truncated: Cell<bool>,
}

impl Limiter {
    fn drop_one(&self) {
        self.dropped.set(self.dropped.get() + 1);
    }

    fn changed(&self) -> bool {
        self.dropped.get() > 0 || self.truncated.get()
    }

    /// Serializes `text` cut to [`limits::MAX_ATTRIBUTE_VALUE_BYTES`].
    fn str<S: Serializer>(&self, text: &str, serializer: S) -> Result<S::Ok, S::Error> {
        match limits::truncated(text, limits::MAX_ATTRIBUTE_VALUE_BYTES) {
            None => serializer.serialize_str(text),
            Some(cut) => {
                self.truncated.set(true);
                serializer.serialize_str(&cut)
            }
        }
    }
}

/// A key or string value, cut to its limit.
struct LimitedStr<'a>(&'a str, &'a Limiter);

impl Serialize for LimitedStr<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.1.str(self.0, serializer)
    }
}

/// The span attributes not picked as fields, serialized as one JSON object without an
/// intermediate `serde_json::Value`.
/// At most [`limits::MAX_ATTRIBUTES_PER_SPAN`] entries (the rest dropped and, at the top
/// level, counted in [`limits::DROPPED_ATTRIBUTES_KEY`]).
struct JsonAttributes<'a> {
    attributes: &'a [KeyValue],
    skip: &'a [Option<usize>],
    limiter: &'a Limiter,
    /// The span's own attributes, not a nested key-value list.
    top: bool,
}

impl Serialize for JsonAttributes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        let mut kept = 0;
        for (i, kv) in self.attributes.iter().enumerate() {
            if self.skip.contains(&Some(i)) {
                continue;
            }
            if kept == limits::MAX_ATTRIBUTES_PER_SPAN {
                self.limiter.drop_one();
                continue;
            }
            kept += 1;
            map.serialize_entry(
                &LimitedStr(&kv.key, self.limiter),
                &JsonValue(kv.value.as_ref(), self.limiter),
            )?;
        }
        let dropped = self.limiter.dropped.get();
        if self.top && dropped > 0 {
            map.serialize_entry(limits::DROPPED_ATTRIBUTES_KEY, &dropped)?;
        }
        map.end()
    }
}

struct JsonValue<'a>(Option<&'a AnyValue>, &'a Limiter);

impl Serialize for JsonValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(value) = self.0.and_then(|v| v.value.as_ref()) else {
            return serializer.serialize_unit();
        };
        let limiter = self.1;
        match value {
            Value::StringValue(s) => limiter.str(s, serializer),
            Value::BoolValue(b) => serializer.serialize_bool(*b),
            Value::IntValue(i) => serializer.serialize_i64(*i),
            Value::DoubleValue(d) if d.is_finite() => serializer.serialize_f64(*d),
            Value::DoubleValue(d) if d.is_nan() => serializer.serialize_str("NaN"),
            Value::DoubleValue(d) if *d > 0.0 => serializer.serialize_str("Infinity"),
            Value::DoubleValue(_) => serializer.serialize_str("-Infinity"),
            Value::ArrayValue(array) => {
                let kept = array.values.len().min(limits::MAX_ATTRIBUTES_PER_SPAN);
                for _ in kept..array.values.len() {
                    limiter.drop_one();
                }
                let mut seq = serializer.serialize_seq(Some(kept))?;
                for item in &array.values[..kept] {
                    seq.serialize_element(&JsonValue(Some(item), limiter))?;
                }
                seq.end()
            }
            Value::KvlistValue(list) => JsonAttributes {
                attributes: &list.values,
                skip: &[],
                limiter,
                top: false,
            }
            .serialize(serializer),
            Value::BytesValue(bytes) => {
                // Hex doubles the size: cut the bytes first, so huge values cost little.
                let cap = limits::MAX_ATTRIBUTE_VALUE_BYTES;
                limiter.str(&hex::encode(&bytes[..bytes.len().min(cap)]), serializer)
            }
            // Only used by the profiles signal (a string table index); meaningless here.
            Value::StringValueStrindex(_) => serializer.serialize_unit(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};
    use serde_json::json;

    pub(crate) const TRACE_ID: [u8; 16] = [0xab; 16];
    pub(crate) const START: u64 = 1_700_000_000_000_000_000;

    pub(crate) fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    pub(crate) fn string(s: &str) -> Value {
        Value::StringValue(s.to_string())
    }

    /// A valid server span with span id `[n; 8]`, lasting 1 ms.
    pub(crate) fn span(n: u8) -> OtlpSpan {
        OtlpSpan {
            trace_id: TRACE_ID.to_vec(),
            span_id: vec![n; 8],
            name: format!("span {n}"),
            kind: 2,
            start_time_unix_nano: START,
            end_time_unix_nano: START + 1_000_000,
            ..Default::default()
        }
    }

    pub(crate) fn request(
        resource: Vec<KeyValue>,
        spans: Vec<OtlpSpan>,
    ) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn one(resource: Vec<KeyValue>, span: OtlpSpan) -> Result<v1::Span, String> {
        let mut out = convert(request(resource, vec![span]), "node-1");
        match out.rejections.pop() {
            Some(rejection) => Err(rejection.reason),
            None => Ok(out.spans.pop().expect("one span")),
        }
    }

    fn attributes(span: &v1::Span) -> serde_json::Value {
        serde_json::from_str(&span.attributes_json).expect("valid JSON")
    }

    #[test]
    fn copies_the_core_fields() {
        let mut s = span(1);
        s.parent_span_id = vec![9; 8];
        s.kind = 3;
        s.status = Some(Status {
            code: 2,
            message: "boom".into(),
        });
        let out = one(vec![kv("service.name", string("checkout"))], s).unwrap();
        assert_eq!(out.trace_id, TRACE_ID.to_vec());
        assert_eq!(out.span_id, vec![1; 8]);
        assert_eq!(out.parent_span_id, vec![9; 8]);
        assert_eq!(out.service, "checkout");
        assert_eq!(out.name, "span 1");
        assert_eq!(out.kind, 3);
        assert_eq!(out.start_time_unix_nano, START as i64);
        assert_eq!(out.duration_ns, 1_000_000);
        assert_eq!(out.status_code, 2);
        assert_eq!(out.status_message, "boom");
        assert_eq!(out.node, "node-1");
        assert_eq!(
            (out.http_status, out.url, out.route, out.pid, out.thread_id),
            (None, None, None, None, None)
        );
        assert_eq!(out.attributes_json, "{}");
    }

    #[test]
    fn zero_duration_is_valid() {
        let mut s = span(1);
        s.end_time_unix_nano = s.start_time_unix_nano;
        assert_eq!(one(vec![], s).unwrap().duration_ns, 0);
    }

    #[test]
    fn service_name_falls_back_to_unknown_service() {
        assert_eq!(one(vec![], span(1)).unwrap().service, "unknown_service");
        let empty = vec![kv("service.name", string(""))];
        assert_eq!(one(empty, span(1)).unwrap().service, "unknown_service");
        let not_a_string = vec![kv("service.name", Value::IntValue(3))];
        assert_eq!(
            one(not_a_string, span(1)).unwrap().service,
            "unknown_service"
        );
        let exe = vec![kv("process.executable.name", string("java"))];
        assert_eq!(one(exe, span(1)).unwrap().service, "unknown_service:java");
        let mut no_resource = request(vec![], vec![span(1)]);
        no_resource.resource_spans[0].resource = None;
        assert_eq!(
            convert(no_resource, "n").spans[0].service,
            "unknown_service"
        );
    }

    #[test]
    fn pid_from_int_or_numeric_string() {
        let pid = |v| one(vec![kv("process.pid", v)], span(1)).unwrap().pid;
        assert_eq!(pid(Value::IntValue(4242)), Some(4242));
        assert_eq!(pid(string("4243")), Some(4243));
        assert_eq!(pid(string("not a pid")), None);
        assert_eq!(pid(Value::DoubleValue(1.5)), None);
    }

    #[test]
    fn container_id_and_pod_uid_from_the_resource() {
        let resource = vec![
            kv("container.id", string(" 0123abcd ")),
            kv("k8s.pod.uid", string("5f0c-11")),
        ];
        let out = one(resource, span(1)).unwrap();
        assert_eq!(out.container_id.as_deref(), Some("0123abcd"));
        assert_eq!(out.k8s_pod_uid.as_deref(), Some("5f0c-11"));
        let absent = one(vec![], span(1)).unwrap();
        assert_eq!((absent.container_id, absent.k8s_pod_uid), (None, None));
        let unusable = vec![
            kv("container.id", string("")),
            kv("k8s.pod.uid", Value::IntValue(7)),
        ];
        let out = one(unusable, span(1)).unwrap();
        assert_eq!((out.container_id, out.k8s_pod_uid), (None, None));
        // Span attributes of those names are not resource attributes: kept as such.
        let mut s = span(1);
        s.attributes = vec![kv("container.id", string("c1"))];
        let out = one(vec![], s).unwrap();
        assert_eq!(out.container_id, None);
        assert_eq!(attributes(&out), json!({"container.id": "c1"}));
    }

    #[test]
    fn thread_id_is_extracted_and_removed() {
        let mut s = span(1);
        s.attributes = vec![kv("thread.id", Value::IntValue(77)), kv("a", string("b"))];
        let out = one(vec![], s).unwrap();
        assert_eq!(out.thread_id, Some(77));
        assert_eq!(attributes(&out), json!({"a": "b"}));
    }

    #[test]
    fn http_status_prefers_the_new_attribute() {
        let mut s = span(1);
        s.attributes = vec![
            kv("http.status_code", Value::IntValue(500)),
            kv("http.response.status_code", Value::IntValue(503)),
        ];
        let out = one(vec![], s).unwrap();
        assert_eq!(out.http_status, Some(503));
        // The unused fallback stays with the other attributes.
        assert_eq!(attributes(&out), json!({"http.status_code": 500}));
    }

    #[test]
    fn http_status_falls_back_to_the_old_attribute_and_accepts_strings() {
        let mut s = span(1);
        s.attributes = vec![kv("http.status_code", string("404"))];
        let out = one(vec![], s).unwrap();
        assert_eq!(out.http_status, Some(404));
        assert_eq!(attributes(&out), json!({}));
    }

    #[test]
    fn unusable_http_status_stays_an_attribute() {
        let mut s = span(1);
        s.attributes = vec![
            kv("http.response.status_code", string("teapot")),
            kv("http.status_code", Value::IntValue(1 << 40)),
        ];
        let out = one(vec![], s).unwrap();
        assert_eq!(out.http_status, None);
        assert_eq!(
            attributes(&out),
            json!({"http.response.status_code": "teapot", "http.status_code": 1_i64 << 40})
        );
    }

    #[test]
    fn url_prefers_url_path_over_http_target() {
        let mut s = span(1);
        s.attributes = vec![
            kv("http.target", string("/cart?id=1")),
            kv("url.path", string("/cart")),
            kv("http.route", string("/cart")),
        ];
        let out = one(vec![], s).unwrap();
        assert_eq!(out.url.as_deref(), Some("/cart"));
        assert_eq!(out.route.as_deref(), Some("/cart"));
        assert_eq!(attributes(&out), json!({"http.target": "/cart?id=1"}));
    }

    #[test]
    fn url_falls_back_to_http_target() {
        let mut s = span(1);
        s.attributes = vec![kv("http.target", string("/old?x=1"))];
        let out = one(vec![], s).unwrap();
        assert_eq!(out.url.as_deref(), Some("/old?x=1"));
        assert_eq!(attributes(&out), json!({}));
    }

    #[test]
    fn attribute_values_become_json() {
        let mut s = span(1);
        s.attributes = vec![
            kv("s", string("text \"quoted\"")),
            kv("b", Value::BoolValue(true)),
            kv("i", Value::IntValue(-7)),
            kv("d", Value::DoubleValue(0.25)),
            kv("nan", Value::DoubleValue(f64::NAN)),
            kv("inf", Value::DoubleValue(f64::INFINITY)),
            kv("-inf", Value::DoubleValue(f64::NEG_INFINITY)),
            kv("bytes", Value::BytesValue(vec![0xde, 0xad])),
            kv(
                "array",
                Value::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(Value::IntValue(1)),
                        },
                        AnyValue {
                            value: Some(string("two")),
                        },
                    ],
                }),
            ),
            kv(
                "kvlist",
                Value::KvlistValue(KeyValueList {
                    values: vec![kv("inner", Value::BoolValue(false))],
                }),
            ),
            KeyValue {
                key: "empty".into(),
                value: None,
                ..Default::default()
            },
        ];
        let out = one(vec![], s).unwrap();
        assert_eq!(
            attributes(&out),
            json!({
                "s": "text \"quoted\"",
                "b": true,
                "i": -7,
                "d": 0.25,
                "nan": "NaN",
                "inf": "Infinity",
                "-inf": "-Infinity",
                "bytes": "dead",
                "array": [1, "two"],
                "kvlist": {"inner": false},
                "empty": null,
            })
        );
    }

    /// A request with one span whose extra fields and one attribute are given.
    fn json_request(span_fields: &str, attribute: &str) -> String {
        format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{
                "traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174",
                "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000"
                {span_fields}, "attributes":[{attribute}]}}]}}]}}]}}"#
        )
    }

    fn decode_one(span_fields: &str, attribute: &str) -> v1::Span {
        let body = json_request(span_fields, attribute);
        let request = decode_json(body.as_bytes())
            .unwrap_or_else(|e| panic!("cannot decode {span_fields} {attribute}: {e}"));
        let mut out = convert(request, "n");
        assert!(out.rejections.is_empty(), "{:?}", out.rejections);
        out.spans.pop().unwrap()
    }

    #[test]
    fn json_forms_the_serde_impls_refuse_are_fixed_up() {
        let attr = |value: &str| format!(r#"{{"key":"a","value":{value}}}"#);
        let a = |span: &v1::Span| attributes(span)["a"].clone();
        assert_eq!(a(&decode_one("", &attr(r#"{"arrayValue":{}}"#))), json!([]));
        assert_eq!(
            a(&decode_one("", &attr(r#"{"kvlistValue":{}}"#))),
            json!({})
        );
        assert_eq!(
            a(&decode_one("", &attr(r#"{"doubleValue":"NaN"}"#))),
            json!("NaN")
        );
        assert_eq!(
            a(&decode_one("", &attr(r#"{"doubleValue":"-Infinity"}"#))),
            json!("-Infinity")
        );
        assert_eq!(
            a(&decode_one("", &attr(r#"{"doubleValue":"2.5"}"#))),
            json!(2.5)
        );
        assert_eq!(
            a(&decode_one("", &attr(r#"{"bytesValue":"3q2-7w"}"#))),
            json!("deadbeef")
        );
        assert_eq!(a(&decode_one("", &attr("null"))), json!(null));

        let span = decode_one(
            r#","kind":"SPAN_KIND_CLIENT","status":{"code":"STATUS_CODE_ERROR","message":null},
               "parentSpanId":null,"droppedAttributesCount":null"#,
            "",
        );
        assert_eq!((span.kind, span.status_code), (3, 2));
        assert!(span.parent_span_id.is_empty());
    }

    #[test]
    fn json_that_needs_no_fix_up_decodes_directly() {
        let span = decode_one(
            r#","kind":2,"flags":257,"traceState":"a=b","events":[{"timeUnixNano":"3","name":"e"}],
               "links":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]"#,
            r#"{"key":"a","value":{"stringValue":"x","someFutureField":1}}"#,
        );
        assert_eq!(attributes(&span), json!({"a": "x"}));
        assert_eq!(span.kind, 2);
    }

    #[test]
    fn undecodable_json_keeps_the_original_error_position() {
        let err = decode_json(b"{\"resourceSpans\": [").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = decode_json(
            br#"{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("column"), "{err}");
    }

    #[test]
    fn an_all_zero_parent_means_root() {
        let mut s = span(1);
        s.parent_span_id = vec![0; 8];
        assert!(one(vec![], s).unwrap().parent_span_id.is_empty());
    }

    #[test]
    fn each_invalid_field_is_rejected_with_its_reason() {
        type Breakage = fn(&mut OtlpSpan);
        let cases: Vec<(Breakage, &str)> = vec![
            (
                |s| s.trace_id = vec![1; 5],
                "trace_id must be 16 bytes, got 5",
            ),
            (
                |s| s.trace_id = vec![0; 16],
                "trace_id must not be all zeros",
            ),
            (|s| s.trace_id.clear(), "trace_id must be 16 bytes, got 0"),
            (
                |s| s.span_id = vec![1; 16],
                "span_id must be 8 bytes, got 16",
            ),
            (|s| s.span_id = vec![0; 8], "span_id must not be all zeros"),
            (
                |s| s.parent_span_id = vec![1; 3],
                "parent_span_id must be empty or 8 bytes, got 3",
            ),
            (
                |s| s.start_time_unix_nano = 0,
                "start_time_unix_nano must be set",
            ),
            (
                |s| s.end_time_unix_nano = s.start_time_unix_nano - 1,
                "negative duration",
            ),
            (
                |s| {
                    s.start_time_unix_nano = u64::MAX - 1;
                    s.end_time_unix_nano = u64::MAX;
                },
                "start_time_unix_nano 18446744073709551614 is out of range",
            ),
            (
                |s| {
                    s.start_time_unix_nano = 1;
                    s.end_time_unix_nano = u64::MAX;
                },
                "end_time_unix_nano 18446744073709551615 is out of range",
            ),
        ];
        for (break_it, expected) in cases {
            let mut s = span(1);
            break_it(&mut s);
            let reason = one(vec![], s).expect_err(expected);
            assert!(
                reason.contains(expected),
                "expected {expected:?} in {reason:?}"
            );
        }
    }

    #[test]
    fn invalid_spans_are_rejected_individually() {
        let mut bad_trace = span(2);
        bad_trace.trace_id = vec![1; 5];
        let mut backwards = span(4);
        backwards.end_time_unix_nano = START - 5;
        let mut req = request(
            vec![kv("service.name", string("svc"))],
            vec![span(1), bad_trace, span(3), backwards],
        );
        // A second resource, whose only span is valid.
        let mut second = req.resource_spans[0].clone();
        second.scope_spans[0].spans = vec![span(5)];
        req.resource_spans.push(second);

        let out = convert(req, "n");
        let ids: Vec<u8> = out.spans.iter().map(|s| s.span_id[0]).collect();
        assert_eq!(ids, vec![1, 3, 5]);
        assert_eq!(out.received(), 5);
        assert_eq!(out.rejections.len(), 2);
        assert_eq!(
            out.rejections[0].to_string(),
            "span 1 of scope 0 of resource 0: trace_id must be 16 bytes, got 5"
        );
        assert_eq!((out.rejections[1].resource, out.rejections[1].span), (0, 3));
        let message = out.error_message();
        assert!(message.starts_with("rejected 2 of 5 spans: span 1 of scope 0"));
        assert!(message.contains("negative duration"), "{message}");
    }

    #[test]
    fn error_message_is_empty_without_rejections_and_bounded_with_many() {
        assert_eq!(
            convert(request(vec![], vec![span(1)]), "n").error_message(),
            ""
        );
        let bad: Vec<OtlpSpan> = (1..=10)
            .map(|n| {
                let mut s = span(n);
                s.span_id.clear();
                s
            })
            .collect();
        let message = convert(request(vec![], bad), "n").error_message();
        assert!(message.starts_with("rejected 10 of 10 spans"), "{message}");
        assert!(message.ends_with("; and 7 more"), "{message}");
    }

    #[test]
    fn oversized_fields_are_cut_with_a_marker_and_the_span_kept() {
        let marker = limits::TRUNCATION_MARKER;
        let mut big = span(1);
        big.name = "n".repeat(5000);
        big.attributes = vec![
            kv("url.path", string(&format!("/{}", "p".repeat(20_000)))),
            kv("http.route", string("/ok")),
            kv("sql", string(&"s".repeat(10_000))),
            kv(&"k".repeat(5000), string("v")),
            kv("blob", Value::BytesValue(vec![7; 10_000])),
        ];
        let service = kv("service.name", string(&"svc".repeat(200)));
        let out = convert(request(vec![service], vec![big, span(2)]), "n");
        assert!(out.rejections.is_empty(), "{:?}", out.rejections);
        assert_eq!(out.truncated, 2, "both spans have the cut service name");
        let s = &out.spans[0];
        assert_eq!(s.name.len(), limits::MAX_SPAN_NAME_BYTES);
        assert!(s.name.ends_with(marker));
        assert!(s.service.len() <= limits::MAX_SERVICE_NAME_BYTES && s.service.ends_with(marker));
        let url = s.url.as_deref().unwrap();
        assert_eq!(url.len(), limits::MAX_URL_BYTES);
        assert!(url.starts_with("/ppp") && url.ends_with(marker));
        assert_eq!(s.route.as_deref(), Some("/ok"));
        let a = attributes(s);
        let sql = a["sql"].as_str().unwrap();
        assert_eq!(sql.len(), limits::MAX_ATTRIBUTE_VALUE_BYTES);
        assert!(sql.starts_with("sss") && sql.ends_with(marker));
        assert!(a["blob"].as_str().unwrap().ends_with(marker));
        let long_key = a
            .as_object()
            .unwrap()
            .keys()
            .find(|k| k.starts_with("kkk"))
            .expect("the long key is kept, cut");
        assert!(long_key.len() <= limits::MAX_ATTRIBUTE_VALUE_BYTES && long_key.ends_with(marker));
        assert!(
            a.get(limits::DROPPED_ATTRIBUTES_KEY).is_none(),
            "nothing dropped"
        );
        assert!(!out.spans[1].name.ends_with(marker));
    }

    /// An array attribute value of `n` integers.
    fn int_list(n: i64) -> Value {
        Value::ArrayValue(ArrayValue {
            values: (0..n)
                .map(|i| AnyValue {
                    value: Some(Value::IntValue(i)),
                })
                .collect(),
        })
    }

    #[test]
    fn attributes_beyond_the_count_limit_are_dropped_and_counted() {
        let mut many = span(1);
        many.attributes = (0..200)
            .map(|i| kv(&format!("a{i}"), Value::IntValue(i)))
            .collect();
        many.attributes.push(kv("list", int_list(300)));
        let s = one(vec![], many).unwrap();
        let a = attributes(&s);
        let map = a.as_object().unwrap();
        // 128 kept, plus the count.
        assert_eq!(map.len(), limits::MAX_ATTRIBUTES_PER_SPAN + 1);
        assert_eq!(a["a0"], 0);
        assert_eq!(a["a127"], 127);
        assert!(a.get("a128").is_none());
        // 72 ints and the list (the 201st) dropped.
        assert_eq!(a[limits::DROPPED_ATTRIBUTES_KEY], 73);

        let mut nested = span(2);
        nested.attributes = vec![kv("list", int_list(300))];
        let a = attributes(&one(vec![], nested).unwrap());
        assert_eq!(
            a["list"].as_array().unwrap().len(),
            limits::MAX_ATTRIBUTES_PER_SPAN
        );
        assert_eq!(a[limits::DROPPED_ATTRIBUTES_KEY], 300 - 128);
    }

    #[test]
    fn attributes_beyond_the_total_size_are_dropped_and_counted() {
        let mut fat = span(1);
        // 100 values of 4 KiB: 400 KiB, over the 64 KiB total.
        fat.attributes = (0..100)
            .map(|i| kv(&format!("v{i:03}"), string(&"x".repeat(5000))))
            .collect();
        let s = one(vec![], fat).unwrap();
        assert!(
            s.attributes_json.len() <= limits::MAX_ATTRIBUTES_JSON_BYTES,
            "{}",
            s.attributes_json.len()
        );
        let a = attributes(&s);
        let map = a.as_object().unwrap();
        let kept = map.len() - 1;
        assert!(kept >= 10, "{kept}");
        assert_eq!(
            a["v000"].as_str().unwrap().len(),
            limits::MAX_ATTRIBUTE_VALUE_BYTES
        );
        assert_eq!(a[limits::DROPPED_ATTRIBUTES_KEY], 100 - kept);
    }
}
