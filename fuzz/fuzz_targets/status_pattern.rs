//! Status-code patterns (`coral_analysis::status`) and durations
//! (`coral_analysis::duration`) on arbitrary text. Neither parser may panic; a parsed
//! pattern's `Display` parses back to an equal pattern that matches the same
//! statuses; a parsed duration
//! written in nanoseconds parses back to itself (up to 2^53 ns, where f64 is exact). The
//! `status` and `duration` modules' `mutated_*` tests check the same on stable.

#![no_main]

use coral_analysis::duration::{format_duration_ns, parse_duration};
use coral_analysis::status::StatusPattern;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    if let Ok(pattern) = StatusPattern::parse(input) {
        let text = pattern.to_string();
        let again =
            StatusPattern::parse(&text).unwrap_or_else(|e| panic!("{input:?} → {text:?}: {e}"));
        assert_eq!(again, pattern, "{input:?} → {text:?}");
        assert_eq!(again.to_string(), text);
        for code in [
            None,
            Some(99),
            Some(100),
            Some(404),
            Some(500),
            Some(599),
            Some(600),
        ] {
            for otel in 0..3 {
                assert_eq!(again.matches(code, otel), pattern.matches(code, otel));
            }
        }
    }
    if let Ok(duration) = parse_duration(input) {
        let nanos = duration.as_nanos();
        let _ = format_duration_ns(i64::try_from(nanos).unwrap_or(i64::MAX));
        // The parser sums in f64: exact (so checked) up to 2^53 ns, about 104 days.
        if nanos > 1 << 53 {
            return;
        }
        let again = parse_duration(&format!("{nanos}ns"))
            .unwrap_or_else(|e| panic!("{input:?} → {nanos}ns: {e}"));
        assert_eq!(again, duration, "{input:?}");
    }
});
