//! Preparing a batch of spans for storage, the same way in every backend.

use crate::SpanRecord;
use std::collections::BTreeMap;

/// The batch without repeated (trace id, span id), sorted by them; of repeats, the
/// first one given is kept.
pub fn distinct_spans(spans: &[SpanRecord]) -> Vec<&SpanRecord> {
    let mut sorted: Vec<&SpanRecord> = spans.iter().collect();
    // Stable, so the first of equal keys stays first and survives `dedup_by_key`.
    sorted.sort_by_key(|s| (s.trace_id, s.span_id));
    sorted.dedup_by_key(|s| (s.trace_id, s.span_id));
    sorted
}

/// Each service of the batch, by name, with its earliest and latest span start.
pub fn services_seen<'a>(spans: &[&'a SpanRecord]) -> Vec<(&'a str, (i64, i64))> {
    let mut seen: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for span in spans {
        let start = span.start_unix_nano;
        seen.entry(span.service.as_str())
            .and_modify(|(first, last)| {
                *first = (*first).min(start);
                *last = (*last).max(start);
            })
            .or_insert((start, start));
    }
    seen.into_iter().collect()
}

/// Now, for `created_unix_nano`.
pub fn now_unix_nano() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
