//! What the OTLP targets check of a decoded request and its conversion (included by
//! `otlp_protobuf.rs` and `otlp_json.rs`; `coral_agent::otlp`'s `mutated_bodies_*`
//! tests check the same on stable).

use coral_agent::otlp::convert;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

pub fn check(request: ExportTraceServiceRequest) {
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
        // Within the size limits: cutting again changes nothing.
        assert!(!coral_agent::otlp::limit_span(&mut span.clone()), "{span:?}");
    }
}
