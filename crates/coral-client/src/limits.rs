//! The sizes Coral accepts on its inputs, in one place because both sides of a wire
//! need them: the agent keeps what it sends within them (truncating oversized span
//! fields), and the colony refuses what is beyond them (it is an API boundary too, and
//! not every caller is a Coral agent). docs/reliability.md lists every limit, what
//! happens beyond it and which test exceeds it.
//!
//! Sizes of text are in bytes of UTF-8; truncation never splits a character.

/// Longest service name (`service.name`). Real names are a few dozen bytes; a longer
/// one is kept up to here, with [`TRUNCATION_MARKER`].
pub const MAX_SERVICE_NAME_BYTES: usize = 256;

/// Longest span name. Span names are meant to be low-cardinality labels
/// (`GET /users/{id}`), so 1 KiB is generous.
pub const MAX_SPAN_NAME_BYTES: usize = 1024;

/// Longest URL path (`url.path` / `http.target`) and route (`http.route`): 8 KiB, the
/// request-line limit of common HTTP servers (nginx, Apache), so a URL a server
/// accepted is kept whole.
pub const MAX_URL_BYTES: usize = 8 * 1024;

/// Longest span status message.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 4096;

/// Longest string (or bytes, as hex) attribute value, and attribute key. The OTel SDKs
/// have no default value limit; 4 KiB keeps SQL statements, headers and stack traces
/// readable while bounding what one attribute costs.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 4096;

/// Most attributes kept per span, and elements per array or key-value list value:
/// the OTel SDKs' default `AttributeCountLimit`. Attributes beyond it are dropped and
/// counted in the attribute [`DROPPED_ATTRIBUTES_KEY`].
pub const MAX_ATTRIBUTES_PER_SPAN: usize = 128;

/// Largest `attributes_json` of one span. With the two limits above, a span can still
/// carry 128 × 4 KiB; attributes beyond this total are dropped (last first) and counted
/// in [`DROPPED_ATTRIBUTES_KEY`].
pub const MAX_ATTRIBUTES_JSON_BYTES: usize = 64 * 1024;

/// The attribute that says how many attributes of a span were dropped by the limits.
pub const DROPPED_ATTRIBUTES_KEY: &str = "coral.dropped_attributes";

/// Appended to a value cut at a limit, so that nobody takes it for the whole value.
pub const TRUNCATION_MARKER: &str = "…[truncated]";

/// Most spans in one `IngestSpans` call. Agents send at most `--batch-size` spans (and
/// 8 MiB) per call, and `--batch-size` may not exceed this.
pub const MAX_SPANS_PER_INGEST: usize = 50_000;

/// Most profiles in one `IngestTraceProfiles` call.
pub const MAX_PROFILES_PER_INGEST: usize = 10_000;

/// Most distinct stacks in one profile (a request's, or a session's answer). A request
/// sampled at 1,000 Hz for 100 s has at most 100,000 samples.
pub const MAX_STACKS_PER_PROFILE: usize = 100_000;

/// Most frames in one profile's frame dictionary.
pub const MAX_FRAMES_PER_PROFILE: usize = 200_000;

/// Deepest stack: the kernel keeps at most 127 user and 127 kernel frames
/// (`PERF_MAX_STACK_DEPTH`), so 1,024 leaves room for other samplers.
pub const MAX_FRAMES_PER_STACK: usize = 1024;

/// Longest function or module name of a frame (demangled C++ and Rust names can be
/// long; beyond this they are cut with [`TRUNCATION_MARKER`]).
pub const MAX_FRAME_NAME_BYTES: usize = 4096;

/// Triggers of one service active at once. Each active trigger samples the service's
/// processes on every node and takes a slot in every agent's matcher; ten is plenty
/// for the questions of one incident.
pub const MAX_ACTIVE_TRIGGERS_PER_SERVICE: usize = 10;

/// Most request profiles in one `GetTraceProfile` answer (a trace with more request
/// spans profiled, e.g. a batch job, gets the earliest by start and `truncated`).
pub const MAX_PROFILES_PER_TRACE_RESPONSE: usize = 1000;

/// Largest `GetTraceProfile` answer, encoded: well under the gRPC message limit
/// ([`crate::MAX_MESSAGE_BYTES`]) so that every client can read it.
pub const MAX_TRACE_PROFILE_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Longest trigger URL glob or status-code pattern.
pub const MAX_TRIGGER_PATTERN_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes including [`TRUNCATION_MARKER`], at a character
/// boundary; `None` when it fits.
pub fn truncated(text: &str, max: usize) -> Option<String> {
    if text.len() <= max {
        return None;
    }
    let keep = max.saturating_sub(TRUNCATION_MARKER.len());
    let mut end = keep.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + TRUNCATION_MARKER.len());
    out.push_str(&text[..end]);
    out.push_str(TRUNCATION_MARKER);
    Some(out)
}

/// Cuts `text` in place (see [`truncated`]); true if it was cut.
pub fn truncate(text: &mut String, max: usize) -> bool {
    match truncated(text, max) {
        Some(cut) => {
            *text = cut;
            true
        }
        None => false,
    }
}

/// "`what` is N bytes; the limit is M": the refusal of a value over a limit.
pub fn too_long(what: &str, len: usize, max: usize) -> String {
    format!("{what} is {len} bytes; the limit is {max}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_characters_whole_and_marks_the_cut() {
        assert_eq!(truncated("short", 10), None);
        let cut = truncated(&"é".repeat(100), 20).unwrap();
        assert!(cut.len() <= 20, "{cut}");
        assert!(cut.ends_with(TRUNCATION_MARKER));
        assert!(cut.starts_with("éé"));
        let mut s = "a".repeat(5000);
        assert!(truncate(&mut s, MAX_ATTRIBUTE_VALUE_BYTES));
        assert_eq!(s.len(), MAX_ATTRIBUTE_VALUE_BYTES);
        assert!(!truncate(&mut s, MAX_ATTRIBUTE_VALUE_BYTES), "idempotent");
        assert_eq!(
            too_long("filter", 5000, 4096),
            "filter is 5000 bytes; the limit is 4096"
        );
    }
}
