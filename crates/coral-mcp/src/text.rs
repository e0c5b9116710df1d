//! Small pieces of the compact text answers.

use coral_analysis::format_duration_ns;
use coral_client::v1;

/// Milliseconds with the precision a reader needs.
pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}ms")
    } else {
        format!("{v:.1}ms")
    }
}

pub fn q_value(q: f64) -> String {
    if q < 0.001 {
        "<0.001".to_string()
    } else {
        format!("{q:.3}")
    }
}

pub fn trace_id(span: &v1::Span) -> String {
    hex::encode(&span.trace_id)
}

/// `200`, `500 error`, or `error` for a request without an HTTP status: as the CLI's
/// tables show it.
pub fn status(span: &v1::Span) -> String {
    coral_report::request_status(
        span.http_status,
        coral_report::span_status(span.status_code),
    )
}

/// One request on one line: id, duration, status, name.
pub fn request_line(span: &v1::Span) -> String {
    format!(
        "{} {} {} {}",
        trace_id(span),
        format_duration_ns(span.duration_ns),
        status(span),
        span.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millisecond_precision() {
        assert_eq!(ms(1234.4), "1234ms");
        assert_eq!(ms(4.25), "4.2ms");
    }
}
